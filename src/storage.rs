//! The operator's storage: one SQLite file (WAL) per logical database under
//! `<data-dir>/dbms/`, plus `almgm` for batch bookkeeping.
//!
//! Writes are batches. A batch is checked against the table's schema, then
//! written with its bookkeeping row in one transaction of its database, so a
//! crash leaves either all of it or none, and the per-database
//! `tarn_batches` table (unique per table and hash) makes a replayed batch a
//! no-op. `almgm.tsd_info` is the node-wide catalogue of batches; it is
//! written right after each commit and rebuilt from `tarn_batches` at start,
//! so a crash between the two loses nothing.
//!
//! Every call here blocks; the node runs them on `spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, TransactionBehavior, params};

mod inventory;
pub use inventory::{Holding, Ranges, approx_size, insert as insert_id};

use crate::error::ApiError;
use crate::rows::{ColType, Rows, SYSTEM_COLUMNS, Val, coerce, ident, infer};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Survives a crash of the process (`kill -9`): WAL, `synchronous=NORMAL`.
    #[default]
    Normal,
    /// Also survives a power cut: every commit is fsynced.
    Fsync,
}

impl Durability {
    /// SQLite's `synchronous` setting (in WAL mode) for this durability.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Fsync => "FULL",
        }
    }
}

/// The user columns of one table, in order, with their types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSchema {
    pub columns: Vec<(String, ColType)>,
}

impl TableSchema {
    pub fn get(&self, name: &str) -> Option<ColType> {
        self.columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, t)| *t)
    }

    /// Decides each batch column's type (existing columns keep theirs, new
    /// ones are inferred), coerces every value in place, and returns the
    /// columns the batch adds. Nothing is written; an error means the batch
    /// must be refused whole.
    pub fn plan(&self, rows: &mut Rows) -> Result<Vec<(String, ColType)>, ApiError> {
        self.plan_hinted(rows, None)
    }

    /// [`TableSchema::plan`] for a replicated batch (`replica` holds the
    /// types it declares): a new column takes its declared type, and a value
    /// that does not fit this member's column is kept as it is rather than
    /// refused. Another member accepted the batch; refusing it here would
    /// leave the members different for good (columns created concurrently
    /// on two members can differ: `1` makes an integer column, `1.5` a
    /// float one).
    pub fn plan_hinted(
        &self,
        rows: &mut Rows,
        replica: Option<&[(String, ColType)]>,
    ) -> Result<Vec<(String, ColType)>, ApiError> {
        let hints = replica.unwrap_or_default();
        let mut new = Vec::new();
        let mut types = Vec::with_capacity(rows.columns.len());
        for (i, c) in rows.columns.iter().enumerate() {
            let ty = match self.get(c) {
                Some(t) => t,
                None => {
                    let hinted = hints.iter().find(|(h, _)| h == c).map(|(_, t)| *t);
                    let t = match hinted {
                        Some(t) => t,
                        None => infer(c, rows.rows.iter().map(|r| r[i].kind()))?,
                    };
                    new.push((c.clone(), t));
                    t
                }
            };
            types.push(ty);
        }
        for row in &mut rows.rows {
            for ((v, ty), c) in row.iter_mut().zip(&types).zip(&rows.columns) {
                if let Err(e) = coerce(c, *ty, v)
                    && replica.is_none()
                {
                    return Err(e);
                }
            }
        }
        Ok(new)
    }

    /// This schema with `new` columns appended.
    pub fn extended(&self, new: &[(String, ColType)]) -> TableSchema {
        let mut columns = self.columns.clone();
        columns.extend(new.iter().cloned());
        TableSchema { columns }
    }
}

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

const BATCH_COLUMNS: &str = "origin, origin_name, origin_id, table_name, source, hash, \
     instructions, rows, file_time, received_from, first_row";

impl BatchRecord {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRecord> {
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

fn insert_batch(tx: &rusqlite::Transaction<'_>, rec: &BatchRecord) -> rusqlite::Result<()> {
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

/// A batch this node produced and committed (for the replicator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub db: String,
    pub id: i64,
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

/// Most columns a replicated batch may carry (SQLite's default limit).
const MAX_BATCH_COLUMNS: usize = 2000;

fn bad_batch(what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_batch",
        format!("a replicated batch has an invalid {what}"),
    )
}

impl ReplBatch {
    /// Checks what a peer sent before any of it is used.
    pub fn validate(&self) -> Result<(), ApiError> {
        user_db(&self.db)?;
        ident("table", &self.table)?;
        let o = &self.origin;
        if o.peer.is_empty()
            || o.peer.len() > 128
            || !o.peer.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad_batch("origin"));
        }
        if o.id < 1 || o.name.len() > 256 || self.hash.is_empty() || self.hash.len() > 256 {
            return Err(bad_batch("identity"));
        }
        if self.source.len() > 4096 || self.instructions.len() > 4096 {
            return Err(bad_batch("source"));
        }
        if self.columns.is_empty() || self.columns.len() > MAX_BATCH_COLUMNS || self.rows.is_empty()
        {
            return Err(bad_batch("shape"));
        }
        for (c, t) in &self.columns {
            ident("column", c)?;
            if SYSTEM_COLUMNS.contains(&c.as_str()) || ColType::from_sql(t).is_none() {
                return Err(bad_batch("column"));
            }
        }
        let mut names: Vec<&str> = self.columns.iter().map(|(c, _)| c.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad_batch("column list (a name twice)"));
        }
        if self.rows.iter().any(|r| r.len() != self.columns.len()) {
            return Err(bad_batch("row width"));
        }
        Ok(())
    }
}

/// About how many bytes of rows one part of a batch holds (see
/// [`Storage::write_one`]): well inside one replication message.
const PART_BYTES: usize = 2 << 20;

/// Where each part of a batch starts: cut when a part's rows reach about
/// `max` bytes (at least one row a part).
fn part_starts(rows: &[Vec<Val>], max: usize) -> Vec<usize> {
    let mut starts = vec![0];
    let mut size = 0;
    for (i, row) in rows.iter().enumerate() {
        let n: usize = row
            .iter()
            .map(|v| match v {
                Val::Text(t) => t.len() + 4,
                _ => 9,
            })
            .sum();
        if size > 0 && size + n > max {
            starts.push(i);
            size = 0;
        }
        size += n;
    }
    starts
}

