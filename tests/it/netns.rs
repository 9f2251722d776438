//! Nodes as separate hosts: each `tarn node` in its own network namespace,
//! joined by a veth link. In a closed network, a host is admitted, changes
//! its IP address and must be found again by the same PeerId, with no
//! policy edited by hand and no second admission.
//!
//! Needs root and iproute2 (`ip netns`); without them the test says
//! SKIPPED on stderr and passes, since nothing can be checked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{cluster_members_alive, local_counts};
use crate::harness::{BIN, Hosts, Namespaces, TestNode, ip, netns_available, start_line, wait_for};

/// Starts `tarn node` inside namespace `ns`; returns the child and its start line.
fn node_in(
    ns: &str,
    data: &std::path::Path,
    args: &[&str],
) -> (Child, (String, String, Vec<String>)) {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            BIN,
            "node",
            "--rest",
            "127.0.0.1:0",
            "--no-mdns",
            "--data-dir",
        ])
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tarn node in a namespace");
    let line = start_line(&mut child);
    (child, line)
}

/// Runs a `tarn` client command inside namespace `ns` and returns its JSON output.
fn tarn_in(ns: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn node_seen<'a>(nodes: &'a serde_json::Value, peer: &str) -> Option<&'a serde_json::Value> {
    nodes.as_array()?.iter().find(|n| n["peer_id"] == peer)
}

#[test]
fn an_admitted_host_that_changes_ip_is_found_again_by_peer_id() {
    if !netns_available() {
        eprintln!(
            "SKIPPED an_admitted_host_that_changes_ip_is_found_again_by_peer_id: needs root and `ip netns`"
        );
        return;
    }
    let tag = format!("tn{}", std::process::id() % 100_000);
    let (m, b) = (format!("{tag}m"), format!("{tag}b"));
    let (vm, vb) = (format!("{tag}vm"), format!("{tag}vb"));
    let mut hosts = Namespaces {
        names: vec![m.clone(), b.clone()],
        children: Vec::new(),
    };
    ip(&["netns", "add", &m]);
    ip(&["netns", "add", &b]);
    ip(&["link", "add", &vm, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &vm, "netns", &m]);
    ip(&["link", "set", &vb, "netns", &b]);
    ip(&["-n", &m, "addr", "add", "10.213.7.1/24", "dev", &vm]);
    ip(&["-n", &b, "addr", "add", "10.213.7.2/24", "dev", &vb]);
    for (ns, dev) in [(&m, &vm), (&b, &vb)] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let dirs = tempfile::tempdir().unwrap();
    let (mdir, bdir) = (dirs.path().join("m"), dirs.path().join("b"));
    let key = dirs.path().join("admin.key");
    let key_s = key.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["network", "create", "--out", key_s])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let network = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let (child, (m_url, _m_peer, m_p2p)) = node_in(
        &m,
        &mdir,
        &[
            "--name",
            "master",
            "--services",
            "master",
            "--admin-key",
            key_s,
            "--listen",
            "/ip4/10.213.7.1/tcp/0",
        ],
    );
    hosts.children.push(child);
    let boot = m_p2p
        .iter()
        .find(|a| a.contains("10.213.7.1"))
        .expect("the master listens on its link")
        .clone();

    let start_b = |hosts: &mut Namespaces, addr: &str| {
        let listen = format!("/ip4/{addr}/tcp/0");
        let (child, (_, peer, _)) = node_in(
            &b,
            &bdir,
            &[
                "--name",
                "edge-b",
                "--network",
                &network,
                "--listen",
                &listen,
                "--bootstrap",
                &boot,
            ],
        );
        hosts.children.push(child);
        peer
    };
    let b_peer = start_b(&mut hosts, "10.213.7.2");
    // Not admitted yet: refused (a negative, so given a few dial rounds
    // to go wrong). Then admitted from the master's host.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = tarn_in(&m, &["nodes", "--json", "--node", &m_url]).unwrap();
    assert!(node_seen(&nodes, &b_peer).is_none(), "{nodes}");
    let admitted = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &m, BIN, "admit", &b_peer])
        .args(["--services", "operator,query,master", "--key", key_s])
        .args(["--node", &m_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the master to see edge-b", Duration::from_secs(30), || {
        let nodes = tarn_in(&m, &["nodes", "--json", "--node", &m_url])?;
        (node_seen(&nodes, &b_peer)?["alive"] == true).then_some(())
    });
    eprintln!("edge-b usable {:?} after tarn admit", admitted.elapsed());

    // Stop edge-b, move its host to another address, start it again.
    let mut old = hosts.children.pop().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &old.id().to_string()])
        .status();
    let _ = old.wait();
    ip(&["-n", &b, "addr", "del", "10.213.7.2/24", "dev", &vb]);
    ip(&["-n", &b, "addr", "add", "10.213.7.3/24", "dev", &vb]);
    let moved = Instant::now();
    let again = start_b(&mut hosts, "10.213.7.3");
    assert_eq!(again, b_peer, "same data dir, same key, same PeerId");

    // Found again by PeerId, at its new address, within 10 seconds.
    wait_for(
        "the master to reach edge-b at its new address",
        Duration::from_secs(10),
        || {
            let nodes = tarn_in(&m, &["nodes", "--json", "--node", &m_url])?;
            let n = node_seen(&nodes, &b_peer)?;
            let at_new = n["addresses"]
                .as_array()?
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.contains("10.213.7.3")));
            (n["alive"] == true && at_new).then_some(())
        },
    );
    eprintln!(
        "edge-b reachable again {:?} after its address changed",
        moved.elapsed()
    );
    // Its policy says where it is now (EdgeLake's `ip`), nobody edited it.
    wait_for(
        "edge-b's policy to name its new address",
        Duration::from_secs(20),
        || {
            let ops = tarn_in(&m, &["policies", "operator", "--node", &m_url])?;
            let mine: Vec<&serde_json::Value> = ops
                .as_array()?
                .iter()
                .filter(|o| o["operator"]["peer_id"] == b_peer.as_str())
                .collect();
            (mine.len() == 1 && mine[0]["operator"]["ip"] == "10.213.7.3").then_some(())
        },
    );
    let nodes = tarn_in(&m, &["nodes", "--json", "--node", &m_url]).unwrap();
    assert_eq!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"] == "edge-b")
            .count(),
        1
    );

    // And the ledger still flows both ways: a policy from the master reaches edge-b.
    let policy = dirs.path().join("p.json");
    std::fs::write(&policy, r#"{"site": {"name": "after-move"}}"#).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &m, BIN, "policy", "add", "--node", &m_url])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_url = {
        // edge-b's REST port is in the master's view of its policy.
        let nodes = tarn_in(&m, &["nodes", "--json", "--node", &m_url]).unwrap();
        format!(
            "http://{}",
            node_seen(&nodes, &b_peer).unwrap()["rest"]
                .as_str()
                .unwrap()
        )
    };
    wait_for(
        "the policy to reach edge-b",
        Duration::from_secs(20),
        || {
            let p = tarn_in(&b, &["policies", "site", "--node", &b_url])?;
            (p.as_array()?.len() == 1).then_some(())
        },
    );
}

