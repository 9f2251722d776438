//! This member's side of peers' replication messages. Only members of this
//! node's cluster (per the signed `operator` policies) may push to it or
//! read its batches; anyone may ask for its inventory.

use std::sync::Arc;

use tarn_net::PeerId;

use super::local::{self, MAX_BATCHES, MESSAGE_BYTES};
use crate::cluster::membership::{self, Me};
use crate::error::Code;
use crate::mesh::{Mesh, Serve};
use crate::proto::replication::{Request, Response};
use crate::proto::{Reply, WireError};
use crate::store::Storage;

/// The handler of the replication family.
pub struct Server {
    pub store: Arc<Storage>,
    pub mesh: Arc<Mesh>,
    pub me: Me,
}

impl Server {
    fn is_member(&self, peer: &PeerId) -> bool {
        self.mesh
            .with_view(|v| membership::members(v, &self.me))
            .iter()
            .any(|m| m.peer == *peer)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, WireError> + Send + 'static,
    ) -> Result<T, WireError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| WireError::new(Code::Internal, e.to_string()))?
    }
}

impl Serve<Request> for Server {
    async fn serve(&self, from: PeerId, req: Request) -> Reply<Response> {
        let refuse = || {
            WireError::new(
                Code::NotAMember,
                "only members of this node's cluster may do that",
            )
        };
        match req {
            Request::Replicate(batches) => {
                if !self.is_member(&from) {
                    return Err(refuse());
                }
                if batches.len() > MAX_BATCHES {
                    return Err(WireError::new(
                        Code::TooManyBatches,
                        format!("at most {MAX_BATCHES} batches per message"),
                    ));
                }
                let from = from.to_string();
                let r = self
                    .blocking(move |s| Ok(local::store_pushed(s, &from, batches)))
                    .await?;
                Ok(Response::Replicated(r))
            }
            Request::Inventory { tables } => {
                let (holdings, tables) = self
                    .blocking(move |s| {
                        let t = if tables {
                            s.table_counts().map_err(|e| WireError::of(&e))?
                        } else {
                            Vec::new()
                        };
                        Ok((s.inventory(), t))
                    })
                    .await?;
                Ok(Response::Holdings { holdings, tables })
            }
            Request::Missing { origin, have } => {
                if !self.is_member(&from) {
                    return Err(refuse());
                }
                let b = self
                    .blocking(move |s| {
                        local::missing(s, &origin, have, MESSAGE_BYTES)
                            .map_err(|e| WireError::of(&e))
                    })
                    .await?;
                Ok(Response::Batches(b))
            }
        }
    }
}
