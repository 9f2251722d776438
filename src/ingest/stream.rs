//! EdgeLake's streaming mode: many small PUTs, buffered per table and written
//! as one batch when a row count or an age threshold passes, or on
//! `flush buffers`.
//!
//! A PUT is checked against the table it will land in (names, types, the
//! table's width, the table's name itself) and acknowledged only once its
//! body is appended to the buffer's journal file (and fsynced, with
//! `durability = "fsync"`), so an acknowledged row survives `kill -9` even
//! before its batch is written. At start, journals left behind are written
//! as batches; their batch hash is the journal's name, so one that was
//! already written is not written twice.
//!
//! If a buffer still cannot be written (another write changed the table in
//! between), its rows are written one by one against the table as it is:
//! the rows that fit are stored, only those that do not go to
//! `stream/error/` with their reason, never the others with them. What is
//! there is counted in the node's status and written again by
//! [`Streams::replay_errors`] once its cause is fixed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::IngestError;
use super::parse::{parse_body, row_json};
use crate::clock::SharedClock;
use crate::config::StreamingConfig;
use crate::store::{
    BatchMeta, Durability, Rows, Storage, StoreError, TableSchema, Val, ident, user_db,
};

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
            if stored.columns.is_empty() {
                self.storage.check_table(&db, &table)?;
            }
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

    /// The batch identity of a journal: its name is unique on this node,
    /// the origin makes it unique in the cluster, where replicas compare
    /// hashes.
    fn meta(&self, journal: &Path) -> BatchMeta {
        BatchMeta {
            source: "streaming".into(),
            hash: format!("stream:{}:{}", self.storage.origin(), file_name(journal)),
            instructions: String::new(),
        }
    }

    /// Writes a taken buffer as one batch and drops its journal.
    fn write(&self, t: Taken) {
        let meta = self.meta(&t.journal);
        match self.storage.write(&t.db, &t.table, t.rows, &meta) {
            Ok(_) => remove(&t.journal),
            Err(e @ StoreError::Internal { .. }) => self.set_aside(&t.journal, &e.detail()),
            Err(e) => {
                tracing::warn!(
                    "streamed rows for {}.{} could not be written as one batch ({e}); writing them one by one",
                    t.db,
                    t.table,
                );
                self.salvage(&t.db, &t.table, &t.journal, meta);
            }
        }
    }

    /// Writes the journal's rows that fit the table as it is now, and sets
    /// aside in `stream/error/` only those that do not, each with its reason.
    fn salvage(&self, db: &str, table: &str, journal: &Path, meta: BatchMeta) {
        let rows = match read_journal(journal) {
            Ok(r) => r,
            Err(e) => return self.set_aside(journal, &format!("reading the journal: {e}")),
        };
        let mut schema = self
            .storage
            .schema(db, table)
            .map(|s| (*s).clone())
            .unwrap_or_default();
        let mut good = Rows::default();
        let mut bad: Vec<(Vec<u8>, String)> = Vec::new();
        for row in rows.rows {
            let json = row_json(&rows.columns, &row);
            // The row's own values only: a column it leaves null must not
            // be created from it with a guessed type.
            let (columns, vals): (Vec<String>, Vec<Val>) = rows
                .columns
                .iter()
                .cloned()
                .zip(row)
                .filter(|(_, v)| *v != Val::Null)
                .unzip();
            let mut one = Rows {
                columns,
                rows: vec![vals],
            };
            match schema.plan(&mut one) {
                Ok(new) => {
                    schema = schema.extended(&new);
                    good.append(one);
                }
                Err(e) => bad.push((json, e.to_string())),
            }
        }
        if !good.rows.is_empty() {
            let meta = BatchMeta {
                hash: format!("{}:fitting", meta.hash),
                ..meta
            };
            if let Err(e) = self.storage.write(db, table, good, &meta) {
                return self.set_aside(journal, &e.detail());
            }
        }
        if !bad.is_empty() {
            tracing::error!(
                "{} streamed rows for {db}.{table} do not fit the table; kept in stream/error",
                bad.len()
            );
            if let Err(e) = self.keep_rows(journal, &bad) {
                return self.set_aside(journal, &format!("keeping the rows that do not fit: {e}"));
            }
        }
        remove(journal);
    }

    /// Writes rows that do not fit into `stream/error/` as a journal of
    /// their own (named like the one they came from), with one reason a row.
    fn keep_rows(&self, journal: &Path, bad: &[(Vec<u8>, String)]) -> std::io::Result<()> {
        let dir = self.dir.join("error");
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(file_name(journal));
        let mut data = Vec::new();
        let mut reasons = String::new();
        for (json, why) in bad {
            data.extend_from_slice(&(json.len() as u32).to_le_bytes());
            data.extend_from_slice(json);
            reasons.push_str(&format!("{why}\n"));
        }
        let tmp = dest.with_extension("tmp");
        std::fs::write(&tmp, &data)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::write(dest.with_extension("err.txt"), reasons)?;
        std::fs::rename(&tmp, &dest)
    }

    /// Moves a whole journal into `stream/error/` with the reason beside it.
    fn set_aside(&self, journal: &Path, why: &str) {
        tracing::error!("streamed rows kept in stream/error: {why}");
        let err_dir = self.dir.join("error");
        let _ = std::fs::create_dir_all(&err_dir);
        let dest = err_dir.join(file_name(journal));
        let _ = std::fs::write(dest.with_extension("err.txt"), format!("{why}\n"));
        if let Err(e) = std::fs::rename(journal, &dest) {
            tracing::error!("moving {} to stream/error: {e}", journal.display());
        }
    }

    /// Journals in `stream/error/`: how many, and how many rows they hold.
    pub fn errors(&self) -> (usize, usize) {
        let files = journals(&self.dir.join("error"));
        let rows = files
            .iter()
            .map(|p| read_journal(p).map_or(0, |r| r.rows.len()))
            .sum();
        (files.len(), rows)
    }

    /// Writes again what `stream/error/` holds (once its cause is fixed):
    /// the rows that fit now are stored; the others stay, with their
    /// reasons updated. Returns the rows stored and the rows left. Blocking.
    pub fn replay_errors(&self) -> (usize, usize) {
        let (mut stored, mut left) = (0, 0);
        for path in journals(&self.dir.join("error")) {
            let Some((db, table)) = db_table(&path) else {
                continue;
            };
            let Ok(rows) = read_journal(&path) else {
                continue;
            };
            let n = rows.rows.len();
            let meta = self.meta(&path);
            let reason = path.with_extension("err.txt");
            match self.storage.write(&db, &table, rows, &meta) {
                Ok(_) => {
                    stored += n;
                    remove(&path);
                    let _ = std::fs::remove_file(&reason);
                }
                Err(e) => {
                    left += n;
                    let _ = std::fs::write(&reason, format!("{}\n", e.detail()));
                }
            }
        }
        (stored, left)
    }

    fn replay(&self) -> anyhow::Result<()> {
        for path in journals(&self.dir) {
            let Some((db, table)) = db_table(&path) else {
                continue;
            };
            let rows = read_journal(&path)?;
            let n = rows.rows.len();
            if n == 0 {
                std::fs::remove_file(&path)?;
                continue;
            }
            tracing::info!(
                "replaying {n} streamed rows for {db}.{table} from {}",
                file_name(&path)
            );
            self.write(Taken {
                db,
                table,
                rows,
                journal: path,
            });
        }
        Ok(())
    }
}

/// The journals in `dir`, oldest first.
fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    files.sort();
    files
}

/// The database and table a journal's name says it is for.
fn db_table(path: &Path) -> Option<(String, String)> {
    let name = file_name(path);
    let mut parts = name.splitn(3, '.');
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

fn remove(journal: &Path) {
    if let Err(e) = std::fs::remove_file(journal) {
        tracing::warn!("removing journal {}: {e}", journal.display());
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