/// What [`Storage::write_one`] did with one batch.
struct Stored {
    written: Written,
    new_columns: NewColumns,
    /// The batch's new records (`almgm`, the inventory): none, or one per
    /// part.
    records: Vec<BatchRecord>,
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

/// Limits for one query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub timeout: Duration,
}

/// A query's answer with each column's declared type, when it has one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub types: Vec<Option<ColType>>,
    pub rows: Vec<Vec<Val>>,
}

/// All the node's databases.
pub struct Storage {
    dir: PathBuf,
    tsd_name: String,
    /// This node's PeerId: the origin of the batches written here.
    origin: String,
    durability: Durability,
    dbs: RwLock<HashMap<String, Arc<Database>>>,
    almgm: Arc<Database>,
    next_tsd: AtomicI64,
    /// Woken when a table is created, so the node can announce it.
    pub tables_changed: Arc<tokio::sync::Notify>,
    /// What this node holds, per origin (see [`inventory::Index`]).
    index: Mutex<inventory::Index>,
    /// Told of every batch this node produces (set by the replicator).
    committed: std::sync::OnceLock<tokio::sync::mpsc::Sender<Committed>>,
}

/// Columns a batch adds to its table.
type NewColumns = Vec<(String, ColType)>;

/// A batch waiting for the writer (see [`Storage::write`]).
struct Job {
    table: String,
    meta: BatchMeta,
    /// Set for a batch another member produced (replication).
    origin: Option<Origin>,
    /// The peer a replicated batch came from; empty for a batch written here.
    from: String,
    /// Declared types of the columns (a replicated batch), used for columns
    /// this node does not have yet instead of inferring them.
    hints: Vec<(String, ColType)>,
    /// The rows, the schema they were planned against, and the columns they add.
    work: Mutex<Option<(Rows, TableSchema, NewColumns)>>,
    result: Mutex<Option<Result<Written, ApiError>>>,
}

impl Job {
    fn answer(&self, r: Result<Written, ApiError>) {
        *self.result.lock().expect("lock poisoned") = Some(r);
    }

    fn take_result(&self) -> Option<Result<Written, ApiError>> {
        self.result.lock().expect("lock poisoned").take()
    }
}

