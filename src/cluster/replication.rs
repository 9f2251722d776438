//! Cluster replication (DESIGN.md §7): the operators of one cluster keep
//! copies of each other's batches.
//!
//! A batch is identified in its cluster by `(origin PeerId, id)`; storage
//! keeps one copy however often it arrives (and one copy of rows re-sent
//! under another origin with the same hash).
//!
//! - `core`: the decisions, without I/O ([`Core`]: inputs in, actions out)
//! - `driver`: the loop that runs the core over the mesh and the store;
//!   [`Replicator`], the handle a `consistency=cluster` write waits on
//! - `local`: what each message does to this member's storage
//! - `serve`: this member's side of peers' messages ([`Server`])
//! - `report`: the clusters' state for `GET /v1/clusters`
//! - `sim` (tests): many members over a shuffled, lossy queue, driving the
//!   real core on real storages

mod core;
mod driver;
mod local;
mod report;
mod serve;
#[cfg(test)]
mod sim;

pub use self::core::{BatchRef, Confirmation, Core, Timing};
pub use driver::{Deps, Replicator, Stopped, spawn};
pub use report::report;
pub use serve::Server;
