//! An operator's side of batches forwarded by a publisher or sent by a
//! libp2p client: stored like a REST write (never queued again).

use std::sync::Arc;

use tarn_net::PeerId;

use super::{Ingest, IngestError, IngestRequest};
use crate::audit::{Event, Sink};
use crate::mesh::Serve;
use crate::proto::ingest::{Request, Response};
use crate::proto::{Reply, WireError};

/// The handler of the ingest family (its batches are audited).
pub struct Server(pub Arc<Ingest>, pub Sink);

impl Serve<Request> for Server {
    async fn serve(&self, from: PeerId, req: Request) -> Reply<Response> {
        let Request::Ingest {
            db,
            table,
            source,
            hash,
            body,
        } = req;
        let what = format!("ingest {db}.{table}");
        let req = IngestRequest {
            hash: Some(hash),
            ..IngestRequest::batch(&db, &table, body.into_vec().into(), &source)
        };
        let ingest = self.0.clone();
        let r = tokio::task::spawn_blocking(move || ingest.write(&req))
            .await
            .unwrap_or_else(|e| Err(IngestError::internal("storing a forwarded batch", e)));
        let peer = from.to_string();
        let outcome = match &r {
            Ok((w, _)) => format!("ok: {} rows", w.rows),
            Err(e) => crate::error::Coded::code(e).to_string(),
        };
        self.1
            .record(Event::now(&format!("peer:{peer}"), what, &peer, outcome));
        match r {
            Ok((w, _)) => Ok(Response::Ingested {
                rows: w.rows as u64,
                batch: w.tsd_id,
                duplicate: w.duplicate,
            }),
            Err(e) => Err(WireError::of(&e)),
        }
    }
}
