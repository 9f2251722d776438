//! Who is up, without a connection to everyone: a small protocol in the
//! spirit of SWIM (with Lifeguard's refutation), over gossip.
//!
//! - Each node signs a [`Record`] — its incarnation and addresses — and
//!   gossips it when it starts, when its addresses change, when it leaves,
//!   and to refute a suspicion. Nothing is gossiped while nothing changes:
//!   an idle network costs no liveness traffic beyond its links' pings.
//! - A node whose link with a peer is lost (not closed on purpose) probes
//!   it once; if that fails, it gossips a `Suspect`. Every node that hears
//!   it marks the peer suspect and, unless the peer refutes it with a
//!   higher incarnation within [`SUSPECT_FOR_MS`], dead.
//! - Tables are repaired by anti-entropy: neighbours compare [`Table::digest`]s
//!   and pull each other's rows when they differ. A node that was declared
//!   dead while cut off learns it this way and refutes it.
//!
//! This file is the sans-I/O core: rumors and events in, rumors to gossip
//! out, time passed in (milliseconds). `Mesh` drives it.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use tarn_ledger::Author;

use crate::proto::liveness::{Record, Row, Rumor};

/// How long a suspicion stands before the peer counts as dead.
pub const SUSPECT_FOR_MS: u64 = 6_000;
/// Rows in one page of a table pull.
pub const PAGE: usize = 512;
/// Most peers the table keeps (a closed network admits fewer; an open
/// one is for simulations).
pub const MAX_PEERS: usize = 100_000;

/// What this node believes of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Alive,
    /// Suspected since this time (ms).
    Suspect(u64),
    /// Dead since this time (ms): the suspicion stood, or it left.
    Dead(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    state: State,
}

/// What applying a rumor did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The table changed (a new record, or a new state).
    pub changed: bool,
    /// A peer's record is new or newer: its addresses may have changed.
    pub record: Option<Record>,
    /// Rumor to gossip now (this node's refutation).
    pub gossip: Option<Rumor>,
}

/// The liveness table of one node.
pub struct Table {
    key: SigningKey,
    me: Record,
    peers: BTreeMap<Author, Entry>,
}

impl Table {
    /// A table for the node with `key`, starting at `incarnation` (the
    /// wall clock in ms at start, so a restarted node outranks its past).
    pub fn new(key: SigningKey, incarnation: u64, addrs: Vec<Vec<u8>>) -> Table {
        let me = Record::sign(&key, incarnation, addrs, false);
        Table {
            key,
            me,
            peers: BTreeMap::new(),
        }
    }

    /// This node's current record.
    pub fn own(&self) -> &Record {
        &self.me
    }

    /// New addresses for this node: a new record to gossip, if they changed.
    pub fn set_addrs(&mut self, addrs: Vec<Vec<u8>>) -> Option<Rumor> {
        let same = addrs.len() == self.me.addrs.len()
            && addrs.iter().zip(&self.me.addrs).all(|(a, b)| a == &b[..]);
        if same {
            return None;
        }
        self.me = Record::sign(&self.key, self.me.incarnation + 1, addrs, false);
        Some(Rumor::Alive(self.me.clone()))
    }

    /// The record that says this node is leaving (gossip it before stopping).
    pub fn leave(&mut self) -> Rumor {
        let addrs = self.me.addrs.iter().map(|a| a.to_vec()).collect();
        self.me = Record::sign(&self.key, self.me.incarnation + 1, addrs, true);
        Rumor::Alive(self.me.clone())
    }

    fn refute(&mut self, incarnation: u64) -> Rumor {
        let addrs = self.me.addrs.iter().map(|a| a.to_vec()).collect();
        self.me = Record::sign(
            &self.key,
            incarnation.max(self.me.incarnation) + 1,
            addrs,
            false,
        );
        Rumor::Alive(self.me.clone())
    }

    /// Applies a rumor heard by gossip or read in a neighbour's table.
    /// Records are checked here, once: a forged one changes nothing.
    pub fn apply(&mut self, rumor: Rumor, now: u64) -> Applied {
        match rumor {
            Rumor::Alive(r) => self.alive(r, now),
            Rumor::Suspect { peer, incarnation } => self.suspect(peer, incarnation, now),
        }
    }

