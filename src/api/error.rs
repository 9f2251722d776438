//! Errors as clients see them: the stable code of the layer's error, its
//! message, and the HTTP status this layer — alone — gives each code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{Code, Coded};

/// An error a client can act on: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
}

/// The status each code travels with.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::UnknownDatabase | Code::UnknownTable | Code::NotFound => StatusCode::NOT_FOUND,
        Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::NotAdmitted | Code::Forbidden => StatusCode::FORBIDDEN,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        Code::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        Code::ResultTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
        Code::NodesUnavailable => StatusCode::BAD_GATEWAY,
        Code::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Code::QueueFull => StatusCode::INSUFFICIENT_STORAGE,
        Code::Internal | Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status_of(code),
            code,
            message: message.into(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

// Any layer's error becomes an API error by its code. (`ApiError` itself
// is not `Coded`, so this does not overlap `From<T> for T`.)
impl<E: Coded> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
