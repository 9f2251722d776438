//! The failover state of one network query, without I/O: for each cluster
//! that holds the table, which operator is asked, which next when it
//! fails, and when the query is over. The caller fetches what
//! [`Action::Fetch`] names and reports each result back; the time is
//! passed in.
//!
//! An operator that fails in a way another member might not (unreachable,
//! too slow, busy) is replaced by the next candidate of its cluster; one
//! that refuses the query as every member would (bad SQL, too large) ends
//! the whole query at once. A cluster whose candidates all failed, the
//! last of them quickly (a link that closed, a dial that failed: often a
//! passing fault on a busy node or a poor link), is asked once more, after
//! the clusters still waiting; one whose candidates are all used up again,
//! or whose time ran out, is reported as not answering. At most
//! [`MAX_IN_FLIGHT`] fetches run at once: a table held by hundreds of
//! clusters is asked a few dozen operators at a time, so one query never
//! opens hundreds of connections.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tarn_net::PeerId;

use super::ExecError;
use crate::proto::query::NodeError;

/// Most partial queries one query has in flight at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// A failure this soon after the ask is a fault worth a second round (a
/// silent operator takes the fetch's whole idle timeout instead).
pub const QUICK_FAILURE: Duration = Duration::from_secs(5);

/// The operators that can answer for one cluster, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub candidates: Vec<PeerId>,
}

/// Why one operator's part did not arrive.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The same on every member: the query fails.
    Fatal(ExecError),
    /// This member failed; another may answer.
    Retry(String),
}

/// Ask `peer` for target `target`'s part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub target: usize,
    pub peer: PeerId,
}

enum State<P> {
    /// Asked, since.
    Asking(PeerId, Instant),
    Done(P),
    Failed,
}

struct Slot<P> {
    target: Target,
    /// The next candidate to ask.
    next: usize,
    tried: Vec<(PeerId, String)>,
    state: State<P>,
    /// Whether the second round was taken.
    again: bool,
}

/// What the query gathered.
#[derive(Debug)]
pub struct Outcome<P> {
    /// One part per cluster that answered, in target order.
    pub parts: Vec<(usize, P)>,
    /// Clusters none of whose members answered.
    pub errors: Vec<NodeError>,
    /// Fetches started (retries included).
    pub asked: usize,
    pub replied: usize,
}

/// One query's scatter over `P`-typed parts.
pub struct Scatter<P> {
    slots: Vec<Slot<P>>,
    deadline: Instant,
    fatal: Option<ExecError>,
    asked: usize,
    /// Clusters not asked yet, waiting for room.
    waiting: VecDeque<usize>,
    limit: usize,
}

impl<P> Scatter<P> {
    pub fn new(targets: Vec<Target>, deadline: Instant) -> Scatter<P> {
        Scatter::with_limit(targets, deadline, MAX_IN_FLIGHT)
    }

    /// At most `limit` fetches at once.
    pub fn with_limit(targets: Vec<Target>, deadline: Instant, limit: usize) -> Scatter<P> {
        let slots: Vec<Slot<P>> = targets
            .into_iter()
            .map(|target| Slot {
                target,
                next: 0,
                tried: Vec::new(),
                state: State::Failed,
                again: false,
            })
            .collect();
        Scatter {
            waiting: (0..slots.len()).collect(),
            slots,
            deadline,
            fatal: None,
            asked: 0,
            limit: limit.max(1),
        }
    }