/// Two members of a cluster on separate hosts (network namespaces joined
/// by a cable). The cable is cut, both take writes, the cable is mended:
/// both converge to the union, with no duplicate.
#[test]
fn partitioned_members_converge_to_the_union_after_healing() {
    if !netns_available() {
        eprintln!(
            "SKIPPED partitioned_members_converge_to_the_union_after_healing: needs root and `ip netns`"
        );
        return;
    }
    let hosts = Hosts::pair("part");
    let a = TestNode::start_on(hosts.get(0), &["--cluster", "c1"]);
    let b = TestNode::start_on(hosts.get(1), &["--cluster", "c1", "--bootstrap", &a.p2p[0]]);
    let alive = |n: &TestNode| cluster_members_alive(&n.client, "c1");
    let t = Duration::from_secs(30);
    wait_for("both members to see each other", t, || {
        (alive(&a)? == 2 && alive(&b)? == 2).then_some(())
    });
    let rows = |first: u64| {
        let v: Vec<serde_json::Value> = (first..first + 20)
            .map(|k| serde_json::json!({"k": k, "v": k as f64}))
            .collect();
        serde_json::to_string(&v).unwrap()
    };
    let count = |n: &TestNode| local_counts(&n.client);
    for i in 0..5 {
        a.post("lab", "t", &rows(i * 20)).ok_json().unwrap();
    }
    wait_for("b to hold a's first batches", t, || {
        (count(&b)? == (100, 100)).then_some(())
    });

    // Cut the cable between the two hosts (each still reachable from here),
    // and wait until both know: a silent cut is found by pings.
    hosts.cable(false);
    let cut = Instant::now();
    // Measured 86-89 s here (session 10), against ~51 s expected from ping
    // (30 s + 10 s), probe (5 s) and suspicion (6 s): not yet explained,
    // see docs/SCALE.md. The limit leaves room instead of failing at random.
    wait_for(
        "both members to see the other gone",
        Duration::from_secs(150),
        || (alive(&a)? == 1 && alive(&b)? == 1).then_some(()),
    );
    eprintln!("the cut was noticed after {:?}", cut.elapsed());
    for i in 5..10 {
        a.post("lab", "t", &rows(i * 20)).ok_json().unwrap();
    }
    for i in 10..15 {
        b.post("lab", "t", &rows(i * 20)).ok_json().unwrap();
    }
    // Each side holds only its own writes while cut off.
    assert_eq!(count(&a), Some((200, 200)));
    assert_eq!(count(&b), Some((200, 200)));

    // Mend it: both converge to the union.
    let healed = Instant::now();
    hosts.cable(true);
    wait_for(
        "both members to hold the union",
        Duration::from_secs(90),
        || (count(&a)? == (300, 300) && count(&b)? == (300, 300)).then_some(()),
    );
    eprintln!(
        "members converged {:?} after the cable was mended",
        healed.elapsed()
    );
    wait_for("verify to find them equal", t, || {
        let v = a
            .client
            .get("/v1/clusters?verify=true", &[])
            .ok()?
            .ok_json()
            .ok()?;
        (v["consistent"] == true).then_some(())
    });
}
