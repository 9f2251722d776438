//! A deterministic simulation of a cluster: each member is a real
//! [`Storage`] with the real [`Core`]; their actions become operations
//! that complete in a seeded random order, across partitions, some with
//! their answer lost. What each operation does to the storages is
//! `local.rs`, the same code the driver and the server run. `TARN_SEED`
//! replays a run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{Action, BatchRef, Confirmation, Core, Input, Timing};
use super::local;
use crate::cluster::membership::Member;
use crate::store::testing::{self, rows_of};
use crate::store::{BatchMeta, Durability, Rows, Storage, Val};

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<Storage>,
    core: Core,
    member: Member,
}

/// An action under way: it completes at a random later step.
struct Op {
    node: usize,
    action: Action,
}

struct Sim {
    nodes: Vec<Node>,
    pending: Vec<Op>,
    cut: HashSet<(usize, usize)>,
    now: Instant,
    rng: u64,
    /// Chance, in percent, that a message's answer is lost.
    loss: u64,
    /// Pull budget per round, in bytes (small: several rounds per origin).
    budget: usize,
    /// How often each batch was pushed by its origin.
    pushes: HashMap<BatchRef, usize>,
    waiters: HashMap<(usize, u64), Vec<BatchRef>>,
    answered: Vec<(usize, Confirmation)>,
    next_waiter: u64,
}

impl Sim {
    fn new(n: usize, seed: u64, loss: u64) -> Sim {
        let now = Instant::now();
        let timing = Timing {
            sync_every: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(5),
        };
        let nodes = (0..n)
            .map(|i| {
                let dir = tempfile::tempdir().unwrap();
                let key = tarn_net::Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap();
                let peer = key.public().to_peer_id();
                let store = testing::open(dir.path(), &format!("m{i}"), &peer.to_string());
                Node {
                    _dir: dir,
                    store: Arc::new(store),
                    core: Core::new(timing, now),
                    member: Member {
                        peer,
                        name: format!("m{i}"),
                        rest: String::new(),
                    },
                }
            })
            .collect();
        let mut sim = Sim {
            nodes,
            pending: Vec::new(),
            cut: HashSet::new(),
            now,
            rng: seed | 1,
            loss,
            budget: 300,
            pushes: HashMap::new(),
            waiters: HashMap::new(),
            answered: Vec::new(),
            next_waiter: 0,
        };
        for i in 0..n {
            sim.feed(i, None);
        }
        sim
    }

    fn rnd(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn index_of(&self, peer: &tarn_net::PeerId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.member.peer == *peer)
            .expect("a member of the simulation")
    }

