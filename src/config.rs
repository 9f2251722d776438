//! A node's configuration: a typed struct with defaults and `validate()`.
//! Only the binary reads TOML files and flags into it; `node.rs` hands each
//! service its part.
//!
//! Uses `store` (durability, valid names).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Durability;

/// The roles a node can play (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Operator,
    Query,
    Master,
    Publisher,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Operator,
        Service::Query,
        Service::Master,
        Service::Publisher,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Operator => "operator",
            Service::Query => "query",
            Service::Master => "master",
            Service::Publisher => "publisher",
        }
    }

    pub fn parse(s: &str) -> Result<Service, String> {
        Service::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown service {s:?}; expected operator, query, master or publisher")
            })
    }
}

/// Everything that decides how a node behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A human name for the node; defaults to `tarn-<hostname>`.
    pub name: String,
    pub data_dir: PathBuf,
    /// REST listen address (port 0 picks a free port).
    pub rest: SocketAddr,
    pub services: Vec<Service>,
    pub durability: Durability,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Request bodies held in memory at once, in bytes: a body takes its
    /// share as its bytes arrive; more requests wait.
    pub max_inflight_bytes: usize,
    /// Longest a request body may go without sending a byte (ms); then it
    /// is answered 408 and the connection closed.
    pub body_timeout_ms: u64,
    /// Longest a connection may wait for a request's headers, or idle
    /// between requests (ms).
    pub idle_timeout_ms: u64,
    /// Most rows a query may return through the REST API.
    pub max_result_rows: usize,
    /// Most bytes of values a query may hold (its answer, and the partial
    /// results on the query node), and the largest single value it may read.
    pub max_result_bytes: usize,
    /// What SQLite may hold in memory across all of this node's databases
    /// (their page caches above all), in MiB: past it SQLite reuses cache
    /// pages instead of taking more, however many databases there are.
    pub sqlite_memory_mb: usize,
    /// Longest a query may run, in milliseconds, unless the request says less.
    pub query_timeout_ms: u64,
    pub streaming: StreamingConfig,
    pub watch: WatchConfig,
    /// libp2p listen addresses (multiaddrs).
    pub listen: Vec<String>,
    /// Peers to join through, as `/ip4/.../tcp/32048/p2p/<peer-id>`.
    pub bootstrap: Vec<String>,
    /// The cluster this operator belongs to.
    pub cluster: Option<String>,
    /// A closed network's id (its root key, as a PeerId, from `tarn network
    /// create`): only members take part. `None`: an open network.
    pub network: Option<String>,
    /// The network's root key: the node admits itself with it (and the
    /// network is the key's when `network` is not set).
    pub admin_key: Option<PathBuf>,
    /// Find peers on the local network by mDNS.
    pub mdns: bool,
    /// How many peers the node stays connected to, whatever the size of
    /// the network (idle links above it are closed; below half of it more
    /// peers are dialed). Others are reached on demand, by PeerId.
    pub peers_target: usize,
    /// The most connections the node accepts at once.
    pub peers_max: usize,
    pub replication: ReplicationConfig,
    pub publisher: PublisherConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub tls: TlsConfig,
    pub mqtt: MqttConfig,
}

/// The node's own MQTT broker, for devices that publish (EdgeLake's
/// `run message broker`); what it takes is mapped by `run msg client where
/// broker = local` subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Where the broker listens (EdgeLake's broker port is 32150); `None`: no broker.
    pub listen: Option<SocketAddr>,
    /// Most device connections at once.
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes: a connection holds at most
    /// about one, so the broker holds at most `max_connections` times this.
    pub max_packet_bytes: usize,
}

impl MqttConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.max_connections)
            || !(1024..=256 << 20).contains(&self.max_packet_bytes)
        {
            return Err(
                "mqtt.max_connections must be 1-65536 and mqtt.max_packet_bytes 1 KiB-256 MiB"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: None,
            max_connections: 1024,
            max_packet_bytes: 1 << 20,
        }
    }
}

