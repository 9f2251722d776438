//! tarn's native REST API under `/v1`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Principal, Role, check};
use super::body::{BodyLimits, read_body};
use super::{ApiError, AppState, blocking, format};
use crate::config::Service;
use crate::error::Code;
use crate::exec::{QueryRequest, Scope};
use crate::ingest::{Consistency, IngestRequest, Ingested};
use crate::mesh::Mesh;

pub(super) async fn status(State(s): State<AppState>) -> Response {
    let (store, streams) = (s.store.clone(), s.streams.clone());
    let (dbs, pending, (error_files, error_rows)) = tokio::task::spawn_blocking(move || {
        (store.databases(), streams.pending(), streams.errors())
    })
    .await
    .unwrap_or_default();
    let info = &s.info;
    Json(json!({
        "name": info.name,
        "version": env!("CARGO_PKG_VERSION"),
        "status": "running",
        "services": info.services,
        "rest": info.rest.to_string(),
        "tls": info.tls,
        "auth": s.auth.is_some(),
        "data_dir": info.data_dir.display().to_string(),
        "durability": info.durability,
        "uptime_s": info.started.elapsed().as_secs(),
        "databases": dbs,
        "buffered_rows": pending.iter().map(|(_, _, n)| n).sum::<usize>(),
        "stream_errors": {"files": error_files, "rows": error_rows},
        "peer_id": s.mesh.peer_id().to_string(),
        "listen": s.mesh.full_listen_addrs(),
        "peers": s.mesh.connected_count(),
        "network": s.mesh.network().map_or_else(
            || "open".to_owned(),
            |n| tarn_ledger::member::peer_id_of(&n),
        ),
        "admitted": s.mesh.admitted(),
        "cluster": info.cluster,
        "publisher_queue": s.publisher.as_ref().map(|p| {
            let (batches, bytes) = p.pending();
            json!({"batches": batches, "bytes": bytes})
        }),
    }))
    .into_response()
}

pub(super) async fn post_data(
    State(limits): State<BodyLimits>,
    State(ingest): State<Arc<crate::ingest::Ingest>>,
    user: Option<Extension<Principal>>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((db, table)) =
        path.map_err(|e| ApiError::new(Code::MalformedRequest, e.body_text()))?;
    check(user.as_deref(), Role::Writer, Some(&db))?;
    let consistency = Consistency::parse(param(q.as_deref(), "consistency")?.as_deref())?;
    let source = headers
        .get("x-tarn-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("rest")
        .to_owned();
    let body = read_body(&limits, &headers, body).await?;
    let req = IngestRequest {
        consistency,
        ..IngestRequest::batch(&db, &table, body.bytes.clone(), &source)
    };
    let out = match ingest.ingest(req).await? {
        Ingested::Queued(a) => json!({"rows": a.rows, "queued": a.seq, "hash": a.hash}),
        Ingested::Stored {
            written, replicas, ..
        } => {
            let mut out = json!({
                "rows": written.rows,
                "batch": written.tsd_id.to_string(),
                "duplicate": written.duplicate,
            });
            if let Some(r) = replicas {
                out["replicas"] = json!(r);
            }
            out
        }
        Ingested::Buffered { rows } => json!({"rows": rows}),
    };
    drop(body);
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    db: String,
    sql: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    subset: Option<bool>,
}

pub(super) async fn query(
    State(s): State<AppState>,
    user: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&s.body, &headers, body).await?;
    let req: QueryBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            Code::MalformedRequest,
            format!("expected {{\"db\", \"sql\", ...}}: {e}"),
        )
    })?;
    check(user.as_deref(), Role::Reader, Some(&req.db))?;
    drop(body);
    let scope = match req.scope.as_deref() {
        None if s.info.runs(Service::Query) => Scope::Network,
        None | Some("local") => Scope::Local,
        Some("network") => Scope::Network,
        Some(other) => {
            return Err(ApiError::new(
                Code::MalformedRequest,
                format!("scope must be \"local\" or \"network\", not {other:?}"),
            ));
        }
    };
    let a = s
        .exec
        .run(QueryRequest {
            timeout: req.timeout_ms.map(Duration::from_millis),
            subset: req.subset.unwrap_or(false),
            ..QueryRequest::new(&req.db, &req.sql, scope)
        })
        .await?;
    Ok(Json(json!({
        "columns": a.result.columns,
        "rows": format::native_rows(&a.result),
        "stats": {
            "nodes": a.stats.asked,
            "replied": a.stats.replied,
            "rows": a.stats.rows,
            "ms": a.stats.ms,
        },
        "errors": a.errors,
    }))
    .into_response())
}

