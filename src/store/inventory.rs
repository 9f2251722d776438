//! What batches this node holds, by the member that produced them: the
//! inventories cluster members compare to find what one of them missed,
//! and the reads that send a batch to another member.

use std::collections::BTreeMap;

use rusqlite::params;

use super::batches::{BATCH_COLUMNS, BatchRecord, ReplBatch};
use super::error::sql_error;
use super::{Storage, StoreError, to_val};

/// The batches of one origin held here: enough to tell two members' sets
/// apart without listing them (the sum catches a gap filled differently).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holding {
    pub origin: String,
    pub name: String,
    pub batches: u64,
    pub max_id: i64,
    pub id_sum: i64,
    /// Rows stored under these batches (not counting re-sent copies).
    pub rows: i64,
}

impl Holding {
    /// Whether two members hold the same batches of this origin.
    pub fn same_set(&self, other: &Holding) -> bool {
        (self.batches, self.max_id, self.id_sum) == (other.batches, other.max_id, other.id_sum)
    }
}

/// Most batches one answer to a `Missing` request carries.
const MAX_MISSING: usize = 5_000;

/// Sorted, disjoint, inclusive ranges of batch ids.
pub type Ranges = Vec<(i64, i64)>;

/// What this node holds, per origin, in memory: built from every
/// database's `tarn_batches` at start, updated after each commit, so an
/// inventory costs nothing however many batches there are.
#[derive(Debug, Default)]
pub(super) struct Index {
    by: BTreeMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    name: String,
    ranges: Ranges,
    batches: u64,
    max_id: i64,
    id_sum: i64,
    rows: i64,
}

impl Index {
    /// Records a batch newly held (stored, or held as a copy).
    pub(super) fn add(&mut self, rec: &BatchRecord) {
        let e = self.by.entry(rec.origin.peer.clone()).or_default();
        if !insert(&mut e.ranges, rec.origin.id) {
            return;
        }
        if e.name.is_empty() {
            e.name = rec.origin.name.clone();
        }
        e.batches += 1;
        e.max_id = e.max_id.max(rec.origin.id);
        e.id_sum = e.id_sum.wrapping_add(rec.origin.id);
        if rec.stored {
            e.rows += rec.rows;
        }
    }
}

/// Adds `id` to sorted disjoint `ranges`; false if it was there.
pub fn insert(ranges: &mut Ranges, id: i64) -> bool {
    let i = ranges.partition_point(|(_, hi)| *hi < id);
    if ranges.get(i).is_some_and(|(lo, _)| *lo <= id) {
        return false;
    }
    let joins_prev = i > 0 && ranges[i - 1].1 + 1 == id;
    let joins_next = ranges.get(i).is_some_and(|(lo, _)| *lo == id + 1);
    match (joins_prev, joins_next) {
        (true, true) => {
            ranges[i - 1].1 = ranges[i].1;
            ranges.remove(i);
        }
        (true, false) => ranges[i - 1].1 = id,
        (false, true) => ranges[i].0 = id,
        (false, false) => ranges.insert(i, (id, id)),
    }
    true
}

/// The ids in `ours` and not in `theirs` (both sorted and disjoint).
pub fn minus(ours: &[(i64, i64)], theirs: &[(i64, i64)]) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(lo, hi) in ours {
        let mut at = lo;
        while j < theirs.len() && theirs[j].1 < at {
            j += 1;
        }
        let mut k = j;
        while at <= hi {
            match theirs.get(k) {
                Some(&(tlo, thi)) if tlo <= hi => {
                    if tlo > at {
                        out.push((at, tlo - 1));
                    }
                    at = at.max(thi.saturating_add(1));
                    k += 1;
                }
                _ => {
                    out.push((at, hi));
                    break;
                }
            }
        }
    }
    out
}

