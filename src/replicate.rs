//! Cluster replication (DESIGN.md §7): the operators of one cluster keep
//! copies of each other's batches.
//!
//! - **Push**: storage tells the replicator of every batch this node
//!   produces; it reads the batch back (its rows are one run of row ids) and
//!   sends it to every live member at once, grouping what piled up meanwhile.
//! - **Anti-entropy**: every `replication.sync_ms` each member asks every
//!   live member for its inventory (per origin: batches, highest id, id sum)
//!   and pulls, origin by origin, the batches it lacks. This repairs what a
//!   restart, a partition or a lost push missed.
//! - **Consistency**: a write with `consistency=cluster` is pushed right away
//!   and answered with the members that confirmed it.
//!
//! A batch is identified in its cluster by `(origin PeerId, id)`; storage
//! keeps one copy however often it arrives (and one copy of rows re-sent
//! under another origin with the same hash). Only members of this node's
//! cluster (per the signed `operator` policies) may push to it or read its
//! batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tarn_net::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::mesh::Rpc;
use crate::node::Shared;
use crate::storage::{Committed, Holding, ReplBatch, Written};

/// Batches one push or pull message carries at most, in bytes (under the
/// RPC limit with room for CBOR's overhead).
const MESSAGE_BYTES: usize = 4 << 20;
/// Committed batches waiting for the pusher; when full, anti-entropy finds
/// the rest.
const PUSH_QUEUE: usize = 8192;
/// Most batches one `Replicate` message may carry.
const MAX_BATCHES: usize = 10_000;
/// Most pull rounds with one member for one origin in one exchange.
const MAX_ROUNDS: u64 = 100_000;
/// Most refused batches remembered (not asked for again).
const MAX_REFUSED: usize = 100_000;

/// An operator of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub name: String,
    pub rest: String,
}

/// Every cluster the ledger knows and its operators, by cluster name
/// (operators without a cluster form one of their own, `node-<peer>`).
pub fn clusters(shared: &Shared) -> std::collections::BTreeMap<String, Vec<Member>> {
    shared.mesh.with_view(|view| {
        let mut out: std::collections::BTreeMap<String, Vec<Member>> = Default::default();
        for (peer, body) in crate::scatter::operators(view) {
            let cluster = body["cluster"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("node-{peer}"));
            let m = out.entry(cluster).or_default();
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
    })
}

/// The other operators of this node's cluster (none without `--cluster`).
pub fn members(shared: &Shared) -> Vec<Member> {
    let Some(cluster) = &shared.cfg.cluster else {
        return Vec::new();
    };
    let me = shared.mesh.peer_id();
    clusters(shared)
        .remove(cluster)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.peer != me)
        .collect()
}

fn live_members(shared: &Shared) -> Vec<Member> {
    members(shared)
        .into_iter()
        .filter(|m| shared.mesh.alive(&m.peer))
        .collect()
}

/// Starts the pusher and the anti-entropy loop (operators in a cluster only).
pub fn spawn(
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> Vec<JoinHandle<()>> {
    if !shared.cfg.has(crate::Service::Operator) || shared.cfg.cluster.is_none() {
        return Vec::new();
    }
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    shared.storage.on_commit(tx);
    vec![
        tokio::spawn(push_loop(shared.clone(), rx, stop.clone()).instrument(span.clone())),
        tokio::spawn(sync_loop(shared.clone(), stop).instrument(span)),
    ]
}

async fn push_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Committed>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            c = rx.recv() => match c { Some(c) => c, None => break },
        };
        let mut group = vec![first];
        while group.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let live = live_members(&shared);
        if live.is_empty() {
            continue;
        }
        // One message at a time, read as it is sent: memory stays at about
        // one message however far behind the pusher is.
        let group = Arc::new(group);
        let mut at = 0;
        while at < group.len() {
            let (sh, g) = (shared.clone(), group.clone());
            let read = tokio::task::spawn_blocking(move || {
                let origin = sh.storage.origin().to_owned();
                let (mut out, mut size, mut i) = (Vec::new(), 0, at);
                while i < g.len() && size < MESSAGE_BYTES && out.len() < MAX_BATCHES {
                    let c = &g[i];
                    i += 1;
                    match sh.storage.read_batch(&c.db, &origin, c.id) {
                        Ok(Some(b)) => {
                            size += crate::storage::approx_size(&b);
                            out.push(b);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!("reading batch {} for replication: {}", c.id, e.message)
                        }
                    }
                }
                (out, i)
            })
            .await;
            let Ok((batches, next)) = read else { break };
            at = next;
            if !batches.is_empty() {
                let timeout = Duration::from_millis(shared.cfg.replication.ack_timeout_ms);
                send_to_all(&shared, &live, batches, timeout).await;
            }
        }
    }
}

