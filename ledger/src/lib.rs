//! tarn's metadata ledger. Today: the identity of a policy. A policy is an
//! EdgeLake-style JSON object with one root key naming its type
//! (`{"operator": {...}}`); its id is a hash of a canonical encoding of the
//! body, so every node computes the same id for the same policy whatever
//! its key order or number formatting. Signed envelopes, the redb log and
//! sync arrive with the mesh.
//!
//! - [`policy`]: checking a policy's shape, its canonical form and id
//!
//! ```
//! use tarn_ledger::policy::Policy;
//! let a = Policy::parse(r#"{"site": {"name": "s7", "city": "Oslo"}}"#)?;
//! let b = Policy::parse(r#"{ "site" : { "city":"Oslo","name":"s7" } }"#)?;
//! assert_eq!(a.id(), b.id());
//! assert_eq!(a.kind(), "site");
//! # Ok::<(), tarn_ledger::policy::PolicyError>(())
//! ```

pub mod policy;
