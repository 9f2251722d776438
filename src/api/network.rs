//! A closed network's membership over REST: the members, an author's head
//! (what a signer elsewhere needs to extend its chain), and entries signed
//! elsewhere (`tarn admit`, `tarn revoke`) handed in for the ledger.
//!
//! Taking entries from anyone who reaches the port is safe: an entry counts
//! only if its signature verifies and its author is admitted.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tarn_ledger::AppendError;
use tarn_ledger::member::{author_of_peer_id, peer_id_of};

use super::ApiError;
use super::body::{BodyLimits, read_body};
use super::native::param;
use crate::error::Code;
use crate::mesh::Mesh;

/// `GET /v1/members`: who the closed network admits (empty when open).
pub(super) async fn members(State(mesh): State<Arc<Mesh>>) -> Response {
    let list: Vec<serde_json::Value> = mesh.with_view(|v| {
        v.members()
            .map(|m| {
                json!({
                    "peer": m.peer,
                    "services": m.services,
                    "cluster": m.cluster,
                    "admin": m.admin,
                    "id": m.id,
                    "admitted_by": peer_id_of(&m.by),
                })
            })
            .collect()
    });
    Json(json!({
        "network": mesh.network().map_or_else(|| "open".to_owned(), |n| peer_id_of(&n)),
        "members": list,
    }))
    .into_response()
}

/// `GET /v1/ledger/head?author=<peer-id>`: that author's last entry here.
pub(super) async fn head(
    State(mesh): State<Arc<Mesh>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let author = param(q.as_deref(), "author")?
        .ok_or_else(|| ApiError::new(Code::MissingHeader, "author=<peer-id> is needed"))?;
    let author = author_of_peer_id(&author).ok_or_else(|| {
        ApiError::new(
            Code::MalformedRequest,
            format!("{author:?} is not an ed25519 PeerId"),
        )
    })?;
    let (seq, hash, lamport) = mesh.head_of(&author);
    let hex = hash.map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>());
    Ok(Json(json!({"seq": seq, "hash": hex, "lamport": lamport})).into_response())
}

/// `POST /v1/ledger/entries`: one signed entry (its CBOR bytes).
pub(super) async fn submit(
    State(limits): State<BodyLimits>,
    State(mesh): State<Arc<Mesh>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&limits, &headers, body).await?;
    let e = tarn_ledger::Entry::verify_bytes(&body)
        .map_err(|e| ApiError::new(Code::InvalidPolicy, format!("the entry is refused: {e}")))?;
    let (author, seq) = (e.entry().author, e.entry().seq);
    match mesh.submit(e).await {
        Ok(()) => Ok(Json(json!({"author": peer_id_of(&author), "seq": seq})).into_response()),
        Err(AppendError::NotAdmitted(_)) => Err(ApiError::new(
            Code::NotAdmitted,
            format!(
                "{} is not an admin or member of this network",
                peer_id_of(&author)
            ),
        )),
        Err(e @ AppendError::Quota(_)) => Err(ApiError::new(Code::QuotaExceeded, e.to_string())),
        Err(e @ (AppendError::Gap { .. } | AppendError::Conflict { .. })) => Err(ApiError::new(
            Code::InvalidPolicy,
            format!("{e}; fetch the head again and sign anew"),
        )),
        Err(e) => Err(ApiError::new(Code::Internal, e.to_string())),
    }
}

/// `GET /v1/audit[?limit=N]`: the newest rows of the audit log (100 unless
/// told, at most 10,000), newest first. All of it is `almgm.audit`.
pub(super) async fn audit(
    State(store): State<Arc<crate::store::Storage>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let limit = match param(q.as_deref(), "limit")? {
        None => 100,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                ApiError::new(Code::MalformedRequest, "limit is a number from 1 to 10000")
            })?,
    };
    let rows = super::blocking(move || store.audit_recent(limit).map_err(ApiError::from)).await?;
    Ok(Json(json!({"columns": crate::store::AUDIT_COLUMNS, "rows": rows})).into_response())
}
