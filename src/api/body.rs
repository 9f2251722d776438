//! Request bodies: read up to the node's limit, each taking its share of
//! the node's in-flight budget as its bytes arrive (a client that sends
//! headers and then nothing holds nothing), and cut when no byte has come
//! for the body timeout. Many large requests at once queue for the budget
//! instead of exhausting memory.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::error::Code;

/// How much body the node takes.
#[derive(Clone)]
pub struct BodyLimits {
    /// Largest body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Bytes of bodies in memory at once.
    pub inflight: Arc<Semaphore>,
    /// Longest a body may go without a byte (and wait for the budget).
    pub timeout: Duration,
}

impl BodyLimits {
    pub fn new(max_body_bytes: usize, max_inflight_bytes: usize, timeout: Duration) -> BodyLimits {
        BodyLimits {
            max_body_bytes,
            inflight: Arc::new(Semaphore::new(
                max_inflight_bytes.min(Semaphore::MAX_PERMITS),
            )),
            timeout,
        }
    }
}

/// A request body in memory, with its share of the in-flight budget
/// (released when this is dropped).
pub struct Loaded {
    pub bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Loaded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a body up to the node's limit (a larger one is a 413).
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
    let secs = limits.timeout.as_secs_f64();
    let stalled = || {
        ApiError::new(
            Code::BodyTimeout,
            format!("no byte of the body came for {secs:.0} s"),
        )
    };
    let mut stream = body.into_data_stream();
    // Grown as bytes arrive, never by what a header claims.
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(64 << 10));
    let mut permit: Option<OwnedSemaphorePermit> = None;
    loop {
        let next = tokio::time::timeout(limits.timeout, stream.next())
            .await
            .map_err(|_| stalled())?;
        let Some(chunk) = next else { break };
        let chunk = chunk
            .map_err(|e| ApiError::new(Code::MalformedRequest, format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        if chunk.is_empty() {
            continue;
        }
        let n = u32::try_from(chunk.len()).map_err(|_| too_large())?;
        let share = tokio::time::timeout(
            limits.timeout,
            limits.inflight.clone().acquire_many_owned(n),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                Code::Busy,
                "the node holds as many request bodies as it may; retry",
            )
        })?
        .map_err(|_| ApiError::new(Code::Internal, "the node is stopping"))?;
        match &mut permit {
            Some(p) => p.merge(share),
            None => permit = Some(share),
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Loaded {
        bytes: Bytes::from(buf),
        _permit: permit,
    })
}
