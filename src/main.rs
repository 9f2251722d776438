//! The `tarn` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tarn::cli::OutFormat;
use tarn::client::DEFAULT_NODE;
use tarn::{Config, Durability, Service};

#[derive(Parser)]
#[command(
    name = "tarn",
    version,
    about = "tarn: a peer-to-peer edge data lake. One binary, every role."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    Node(NodeArgs),
    /// Run a SELECT on a node and print the rows.
    Query {
        /// The node's REST address.
        #[arg(long, env = "TARN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// Query over libp2p instead of REST: a node's multiaddr ending in
        /// /p2p/<peer-id> (as printed at its start). No node runs here.
        #[arg(long, conflicts_with = "node")]
        peer: Option<String>,
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
        /// How many nodes.
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
    /// Do not look for peers on the local network by mDNS.
    #[arg(long)]
    no_mdns: bool,
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
        if self.no_mdns {
            cfg.mdns = false;
        }
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => run_node(args),
        Command::Query {
            node,
            peer,
            db,
            sql,
            format,
        } => tarn::cli::query(
            &node,
            peer.as_deref(),
            &db,
            &sql,
            format,
            &mut std::io::stdout(),
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
            tarn::cli::cluster(&node, verify, json, &mut std::io::stdout())
        }
        Command::Status { node } => tarn::cli::status(&node, &mut std::io::stdout()),
        Command::Demo { nodes, dir } => run_demo(nodes, dir),
        Command::Nodes { node, json } => tarn::cli::nodes(&node, json, &mut std::io::stdout()),
        Command::Policies { node, kind } => {
            tarn::cli::policies(&node, kind.as_deref(), &mut std::io::stdout())
        }
        Command::Policy {
            action: PolicyAction::Add { node, file },
        } => tarn::cli::policy_add(&node, &file, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tarn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = tarn::Node::start(cfg).await?;
        // One plain line on stdout, for people and for scripts that start nodes.
        println!(
            "tarn node listening: rest=http://{} peer_id={} p2p={}",
            node.rest_addr(),
            node.peer_id(),
            node.p2p_addrs().join(",")
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await
    })
}

fn run_demo(n: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!((1..=200).contains(&n), "--nodes must be between 1 and 200");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let tmp = tempfile::tempdir()?;
    let base = dir.unwrap_or_else(|| tmp.path().to_owned());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let started = std::time::Instant::now();
        let mesh = tarn::LocalMesh::start(n, &base).await?;
        println!("started {n} nodes in {:.1?} (data under {})", started.elapsed(), base.display());
        let entries = 4 + (n - 1) * 2;
        let took = mesh.wait_converged(entries, std::time::Duration::from_secs(120)).await?;
        println!("ledger converged on all {n} nodes ({entries} entries) after {took:.1?}");
        // Sample data: each operator holds its own devices.
        for (i, node) in mesh.running() {
            let client = tarn::client::Client::new(&format!("http://{}", node.rest_addr()));
            let rows: Vec<String> = (0..100)
                .map(|k| {
                    format!(
                        "{{\"timestamp\": \"2024-05-01T{:02}:{:02}:00Z\", \"device\": \"dev-{i}-{}\", \"temp\": {:.1}}}",
                        k / 60,
                        k % 60,
                        k % 4,
                        18.0 + (k as f64 * 0.37 + i as f64).sin() * 4.0
                    )
                })
                .collect();
            let body = rows.join("\n");
            tokio::task::spawn_blocking(move || client.ingest("demo", "readings", body.as_bytes())).await??;
        }
        println!();
        println!("{:<8} {:<28} {:<54} services", "node", "REST", "peer_id");
        for (i, node) in mesh.running() {
            println!(
                "{:<8} {:<28} {:<54} {}",
                format!("node-{i}"),
                format!("http://{}", node.rest_addr()),
                node.peer_id().to_string(),
                if i == 0 { "operator,query,master,publisher" } else { "operator,query" }
            );
        }
        let url = format!("http://{}", mesh.node(0).expect("node 0 runs").rest_addr());
        // One query over every operator, once each node's table is known.
        let client = tarn::client::Client::new(&url);
        let want = 100 * n as i64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let c = client.clone();
            let answer = tokio::task::spawn_blocking(move || {
                c.query("demo", "SELECT count(*), count(DISTINCT device), avg(temp) FROM readings")
            })
            .await??
            .ok_json()?;
            if answer["rows"][0][0] == want || std::time::Instant::now() > deadline {
                println!(
                    "network query on node-0 over {} operators: count(*), count(DISTINCT device), avg(temp) = {}",
                    answer["stats"]["replied"], answer["rows"][0]
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let p2p = mesh.node(0).expect("node 0 runs").p2p_addrs().into_iter().next().unwrap_or_default();
        println!();
        println!("try:");
        println!("  curl -s {url}/v1/nodes");
        println!("  curl -s {url}/ -H 'command: blockchain get table'");
        println!("  curl -s {url}/ -H 'destination: network' -H 'command: sql demo format=table \"select device, count(*), avg(temp) from readings group by device\"'");
        println!("  tarn query --node {url} --db demo \"select increments(minute, 15, timestamp), min(timestamp), avg(temp) from readings\"");
        println!("  tarn query --peer {p2p} --db demo \"select count(*) from readings\"");
        println!();
        println!("Ctrl-C stops the mesh.");
        shutdown_signal().await;
        mesh.shutdown().await
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds on unix");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
