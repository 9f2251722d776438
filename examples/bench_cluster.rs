//! Cluster replication benchmark (docs/BENCHMARKS.md, issue 5).
//!
//! Two operators of one cluster in this process, real libp2p on loopback,
//! real SQLite files. Measures, over REST:
//! 1. ingest throughput into member A with `consistency=local` and with
//!    `consistency=cluster` (batches of `--batch` rows, `--clients`
//!    connections);
//! 2. replication lag at a steady rate (`--lag-rate` batches/s for
//!    `--lag-secs`): from the moment A acknowledges a batch to the moment B
//!    has committed it (B's `almgm.tsd_<A>` polled), p50/p99/max;
//! 3. catch-up: B stopped, `--catchup-rows` rows written to A, B started
//!    again; time until B holds every row.
//!
//! ```sh
//! cargo run --release --example bench_cluster -- --rows 500000 --catchup-rows 1000000
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tarn::client::Client;

struct Args {
    rows: usize,
    batch: usize,
    clients: usize,
    lag_rate: u64,
    lag_secs: u64,
    catchup_rows: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        rows: 500_000,
        batch: 1000,
        clients: 2,
        lag_rate: 20,
        lag_secs: 10,
        catchup_rows: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "--clients" => a.clients = val()?.parse()?,
            "--lag-rate" => a.lag_rate = val()?.parse()?,
            "--lag-secs" => a.lag_secs = val()?.parse()?,
            "--catchup-rows" => a.catchup_rows = val()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "bench_cluster [--rows N] [--batch N] [--clients N] [--lag-rate BATCHES_PER_S] [--lag-secs S] [--catchup-rows N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.rows == 0 || a.batch == 0 || a.clients == 0 || a.lag_rate == 0 {
        bail!("--rows, --batch, --clients and --lag-rate must be positive");
    }
    Ok(a)
}

fn body(first: usize, n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 100);
    s.push('[');
    for i in first..first + n {
        if i > first {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"timestamp\":\"2024-01-01T00:00:00.000Z\",\"device\":\"dev-{:03}\",\"seq\":{i},\"m1\":{:.3},\"m2\":{:.2}}}",
            i % 100,
            (i as f64 * 0.001).sin(),
            (i % 997) as f64 * 0.05
        ));
    }
    s.push(']');
    s.into_bytes()
}

fn config(
    dir: &std::path::Path,
    name: &str,
    bootstrap: Vec<String>,
) -> anyhow::Result<tarn::Config> {
    let mut cfg = tarn::Config {
        name: name.into(),
        data_dir: dir.join(name),
        rest: "127.0.0.1:0".parse()?,
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap,
        cluster: Some("c1".into()),
        mdns: false,
        ..Default::default()
    };
    cfg.watch.enabled = false;
    Ok(cfg)
}

