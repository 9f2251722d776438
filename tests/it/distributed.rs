//! Distributed queries: the answer over many operators equals SQLite's
//! answer over all the rows in one table.

use std::time::Duration;

use rusqlite::types::ValueRef;
use serde_json::{Value, json};
use tarn::LocalMesh;
use tarn::client::Client;

use crate::harness::{Rng, TestNode, rows_of, wait_for};

const DEVICES: [&str; 5] = ["a", "b", "c", "dd", "e"];

/// One random row: (stored-form time, device, v, n), v in quarters so that
/// every sum is exact in both engines and the comparison can be exact.
fn row(rng: &mut Rng) -> (String, String, Option<f64>, i64) {
    let secs = rng.below(3 * 86_400) as i64;
    let t = tarn_query::time::format_storage(1_704_067_200_000_000 + secs * 1_000_000);
    let dev = DEVICES[rng.below(DEVICES.len() as u64) as usize].to_owned();
    let v = (rng.below(10) > 0).then(|| (rng.below(800) as f64 - 400.0) / 4.0);
    let n = rng.below(50) as i64 - 10;
    (t, dev, v, n)
}

/// A random query over `t(ts, device, v, n)`: the SQL for tarn and the same
/// question for SQLite (tarn's own aggregates spelled out), and whether the
/// answer's order is fixed.
fn query(rng: &mut Rng) -> (String, String, bool) {
    let pick = |rng: &mut Rng, xs: &[&str]| xs[rng.below(xs.len() as u64) as usize].to_owned();
    let wheres = [
        "",
        " WHERE v > 10",
        " WHERE device IN ('a', 'dd')",
        " WHERE ts >= '2024-01-02 00:00:00.000000'",
        " WHERE n % 2 = 0 AND v IS NOT NULL",
        " WHERE ts BETWEEN '2024-01-01 12:00:00.000000' AND '2024-01-02 12:00:00.000000'",
    ];
    let w = pick(rng, &wheres);
    match rng.below(4) {
        // Plain rows, ordered by every column, maybe limited.
        0 => {
            let limit = if rng.below(2) == 0 {
                format!(" LIMIT {}", 1 + rng.below(20))
            } else {
                String::new()
            };
            let offset = if !limit.is_empty() && rng.below(2) == 0 {
                format!(" OFFSET {}", rng.below(5))
            } else {
                String::new()
            };
            let dir = pick(rng, &["", " DESC"]);
            let sql = format!(
                "SELECT device, v, n, n * 2 AS twice FROM t{w} ORDER BY n{dir}, device, v, twice{limit}{offset}"
            );
            (sql.clone(), sql, true)
        }
        1 => {
            let sql = format!("SELECT DISTINCT device FROM t{w} ORDER BY device");
            (sql.clone(), sql, true)
        }
        // Aggregates, grouped or not.
        _ => {
            let aggs: [(&str, &str); 13] = [
                ("count(*)", "count(*)"),
                ("count(v)", "count(v)"),
                ("count(DISTINCT device)", "count(DISTINCT device)"),
                ("sum(v)", "sum(v)"),
                ("avg(v)", "avg(v)"),
                ("min(v)", "min(v)"),
                ("max(v)", "max(v)"),
                ("sum(n)", "sum(n)"),
                ("min(ts)", "min(ts)"),
                ("max(ts)", "max(ts)"),
                ("range(v)", "(max(v) - min(v))"),
                (
                    "variance(v)",
                    "CASE WHEN count(v) > 1 THEN (sum(v * v) - sum(v) * sum(v) / count(v)) / (count(v) - 1) END",
                ),
                ("avg(n) + max(v)", "avg(n) + max(v)"),
            ];
            let k = 1 + rng.below(3) as usize;
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for i in 0..k {
                let (a, b) = aggs[rng.below(aggs.len() as u64) as usize];
                mine.push(format!("{a} AS a{i}"));
                theirs.push(format!("{b} AS a{i}"));
            }
            let groups: [&[&str]; 5] = [
                &[],
                &["device"],
                &["substr(ts, 1, 10)"],
                &["device", "n % 3"],
                &["n > 5"],
            ];
            let g: &[&str] = groups[rng.below(groups.len() as u64) as usize];
            if g.is_empty() {
                let sql = |items: &[String]| format!("SELECT {} FROM t{w}", items.join(", "));
                return (sql(&mine), sql(&theirs), true);
            }
            let keys: Vec<String> = g
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} AS k{i}"))
                .collect();
            let having = if rng.below(3) == 0 {
                " HAVING count(*) > 3"
            } else {
                ""
            };
            // By the keys, or by an aggregate first (the keys break ties).
            let mut order: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
            if rng.below(3) == 0 {
                order.insert(0, "a0 DESC".into());
            }
            let limit = if rng.below(3) == 0 { " LIMIT 4" } else { "" };
            // GROUP BY the expressions, their positions or their aliases.
            let group_by: Vec<String> = match rng.below(3) {
                0 => g.iter().map(|k| k.to_string()).collect(),
                1 => (1..=g.len()).map(|i| i.to_string()).collect(),
                _ => (0..g.len()).map(|i| format!("k{i}")).collect(),
            };
            let sql = |items: &[String]| {
                format!(
                    "SELECT {}, {} FROM t{w} GROUP BY {}{having} ORDER BY {}{limit}",
                    keys.join(", "),
                    items.join(", "),
                    group_by.join(", "),
                    order.join(", ")
                )
            };
            (sql(&mine), sql(&theirs), true)
        }
    }
}

