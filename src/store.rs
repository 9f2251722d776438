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
//! - `value`: values, column types, rows (the data model every layer shares)
//! - `names`: which names are valid and which are reserved
//! - `schema`: inference, coercion, the DDL of tables and columns
//! - `database`: one SQLite file: writer and its queue, readers, checkpoints, schemas
//! - `write`: group commit, de-duplication, parts of large batches
//! - `batches`: `tarn_batches` and `almgm`; the replicated batch
//! - `inventory`: what is held per origin; reading batches back
//! - `read`: statements under limits; the parallel grouped scan
//! - `accumulate`: partial aggregate states that merge exactly
//!
//! Every call here blocks; callers run them on `spawn_blocking`.
//!
//! The lowest layer of the node: it uses only `error` and `clock` (and the
//! leaf crate `tarn-query` for SQL and time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

mod accumulate;
mod audit;
mod batches;
mod database;
mod error;
mod inventory;
mod names;
mod read;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod value;
mod write;

pub use accumulate::{GroupKey, Groups, KeyVal, State, compare, merge};
pub use audit::AUDIT_COLUMNS;
pub use batches::{BatchMeta, Committed, Origin, ReplBatch, Written, member_table};
pub use database::Durability;
pub use error::StoreError;
pub use inventory::{Holding, Ranges, insert as insert_id, minus as ranges_minus};
pub use names::{MAX_COLUMNS, MAX_IDENT, RESERVED_DBS, SYSTEM_COLUMNS, column, ident, user_db};
pub(crate) use read::run_sql;
pub use read::{PartialGroups, QueryLimits, QueryResult, Statement};
pub use schema::{NewColumns, TableSchema, coerce, infer};
pub use value::{ColType, Rows, Val, ValKind, to_val};

use crate::clock::SharedClock;
use database::Database;

/// Bounds what SQLite holds in memory in this process, across every
/// connection to every database: near the limit SQLite recycles page-cache
/// pages rather than allocating more (its soft heap limit). Process-wide, so
/// nodes sharing a process (tests, `LocalMesh`) share one budget, set by the
/// last one started.
pub fn set_memory_budget(mb: usize) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open_in_memory()?;
    let bytes = i64::try_from(mb).unwrap_or(i64::MAX / (1 << 20)) << 20;
    conn.query_row(&format!("PRAGMA soft_heap_limit = {bytes}"), [], |_| Ok(()))?;
    Ok(())
}

/// All the node's databases.
pub struct Storage {
    dir: PathBuf,
    tsd_name: String,
    /// This node's PeerId: the origin of the batches written here.
    origin: String,
    durability: Durability,
    clock: SharedClock,
    dbs: RwLock<HashMap<String, Arc<Database>>>,
    almgm: Arc<Database>,
    next_tsd: AtomicI64,
    /// Woken when a table is created, so the node can announce it.
    pub tables_changed: Arc<tokio::sync::Notify>,
    /// What this node holds, per origin (see [`inventory::Index`]).
    index: Mutex<inventory::Index>,
    /// Told of every batch this node produces (set by the replicator).
    committed: OnceLock<tokio::sync::mpsc::Sender<Committed>>,
    /// When the databases were last read or written (ms since `opened`),
    /// and whether their memory was given back since.
    last_use: std::sync::atomic::AtomicU64,
    released: std::sync::atomic::AtomicBool,
    opened: std::time::Instant,
}

impl Storage {
    /// Opens (or creates) the storage under `data_dir/dbms`. `tsd_name` names
    /// this node in the rows it stores; `origin` (its PeerId) names it in
    /// its cluster.
    pub fn open(
        data_dir: &Path,
        tsd_name: &str,
        origin: &str,
        durability: Durability,
        clock: SharedClock,
    ) -> anyhow::Result<Storage> {
        let dir = data_dir.join("dbms");
        std::fs::create_dir_all(&dir)?;
        let almgm = Arc::new(Database::open(&dir.join("almgm.db"), durability)?);
        almgm.writer().execute_batch(batches::TSD_INFO_DDL)?;
        almgm.writer().execute_batch(audit::AUDIT_DDL)?;
        let loaded = schema::load_schemas(&almgm.writer())?;
        *almgm.schemas.write().expect("lock poisoned") = loaded;
        let mut dbs = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = names::db_name_of(&path) else {
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
            clock,
            dbs: RwLock::new(dbs),
            almgm,
            next_tsd: AtomicI64::new(1),
            tables_changed: Arc::new(tokio::sync::Notify::new()),
            committed: OnceLock::new(),
            index: Mutex::new(inventory::Index::default()),
            last_use: Default::default(),
            released: Default::default(),
            opened: std::time::Instant::now(),
        };
        let max = storage.reconcile()?;
        storage.next_tsd.store(max + 1, Ordering::SeqCst);
        Ok(storage)
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

    /// Checkpoints every database's WAL from a connection of its own, so the
    /// writer does not stop to do it (its own automatic checkpoint stays as a
    /// backstop at 1 GiB of WAL). Called periodically by the node; blocking.
    pub fn checkpoint(&self) {
        for (_, db) in self.all_dbs() {
            db.checkpoint();
        }
        self.almgm.checkpoint();
    }

    /// Notes that the databases are in use (see [`Storage::release_if_idle`]).
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_use.store(ms, Ordering::Relaxed);
        self.released.store(false, Ordering::Relaxed);
    }

