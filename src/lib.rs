//! tarn: a peer-to-peer edge data lake. This crate is the node: it wires the
//! leaf crates (`tarn-net`, `tarn-ledger`, `tarn-query`) into one process that
//! plays the roles its configuration names.
//!
//! - `config`: the typed configuration ([`Config`]) with defaults and validation
//! - `node`: a running node ([`Node`]): storage, buffers, watcher, REST server
//! - `storage`: SQLite per logical database, batches, de-duplication, queries
//! - `replicate`: copies of every batch on every member of a cluster (push and anti-entropy)
//! - `publish`: the publisher: routes batches to operators, queues them on disk meanwhile
//! - `scatter`: network queries: routing, partial queries in chunks, failover, the final step
//! - `rows`: JSON bodies into typed rows; inference and coercion
//! - `stream`: EdgeLake's streaming mode, journaled so acknowledged rows survive a crash
//! - `watch`: the watched directory for file ingest
//! - `rest`, `edgelake`, `format`: the native `/v1` API and EdgeLake's protocol
//! - `p2p_client`: a libp2p client (no node) that queries the mesh
//! - `client`, `cli`: the REST client behind `tarn query`, `tarn ingest`, `tarn status`
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cfg = tarn::Config { rest: "127.0.0.1:0".parse()?, ..Default::default() };
//! let node = tarn::Node::start(cfg).await?;
//! println!("REST on {}", node.rest_addr());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

mod accumulate;
pub mod cli;
pub mod client;
mod config;
mod edgelake;
mod error;
mod format;
mod local_mesh;
mod mesh;
mod node;
pub mod p2p_client;
mod publish;
mod replicate;
mod rest;
mod rows;
mod scatter;
mod storage;
mod stream;
mod watch;

pub use config::{
    Config, PublisherConfig, ReplicationConfig, Route, Service, StreamingConfig, WatchConfig,
};
pub use error::ApiError;
pub use local_mesh::LocalMesh;
pub use node::Node;
pub use rest::batch_hash;
pub use storage::Durability;
