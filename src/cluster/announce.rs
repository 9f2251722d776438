//! The policies a node publishes about itself: one per service it runs
//! (naming it by PeerId, never by IP), its cluster, and one `table` policy
//! per table it stores.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
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
    let view = mesh.view();
    // EdgeLake's fields beside tarn's, for its scripts: the address peers
    // reach (libp2p's TCP port is EdgeLake's TCP service) and the REST
    // port. Nobody dials by them: nodes are found by PeerId.
    let (ip, port) = mesh.peer_endpoint().unwrap_or_default();
    let rest_port = me
        .rest
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0);
    for service in &me.services {
        let kind = service.name();
        let mut body = serde_json::json!({
            "name": me.name,
            "peer_id": me.peer.to_string(),
            "services": me.services,
            "rest": me.rest,
            "version": env!("CARGO_PKG_VERSION"),
            "ip": ip,
            "port": port,
            "rest_port": rest_port,
            "hostname": crate::config::hostname(),
            "company": "",
            "main": true,
        });
        if let Some(c) = &me.cluster {
            body["cluster"] = c.clone().into();
        }
        publish_mine(mesh, &view, kind, serde_json::json!({ kind: body })).await?;
    }
    // EdgeLake's nodes publish their settings as a `config` policy too.
    let main = me.services.first().map_or("operator", |s| s.name());
    let config = serde_json::json!({"config": {
        "name": format!("{}-{main}-config", me.name),
        "node_type": main,
        "peer_id": me.peer.to_string(),
        "services": me.services,
        "ip": ip,
        "port": port,
        "rest_port": rest_port,
        "cluster": me.cluster,
    }});
    publish_mine(mesh, &view, "config", config).await?;
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

/// Publishes `body` as this node's one policy of type `kind`, superseding
/// the one it published before (and withdrawing any extra), unless it is
/// already in force.
async fn publish_mine(
    mesh: &Arc<Mesh>,
    view: &tarn_ledger::View,
    kind: &str,
    body: Value,
) -> anyhow::Result<()> {
    let policy =
        Policy::from_value(body).map_err(|e| anyhow::anyhow!("building the {kind} policy: {e}"))?;
    let author = mesh.author();
    let mine: Vec<String> = view
        .authored_by(&author, kind)
        .map(|p| p.id.clone())
        .collect();
    if mine.contains(&policy.id()) {
        return Ok(());
    }
    mesh.publish(&policy, mine.first().cloned())
        .await
        .map_err(|e| anyhow::anyhow!("publishing the {kind} policy: {e}"))?;
    for old in mine.iter().skip(1) {
        mesh.revoke(old.clone())
            .await
            .map_err(|e| anyhow::anyhow!("revoking an old {kind} policy: {e}"))?;
    }
    Ok(())
}

/// Announces every local table as a `table` policy `{"table": {"dbms",
/// "name", "cluster", "columns", "create"}}`, its schema as EdgeLake declares
/// it, so that any node (a query node holds no data) can answer `get
/// columns`. Operators of one cluster that hold the same columns write the
/// same body, so it is one policy however many of them announce it; a node
/// whose table gained columns supersedes its own copy of the older schema.
/// The table policies this node published for another cluster (it was
/// alone, or in another cluster, before) are withdrawn: its rows are its
/// cluster's now, and counting them under both would count them twice.
pub async fn announce_tables(mesh: &Arc<Mesh>, me: &Me, store: &Arc<Storage>) {
    if !mesh.admitted() {
        // A closed network takes nothing from a node it has not admitted.
        return;
    }
    let view = mesh.view();
    let cluster = cluster_name(me.cluster_in(&view).as_deref(), &me.peer);
    let author = mesh.author();
    let mine: Vec<&tarn_ledger::PolicyRecord> = view.authored_by(&author, "table").collect();
    for p in mine
        .iter()
        .filter(|p| p.policy["table"]["cluster"].as_str() != Some(cluster.as_str()))
    {
        if let Err(e) = mesh.revoke(p.id.clone()).await {
            tracing::warn!("withdrawing a table policy of an old cluster: {e}");
        }
    }
    for (db, table) in store.user_tables() {
        // The declared types are read from the database: off the runtime.
        let (st, d, t) = (store.clone(), db.clone(), table.clone());
        let Ok(Ok(columns)) =
            tokio::task::spawn_blocking(move || st.declared_columns(&d, &t)).await
        else {
            continue;
        };
        let Ok(policy) = Policy::from_value(table_policy(&db, &table, &cluster, &columns)) else {
            continue;
        };
        let id = policy.id();
        let older: Vec<String> = mine
            .iter()
            .filter(|p| {
                let t = &p.policy["table"];
                t["dbms"] == db.as_str() && t["name"] == table.as_str()
            })
            .map(|p| p.id.clone())
            .collect();
        if older.contains(&id) {
            continue;
        }
        if let Err(e) = mesh.publish(&policy, older.first().cloned()).await {
            tracing::warn!("announcing table {db}.{table}: {e}");
            continue;
        }
        for old in older.iter().skip(1) {
            if let Err(e) = mesh.revoke(old.clone()).await {
                tracing::warn!("withdrawing an older table policy: {e}");
            }
        }
    }
}

/// The body of a `table` policy: tarn's routing fields, the columns in
/// order, and EdgeLake's `create` statement for its scripts.
fn table_policy(db: &str, table: &str, cluster: &str, columns: &[(String, String)]) -> Value {
    let list: Vec<Value> = columns
        .iter()
        .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
        .collect();
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t)| match n.as_str() {
            "row_id" => "row_id SERIAL PRIMARY KEY".to_owned(),
            "insert_timestamp" => "insert_timestamp TIMESTAMP NOT NULL DEFAULT NOW()".to_owned(),
            _ => format!("\"{}\" {}", n.replace('"', "\"\""), t.to_ascii_uppercase()),
        })
        .collect();
    serde_json::json!({"table": {
        "dbms": db,
        "name": table,
        "cluster": cluster,
        "columns": list,
        "create": format!("CREATE TABLE IF NOT EXISTS \"{table}\" ({})", defs.join(", ")),
    }})
}

/// The columns of `dbms.table` from the ledger's `table` policies, for a
/// node that does not hold the table: the longest schema announced, then
/// any column only another announced (a cluster catching up).
pub fn announced_columns(
    view: &tarn_ledger::View,
    db: &str,
    table: &str,
) -> Option<Vec<(String, String)>> {
    let mut lists: Vec<Vec<(String, String)>> = view
        .of_kind("table")
        .filter(|p| {
            let t = &p.policy["table"];
            t["dbms"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case(db))
                && t["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(table))
        })
        .filter_map(|p| {
            let cols = p.policy["table"]["columns"].as_array()?;
            Some(
                cols.iter()
                    .filter_map(|c| {
                        Some((
                            c["name"].as_str()?.to_owned(),
                            c["type"].as_str()?.to_owned(),
                        ))
                    })
                    .collect(),
            )
        })
        .collect();
    lists.sort_by_key(|l| std::cmp::Reverse(l.len()));
    let mut out = lists.first()?.clone();
    for l in &lists[1..] {
        for c in l {
            if !out.iter().any(|(n, _)| *n == c.0) {
                out.push(c.clone());
            }
        }
    }
    Some(out)
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