/// Sends one `Replicate` message to each member at once; returns, per
/// member, whether it confirmed every batch.
async fn send_to_all(
    shared: &Arc<Shared>,
    to: &[Member],
    batches: Vec<ReplBatch>,
    timeout: Duration,
) -> Vec<(Member, Result<(), String>)> {
    let n = batches.len();
    let msg = Arc::new(Rpc::Replicate(batches));
    let mut set = tokio::task::JoinSet::new();
    for m in to {
        let (sh, m, msg) = (shared.clone(), m.clone(), msg.clone());
        set.spawn(async move {
            let r = match tokio::time::timeout(timeout, sh.mesh.rpc(m.peer, &msg)).await {
                Err(_) => Err(format!("no answer in {} ms", timeout.as_millis())),
                Ok(Err(e)) => Err(e),
                Ok(Ok(Rpc::Replicated(results))) if results.len() == n => {
                    match results.into_iter().flatten().next() {
                        None => Ok(()),
                        Some(e) => Err(e),
                    }
                }
                Ok(Ok(Rpc::Failed { message, .. })) => Err(message),
                Ok(Ok(_)) => Err("an unexpected answer".into()),
            };
            if let Err(e) = &r {
                tracing::debug!("replicating to {}: {e}", m.name);
            }
            (m, r)
        });
    }
    set.join_all().await
}

async fn sync_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.cfg.replication.sync_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tick.tick() => {
                for m in live_members(&shared) {
                    match sync_with(&shared, m.peer).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!("pulled {n} missing batches from {}", m.name),
                        Err(e) => tracing::debug!("inventory exchange with {}: {e}", m.name),
                    }
                }
            }
        }
    }
}

/// One anti-entropy exchange with a member: compares inventories and pulls
/// every batch it holds and this node lacks. Returns how many were stored.
pub async fn sync_with(shared: &Arc<Shared>, peer: PeerId) -> Result<usize, String> {
    let theirs = match shared
        .mesh
        .rpc(peer, &Rpc::Inventory { tables: false })
        .await?
    {
        Rpc::Holdings { holdings, .. } => holdings,
        Rpc::Failed { message, .. } => return Err(message),
        _ => return Err("an unexpected answer".into()),
    };
    let mine: HashMap<String, Holding> = shared
        .storage
        .inventory()
        .into_iter()
        .map(|h| (h.origin.clone(), h))
        .collect();
    let mut stored = 0;
    for h in theirs {
        if h.batches == 0 || mine.get(&h.origin).is_some_and(|m| m.same_set(&h)) {
            continue;
        }
        // Pull until the peer has nothing more this node lacks; each round
        // is bounded by the message size, the rounds by the peer's count
        // (capped: the count is the peer's word).
        for _ in 0..=h.batches.min(MAX_ROUNDS) {
            let mut have = shared.storage.held(&h.origin);
            // Batches this node refused (their values do not fit its
            // columns) are not asked for again until it restarts; `tarn
            // cluster verify` shows them as a difference.
            if let Some(ids) = shared.refused.lock().expect("lock poisoned").get(&h.origin) {
                ids.iter().for_each(|id| {
                    crate::storage::insert_id(&mut have, *id);
                });
            }
            let msg = Rpc::Missing {
                origin: h.origin.clone(),
                have,
            };
            let batches = match shared.mesh.rpc(peer, &msg).await? {
                Rpc::Batches(b) => b,
                Rpc::Failed { message, .. } => return Err(message),
                _ => return Err("an unexpected answer".into()),
            };
            if batches.is_empty() {
                break;
            }
            if batches.iter().any(|b| b.origin.peer != h.origin) {
                return Err("a batch of another origin".into());
            }
            let from = peer.to_string();
            let (ok, failed) = blocking(shared, move |s| {
                let mut ok = 0;
                let mut failed = 0;
                for b in batches {
                    let (origin, id) = (b.origin.peer.clone(), b.origin.id);
                    match s.storage.write_replica(b, &from) {
                        Ok(w) if !w.duplicate => ok += 1,
                        Ok(_) => {}
                        Err(e) => {
                            failed += 1;
                            tracing::warn!(
                                "refusing batch {id} of {origin} from {from}: {}",
                                e.message
                            );
                            if e.status.is_client_error() {
                                let mut refused = s.refused.lock().expect("lock poisoned");
                                if refused.values().map(Vec::len).sum::<usize>() < MAX_REFUSED {
                                    refused.entry(origin).or_default().push(id);
                                }
                            }
                        }
                    }
                }
                Ok((ok, failed))
            })
            .await?;
            stored += ok;
            if failed > 0 {
                break;
            }
        }
    }
    Ok(stored)
}

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, String> {
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || f(&sh))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)
}

