//! MQTT in: the node's own broker for devices that publish, subscriptions
//! to brokers elsewhere, and EdgeLake's `POST` with `command: data` — all
//! mapped by `run msg client` topics (or `mapping` policies) to rows that
//! take the one ingest path as streaming writes.
//!
//! - `command`: parsing `run msg client where ...`
//! - `mapping`: a message into rows (sans-I/O)
//! - `clients`: the registry of clients, its file, counters, and storing
//! - `broker`: the built-in MQTT broker
//! - `remote`: subscriptions to other brokers (rumqttc)
//! - `resent`: deliveries stored lately, so that a resend is not stored twice
//! - `wire`: MQTT 3.1.1 and 5 packets as the broker reads and writes them

mod broker;
mod clients;
mod command;
mod mapping;
mod remote;
mod resent;
mod wire;

pub use broker::{Limits as BrokerLimits, spawn as spawn_broker};
pub use clients::{Client, Counters, Delivery, Login, Message, MsgClients, Origin, PolicyLookup};
pub use command::{Broker, ClientSpec, is_run_client, split_and};
pub use mapping::MAX_ROWS_PER_MESSAGE;
