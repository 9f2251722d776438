//! The operator's side of network queries: a partial query runs on a
//! blocking thread and hands its result out chunk by chunk through a
//! cursor the query node pulls; a libp2p client's whole query is answered
//! the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tarn_net::PeerId;
use tokio::sync::mpsc;

use super::finish::header;
use super::{Exec, ExecError, NodeError, Part, QueryRequest, Scope, Stats};
use crate::config::Service;
use crate::error::Code;
use crate::mesh::Serve;
use crate::proto::query::{Chunk, Request};
use crate::proto::{Reply, WireError};
use crate::store::{PartialGroups, Val};

/// How long an operator holds a pull before answering an empty chunk.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// A chunk is cut once its values reach about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// Open cursors per node; more queries at once are refused.
const MAX_CURSORS: usize = 256;
/// A cursor nobody pulled for this long is dropped (its producer stops).
const CURSOR_IDLE: Duration = Duration::from_secs(60);

type Chunks = mpsc::Receiver<Result<Chunk, ExecError>>;

/// Open cursors: results being pulled chunk by chunk.
#[derive(Default)]
struct Cursors {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Cursor>>,
}

struct Cursor {
    owner: PeerId,
    touched: Instant,
    rx: Arc<tokio::sync::Mutex<Chunks>>,
}

impl Cursors {
    fn open(
        &self,
        owner: PeerId,
    ) -> Result<(u64, mpsc::Sender<Result<Chunk, ExecError>>), ExecError> {
        let mut open = self.open.lock().expect("lock poisoned");
        open.retain(|_, c| c.touched.elapsed() < CURSOR_IDLE);
        if open.len() >= MAX_CURSORS {
            return Err(ExecError::Busy);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(2);
        open.insert(
            id,
            Cursor {
                owner,
                touched: Instant::now(),
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
            },
        );
        Ok((id, tx))
    }

    /// The next chunk of cursor `id`, or an empty one after [`HEARTBEAT`].
    async fn pull(&self, id: u64, from: PeerId) -> Reply<Chunk> {
        let rx = {
            let mut open = self.open.lock().expect("lock poisoned");
            match open.get_mut(&id) {
                Some(c) if c.owner == from => {
                    c.touched = Instant::now();
                    c.rx.clone()
                }
                _ => {
                    return Err(WireError::new(
                        Code::NoCursor,
                        "no such query in progress (it may have expired)",
                    ));
                }
            }
        };
        let got = {
            let mut rx = rx.lock().await;
            tokio::time::timeout(HEARTBEAT, rx.recv()).await
        };
        let close = || self.open.lock().expect("lock poisoned").remove(&id);
        match got {
            Err(_) => Ok(Chunk {
                cursor: id,
                ..Default::default()
            }),
            Ok(Some(Ok(mut chunk))) => {
                chunk.cursor = id;
                if chunk.done {
                    close();
                }
                Ok(chunk)
            }
            Ok(Some(Err(e))) => {
                close();
                Err(WireError::of(&e))
            }
            Ok(None) => {
                close();
                Err(WireError::new(Code::Internal, "the query stopped"))
            }
        }
    }
}

/// The handler of the query family.
pub struct Server {
    exec: Arc<Exec>,
    cursors: Cursors,
}

impl Server {
    pub fn new(exec: Arc<Exec>) -> Server {
        Server {
            exec,
            cursors: Cursors::default(),
        }
    }

    fn partial(
        &self,
        from: PeerId,
        db: String,
        sql: String,
        groups: bool,
        timeout_ms: u64,
    ) -> Result<u64, ExecError> {
        let store = self.exec.store.clone().ok_or(ExecError::NoOperator)?;
        let (id, tx) = self.cursors.open(from)?;
        let timeout = Duration::from_millis(timeout_ms).min(self.exec.limits.query_timeout);
        let limits = self.exec.limits.until(Instant::now() + timeout);
        tokio::task::spawn_blocking(move || {
            match super::local::run_partial(&store, &db, &sql, groups, limits) {
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
                Ok(Part::Groups(p)) => send_groups(&tx, p),
                Ok(Part::Rows { columns, rows }) => send_rows(&tx, columns, rows, None, Vec::new()),
            }
        });
        Ok(id)
    }

    async fn query(&self, from: PeerId, mut req: QueryRequest) -> Result<u64, ExecError> {
        if !self.exec.me.runs(Service::Query) {
            return Err(ExecError::NoQuery);
        }
        req.scope = Scope::Network;
        let answer = self.exec.run(req).await;
        let (id, tx) = self.cursors.open(from)?;
        tokio::task::spawn_blocking(move || match answer {
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
            Ok(a) => {
                let columns = header(&a.result);
                send_rows(&tx, columns, a.result.rows, Some(a.stats), a.errors);
            }
        });
        Ok(id)
    }
}

impl Serve<Request> for Server {
    async fn serve(&self, from: PeerId, req: Request) -> Reply<Chunk> {
        let cursor = match req {
            Request::Partial {
                db,
                sql,
                groups,
                timeout_ms,
            } => self.partial(from, db, sql, groups, timeout_ms),
            Request::Query {
                db,
                sql,
                subset,
                timeout_ms,
            } => {
                let req = QueryRequest {
                    timeout: Some(Duration::from_millis(timeout_ms)),
                    subset,
                    ..QueryRequest::new(&db, &sql, Scope::Network)
                };
                self.query(from, req).await
            }
            Request::Next { cursor } => Ok(cursor),
        };
        match cursor {
            Ok(id) => self.cursors.pull(id, from).await,
            Err(e) => Err(WireError::of(&e)),
        }
    }
}

/// Rows in chunks of about [`CHUNK_BYTES`]; the last carries `stats` and
/// `errors`. Stops when the cursor is dropped.
fn send_rows(
    tx: &mpsc::Sender<Result<Chunk, ExecError>>,
    columns: Vec<(String, Option<String>)>,
    rows: Vec<Vec<Val>>,
    stats: Option<Stats>,
    errors: Vec<NodeError>,
) {
    let mut chunk = Chunk {
        columns,
        ..Default::default()
    };
    let mut size = 0;
    for row in rows {
        size += row.iter().map(Val::approx_size).sum::<usize>() + 2;
        chunk.rows.push(row);
        if size >= CHUNK_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            size = 0;
        }
    }
    chunk.stats = stats;
    chunk.errors = errors;
    chunk.done = true;
    let _ = tx.blocking_send(Ok(chunk));
}

/// Group states in chunks of about [`CHUNK_BYTES`].
fn send_groups(tx: &mpsc::Sender<Result<Chunk, ExecError>>, p: PartialGroups) {
    let mut chunk = Chunk {
        key_types: p.key_types,
        ..Default::default()
    };
    let mut size = 0;
    for (key, states) in p.groups {
        size += key.0.len() * 12
            + states
                .iter()
                .map(|s| 32 + s.distinct_len() * 16)
                .sum::<usize>();
        chunk.groups.push((key.0, states));
        if size >= CHUNK_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            size = 0;
        }
    }
    chunk.done = true;
    let _ = tx.blocking_send(Ok(chunk));
}