pub(super) async fn tables(State(s): State<AppState>) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for db in store.databases() {
            for t in store.tables(&db)? {
                let cols = store.columns(&db, &t).unwrap_or_default();
                out.push(json!({
                    "db": db,
                    "table": t,
                    "columns": cols.iter().map(|(c, ty)| json!({"name": c, "type": ty.name()})).collect::<Vec<_>>(),
                }));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(list).into_response())
}

/// `POST /v1/streams/replay`: writes again the streamed rows kept in
/// `stream/error/` (once what kept them there is fixed).
pub(super) async fn replay_streams(State(s): State<AppState>) -> Result<Response, ApiError> {
    let streams = s.streams.clone();
    let (stored, left) = blocking(move || Ok(streams.replay_errors())).await?;
    Ok(Json(json!({"stored_rows": stored, "rows_left": left})).into_response())
}

/// `GET /v1/clusters[?verify=true]`: members, liveness, batches, lag.
pub(super) async fn clusters(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let verify = match param(q.as_deref(), "verify")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::new(
                Code::MalformedRequest,
                format!("verify must be true or false, not {v:?}"),
            ));
        }
    };
    let report = crate::cluster::replication::report(&s.mesh, Some(&s.store), verify).await;
    Ok(Json(report).into_response())
}

/// One parameter of a query string, percent-decoded; unknown parameters
/// are refused.
pub(super) fn param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if k != name {
            return Err(ApiError::new(
                Code::MalformedRequest,
                format!("unknown parameter {k:?}; this endpoint takes {name:?}"),
            ));
        }
        found = Some(v);
    }
    Ok(found)
}

/// `%XX` escapes and `+` (a space) of a query string, decoded.
fn decode(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            Code::MalformedRequest,
            format!("{s:?} is not a valid query string part"),
        )
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `GET /v1/nodes`: every node the ledger knows, by PeerId, with liveness.
pub(super) async fn nodes(State(mesh): State<Arc<Mesh>>) -> Response {
    Json(crate::cluster::membership::nodes(&mesh).await).into_response()
}

/// A policy as EdgeLake shows it, with tarn's envelope fields inside.
pub(super) fn policy_json(p: &tarn_ledger::PolicyRecord) -> serde_json::Value {
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
pub(super) async fn policies(
    State(mesh): State<Arc<Mesh>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let kind = param(q.as_deref(), "type")?;
    let list: Vec<serde_json::Value> = mesh.with_view(|view| {
        view.policies()
            .filter(|p| kind.as_deref().is_none_or(|k| p.kind == k))
            .map(policy_json)
            .collect()
    });
    Ok(Json(list).into_response())
}

/// `POST /v1/policies`: one policy in EdgeLake's JSON form; the node signs
/// and publishes it.
pub(super) async fn add_policy(
    State(limits): State<BodyLimits>,
    State(mesh): State<Arc<Mesh>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&limits, &headers, body).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(Code::MalformedJson, "the policy is not UTF-8"))?;
    let policy = tarn_ledger::policy::Policy::parse(text)
        .map_err(|e| ApiError::new(Code::InvalidPolicy, e.to_string()))?;
    let duplicate = mesh.with_view(|v| v.get(&policy.id()).is_some());
    if !duplicate {
        mesh.publish_for_client(&policy).await?;
    }
    Ok(Json(json!({"id": policy.id(), "duplicate": duplicate})).into_response())
}
