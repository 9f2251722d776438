//! Every way data comes in — REST, EdgeLake's `PUT`, the watched
//! directory, batches forwarded by a publisher — builds one
//! [`IngestRequest`] for one [`Ingest`] service, which decides where it
//! goes: the publisher's queue (a node that publishes and stores
//! nothing), a streaming buffer (EdgeLake's streaming mode), or the store
//! as one batch, confirmed by the cluster when the write asks for it.
//!
//! - `parse`: JSON bodies into typed rows
//! - `stream`: streaming buffers, journaled so acknowledged rows survive a crash
//! - `watch`: the watched directory
//! - `publisher`: the publisher's on-disk queue; `forward`: sending it to operators
//! - `serve`: an operator's side of forwarded batches ([`Server`])
//!
//! A new source of data (MQTT, say) builds an [`IngestRequest`] and calls
//! [`Ingest::ingest`]; nothing else needs to know it exists.
//!
//! Uses `cluster` (replication, membership), `mesh` (forwarding), `store`,
//! `config`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

mod forward;
pub mod mqtt;
mod parse;
mod publisher;
mod serve;
mod stream;
mod watch;

pub use forward::spawn as spawn_forwarder;
pub use parse::parse_body;
pub use publisher::{Accepted, Publisher};
pub use serve::Server;
pub use stream::Streams;
pub use watch::{FileName, Watcher};

use crate::cluster::replication::{BatchRef, Confirmation, Replicator};
use crate::error::{Code, Coded, log_internal};
use crate::store::{BatchMeta, Storage, StoreError, Written};

/// Why a write was refused; nothing stored changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    MalformedJson(String),
    #[error("the body holds no rows")]
    EmptyBody,
    #[error("{0}")]
    InvalidBatch(String),
    #[error("consistency must be \"local\" or \"cluster\", not {0:?}")]
    BadConsistency(String),
    #[error("this node stores no data (it does not run the operator service)")]
    NoOperator,
    #[error("the publisher queue holds {held} bytes waiting for operators (limit {limit})")]
    QueueFull { held: u64, limit: u64 },
    /// A failure of the node itself; the detail went to the log.
    #[error("{0} failed; see the node's log")]
    Internal(&'static str),
}

impl IngestError {
    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> IngestError {
        IngestError::Internal(log_internal(context, detail))
    }
}

impl Coded for IngestError {
    fn code(&self) -> Code {
        match self {
            IngestError::Store(e) => e.code(),
            IngestError::MalformedJson(_) => Code::MalformedJson,
            IngestError::EmptyBody => Code::EmptyBody,
            IngestError::InvalidBatch(_) => Code::InvalidBatch,
            IngestError::BadConsistency(_) => Code::BadConsistency,
            IngestError::NoOperator => Code::NoOperator,
            IngestError::QueueFull { .. } => Code::QueueFull,
            IngestError::Internal(_) => Code::Internal,
        }
    }
}

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As one batch, at once.
    Batch,
    /// Into the table's streaming buffer (EdgeLake's `mode: streaming`).
    Streaming,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Once this node committed it.
    #[default]
    Local,
    /// Once every live member of its cluster committed it too.
    Cluster,
}

impl Consistency {
    /// `?consistency=` / the `consistency` header: `local` (default) or `cluster`.
    pub fn parse(value: Option<&str>) -> Result<Consistency, IngestError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Consistency::Local),
            Some(v) if v.eq_ignore_ascii_case("local") => Ok(Consistency::Local),
            Some(v) if v.eq_ignore_ascii_case("cluster") => Ok(Consistency::Cluster),
            Some(v) => Err(IngestError::BadConsistency(v.to_owned())),
        }
    }
}

/// One write, from wherever it came.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub db: String,
    pub table: String,
    /// JSON rows: an array, one object, or one object per line.
    pub body: Bytes,
    /// Who sent it (a device, a file, a client).
    pub source: String,
    /// Its identity for de-duplication; by default a hash of what it holds.
    pub hash: Option<String>,
    pub instructions: String,
    pub mode: Mode,
    pub consistency: Consistency,
}

impl IngestRequest {
    /// A batch of `body` for `db.table`, from `source`.
    pub fn batch(db: &str, table: &str, body: Bytes, source: &str) -> IngestRequest {
        IngestRequest {
            db: db.to_owned(),
            table: table.to_owned(),
            body,
            source: source.to_owned(),
            hash: None,
            instructions: String::new(),
            mode: Mode::Batch,
            consistency: Consistency::Local,
        }
    }
}

