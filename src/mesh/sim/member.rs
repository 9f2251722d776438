//! The membership protocol as the simulation drives it: [`Real`] is the
//! node's own [`liveness::Table`] (signed records, checked on arrival), and
//! [`Model`] is the same rules over a compact array (12 bytes a peer, no
//! signatures) so that 10,000 nodes fit in memory. `sim::tests` runs both
//! on the same seed and requires the same outcome, so the model is checked
//! against the code at every size the real table can run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ed25519_dalek::SigningKey;
use tarn_ledger::Author;

use crate::mesh::liveness::{self, SUSPECT_FOR_MS};
use crate::proto::liveness::{Record, Rumor};

/// A rumor as the simulation carries it: about node `peer` (an index).
/// Two equal rumors are one gossip message (gossip names them by content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Say {
    Alive {
        peer: u32,
        incarnation: u32,
        leaving: bool,
    },
    Suspect {
        peer: u32,
        incarnation: u32,
    },
}

/// One node's membership state, driven by the simulation.
pub trait Member: Sized {
    /// Shared by the nodes of one run.
    type World;
    /// The world for `n` nodes whose keys are `keys` (sorted by author, so
    /// index order is author order).
    fn world(keys: &[SigningKey]) -> Self::World;
    /// Node `me` starting at `incarnation` with an empty table.
    fn start(w: &Self::World, me: usize, incarnation: u32) -> Self;
    /// This node's own record, as a rumor.
    fn own(&self) -> Say;
    fn apply(&mut self, w: &Self::World, s: Say, now: u32) -> Option<Say>;
    /// The link with `peer` was lost: probe it?
    fn lost(&self, peer: usize) -> bool;
    fn probe_failed(&mut self, peer: usize, now: u32) -> Option<Say>;
    /// Suspicions that stood become deaths: the peers that died.
    fn tick(&mut self, now: u32) -> Vec<usize>;
    /// Some(true): alive or suspect; Some(false): dead; None: unknown.
    fn up(&self, peer: usize) -> Option<bool>;
    /// Dead (not by leaving), in author order.
    fn dead(&self) -> Vec<usize>;
    fn digest(&self) -> u64;
    /// Rows known (own included): what a pull of this table carries.
    fn rows(&self) -> usize;
    /// Merges `from`'s table; returns the rumors to gossip: refutations,
    /// and records newer than `started` (gossip missed them around here).
    fn merge(&mut self, w: &Self::World, from: &Self, now: u32, started: u32) -> Vec<Say>;
    fn leave(&mut self, w: &Self::World) -> Say;
}

/// The node's own table, with every record signed and verified.
pub struct Real {
    me: usize,
    table: liveness::Table,
    authors: Rc<Vec<Author>>,
    index: Rc<HashMap<Author, usize>>,
}

/// Keys, authors, and every record any node signed, by (peer, incarnation).
pub struct RealWorld {
    keys: Vec<SigningKey>,
    authors: Rc<Vec<Author>>,
    index: Rc<HashMap<Author, usize>>,
    records: Rc<RefCell<HashMap<(u32, u32), Record>>>,
}

fn addrs(i: usize) -> Vec<Vec<u8>> {
    let a: tarn_net::Multiaddr = format!(
        "/ip4/10.{}.{}.{}/tcp/4001",
        i >> 16,
        (i >> 8) & 255,
        i & 255
    )
    .parse()
    .expect("a valid address");
    vec![a.to_vec()]
}

/// A signed record of node `i`, for its size on the wire.
pub fn sample_record(key: &SigningKey, i: usize) -> Record {
    Record::sign(key, 1_700_000_000_000, addrs(i), false)
}

