//! High availability: members of a cluster keep each other's batches.
//! Separate `tarn node` processes, fed while members are killed,
//! restarted and cut off, then counted row by row against what was
//! acknowledged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Client, Hosts, TestNode, wait_for};

/// A batch of `n` rows with keys `first..first + n`.
fn batch(first: u64, n: u64) -> String {
    let rows: Vec<Value> = (first..first + n)
        .map(|k| json!({"k": k, "device": format!("d{}", k % 7), "v": k as f64 * 0.5}))
        .collect();
    serde_json::to_string(&rows).unwrap()
}

/// `(count(*), count(distinct k))` of `lab.t` on one node's own store.
pub fn local_counts(c: &Client) -> Option<(i64, i64)> {
    let v = c
        .query_with(&json!({"db": "lab", "sql": "SELECT count(*), count(distinct k) FROM t", "scope": "local"}))
        .ok()?
        .ok_json()
        .ok()?;
    Some((v["rows"][0][0].as_i64()?, v["rows"][0][1].as_i64()?))
}

/// The keys of `lab.t` on one node's own store.
fn local_keys(c: &Client) -> BTreeSet<u64> {
    let v = c
        .query_with(&json!({"db": "lab", "sql": "SELECT k FROM t", "scope": "local"}))
        .unwrap()
        .ok_json()
        .unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect()
}

/// How many members of `cluster` a node sees alive.
pub fn cluster_members_alive(c: &Client, cluster: &str) -> Option<usize> {
    let v = c.get("/v1/clusters", &[]).ok()?.ok_json().ok()?;
    let cl = v["clusters"]
        .as_array()?
        .iter()
        .find(|x| x["cluster"] == cluster)?;
    Some(
        cl["members"]
            .as_array()?
            .iter()
            .filter(|m| m["alive"] == true)
            .count(),
    )
}

fn verify(c: &Client) -> Value {
    c.get("/v1/clusters?verify=true", &[])
        .unwrap()
        .ok_json()
        .unwrap()
}

