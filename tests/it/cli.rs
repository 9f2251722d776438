//! The `tarn` binary's client commands against a running node.

use std::io::Write;
use std::process::{Command, Output};

use crate::harness::{BIN, TestNode};

fn tarn(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TARN_NODE")
        .output()
        .expect("run tarn")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tarn failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn one_line_error(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("tarn: "), "{err}");
    err
}

#[test]
fn ingest_query_status() {
    let node = TestNode::start(&[]);
    let url = node.client.base().to_owned();
    let dir = tempfile::tempdir().unwrap();

    // NDJSON from a file, in several batches.
    let ndjson = dir.path().join("rows.ndjson");
    let mut f = std::fs::File::create(&ndjson).unwrap();
    for i in 0..2500 {
        writeln!(
            f,
            "{{\"i\": {i}, \"name\": \"n{}\", \"x\": {}.5}}",
            i % 4,
            i
        )
        .unwrap();
    }
    drop(f);
    let o = tarn(&[
        "ingest",
        "--node",
        &url,
        "--db",
        "lab",
        "--table",
        "cli",
        "--batch-rows",
        "1000",
        ndjson.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ingested 2500 rows into lab.cli in 3 batches")
    );
    // Again: every batch is already stored.
    let o = tarn(&[
        "ingest",
        "--node",
        &url,
        "--db",
        "lab",
        "--table",
        "cli",
        "--batch-rows",
        "1000",
        ndjson.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("(3 already stored)"));
    // A JSON array.
    let array = dir.path().join("rows.json");
    std::fs::write(&array, r#"[{"i": 10000, "name": "z, \"q\""}]"#).unwrap();
    stdout(&tarn(&[
        "ingest",
        "--node",
        &url,
        "--db",
        "lab",
        "--table",
        "cli",
        array.to_str().unwrap(),
    ]));
    assert_eq!(node.count("lab", "cli"), 2501);

    let out = stdout(&tarn(&[
        "query",
        "--node",
        &url,
        "--db",
        "lab",
        "--format",
        "csv",
        "select name, count(*) as n from cli group by name order by name",
    ]));
    assert_eq!(
        out,
        "name,n\nn0,625\nn1,625\nn2,625\nn3,625\n\"z, \"\"q\"\"\",1\n"
    );
    let out = stdout(&tarn(&[
        "query",
        "--node",
        &url,
        "--db",
        "lab",
        "select sum(i) as s from cli where i < 10",
    ]));
    assert_eq!(out, "s\n--\n45\n(1 row)\n");
    let out = stdout(&tarn(&[
        "query",
        "--node",
        &url,
        "--db",
        "lab",
        "--format",
        "json",
        "select 1 as one",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], serde_json::json!([[1]]));

    let out = stdout(&tarn(&["status", "--node", &url]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "test-node");

    // Errors: one line, non-zero exit.
    let e = one_line_error(&tarn(&[
        "query",
        "--node",
        &url,
        "--db",
        "lab",
        "delete from cli",
    ]));
    assert!(e.contains("only read-only SELECT"), "{e}");
    let e = one_line_error(&tarn(&[
        "query", "--node", &url, "--db", "nodb", "select 1",
    ]));
    assert!(e.contains("nodb"), "{e}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"i\": }\n").unwrap();
    one_line_error(&tarn(&[
        "ingest",
        "--node",
        &url,
        "--db",
        "lab",
        "--table",
        "cli",
        bad.to_str().unwrap(),
    ]));
    one_line_error(&tarn(&[
        "ingest",
        "--node",
        &url,
        "--db",
        "lab",
        "--table",
        "cli",
        "/no/such/file",
    ]));
    one_line_error(&tarn(&["status", "--node", "http://127.0.0.1:1"]));
    one_line_error(&tarn(&["node", "--rest", "not-an-address"]));
    one_line_error(&tarn(&["node", "--name", "bad name"]));
    assert_eq!(node.count("lab", "cli"), 2501);
}

#[test]
fn help_documents_every_node_flag() {
    let help = stdout(&tarn(&["node", "--help"]));
    for flag in [
        "--config",
        "--name",
        "--data-dir",
        "--rest",
        "--services",
        "--durability",
        "--max-body-bytes",
        "--watch-dir",
        "--stream-rows",
        "--stream-ms",
        "--write-immediate",
        "--mqtt",
        "--log-format",
    ] {
        assert!(help.contains(flag), "tarn node --help lacks {flag}");
    }
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let node = TestNode::start(&[]);
    let data = node.data_dir();
    let e = one_line_error(&tarn(&[
        "node",
        "--rest",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(e.contains("in use"), "{e}");
}

/// `tarn demo` takes `stop i` / `start i` on stdin: a stopped node is shown
/// dead by the others' `/v1/nodes`, a restarted one alive again, at its old
/// REST address; a bad command gets a one-line error and changes nothing.
#[test]
fn demo_nodes_stop_and_start_from_stdin() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;

    /// Kills the demo even when an assertion fails.
    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--nodes", "3", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run tarn demo");
    let mut stdin = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let _demo = Demo(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |want: &str| -> String {
        loop {
            let l = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no line with {want:?} from the demo"));
            if l.contains(want) {
                return l;
            }
        }
    };
    let url_of = |l: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("a URL")
            .to_owned()
    };
    let node0 = tarn::client::Client::new(&url_of(&next_line("node-0 ")));
    let url2 = url_of(&next_line("node-2 "));
    next_line("Ctrl-C stops the mesh");
    let alive = |name: &str| -> Option<bool> {
        let v = node0.get("/v1/nodes", &[]).ok()?.json().ok()?;
        let list = v
            .as_array()
            .cloned()
            .or_else(|| v["nodes"].as_array().cloned())?;
        list.iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["alive"].as_bool())
    };
    writeln!(stdin, "stop 7").unwrap();
    assert!(next_line("error").contains("which node"));
    writeln!(stdin, "stop 2").unwrap();
    next_line("node-2 stopped");
    crate::harness::wait_for("node-2 shown dead", Duration::from_secs(30), || {
        (alive("node-2") == Some(false)).then_some(())
    });
    writeln!(stdin, "start 2").unwrap();
    let again = url_of(&next_line("node-2 started"));
    assert_eq!(again, url2, "a restarted node keeps its REST address");
    crate::harness::wait_for("node-2 shown alive", Duration::from_secs(30), || {
        (alive("node-2") == Some(true)).then_some(())
    });
    writeln!(stdin, "nodes").unwrap();
    assert!(next_line("running").starts_with("3 of 3 running"));
}

/// `--log-format json`: every log line is a JSON object, and at debug a
/// line per REST request says its method, path, status and time.
#[test]
fn json_logs_with_a_line_per_request() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "node",
            "--rest",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn,tarn::api=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (url, _, _) = crate::harness::start_line(&mut child);
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let client = tarn::client::Client::new(&url);
    assert_eq!(client.get("/v1/status", &[]).unwrap().status, 200);
    assert_eq!(client.get("/no/such/path", &[]).unwrap().status, 404);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("request log lines within 30 s");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] == "request" {
            assert!(v["fields"]["ms"].as_f64().unwrap() >= 0.0, "{v}");
            seen.push((
                v["fields"]["path"].as_str().unwrap().to_owned(),
                v["fields"]["status"].as_u64().unwrap(),
            ));
        }
    }
    assert_eq!(
        seen,
        [
            ("/v1/status".to_owned(), 200),
            ("/no/such/path".to_owned(), 404)
        ]
    );
    let _ = child.kill();
    let _ = child.wait();
}