fn reference(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut st = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let width = st.column_count();
    let mut rows = st.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        out.push(
            (0..width)
                .map(|i| match r.get_ref(i).unwrap() {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => json!(i),
                    ValueRef::Real(f) => json!(f),
                    // The native API prints stored times as ISO 8601.
                    ValueRef::Text(t) => {
                        let t = String::from_utf8_lossy(t);
                        json!(tarn_query::time::storage_to_iso(&t).unwrap_or(t.into_owned()))
                    }
                    ValueRef::Blob(_) => unreachable!(),
                })
                .collect(),
        );
    }
    out
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        // Variance goes through a different (but stable) formula in SQLite.
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

fn network(client: &Client, db: &str, sql: &str) -> anyhow::Result<(Vec<Vec<Value>>, Value)> {
    let v = client
        .query_with(&json!({"db": db, "sql": sql, "scope": "network"}))?
        .ok_json()?;
    Ok((rows_of(&v), v["stats"].clone()))
}

#[test]
fn distributed_answers_equal_sqlite_over_all_rows() {
    let seed = std::env::var("TARN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a2a_2026u64);
    eprintln!("differential test seed {seed} (set TARN_SEED to replay)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mesh = rt.block_on(LocalMesh::start(5, dir.path())).unwrap();
    rt.block_on(mesh.wait_converged(4 + 4 * 2, Duration::from_secs(60)))
        .unwrap();
    let clients: Vec<Client> = (0..5)
        .map(|i| Client::new(&format!("http://{}", mesh.node(i).unwrap().rest_addr())))
        .collect();
    let mut rng = Rng::new(seed);
    let mut queries = 0;
    for case in 0..24 {
        let db = format!("diff{case}");
        let ops = 1 + rng.below(5) as usize;
        let n = rng.below(160) as usize;
        let rows: Vec<_> = (0..n.max(1)).map(|_| row(&mut rng)).collect();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (ts TIMESTAMP, device TEXT, v FLOAT, n INTEGER)")
            .unwrap();
        let mut split: Vec<Vec<Value>> = vec![Vec::new(); ops];
        // The first operator gets the first row with every key, so the
        // inferred types are the same everywhere.
        for (i, (t, d, v, nn)) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![t, d, v, nn],
            )
            .unwrap();
            let iso = format!("{}Z", t.replacen(' ', "T", 1));
            let mut o = json!({"ts": iso, "device": d, "n": nn});
            if let Some(v) = v {
                o["v"] = json!(v);
            }
            let to = if i < ops {
                i
            } else {
                rng.below(ops as u64) as usize
            };
            split[to].push(o);
        }
        for (i, part) in split.iter().enumerate() {
            // Every batch leads with a row holding a float v.
            let mut part = part.clone();
            if part.is_empty() {
                continue;
            }
            part.insert(
                0,
                json!({"ts": "2023-12-31T00:00:00Z", "device": "zz", "v": 0.5, "n": 0}),
            );
            let body = serde_json::to_vec(&part).unwrap();
            clients[i]
                .ingest(&db, "t", &body)
                .unwrap()
                .ok_json()
                .unwrap();
        }
        // The marker rows are in the reference too: one per operator that got rows.
        for part in split.iter().filter(|p| !p.is_empty()) {
            let _ = part;
            conn.execute(
                "INSERT INTO t VALUES ('2023-12-31 00:00:00.000000', 'zz', 0.5, 0)",
                [],
            )
            .unwrap();
        }
        let total: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        // Every query node must know every operator's table policy (they
        // spread by gossip within milliseconds) before it can answer whole.
        for asker in &clients {
            wait_for(
                "every operator's table to be known",
                Duration::from_secs(30),
                || {
                    let (r, _) = network(asker, &db, "SELECT count(*) FROM t").ok()?;
                    (r[0][0] == json!(total)).then_some(())
                },
            );
        }
        for _ in 0..10 {
            let (mine, theirs, ordered) = query(&mut rng);
            let want = reference(&conn, &theirs);
            let client = &clients[rng.below(5) as usize];
            let (got, stats) = network(client, &db, &mine)
                .unwrap_or_else(|e| panic!("seed {seed} case {case}: {mine}: {e}"));
            let (mut got, mut want) = (got, want);
            if !ordered {
                got.sort_by_key(|r| format!("{r:?}"));
                want.sort_by_key(|r| format!("{r:?}"));
            }
            let equal = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)));
            assert!(
                equal,
                "seed {seed} case {case} ({ops} operators): {mine}\n tarn:   {got:?}\n sqlite: {want:?}\n stats: {stats}"
            );
            queries += 1;
        }
    }
    eprintln!("{queries} random queries agreed with SQLite");

    // Sums and averages are exact to the last bit across operators, where
    // a float accumulator (SQLite's included) is not.
    let tricky = [0.1, 1e16, 0.3, -1e16, 1.0 / 3.0, 2.5e-8, 0.7, 1e-3, -0.2];
    let mut exact = tarn_query::ExactSum::new();
    for (i, v) in tricky.iter().enumerate() {
        exact.add(*v);
        let body = json!([{"v": v, "i": i}]).to_string();
        clients[i % 5]
            .ingest("exact", "t", body.as_bytes())
            .unwrap()
            .ok_json()
            .unwrap();
    }
    let want = json!([[exact.value(), exact.value() / tricky.len() as f64]]);
    let got = wait_for(
        "the exact table on every operator",
        Duration::from_secs(30),
        || {
            let (r, stats) = network(&clients[0], "exact", "SELECT sum(v), avg(v) FROM t").ok()?;
            (stats["replied"] == 5).then_some(r)
        },
    );
    assert_eq!(json!(got), want);
    rt.block_on(mesh.shutdown()).unwrap();
}