/// kill -9 of the member a writer is using, during continuous writes with
/// `consistency=cluster`: the writer moves to the other member, no
/// acknowledged row is lost, and the restarted member catches up with no
/// duplicate. `almgm` says which member produced what. The members run on
/// separate hosts (network namespaces) where this machine allows it.
#[test]
fn a_member_killed_during_cluster_writes_loses_nothing_and_catches_up() {
    let hosts = Hosts::pair("kill");
    let mut a = TestNode::start_on(hosts.get(0), &["--cluster", "c1"]);
    let b = TestNode::start_on(hosts.get(1), &["--bootstrap", &a.p2p[0], "--cluster", "c1"]);
    // Restarted, `a` listens on a new port: it finds b by b's address.
    a.args.extend(["--bootstrap".to_owned(), b.p2p[0].clone()]);
    let t = Duration::from_secs(30);
    wait_for("both members to see each other", t, || {
        (cluster_members_alive(&a.client, "c1")? == 2
            && cluster_members_alive(&b.client, "c1")? == 2)
            .then_some(())
    });
    // A large batch (recorded as several parts of ~2 MB) is pushed and
    // confirmed too, and the other member holds it whole.
    let big = batch(0, 150_000);
    assert!(big.len() > 5 << 20);
    let v = a
        .client
        .post(
            "/v1/data/lab/big?consistency=cluster",
            &[("content-type", "application/json")],
            big.as_bytes(),
        )
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(
        v["replicas"]["confirmed"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    let big_on_b = b
        .client
        .query_with(&json!({"db": "lab", "sql": "SELECT count(*), count(distinct tsd_id) FROM big", "scope": "local"}))
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(big_on_b["rows"][0][0], 150_000, "{big_on_b}");
    assert!(big_on_b["rows"][0][1].as_i64().unwrap() >= 2, "{big_on_b}");
    let a = Arc::new(Mutex::new(a));
    let targets = Arc::new(Mutex::new(vec![
        a.lock().unwrap().client.base().to_owned(),
        b.client.base().to_owned(),
    ]));
    const BATCHES: u64 = 60;
    const ROWS: u64 = 50;
    let acked: Arc<Mutex<Vec<(u64, Value)>>> = Default::default();
    let writer = {
        let (targets, acked) = (targets.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut current = 0;
            for i in 0..BATCHES {
                let body = batch(i * ROWS, ROWS);
                let mut tries = 0;
                loop {
                    let base = targets.lock().unwrap()[current].clone();
                    let r = Client::new(&base).post(
                        "/v1/data/lab/t?consistency=cluster",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    );
                    match r {
                        Ok(a) if a.status == 200 => {
                            acked.lock().unwrap().push((i, a.json().unwrap()));
                            break;
                        }
                        Ok(a) => panic!("batch {i} refused: {}", a.body),
                        Err(_) => {
                            // The member is gone: the other one takes the batch.
                            tries += 1;
                            assert!(tries < 100, "no member takes batch {i}");
                            current = 1 - current;
                        }
                    }
                }
            }
        })
    };
    // Kill the member in use once a third is acknowledged (writes in flight).
    wait_for("a third of the batches", t, || {
        (acked.lock().unwrap().len() as u64 >= BATCHES / 3).then_some(())
    });
    a.lock().unwrap().kill();
    let killed_at = acked.lock().unwrap().len() as u64;
    // Restart it once two thirds are in; the writer stays on the survivor.
    wait_for("two thirds of the batches", t, || {
        (acked.lock().unwrap().len() as u64 >= 2 * BATCHES / 3).then_some(())
    });
    let restarted_at = acked.lock().unwrap().len() as u64;
    a.lock().unwrap().restart();
    targets.lock().unwrap()[0] = a.lock().unwrap().client.base().to_owned();
    writer.join().expect("the writer finished");

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, BATCHES);
    // While both were up, the other member confirmed each batch.
    for (i, v) in acked.iter().take(killed_at.saturating_sub(1) as usize) {
        assert_eq!(
            v["replicas"]["confirmed"].as_array().map(Vec::len),
            Some(1),
            "batch {i}: {v}"
        );
    }
    // While `a` was down, b said that no other member holds the batch.
    for (i, v) in acked
        .iter()
        .skip(killed_at as usize + 1)
        .take(restarted_at.saturating_sub(killed_at + 1) as usize)
    {
        assert_eq!(v["replicas"]["confirmed"], json!([]), "batch {i}: {v}");
        assert!(
            v["replicas"]["warning"]
                .as_str()
                .is_some_and(|w| w.contains("stored here only")),
            "batch {i}: {v}"
        );
    }
    let a = a.lock().unwrap();
    let want: BTreeSet<u64> = (0..BATCHES * ROWS).collect();
    let total = (BATCHES * ROWS) as i64;
    wait_for(
        "the restarted member to catch up",
        Duration::from_secs(60),
        || {
            (local_counts(&a.client)? == (total, total)
                && local_counts(&b.client)? == (total, total))
                .then_some(())
        },
    );
    assert_eq!(local_keys(&a.client), want);
    assert_eq!(local_keys(&b.client), want);
    wait_for("verify to find the members equal", t, || {
        (verify(&a.client)["consistent"] == true).then_some(())
    });
    // The CLI agrees (and exits 0).
    let out = std::process::Command::new(BIN)
        .args(["cluster", "verify", "--node", a.client.base()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cluster c1: consistent"), "{text}");
    let out = std::process::Command::new(BIN)
        .args(["cluster", "status", "--node", b.client.base()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&a.peer_id) && text.contains(&b.peer_id),
        "{text}"
    );
    assert!(text.contains("lag_batches"), "{text}");

    // almgm: what a produced is in b's tsd_<a>, and the batch counts add up.
    let produced_by_a: i64 = {
        let v = a
            .client
            .query_with(
                &json!({"db": "almgm", "sql": "SELECT count(*) FROM tsd_info", "scope": "local"}),
            )
            .unwrap()
            .ok_json()
            .unwrap();
        v["rows"][0][0].as_i64().unwrap()
    };
    assert!(produced_by_a >= 1);
    let v = b
        .client
        .query_with(&json!({
            "db": "almgm",
            // Stored or held as a copy of the same rows (a batch a made
            // but did not acknowledge before it died, re-sent to b).
            "sql": format!("SELECT count(*) FROM tsd_{}", a.peer_id),
            "scope": "local"
        }))
        .unwrap()
        .ok_json()
        .unwrap();
    assert_eq!(
        v["rows"][0][0].as_i64(),
        Some(produced_by_a),
        "b's record of a's batches: {v}"
    );
}

/// A publisher with its cluster down keeps what it accepts on disk, and
/// sends it when a member is back: nothing lost, nothing twice.
#[test]
fn a_publisher_queues_while_its_cluster_is_down() {
    // The cluster is named as in EdgeLake's own samples (with a hyphen).
    let p = TestNode::start(&["--services", "publisher,query,master"]);
    let mut m = TestNode::start(&["--bootstrap", &p.p2p[0], "--cluster", "plant-cluster1"]);
    let mut m2 = TestNode::start(&["--bootstrap", &p.p2p[0], "--cluster", "plant-cluster1"]);
    let t = Duration::from_secs(30);
    wait_for("the publisher to see the cluster", t, || {
        (cluster_members_alive(&p.client, "plant-cluster1")? == 2).then_some(())
    });
    // Up: a batch goes through (native and EdgeLake PUT).
    let a = p.post("lab", "t", &batch(0, 100)).ok_json().unwrap();
    assert_eq!(a["rows"], 100);
    let r = p
        .client
        .put(
            "/",
            &[
                ("type", "json"),
                ("dbms", "lab"),
                ("table", "t"),
                ("mode", "streaming"),
            ],
            batch(100, 100).as_bytes(),
        )
        .unwrap();
    assert_eq!(r.json().unwrap()["AnyLog.status"], "Success", "{}", r.body);
    wait_for("the operator to store them", t, || {
        (local_counts(&m.client)? == (200, 200)).then_some(())
    });
    // A body larger than one peer message (~6 MB) goes in parts, once.
    let big = batch(100_000, 150_000);
    assert!(big.len() > 4 << 20);
    for _ in 0..2 {
        let a = p.post("lab", "t", &big).ok_json().unwrap();
        assert_eq!(a["rows"], 150_000);
    }
    wait_for("the large batch to be stored", t, || {
        (local_counts(&m.client)? == (150_200, 150_200)).then_some(())
    });
    // One member down: the other takes the batches.
    m2.kill();
    p.post("lab", "t", &batch(200, 100)).ok_json().unwrap();
    wait_for("the live member to store it", t, || {
        (local_counts(&m.client)? == (150_300, 150_300)).then_some(())
    });
    // All down: accepted and queued.
    m.kill();
    for i in 3..12 {
        p.post("lab", "t", &batch(i * 100, 100)).ok_json().unwrap();
    }
    // The same batch again is accepted and still stored once.
    p.post("lab", "t", &batch(1100, 100)).ok_json().unwrap();
    let st = p.client.get("/v1/status", &[]).unwrap().ok_json().unwrap();
    assert!(
        st["publisher_queue"]["batches"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // Bad input is refused at the door, not queued.
    assert_eq!(p.post("lab", "t", "{not json").status, 400);
    // The queue is on disk: it survives kill -9 of the publisher.
    let queued = st["publisher_queue"]["batches"].as_u64().unwrap();
    let mut p = p;
    p.restart();
    let st = p.client.get("/v1/status", &[]).unwrap().ok_json().unwrap();
    assert_eq!(
        st["publisher_queue"]["batches"].as_u64(),
        Some(queued),
        "{st}"
    );
    // Back (the publisher moved to a new port: the members find it there).
    for node in [&mut m, &mut m2] {
        node.args = ["--bootstrap", &p.p2p[0], "--cluster", "plant-cluster1"]
            .map(str::to_owned)
            .to_vec();
    }
    m.restart();
    wait_for("the queue to drain", Duration::from_secs(60), || {
        (local_counts(&m.client)? == (151_200, 151_200)).then_some(())
    });
    wait_for("the queue to be empty", t, || {
        let st = p.client.get("/v1/status", &[]).ok()?.ok_json().ok()?;
        (st["publisher_queue"]["batches"] == 0).then_some(())
    });
    let want: BTreeSet<u64> = (0..1200).chain(100_000..250_000).collect();
    assert_eq!(local_keys(&m.client), want);
    // The other member catches up from it: one copy of everything.
    m2.restart();
    wait_for(
        "the other member to catch up",
        Duration::from_secs(60),
        || (local_counts(&m2.client)? == (151_200, 151_200)).then_some(()),
    );
}

/// `tarn ingest` given several members moves on when one is down.
#[test]
fn tarn_ingest_moves_to_another_member() {
    let mut a = TestNode::start(&["--cluster", "c1"]);
    let b = TestNode::start(&["--bootstrap", &a.p2p[0], "--cluster", "c1"]);
    let dead = a.client.base().to_owned();
    a.kill();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.json");
    std::fs::write(&file, batch(0, 500)).unwrap();
    let nodes = format!("{dead},{}", b.client.base());
    let out = std::process::Command::new(BIN)
        .args([
            "ingest",
            "--node",
            &nodes,
            "--db",
            "lab",
            "--table",
            "t",
            "--batch-rows",
            "100",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("moving to"), "{err}");
    assert_eq!(local_counts(&b.client), Some((500, 500)));
}

/// A column created on two members before they met, with different types
/// (`1` makes it integer, `1.5` float): each keeps the other's rows anyway,
/// and the members converge.
#[test]
fn members_that_typed_a_column_differently_still_converge() {
    let a = TestNode::start(&["--cluster", "c1"]);
    a.post("lab", "t", r#"[{"k": 1, "v": 1}]"#)
        .ok_json()
        .unwrap();
    // b starts alone (no bootstrap, no mDNS) and types `v` as float.
    let mut b = TestNode::start(&["--cluster", "c1"]);
    b.post("lab", "t", r#"[{"k": 2, "v": 1.5}]"#)
        .ok_json()
        .unwrap();
    b.args.extend(["--bootstrap".to_owned(), a.p2p[0].clone()]);
    b.restart();
    let t = Duration::from_secs(30);
    wait_for("both members to hold both rows", t, || {
        (local_counts(&a.client)? == (2, 2) && local_counts(&b.client)? == (2, 2)).then_some(())
    });
    for n in [&a, &b] {
        let v = n
            .client
            .query_with(&json!({"db": "lab", "sql": "SELECT sum(v) FROM t", "scope": "local"}))
            .unwrap()
            .ok_json()
            .unwrap();
        assert_eq!(v["rows"][0][0].as_f64(), Some(2.5), "{v}");
    }
    wait_for("verify to find them equal", t, || {
        (verify(&a.client)["consistent"] == true).then_some(())
    });
}
