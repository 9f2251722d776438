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
//! - [`tls`]: HTTPS, certificates and keys as a rustls configuration
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

pub mod auth;
mod body;
mod edgelake;
mod error;
pub mod format;
mod native;
mod network;
mod put;
mod serve;
pub mod tls;

pub use body::BodyLimits;
pub use error::{ApiError, status_of};
pub use serve::serve;

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
    /// REST is served over TLS.
    pub tls: bool,
    /// The watched directory, when the node loads files from one.
    pub watch_dir: Option<PathBuf>,
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
    /// REST authentication (`None`: off).
    pub auth: Option<Arc<auth::Auth>>,
    /// Where changes and refusals are recorded.
    pub audit: crate::audit::Sink,
    /// Message clients (`run msg client`) and the node's MQTT broker.
    pub msg: Arc<crate::ingest::mqtt::MsgClients>,
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

impl FromRef<AppState> for Arc<crate::store::Storage> {
    fn from_ref(s: &AppState) -> Self {
        s.store.clone()
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
        .route("/v1/streams/replay", post(native::replay_streams))
        .route("/v1/members", get(network::members))
        .route("/v1/audit", get(network::audit))
        .route("/v1/ledger/head", get(network::head))
        .route("/v1/ledger/entries", post(network::submit))
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
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "this endpoint does not take that method; see the README's REST API",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One debug line per request: method, path, status and time (refusals by
/// the authentication layer included).
async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(req).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    tracing::debug!(
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        ms = started.elapsed().as_micros() as f64 / 1e3,
        "request"
    );
    res
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use crate::{Config, Node};

    /// A node in this process, on an injected listener; its router is
    /// driven without sockets.
    async fn node(dir: &std::path::Path) -> Node {
        let mut cfg = Config {
            data_dir: dir.to_owned(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            mdns: false,
            max_body_bytes: 4096,
            ..Default::default()
        };
        cfg.max_inflight_bytes = 1 << 20;
        cfg.watch.enabled = false;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Node::builder(cfg)
            .rest_listener(listener)
            .start()
            .await
            .unwrap()
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn count(app: &axum::Router) -> serde_json::Value {
        let q = r#"{"db": "lab", "sql": "select count(*) from t", "scope": "local"}"#;
        let (status, body) = call(app, "POST", "/v1/query", &[], q).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        json(&body)["rows"][0][0].clone()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn native_endpoints_answer_and_refuse_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path()).await;
        let app = node.router();
        let (status, body) = call(&app, "GET", "/v1/status", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["status"], "running");
        let rows = r#"[{"a": 1, "ts": "2024-01-01T00:00:00Z"}, {"a": 2}]"#;
        let (status, body) = call(&app, "POST", "/v1/data/lab/t", &[], rows).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(json(&body)["duplicate"], false);
        let (_, body) = call(&app, "POST", "/v1/data/lab/t", &[], rows).await;
        assert_eq!(json(&body)["duplicate"], true);
        for (uri, body, status, code) in [
            ("/v1/data/lab/t", "{not json", 400, "malformed_json"),
            ("/v1/data/lab/t", r#"{"a": "text"}"#, 400, "type_mismatch"),
            (
                "/v1/data/lab/t?consistency=maybe",
                r#"{"a": 3}"#,
                400,
                "bad_consistency",
            ),
            ("/v1/data/almgm/t", r#"{"a": 3}"#, 400, "invalid_name"),
            ("/v1/data/lab/t", &"x".repeat(5000), 413, "body_too_large"),
            (
                "/v1/query",
                r#"{"db": "lab", "sql": "DELETE FROM t"}"#,
                400,
                "invalid_sql",
            ),
            (
                "/v1/query",
                r#"{"db": "nope", "sql": "select 1 from t", "scope": "local"}"#,
                404,
                "unknown_database",
            ),
            ("/v1/nowhere", "", 404, "not_found"),
        ] {
            let (got, text) = call(&app, "POST", uri, &[], body).await;
            assert_eq!(got.as_u16(), status, "{uri}: {text}");
            assert_eq!(json(&text)["error"]["code"], code, "{uri}: {text}");
        }
        assert_eq!(count(&app).await, 2, "refused writes changed nothing");
        let (_, body) = call(&app, "GET", "/v1/tables", &[], "").await;
        let tables = json(&body);
        assert!(tables.as_array().unwrap().iter().any(|t| t["table"] == "t"));
        drop(app);
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn edgelake_commands_and_put() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path()).await;
        let app = node.router();
        let put = [
            ("type", "json"),
            ("dbms", "lab"),
            ("table", "t"),
            ("mode", "streaming"),
        ];
        for v in 1..=3 {
            let (status, body) = call(&app, "PUT", "/", &put, &format!(r#"{{"a": {v}}}"#)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(json(&body)["AnyLog.status"], "Success");
        }
        let (_, body) = call(&app, "GET", "/", &[("command", "flush buffers")], "").await;
        assert_eq!(body, "");
        assert_eq!(count(&app).await, 3);
        let sql = r#"sql lab format=json and stat=false "select a from t order by a""#;
        let (_, body) = call(&app, "GET", "/", &[("command", sql)], "").await;
        assert_eq!(body, r#"{"Query":[{"a":1},{"a":2},{"a":3}]}"#);
        let (_, body) = call(&app, "POST", "/", &[], r#"{"command": "get status"}"#).await;
        assert!(body.ends_with(" running") && !body.contains('\''), "{body}");
        let bad = "blockchain\u{2003}\u{2003}get operator bring.count";
        let (status, body) =
            call(&app, "POST", "/", &[], &json!({"command": bad}).to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "1");
        let (status, body) = call(&app, "GET", "/", &[("command", "frobnicate")], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json(&body)["err_code"].as_i64().unwrap() > 0);
        let (status, body) = call(&app, "PUT", "/", &put[..2], r#"{"a": 1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json(&body)["AnyLog.status"], "Failed");
        drop(app);
        node.shutdown().await.unwrap();
    }

    use serde_json::json;
}
