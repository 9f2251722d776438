//! EdgeLake's command protocol, answered in EdgeLake's exact shapes.

use crate::harness::LocalNode;

fn seeded() -> LocalNode {
    let node = LocalNode::start(|_| {});
    node.put(
        "lab",
        "ping",
        "file",
        r#"[{"timestamp": "2023-01-01T00:00:00Z", "device_name": "alpha", "value": 1.0},
            {"timestamp": "2023-01-01T00:30:00Z", "device_name": "alpha", "value": 2.5},
            {"timestamp": "2023-01-01T01:00:00Z", "device_name": "beta", "value": -1.0500001907348633},
            {"timestamp": "2023-01-01T01:30:00Z", "device_name": "beta", "value": null}]"#,
    )
    .ok_json()
    .unwrap();
    node
}

#[test]
fn sql_json_formats() {
    let node = seeded();
    let a = node.command("sql lab format=json and stat=false \"select device_name, count(value), avg(value) from ping group by device_name order by device_name\"");
    assert_eq!(
        a.body,
        r#"{"Query":[{"device_name":"alpha","count(value)":2,"avg(value)":1.75},{"device_name":"beta","count(value)":1,"avg(value)":-1.0500001907348633}]}"#
    );
    let a = node.command(
        "sql lab select timestamp, value from ping where device_name = 'beta' order by timestamp;",
    );
    let (query, stats) = a.body.split_once(",\n\"Statistics\":").unwrap();
    assert_eq!(
        query,
        r#"{"Query":[{"timestamp":"2023-01-01 01:00:00.000000","value":-1.0500001907348633},{"timestamp":"2023-01-01 01:30:00.000000","value":""}]"#
    );
    assert!(
        stats.starts_with("[{\"Count\": 2,\"Time\":\"00:00:0"),
        "{stats}"
    );
    assert!(stats.ends_with(",\"Nodes\": 1}]}"), "{stats}");
    let a = node.command("sql lab format = json:list SELECT max(value) FROM ping");
    assert_eq!(a.body, r#"[{"max(value)":2.5}]"#);
    let a = node.command("sql lab format=json and stat=false select * from ping where value > 100");
    assert_eq!(a.body, r#"{"reply" : "Empty data set"}"#);
    let a =
        node.command("sql lab format=table and stat=false select * from ping where value > 100");
    assert_eq!(a.body, r#"{"reply" : "Empty data set"}"#);
    // The same command as POST with a JSON body.
    let a = node
        .client
        .post("/", &[], br#"{"command": "sql lab format=json:list select count(*) from ping", "destination": "network"}"#)
        .unwrap();
    assert_eq!(a.body, r#"[{"count(*)":4}]"#);
}

#[test]
fn sql_table_format() {
    let node = seeded();
    let a = node.command("sql lab format=table \"select device_name, value, timestamp from ping order by timestamp\"");
    let want = "\n\
device_name value               timestamp\n\
----------- ------------------- -------------------------- \n\
alpha                       1.0 2023-01-01 00:00:00.000000\n\
alpha                       2.5 2023-01-01 00:30:00.000000\n\
beta        -1.0500001907348633 2023-01-01 01:00:00.000000\n\
beta        null                2023-01-01 01:30:00.000000\n";
    let (table, stats) = a.body.split_at(want.len());
    assert_eq!(table, want);
    assert!(
        stats.starts_with("\n{\"Statistics\":[{\"Count\": 4,\n                \"Time\":\""),
        "{stats}"
    );
    assert!(
        stats.ends_with("\",\n                \"Nodes\": 1}]}"),
        "{stats}"
    );

    // Blocks of 25 rows, each with its own header.
    let rows: Vec<String> = (0..30).map(|i| format!("{{\"n\": {i}}}")).collect();
    node.post("lab", "many", &rows.join("\n"))
        .ok_json()
        .unwrap();
    let a = node.command("sql lab format=table and stat=false select n from many order by n");
    assert_eq!(a.body.matches("\nn\n-- \n").count(), 2, "{}", a.body);
    assert!(
        a.body.starts_with("\nn\n-- \n 0 \n 1 \n"),
        "{:?}",
        &a.body[..30]
    );
    assert!(a.body.contains("24 \n\nn\n-- \n25 \n"));
}

#[test]
fn metadata_commands() {
    let node = seeded();
    let s = node.command("get status");
    assert!(
        s.body.starts_with("'test-node@127.0.0.1:") && s.body.ends_with(" running'"),
        "{}",
        s.body
    );
    let s = node.command("get status where format=json").json().unwrap();
    assert!(s["status"].as_str().unwrap().ends_with(" running"));
    let d = node
        .command("get databases where format=json")
        .json()
        .unwrap();
    assert_eq!(d["lab"]["dbms_type"], "sqlite");
    assert!(d.get("almgm").is_some());
    let p = node
        .command("get processes where format=json")
        .json()
        .unwrap();
    assert_eq!(p["REST"]["Status"], "Running");
    assert_eq!(p["Operator"]["Status"], "Running");
    let t = node
        .command("get tables where dbms = lab and format=json")
        .json()
        .unwrap();
    assert_eq!(t["lab"][0]["table"], "ping");
    let c = node
        .command("get columns where dbms = lab and table = ping and format=json")
        .json()
        .unwrap();
    assert_eq!(
        c,
        serde_json::json!({
            "row_id": "integer", "insert_timestamp": "timestamp without time zone",
            "tsd_name": "character varying", "tsd_id": "integer",
            "timestamp": "timestamp without time zone", "device_name": "character varying", "value": "float"
        })
    );
    let e = node
        .command("get columns where dbms = lab and table = nope and format=json")
        .json()
        .unwrap();
    assert!(e["err_code"].as_i64().unwrap() > 0);
    let text = node.command("get columns where dbms = lab and table = ping");
    assert!(text.body.contains("device_name") && text.body.contains("character varying"));
}
