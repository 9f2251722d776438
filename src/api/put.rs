//! EdgeLake's data `PUT /`: headers `type: json`, `dbms`, `table`, `mode`
//! (`streaming` or `file`), optionally `consistency: cluster`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::auth::{Principal, Role, check};
use super::body::read_body;
use super::{ApiError, AppState};
use crate::error::Code;
use crate::ingest::{Consistency, IngestRequest, Ingested, Mode};

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

pub(super) async fn put_data(
    State(s): State<AppState>,
    user: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // EdgeLake also takes a command by PUT: its own test suite sends
    // `flush buffers` that way (a `command` header and no `dbms`).
    if header_str(&headers, "command").is_some() && header_str(&headers, "dbms").is_none() {
        return super::edgelake::command_post(State(s), user, headers, body).await;
    }
    match put(s, user.as_deref(), headers, body).await {
        Ok(r) => r,
        // Both shapes, so native clients and EdgeLake scripts can read it.
        Err(e) => (
            e.status,
            Json(json!({
                "error": {"code": e.code, "message": e.message},
                "AnyLog.status": "Failed",
                "err_text": e.message,
            })),
        )
            .into_response(),
    }
}

/// The request the headers describe (the body not read yet).
fn request(headers: &HeaderMap) -> Result<IngestRequest, ApiError> {
    let need = |name: &str| {
        header_str(headers, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::new(
                    Code::MissingHeader,
                    format!("the PUT needs a '{name}' header"),
                )
            })
    };
    let ty = header_str(headers, "type").unwrap_or("json");
    if !ty.eq_ignore_ascii_case("json") {
        return Err(ApiError::new(
            Code::UnsupportedType,
            format!("type {ty:?} is not supported; send type: json"),
        ));
    }
    let db = need("dbms")?;
    let table = need("table")?;
    let mode = match header_str(headers, "mode")
        .unwrap_or("streaming")
        .to_ascii_lowercase()
        .as_str()
    {
        "streaming" => Mode::Streaming,
        "file" => Mode::Batch,
        other => {
            return Err(ApiError::new(
                Code::BadMode,
                format!("mode {other:?} is not supported; use streaming or file"),
            ));
        }
    };
    let source = header_str(headers, "source").unwrap_or("rest");
    Ok(IngestRequest {
        instructions: header_str(headers, "instructions").unwrap_or("").to_owned(),
        mode,
        consistency: Consistency::parse(header_str(headers, "consistency"))?,
        ..IngestRequest::batch(&db, &table, Default::default(), source)
    })
}

async fn put(
    s: AppState,
    user: Option<&Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut req = request(&headers)?;
    check(user, Role::Writer, Some(&req.db))?;
    let body = read_body(&s.body, &headers, body).await?;
    req.body = body.bytes.clone();
    let out = match s.ingest.ingest(req).await? {
        Ingested::Queued(a) => json!({"AnyLog.status": "Success", "AnyLog.hash": a.hash}),
        Ingested::Buffered { .. } => json!({"AnyLog.status": "Success", "AnyLog.hash": "0"}),
        Ingested::Stored { hash, replicas, .. } => {
            let mut out = json!({"AnyLog.status": "Success", "AnyLog.hash": hash});
            if let Some(r) = replicas {
                out["replicas"] = json!(r);
            }
            out
        }
    };
    drop(body);
    Ok(Json(out).into_response())
}
