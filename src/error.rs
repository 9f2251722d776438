//! The stable error codes of tarn: what a client of the REST API and a peer
//! on the wire both see (`{"error": {"code": "unknown_table", ...}}`).
//!
//! Every layer has its own error type (`store::StoreError`,
//! `ingest::IngestError`, `exec::ExecError`, `proto::WireError`); each says
//! which [`Code`] it is through [`Coded`]. The API layer alone turns a code
//! into an HTTP status, so nothing below it knows HTTP.
//!
//! Uses nothing else of the crate.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code (`snake_case` on the wire and in
/// REST answers). New codes may be added; a peer's code this version does
/// not know reads as [`Code::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    // The request itself.
    MalformedJson,
    MalformedRequest,
    EmptyBody,
    BodyTooLarge,
    BodyTimeout,
    MissingHeader,
    UnsupportedType,
    BadMode,
    BadConsistency,
    InvalidName,
    InvalidPolicy,
    NotFound,
    MethodNotAllowed,
    // Data.
    TypeMismatch,
    TooManyColumns,
    InvalidBatch,
    UnknownDatabase,
    UnknownTable,
    // Queries.
    InvalidSql,
    SqlError,
    UnsupportedQuery,
    ResultTooLarge,
    Timeout,
    NodesUnavailable,
    NoCursor,
    // The node and its roles.
    NoOperator,
    NoQuery,
    NotAMember,
    NotAdmitted,
    Unauthorized,
    Forbidden,
    QuotaExceeded,
    TooManyBatches,
    QueueFull,
    Busy,
    BadRequest,
    Internal,
    /// A code from a peer that this version does not know.
    #[serde(other)]
    Unknown,
}

impl Code {
    /// The code as it is written on the wire and in REST answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MalformedJson => "malformed_json",
            Code::MalformedRequest => "malformed_request",
            Code::EmptyBody => "empty_body",
            Code::BodyTooLarge => "body_too_large",
            Code::BodyTimeout => "body_timeout",
            Code::MissingHeader => "missing_header",
            Code::UnsupportedType => "unsupported_type",
            Code::BadMode => "bad_mode",
            Code::BadConsistency => "bad_consistency",
            Code::InvalidName => "invalid_name",
            Code::InvalidPolicy => "invalid_policy",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::TypeMismatch => "type_mismatch",
            Code::TooManyColumns => "too_many_columns",
            Code::InvalidBatch => "invalid_batch",
            Code::UnknownDatabase => "unknown_database",
            Code::UnknownTable => "unknown_table",
            Code::InvalidSql => "invalid_sql",
            Code::SqlError => "sql_error",
            Code::UnsupportedQuery => "unsupported_query",
            Code::ResultTooLarge => "result_too_large",
            Code::Timeout => "timeout",
            Code::NodesUnavailable => "nodes_unavailable",
            Code::NoCursor => "no_cursor",
            Code::NoOperator => "no_operator",
            Code::NoQuery => "no_query",
            Code::NotAMember => "not_a_member",
            Code::NotAdmitted => "not_admitted",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::QuotaExceeded => "quota_exceeded",
            Code::TooManyBatches => "too_many_batches",
            Code::QueueFull => "queue_full",
            Code::Busy => "busy",
            Code::BadRequest => "bad_request",
            Code::Internal => "internal",
            Code::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its stable code.
pub trait Coded: std::error::Error {
    fn code(&self) -> Code;
}

/// Logs the detail of a node's own failure (never sent to a client or
/// peer) and returns what may be said about it.
pub(crate) fn log_internal(context: &'static str, detail: impl std::fmt::Display) -> &'static str {
    tracing::error!("{context}: {detail}");
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_kept_apart() {
        for c in [Code::UnknownTable, Code::ResultTooLarge, Code::Internal] {
            let wire = tarn_net::codec::encode(&c, 64).unwrap();
            assert_eq!(tarn_net::codec::decode::<Code>(&wire, 64).unwrap(), c);
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::Value::String(c.as_str().into())
            );
        }
        let future = tarn_net::codec::encode(&"a_code_from_a_newer_peer", 64).unwrap();
        assert_eq!(
            tarn_net::codec::decode::<Code>(&future, 64).unwrap(),
            Code::Unknown
        );
    }
}
