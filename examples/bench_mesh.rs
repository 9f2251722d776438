//! Ledger propagation benchmark (docs/BENCHMARKS.md): how long until a new
//! policy is in the view of every node, for N in-process nodes on loopback,
//! what gossip and anti-entropy traffic it costs, and the memory of an idle
//! `tarn node` process.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench_mesh -- 10 50 100
//! ```

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tarn::LocalMesh;

const TRIALS: usize = 40;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mesh = LocalMesh::start(n, dir.path()).await?;
    let entries = 4 + (n - 1) * 2;
    let conv = mesh
        .wait_converged(entries, Duration::from_secs(300))
        .await?;
    println!(
        "N={n}: started in {:.1?}, initial ledger converged {:.1?} later",
        started.elapsed() - conv,
        conv
    );
    // Let start-up traffic settle, then measure only the trials.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let traffic = |m: &LocalMesh| {
        m.running()
            .fold((0u64, 0u64, 0u64, 0u64), |acc, (_, node)| {
                let s = &node.mesh().stats;
                (
                    acc.0 + s.gossip_in_msgs.load(Relaxed),
                    acc.1 + s.gossip_in_bytes.load(Relaxed),
                    acc.2 + s.rpc_in_msgs.load(Relaxed),
                    acc.3 + s.rpc_in_bytes.load(Relaxed),
                )
            })
    };
    let before = traffic(&mesh);
    let t0 = Instant::now();
    let mut times = Vec::with_capacity(TRIALS);
    for t in 0..TRIALS {
        let origin = (t * 7919) % n;
        let m = mesh.node(origin).expect("running").mesh().clone();
        let policy = tarn_ledger::policy::Policy::parse(&format!(
            r#"{{"bench": {{"trial": {t}, "n": {n}}}}}"#
        ))?;
        let id = policy.id();
        let start = Instant::now();
        m.publish(&policy, None).await?;
        loop {
            let everywhere = mesh
                .running()
                .all(|(_, node)| node.mesh().with_view(|v| v.get(&id).is_some()));
            if everywhere {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "trial {t} did not propagate"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(start.elapsed());
    }
    let elapsed = t0.elapsed();
    let after = traffic(&mesh);
    times.sort();
    let per = |x: u64| x as f64 / TRIALS as f64;
    println!(
        "N={n}: visible on all nodes p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({TRIALS} policies)",
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "N={n}: per policy: {:.0} gossip deliveries ({:.1} KB), {:.0} anti-entropy requests ({:.1} KB) over {:.1?} (the periodic sync runs regardless)",
        per(after.0 - before.0),
        per(after.1 - before.1) / 1e3,
        per(after.2 - before.2),
        per(after.3 - before.3) / 1e3,
        elapsed
    );
    mesh.shutdown().await
}

fn idle_rss_mb() -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("tarn"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the tarn binary first: cargo build --release"))?;
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(bin)
        .args([
            "node",
            "--rest",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![10, 50, 100]
    } else {
        sizes
    };
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match idle_rss_mb() {
        Ok(mb) => {
            println!("idle tarn node (operator,query,master; 5 s after start): {mb:.1} MB RSS")
        }
        Err(e) => println!("idle memory not measured: {e}"),
    }
    let rt = tokio::runtime::Runtime::new()?;
    for n in sizes {
        rt.block_on(run(n))?;
    }
    Ok(())
}