    /// The first fetches: one per cluster, as many clusters as there is room for.
    pub fn start(&mut self, now: Instant) -> Vec<Fetch> {
        let mut out = Vec::new();
        while out.len() < self.limit {
            match self.next_waiting(now) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        out
    }

    /// The first fetch of the next cluster waiting for room.
    fn next_waiting(&mut self, now: Instant) -> Option<Fetch> {
        while let Some(t) = self.waiting.pop_front() {
            if let Some(f) = self.ask_next(t, now) {
                return Some(f);
            }
        }
        None
    }

    /// A fetch ended; returns the fetch that takes its place, if any (the
    /// next member of its cluster, or the next cluster waiting).
    pub fn on_result(
        &mut self,
        target: usize,
        peer: PeerId,
        result: Result<P, Failure>,
        now: Instant,
    ) -> Option<Fetch> {
        let slot = self.slots.get_mut(target)?;
        let since = match slot.state {
            State::Asking(p, since) if p == peer && self.fatal.is_none() => since,
            _ => return None,
        };
        match result {
            Ok(part) => {
                slot.state = State::Done(part);
                self.next_waiting(now)
            }
            Err(Failure::Fatal(e)) => {
                slot.state = State::Failed;
                self.fatal = Some(e);
                None
            }
            Err(Failure::Retry(msg)) => {
                tracing::debug!("{peer} failed a partial query: {msg}");
                slot.tried.push((peer, msg));
                slot.state = State::Failed;
                let quick = now.saturating_duration_since(since) < QUICK_FAILURE;
                if slot.next >= slot.target.candidates.len() && quick && !slot.again {
                    // Every member failed, quickly: once more, later.
                    slot.again = true;
                    slot.next = 0;
                    self.waiting.push_back(target);
                    return self.next_waiting(now);
                }
                self.ask_next(target, now)
                    .or_else(|| self.next_waiting(now))
            }
        }
    }

    fn ask_next(&mut self, target: usize, now: Instant) -> Option<Fetch> {
        let slot = &mut self.slots[target];
        let peer = *slot.target.candidates.get(slot.next)?;
        slot.next += 1;
        if now >= self.deadline {
            slot.tried
                .push((peer, "the query's time ran out".to_owned()));
            return None;
        }
        slot.state = State::Asking(peer, now);
        self.asked += 1;
        Some(Fetch { target, peer })
    }

    /// Whether nothing more will happen: every cluster answered or gave
    /// up, or the query failed.
    pub fn finished(&self) -> bool {
        self.fatal.is_some()
            || (self.waiting.is_empty()
                && self
                    .slots
                    .iter()
                    .all(|s| !matches!(s.state, State::Asking(..))))
    }

    /// What arrived (call once [`finished`](Self::finished)), or the error
    /// that ended the query.
    pub fn outcome(self) -> Result<Outcome<P>, ExecError> {
        if let Some(e) = self.fatal {
            return Err(e);
        }
        let mut out = Outcome {
            parts: Vec::new(),
            errors: Vec::new(),
            asked: self.asked,
            replied: 0,
        };
        for (i, slot) in self.slots.into_iter().enumerate() {
            match slot.state {
                State::Done(p) => {
                    out.replied += 1;
                    out.parts.push((i, p));
                }
                _ => out.errors.push(NodeError {
                    message: if slot.target.candidates.is_empty() {
                        "no operator of this cluster is known".into()
                    } else {
                        slot.tried
                            .iter()
                            .map(|(p, m)| format!("{p}: {m}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                    nodes: slot
                        .target
                        .candidates
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    cluster: slot.target.cluster,
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn peer(i: u64) -> PeerId {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i + 1).to_le_bytes());
        tarn_net::Keypair::ed25519_from_bytes(seed)
            .unwrap()
            .public()
            .to_peer_id()
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Behaves {
        Answers,
        Fails,
        Refuses,
        /// Answers only after the query's deadline.
        Late,
    }

    /// A lone member that fails quickly (a closed link) is asked once more
    /// and answers; one that failed only after a long silence is not.
    #[test]
    fn a_quick_failure_gets_a_second_round_a_slow_one_does_not() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(60);
        let target = |c: &str, p: u64| Target {
            cluster: c.into(),
            candidates: vec![peer(p)],
        };
        let mut s: Scatter<u32> = Scatter::new(vec![target("a", 1)], deadline);
        let f = s.start(t0);
        let again = s
            .on_result(0, f[0].peer, Err(Failure::Retry("closed".into())), t0)
            .expect("asked again");
        assert_eq!(again.peer, peer(1));
        assert!(s.on_result(0, again.peer, Ok(7), t0).is_none());
        let out = s.outcome().unwrap();
        assert_eq!((out.parts.len(), out.asked), (1, 2));

        let mut s: Scatter<u32> = Scatter::new(vec![target("b", 2)], deadline);
        let f = s.start(t0);
        let late = t0 + QUICK_FAILURE;
        assert!(
            s.on_result(
                0,
                f[0].peer,
                Err(Failure::Retry("no answer in time".into())),
                late
            )
            .is_none()
        );
        assert!(s.finished());
        assert_eq!(s.outcome().unwrap().errors.len(), 1);
    }

    /// A query over operators that answer, fail, refuse or answer late, in
    /// a seeded random order, with room for a few fetches at once: each
    /// cluster's candidates are asked in order, one at a time, none after
    /// the deadline, never more fetches than the room; the first refusal ends the
    /// query; otherwise each cluster ends with the part of the first
    /// candidate that answered, or as an error naming every one tried.
    #[test]
    fn queries_over_failing_operators_follow_the_rules() {
        let seed: u64 = std::env::var("TARN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut x = seed | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for run in 0..2000 {
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(10);
            let mut behaviour: HashMap<PeerId, Behaves> = HashMap::new();
            let mut next_peer = 0;
            let targets: Vec<Target> = (0..1 + rnd(5))
                .map(|c| Target {
                    cluster: format!("c{c}"),
                    candidates: (0..rnd(4))
                        .map(|_| {
                            next_peer += 1;
                            let p = peer(next_peer);
                            let b = match rnd(10) {
                                0..=4 => Behaves::Answers,
                                5..=7 => Behaves::Fails,
                                8 => Behaves::Late,
                                _ => Behaves::Refuses,
                            };
                            behaviour.insert(p, b);
                            p
                        })
                        .collect(),
                })
                .collect();
            let limit = 1 + rnd(4) as usize;
            let mut s: Scatter<PeerId> = Scatter::with_limit(targets.clone(), deadline, limit);
            let mut now = t0;
            let mut flying = s.start(now);
            assert!(flying.len() <= limit, "run {run}");
            let mut asked: Vec<Vec<PeerId>> = vec![Vec::new(); targets.len()];
            let mut refused = false;
            for f in &flying {
                asked[f.target].push(f.peer);
            }
            while !flying.is_empty() && !s.finished() {
                let f = flying.swap_remove(rnd(flying.len() as u64) as usize);
                let result = match behaviour[&f.peer] {
                    Behaves::Answers => Ok(f.peer),
                    Behaves::Fails => Err(Failure::Retry("down".into())),
                    Behaves::Refuses => {
                        refused = true;
                        Err(Failure::Fatal(ExecError::InvalidSql("bad".into())))
                    }
                    Behaves::Late => {
                        now = deadline;
                        Err(Failure::Retry("no answer in time".into()))
                    }
                };
                if let Some(n) = s.on_result(f.target, f.peer, result, now) {
                    assert!(
                        now < deadline,
                        "run {run}: a fetch started after the deadline"
                    );
                    assert!(
                        !flying.iter().any(|x| x.target == n.target),
                        "run {run}: two fetches for one cluster"
                    );
                    asked[n.target].push(n.peer);
                    flying.push(n);
                    assert!(
                        flying.len() <= limit,
                        "run {run}: more than {limit} at once"
                    );
                }
            }
            assert!(s.finished(), "run {run}");
            let outcome = s.outcome();
            if refused {
                assert!(outcome.is_err(), "run {run}");
                continue;
            }
            let out = outcome.unwrap_or_else(|e| panic!("run {run}: {e}"));
            for (t, target) in targets.iter().enumerate() {
                // Asked in order, each at most once a round; a second
                // round only once every candidate failed (quickly: a late
                // one ends its cluster at the deadline).
                let n = target.candidates.len();
                let (first, second) = asked[t].split_at(asked[t].len().min(n));
                assert!(
                    target.candidates.starts_with(first)
                        && target.candidates.starts_with(second)
                        && (second.is_empty() || first.len() == n),
                    "run {run}: {:?} vs {:?}",
                    asked[t],
                    target.candidates
                );
                if !second.is_empty() {
                    assert!(
                        first.iter().all(|p| behaviour[p] == Behaves::Fails),
                        "run {run}: a second round after {first:?}"
                    );
                }
                let first_ok = asked[t].iter().find(|p| behaviour[*p] == Behaves::Answers);
                match out.parts.iter().find(|(i, _)| *i == t) {
                    Some((_, p)) => assert_eq!(Some(p), first_ok, "run {run}"),
                    None => {
                        let e = out
                            .errors
                            .iter()
                            .find(|e| e.cluster == target.cluster)
                            .unwrap_or_else(|| panic!("run {run}: cluster {t} lost"));
                        assert_eq!(e.nodes.len(), target.candidates.len());
                        assert!(first_ok.is_none(), "run {run}");
                    }
                }
            }
            assert_eq!(out.asked, asked.iter().map(Vec::len).sum::<usize>());
            assert_eq!(out.replied, out.parts.len());
        }
    }
}
