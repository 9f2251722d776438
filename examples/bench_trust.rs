//! What authentication and TLS cost (docs/BENCHMARKS.md): the same ingest
//! and the same small query against one node five ways — plain HTTP, in a
//! closed network, with `--auth` (a Bearer token), over HTTPS, and both
//! — each in rounds,
//! interleaved so that drift of the machine hits every variant alike. The
//! node runs in this process on 127.0.0.1; clients keep their connections
//! (one TLS handshake per connection, as real clients do).
//!
//! ```sh
//! cargo run --release --example bench_trust -- [--rows 1000000] [--queries 2000] [--rounds 3]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use tarn::client::Client;

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context("a number")?.parse()?),
        None => Ok(default),
    }
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    closed: bool,
    auth: bool,
    tls: bool,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "plain",
        closed: false,
        auth: false,
        tls: false,
    },
    Variant {
        name: "closed",
        closed: true,
        auth: false,
        tls: false,
    },
    Variant {
        name: "auth",
        closed: true,
        auth: true,
        tls: false,
    },
    Variant {
        name: "tls",
        closed: false,
        auth: false,
        tls: true,
    },
    Variant {
        name: "auth+tls",
        closed: true,
        auth: true,
        tls: true,
    },
];

fn bodies(rows: usize) -> Vec<Vec<u8>> {
    (0..rows.div_ceil(1000))
        .map(|b| {
            let rows: Vec<String> = (b * 1000..((b + 1) * 1000).min(rows))
                .map(|i| {
                    format!(
                        r#"{{"timestamp":"2024-01-01T00:00:{:02}.{:03}Z","device":"dev-{:03}","v":{}}}"#,
                        (i / 1000) % 60,
                        i % 1000,
                        i % 100,
                        i as f64 * 0.5
                    )
                })
                .collect();
            format!("[{}]", rows.join(",")).into_bytes()
        })
        .collect()
}

struct Run {
    rows_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One round of one variant on a fresh node.
fn run(
    rt: &tokio::runtime::Runtime,
    v: Variant,
    dir: &Path,
    bodies: &Arc<Vec<Vec<u8>>>,
    queries: usize,
) -> anyhow::Result<Run> {
    let key = dir.join("admin.key");
    let data = tempfile::tempdir_in(dir)?;
    let mut cfg = tarn::Config {
        name: "bench".into(),
        data_dir: data.path().join("node"),
        rest: "127.0.0.1:0".parse()?,
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: false,
        ..Default::default()
    };
    if v.closed {
        cfg.admin_key = Some(key.clone());
    }
    cfg.auth.enabled = v.auth;
    if v.tls {
        cfg.tls.cert = Some(dir.join("certs/127.0.0.1.pem"));
        cfg.tls.key = Some(dir.join("certs/127.0.0.1.key"));
    }
    let node = rt.block_on(tarn::Node::start(cfg))?;
    let url = node.rest_url();
    let token = if v.auth {
        let mut out = Vec::new();
        tarn::cli::user_add(
            &url,
            &key,
            "bench",
            tarn::api::auth::Role::Admin,
            &[],
            &mut out,
        )?;
        Some(String::from_utf8(out)?.trim().to_owned())
    } else {
        None
    };
    let client = || Client::new(&url).with_token(token.as_deref());
    // The user's policy is in the node's view once a request passes.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while client().get("/v1/status", &[])?.status != 200 {
        anyhow::ensure!(Instant::now() < deadline, "the token never worked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (bodies, next, c) = (bodies.clone(), next.clone(), client());
            std::thread::spawn(move || -> anyhow::Result<()> {
                while let Some(b) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    c.ingest("bench", "t", b)?.ok_json()?;
                }
                Ok(())
            })
        })
        .collect();
    for s in senders {
        s.join().expect("a sender thread")?;
    }
    let rows: usize = bodies.len() * 1000;
    let rows_per_s = rows as f64 / t.elapsed().as_secs_f64();

    let c = client();
    let q = serde_json::json!({"db": "bench", "sql": "SELECT device, v FROM t WHERE row_id = 77"});
    let mut lat = Vec::with_capacity(queries);
    for _ in 0..queries {
        let t = Instant::now();
        c.query_with(&q)?.ok_json()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let r = Run {
        rows_per_s,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    };
    rt.block_on(node.shutdown())?;
    Ok(r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let (rows, queries, rounds) = (
        arg("--rows", 1_000_000)?,
        arg("--queries", 2000)?,
        arg("--rounds", 3)?,
    );
    anyhow::ensure!(
        rows >= 1000 && queries > 0 && rounds > 0,
        "sizes must be positive"
    );
    let dir = tempfile::tempdir()?;
    tarn::cli::network_create(&dir.path().join("admin.key"), &mut std::io::sink())?;
    let certs = dir.path().join("certs");
    tarn::cli::cert(&certs, &["127.0.0.1".to_owned()], &mut std::io::sink())?;
    tarn::client::trust_ca(&certs.join("ca.pem"))?;
    let bodies = Arc::new(bodies(rows));
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "{} rows in batches of 1,000 from 4 connections; {queries} small queries; {rounds} rounds",
        bodies.len() * 1000
    );
    let mut results: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, v) in VARIANTS.iter().enumerate() {
            let r = run(&rt, *v, dir.path(), &bodies, queries)?;
            println!(
                "round {} {:>8}: {:>9.0} rows/s, query p50 {:.3} ms p99 {:.3} ms",
                round + 1,
                v.name,
                r.rows_per_s,
                r.p50_ms,
                r.p99_ms
            );
            results[i].push(r);
        }
    }
    println!("\nmedian over rounds   rows/s  (vs plain)   p50 ms (vs plain)   p99 ms");
    let base_rate = median(results[0].iter().map(|r| r.rows_per_s).collect());
    let base_p50 = median(results[0].iter().map(|r| r.p50_ms).collect());
    for (v, rs) in VARIANTS.iter().zip(&results) {
        let rate = median(rs.iter().map(|r| r.rows_per_s).collect());
        let p50 = median(rs.iter().map(|r| r.p50_ms).collect());
        let p99 = median(rs.iter().map(|r| r.p99_ms).collect());
        println!(
            "{:>8}        {:>9.0}  ({:+5.1} %)    {:.3}  ({:+.3})     {:.3}",
            v.name,
            rate,
            (rate / base_rate - 1.0) * 100.0,
            p50,
            p50 - base_p50,
            p99
        );
    }
    Ok(())
}