    fn alive(&mut self, r: Record, now: u64) -> Applied {
        if r.peer == self.me.peer {
            // Our own past, relayed: a later one than ours would be a
            // restart we forgot (a clock stepped back) — outrank it.
            if r.incarnation >= self.me.incarnation && r != self.me && r.verify() {
                return Applied {
                    gossip: Some(self.refute(r.incarnation)),
                    ..Applied::default()
                };
            }
            return Applied::default();
        }
        if let Some(e) = self.peers.get(&r.peer)
            && e.record.incarnation >= r.incarnation
        {
            return Applied::default();
        }
        if !r.verify() || (self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&r.peer)) {
            return Applied::default();
        }
        let state = if r.leaving {
            State::Dead(now)
        } else {
            State::Alive
        };
        self.peers.insert(
            r.peer,
            Entry {
                record: r.clone(),
                state,
            },
        );
        Applied {
            changed: true,
            record: Some(r),
            gossip: None,
        }
    }

    fn suspect(&mut self, peer: Author, incarnation: u64, now: u64) -> Applied {
        if peer == self.me.peer {
            if incarnation >= self.me.incarnation {
                return Applied {
                    gossip: Some(self.refute(incarnation)),
                    ..Applied::default()
                };
            }
            return Applied::default();
        }
        match self.peers.get_mut(&peer) {
            Some(e) if e.record.incarnation == incarnation && e.state == State::Alive => {
                e.state = State::Suspect(now);
                Applied {
                    changed: true,
                    ..Applied::default()
                }
            }
            _ => Applied::default(),
        }
    }

    /// The link with `peer` was lost: whether to probe it (it is believed up).
    pub fn lost(&self, peer: &Author) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|e| e.state == State::Alive)
    }

    /// A probe of `peer` failed: the suspicion to gossip (applied here too).
    pub fn probe_failed(&mut self, peer: &Author, now: u64) -> Option<Rumor> {
        let incarnation = self.peers.get(peer)?.record.incarnation;
        let r = Rumor::Suspect {
            peer: *peer,
            incarnation,
        };
        self.apply(r.clone(), now).changed.then_some(r)
    }

    /// Suspicions that stood long enough become deaths; returns the peers
    /// that just died.
    pub fn tick(&mut self, now: u64) -> Vec<Author> {
        let mut died = Vec::new();
        for (p, e) in &mut self.peers {
            if let State::Suspect(since) = e.state
                && now.saturating_sub(since) >= SUSPECT_FOR_MS
            {
                e.state = State::Dead(now);
                died.push(*p);
            }
        }
        died
    }

    /// What this node believes of `peer` (`None`: never heard of it).
    pub fn state(&self, peer: &Author) -> Option<State> {
        if *peer == self.me.peer {
            return Some(State::Alive);
        }
        self.peers.get(peer).map(|e| e.state)
    }

    /// Up, as far as this node knows: alive or only suspected.
    pub fn is_up(&self, peer: &Author) -> Option<bool> {
        self.state(peer).map(|s| !matches!(s, State::Dead(_)))
    }

    /// A peer's latest record.
    pub fn record(&self, peer: &Author) -> Option<&Record> {
        self.peers.get(peer).map(|e| &e.record)
    }

    /// Peers believed dead, for the occasional attempt to reach one again
    /// (how a healed partition is noticed).
    pub fn dead(&self) -> impl Iterator<Item = &Author> {
        self.peers
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Dead(_)) && !e.record.leaving)
            .map(|(p, _)| p)
    }

    /// (alive or suspect, dead) counts.
    pub fn counts(&self) -> (usize, usize) {
        let dead = self
            .peers
            .values()
            .filter(|e| matches!(e.state, State::Dead(_)))
            .count();
        (self.peers.len() - dead, dead)
    }

    /// A hash of what two converged tables agree on: every record's
    /// incarnation and whether it is suspected, this node's own included.
    /// (Suspicion counts as one state with death: their difference is only
    /// a timer that runs on every node.)
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mine = (self.me.peer, self.me.incarnation, self.me.leaving);
        let mut mine_done = false;
        for (p, e) in &self.peers {
            if !mine_done && *p > mine.0 {
                h.update(&mine.0.0);
                h.update(&mine.1.to_be_bytes());
                h.update(&[u8::from(mine.2)]);
                mine_done = true;
            }
            h.update(&p.0);
            h.update(&e.record.incarnation.to_be_bytes());
            h.update(&[u8::from(e.state != State::Alive)]);
        }
        if !mine_done {
            h.update(&mine.0.0);
            h.update(&mine.1.to_be_bytes());
            h.update(&[u8::from(mine.2)]);
        }
        *h.finalize().as_bytes()
    }

    /// A page of rows after `after` (this node's own row among them), and
    /// whether more follow.
    pub fn page(&self, after: Option<Author>) -> (Vec<Row>, bool) {
        self.page_of(after, PAGE)
    }

    fn page_of(&self, after: Option<Author>, size: usize) -> (Vec<Row>, bool) {
        let own = Row {
            record: self.me.clone(),
            suspect: false,
        };
        let mut rows: Vec<Row> = Vec::with_capacity(size + 1);
        let range = match after {
            Some(a) => self
                .peers
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.peers.range(..),
        };
        let mut more = false;
        let mut own_done = after.is_some_and(|a| a >= self.me.peer);
        for (p, e) in range {
            if rows.len() >= size {
                more = true;
                break;
            }
            if !own_done && *p > self.me.peer {
                rows.push(own.clone());
                own_done = true;
            }
            rows.push(Row {
                record: e.record.clone(),
                suspect: e.state != State::Alive,
            });
        }
        if !own_done && !more {
            rows.push(own);
        }
        (rows, more)
    }

    /// Merges a neighbour's rows: each record as if gossiped, each of its
    /// suspicions as a suspicion of ours (our own timer decides death).
    ///
    /// A suspicion is only ever settled by the suspect itself, so whatever
    /// the two tables disagree on is gossiped for it to hear: a suspicion
    /// we take from the neighbour, and one we hold that the neighbour does
    /// not (after a partition heals, each side holds the other dead; left
    /// silent, those verdicts would spread by merging to peers that can
    /// reach the suspect and time out there before it refutes).
    pub fn merge(&mut self, rows: Vec<Row>, now: u64) -> Vec<Applied> {
        let mut out = Vec::new();
        for row in rows {
            let (peer, incarnation) = (row.record.peer, row.record.incarnation);
            let a = self.apply(Rumor::Alive(row.record), now);
            if a != Applied::default() {
                out.push(a);
            }
            let suspicion = Rumor::Suspect { peer, incarnation };
            if row.suspect {
                let mut a = self.apply(suspicion.clone(), now);
                if a.changed && a.gossip.is_none() {
                    a.gossip = Some(suspicion);
                }
                if a != Applied::default() {
                    out.push(a);
                }
            } else if self.peers.get(&peer).is_some_and(|e| {
                e.record.incarnation == incarnation && !e.record.leaving && e.state != State::Alive
            }) {
                out.push(Applied {
                    gossip: Some(suspicion),
                    ..Applied::default()
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn author(i: u8) -> Author {
        Author(key(i).verifying_key().to_bytes())
    }

    fn addr(i: u8) -> Vec<Vec<u8>> {
        vec![format!("/ip4/10.0.0.{i}/tcp/1").into_bytes()]
    }

    #[test]
    fn a_suspicion_becomes_death_unless_refuted() {
        let mut a = Table::new(key(1), 100, addr(1));
        let mut b = Table::new(key(2), 200, addr(2));
        a.apply(Rumor::Alive(b.own().clone()), 0);
        assert_eq!(a.state(&author(2)), Some(State::Alive));
        assert!(a.lost(&author(2)));

        // a suspects b; b hears it and refutes with a higher incarnation.
        let s = a.probe_failed(&author(2), 1_000).expect("a new suspicion");
        assert_eq!(a.state(&author(2)), Some(State::Suspect(1_000)));
        assert_eq!(a.is_up(&author(2)), Some(true));
        let refutation = b.apply(s, 1_100).gossip.expect("b refutes");
        assert!(b.own().incarnation > 200);
        a.apply(refutation, 1_200);
        assert_eq!(a.state(&author(2)), Some(State::Alive));
        assert!(a.tick(1_000 + SUSPECT_FOR_MS).is_empty());

        // Unrefuted, it stands; a stale suspicion changes nothing after.
        let s = a.probe_failed(&author(2), 10_000).unwrap();
        assert!(a.tick(10_000 + SUSPECT_FOR_MS - 1).is_empty());
        assert_eq!(a.tick(10_000 + SUSPECT_FOR_MS), vec![author(2)]);
        assert_eq!(a.is_up(&author(2)), Some(false));
        assert_eq!(a.apply(s, 20_000), Applied::default());
        assert_eq!(a.dead().count(), 1);

        // b comes back (a restart: a higher incarnation).
        let b2 = Table::new(key(2), 50_000, addr(9));
        let got = a.apply(Rumor::Alive(b2.own().clone()), 50_001);
        assert!(got.changed);
        assert_eq!(got.record.unwrap().addrs[0].as_ref(), &addr(9)[0][..]);
        assert_eq!(a.state(&author(2)), Some(State::Alive));
    }

    #[test]
    fn forged_and_stale_records_change_nothing() {
        let mut a = Table::new(key(1), 100, addr(1));
        let b = Table::new(key(2), 200, addr(2));
        let mut forged = b.own().clone();
        forged.incarnation += 1;
        assert_eq!(a.apply(Rumor::Alive(forged), 0), Applied::default());
        assert_eq!(a.state(&author(2)), None);
        a.apply(Rumor::Alive(b.own().clone()), 0);
        let old = Table::new(key(2), 150, addr(3));
        assert_eq!(
            a.apply(Rumor::Alive(old.own().clone()), 1),
            Applied::default()
        );
        assert_eq!(
            a.record(&author(2)).unwrap().addrs[0].as_ref(),
            &addr(2)[0][..]
        );
        // Suspicion of an unknown peer or an old incarnation: nothing.
        let none = a.apply(
            Rumor::Suspect {
                peer: author(3),
                incarnation: 1,
            },
            2,
        );
        assert_eq!(none, Applied::default());
        let old = a.apply(
            Rumor::Suspect {
                peer: author(2),
                incarnation: 199,
            },
            2,
        );
        assert_eq!(old, Applied::default());
    }

    #[test]
    fn a_leaving_node_is_dead_at_once_and_not_retried() {
        let mut a = Table::new(key(1), 100, addr(1));
        let mut b = Table::new(key(2), 200, addr(2));
        a.apply(Rumor::Alive(b.own().clone()), 0);
        a.apply(b.leave(), 5);
        assert_eq!(a.state(&author(2)), Some(State::Dead(5)));
        assert_eq!(a.dead().count(), 0);
    }

    /// Tables pulled page by page converge to the same digest, own rows
    /// included, and a node learns of its own death this way and refutes it.
    #[test]
    fn tables_merge_to_one_digest_and_a_node_refutes_its_own_death() {
        let mut a = Table::new(key(1), 100, addr(1));
        let mut b = Table::new(key(2), 200, addr(2));
        for i in 3..=60 {
            let t = Table::new(key(i), 1_000 + u64::from(i), addr(i));
            a.apply(Rumor::Alive(t.own().clone()), 0);
        }
        a.apply(Rumor::Alive(b.own().clone()), 0);
        a.probe_failed(&author(2), 10);
        a.tick(10 + SUSPECT_FOR_MS);
        assert_ne!(a.digest(), b.digest());
        // b pulls a's table in small pages.
        let mut after = None;
        let mut gossip = Vec::new();
        loop {
            let (rows, more) = a.page_of(after, 7);
            after = rows.last().map(|r| r.record.peer);
            for applied in b.merge(rows, 20_000) {
                gossip.extend(applied.gossip);
            }
            if !more {
                break;
            }
        }
        assert_eq!(gossip.len(), 1, "b refutes the death it read");
        // a pulls b's table (b's new record among it).
        let (rows, more) = b.page(None);
        assert!(!more);
        a.merge(rows, 20_001);
        assert_eq!(a.state(&author(2)), Some(State::Alive));
        b.tick(20_000 + SUSPECT_FOR_MS);
        a.tick(20_001 + SUSPECT_FOR_MS);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.counts().0, b.counts().0);
    }

    #[test]
    fn merging_tells_the_suspect_what_the_tables_disagree_on() {
        let (mut a, mut b) = (
            Table::new(key(1), 100, addr(1)),
            Table::new(key(2), 200, addr(2)),
        );
        let x = Table::new(key(3), 300, addr(3));
        for t in [&mut a, &mut b] {
            t.apply(Rumor::Alive(x.own().clone()), 0);
        }
        a.probe_failed(&author(3), 10);
        a.tick(10 + SUSPECT_FOR_MS);
        let suspicion = Rumor::Suspect {
            peer: author(3),
            incarnation: 300,
        };
        // b takes a's verdict as a suspicion of its own, and passes it on.
        let from_a: Vec<_> = b
            .merge(a.page(None).0, 20_000)
            .into_iter()
            .filter_map(|x| x.gossip)
            .collect();
        assert_eq!(from_a, vec![suspicion.clone()]);
        assert_eq!(b.state(&author(3)), Some(State::Suspect(20_000)));
        // a, reading a table where x is alive, tells x it is held dead.
        let mut c = Table::new(key(4), 400, addr(4));
        c.apply(Rumor::Alive(x.own().clone()), 0);
        let from_c: Vec<_> = a
            .merge(c.page(None).0, 20_000)
            .into_iter()
            .filter_map(|x| x.gossip)
            .collect();
        assert_eq!(from_c, vec![suspicion]);
        // Agreeing tables say nothing.
        let again: Vec<_> = b
            .merge(a.page(None).0, 20_001)
            .into_iter()
            .filter_map(|x| x.gossip)
            .collect();
        assert!(again.is_empty(), "{again:?}");
    }
}
