//! The mesh at size (docs/BENCHMARKS.md), for N in-process nodes on
//! loopback: start-up time, time until every node knows every other,
//! links and descriptors per node, idle traffic and CPU per node, how long
//! until a new policy is in the view of every node and what it costs; and
//! the memory of an idle `tarn node` process.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench_mesh -- 50 100 200 300
//! ```

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tarn::LocalMesh;

const TRIALS: usize = 40;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Process-wide counters: open descriptors, loopback bytes received (all
/// of the mesh's packets, headers included), CPU seconds.
fn process_counters() -> (usize, u64, f64) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let lo = std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|b| b.parse().ok())
        })
        .unwrap_or(0);
    // utime + stime, in clock ticks (100 a second on Linux).
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            let rest = t.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / 100.0)
        })
        .unwrap_or(0.0);
    (fds, lo, cpu)
}

fn traffic(m: &LocalMesh) -> (u64, u64, u64, u64, u64, u64) {
    m.running().fold((0, 0, 0, 0, 0, 0), |acc, (_, node)| {
        let s = &node.mesh().stats;
        (
            acc.0 + s.gossip_in_msgs.load(Relaxed),
            acc.1 + s.gossip_in_bytes.load(Relaxed),
            acc.2 + s.rpc_in_msgs.load(Relaxed),
            acc.3 + s.rpc_in_bytes.load(Relaxed),
            acc.4 + s.links_opened.load(Relaxed),
            acc.5 + s.rumors_in_msgs.load(Relaxed),
        )
    })
}

/// Every node holds every node's policy and believes every other node up.
fn everyone_knows_everyone(m: &LocalMesh, n: usize, entries: usize) -> bool {
    m.converged(entries)
        && m.running()
            .all(|(_, node)| node.mesh().liveness_counts().0 + 1 >= n)
}

async fn run(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, lo_b, cpu_b) = process_counters();
    let started = Instant::now();
    let mesh = LocalMesh::start(n, dir.path()).await?;
    let startup = started.elapsed();
    let (s, (_, lo_s, cpu_s)) = (traffic(&mesh), process_counters());
    let nf = n as f64;
    println!(
        "N={n}: start-up, per node: {:.0} gossip deliveries ({:.0} rumors, {:.1} KB), {:.0} requests ({:.1} KB), {:.1} links opened, {:.0} KB on the wire; {:.1} CPU seconds in all",
        s.0 as f64 / nf,
        s.5 as f64 / nf,
        s.1 as f64 / nf / 1e3,
        s.2 as f64 / nf,
        s.3 as f64 / nf / 1e3,
        s.4 as f64 / nf,
        (lo_s - lo_b) as f64 / nf / 1e3,
        cpu_s - cpu_b
    );
    // A lower bound (each node publishes at least two policies, node 0 more;
    // most publish three): the heads must also agree, which is exact.
    let entries = 4 + (n - 1) * 2;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut report = Instant::now() + Duration::from_secs(10);
    while !everyone_knows_everyone(&mesh, n, entries) {
        anyhow::ensure!(Instant::now() < deadline, "N={n}: no convergence in 600 s");
        if Instant::now() >= report {
            report += Duration::from_secs(10);
            let (least_entries, least_alive) =
                mesh.running()
                    .fold((usize::MAX, usize::MAX), |(e, a), (_, node)| {
                        (
                            e.min(node.mesh().ledger_state().1),
                            a.min(node.mesh().liveness_counts().0 + 1),
                        )
                    });
            eprintln!(
                "N={n}: {:.0?} in: the least informed node holds {least_entries} entries (at least {entries} due), knows {least_alive} of {n} up",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let known = started.elapsed() - startup;
    println!(
        "N={n}: started in {:.1?}; every node knew every other (ledger and liveness) {:.1?} later",
        startup, known
    );
    // Let start-up traffic settle, then measure an idle minute's share.
    tokio::time::sleep(Duration::from_secs(15)).await;
    const IDLE: Duration = Duration::from_secs(30);
    let (t0, (_, lo0, cpu0)) = (traffic(&mesh), process_counters());
    tokio::time::sleep(IDLE).await;
    let (t1, (fds, lo1, cpu1)) = (traffic(&mesh), process_counters());
    let links: Vec<usize> = mesh
        .running()
        .map(|(_, node)| node.mesh().connected_count())
        .collect();
    let secs = IDLE.as_secs_f64();
    println!(
        "N={n}: links per node mean {:.1}, max {}; {} descriptors in the process ({:.1} per node)",
        links.iter().sum::<usize>() as f64 / nf,
        links.iter().max().copied().unwrap_or(0),
        fds,
        fds as f64 / nf
    );
    println!(
        "N={n}: idle, per node: gossip {:.0} B/s ({:.2} msgs/s), requests {:.0} B/s ({:.2}/s), {:.0} B/s on the wire (loopback, headers included), {:.3} links opened/s, CPU {:.2}% of a core",
        (t1.1 - t0.1) as f64 / nf / secs,
        (t1.0 - t0.0) as f64 / nf / secs,
        (t1.3 - t0.3) as f64 / nf / secs,
        (t1.2 - t0.2) as f64 / nf / secs,
        (lo1 - lo0) as f64 / nf / secs,
        (t1.4 - t0.4) as f64 / nf / secs,
        (cpu1 - cpu0) / secs / nf * 100.0
    );
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
