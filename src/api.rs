//! The REST API: tarn's native `/v1` and EdgeLake's command protocol on
//! `/`, over the node's services. The only layer that knows HTTP: it turns
//! requests into the services' calls and their errors into statuses.
//!
//! - `native`: `/v1/status`, `/v1/data`, `/v1/query`, `/v1/tables`,
//!   `/v1/nodes`, `/v1/clusters`, `/v1/policies`
//! - `put`: EdgeLake's data `PUT /`
//! - `edgelake`: EdgeLake's commands (`GET /` and `POST /` with `command`)
//! - [`format`]: result rendering, native and EdgeLake's
//! - `body`: request bodies under the in-flight budget
//! - `error`: [`ApiError`], codes to statuses
//!
//! A new endpoint is a handler in `native` and a line in [`router`]; a new
//! EdgeLake command is a function in `edgelake` and a line in its dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};

mod body;
mod edgelake;
mod error;
pub mod format;
mod native;
mod put;

pub use body::BodyLimits;
pub use error::{ApiError, status_of};

use crate::config::{Service, StreamingConfig};
use crate::error::Code;
use crate::exec::Exec;
use crate::ingest::{Ingest, Publisher, Streams};
use crate::mesh::Mesh;
use crate::store::{Durability, Storage};

/// What the node says about itself.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub services: Vec<Service>,
    pub rest: SocketAddr,
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub started: Instant,
    pub cluster: Option<String>,
    pub streaming: StreamingConfig,
}

impl Info {
    pub fn runs(&self, s: Service) -> bool {
        self.services.contains(&s)
    }
}

/// The services the API calls, each handler taking the ones it needs.
#[derive(Clone)]
pub struct AppState {
    pub info: Arc<Info>,
    pub ingest: Arc<Ingest>,
    pub exec: Arc<Exec>,
    pub mesh: Arc<Mesh>,
    /// The node's store and its streaming buffers (which only hold data
    /// on an operator).
    pub store: Arc<Storage>,
    pub streams: Arc<Streams>,
    /// The publisher's queue (publisher service only).
    pub publisher: Option<Arc<Publisher>>,
    pub body: BodyLimits,
}

impl FromRef<AppState> for Arc<Ingest> {
    fn from_ref(s: &AppState) -> Self {
        s.ingest.clone()
    }
}

impl FromRef<AppState> for Arc<Mesh> {
    fn from_ref(s: &AppState) -> Self {
        s.mesh.clone()
    }
}

impl FromRef<AppState> for BodyLimits {
    fn from_ref(s: &AppState) -> Self {
        s.body.clone()
    }
}

/// Every route of the REST port.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(native::status))
        .route("/v1/data/{db}/{table}", post(native::post_data))
        .route("/v1/query", post(native::query))
        .route("/v1/tables", get(native::tables))
        .route("/v1/nodes", get(native::nodes))
        .route("/v1/clusters", get(native::clusters))
        .route(
            "/v1/policies",
            get(native::policies).post(native::add_policy),
        )
        .route(
            "/",
            get(edgelake::command_get)
                .post(edgelake::command_post)
                .put(put::put_data),
        )
        .fallback(|| async {
            ApiError::new(Code::NotFound, "no such endpoint; see GET /v1/status")
        })
        .with_state(state)
}

/// Runs blocking work (SQLite) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let what = crate::error::log_internal("a blocking task", e);
        ApiError::new(Code::Internal, format!("{what} failed; see the node's log"))
    })?
}
