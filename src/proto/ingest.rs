//! A batch for an operator to store, from a publisher or a libp2p client.

use serde::{Deserialize, Serialize};

use super::Family;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Store a body (JSON rows) as one batch identified by `hash`.
    Ingest {
        db: String,
        table: String,
        source: String,
        hash: String,
        body: serde_bytes::ByteBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Ingested {
        rows: u64,
        batch: i64,
        duplicate: bool,
    },
}

impl super::Request for Request {
    const FAMILY: Family = Family::Ingest;
    type Response = Response;
}
