//! The commands of the `tarn` binary besides parsing: each prints its
//! result to stdout and returns an error for the binary to print as one
//! line.
//!
//! - `query`: `tarn query` (REST or libp2p)
//! - `ingest`: `tarn ingest`
//! - `admin`: `tarn status`, `nodes`, `policies`, `policy add`, `cluster`
//! - `demo`: `tarn node` and `tarn demo`
//! - `network`: `tarn network create`, `key`, `admit`, `revoke`, `user`
//! - `cert`: `tarn cert` (a CA and server certificates for HTTPS)
//!
//! Uses the REST [`crate::client`], the libp2p client and, for `node` and
//! `demo`, the node itself.

mod admin;
mod cert;
mod demo;
mod ingest;
mod network;
mod query;

pub use admin::{cluster, nodes, policies, policy_add, status};
pub use cert::cert;
pub use demo::{LogFormat, run_demo, run_node, shutdown_signal};
pub use ingest::ingest;
pub use network::{Admission, admit, key_create, network_create, revoke, user_add, user_remove};
pub use query::{OutFormat, query};
