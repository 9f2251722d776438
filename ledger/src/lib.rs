//! tarn's metadata ledger: EdgeLake-style policies in a signed, replicated,
//! grow-only log, with a view every replica derives the same way.
//!
//! The crate does no network I/O. A node moves entries between replicas
//! (gossip pushes new entries; anti-entropy compares [`Ledger::heads`] and
//! fetches what [`Ledger::wants`] names through [`Ledger::entries_from`]) and
//! feeds them to [`Ledger::apply`]. That is what lets the sync be tested by
//! deterministic simulation.
//!
//! - [`policy`]: a policy's shape, canonical form and id
//! - [`entry`]: signed entries and their verification at the boundary
//! - `store`: the log in redb, hash chains, the Lamport clock ([`Ledger`])
//! - `view`: the policies in force ([`View`])
//! - [`member`]: closed networks: who is admitted, by `member` policies
//!
//! ```
//! use tarn_ledger::{Ledger, Op, policy::Policy};
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let mut a = Ledger::in_memory()?;
//! let mut b = Ledger::in_memory()?;
//! let p = Policy::parse(r#"{"site": {"name": "s7", "city": "Oslo"}}"#)?;
//! let e = a.append_local(&key, Op::Put { policy: String::from_utf8(p.canonical()).unwrap(), supersedes: None }, 0)?;
//! // Across the network only bytes travel; the receiver verifies them.
//! let received = tarn_ledger::entry::Entry::verify_bytes(e.bytes())?;
//! b.apply(&received)?;
//! assert_eq!(b.view().get(&p.id()).unwrap().kind, "site");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod entry;
pub mod member;
pub mod policy;
mod schema;
mod store;
mod view;

pub use entry::{Author, Entry, Op, VerifiedEntry, VerifyError};
pub use store::{
    AppendError, Applied, Ledger, MAX_AUTHOR_BYTES, MAX_BATCH, MAX_BATCH_BYTES, StoreError,
};
pub use view::{PolicyRecord, View};

#[cfg(test)]
mod sim;

#[cfg(test)]
mod testing {
    use ed25519_dalek::SigningKey;

    use crate::Op;
    use crate::policy::Policy;

    /// A deterministic key.
    pub fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// A `Put` of `p` in canonical form.
    pub fn put(p: &str) -> Op {
        Op::Put {
            policy: String::from_utf8(Policy::parse(p).unwrap().canonical()).unwrap(),
            supersedes: None,
        }
    }
}