impl Storage {
    /// Per origin, what this node holds, in origin order.
    pub fn inventory(&self) -> Vec<Holding> {
        let index = self.index.lock().expect("lock poisoned");
        index
            .by
            .iter()
            .map(|(origin, e)| Holding {
                origin: origin.clone(),
                name: e.name.clone(),
                batches: e.batches,
                max_id: e.max_id,
                id_sum: e.id_sum,
                rows: e.rows,
            })
            .collect()
    }

    /// The ids of `origin`'s batches held here, as ranges.
    pub fn held(&self, origin: &str) -> Ranges {
        let index = self.index.lock().expect("lock poisoned");
        index
            .by
            .get(origin)
            .map(|e| e.ranges.clone())
            .unwrap_or_default()
    }

    /// `origin`'s batches held here and not in `have`, in id order, with
    /// their rows: as many as fit in about `budget` bytes (at least one).
    pub fn missing(
        &self,
        origin: &str,
        have: &[(i64, i64)],
        budget: usize,
    ) -> Result<Vec<ReplBatch>, StoreError> {
        let gaps = minus(&self.held(origin), have);
        let mut out = Vec::new();
        let mut size = 0;
        // Gap by gap, a bounded index range scan in each database.
        for (lo, hi) in gaps {
            let mut wanted: Vec<(String, BatchRecord)> = Vec::new();
            for (name, db) in self.all_dbs() {
                let conn = db.reader().map_err(sql_error)?;
                let r = (|| {
                    let mut st = conn.prepare_cached(&format!(
                        "SELECT {BATCH_COLUMNS} FROM tarn_batches \
                         WHERE origin = ?1 AND origin_id BETWEEN ?2 AND ?3 \
                         ORDER BY origin_id LIMIT 1000"
                    ))?;
                    st.query_map(params![origin, lo, hi], BatchRecord::from_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })();
                db.give_back(conn);
                wanted.extend(
                    r.map_err(sql_error)?
                        .into_iter()
                        .map(|rec| (name.clone(), rec)),
                );
            }
            wanted.sort_by_key(|(_, rec)| rec.origin.id);
            for (db, rec) in wanted {
                if (size >= budget && !out.is_empty()) || out.len() >= MAX_MISSING {
                    return Ok(out);
                }
                if let Some(b) = self.batch_of(&db, &rec)? {
                    size += b.approx_size();
                    out.push(b);
                }
            }
            if size >= budget && !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Rows per user table, as `(db, table, rows)`.
    pub fn table_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut out = Vec::new();
        for (name, db) in self.all_dbs() {
            let tables = self.tables(&name)?;
            let conn = db.reader().map_err(sql_error)?;
            let r = tables
                .into_iter()
                .map(|t| {
                    let n: i64 =
                        conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))?;
                    Ok((name.clone(), t, n))
                })
                .collect::<rusqlite::Result<Vec<_>>>();
            db.give_back(conn);
            out.extend(r.map_err(sql_error)?);
        }
        Ok(out)
    }

    /// One batch this node holds, with its rows, or `None` if it holds no
    /// such batch.
    pub fn read_batch(
        &self,
        db: &str,
        origin: &str,
        id: i64,
    ) -> Result<Option<ReplBatch>, StoreError> {
        let Ok(database) = self.database(db) else {
            return Ok(None);
        };
        let conn = database.reader().map_err(sql_error)?;
        let rec = conn
            .prepare_cached(&format!(
                "SELECT {BATCH_COLUMNS} FROM tarn_batches WHERE origin = ?1 AND origin_id = ?2"
            ))
            .and_then(|mut st| {
                use rusqlite::OptionalExtension as _;
                st.query_row(params![origin, id], BatchRecord::from_row)
                    .optional()
            });
        database.give_back(conn);
        match rec.map_err(sql_error)? {
            Some(rec) => self.batch_of(db, &rec),
            None => Ok(None),
        }
    }

