//! Liveness on the wire: a node's signed word that it is up and where it
//! can be reached ([`Record`]), and the rumors gossiped about who is up
//! ([`Rumor`], on [`TOPIC`]). The table they feed is `mesh::liveness`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tarn_ledger::Author;

/// The gossip topic of liveness rumors.
pub const TOPIC: &str = "tarn/alive/1";
/// Most addresses in a record, and the longest one.
pub const MAX_ADDRS: usize = 8;
pub const MAX_ADDR_BYTES: usize = 256;
/// Largest rumor accepted from gossip.
pub const MAX_RUMOR_BYTES: usize = 4096;

/// A node's own statement, signed by its key: "I am up (or leaving) at
/// this incarnation, reachable at these addresses". Anyone may relay it;
/// only its node can make one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub peer: Author,
    /// Grows every time the node restarts or refutes a suspicion.
    pub incarnation: u64,
    /// Multiaddrs, in their binary form.
    pub addrs: Vec<ByteBuf>,
    /// The node is stopping: dead at once, no suspicion needed.
    pub leaving: bool,
    pub sig: ByteBuf,
}

impl Record {
    pub fn sign(
        key: &SigningKey,
        incarnation: u64,
        mut addrs: Vec<Vec<u8>>,
        leaving: bool,
    ) -> Record {
        addrs.retain(|a| a.len() <= MAX_ADDR_BYTES);
        addrs.truncate(MAX_ADDRS);
        let peer = Author(key.verifying_key().to_bytes());
        let addrs: Vec<ByteBuf> = addrs.into_iter().map(ByteBuf::from).collect();
        let sig = key.sign(&signed_bytes(&peer, incarnation, &addrs, leaving));
        Record {
            peer,
            incarnation,
            addrs,
            leaving,
            sig: ByteBuf::from(sig.to_bytes().to_vec()),
        }
    }

    /// Whether the record is well formed and signed by the node it names.
    pub fn verify(&self) -> bool {
        if self.addrs.len() > MAX_ADDRS || self.addrs.iter().any(|a| a.len() > MAX_ADDR_BYTES) {
            return false;
        }
        let (Ok(key), Ok(sig)) = (
            VerifyingKey::from_bytes(&self.peer.0),
            Signature::from_slice(&self.sig),
        ) else {
            return false;
        };
        key.verify(
            &signed_bytes(&self.peer, self.incarnation, &self.addrs, self.leaving),
            &sig,
        )
        .is_ok()
    }
}

fn signed_bytes(peer: &Author, incarnation: u64, addrs: &[ByteBuf], leaving: bool) -> Vec<u8> {
    let mut out = b"tarn/alive/1\0".to_vec();
    out.extend_from_slice(&peer.0);
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.push(u8::from(leaving));
    for a in addrs {
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(a);
    }
    out
}

/// What is gossiped about liveness: only changes, never a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rumor {
    /// A node's own record: it started, moved, refutes a suspicion, or leaves.
    Alive(Record),
    /// The sender lost its link with `peer` and could not reach it again.
    Suspect { peer: Author, incarnation: u64 },
}

/// A table row as a neighbour sends it when tables are pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub record: Record,
    /// The sender suspects (or has given up on) this incarnation.
    pub suspect: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_verifies_only_as_signed() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let r = Record::sign(&key, 5, vec![b"/ip4/1.2.3.4/tcp/1".to_vec()], false);
        assert!(r.verify());
        let mut moved = r.clone();
        moved.addrs[0] = ByteBuf::from(b"/ip4/6.6.6.6/tcp/1".to_vec());
        assert!(!moved.verify());
        let mut older = r.clone();
        older.incarnation = 6;
        assert!(!older.verify());
        let mut other = r.clone();
        other.peer = Author([8; 32]);
        assert!(!other.verify());
        let mut short = r;
        short.sig = ByteBuf::from(vec![1, 2, 3]);
        assert!(!short.verify());
    }
}
