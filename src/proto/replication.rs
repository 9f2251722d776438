//! Copies of batches between the operators of one cluster: pushes of new
//! batches, inventories per origin, and pulls of what a member lacks.

use serde::{Deserialize, Serialize};

use super::Family;
use crate::store::{Holding, Ranges, ReplBatch};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Batches a member of this node's cluster produced; answered with
    /// `Replicated` (per batch: `None` once held here, or why not).
    Replicate(Vec<ReplBatch>),
    /// What batches this node holds, per origin (and rows per table when
    /// `tables`); answered with `Holdings`.
    Inventory { tables: bool },
    /// The batches of `origin` this node holds beyond `have`; answered with
    /// `Batches` (empty: nothing more).
    Missing { origin: String, have: Ranges },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Replicated(Vec<Option<String>>),
    Holdings {
        holdings: Vec<Holding>,
        tables: Vec<(String, String, i64)>,
    },
    Batches(Vec<ReplBatch>),
}

impl super::Request for Request {
    const FAMILY: Family = Family::Replication;
    type Response = Response;
}