/// Answers the replication messages of `/tarn/rpc/1`.
pub async fn serve(shared: Arc<Shared>, from: PeerId, msg: Rpc) -> Rpc {
    let member = || members(&shared).iter().any(|m| m.peer == from);
    let refuse = || Rpc::Failed {
        code: "not_a_member".into(),
        message: "only members of this node's cluster may do that".into(),
    };
    match msg {
        Rpc::Replicate(batches) => {
            if !member() {
                return refuse();
            }
            if batches.len() > MAX_BATCHES {
                return Rpc::Failed {
                    code: "too_many_batches".into(),
                    message: format!("at most {MAX_BATCHES} batches per message"),
                };
            }
            let sh = shared.clone();
            let from = from.to_string();
            let r = tokio::task::spawn_blocking(move || {
                batches
                    .into_iter()
                    .map(|b| sh.storage.write_replica(b, &from).err().map(|e| e.message))
                    .collect()
            })
            .await;
            match r {
                Ok(v) => Rpc::Replicated(v),
                Err(e) => Rpc::Failed {
                    code: "internal".into(),
                    message: e.to_string(),
                },
            }
        }
        Rpc::Inventory { tables } => {
            let r = blocking(&shared, move |s| {
                let holdings = s.storage.inventory();
                let tables = if tables {
                    s.storage.table_counts()?
                } else {
                    Vec::new()
                };
                Ok((holdings, tables))
            })
            .await;
            match r {
                Ok((holdings, tables)) => Rpc::Holdings { holdings, tables },
                Err(message) => Rpc::Failed {
                    code: "internal".into(),
                    message,
                },
            }
        }
        Rpc::Missing { origin, mut have } => {
            if !member() {
                return refuse();
            }
            have.sort_unstable();
            match blocking(&shared, move |s| {
                s.storage.missing(&origin, &have, MESSAGE_BYTES)
            })
            .await
            {
                Ok(b) => Rpc::Batches(b),
                Err(message) => Rpc::Failed {
                    code: "internal".into(),
                    message,
                },
            }
        }
        _ => Rpc::Error("not a replication request".into()),
    }
}

/// For a `consistency=cluster` write: pushes the batch to every live member
/// now and says who confirmed it.
pub async fn confirm(
    shared: &Arc<Shared>,
    db: &str,
    w: &Written,
) -> Result<serde_json::Value, ApiError> {
    let Some(cluster) = shared.cfg.cluster.clone() else {
        return Ok(serde_json::json!({
            "cluster": null,
            "confirmed": [],
            "unconfirmed": [],
            "warning": "this node belongs to no cluster: the batch is stored here only",
        }));
    };
    let all = members(shared);
    let (live, down): (Vec<Member>, Vec<Member>) =
        all.into_iter().partition(|m| shared.mesh.alive(&m.peer));
    let mut confirmed = Vec::new();
    let mut unconfirmed: Vec<serde_json::Value> = down
        .iter()
        .map(|m| serde_json::json!({"name": m.name, "peer_id": m.peer.to_string(), "reason": "not connected"}))
        .collect();
    if !live.is_empty() {
        let (db, origin, id) = (db.to_owned(), w.origin.clone(), w.tsd_id);
        let parts = blocking(shared, move |s| s.storage.batch_parts(&db, &origin, id))
            .await
            .map_err(|e| ApiError::internal("reading the batch back", e))?;
        if parts.is_empty() {
            return Err(ApiError::internal(
                "reading the batch back",
                "it is not here",
            ));
        }
        // A large batch goes in several messages; a member confirms it when
        // it has taken every one.
        let timeout = Duration::from_millis(shared.cfg.replication.ack_timeout_ms);
        let mut failed: HashMap<PeerId, String> = HashMap::new();
        let mut message = Vec::new();
        let mut size = 0;
        let mut parts = parts.into_iter().peekable();
        while let Some(b) = parts.next() {
            size += crate::storage::approx_size(&b);
            message.push(b);
            if size >= MESSAGE_BYTES || parts.peek().is_none() {
                let to: Vec<Member> = live
                    .iter()
                    .filter(|m| !failed.contains_key(&m.peer))
                    .cloned()
                    .collect();
                for (m, r) in send_to_all(shared, &to, std::mem::take(&mut message), timeout).await
                {
                    if let Err(e) = r {
                        failed.insert(m.peer, e);
                    }
                }
                size = 0;
            }
        }
        for m in live {
            match failed.remove(&m.peer) {
                None => confirmed.push(m.name),
                Some(e) => unconfirmed.push(
                    serde_json::json!({"name": m.name, "peer_id": m.peer.to_string(), "reason": e}),
                ),
            }
        }
    }
    let none = confirmed.is_empty();
    let mut out = serde_json::json!({
        "cluster": cluster,
        "confirmed": confirmed,
        "unconfirmed": unconfirmed,
    });
    if none {
        out["warning"] = format!(
            "no other member of cluster {cluster:?} confirmed the batch: it is stored here only \
             until they catch up"
        )
        .into();
    }
    Ok(out)
}

