//! Test nodes with their own data directories on 127.0.0.1:0: real `tarn
//! node` processes ([`TestNode`], for tests that kill, restart or move
//! nodes, or need the binary) and nodes in this process ([`LocalNode`]);
//! both answer through their REST API ([`Api`]). Small helpers too
//! (deadline waits, a seeded RNG).

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use tarn::client::{Answer, Client};

pub const BIN: &str = env!("CARGO_BIN_EXE_tarn");

/// A `tarn node` child process.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub args: Vec<String>,
    /// The host it runs on (a network namespace), if not this one.
    host: Option<Host>,
    child: Option<Child>,
    api: Api,
    /// The node's PeerId and its libp2p addresses (with `/p2p/<id>`).
    pub peer_id: String,
    pub p2p: Vec<String>,
}

impl TestNode {
    /// Starts a node with default settings plus `args`.
    pub fn start(args: &[&str]) -> TestNode {
        Self::start_on(None, args)
    }

    /// Starts a node on `host` (see [`Hosts`]), or here when `None`.
    pub fn start_on(host: Option<&Host>, args: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().expect("a temp dir");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let host = host.cloned();
        let (child, client, peer_id, p2p) = spawn(dir.path(), &args, host.as_ref());
        TestNode {
            dir,
            args,
            host,
            child: Some(child),
            api: Api { client },
            peer_id,
            p2p,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// CPU time the node's process has used so far (user + system, in
    /// clock ticks), from /proc.
    pub fn cpu_ticks(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    }

    /// SIGKILL: no shutdown, no flushing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill the node");
            c.wait().expect("reap the node");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("send SIGTERM");
            let status = c.wait().expect("reap the node");
            assert!(status.success(), "the node exited with {status}");
        }
    }

    /// Talks to the node through `client` from now on (a CA, a token).
    pub fn set_client(&mut self, client: impl FnOnce(Client) -> Client) {
        self.api.client = client(self.api.client.clone());
    }

    /// Starts the node again on the same data directory (a new REST port).
    pub fn restart(&mut self) {
        self.kill();
        let (child, client, peer_id, p2p) = spawn(self.dir.path(), &self.args, self.host.as_ref());
        self.child = Some(child);
        self.api.client = client;
        self.peer_id = peer_id;
        self.p2p = p2p;
    }
}

/// A node's REST API, with the requests tests make.
pub struct Api {
    pub client: Client,
}

impl Deref for TestNode {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    /// Runs a query and returns (columns, rows); panics on an error.
    pub fn query(&self, db: &str, sql: &str) -> (Vec<String>, Vec<Vec<serde_json::Value>>) {
        let v = self
            .client
            .query(db, sql)
            .unwrap()
            .ok_json()
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let cols = v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        (cols, rows_of(&v))
    }

    /// `select count(*)` of a table, 0 when the table or database is missing.
    pub fn count(&self, db: &str, table: &str) -> i64 {
        let a = self
            .client
            .query(db, &format!("select count(*) from {table}"))
            .unwrap();
        if a.status == 404 {
            return 0;
        }
        a.ok_json().unwrap()["rows"][0][0].as_i64().unwrap()
    }

    pub fn post(&self, db: &str, table: &str, body: &str) -> Answer {
        self.client.ingest(db, table, body.as_bytes()).unwrap()
    }

    pub fn put(&self, db: &str, table: &str, mode: &str, body: &str) -> Answer {
        self.client
            .put(
                "/",
                &[
                    ("type", "json"),
                    ("dbms", db),
                    ("table", table),
                    ("mode", mode),
                    ("Content-Type", "text/plain"),
                ],
                body.as_bytes(),
            )
            .unwrap()
    }

    pub fn command(&self, cmd: &str) -> Answer {
        self.client.command(cmd, None).unwrap()
    }
}

/// A node in this process (its own runtime), for tests that need no
/// process of their own; stopped cleanly when dropped.
pub struct LocalNode {
    dir: tempfile::TempDir,
    node: Option<tarn::Node>,
    rt: tokio::runtime::Runtime,
    api: Api,
}

impl LocalNode {
    /// Starts a node with test defaults, then `tweak`'s changes.
    pub fn start(tweak: impl FnOnce(&mut tarn::Config)) -> LocalNode {
        let mut n = LocalNode {
            dir: tempfile::tempdir().expect("a temp dir"),
            node: None,
            rt: tokio::runtime::Runtime::new().expect("a runtime"),
            api: Api {
                client: Client::new("http://127.0.0.1:1"),
            },
        };
        n.boot(tweak);
        n
    }

    /// Stops the node cleanly and starts it again on its data directory,
    /// with test defaults and `tweak`'s changes.
    pub fn restart(&mut self, tweak: impl FnOnce(&mut tarn::Config)) {
        if let Some(n) = self.node.take() {
            self.rt.block_on(n.shutdown()).expect("a clean stop");
        }
        self.boot(tweak);
    }