fn post_query(node: &TestNode, db: &str, sql: &str, subset: bool) -> tarn::client::Answer {
    node.client
        .query_with(&json!({"db": db, "sql": sql, "subset": subset}))
        .unwrap()
}

/// Separate processes: a query-only node, a cluster of two members holding
/// the same rows, and an operator of its own. EdgeLake's time functions over
/// a known data set; a killed member is replaced by the other; a cluster
/// with no member left is an error naming it, or with `subset=true` the
/// answer of the others.
#[test]
fn network_queries_across_processes_fail_over_and_subset() {
    let q = TestNode::start(&["--services", "query,master"]);
    let boot = q.p2p[0].clone();
    let mut a1 = TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]);
    let a2 = TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]);
    let mut b = TestNode::start(&["--bootstrap", &boot]);
    // Cluster c1: one row a minute for an hour, v = minute + 0.5. The same
    // batch on both members (replication comes with the HA work).
    let c1: Vec<Value> = (0..60)
        .map(|m| json!({"ts": format!("2024-01-01T00:{m:02}:00Z"), "device": "a", "v": m as f64 + 0.5}))
        .collect();
    let c1 = serde_json::to_string(&c1).unwrap();
    for n in [&a1, &a2] {
        n.post("lab", "readings", &c1).ok_json().unwrap();
    }
    // b: every other minute at :30, v = 1.0.
    let rows_b: Vec<Value> = (0..30)
        .map(|m| json!({"ts": format!("2024-01-01T00:{:02}:30Z", 2 * m), "device": "b", "v": 1.0}))
        .collect();
    b.post("lab", "readings", &serde_json::to_string(&rows_b).unwrap())
        .ok_json()
        .unwrap();
    let t = Duration::from_secs(30);
    wait_for("the query node to see both clusters", t, || {
        let v = post_query(&q, "lab", "SELECT count(*) FROM readings", false)
            .ok_json()
            .ok()?;
        (v["rows"][0][0] == 90 && v["stats"]["replied"] == 2).then_some(())
    });

    // increments: 10-minute buckets; 10 rows of c1 and 5 of b in each.
    let r = q
        .client
        .command(
            "sql lab format=json \"select increments(minute, 10, ts), min(ts) as start, count(*) as n, avg(v) from readings\"",
            Some("network"),
        )
        .unwrap()
        .json()
        .unwrap();
    let got = r["Query"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(got.len(), 6, "{r}");
    for (k, row) in got.iter().enumerate() {
        assert_eq!(
            row["start"],
            format!("2024-01-01 00:{:02}:00.000000", 10 * k)
        );
        assert_eq!(row["n"], 15);
        assert_eq!(row["avg(v)"], (100.0 * k as f64 + 55.0) / 15.0);
    }
    assert_eq!(r["Statistics"][0]["Nodes"], 2, "{r}");
    // period: the window ends at the last time at or before the date.
    let r = q
        .client
        .command(
            "sql lab format=json and stat=false \"select count(*), max(ts) from readings where period(minute, 5, '2024-01-01 00:30:10', ts)\"",
            Some("network"),
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        r,
        json!({"Query": [{"count(*)": 7, "max(ts)": "2024-01-01 00:30:00.000000"}]})
    );
    // Plain rows stream through, ordered and limited on the query node.
    let v = post_query(
        &q,
        "lab",
        "SELECT device, v FROM readings WHERE v > 50 ORDER BY v DESC LIMIT 3",
        false,
    )
    .ok_json()
    .unwrap();
    assert_eq!(v["rows"], json!([["a", 59.5], ["a", 58.5], ["a", 57.5]]));
    // The same network, through libp2p from a client that runs no node.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "query", "--peer", &q.p2p[0], "--db", "lab", "--format", "json",
        ])
        .arg("SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY device")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], json!([["a", 60], ["b", 30]]), "{v}");
    assert_eq!(v["stats"]["replied"], 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "query",
            "--peer",
            &q.p2p[0],
            "--db",
            "lab",
            "DELETE FROM readings",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELECT"));

    // EdgeLake's projection casts apply to the final answer.
    let r = q
        .client
        .command(
            "sql lab format=json and stat=false \"select device, (avg(v) / 7)::float(3) as a, min(ts)::ljust(21) as t0 from readings group by device order by device\"",
            Some("network"),
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        r,
        json!({"Query": [
            {"device": "a", "a": 4.286, "t0": "2024-01-01T00:00:00  "},
            {"device": "b", "a": 0.143, "t0": "2024-01-01T00:00:30  "}
        ]})
    );
    // include= joins another table's rows; extend= says where each came from.
    b.post(
        "lab",
        "more",
        r#"[{"ts": "2024-01-02T00:00:00Z", "device": "x", "v": 101.0}, {"ts": "2024-01-02T00:00:01Z", "device": "x", "v": 100.0}]"#,
    )
    .ok_json()
    .unwrap();
    let sql = "sql lab format=json and stat=false and include=(more) and extend=(@table_name, +node_name) \"select device, v from readings where v > 58 order by v\"";
    let r = wait_for("the included table to be known", t, || {
        let r = q.client.command(sql, Some("network")).ok()?.json().ok()?;
        (r["Query"].as_array()?.len() == 4).then_some(r)
    });
    let rows = r["Query"].as_array().unwrap();
    let got: Vec<(String, f64)> = rows
        .iter()
        .map(|x| {
            (
                x["table_name"].as_str().unwrap().to_owned(),
                x["v"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("readings".into(), 58.5),
            ("readings".into(), 59.5),
            ("more".into(), 100.0),
            ("more".into(), 101.0)
        ]
    );
    assert!(
        rows.iter()
            .all(|x| x["node_name"].as_str().is_some_and(|n| !n.is_empty())),
        "{r}"
    );
    assert_eq!(
        rows[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["table_name", "node_name", "device", "v"]
    );
    // @ip and @port: where peers reach the operator that answered (its
    // TCP service in EdgeLake; libp2p's TCP port here), not its REST port.
    let tcp: Vec<u64> = [&a1, &a2, &b]
        .iter()
        .flat_map(|n| {
            n.p2p
                .iter()
                .filter_map(|p| p.split("/tcp/").nth(1)?.split('/').next()?.parse().ok())
        })
        .collect();
    let sql = "sql lab format=json and stat=false and extend=(@ip, @port) \"select v from readings where v > 58\"";
    let r = q
        .client
        .command(sql, Some("network"))
        .unwrap()
        .json()
        .unwrap();
    let rows = r["Query"].as_array().unwrap();
    assert!(!rows.is_empty(), "{r}");
    for row in rows {
        assert_eq!(row["ip"], "127.0.0.1", "{r}");
        assert!(tcp.contains(&row["port"].as_u64().unwrap()), "{r} {tcp:?}");
    }
    // extend= with an aggregate: a row per extended value, as EdgeLake
    // answers it (its docs: `include=(t2) and extend=(@table_name)
    // "select count(*) from t1"` gives table_name and the count per table).
    let sql = "sql lab format=json and stat=false and include=(more) and extend=(@table_name) \"select count(*), max(v) from readings\"";
    let r = q.client.command(sql, Some("network")).unwrap();
    assert_eq!(
        r.json().unwrap(),
        json!({"Query": [
            {"table_name": "more", "count(*)": 2, "max(v)": 101.0},
            {"table_name": "readings", "count(*)": 90, "max(v)": 59.5}
        ]}),
        "{}",
        r.body
    );
    // The time functions work on one node's own data too.
    let r = a1
        .command("sql lab format=json and stat=false \"select increments(minute, 20, ts), count(*) as n from readings\"")
        .json()
        .unwrap();
    assert_eq!(r, json!({"Query": [{"n": 20}, {"n": 20}, {"n": 20}]}));
    // A member of c1 dies: the other answers for the cluster.
    a1.kill();
    let v = post_query(&q, "lab", "SELECT count(*), sum(v) FROM readings", false)
        .ok_json()
        .unwrap();
    assert_eq!(v["rows"], json!([[90, 1800.0 + 30.0]]), "{v}");

    // b dies: no member of its cluster is left.
    b.kill();
    let r = post_query(&q, "lab", "SELECT count(*) FROM readings", false);
    assert_eq!(r.status, 502, "{}", r.body);
    let e = r.json().unwrap();
    assert_eq!(e["error"]["code"], "nodes_unavailable");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("node-{}", b.peer_id)),
        "{e}"
    );
    let v = post_query(&q, "lab", "SELECT count(*) FROM readings", true)
        .ok_json()
        .unwrap();
    assert_eq!(v["rows"], json!([[60]]));
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["nodes"], json!([b.peer_id]));
    drop(a2);
}

