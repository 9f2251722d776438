//! The replicated log: verified entries in redb, per-author hash chains,
//! a Lamport clock, and the view. No network I/O: the caller moves entries
//! and heads between ledgers (gossip, anti-entropy) and calls [`Ledger::apply`].

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use redb::{ReadableDatabase, ReadableTable};

use crate::entry::{Author, Entry, Hash, Op, VerifiedEntry, VerifyError};
use crate::schema::{ENTRIES, HEADS, entry_key, head_value, parse_head};
use crate::view::View;

/// Most bytes of entries one [`Ledger::entries_from`] call returns (one
/// entry more at most), so a batch always fits in one message.
pub const MAX_BATCH_BYTES: usize = 2 << 20;
/// Most entries one [`Ledger::entries_from`] call returns.
pub const MAX_BATCH: usize = 512;
/// Most bytes of entries one author may write to a closed network's ledger
/// (the root excepted). The count runs over the author's own chain only,
/// so every replica refuses the same entry: a member cannot grow every
/// node's ledger without end. Enough for a node's policies for decades.
pub const MAX_AUTHOR_BYTES: u64 = 8 << 20;

/// What applying an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New: stored and in the view.
    Added,
    /// Already held (a replay): nothing changed.
    Duplicate,
}

/// Why an entry could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// Entries before this one are missing; fetch them first.
    #[error("gap in {author}'s chain: have seq {have}, got {got}")]
    Gap { author: Author, have: u64, got: u64 },
    /// A different entry at a held position, or a `prev` that is not the
    /// hash of the previous entry: a forgery or an equivocating author.
    #[error("{author}'s entry {seq} conflicts with the chain held")]
    Conflict { author: Author, seq: u64 },
    #[error("invalid entry: {0}")]
    Invalid(#[from] VerifyError),
    /// A closed network's ledger takes entries only from its members.
    #[error("{0} is not a member of this network")]
    NotAdmitted(Author),
    /// The author has written [`MAX_AUTHOR_BYTES`] to a closed network's ledger.
    #[error("{0} has written its share of the ledger ({MAX_AUTHOR_BYTES} bytes)")]
    Quota(Author),
    #[error("ledger storage: {0}")]
    Storage(String),
}

/// Failure to open or read the ledger's file.
#[derive(Debug, thiserror::Error)]
#[error("ledger storage: {0}")]
pub struct StoreError(String);

fn storage<E: std::fmt::Display>(e: E) -> AppendError {
    AppendError::Storage(e.to_string())
}

/// One node's replica of the ledger.
pub struct Ledger {
    db: redb::Database,
    heads: BTreeMap<Author, (u64, Hash)>,
    lamport: u64,
    view: View,
    entries: usize,
    /// Bytes of entries held per author.
    written: BTreeMap<Author, u64>,
    /// Relayed entries committed without a sync since the last durable
    /// commit, and when that was (see [`Ledger::apply_relayed`]).
    undurable: usize,
    last_durable: std::time::Instant,
}

/// Relayed entries may wait this long (or this many) for a durable commit.
const RELAYED_DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const RELAYED_DURABLE_AFTER: usize = 1024;

impl Drop for Ledger {
    /// Makes relayed entries durable before the file is closed.
    fn drop(&mut self) {
        if self.undurable > 0
            && let Ok(w) = self.db.begin_write()
        {
            let _ = w.commit();
        }
    }
}

/// What a ledger keeps in memory, rebuilt from its file.
struct State {
    heads: BTreeMap<Author, (u64, Hash)>,
    lamport: u64,
    view: View,
    entries: usize,
    written: BTreeMap<Author, u64>,
}