struct Database {
    path: PathBuf,
    /// Batches waiting for the writer; bounded by the callers blocked on it.
    queue: Mutex<Vec<Arc<Job>>>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Copies the WAL back into the database beside the writer (see
    /// [`Storage::checkpoint`]).
    checkpointer: Mutex<Option<Connection>>,
    schemas: RwLock<HashMap<String, Arc<TableSchema>>>,
}

/// Names no user database may take.
pub const RESERVED_DBS: [&str; 2] = ["almgm", "system_query"];
const MAX_IDLE_READERS: usize = 8;

impl Storage {
    /// Opens (or creates) the storage under `data_dir/dbms`. `tsd_name` names
    /// this node in the rows it stores.
    pub fn open(
        data_dir: &Path,
        tsd_name: &str,
        origin: &str,
        durability: Durability,
    ) -> anyhow::Result<Storage> {
        let dir = data_dir.join("dbms");
        std::fs::create_dir_all(&dir)?;
        let almgm = Arc::new(Database::open(&dir.join("almgm.db"), durability)?);
        almgm.writer().execute_batch(
            "CREATE TABLE IF NOT EXISTS tsd_info (
                file_id INTEGER PRIMARY KEY,
                dbms_name TEXT NOT NULL,
                table_name TEXT NOT NULL,
                source TEXT NOT NULL,
                file_hash TEXT NOT NULL,
                instructions TEXT NOT NULL,
                rows INTEGER NOT NULL,
                file_time TIMESTAMP NOT NULL,
                UNIQUE (dbms_name, table_name, file_hash));",
        )?;
        let loaded = load_schemas(&almgm.writer())?;
        *almgm.schemas.write().expect("lock poisoned") = loaded;
        let mut dbs = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = db_name_of(&path) else {
                continue;
            };
            if RESERVED_DBS.contains(&name.as_str()) {
                continue;
            }
            dbs.insert(name, Arc::new(Database::open(&path, durability)?));
        }
        let storage = Storage {
            dir,
            tsd_name: tsd_name.to_owned(),
            origin: origin.to_owned(),
            durability,
            dbs: RwLock::new(dbs),
            almgm,
            next_tsd: AtomicI64::new(1),
            tables_changed: Arc::new(tokio::sync::Notify::new()),
            committed: std::sync::OnceLock::new(),
            index: Mutex::new(inventory::Index::default()),
        };
        let max = storage.reconcile()?;
        storage.next_tsd.store(max + 1, Ordering::SeqCst);
        Ok(storage)
    }

    /// Copies into `almgm` every batch a crash kept out of it, and returns
    /// the highest id this node gave its own batches.
    fn reconcile(&self) -> anyhow::Result<i64> {
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

    /// Writes one batch's record into `almgm` (`tsd_info` for this node's
    /// own batches, `tsd_<peer>` for another member's); returns 1 if it was
    /// new there.
    fn record_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
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
                tx.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS \"{table}\" (
                        file_id INTEGER PRIMARY KEY,
                        dbms_name TEXT NOT NULL,
                        table_name TEXT NOT NULL,
                        source TEXT NOT NULL,
                        file_hash TEXT NOT NULL,
                        instructions TEXT NOT NULL,
                        rows INTEGER NOT NULL,
                        file_time TIMESTAMP NOT NULL,
                        member_name TEXT NOT NULL,
                        received_from TEXT NOT NULL,
                        stored BOOLEAN NOT NULL);"
                ))?;
                // Queries see the new table's columns as declared above.
                let loaded = load_schemas(tx)?;
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

    pub fn tsd_name(&self) -> &str {
        &self.tsd_name
    }

    /// This node's PeerId, as its batches name their origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sends every batch this node produces from now on to `tx` (once).
    pub fn on_commit(&self, tx: tokio::sync::mpsc::Sender<Committed>) {
        let _ = self.committed.set(tx);
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Writes one batch into `db.table`, creating the database, the table and
    /// new columns as needed. Refused whole on any bad value.
    ///
    /// Group commit: the batch joins its database's queue, and whichever
    /// caller takes the writer next commits every queued batch in one
    /// transaction (each in its own savepoint, so one bad batch does not
    /// spoil the others). A commit costs about as much as 300 rows, so this
    /// is what keeps many small concurrent batches fast.
    pub fn write(
        &self,
        db: &str,
        table: &str,
        rows: Rows,
        meta: &BatchMeta,
    ) -> Result<Written, ApiError> {
        self.enqueue(db, table, rows, meta, None, Vec::new())
    }

    /// Stores a batch another member of the cluster produced (or this node
    /// produced and lost), received from `from`. A batch already held, under
    /// its origin or under the same hash, is recorded and not stored again.
    pub fn write_replica(&self, batch: ReplBatch, from: &str) -> Result<Written, ApiError> {
        batch.validate()?;
        let hints = batch
            .columns
            .iter()
            .map(|(c, t)| {
                Ok((
                    c.clone(),
                    ColType::from_sql(t).ok_or_else(|| bad_batch("a column type"))?,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let rows = Rows {
            columns: batch.columns.into_iter().map(|(c, _)| c).collect(),
            rows: batch.rows,
        };
        let meta = BatchMeta {
            source: batch.source,
            hash: batch.hash,
            instructions: batch.instructions,
        };
        let origin = batch.origin;
        let from = from.to_owned();
        self.enqueue(
            &batch.db,
            &batch.table,
            rows,
            &meta,
            Some((origin, from)),
            hints,
        )
    }

    fn enqueue(
        &self,
        db: &str,
        table: &str,
        mut rows: Rows,
        meta: &BatchMeta,
        origin: Option<(Origin, String)>,
        hints: Vec<(String, ColType)>,
    ) -> Result<Written, ApiError> {
        let db_name = user_db(db)?;
        let table = ident("table", table)?;
        let existing = self
            .dbs
            .read()
            .expect("lock poisoned")
            .get(&db_name)
            .cloned();
        // Coerce before queueing: parsing timestamps and numbers is the
        // costly part, and concurrent batches do it in parallel.
        let planned = existing
            .as_ref()
            .and_then(|d| d.schema(&table))
            .unwrap_or_default();
        let replica = origin.is_some().then_some(hints.as_slice());
        let planned_cols = planned.plan_hinted(&mut rows, replica)?;
        // Only a batch that passed creates its database.
        let database = match existing {
            Some(d) => d,
            None => self.database_or_create(&db_name)?,
        };
        let (origin, from) = origin.unzip();
        let job = Arc::new(Job {
            table,
            meta: meta.clone(),
            origin,
            from: from.unwrap_or_default(),
            hints,
            work: Mutex::new(Some((rows, Arc::unwrap_or_clone(planned), planned_cols))),
            result: Mutex::new(None),
        });
        database
            .queue
            .lock()
            .expect("lock poisoned")
            .push(job.clone());
        let mut conn = database.writer();
        if let Some(done) = job.take_result() {
            return done;
        }
        let jobs: Vec<Arc<Job>> =
            std::mem::take(&mut *database.queue.lock().expect("lock poisoned"));
        let written = self.commit_group(&database, &mut conn, &jobs);
        drop(conn);
        self.record(&db_name, &written);
        {
            let mut index = self.index.lock().expect("lock poisoned");
            written.iter().for_each(|rec| index.add(rec));
        }
        if let Some(tx) = self.committed.get() {
            for rec in written.iter().filter(|r| r.from.is_empty()) {
                // Full: the replicator is behind, and its inventory exchange
                // finds this batch anyway.
                let _ = tx.try_send(Committed {
                    db: db_name.clone(),
                    id: rec.origin.id,
                });
            }
        }
        job.take_result()
            .expect("a group that took this job answered it")
    }

    /// Writes `jobs` in one transaction and answers each of them. Returns
    /// the records of the batches written (for `almgm`).
    fn commit_group(
        &self,
        database: &Database,
        conn: &mut Connection,
        jobs: &[Arc<Job>],
    ) -> Vec<BatchRecord> {
        let now = tarn_query::time::format_storage(now_micros());
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let err = ApiError::internal("starting a write", e);
                jobs.iter().for_each(|j| j.answer(Err(err.clone())));
                return Vec::new();
            }
        };
        // Schemas as this transaction changes them, published after commit.
        let mut schemas: HashMap<String, TableSchema> = HashMap::new();
        let mut answers: Vec<Result<Written, ApiError>> = Vec::with_capacity(jobs.len());
        let mut records = Vec::new();
        for job in jobs {
            let Some((rows, planned, planned_cols)) =
                job.work.lock().expect("lock poisoned").take()
            else {
                answers.push(Err(ApiError::internal("a batch", "queued twice")));
                continue;
            };
            let schema = schemas.entry(job.table.clone()).or_insert_with(|| {
                database
                    .schema(&job.table)
                    .map(|s| (*s).clone())
                    .unwrap_or_default()
            });
            let r = (|| -> Result<Result<Stored, ApiError>, rusqlite::Error> {
                tx.execute_batch("SAVEPOINT batch")?;
                let r = self.write_one(&tx, job, rows, &planned, planned_cols, schema, &now);
                match &r {
                    Ok(Ok(_)) => tx.execute_batch("RELEASE batch")?,
                    _ => tx.execute_batch("ROLLBACK TO batch; RELEASE batch")?,
                }
                r
            })();
            match r {
                Ok(Ok(stored)) => {
                    if !stored.new_columns.is_empty() {
                        *schema = schema.extended(&stored.new_columns);
                    }
                    records.extend(stored.records);
                    answers.push(Ok(stored.written));
                }
                Ok(Err(api)) => answers.push(Err(api)),
                Err(e) => answers.push(Err(ApiError::internal("writing a batch", e))),
            }
        }
        if let Err(e) = tx.commit() {
            let err = ApiError::internal("committing a batch", e);
            jobs.iter().for_each(|j| j.answer(Err(err.clone())));
            return Vec::new();
        }
        for (t, sc) in schemas {
            let before = database.schema(&t);
            if before.as_ref().is_none_or(|cur| **cur != sc) && !sc.columns.is_empty() {
                database.set_schema(&t, sc);
                if before.is_none() {
                    self.tables_changed.notify_one();
                }
            }
        }
        for (job, answer) in jobs.iter().zip(answers) {
            job.answer(answer);
        }
        records
    }

    /// One batch inside the group's transaction. The outer error aborts the
    /// savepoint machinery itself; the inner one refuses just this batch.
    #[allow(clippy::too_many_arguments)]
    fn write_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        job: &Job,
        mut rows: Rows,
        planned: &TableSchema,
        planned_cols: Vec<(String, ColType)>,
        schema: &TableSchema,
        now: &str,
    ) -> Result<Result<Stored, ApiError>, rusqlite::Error> {
        let table = &job.table;
        let n = rows.rows.len();
        let duplicate = |origin: &str, id: i64, records: Vec<BatchRecord>| Stored {
            written: Written {
                tsd_id: id,
                origin: origin.to_owned(),
                rows: 0,
                duplicate: true,
            },
            new_columns: Vec::new(),
            records,
        };
        if let Some(o) = &job.origin {
            let held = tx
                .prepare_cached("SELECT 1 FROM tarn_batches WHERE origin = ?1 AND origin_id = ?2")?
                .exists(params![o.peer, o.id])?;
            if held {
                return Ok(Ok(duplicate(&o.peer, o.id, Vec::new())));
            }
        }
        let existing: Option<(String, i64)> = tx
            .prepare_cached(
                "SELECT origin, origin_id FROM tarn_batches \
                 WHERE table_name = ?1 AND hash = ?2 AND first_row IS NOT NULL",
            )?
            .query_row(params![table, job.meta.hash], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let record = |origin: Origin, first_row: Option<i64>| BatchRecord {
            origin,
            table: table.clone(),
            source: job.meta.source.clone(),
            hash: job.meta.hash.clone(),
            instructions: job.meta.instructions.clone(),
            rows: n as i64,
            time: now.to_owned(),
            from: job.from.clone(),
            stored: first_row.is_some(),
            first_row,
        };
        if let Some((peer, id)) = existing {
            // A replicated batch whose rows are already here under another
            // origin (a client re-sent it to another member): remember that
            // it is held, so that inventories agree, and store nothing.
            let rec = match &job.origin {
                Some(o) => {
                    let rec = record(o.clone(), None);
                    insert_batch(tx, &rec)?;
                    vec![rec]
                }
                None => Vec::new(),
            };
            return Ok(Ok(duplicate(&peer, id, rec)));
        }
        // Another batch may have changed the table since this one was
        // planned: plan again (coerced values coerce again unchanged).
        let new_cols = if schema == planned {
            planned_cols
        } else {
            let replica = job.origin.is_some().then_some(job.hints.as_slice());
            match schema.plan_hinted(&mut rows, replica) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            }
        };
        if schema.columns.is_empty() {
            tx.execute_batch(&create_table_sql(table, &new_cols))?;
        } else {
            for (c, t) in &new_cols {
                tx.execute_batch(&format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN \"{c}\" {}",
                    t.sql()
                ))?;
                if *t == ColType::Timestamp {
                    tx.execute_batch(&index_sql(table, c))?;
                }
            }
        }
        // A large batch written here is recorded as several parts (one
        // transaction still), each small enough to travel to the other
        // members in one message. The cuts depend only on the rows, so the
        // same batch written on two members is cut alike.
        let starts = match &job.origin {
            Some(_) => vec![0],
            None => part_starts(&rows.rows, PART_BYTES),
        };
        let origin = match &job.origin {
            Some(o) => {
                if o.peer == self.origin {
                    self.next_tsd.fetch_max(o.id + 1, Ordering::SeqCst);
                }
                o.clone()
            }
            None => Origin {
                peer: self.origin.clone(),
                name: self.tsd_name.clone(),
                id: self
                    .next_tsd
                    .fetch_add(starts.len() as i64, Ordering::SeqCst),
            },
        };
        let before: i64 = tx
            .prepare_cached(&format!("SELECT coalesce(max(row_id), 0) FROM \"{table}\""))?
            .query_row([], |r| r.get(0))?;
        // Multi-row INSERTs: one statement step per chunk, not per row.
        let w = rows.columns.len();
        let chunk = (MAX_PARAMS / (w + 3)).clamp(1, ROWS_PER_INSERT);
        let mut index = 0;
        let mut part = 0;
        for rows_chunk in rows.rows.chunks(chunk) {
            let mut stmt =
                tx.prepare_cached(&insert_sql(table, &rows.columns, rows_chunk.len()))?;
            let mut at = 1;
            for row in rows_chunk {
                while starts.get(part + 1).is_some_and(|s| *s <= index) {
                    part += 1;
                }
                index += 1;
                stmt.raw_bind_parameter(at, now)?;
                stmt.raw_bind_parameter(at + 1, &origin.name)?;
                stmt.raw_bind_parameter(at + 2, origin.id + part as i64)?;
                at += 3;
                for v in row {
                    stmt.raw_bind_parameter(at, v)?;
                    at += 1;
                }
            }
            stmt.raw_execute()?;
        }
        // The batch's rows are one run of row ids (one writer, new ids are
        // max + 1): replication reads them back by that range.
        if tx.last_insert_rowid() != before + n as i64 {
            return Ok(Err(ApiError::internal(
                "writing a batch",
                "its row ids are not one run",
            )));
        }
        let mut records = Vec::with_capacity(starts.len());
        for (k, start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(n);
            let mut rec = record(
                Origin {
                    id: origin.id + k as i64,
                    ..origin.clone()
                },
                Some(before + 1 + *start as i64),
            );
            rec.rows = (end - start) as i64;
            if k > 0 {
                rec.hash = format!("{}#{k}", job.meta.hash);
            }
            insert_batch(tx, &rec)?;
            records.push(rec);
        }
        Ok(Ok(Stored {
            written: Written {
                tsd_id: origin.id,
                origin: origin.peer.clone(),
                rows: n,
                duplicate: false,
            },
            new_columns: new_cols,
            records,
        }))
    }

    /// Records written batches in `almgm`. A failure loses nothing: the
    /// batches are safe in their database and start-up copies them over.
    fn record(&self, db: &str, written: &[BatchRecord]) {
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

    /// Runs one validated SELECT against `db`.
    pub fn query(
        &self,
        db: &str,
        select: tarn_query::Select,
        limits: QueryLimits,
    ) -> Result<QueryResult, ApiError> {
        let (database, select) = self.prepare(db, select)?;
        // A GROUP BY (or an aggregate SQLite lacks, or an exact sum) over a
        // stored table: scan row_id ranges in parallel into hash aggregates
        // instead of letting SQLite sort every row. A bare count stays with
        // SQLite, which counts from the smallest index.
        if let Some(plan) = tarn_query::GroupedAggregate::plan(&select)
            && !Arc::ptr_eq(&database, &self.almgm)
            && database.schema(&plan.table).is_some()
            && (plan.keys > 0
                || plan.aggs.iter().any(|a| {
                    !matches!(
                        a.kind,
                        tarn_query::AggKind::CountStar | tarn_query::AggKind::Count
                    )
                }))
        {
            return grouped(&database, &plan, limits);
        }
        let sql = select.to_sql();
        let mut conn = database
            .reader()
            .map_err(|e| ApiError::internal("opening a reader", e))?;
        let result = run_query(&mut conn, &sql, limits);
        database.give_back(conn);
        result
    }

    /// This operator's share of a grouped aggregate (`select` must plan as
    /// one): the partial state of every group, to be merged elsewhere.
    pub fn partial_groups(
        &self,
        db: &str,
        select: tarn_query::Select,
        limits: QueryLimits,
    ) -> Result<PartialGroups, ApiError> {
        let (database, select) = self.prepare(db, select)?;
        let plan = tarn_query::GroupedAggregate::plan(&select).ok_or_else(|| {
            ApiError::bad_request("invalid_sql", "not an aggregate tarn can split")
        })?;
        if database.schema(&plan.table).is_none() {
            return Err(ApiError::not_found(
                "unknown_table",
                format!("no table named {:?} in database {db:?}", plan.table),
            ));
        }
        scan_parallel(&database, &plan, limits)
    }

    /// The database, and the statement with its timestamp literals in the
    /// stored form of that database's timestamp columns.
    fn prepare(
        &self,
        db: &str,
        mut select: tarn_query::Select,
    ) -> Result<(Arc<Database>, tarn_query::Select), ApiError> {
        let database = self.database(db)?;
        let ts_cols: Vec<String> = {
            let schemas = database.schemas.read().expect("lock poisoned");
            select
                .tables()
                .iter()
                .filter_map(|t| schemas.get(t))
                .flat_map(|s| s.columns.iter())
                .filter(|(_, t)| *t == ColType::Timestamp)
                .map(|(c, _)| c.clone())
                .chain(std::iter::once("insert_timestamp".to_owned()))
                .collect()
        };
        select.normalize_timestamps(|c| ts_cols.iter().any(|t| t == c));
        Ok((database, select))
    }

    /// Checkpoints every database's WAL from a connection of its own, so the
    /// writer does not stop to do it (its own automatic checkpoint stays as a
    /// backstop at 1 GiB of WAL). Called periodically by the node; blocking.
    pub fn checkpoint(&self) {
        let dbs: Vec<Arc<Database>> = self
            .dbs
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .chain(std::iter::once(self.almgm.clone()))
            .collect();
        for db in dbs {
            let mut slot = db.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                match Connection::open(&db.path) {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        tracing::warn!(
                            "opening a checkpoint connection to {}: {e}",
                            db.path.display()
                        );
                        continue;
                    }
                }
            }
            let conn = slot.as_ref().expect("the connection was just opened");
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("checkpointing {}: {e}", db.path.display());
            }
        }
    }

    /// Every user table, as `(db, table)`.
    pub fn user_tables(&self) -> Vec<(String, String)> {
        let dbs = self.dbs.read().expect("lock poisoned");
        let mut out: Vec<(String, String)> = dbs
            .iter()
            .flat_map(|(d, db)| {
                db.schemas
                    .read()
                    .expect("lock poisoned")
                    .keys()
                    .map(|t| (d.clone(), t.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Databases, in name order (`almgm` included).
    pub fn databases(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .dbs
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect();
        v.push("almgm".into());
        v.sort();
        v
    }

    /// Tables of one database, in name order.
    pub fn tables(&self, db: &str) -> Result<Vec<String>, ApiError> {
        let database = self.database(db)?;
        let mut v: Vec<String> = database
            .schemas
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect();
        v.sort();
        Ok(v)
    }

    /// A table's columns, system columns first, or a 404.
    pub fn columns(&self, db: &str, table: &str) -> Result<Vec<(String, ColType)>, ApiError> {
        let database = self.database(db)?;
        let table = table.to_ascii_lowercase();
        let schema = database.schema(&table).ok_or_else(|| {
            ApiError::not_found(
                "unknown_table",
                format!("database {db:?} has no table {table:?}"),
            )
        })?;
        if Arc::ptr_eq(&database, &self.almgm) {
            return Ok(schema.columns.clone());
        }
        let sys = [
            ("row_id", ColType::Integer),
            ("insert_timestamp", ColType::Timestamp),
            ("tsd_name", ColType::Text),
            ("tsd_id", ColType::Integer),
        ];
        Ok(sys
            .iter()
            .map(|(c, t)| (c.to_string(), *t))
            .chain(schema.columns.iter().cloned())
            .collect())
    }

    /// The schema of `db.table` if it exists.
    pub fn schema(&self, db: &str, table: &str) -> Option<Arc<TableSchema>> {
        self.dbs
            .read()
            .expect("lock poisoned")
            .get(db)?
            .schema(table)
    }

    /// Path of a database's file.
    pub fn path_of(&self, db: &str) -> Option<PathBuf> {
        if db == "almgm" {
            return Some(self.almgm.path.clone());
        }
        self.dbs
            .read()
            .expect("lock poisoned")
            .get(db)
            .map(|d| d.path.clone())
    }

    /// The user databases, by name.
    fn all_dbs(&self) -> Vec<(String, Arc<Database>)> {
        let mut v: Vec<(String, Arc<Database>)> = self
            .dbs
            .read()
            .expect("lock poisoned")
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn database(&self, db: &str) -> Result<Arc<Database>, ApiError> {
        let name = db.to_ascii_lowercase();
        if name == "almgm" {
            return Ok(self.almgm.clone());
        }
        self.dbs
            .read()
            .expect("lock poisoned")
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(
                    "unknown_database",
                    format!("no database named {db:?} on this node"),
                )
            })
    }

    fn database_or_create(&self, name: &str) -> Result<Arc<Database>, ApiError> {
        if let Some(d) = self.dbs.read().expect("lock poisoned").get(name) {
            return Ok(d.clone());
        }
        let mut dbs = self.dbs.write().expect("lock poisoned");
        if let Some(d) = dbs.get(name) {
            return Ok(d.clone());
        }
        let path = self.dir.join(format!("{name}.db"));
        let d = Arc::new(
            Database::open(&path, self.durability)
                .map_err(|e| ApiError::internal("creating a database", e))?,
        );
        tracing::info!(db = %name, path = %path.display(), "created database");
        dbs.insert(name.to_owned(), d.clone());
        Ok(d)
    }
}

pub(crate) fn user_db(db: &str) -> Result<String, ApiError> {
    let name = ident("database", db)?;
    if RESERVED_DBS.contains(&name.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("database name {name:?} is reserved by tarn"),
        ));
    }
    Ok(name)
}

fn db_name_of(path: &Path) -> Option<String> {
    if path.extension()? != "db" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    ident("database", stem).ok().filter(|s| s == stem)
}

/// Rows per INSERT statement, and SQLite's limit on parameters per statement.
const ROWS_PER_INSERT: usize = 256;
const MAX_PARAMS: usize = 30_000;

fn insert_sql(table: &str, columns: &[String], rows: usize) -> String {
    // Anonymous parameters, so the text is one tuple repeated: cheap to build
    // for every chunk, and the system values are bound again per row.
    let mut sql = format!("INSERT INTO \"{table}\" (insert_timestamp, tsd_name, tsd_id");
    for c in columns {
        sql.push_str(", \"");
        sql.push_str(c);
        sql.push('"');
    }
    sql.push_str(") VALUES ");
    let mut tuple = "?,".repeat(columns.len() + 3);
    tuple.pop();
    let tuple = format!("({tuple}),");
    sql.push_str(&tuple.repeat(rows));
    sql.pop();
    sql
}

fn create_table_sql(table: &str, cols: &[(String, ColType)]) -> String {
    let mut sql = format!(
        "CREATE TABLE \"{table}\" (row_id INTEGER PRIMARY KEY, insert_timestamp TIMESTAMP NOT NULL, \
         tsd_name TEXT NOT NULL, tsd_id INTEGER NOT NULL"
    );
    for (c, t) in cols {
        sql.push_str(&format!(", \"{c}\" {}", t.sql()));
    }
    sql.push_str(");");
    for (c, t) in cols {
        if *t == ColType::Timestamp {
            sql.push_str(&index_sql(table, c));
        }
    }
    sql
}

// Every timestamp column is indexed: time-range scans are the common query.
// Names are quoted everywhere: a valid tarn name may still be an SQL keyword.
fn index_sql(table: &str, column: &str) -> String {
    format!("CREATE INDEX IF NOT EXISTS \"{table}__{column}__idx\" ON \"{table}\" (\"{column}\");")
}

impl Database {
    fn open(path: &Path, durability: Durability) -> anyhow::Result<Database> {
        let conn = Connection::open(path)?;
        let sync = durability.synchronous();
        conn.execute_batch(&format!(
            "PRAGMA page_size = 16384;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {sync};
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -131072;
             PRAGMA temp_store = MEMORY;
             PRAGMA wal_autocheckpoint = 65536;
             PRAGMA journal_size_limit = 268435456;"
        ))?;
        let old_layout: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('tarn_batches') WHERE name = 'tsd_id'",
            [],
            |r| r.get(0),
        )?;
        if old_layout {
            anyhow::bail!(
                "{} was written by a tarn before cluster replication (its batch table has no \
                 origin); load its data into a new data directory",
                path.display()
            );
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tarn_batches (
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
                ON tarn_batches (table_name, hash) WHERE first_row IS NOT NULL;",
        )?;
        conn.set_prepared_statement_cache_capacity(256);
        let schemas = load_schemas(&conn)?;
        Ok(Database {
            path: path.to_owned(),
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            checkpointer: Mutex::new(None),
            schemas: RwLock::new(schemas),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while writing leaves SQLite's transaction rolled back; the
        // connection itself stays usable.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schema(&self, table: &str) -> Option<Arc<TableSchema>> {
        self.schemas
            .read()
            .expect("lock poisoned")
            .get(table)
            .cloned()
    }

    fn set_schema(&self, table: &str, schema: TableSchema) {
        self.schemas
            .write()
            .expect("lock poisoned")
            .insert(table.to_owned(), Arc::new(schema));
    }

    fn reader(&self) -> rusqlite::Result<Connection> {
        if let Some(c) = self.readers.lock().expect("lock poisoned").pop() {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(
            "PRAGMA query_only = 1; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -65536; \
             PRAGMA mmap_size = 1073741824; PRAGMA temp_store = MEMORY; PRAGMA threads = 4;",
        )?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.readers.lock().expect("lock poisoned");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

fn load_schemas(conn: &Connection) -> rusqlite::Result<HashMap<String, Arc<TableSchema>>> {
    let mut out = HashMap::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'tarn\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in tables {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{t}\")"))?;
        let columns = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
            .filter_map(|c| c.ok())
            .filter(|(c, _)| !SYSTEM_COLUMNS.contains(&c.as_str()))
            .map(|(c, decl)| (c, ColType::from_sql(&decl).unwrap_or(ColType::Text)))
            .collect();
        out.insert(t, Arc::new(TableSchema { columns }));
    }
    Ok(out)
}

/// An operator's share of a grouped aggregate: the declared types of the
/// key columns and the partial state of every group.
#[derive(Debug, Default)]
pub struct PartialGroups {
    pub key_types: Vec<Option<String>>,
    pub groups: crate::accumulate::Groups,
}

/// Runs a planned grouped aggregate: parallel scans of `row_id` ranges into
/// hash tables, merged, then the final query over them.
fn grouped(
    database: &Database,
    plan: &tarn_query::GroupedAggregate,
    limits: QueryLimits,
) -> Result<QueryResult, ApiError> {
    let part = scan_parallel(database, plan, limits)?;
    finish_groups(plan, part, limits)
}

/// Scans the whole table in up to four `row_id` ranges at once.
fn scan_parallel(
    database: &Database,
    plan: &tarn_query::GroupedAggregate,
    limits: QueryLimits,
) -> Result<PartialGroups, ApiError> {
    use crate::accumulate::{Groups, merge};
    let deadline = Instant::now() + limits.timeout;
    let first = database
        .reader()
        .map_err(|e| ApiError::internal("opening a reader", e))?;
    let bounds: (Option<i64>, Option<i64>) = first
        .query_row(
            &format!("SELECT min(row_id), max(row_id) FROM \"{}\"", plan.table),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_error)?;
    let lo = bounds.0.unwrap_or(0);
    let hi = bounds.1.map_or(0, |h| h + 1);
    let span = (hi - lo).max(0);
    let parts: i64 = if span < 100_000 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as i64
    };
    let key_types: Vec<Option<String>> = {
        let st = first.prepare(&plan.scan_sql).map_err(sql_error)?;
        st.columns()
            .take(plan.keys)
            .map(|c| c.decl_type().map(str::to_owned))
            .collect()
    };
    let mut conns = vec![first];
    for _ in 1..parts {
        conns.push(
            database
                .reader()
                .map_err(|e| ApiError::internal("opening a reader", e))?,
        );
    }
    let results: Vec<Result<Groups, ApiError>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(p, c)| {
                let (a, b) = (
                    lo + span * p as i64 / parts,
                    lo + span * (p as i64 + 1) / parts,
                );
                s.spawn(move || scan_groups(c, plan, a, b, deadline, limits.max_rows))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ApiError::internal("a scan", "the thread panicked")))
            })
            .collect()
    });
    for c in conns {
        database.give_back(c);
    }
    let mut groups = Groups::new();
    for r in results {
        merge(&mut groups, r?);
        if groups.len() > limits.max_rows {
            return Err(too_many_rows(limits.max_rows));
        }
    }
    Ok(PartialGroups { key_types, groups })
}

