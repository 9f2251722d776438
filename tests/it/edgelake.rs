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
    // A local query: EdgeLake says "Nodes": 0.
    assert!(stats.ends_with(",\"Nodes\": 0}]}"), "{stats}");
    let a = node.command("sql lab format = json:list SELECT max(value) FROM ping");
    assert_eq!(a.body, r#"[{"max(value)":2.5}]"#);
    // EdgeLake sends a sql answer as text/json.
    let r = node
        .client
        .get("/", &[("command", "sql lab select count(*) from ping")])
        .unwrap();
    assert_eq!(
        (r.status, r.content_type.as_deref()),
        (200, Some("text/json"))
    );
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
        stats.ends_with("\",\n                \"Nodes\": 0}]}"),
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
    // EdgeLake 1.4, observed: `name@ip:port running`, unquoted, with the
    // node's peer (TCP) port; `{"Status": ...}` as JSON.
    let st = node
        .client
        .get("/v1/status", &[])
        .unwrap()
        .ok_json()
        .unwrap();
    let tcp = st["listen"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| {
            a.as_str()?
                .split("/tcp/")
                .nth(1)?
                .split('/')
                .next()
                .map(str::to_owned)
        })
        .expect("a TCP listen address");
    let expected = format!("test-node@127.0.0.1:{tcp} running");
    assert_eq!(node.command("get status").body, expected);
    let s = node.command("get status where format=json").json().unwrap();
    assert_eq!(s, serde_json::json!({ "Status": expected }));
    // The node's policy carries EdgeLake's address fields beside tarn's.
    let ops = node.command("blockchain get operator").json().unwrap();
    let op = &ops[0]["operator"];
    let rest_port: u64 = st["rest"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        (
            op["ip"].as_str(),
            op["port"].as_u64(),
            op["rest_port"].as_u64()
        ),
        (Some("127.0.0.1"), tcp.parse().ok(), Some(rest_port)),
        "{op}"
    );
    assert!(op["hostname"].is_string() && op["main"] == true && op["peer_id"].is_string());
    let d = node
        .command("get databases where format=json")
        .json()
        .unwrap();
    assert_eq!(d["lab"]["dbms_type"], "sqlite");
    assert!(d.get("almgm").is_some());
    // The node runs the query service: EdgeLake lists system_query.
    assert!(d.get("system_query").is_some(), "{d}");
    let p = node
        .command("get processes where format=json")
        .json()
        .unwrap();
    assert_eq!(p["REST"]["Status"], "Running");
    assert_eq!(p["Operator"]["Status"], "Running");
    // Peer connections and ledger sync run; EdgeLake's names for them.
    assert_eq!(p["TCP"]["Status"], "Running");
    assert_eq!(p["Blockchain Sync"]["Status"], "Running");
    // Its timers are EdgeLake's system scheduler; the files it loaded stay
    // in the watched directory's archive (EdgeLake's archiver).
    assert_eq!(p["Scheduler"]["Status"], "Running");
    assert_eq!(p["Blobs Archiver"]["Status"], "Running");
    assert_eq!(p["SMTP"]["Status"], "Not declared");
    let names: Vec<&String> = p.as_object().unwrap().keys().collect();
    assert_eq!(names[..4], ["TCP", "REST", "Operator", "Blockchain Sync"]);
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
        // The types EdgeLake declares from the first rows (its
        // suggest_create_table: text of at most 8 characters is char(n), a
        // float written with more than 5 decimals makes the column float),
        // shown as its get columns shows them (unify_data_type: timestamp
        // and varchar in PostgreSQL's words); AnyLog's unit tests expect
        // exactly these names (test_anylog_cli.py, test_table_columns).
        serde_json::json!({
            "row_id": "integer", "insert_timestamp": "timestamp without time zone",
            "tsd_name": "char(3)", "tsd_id": "int",
            "timestamp": "timestamp without time zone", "device_name": "char(5)", "value": "float"
        })
    );
    let e = node
        .command("get columns where dbms = lab and table = nope and format=json")
        .json()
        .unwrap();
    assert!(e["err_code"].as_i64().unwrap() > 0);
    let text = node.command("get columns where dbms = lab and table = ping");
    assert!(text.body.contains("device_name") && text.body.contains("char(5)"));
}

