//! Ingest -> query round trips through the REST API, checked against
//! expectations computed here from the same rows.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{LocalNode, Rng, TestNode, wait_for};

struct Reading {
    ts_utc: i64, // seconds
    device: String,
    temp: f64,
    hum: f64,
}

fn readings(seed: u64, n: usize) -> Vec<Reading> {
    let mut rng = Rng::new(seed);
    let base = 1_704_067_200; // 2024-01-01T00:00:00Z
    (0..n)
        .map(|_| Reading {
            ts_utc: base + rng.below(6 * 3600) as i64,
            device: format!("dev-{}", rng.below(5)),
            temp: rng.metric(-20.0, 40.0),
            hum: rng.metric(0.0, 100.0),
        })
        .collect()
}

/// The same instant written with a rotating choice of offsets and separators.
fn ts_text(secs: i64, variant: usize) -> String {
    let fmt = |s: i64| {
        let days = s / 86400;
        let sod = s % 86400;
        // 2024-01-01 is day 19723; the data spans less than a day.
        assert_eq!(days, 19723);
        (sod / 3600, sod % 3600 / 60, sod % 60)
    };
    match variant % 3 {
        0 => {
            let (h, m, s) = fmt(secs);
            format!("2024-01-01T{h:02}:{m:02}:{s:02}Z")
        }
        1 => {
            let (h, m, s) = fmt(secs);
            format!("2024-01-01 {h:02}:{m:02}:{s:02}.000000")
        }
        _ => {
            // Written in UTC+02:00: two hours later on the wall clock.
            let (h, m, s) = fmt(secs);
            format!("2024-01-01T{:02}:{m:02}:{s:02}+02:00", h + 2)
        }
    }
}

fn row_json(r: &Reading, i: usize) -> String {
    serde_json::json!({"timestamp": ts_text(r.ts_utc, i), "device": r.device, "temp": r.temp, "hum": r.hum}).to_string()
}

#[test]
fn round_trip_with_computed_expectations() {
    let node = LocalNode::start(|_| {});
    let data = readings(7, 3000);
    // A third as a JSON array, a third as NDJSON, a third as EdgeLake PUT file mode.
    let part = |k: usize| data.iter().enumerate().skip(k * 1000).take(1000);
    let array = format!(
        "[{}]",
        part(0)
            .map(|(i, r)| row_json(r, i))
            .collect::<Vec<_>>()
            .join(",")
    );
    let ndjson = part(1)
        .map(|(i, r)| row_json(r, i))
        .collect::<Vec<_>>()
        .join("\n");
    let put = part(2)
        .map(|(i, r)| row_json(r, i))
        .collect::<Vec<_>>()
        .join("\n");
    let a = node.post("lab", "readings", &array).ok_json().unwrap();
    assert_eq!(a["rows"], 1000);
    assert_eq!(
        node.post("lab", "readings", &ndjson).ok_json().unwrap()["rows"],
        1000
    );
    let p = node.put("lab", "readings", "file", &put).ok_json().unwrap();
    assert_eq!(p["AnyLog.status"], "Success");

    assert_eq!(node.count("lab", "readings"), 3000);

    // Per-device aggregates.
    let mut want: BTreeMap<String, (i64, f64, f64, f64)> = BTreeMap::new();
    for r in &data {
        let e = want
            .entry(r.device.clone())
            .or_insert((0, 0.0, f64::MAX, f64::MIN));
        e.0 += 1;
        e.1 += r.temp;
        e.2 = e.2.min(r.temp);
        e.3 = e.3.max(r.temp);
    }
    let (cols, rows) = node.query(
        "lab",
        "SELECT device, count(*), avg(temp), min(temp), max(temp) FROM readings GROUP BY device ORDER BY device",
    );
    assert_eq!(
        cols,
        ["device", "count(*)", "avg(temp)", "min(temp)", "max(temp)"]
    );
    assert_eq!(rows.len(), want.len());
    for (row, (dev, (n, sum, min, max))) in rows.iter().zip(&want) {
        assert_eq!(row[0], dev.as_str());
        assert_eq!(row[1], *n);
        let avg = row[2].as_f64().unwrap();
        assert!(
            (avg - sum / *n as f64).abs() < 1e-9,
            "{dev}: avg {avg} vs {}",
            sum / *n as f64
        );
        assert_eq!(row[3].as_f64().unwrap(), *min);
        assert_eq!(row[4].as_f64().unwrap(), *max);
    }

    // A one-hour range, written with an offset: compared as time, not text.
    let lo = 1_704_067_200 + 2 * 3600;
    let hi = lo + 3600;
    let want_n = data
        .iter()
        .filter(|r| r.ts_utc >= lo && r.ts_utc < hi)
        .count() as i64;
    let (_, rows) = node.query(
        "lab",
        "SELECT count(*) FROM readings WHERE timestamp >= '2024-01-01T04:00:00+02:00' AND timestamp < '2024-01-01 03:00:00'",
    );
    assert_eq!(rows[0][0], want_n);
    assert!(want_n > 0);

    // Timestamps come back as ISO 8601 UTC.
    let (_, rows) = node.query("lab", "SELECT min(timestamp), max(timestamp) FROM readings");
    let min = data.iter().map(|r| r.ts_utc).min().unwrap();
    let (h, m, s) = ((min % 86400) / 3600, (min % 3600) / 60, min % 60);
    assert_eq!(
        rows[0][0],
        format!("2024-01-01T{h:02}:{m:02}:{s:02}.000000Z")
    );

    // Every row knows its batch; almgm.tsd_info lists the three batches.
    let (_, rows) = node.query("lab", "SELECT count(DISTINCT tsd_id) FROM readings");
    assert_eq!(rows[0][0], 3);
    let (_, rows) = node.query(
        "almgm",
        "SELECT dbms_name, table_name, rows FROM tsd_info ORDER BY file_id",
    );
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r[0] == "lab" && r[1] == "readings" && r[2] == 1000)
    );
}

