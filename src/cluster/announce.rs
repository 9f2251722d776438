//! The policies a node publishes about itself: one per service it runs
//! (naming it by PeerId, never by IP), its cluster, and one `table` policy
//! per table it stores.

use std::sync::Arc;
use std::time::Duration;

use tarn_ledger::policy::Policy;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::membership::{Me, cluster_name};
use crate::config::Service;
use crate::mesh::Mesh;
use crate::store::Storage;

/// Publishes (or supersedes) this node's own policies.
pub async fn publish_self(mesh: &Arc<Mesh>, me: &Me) -> anyhow::Result<()> {
    let author = mesh.author();
    let view = mesh.view();
    for service in &me.services {
        let kind = service.name();
        let mut body = serde_json::json!({
            "name": me.name,
            "peer_id": me.peer.to_string(),
            "services": me.services,
            "rest": me.rest,
            "version": env!("CARGO_PKG_VERSION"),
        });
        // EdgeLake's fields beside tarn's, for its scripts: the address
        // peers reach (libp2p's TCP port is EdgeLake's TCP service) and
        // the REST port. Nobody dials by them: nodes are found by PeerId.
        let (ip, port) = mesh.peer_endpoint().unwrap_or_default();
        body["ip"] = ip.into();
        body["port"] = port.into();
        body["rest_port"] = me
            .rest
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0)
            .into();
        body["hostname"] = crate::config::hostname().into();
        body["company"] = "".into();
        body["main"] = true.into();
        if let Some(c) = &me.cluster {
            body["cluster"] = c.clone().into();
        }
        let policy = Policy::from_value(serde_json::json!({ kind: body }))
            .map_err(|e| anyhow::anyhow!("building the node policy: {e}"))?;
        let mine: Vec<String> = view
            .of_kind(kind)
            .filter(|p| p.author == author)
            .map(|p| p.id.clone())
            .collect();
        if mine.contains(&policy.id()) {
            continue;
        }
        mesh.publish(&policy, mine.first().cloned())
            .await
            .map_err(|e| anyhow::anyhow!("publishing the node policy: {e}"))?;
        for old in mine.iter().skip(1) {
            mesh.revoke(old.clone())
                .await
                .map_err(|e| anyhow::anyhow!("revoking an old node policy: {e}"))?;
        }
    }
    // The cluster itself: every member writes the same body, so it is one
    // policy; its members are the operators whose policies name it.
    if let (true, Some(c)) = (me.runs(Service::Operator), &me.cluster) {
        let policy = Policy::from_value(serde_json::json!({"cluster": {"name": c}}))
            .map_err(|e| anyhow::anyhow!("building the cluster policy: {e}"))?;
        if view.get(&policy.id()).is_none() {
            mesh.publish(&policy, None)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the cluster policy: {e}"))?;
        }
    }
    Ok(())
}

/// Announces every local table not yet in the ledger as a `table` policy
/// `{"table": {"dbms", "name", "cluster"}}`. Operators of one cluster write
/// the same body, so it is one policy however many of them announce it.
/// The table policies this node published for another cluster (it was
/// alone, or in another cluster, before) are withdrawn: its rows are its
/// cluster's now, and counting them under both would count them twice.
pub async fn announce_tables(mesh: &Arc<Mesh>, me: &Me, store: &Storage) {
    if !mesh.admitted() {
        // A closed network takes nothing from a node it has not admitted.
        return;
    }
    let view = mesh.view();
    let cluster = cluster_name(me.cluster_in(&view).as_deref(), &me.peer);
    let author = mesh.author();
    let stale: Vec<String> = view
        .of_kind("table")
        .filter(|p| p.author == author)
        .filter(|p| p.policy["table"]["cluster"].as_str() != Some(cluster.as_str()))
        .map(|p| p.id.clone())
        .collect();
    for id in stale {
        if let Err(e) = mesh.revoke(id).await {
            tracing::warn!("withdrawing a table policy of an old cluster: {e}");
        }
    }
    for (db, table) in store.user_tables() {
        let p = serde_json::json!({"table": {"dbms": db, "name": table, "cluster": cluster}});
        let Ok(policy) = Policy::from_value(p) else {
            continue;
        };
        if view.get(&policy.id()).is_some() {
            continue;
        }
        if let Err(e) = mesh.publish(&policy, None).await {
            tracing::warn!("announcing table {db}.{table}: {e}");
        }
    }
}

/// Publishes this node's own policies once it is admitted to its closed
/// network (checked twice a second), then ends.
pub fn spawn_when_admitted(
    mesh: Arc<Mesh>,
    me: Me,
    store: Option<Arc<Storage>>,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if mesh.admitted() {
                    break;
                }
            }
            tracing::info!("admitted to the network");
            if let Err(e) = publish_self(&mesh, &me).await {
                tracing::error!("{e:#}");
            }
            // The table announcer goes round at once.
            if let Some(s) = store {
                s.tables_changed.notify_one();
            }
        }
        .instrument(span),
    )
}

/// Publishes this node's policies again when the address peers reach it at
/// changes (checked every 10 s), so EdgeLake's `ip`/`port` stay current.
pub fn spawn_address_watch(
    mesh: Arc<Mesh>,
    me: Me,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut last = mesh.peer_endpoint();
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                let now = mesh.peer_endpoint();
                if now == last || !mesh.admitted() {
                    continue;
                }
                tracing::info!("reached at {now:?} now (was {last:?}): publishing it");
                match publish_self(&mesh, &me).await {
                    Ok(()) => last = now,
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
        .instrument(span),
    )
}

/// Announces tables as the store creates them, and every 30 s (a notice
/// lost to a crash is repaired).
pub fn spawn_table_announcer(
    mesh: Arc<Mesh>,
    me: Me,
    store: Arc<Storage>,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let changed = store.tables_changed.clone();
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                announce_tables(&mesh, &me, &store).await;
            }
        }
        .instrument(span),
    )
}
