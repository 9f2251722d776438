//! The REST API: tarn's native `/v1` and EdgeLake's command protocol on `/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::edgelake::{self, Reply};
use crate::error::ApiError;
use crate::node::Shared;
use crate::rows::parse_body;
use crate::storage::BatchMeta;

type AppState = Arc<Shared>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/data/{db}/{table}", post(post_data))
        .route("/v1/query", post(query))
        .route("/v1/tables", get(tables))
        .route("/v1/nodes", get(nodes))
        .route("/v1/clusters", get(clusters))
        .route("/v1/policies", get(policies).post(add_policy))
        .route("/", get(command_get).post(command_post).put(put_data))
        .fallback(|| async {
            ApiError::not_found("not_found", "no such endpoint; see GET /v1/status")
        })
        .with_state(shared)
}

/// A request body in memory, with its share of the node's in-flight budget
/// (released when this is dropped).
struct Loaded {
    bytes: Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Loaded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a body up to the node's limit (a larger one is a 413), first
/// waiting for room in the in-flight budget, so that many large requests at
/// once queue instead of exhausting memory.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Loaded, ApiError> {
    let limit = shared.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than this node's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let kib = declared.unwrap_or(limit).div_ceil(1024).max(1) as u32;
    let permit = shared
        .inflight
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|e| ApiError::internal("waiting for memory", e))?;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    Ok(Loaded {
        bytes,
        _permit: permit,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("a blocking task", e))?
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

async fn status(State(s): State<AppState>) -> Response {
    let shared = s.clone();
    let (dbs, pending) =
        tokio::task::spawn_blocking(move || (shared.storage.databases(), shared.streams.pending()))
            .await
            .unwrap_or_default();
    axum::Json(serde_json::json!({
        "name": s.cfg.name,
        "version": env!("CARGO_PKG_VERSION"),
        "status": "running",
        "services": s.cfg.services,
        "rest": s.rest_addr.to_string(),
        "data_dir": s.cfg.data_dir.display().to_string(),
        "durability": s.storage.durability(),
        "uptime_s": s.started.elapsed().as_secs(),
        "databases": dbs,
        "buffered_rows": pending.iter().map(|(_, _, n)| n).sum::<usize>(),
        "peer_id": s.mesh.peer_id().to_string(),
        "listen": s.mesh.full_listen_addrs(),
        "peers": s.mesh.peers.lock().expect("lock poisoned").values().filter(|p| p.connected).count(),
        "cluster": s.cfg.cluster,
        "publisher_queue": s.publisher.as_ref().map(|p| {
            let (batches, bytes) = p.pending();
            serde_json::json!({"batches": batches, "bytes": bytes})
        }),
    }))
    .into_response()
}

async fn post_data(
    State(s): State<AppState>,
    Path((db, table)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let cluster = crate::replicate::wants_cluster(param(q.as_deref(), "consistency")?.as_deref())?;
    let source = headers
        .get("x-tarn-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("rest")
        .to_owned();
    if let Some(p) = publisher_only(&s) {
        let body = read_body(&s, &headers, body).await?;
        let a = blocking(move || p.accept(&db, &table, &source, &body)).await?;
        return Ok(axum::Json(serde_json::json!({
            "rows": a.rows,
            "queued": a.seq,
            "hash": a.hash,
        }))
        .into_response());
    }
    s.require_operator()?;
    let body = read_body(&s, &headers, body).await?;
    let sh = s.clone();
    let db2 = db.clone();
    let w = blocking(move || {
        let rows = parse_body(&body)?;
        let meta = BatchMeta {
            source,
            hash: batch_hash(&db2, &table, &body),
            instructions: String::new(),
        };
        sh.storage.write(&db2, &table, rows, &meta)
    })
    .await?;
    let mut out = serde_json::json!({
        "rows": w.rows,
        "batch": w.tsd_id.to_string(),
        "duplicate": w.duplicate,
    });
    if cluster {
        out["replicas"] = crate::replicate::confirm(&s, &db, &w).await?;
    }
    Ok(axum::Json(out).into_response())
}

/// The publisher's queue, when this node publishes and stores nothing itself.
fn publisher_only(s: &AppState) -> Option<Arc<crate::publish::Publisher>> {
    if s.cfg.has(crate::Service::Operator) {
        return None;
    }
    s.publisher.clone()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    db: String,
    sql: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    subset: Option<bool>,
}

async fn query(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&s, &headers, body).await?;
    let req: QueryRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed_request",
            format!("expected {{\"db\", \"sql\", ...}}: {e}"),
        )
    })?;
    let network = match req.scope.as_deref() {
        None => s.cfg.has(crate::Service::Query),
        Some("network") => true,
        Some("local") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "malformed_request",
                format!("scope must be \"local\" or \"network\", not {other:?}"),
            ));
        }
    };
    let started = Instant::now();
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let (result, stats, errors) = if network {
        let opts = crate::scatter::Options::for_node(&s, timeout, req.subset.unwrap_or(false));
        let a = crate::scatter::run(&s, &req.db, &req.sql, opts).await?;
        let stats = serde_json::json!({
            "nodes": a.stats.asked,
            "replied": a.stats.replied,
            "rows": a.stats.rows,
            "ms": a.stats.ms,
        });
        (
            a.result,
            stats,
            serde_json::to_value(&a.errors).unwrap_or_default(),
        )
    } else {
        let shared = s.clone();
        let r = blocking(move || shared.local_query(&req.db, &req.sql, timeout)).await?;
        let stats = serde_json::json!({"nodes": 1, "replied": 1, "rows": r.rows.len(), "ms": started.elapsed().as_secs_f64() * 1000.0});
        (r, stats, serde_json::json!([]))
    };
    Ok(axum::Json(serde_json::json!({
        "columns": result.columns,
        "rows": crate::format::native_rows(&result),
        "stats": stats,
        "errors": errors,
    }))
    .into_response())
}

