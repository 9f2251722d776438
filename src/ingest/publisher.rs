//! The publisher's queue (DESIGN.md §1): a batch is validated and written
//! to `<data-dir>/publisher.db` before the client is answered, so an
//! accepted batch survives a crash; it stays there until an operator has
//! committed it (see `forward`). The first time a batch is sent its
//! cluster is chosen (by a hash of its source, or round-robin, over the
//! clusters the ledger knows) and recorded, so a retry never lands in
//! another cluster.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::Notify;

use super::parse::{parse_body, row_json};
use super::{IngestError, batch_hash};
use crate::config::{PublisherConfig, Route};
use crate::store::{Durability, Rows, ident, user_db};

/// Largest batch body sent to an operator in one message (well under the
/// RPC limit); larger bodies are split.
const MAX_FORWARD: usize = 4 << 20;

/// Rows as NDJSON bodies of at most about `max` bytes each.
fn split(rows: &Rows, max: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for row in &rows.rows {
        let line = row_json(&rows.columns, row);
        let cur = out.last_mut().expect("never empty");
        if !cur.is_empty() && cur.len() + line.len() + 1 > max {
            out.push(Vec::new());
        }
        let cur = out.last_mut().expect("never empty");
        cur.extend_from_slice(&line);
        cur.push(b'\n');
    }
    out
}

/// The on-disk queue of batches waiting for an operator.
pub struct Publisher {
    db: Mutex<Connection>,
    bytes: AtomicU64,
    batches: AtomicU64,
    max_bytes: u64,
    route: Route,
    next_cluster: AtomicUsize,
    pub(super) wake: Notify,
}

/// A batch in the queue.
pub(super) struct Queued {
    pub(super) seq: i64,
    pub(super) db: String,
    pub(super) table: String,
    pub(super) source: String,
    pub(super) hash: String,
    pub(super) cluster: Option<String>,
}

/// What the publisher answers a client.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub rows: usize,
    pub seq: i64,
    pub hash: String,
}

