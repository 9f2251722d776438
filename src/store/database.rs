//! One SQLite file: its writer connection and the queue of batches waiting
//! for it, a pool of read-only connections, the connection that
//! checkpoints its WAL, and the schemas of its tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OpenFlags};

use super::batches::{BatchMeta, Origin, Written};
use super::schema::{NewColumns, TableSchema, load_schemas};
use super::{ColType, Rows, StoreError};

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

/// A batch waiting for the writer (see `Storage::write`).
pub(super) struct Job {
    pub(super) table: String,
    pub(super) meta: BatchMeta,
    /// Set for a batch another member produced (replication).
    pub(super) origin: Option<Origin>,
    /// The peer a replicated batch came from; empty for a batch written here.
    pub(super) from: String,
    /// Declared types of the columns (a replicated batch), used for columns
    /// this node does not have yet instead of inferring them.
    pub(super) hints: Vec<(String, ColType)>,
    /// The rows, the schema they were planned against, and the columns they add.
    pub(super) work: Mutex<Option<(Rows, TableSchema, NewColumns)>>,
    pub(super) result: Mutex<Option<Result<Written, StoreError>>>,
}

impl Job {
    pub(super) fn answer(&self, r: Result<Written, StoreError>) {
        *self.result.lock().expect("lock poisoned") = Some(r);
    }

    pub(super) fn take_result(&self) -> Option<Result<Written, StoreError>> {
        self.result.lock().expect("lock poisoned").take()
    }

    /// The hints to plan with: a replicated batch's declared types.
    pub(super) fn replica_hints(&self) -> Option<&[(String, ColType)]> {
        self.origin.is_some().then_some(self.hints.as_slice())
    }
}

const MAX_IDLE_READERS: usize = 8;

pub(super) struct Database {
    pub(super) path: PathBuf,
    /// Batches waiting for the writer; bounded by the callers blocked on it.
    pub(super) queue: Mutex<Vec<Arc<Job>>>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Copies the WAL back into the database beside the writer (see
    /// [`Database::checkpoint`]).
    checkpointer: Mutex<Option<Connection>>,
    pub(super) schemas: RwLock<HashMap<String, Arc<TableSchema>>>,
}

impl Database {
    pub(super) fn open(path: &Path, durability: Durability) -> anyhow::Result<Database> {
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
        conn.execute_batch(super::batches::BATCHES_DDL)?;
        conn.execute_batch(super::schema::COLUMNS_DDL)?;
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

    pub(super) fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while writing leaves SQLite's transaction rolled back; the
        // connection itself stays usable.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn schema(&self, table: &str) -> Option<Arc<TableSchema>> {
        self.schemas
            .read()
            .expect("lock poisoned")
            .get(table)
            .cloned()
    }

    pub(super) fn set_schema(&self, table: &str, schema: TableSchema) {
        self.schemas
            .write()
            .expect("lock poisoned")
            .insert(table.to_owned(), Arc::new(schema));
    }

    /// Table names, in order.
    pub(super) fn table_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .schemas
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    pub(super) fn reader(&self) -> rusqlite::Result<Connection> {
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

    pub(super) fn give_back(&self, conn: Connection) {
        let mut idle = self.readers.lock().expect("lock poisoned");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    /// Runs `f` on a pooled reader.
    pub(super) fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self.reader()?;
        let r = f(&mut conn);
        self.give_back(conn);
        r
    }

    /// Closes the idle readers (their page caches and maps go with them)
    /// and has the writer and the checkpointer give back the cache they
    /// hold: for a node that has been idle a while.
    pub(super) fn release_memory(&self) {
        self.readers.lock().expect("lock poisoned").clear();
        for conn in [
            Some(&*self.writer()),
            self.checkpointer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = conn.execute_batch("PRAGMA shrink_memory;") {
                tracing::debug!("shrinking {}: {e}", self.path.display());
            }
        }
    }

    /// Copies the WAL back into the database from a connection of its own,
    /// so the writer does not stop to do it.
    pub(super) fn checkpoint(&self) {
        let mut slot = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match Connection::open(&self.path) {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    tracing::warn!(
                        "opening a checkpoint connection to {}: {e}",
                        self.path.display()
                    );
                    return;
                }
            }
        }
        let conn = slot.as_ref().expect("the connection was just opened");
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!("checkpointing {}: {e}", self.path.display());
        }
    }
}
