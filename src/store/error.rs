//! What can go wrong in storage. Each error says which stable
//! [`Code`](crate::error::Code) it is; nothing here knows HTTP.

use crate::error::{Code, Coded, log_internal};

/// A storage error: the batch or query is refused whole and nothing stored
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A database, table or column name tarn does not accept.
    #[error("{0}")]
    InvalidName(String),
    /// A value that does not fit its column, or a new column given mixed types.
    #[error("{0}")]
    TypeMismatch(String),
    /// More columns than a table may have.
    #[error("{0}")]
    TooManyColumns(String),
    #[error("no database named {0:?} on this node")]
    UnknownDatabase(String),
    #[error("{0}")]
    UnknownTable(String),
    /// A replicated batch that fails validation.
    #[error("a replicated batch has an invalid {0}")]
    InvalidBatch(&'static str),
    /// A statement this path cannot run.
    #[error("{0}")]
    InvalidSql(String),
    /// SQLite refused the statement.
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("the query ran past its time limit")]
    Timeout,
    #[error("the result has more than {0} rows (the node's limit); add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// The answer, or one value in it, is larger than the node holds.
    #[error(
        "the result holds more than {0} bytes (the node's limit); add a LIMIT, aggregate, or read less of each value"
    )]
    TooLarge(usize),
    #[error("a value is larger than the node's limit (max_result_bytes); read less of it")]
    ValueTooLarge,
    /// A failure of the node itself. The detail went to the log and is
    /// never shown to a client or a peer.
    #[error("{context} failed; see the node's log")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// A failure of the node: `detail` is logged, never shown.
    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> StoreError {
        let detail = detail.to_string();
        StoreError::Internal {
            context: log_internal(context, &detail),
            detail,
        }
    }

    /// The whole story, for the node's own files (never for a client).
    pub fn detail(&self) -> String {
        match self {
            StoreError::Internal { context, detail } => format!("{context}: {detail}"),
            other => other.to_string(),
        }
    }
}

impl Coded for StoreError {
    fn code(&self) -> Code {
        match self {
            StoreError::InvalidName(_) => Code::InvalidName,
            StoreError::TypeMismatch(_) => Code::TypeMismatch,
            StoreError::TooManyColumns(_) => Code::TooManyColumns,
            StoreError::UnknownDatabase(_) => Code::UnknownDatabase,
            StoreError::UnknownTable(_) => Code::UnknownTable,
            StoreError::InvalidBatch(_) => Code::InvalidBatch,
            StoreError::InvalidSql(_) => Code::InvalidSql,
            StoreError::Sql(_) => Code::SqlError,
            StoreError::Timeout => Code::Timeout,
            StoreError::TooManyRows(_) | StoreError::TooLarge(_) | StoreError::ValueTooLarge => {
                Code::ResultTooLarge
            }
            StoreError::Internal { .. } => Code::Internal,
        }
    }
}

/// SQLite's error, read as what it means for the client.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    let msg = e.to_string();
    if let Some(t) = msg.strip_prefix("no such table: ") {
        return StoreError::UnknownTable(format!("no table named {t:?} in this database"));
    }
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => return StoreError::Timeout,
        // A value past the connection's length limit (see `with_deadline`).
        Some(rusqlite::ErrorCode::TooBig) => return StoreError::ValueTooLarge,
        _ => {}
    }
    StoreError::Sql(msg)
}
