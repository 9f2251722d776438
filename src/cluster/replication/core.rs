//! The replicator's decisions, without I/O: which batches go to whom and
//! when, which member's inventory to compare next, what to pull, and when a
//! `consistency=cluster` write is confirmed. Inputs (a commit, a finished
//! push, an inventory, a pull) and the time go in; [`Action`]s come out,
//! for a driver to carry out and answer with the next inputs. The driver
//! in `driver.rs` does it with the network and SQLite; the simulation in
//! `sim.rs` with in-process storages and a shuffled, lossy message queue.
//!
//! - **Push**: every batch this node commits is queued and sent, one push
//!   at a time (a push is several messages to every live member), so a
//!   batch is pushed once. A confirmation waits for the push that carries
//!   its batches and moves them to the front of the queue.
//! - **Anti-entropy**: every `sync_every` the live members are visited one
//!   after another: their inventory is compared with this node's, and each
//!   origin whose batches differ is pulled round after round until the
//!   member has nothing more this node lacks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tarn_net::PeerId;

use super::super::membership::Member;
use crate::store::Holding;

/// A batch by its identity in the cluster, with the database it is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchRef {
    pub db: String,
    /// The PeerId of the member that produced it.
    pub origin: String,
    pub id: i64,
}

/// How often things happen.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between two rounds of inventory exchanges.
    pub sync_every: Duration,
    /// How long a member may take to confirm one message.
    pub ack_timeout: Duration,
}

/// Most batches one push covers (the driver sends them in messages of a
/// bounded size).
pub const MAX_PUSH: usize = 1024;
/// Committed batches waiting to be pushed; beyond, anti-entropy finds them.
pub const MAX_QUEUE: usize = 8192;
/// Push outcomes remembered for confirmations that come after the push.
const MAX_OUTCOMES: usize = 16_384;
/// Most pull rounds with one member for one origin in one exchange.
const MAX_ROUNDS: u64 = 100_000;
/// Most refused batches remembered (not asked for again until a restart).
const MAX_REFUSED: usize = 100_000;

/// What happened.
#[derive(Debug, Clone)]
pub enum Input {
    /// This node committed a batch of its own.
    Committed(BatchRef),
    /// A write with `consistency=cluster` waits until `batches` reached the
    /// live members.
    Confirm { waiter: u64, batches: Vec<BatchRef> },
    /// The other members of the cluster, and whether each is live.
    Members(Vec<(Member, bool)>),
    /// A push ended: per member, whether it holds every batch sent. Batches
    /// in `missing` could not be read here and were not sent.
    Pushed {
        push: u64,
        missing: Vec<BatchRef>,
        results: Vec<(PeerId, Result<(), String>)>,
    },
    /// A member's inventory (or why there is none), and this node's own.
    Inventory {
        peer: PeerId,
        theirs: Result<Vec<Holding>, String>,
        mine: Vec<Holding>,
    },
    /// One pull round ended.
    Pulled {
        peer: PeerId,
        origin: String,
        result: Result<Pulled, String>,
    },
}

/// What one pull round brought.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Batches the member sent.
    pub received: usize,
    /// Newly stored here (not already held).
    pub stored: usize,
    /// Not stored, for any reason.
    pub failed: usize,
    /// Ids refused as bad data: not asked for again.
    pub refused: Vec<i64>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read `batches` and send them to each of `to`; answer with
    /// [`Input::Pushed`].
    Push {
        push: u64,
        batches: Vec<BatchRef>,
        to: Vec<PeerId>,
    },
    /// Ask a member for its inventory; answer with [`Input::Inventory`].
    AskInventory(PeerId),
    /// Ask a member for the batches of `origin` this node lacks, besides
    /// those it holds and those in `skip`; answer with [`Input::Pulled`].
    Pull {
        peer: PeerId,
        origin: String,
        skip: Vec<i64>,
    },
    /// A confirmation is complete.
    Confirmed { waiter: u64, report: Confirmation },
}

/// Which members hold a write's batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    pub confirmed: Vec<Member>,
    /// Members that do not (yet), with why.
    pub unconfirmed: Vec<(Member, String)>,
}

struct InFlight {
    id: u64,
    batches: Vec<BatchRef>,
}

struct Waiter {
    batches: Vec<BatchRef>,
    /// Members still to confirm.
    pending: Vec<Member>,
    report: Confirmation,
    deadline: Instant,
}