/// HTTPS on the REST port.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM); with `key`, REST is HTTPS only.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// The audit log (`almgm.audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Rows older than this are deleted (hourly).
    pub retention_days: u32,
    /// At most this many rows are kept (the newest).
    pub max_rows: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention_days: 30,
            max_rows: 1_000_000,
        }
    }
}

/// REST authentication.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Every REST request needs a user's token (a closed network's `user`
    /// policies; see `tarn user add`).
    pub enabled: bool,
}

/// Copies between the operators of one cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// How often members compare batch inventories (ms).
    pub sync_ms: u64,
    /// How long a `consistency=cluster` write waits for each member (ms).
    pub ack_timeout_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            sync_ms: 1_000,
            ack_timeout_ms: 5_000,
        }
    }
}

/// How a publisher picks the cluster of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// By a hash of the batch's source (device): one source, one cluster.
    #[default]
    Hash,
    /// Each batch to the next cluster.
    RoundRobin,
}

/// The publisher service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    pub route: Route,
    /// Most bytes of batches waiting on disk for an operator (more: 507).
    pub max_queue_bytes: u64,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            route: Route::Hash,
            max_queue_bytes: 1 << 30,
        }
    }
}

/// Buffering of rows PUT in EdgeLake's streaming mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Flush a table's buffer once it holds this many rows.
    pub threshold_rows: usize,
    /// Flush a table's buffer once its oldest row is this old (ms).
    pub threshold_ms: u64,
    /// Write every streaming PUT at once (no buffering).
    pub write_immediate: bool,
}

/// The watched directory for file ingest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    pub enabled: bool,
    /// Default: `<data_dir>/watch`.
    pub dir: Option<PathBuf>,
    /// How often the directory is scanned (ms).
    pub poll_ms: u64,
    /// A file is read only once its size and time have not changed for this long (ms).
    pub settle_ms: u64,
    /// A file that ends in the middle of its JSON is waited for this long
    /// after its last change before it goes to `error/` (ms).
    pub incomplete_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: default_name(),
            data_dir: PathBuf::from("./tarn-data"),
            rest: SocketAddr::from(([127, 0, 0, 1], 32049)),
            services: vec![Service::Operator, Service::Query, Service::Master],
            durability: Durability::Normal,
            max_body_bytes: 64 * 1024 * 1024,
            max_inflight_bytes: 512 * 1024 * 1024,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            max_result_rows: 1_000_000,
            max_result_bytes: 128 << 20,
            sqlite_memory_mb: 128,
            peers_target: 24,
            peers_max: 48,
            query_timeout_ms: 60_000,
            streaming: StreamingConfig::default(),
            watch: WatchConfig::default(),
            listen: vec![
                "/ip4/0.0.0.0/tcp/32048".into(),
                "/ip4/0.0.0.0/udp/32048/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            cluster: None,
            network: None,
            admin_key: None,
            mdns: true,
            replication: ReplicationConfig::default(),
            publisher: PublisherConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            audit: AuditConfig::default(),
            mqtt: MqttConfig::default(),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            threshold_rows: 10_000,
            threshold_ms: 1_000,
            write_immediate: false,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: true,
            dir: None,
            poll_ms: 500,
            settle_ms: 1_000,
            incomplete_ms: 60_000,
        }
    }
}

/// Checks a cluster's name: EdgeLake's own samples name them
/// `plant-cluster1`; a name never reaches SQL unquoted.
pub fn cluster_name(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {c:?} must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        ))
    }
}