/// The final step of a grouped aggregate: every group's values, written to
/// an in-memory SQLite table `system_query(_k0.., _a0..)`, and the plan's
/// final query over it. A global aggregate over no rows still has its one
/// row (`count(*)` is 0), as in SQLite.
pub fn finish_groups(
    plan: &tarn_query::GroupedAggregate,
    part: PartialGroups,
    limits: QueryLimits,
) -> Result<QueryResult, ApiError> {
    use crate::accumulate::{GroupKey, State};
    let PartialGroups {
        key_types,
        mut groups,
    } = part;
    if plan.keys == 0 && groups.is_empty() {
        groups.insert(
            GroupKey(Vec::new()),
            plan.aggs.iter().map(|a| State::new(a.kind)).collect(),
        );
    }
    let mut cols = Vec::new();
    for i in 0..plan.keys {
        let d = key_types.get(i).cloned().flatten().unwrap_or_default();
        cols.push(format!("_k{i} {}", sql_type_name(&d)));
    }
    // Aggregates carry no declared type, as in SQLite's own answer.
    for j in 0..plan.aggs.len() {
        cols.push(format!("_a{j}"));
    }
    // Final values first: an error (integer overflow) refuses the query.
    let mut finished = Vec::with_capacity(groups.len());
    for (key, states) in groups {
        let vals = states
            .iter()
            .map(|s| s.finish())
            .collect::<Result<Vec<Val>, _>>()
            .map_err(|e| ApiError::bad_request("sql_error", format!("SQL error: {e}")))?;
        finished.push((key, vals));
    }
    let mut mem =
        Connection::open_in_memory().map_err(|e| ApiError::internal("opening system_query", e))?;
    let fill = |mem: &mut Connection| -> rusqlite::Result<()> {
        let tx = mem.transaction()?;
        tx.execute_batch(&format!("CREATE TABLE system_query ({})", cols.join(", ")))?;
        {
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let mut ins = tx.prepare(&format!(
                "INSERT INTO system_query VALUES ({})",
                marks.join(", ")
            ))?;
            for (key, vals) in &finished {
                for (i, k) in key.0.iter().enumerate() {
                    ins.raw_bind_parameter(i + 1, k.to_sql_value())?;
                }
                for (j, v) in vals.iter().enumerate() {
                    ins.raw_bind_parameter(plan.keys + j + 1, v)?;
                }
                ins.raw_execute()?;
            }
        }
        tx.commit()
    };
    fill(&mut mem).map_err(|e| ApiError::internal("filling system_query", e))?;
    run_query(&mut mem, &plan.final_sql, limits)
}