/// One inventory exchange with a member.
struct Exchange {
    peer: PeerId,
    /// Origins still to pull, with the rounds each may take.
    origins: VecDeque<(String, u64)>,
    stored: usize,
}

/// The replicator of one member.
pub struct Core {
    timing: Timing,
    members: Vec<(Member, bool)>,
    queue: VecDeque<BatchRef>,
    queued: HashSet<BatchRef>,
    push: Option<InFlight>,
    next_push: u64,
    /// Per batch, per member: held (Ok) or why not.
    outcomes: HashMap<BatchRef, HashMap<PeerId, Result<(), String>>>,
    outcome_order: VecDeque<BatchRef>,
    waiters: BTreeMap<u64, Waiter>,
    exchange: Option<Exchange>,
    /// Members still to visit in this round of exchanges.
    round: VecDeque<PeerId>,
    next_sync: Instant,
    refused: HashMap<String, Vec<i64>>,
    refused_count: usize,
}

impl Core {
    pub fn new(timing: Timing, now: Instant) -> Core {
        Core {
            timing,
            members: Vec::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            push: None,
            next_push: 0,
            outcomes: HashMap::new(),
            outcome_order: VecDeque::new(),
            waiters: BTreeMap::new(),
            exchange: None,
            round: VecDeque::new(),
            next_sync: now,
            refused: HashMap::new(),
            refused_count: 0,
        }
    }

