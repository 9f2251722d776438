//! Bounded CBOR: every message has a byte cap checked before decoding and a
//! nesting limit enforced while decoding, so hostile input costs at most
//! `max` bytes of memory and never overflows the stack.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Deepest nesting a decoded message may have.
pub const RECURSION_LIMIT: usize = 64;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Larger than the protocol's cap.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Not valid CBOR for the expected type (or nested too deep).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The value could not be written as CBOR.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `value`, refusing results larger than `max` bytes.
pub fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > max {
        return Err(CodecError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes a `T` from `bytes`, refusing input over `max` bytes, nesting over
/// [`RECURSION_LIMIT`], and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            reader.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        name: String,
        rows: Vec<Vec<Option<f64>>>,
    }

    #[test]
    fn refuses_oversized_trailing_and_deep_input() {
        let m = Msg {
            id: 1,
            name: "x".repeat(100),
            rows: vec![],
        };
        assert!(matches!(encode(&m, 10), Err(CodecError::TooLarge { .. })));
        let mut bytes = encode(&m, 1 << 20).unwrap();
        assert!(matches!(
            decode::<Msg>(&bytes, 10),
            Err(CodecError::TooLarge { .. })
        ));
        bytes.push(0);
        assert!(matches!(
            decode::<Msg>(&bytes, 1 << 20),
            Err(CodecError::Malformed(_))
        ));
        // 10,000 nested arrays: refused, not a stack overflow.
        let deep = vec![0x81u8; 10_000];
        assert!(decode::<ciborium::Value>(&deep, 1 << 20).is_err());
        // A header claiming a 4 GiB string in a 9-byte message.
        let liar = [0x7a, 0xff, 0xff, 0xff, 0xff, 0x61, 0x61, 0x61, 0x61];
        assert!(decode::<String>(&liar, 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(id in any::<u64>(), name in ".{0,40}", rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of(-1e9f64..1e9), 0..5), 0..5)) {
            let m = Msg { id, name, rows };
            let bytes = encode(&m, 1 << 20).unwrap();
            prop_assert_eq!(decode::<Msg>(&bytes, 1 << 20).unwrap(), m);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes, 1 << 20);
            let _ = decode::<ciborium::Value>(&bytes, 1 << 20);
        }
    }
}