#[test]
fn duplicate_batches_are_stored_once() {
    let node = LocalNode::start(|_| {});
    let body = r#"[{"k": 1, "v": "a"}, {"k": 2, "v": "b"}]"#;
    let first = node.post("lab", "dups", body).ok_json().unwrap();
    assert_eq!(first["duplicate"], false);
    let second = node.post("lab", "dups", body).ok_json().unwrap();
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["batch"], first["batch"]);
    assert_eq!(node.count("lab", "dups"), 2);
    // EdgeLake file mode: the same hash both times, stored once.
    let h1 = node
        .put("lab", "dups", "file", "{\"k\": 3}")
        .ok_json()
        .unwrap();
    let h2 = node
        .put("lab", "dups", "file", "{\"k\": 3}")
        .ok_json()
        .unwrap();
    assert_eq!(h1["AnyLog.hash"], h2["AnyLog.hash"]);
    assert_eq!(node.count("lab", "dups"), 3);
    // The same rows for another table are another batch.
    node.post("lab", "dups2", body).ok_json().unwrap();
    assert_eq!(node.count("lab", "dups2"), 2);
}

#[test]
fn schema_evolves_with_new_keys() {
    let node = LocalNode::start(|_| {});
    node.post("lab", "evo", r#"{"a": 1, "b": "x"}"#)
        .ok_json()
        .unwrap();
    node.post(
        "lab",
        "evo",
        r#"[{"a": 2, "c": 1.5, "seen": "2024-05-01T10:00:00Z"}, {"A": 3, "online": true}]"#,
    )
    .ok_json()
    .unwrap();
    let (cols, rows) = node.query("lab", "SELECT a, b, c, seen, online FROM evo ORDER BY a");
    assert_eq!(cols, ["a", "b", "c", "seen", "online"]);
    assert_eq!(
        rows[0],
        [
            serde_json::json!(1),
            "x".into(),
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null
        ]
    );
    assert_eq!(rows[1][2], 1.5);
    assert_eq!(rows[1][3], "2024-05-01T10:00:00.000000Z");
    assert_eq!(rows[2][4], true);
    let cols = node
        .command("get columns where dbms = lab and table = evo and format=json")
        .json()
        .unwrap();
    let names: Vec<&String> = cols.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "row_id",
            "insert_timestamp",
            "tsd_name",
            "tsd_id",
            "a",
            "b",
            "c",
            "seen",
            "online"
        ]
    );
    assert_eq!(cols["seen"], "timestamp without time zone");
    assert_eq!(cols["online"], "boolean");
    // An integer column takes a whole float, a float column takes an integer.
    node.post("lab", "evo", r#"{"a": 4.0, "c": 2}"#)
        .ok_json()
        .unwrap();
    let (_, rows) = node.query("lab", "SELECT a, c FROM evo WHERE a = 4");
    assert_eq!(rows[0], [serde_json::json!(4), serde_json::json!(2.0)]);
}