/// A declared type from a peer, kept only if it is one tarn writes (it is
/// pasted into a CREATE TABLE).
fn sql_type_name(decl: &str) -> &'static str {
    ColType::from_sql(decl).map_or("", ColType::sql)
}

/// The final step of a query split into rows: the operators' rows, loaded
/// into an in-memory table named like the queried one (columns are the
/// union of theirs, by name), and the final query over it.
pub fn finish_rows(
    table: &str,
    columns: &[(String, Option<String>)],
    parts: &[(Vec<String>, Vec<Vec<Val>>)],
    final_sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, ApiError> {
    let mut mem =
        Connection::open_in_memory().map_err(|e| ApiError::internal("opening system_query", e))?;
    let fill = |mem: &mut Connection| -> rusqlite::Result<()> {
        let tx = mem.transaction()?;
        let defs: Vec<String> = columns
            .iter()
            .map(|(c, t)| {
                format!(
                    "\"{}\" {}",
                    c.replace('"', "\"\""),
                    sql_type_name(t.as_deref().unwrap_or(""))
                )
            })
            .collect();
        tx.execute_batch(&format!(
            "CREATE TABLE \"{}\" ({})",
            table.replace('"', "\"\""),
            defs.join(", ")
        ))?;
        for (names, rows) in parts {
            if rows.is_empty() {
                continue;
            }
            let cols: Vec<String> = names
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect();
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let mut ins = tx.prepare(&format!(
                "INSERT INTO \"{}\" ({}) VALUES ({})",
                table.replace('"', "\"\""),
                cols.join(", "),
                marks.join(", ")
            ))?;
            for row in rows {
                for (i, v) in row.iter().enumerate().take(cols.len()) {
                    ins.raw_bind_parameter(i + 1, v)?;
                }
                ins.raw_execute()?;
            }
        }
        tx.commit()
    };
    fill(&mut mem).map_err(|e| ApiError::internal("filling the query table", e))?;
    run_query(&mut mem, final_sql, limits)
}

fn scan_groups(
    conn: &mut Connection,
    plan: &tarn_query::GroupedAggregate,
    lo: i64,
    hi: i64,
    deadline: Instant,
    max_groups: usize,
) -> Result<crate::accumulate::Groups, ApiError> {
    use crate::accumulate::{Groups, RowKey, State};
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
        .map_err(|e| ApiError::internal("setting a query deadline", e))?;
    let result = (|| {
        let mut st = conn.prepare_cached(&plan.scan_sql).map_err(sql_error)?;
        let mut rows = st.query(params![lo, hi]).map_err(sql_error)?;
        let mut groups = Groups::new();
        let update = |states: &mut [State], r: &rusqlite::Row<'_>| -> Result<(), ApiError> {
            for (s, a) in states.iter_mut().zip(&plan.aggs) {
                let arg = match a.arg {
                    Some(i) => Some(r.get_ref(i).map_err(sql_error)?),
                    None => None,
                };
                s.update(arg);
                if s.distinct_len() > max_groups {
                    return Err(too_many_rows(max_groups));
                }
            }
            Ok(())
        };
        while let Some(r) = rows.next().map_err(sql_error)? {
            let mut refs = [ValueRef::Null; 8];
            let key: Vec<ValueRef<'_>>;
            let key: &[ValueRef<'_>] = if plan.keys <= refs.len() {
                for (i, slot) in refs.iter_mut().take(plan.keys).enumerate() {
                    *slot = r.get_ref(i).map_err(sql_error)?;
                }
                &refs[..plan.keys]
            } else {
                key = (0..plan.keys)
                    .map(|i| r.get_ref(i))
                    .collect::<Result<_, _>>()
                    .map_err(sql_error)?;
                &key
            };
            let key = RowKey(key);
            match groups.get_mut(&key) {
                Some(states) => update(states, r)?,
                None => {
                    if groups.len() >= max_groups {
                        return Err(too_many_rows(max_groups));
                    }
                    let mut states: Vec<State> =
                        plan.aggs.iter().map(|a| State::new(a.kind)).collect();
                    update(&mut states, r)?;
                    groups.insert(key.to_owned(), states);
                }
            }
        }
        Ok(groups)
    })();
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
    result
}

