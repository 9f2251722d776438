//! Deterministic simulation of the mesh's membership and ledger sync at
//! sizes one machine cannot run for real (1,000 and 10,000 nodes): virtual
//! time in ms, seeded loss and latency, partitions and churn.
//!
//! What it runs, with the node's own constants: the liveness rules
//! ([`member`]: the real [`super::liveness::Table`], or a compact model of
//! it checked against the table in the tests), gossip as gossipsub does it
//! (the publisher floods its links, each node forwards a message's first
//! copy to its mesh peers; IHAVE/IWANT repair is not modelled, which makes
//! the simulation pessimistic), ping-based loss of silently cut links, the
//! probe and suspicion, anti-entropy (a digest round with one linked peer
//! every [`SYNC_EVERY`], O(N) tables and heads at most every 10 s), gap
//! fetches, retries of dead peers every 30 s, and the link manager (dial
//! below half the target, a shuffle a minute). What it does not run: the
//! bytes of TCP, Noise and yamux; message sizes are the bodies'.
//!
//! `examples/sim_mesh.rs` runs it at size; the tests run it small in CI.

mod churn;
mod member;
mod net;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub use member::{Member, Model, Real, Say};

use super::dispatch::SYNC_EVERY;
use super::ledger_sync::FULL_SYNC_EVERY;
use super::liveness::SUSPECT_FOR_MS;
use super::presence::{PROBE_QUIET, PROBE_TIMEOUT, RETRY_DEAD_EVERY};

/// What a run simulates.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub seed: u64,
    /// Virtual seconds in all; the last `quiet_secs` without churn,
    /// partitions or publishing, after which the end state is checked.
    pub secs: u32,
    pub quiet_secs: u32,
    /// Links a node keeps (`peers_target`); it dials below half of it and
    /// refuses above `2 × links` (`peers_max`).
    pub links: usize,
    /// Chance that one message is lost.
    pub loss: f64,
    /// One-way latency of a link, drawn once per link in this range (ms).
    pub latency_ms: (u32, u32),
    /// Nodes that stop, network-wide, per minute; each comes back
    /// `down_secs` later with a new incarnation.
    pub stops_per_min: f64,
    /// Of the stops: the share that are silent cuts (a host gone: peers
    /// notice by ping), and the share that say goodbye; the rest crash
    /// (their OS closes the sockets).
    pub silent: f64,
    pub graceful: f64,
    pub down_secs: u32,
    /// `(from s, until s, share)`: that share of the nodes is cut off.
    pub partition: Option<(u32, u32, f64)>,
    /// Ledger entries published network-wide per minute.
    pub policies_per_min: f64,
}

impl Params {
    /// A modest run: churn, a partition in the middle, a few policies.
    pub fn churn(nodes: usize, seed: u64) -> Params {
        Params {
            nodes,
            seed,
            secs: 600,
            quiet_secs: 120,
            links: 24,
            loss: 0.01,
            latency_ms: (2, 80),
            stops_per_min: 6.0,
            silent: 0.3,
            graceful: 0.3,
            down_secs: 40,
            partition: Some((200, 290, 0.3)),
            policies_per_min: 12.0,
        }
    }
}

/// The message families whose cost is counted apart.
pub const CLASSES: [&str; 6] = [
    "liveness gossip",
    "ledger gossip",
    "digests",
    "table pulls",
    "heads",
    "entries fetched",
];
const RUMOR: usize = 0;
const ENTRY: usize = 1;
const DIGEST: usize = 2;
const PULL: usize = 3;
const HEADS: usize = 4;
const FETCH: usize = 5;

