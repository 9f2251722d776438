//! Batch bookkeeping: which batches a database holds (`tarn_batches`, in
//! the same transaction as their rows) and the node-wide catalogue in
//! `almgm` (`tsd_info` for this node's batches, `tsd_<peer>` for another
//! member's), written after each commit and rebuilt at start.

use rusqlite::{Transaction, params};

use super::names::{column, ident, user_db};
use super::{ColType, Storage, StoreError, Val};

/// Where a batch came from and how it is identified.
#[derive(Debug, Clone)]
pub struct BatchMeta {
    /// Who sent it (a device, a file, a client).
    pub source: String,
    /// Identity for de-duplication, unique per table.
    pub hash: String,
    pub instructions: String,
}

/// Which member produced a batch, and under which id: a batch's identity
/// across its cluster. Its rows carry `tsd_name = name`, `tsd_id = id` on
/// every member that holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The producer's PeerId.
    pub peer: String,
    /// The producer's node name.
    pub name: String,
    pub id: i64,
}

/// One batch as `tarn_batches` and `almgm` record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub origin: Origin,
    pub table: String,
    pub source: String,
    pub hash: String,
    pub instructions: String,
    pub rows: i64,
    /// When it was stored here.
    pub time: String,
    /// The peer it came from; empty if it was written here.
    pub from: String,
    /// Whether its rows are stored under it (false: the same rows were
    /// already held under another batch with the same hash).
    pub stored: bool,
    /// The row id of its first row (rows are one run of ids).
    pub first_row: Option<i64>,
}

/// A batch with its rows, as it travels between members of a cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplBatch {
    pub db: String,
    pub table: String,
    pub origin: Origin,
    pub source: String,
    pub hash: String,
    pub instructions: String,
    /// Column names and declared types (`INTEGER`, `FLOAT`, ...).
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Val>>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The batch's id (`tsd_id`); for a duplicate, the id it was stored under.
    pub tsd_id: i64,
    /// The PeerId of the member that produced it (with `tsd_id`, the
    /// batch's identity in its cluster).
    pub origin: String,
    pub rows: usize,
    pub duplicate: bool,
}

/// A batch this node produced and committed (for the replicator).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Committed {
    pub db: String,
    pub id: i64,
}

pub(super) const BATCH_COLUMNS: &str = "origin, origin_name, origin_id, table_name, source, hash, \
     instructions, rows, file_time, received_from, first_row";

/// Every user database's batch table.
pub(super) const BATCHES_DDL: &str = "CREATE TABLE IF NOT EXISTS tarn_batches (
        origin TEXT NOT NULL,
        origin_name TEXT NOT NULL,
        origin_id INTEGER NOT NULL,
        table_name TEXT NOT NULL,
        source TEXT NOT NULL,
        hash TEXT NOT NULL,
        instructions TEXT NOT NULL,
        rows INTEGER NOT NULL,
        file_time TIMESTAMP NOT NULL,
        received_from TEXT NOT NULL,
        first_row INTEGER,
        PRIMARY KEY (origin, origin_id)) WITHOUT ROWID;
     CREATE UNIQUE INDEX IF NOT EXISTS tarn_batches_by_hash
        ON tarn_batches (table_name, hash) WHERE first_row IS NOT NULL;";

/// The columns of `almgm`'s catalogues (EdgeLake's `tsd_info`).
macro_rules! catalogue_columns {
    () => {
        "file_id INTEGER PRIMARY KEY,
        dbms_name TEXT NOT NULL,
        table_name TEXT NOT NULL,
        source TEXT NOT NULL,
        file_hash TEXT NOT NULL,
        instructions TEXT NOT NULL,
        rows INTEGER NOT NULL,
        file_time TIMESTAMP NOT NULL"
    };
}

/// `almgm`'s catalogue of this node's own batches.
pub(super) const TSD_INFO_DDL: &str = concat!(
    "CREATE TABLE IF NOT EXISTS tsd_info (",
    catalogue_columns!(),
    ", UNIQUE (dbms_name, table_name, file_hash));"
);

impl BatchRecord {
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRecord> {
        let first_row: Option<i64> = r.get(10)?;
        Ok(BatchRecord {
            origin: Origin {
                peer: r.get(0)?,
                name: r.get(1)?,
                id: r.get(2)?,
            },
            table: r.get(3)?,
            source: r.get(4)?,
            hash: r.get(5)?,
            instructions: r.get(6)?,
            rows: r.get(7)?,
            time: r.get(8)?,
            from: r.get(9)?,
            stored: first_row.is_some(),
            first_row,
        })
    }
}

pub(super) fn insert_batch(tx: &Transaction<'_>, rec: &BatchRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO tarn_batches ({BATCH_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        rec.origin.peer,
        rec.origin.name,
        rec.origin.id,
        rec.table,
        rec.source,
        rec.hash,
        rec.instructions,
        rec.rows,
        rec.time,
        rec.from,
        rec.first_row
    ])?;
    Ok(())
}

/// The `almgm` table of the batches another member produced.
pub fn member_table(peer: &str) -> String {
    format!("tsd_{peer}")
}

/// `almgm`'s catalogue of the batches another member produced.
fn member_table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" ({}, member_name TEXT NOT NULL, \
         received_from TEXT NOT NULL, stored BOOLEAN NOT NULL);",
        catalogue_columns!()
    )
}

