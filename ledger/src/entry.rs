//! Signed ledger entries: what an author said, in its hash chain.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, PolicyError};

/// Largest encoded entry accepted from anyone.
pub const MAX_ENTRY_BYTES: usize = 96 * 1024;
/// The entry format this code writes and reads.
pub const FORMAT: u8 = 1;

/// An author: an ed25519 public key (the key behind a libp2p `PeerId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Author(pub [u8; 32]);

impl std::fmt::Display for Author {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An entry's hash (BLAKE3 of its full encoding, signature included).
pub type Hash = [u8; 32];

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Publishes a policy (its canonical JSON); optionally replaces an
    /// earlier policy of the same author.
    Put {
        policy: String,
        supersedes: Option<String>,
    },
    /// Withdraws a policy the same author published.
    Revoke { id: String },
}

/// A signed entry as it travels and is stored. Untrusted until
/// [`Entry::verify`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u8,
    pub author: Author,
    /// 1 for an author's first entry, then +1 each time.
    pub seq: u64,
    /// Hash of the author's previous entry; `None` exactly when `seq == 1`.
    pub prev: Option<Hash>,
    pub lamport: u64,
    /// Wall-clock milliseconds since the epoch, as the author saw it.
    pub time_ms: u64,
    pub op: Op,
    #[serde(with = "sig_bytes")]
    pub sig: [u8; 64],
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: serde_bytes_shim::Bytes = Deserialize::deserialize(d)?;
        v.0.try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }

    /// Accepts CBOR byte strings (and arrays, for robustness).
    mod serde_bytes_shim {
        use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

        pub struct Bytes(pub Vec<u8>);

        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Bytes, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = s.next_element::<u8>()? {
                            if out.len() >= 64 {
                                return Err(serde::de::Error::custom("too many bytes"));
                            }
                            out.push(b);
                        }
                        Ok(Bytes(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

/// Why an entry was refused at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error("unknown entry format {0}")]
    Format(u8),
    #[error("the author is not a valid ed25519 key")]
    BadAuthor,
    #[error("the signature does not match the author")]
    BadSignature,
    #[error("seq and prev disagree (seq 1 has no prev; every later entry has one)")]
    BadChainFields,
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("the policy is not in canonical form")]
    NotCanonical,
}

/// An entry whose signature, fields and policy were checked. Only
/// [`Entry::verify`] and [`Entry::sign`] make one, so anything that takes a
/// `VerifiedEntry` knows the check happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEntry {
    entry: Entry,
    hash: Hash,
    bytes: Vec<u8>,
}

impl VerifiedEntry {
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The encoding that was verified (what is stored and sent).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The policy an `Op::Put` carries.
    pub fn policy(&self) -> Option<Policy> {
        match &self.entry.op {
            Op::Put { policy, .. } => Policy::parse(policy).ok(),
            Op::Revoke { .. } => None,
        }
    }
}

#[derive(Serialize)]
struct Signed<'a> {
    format: u8,
    author: &'a Author,
    seq: u64,
    prev: &'a Option<Hash>,
    lamport: u64,
    time_ms: u64,
    op: &'a Op,
}