impl Publisher {
    pub fn open(
        data_dir: &Path,
        durability: Durability,
        cfg: &PublisherConfig,
    ) -> anyhow::Result<Publisher> {
        let conn = Connection::open(data_dir.join("publisher.db"))?;
        let sync = durability.synchronous();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {sync};
             CREATE TABLE IF NOT EXISTS queue (
                seq INTEGER PRIMARY KEY,
                dbms TEXT NOT NULL,
                table_name TEXT NOT NULL,
                source TEXT NOT NULL,
                hash TEXT NOT NULL,
                body BLOB NOT NULL,
                cluster TEXT);
             CREATE TABLE IF NOT EXISTS refused (
                seq INTEGER PRIMARY KEY,
                dbms TEXT NOT NULL,
                table_name TEXT NOT NULL,
                source TEXT NOT NULL,
                hash TEXT NOT NULL,
                body BLOB NOT NULL,
                cluster TEXT,
                reason TEXT NOT NULL);"
        ))?;
        let (batches, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if batches > 0 {
            tracing::info!("{batches} batches wait in the publisher queue");
        }
        Ok(Publisher {
            db: Mutex::new(conn),
            bytes: AtomicU64::new(bytes as u64),
            batches: AtomicU64::new(batches as u64),
            max_bytes: cfg.max_queue_bytes,
            route: cfg.route,
            next_cluster: AtomicUsize::new(0),
            wake: Notify::new(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates a body and queues it as one batch. Blocking.
    pub fn accept(
        &self,
        db: &str,
        table: &str,
        source: &str,
        body: &[u8],
    ) -> Result<Accepted, IngestError> {
        let db = user_db(db)?;
        let table = ident("table", table)?;
        let rows = parse_body(body)?;
        if self.bytes.load(Ordering::Relaxed) + body.len() as u64 > self.max_bytes {
            return Err(IngestError::QueueFull {
                held: self.bytes.load(Ordering::Relaxed),
                limit: self.max_bytes,
            });
        }
        let hash = batch_hash(&db, &table, body);
        // A body larger than one peer message goes as several batches, each
        // with a hash derived from the whole one (so a re-sent body is still
        // stored once).
        let parts: Vec<(String, std::borrow::Cow<'_, [u8]>)> = if body.len() <= MAX_FORWARD {
            vec![(hash.clone(), body.into())]
        } else {
            split(&rows, MAX_FORWARD)
                .into_iter()
                .enumerate()
                .map(|(i, b)| (format!("{hash}:{i}"), b.into()))
                .collect()
        };
        let seq = {
            let mut conn = self.conn();
            let tx = conn
                .transaction()
                .map_err(|e| IngestError::internal("queueing a batch", e))?;
            let mut first = None;
            for (h, b) in &parts {
                tx.prepare_cached(
                    "INSERT INTO queue (dbms, table_name, source, hash, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| st.execute(params![db, table, source, h, b.as_ref()]))
                .map_err(|e| IngestError::internal("queueing a batch", e))?;
                first.get_or_insert(tx.last_insert_rowid());
            }
            tx.commit()
                .map_err(|e| IngestError::internal("queueing a batch", e))?;
            first.unwrap_or_default()
        };
        let bytes: usize = parts.iter().map(|(_, b)| b.len()).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.batches
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(Accepted {
            rows: rows.rows.len(),
            seq,
            hash,
        })
    }

    /// Batches and bytes waiting.
    pub fn pending(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The next queued batch after `after`, without its body.
    pub(super) fn next_after(&self, after: i64) -> rusqlite::Result<Option<Queued>> {
        self.conn()
            .prepare_cached(
                "SELECT seq, dbms, table_name, source, hash, cluster FROM queue \
                 WHERE seq > ?1 ORDER BY seq LIMIT 1",
            )?
            .query_row([after], |r| {
                Ok(Queued {
                    seq: r.get(0)?,
                    db: r.get(1)?,
                    table: r.get(2)?,
                    source: r.get(3)?,
                    hash: r.get(4)?,
                    cluster: r.get(5)?,
                })
            })
            .optional()
    }

    pub(super) fn body(&self, seq: i64) -> rusqlite::Result<Vec<u8>> {
        self.conn()
            .prepare_cached("SELECT body FROM queue WHERE seq = ?1")?
            .query_row([seq], |r| r.get(0))
    }

    pub(super) fn done(&self, q: &Queued, len: usize, refused: Option<&str>) {
        let r = (|| -> rusqlite::Result<()> {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            if let Some(reason) = refused {
                tx.execute(
                    "INSERT OR IGNORE INTO refused SELECT seq, dbms, table_name, source, hash, body, cluster, ?2 \
                     FROM queue WHERE seq = ?1",
                    params![q.seq, reason],
                )?;
            }
            tx.execute("DELETE FROM queue WHERE seq = ?1", [q.seq])?;
            tx.commit()
        })();
        match r {
            Ok(()) => {
                self.bytes.fetch_sub(len as u64, Ordering::Relaxed);
                self.batches.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("removing a sent batch from the queue: {e}"),
        }
    }

    /// Picks and records the cluster of a batch sent for the first time.
    pub(super) fn choose(&self, q: &mut Queued, clusters: &[String]) -> Option<String> {
        if let Some(c) = &q.cluster {
            return Some(c.clone());
        }
        if clusters.is_empty() {
            return None;
        }
        let i = match self.route {
            Route::Hash => {
                let h = blake3::hash(q.source.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as usize
            }
            Route::RoundRobin => self.next_cluster.fetch_add(1, Ordering::Relaxed),
        } % clusters.len();
        let c = clusters[i].clone();
        if let Err(e) = self.conn().execute(
            "UPDATE queue SET cluster = ?2 WHERE seq = ?1",
            params![q.seq, c],
        ) {
            tracing::warn!("recording a batch's cluster: {e}");
            return None;
        }
        q.cluster = Some(c.clone());
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_bodies_hold_every_row_once_within_the_bound() {
        let body: String = (0..2000)
            .map(|i| {
                let extra = if i % 3 == 0 {
                    format!(", \"x\": {i}.5")
                } else {
                    ", \"x\": null".into()
                };
                format!(
                    "{{\"k\": {i}, \"s\": \"row {i}\", \"b\": {}{extra}}}\n",
                    i % 2 == 0
                )
            })
            .collect();
        let rows = parse_body(body.as_bytes()).unwrap();
        let parts = split(&rows, 10_000);
        assert!(parts.len() > 5);
        let mut back = Rows::default();
        for p in &parts {
            assert!(p.len() <= 10_000);
            back.append(parse_body(p).unwrap());
        }
        assert_eq!(back.rows.len(), 2000);
        let col = |r: &Rows, name: &str, i: usize| {
            let c = r.columns.iter().position(|c| c == name).unwrap();
            r.rows[i][c].clone()
        };
        for i in 0..2000 {
            for name in ["k", "s", "b", "x"] {
                assert_eq!(col(&back, name, i), col(&rows, name, i), "row {i} {name}");
            }
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn queued(seq: i64, source: &str) -> Queued {
        Queued {
            seq,
            db: "lab".into(),
            table: "t".into(),
            source: source.into(),
            hash: format!("h{seq}"),
            cluster: None,
        }
    }

    fn publisher(route: Route) -> (tempfile::TempDir, Publisher) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PublisherConfig {
            route,
            ..Default::default()
        };
        let p = Publisher::open(dir.path(), Durability::Normal, &cfg).unwrap();
        (dir, p)
    }

    #[test]
    fn batches_are_routed_by_source_or_in_turn_and_keep_their_cluster() {
        let clusters: Vec<String> = ["c1", "c2", "c3"].map(str::to_owned).to_vec();
        let (_d, p) = publisher(Route::Hash);
        // One source, one cluster; many sources spread over all of them.
        let mut seen = std::collections::HashSet::new();
        for i in 0..60 {
            let src = format!("dev-{}", i % 20);
            let a = p.choose(&mut queued(i, &src), &clusters).unwrap();
            let b = p.choose(&mut queued(i + 100, &src), &clusters).unwrap();
            assert_eq!(a, b, "{src}");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 3);
        let (_d, p) = publisher(Route::RoundRobin);
        let picks: Vec<String> = (0..6)
            .map(|i| p.choose(&mut queued(i, "same"), &clusters).unwrap())
            .collect();
        assert_eq!(picks, ["c1", "c2", "c3", "c1", "c2", "c3"]);
        // A batch keeps the cluster chosen first, whatever the list becomes.
        let mut q = queued(7, "x");
        let first = p.choose(&mut q, &clusters).unwrap();
        assert_eq!(p.choose(&mut q, &["other".to_owned()]).unwrap(), first);
        assert_eq!(p.choose(&mut queued(8, "x"), &[]), None);
    }
}