/// Which members of the cluster hold a `consistency=cluster` write.
#[derive(Debug, Clone, Serialize)]
pub struct Replicas {
    pub cluster: Option<String>,
    pub confirmed: Vec<String>,
    pub unconfirmed: Vec<Unconfirmed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unconfirmed {
    pub name: String,
    pub peer_id: String,
    pub reason: String,
}

impl Replicas {
    fn of(cluster: &str, c: Confirmation) -> Replicas {
        let none = c.confirmed.is_empty();
        Replicas {
            cluster: Some(cluster.to_owned()),
            confirmed: c.confirmed.into_iter().map(|m| m.name).collect(),
            unconfirmed: c
                .unconfirmed
                .into_iter()
                .map(|(m, reason)| Unconfirmed {
                    name: m.name,
                    peer_id: m.peer.to_string(),
                    reason,
                })
                .collect(),
            warning: none.then(|| {
                format!(
                    "no other member of cluster {cluster:?} confirmed the batch: it is stored \
                     here only until they catch up"
                )
            }),
        }
    }
}

/// What became of a write.
#[derive(Debug)]
pub enum Ingested {
    /// Committed here (and, with `replicas`, on the members listed).
    Stored {
        written: Written,
        hash: String,
        replicas: Option<Replicas>,
    },
    /// Journaled in the table's streaming buffer.
    Buffered { rows: usize },
    /// Queued on disk by the publisher.
    Queued(Accepted),
}

/// The ingest service of a node.
pub struct Ingest {
    /// The store, when the node runs the operator service.
    store: Option<Arc<Storage>>,
    streams: Option<Arc<Streams>>,
    /// The queue, when the node publishes and stores nothing itself.
    publisher: Option<Arc<Publisher>>,
    /// This node's cluster, when it replicates within one.
    replicator: Option<Replicator>,
}

/// The batch hash of a body: who it is for and what it holds.
pub fn batch_hash(db: &str, table: &str, body: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(db.to_ascii_lowercase().as_bytes());
    h.update(b"\0");
    h.update(table.to_ascii_lowercase().as_bytes());
    h.update(b"\0");
    h.update(body);
    h.finalize().to_hex()[..32].to_owned()
}

impl Ingest {
    pub fn new(
        store: Option<Arc<Storage>>,
        streams: Option<Arc<Streams>>,
        publisher: Option<Arc<Publisher>>,
        replicator: Option<Replicator>,
    ) -> Ingest {
        Ingest {
            store,
            streams,
            publisher,
            replicator,
        }
    }

    /// Takes one write to wherever it goes on this node.
    pub async fn ingest(self: &Arc<Self>, req: IngestRequest) -> Result<Ingested, IngestError> {
        if let Some(p) = self.publisher.clone() {
            let a = blocking(move || p.accept(&req.db, &req.table, &req.source, &req.body)).await?;
            return Ok(Ingested::Queued(a));
        }
        if self.store.is_none() {
            return Err(IngestError::NoOperator);
        }
        // Streaming rows are acknowledged once journaled here; a write that
        // must reach the cluster first is written as a batch at once.
        if req.mode == Mode::Streaming && req.consistency == Consistency::Local {
            let streams = self.streams.clone().ok_or(IngestError::NoOperator)?;
            let rows = blocking(move || streams.put(&req.db, &req.table, &req.body)).await?;
            return Ok(Ingested::Buffered { rows });
        }
        let cluster = req.consistency == Consistency::Cluster;
        let db = req.db.clone();
        let me = self.clone();
        let (written, hash) = blocking(move || me.write(&req)).await?;
        let replicas = if cluster {
            Some(self.confirm(&db, &written).await?)
        } else {
            None
        };
        Ok(Ingested::Stored {
            written,
            hash,
            replicas,
        })
    }

    /// Writes one batch into the store now. Blocking.
    pub fn write(&self, req: &IngestRequest) -> Result<(Written, String), IngestError> {
        let store = self.store.as_ref().ok_or(IngestError::NoOperator)?;
        let rows = parse_body(&req.body)?;
        let hash = match &req.hash {
            Some(h) => h.clone(),
            None => batch_hash(&req.db, &req.table, &req.body),
        };
        if hash.is_empty() || hash.len() > 256 || req.source.len() > 4096 {
            return Err(IngestError::InvalidBatch(
                "a batch needs a hash of at most 256 bytes and a source of at most 4096".into(),
            ));
        }
        let meta = BatchMeta {
            source: req.source.clone(),
            hash: hash.clone(),
            instructions: req.instructions.clone(),
        };
        let w = store.write(&req.db, &req.table, rows, &meta)?;
        Ok((w, hash))
    }

    /// Waits for the cluster's live members to hold a written batch.
    async fn confirm(&self, db: &str, w: &Written) -> Result<Replicas, IngestError> {
        let Some(r) = &self.replicator else {
            return Ok(Replicas {
                cluster: None,
                confirmed: Vec::new(),
                unconfirmed: Vec::new(),
                warning: Some(
                    "this node belongs to no cluster: the batch is stored here only".into(),
                ),
            });
        };
        let store = self.store.clone().ok_or(IngestError::NoOperator)?;
        let (db, origin, id) = (db.to_ascii_lowercase(), w.origin.clone(), w.tsd_id);
        let refs = blocking(move || {
            let ids = store.part_ids(&db, &origin, id)?;
            Ok(ids
                .into_iter()
                .map(|id| BatchRef {
                    db: db.clone(),
                    origin: origin.clone(),
                    id,
                })
                .collect::<Vec<_>>())
        })
        .await?;
        if refs.is_empty() {
            return Err(IngestError::internal(
                "reading the batch back",
                "it is not here",
            ));
        }
        let report = r
            .confirm(refs)
            .await
            .map_err(|e| IngestError::internal("waiting for the cluster", e))?;
        Ok(Replicas::of(r.cluster(), report))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IngestError> + Send + 'static,
) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IngestError::internal("a blocking task", e))?
}