impl State {
    /// Reads heads and entries, verifying every stored entry.
    fn read(db: &redb::Database, root: Option<Author>) -> Result<State, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError(e.to_string());
        let mut s = State {
            heads: BTreeMap::new(),
            lamport: 0,
            view: root.map_or_else(View::default, View::closed),
            entries: 0,
            written: BTreeMap::new(),
        };
        let r = db.begin_read().map_err(|e| err(&e))?;
        let heads = r.open_table(HEADS).map_err(|e| err(&e))?;
        for row in heads.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let author = Author(
                k.value()
                    .try_into()
                    .map_err(|_| StoreError("bad head key".into()))?,
            );
            let head = parse_head(v.value()).ok_or_else(|| StoreError("bad head value".into()))?;
            s.heads.insert(author, head);
        }
        let entries = r.open_table(ENTRIES).map_err(|e| err(&e))?;
        for row in entries.iter().map_err(|e| err(&e))? {
            let (_, v) = row.map_err(|e| err(&e))?;
            let e = Entry::verify_bytes(v.value())
                .map_err(|e| StoreError(format!("stored entry: {e}")))?;
            s.lamport = s.lamport.max(e.entry().lamport);
            s.view.apply(&e);
            s.entries += 1;
            *s.written.entry(e.entry().author).or_default() += e.bytes().len() as u64;
        }
        Ok(s)
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in a redb file and rebuilds heads and
    /// view from it, verifying every stored entry.
    pub fn open(path: &Path) -> Result<Ledger, StoreError> {
        Ledger::open_network(path, None)
    }

    /// Opens the ledger of a closed network named by its root key (`None`:
    /// an open network). Entries already stored stay; the view shows what
    /// the network's members published.
    pub fn open_network(path: &Path, root: Option<Author>) -> Result<Ledger, StoreError> {
        let db = redb::Database::create(path).map_err(|e| StoreError(e.to_string()))?;
        Ledger::load(db, root)
    }

    /// A ledger in memory (tests, simulations).
    pub fn in_memory() -> Result<Ledger, StoreError> {
        Ledger::in_memory_network(None)
    }

    /// A closed network's ledger in memory (tests, simulations).
    pub fn in_memory_network(root: Option<Author>) -> Result<Ledger, StoreError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError(e.to_string()))?;
        Ledger::load(db, root)
    }

    fn load(db: redb::Database, root: Option<Author>) -> Result<Ledger, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError(e.to_string());
        {
            let w = db.begin_write().map_err(|e| err(&e))?;
            w.open_table(ENTRIES).map_err(|e| err(&e))?;
            w.open_table(HEADS).map_err(|e| err(&e))?;
            w.commit().map_err(|e| err(&e))?;
        }
        let s = State::read(&db, root)?;
        Ok(Ledger {
            db,
            heads: s.heads,
            lamport: s.lamport,
            view: s.view,
            entries: s.entries,
            written: s.written,
            undurable: 0,
            last_durable: std::time::Instant::now(),
        })
    }

    /// After a write that did not commit: the in-memory state as stored.
    fn set_state(&mut self, s: State) {
        self.heads = s.heads;
        self.lamport = s.lamport;
        self.view = s.view;
        self.entries = s.entries;
        self.written = s.written;
    }

    /// Signs `op` as the next entry of `key`'s chain and adds it.
    pub fn append_local(
        &mut self,
        key: &SigningKey,
        op: Op,
        time_ms: u64,
    ) -> Result<VerifiedEntry, AppendError> {
        let author = Author(key.verifying_key().to_bytes());
        let (seq, prev) = match self.heads.get(&author) {
            Some((s, h)) => (s + 1, Some(*h)),
            None => (1, None),
        };
        let e = Entry::sign(key, seq, prev, self.lamport + 1, time_ms, op)?;
        self.apply(&e)?;
        Ok(e)
    }

    /// Adds a verified entry if it extends its author's chain.
    /// Adds a verified entry, durably: once this returns, a crash does not
    /// lose it (entries this node signs, or a client handed it).
    pub fn apply(&mut self, e: &VerifiedEntry) -> Result<Applied, AppendError> {
        self.apply_with(e, true)
    }

    /// Adds an entry relayed by a peer (gossip, anti-entropy) without a
    /// sync to disk of its own. What came before is synced by the next
    /// relayed entry a second or more after the last sync (or the
    /// [`RELAYED_DURABLE_AFTER`]th), by any durable [`apply`](Self::apply),
    /// and by closing the ledger. One lost to a crash is
    /// fetched again by anti-entropy; a network that starts applies every
    /// node's entries on every node, where a sync per entry costs more than
    /// all the rest.
    pub fn apply_relayed(&mut self, e: &VerifiedEntry) -> Result<Applied, AppendError> {
        self.apply_with(e, false)
    }

    /// Adds entries relayed by peers in one write transaction (see
    /// [`apply_relayed`](Self::apply_relayed)): each one's outcome, in
    /// order. An entry may extend one before it in the batch. `Err` when
    /// storage failed: then none of the batch is kept.
    pub fn apply_relayed_all(
        &mut self,
        es: &[VerifiedEntry],
    ) -> Result<Vec<Result<Applied, AppendError>>, AppendError> {
        self.apply_batch(es, false)
    }

    fn apply_with(&mut self, e: &VerifiedEntry, durable: bool) -> Result<Applied, AppendError> {
        self.apply_batch(std::slice::from_ref(e), durable)?
            .pop()
            .expect("one outcome per entry")
    }

    fn apply_batch(
        &mut self,
        es: &[VerifiedEntry],
        durable: bool,
    ) -> Result<Vec<Result<Applied, AppendError>>, AppendError> {
        let mut w = self.db.begin_write().map_err(storage)?;
        let durable = durable
            || self.undurable + es.len() > RELAYED_DURABLE_AFTER
            || self.last_durable.elapsed() >= RELAYED_DURABLE_EVERY;
        if !durable {
            w.set_durability(redb::Durability::None).map_err(storage)?;
        }
        let mut out = Vec::with_capacity(es.len());
        // The in-memory state moves with each entry (the next may extend
        // it, or be admitted by it); a batch that does not commit reloads
        // it from what is stored.
        let written = self
            .write_batch(&w, es, &mut out)
            .and_then(|added| w.commit().map_err(storage).map(|()| added));
        match written {
            Ok(added) => {
                if durable {
                    self.undurable = 0;
                    self.last_durable = std::time::Instant::now();
                } else {
                    self.undurable += added;
                }
                Ok(out)
            }
            Err(e) => {
                if let Ok(state) = State::read(&self.db, self.view.network()) {
                    self.set_state(state);
                }
                Err(e)
            }
        }
    }

    /// Inserts each entry that extends its author's chain; returns how many.
    fn write_batch(
        &mut self,
        w: &redb::WriteTransaction,
        es: &[VerifiedEntry],
        out: &mut Vec<Result<Applied, AppendError>>,
    ) -> Result<usize, AppendError> {
        let mut t = w.open_table(ENTRIES).map_err(storage)?;
        let mut h = w.open_table(HEADS).map_err(storage)?;
        let mut added = 0;
        for e in es {
            match self.check(e, &t) {
                Ok(None) => {}
                other => {
                    out.push(other.map(|d| d.expect("checked: a duplicate")));
                    continue;
                }
            }
            let entry = e.entry();
            let author = entry.author;
            t.insert(&entry_key(&author.0, entry.seq)[..], e.bytes())
                .map_err(storage)?;
            h.insert(&author.0[..], &head_value(entry.seq, &e.hash())[..])
                .map_err(storage)?;
            self.heads.insert(author, (entry.seq, e.hash()));
            self.lamport = self.lamport.max(entry.lamport);
            self.view.apply(e);
            self.entries += 1;
            *self.written.entry(author).or_default() += e.bytes().len() as u64;
            added += 1;
            out.push(Ok(Applied::Added));
        }
        Ok(added)
    }

    /// Whether `e` may be added: `Ok(None)` when it extends its author's
    /// chain, `Some(Duplicate)` when it is held already.
    fn check(
        &self,
        e: &VerifiedEntry,
        entries: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ) -> Result<Option<Applied>, AppendError> {
        let entry = e.entry();
        let author = entry.author;
        if !self.view.admitted(&author) {
            return Err(AppendError::NotAdmitted(author));
        }
        let have = self.heads.get(&author).map_or(0, |(s, _)| *s);
        if entry.seq <= have {
            let stored = entries
                .get(&entry_key(&author.0, entry.seq)[..])
                .map_err(storage)?
                .map(|v| *blake3::hash(v.value()).as_bytes());
            return match stored {
                Some(h) if h == e.hash() => Ok(Some(Applied::Duplicate)),
                _ => Err(AppendError::Conflict {
                    author,
                    seq: entry.seq,
                }),
            };
        }
        if entry.seq > have + 1 {
            return Err(AppendError::Gap {
                author,
                have,
                got: entry.seq,
            });
        }
        let written = self.written.get(&author).copied().unwrap_or(0);
        if self.view.network().is_some_and(|root| root != author)
            && written + e.bytes().len() as u64 > MAX_AUTHOR_BYTES
        {
            return Err(AppendError::Quota(author));
        }
        let prev_ok = match (entry.prev, self.heads.get(&author)) {
            (None, None) => true,
            (Some(p), Some((_, h))) => p == *h,
            _ => false,
        };
        if !prev_ok {
            return Err(AppendError::Conflict {
                author,
                seq: entry.seq,
            });
        }
        Ok(None)
    }

    /// One author's latest sequence number and entry hash.
    pub fn head(&self, author: &Author) -> Option<(u64, Hash)> {
        self.heads.get(author).copied()
    }

    /// Each author's latest sequence number: what anti-entropy exchanges.
    pub fn heads(&self) -> Vec<(Author, u64)> {
        self.heads.iter().map(|(a, (s, _))| (*a, *s)).collect()
    }

    /// A hash of every author's head (seq and entry hash), in author
    /// order: two replicas with the same digest hold the same entries.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        for (a, (seq, hash)) in &self.heads {
            h.update(&a.0);
            h.update(&seq.to_be_bytes());
            h.update(hash);
        }
        *h.finalize().as_bytes()
    }

    /// Given a peer's heads, the `(author, first seq)` this ledger lacks
    /// (of admitted authors only, in a closed network).
    pub fn wants(&self, remote: &[(Author, u64)]) -> Vec<(Author, u64)> {
        remote
            .iter()
            .filter(|(a, _)| self.view.admitted(a))
            .filter_map(|(a, s)| {
                let have = self.heads.get(a).map_or(0, |(h, _)| *h);
                (*s > have).then_some((*a, have + 1))
            })
            .collect()
    }

    /// Up to `max` (capped at [`MAX_BATCH`]) encoded entries of `author`
    /// from `from_seq` on, in order, stopping once [`MAX_BATCH_BYTES`] are
    /// reached (at least one entry is returned if there is one).
    pub fn entries_from(
        &self,
        author: &Author,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, AppendError> {
        let r = self.db.begin_read().map_err(storage)?;
        let t = r.open_table(ENTRIES).map_err(storage)?;
        let lo = entry_key(&author.0, from_seq.max(1));
        let hi = entry_key(&author.0, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in t.range(&lo[..]..=&hi[..]).map_err(storage)? {
            if out.len() >= max.min(MAX_BATCH) || bytes >= MAX_BATCH_BYTES {
                break;
            }
            let (_, v) = row.map_err(storage)?;
            bytes += v.value().len();
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// The Lamport clock: the highest seen.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::testing::{key, put};

    #[test]
    fn a_batch_applies_in_order_and_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Ledger::in_memory().unwrap();
        let es: Vec<VerifiedEntry> = (1..=4)
            .map(|i| {
                a.append_local(&key(1), put(&format!(r#"{{"n": {{"i": {i}}}}}"#)), i)
                    .unwrap()
            })
            .collect();
        let other = a
            .append_local(&key(2), put(r#"{"m": {"i": 1}}"#), 9)
            .unwrap();
        let path = dir.path().join("l.redb");
        let mut b = Ledger::open(&path).unwrap();
        let batch = [
            es[0].clone(),
            es[1].clone(),
            es[0].clone(),
            es[3].clone(),
            other.clone(),
        ];
        let got = b.apply_relayed_all(&batch).unwrap();
        assert_eq!(got[0], Ok(Applied::Added));
        assert_eq!(got[1], Ok(Applied::Added), "extends the entry before it");
        assert_eq!(got[2], Ok(Applied::Duplicate));
        assert!(matches!(
            got[3],
            Err(AppendError::Gap {
                have: 2,
                got: 4,
                ..
            })
        ));
        assert_eq!(got[4], Ok(Applied::Added));
        assert_eq!(b.len(), 3);
        drop(b);
        let b = Ledger::open(&path).unwrap();
        assert_eq!(b.len(), 3, "the batch is on disk");
        assert_eq!(b.head(&es[1].entry().author).map(|h| h.0), Some(2));
    }

    #[test]
    fn chains_gaps_conflicts_and_replays() {
        let mut a = Ledger::in_memory().unwrap();
        let mut b = Ledger::in_memory().unwrap();
        let e1 = a
            .append_local(&key(1), put(r#"{"n": {"i": 1}}"#), 1)
            .unwrap();
        let e2 = a
            .append_local(&key(1), put(r#"{"n": {"i": 2}}"#), 2)
            .unwrap();
        let e3 = a
            .append_local(&key(1), put(r#"{"n": {"i": 3}}"#), 3)
            .unwrap();
        assert_eq!(
            b.apply(&e2),
            Err(AppendError::Gap {
                author: e1.entry().author,
                have: 0,
                got: 2
            })
        );
        assert_eq!(b.apply(&e1), Ok(Applied::Added));
        assert_eq!(b.apply(&e1), Ok(Applied::Duplicate));
        // A second seq-2 entry by the same key, on another branch: refused.
        let mut c = Ledger::in_memory().unwrap();
        c.apply(&e1).unwrap();
        let fork = c
            .append_local(&key(1), put(r#"{"n": {"i": 99}}"#), 2)
            .unwrap();
        assert_eq!(b.apply(&e2), Ok(Applied::Added));
        assert!(matches!(
            b.apply(&fork),
            Err(AppendError::Conflict { seq: 2, .. })
        ));
        // A wrong prev on the next position: refused.
        let bad = Entry::sign(&key(1), 3, Some([7; 32]), 9, 3, put(r#"{"n": {"i": 4}}"#)).unwrap();
        assert!(matches!(
            b.apply(&bad),
            Err(AppendError::Conflict { seq: 3, .. })
        ));
        assert_eq!(b.apply(&e3), Ok(Applied::Added));
        assert_eq!(b.heads(), a.heads());
        assert_eq!(b.view(), a.view());
        assert_eq!(b.view().len(), 3);
    }

    #[test]
    fn supersede_and_revoke_only_touch_the_authors_own_policies() {
        let mut l = Ledger::in_memory().unwrap();
        let p1 = Policy::parse(r#"{"operator": {"name": "op1", "port": 1}}"#).unwrap();
        let p2 = Policy::parse(r#"{"operator": {"name": "op1", "port": 2}}"#).unwrap();
        l.append_local(
            &key(1),
            put(r#"{"operator": {"name": "op1", "port": 1}}"#),
            1,
        )
        .unwrap();
        // Another author publishes the same body: one id, shown once.
        l.append_local(
            &key(2),
            put(r#"{"operator": {"name": "op1", "port": 1}}"#),
            1,
        )
        .unwrap();
        assert_eq!(l.view().len(), 1);
        let sup = Op::Put {
            policy: String::from_utf8(p2.canonical()).unwrap(),
            supersedes: Some(p1.id()),
        };
        l.append_local(&key(1), sup, 2).unwrap();
        // Key 2's copy of p1 remains; p2 is new.
        assert_eq!(l.view().len(), 2);
        assert_eq!(
            l.view().get(&p1.id()).unwrap().author,
            Author(key(2).verifying_key().to_bytes())
        );
        l.append_local(&key(2), Op::Revoke { id: p1.id() }, 2)
            .unwrap();
        assert!(l.view().get(&p1.id()).is_none());
        assert_eq!(l.view().of_kind("operator").count(), 1);
    }

    #[test]
    fn batches_of_large_entries_stay_under_the_byte_cap() {
        let mut l = Ledger::in_memory().unwrap();
        let big = "x".repeat(60_000);
        for i in 0..80 {
            l.append_local(
                &key(1),
                put(&format!(r#"{{"blob": {{"i": {i}, "data": "{big}"}}}}"#)),
                i,
            )
            .unwrap();
        }
        let author = Author(key(1).verifying_key().to_bytes());
        let batch = l.entries_from(&author, 1, MAX_BATCH).unwrap();
        let size: usize = batch.iter().map(Vec::len).sum();
        assert!(
            batch.len() < 80 && !batch.is_empty(),
            "{} entries",
            batch.len()
        );
        assert!(size < MAX_BATCH_BYTES + 100_000, "{size} bytes");
        let rest = l
            .entries_from(&author, 1 + batch.len() as u64, MAX_BATCH)
            .unwrap();
        assert!(!rest.is_empty());
    }

    #[test]
    fn survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let (heads, view) = {
            let mut l = Ledger::open(&path).unwrap();
            for i in 0..20 {
                l.append_local(
                    &key(1 + i % 3),
                    put(&format!(r#"{{"t": {{"i": {i}}}}}"#)),
                    i as u64,
                )
                .unwrap();
            }
            (l.heads(), l.view().clone())
        };
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.heads(), heads);
        assert_eq!(l.view(), &view);
        assert_eq!(l.len(), 20);
        assert!(l.lamport() >= 20);
    }
}
