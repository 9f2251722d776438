//! tarn: a peer-to-peer edge data lake. This crate is the node: it wires the
//! leaf crates (`tarn-net`, `tarn-ledger`, `tarn-query`) into one process that
//! plays the roles its configuration names.
//!
//! Its modules are layers; each uses only those listed before it:
//!
//! - `error`, `clock`: stable error codes; the injected wall clock
//! - [`store`]: SQLite per logical database, batches, de-duplication, reads
//! - `config`: the typed configuration ([`Config`]) with defaults and validation
//! - [`proto`]: the wire messages, one family per concern, with typed errors
//! - [`mesh`]: identity, ledger replica, gossip, anti-entropy, request dispatch
//! - [`cluster`]: membership rules, the node's own policies, replication
//! - [`ingest`]: every way data comes in, through one ingest service
//! - [`exec`]: one query pipeline, local and network
//! - [`api`]: REST, EdgeLake's commands, output formats, HTTP errors
//! - `node`: wires the services into a running [`Node`]
//! - `local_mesh`: many nodes in one process ([`LocalMesh`], `tarn demo`)
//! - [`client`], [`p2p_client`], [`cli`]: the clients and the commands of `tarn`
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cfg = tarn::Config { rest: "127.0.0.1:0".parse()?, ..Default::default() };
//! let node = tarn::Node::start(cfg).await?;
//! println!("REST on {}", node.rest_addr());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
mod config;
pub mod error;
pub mod exec;
pub mod ingest;
mod local_mesh;
pub mod mesh;
mod node;
pub mod p2p_client;
pub mod proto;
pub mod store;

pub use config::{
    Config, MqttConfig, PublisherConfig, ReplicationConfig, Route, Service, StreamingConfig,
    WatchConfig,
};
pub use ingest::batch_hash;
pub use local_mesh::LocalMesh;
pub use node::{Builder, Node};
pub use store::Durability;
