//! Distributed query benchmark (docs/BENCHMARKS.md): latency (p50, p99) and
//! queries/s through a query node for a point query, a grouped aggregate and
//! an `increments` query, with the rows spread over 1, 2, 4 and 8 operators
//! on loopback, beside the same queries run locally on one operator holding
//! every row. All nodes run in this process; traffic goes over real libp2p
//! connections on 127.0.0.1.
//!
//! ```sh
//! cargo run --release --example bench_query -- [--rows 1000000] [--ops 1,2,4,8]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tarn::client::Client;
use tarn::{LocalMesh, Service};

const START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Rows `lo..hi` of the data set: one a second, 100 devices, 3 metrics.
fn batch(lo: usize, hi: usize) -> Vec<u8> {
    let mut out = String::with_capacity((hi - lo) * 110);
    out.push('[');
    for i in lo..hi {
        if i > lo {
            out.push(',');
        }
        let ts = tarn_query::time::format_iso((START + i as i64) * 1_000_000);
        let x = i as f64;
        out.push_str(&format!(
            r#"{{"timestamp":"{ts}","device":"dev-{}","temp":{},"hum":{},"volt":{}}}"#,
            i % 100,
            (x * 0.37).sin() * 20.0 + 15.0,
            (x * 0.11).cos() * 30.0 + 50.0,
            220.0 + (i % 7) as f64 * 0.5
        ));
    }
    out.push(']');
    out.into_bytes()
}

fn load(client: &Client, lo: usize, hi: usize) -> anyhow::Result<()> {
    let mut i = lo;
    while i < hi {
        let j = (i + 10_000).min(hi);
        client
            .ingest("bench", "readings", &batch(i, j))?
            .ok_json()?;
        i = j;
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run_query(client: &Client, sql: &str, scope: &str) -> anyhow::Result<serde_json::Value> {
    client
        .query_with(&json!({"db": "bench", "sql": sql, "scope": scope}))?
        .ok_json()
}

/// Runs `sql` `n` times (after one warm-up) and prints p50, p99 and queries/s.
fn measure(label: &str, client: &Client, sql: &str, scope: &str, n: usize) -> anyhow::Result<()> {
    let first = run_query(client, sql, scope).with_context(|| sql.to_owned())?;
    let rows = first["rows"].as_array().map_or(0, Vec::len);
    let mut times = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        run_query(client, sql, scope)?;
        times.push(s.elapsed());
    }
    let total = t0.elapsed();
    times.sort();
    println!(
        "  {label:<10} p50 {:>9.2?}  p99 {:>9.2?}  {:>8.1} q/s  ({rows} rows out)",
        pct(&times, 0.5),
        pct(&times, 0.99),
        n as f64 / total.as_secs_f64()
    );
    Ok(())
}

fn queries(rows: usize) -> Vec<(&'static str, String, usize)> {
    let mid = tarn_query::time::format_storage((START + rows as i64 / 2) * 1_000_000);
    vec![
        (
            "point",
            format!("SELECT device, temp FROM readings WHERE timestamp = '{mid}'"),
            300,
        ),
        (
            "grouped",
            "SELECT device, avg(temp), max(hum), count(*) FROM readings GROUP BY device".into(),
            10,
        ),
        (
            "increments",
            "SELECT increments(hour, 1, timestamp), min(timestamp), avg(volt) FROM readings".into(),
            10,
        ),
    ]
}

fn main() -> anyhow::Result<()> {
    let rows: usize = arg("--rows", "1000000").parse()?;
    let ops: Vec<usize> = arg("--ops", "1,2,4,8")
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "{rows} rows; {} cores",
        std::thread::available_parallelism()?
    );

    // Baseline: one operator holding every row, queried locally.
    {
        let dir = tempfile::tempdir()?;
        let mesh = rt.block_on(LocalMesh::start(1, dir.path()))?;
        let c = Client::new(&format!("http://{}", mesh.node(0).expect("up").rest_addr()));
        let t = Instant::now();
        load(&c, 0, rows)?;
        println!("local, one operator (loaded in {:.1?}):", t.elapsed());
        for (label, sql, n) in queries(rows) {
            measure(label, &c, &sql, "local", n)?;
        }
        rt.block_on(mesh.shutdown())?;
    }

    for &k in &ops {
        let dir = tempfile::tempdir()?;
        // Node 0 is the query node (no data); nodes 1..=k are operators.
        let mesh = rt.block_on(LocalMesh::start_with(k + 1, dir.path(), |i, cfg| {
            if i == 0 {
                cfg.services = vec![Service::Query, Service::Master];
            } else {
                cfg.services = vec![Service::Operator];
            }
        }))?;
        rt.block_on(mesh.wait_converged(2 + k, Duration::from_secs(120)))?;
        let clients: Vec<Client> = (0..=k)
            .map(|i| Client::new(&format!("http://{}", mesh.node(i).expect("up").rest_addr())))
            .collect();
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let hs: Vec<_> = (1..=k)
                .map(|i| {
                    let c = &clients[i];
                    s.spawn(move || load(c, rows * (i - 1) / k, rows * i / k))
                })
                .collect();
            for h in hs {
                h.join().expect("a loader panicked")?;
            }
            Ok(())
        })?;
        let q = &clients[0];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = run_query(q, "SELECT count(*) FROM readings", "network");
            if let Ok(v) = &v
                && v["rows"][0][0] == rows as u64
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "operators not visible: {v:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "network, {k} operator(s) + query node (loaded in {:.1?}):",
            t.elapsed()
        );
        for (label, sql, n) in queries(rows) {
            measure(label, q, &sql, "network", n)?;
        }
        rt.block_on(mesh.shutdown())?;
    }
    Ok(())
}