/// An operator killed while it is working on a query: the query node moves
/// to the other member of its cluster and the answer is whole.
#[test]
fn an_operator_killed_mid_query_is_replaced() {
    let q = TestNode::start(&["--services", "query,master"]);
    let boot = q.p2p[0].clone();
    let mut members = vec![
        TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]),
        TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]),
    ];
    const ROWS: usize = 60_000;
    for chunk in 0..6 {
        let rows: Vec<Value> = (0..ROWS / 6)
            .map(|i| json!({"k": chunk * (ROWS / 6) + i, "v": (i % 100) as f64}))
            .collect();
        let body = serde_json::to_string(&rows).unwrap();
        for m in &members {
            m.post("lab", "big", &body).ok_json().unwrap();
        }
    }
    wait_for("the cluster to be known", Duration::from_secs(30), || {
        let v = post_query(&q, "lab", "SELECT count(*) FROM big", false)
            .ok_json()
            .ok()?;
        (v["rows"][0][0] == ROWS).then_some(())
    });
    // Seconds of CPU per member in a debug build: long enough to kill one mid-way.
    let slow = "SELECT count(*), sum(v) FROM big WHERE length(replace(hex(randomblob(3000)), 'A', 'BB')) > 0";
    let before: Vec<u64> = members.iter().map(TestNode::cpu_ticks).collect();
    let answer = std::thread::scope(|s| {
        let asked = s.spawn(|| post_query(&q, "lab", slow, false));
        // The member whose CPU time climbs is the one answering.
        let busy = wait_for(
            "one member to start working",
            Duration::from_secs(20),
            || {
                std::thread::sleep(Duration::from_millis(50));
                let now: Vec<u64> = members.iter().map(TestNode::cpu_ticks).collect();
                let used: Vec<u64> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
                (0..2).find(|&i| used[i] >= 20 && used[i] > 4 * used[1 - i].max(1))
            },
        );
        members[busy].kill();
        asked.join().unwrap()
    });
    let v = answer.ok_json().unwrap();
    let sum: f64 = (0..ROWS).map(|i| ((i % (ROWS / 6)) % 100) as f64).sum();
    assert_eq!(v["rows"], json!([[ROWS, sum]]), "{v}");
    assert_eq!(
        v["stats"]["nodes"], 2,
        "asked the killed member, then the other: {v}"
    );
    assert_eq!(v["stats"]["replied"], 1, "{v}");
}