impl RealWorld {
    fn say(&self, r: &Rumor) -> Say {
        match r {
            Rumor::Alive(rec) => {
                let s = Say::Alive {
                    peer: self.index[&rec.peer] as u32,
                    incarnation: rec.incarnation as u32,
                    leaving: rec.leaving,
                };
                self.records
                    .borrow_mut()
                    .entry((self.index[&rec.peer] as u32, rec.incarnation as u32))
                    .or_insert_with(|| rec.clone());
                s
            }
            Rumor::Suspect { peer, incarnation } => Say::Suspect {
                peer: self.index[peer] as u32,
                incarnation: *incarnation as u32,
            },
        }
    }

    fn rumor(&self, s: Say) -> Rumor {
        match s {
            Say::Alive {
                peer, incarnation, ..
            } => Rumor::Alive(self.records.borrow()[&(peer, incarnation)].clone()),
            Say::Suspect { peer, incarnation } => Rumor::Suspect {
                peer: self.authors[peer as usize],
                incarnation: u64::from(incarnation),
            },
        }
    }
}

impl Member for Real {
    type World = RealWorld;

    fn world(keys: &[SigningKey]) -> RealWorld {
        let authors: Vec<Author> = keys
            .iter()
            .map(|k| Author(k.verifying_key().to_bytes()))
            .collect();
        RealWorld {
            keys: keys.to_vec(),
            index: Rc::new(authors.iter().enumerate().map(|(i, a)| (*a, i)).collect()),
            authors: Rc::new(authors),
            records: Rc::default(),
        }
    }

    fn start(w: &RealWorld, me: usize, incarnation: u32) -> Real {
        let table = liveness::Table::new(w.keys[me].clone(), u64::from(incarnation), addrs(me));
        w.say(&Rumor::Alive(table.own().clone()));
        Real {
            me,
            table,
            authors: w.authors.clone(),
            index: w.index.clone(),
        }
    }

    fn own(&self) -> Say {
        let r = self.table.own();
        Say::Alive {
            peer: self.me as u32,
            incarnation: r.incarnation as u32,
            leaving: r.leaving,
        }
    }

    fn apply(&mut self, w: &RealWorld, s: Say, now: u32) -> Option<Say> {
        let a = self.table.apply(w.rumor(s), u64::from(now));
        a.gossip.map(|g| w.say(&g))
    }

    fn lost(&self, peer: usize) -> bool {
        self.table.lost(&self.author(peer))
    }

    fn probe_failed(&mut self, peer: usize, now: u32) -> Option<Say> {
        let a = self.author(peer);
        let r = self.table.probe_failed(&a, u64::from(now))?;
        Some(match r {
            Rumor::Suspect { incarnation, .. } => Say::Suspect {
                peer: peer as u32,
                incarnation: incarnation as u32,
            },
            Rumor::Alive(_) => unreachable!("a probe's rumor is a suspicion"),
        })
    }

    fn tick(&mut self, now: u32) -> Vec<usize> {
        let died = self.table.tick(u64::from(now));
        died.iter().map(|a| self.index[a]).collect()
    }

    fn up(&self, peer: usize) -> Option<bool> {
        self.table.is_up(&self.author(peer))
    }

    fn dead(&self) -> Vec<usize> {
        self.table.dead().map(|a| self.index[a]).collect()
    }

    fn digest(&self) -> u64 {
        let d = self.table.digest();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    fn rows(&self) -> usize {
        self.table.counts().0 + self.table.counts().1 + 1
    }

    fn merge(&mut self, w: &RealWorld, from: &Real, now: u32, started: u32) -> Vec<Say> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (rows, more) = from.table.page(after);
            after = rows.last().map(|r| r.record.peer);
            for a in self.table.merge(rows, u64::from(now)) {
                if let Some(r) = a.record
                    && r.incarnation > u64::from(started)
                {
                    out.push(w.say(&Rumor::Alive(r)));
                }
                out.extend(a.gossip.map(|g| w.say(&g)));
            }
            if !more {
                return out;
            }
        }
    }

    fn leave(&mut self, w: &RealWorld) -> Say {
        w.say(&self.table.leave())
    }
}

