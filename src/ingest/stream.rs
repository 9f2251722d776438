//! EdgeLake's streaming mode: many small PUTs, buffered per table and written
//! as one batch when a row count or an age threshold passes, or on
//! `flush buffers`.
//!
//! A PUT is acknowledged only once its body is appended to the buffer's
//! journal file (and fsynced, with `durability = "fsync"`), so an
//! acknowledged row survives `kill -9` even before its batch is written. At
//! start, journals left behind are written as batches; their batch hash is
//! the journal's name, so one that was already written is not written twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::IngestError;
use super::parse::parse_body;
use crate::clock::SharedClock;
use crate::config::StreamingConfig;
use crate::store::{BatchMeta, Durability, Rows, Storage, TableSchema, ident, user_db};

/// Largest journal record accepted when replaying (bodies are capped far below).
const MAX_RECORD: usize = 1 << 30;

/// The streaming buffers of one node.
pub struct Streams {
    storage: Arc<Storage>,
    clock: SharedClock,
    dir: PathBuf,
    cfg: StreamingConfig,
    buffers: Mutex<HashMap<TableKey, Arc<Mutex<Buffer>>>>,
    seq: AtomicU64,
}

/// `(database, table)`.
type TableKey = (String, String);

#[derive(Default)]
struct Buffer {
    rows: Rows,
    /// Columns these rows add to the stored table, not yet written.
    new_columns: TableSchema,
    journal: Option<(File, PathBuf)>,
    started: Option<Instant>,
}

/// A buffer taken out for writing.
struct Taken {
    db: String,
    table: String,
    rows: Rows,
    journal: PathBuf,
}

impl Streams {
    /// Opens the journal directory and writes whatever earlier runs left there.
    pub fn open(
        storage: Arc<Storage>,
        data_dir: &Path,
        cfg: StreamingConfig,
        clock: SharedClock,
    ) -> anyhow::Result<Streams> {
        let dir = data_dir.join("stream");
        std::fs::create_dir_all(&dir)?;
        let streams = Streams {
            storage,
            clock,
            dir,
            cfg,
            buffers: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        };
        streams.replay()?;
        Ok(streams)
    }

    /// Accepts one PUT body for `db.table`. Returns the rows accepted. The
    /// rows are checked against the table's schema here, so a bad value is
    /// refused now rather than lost at flush time.
    pub fn put(&self, db: &str, table: &str, body: &[u8]) -> Result<usize, IngestError> {
        let db = user_db(db)?;
        let table = ident("table", table)?;
        let mut rows = parse_body(body)?;
        let n = rows.rows.len();
        let buffer = self.buffer(&db, &table);
        let taken = {
            let mut b = buffer.lock().unwrap_or_else(|p| p.into_inner());
            let stored = self
                .storage
                .schema(&db, &table)
                .map(|s| (*s).clone())
                .unwrap_or_default();
            let schema = stored.extended(&b.new_columns.columns);
            let new = schema.plan(&mut rows)?;
            self.journal(&mut b, &db, &table, body)
                .map_err(|e| IngestError::internal("writing the stream journal", e))?;
            b.new_columns.columns.extend(new);
            b.rows.append(rows);
            b.started.get_or_insert_with(Instant::now);
            (self.cfg.write_immediate || b.rows.rows.len() >= self.cfg.threshold_rows)
                .then(|| take(&mut b, &db, &table))
                .flatten()
        };
        if let Some(t) = taken {
            self.write(t);
        }
        Ok(n)
    }

    /// Writes every buffer older than the time threshold. Called periodically.
    pub fn tick(&self) {
        let age = Duration::from_millis(self.cfg.threshold_ms);
        for t in self.take_all(|b| b.started.is_some_and(|s| s.elapsed() >= age)) {
            self.write(t);
        }
    }

    /// Writes every buffer now (`flush buffers`, shutdown). Returns the rows written.
    pub fn flush_all(&self) -> usize {
        let mut n = 0;
        for t in self.take_all(|_| true) {
            n += t.rows.rows.len();
            self.write(t);
        }
        n
    }

