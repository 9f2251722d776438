//! `tarn node` and `tarn demo`: a node in this process until Ctrl-C, or a
//! local mesh of N nodes with sample data.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::{Config, LocalMesh, Node};

/// How the node writes its log (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

fn init_logs(default: &str, format: LogFormat) {
    // gossipsub warns of every entry gossiped again that it already holds
    // (anti-entropy's repairs are gossiped on): noise, not news.
    let default = format!("{default},libp2p_gossipsub::behaviour=error");
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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

/// `tarn node`: runs a node until Ctrl-C or SIGTERM.
pub fn run_node(cfg: Config, logs: LogFormat) -> anyhow::Result<()> {
    init_logs("info", logs);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = Node::builder(cfg)
            .shutdown_signal(shutdown_signal())
            .start()
            .await?;
        // One plain line on stdout, for people and for scripts that start nodes.
        println!(
            "tarn node listening: rest={} peer_id={} p2p={}",
            node.rest_url(),
            node.peer_id(),
            node.p2p_addrs().join(",")
        );
        node.wait().await
    })
}

/// `tarn demo`: a local mesh of `n` nodes with sample data, until Ctrl-C.
pub fn run_demo(n: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!((1..=300).contains(&n), "--nodes must be between 1 and 300");
    init_logs("warn", LogFormat::Text);
    let tmp = tempfile::tempdir()?;
    let base = dir.unwrap_or_else(|| tmp.path().to_owned());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mesh = start(n, &base).await?;
        load_samples(&mesh).await?;
        print_nodes(&mesh);
        // The mesh is what the demo is for: a query that fails is said,
        // and the mesh keeps running.
        if let Err(e) = first_query(&mesh, n).await {
            println!("network query on node-0 failed: {e:#}");
        }
        print_hints(&mesh);
        let mut mesh = mesh;
        let mut lines = stdin_lines();
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                line = lines.recv() => match line {
                    Some(l) => control(&mut mesh, l.trim()).await,
                    // Stdin closed (a script, `< /dev/null`): run until Ctrl-C.
                    None => {
                        (&mut stop).await;
                        break;
                    }
                },
            }
        }
        mesh.shutdown().await
    })
}

async fn start(n: usize, base: &Path) -> anyhow::Result<LocalMesh> {
    let started = Instant::now();
    let mesh = LocalMesh::start(n, base).await?;
    println!(
        "started {n} nodes in {:.1?} (data under {})",
        started.elapsed(),
        base.display()
    );
    let entries = 4 + (n - 1) * 2;
    // Joins cost every running node a little: a larger mesh takes longer.
    let wait = Duration::from_secs(120 + 2 * n as u64);
    match mesh.wait_converged(entries, wait).await {
        Ok(took) => {
            println!("ledger converged on all {n} nodes ({entries} entries) after {took:.1?}")
        }
        // A slow host: the nodes go on converging; the demo runs on.
        Err(e) => {
            println!("ledger not converged on all {n} nodes after {wait:.0?} ({e:#}); going on")
        }
    }
    Ok(mesh)
}

fn url(node: &Node) -> String {
    format!("http://{}", node.rest_addr())
}

/// Each operator holds its own devices.
async fn load_samples(mesh: &LocalMesh) -> anyhow::Result<()> {
    for (i, node) in mesh.running() {
        let client = Client::new(&url(node));
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
        tokio::task::spawn_blocking(move || client.ingest("demo", "readings", body.as_bytes()))
            .await??;
    }
    Ok(())
}

fn print_nodes(mesh: &LocalMesh) {
    println!();
    println!("{:<8} {:<28} {:<54} services", "node", "REST", "peer_id");
    for (i, node) in mesh.running() {
        println!(
            "{:<8} {:<28} {:<54} {}",
            format!("node-{i}"),
            url(node),
            node.peer_id().to_string(),
            if i == 0 {
                "operator,query,master,publisher"
            } else {
                "operator,query"
            }
        );
    }
}

/// One query over every operator, once each node's table is known.
async fn first_query(mesh: &LocalMesh, n: usize) -> anyhow::Result<()> {
    let client = Client::new(&url(mesh.node(0).expect("node 0 runs")));
    let want = 100 * n as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = client.clone();
        let answer = tokio::task::spawn_blocking(move || {
            c.query(
                "demo",
                "SELECT count(*), count(DISTINCT device), avg(temp) FROM readings",
            )
        })
        .await??
        .ok_json()?;
        if answer["rows"][0][0] == want || Instant::now() > deadline {
            println!(
                "network query on node-0 over {} operators: count(*), count(DISTINCT device), avg(temp) = {}",
                answer["stats"]["replied"], answer["rows"][0]
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_hints(mesh: &LocalMesh) {
    let node = mesh.node(0).expect("node 0 runs");
    let url = url(node);
    let p2p = node.p2p_addrs().into_iter().next().unwrap_or_default();
    println!();
    println!("try:");
    println!("  curl -s {url}/v1/nodes");
    println!("  curl -s {url}/ -H 'command: blockchain get table'");
    println!(
        "  curl -s {url}/ -H 'destination: network' -H 'command: sql demo format=table \"select device, count(*), avg(temp) from readings group by device\"'"
    );
    println!(
        "  tarn query --node {url} --db demo \"select increments(minute, 15, timestamp), min(timestamp), avg(temp) from readings\""
    );
    println!("  tarn query --peer {p2p} --db demo \"select count(*) from readings\"");
    println!();
    println!("type `stop <i>` or `start <i>` to stop or restart node i (it keeps its data and");
    println!("REST address), `nodes` for who is running; Ctrl-C stops the mesh.");
}

/// Lines typed on stdin, read on a thread of their own (bounded).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// One command typed while the demo runs.
async fn control(mesh: &mut LocalMesh, line: &str) {
    let mut words = line.split_whitespace();
    let (verb, arg) = (words.next(), words.next());
    let index = arg
        .and_then(|a| a.trim_start_matches("node-").parse::<usize>().ok())
        .filter(|i| *i < mesh.len());
    let done = match (verb, index) {
        (None, _) => return,
        (Some("stop"), Some(i)) if mesh.node(i).is_none() => {
            Err(anyhow::anyhow!("node-{i} is not running"))
        }
        (Some("stop"), Some(i)) => mesh.stop(i).await.map(|()| format!("node-{i} stopped")),
        (Some("start"), Some(i)) if mesh.node(i).is_some() => {
            Err(anyhow::anyhow!("node-{i} is running already"))
        }
        (Some("start"), Some(i)) => mesh.restart(i).await.map(|()| {
            format!(
                "node-{i} started: {}",
                url(mesh.node(i).expect("just started"))
            )
        }),
        (Some("stop" | "start"), None) => Err(anyhow::anyhow!(
            "which node? a number from 0 to {}",
            mesh.len() - 1
        )),
        (Some("nodes"), _) => {
            let running: Vec<String> = mesh.running().map(|(i, _)| i.to_string()).collect();
            Ok(format!(
                "{} of {} running: {}",
                running.len(),
                mesh.len(),
                running.join(" ")
            ))
        }
        (Some(other), _) => Err(anyhow::anyhow!(
            "unknown command `{other}`: stop <i>, start <i>, nodes"
        )),
    };
    match done {
        Ok(msg) => println!("{msg}"),
        Err(e) => println!("error: {e:#}"),
    }
}
