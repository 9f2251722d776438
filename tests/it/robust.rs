//! Requests that used to stall, kill or rob a node, each replayed here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{LocalNode, wait_for};

fn put(node: &LocalNode, table: &str, body: &str) -> crate::harness::Answer {
    node.put("lab", table, "streaming", body)
}

/// Names, widths and table names that SQLite cannot take are refused with a
/// 400 before a row is acknowledged, by REST and by a streaming PUT, and
/// the rows other clients had acknowledged are all stored.
#[test]
fn rows_that_can_never_be_stored_are_refused_before_they_are_acknowledged() {
    let node = LocalNode::start(|c| {
        c.streaming.threshold_rows = 1_000_000;
        c.streaming.threshold_ms = 3_600_000;
    });
    for v in 0..3 {
        let a = put(&node, "t", &format!(r#"{{"v": {v}}}"#));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let wide: serde_json::Map<String, Value> =
        (0..2100).map(|i| (format!("c{i}"), json!(i))).collect();
    let wide = Value::Object(wide).to_string();
    for (body, code) in [
        (r#"{"rowid": 1}"#, "invalid_name"),
        (r#"{"OID": 1}"#, "invalid_name"),
        (r#"{"_rowid_": 1}"#, "invalid_name"),
        (r#"{"row_id": 1}"#, "invalid_name"),
        (wide.as_str(), "too_many_columns"),
    ] {
        for a in [put(&node, "t", body), node.post("lab", "t", body)] {
            assert_eq!(a.status, 400, "{body:.40}: {}", a.body);
            assert!(a.body.contains(code), "{body:.40}: {}", a.body);
        }
    }
    node.command("flush buffers");
    assert_eq!(
        node.count("lab", "t"),
        3,
        "every acknowledged row is stored"
    );
    let status = node.client.get("/v1/status", &[]).unwrap().json().unwrap();
    assert_eq!(status["stream_errors"]["files"], 0, "{status}");
}

/// Index names never take a table's name, nor another index's.
#[test]
fn tables_named_like_indexes_and_lookalike_columns_each_keep_their_index() {
    let node = LocalNode::start(|_| {});
    let ts = r#"{"ts": "2024-01-01T00:00:00Z"}"#;
    for (table, body) in [
        ("u", ts),
        ("u__ts__idx", r#"{"a": 1}"#),
        ("a__b", r#"{"c": "2024-01-01T00:00:00Z"}"#),
        ("a", r#"{"b__c": "2024-01-01T00:00:00Z"}"#),
    ] {
        let a = node.post("lab", table, body);
        assert_eq!(a.status, 200, "{table}: {}", a.body);
    }
    let db = rusqlite::Connection::open(node.data_dir().join("dbms/lab.db")).unwrap();
    let indexes: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'tarn_idx%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        indexes,
        ["tarn_idx:a:b__c", "tarn_idx:a__b:c", "tarn_idx:u:ts"]
    );
    // A name an older index took is refused with a 400, streaming too.
    drop(db);
    let db = rusqlite::Connection::open(node.data_dir().join("dbms/lab.db")).unwrap();
    db.execute_batch("CREATE INDEX old__idx ON u (ts);")
        .unwrap();
    drop(db);
    for a in [
        node.post("lab", "old__idx", r#"{"a": 1}"#),
        put(&node, "old__idx", r#"{"a": 1}"#),
    ] {
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(a.body.contains("invalid_name"), "{}", a.body);
    }
}

/// A streamed row whose column another write retyped in between is set
/// aside alone at flush; the other acknowledged rows are stored, the node
/// says what it keeps, and a replay stores it once it fits.
#[test]
fn a_row_that_stops_fitting_is_set_aside_alone_and_can_be_replayed() {
    let node = LocalNode::start(|c| {
        c.streaming.threshold_rows = 1_000_000;
        c.streaming.threshold_ms = 3_600_000;
    });
    for body in [
        r#"{"k": 1, "v": "text"}"#,
        r#"{"k": 2}"#,
        r#"{"k": 3, "w": 1.5}"#,
    ] {
        assert_eq!(put(&node, "t", body).status, 200);
    }
    // Meanwhile a batch makes `v` an integer column.
    node.post("lab", "t", r#"{"k": 10, "v": 5}"#)
        .ok_json()
        .unwrap();
    node.command("flush buffers");
    assert_eq!(node.count("lab", "t"), 3, "k 10 and the two rows that fit");
    let status = node.client.get("/v1/status", &[]).unwrap().json().unwrap();
    assert_eq!(
        status["stream_errors"],
        json!({"files": 1, "rows": 1}),
        "{status}"
    );
    let err = std::fs::read_dir(node.data_dir().join("stream/error"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".err.txt"))
        .unwrap();
    let reason = std::fs::read_to_string(err).unwrap();
    assert!(
        reason.contains("cannot be stored in integer column"),
        "{reason}"
    );
    // Still does not fit: kept, counted.
    let r = node.command("replay stream errors").json().unwrap();
    assert_eq!(r, json!({"stored_rows": 0, "rows_left": 1}));
    // It fits in a table of its own name once that is what it is for: here,
    // the cause is fixed by moving the journal to another table's name.
    let dir = node.data_dir().join("stream/error");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replacen("lab.t.", "lab.t2.", 1);
        std::fs::rename(&p, dir.join(name)).unwrap();
    }
    let r = node
        .client
        .post("/v1/streams/replay", &[], b"")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r, json!({"stored_rows": 1, "rows_left": 0}));
    assert_eq!(node.count("lab", "t2"), 1);
    let status = node.client.get("/v1/status", &[]).unwrap().json().unwrap();
    assert_eq!(status["stream_errors"]["files"], 0, "{status}");
}

/// Answers are bounded in bytes as they are built: a value or an answer
/// larger than `max_result_bytes` is a 422, and the node goes on.
#[test]
fn huge_values_and_answers_are_refused_not_built() {
    let node = LocalNode::start(|c| c.max_result_bytes = 8 << 20);
    node.post("lab", "t", r#"[{"a": 1}, {"a": 2}, {"a": 3}]"#)
        .ok_json()
        .unwrap();
    for (sql, scopes) in [
        (
            "SELECT zeroblob(500000000) FROM (VALUES (1), (2))",
            &["local"][..],
        ),
        (
            "SELECT a, zeroblob(500000000) FROM t",
            &["local", "network"],
        ),
        (
            "SELECT printf('%.*c', 3000000, 'x') AS s FROM t",
            &["local", "network"],
        ),
        (
            "SELECT a, hex(zeroblob(5000000)) FROM t",
            &["local", "network"],
        ),
    ] {
        for scope in scopes {
            let a = node
                .client
                .query_with(&json!({"db": "lab", "sql": sql, "scope": scope}))
                .unwrap();
            assert_eq!(a.status, 422, "{sql} ({scope}): {}", a.body);
            assert_eq!(a.json().unwrap()["error"]["code"], "result_too_large");
        }
    }
    assert_eq!(node.count("lab", "t"), 3);
}

/// A `table` policy naming a cluster no operator is known in leaves the
/// table's network queries answering (and says what it left out); an
/// operator that moved into a cluster counts its rows once.
#[test]
fn stale_and_foreign_table_policies_do_not_break_or_double_answers() {
    let mut node = LocalNode::start(|_| {});
    node.post("lab", "t", r#"[{"a": 1}, {"a": 2}, {"a": 3}]"#)
        .ok_json()
        .unwrap();
    let table_policies = |n: &LocalNode| {
        n.command("blockchain get table where dbms = lab and name = t bring.count")
            .body
    };
    wait_for("the table policy", Duration::from_secs(20), || {
        (table_policies(&node) == "1").then_some(())
    });
    node.restart(|c| c.cluster = Some("x".into()));
    wait_for(
        "the old cluster's policy withdrawn",
        Duration::from_secs(20),
        || {
            (table_policies(&node) == "1"
                && node
                    .command("blockchain get table where cluster = x bring.count")
                    .body
                    == "1")
                .then_some(())
        },
    );
    let ghost = br#"{"table": {"dbms": "lab", "name": "t", "cluster": "ghost"}}"#;
    node.client
        .post("/v1/policies", &[], ghost)
        .unwrap()
        .ok_json()
        .unwrap();
    let v = node
        .client
        .query("lab", "SELECT count(*) FROM t")
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(v["rows"][0][0], 3, "{v}");
    assert_eq!(v["errors"][0]["cluster"], "ghost", "{v}");
}

/// Clients that send the headers of a large body and then nothing hold no
/// budget they did not fill: other writes and queries go on at once (each
/// must answer within 20 s, while the stalled bodies would hold the budget
/// for the whole 60 s body timeout), and the stalled connections are
/// answered 408 and closed once their timeout passes.
#[test]
fn stalled_bodies_hold_nothing_and_are_cut() {
    for (timeout_ms, check_cut) in [(60_000, false), (1_000, true)] {
        let node = LocalNode::start(|c| {
            c.max_inflight_bytes = 64 << 20;
            c.body_timeout_ms = timeout_ms;
        });
        let addr = node.client.base().trim_start_matches("http://").to_owned();
        let stalled: Vec<TcpStream> = (0..8)
            .map(|i| {
                let mut s = TcpStream::connect(&addr).unwrap();
                let head = if i % 2 == 0 {
                    "POST /v1/data/lab/t HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n{\"a\":"
                } else {
                    "PUT / HTTP/1.1\r\nHost: x\r\ntype: json\r\ndbms: lab\r\ntable: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                };
                s.write_all(head.as_bytes()).unwrap();
                s
            })
            .collect();
        let client = node.client.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..5 {
                let a = client.ingest("lab", "t", format!(r#"{{"a": {i}}}"#).as_bytes());
                let q = client.query("lab", "SELECT count(*) FROM t");
                let _ = tx.send((a.map(|a| a.status), q.map(|q| q.status)));
            }
        });
        for _ in 0..5 {
            let (a, q) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("writes wait behind the stalled bodies");
            assert_eq!((a.unwrap(), q.unwrap()), (200, 200));
        }
        if check_cut {
            for mut s in stalled {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
            }
        }
    }
}

/// The smaller refusals: every one a JSON answer that says why, and
/// nothing stored.
#[test]
fn smaller_refusals_say_why() {
    let node = LocalNode::start(|c| {
        c.watch.poll_ms = 50;
        c.watch.settle_ms = 200;
    });
    let c = &node.client;
    let a = c.put("/v1/status", &[], b"").unwrap();
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.json().unwrap()["error"]["code"], "method_not_allowed");
    let a = c.get("/v1/policies?type=%ZZ", &[]).unwrap();
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json().unwrap()["error"]["code"], "malformed_request");
    let a = c.get("/v1/policies?type=oper%61tor", &[]).unwrap();
    assert_eq!(a.json().unwrap().as_array().unwrap().len(), 1, "{}", a.body);
    let a = c
        .post(
            "/v1/data/lab/t",
            &[],
            br#"{"x": 123456789012345678901234567890}"#,
        )
        .unwrap();
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json().unwrap()["error"]["code"], "malformed_json");
    let a = c
        .post(
            "/",
            &[("command", "blockchain insert where policy = !x")],
            b"x={\"s\": {\"n\": \"\xff\"}}",
        )
        .unwrap();
    assert!(
        a.json().unwrap()["err_code"].as_i64().unwrap() > 0,
        "{}",
        a.body
    );
    assert_eq!(
        node.command("blockchain get s bring.count").body,
        "0",
        "nothing was published"
    );
    // A symbolic link in the watched directory is set aside, with the reason.
    let watch = node.data_dir().join("watch");
    let target = node.data_dir().join("elsewhere.json");
    std::fs::write(&target, r#"{"a": 1}"#).unwrap();
    std::os::unix::fs::symlink(&target, watch.join("lab.linked.json")).unwrap();
    let reason = wait_for("the link set aside", Duration::from_secs(20), || {
        std::fs::read_to_string(watch.join("error/lab.linked.json.err.txt")).ok()
    });
    assert!(reason.contains("symbolic link"), "{reason}");
    assert_eq!(node.count("lab", "linked"), 0);
}