/// Most columns a replicated batch may carry (SQLite's default limit).
const MAX_BATCH_COLUMNS: usize = 2000;

impl ReplBatch {
    /// Checks what a peer sent before any of it is used.
    pub fn validate(&self) -> Result<(), StoreError> {
        user_db(&self.db)?;
        ident("table", &self.table)?;
        let o = &self.origin;
        if o.peer.is_empty()
            || o.peer.len() > 128
            || !o.peer.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(StoreError::InvalidBatch("origin"));
        }
        if o.id < 1 || o.name.len() > 256 || self.hash.is_empty() || self.hash.len() > 256 {
            return Err(StoreError::InvalidBatch("identity"));
        }
        if self.source.len() > 4096 || self.instructions.len() > 4096 {
            return Err(StoreError::InvalidBatch("source"));
        }
        if self.columns.is_empty() || self.columns.len() > MAX_BATCH_COLUMNS || self.rows.is_empty()
        {
            return Err(StoreError::InvalidBatch("shape"));
        }
        for (c, t) in &self.columns {
            if column(c).is_err() || ColType::from_sql(t).is_none() {
                return Err(StoreError::InvalidBatch("column"));
            }
        }
        let mut names: Vec<&str> = self.columns.iter().map(|(c, _)| c.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::InvalidBatch("column list (a name twice)"));
        }
        if self.rows.iter().any(|r| r.len() != self.columns.len()) {
            return Err(StoreError::InvalidBatch("row width"));
        }
        Ok(())
    }

    /// The declared types of its columns.
    pub(super) fn column_types(&self) -> Result<Vec<(String, ColType)>, StoreError> {
        self.columns
            .iter()
            .map(|(c, t)| {
                let ty = ColType::from_sql(t).ok_or(StoreError::InvalidBatch("a column type"))?;
                Ok((c.clone(), ty))
            })
            .collect()
    }

    /// About how many bytes the batch takes on the wire.
    pub fn approx_size(&self) -> usize {
        let row: usize = self
            .rows
            .first()
            .map(|r| r.iter().map(Val::approx_size).sum())
            .unwrap_or(0);
        256 + self.columns.len() * 24 + row.max(1) * self.rows.len()
    }
}

impl Storage {
    /// Copies into `almgm` every batch a crash kept out of it, rebuilds the
    /// in-memory inventory, and returns the highest id this node gave its
    /// own batches.
    pub(super) fn reconcile(&self) -> anyhow::Result<i64> {
        let mut almgm = self.almgm.writer();
        let mut max: i64 =
            almgm.query_row("SELECT coalesce(max(file_id), 0) FROM tsd_info", [], |r| {
                r.get(0)
            })?;
        for (name, db) in self.all_dbs() {
            let records = {
                let w = db.writer();
                let mut stmt = w.prepare(&format!("SELECT {BATCH_COLUMNS} FROM tarn_batches"))?;
                stmt.query_map([], BatchRecord::from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let tx = almgm.transaction()?;
            let mut copied = 0;
            let mut index = self.index.lock().expect("lock poisoned");
            for rec in &records {
                if rec.origin.peer == self.origin {
                    max = max.max(rec.origin.id);
                }
                copied += self.record_one(&tx, &name, rec)?;
                index.add(rec);
            }
            drop(index);
            tx.commit()?;
            if copied > 0 {
                tracing::info!(db = %name, batches = copied, "restored batch records into almgm");
            }
        }
        Ok(max)
    }

    /// Writes one batch's record into `almgm`; returns 1 if it was new there.
    fn record_one(
        &self,
        tx: &Transaction<'_>,
        db: &str,
        rec: &BatchRecord,
    ) -> rusqlite::Result<usize> {
        if rec.origin.peer == self.origin {
            return tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO tsd_info VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    rec.origin.id,
                    db,
                    rec.table,
                    rec.source,
                    rec.hash,
                    rec.instructions,
                    rec.rows,
                    rec.time
                ]);
        }
        let table = member_table(&rec.origin.peer);
        let insert = format!(
            "INSERT OR IGNORE INTO \"{table}\" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        );
        let mut st = match tx.prepare_cached(&insert) {
            Ok(st) => st,
            Err(_) => {
                tx.execute_batch(&member_table_ddl(&table))?;
                // Queries see the new table's columns as declared above.
                let loaded = super::schema::load_schemas(tx)?;
                *self.almgm.schemas.write().expect("lock poisoned") = loaded;
                tx.prepare_cached(&insert)?
            }
        };
        st.execute(params![
            rec.origin.id,
            db,
            rec.table,
            rec.source,
            rec.hash,
            rec.instructions,
            rec.rows,
            rec.time,
            rec.origin.name,
            rec.from,
            rec.stored
        ])
    }

    /// Records written batches in `almgm`. A failure loses nothing: the
    /// batches are safe in their database and start-up copies them over.
    pub(super) fn record(&self, db: &str, written: &[BatchRecord]) {
        if written.is_empty() {
            return;
        }
        let mut almgm = self.almgm.writer();
        let r = (|| -> rusqlite::Result<()> {
            let tx = almgm.transaction()?;
            for rec in written {
                self.record_one(&tx, db, rec)?;
            }
            tx.commit()
        })();
        if let Err(e) = r {
            tracing::warn!("recording batches in almgm: {e}");
        }
    }
}
