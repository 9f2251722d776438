//! `get data nodes` (which operators hold which tables) and `test network`
//! (which known nodes answer).

use std::time::Duration;

use serde_json::{Value, json};

use super::{AppState, Reply, get, wants_json};
use crate::cluster::membership::{self, NodeInfo};

/// `get data nodes [where dbms = X and table = Y and format=json]`.
pub(super) async fn data_nodes(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let nodes = membership::nodes(&s.mesh).await;
    let (mut tables, clusters): (Vec<(String, String, String)>, _) = s.mesh.with_view(|view| {
        let t = view
            .of_kind("table")
            .filter_map(|p| {
                let t = &p.policy["table"];
                Some((
                    t["dbms"].as_str()?.to_owned(),
                    t["name"].as_str()?.to_owned(),
                    t["cluster"].as_str()?.to_owned(),
                ))
            })
            .collect();
        (t, super::shapes::Clusters::of(view))
    });
    // Members of a cluster catching up on a new column announce two
    // schemas of one table for a while: one row per table still.
    tables.sort();
    tables.dedup();
    let mut rows = Vec::new();
    for (dbms, table, cluster) in &tables {
        if get(&kv, "dbms").is_some_and(|d| d != dbms)
            || get(&kv, "table").is_some_and(|x| x != table)
        {
            continue;
        }
        for n in nodes
            .iter()
            .filter(|n| n.is_operator() && n.table_cluster() == *cluster)
        {
            let at = n.endpoint.clone().unwrap_or_else(|| n.rest.clone());
            rows.push(json!({
                "Company": "",
                "DBMS": dbms,
                "Table": table,
                "Cluster ID": clusters.id(cluster),
                "Cluster Status": "active",
                "Node Name": n.name,
                "Member ID": clusters.member(&n.peer_id).map_or_else(String::new, |m| m.to_string()),
                "External IP/Port": at,
                "Local IP/Port": at,
                "Main": "+",
                "Node Status": if n.alive { "active" } else { "inactive" },
            }));
        }
    }
    if wants_json(&kv) {
        return Reply::Json(Value::Array(rows).to_string());
    }
    // EdgeLake's table: a table's company, dbms and name are written on its
    // first row only (each further row is another copy of it).
    const COLUMNS: [&str; 11] = [
        "Company",
        "DBMS",
        "Table",
        "Cluster ID",
        "Cluster Status",
        "Node Name",
        "Member ID",
        "External IP/Port",
        "Local IP/Port",
        "Main",
        "Node Status",
    ];
    let cell = |r: &Value, c: &str| r[c].as_str().unwrap_or_default().to_owned();
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    let mut last: Option<(String, String)> = None;
    for r in &rows {
        let mut line: Vec<String> = COLUMNS.iter().map(|c| cell(r, c)).collect();
        let key = (line[1].clone(), line[2].clone());
        if last.as_ref() == Some(&key) {
            line[..3].iter_mut().for_each(String::clear);
        }
        last = Some(key);
        cells.push(line);
    }
    Reply::Text(crate::api::format::nested_lists(&COLUMNS, &cells, ""))
}

/// Asks every known node for its ledger heads (at most 3 s each, all at
/// once) and says who answered.
async fn answering(s: &AppState) -> Vec<(NodeInfo, bool)> {
    let mut checks = tokio::task::JoinSet::new();
    for n in membership::nodes(&s.mesh).await {
        let mesh = s.mesh.clone();
        checks.spawn(async move {
            let ok = match n.peer_id.parse::<tarn_net::PeerId>() {
                Ok(p) if p == mesh.peer_id() => true,
                Ok(p) => tokio::time::timeout(Duration::from_secs(3), mesh.ping(p))
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            };
            (n, ok)
        });
    }
    let mut out = checks.join_all().await;
    out.sort_by(|a, b| a.0.peer_id.cmp(&b.0.peer_id));
    out
}

/// `test network [where format=json]`.
pub(super) async fn test(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let nodes = answering(s).await;
    let status = |ok: bool| if ok { "+" } else { " " };
    if wants_json(&kv) {
        let list: Vec<Value> = nodes
            .iter()
            .map(|(n, ok)| {
                json!({
                    "Address": n.rest, "Node Type": n.services, "Node Name": n.name,
                    "Peer ID": n.peer_id, "Status": status(*ok),
                })
            })
            .collect();
        return Reply::Json(Value::Array(list).to_string());
    }
    let mut out = String::from(
        "\nTest Network\nAddress               Node Type            Node Name            Status\n--------------------- -------------------- -------------------- ------\n",
    );
    for (n, ok) in &nodes {
        out.push_str(&format!(
            "{:<21} {:<20} {:<20} {}\n",
            n.rest,
            n.services.join(","),
            n.name,
            status(*ok)
        ));
    }
    Reply::Text(out)
}
