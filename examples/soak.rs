//! The soak test: minutes of mixed ingest (REST batches, streaming PUTs,
//! watched files), queries, bad requests and stalled clients against three
//! `tarn node` processes — two operators of one cluster and a query node —
//! with one operator killed (`kill -9`) and restarted every minute
//! (`--kill-every N` minutes; 0 never). At the end every acknowledged row
//! must be on both operators exactly once.
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- --minutes 10
//! cargo run --release --example soak -- --minutes 30 --kill-every 0
//! ```
//!
//! It prints, per minute, the p50/p99 of a small query through the query
//! node and each process's RSS, and at the end what was acknowledged and
//! what each operator holds. The `tarn` binary is the one next to this
//! example (`target/release/tarn`), or `--bin PATH`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tarn::client::Client;

/// One `tarn node` process and where to reach it (the same ports across
/// restarts, as a machine's would be).
struct Proc {
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    rest: u16,
    port: u16,
    url: String,
    p2p: String,
}

/// A port free now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Proc {
    fn start(bin: &Path, dir: PathBuf, args: &[String]) -> anyhow::Result<Proc> {
        let mut p = Proc {
            args: args.to_vec(),
            dir,
            child: None,
            rest: free_port()?,
            port: free_port()?,
            url: String::new(),
            p2p: String::new(),
        };
        p.spawn(bin)?;
        Ok(p)
    }

    fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        let mut child = Command::new(bin)
            .arg("node")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--rest", &format!("127.0.0.1:{}", self.rest)])
            .args([
                "--listen",
                &format!("/ip4/127.0.0.1/tcp/{}", self.port),
                "--no-mdns",
            ])
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tarn")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
                .with_context(|| format!("no {k} in {line:?}"))
        };
        self.url = field("rest=")?;
        self.p2p = field("p2p=")?
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Resident memory in MB as `total/heap`: the heap (`RssAnon`) is what
    /// the node holds; the rest is mostly the database files SQLite maps,
    /// pages the kernel takes back when it needs them.
    fn rss(&self) -> String {
        let Some(c) = &self.child else {
            return "-".into();
        };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb / 1024)
        };
        format!("{}/{}", field("VmRSS:"), field("RssAnon:"))
    }
}

/// No node outlives the soak, however it ends (an error included).
impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the writers were told is stored: every key, once.
#[derive(Default)]
struct Acked {
    keys: Mutex<BTreeSet<u64>>,
}

impl Acked {
    fn add(&self, keys: impl IntoIterator<Item = u64>) {
        self.keys.lock().expect("lock").extend(keys);
    }
}

struct World {
    ops: Mutex<Vec<Proc>>,
    next: AtomicU64,
    acked: Acked,
    stop: AtomicBool,
}

impl World {
    fn urls(&self) -> Vec<String> {
        self.ops
            .lock()
            .expect("lock")
            .iter()
            .map(|p| p.url.clone())
            .collect()
    }

    fn keys(&self, n: u64) -> std::ops::Range<u64> {
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        first..first + n
    }
}

