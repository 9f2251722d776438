//! Requests whose dial this node's own connection limits refused, kept to
//! be sent again once a link has been freed. A node that holds as many
//! connections as it may (a bootstrap peer that every node links to, a
//! query over hundreds of operators) would otherwise fail every request
//! to a peer it is not linked to, at once, though a link it closes a
//! moment later makes room. Bounded: at most [`MAX_DEFERRED`] requests,
//! each sent again at most [`MAX_RESENDS`] times, a little later each time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Most requests waiting for room at once; more fail as before.
pub(crate) const MAX_DEFERRED: usize = 256;
/// Most times one request is sent again.
pub(crate) const MAX_RESENDS: u8 = 10;
/// The wait before the first resend; the n-th waits n times as long
/// (about 11 s in all).
const STEP: Duration = Duration::from_millis(200);

/// A request waiting to be sent again.
pub(crate) struct Deferred<R> {
    pub peer: PeerId,
    pub data: Vec<u8>,
    pub reply: R,
    /// Resends so far.
    pub resends: u8,
    due: Instant,
}

pub(crate) struct Queue<R> {
    waiting: VecDeque<Deferred<R>>,
}

impl<R> Default for Queue<R> {
    fn default() -> Self {
        Queue {
            waiting: VecDeque::new(),
        }
    }
}

impl<R> Queue<R> {
    /// Keeps a request to send again, or hands it back when it has been
    /// sent again too often or the queue is full.
    pub(crate) fn defer(
        &mut self,
        peer: PeerId,
        data: Vec<u8>,
        reply: R,
        resends: u8,
        now: Instant,
    ) -> Result<(), R> {
        if resends >= MAX_RESENDS || self.waiting.len() >= MAX_DEFERRED {
            return Err(reply);
        }
        let due = now + STEP * u32::from(resends + 1);
        // Dues grow with the resends: keep the queue ordered by due time.
        let at = self.waiting.partition_point(|d| d.due <= due);
        self.waiting.insert(
            at,
            Deferred {
                peer,
                data,
                reply,
                resends,
                due,
            },
        );
        Ok(())
    }

    /// When the next request is due, if any waits.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|d| d.due)
    }

    /// The requests due by `now`, earliest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Deferred<R>> {
        let n = self.waiting.partition_point(|d| d.due <= now);
        self.waiting.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_longer_each_time_and_not_forever() {
        let mut q: Queue<u32> = Queue::default();
        let t0 = Instant::now();
        let p = PeerId::random();
        q.defer(p, vec![1], 1, 2, t0).unwrap();
        q.defer(p, vec![2], 2, 0, t0).unwrap();
        assert_eq!(q.next_due(), Some(t0 + STEP));
        assert!(q.take_due(t0).is_empty());
        let first = q.take_due(t0 + STEP);
        assert_eq!(first.iter().map(|d| d.reply).collect::<Vec<_>>(), [2]);
        let next = q.take_due(t0 + STEP * 3);
        assert_eq!(next.iter().map(|d| d.reply).collect::<Vec<_>>(), [1]);
        assert_eq!(q.next_due(), None);
        // Resent too often: handed back.
        assert_eq!(q.defer(p, vec![], 7, MAX_RESENDS, t0), Err(7));
        // Full: handed back.
        for i in 0..MAX_DEFERRED as u32 {
            q.defer(p, vec![], i, 0, t0).unwrap();
        }
        assert_eq!(q.defer(p, vec![], 9, 0, t0), Err(9));
    }
}