/// A query node keeps at most `max_result_rows` partial rows in memory: more
/// is a clear error, and LIMIT pushed down to the operators keeps a large
/// table's query small.
#[test]
fn results_beyond_the_limit_are_refused_not_buffered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mesh = rt
        .block_on(LocalMesh::start_with(3, dir.path(), |i, cfg| {
            if i == 0 {
                cfg.max_result_rows = 100;
            }
        }))
        .unwrap();
    rt.block_on(mesh.wait_converged(4 + 2 * 2, Duration::from_secs(60)))
        .unwrap();
    let clients: Vec<Client> = (0..3)
        .map(|i| Client::new(&format!("http://{}", mesh.node(i).unwrap().rest_addr())))
        .collect();
    for (i, c) in clients.iter().enumerate().skip(1) {
        let rows: Vec<Value> = (0..80).map(|k| json!({"k": k, "node": i})).collect();
        c.ingest("lim", "t", serde_json::to_string(&rows).unwrap().as_bytes())
            .unwrap()
            .ok_json()
            .unwrap();
    }
    wait_for("both operators' tables", Duration::from_secs(30), || {
        let (r, _) = network(&clients[0], "lim", "SELECT count(*) FROM t").ok()?;
        (r[0][0] == 160).then_some(())
    });
    let r = clients[0].query("lim", "SELECT * FROM t").unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json().unwrap()["error"]["code"], "result_too_large");
    let (rows, stats) = network(
        &clients[0],
        "lim",
        "SELECT k, node FROM t ORDER BY k DESC, node LIMIT 3",
    )
    .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![json!(79), json!(1)],
            vec![json!(79), json!(2)],
            vec![json!(78), json!(1)]
        ]
    );
    assert_eq!(
        stats["rows"], 6,
        "each operator sent only its top 3: {stats}"
    );
    // What cannot be split is refused over the network, and runs locally.
    let union = "SELECT k FROM t WHERE k < 2 UNION SELECT k FROM t WHERE k > 78 ORDER BY k";
    let r = clients[1].query("lim", union).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json().unwrap()["error"]["code"], "unsupported_query");
    let v = clients[1]
        .query_with(&json!({"db": "lim", "sql": union, "scope": "local"}))
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(v["rows"], json!([[0], [1], [79]]));
    rt.block_on(mesh.shutdown()).unwrap();
}