fn too_many_rows(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "result_too_large",
        format!("the result has more than {max} rows (the node's limit); add a LIMIT or aggregate"),
    )
}

fn run_query(
    conn: &mut Connection,
    sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, ApiError> {
    let deadline = Instant::now() + limits.timeout;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
        .map_err(|e| ApiError::internal("setting a query deadline", e))?;
    let result = (|| {
        let mut stmt = conn.prepare(sql).map_err(sql_error)?;
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let types: Vec<Option<ColType>> = stmt
            .columns()
            .map(|c| c.decl_type().and_then(ColType::from_sql))
            .collect();
        let width = columns.len();
        let mut rows = Vec::new();
        let mut q = stmt.query([]).map_err(sql_error)?;
        while let Some(r) = q.next().map_err(sql_error)? {
            if rows.len() >= limits.max_rows {
                return Err(too_many_rows(limits.max_rows));
            }
            let mut row = Vec::with_capacity(width);
            for (i, ty) in types.iter().enumerate() {
                row.push(match r.get_ref(i).map_err(sql_error)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) if *ty == Some(ColType::Boolean) => Val::Bool(v != 0),
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => Val::Float(v),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Text(b.iter().map(|x| format!("{x:02x}")).collect()),
                });
            }
            rows.push(row);
        }
        Ok(QueryResult {
            columns,
            types,
            rows,
        })
    })();
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
    result
}

