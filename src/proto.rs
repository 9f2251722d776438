//! The messages nodes send each other, one family per concern, over one
//! libp2p request-response protocol (`/tarn/rpc/2`, CBOR).
//!
//! A request travels in an [`Envelope`] that names its [`Family`], so the
//! mesh routes it to the handler registered for that family without
//! knowing its messages; the answer is the family's response or a
//! [`WireError`] with a stable [`Code`]. Everything a peer sends is
//! size-bounded ([`MAX_MESSAGE`]) and decoded into these types before use.
//!
//! - [`ledger`]: anti-entropy of the ledger (heads, entries)
//! - [`query`]: partial queries, client queries, result chunks
//! - [`replication`]: batches between members of a cluster, inventories
//! - [`ingest`]: a batch for an operator (from a publisher or a client)
//!
//! Uses `error` (codes) and `store` (the types batches and results are
//! made of).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Code, Coded};

pub mod ingest;
pub mod ledger;
pub mod query;
pub mod replication;

/// Largest message accepted either way: a batch of ledger entries
/// ([`tarn_ledger::MAX_BATCH_BYTES`] plus one entry), a replication message
/// or a result chunk, with room to spare.
pub const MAX_MESSAGE: usize = 8 << 20;
const _: () =
    assert!(tarn_ledger::MAX_BATCH_BYTES + tarn_ledger::entry::MAX_ENTRY_BYTES < MAX_MESSAGE);

/// The concerns nodes talk about, one message family each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ledger,
    Query,
    Replication,
    Ingest,
}

/// What travels as a request: the family, and its message still encoded
/// (only the family's handler decodes it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub family: Family,
    pub body: serde_bytes::ByteBuf,
}

/// A family's request type, with the type it is answered with.
pub trait Request: Serialize + DeserializeOwned + Send + Sync + 'static {
    const FAMILY: Family;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// A typed error from a peer: a stable code and a message that leaks no
/// internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub code: Code,
    pub message: String,
}

impl WireError {
    pub fn new(code: Code, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }

    /// Any layer's error, as a peer is told it.
    pub fn of(e: &(impl Coded + ?Sized)) -> WireError {
        WireError::new(e.code(), e.to_string())
    }
}

impl Coded for WireError {
    fn code(&self) -> Code {
        self.code
    }
}

/// What a peer answers: the response, or why not.
pub type Reply<T> = Result<T, WireError>;

/// A request as bytes, in its envelope.
pub fn encode_request<R: Request>(req: &R) -> Result<Vec<u8>, tarn_net::codec::CodecError> {
    let body = tarn_net::codec::encode(req, MAX_MESSAGE)?;
    tarn_net::codec::encode(
        &Envelope {
            family: R::FAMILY,
            body: serde_bytes::ByteBuf::from(body),
        },
        MAX_MESSAGE,
    )
}

/// An answer as bytes. An answer too large to send becomes an error that
/// says so.
pub fn encode_reply<T: Serialize>(reply: &Reply<T>) -> Vec<u8> {
    tarn_net::codec::encode(reply, MAX_MESSAGE).unwrap_or_else(|e| {
        tracing::warn!("an answer did not fit: {e}");
        let too_large: Reply<()> = Err(WireError::new(Code::Internal, "the answer is too large"));
        tarn_net::codec::encode(&too_large, MAX_MESSAGE)
            .expect("a short error always fits in a message")
    })
}

/// A peer's answer to `R`, or why it cannot be read.
pub fn decode_reply<R: Request>(
    bytes: &[u8],
) -> Result<Reply<R::Response>, tarn_net::codec::CodecError> {
    tarn_net::codec::decode(bytes, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_garbage_is_refused() {
        let req = ingest::Request::Ingest {
            db: "lab".into(),
            table: "t".into(),
            source: "dev".into(),
            hash: "h".into(),
            body: serde_bytes::ByteBuf::from(b"{\"a\": 1}".to_vec()),
        };
        let bytes = encode_request(&req).unwrap();
        let env: Envelope = tarn_net::codec::decode(&bytes, MAX_MESSAGE).unwrap();
        assert_eq!(env.family, Family::Ingest);
        let back: ingest::Request = tarn_net::codec::decode(&env.body, MAX_MESSAGE).unwrap();
        assert!(matches!(back, ingest::Request::Ingest { ref hash, .. } if hash == "h"));
        let err: Reply<ingest::Response> = Err(WireError::new(Code::QueueFull, "full"));
        let got = decode_reply::<ingest::Request>(&encode_reply(&err)).unwrap();
        assert_eq!(got.unwrap_err().code, Code::QueueFull);
        assert!(decode_reply::<ingest::Request>(b"\xff\x00garbage").is_err());
    }
}