fn rows(keys: std::ops::Range<u64>) -> String {
    keys.map(|k| {
        format!(
            r#"{{"k": {k}, "device": "d{}", "v": {}.5}}"#,
            k % 13,
            k % 97
        )
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// REST batches to either operator, moving on when one is down.
fn batches(w: &World) {
    while !w.stop.load(Ordering::Relaxed) {
        let keys = w.keys(200);
        let body = rows(keys.clone());
        for url in w.urls() {
            if let Ok(a) = Client::new(&url).ingest("soak", "t", body.as_bytes())
                && a.status == 200
            {
                w.acked.add(keys.clone());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One row per streaming PUT.
fn puts(w: &World) {
    let h = [
        ("type", "json"),
        ("dbms", "soak"),
        ("table", "t"),
        ("mode", "streaming"),
    ];
    while !w.stop.load(Ordering::Relaxed) {
        let keys = w.keys(1);
        let body = rows(keys.clone());
        let urls = w.urls();
        let url = &urls[(keys.start % 2) as usize];
        if let Ok(a) = Client::new(url).put("/", &h, body.as_bytes())
            && a.status == 200
        {
            w.acked.add(keys);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files into an operator's watched directory (renamed in when whole): a
/// placed file is loaded exactly once, whatever the kills.
fn files(w: &World) {
    let dirs: Vec<PathBuf> = w
        .ops
        .lock()
        .expect("lock")
        .iter()
        .map(|p| p.dir.join("watch"))
        .collect();
    let mut i = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let keys = w.keys(500);
        let dir = &dirs[(i % 2) as usize];
        let tmp = dir.join(format!(".soak{i}.tmp"));
        if std::fs::create_dir_all(dir).is_ok()
            && std::fs::write(&tmp, rows(keys.clone())).is_ok()
            && std::fs::rename(&tmp, dir.join(format!("soak.t.file.f{i}.json"))).is_ok()
        {
            w.acked.add(keys);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// Bad requests and stalled bodies, all the time.
fn hostile(w: &World) {
    let mut i = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        for url in w.urls() {
            let c = Client::new(&url);
            let _ = c.ingest("soak", "t", b"{not json");
            let _ = c.ingest("soak", "t", br#"{"k": "not a number"}"#);
            let _ = c.ingest("soak", "t", br#"{"rowid": 1}"#);
            let _ = c.query("soak", "DELETE FROM t");
            let _ = c.query("soak", "SELECT zeroblob(500000000) FROM t LIMIT 2");
            if i.is_multiple_of(20)
                && let Ok(mut s) = TcpStream::connect(url.trim_start_matches("http://"))
            {
                let _ = s.write_all(
                    b"POST /v1/data/soak/t HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n{",
                );
                std::mem::forget(s);
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `(rows, distinct keys, acknowledged keys missing)` of `soak.t` on one
/// node's own store, read range by range.
fn held(url: &str, acked: &BTreeSet<u64>) -> anyhow::Result<(u64, u64, usize)> {
    let c = Client::new(url);
    let (mut n, mut d, mut missing) = (0, 0, 0);
    let top = acked.last().copied().unwrap_or(0) + 1;
    let step = 200_000;
    for lo in (0..top + step).step_by(step as usize) {
        let sql = format!("SELECT k FROM t WHERE k >= {lo} AND k < {}", lo + step);
        let q = serde_json::json!({"db": "soak", "scope": "local", "sql": sql});
        let v = c.query_with(&q)?.ok_json()?;
        let keys: Vec<u64> = v["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r[0].as_u64())
            .collect();
        let here: BTreeSet<u64> = keys.iter().copied().collect();
        n += keys.len() as u64;
        d += here.len() as u64;
        missing += acked
            .range(lo..lo + step)
            .filter(|k| !here.contains(k))
            .count();
    }
    Ok((n, d, missing))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut minutes, mut bin, mut kill_every) = (10u64, None, 1u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--minutes" => minutes = args.next().context("--minutes N")?.parse()?,
            // 0: never (to see whether memory levels off).
            "--kill-every" => kill_every = args.next().context("--kill-every MINUTES")?.parse()?,
            "--bin" => bin = Some(PathBuf::from(args.next().context("--bin PATH")?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let bin = match bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("the example's directory")?
            .join("tarn"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release first",
        bin.display()
    );
    let tmp = tempfile::tempdir()?;
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut a = Proc::start(
        &bin,
        tmp.path().join("a"),
        &strings(&[
            "--cluster",
            "c1",
            "--services",
            "operator,master",
            "--stream-ms",
            "200",
        ]),
    )?;
    let b = Proc::start(
        &bin,
        tmp.path().join("b"),
        &strings(&[
            "--cluster",
            "c1",
            "--services",
            "operator",
            "--stream-ms",
            "200",
            "--bootstrap",
            &a.p2p,
        ]),
    )?;
    // Restarted, `a` finds `b` (and everyone keeps their ports).
    a.args.extend(strings(&["--bootstrap", &b.p2p]));
    let q = Proc::start(
        &bin,
        tmp.path().join("q"),
        &strings(&[
            "--services",
            "query",
            "--bootstrap",
            &a.p2p,
            "--bootstrap",
            &b.p2p,
        ]),
    )?;
    let world = Arc::new(World {
        ops: Mutex::new(vec![a, b]),
        next: AtomicU64::new(0),
        acked: Acked::default(),
        stop: AtomicBool::new(false),
    });
    // Let the mesh form and the table exist before the clock starts.
    Client::new(&world.urls()[0])
        .ingest("soak", "t", rows(world.keys(10)).as_bytes())?
        .ok_json()?;
    world.acked.add(0..10);
    std::thread::sleep(Duration::from_secs(5));
    let workers: Vec<_> = [batches as fn(&World), puts, files, hostile]
        .into_iter()
        .map(|f| {
            let w = world.clone();
            std::thread::spawn(move || f(&w))
        })
        .collect();
    let qc = Client::new(&q.url);
    println!("minute  query p50    p99     (n)   rss/heap MB: a | b | query    killed");
    let started = Instant::now();
    for minute in 0..minutes {
        let mut lat = Vec::new();
        let end = started + Duration::from_secs(60 * (minute + 1));
        let kill_at = started + Duration::from_secs(60 * minute + 30);
        let mut killed = None;
        while Instant::now() < end {
            let t = Instant::now();
            let small = "SELECT k, v FROM t WHERE row_id = 77";
            if qc.query("soak", small).is_ok_and(|a| a.status == 200) {
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if killed.is_none()
                && kill_every > 0
                && minute % kill_every == 0
                && Instant::now() >= kill_at
            {
                let i = ((minute / kill_every) % 2) as usize;
                let mut ops = world.ops.lock().expect("lock");
                ops[i].kill();
                std::thread::sleep(Duration::from_secs(2));
                ops[i].spawn(&bin)?;
                killed = Some(i);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ops = world.ops.lock().expect("lock");
        println!(
            "{:>6}  {:>7.1} ms {:>6.1} ms {:>5}   {:>8} | {:>8} | {:>8}   {}",
            minute + 1,
            percentile(&mut lat.clone(), 0.5),
            percentile(&mut lat, 0.99),
            lat.len(),
            ops[0].rss(),
            ops[1].rss(),
            q.rss(),
            killed.map_or("-".to_owned(), |i| ["a", "b"][i].to_owned()),
        );
    }
    world.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    for url in world.urls() {
        Client::new(&url).command("flush buffers", None)?;
    }
    let acked = world.acked.keys.lock().expect("lock").clone();
    println!(
        "acknowledged {} distinct keys; waiting for both operators to hold them",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got: Vec<(u64, u64, usize)> = world
            .urls()
            .iter()
            .map(|u| held(u, &acked).unwrap_or((0, 0, usize::MAX)))
            .collect();
        let done = got.iter().all(|(n, d, missing)| *missing == 0 && n == d);
        if done || Instant::now() > deadline {
            for (name, (n, d, missing)) in ["a", "b"].iter().zip(&got) {
                println!(
                    "operator {name}: {n} rows, {d} distinct keys, {missing} acknowledged keys missing"
                );
            }
            anyhow::ensure!(
                done,
                "an operator lacks acknowledged rows or holds one twice"
            );
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("every acknowledged row on both operators, once");
    // Idle, a node gives SQLite's page caches back (after 20 s): what is
    // left is what the node itself holds.
    std::thread::sleep(Duration::from_secs(30));
    let ops = world.ops.lock().expect("lock");
    println!(
        "rss/heap after 30 s idle (MB): a {} | b {} | query {}",
        ops[0].rss(),
        ops[1].rss(),
        q.rss()
    );
    drop(ops);
    for p in world.ops.lock().expect("lock").iter_mut() {
        p.kill();
    }
    Ok(())
}
