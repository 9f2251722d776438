//! tarn's policies in the shapes EdgeLake's scripts read.
//!
//! The ledger keeps tarn's own shapes (a cluster is named, an operator names
//! its cluster, a `table` policy names its cluster); EdgeLake's commands see
//! them as EdgeLake lays them out:
//! - a cluster is a root `cluster` policy plus a child per table owner
//!   (`parent` = the root's id, `table` = [{dbms, name, status}]); tarn has
//!   one owner per cluster, so one child;
//! - a node policy's `cluster` is the id of its cluster's root policy (the
//!   name stays beside it as `cluster_name`), and an operator has a `member`
//!   number, 1–255, unique in its cluster.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use tarn_ledger::View;

use crate::api::native::policy_json;
use crate::cluster::membership;

/// The clusters as EdgeLake numbers them.
pub(super) struct Clusters {
    /// Root policy id by cluster name.
    ids: BTreeMap<String, String>,
    /// An operator's cluster name and member number, by PeerId.
    members: HashMap<String, (String, usize)>,
}

impl Clusters {
    pub(super) fn of(view: &View) -> Clusters {
        let mut ids = BTreeMap::new();
        for p in view.of_kind("cluster") {
            let c = &p.policy["cluster"];
            if let (Some(name), true) = (c["name"].as_str(), c.get("parent").is_none()) {
                ids.entry(name.to_owned()).or_insert_with(|| p.id.clone());
            }
        }
        let mut members = HashMap::new();
        // Members are numbered in the cluster's own order (name, then
        // PeerId), so every node shows the same numbers.
        for (name, list) in membership::clusters(view) {
            for (i, m) in list.iter().enumerate() {
                members.insert(m.peer.to_string(), (name.clone(), (i + 1).min(255)));
            }
        }
        for p in view.of_kind("table") {
            if let Some(name) = p.policy["table"]["cluster"].as_str() {
                ids.entry(name.to_owned())
                    .or_insert_with(|| derived_id(name));
            }
        }
        for (name, _) in members.values() {
            if !ids.contains_key(name) {
                ids.insert(name.clone(), derived_id(name));
            }
        }
        Clusters { ids, members }
    }

    /// The id EdgeLake knows a cluster by: its root policy's.
    pub(super) fn id(&self, name: &str) -> String {
        self.ids
            .get(name)
            .cloned()
            .unwrap_or_else(|| derived_id(name))
    }

    /// An operator's member number in its cluster.
    pub(super) fn member(&self, peer: &str) -> Option<usize> {
        self.members.get(peer).map(|(_, n)| *n)
    }
}

/// For a cluster no policy declares (an operator alone is a cluster of its
/// own): an id of the same form, from its name, the same on every node.
fn derived_id(name: &str) -> String {
    blake3::hash(format!("cluster\0{name}").as_bytes()).to_hex()[..32].to_owned()
}

/// Every policy in force as EdgeLake lists it, with its type.
pub(super) fn policies(view: &View) -> Vec<(String, Value)> {
    let clusters = Clusters::of(view);
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut roots: BTreeMap<String, Value> = BTreeMap::new();
    for p in view.policies() {
        let mut v = policy_json(p);
        match p.kind.as_str() {
            "cluster" => {
                let c = &p.policy["cluster"];
                if let (Some(name), true) = (c["name"].as_str(), c.get("parent").is_none()) {
                    if clusters.ids.get(name) == Some(&p.id) {
                        roots.insert(name.to_owned(), v);
                    }
                    // Another root of the same name (members racing) is the
                    // same cluster: shown once.
                    continue;
                }
            }
            "operator" | "query" | "master" | "publisher" => {
                node_shape(view, &clusters, &p.kind, &mut v);
            }
            _ => {}
        }
        out.push((p.kind.clone(), v));
    }
    // The tables each cluster holds, from the `table` policies.
    let mut tables: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in view.of_kind("table") {
        let t = &p.policy["table"];
        let Some(c) = t["cluster"].as_str() else {
            continue;
        };
        let list = tables.entry(c.to_owned()).or_default();
        let item = json!({"dbms": t["dbms"], "name": t["name"], "status": "active"});
        if !list.contains(&item) {
            list.push(item);
        }
    }
    for (name, id) in &clusters.ids {
        let root = roots
            .remove(name)
            .unwrap_or_else(|| json!({"cluster": {"name": name, "company": "", "id": id}}));
        out.push(("cluster".to_owned(), root));
        if let Some(list) = tables.remove(name) {
            let child = blake3::hash(format!("cluster\0{name}\0tables").as_bytes()).to_hex()[..32]
                .to_owned();
            out.push((
                "cluster".to_owned(),
                json!({"cluster": {
                    "name": name,
                    "company": "",
                    "parent": id,
                    "table": list,
                    "id": child,
                }}),
            ));
        }
    }
    out
}

/// A node policy with EdgeLake's `cluster` (the root policy's id) and, for
/// an operator, its `member` number.
fn node_shape(view: &View, clusters: &Clusters, kind: &str, v: &mut Value) {
    let Some(body) = v.get_mut(kind).and_then(Value::as_object_mut) else {
        return;
    };
    let peer = body
        .get("peer_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "operator" {
        let name = match peer.parse() {
            Ok(p) => membership::cluster_of(view, &p, &Value::Object(body.clone())),
            Err(_) => return,
        };
        body.insert("cluster".into(), clusters.id(&name).into());
        body.insert("cluster_name".into(), name.into());
        if let Some(n) = clusters.member(&peer) {
            body.insert("member".into(), n.into());
        }
    } else if let Some(name) = body
        .get("cluster")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        body.insert("cluster".into(), clusters.id(&name).into());
        body.insert("cluster_name".into(), name.into());
    }
}
