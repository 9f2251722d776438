//! Every kind of bad input gets a 4xx JSON error and changes nothing stored.

use crate::harness::{Answer, Api, LocalNode};

fn assert_refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let v = a.json().unwrap();
    assert_eq!(v["error"]["code"], code, "{}", a.body);
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
}

fn snapshot(node: &Api) -> (i64, String) {
    let cols = node
        .command("get columns where dbms = lab and table = t and format=json")
        .body;
    (node.count("lab", "t"), cols)
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let node = LocalNode::start(|c| c.max_body_bytes = 4096);
    node.post(
        "lab",
        "t",
        r#"[{"ts": "2024-01-01T00:00:00Z", "temp": 1.5, "n": 1, "ok": true}]"#,
    )
    .ok_json()
    .unwrap();
    let before = snapshot(&node);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        // Malformed JSON after good rows: the whole batch is refused.
        (
            "lab",
            "t",
            r#"[{"temp": 2.0}, {"temp": 3.0}, {"temp": }]"#.into(),
            400,
            "malformed_json",
        ),
        (
            "lab",
            "t",
            "{\"temp\": 2.0}\n{\"temp\": 3.0\n".into(),
            400,
            "malformed_json",
        ),
        ("lab", "t", "[1, 2, 3]".into(), 400, "malformed_json"),
        ("lab", "t", "".into(), 400, "empty_body"),
        // Values that do not fit their columns, next to a new column that must not appear.
        (
            "lab",
            "t",
            r#"[{"temp": 2.0, "extra": 1}, {"temp": "warm", "extra": 2}]"#.into(),
            400,
            "type_mismatch",
        ),
        ("lab", "t", r#"{"n": 1.5}"#.into(), 400, "type_mismatch"),
        (
            "lab",
            "t",
            r#"{"ts": "yesterday"}"#.into(),
            400,
            "type_mismatch",
        ),
        (
            "lab",
            "t",
            r#"{"ok": "maybe"}"#.into(),
            400,
            "type_mismatch",
        ),
        (
            "lab",
            "t",
            r#"[{"fresh": 1}, {"fresh": "one"}]"#.into(),
            400,
            "type_mismatch",
        ),
        // Names that are not identifiers.
        ("lab", "t", r#"{"temp c": 1.0}"#.into(), 400, "invalid_name"),
        ("lab", "t", r#"{"row_id": 7}"#.into(), 400, "invalid_name"),
        (
            "lab",
            "bad-table",
            r#"{"temp": 1.0}"#.into(),
            400,
            "invalid_name",
        ),
        ("9lab", "t", r#"{"temp": 1.0}"#.into(), 400, "invalid_name"),
        ("almgm", "t", r#"{"temp": 1.0}"#.into(), 400, "invalid_name"),
        // Too large for the node's limit.
        (
            "lab",
            "t",
            format!("[{}]", vec![r#"{"temp": 1.0}"#; 400].join(",")),
            413,
            "body_too_large",
        ),
    ];
    for (db, table, body, status, code) in &cases {
        let a = node.post(db, table, body);
        assert_refused(&a, *status, code);
        assert_eq!(snapshot(&node), before, "{body} changed what is stored");
    }
    // The same through EdgeLake's PUT, in both modes.
    for mode in ["file", "streaming"] {
        for (db, table, body, status, code) in &cases {
            let a = node.put(db, table, mode, body);
            assert_refused(&a, *status, code);
            assert_eq!(a.json().unwrap()["AnyLog.status"], "Failed");
        }
        node.command("flush buffers");
        assert_eq!(snapshot(&node), before);
    }
    let a = node
        .client
        .put("/", &[("type", "json"), ("table", "t")], b"{\"temp\": 1}")
        .unwrap();
    assert_refused(&a, 400, "missing_header");
    let a = node
        .client
        .put(
            "/",
            &[("type", "csv"), ("dbms", "lab"), ("table", "t")],
            b"a,b",
        )
        .unwrap();
    assert_refused(&a, 400, "unsupported_type");

    // Queries: unknown names and anything but one SELECT.
    assert_refused(
        &node.client.query("nodb", "SELECT 1").unwrap(),
        404,
        "unknown_database",
    );
    assert_refused(
        &node.client.query("lab", "SELECT * FROM nothere").unwrap(),
        404,
        "unknown_table",
    );
    for sql in [
        "DELETE FROM t",
        "DROP TABLE t",
        "INSERT INTO t (temp) VALUES (1)",
        "UPDATE t SET temp = 0",
        "SELECT 1; DELETE FROM t",
        "PRAGMA writable_schema = 1",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "SELEC * FROM t",
        "",
    ] {
        assert_refused(&node.client.query("lab", sql).unwrap(), 400, "invalid_sql");
    }
    let a = node
        .client
        .post("/v1/query", &[], b"{\"sql\": \"SELECT 1\"}")
        .unwrap();
    assert_refused(&a, 400, "malformed_request");
    assert_refused(
        &node.client.get("/v1/nothing", &[]).unwrap(),
        404,
        "not_found",
    );
    assert_eq!(snapshot(&node), before);

    // EdgeLake commands answer errors in EdgeLake's shape.
    let v = node.command("sql lab \"DELETE FROM t\"").json().unwrap();
    assert!(v["err_code"].as_i64().unwrap() > 0);
    assert!(v["err_text"].as_str().unwrap().contains("SELECT"));
    let v = node.command("no such command").json().unwrap();
    assert!(v["err_code"].as_i64().unwrap() > 0);
    assert_eq!(snapshot(&node), before);
}