#[test]
fn streaming_puts_are_buffered_until_a_threshold_or_flush() {
    // No automatic flush: rows wait for `flush buffers`.
    let node = LocalNode::start(|c| {
        c.streaming.threshold_rows = 1_000_000;
        c.streaming.threshold_ms = 3_600_000;
    });
    for i in 0..50 {
        let a = node.put(
            "lab",
            "stream",
            "streaming",
            &format!("{{\"i\": {i}, \"dev\": \"d{}\"}}", i % 3),
        );
        assert_eq!(
            a.ok_json().unwrap(),
            serde_json::json!({"AnyLog.status": "Success", "AnyLog.hash": "0"})
        );
    }
    assert_eq!(node.count("lab", "stream"), 0);
    let status = node
        .client
        .get("/v1/status", &[])
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(status["buffered_rows"], 50);
    assert_eq!(
        node.client
            .post("/", &[("command", "flush buffers")], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(node.count("lab", "stream"), 50);
    let (_, rows) = node.query("lab", "SELECT sum(i), count(DISTINCT tsd_id) FROM stream");
    assert_eq!(
        rows[0],
        [serde_json::json!(49 * 50 / 2), serde_json::json!(1)]
    );

    // A volume threshold: every 10 rows become one batch.
    let node = LocalNode::start(|c| {
        c.streaming.threshold_rows = 10;
        c.streaming.threshold_ms = 3_600_000;
    });
    for i in 0..25 {
        node.put("lab", "vol", "streaming", &format!("{{\"i\": {i}}}"))
            .ok_json()
            .unwrap();
    }
    assert_eq!(node.count("lab", "vol"), 20);

    // A time threshold.
    let node = LocalNode::start(|c| {
        c.streaming.threshold_rows = 1_000_000;
        c.streaming.threshold_ms = 100;
    });
    node.put("lab", "timed", "streaming", "[{\"i\": 1}, {\"i\": 2}]")
        .ok_json()
        .unwrap();
    wait_for(
        "the time threshold to flush",
        Duration::from_secs(10),
        || (node.count("lab", "timed") == 2).then_some(()),
    );

    // write_immediate: visible as soon as the PUT returns.
    let node = LocalNode::start(|c| c.streaming.write_immediate = true);
    node.put("lab", "now", "streaming", "{\"i\": 1}")
        .ok_json()
        .unwrap();
    assert_eq!(node.count("lab", "now"), 1);
}

#[test]
fn clean_shutdown_writes_buffered_rows() {
    let mut node = TestNode::start(&["--stream-rows", "1000000", "--stream-ms", "3600000"]);
    for i in 0..10 {
        node.put("lab", "bye", "streaming", &format!("{{\"i\": {i}}}"))
            .ok_json()
            .unwrap();
    }
    node.stop();
    let journals = std::fs::read_dir(node.data_dir().join("stream"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "journal")
        })
        .count();
    assert_eq!(journals, 0, "a clean stop writes every buffer");
    node.restart();
    assert_eq!(node.count("lab", "bye"), 10);
}
