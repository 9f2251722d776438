//! Queries over the network: an operator runs a partial query and hands
//! its result out in chunks; a libp2p client runs a whole query through a
//! query node the same way.
//!
//! `Partial` (or `Query`) starts a query and is answered with its first
//! [`Chunk`]; `Next` pulls the following ones. An operator with nothing
//! ready within a heartbeat answers an empty chunk, so a long scan keeps
//! the query alive while a silent operator is noticed.

use serde::{Deserialize, Serialize};

use super::Family;
use crate::store::{KeyVal, State, Val};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Run a partial query (a groups scan or a rows query) on this operator.
    Partial {
        db: String,
        sql: String,
        groups: bool,
        timeout_ms: u64,
    },
    /// Run a whole network query for a client.
    Query {
        db: String,
        sql: String,
        subset: bool,
        timeout_ms: u64,
    },
    /// The next chunk of a query in progress.
    Next { cursor: u64 },
}

/// One piece of a partial (or, for a client, final) result.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Chunk {
    pub cursor: u64,
    /// Column names and declared types (the first chunk of a rows result).
    pub columns: Vec<(String, Option<String>)>,
    pub rows: Vec<Vec<Val>>,
    /// Declared types of the group keys (the first chunk of a groups result).
    pub key_types: Vec<Option<String>>,
    pub groups: Vec<(Vec<KeyVal>, Vec<State>)>,
    /// The last chunk also carries the query's statistics and the nodes
    /// that did not answer (for a client query).
    pub stats: Option<Stats>,
    pub errors: Vec<NodeError>,
    pub done: bool,
}

/// What a network query did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Operators a partial query was sent to (retries included).
    pub asked: usize,
    /// Operators whose whole partial result arrived.
    pub replied: usize,
    /// Partial rows (or groups) received.
    pub rows: usize,
    pub ms: f64,
}

/// A cluster none of whose members answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeError {
    pub cluster: String,
    pub nodes: Vec<String>,
    pub message: String,
}

impl super::Request for Request {
    const FAMILY: Family = Family::Query;
    type Response = Chunk;
}