async fn tables(State(s): State<AppState>) -> Result<Response, ApiError> {
    let shared = s.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for db in shared.storage.databases() {
            for t in shared.storage.tables(&db)? {
                let cols = shared.storage.columns(&db, &t).unwrap_or_default();
                out.push(serde_json::json!({
                    "db": db,
                    "table": t,
                    "columns": cols.iter().map(|(c, ty)| serde_json::json!({"name": c, "type": ty.name()})).collect::<Vec<_>>(),
                }));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(axum::Json(list).into_response())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn command_get(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Some(cmd) = header_str(&headers, "command").map(str::to_owned) else {
        return edgelake_reply(
            &s,
            "get",
            Reply::Error {
                code: edgelake::code::COMMAND,
                text: "missing the 'command' header".into(),
            },
        );
    };
    let dest = header_str(&headers, "destination").map(str::to_owned);
    run_command(s, "get", cmd, dest, Vec::new()).await
}

#[derive(Deserialize)]
struct CommandBody {
    command: String,
    #[serde(default)]
    destination: Option<String>,
}

async fn command_post(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&s, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (cmd, dest, payload) = match header_str(&headers, "command") {
        Some(c) => (
            c.to_owned(),
            header_str(&headers, "destination").map(str::to_owned),
            body.to_vec(),
        ),
        None => match serde_json::from_slice::<CommandBody>(&body) {
            Ok(b) => (b.command, b.destination, Vec::new()),
            Err(_) => {
                return edgelake_reply(
                    &s,
                    "post",
                    Reply::Error {
                        code: edgelake::code::COMMAND,
                        text: "expected a 'command' header or a JSON body {\"command\": ...}"
                            .into(),
                    },
                );
            }
        },
    };
    run_command(s, "post", cmd, dest, payload).await
}

async fn run_command(
    s: AppState,
    method: &'static str,
    cmd: String,
    dest: Option<String>,
    body: Vec<u8>,
) -> Response {
    let shared = s.clone();
    let reply =
        tokio::task::spawn_blocking(move || edgelake::run(&shared, &cmd, dest.as_deref(), &body))
            .await
            .unwrap_or_else(|e| Reply::Error {
                code: edgelake::code::INTERNAL,
                text: format!("the command failed: {e}"),
            });
    edgelake_reply(&s, method, reply)
}

fn edgelake_reply(s: &Shared, method: &str, reply: Reply) -> Response {
    match reply {
        Reply::Json(j) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
        Reply::Text(t) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], t).into_response()
        }
        // EdgeLake answers errors with 200 and a body clients check for `err_code`.
        Reply::Error { code, text } => axum::Json(serde_json::json!({
            "method": method,
            "node": s.rest_addr.ip().to_string(),
            "err_code": code,
            "err_text": text,
        }))
        .into_response(),
    }
}

/// EdgeLake's data PUT: headers `type: json`, `dbms`, `table`, `mode`.
async fn put_data(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match put_inner(s, headers, body).await {
        Ok(r) => r,
        // Both shapes, so native clients and EdgeLake scripts can read it.
        Err(e) => (
            e.status,
            axum::Json(serde_json::json!({
                "error": {"code": e.code, "message": e.message},
                "AnyLog.status": "Failed",
                "err_text": e.message,
            })),
        )
            .into_response(),
    }
}

