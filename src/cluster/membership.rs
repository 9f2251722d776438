//! Who is who in the network, as the ledger says: the roles nodes play,
//! the operators of each cluster, the clusters that hold each table. Every
//! rule about membership is written here once (an operator without a
//! cluster forms one of its own, `node-<peer>`; only a node's own key may
//! describe it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tarn_ledger::View;
use tarn_net::PeerId;

use crate::config::Service;
use crate::mesh::{Mesh, peer_of};

/// An operator of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub name: String,
    pub rest: String,
}

/// This node, as it describes itself to the network.
#[derive(Debug, Clone)]
pub struct Me {
    pub peer: PeerId,
    pub name: String,
    pub services: Vec<Service>,
    pub cluster: Option<String>,
    /// Its REST address.
    pub rest: String,
}

impl Me {
    pub fn runs(&self, s: Service) -> bool {
        self.services.contains(&s)
    }

    /// The cluster this node's tables belong to.
    pub fn table_cluster(&self) -> String {
        cluster_name(self.cluster.as_deref(), &self.peer)
    }

    /// The cluster this node is in as the network sees it: in a closed
    /// network the one its member policy names (whatever `--cluster` says).
    pub fn cluster_in(&self, view: &View) -> Option<String> {
        match (view.network(), crate::mesh::author_of(&self.peer)) {
            (Some(_), Some(a)) => view.member(&a).and_then(|m| m.cluster.clone()),
            _ => self.cluster.clone(),
        }
    }

    /// This node as a member of its cluster.
    pub fn as_member(&self) -> Member {
        Member {
            peer: self.peer,
            name: self.name.clone(),
            rest: self.rest.clone(),
        }
    }
}

/// The cluster of an operator: the one it names, or one of its own.
pub fn cluster_name(cluster: Option<&str>, peer: &PeerId) -> String {
    cluster.map_or_else(|| format!("node-{peer}"), str::to_owned)
}

/// `operator` policies with the PeerId they describe, only those signed by
/// that peer's own key (and, in a closed network, only of members admitted
/// as operators).
pub fn operators(view: &View) -> impl Iterator<Item = (PeerId, &serde_json::Value)> {
    view.of_kind("operator").filter_map(move |p| {
        let body = &p.policy["operator"];
        let peer = body["peer_id"].as_str()?.parse::<PeerId>().ok()?;
        if view.network().is_some()
            && !view
                .member(&p.author)
                .is_some_and(|m| m.services.iter().any(|s| s == "operator"))
        {
            return None;
        }
        (peer_of(&p.author) == Some(peer)).then_some((peer, body))
    })
}

/// The cluster an operator is in: in a closed network the one its member
/// policy names, never its own claim; in an open one the one its policy
/// names. Without one, a cluster of its own.
pub fn cluster_of(view: &View, peer: &PeerId, body: &serde_json::Value) -> String {
    let claimed = match (view.network(), crate::mesh::author_of(peer)) {
        (Some(_), Some(a)) => view.member(&a).and_then(|m| m.cluster.clone()),
        _ => body["cluster"].as_str().map(str::to_owned),
    };
    cluster_name(claimed.as_deref(), peer)
}

