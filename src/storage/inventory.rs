//! What batches this node holds, by the member that produced them: the
//! inventories cluster members compare to find what one of them missed,
//! and the reads that send a batch to another member.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{BATCH_COLUMNS, BatchRecord, ReplBatch, Storage};
use crate::error::ApiError;

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

/// Sorted, disjoint, inclusive ranges of batch ids.
pub type Ranges = Vec<(i64, i64)>;

/// Whether `id` is inside one of `ranges` (sorted).
pub fn in_ranges(ranges: &[(i64, i64)], id: i64) -> bool {
    let i = ranges.partition_point(|(_, hi)| *hi < id);
    ranges.get(i).is_some_and(|(lo, _)| *lo <= id)
}

impl Storage {
    /// Per origin, what this node holds, in origin order.
    pub fn inventory(&self) -> Result<Vec<Holding>, ApiError> {
        let mut by: BTreeMap<String, Holding> = BTreeMap::new();
        for (_, db) in self.all_dbs() {
            let conn = db.reader().map_err(super::sql_error)?;
            let r = (|| {
                let mut st = conn.prepare_cached(
                    "SELECT origin, max(origin_name), count(*), max(origin_id), \
                     total(origin_id), total(CASE WHEN first_row IS NULL THEN 0 ELSE rows END) \
                     FROM tarn_batches GROUP BY origin",
                )?;
                let rows = st.query_map([], |r| {
                    Ok(Holding {
                        origin: r.get(0)?,
                        name: r.get(1)?,
                        batches: r.get::<_, i64>(2)? as u64,
                        max_id: r.get(3)?,
                        id_sum: r.get::<_, f64>(4)? as i64,
                        rows: r.get::<_, f64>(5)? as i64,
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })();
            db.give_back(conn);
            for h in r.map_err(super::sql_error)? {
                match by.get_mut(&h.origin) {
                    Some(acc) => {
                        acc.batches += h.batches;
                        acc.max_id = acc.max_id.max(h.max_id);
                        acc.id_sum = acc.id_sum.wrapping_add(h.id_sum);
                        acc.rows += h.rows;
                    }
                    None => {
                        by.insert(h.origin.clone(), h);
                    }
                }
            }
        }
        Ok(by.into_values().collect())
    }

    /// Rows per user table, as `(db, table, rows)`.
    pub fn table_counts(&self) -> Result<Vec<(String, String, i64)>, ApiError> {
        let mut out = Vec::new();
        for (name, db) in self.all_dbs() {
            let mut tables: Vec<String> = db
                .schemas
                .read()
                .expect("lock poisoned")
                .keys()
                .cloned()
                .collect();
            tables.sort();
            let conn = db.reader().map_err(super::sql_error)?;
            let r = tables
                .into_iter()
                .map(|t| {
                    let n: i64 =
                        conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))?;
                    Ok((name.clone(), t, n))
                })
                .collect::<rusqlite::Result<Vec<_>>>();
            db.give_back(conn);
            out.extend(r.map_err(super::sql_error)?);
        }
        Ok(out)
    }

    /// The ids of `origin`'s batches held here, as ranges.
    pub fn held(&self, origin: &str) -> Result<Ranges, ApiError> {
        let mut ids = Vec::new();
        for (_, db) in self.all_dbs() {
            let conn = db.reader().map_err(super::sql_error)?;
            let r = (|| {
                let mut st = conn.prepare_cached(
                    "SELECT origin_id FROM tarn_batches WHERE origin = ?1 ORDER BY origin_id",
                )?;
                st.query_map([origin], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })();
            db.give_back(conn);
            ids.extend(r.map_err(super::sql_error)?);
        }
        ids.sort_unstable();
        let mut out: Ranges = Vec::new();
        for id in ids {
            match out.last_mut() {
                Some((_, hi)) if *hi + 1 >= id => *hi = (*hi).max(id),
                _ => out.push((id, id)),
            }
        }
        Ok(out)
    }

    /// `origin`'s batches held here and not in `have`, in id order, with
    /// their rows: as many as fit in about `budget` bytes (at least one).
    pub fn missing(
        &self,
        origin: &str,
        have: &[(i64, i64)],
        budget: usize,
    ) -> Result<Vec<ReplBatch>, ApiError> {
        let mut wanted: Vec<(String, BatchRecord)> = Vec::new();
        for (name, db) in self.all_dbs() {
            let conn = db.reader().map_err(super::sql_error)?;
            let r = (|| {
                let mut st = conn.prepare_cached(&format!(
                    "SELECT {BATCH_COLUMNS} FROM tarn_batches WHERE origin = ?1 ORDER BY origin_id"
                ))?;
                st.query_map([origin], BatchRecord::from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })();
            db.give_back(conn);
            wanted.extend(
                r.map_err(super::sql_error)?
                    .into_iter()
                    .filter(|rec| !in_ranges(have, rec.origin.id))
                    .map(|rec| (name.clone(), rec)),
            );
        }
        wanted.sort_by_key(|(_, rec)| rec.origin.id);
        let mut out = Vec::new();
        let mut size = 0;
        for (db, rec) in wanted {
            if size >= budget && !out.is_empty() {
                break;
            }
            if let Some(b) = self.batch_of(&db, &rec)? {
                size += approx_size(&b);
                out.push(b);
            }
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
    ) -> Result<Option<ReplBatch>, ApiError> {
        let Ok(database) = self.database(db) else {
            return Ok(None);
        };
        let conn = database.reader().map_err(super::sql_error)?;
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
        match rec.map_err(super::sql_error)? {
            Some(rec) => self.batch_of(db, &rec),
            None => Ok(None),
        }
    }

    /// Reads a recorded batch's rows (for a batch held as a copy of
    /// another with the same hash, that one's rows).
    fn batch_of(&self, db: &str, rec: &BatchRecord) -> Result<Option<ReplBatch>, ApiError> {
        let database = self.database(db)?;
        let Some(schema) = database.schema(&rec.table) else {
            return Ok(None);
        };
        let conn = database.reader().map_err(super::sql_error)?;
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
                        .map(|i| r.get_ref(i).map(crate::accumulate::to_val))
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
        r.map_err(super::sql_error)
    }
}

/// About how many bytes a batch takes on the wire.
pub fn approx_size(b: &ReplBatch) -> usize {
    let row: usize = b
        .rows
        .first()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    crate::rows::Val::Text(t) => t.len() + 4,
                    _ => 9,
                })
                .sum()
        })
        .unwrap_or(0);
    256 + b.columns.len() * 24 + row.max(1) * b.rows.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = vec![(1, 3), (5, 5), (9, 12)];
        for id in [1, 2, 3, 5, 9, 12] {
            assert!(in_ranges(&r, id), "{id}");
        }
        for id in [0, 4, 6, 8, 13] {
            assert!(!in_ranges(&r, id), "{id}");
        }
        assert!(!in_ranges(&[], 1));
    }
}
