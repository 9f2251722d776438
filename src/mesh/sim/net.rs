//! The simulated network: the event queue, links, gossip and anti-entropy.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use ed25519_dalek::SigningKey;

use super::*;

/// `n` seeded keys in author order (the order of a liveness table).
fn keys(rng: &mut Rng, n: usize) -> Vec<SigningKey> {
    let mut keys: Vec<SigningKey> = (0..n)
        .map(|_| {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&rng.next().to_le_bytes());
            }
            SigningKey::from_bytes(&b)
        })
        .collect();
    keys.sort_by_key(|k| k.verifying_key().to_bytes());
    keys
}

impl<M: Member> Sim<M> {
    pub(super) fn new(p: &Params) -> Sim<M> {
        let n = p.nodes;
        let mut rng = Rng(p.seed);
        let keys = keys(&mut rng, n);
        let rumor_bytes = tarn_net::codec::encode(
            &crate::proto::liveness::Rumor::Alive(member::sample_record(&keys[0], n)),
            usize::MAX,
        )
        .map_or(150, |b| b.len() as u64);
        let w = M::world(&keys);
        let mut nodes: Vec<Node<M>> = (0..n)
            .map(|i| Node {
                up: true,
                epoch: 0,
                m: M::start(&w, i, 1),
                started: 1,
                ticks: 0,
                heads: vec![3; n],
                ledger: 0,
                links: Vec::new(),
                mesh: Vec::new(),
                last_full: [None, None],
                probed: Vec::new(),
                announce: false,
                unsent: Vec::new(),
                gone: false,
            })
            .collect();
        // Converged to begin with: every node knows every node and holds
        // each one's three policies.
        let owns: Vec<Say> = nodes.iter().map(|x| x.m.own()).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for (j, s) in owns.iter().enumerate() {
                if i != j {
                    node.m.apply(&w, *s, 0);
                }
            }
            node.ledger = (0..n).fold(0u64, |d, a| d.wrapping_add(mix(a as u64, 3)));
        }
        let mut sim = Sim {
            p: p.clone(),
            w,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            msgs: Vec::new(),
            named: HashMap::new(),
            born: vec![vec![0; 3]; n],
            cut: None,
            healed_at: None,
            goals: Vec::new(),
            report: Report {
                nodes: n,
                ..Report::default()
            },
            rumor_bytes,
            repair_second: (0, 0),
        };
        for i in 0..n {
            for _ in 0..p.links / 2 {
                let j = sim.rng.below(n);
                sim.link(i, j, false);
            }
            let at = sim.rng.below(1000) as u32;
            sim.at(
                at,
                Ev::Tick {
                    at: i as u32,
                    epoch: 0,
                },
            );
        }
        for i in 0..n {
            sim.heartbeat(i);
        }
        sim
    }

    pub(super) fn at(&mut self, t: u32, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued(t, self.seq, ev)));
    }

    pub(super) fn in_ms(&mut self, d: u32, ev: Ev) {
        self.at(self.now.saturating_add(d), ev);
    }

    pub(super) fn busy_until(&self) -> u32 {
        (self.p.secs - self.p.quiet_secs) * 1000
    }

    pub(super) fn run(mut self) -> Report {
        let end = self.p.secs * 1000;
        if self.p.stops_per_min > 0.0 {
            let w = self.rng.wait(60_000.0 / self.p.stops_per_min);
            self.at(w, Ev::Stop);
        }
        if self.p.policies_per_min > 0.0 {
            let w = self.rng.wait(60_000.0 / self.p.policies_per_min);
            self.at(w, Ev::Publish);
        }
        if let Some((from, until, _)) = self.p.partition {
            self.at(from * 1000, Ev::Cut);
            self.at(until * 1000, Ev::Heal);
        }
        self.at(CHECK_EVERY_MS, Ev::Check);
        while let Some(Reverse(Queued(t, _, ev))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            self.report.events += 1;
            self.step(ev);
        }
        self.finish()
    }

    pub(super) fn live(&self, i: usize, epoch: u32) -> bool {
        self.nodes[i].up && self.nodes[i].epoch == epoch
    }

    pub(super) fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up
            && self.nodes[b].up
            && self.cut.as_ref().is_none_or(|side| side[a] == side[b])
    }

    pub(super) fn latency(&self, a: usize, b: usize) -> u32 {
        let (lo, hi) = self.p.latency_ms;
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        lo + (mix(self.p.seed ^ x << 32, y) % u64::from(hi - lo + 1)) as u32
    }

    /// Counts a message's body at its receiver.
    pub(super) fn count(&mut self, class: usize, bytes: u64) {
        self.report.msgs[class] += 1;
        self.report.bytes[class] += bytes;
        if class >= PULL {
            let s = self.now / 1000;
            if s != self.repair_second.0 {
                self.repair_second = (s, 0);
            }
            self.repair_second.1 += bytes;
            let per = self.repair_second.1 as f64 / self.p.nodes as f64;
            self.report.peak_repair_per_node = self.report.peak_repair_per_node.max(per);
        }
    }

    /// A request from `a` to `b` and its reply back: whether both got through.
    pub(super) fn exchange(
        &mut self,
        a: usize,
        b: usize,
        class: usize,
        bytes: (u64, u64),
    ) -> Option<u32> {
        if !self.reachable(a, b) || self.rng.chance(self.p.loss) || self.rng.chance(self.p.loss) {
            return None;
        }
        self.count(class, bytes.0);
        self.count(class, bytes.1);
        Some(2 * self.latency(a, b))
    }

    pub(super) fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Gossip { to, from, msg } => self.deliver(to as usize, from as usize, msg),
            Ev::Lost { at, peer, epoch } if self.live(at as usize, epoch) => {
                self.lost(at as usize, peer as usize)
            }
            Ev::Probed { at, peer, epoch } if self.live(at as usize, epoch) => {
                self.probed(at as usize, peer as usize)
            }
            Ev::Tick { at, epoch } if self.live(at as usize, epoch) => self.tick(at as usize),
            Ev::Digest { at, peer, epoch } if self.live(at as usize, epoch) => {
                self.digest_back(at as usize, peer as usize)
            }
            Ev::Pull { at, peer, epoch } if self.live(at as usize, epoch) => {
                self.pull_back(at as usize, peer as usize)
            }
            Ev::Heads { at, peer, epoch } if self.live(at as usize, epoch) => {
                let (a, b) = (at as usize, peer as usize);
                let d = 2 * self.latency(a, b);
                let e = (epoch, self.nodes[b].epoch);
                self.in_ms(
                    d,
                    Ev::Fetch {
                        at,
                        peer,
                        author: u32::MAX,
                        epoch: e.0,
                    },
                );
                if self.nodes[b].up {
                    let f = Ev::Fetch {
                        at: peer,
                        peer: at,
                        author: u32::MAX,
                        epoch: e.1,
                    };
                    self.in_ms(d, f);
                }
            }
            Ev::Fetch {
                at,
                peer,
                author,
                epoch,
            } if self.live(at as usize, epoch) => {
                self.fetch_back(at as usize, peer as usize, author)
            }
            Ev::Stop => self.stop(),
            Ev::Restart { at } => self.restart(at as usize),
            Ev::Publish => self.publish(),
            Ev::Cut => self.cut(),
            Ev::Heal => {
                self.cut = None;
                self.healed_at = Some(self.now);
            }
            Ev::Check => self.check(),
            _ => {}
        }
    }

    pub(super) fn seen(&self, i: usize, msg: u32) -> bool {
        let s = &self.msgs[msg as usize].seen;
        s.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Gossips `key` from node `i`: the publisher's flood when `from` is
    /// `None`, a forward to its mesh otherwise. False if nobody took it.
    pub(super) fn gossip(&mut self, i: usize, key: Key, from: Option<usize>) -> bool {
        let msg = match self.named.get(&key) {
            Some(&m) => m,
            None => {
                self.msgs.push(Msg {
                    key,
                    born: self.now,
                    seen: vec![0; self.p.nodes.div_ceil(64)],
                });
                let m = (self.msgs.len() - 1) as u32;
                self.named.insert(key, m);
                m
            }
        };
        if from.is_none() && self.seen(i, msg) {
            // Named by content: a node sends one message once.
            return true;
        }
        self.msgs[msg as usize].seen[i / 64] |= 1 << (i % 64);
        let targets = match from {
            None => self.nodes[i].links.clone(),
            Some(f) => self.nodes[i]
                .mesh
                .iter()
                .copied()
                .filter(|&t| t as usize != f)
                .collect(),
        };
        let mut sent = false;
        for t in targets {
            let t = t as usize;
            if !self.reachable(i, t) || self.rng.chance(self.p.loss) {
                continue;
            }
            sent = true;
            let d = self.latency(i, t);
            self.in_ms(
                d,
                Ev::Gossip {
                    to: t as u32,
                    from: i as u32,
                    msg,
                },
            );
        }
        sent || self.nodes[i]
            .links
            .iter()
            .any(|&t| self.nodes[t as usize].up)
    }

    pub(super) fn say(&mut self, i: usize, s: Say) {
        if !self.gossip(i, Key::Say(s), None) && s == self.nodes[i].m.own() {
            self.nodes[i].announce = true;
        }
    }

    /// Whether a message sent by `from` arrives at `to` (sent before
    /// `from` stopped, it still does).
    pub(super) fn arrives(&self, from: usize, to: usize) -> bool {
        self.nodes[to].up && self.cut.as_ref().is_none_or(|side| side[from] == side[to])
    }

    pub(super) fn deliver(&mut self, to: usize, from: usize, msg: u32) {
        if !self.arrives(from, to) {
            return;
        }
        let key = self.msgs[msg as usize].key;
        let class = if matches!(key, Key::Say(_)) {
            RUMOR
        } else {
            ENTRY
        };
        let bytes = if class == RUMOR {
            self.rumor_bytes
        } else {
            ENTRY_BYTES
        };
        self.count(class, bytes);
        if self.seen(to, msg) {
            return;
        }
        self.gossip(to, key, Some(from));
        match key {
            Key::Say(s) => {
                if let Some(g) = self.nodes[to].m.apply(&self.w, s, self.now) {
                    self.say(to, g);
                }
            }
            Key::Entry(author, seq) => {
                let head = self.nodes[to].heads[author as usize];
                if seq == head + 1 {
                    self.set_head(to, author as usize, seq);
                } else if seq > head + 1
                    && let Some(d) = self.exchange(to, from, FETCH, (16, 0))
                {
                    let epoch = self.nodes[to].epoch;
                    self.in_ms(
                        d,
                        Ev::Fetch {
                            at: to as u32,
                            peer: from as u32,
                            author,
                            epoch,
                        },
                    );
                }
            }
        }
    }

    pub(super) fn set_head(&mut self, i: usize, author: usize, seq: u32) {
        let n = &mut self.nodes[i];
        let old = n.heads[author];
        n.ledger = n
            .ledger
            .wrapping_sub(mix(author as u64, u64::from(old)))
            .wrapping_add(mix(author as u64, u64::from(seq)));
        n.heads[author] = seq;
    }

    /// Node `i` takes from `peer` what it holds beyond `i`'s heads (one
    /// author, or all); what is news to `i` is gossiped on.
    pub(super) fn fetch_back(&mut self, i: usize, peer: usize, author: u32) {
        if !self.reachable(i, peer) {
            return;
        }
        let authors: Vec<usize> = if author == u32::MAX {
            (0..self.p.nodes).collect()
        } else {
            vec![author as usize]
        };
        for a in authors {
            let (mine, theirs) = (self.nodes[i].heads[a], self.nodes[peer].heads[a]);
            if theirs <= mine {
                continue;
            }
            self.count(FETCH, ENTRY_BYTES * u64::from(theirs - mine));
            self.set_head(i, a, theirs);
            for seq in mine + 1..=theirs {
                if self.born[a][seq as usize - 1] > self.nodes[i].started {
                    self.gossip(i, Key::Entry(a as u32, seq), None);
                }
            }
        }
    }

    pub(super) fn link(&mut self, a: usize, b: usize, sync: bool) -> bool {
        let max = 2 * self.p.links;
        if a == b
            || !self.reachable(a, b)
            || self.nodes[a].links.contains(&(b as u32))
            || self.nodes[a].links.len() >= max
            || self.nodes[b].links.len() >= max
        {
            return false;
        }
        self.nodes[a].links.push(b as u32);
        self.nodes[b].links.push(a as u32);
        if sync {
            self.sync(a, b);
            self.sync(b, a);
        }
        true
    }

    pub(super) fn unlink(&mut self, a: usize, b: usize) {
        let n = &mut self.nodes[a];
        n.links.retain(|&x| x as usize != b);
        n.mesh.retain(|&x| x as usize != b);
    }

    /// A digest round of `a` with `b`.
    pub(super) fn sync(&mut self, a: usize, b: usize) {
        if let Some(d) = self.exchange(a, b, DIGEST, (DIGEST_BYTES, DIGEST_BYTES)) {
            let epoch = self.nodes[a].epoch;
            self.in_ms(
                d,
                Ev::Digest {
                    at: a as u32,
                    peer: b as u32,
                    epoch,
                },
            );
        }
    }

    pub(super) fn full_due(&mut self, i: usize, kind: usize) -> bool {
        let now = self.now;
        let last = &mut self.nodes[i].last_full[kind];
        if last.is_some_and(|t| now - t < FULL_EVERY_MS) {
            return false;
        }
        *last = Some(now);
        true
    }

    pub(super) fn digest_back(&mut self, a: usize, b: usize) {
        if !self.nodes[b].up {
            return;
        }
        let epoch = self.nodes[a].epoch;
        if self.nodes[a].m.digest() != self.nodes[b].m.digest() && self.full_due(a, 0) {
            let rows = self.nodes[b].m.rows() as u64 * (self.rumor_bytes + 1);
            if let Some(d) = self.exchange(a, b, PULL, (40, rows)) {
                self.in_ms(
                    d,
                    Ev::Pull {
                        at: a as u32,
                        peer: b as u32,
                        epoch,
                    },
                );
            }
        }
        if self.nodes[a].ledger != self.nodes[b].ledger && self.full_due(a, 1) {
            let heads = self.p.nodes as u64 * HEAD_BYTES;
            if let Some(d) = self.exchange(a, b, HEADS, (heads, heads)) {
                self.in_ms(
                    d,
                    Ev::Heads {
                        at: a as u32,
                        peer: b as u32,
                        epoch,
                    },
                );
            }
        }
    }

    pub(super) fn pull_back(&mut self, a: usize, b: usize) {
        if !self.nodes[b].up || a == b {
            return;
        }
        let (x, y) = if a < b {
            let (l, r) = self.nodes.split_at_mut(b);
            (&mut l[a], &r[0])
        } else {
            let (l, r) = self.nodes.split_at_mut(a);
            (&mut r[0], &l[b])
        };
        let says = x.m.merge(&self.w, &y.m, self.now, x.started);
        for s in says {
            self.say(a, s);
        }
    }
}