/// Every cluster the ledger knows and its operators, by cluster name;
/// members in name order.
pub fn clusters(view: &View) -> BTreeMap<String, Vec<Member>> {
    let mut out: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    for (peer, body) in operators(view) {
        let m = out.entry(cluster_of(view, &peer, body)).or_default();
        if !m.iter().any(|x| x.peer == peer) {
            m.push(Member {
                peer,
                name: body["name"].as_str().unwrap_or_default().to_owned(),
                rest: body["rest"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    for members in out.values_mut() {
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
    }
    out
}

/// The other operators of `me`'s cluster (none for a node that names no
/// cluster: its cluster of its own has no other member).
pub fn members(view: &View, me: &Me) -> Vec<Member> {
    let Some(cluster) = me.cluster_in(view) else {
        return Vec::new();
    };
    clusters(view)
        .remove(&cluster)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.peer != me.peer)
        .collect()
}

/// The clusters whose `table` policies name `db.table` (names compared
/// without regard to case). In a closed network a `table` policy counts
/// only from an operator of the cluster it names.
pub fn holders(view: &View, db: &str, table: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let closed = view.network().is_some();
    for p in view.of_kind("table") {
        if closed && !table_author_ok(view, p) {
            continue;
        }
        let t = &p.policy["table"];
        if t["dbms"]
            .as_str()
            .is_some_and(|d| d.eq_ignore_ascii_case(db))
            && t["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(table))
            && let Some(c) = t["cluster"].as_str()
        {
            out.insert(c.to_owned());
        }
    }
    out
}

/// Whether a `table` policy's author is an operator of the cluster it names.
fn table_author_ok(view: &View, p: &tarn_ledger::PolicyRecord) -> bool {
    let (Some(peer), Some(m)) = (peer_of(&p.author), view.member(&p.author)) else {
        return false;
    };
    m.services.iter().any(|s| s == "operator")
        && p.policy["table"]["cluster"].as_str()
            == Some(cluster_name(m.cluster.as_deref(), &peer).as_str())
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub peer_id: String,
    pub services: Vec<String>,
    pub cluster: Option<String>,
    pub rest: String,
    /// EdgeLake's `ip:port` from its policy: where peers reach it.
    pub endpoint: Option<String>,
    pub alive: bool,
    pub addresses: Vec<String>,
    pub last_seen_s_ago: Option<u64>,
    /// Another node claims the same name.
    pub name_conflict: bool,
}

impl NodeInfo {
    pub fn is_operator(&self) -> bool {
        self.services.iter().any(|s| s == "operator")
    }

    /// The cluster its tables belong to, if it is an operator.
    pub fn table_cluster(&self) -> String {
        match self.peer_id.parse::<PeerId>() {
            Ok(p) => cluster_name(self.cluster.as_deref(), &p),
            Err(_) => self.cluster.clone().unwrap_or_default(),
        }
    }
}

/// Every node the ledger knows, by PeerId, with liveness and addresses;
/// two nodes claiming one name are both listed and flagged.
pub async fn nodes(mesh: &Mesh) -> Vec<NodeInfo> {
    let connected: HashMap<String, Vec<String>> = mesh
        .connected()
        .await
        .into_iter()
        .map(|p| {
            (
                p.peer_id.to_string(),
                p.addrs.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect();
    let states = mesh.peer_states();
    let me = mesh.peer_id().to_string();
    let mine = mesh.full_listen_addrs();
    let mut by_peer: BTreeMap<String, NodeInfo> = BTreeMap::new();
    mesh.with_view(|view| {
        for kind in ["operator", "query", "master", "publisher"] {
            for p in view.of_kind(kind) {
                let body = &p.policy[kind];
                let Some(peer) = body["peer_id"].as_str() else {
                    continue;
                };
                // Only the key holder may describe a node.
                if peer_of(&p.author).map(|x| x.to_string()).as_deref() != Some(peer) {
                    continue;
                }
                by_peer.entry(peer.to_owned()).or_insert_with(|| {
                    let id = peer.parse::<PeerId>().ok();
                    // Connected, or believed up by the liveness table.
                    let alive = peer == me || id.as_ref().is_some_and(|id| mesh.alive(id));
                    let last_seen = id
                        .as_ref()
                        .and_then(|id| states.get(id))
                        .map(|st| st.last_seen.elapsed().as_secs());
                    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                    NodeInfo {
                        name: text("name"),
                        peer_id: peer.to_owned(),
                        services: body["services"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect(),
                        cluster: body["cluster"].as_str().map(str::to_owned),
                        rest: text("rest"),
                        endpoint: match (body["ip"].as_str(), body["port"].as_u64()) {
                            (Some(ip), Some(port)) if !ip.is_empty() => {
                                Some(format!("{ip}:{port}"))
                            }
                            _ => None,
                        },
                        alive,
                        addresses: match connected.get(peer) {
                            Some(a) => a.clone(),
                            None if peer == me => mine.clone(),
                            None => id
                                .map(|id| mesh.announced_addrs(&id))
                                .unwrap_or_default()
                                .iter()
                                .map(|a| a.to_string())
                                .collect(),
                        },
                        last_seen_s_ago: if alive { Some(0) } else { last_seen },
                        name_conflict: false,
                    }
                });
            }
        }
    });
    // Two nodes claiming one name: both shown, both flagged.
    let mut names: HashMap<String, usize> = HashMap::new();
    for n in by_peer.values() {
        *names.entry(n.name.clone()).or_default() += 1;
    }
    let mut out: Vec<NodeInfo> = by_peer.into_values().collect();
    for n in &mut out {
        n.name_conflict = !n.name.is_empty() && names[&n.name] > 1;
    }
    out
}