    /// The buffers as they are now, so none is locked while another is.
    fn snapshot(&self) -> Vec<(TableKey, Arc<Mutex<Buffer>>)> {
        let buffers = self.buffers.lock().expect("lock poisoned");
        buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Rows waiting in buffers, per `db.table`.
    pub fn pending(&self) -> Vec<(String, String, usize)> {
        self.snapshot()
            .into_iter()
            .map(|((d, t), b)| {
                (
                    d,
                    t,
                    b.lock().unwrap_or_else(|p| p.into_inner()).rows.rows.len(),
                )
            })
            .filter(|(_, _, n)| *n > 0)
            .collect()
    }

    fn take_all(&self, due: impl Fn(&Buffer) -> bool) -> Vec<Taken> {
        self.snapshot()
            .into_iter()
            .filter_map(|((db, table), b)| {
                let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
                if due(&b) {
                    take(&mut b, &db, &table)
                } else {
                    None
                }
            })
            .collect()
    }

    fn buffer(&self, db: &str, table: &str) -> Arc<Mutex<Buffer>> {
        self.buffers
            .lock()
            .expect("lock poisoned")
            .entry((db.to_owned(), table.to_owned()))
            .or_default()
            .clone()
    }

    fn journal(&self, b: &mut Buffer, db: &str, table: &str, body: &[u8]) -> std::io::Result<()> {
        if b.journal.is_none() {
            let name = format!(
                "{db}.{table}.{}-{}.journal",
                self.clock.now_micros(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            );
            let path = self.dir.join(name);
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            b.journal = Some((f, path));
        }
        let (f, _) = b.journal.as_mut().expect("journal was just opened");
        let mut rec = Vec::with_capacity(body.len() + 4);
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(body);
        f.write_all(&rec)?;
        if self.storage.durability() == Durability::Fsync {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Writes a taken buffer as one batch and drops its journal. A batch the
    /// store refuses (a column's type changed under it) keeps its journal in
    /// `stream/error/` with the reason, so nothing acknowledged disappears.
    fn write(&self, t: Taken) {
        // The journal's name is unique on this node; the origin makes it
        // unique in the cluster, where replicas compare hashes.
        let hash = format!("stream:{}:{}", self.storage.origin(), file_name(&t.journal));
        let meta = BatchMeta {
            source: "streaming".into(),
            hash,
            instructions: String::new(),
        };
        match self.storage.write(&t.db, &t.table, t.rows, &meta) {
            Ok(_) => {
                if let Err(e) = std::fs::remove_file(&t.journal) {
                    tracing::warn!("removing journal {}: {e}", t.journal.display());
                }
            }
            Err(e) => {
                tracing::error!(
                    "streamed rows for {}.{} could not be written ({e}); journal kept in stream/error",
                    t.db,
                    t.table,
                );
                let err_dir = self.dir.join("error");
                let _ = std::fs::create_dir_all(&err_dir);
                let dest = err_dir.join(file_name(&t.journal));
                let _ = std::fs::rename(&t.journal, &dest);
                let _ = std::fs::write(dest.with_extension("err.txt"), format!("{e}\n"));
            }
        }
    }

    fn replay(&self) -> anyhow::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "journal"))
            .collect();
        files.sort();
        for path in files {
            let name = file_name(&path);
            let mut parts = name.splitn(3, '.');
            let (Some(db), Some(table)) = (parts.next(), parts.next()) else {
                continue;
            };
            let rows = read_journal(&path)?;
            let n = rows.rows.len();
            if n == 0 {
                std::fs::remove_file(&path)?;
                continue;
            }
            tracing::info!("replaying {n} streamed rows for {db}.{table} from {name}");
            self.write(Taken {
                db: db.to_owned(),
                table: table.to_owned(),
                rows,
                journal: path.clone(),
            });
        }
        Ok(())
    }
}

fn take(b: &mut Buffer, db: &str, table: &str) -> Option<Taken> {
    if b.rows.rows.is_empty() {
        return None;
    }
    let (file, journal) = b.journal.take()?;
    drop(file);
    b.started = None;
    b.new_columns = TableSchema::default();
    Some(Taken {
        db: db.to_owned(),
        table: table.to_owned(),
        rows: std::mem::take(&mut b.rows),
        journal,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads a journal's records. A torn last record (the crash came mid-append,
/// so it was never acknowledged) is dropped.
fn read_journal(path: &Path) -> anyhow::Result<Rows> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut rows = Rows::default();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes")) as usize;
        if len > MAX_RECORD || at + 4 + len > data.len() {
            break;
        }
        match parse_body(&data[at + 4..at + 4 + len]) {
            Ok(r) => rows.append(r),
            Err(e) => tracing::warn!("skipping an unreadable record in {}: {e}", path.display()),
        }
        at += 4 + len;
    }
    Ok(rows)
}