/// `?consistency=` / the `consistency` header: `local` (default) or `cluster`.
pub fn wants_cluster(value: Option<&str>) -> Result<bool, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("local") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("cluster") => Ok(true),
        Some(v) => Err(ApiError::bad_request(
            "bad_consistency",
            format!("consistency must be \"local\" or \"cluster\", not {v:?}"),
        )),
    }
}

/// One member's answer to an inventory request, or why there is none.
async fn inventory_of(
    shared: &Arc<Shared>,
    peer: PeerId,
    tables: bool,
) -> Result<(Vec<Holding>, Vec<(String, String, i64)>), String> {
    if peer == shared.mesh.peer_id() {
        return blocking(shared, move |s| {
            let t = if tables {
                s.storage.table_counts()?
            } else {
                Vec::new()
            };
            Ok((s.storage.inventory(), t))
        })
        .await;
    }
    let msg = Rpc::Inventory { tables };
    let ask = shared.mesh.rpc(peer, &msg);
    // Short: a member behind a cut link not noticed yet must not stall
    // the whole report.
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Err(_) => Err("no answer in 3 s".into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Rpc::Holdings { holdings, tables })) => Ok((holdings, tables)),
        Ok(Ok(Rpc::Failed { message, .. })) => Err(message),
        Ok(Ok(_)) => Err("an unexpected answer".into()),
    }
}

