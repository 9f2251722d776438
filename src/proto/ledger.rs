//! Anti-entropy of the ledger and of the liveness table: digests are
//! compared first (a converged pair exchanges two hashes and nothing
//! else), then heads, then missing entries are fetched author by author;
//! liveness tables are pulled in pages. (New entries and liveness rumors
//! also spread by gossip, outside this protocol.)

use serde::{Deserialize, Serialize};
use tarn_ledger::Author;

use super::Family;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Per-author heads, sent to start anti-entropy; answered with the peer's.
    Heads(Vec<(Author, u64)>),
    /// Entries of one author from a sequence number on.
    Fetch { author: Author, from: u64 },
    /// The sender's digests of its ledger heads and its liveness table;
    /// answered with the peer's.
    Digest { ledger: [u8; 32], members: [u8; 32] },
    /// The peer's liveness table, a page of rows after `after`.
    Members { after: Option<Author> },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Heads(Vec<(Author, u64)>),
    /// Signed entries as their author encoded them (verified on arrival).
    Entries(Vec<serde_bytes::ByteBuf>),
    Digest {
        ledger: [u8; 32],
        members: [u8; 32],
    },
    /// A page of rows, in author order; `more`: ask again after the last.
    Members {
        rows: Vec<super::liveness::Row>,
        more: bool,
    },
}

impl super::Request for Request {
    const FAMILY: Family = Family::Ledger;
    type Response = Response;
}
