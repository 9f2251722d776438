//! Why a query has no answer.

use crate::error::{Code, Coded, log_internal};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// This node's store refused or failed the statement.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not a valid tarn SELECT.
    #[error("{0}")]
    InvalidSql(String),
    /// Valid SQL that cannot run over the network.
    #[error("{0}")]
    Unsupported(String),
    /// No operator holds the table.
    #[error("{0}")]
    UnknownTable(String),
    #[error("this node stores no data (it does not run the operator service)")]
    NoOperator,
    #[error("this node does not run the query service")]
    NoQuery,
    /// Some clusters had no member that answered.
    #[error("no operator answered for: {0}; add subset=true to answer from the others")]
    NodesUnavailable(String),
    /// The operators' partial results exceed what the node keeps in memory.
    #[error(
        "the operators' partial results exceed {0} rows (the node's limit); add a LIMIT or aggregate"
    )]
    TooLarge(usize),
    /// ... or exceed the bytes it keeps in memory.
    #[error(
        "the operators' partial results hold more than {0} bytes (the node's limit); add a LIMIT or aggregate"
    )]
    TooManyBytes(usize),
    /// An operator refused the query in a way every member would.
    #[error("{peer}: {message}")]
    Peer {
        peer: String,
        code: Code,
        message: String,
    },
    #[error("too many queries in progress on this node")]
    Busy,
    /// A failure of the node itself; the detail went to the log.
    #[error("{0} failed; see the node's log")]
    Internal(&'static str),
}

impl ExecError {
    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> ExecError {
        ExecError::Internal(log_internal(context, detail))
    }
}

impl From<tarn_query::PlanError> for ExecError {
    fn from(e: tarn_query::PlanError) -> ExecError {
        match e {
            tarn_query::PlanError::Unsupported(_) => ExecError::Unsupported(e.to_string()),
            other => ExecError::InvalidSql(other.to_string()),
        }
    }
}

impl From<tarn_query::SqlError> for ExecError {
    fn from(e: tarn_query::SqlError) -> ExecError {
        ExecError::InvalidSql(e.to_string())
    }
}

impl Coded for ExecError {
    fn code(&self) -> Code {
        match self {
            ExecError::Store(e) => e.code(),
            ExecError::InvalidSql(_) => Code::InvalidSql,
            ExecError::Unsupported(_) => Code::UnsupportedQuery,
            ExecError::UnknownTable(_) => Code::UnknownTable,
            ExecError::NoOperator => Code::NoOperator,
            ExecError::NoQuery => Code::NoQuery,
            ExecError::NodesUnavailable(_) => Code::NodesUnavailable,
            ExecError::TooLarge(_) | ExecError::TooManyBytes(_) => Code::ResultTooLarge,
            ExecError::Peer { code, .. } => *code,
            ExecError::Busy => Code::Busy,
            ExecError::Internal(_) => Code::Internal,
        }
    }
}