/// `GET /v1/clusters` (and, with `verify`, `tarn cluster verify`): every
/// cluster, its members, their liveness, batches, rows and lag (batches a
/// member lacks that another member holds); `verify` also compares rows
/// per table and lists every difference.
pub async fn report(shared: &Arc<Shared>, verify: bool) -> serde_json::Value {
    let mut out = Vec::new();
    let mut all_ok = true;
    for (name, members) in clusters(shared) {
        let mut answers = Vec::new();
        for m in &members {
            let alive = shared.mesh.alive(&m.peer);
            let inv = if alive {
                Some(inventory_of(shared, m.peer, verify).await)
            } else {
                None
            };
            answers.push((m, alive, inv));
        }
        // The union of what the members that answered hold, per origin.
        let mut most: HashMap<String, (u64, i64)> = HashMap::new();
        for (_, _, inv) in &answers {
            if let Some(Ok((holdings, _))) = inv {
                for h in holdings {
                    let e = most.entry(h.origin.clone()).or_default();
                    *e = (e.0.max(h.batches), e.1.max(h.rows));
                }
            }
        }
        let mut listed = Vec::new();
        let mut differences = Vec::new();
        let reference = answers.iter().find_map(|(m, _, inv)| match inv {
            Some(Ok(x)) => Some((m.name.clone(), x.clone())),
            _ => None,
        });
        for (m, alive, inv) in &answers {
            let mut v = serde_json::json!({
                "name": m.name,
                "peer_id": m.peer.to_string(),
                "rest": m.rest,
                "alive": alive,
            });
            match inv {
                Some(Ok((holdings, tables))) => {
                    let mine: HashMap<&str, &Holding> =
                        holdings.iter().map(|h| (h.origin.as_str(), h)).collect();
                    let (mut lag, mut lag_rows) = (0u64, 0i64);
                    for (o, (n, rows)) in &most {
                        let (b, r) = mine.get(o.as_str()).map_or((0, 0), |h| (h.batches, h.rows));
                        lag = lag.saturating_add(n.saturating_sub(b));
                        lag_rows = lag_rows.saturating_add(rows.saturating_sub(r).max(0));
                    }
                    // Saturating: a peer's numbers are its word.
                    v["batches"] = holdings
                        .iter()
                        .fold(0u64, |a, h| a.saturating_add(h.batches))
                        .into();
                    v["rows"] = holdings
                        .iter()
                        .fold(0i64, |a, h| a.saturating_add(h.rows))
                        .into();
                    v["lag_batches"] = lag.into();
                    v["lag_rows"] = lag_rows.into();
                    v["produced"] = holdings
                        .iter()
                        .find(|h| h.origin == m.peer.to_string())
                        .map_or(0, |h| h.batches)
                        .into();
                    if verify && let Some((ref_name, (ref_h, ref_t))) = &reference {
                        diff(
                            ref_name,
                            ref_h,
                            ref_t,
                            &m.name,
                            holdings,
                            tables,
                            &mut differences,
                        );
                    }
                    if verify {
                        v["tables"] = tables
                            .iter()
                            .map(|(d, t, n)| serde_json::json!({"dbms": d, "table": t, "rows": n}))
                            .collect();
                    }
                }
                Some(Err(e)) => v["error"] = e.clone().into(),
                None => {}
            }
            listed.push(v);
        }
        let unreachable: Vec<&str> = answers
            .iter()
            .filter(|(_, _, inv)| !matches!(inv, Some(Ok(_))))
            .map(|(m, _, _)| m.name.as_str())
            .collect();
        let mut c = serde_json::json!({"cluster": name, "members": listed});
        if verify {
            let ok = differences.is_empty() && unreachable.is_empty();
            all_ok &= ok;
            c["consistent"] = ok.into();
            c["differences"] = differences.into();
            c["not_compared"] = unreachable.into();
        }
        out.push(c);
    }
    if verify {
        serde_json::json!({"consistent": all_ok, "clusters": out})
    } else {
        serde_json::json!({"clusters": out})
    }
}

/// Every way member `b`'s inventory and row counts differ from `a`'s.
fn diff(
    a_name: &str,
    a: &[Holding],
    a_tables: &[(String, String, i64)],
    b_name: &str,
    b: &[Holding],
    b_tables: &[(String, String, i64)],
    out: &mut Vec<String>,
) {
    let bh: HashMap<&str, &Holding> = b.iter().map(|h| (h.origin.as_str(), h)).collect();
    let ah: HashMap<&str, &Holding> = a.iter().map(|h| (h.origin.as_str(), h)).collect();
    for h in a {
        match bh.get(h.origin.as_str()) {
            Some(x) if x.same_set(h) => {}
            Some(x) => out.push(format!(
                "batches of {}: {a_name} holds {} (up to id {}), {b_name} holds {} (up to id {})",
                h.name, h.batches, h.max_id, x.batches, x.max_id
            )),
            None => out.push(format!(
                "batches of {}: {a_name} holds {}, {b_name} none",
                h.name, h.batches
            )),
        }
    }
    for h in b {
        if !ah.contains_key(h.origin.as_str()) {
            out.push(format!(
                "batches of {}: {b_name} holds {}, {a_name} none",
                h.name, h.batches
            ));
        }
    }
    let bt: HashMap<(&str, &str), i64> = b_tables
        .iter()
        .map(|(d, t, n)| ((d.as_str(), t.as_str()), *n))
        .collect();
    for (d, t, n) in a_tables {
        let other = bt.get(&(d.as_str(), t.as_str())).copied().unwrap_or(0);
        if other != *n {
            out.push(format!("{d}.{t}: {a_name} has {n} rows, {b_name} {other}"));
        }
    }
    for (d, t, n) in b_tables {
        if !a_tables.iter().any(|(x, y, _)| x == d && y == t) {
            out.push(format!("{d}.{t}: {b_name} has {n} rows, {a_name} none"));
        }
    }
}
