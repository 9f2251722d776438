//! The failover state of one network query, without I/O: for each cluster
//! that holds the table, which operator is asked, which next when it
//! fails, and when the query is over. The caller fetches what
//! [`Action::Fetch`] names and reports each result back; the time is
//! passed in.
//!
//! An operator that fails in a way another member might not (unreachable,
//! too slow, busy) is replaced by the next candidate of its cluster; one
//! that refuses the query as every member would (bad SQL, too large) ends
//! the whole query at once. A cluster whose candidates are all used up, or
//! whose time ran out, is reported as not answering.

use std::time::Instant;

use tarn_net::PeerId;

use super::ExecError;
use crate::proto::query::NodeError;

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
    Asking(PeerId),
    Done(P),
    Failed,
}

struct Slot<P> {
    target: Target,
    /// The next candidate to ask.
    next: usize,
    tried: Vec<(PeerId, String)>,
    state: State<P>,
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
}

impl<P> Scatter<P> {
    pub fn new(targets: Vec<Target>, deadline: Instant) -> Scatter<P> {
        let slots = targets
            .into_iter()
            .map(|target| Slot {
                target,
                next: 0,
                tried: Vec::new(),
                state: State::Failed,
            })
            .collect();
        Scatter {
            slots,
            deadline,
            fatal: None,
            asked: 0,
        }
    }

    /// The first fetch of every cluster.
    pub fn start(&mut self, now: Instant) -> Vec<Fetch> {
        (0..self.slots.len())
            .filter_map(|t| self.ask_next(t, now))
            .collect()
    }

    /// A fetch ended; returns the fetch that replaces it, if any.
    pub fn on_result(
        &mut self,
        target: usize,
        peer: PeerId,
        result: Result<P, Failure>,
        now: Instant,
    ) -> Option<Fetch> {
        let slot = self.slots.get_mut(target)?;
        if !matches!(slot.state, State::Asking(p) if p == peer) || self.fatal.is_some() {
            return None;
        }
        match result {
            Ok(part) => {
                slot.state = State::Done(part);
                None
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
                self.ask_next(target, now)
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
        slot.state = State::Asking(peer);
        self.asked += 1;
        Some(Fetch { target, peer })
    }

    /// Whether nothing more will happen: every cluster answered or gave
    /// up, or the query failed.
    pub fn finished(&self) -> bool {
        self.fatal.is_some()
            || self
                .slots
                .iter()
                .all(|s| !matches!(s.state, State::Asking(_)))
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

    /// A query over operators that answer, fail, refuse or answer late, in
    /// a seeded random order: each cluster's candidates are asked in order,
    /// one at a time, none after the deadline; the first refusal ends the
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
            let mut s: Scatter<PeerId> = Scatter::new(targets.clone(), deadline);
            let mut now = t0;
            let mut flying = s.start(now);
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
                // Asked in order, each at most once.
                assert!(
                    target.candidates.starts_with(&asked[t]),
                    "run {run}: {:?} vs {:?}",
                    asked[t],
                    target.candidates
                );
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