impl Real {
    fn author(&self, peer: usize) -> Author {
        self.authors[peer]
    }
}

/// A peer's row in a [`Model`] table: 12 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    incarnation: u32,
    since: u32,
    /// 0 unknown, 1 alive, 2 suspect, 3 dead; +4 if it left.
    tag: u8,
}

const UNKNOWN: u8 = 0;
const ALIVE: u8 = 1;
const SUSPECT: u8 = 2;
const DEAD: u8 = 3;
const LEFT: u8 = 4;

/// [`liveness::Table`]'s rules over an array indexed by node.
pub struct Model {
    me: usize,
    incarnation: u32,
    leaving: bool,
    rows: Vec<Row>,
    known: usize,
    /// Peers suspected (some may have moved on since): what `tick` reads.
    suspects: Vec<u32>,
    /// The sum of every row's hash (own included): updated in O(1).
    digest: u64,
}

fn mix(peer: usize, incarnation: u32, flag: bool) -> u64 {
    let mut x = (peer as u64) << 33 ^ u64::from(incarnation) << 1 ^ u64::from(flag);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Row {
    fn state(&self) -> u8 {
        self.tag & 3
    }
    fn hash(&self, peer: usize) -> u64 {
        match self.state() {
            UNKNOWN => 0,
            s => mix(peer, self.incarnation, s != ALIVE),
        }
    }
}

impl Model {
    fn set(&mut self, peer: usize, row: Row) {
        let old = self.rows[peer];
        if old.state() == UNKNOWN {
            self.known += 1;
        }
        if row.state() == SUSPECT {
            self.suspects.push(peer as u32);
        }
        self.digest = self
            .digest
            .wrapping_sub(old.hash(peer))
            .wrapping_add(row.hash(peer));
        self.rows[peer] = row;
    }

    fn own_hash(&self) -> u64 {
        mix(self.me, self.incarnation, self.leaving)
    }

    fn refute(&mut self, incarnation: u32) -> Say {
        let h = self.own_hash();
        self.incarnation = incarnation.max(self.incarnation) + 1;
        self.digest = self.digest.wrapping_sub(h).wrapping_add(self.own_hash());
        self.own()
    }
}

impl Member for Model {
    type World = usize;

    fn world(keys: &[SigningKey]) -> usize {
        keys.len()
    }

    fn start(n: &usize, me: usize, incarnation: u32) -> Model {
        let mut m = Model {
            me,
            incarnation,
            leaving: false,
            rows: vec![Row::default(); *n],
            known: 0,
            suspects: Vec::new(),
            digest: 0,
        };
        m.digest = m.own_hash();
        m
    }

    fn own(&self) -> Say {
        Say::Alive {
            peer: self.me as u32,
            incarnation: self.incarnation,
            leaving: self.leaving,
        }
    }

    fn apply(&mut self, _: &usize, s: Say, now: u32) -> Option<Say> {
        match s {
            Say::Alive {
                peer,
                incarnation,
                leaving,
            } => {
                let p = peer as usize;
                if p == self.me {
                    let differs = incarnation > self.incarnation
                        || (incarnation == self.incarnation && leaving != self.leaving);
                    return differs.then(|| self.refute(incarnation));
                }
                let old = self.rows[p];
                if old.state() != UNKNOWN && old.incarnation >= incarnation {
                    return None;
                }
                let (tag, since) = if leaving {
                    (DEAD | LEFT, now)
                } else {
                    (ALIVE, 0)
                };
                self.set(
                    p,
                    Row {
                        incarnation,
                        since,
                        tag,
                    },
                );
                None
            }
            Say::Suspect { peer, incarnation } => {
                let p = peer as usize;
                if p == self.me {
                    return (incarnation >= self.incarnation).then(|| self.refute(incarnation));
                }
                let old = self.rows[p];
                if old.state() == ALIVE && old.incarnation == incarnation {
                    self.set(
                        p,
                        Row {
                            incarnation,
                            since: now,
                            tag: SUSPECT,
                        },
                    );
                }
                None
            }
        }
    }

    fn lost(&self, peer: usize) -> bool {
        self.rows[peer].state() == ALIVE
    }

    fn probe_failed(&mut self, peer: usize, now: u32) -> Option<Say> {
        let row = self.rows[peer];
        if row.state() == UNKNOWN {
            return None;
        }
        let s = Say::Suspect {
            peer: peer as u32,
            incarnation: row.incarnation,
        };
        let before = self.rows[peer].tag;
        self.apply(&0, s, now);
        (self.rows[peer].tag != before).then_some(s)
    }

    fn tick(&mut self, now: u32) -> Vec<usize> {
        let mut died = Vec::new();
        let mut waiting = Vec::new();
        for p in std::mem::take(&mut self.suspects) {
            let r = self.rows[p as usize];
            if r.state() != SUSPECT || waiting.contains(&p) {
                continue;
            }
            if u64::from(now.saturating_sub(r.since)) >= SUSPECT_FOR_MS {
                let dead = Row {
                    tag: DEAD,
                    since: now,
                    ..r
                };
                self.set(p as usize, dead);
                died.push(p as usize);
            } else {
                waiting.push(p);
            }
        }
        self.suspects = waiting;
        died.sort_unstable();
        died
    }

    fn up(&self, peer: usize) -> Option<bool> {
        if peer == self.me {
            return Some(true);
        }
        match self.rows[peer].state() {
            UNKNOWN => None,
            DEAD => Some(false),
            _ => Some(true),
        }
    }

    fn dead(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&p| self.rows[p].tag == DEAD)
            .collect()
    }

    fn digest(&self) -> u64 {
        self.digest
    }

    fn rows(&self) -> usize {
        self.known + 1
    }

    fn merge(&mut self, w: &usize, from: &Model, now: u32, started: u32) -> Vec<Say> {
        let mut out = Vec::new();
        let own = Row {
            incarnation: from.incarnation,
            since: 0,
            tag: if from.leaving { DEAD | LEFT } else { ALIVE },
        };
        // In author order (index order), the peer's own row in its place,
        // as `liveness::Table::page` sends them.
        let rows = (0..from.rows.len())
            .map(|p| (p, if p == from.me { own } else { from.rows[p] }))
            .filter(|(_, r)| r.state() != UNKNOWN);
        for (p, r) in rows {
            let alive = Say::Alive {
                peer: p as u32,
                incarnation: r.incarnation,
                leaving: r.tag & LEFT != 0,
            };
            let before = (p != self.me).then(|| self.rows[p]);
            out.extend(self.apply(w, alive, now));
            let newer =
                before.is_some_and(|b| b.state() == UNKNOWN || b.incarnation < r.incarnation);
            if newer && r.incarnation > started {
                out.push(alive);
            }
            // A row of the peer's own is never suspect; a leaving record
            // is already dead here (its suspicion would change nothing).
            let s = Say::Suspect {
                peer: p as u32,
                incarnation: r.incarnation,
            };
            if p != from.me && r.state() != ALIVE {
                let before = self.rows[p].tag;
                match self.apply(w, s, now) {
                    Some(refute) => out.push(refute),
                    None if p != self.me && self.rows[p].tag != before => out.push(s),
                    None => {}
                }
            } else if p != self.me {
                // A verdict of ours the neighbour does not share: the
                // suspect must hear it to refute.
                let mine = self.rows[p];
                let held = matches!(mine.state(), SUSPECT | DEAD) && mine.tag & LEFT == 0;
                if held && mine.incarnation == r.incarnation {
                    out.push(s);
                }
            }
        }
        out
    }

    fn leave(&mut self, _: &usize) -> Say {
        let h = self.own_hash();
        self.incarnation += 1;
        self.leaving = true;
        self.digest = self.digest.wrapping_sub(h).wrapping_add(self.own_hash());
        self.own()
    }
}
