//! Ingest and query benchmark for one node (docs/BENCHMARKS.md).
//!
//! Starts a node in this process on 127.0.0.1:0 with a fresh data directory,
//! then measures, over REST:
//! 1. sustained ingest of `--rows` rows in batches of `--batch` rows of
//!    `{timestamp, device, m1, m2, m3}` (`POST /v1/data`), from `--clients`
//!    concurrent connections;
//! 2. one row per `PUT /` (EdgeLake streaming mode) for `--single-rows` rows;
//! 3. `count(*)`, `avg` grouped by device, and a one-hour time-range aggregate;
//! 4. the limit: the same rows inserted into a plain SQLite table with one
//!    prepared statement in one transaction.
//!
//! Request bodies are generated before the clock starts, so the figures
//! measure the node, not the generator.
//!
//! ```sh
//! cargo run --release --example bench_ingest -- --rows 10000000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tarn::client::Client;

struct Args {
    rows: usize,
    batch: usize,
    clients: usize,
    single_rows: usize,
    durability: tarn::Durability,
    dir: Option<String>,
    ingest_only: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        rows: 10_000_000,
        batch: 1000,
        clients: 2,
        single_rows: 200_000,
        durability: tarn::Durability::Normal,
        dir: None,
        ingest_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "--clients" => a.clients = val()?.parse()?,
            "--single-rows" => a.single_rows = val()?.parse()?,
            "--fsync" => a.durability = tarn::Durability::Fsync,
            "--dir" => a.dir = Some(val()?),
            "--ingest-only" => a.ingest_only = true,
            "--help" | "-h" => {
                println!(
                    "bench_ingest [--rows N] [--batch N] [--clients N] [--single-rows N] [--fsync] [--dir DIR] [--ingest-only]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.rows == 0 || a.batch == 0 || a.clients == 0 {
        bail!("--rows, --batch and --clients must be positive");
    }
    Ok(a)
}

const BASE_SECS: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
const STEP_MS: i64 = 10; // 10M rows span about 28 hours
const DEVICES: usize = 100;

fn ts(i: usize) -> String {
    let ms = i as i64 * STEP_MS;
    let secs = BASE_SECS + ms / 1000;
    let day = (secs - BASE_SECS) / 86_400;
    let sod = secs % 86_400;
    format!(
        "2024-01-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + day,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms % 1000
    )
}

fn row(i: usize) -> String {
    let x = i as f64;
    format!(
        "{{\"timestamp\":\"{}\",\"device\":\"dev-{:03}\",\"m1\":{:.3},\"m2\":{:.2},\"m3\":{}}}",
        ts(i),
        i % DEVICES,
        20.0 + (x * 0.001).sin() * 5.0,
        50.0 + (i % 997) as f64 * 0.05,
        (i % 1013) as f64 + 0.5
    )
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    println!(
        "rows: {}, batch: {}, clients: {}, durability: {:?}",
        args.rows, args.batch, args.clients, args.durability
    );

    let t = Instant::now();
    let bodies: Vec<Vec<u8>> = (0..args.rows.div_ceil(args.batch))
        .map(|b| {
            let lo = b * args.batch;
            let hi = (lo + args.batch).min(args.rows);
            let mut s = String::with_capacity((hi - lo) * 110 + 2);
            s.push('[');
            for i in lo..hi {
                if i > lo {
                    s.push(',');
                }
                s.push_str(&row(i));
            }
            s.push(']');
            s.into_bytes()
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "generated {} batches ({:.0} MB) in {:.1?}",
        bodies.len(),
        bytes as f64 / 1e6,
        t.elapsed()
    );

    let rt = tokio::runtime::Runtime::new()?;
    let cfg = tarn::Config {
        name: "bench".into(),
        data_dir: dir.join("node"),
        rest: "127.0.0.1:0".parse()?,
        durability: args.durability,
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: false,
        ..Default::default()
    };
    let node = rt.block_on(tarn::Node::start(cfg))?;
    let url = format!("http://{}", node.rest_addr());

    // 1. Batches over REST.
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (bodies, next, url) = (bodies.clone(), next.clone(), url.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::new(&url);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i) else {
                        return Ok(());
                    };
                    c.ingest("bench", "readings", b)?.ok_json()?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sender thread")?;
    }
    let ingest_secs = t.elapsed().as_secs_f64();
    let rate = args.rows as f64 / ingest_secs;
    println!(
        "ingest (batches of {}): {} rows in {:.2} s = {:.0} rows/s ({:.0} MB/s of JSON)",
        args.batch,
        args.rows,
        ingest_secs,
        rate,
        bytes as f64 / 1e6 / ingest_secs
    );

    if args.ingest_only {
        return rt.block_on(node.shutdown());
    }

    // 2. One row per PUT (EdgeLake streaming), from 4 connections.
    if args.single_rows > 0 {
        let single: Arc<Vec<String>> =
            Arc::new((0..args.single_rows).map(|i| row(args.rows + i)).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (single, next, url) = (single.clone(), next.clone(), url.clone());
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let c = Client::new(&url);
                    let h = [
                        ("type", "json"),
                        ("dbms", "bench"),
                        ("table", "single"),
                        ("mode", "streaming"),
                    ];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = single.get(i) else {
                            return Ok(());
                        };
                        let a = c.put("/", &h, r.as_bytes())?;
                        if a.status != 200 {
                            bail!("PUT failed: {}", a.body);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("sender thread")?;
        }
        Client::new(&url).command("flush buffers", None)?;
        let secs = t.elapsed().as_secs_f64();
        let c = Client::new(&url)
            .query("bench", "select count(*) from single")?
            .ok_json()?;
        if c["rows"][0][0].as_u64() != Some(args.single_rows as u64) {
            bail!(
                "single-row PUTs: expected {} rows, found {}",
                args.single_rows,
                c["rows"][0][0]
            );
        }
        println!(
            "one row per PUT (streaming, 4 connections): {} rows in {:.2} s = {:.0} rows/s",
            args.single_rows,
            secs,
            args.single_rows as f64 / secs
        );
    }

    // 3. Queries.
    let client = Client::new(&url);
    let hour_lo = ts(args.rows / 2);
    let hour_hi = ts(args.rows / 2 + 360_000);
    let queries = [
        ("count(*)", "SELECT count(*) FROM readings".to_owned()),
        (
            "avg grouped by device",
            "SELECT device, avg(m1), count(*) FROM readings GROUP BY device".to_owned(),
        ),
        (
            "one-hour range aggregate",
            format!(
                "SELECT count(*), avg(m1), min(m2), max(m3) FROM readings WHERE timestamp >= '{hour_lo}' AND timestamp < '{hour_hi}'"
            ),
        ),
    ];
    for (name, sql) in &queries {
        let mut times = Vec::new();
        let mut answer = serde_json::Value::Null;
        for _ in 0..3 {
            let t = Instant::now();
            answer = client.query("bench", sql)?.ok_json()?;
            times.push(t.elapsed());
        }
        times.sort();
        let first = answer["rows"][0].clone();
        println!(
            "query {name}: median {:.3} s, best {:.3} s ({} rows; first {first})",
            times[1].as_secs_f64(),
            times[0].as_secs_f64(),
            answer["rows"].as_array().map_or(0, Vec::len)
        );
    }
    rt.block_on(node.shutdown())?;

    // 4. The limit: a plain prepared insert in one transaction.
    let path = dir.join("raw.db");
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE readings (timestamp TEXT, device TEXT, m1 REAL, m2 REAL, m3 REAL);",
    )?;
    let rows: Vec<(String, String, f64, f64, f64)> = (0..args.rows)
        .map(|i| {
            let x = i as f64;
            (
                ts(i),
                format!("dev-{:03}", i % DEVICES),
                20.0 + (x * 0.001).sin() * 5.0,
                50.0 + (i % 997) as f64 * 0.05,
                (i % 1013) as f64 + 0.5,
            )
        })
        .collect();
    let t = Instant::now();
    conn.execute_batch("BEGIN")?;
    {
        let mut stmt = conn.prepare("INSERT INTO readings VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for r in &rows {
            stmt.execute(rusqlite::params![r.0, r.1, r.2, r.3, r.4])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    let raw_secs = t.elapsed().as_secs_f64();
    let raw = args.rows as f64 / raw_secs;
    println!(
        "raw SQLite (one transaction, prepared insert, no index): {:.0} rows/s; tarn over REST reaches {:.0}% of it",
        raw,
        rate / raw * 100.0
    );
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