/// Answers as EdgeLake 1.4 gives them (observed side by side on the same
/// rows; see ../shared/EDGELAKE-COMPAT.md): casts beside `increments`,
/// `period` with a double-quoted date, GROUP BY order, a missing table.
#[test]
fn sql_answers_as_edgelake_gives_them() {
    let node = LocalNode::start(|_| {});
    let rows: Vec<String> = (0..48)
        .map(|h| {
            format!(
                r#"{{"timestamp": "2024-03-{:02}T{:02}:00:00Z", "device": "{}", "v": {}}}"#,
                10 + h / 24,
                h % 24,
                ["gamma", "alpha", "beta"][h % 3],
                h as f64 / 3.0
            )
        })
        .collect();
    node.post("lab", "t", &rows.join("\n")).ok_json().unwrap();

    // 1. The casts apply to the columns they are written on: `increments`
    // makes no column of its own.
    let a = node.command(
        "sql lab format=json and stat=false select increments(day, 1, timestamp), \
         min(timestamp)::ljust(19) as t0, avg(v)::float(3) as a from t",
    );
    assert_eq!(
        a.body,
        r#"{"Query":[{"t0":"2024-03-10T00:00:00","a":3.833},{"t0":"2024-03-11T00:00:00","a":11.833}]}"#
    );

    // 2. period() takes the date in double quotes as in single ones.
    let q = |date: &str| {
        node.command(&format!(
            "sql lab format=json and stat=false select count(*), min(timestamp) from t \
             where period(hour, 3, {date}, timestamp)"
        ))
        .body
    };
    let single = q("'2024-03-11 05:30:00'");
    assert_eq!(single, q("\"2024-03-11 05:30:00\""));
    assert_eq!(
        single,
        r#"{"Query":[{"count(*)":3,"min(timestamp)":"2024-03-11 03:00:00.000000"}]}"#
    );

    // timezone= shows timestamps in a zone (AnyLog's queries.md: utc,
    // local, pt/mt/ct/et or a tz database name); the stored UTC is the
    // default. March 10 2024 is the day the US moves to daylight time.
    let tz = |zone: &str| {
        node.command(&format!(
            "sql lab format=json and stat=false and timezone={zone} select timestamp, \
             min(timestamp) from t where timestamp >= '2024-03-10 06:00:00' \
             and timestamp < '2024-03-10 09:00:00' group by timestamp"
        ))
        .body
    };
    assert_eq!(
        tz("et"),
        r#"{"Query":[{"timestamp":"2024-03-10 01:00:00.000000","min(timestamp)":"2024-03-10 01:00:00.000000"},{"timestamp":"2024-03-10 03:00:00.000000","min(timestamp)":"2024-03-10 03:00:00.000000"},{"timestamp":"2024-03-10 04:00:00.000000","min(timestamp)":"2024-03-10 04:00:00.000000"}]}"#
    );
    assert_eq!(tz("et"), tz("America/New_York"));
    assert_eq!(tz("utc"), tz("UTC"));
    assert!(tz("utc").contains(r#""timestamp":"2024-03-10 06:00:00.000000""#));
    let bad = node.command("sql lab timezone=Mars/Olympus select * from t");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("Mars/Olympus"), "{}", bad.body);

    // 5. GROUP BY without ORDER BY: SQLite's order (by the group key),
    // locally and through the network, every time.
    let grouped =
        "sql lab format=json and stat=false select device, count(*) from t group by device";
    let expected = r#"{"Query":[{"device":"alpha","count(*)":16},{"device":"beta","count(*)":16},{"device":"gamma","count(*)":16}]}"#;
    assert_eq!(node.command(grouped).body, expected);
    for _ in 0..5 {
        let a = node.client.command(grouped, Some("network")).unwrap();
        assert_eq!(a.body, expected);
    }

    // 4. avg is the correctly rounded mean (Python's
    // float(sum(map(Fraction, xs)) / n)), locally and through the network.
    let xs = [
        -18.967770730223535,
        16.877590758977945,
        70.87724426017536,
        73.04755173061665,
        69.31434877900168,
        -59.34345484917447,
        63.481308311200195,
        -45.89393049202057,
        -62.61500106039095,
        -89.34827118568353,
        -89.09376659749945,
        82.45930384765089,
        -75.06490148689181,
        -15.025344328433874,
        50.18598140412081,
        72.08485469278241,
        -22.303255187853097,
        13.896597611088339,
        33.31802911458851,
        16.715602495283008,
        73.36258706184023,
        -88.48972766927814,
    ];
    let body: Vec<String> = xs.iter().map(|x| format!(r#"{{"x": {x:?}}}"#)).collect();
    node.post("lab", "mean", &body.join("\n"))
        .ok_json()
        .unwrap();
    let avg = "sql lab format=json:list and stat=false select avg(x) from mean";
    for dest in [None, Some("network")] {
        let a = node.client.command(avg, dest).unwrap();
        assert_eq!(a.body, r#"[{"avg(x)":3.1579807490852994}]"#, "{dest:?}");
    }

    // 6. A missing table: HTTP 400, err_code 29, EdgeLake's texts.
    for dest in [None, Some("network")] {
        let a = node
            .client
            .command("sql lab format=json select * from nope", dest)
            .unwrap();
        assert_eq!(a.status, 400, "{}", a.body);
        let v = a.json().unwrap();
        assert_eq!(v["err_code"], 29, "{v}");
        assert_eq!(v["err_text"], "No metadata info");
        assert_eq!(
            v["local_msg"],
            "Table 'nope' in DBMS 'lab' not defined (using 'sqlite')"
        );
    }
}

/// AnyLog's own unit tests (AnyLog-co/unit-testing: insert_data.py,
/// test_anylog_cli.py, test_sql_queries.py) drive a node this way: a row per
/// PUT, `flush buffers` sent as a PUT with a `command` header, then `get`
/// commands and queries whose answers they compare with EdgeLake's. The rows
/// are made here with the suite's shapes; the expected texts are EdgeLake's
/// own (its expect/period_complex_day_30.out and
/// expect/period_and_condition_day_30.out, which these rows reproduce).
#[test]
fn anylog_unit_tests_get_edgelake_answers() {
    let node = LocalNode::start(|c| c.streaming.threshold_ms = 600_000);
    let plant = [
        ("DF2", "2024-01-18T14:15:00", 24, 22, 24, "true"),
        ("DF2", "2024-02-11T09:35:24", 23, 19, 23, "false"),
        ("DF2", "2023-05-14T02:50:24", 25, 19, 25, "true"),
        ("BSP", "2024-02-09T22:36:36", 1, 1, 1, "true"),
        ("BSP", "2024-02-12T10:00:00", 1, 1, 1, "true"),
        ("BG10", "2024-02-14T00:00:00", 0, 0, 0, "true"),
        ("BG10", "2023-01-01T23:19:12", 0, 0, 0, "true"),
    ];
    for (m, ts, a, b, c, comms) in plant {
        let row = format!(
            r#"{{"monitor_id": "{m}", "timestamp": "{ts}.000000Z", "A_Current": {a}, "B_Current": {b}, "C_Current": {c}, "CommsStatus": "{comms}", "Frequency": 6000}}"#
        );
        node.put("new_company", "power_plant", "streaming", &row)
            .ok_json()
            .unwrap();
    }
    for (ts, pv) in [
        ("2023-01-01T00:00:00", -1.0399999618530273),
        ("2023-12-28T05:12:36", -1.0500001907348633),
    ] {
        let row = format!(
            r#"{{"monitor_id": "InconLoadTapChangerAI", "timestamp": "{ts}.000000Z", "PV": {pv:?}}}"#
        );
        node.put("new_company", "power_plant_pv", "streaming", &row)
            .ok_json()
            .unwrap();
    }
    for (ts, v) in [
        ("2023-01-01T00:00:00", "8.491"),
        ("2024-07-19T12:14:24", "276.0"),
        ("2024-07-19T23:54:00", "320.6"),
        ("2025-12-31T23:59:59", "974.959"),
    ] {
        let row = format!(r#"{{"timestamp": "{ts}.000000Z", "value": {v}}}"#);
        node.put("new_company", "rand_data", "streaming", &row)
            .ok_json()
            .unwrap();
    }
    // `flush buffers` as the suite sends it (rest_call.py's "post" is a PUT).
    let f = node
        .client
        .put(
            "/",
            &[("command", "flush buffers"), ("User-Agent", "AnyLog/1.23")],
            b"",
        )
        .unwrap();
    assert_eq!(f.status, 200, "{}", f.body);

    // test_row_count_complete / _per_table_complete: one total, or a row
    // per table with extend=(@table_name).
    let base = "sql new_company format=json and stat=false";
    let a = node.command(&format!(
        "{base} and include=(rand_data, power_plant_pv) \"SELECT COUNT(*) AS row_count FROM power_plant;\""
    ));
    assert_eq!(a.body, r#"{"Query":[{"row_count":13}]}"#);
    let a = node
        .command(&format!(
            "{base} and include=(rand_data, power_plant_pv) and extend=(@table_name) \"SELECT COUNT(*) AS row_count FROM power_plant;\""
        ))
        .json()
        .unwrap();
    let mut per: Vec<(String, i64)> = a["Query"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["table_name"].as_str().unwrap().to_owned(),
                r["row_count"].as_i64().unwrap(),
            )
        })
        .collect();
    per.sort();
    assert_eq!(
        per,
        [
            ("power_plant".to_owned(), 7),
            ("power_plant_pv".to_owned(), 2),
            ("rand_data".to_owned(), 4)
        ]
    );

    // test_aggregations_group_by: a repeated alias and an ORDER without BY
    // (EdgeLake reads no ORDER BY there): the groups in their own order.
    let a = node.command(&format!(
        "{base} and include=(power_plant_pv) SELECT monitor_id, min(timestamp)::ljust(19) as min_ts, \
         max(timestamp)::ljust(19) as max_ts, count(*) as row_count as row_count FROM power_plant \
         GROUP BY monitor_id ORDER min_ts, monitor_id DESC"
    ));
    assert_eq!(
        a.body,
        r#"{"Query":[{"monitor_id":"BG10","min_ts":"2023-01-01T23:19:12","max_ts":"2024-02-14T00:00:00","row_count":2},{"monitor_id":"BSP","min_ts":"2024-02-09T22:36:36","max_ts":"2024-02-12T10:00:00","row_count":2},{"monitor_id":"DF2","min_ts":"2023-05-14T02:50:24","max_ts":"2024-02-11T09:35:24","row_count":3},{"monitor_id":"InconLoadTapChangerAI","min_ts":"2023-01-01T00:00:00","max_ts":"2023-12-28T05:12:36","row_count":2}]}"#
    );

    // test_period_complex (day, 30): ORDER BY timestamp, monitor_id DESC
    // sorts both keys descending in EdgeLake.
    let t = node.command(
        "sql new_company format=table and stat=false SELECT monitor_id, min(timestamp) as timestamp, \
         avg(a_current), avg(b_current) as b_current, avg(c_current) as c_current FROM power_plant \
         WHERE period(day, 30, \"2024-02-15 20:18:29\", timestamp) AND (monitor_id='DF2' OR monitor_id='BSP') \
         GROUP BY monitor_id ORDER BY timestamp, monitor_id  DESC",
    );
    assert_eq!(
        t.body,
        "\nmonitor_id timestamp                  avg(a_current) b_current c_current\n\
         ---------- -------------------------- -------------- --------- --------- \n\
         BSP        2024-02-09 22:36:36.000000            1.0       1.0       1.0 \n\
         DF2        2024-01-18 14:15:00.000000           23.5      20.5      23.5 \n"
    );
    // test_period_and (day, 30).
    let t = node.command(
        "sql new_company format=table and stat=false SELECT timestamp, a_current, b_current, c_current \
         FROM power_plant WHERE period(day, 30, \"2024-02-15 20:18:29\", timestamp) AND monitor_id='DF2' \
         ORDER BY timestamp DESC",
    );
    assert_eq!(
        t.body,
        "\ntimestamp                  a_current b_current c_current\n\
         -------------------------- --------- --------- --------- \n\
         2024-02-11 09:35:24.000000        23        19        23 \n\
         2024-01-18 14:15:00.000000        24        22        24 \n"
    );
    // test_aggregations, and increments: a whole float stays a float
    // (expect/increments_day_1.out shows `276.0`).
    let a = node.command(&format!(
        "{base} \"SELECT min(timestamp) as min_ts, max(timestamp) as max_ts,  MIN(value) as min_val, \
         MAX(value) as max_val, COUNT(*) as row_count FROM rand_data\""
    ));
    assert_eq!(
        a.body,
        r#"{"Query":[{"min_ts":"2023-01-01 00:00:00.000000","max_ts":"2025-12-31 23:59:59.000000","min_val":8.491,"max_val":974.959,"row_count":4}]}"#
    );
    let t = node.command(
        "sql new_company format=table and stat=false \"SELECT increments(day, 1, timestamp), \
         min(timestamp)::ljust(19), max(timestamp)::ljust(19), min(value), avg(value)::float(3), \
         max(value) FROM rand_data WHERE timestamp >= '2024-07-01' AND timestamp < '2024-08-01';\"",
    );
    assert_eq!(
        t.body,
        "\nmin(timestamp)      max(timestamp)      min(value) avg(value) max(value)\n\
         ------------------- ------------------- ---------- ---------- ---------- \n\
         2024-07-19T12:14:24 2024-07-19T23:54:00      276.0      298.3      320.6 \n"
    );

    // test_operator_processes / test_query_processes.
    let p = node
        .command("get processes where format=json")
        .json()
        .unwrap();
    for k in [
        "TCP",
        "REST",
        "Operator",
        "Blockchain Sync",
        "Scheduler",
        "Blobs Archiver",
    ] {
        assert_eq!(p[k]["Status"], "Running", "{k}: {p}");
    }
    // test_table_columns: EdgeLake's declared types in its words.
    let cols = |t: &str| {
        node.command(&format!(
            "get columns where dbms=new_company and table={t} and format=json"
        ))
        .json()
        .unwrap()
    };
    let c = cols("power_plant");
    assert_eq!(
        (
            &c["row_id"],
            &c["insert_timestamp"],
            &c["tsd_name"],
            &c["tsd_id"]
        ),
        (
            &"integer".into(),
            &"timestamp without time zone".into(),
            &"char(3)".into(),
            &"int".into()
        )
    );
    assert_eq!(
        (
            &c["monitor_id"],
            &c["commsstatus"],
            &c["a_current"],
            &c["timestamp"]
        ),
        (
            &"char(4)".into(),
            &"char(5)".into(),
            &"int".into(),
            &"timestamp without time zone".into()
        )
    );
    let c = cols("power_plant_pv");
    assert_eq!(
        (&c["monitor_id"], &c["pv"]),
        (&"character varying".into(), &"float".into())
    );
    assert_eq!(cols("rand_data")["value"], "decimal");
    // test_check_tables.
    let d = node
        .command("get data nodes where format=json and dbms=new_company")
        .json()
        .unwrap();
    let mut tables: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["DBMS"], "new_company");
            r["Table"].as_str().unwrap()
        })
        .collect();
    tables.sort();
    assert_eq!(tables, ["power_plant", "power_plant_pv", "rand_data"]);
}

/// How AnyLog-Testing's blockchain tests (tests/test_blockchain.py,
/// support/blockchain.py) write and read policies: the policy sent as
/// EdgeLake's assignment `<new_policy={...}>`, `blockchain prepare policy`,
/// then `get`, `bring [type][key]`, `bring.count`, `bring.unique` and
/// `get * where`.
#[test]
fn anylog_testing_blockchain_commands() {
    let node = LocalNode::start(|_| {});
    let post = |cmd: &str, body: &str| {
        node.client
            .post(
                "/",
                &[("command", cmd), ("User-Agent", "AnyLog/1.23")],
                body.as_bytes(),
            )
            .unwrap()
    };
    let bosch = r#"{"manufacturer": {"name": "Bosch", "url": "https://www.bosch-sensortec.com/"}}"#;
    let prepared = post(
        "blockchain prepare policy !new_policy",
        &format!("<new_policy={bosch}>"),
    );
    assert_eq!(prepared.status, 200, "{}", prepared.body);
    let prepared = prepared.json().unwrap();
    let id = prepared["manufacturer"]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let put = post(
        "blockchain insert where policy=!new_policy and local=true and master=!master_node",
        &format!("<new_policy={bosch}>"),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    for (name, serial) in [("fic11", "a"), ("fic11_pv", "b"), ("fic11_mv", "c")] {
        let sensor = format!(
            r#"<new_policy={{"sensor": {{"name": "{name}", "manufacturer": "{id}", "serial_number": "{serial}"}}}}>"#
        );
        assert_eq!(
            post(
                "blockchain insert where policy=!new_policy and local=true",
                &sensor
            )
            .status,
            200
        );
    }
    let got = node
        .command("blockchain get manufacturer where name=Bosch bring [manufacturer][id]")
        .body;
    assert_eq!(got, id);
    assert_eq!(node.command("blockchain get sensor bring.count").body, "3");
    let unique = node
        .command("blockchain get sensor bring.unique")
        .json()
        .unwrap();
    assert_eq!(unique.as_array().unwrap().len(), 3, "{unique}");
    let by_maker = node
        .command(&format!("blockchain get * where manufacturer={id}"))
        .json()
        .unwrap();
    assert_eq!(by_maker.as_array().unwrap().len(), 3, "{by_maker}");
    // A policy that is not one is refused and nothing is stored.
    let bad = post(
        "blockchain insert where policy=!p",
        "<p={\"a\": 1, \"b\": 2}>",
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(node.command("blockchain get a bring.count").body, "0");
}
