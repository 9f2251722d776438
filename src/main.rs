//! The `tarn` binary: parses the command line (flags, a TOML file) into a
//! configuration and calls the library's commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tarn::cli::OutFormat;
use tarn::client::DEFAULT_NODE;
use tarn::{Config, Durability, Service};

// An allocator that gives memory back to the system once it is free (the
// system's keeps what a burst of ingest and queries took).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tarn",
    version,
    about = "tarn: a peer-to-peer edge data lake. One binary, every role."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Trust this CA (PEM) for nodes that serve HTTPS, instead of the
    /// public roots (see `tarn cert`).
    #[arg(long, global = true, env = "TARN_CA")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Members of every cluster, alive or not, their batches and lag.
    Status {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare the members' batch inventories and row counts; exits
    /// non-zero on any difference.
    Verify {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (operator, query, master, publisher services).
    Node(Box<NodeArgs>),
    /// Run a SELECT on a node and print the rows.
    Query {
        /// The node's REST address.
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// Query over libp2p instead of REST: a node's multiaddr ending in
        /// /p2p/<peer-id> (as printed at its start). No node runs here.
        #[arg(long, conflicts_with = "node")]
        peer: Option<String>,
        /// With --peer: query as this key (from `tarn key`, admitted with
        /// `tarn admit`) instead of a throwaway one, for closed networks.
        #[arg(long, requires = "peer")]
        key: Option<PathBuf>,
        /// The logical database.
        #[arg(long)]
        db: String,
        /// One SELECT statement.
        sql: String,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
    },
    /// Send JSON rows (an array or one object per line) from a file or stdin.
    Ingest {
        /// The node to send to; repeat it with the other members of the
        /// cluster to move on when one cannot be reached.
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE, value_delimiter = ',')]
        node: Vec<String>,
        /// `local`: acknowledged once the node committed it; `cluster`: once
        /// every live member of its cluster did.
        #[arg(long, default_value = "local")]
        consistency: String,
        #[arg(long)]
        db: String,
        #[arg(long)]
        table: String,
        /// The file to send; `-` or nothing reads stdin.
        file: Option<String>,
        /// Rows per batch.
        #[arg(long, default_value_t = 5000)]
        batch_rows: usize,
    },
    /// Show a node's status.
    Status {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
    },
    /// Clusters: members, liveness, batches and lag; `verify` compares them.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// List the nodes of the network, by PeerId, with liveness.
    Nodes {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the policies in the ledger, optionally of one type.
    Policies {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// A policy type (root key), e.g. operator, cluster, table.
        kind: Option<String>,
    },
    /// Start a local mesh of N nodes in this process, with sample data, and
    /// keep it running until Ctrl-C.
    Demo {
        /// How many nodes (1 to 300; type `stop <i>` / `start <i>` while it runs).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Where the nodes keep their data [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Manage policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Closed networks: `tarn network create` makes the root key.
    Network {
        #[command(subcommand)]
        action: NetworkAction,
    },
    /// Make a key for a libp2p client (`tarn query --peer --key`) and print
    /// its PeerId, to admit with `tarn admit`.
    Key {
        /// Where to write the key (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a small CA (once per directory) and a server certificate for
    /// HTTPS on the REST port.
    Cert {
        /// The directory for ca.pem, ca.key, <host>.pem and <host>.key.
        #[arg(long)]
        out: PathBuf,
        /// The names and IP addresses clients use for the node (repeat, or
        /// comma separate); the first names the files.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
    },
    /// Admit a peer to a closed network: signs a `member` policy with an
    /// admin key here and hands it to a node, which spreads it.
    Admit {
        /// The peer's id (12D3KooW..., printed at its start and in /v1/status).
        peer: String,
        /// What it may run, comma separated.
        #[arg(long, value_delimiter = ',', value_parser = Service::parse, required = true)]
        services: Vec<Service>,
        /// An operator's cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// It may admit and revoke others too.
        #[arg(long)]
        admin: bool,
        /// The network's root key (or an admin's).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
    },
    /// REST users of a closed network (for nodes started with --auth).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Revoke a member: within seconds every node closes its connections
    /// and ignores its later policies.
    Revoke {
        peer: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user, signed with an admin key; prints its token once.
    Add {
        name: String,
        /// reader (queries, get), writer (also ingest, flush), admin (also policies).
        #[arg(long, value_parser = tarn::api::auth::Role::parse)]
        role: tarn::api::auth::Role,
        /// Limit the user to these databases (repeat or comma separate) [default: all].
        #[arg(long, value_delimiter = ',')]
        db: Vec<String>,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
    },
    /// Remove a user: its tokens stop working on every node.
    Remove {
        name: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
    },
}

#[derive(Subcommand)]
enum NetworkAction {
    /// Make a closed network's root key and print the network's id.
    Create {
        /// Where to write the key (never overwritten; keep it safe).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Sign and publish a policy from a JSON file (or `-` for stdin), e.g.
    /// {"sensor_site": {"name": "site-7", "city": "Oslo"}}.
    Add {
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        file: String,
    },
}

/// Flags of `tarn node`; each overrides the same key of the `--config` file.
#[derive(Args)]
struct NodeArgs {
    /// A TOML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's name [default: tarn-<hostname>].
    #[arg(long)]
    name: Option<String>,
    /// Where the node keeps its data [default: ./tarn-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST listen address [default: 127.0.0.1:32049].
    #[arg(long)]
    rest: Option<String>,
    /// Services to run, comma separated [default: operator,query,master].
    #[arg(long, value_delimiter = ',', value_parser = Service::parse)]
    services: Option<Vec<Service>>,
    /// `normal` survives a crash of the process; `fsync` also a power cut [default: normal].
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Largest request body in bytes [default: 67108864].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Watched directory for data files [default: <data-dir>/watch].
    #[arg(long)]
    watch_dir: Option<PathBuf>,
    /// Streaming mode: flush a table's buffer at this many rows [default: 10000].
    #[arg(long)]
    stream_rows: Option<usize>,
    /// Streaming mode: flush a table's buffer after this many ms [default: 1000].
    #[arg(long)]
    stream_ms: Option<u64>,
    /// Streaming mode: write every PUT at once.
    #[arg(long)]
    write_immediate: bool,
    /// libp2p listen address, repeatable [default: /ip4/0.0.0.0/tcp/32048 and /ip4/0.0.0.0/udp/32048/quic-v1].
    #[arg(long)]
    listen: Vec<String>,
    /// A peer to join through, repeatable: /ip4/A.B.C.D/tcp/32048/p2p/<peer-id>.
    #[arg(long)]
    bootstrap: Vec<String>,
    /// The cluster this operator belongs to.
    #[arg(long)]
    cluster: Option<String>,
    /// A closed network's id (from `tarn network create`): only admitted
    /// members take part [default: an open network].
    #[arg(long)]
    network: Option<String>,
    /// The network's root key: this node admits itself with it.
    #[arg(long)]
    admin_key: Option<PathBuf>,
    /// Every REST request needs a user's token (see `tarn user add`).
    #[arg(long)]
    auth: bool,
    /// Serve REST over HTTPS with this certificate chain (PEM; see `tarn cert`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not look for peers on the local network by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// How the log (stderr) is written: text, or json (one object a line;
    /// with RUST_LOG=tarn=debug, a line per REST request with its outcome).
    #[arg(long, value_name = "FORMAT", env = "TARN_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
    /// Run an MQTT broker for devices on HOST:PORT (alone: 0.0.0.0:32150);
    /// `run msg client where broker = local` maps what they publish to rows.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "0.0.0.0:32150")]
    mqtt: Option<String>,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "normal" => Ok(Durability::Normal),
        "fsync" => Ok(Durability::Fsync),
        _ => Err(format!(
            "unknown durability {s:?}; expected normal or fsync"
        )),
    }
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
            }
            None => Config::default(),
        };
        if let Some(v) = self.name {
            cfg.name = v;
        }
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.rest {
            cfg.rest = v.parse().map_err(|_| {
                anyhow::anyhow!("--rest {v:?} is not HOST:PORT (an IP address and a port)")
            })?;
        }
        if let Some(v) = self.services {
            cfg.services = v;
        }
        if let Some(v) = self.durability {
            cfg.durability = v;
        }
        if let Some(v) = self.max_body_bytes {
            cfg.max_body_bytes = v;
        }
        if let Some(v) = self.watch_dir {
            cfg.watch.dir = Some(v);
        }
        if let Some(v) = self.stream_rows {
            cfg.streaming.threshold_rows = v;
        }
        if let Some(v) = self.stream_ms {
            cfg.streaming.threshold_ms = v;
        }
        if self.write_immediate {
            cfg.streaming.write_immediate = true;
        }
        if !self.listen.is_empty() {
            cfg.listen = self.listen;
        }
        if !self.bootstrap.is_empty() {
            cfg.bootstrap = self.bootstrap;
        }
        if let Some(c) = self.cluster {
            cfg.cluster = Some(c);
        }
        if let Some(n) = self.network {
            cfg.network = Some(n);
        }
        if let Some(k) = self.admin_key {
            cfg.admin_key = Some(k);
        }
        if self.auth {
            cfg.auth.enabled = true;
        }
        if self.tls_cert.is_some() {
            cfg.tls.cert = self.tls_cert;
            cfg.tls.key = self.tls_key;
        }
        if self.no_mdns {
            cfg.mdns = false;
        }
        if let Some(v) = self.mqtt {
            cfg.mqtt.listen = Some(v.parse().map_err(|_| {
                anyhow::anyhow!("--mqtt {v:?} is not HOST:PORT (an IP address and a port)")
            })?);
        }
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ca) = &cli.ca {
        tarn::client::trust_ca(ca)?;
    }
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Node(args) => run_node(*args),
        Command::Query {
            node,
            peer,
            key,
            db,
            sql,
            format,
        } => tarn::cli::query(
            &node,
            peer.as_deref(),
            key.as_deref(),
            &db,
            &sql,
            format,
            out,
        ),
        Command::Ingest {
            node,
            consistency,
            db,
            table,
            file,
            batch_rows,
        } => tarn::cli::ingest(
            &node,
            &db,
            &table,
            file.as_deref(),
            batch_rows,
            &consistency,
        ),
        Command::Cluster { action } => {
            let (node, verify, json) = match action {
                ClusterAction::Status { node, json } => (node, false, json),
                ClusterAction::Verify { node, json } => (node, true, json),
            };
            tarn::cli::cluster(&node, verify, json, out)
        }
        Command::Status { node } => tarn::cli::status(&node, out),
        Command::Demo { nodes, dir } => tarn::cli::run_demo(nodes, dir),
        Command::Nodes { node, json } => tarn::cli::nodes(&node, json, out),
        Command::Policies { node, kind } => tarn::cli::policies(&node, kind.as_deref(), out),
        Command::Policy {
            action: PolicyAction::Add { node, file },
        } => tarn::cli::policy_add(&node, &file, out),
        Command::Key { out: file } => tarn::cli::key_create(&file, out),
        Command::Cert { out: dir, host } => tarn::cli::cert(&dir, &host, out),
        Command::Network {
            action: NetworkAction::Create { out: file },
        } => tarn::cli::network_create(&file, out),
        Command::Admit {
            peer,
            services,
            cluster,
            admin,
            key,
            node,
        } => tarn::cli::admit(
            &node,
            &key,
            &tarn::cli::Admission {
                peer,
                services,
                cluster,
                admin,
            },
            out,
        ),
        Command::User { action } => run_user(action),
        Command::Revoke { peer, key, node } => tarn::cli::revoke(&node, &key, &peer, out),
    }
}

fn run_user(action: UserAction) -> anyhow::Result<()> {
    let out = &mut std::io::stdout();
    match action {
        UserAction::Add {
            name,
            role,
            db,
            key,
            node,
        } => tarn::cli::user_add(&node, &key, &name, role, &db, out),
        UserAction::Remove { name, key, node } => tarn::cli::user_remove(&node, &key, &name, out),
    }
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let logs = match args.log_format.as_str() {
        "json" => tarn::cli::LogFormat::Json,
        _ => tarn::cli::LogFormat::Text,
    };
    tarn::cli::run_node(args.into_config()?, logs)
}