impl Entry {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(
            &Signed {
                format: self.format,
                author: &self.author,
                seq: self.seq,
                prev: &self.prev,
                lamport: self.lamport,
                time_ms: self.time_ms,
                op: &self.op,
            },
            &mut out,
        )
        .expect("encoding to a Vec cannot fail");
        out
    }

    /// Builds and signs an entry.
    pub fn sign(
        key: &SigningKey,
        seq: u64,
        prev: Option<Hash>,
        lamport: u64,
        time_ms: u64,
        op: Op,
    ) -> Result<VerifiedEntry, VerifyError> {
        let mut e = Entry {
            format: FORMAT,
            author: Author(key.verifying_key().to_bytes()),
            seq,
            prev,
            lamport,
            time_ms,
            op,
            sig: [0; 64],
        };
        e.sig = key.sign(&e.signing_bytes()).to_bytes();
        let mut bytes = Vec::new();
        ciborium::into_writer(&e, &mut bytes).expect("encoding to a Vec cannot fail");
        Entry::verify_bytes(&bytes)
    }

    /// Decodes and verifies an entry received or read from disk.
    pub fn verify_bytes(bytes: &[u8]) -> Result<VerifiedEntry, VerifyError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(VerifyError::TooLarge(bytes.len()));
        }
        let mut r = bytes;
        let entry: Entry = ciborium::de::from_reader_with_recursion_limit(&mut r, 32)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if !r.is_empty() {
            return Err(VerifyError::Malformed("trailing bytes".into()));
        }
        // One entry, one encoding: otherwise a re-encoded copy of a signed
        // entry would carry another hash and fork every chain it enters.
        let mut again = Vec::with_capacity(bytes.len());
        ciborium::into_writer(&entry, &mut again).expect("encoding to a Vec cannot fail");
        if again != bytes {
            return Err(VerifyError::Malformed("not in canonical encoding".into()));
        }
        entry.verify(again)
    }

    fn verify(self, bytes: Vec<u8>) -> Result<VerifiedEntry, VerifyError> {
        if self.format != FORMAT {
            return Err(VerifyError::Format(self.format));
        }
        if self.seq == 0 || (self.seq == 1) != self.prev.is_none() {
            return Err(VerifyError::BadChainFields);
        }
        let key = VerifyingKey::from_bytes(&self.author.0).map_err(|_| VerifyError::BadAuthor)?;
        key.verify_strict(&self.signing_bytes(), &Signature::from_bytes(&self.sig))
            .map_err(|_| VerifyError::BadSignature)?;
        if let Op::Put { policy, supersedes } = &self.op {
            let p = Policy::parse(policy)?;
            if p.canonical() != policy.as_bytes() {
                return Err(VerifyError::NotCanonical);
            }
            if supersedes.as_ref().is_some_and(|s| s.len() > 64) {
                return Err(VerifyError::Malformed(
                    "supersedes is not a policy id".into(),
                ));
            }
        }
        if let Op::Revoke { id } = &self.op
            && id.len() > 64
        {
            return Err(VerifyError::Malformed(
                "revoke target is not a policy id".into(),
            ));
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok(VerifiedEntry {
            entry: self,
            hash,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{key, put};

    #[test]
    fn signed_entries_verify_and_round_trip() {
        let e = Entry::sign(&key(1), 1, None, 1, 1000, put(r#"{"site": {"name": "a"}}"#)).unwrap();
        let again = Entry::verify_bytes(e.bytes()).unwrap();
        assert_eq!(again, e);
        assert_eq!(e.policy().unwrap().kind(), "site");
    }

    #[test]
    fn tampering_is_caught() {
        let e = Entry::sign(&key(1), 1, None, 1, 1000, put(r#"{"site": {"name": "a"}}"#)).unwrap();
        // Flip each byte in turn: every change is refused (or decodes to something refused).
        for i in 0..e.bytes().len() {
            let mut b = e.bytes().to_vec();
            b[i] ^= 0x01;
            assert!(
                Entry::verify_bytes(&b).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
        // Another key's signature over the same fields.
        let mut forged = e.entry().clone();
        forged.sig = key(2).sign(&forged.signing_bytes()).to_bytes();
        let mut bytes = Vec::new();
        ciborium::into_writer(&forged, &mut bytes).unwrap();
        assert_eq!(Entry::verify_bytes(&bytes), Err(VerifyError::BadSignature));
        // Chain fields that contradict each other.
        assert_eq!(
            Entry::sign(&key(1), 2, None, 1, 0, put(r#"{"a": {}}"#)).unwrap_err(),
            VerifyError::BadChainFields
        );
        // A policy that is not canonical.
        let op = Op::Put {
            policy: r#"{"a": {"x": 1}}"#.into(),
            supersedes: None,
        };
        assert_eq!(
            Entry::sign(&key(1), 1, None, 1, 0, op).unwrap_err(),
            VerifyError::NotCanonical
        );
        // Oversized and garbage input.
        assert!(matches!(
            Entry::verify_bytes(&vec![0; MAX_ENTRY_BYTES + 1]),
            Err(VerifyError::TooLarge(_))
        ));
        assert!(matches!(
            Entry::verify_bytes(&[0xff, 0x00, 0x13]),
            Err(VerifyError::Malformed(_))
        ));
    }
}
