//! The network's structure and what keeps a cluster's copies alike.
//!
//! - [`membership`]: roles, clusters and their operators, who holds which
//!   table, every node as the ledger describes it (each rule once)
//! - [`announce`]: the policies a node publishes about itself and its tables
//! - [`replication`]: copies of every batch on every member of a cluster
//!
//! Uses `mesh` (the ledger view, liveness, requests to peers), `proto`,
//! `store` and `config`; the layers above (`ingest`, `exec`, `api`) use it.

pub mod announce;
pub mod membership;
pub mod replication;