    /// A batch written here with all its parts (a large batch is recorded
    /// as several: ids `id, id + 1, ...`, hashes `h, h#1, ...`).
    pub fn batch_parts(
        &self,
        db: &str,
        origin: &str,
        id: i64,
    ) -> Result<Vec<ReplBatch>, StoreError> {
        let mut out = Vec::new();
        let Some(first) = self.read_batch(db, origin, id)? else {
            return Ok(out);
        };
        let hash = first.hash.clone();
        out.push(first);
        for k in 1.. {
            match self.read_batch(db, origin, id + k)? {
                Some(b) if b.hash == format!("{hash}#{k}") => out.push(b),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The ids of a batch recorded here and of its parts, in order (a
    /// large batch is recorded as several: ids `id, id + 1, ...`, hashes
    /// `h, h#1, ...`); empty if there is no such batch.
    pub fn part_ids(&self, db: &str, origin: &str, id: i64) -> Result<Vec<i64>, StoreError> {
        let Ok(database) = self.database(db) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, String)> = database
            .with_reader(|conn| {
                let mut st = conn.prepare_cached(
                    "SELECT origin_id, hash FROM tarn_batches \
                     WHERE origin = ?1 AND origin_id >= ?2 ORDER BY origin_id LIMIT 100000",
                )?;
                st.query_map(params![origin, id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql_error)?;
        let mut out = Vec::new();
        let Some((first, hash)) = rows.first().filter(|(i, _)| *i == id).cloned() else {
            return Ok(out);
        };
        out.push(first);
        for (k, (i, h)) in rows.iter().enumerate().skip(1) {
            if *i != id + k as i64 || *h != format!("{hash}#{k}") {
                break;
            }
            out.push(*i);
        }
        Ok(out)
    }

    /// Reads a recorded batch's rows (for a batch held as a copy of
    /// another with the same hash, that one's rows).
    fn batch_of(&self, db: &str, rec: &BatchRecord) -> Result<Option<ReplBatch>, StoreError> {
        let database = self.database(db)?;
        let Some(schema) = database.schema(&rec.table) else {
            return Ok(None);
        };
        let conn = database.reader().map_err(sql_error)?;
        let r = (|| -> rusqlite::Result<Option<ReplBatch>> {
            let (first, n) = match rec.first_row {
                Some(f) => (f, rec.rows),
                None => {
                    use rusqlite::OptionalExtension as _;
                    let found: Option<(i64, i64)> = conn
                        .prepare_cached(
                            "SELECT first_row, rows FROM tarn_batches \
                             WHERE table_name = ?1 AND hash = ?2 AND first_row IS NOT NULL",
                        )?
                        .query_row(params![rec.table, rec.hash], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    match found {
                        Some(f) => f,
                        None => return Ok(None),
                    }
                }
            };
            let cols: Vec<String> = schema
                .columns
                .iter()
                .map(|(c, _)| format!("\"{c}\""))
                .collect();
            let mut st = conn.prepare_cached(&format!(
                "SELECT {} FROM \"{}\" WHERE row_id BETWEEN ?1 AND ?2 ORDER BY row_id",
                cols.join(", "),
                rec.table
            ))?;
            let width = cols.len();
            let rows = st
                .query_map(params![first, first + n - 1], |r| {
                    (0..width)
                        .map(|i| r.get_ref(i).map(to_val))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(ReplBatch {
                db: db.to_owned(),
                table: rec.table.clone(),
                origin: rec.origin.clone(),
                source: rec.source.clone(),
                hash: rec.hash.clone(),
                instructions: rec.instructions.clone(),
                columns: schema
                    .columns
                    .iter()
                    .map(|(c, t)| (c.clone(), t.sql().to_owned()))
                    .collect(),
                rows,
            }))
        })();
        database.give_back(conn);
        r.map_err(sql_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, rows_of};
    use crate::store::{BatchMeta, Origin, Val};

    struct Member {
        _dir: tempfile::TempDir,
        s: Storage,
        peer: String,
    }

    fn member(i: usize) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let peer = format!("12D3KooWMember{i}");
        let s = testing::open(dir.path(), &format!("m{i}"), &peer);
        Member { _dir: dir, s, peer }
    }

    fn write(m: &Member, n: u64) {
        let meta = BatchMeta {
            source: "sim".into(),
            hash: format!("h{n}"),
            instructions: String::new(),
        };
        m.s.write("lab", "t", rows_of(n), &meta).unwrap();
    }

    fn keys(m: &Member) -> (i64, i64, Vec<i64>) {
        testing::keys(&m.s)
    }

    #[test]
    fn malformed_batches_are_refused_and_change_nothing() {
        let m = member(0);
        write(&m, 1);
        let good = m.s.read_batch("lab", &m.peer, 1).unwrap().unwrap();
        let other = member(1);
        let bad = [
            ReplBatch {
                rows: vec![vec![Val::Int(1)]],
                ..good.clone()
            },
            ReplBatch {
                columns: vec![("k".into(), "BLOB".into()), ("v".into(), "FLOAT".into())],
                ..good.clone()
            },
            ReplBatch {
                columns: vec![
                    ("row_id".into(), "INTEGER".into()),
                    ("v".into(), "FLOAT".into()),
                ],
                ..good.clone()
            },
            ReplBatch {
                columns: vec![("k".into(), "INTEGER".into()), ("k".into(), "FLOAT".into())],
                ..good.clone()
            },
            ReplBatch {
                table: "bad name".into(),
                ..good.clone()
            },
            ReplBatch {
                db: "almgm".into(),
                ..good.clone()
            },
            ReplBatch {
                origin: Origin {
                    peer: "../x".into(),
                    ..good.origin.clone()
                },
                ..good.clone()
            },
            ReplBatch {
                origin: Origin {
                    id: 0,
                    ..good.origin.clone()
                },
                ..good.clone()
            },
            ReplBatch {
                rows: Vec::new(),
                ..good.clone()
            },
        ];
        for b in bad {
            assert!(other.s.write_replica(b.clone(), "x").is_err(), "{b:?}");
        }
        assert!(other.s.inventory().is_empty());
        assert_eq!(keys(&other).0, 0);
        // The good one is stored, once however often it comes.
        for _ in 0..3 {
            other.s.write_replica(good.clone(), "x").unwrap();
        }
        assert_eq!(keys(&other).0, 10);
    }

    #[test]
    fn range_insert_and_difference() {
        let mut r = Vec::new();
        for id in [5, 3, 4, 1, 9, 2, 7, 8] {
            assert!(insert(&mut r, id));
        }
        assert!(!insert(&mut r, 4));
        assert_eq!(r, vec![(1, 5), (7, 9)]);
        assert!(insert(&mut r, 6));
        assert_eq!(r, vec![(1, 9)]);
        assert_eq!(
            minus(&[(1, 10)], &[(2, 3), (5, 5), (9, 20)]),
            vec![(1, 1), (4, 4), (6, 8)]
        );
        assert_eq!(minus(&[(1, 3), (7, 9)], &[]), vec![(1, 3), (7, 9)]);
        assert_eq!(minus(&[(1, 3), (7, 9)], &[(0, 100)]), vec![]);
        assert_eq!(minus(&[(1, 3), (7, 9)], &[(2, 8)]), vec![(1, 1), (9, 9)]);
        // Against a brute force over small random sets.
        let mut x = 12345u64;
        for _ in 0..500 {
            let mut set = |n: u64| {
                let mut r = Vec::new();
                let mut ids = std::collections::BTreeSet::new();
                for _ in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % 40) as i64;
                    insert(&mut r, id);
                    ids.insert(id);
                }
                (r, ids)
            };
            let (a, ia) = set(15);
            let (b, ib) = set(15);
            let d = minus(&a, &b);
            let want: Vec<i64> = ia.difference(&ib).copied().collect();
            let got: Vec<i64> = d.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
            assert_eq!(got, want, "{a:?} - {b:?}");
        }
    }
}