/// Body sizes (bytes): a ledger entry as gossiped (bench_mesh: 61.5 KB in
/// 199 deliveries), a digest request or reply, one author's head.
const ENTRY_BYTES: u64 = 310;
const DIGEST_BYTES: u64 = 84;
const HEAD_BYTES: u64 = 45;
/// How long a node waits between O(N) exchanges of one kind.
const FULL_EVERY_MS: u32 = FULL_SYNC_EVERY.as_millis() as u32;
const PING_EVERY_MS: u32 = 30_000;
const PING_TIMEOUT_MS: u32 = 10_000;
const PROBE_QUIET_MS: u32 = PROBE_QUIET.as_millis() as u32;
/// A dead peer is tried again every this many ticks (seconds).
const RETRY_DEAD_TICKS: u32 = RETRY_DEAD_EVERY as u32;
/// Gossipsub's mesh degree: D, D_low, D_high.
const MESH: (usize, usize, usize) = (6, 5, 12);
/// Gossipsub forgets a message id after this long.
const SEEN_TTL_MS: u32 = 120_000;
const CHECK_EVERY_MS: u32 = 100;

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub nodes: usize,
    pub events: u64,
    /// A stop until every running node shows the node down (ms).
    pub detect_ms: Vec<u32>,
    /// Stops not shown everywhere before the node came back.
    pub missed: usize,
    /// A restart until every running node shows it up (ms).
    pub rejoin_ms: Vec<u32>,
    /// A policy published until every running node holds it (ms).
    pub policy_ms: Vec<u32>,
    /// The partition healed until every running node shows every running
    /// node up again (ms); `None` if it never did.
    pub heal_ms: Option<u32>,
    /// A node declared dead by a peer that could reach it.
    pub false_deaths: u64,
    /// The same within seconds after the partition healed: the suspicion
    /// began while the peer was cut off, its refutation had not crossed.
    pub deaths_after_heal: u64,
    /// Detections, rejoins and policies whose span overlapped the
    /// partition: not in the timings above (they wait for the heal).
    pub across_partition: usize,
    pub msgs: [u64; 6],
    pub bytes: [u64; 6],
    /// The busiest second's repair bytes (pulls, heads, fetches) per node.
    pub peak_repair_per_node: f64,
    pub links_mean: f64,
    pub links_max: usize,
    /// At the end: (node, peer) pairs shown wrong, and nodes whose ledger
    /// lacks entries another holds.
    pub wrong_views: usize,
    pub behind_ledgers: usize,
}

impl Report {
    /// Every running node shows every node as it is and holds every entry.
    pub fn converged(&self) -> bool {
        self.wrong_views == 0 && self.behind_ledgers == 0
    }

    /// Bytes per node per second of each class over `secs`.
    pub fn per_node_per_sec(&self, secs: u32) -> [f64; 6] {
        let d = self.nodes as f64 * f64::from(secs);
        self.bytes.map(|b| b as f64 / d)
    }
}

/// A quantile (0..=1) of `v`, 0 if empty.
pub fn quantile(v: &[u32], q: f64) -> u32 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(((s.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    /// An exponential wait with mean `mean_ms`.
    fn wait(&mut self, mean_ms: f64) -> u32 {
        let u = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        (-u.ln() * mean_ms).min(f64::from(u32::MAX / 2)) as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Say(Say),
    Entry(u32, u32),
}

struct Msg {
    key: Key,
    born: u32,
    seen: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Gossip {
        to: u32,
        from: u32,
        msg: u32,
    },
    Lost {
        at: u32,
        peer: u32,
        epoch: u32,
    },
    Probed {
        at: u32,
        peer: u32,
        epoch: u32,
    },
    Tick {
        at: u32,
        epoch: u32,
    },
    Digest {
        at: u32,
        peer: u32,
        epoch: u32,
    },
    Pull {
        at: u32,
        peer: u32,
        epoch: u32,
    },
    Heads {
        at: u32,
        peer: u32,
        epoch: u32,
    },
    Fetch {
        at: u32,
        peer: u32,
        author: u32,
        epoch: u32,
    },
    Stop,
    Restart {
        at: u32,
    },
    Publish,
    Cut,
    Heal,
    Check,
}

struct Queued(u32, u64, Ev);

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

struct Node<M> {
    up: bool,
    epoch: u32,
    m: M,
    started: u32,
    ticks: u32,
    /// Entries held per author (the ledger's heads), and their digest.
    heads: Vec<u32>,
    ledger: u64,
    links: Vec<u32>,
    mesh: Vec<u32>,
    last_full: [Option<u32>; 2],
    probed: Vec<(u32, u32)>,
    announce: bool,
    unsent: Vec<Key>,
    /// Stopped silently: its host does not answer at all.
    gone: bool,
}

enum Goal {
    Down(u32, u32),
    Up(u32, u32),
    Policy(u32, u32, u32),
}

/// Runs `p` with membership `M`.
pub fn run<M: Member>(p: &Params) -> Report {
    Sim::<M>::new(p).run()
}

struct Sim<M: Member> {
    p: Params,
    w: M::World,
    rng: Rng,
    now: u32,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node<M>>,
    msgs: Vec<Msg>,
    named: HashMap<Key, u32>,
    /// When each author's entries were made (for "news").
    born: Vec<Vec<u32>>,
    cut: Option<Vec<bool>>,
    healed_at: Option<u32>,
    goals: Vec<Goal>,
    report: Report,
    rumor_bytes: u64,
    repair_second: (u32, u64),
}

fn mix(a: u64, b: u64) -> u64 {
    let mut r = Rng(a.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ b);
    r.next()
}

#[cfg(test)]
mod tests;