fn both_alive(c: &Client) -> bool {
    c.get("/v1/clusters", &[])
        .ok()
        .and_then(|a| a.ok_json().ok())
        .and_then(|v| {
            let cl = v["clusters"]
                .as_array()?
                .iter()
                .find(|x| x["cluster"] == "c1")?
                .clone();
            Some(
                cl["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["alive"] == true)
                    .count()
                    == 2,
            )
        })
        .unwrap_or(false)
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !f() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One local query's single integer.
fn scalar(c: &Client, db: &str, sql: &str) -> Option<i64> {
    c.query_with(&json!({"db": db, "sql": sql, "scope": "local"}))
        .ok()?
        .ok_json()
        .ok()?["rows"][0][0]
        .as_i64()
}

/// Sends `n` rows from row `first` in batches, from the configured
/// clients; returns rows/s.
fn ingest(
    args: &Args,
    url: &str,
    table: &str,
    first: usize,
    n: usize,
    consistency: &str,
) -> anyhow::Result<f64> {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (first..first + n)
            .step_by(args.batch)
            .map(|i| body(i, args.batch.min(first + n - i)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (bodies, next, url) = (bodies.clone(), next.clone(), url.to_owned());
            let path = format!("/v1/data/bench/{table}?consistency={consistency}");
            let cluster = consistency == "cluster";
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::new(&url);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i) else {
                        return Ok(());
                    };
                    let v = c
                        .post(&path, &[("content-type", "application/json")], b)?
                        .ok_json()?;
                    if cluster
                        && v["replicas"]["confirmed"]
                            .as_array()
                            .is_none_or(|c| c.is_empty())
                    {
                        bail!("a batch was not confirmed by the other member: {v}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sender thread")?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    println!(
        "machine: {} cores; rows: {}, batch: {}, clients: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.rows,
        args.batch,
        args.clients
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let a = rt.block_on(tarn::Node::start(config(tmp.path(), "a", Vec::new())?))?;
    let boot: Vec<String> = a.p2p_addrs().into_iter().take(1).collect();
    let b_cfg = config(tmp.path(), "b", boot)?;
    let mut b = Some(rt.block_on(tarn::Node::start(b_cfg.clone()))?);
    let a_url = format!("http://{}", a.rest_addr());
    let ca = Client::new(&a_url);
    let mut cb = Client::new(&format!(
        "http://{}",
        b.as_ref().expect("started").rest_addr()
    ));
    wait(
        "the members to see each other",
        Duration::from_secs(30),
        || both_alive(&ca) && both_alive(&cb),
    )?;
    let member_table = format!("tsd_{}", a.peer_id());

    // 1. Throughput, local vs cluster.
    let local = ingest(&args, &a_url, "local_t", 0, args.rows, "local")?;
    println!("ingest, consistency=local:   {local:.0} rows/s");
    let cluster = ingest(&args, &a_url, "cluster_t", 0, args.rows, "cluster")?;
    println!(
        "ingest, consistency=cluster: {cluster:.0} rows/s ({:.0}% of local)",
        cluster / local * 100.0
    );
    let total = 2 * args.rows as i64;
    let t = Instant::now();
    wait("b to hold both tables", Duration::from_secs(300), || {
        scalar(&cb, "bench", "SELECT count(*) FROM local_t").unwrap_or(0)
            + scalar(&cb, "bench", "SELECT count(*) FROM cluster_t").unwrap_or(0)
            == total
    })?;
    println!(
        "b held every row {:.0} ms after the last acknowledgement",
        t.elapsed().as_secs_f64() * 1000.0
    );

    // 2. Lag at a steady rate: ack on A -> committed on B.
    let acked: Arc<Mutex<Vec<(i64, Instant)>>> = Default::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, done, url) = (acked.clone(), done.clone(), a_url.clone());
        let (rate, secs, batch) = (args.lag_rate, args.lag_secs, args.batch);
        std::thread::spawn(move || -> anyhow::Result<()> {
            let c = Client::new(&url);
            let start = Instant::now();
            let n = rate * secs;
            for i in 0..n {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let v = c
                    .ingest("bench", "lag_t", &body(i as usize * batch, batch))?
                    .ok_json()?;
                let id: i64 = v["batch"].as_str().context("a batch id")?.parse()?;
                acked.lock().expect("lock").push((id, Instant::now()));
            }
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
    };
    let mut lags = Vec::new();
    let mut seen = 0usize;
    loop {
        let max = scalar(
            &cb,
            "almgm",
            &format!("SELECT max(file_id) FROM {member_table}"),
        )
        .unwrap_or(0);
        let now = Instant::now();
        let list = acked.lock().expect("lock").clone();
        while seen < list.len() && list[seen].0 <= max {
            lags.push(now.duration_since(list[seen].1).as_secs_f64() * 1000.0);
            seen += 1;
        }
        if done.load(Ordering::SeqCst) && seen == list.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().expect("writer")?;
    lags.sort_by(f64::total_cmp);
    println!(
        "replication lag at {} batches/s of {} rows ({} batches): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.lag_rate,
        args.batch,
        lags.len(),
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0)
    );

    // 3. Catch-up of a member that was down.
    if args.catchup_rows > 0 {
        rt.block_on(b.take().expect("b runs").shutdown())?;
        ingest(&args, &a_url, "catchup_t", 0, args.catchup_rows, "local")?;
        let t = Instant::now();
        let node = rt.block_on(tarn::Node::start(b_cfg))?;
        cb = Client::new(&format!("http://{}", node.rest_addr()));
        b = Some(node);
        let want = args.catchup_rows as i64;
        wait("b to catch up", Duration::from_secs(1200), || {
            scalar(&cb, "bench", "SELECT count(*) FROM catchup_t") == Some(want)
        })?;
        println!(
            "catch-up: b restarted and pulled {} rows in {:.2} s",
            args.catchup_rows,
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(b) = b {
        rt.block_on(b.shutdown())?;
    }
    rt.block_on(a.shutdown())?;
    Ok(())
}
