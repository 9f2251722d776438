//! The publisher's sender: drains the queue in order, each batch to a
//! live operator of its cluster, moving to another member when one fails
//! and leaving the batch queued while the whole cluster is down. Operators
//! de-duplicate by the batch's hash, so a batch re-sent after a lost
//! answer is stored once. Every queue read and update runs on a blocking
//! thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::publisher::{Publisher, Queued};
use crate::cluster::membership::{self, Member};
use crate::error::Code;
use crate::mesh::{CallError, Mesh};
use crate::proto::ingest::{Request, Response};

/// What one pass over the queue did.
enum Pass {
    Empty,
    /// Batches wait and none could be sent.
    Stuck,
    Progress,
}

/// What became of one batch.
enum Sent {
    /// An operator holds it.
    Stored,
    /// An operator refused it as bad data: no member will take it. Kept
    /// aside with the reason, not dropped.
    Refused(String),
    /// No member took it; it stays queued.
    NotYet,
}

/// Starts the sender.
pub fn spawn(
    mesh: Arc<Mesh>,
    publisher: Arc<Publisher>,
    stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(run(mesh, publisher, stop).instrument(span))
}

/// Drains the queue while the node runs. After a pass that could send
/// nothing (its clusters are down) it waits a second, whatever arrives
/// meanwhile, so a long queue is not re-read for every new batch.
async fn run(mesh: Arc<Mesh>, publisher: Arc<Publisher>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match drain(&mesh, &publisher, &stop).await {
            Pass::Empty => Duration::from_secs(5),
            Pass::Stuck => {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Pass::Progress => Duration::ZERO,
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = publisher.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn on_queue<T: Send + 'static>(
    publisher: &Arc<Publisher>,
    f: impl FnOnce(&Publisher) -> T + Send + 'static,
) -> Option<T> {
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || f(&p)).await.ok()
}

/// Sends every queued batch it can, oldest first.
async fn drain(mesh: &Arc<Mesh>, publisher: &Arc<Publisher>, stop: &watch::Receiver<bool>) -> Pass {
    let mut after = 0;
    let mut sent = 0;
    // Read from the ledger once a pass, not once a batch.
    let clusters: BTreeMap<String, Vec<Member>> = mesh.with_view(membership::clusters);
    let names: Vec<String> = clusters.keys().cloned().collect();
    // Stopping: what is left stays queued on disk for the next start.
    while !*stop.borrow() {
        let q = match on_queue(publisher, move |p| p.next_after(after)).await {
            Some(Ok(Some(q))) => q,
            Some(Ok(None)) if after == 0 => return Pass::Empty,
            Some(Err(e)) => {
                tracing::warn!("reading the publisher queue: {e}");
                break;
            }
            _ => break,
        };
        after = q.seq;
        let names = names.clone();
        let Some((q, Some(cluster))) = on_queue(publisher, move |p| {
            let mut q = q;
            let c = p.choose(&mut q, &names);
            (q, c)
        })
        .await
        else {
            continue;
        };
        let mut live: Vec<Member> = clusters
            .get(&cluster)
            .into_iter()
            .flatten()
            .filter(|m| mesh.alive(&m.peer))
            .cloned()
            .collect();
        if live.is_empty() {
            continue;
        }
        // Spread batches over the members, one batch one member.
        let n = live.len();
        live.rotate_left(q.seq as usize % n);
        let seq = q.seq;
        let Some(Ok(body)) = on_queue(publisher, move |p| p.body(seq)).await else {
            continue;
        };
        let len = body.len();
        let outcome = match send(mesh, &q, body, &live).await {
            Sent::Stored => None,
            Sent::Refused(reason) => Some(reason),
            Sent::NotYet => continue,
        };
        sent += 1;
        on_queue(publisher, move |p| p.done(&q, len, outcome.as_deref())).await;
    }
    if sent > 0 {
        Pass::Progress
    } else {
        Pass::Stuck
    }
}

/// Sends one batch to the first of `live` that takes it.
async fn send(mesh: &Mesh, q: &Queued, body: Vec<u8>, live: &[Member]) -> Sent {
    let msg = Request::Ingest {
        db: q.db.clone(),
        table: q.table.clone(),
        source: q.source.clone(),
        hash: q.hash.clone(),
        body: serde_bytes::ByteBuf::from(body),
    };
    for m in live {
        match mesh.call(m.peer, &msg).await {
            Ok(Response::Ingested { .. }) => return Sent::Stored,
            // The operator refuses the data itself (not itself unable).
            Err(CallError::Remote(e))
                if !matches!(
                    e.code,
                    Code::Internal
                        | Code::NoOperator
                        | Code::Busy
                        | Code::BadRequest
                        | Code::Unknown
                ) =>
            {
                tracing::warn!("operator {} refused a queued batch: {}", m.name, e.message);
                return Sent::Refused(format!("{}: {}", e.code, e.message));
            }
            Err(e) => tracing::debug!("sending to {}: {e}", m.name),
        }
    }
    Sent::NotYet
}