fn sql_error(e: rusqlite::Error) -> ApiError {
    let msg = e.to_string();
    if let Some(t) = msg.strip_prefix("no such table: ") {
        return ApiError::not_found(
            "unknown_table",
            format!("no table named {t:?} in this database"),
        );
    }
    if matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::OperationInterrupted)
    ) {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the query ran past its time limit",
        );
    }
    ApiError::bad_request("sql_error", format!("SQL error: {msg}"))
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Float(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Val::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::parse_body;

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), "t", "12D3KooWTest", Durability::Normal).unwrap();
        (dir, s)
    }

    fn limits() -> QueryLimits {
        QueryLimits {
            max_rows: 100_000,
            timeout: Duration::from_secs(60),
        }
    }

    /// The direct SQLite answer, bypassing the grouped-aggregate path.
    fn direct(s: &Storage, db: &str, sql: &str) -> QueryResult {
        let database = s.database(db).unwrap();
        let mut conn = database.reader().unwrap();
        run_query(&mut conn, sql, limits()).unwrap()
    }

    fn sorted(mut r: QueryResult) -> QueryResult {
        r.rows.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| crate::accumulate::compare(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        r
    }

    fn same(a: &Val, b: &Val) -> bool {
        match (a, b) {
            (Val::Float(x), Val::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => a == b,
        }
    }

    #[test]
    fn grouped_path_matches_sqlite() {
        let (_d, s) = storage();
        let mut seed = 42u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Enough rows for the parallel split, with nulls, negatives and ties.
        for b in 0..30 {
            let mut body = String::from("[");
            for i in 0..5000 {
                let r = next();
                if i > 0 {
                    body.push(',');
                }
                let v = if r % 17 == 0 {
                    "null".to_owned()
                } else {
                    format!("{}", (r % 20_001) as f64 / 7.0 - 1000.0)
                };
                body.push_str(&format!(
                    r#"{{"dev": "d{}", "zone": {}, "v": {v}, "n": {}, "ok": {}, "ts": "2024-01-0{}T0{}:00:00Z"}}"#,
                    r % 13,
                    r % 3,
                    (r >> 8) % 1000,
                    r % 2 == 0,
                    1 + r % 5,
                    r % 10
                ));
            }
            body.push(']');
            let rows = parse_body(body.as_bytes()).unwrap();
            let meta = BatchMeta {
                source: "t".into(),
                hash: format!("b{b}"),
                instructions: String::new(),
            };
            s.write("lab", "m", rows, &meta).unwrap();
        }
        for sql in [
            "SELECT dev, count(*), count(v), sum(v), avg(v), min(v), max(v) FROM m GROUP BY dev",
            "SELECT dev, zone, sum(n), avg(n), min(n), max(n) FROM m WHERE n > 100 GROUP BY dev, zone",
            "SELECT zone, max(v) - min(v) AS spread, count(*) AS c FROM m GROUP BY zone HAVING count(*) > 10 ORDER BY spread DESC, zone LIMIT 2",
            "SELECT ok, count(*), min(ts), max(ts) FROM m GROUP BY ok",
            "SELECT substr(ts, 1, 10) AS day, avg(v) FROM m GROUP BY substr(ts, 1, 10) ORDER BY day",
            "SELECT dev, sum(n) FROM m WHERE dev = 'nobody' GROUP BY dev",
        ] {
            let select = tarn_query::Select::parse(sql).unwrap();
            assert!(
                tarn_query::GroupedAggregate::plan(&select).is_some(),
                "{sql} not planned"
            );
            let got = s.query("lab", select, limits()).unwrap();
            let want = direct(&s, "lab", sql);
            assert_eq!(got.columns, want.columns, "{sql}");
            assert_eq!(got.types, want.types, "{sql}");
            let (got, want) = if sql.contains("ORDER BY") {
                (got, want)
            } else {
                (sorted(got), sorted(want))
            };
            assert_eq!(got.rows.len(), want.rows.len(), "{sql}");
            for (g, w) in got.rows.iter().zip(&want.rows) {
                assert!(
                    g.iter().zip(w).all(|(a, b)| same(a, b)),
                    "{sql}\n got {g:?}\nwant {w:?}"
                );
            }
        }
    }
}
