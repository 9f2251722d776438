//! A closed network: a root key made by `tarn network create`, members
//! admitted and revoked by `tarn admit`/`tarn revoke`, and strangers (a node
//! that claims the network, an open node, a libp2p client) refused.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, TestNode, wait_for};

fn tarn(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run tarn")
}

fn status(n: &TestNode) -> serde_json::Value {
    n.client.get("/v1/status", &[]).unwrap().ok_json().unwrap()
}

fn network_count(n: &TestNode) -> Option<i64> {
    let a = n
        .client
        .query_with(
            &serde_json::json!({"db": "lab", "sql": "SELECT count(*) FROM t", "scope": "network"}),
        )
        .ok()?;
    a.ok_json().ok()?["rows"][0][0].as_i64()
}

fn nodes_seen(n: &TestNode) -> Vec<String> {
    let v = n.client.get("/v1/nodes", &[]).unwrap().ok_json().unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["peer_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn only_admitted_members_take_part() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("admin.key");
    let key_s = key.to_str().unwrap();
    let out = tarn(&["network", "create", "--out", key_s]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "{id}");
    let again = tarn(&["network", "create", "--out", key_s]);
    assert!(!again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stderr).lines().count(), 1);

    let a = TestNode::start(&["--network", &id, "--admin-key", key_s, "--cluster", "c1"]);
    let s = status(&a);
    assert_eq!(
        (s["network"].as_str(), s["admitted"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(
        a.post("lab", "t", r#"[{"v": 1}, {"v": 2}, {"v": 3}]"#)
            .status,
        200
    );
    let boot = a.p2p[0].clone();
    let t = Duration::from_secs(30);

    // Three who were never admitted: one that claims the network, one in
    // an open network, and (below) a libp2p client.
    let claims = TestNode::start(&["--network", &id, "--bootstrap", &boot, "--cluster", "c1"]);
    let open = TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]);
    assert_eq!(status(&open)["network"], "open");
    let b = TestNode::start(&[
        "--network",
        &id,
        "--bootstrap",
        &boot,
        "--services",
        "query",
    ]);
    assert_eq!(status(&b)["admitted"], false);

    // Admit b; it learns the ledger and queries the network.
    let out = tarn(&[
        "admit",
        &b.peer_id,
        "--services",
        "query",
        "--key",
        key_s,
        "--node",
        a.client.base(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("b admitted", t, || {
        (status(&b)["admitted"] == true).then_some(())
    });
    wait_for("b's network query", t, || {
        (network_count(&b)? == 3).then_some(())
    });

    // The strangers: shut out by a, their policies and rows nowhere, and
    // nothing of a's reaches them.
    for s in [&claims, &open] {
        assert_eq!(s.post("lab", "t", r#"{"v": 100}"#).status, 200);
        assert_eq!(network_count(s).unwrap_or(0), 1, "a stranger read a's rows");
    }
    let refused = claims
        .client
        .post("/v1/policies", &[], br#"{"bogus": {"table": "t"}}"#)
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json().unwrap()["error"]["code"], "not_admitted");
    open.client
        .post(
            "/v1/policies",
            &[],
            br#"{"table": {"dbms": "lab", "name": "t", "cluster": "evil"}}"#,
        )
        .unwrap();
    // A libp2p client with a key of its own is refused too.
    let q = tarn(&[
        "query",
        "--peer",
        &boot,
        "--db",
        "lab",
        "select count(*) from t",
    ]);
    let err = String::from_utf8_lossy(&q.stderr);
    assert!(!q.status.success() && q.stdout.is_empty(), "{err}");
    assert!(err.contains("not admitted"), "{err}");
    // Give gossip and anti-entropy rounds the time to carry anything.
    std::thread::sleep(Duration::from_secs(4));
    for n in [&a, &b] {
        let seen = nodes_seen(n);
        assert!(
            !seen.contains(&claims.peer_id) && !seen.contains(&open.peer_id),
            "{seen:?}"
        );
        assert_eq!(network_count(n), Some(3), "a stranger's rows were counted");
    }
    let policies = a
        .client
        .get("/v1/policies", &[])
        .unwrap()
        .ok_json()
        .unwrap();
    let text = policies.to_string();
    assert!(!text.contains("bogus") && !text.contains("evil"), "{text}");
    assert!(!nodes_seen(&claims).contains(&a.peer_id));

    // An operator admitted into c1 while it claims another cluster: the
    // member policy decides, and it receives c1's copies (counted once).
    let c = TestNode::start(&["--network", &id, "--bootstrap", &boot, "--cluster", "evil"]);
    let out = tarn(&[
        "admit",
        &c.peer_id,
        "--services",
        "operator,query",
        "--cluster",
        "c1",
        "--key",
        key_s,
        "--node",
        a.client.base(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("c holds c1's rows", t, || {
        let v = c
            .client
            .query_with(&serde_json::json!({"db": "lab", "sql": "SELECT count(*) FROM t", "scope": "local"}))
            .ok()?
            .ok_json()
            .ok()?;
        (v["rows"][0][0].as_i64()? == 3).then_some(())
    });
    assert_eq!(network_count(&b), Some(3));

    // Revoke b: cut off at once.
    let started = Instant::now();
    let out = tarn(&[
        "revoke",
        &b.peer_id,
        "--key",
        key_s,
        "--node",
        a.client.base(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("b cut off", Duration::from_secs(10), || {
        let a_peers = status(&a)["peers"].as_u64()?;
        (a_peers == 1 && network_count(&b).is_none_or(|c| c != 3)).then_some(())
    });
    eprintln!("revoked member cut off after {:?}", started.elapsed());
    assert!(!nodes_seen(&a).contains(&b.peer_id));
}
