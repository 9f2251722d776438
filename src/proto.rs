//! The messages nodes send each other, one family per concern, over one
//! libp2p request-response protocol (`/tarn/rpc/2`, CBOR).
//!
//! A request travels in an [`Envelope`] that names its [`Family`], so the
//! mesh routes it to the handler registered for that family without
//! knowing its messages; the answer is the family's response or a
//! [`WireError`] with a stable [`Code`]. Everything a peer sends is
//! size-bounded ([`MAX_MESSAGE`]) and decoded into these types before use.
//!
//! - [`ledger`]: anti-entropy of the ledger (digests, heads, entries) and
//!   of the liveness table
//! - [`liveness`]: signed liveness records and the rumors gossiped about them
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
pub mod liveness;
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

/// Every message a peer can send, from arbitrary bytes and from valid
/// messages with bytes changed: refused or read, never a panic. Longer runs:
/// `PROPTEST_CASES=200000 cargo test --lib fuzz_`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::store::{Holding, Origin, ReplBatch, Val};

    fn decode_all(bytes: &[u8]) {
        let max = MAX_MESSAGE;
        let _ = tarn_net::codec::decode::<Envelope>(bytes, max);
        let _ = tarn_net::codec::decode::<ledger::Request>(bytes, max);
        let _ = tarn_net::codec::decode::<query::Request>(bytes, max);
        let _ = tarn_net::codec::decode::<replication::Request>(bytes, max);
        let _ = tarn_net::codec::decode::<ingest::Request>(bytes, max);
        let _ = decode_reply::<ledger::Request>(bytes);
        let _ = decode_reply::<query::Request>(bytes);
        let _ = decode_reply::<replication::Request>(bytes);
        let _ = decode_reply::<ingest::Request>(bytes);
        if let Ok(Ok(chunk)) = decode_reply::<query::Request>(bytes) {
            for (_, states) in chunk.groups {
                for mut s in states {
                    s.restore();
                    let _ = s.finish();
                }
            }
        }
        if let Ok(replication::Request::Replicate(batches)) =
            tarn_net::codec::decode::<replication::Request>(bytes, max)
        {
            for b in batches {
                let _ = b.validate();
            }
        }
    }

    fn val() -> impl Strategy<Value = Val> {
        prop_oneof![
            Just(Val::Null),
            any::<i64>().prop_map(Val::Int),
            any::<f64>().prop_map(Val::Float),
            any::<bool>().prop_map(Val::Bool),
            ".{0,12}".prop_map(Val::Text),
        ]
    }

    /// A sample of valid messages of every family.
    fn samples(text: String, n: i64, rows: Vec<Vec<Val>>) -> Vec<Vec<u8>> {
        let batch = ReplBatch {
            db: text.clone(),
            table: "t".into(),
            origin: Origin {
                peer: "12D3KooW".into(),
                name: text.clone(),
                id: n,
            },
            source: String::new(),
            hash: text.clone(),
            instructions: String::new(),
            columns: vec![("a".into(), "INTEGER".into())],
            rows,
        };
        let holding = Holding {
            origin: text.clone(),
            name: text.clone(),
            batches: n.unsigned_abs(),
            max_id: n,
            id_sum: n,
            rows: n,
        };
        vec![
            encode_request(&replication::Request::Replicate(vec![batch.clone()])).unwrap(),
            encode_request(&replication::Request::Missing {
                origin: text.clone(),
                have: vec![(n, n.saturating_add(3))],
            })
            .unwrap(),
            encode_request(&query::Request::Partial {
                db: text.clone(),
                sql: text.clone(),
                groups: n % 2 == 0,
                timeout_ms: n.unsigned_abs(),
            })
            .unwrap(),
            encode_request(&ingest::Request::Ingest {
                db: text.clone(),
                table: text.clone(),
                source: text.clone(),
                hash: text,
                body: serde_bytes::ByteBuf::from(vec![b'{'; 3]),
            })
            .unwrap(),
            encode_reply::<replication::Response>(&Ok(replication::Response::Holdings {
                holdings: vec![holding],
                tables: Vec::new(),
            })),
            encode_reply::<replication::Response>(&Ok(replication::Response::Batches(vec![batch]))),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_garbage_is_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_all(&bytes);
        }

        #[test]
        fn fuzz_changed_messages_are_refused_or_read(
            text in ".{0,16}",
            n in any::<i64>(),
            rows in proptest::collection::vec(proptest::collection::vec(val(), 0..3), 0..4),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            for mut m in samples(text, n, rows) {
                decode_all(&m);
                for (at, b) in &edits {
                    let i = at % m.len();
                    m[i] = *b;
                }
                decode_all(&m);
                let cut = edits[0].0 % (m.len() + 1);
                decode_all(&m[..cut]);
            }
        }
    }
}