    fn boot(&mut self, tweak: impl FnOnce(&mut tarn::Config)) {
        let mut cfg = tarn::Config {
            name: "test-node".into(),
            data_dir: self.data_dir(),
            rest: "127.0.0.1:0".parse().expect("an address"),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            mdns: false,
            ..Default::default()
        };
        tweak(&mut cfg);
        let node = self
            .rt
            .block_on(tarn::Node::start(cfg))
            .expect("the node starts");
        self.api.client = Client::new(&format!("http://{}", node.rest_addr()));
        self.node = Some(node);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Deref for LocalNode {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        if let Some(n) = self.node.take()
            && let Err(e) = self.rt.block_on(n.shutdown())
        {
            eprintln!("a test node did not stop cleanly: {e:#}");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, args: &[String], host: Option<&Host>) -> (Child, Client, String, Vec<String>) {
    let data = dir.join("data");
    let (mut cmd, rest, listen) = match host {
        None => (
            Command::new(BIN),
            "127.0.0.1:0".to_owned(),
            "/ip4/127.0.0.1/tcp/0".to_owned(),
        ),
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.ns, BIN]);
            (
                c,
                format!("{}:0", h.rest_ip),
                format!("/ip4/{}/tcp/0", h.lan_ip),
            )
        }
    };
    let mut child = cmd
        .arg("node")
        .arg("--rest")
        .arg(rest)
        .arg("--data-dir")
        .arg(&data)
        .arg("--name")
        .arg("test-node")
        .args(["--listen", &listen, "--no-mdns"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tarn node");
    let (url, peer_id, p2p) = start_line(&mut child);
    (child, Client::new(&url), peer_id, p2p)
}

/// Waits until `f` returns `Some`, or panics naming `what` after `limit`.
/// The `rows` of a `/v1/query` answer.
pub fn rows_of(v: &serde_json::Value) -> Vec<Vec<serde_json::Value>> {
    v["rows"]
        .as_array()
        .expect("an answer with rows")
        .iter()
        .map(|r| r.as_array().expect("a row is an array").clone())
        .collect()
}

pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic RNG (xorshift64*), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A float in [lo, hi) with two decimals.
    pub fn metric(&mut self, lo: f64, hi: f64) -> f64 {
        let x = lo + (hi - lo) * (self.below(1_000_000) as f64 / 1_000_000.0);
        (x * 100.0).round() / 100.0
    }
}

/// Reads a node's start line: its REST URL, PeerId and p2p addresses.
pub fn start_line(child: &mut Child) -> (String, String, Vec<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .expect("the node prints its address")
        .expect("readable stdout");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in the start line: {line}"))
            .to_owned()
    };
    let url = field("rest=");
    let peer_id = field("peer_id=");
    let p2p = field("p2p=").split(',').map(str::to_owned).collect();
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (url, peer_id, p2p)
}

/// A machine of [`Hosts`]: a network namespace with an address on the LAN
/// between the hosts and one on its own link to this machine (for REST).
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub lan_ip: String,
    pub rest_ip: String,
    /// Its end of the LAN cable.
    pub lan_dev: String,
}

/// Two separate hosts joined by one cable, each reachable from here; or,
/// where network namespaces cannot be made (not root, no iproute2), none,
/// and the nodes run on loopback (said loudly on stderr).
pub struct Hosts {
    pub hosts: Vec<Host>,
    links: Vec<String>,
}

impl Hosts {
    /// `tag` (a few letters) keeps parallel tests' names apart.
    pub fn pair(tag: &str) -> Hosts {
        let mut h = Hosts {
            hosts: Vec::new(),
            links: Vec::new(),
        };
        if !netns_available() {
            eprintln!(
                "NOTE {tag}: no network namespaces here (needs root and `ip netns`): nodes run on loopback"
            );
            return h;
        }
        let id = std::process::id() % 10_000;
        let net = 100 + (tag.bytes().map(u32::from).sum::<u32>() % 100);
        let ns: Vec<String> = (0..2).map(|i| format!("t{tag}{id}{i}")).collect();
        let lan: Vec<String> = (0..2).map(|i| format!("t{tag}{id}l{i}")).collect();
        for n in &ns {
            ip(&["netns", "add", n]);
        }
        h.hosts = (0..2)
            .map(|i| Host {
                ns: ns[i].clone(),
                lan_ip: format!("10.214.{net}.{}", i + 1),
                rest_ip: format!("10.215.{}.2", net * 2 + i as u32 - 200),
                lan_dev: lan[i].clone(),
            })
            .collect();
        ip(&[
            "link", "add", &lan[0], "type", "veth", "peer", "name", &lan[1],
        ]);
        for (i, host) in h.hosts.iter().enumerate() {
            ip(&["link", "set", &lan[i], "netns", &host.ns]);
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.lan_ip),
                "dev",
                &lan[i],
            ]);
            ip(&["-n", &host.ns, "link", "set", &lan[i], "up"]);
            ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
            // Its own link to this machine, for the REST API.
            let (outer, inner) = (format!("t{tag}{id}o{i}"), format!("t{tag}{id}i{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            h.links.push(outer.clone());
            ip(&["link", "set", &inner, "netns", &host.ns]);
            let subnet = host.rest_ip.rsplit_once('.').expect("an IPv4 address").0;
            ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.rest_ip),
                "dev",
                &inner,
            ]);
            ip(&["-n", &host.ns, "link", "set", &inner, "up"]);
        }
        h
    }

    /// The host `i`, or `None` on loopback.
    pub fn get(&self, i: usize) -> Option<&Host> {
        self.hosts.get(i)
    }

    /// Cuts (`false`) or mends (`true`) the cable between the hosts.
    pub fn cable(&self, up: bool) {
        let h = &self.hosts[0];
        ip(&[
            "-n",
            &h.ns,
            "link",
            "set",
            &h.lan_dev,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
        for h in &self.hosts {
            // Nodes still running in it are killed by their TestNode.
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
    }
}

/// Network namespaces made by a test and the processes run in them: on
/// drop the processes are killed, then the namespaces deleted (and with
/// them the veth ends inside).
pub struct Namespaces {
    pub names: Vec<String>,
    pub children: Vec<Child>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

pub fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {} failed", args.join(" "));
}

pub fn netns_available() -> bool {
    let name = format!("tarnprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    ok
}