impl Config {
    /// Checks the closed network, REST authentication, TLS and the audit log.
    fn validate_trust(&self) -> Result<(), String> {
        if self.audit.retention_days == 0 || self.audit.max_rows == 0 {
            return Err("audit retention_days and max_rows must be positive".into());
        }
        if self.auth.enabled && self.network.is_none() && self.admin_key.is_none() {
            return Err(
                "auth needs a closed network (--network): its admins sign the users".into(),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("TLS needs both a certificate (--tls-cert) and its key (--tls-key)".into());
        }
        if let Some(n) = &self.network
            && tarn_ledger::member::author_of_peer_id(n).is_none()
        {
            return Err(format!(
                "network {n:?} is not a network id (the 12D3KooW... that `tarn network create` prints)"
            ));
        }
        Ok(())
    }

    /// Checks the values that defaults and serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "node name {n:?} must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            ));
        }
        if self.services.is_empty() {
            return Err("a node needs at least one service".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if self.max_inflight_bytes < self.max_body_bytes || self.max_inflight_bytes > 1 << 40 {
            return Err(
                "max_inflight_bytes must be at least max_body_bytes (and at most 1 TiB)".into(),
            );
        }
        if self.body_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("body_timeout_ms and idle_timeout_ms must be positive".into());
        }
        if self.max_result_rows == 0 || self.query_timeout_ms == 0 {
            return Err("max_result_rows and query_timeout_ms must be positive".into());
        }
        if self.max_result_bytes < 1 << 20 || self.max_result_bytes > 1 << 30 {
            return Err("max_result_bytes must be between 1 MiB and 1 GiB".into());
        }
        if !(8..=1 << 20).contains(&self.sqlite_memory_mb) {
            return Err("sqlite_memory_mb must be between 8 and 1048576".into());
        }
        if self.peers_target == 0 || self.peers_max < self.peers_target || self.peers_max > 4096 {
            return Err(
                "peers_target must be at least 1, and peers_max between it and 4096".into(),
            );
        }
        self.mqtt.validate()?;
        if self.streaming.threshold_rows == 0 || self.streaming.threshold_ms == 0 {
            return Err("streaming thresholds must be positive".into());
        }
        if self.listen.is_empty() {
            return Err("at least one listen address is needed".into());
        }
        self.validate_trust()?;
        for a in self.listen.iter().chain(&self.bootstrap) {
            a.parse::<tarn_net::Multiaddr>().map_err(|e| {
                format!("{a:?} is not a multiaddr ({e}); e.g. /ip4/10.0.0.5/tcp/32048")
            })?;
        }
        for a in &self.bootstrap {
            if !a.contains("/p2p/") {
                return Err(format!(
                    "bootstrap address {a:?} needs the peer's id: .../p2p/<peer-id>"
                ));
            }
        }
        if let Some(c) = &self.cluster {
            cluster_name(c)?;
        }
        if self.watch.poll_ms == 0 {
            return Err("watch.poll_ms must be positive".into());
        }
        if self.replication.sync_ms == 0 || self.replication.ack_timeout_ms == 0 {
            return Err(
                "replication.sync_ms and replication.ack_timeout_ms must be positive".into(),
            );
        }
        if self.publisher.max_queue_bytes == 0 {
            return Err("publisher.max_queue_bytes must be positive".into());
        }
        Ok(())
    }

    pub fn has(&self, s: Service) -> bool {
        self.services.contains(&s)
    }

    /// Parsed listen and bootstrap addresses (valid after `validate`).
    pub fn multiaddrs(&self) -> (Vec<tarn_net::Multiaddr>, Vec<tarn_net::Multiaddr>) {
        let parse = |v: &[String]| v.iter().filter_map(|a| a.parse().ok()).collect();
        (parse(&self.listen), parse(&self.bootstrap))
    }

    pub fn watch_dir(&self) -> PathBuf {
        self.watch
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("watch"))
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }
}

/// The machine's host name (`/etc/hostname`), empty when unknown.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn default_name() -> String {
    let host = Some(hostname().to_ascii_lowercase())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
        .unwrap_or_else(|| "node".into());
    let mut name = format!("tarn-{host}");
    name.truncate(60);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_round_trips() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.rest, c.rest);
        assert_eq!(back.services, c.services);
    }

    /// The configuration example in the README is a valid configuration.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("its end");
        let c: Config = toml::from_str(&readme[start..end]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.name, "edge-1");
        assert_eq!(c.replication.sync_ms, 1000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("nmae = \"x\"").is_err());
        let c: Config = toml::from_str("name = \"bad name\"").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("services = []").unwrap();
        assert!(c.validate().is_err());
        assert!(Service::parse("operatr").is_err());
    }
}
