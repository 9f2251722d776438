//! Separate `tarn node` processes joined by bootstrap addresses share one
//! signed ledger, and find each other by PeerId.

use std::time::Duration;

use crate::harness::{TestNode, wait_for};

fn policies(node: &TestNode, kind: &str) -> Vec<serde_json::Value> {
    node.client
        .get(&format!("/v1/policies?type={kind}"), &[])
        .unwrap()
        .ok_json()
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn nodes_join_by_bootstrap_and_share_policies() {
    let master = TestNode::start(&["--services", "master"]);
    let boot = master.p2p[0].clone();
    let a = TestNode::start(&["--bootstrap", &boot, "--cluster", "c1"]);
    let mut b = TestNode::start(&["--bootstrap", &boot]);
    let t = Duration::from_secs(30);

    // Every node sees every node, by PeerId, alive.
    for n in [&master, &a, &b] {
        wait_for("three live nodes", t, || {
            let v = n.client.get("/v1/nodes", &[]).ok()?.ok_json().ok()?;
            let list = v.as_array()?;
            (list.len() == 3 && list.iter().all(|x| x["alive"] == true)).then_some(())
        });
    }
    let nodes = a.client.get("/v1/nodes", &[]).unwrap().ok_json().unwrap();
    let me = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer_id"] == a.peer_id.as_str())
        .unwrap();
    assert_eq!(me["cluster"], "c1");

    // A policy inserted on one node is read on the others.
    let added = b
        .client
        .post(
            "/v1/policies",
            &[],
            br#"{"sensor_site": {"name": "site-7", "city": "Oslo"}}"#,
        )
        .unwrap()
        .ok_json()
        .unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    for n in [&master, &a] {
        wait_for("the policy to spread", t, || {
            let p = policies(n, "sensor_site");
            (p.len() == 1 && p[0]["sensor_site"]["id"] == id.as_str()).then_some(())
        });
    }
    let p = &policies(&a, "sensor_site")[0]["sensor_site"];
    assert_eq!(p["city"], "Oslo");
    assert_eq!(p["author"], b.peer_id.as_str());

    // EdgeLake's commands over the same ledger.
    let r = a
        .client
        .post(
            "/",
            &[(
                "command",
                "blockchain insert where policy = !x and local = true",
            )],
            br#"x={"sensor": {"name": "s1", "kind": "temp"}}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the inserted policy on the master", t, || {
        (master
            .command("blockchain get sensor where name = s1 bring.count")
            .body
            == "1")
            .then_some(())
    });
    let got = master
        .command("blockchain get sensor where name = s1")
        .json()
        .unwrap();
    assert_eq!(got[0]["sensor"]["kind"], "temp");
    assert_eq!(got[0]["sensor"]["author"], a.peer_id.as_str());
    assert_eq!(
        master
            .command("blockchain get sensor where name = nobody bring.count")
            .body,
        "0"
    );
    let names = master
        .command("blockchain get (operator, master) bring.unique [*][name] separator=,")
        .body;
    let mut names: Vec<&str> = names.split(',').collect();
    names.sort();
    assert_eq!(names, ["test-node"], "all test nodes share one name");

    // A table written on an operator is announced: its cluster, and who holds it.
    a.post("lab", "readings", r#"{"v": 1}"#).ok_json().unwrap();
    wait_for("the table policy on the master", t, || {
        (master
            .command("blockchain get table where dbms = lab and name = readings bring.count")
            .body
            == "1")
            .then_some(())
    });
    // EdgeLake's layout (EDGELAKE-COMPAT.md, "Node policies"): a root
    // `cluster` policy and a child per table owner that names it as parent
    // and lists the tables; the operator names its cluster by the root's id.
    let clusters = master
        .command("blockchain get cluster where name = c1")
        .json()
        .unwrap();
    let clusters = clusters.as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{clusters:?}");
    let root = clusters
        .iter()
        .find(|c| c["cluster"]["parent"].is_null())
        .unwrap();
    let root_id = root["cluster"]["id"].as_str().unwrap();
    let child = clusters
        .iter()
        .find(|c| c["cluster"]["parent"] == root_id)
        .unwrap();
    assert_eq!(
        child["cluster"]["table"],
        serde_json::json!([{"dbms": "lab", "name": "readings", "status": "active"}])
    );
    let of_a = |field: &str| {
        master
            .command(&format!(
                "blockchain get operator where peer_id = {} bring [operator][{field}]",
                a.peer_id
            ))
            .body
    };
    assert_eq!(of_a("cluster"), root_id);
    assert_eq!(of_a("cluster_name"), "c1");
    assert_eq!(of_a("member"), "1");
    assert_eq!(
        master
            .command(&format!(
                "blockchain get cluster where id = {root_id} bring.count"
            ))
            .body,
        "1"
    );
    // Each node publishes a `config` policy, as EdgeLake's do.
    wait_for("three config policies", t, || {
        (master.command("blockchain get config bring.count").body == "3").then_some(())
    });
    // The master holds no data, yet answers `get columns` from the schema
    // the operator put in the table policy, kept current as columns come.
    a.post("lab", "readings", r#"{"v": 2, "site": "north"}"#)
        .ok_json()
        .unwrap();
    wait_for("the new column in the table policy", t, || {
        let c = master
            .command("get columns where dbms = lab and table = readings and format=json")
            .json()
            .ok()?;
        (c["site"] == "char(5)").then_some(c)
    });
    let cols = master
        .command("get columns where dbms = lab and table = readings and format=json")
        .json()
        .unwrap();
    assert_eq!(
        cols,
        serde_json::json!({"row_id": "integer", "insert_timestamp": "timestamp without time zone",
            "tsd_name": "char(3)", "tsd_id": "int", "v": "int", "site": "char(5)"})
    );
    assert_eq!(
        master
            .command("blockchain get table where dbms = lab and name = readings bring.count")
            .body,
        "1",
        "the older schema is superseded"
    );
    let holders = master
        .command("get data nodes where dbms = lab and format=json")
        .json()
        .unwrap();
    assert_eq!(holders.as_array().unwrap().len(), 1);
    assert_eq!(holders[0]["Member ID"], "1");
    assert_eq!(holders[0]["Cluster ID"], root_id);
    // Where peers reach it: its libp2p TCP address, as EdgeLake's ip:port.
    let tcp = a.p2p[0]
        .split("/tcp/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    assert_eq!(
        holders[0]["External IP/Port"],
        format!("127.0.0.1:{tcp}").as_str()
    );
    // EdgeLake's layout for its `get` tables (utils_print.output_nested_lists,
    // as AnyLog's docs show `get data nodes`): `|` after each cell, numbers
    // right-aligned, CRLF line ends.
    let text = master.command("get data nodes where dbms = lab").body;
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(
        lines[1].starts_with(&format!(
            "Company DBMS Table    {:<32} Cluster Status Node Name Member ID",
            "Cluster ID"
        )) && lines[3].contains(&format!("|{root_id}|active        |test-node|        1|"))
            && lines[1].ends_with("Main Node Status ")
            && lines[2].starts_with("-------|----|--------|")
            && lines[3].starts_with("       |lab |readings|")
            && lines[3].contains(&format!("127.0.0.1:{tcp}")),
        "{text}"
    );
    let net = master
        .command("test network where format=json")
        .json()
        .unwrap();
    assert_eq!(net.as_array().unwrap().len(), 3);
    assert!(
        net.as_array().unwrap().iter().all(|n| n["Status"] == "+"),
        "{net}"
    );

    // Bad policies are refused and change nothing.
    for bad in [r#"[]"#, r#"{"a": 1}"#, r#"{"a": {}, "b": {}}"#, "not json"] {
        let r = b.client.post("/v1/policies", &[], bad.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // A node restarted on another port keeps its PeerId and is found again.
    let old_peer = b.peer_id.clone();
    b.restart();
    assert_eq!(b.peer_id, old_peer);
    wait_for("the restarted node to be alive again", t, || {
        let v = a.client.get("/v1/nodes", &[]).ok()?.ok_json().ok()?;
        let n = v
            .as_array()?
            .iter()
            .find(|x| x["peer_id"] == old_peer.as_str())?
            .clone();
        (n["alive"] == true && n["rest"] == b.client.base().trim_start_matches("http://"))
            .then_some(())
    });
    let nodes = a.client.get("/v1/nodes", &[]).unwrap().ok_json().unwrap();
    assert_eq!(
        nodes.as_array().unwrap().len(),
        3,
        "a restart supersedes, never duplicates"
    );
}

#[test]
fn twenty_in_process_nodes_converge_partition_heal_and_restart() {
    use tarn::LocalMesh;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut mesh = LocalMesh::start(20, dir.path()).await.unwrap();
        // Node 0 announces 4 services, the others 2 each.
        let at_start = 4 + 19 * 2;
        mesh.wait_converged(at_start, Duration::from_secs(60))
            .await
            .unwrap();

        let side_a: Vec<usize> = (0..10).collect();
        let side_b: Vec<usize> = (10..20).collect();
        mesh.partition(&side_a, &side_b).await.unwrap();
        async fn publish(mesh: &LocalMesh, i: usize, body: &str) {
            let m = mesh.node(i).unwrap().mesh().clone();
            let p = tarn_ledger::policy::Policy::parse(body).unwrap();
            m.publish(&p, None).await.unwrap();
        }
        publish(&mesh, 3, r#"{"site": {"name": "west"}}"#).await;
        publish(&mesh, 15, r#"{"site": {"name": "east"}}"#).await;
        assert!(
            !mesh.converged(at_start + 2),
            "a partition cannot have converged"
        );
        mesh.heal().await.unwrap();
        mesh.wait_converged(at_start + 2, Duration::from_secs(60))
            .await
            .unwrap();
        for (_, n) in mesh.running() {
            let view = n.mesh().view();
            let mut names: Vec<String> = view
                .of_kind("site")
                .map(|p| p.policy["site"]["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["east", "west"]);
        }

        // A node restarted from its redb file rejoins with what it had, and catches up.
        mesh.stop(7).await.unwrap();
        publish(&mesh, 12, r#"{"site": {"name": "while-7-was-down"}}"#).await;
        mesh.restart(7).await.unwrap();
        mesh.wait_converged(at_start + 3, Duration::from_secs(60))
            .await
            .unwrap();
        mesh.shutdown().await.unwrap();
    });
}

/// Issue 14: a mesh whose nodes keep a handful of links each still knows
/// who is up and answers queries over operators it is not linked to.
/// 40 nodes with `peers_target = 6` (`peers_max = 12`): links stay bounded;
/// every node learns every other by gossip; a node that stops (a goodbye)
/// and one cut off without a word are shown down everywhere, and up again
/// when they come back; a network query asks every operator that holds
/// the table, dialing those it has no link with by PeerId.
#[test]
fn forty_nodes_with_six_links_each_know_who_is_up() {
    use tarn::LocalMesh;
    const N: usize = 40;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut mesh = LocalMesh::start_with(N, dir.path(), |_, c| {
            c.peers_target = 6;
            c.peers_max = 12;
        })
        .await
        .unwrap();
        let at_start = 4 + (N - 1) * 2;
        // Links follow bootstrap and DHT order at first and can leave a
        // group linked only among itself: a random link a minute undoes it.
        mesh.wait_converged(at_start, Duration::from_secs(180))
            .await
            .unwrap();
        let peer = |mesh: &LocalMesh, i: usize| mesh.node(i).unwrap().peer_id();
        let all_see = |mesh: &LocalMesh, target: tarn_net::PeerId, up: bool| {
            mesh.running()
                .filter(|(_, n)| n.peer_id() != target)
                .all(|(_, n)| n.mesh().alive(&target) == up)
        };
        async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
            let start = std::time::Instant::now();
            while !f() {
                assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        until(
            "every node believes every other up",
            Duration::from_secs(60),
            || {
                mesh.running()
                    .all(|(_, n)| n.mesh().liveness_counts().0 == N - 1)
            },
        )
        .await;
        // Links settle to the target (never above the cap).
        until(
            "links settle near the target",
            Duration::from_secs(60),
            || {
                let links: Vec<usize> = mesh
                    .running()
                    .map(|(_, n)| n.mesh().connected_count())
                    .collect();
                assert!(
                    links.iter().all(|l| *l <= 12 + 64),
                    "above the cap: {links:?}"
                );
                links.iter().sum::<usize>() <= N * 8
            },
        )
        .await;

        // Ten operators hold rows of one table; node 0 asks all of them.
        for i in 10..20 {
            let url = format!("{}/v1/data/lab/t", mesh.node(i).unwrap().rest_url());
            let body = format!(r#"[{{"v": {i}}}, {{"v": {}}}]"#, i + 100);
            tokio::task::spawn_blocking(move || {
                ureq::post(&url)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .map(|_| ())
            })
            .await
            .unwrap()
            .unwrap();
        }
        let url = format!("{}/v1/query", mesh.node(0).unwrap().rest_url());
        let answer = tokio::task::spawn_blocking(move || -> serde_json::Value {
            let body =
                r#"{"db": "lab", "sql": "select count(*), sum(v) from t", "scope": "network"}"#;
            // The table policies reach node 0 by gossip: ask until all ten answer.
            let start = std::time::Instant::now();
            loop {
                let r = ureq::post(&url)
                    .header("content-type", "application/json")
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .send(body.as_bytes())
                    .unwrap()
                    .body_mut()
                    .read_json::<serde_json::Value>()
                    .unwrap();
                if r["rows"][0][0] == 20 || start.elapsed() > Duration::from_secs(30) {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .unwrap();
        assert_eq!(answer["rows"][0], serde_json::json!([20, 1290]), "{answer}");
        assert!(answer["stats"]["nodes"].as_u64().unwrap() >= 10, "{answer}");
        assert!(
            answer["stats"]["replied"].as_u64().unwrap() >= 10,
            "{answer}"
        );

        // A node that stops says goodbye: down everywhere at once.
        let p7 = peer(&mesh, 7);
        mesh.stop(7).await.unwrap();
        until(
            "a stopped node is down everywhere",
            Duration::from_secs(10),
            || all_see(&mesh, p7, false),
        )
        .await;
        // One cut off without a word: its neighbours suspect it, and the
        // suspicion stands.
        let p9 = peer(&mesh, 9);
        let others: Vec<usize> = (0..N).filter(|i| *i != 9).collect();
        mesh.partition(&[9], &others).await.unwrap();
        until(
            "a node cut off is down everywhere",
            Duration::from_secs(30),
            || all_see(&mesh, p9, false),
        )
        .await;
        // Both come back: up everywhere within seconds.
        mesh.heal().await.unwrap();
        mesh.restart(7).await.unwrap();
        let p7 = peer(&mesh, 7);
        until(
            "nodes that came back are up everywhere",
            Duration::from_secs(40),
            || all_see(&mesh, p7, true) && all_see(&mesh, p9, true),
        )
        .await;
        mesh.shutdown().await.unwrap();
    });
}
