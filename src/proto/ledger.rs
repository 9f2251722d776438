//! Anti-entropy of the ledger: heads are compared, missing entries fetched
//! author by author. (New entries also spread by gossip, as raw entry
//! bytes, outside this protocol.)

use serde::{Deserialize, Serialize};
use tarn_ledger::Author;

use super::Family;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Per-author heads, sent to start anti-entropy; answered with the peer's.
    Heads(Vec<(Author, u64)>),
    /// Entries of one author from a sequence number on.
    Fetch { author: Author, from: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Heads(Vec<(Author, u64)>),
    /// Signed entries as their author encoded them (verified on arrival).
    Entries(Vec<serde_bytes::ByteBuf>),
}

impl super::Request for Request {
    const FAMILY: Family = Family::Ledger;
    type Response = Response;
}