    /// Gives back the memory SQLite holds (idle readers closed, caches
    /// shrunk) once nothing was read or written for `idle`. Called
    /// periodically by the node; blocking.
    pub fn release_if_idle(&self, idle: std::time::Duration) {
        let since =
            self.opened.elapsed().as_millis() as u64 - self.last_use.load(Ordering::Relaxed);
        if since < idle.as_millis() as u64 || self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        for (_, db) in self.all_dbs() {
            db.release_memory();
        }
        self.almgm.release_memory();
        tracing::debug!("idle: gave back SQLite's caches");
    }

    /// Every user table, as `(db, table)`.
    pub fn user_tables(&self) -> Vec<(String, String)> {
        self.all_dbs()
            .into_iter()
            .flat_map(|(d, db)| db.table_names().into_iter().map(move |t| (d.clone(), t)))
            .collect()
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
    pub fn tables(&self, db: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.database(db)?.table_names())
    }

    /// A table's columns, system columns first, or an error naming what is missing.
    pub fn columns(&self, db: &str, table: &str) -> Result<Vec<(String, ColType)>, StoreError> {
        let database = self.database(db)?;
        let table = table.to_ascii_lowercase();
        let schema = database.schema(&table).ok_or_else(|| {
            StoreError::UnknownTable(format!("database {db:?} has no table {table:?}"))
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

    /// The columns of `db.table` with the types EdgeLake declares for them
    /// (`int`, `decimal`, `char(4)`, `varchar`, ... as EdgeLake infers them
    /// from the rows that made each column, and its own for the system
    /// columns), as the `table` policy shows them.
    pub fn declared_columns(
        &self,
        db: &str,
        table: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let columns = self.columns(db, table)?;
        let table = table.to_ascii_lowercase();
        let database = self.database(db)?;
        let declared = if Arc::ptr_eq(&database, &self.almgm) {
            Default::default()
        } else {
            database
                .with_reader(|c| schema::load_declared(c, &table))
                .map_err(|e| StoreError::internal("reading declared types", e))?
        };
        Ok(columns
            .into_iter()
            .map(|(name, t)| {
                let decl = match name.as_str() {
                    "row_id" => "integer".to_owned(),
                    "insert_timestamp" => "timestamp".to_owned(),
                    "tsd_name" => "char(3)".to_owned(),
                    "tsd_id" => "int".to_owned(),
                    // A column made before tarn kept EdgeLake's names.
                    _ => declared
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| t.edgelake_name().to_owned()),
                };
                (name, decl)
            })
            .collect())
    }

    /// The schema of the user table `db.table` if it exists.
    pub fn schema(&self, db: &str, table: &str) -> Option<Arc<TableSchema>> {
        self.dbs
            .read()
            .expect("lock poisoned")
            .get(db)?
            .schema(table)
    }

    /// Checks that rows may go to `db.table`: a table that exists, or a
    /// name no other object of the database has. (Streaming rows are
    /// checked before they are acknowledged; the write checks again.)
    pub fn check_table(&self, db: &str, table: &str) -> Result<(), StoreError> {
        let Some(database) = self.dbs.read().expect("lock poisoned").get(db).cloned() else {
            return Ok(());
        };
        if database.schema(table).is_some() {
            return Ok(());
        }
        match database.with_reader(|c| write::taken(c, table)) {
            Ok(None) => Ok(()),
            Ok(Some(kind)) => Err(write::name_taken(table, &kind)),
            Err(e) => Err(StoreError::internal("reading the schema", e)),
        }
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

    fn database(&self, db: &str) -> Result<Arc<Database>, StoreError> {
        let name = db.to_ascii_lowercase();
        if name == "almgm" {
            return Ok(self.almgm.clone());
        }
        self.dbs
            .read()
            .expect("lock poisoned")
            .get(&name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownDatabase(db.to_owned()))
    }

    fn database_or_create(&self, name: &str) -> Result<Arc<Database>, StoreError> {
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
                .map_err(|e| StoreError::internal("creating a database", e))?,
        );
        tracing::info!(db = %name, path = %path.display(), "created database");
        dbs.insert(name.to_owned(), d.clone());
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_budget_is_sqlites_soft_heap_limit() {
        // The default, so that nodes other tests start in this process at
        // the same time agree on it.
        let mb = crate::Config::default().sqlite_memory_mb;
        super::set_memory_budget(mb).unwrap();
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let limit: i64 = c
            .query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, (mb as i64) << 20);
    }
}