    /// Takes one input; returns what to do now.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Committed(b) => {
                if !self.known(&b) && self.queue.len() < MAX_QUEUE {
                    self.queued.insert(b.clone());
                    self.queue.push_back(b);
                }
            }
            Input::Confirm { waiter, batches } => self.register(waiter, batches, now),
            Input::Members(m) => self.members = m,
            Input::Pushed {
                push,
                missing,
                results,
            } => self.pushed(push, missing, results),
            Input::Inventory { peer, theirs, mine } => self.inventory(peer, theirs, mine, &mut out),
            Input::Pulled {
                peer,
                origin,
                result,
            } => self.pulled(peer, origin, result, &mut out),
        }
        self.settle(now, &mut out);
        out
    }

    /// Lets time pass: starts rounds of exchanges, ends overdue confirmations.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if now >= self.next_sync && self.round.is_empty() && self.exchange.is_none() {
            self.round = self.live().map(|m| m.peer).collect();
            self.next_sync = now + self.timing.sync_every;
        }
        self.settle(now, &mut out);
        out
    }

    fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|(_, l)| *l).map(|(m, _)| m)
    }

    fn is_live(&self, peer: &PeerId) -> bool {
        self.members.iter().any(|(m, l)| *l && m.peer == *peer)
    }

    /// Whether a batch is queued, being pushed, or already pushed.
    fn known(&self, b: &BatchRef) -> bool {
        self.queued.contains(b)
            || self.outcomes.contains_key(b)
            || self.push.as_ref().is_some_and(|p| p.batches.contains(b))
    }

    fn register(&mut self, waiter: u64, batches: Vec<BatchRef>, now: Instant) {
        let mut report = Confirmation::default();
        let mut pending = Vec::new();
        for (m, live) in &self.members {
            if *live {
                pending.push(m.clone());
            } else {
                report
                    .unconfirmed
                    .push((m.clone(), "not connected".to_owned()));
            }
        }
        // Pushed right away: to the front of the queue, unless on its way.
        let peers: Vec<PeerId> = pending.iter().map(|m| m.peer).collect();
        self.expedite(&batches, &peers, true);
        // One message after another to each member, and the push ahead of
        // this one, each within the ack timeout.
        let deadline = now + self.timing.ack_timeout * 3;
        self.waiters.insert(
            waiter,
            Waiter {
                batches,
                pending,
                report,
                deadline,
            },
        );
    }

    /// Puts at the front of the queue those of `batches` that are not being
    /// pushed and whose last push did not reach all of `peers` (those
    /// already queued too when `move_queued`).
    fn expedite(&mut self, batches: &[BatchRef], peers: &[PeerId], move_queued: bool) {
        for b in batches.iter().rev() {
            if !move_queued && self.queued.contains(b) {
                continue;
            }
            let sending = self.push.as_ref().is_some_and(|p| p.batches.contains(b));
            let reached = self
                .outcomes
                .get(b)
                .is_some_and(|o| peers.iter().all(|p| o.contains_key(p)));
            if sending || reached {
                continue;
            }
            if self.queued.contains(b) {
                self.queue.retain(|x| x != b);
            }
            self.queued.insert(b.clone());
            self.queue.push_front(b.clone());
        }
    }

    fn pushed(
        &mut self,
        push: u64,
        missing: Vec<BatchRef>,
        results: Vec<(PeerId, Result<(), String>)>,
    ) {
        let Some(p) = self.push.take_if(|p| p.id == push) else {
            return;
        };
        for b in p.batches {
            let per: HashMap<PeerId, Result<(), String>> = if missing.contains(&b) {
                results
                    .iter()
                    .map(|(m, _)| (*m, Err("the batch is not held here".to_owned())))
                    .collect()
            } else {
                results.iter().cloned().collect()
            };
            self.remember(b, per);
        }
    }

    fn remember(&mut self, b: BatchRef, per: HashMap<PeerId, Result<(), String>>) {
        match self.outcomes.get_mut(&b) {
            Some(cur) => cur.extend(per),
            None => {
                self.outcomes.insert(b.clone(), per);
                self.outcome_order.push_back(b);
                while self.outcome_order.len() > MAX_OUTCOMES {
                    if let Some(old) = self.outcome_order.pop_front() {
                        self.outcomes.remove(&old);
                    }
                }
            }
        }
    }

    /// Answers the confirmations that are complete, and starts the next
    /// push and the next exchange.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.settle_waiters(now, out);
        if self.push.is_none() && !self.queue.is_empty() {
            let to: Vec<PeerId> = self.live().map(|m| m.peer).collect();
            let n = self.queue.len().min(MAX_PUSH);
            let batches: Vec<BatchRef> = self.queue.drain(..n).collect();
            batches.iter().for_each(|b| {
                self.queued.remove(b);
            });
            if to.is_empty() {
                // No member to send to: the inventory exchange catches them
                // up when they are back.
                self.settle_waiters(now, out);
            } else {
                self.next_push += 1;
                self.push = Some(InFlight {
                    id: self.next_push,
                    batches: batches.clone(),
                });
                out.push(Action::Push {
                    push: self.next_push,
                    batches,
                    to,
                });
            }
        }
        if self.exchange.is_none() {
            while let Some(peer) = self.round.pop_front() {
                if self.is_live(&peer) {
                    self.exchange = Some(Exchange {
                        peer,
                        origins: VecDeque::new(),
                        stored: 0,
                    });
                    out.push(Action::AskInventory(peer));
                    break;
                }
            }
        }
    }

    fn settle_waiters(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut done = Vec::new();
        let mut again: Vec<(Vec<BatchRef>, Vec<PeerId>)> = Vec::new();
        for (id, w) in &mut self.waiters {
            let mut still = Vec::new();
            for m in std::mem::take(&mut w.pending) {
                let live = self.members.iter().any(|(x, l)| *l && x.peer == m.peer);
                match member_outcome(&self.outcomes, &w.batches, &m.peer) {
                    Some(Ok(())) => w.report.confirmed.push(m),
                    Some(Err(e)) => w.report.unconfirmed.push((m, e)),
                    None if !live => w.report.unconfirmed.push((m, "not connected".into())),
                    None if now >= w.deadline => {
                        let ms = self.timing.ack_timeout.as_millis();
                        w.report
                            .unconfirmed
                            .push((m, format!("no answer in {ms} ms")));
                    }
                    None => still.push(m),
                }
            }
            w.pending = still;
            if w.pending.is_empty() {
                done.push(*id);
            } else {
                // A member that became live after the push began.
                again.push((
                    w.batches.clone(),
                    w.pending.iter().map(|m| m.peer).collect(),
                ));
            }
        }
        for (batches, peers) in again {
            self.expedite(&batches, &peers, false);
        }
        for id in done {
            if let Some(w) = self.waiters.remove(&id) {
                out.push(Action::Confirmed {
                    waiter: id,
                    report: w.report,
                });
            }
        }
    }

    fn inventory(
        &mut self,
        peer: PeerId,
        theirs: Result<Vec<Holding>, String>,
        mine: Vec<Holding>,
        out: &mut Vec<Action>,
    ) {
        let Some(ex) = self.exchange.as_mut().filter(|e| e.peer == peer) else {
            return;
        };
        let theirs = match theirs {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("inventory exchange with {peer}: {e}");
                self.exchange = None;
                return;
            }
        };
        let mine: HashMap<&str, &Holding> = mine.iter().map(|h| (h.origin.as_str(), h)).collect();
        for h in theirs {
            if h.batches == 0 || mine.get(h.origin.as_str()).is_some_and(|m| m.same_set(&h)) {
                continue;
            }
            // Until the peer has nothing more this node lacks; each round
            // is bounded by the message size, the rounds by the peer's
            // count (capped: the count is the peer's word).
            ex.origins
                .push_back((h.origin, h.batches.min(MAX_ROUNDS) + 1));
        }
        self.next_pull(out);
    }

    fn pulled(
        &mut self,
        peer: PeerId,
        origin: String,
        result: Result<Pulled, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(ex) = self.exchange.as_mut().filter(|e| e.peer == peer) else {
            return;
        };
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("pulling from {peer}: {e}");
                self.finish_exchange();
                return;
            }
        };
        ex.stored += p.stored;
        let more = p.received > 0 && p.failed == 0;
        if !more && ex.origins.front().is_some_and(|(o, _)| *o == origin) {
            ex.origins.pop_front();
        }
        for id in p.refused {
            if self.refused_count < MAX_REFUSED {
                self.refused.entry(origin.clone()).or_default().push(id);
                self.refused_count += 1;
            }
        }
        self.next_pull(out);
    }

    /// The next pull of the exchange in progress, or its end.
    fn next_pull(&mut self, out: &mut Vec<Action>) {
        let Some(ex) = self.exchange.as_mut() else {
            return;
        };
        while let Some((origin, rounds)) = ex.origins.front_mut() {
            if *rounds == 0 {
                ex.origins.pop_front();
                continue;
            }
            *rounds -= 1;
            out.push(Action::Pull {
                peer: ex.peer,
                origin: origin.clone(),
                // Batches this node refused (their values do not fit its
                // columns) are not asked for again until it restarts;
                // `tarn cluster verify` shows them as a difference.
                skip: self
                    .refused
                    .get(origin.as_str())
                    .cloned()
                    .unwrap_or_default(),
            });
            return;
        }
        self.finish_exchange();
    }

    fn finish_exchange(&mut self) {
        if let Some(ex) = self.exchange.take()
            && ex.stored > 0
        {
            let name = self
                .members
                .iter()
                .find(|(m, _)| m.peer == ex.peer)
                .map_or_else(|| ex.peer.to_string(), |(m, _)| m.name.clone());
            tracing::info!("pulled {} missing batches from {name}", ex.stored);
        }
    }

    /// Batches waiting to be pushed (for tests and status).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is in progress: no push, no exchange, no waiter.
    pub fn idle(&self) -> bool {
        self.push.is_none()
            && self.queue.is_empty()
            && self.exchange.is_none()
            && self.round.is_empty()
            && self.waiters.is_empty()
    }
}

