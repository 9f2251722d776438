//! Request bodies: read up to the node's limit, each holding its share of
//! the node's in-flight budget, so that many large requests at once queue
//! instead of exhausting memory.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::error::Code;

/// How much body the node takes.
#[derive(Clone)]
pub struct BodyLimits {
    /// Largest body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Bodies in memory at once, in KiB.
    pub inflight: Arc<Semaphore>,
}

impl BodyLimits {
    pub fn new(max_body_bytes: usize, max_inflight_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_body_bytes,
            inflight: Arc::new(Semaphore::new(max_inflight_bytes.div_ceil(1024))),
        }
    }
}

/// A request body in memory, with its share of the in-flight budget
/// (released when this is dropped).
pub struct Loaded {
    pub bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Loaded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a body up to the node's limit (a larger one is a 413), first
/// waiting for room in the in-flight budget.
pub async fn read_body(
    limits: &BodyLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<Loaded, ApiError> {
    let limit = limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            Code::BodyTooLarge,
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
    let permit = limits
        .inflight
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|_| ApiError::new(Code::Internal, "the node is stopping"))?;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    Ok(Loaded {
        bytes,
        _permit: permit,
    })
}