    /// Tells node `i` who is live (links not cut), then gives it `input`.
    fn feed(&mut self, i: usize, input: Option<Input>) {
        let members: Vec<(Member, bool)> = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| (self.nodes[j].member.clone(), self.linked(i, j)))
            .collect();
        let now = self.now;
        let mut actions = self.nodes[i].core.step(Input::Members(members), now);
        if let Some(input) = input {
            actions.extend(self.nodes[i].core.step(input, now));
        }
        self.apply(i, actions);
    }

    fn tick(&mut self, i: usize) {
        let actions = self.nodes[i].core.tick(self.now);
        self.apply(i, actions);
        self.feed(i, None);
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Confirmed { waiter, report } => {
                    let batches = self.waiters.remove(&(i, waiter)).expect("a known waiter");
                    // A member said to hold the batches does hold them.
                    for m in &report.confirmed {
                        let j = self.index_of(&m.peer);
                        for b in &batches {
                            let held = self.nodes[j].store.held(&b.origin);
                            assert!(
                                held.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b.id)),
                                "{} confirmed batch {} it does not hold",
                                m.name,
                                b.id
                            );
                        }
                    }
                    self.answered.push((i, report));
                }
                Action::Push { ref batches, .. } => {
                    for b in batches {
                        *self.pushes.entry(b.clone()).or_default() += 1;
                    }
                    self.pending.push(Op { node: i, action });
                }
                other => self.pending.push(Op {
                    node: i,
                    action: other,
                }),
            }
        }
    }

    /// A client writes batch `n` to node `i`; with `confirm`, as a
    /// `consistency=cluster` write.
    fn write(&mut self, i: usize, n: u64, confirm: bool) {
        let meta = BatchMeta {
            source: "sim".into(),
            hash: format!("h{n}"),
            instructions: String::new(),
        };
        let store = self.nodes[i].store.clone();
        let w = store.write("lab", "t", rows_of(n), &meta).unwrap();
        let ids = store.part_ids("lab", &w.origin, w.tsd_id).unwrap();
        let refs: Vec<BatchRef> = ids
            .into_iter()
            .map(|id| BatchRef {
                db: "lab".into(),
                origin: w.origin.clone(),
                id,
            })
            .collect();
        if !w.duplicate {
            for b in &refs {
                self.feed(i, Some(Input::Committed(b.clone())));
            }
        }
        if confirm {
            self.next_waiter += 1;
            let waiter = self.next_waiter;
            self.waiters.insert((i, waiter), refs.clone());
            self.feed(
                i,
                Some(Input::Confirm {
                    waiter,
                    batches: refs,
                }),
            );
        }
    }

    /// Completes operation `k`: its effect on the storages happens now.
    fn complete(&mut self, k: usize) {
        let Op { node: i, action } = self.pending.swap_remove(k);
        let lost = self.rnd(100) < self.loss;
        let input = match action {
            Action::Push { push, batches, to } => {
                let mut results = Vec::new();
                for peer in to {
                    let j = self.index_of(&peer);
                    if !self.linked(i, j) {
                        results.push((peer, Err("unreachable".into())));
                        continue;
                    }
                    let mut errors = Vec::new();
                    let mut at = 0;
                    while at < batches.len() {
                        let (msg, _, next) =
                            local::read_message(&self.nodes[i].store, &batches, at);
                        at = next;
                        let from = self.nodes[i].member.peer.to_string();
                        errors.extend(
                            local::store_pushed(&self.nodes[j].store, &from, msg)
                                .into_iter()
                                .flatten(),
                        );
                    }
                    let r = match errors.first() {
                        _ if lost => Err("the answer was lost".into()),
                        Some(e) => Err(e.clone()),
                        None => Ok(()),
                    };
                    results.push((peer, r));
                }
                Input::Pushed {
                    push,
                    missing: Vec::new(),
                    results,
                }
            }
            Action::AskInventory(peer) => {
                let j = self.index_of(&peer);
                let theirs = if self.linked(i, j) && !lost {
                    Ok(self.nodes[j].store.inventory())
                } else {
                    Err("unreachable".into())
                };
                Input::Inventory {
                    peer,
                    theirs,
                    mine: self.nodes[i].store.inventory(),
                }
            }
            Action::Pull { peer, origin, skip } => {
                let j = self.index_of(&peer);
                let result = if self.linked(i, j) {
                    let have = local::have(&self.nodes[i].store, &origin, &skip);
                    let batches =
                        local::missing(&self.nodes[j].store, &origin, have, self.budget).unwrap();
                    if lost {
                        Err("the answer was lost".into())
                    } else {
                        let from = peer.to_string();
                        local::store_pulled(&self.nodes[i].store, &from, &origin, batches)
                    }
                } else {
                    Err("unreachable".into())
                };
                Input::Pulled {
                    peer,
                    origin,
                    result,
                }
            }
            Action::Confirmed { .. } => unreachable!("answered when emitted"),
        };
        self.feed(i, Some(input));
    }

    /// Heals every link and runs until nothing is under way and every
    /// member has had two full rounds of exchanges.
    fn settle(&mut self) {
        self.cut.clear();
        for _ in 0..200 {
            self.now += Duration::from_millis(1100);
            for i in 0..self.nodes.len() {
                self.tick(i);
            }
            while !self.pending.is_empty() {
                let k = self.rnd(self.pending.len() as u64) as usize;
                self.complete(k);
            }
            if self.nodes.iter().all(|n| n.core.idle()) && self.converged() {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    fn converged(&self) -> bool {
        let first = self.nodes[0].store.inventory();
        self.nodes[1..].iter().all(|n| {
            let inv = n.store.inventory();
            inv.len() == first.len() && inv.iter().zip(&first).all(|(a, b)| a.same_set(b))
        })
    }

    /// `(rows, distinct keys, keys)` of `lab.t` on node `i`.
    fn keys(&self, i: usize) -> (i64, i64, Vec<i64>) {
        testing::keys(&self.nodes[i].store)
    }
}

fn seed() -> u64 {
    let seed = std::env::var("TARN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| crate::clock::Clock::now_micros(&crate::clock::SystemClock) as u64);
    eprintln!("replication simulation: TARN_SEED={seed}");
    seed
}

/// Random writes (some re-sent to another member, some waiting for their
/// cluster), operations completing in any order, lost answers and
/// partitions between three members: once the links heal every member
/// holds every batch once, their inventories agree, every confirmation was
/// answered and none named a member that did not hold the batch.
#[test]
fn members_converge_with_no_duplicates_in_any_order() {
    let seed = seed();
    let mut sim = Sim::new(3, seed, 10);
    let mut next = 0u64;
    let mut written: Vec<u64> = Vec::new();
    for _ in 0..400 {
        match sim.rnd(12) {
            0..=2 => {
                let at = sim.rnd(3) as usize;
                let confirm = sim.rnd(3) == 0;
                sim.write(at, next, confirm);
                written.push(next);
                next += 1;
            }
            // A client re-sends an earlier batch to another member.
            3 if !written.is_empty() => {
                let n = written[sim.rnd(written.len() as u64) as usize];
                let at = sim.rnd(3) as usize;
                sim.write(at, n, false);
            }
            4 | 5 => {
                let ms = sim.rnd(700);
                sim.now += Duration::from_millis(ms);
                let i = sim.rnd(3) as usize;
                sim.tick(i);
            }
            6 => {
                let (a, b) = (sim.rnd(3) as usize, sim.rnd(3) as usize);
                if a != b && sim.cut.len() < 2 {
                    sim.cut.insert((a.min(b), a.max(b)));
                } else {
                    sim.cut.clear();
                }
            }
            _ if !sim.pending.is_empty() => {
                let k = sim.rnd(sim.pending.len() as u64) as usize;
                sim.complete(k);
            }
            _ => {}
        }
    }
    sim.settle();
    let want: Vec<i64> = (0..next as i64 * 10).collect();
    for i in 0..3 {
        let (n, d, ks) = sim.keys(i);
        assert_eq!(
            (n, d),
            (want.len() as i64, want.len() as i64),
            "member {i}, seed {seed}"
        );
        assert_eq!(ks, want, "member {i}, seed {seed}");
    }
    assert!(
        sim.waiters.is_empty(),
        "unanswered confirmations, seed {seed}"
    );
    // The in-memory inventory is what a restart rebuilds from disk.
    for (i, node) in sim.nodes.iter().enumerate() {
        let again = Storage::open(
            node._dir.path(),
            &format!("m{i}"),
            &node.member.peer.to_string(),
            Durability::Normal,
            crate::clock::system(),
        )
        .unwrap();
        assert_eq!(again.inventory(), node.store.inventory(), "seed {seed}");
    }
}

/// With nothing lost and every member live, every batch is pushed once,
/// whether or not a write waits for its cluster, and every confirmation
/// names both other members.
#[test]
fn without_faults_each_batch_is_pushed_once_and_confirmed_by_all() {
    let mut sim = Sim::new(3, seed(), 0);
    for n in 0..60 {
        let at = (n % 3) as usize;
        sim.write(at, n, n % 2 == 0);
        // Some operations complete between writes, the rest pile up.
        for _ in 0..2 {
            if !sim.pending.is_empty() {
                let k = sim.rnd(sim.pending.len() as u64) as usize;
                sim.complete(k);
            }
        }
    }
    sim.settle();
    assert_eq!(sim.answered.len(), 30);
    for (i, report) in &sim.answered {
        assert_eq!(report.confirmed.len(), 2, "node {i}: {report:?}");
    }
    for (b, n) in &sim.pushes {
        assert_eq!(*n, 1, "batch {b:?} pushed {n} times");
    }
    assert_eq!(sim.pushes.len(), 60);
}

/// A batch larger than one message is recorded as parts; each travels
/// alone, and the same batch written on another member is cut alike, so
/// nothing is stored twice.
#[test]
fn large_batches_travel_in_parts() {
    let big = |n: usize| Rows {
        columns: vec!["k".into(), "s".into()],
        rows: (0..n)
            .map(|i| vec![Val::Int(i as i64), Val::Text(format!("{i:0>60}"))])
            .collect(),
    };
    let meta = BatchMeta {
        source: "file".into(),
        hash: "big".into(),
        instructions: String::new(),
    };
    let mut sim = Sim::new(2, seed(), 0);
    sim.budget = local::MESSAGE_BYTES;
    let a = sim.nodes[0].store.clone();
    let w = a.write("lab", "t", big(100_000), &meta).unwrap();
    let inv = a.inventory();
    assert!(inv[0].batches >= 3, "{inv:?}");
    assert_eq!(inv[0].rows, 100_000);
    let parts = a.part_ids("lab", &w.origin, w.tsd_id).unwrap();
    assert_eq!(parts.len() as u64, inv[0].batches);
    for id in &parts {
        let b = a.read_batch("lab", &w.origin, *id).unwrap().unwrap();
        assert!(b.approx_size() <= 3 << 20);
    }
    // Sent again: a duplicate, nothing added.
    assert!(a.write("lab", "t", big(100_000), &meta).unwrap().duplicate);
    // The other member gets the same batch from a client, and a's parts by
    // pulling: each part is held once, as a copy of its own.
    sim.nodes[1]
        .store
        .write("lab", "t", big(100_000), &meta)
        .unwrap();
    sim.settle();
    for i in 0..2 {
        let (n, d, _) = sim.keys(i);
        assert_eq!((n, d), (100_000, 100_000));
    }
    assert_eq!(sim.nodes[0].store.inventory().len(), 2);
}