async fn put_inner(s: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let publisher = publisher_only(&s);
    if publisher.is_none() {
        s.require_operator()?;
    }
    let need = |name: &str| {
        header_str(&headers, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::bad_request("missing_header", format!("the PUT needs a '{name}' header"))
            })
    };
    let ty = header_str(&headers, "type").unwrap_or("json");
    if !ty.eq_ignore_ascii_case("json") {
        return Err(ApiError::bad_request(
            "unsupported_type",
            format!("type {ty:?} is not supported; send type: json"),
        ));
    }
    let db = need("dbms")?;
    let table = need("table")?;
    let mode = header_str(&headers, "mode")
        .unwrap_or("streaming")
        .to_ascii_lowercase();
    let cluster = crate::replicate::wants_cluster(header_str(&headers, "consistency"))?;
    let source = header_str(&headers, "source").unwrap_or("rest").to_owned();
    let instructions = header_str(&headers, "instructions")
        .unwrap_or("")
        .to_owned();
    if mode != "streaming" && mode != "file" {
        return Err(ApiError::bad_request(
            "bad_mode",
            format!("mode {mode:?} is not supported; use streaming or file"),
        ));
    }
    let body = read_body(&s, &headers, body).await?;
    let success = |hash: &str| {
        axum::Json(serde_json::json!({"AnyLog.status": "Success", "AnyLog.hash": hash}))
    };
    if let Some(p) = publisher {
        let a = blocking(move || p.accept(&db, &table, &source, &body)).await?;
        return Ok(success(&a.hash).into_response());
    }
    // Streaming rows are acknowledged once journaled here; a write that
    // must reach the cluster first is written as a batch at once.
    if mode == "streaming" && !cluster {
        blocking(move || s.streams.put(&db, &table, &body)).await?;
        return Ok(success("0").into_response());
    }
    let sh = s.clone();
    let db2 = db.clone();
    let (hash, w) = blocking(move || {
        let rows = parse_body(&body)?;
        let hash = batch_hash(&db2, &table, &body);
        let meta = BatchMeta {
            source,
            hash: hash.clone(),
            instructions,
        };
        let w = sh.storage.write(&db2, &table, rows, &meta)?;
        Ok((hash, w))
    })
    .await?;
    let mut out = success(&hash).0;
    if cluster {
        out["replicas"] = crate::replicate::confirm(&s, &db, &w).await?;
    }
    Ok(axum::Json(out).into_response())
}

/// `GET /v1/clusters[?verify=true]`: members, liveness, batches, lag.
async fn clusters(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let verify = match param(q.as_deref(), "verify")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::bad_request(
                "malformed_request",
                format!("verify must be true or false, not {v:?}"),
            ));
        }
    };
    Ok(axum::Json(crate::replicate::report(&s, verify).await).into_response())
}

/// One parameter of a query string; unknown parameters are refused.
fn param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            return Err(ApiError::bad_request(
                "malformed_request",
                format!("unknown parameter {k:?}; this endpoint takes {name:?}"),
            ));
        }
        found = Some(v.to_owned());
    }
    Ok(found)
}

/// `GET /v1/nodes`: every node the ledger knows, by PeerId, with liveness.
async fn nodes(State(s): State<AppState>) -> Result<Response, ApiError> {
    Ok(axum::Json(crate::mesh::node_list(&s).await).into_response())
}

#[derive(Deserialize)]
struct PolicyQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A policy as EdgeLake shows it, with tarn's envelope fields inside.
pub(crate) fn policy_json(p: &tarn_ledger::PolicyRecord) -> serde_json::Value {
    let mut v = p.policy.clone();
    if let Some(body) = v.get_mut(&p.kind).and_then(|b| b.as_object_mut()) {
        body.insert("id".into(), p.id.clone().into());
        if let Some(peer) = crate::mesh::peer_of(&p.author) {
            body.insert("author".into(), peer.to_string().into());
        }
        body.insert(
            "date".into(),
            tarn_query::time::format_iso(p.time_ms as i64 * 1000).into(),
        );
    }
    v
}

/// `GET /v1/policies[?type=T]`.
async fn policies(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<PolicyQuery>,
) -> Response {
    let view = s.mesh.view();
    let list: Vec<serde_json::Value> = view
        .policies()
        .filter(|p| q.kind.as_deref().is_none_or(|k| p.kind == k))
        .map(policy_json)
        .collect();
    axum::Json(list).into_response()
}

/// `POST /v1/policies`: one policy in EdgeLake's JSON form; the node signs
/// and publishes it.
async fn add_policy(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&s, &headers, body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("malformed_json", "the policy is not UTF-8"))?;
    let policy = tarn_ledger::policy::Policy::parse(text)
        .map_err(|e| ApiError::bad_request("invalid_policy", e.to_string()))?;
    if s.mesh.view().get(&policy.id()).is_some() {
        return Ok(
            axum::Json(serde_json::json!({"id": policy.id(), "duplicate": true})).into_response(),
        );
    }
    s.mesh.publish(&policy, None).await?;
    Ok(axum::Json(serde_json::json!({"id": policy.id(), "duplicate": false})).into_response())
}
