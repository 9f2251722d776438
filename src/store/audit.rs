//! `almgm.audit`: the audit log's rows (see [`crate::audit`]).

use rusqlite::params;

use super::{Storage, StoreError};
use crate::audit::Event;

pub(super) const AUDIT_DDL: &str = "CREATE TABLE IF NOT EXISTS audit (\
     ts TIMESTAMP NOT NULL, who TEXT NOT NULL, what TEXT NOT NULL, \
     source TEXT NOT NULL, outcome TEXT NOT NULL);\
     CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);";

/// The columns of an audit row, in order.
pub const AUDIT_COLUMNS: [&str; 5] = ["ts", "who", "what", "source", "outcome"];

impl Storage {
    /// Stores events in one transaction.
    pub fn audit_write(&self, events: &[Event]) -> Result<(), StoreError> {
        let mut c = self.almgm.writer();
        let tx = c
            .transaction()
            .map_err(|e| StoreError::internal("writing the audit log", e))?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO audit VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| StoreError::internal("writing the audit log", e))?;
            for e in events {
                st.execute(params![
                    tarn_query::time::format_storage(e.ts_micros),
                    e.who,
                    e.what,
                    e.source,
                    e.outcome
                ])
                .map_err(|e| StoreError::internal("writing the audit log", e))?;
            }
        }
        tx.commit()
            .map_err(|e| StoreError::internal("writing the audit log", e))
    }

    /// Deletes rows older than `before_micros`, and all but the newest
    /// `keep_rows`. Returns how many went.
    pub fn audit_prune(&self, before_micros: i64, keep_rows: u64) -> Result<usize, StoreError> {
        let c = self.almgm.writer();
        let err = |e| StoreError::internal("pruning the audit log", e);
        let old = c
            .execute(
                "DELETE FROM audit WHERE ts < ?1",
                params![tarn_query::time::format_storage(before_micros)],
            )
            .map_err(err)?;
        let over = c
            .execute(
                "DELETE FROM audit WHERE rowid <= (SELECT max(rowid) FROM audit) - ?1",
                params![keep_rows as i64],
            )
            .map_err(err)?;
        Ok(old + over)
    }

    /// The newest `limit` rows, newest first.
    pub fn audit_recent(&self, limit: usize) -> Result<Vec<[String; 5]>, StoreError> {
        let c = self.almgm.writer();
        let err = |e| StoreError::internal("reading the audit log", e);
        let mut st = c
            .prepare_cached(
                "SELECT ts, who, what, source, outcome FROM audit ORDER BY rowid DESC LIMIT ?1",
            )
            .map_err(err)?;
        let rows = st
            .query_map(params![limit as i64], |r| {
                Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
}