/// Whether `peer` holds all of `batches`: `Some(Ok)` if so, the first
/// failure if one failed, `None` while one has no outcome yet.
fn member_outcome(
    outcomes: &HashMap<BatchRef, HashMap<PeerId, Result<(), String>>>,
    batches: &[BatchRef],
    peer: &PeerId,
) -> Option<Result<(), String>> {
    let mut all = true;
    for b in batches {
        match outcomes.get(b).and_then(|o| o.get(peer)) {
            Some(Err(e)) => return Some(Err(e.clone())),
            Some(Ok(())) => {}
            None => all = false,
        }
    }
    all.then_some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u8) -> Member {
        let key = tarn_net::Keypair::ed25519_from_bytes([i; 32]).unwrap();
        Member {
            peer: key.public().to_peer_id(),
            name: format!("m{i}"),
            rest: String::new(),
        }
    }

    fn batch(id: i64) -> BatchRef {
        BatchRef {
            db: "lab".into(),
            origin: "me".into(),
            id,
        }
    }

    fn timing() -> Timing {
        Timing {
            sync_every: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_committed_batch_is_pushed_once_and_confirms_a_waiter() {
        let t0 = Instant::now();
        let (a, b) = (member(1), member(2));
        let mut c = Core::new(timing(), t0);
        c.step(
            Input::Members(vec![(a.clone(), true), (b.clone(), false)]),
            t0,
        );
        let acts = c.step(Input::Committed(batch(1)), t0);
        let Some(Action::Push { push, batches, to }) = acts.first().cloned() else {
            panic!("{acts:?}")
        };
        assert_eq!((batches, to), (vec![batch(1)], vec![a.peer]));
        // The confirmation arrives while the push is under way: no second push.
        let acts = c.step(
            Input::Confirm {
                waiter: 7,
                batches: vec![batch(1)],
            },
            t0,
        );
        assert!(acts.is_empty(), "{acts:?}");
        // The commit notice can also come late: still no second push.
        assert!(c.step(Input::Committed(batch(1)), t0).is_empty());
        let acts = c.step(
            Input::Pushed {
                push,
                missing: vec![],
                results: vec![(a.peer, Ok(()))],
            },
            t0,
        );
        assert_eq!(
            acts,
            vec![Action::Confirmed {
                waiter: 7,
                report: Confirmation {
                    confirmed: vec![a],
                    unconfirmed: vec![(b, "not connected".into())],
                },
            }]
        );
        assert!(c.idle());
    }

    #[test]
    fn a_confirmation_moves_its_batch_ahead_and_ends_by_its_deadline() {
        let t0 = Instant::now();
        let a = member(1);
        let mut c = Core::new(timing(), t0);
        c.step(Input::Members(vec![(a.clone(), true)]), t0);
        let first = c.step(Input::Committed(batch(1)), t0);
        assert!(matches!(first[0], Action::Push { .. }));
        for id in 2..5 {
            c.step(Input::Committed(batch(id)), t0);
        }
        c.step(
            Input::Confirm {
                waiter: 1,
                batches: vec![batch(4)],
            },
            t0,
        );
        assert_eq!(c.queue.front(), Some(&batch(4)));
        // The first push never ends: the waiter gives up at its deadline.
        let late = t0 + Duration::from_secs(16);
        let acts = c.tick(late);
        let Some(Action::Confirmed { report, .. }) =
            acts.iter().find(|a| matches!(a, Action::Confirmed { .. }))
        else {
            panic!("{acts:?}")
        };
        assert_eq!(report.unconfirmed[0].1, "no answer in 5000 ms");
    }

    #[test]
    fn an_exchange_pulls_each_differing_origin_until_nothing_more() {
        let t0 = Instant::now();
        let a = member(1);
        let mut c = Core::new(timing(), t0);
        c.step(Input::Members(vec![(a.clone(), true)]), t0);
        assert_eq!(c.tick(t0), vec![Action::AskInventory(a.peer)]);
        let holding = |origin: &str, batches: u64| Holding {
            origin: origin.into(),
            name: origin.into(),
            batches,
            max_id: batches as i64,
            id_sum: batches as i64,
            rows: 0,
        };
        let acts = c.step(
            Input::Inventory {
                peer: a.peer,
                theirs: Ok(vec![holding("x", 3), holding("y", 2)]),
                mine: vec![holding("y", 2)],
            },
            t0,
        );
        assert_eq!(
            acts,
            vec![Action::Pull {
                peer: a.peer,
                origin: "x".into(),
                skip: vec![]
            }]
        );
        let round = |received, refused: Vec<i64>| Input::Pulled {
            peer: a.peer,
            origin: "x".into(),
            result: Ok(Pulled {
                received,
                stored: received - refused.len(),
                failed: refused.len(),
                refused,
            }),
        };
        // A batch refused as bad data ends the origin and is skipped next time.
        assert!(c.step(round(2, vec![2]), t0).is_empty());
        assert!(c.exchange.is_none());
        let next = t0 + Duration::from_secs(1);
        assert_eq!(c.tick(next), vec![Action::AskInventory(a.peer)]);
        c.step(
            Input::Inventory {
                peer: a.peer,
                theirs: Ok(vec![holding("x", 3)]),
                mine: vec![],
            },
            next,
        );
        let acts = c.step(round(1, vec![]), next);
        assert_eq!(
            acts,
            vec![Action::Pull {
                peer: a.peer,
                origin: "x".into(),
                skip: vec![2]
            }]
        );
        assert!(c.step(round(0, vec![]), next).is_empty());
        assert!(c.idle());
    }
}
