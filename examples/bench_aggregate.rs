//! A plain aggregate beside SQLite's own (docs/BENCHMARKS.md): how much a
//! query through tarn costs over what SQLite spends on the same rows.
//!
//! Starts one operator and one query node in this process (real libp2p on
//! 127.0.0.1), loads `--rows` rows of `{timestamp, value}` into the
//! operator, then times each query `--runs` times (after a warm-up) as
//! 1. SQLite's own, on the operator's database file (rusqlite, one open
//!    connection, the statement prepared once);
//! 2. SQLite's scan plus tarn's exact sum in Rust (the floor for an exact,
//!    correctly rounded `avg`);
//! 3. tarn, local: EdgeLake's `sql` command on the operator's REST port;
//! 4. tarn, network: the same command with `destination: network` on the
//!    query node.
//!
//! ```sh
//! cargo run --release --example bench_aggregate -- [--rows 100000] [--runs 200]
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
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

fn batch(lo: usize, hi: usize) -> Vec<u8> {
    let mut out = String::with_capacity((hi - lo) * 64);
    out.push('[');
    for i in lo..hi {
        if i > lo {
            out.push(',');
        }
        let ts = tarn_query::time::format_iso((START + i as i64) * 1_000_000);
        let v = (i as f64 * 0.37).sin() * 20.0 + 15.0;
        out.push_str(&format!(r#"{{"timestamp":"{ts}","value":{v}}}"#));
    }
    out.push(']');
    out.into_bytes()
}

fn find_db(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_db(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|f| f == name) {
            return Some(p);
        }
    }
    None
}

fn p50(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed());
    }
    Ok(p50(t))
}

fn sql(client: &Client, sql: &str, network: bool) -> anyhow::Result<()> {
    let cmd = format!("sql bench format=json \"{sql}\"");
    let mut headers = vec![("command", cmd.as_str())];
    if network {
        headers.push(("destination", "network"));
    }
    let r = client.get("/", &headers)?;
    anyhow::ensure!(r.status == 200, "{sql}: {} {}", r.status, r.body);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rows: usize = arg("--rows", "100000").parse()?;
    let runs: usize = arg("--runs", "200").parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let mesh = rt.block_on(LocalMesh::start_with(2, dir.path(), |i, cfg| {
        cfg.services = if i == 0 {
            vec![Service::Query, Service::Master]
        } else {
            vec![Service::Operator]
        };
    }))?;
    rt.block_on(mesh.wait_converged(3, Duration::from_secs(60)))?;
    let url = |i: usize| format!("http://{}", mesh.node(i).expect("up").rest_addr());
    let (query, operator) = (Client::new(&url(0)), Client::new(&url(1)));
    let mut i = 0;
    while i < rows {
        let j = (i + 10_000).min(rows);
        operator.ingest("bench", "t", &batch(i, j))?.ok_json()?;
        i = j;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(&query, "select count(*) from t", true).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the query node never saw t");
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = find_db(dir.path(), "bench.db").context("the operator's bench.db")?;
    let conn = rusqlite::Connection::open(&file)?;
    println!(
        "{rows} rows, {runs} runs each, p50; {} cores",
        std::thread::available_parallelism()?
    );
    println!(
        "  {:<36} {:>10} {:>12} {:>10} {:>10}",
        "query", "sqlite", "+exact sum", "tarn", "network"
    );
    for q in [
        "select count(*), avg(value) from t",
        "select count(*) from t",
        "select sum(value) from t",
        "select min(value), max(value) from t",
    ] {
        let mut st = conn.prepare(q)?;
        let own = time(runs, || {
            st.query_row([], |_| Ok(()))?;
            Ok(())
        })?;
        let mut scan = conn.prepare("select value from t")?;
        let exact = time(runs, || {
            let mut s = tarn_query::ExactSum::new();
            let mut n = 0u64;
            let mut r = scan.query([])?;
            while let Some(row) = r.next()? {
                s.add(row.get::<_, f64>(0)?);
                n += 1;
            }
            std::hint::black_box(s.div(n));
            Ok(())
        })?;
        let local = time(runs, || sql(&operator, q, false))?;
        let net = time(runs, || sql(&query, q, true))?;
        println!("  {q:<36} {own:>10.2?} {exact:>12.2?} {local:>10.2?} {net:>10.2?}");
    }
    rt.block_on(mesh.shutdown())?;
    Ok(())
}
