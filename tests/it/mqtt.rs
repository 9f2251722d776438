//! MQTT in, against the real mosquitto broker and clients (Debian's
//! `mosquitto` and `mosquitto-clients`, which `.ci/test` installs): devices
//! publishing to the node's own broker, a subscription to a mosquitto
//! broker that is restarted under it (and the node too), and EdgeLake's
//! `POST` with `command: data`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{TestNode, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// The mosquitto programs, or a loud failure saying how to get them.
fn need_mosquitto() {
    for bin in ["mosquitto", "mosquitto_pub"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{bin} is not installed: the MQTT tests need Debian's mosquitto and \
             mosquitto-clients (run .ci/test, which installs them)"
        );
    }
}

/// Where the node's broker listens.
fn broker_port(node: &TestNode) -> u16 {
    let b = node
        .command("get local broker where format = json")
        .json()
        .unwrap();
    let addr = b["listening"].as_str().expect("the node runs a broker");
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// `mosquitto_pub` with `args`; its exit status must be 0.
fn publish(port: u16, args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client's counters from `get msg clients`.
fn counters(node: &TestNode, id: u64) -> serde_json::Value {
    let all = node
        .command("get msg clients where format = json")
        .json()
        .unwrap();
    all["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no client {id} in {all}"))
}

fn rows(node: &TestNode, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let flushed = node.command("flush buffers");
    assert_eq!(flushed.status, 200, "{}", flushed.body);
    node.query("lab", sql).1
}

/// Starts a client from `cmd`; its id.
fn run_client(node: &TestNode, cmd: &str) -> u64 {
    // In a JSON body: a command of several lines cannot be a header.
    let body = serde_json::json!({ "command": cmd }).to_string();
    let a = node.client.post("/", &[], body.as_bytes()).unwrap();
    assert_eq!(a.status, 200, "{cmd}: {}", a.body);
    a.body
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no client id in {:?}", a.body))
}

/// Sends `lines` through one `mosquitto_pub -l` connection, keeping its
/// input open until the node has taken `expect` more messages (mosquitto_pub
/// 2.0 drops what it still queues when its input ends).
fn burst(node: &TestNode, port: u16, args: &[&str], lines: &[String], expect: u64) {
    let before = broker_messages(node);
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-l"])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    let text = lines.join("\n") + "\n";
    stdin.write_all(text.as_bytes()).unwrap();
    stdin.flush().unwrap();
    wait_for("the burst at the node", LONG, || {
        (broker_messages(node) >= before + expect).then_some(())
    });
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn broker_messages(node: &TestNode) -> u64 {
    let b = node
        .command("get local broker where format = json")
        .json()
        .unwrap();
    b["messages"].as_u64().unwrap()
}

#[test]
fn devices_publish_to_the_nodes_broker() {
    need_mosquitto();
    let node = TestNode::start(&["--mqtt", "127.0.0.1:0"]);
    let port = broker_port(&node);
    // EdgeLake's command as its documents write it: wildcards, a table
    // named from the message, typed columns, an array of readings.
    let id = run_client(
        &node,
        "<run msg client where broker = local and log = false and topic = (\n\
         name = sensors/+/reading and dbms = lab and table = \"bring [kind]_data\" and\n\
         column.ts.timestamp = \"bring [ts]\" and column.device.str = \"bring [device]\" and\n\
         column.value.float = \"bring [value]\") and topic = (name = batch/# and dbms = lab and\n\
         table = batch and column.dev.str = \"bring [dev]\" and column.v.int = \"bring [readings][][v]\")\n\
         and topic = (name = burst and dbms = lab and table = burst and column.n.int = \"bring [n]\")>",
    );
    let msg = |dev: &str, v: f64| {
        format!(r#"{{"kind": "temp", "ts": 1700000000, "device": "{dev}", "value": {v}}}"#)
    };
    publish(
        port,
        &[
            "-t",
            "sensors/a/reading",
            "-q",
            "0",
            "-m",
            &msg("qos0", 1.0),
        ],
    );
    publish(
        port,
        &[
            "-t",
            "sensors/b/reading",
            "-q",
            "1",
            "-r",
            "-m",
            &msg("retained", 2.0),
        ],
    );
    publish(
        port,
        &[
            "-t",
            "sensors/c/reading",
            "-q",
            "2",
            "-m",
            &msg("qos2", 3.0),
        ],
    );
    publish(
        port,
        &[
            "-V",
            "mqttv5",
            "-t",
            "sensors/d/reading",
            "-q",
            "1",
            "-m",
            &msg("v5", 4.0),
        ],
    );
    // Messages that do not fit are counted, and take nothing with them.
    publish(
        port,
        &["-t", "sensors/e/reading", "-q", "1", "-m", "{not json"],
    );
    publish(
        port,
        &[
            "-t",
            "sensors/e/reading",
            "-q",
            "1",
            "-m",
            r#"{"kind": "temp", "ts": 1, "device": "x", "value": "warm"}"#,
        ],
    );
    publish(port, &["-t", "unsubscribed/topic", "-q", "1", "-m", "{}"]);
    let got = rows(
        &node,
        "select device, value, ts from temp_data order by value",
    );
    let devices: Vec<&str> = got.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(devices, ["qos0", "retained", "qos2", "v5"]);
    assert!(
        got[0][2].as_str().unwrap().starts_with("2023-11-14"),
        "{got:?}"
    );
    let c = counters(&node, id);
    assert_eq!(c["errors"], 2, "{c}");
    let procs = node
        .command("get processes where format = json")
        .json()
        .unwrap();
    assert_eq!(procs["Message Broker"]["Status"], "Running", "{procs}");
    assert_eq!(procs["MQTT"]["Status"], "Running", "{procs}");
    assert!(c["last_error"].as_str().unwrap().contains("warm"), "{c}");

    // A large payload: one message of 20,000 readings, 20,000 rows.
    let readings: Vec<String> = (0..20_000).map(|i| format!(r#"{{"v": {i}}}"#)).collect();
    let big = format!(r#"{{"dev": "big", "readings": [{}]}}"#, readings.join(","));
    assert!(big.len() > 200_000);
    let file = node.dir.path().join("big.json");
    std::fs::write(&file, big).unwrap();
    publish(
        port,
        &["-t", "batch/big", "-q", "1", "-f", file.to_str().unwrap()],
    );
    assert_eq!(
        rows(&node, "select count(*), sum(v) from batch"),
        [[serde_json::json!(20_000), serde_json::json!(199_990_000)]]
    );

    // A burst of 100,000 QoS 1 messages on one connection: every one a row.
    let lines: Vec<String> = (0..100_000).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    burst(&node, port, &["-t", "burst", "-q", "1"], &lines, 100_000);
    assert_eq!(
        rows(&node, "select count(*), count(distinct n) from burst"),
        [[serde_json::json!(100_000), serde_json::json!(100_000)]]
    );
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mosquitto broker of the test's own, with its sessions kept on disk.
struct Mosquitto {
    port: u16,
    conf: std::path::PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Run as root, mosquitto saves as the user `mosquitto`.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            conf,
            child: None,
        };
        m.restart();
        m
    }

    /// Stops it (SIGTERM: it saves its sessions) and starts it again.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            c.wait().unwrap();
        }
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto to listen", LONG, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_subscription_outlives_restarts_of_its_broker_and_of_the_node() {
    need_mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let mut node = TestNode::start(&[]);
    let cmd = format!(
        "run msg client where broker = 127.0.0.1 and port = {} and client_id = tarn-it and \
         qos = 1 and topic = (name = plant/+/power and dbms = lab and table = power and \
         column.n.int = \"bring [n]\" and column.line.str = \"bring [line]\")",
        broker.port
    );
    let id = run_client(&node, &cmd);
    let connected = |node: &TestNode| {
        wait_for("the subscription to connect", LONG, || {
            (counters(node, id)["connection"] == "Connected").then_some(())
        })
    };
    connected(&node);
    let count = |node: &TestNode| rows(node, "select count(*), count(distinct n) from power");
    // A device publishes 1,500 QoS 1 messages, one connection each, and
    // sends a message again while the broker does not take it. Each retry
    // is written down: a retry of a message the broker had taken before it
    // went away is the device's double, not tarn's.
    const TOTAL: u64 = 1500;
    let retries = dir.path().join("retries");
    let script = format!(
        "i=0; while [ $i -lt {TOTAL} ]; do i=$((i+1)); \
         until mosquitto_pub -h 127.0.0.1 -p {} -q 1 -t plant/a/power -m \"{{\\\"n\\\": $i, \\\"line\\\": \\\"l$((i % 3))\\\"}}\" 2>/dev/null; \
         do echo $i >> {}; sleep 0.05; done; done",
        broker.port,
        retries.display()
    );
    let mut device = Killed(Command::new("sh").args(["-c", &script]).spawn().unwrap());
    let stored = |node: &TestNode| {
        node.command("flush buffers");
        node.count("lab", "power")
    };
    wait_for("rows before the broker restarts", LONG, || {
        (stored(&node) >= 200).then_some(())
    });
    // The broker goes away mid-stream and comes back with the sessions it saved.
    broker.restart();
    connected(&node);
    wait_for("rows before the node restarts", LONG, || {
        (stored(&node) >= 500).then_some(())
    });
    // The node stops mid-stream (messages wait at the broker) and starts
    // again with its subscription, from its data directory.
    node.stop();
    node.restart();
    // And is killed mid-stream: what it acknowledged is kept, and what it
    // stored but had not acknowledged yet is recognised when it comes again.
    let before = stored(&node);
    wait_for("rows before the node is killed", LONG, || {
        (stored(&node) >= before + 200).then_some(())
    });
    node.kill();
    node.restart();
    assert!(device.0.wait().unwrap().success());
    wait_for("every message as a row", LONG, || {
        (count(&node)[0][1] == TOTAL).then_some(())
    });
    let resent = std::fs::read_to_string(&retries)
        .unwrap_or_default()
        .lines()
        .count() as u64;
    let got = count(&node);
    let doubles = got[0][0].as_u64().unwrap() - TOTAL;
    assert!(
        doubles <= resent,
        "{doubles} doubles, the device sent {resent} again: {got:?}"
    );
    // Stopped, the client is gone for good (and after a restart too).
    let stopped = node.command(&format!("exit msg client {id}"));
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    // ... and so is its session at the broker: a message published now is
    // queued for nobody (what a session kept would hand the next client
    // that connects under its id).
    let port = broker.port.to_string();
    wait_for("the broker to forget the session", LONG, || {
        publish(
            broker.port,
            &["-q", "1", "-t", "plant/a/power", "-m", "{\"n\": 0}"],
        );
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-c",
                "-i",
                "tarn-it",
                "-q",
                "1",
            ])
            .args(["-t", "probe/none", "-C", "1", "-W", "1"])
            .output()
            .unwrap();
        out.stdout.is_empty().then_some(())
    });
    node.stop();
    node.restart();
    let all = node
        .command("get msg clients where format = json")
        .json()
        .unwrap();
    assert_eq!(all["clients"], serde_json::json!([]), "{all}");
}

#[test]
fn edgelake_posts_data_with_a_topic_header_and_mapping_policies() {
    need_mosquitto();
    let node = TestNode::start(&["--mqtt", "127.0.0.1:0"]);
    // A mapping policy in the ledger, as EdgeLake publishes it.
    let policy = r#"<p={"mapping": {"id": "power-map", "dbms": "lab", "table": "bring [source]",
        "readings": "readings", "schema": {
            "ts": {"type": "timestamp", "default": "now()"},
            "watts": {"type": "float", "bring": "[w]"},
            "phase": {"type": "int", "bring": "[phase]", "optional": true}}}}>"#;
    let a = node
        .client
        .post(
            "/",
            &[(
                "command",
                "blockchain insert where policy = !p and local = true",
            )],
            policy.as_bytes(),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let rest = run_client(
        &node,
        "run msg client where broker = rest and user-agent = anylog and log = false and \
         topic = (name = meters and policy = power-map)",
    );
    let data = |body: &str| {
        node.client
            .post(
                "/",
                &[
                    ("command", "data"),
                    ("topic", "meters"),
                    ("User-Agent", "AnyLog/1.23"),
                ],
                body.as_bytes(),
            )
            .unwrap()
    };
    let ok = data(r#"{"source": "meter_a", "readings": [{"w": 1.5, "phase": 1}, {"w": 2.5}]}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let many = data(
        r#"[{"source": "meter_a", "readings": [{"w": 3}]}, {"source": "meter_b", "readings": [{"w": 4}]}]"#,
    );
    assert_eq!(many.status, 200, "{}", many.body);
    // A message that does not fit is refused with the reason, and stores nothing.
    let bad = data(r#"{"source": "meter_a", "readings": [{"w": "lots"}]}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("lots"), "{}", bad.body);
    let nobody = node
        .client
        .post("/", &[("command", "data"), ("topic", "elsewhere")], b"{}")
        .unwrap();
    assert_eq!(nobody.status, 400, "{}", nobody.body);
    assert_eq!(
        rows(&node, "select sum(watts), count(phase) from meter_a"),
        [[serde_json::json!(7.0), serde_json::json!(1)]]
    );
    assert_eq!(rows(&node, "select count(*) from meter_b")[0][0], 1);
    let c = counters(&node, rest);
    assert_eq!(
        (
            c["messages"].as_u64(),
            c["rows"].as_u64(),
            c["errors"].as_u64()
        ),
        (Some(4), Some(4), Some(1)),
        "{c}"
    );

    // The same policy maps what devices publish to the node's broker.
    run_client(
        &node,
        "run msg client where broker = local and topic = (name = devices/# and policy = power-map)",
    );
    publish(
        broker_port(&node),
        &[
            "-t",
            "devices/x",
            "-q",
            "1",
            "-m",
            r#"{"source": "meter_b", "readings": [{"w": 10}]}"#,
        ],
    );
    assert_eq!(rows(&node, "select sum(watts) from meter_b")[0][0], 14.0);
    // Bad commands are refused and start nothing.
    for bad in [
        "run msg client where broker = local",
        "run msg client where broker = local and topic = (name = a/#/b and dbms = x and table = y)",
        "run msg client where broker = local and qos = 7 and topic = (name = t and dbms = x and table = y)",
        "exit msg client 99",
    ] {
        let a = node.command(bad);
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
    }
    let all = node
        .command("get msg clients where format = json")
        .json()
        .unwrap();
    assert_eq!(all["clients"].as_array().unwrap().len(), 2, "{all}");
}

/// A publisher-only node takes MQTT like its REST input: queued on its
/// disk, routed to an operator of a cluster.
#[test]
fn a_publisher_routes_what_devices_publish_to_a_cluster() {
    need_mosquitto();
    let p = TestNode::start(&[
        "--services",
        "publisher,query,master",
        "--mqtt",
        "127.0.0.1:0",
    ]);
    let op = TestNode::start(&["--bootstrap", &p.p2p[0], "--cluster", "plant-1"]);
    run_client(
        &p,
        "run msg client where broker = local and topic = (name = line/+ and dbms = lab and \
         table = presses and column.force.float = \"bring [force]\")",
    );
    let port = broker_port(&p);
    for i in 0..10 {
        publish(
            port,
            &[
                "-t",
                "line/7",
                "-q",
                "1",
                "-m",
                &format!(r#"{{"force": {i}}}"#),
            ],
        );
    }
    wait_for("the operator to hold the rows", LONG, || {
        op.command("flush buffers");
        (op.count("lab", "presses") == 10).then_some(())
    });
}

/// With `--auth`, devices log in to the broker with a user's name and
/// token, as REST clients do.
#[test]
fn with_auth_devices_log_in_to_the_broker() {
    need_mosquitto();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("admin.key");
    let key_s = key.to_str().unwrap();
    let tarn = |args: &[&str]| {
        let out = Command::new(crate::harness::BIN)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    tarn(&["network", "create", "--out", key_s]);
    let mut node = TestNode::start(&["--admin-key", key_s, "--auth", "--mqtt", "127.0.0.1:0"]);
    let base = node.client.base().to_owned();
    let user = |name: &str, role: &str| {
        tarn(&[
            "user", "add", name, "--role", role, "--key", key_s, "--node", &base,
        ])
    };
    let admin = user("root", "admin");
    let device = user("device", "writer");
    let reader = user("viewer", "reader");
    node.set_client(|c| c.with_token(Some(&admin)));
    run_client(
        &node,
        "run msg client where broker = local and topic = (name = t and dbms = lab and \
         table = t and column.v.int = \"bring [v]\")",
    );
    let port = broker_port(&node).to_string();
    let pub_as = |login: &[&str], v: i64| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", "t"])
            .args(login)
            .args(["-m", &format!(r#"{{"v": {v}}}"#)])
            .output()
            .unwrap()
            .status
            .success()
    };
    let secret = device.split_once('.').unwrap().1;
    assert!(pub_as(&["-u", "device", "-P", &device], 1));
    assert!(pub_as(&["-u", "device", "-P", secret], 2));
    assert!(!pub_as(&[], 100), "no login");
    assert!(
        !pub_as(&["-u", "device", "-P", "wrong"], 100),
        "a wrong token"
    );
    assert!(!pub_as(&["-u", "viewer", "-P", &reader], 100), "a reader");
    assert_eq!(
        rows(&node, "select count(*), sum(v) from t"),
        [[serde_json::json!(2), serde_json::json!(3)]]
    );
}

/// A QoS 1 message sent again with the DUP flag (its PUBACK was lost) is
/// acknowledged and not stored twice, even after the node was killed.
#[test]
fn a_resent_message_is_stored_once_even_across_a_crash() {
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
    use std::io::Read as _;

    let mut node = TestNode::start(&["--mqtt", "127.0.0.1:0"]);
    run_client(
        &node,
        "run msg client where broker = local and topic = (name = m and dbms = lab and \
         table = m and column.v.int = \"bring [v]\")",
    );
    // One device session: CONNECT, then PUBLISH packets, each answered.
    let session = |node: &TestNode, sends: &[(bool, u16)]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", broker_port(node))).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut out = bytes::BytesMut::new();
        Packet::Connect(Connect::new("device-7"))
            .write(&mut out, usize::MAX)
            .unwrap();
        for &(dup, pkid) in sends {
            let mut p = Publish::new("m", QoS::AtLeastOnce, r#"{"v": 1}"#);
            p.dup = dup;
            p.pkid = pkid;
            Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
        }
        s.write_all(&out).unwrap();
        // CONNACK (4 bytes), then a PUBACK (4 bytes) per PUBLISH.
        let mut answers = vec![0u8; 4 + 4 * sends.len()];
        s.read_exact(&mut answers).unwrap();
        assert_eq!(answers[0], 0x20, "CONNACK");
        for a in answers[4..].chunks(4) {
            assert_eq!(a[0], 0x40, "PUBACK: {answers:?}");
        }
    };
    let count = |node: &TestNode| rows(node, "select count(*) from m")[0][0].as_i64().unwrap();
    session(&node, &[(false, 7), (true, 7)]);
    assert_eq!(count(&node), 1);
    node.kill();
    node.restart();
    session(&node, &[(true, 7)]);
    assert_eq!(count(&node), 1, "the resend after a crash");
    // Not marked as a resend: a new message that happens to be the same.
    session(&node, &[(false, 7)]);
    assert_eq!(count(&node), 2);
}

/// EdgeLake's `run message broker` starts the broker on a running node.
#[test]
fn run_message_broker_starts_the_broker_at_run_time() {
    need_mosquitto();
    let node = TestNode::start(&[]);
    let none = node
        .command("get local broker where format = json")
        .json()
        .unwrap();
    assert_eq!(none["listening"], serde_json::Value::Null, "{none}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cmd = format!(
        "run message broker where external_ip = 127.0.0.1 and external_port = {port} and \
         internal_ip = 127.0.0.1 and internal_port = {port} and bind = true"
    );
    let a = node.command(&cmd);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(broker_port(&node), port);
    let again = node.command(&cmd);
    assert_eq!(again.status, 400, "{}", again.body);
    run_client(
        &node,
        "run msg client where broker = local and topic = (name = x and dbms = lab and table = x)",
    );
    // No columns mapped: the message's own keys, lower-cased, become columns.
    for m in [
        r#"{"Temp": 20.5, "Site": "north"}"#,
        r#"{"temp": 21.5, "site": "south", "new_key": 1}"#,
    ] {
        publish(port, &["-t", "x", "-q", "1", "-m", m]);
    }
    assert_eq!(
        rows(&node, "select temp, site, new_key from x order by temp"),
        [
            [
                serde_json::json!(20.5),
                serde_json::json!("north"),
                serde_json::Value::Null
            ],
            [
                serde_json::json!(21.5),
                serde_json::json!("south"),
                serde_json::json!(1)
            ]
        ]
    );
}
