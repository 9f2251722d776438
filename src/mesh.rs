//! The node in the mesh: its identity, the ledger replica, and the glue
//! between `tarn-net` and `tarn-ledger` — gossip of new entries,
//! anti-entropy on connect and periodically, and the node's own policies.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tarn_ledger::entry::Entry;
use tarn_ledger::policy::Policy;
use tarn_ledger::{AppendError, Author, Ledger, Op, VerifiedEntry};
use tarn_net::{Event, Keypair, Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// The gossip topic of ledger entries.
pub const LEDGER_TOPIC: &str = "tarn/ledger/1";
/// Largest RPC message accepted: a batch of entries
/// ([`tarn_ledger::MAX_BATCH_BYTES`] plus one entry) with room to spare.
pub(crate) const MAX_RPC: usize = 8 << 20;
const _: () = assert!(tarn_ledger::MAX_BATCH_BYTES + tarn_ledger::entry::MAX_ENTRY_BYTES < MAX_RPC);
/// How often each node compares heads with a few peers.
const SYNC_EVERY: Duration = Duration::from_secs(3);

/// Loads the node's key from `<data>/identity.key`, creating it on first start.
pub fn identity(data_dir: &Path) -> anyhow::Result<([u8; 32], Keypair)> {
    let path = data_dir.join("identity.key");
    let secret: [u8; 32] = match std::fs::read(&path) {
        Ok(b) => b
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let ed = kp
                .try_into_ed25519()
                .expect("an ed25519 key was just generated");
            let mut secret = [0u8; 32];
            secret.copy_from_slice(ed.secret().as_ref());
            write_private(&path, &secret)?;
            secret
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let kp =
        Keypair::ed25519_from_bytes(secret).map_err(|e| anyhow::anyhow!("identity key: {e}"))?;
    Ok((secret, kp))
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The PeerId of a ledger author (same ed25519 key).
pub fn peer_of(author: &Author) -> Option<PeerId> {
    let pk = tarn_net::identity::ed25519::PublicKey::try_from_bytes(&author.0).ok()?;
    Some(tarn_net::PublicKey::from(pk).to_peer_id())
}

/// Messages of `/tarn/rpc/1` (CBOR).
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// Per-author heads, sent to start anti-entropy; answered with the peer's.
    Heads(Vec<(Author, u64)>),
    /// Entries of one author from a sequence number on.
    Fetch {
        author: Author,
        from: u64,
    },
    Entries(Vec<serde_bytes::ByteBuf>),
    Error(String),
    /// Run a partial query (a groups scan or a rows query) on this operator;
    /// answered with the first [`crate::scatter::Chunk`].
    Partial {
        db: String,
        sql: String,
        groups: bool,
        timeout_ms: u64,
    },
    /// Run a whole network query for a client; answered like `Partial`.
    Query {
        db: String,
        sql: String,
        subset: bool,
        timeout_ms: u64,
    },
    /// The next chunk of a query in progress.
    Next {
        cursor: u64,
    },
    Chunk(crate::scatter::Chunk),
    /// A query failed, with a stable code (`sql_error`, `unknown_table`, ...).
    Failed {
        code: String,
        message: String,
    },
    /// Batches a member of this node's cluster produced; answered with
    /// `Replicated` (per batch: `None` once held here, or why not).
    Replicate(Vec<crate::storage::ReplBatch>),
    Replicated(Vec<Option<String>>),
    /// What batches this node holds, per origin (and rows per table when
    /// `tables`); answered with `Holdings`.
    Inventory {
        tables: bool,
    },
    Holdings {
        holdings: Vec<crate::storage::Holding>,
        tables: Vec<(String, String, i64)>,
    },
    /// The batches of `origin` this node holds beyond `have`; answered with
    /// `Batches` (empty: nothing more).
    Missing {
        origin: String,
        have: crate::storage::Ranges,
    },
    Batches(Vec<crate::storage::ReplBatch>),
    /// Store a batch (from a publisher or a libp2p client); answered with
    /// `Ingested` or `Failed`.
    Ingest {
        db: String,
        table: String,
        source: String,
        hash: String,
        body: serde_bytes::ByteBuf,
    },
    Ingested {
        rows: u64,
        batch: i64,
        duplicate: bool,
    },
}

/// What the node knows about a peer's connection.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub connected: bool,
    pub last_seen: Instant,
    pub addrs: Vec<Multiaddr>,
}

/// Traffic counters (message bodies, not transport overhead).
#[derive(Debug, Default)]
pub struct MeshStats {
    pub gossip_in_msgs: std::sync::atomic::AtomicU64,
    pub gossip_in_bytes: std::sync::atomic::AtomicU64,
    pub rpc_in_msgs: std::sync::atomic::AtomicU64,
    pub rpc_in_bytes: std::sync::atomic::AtomicU64,
}

/// The mesh side of a node.
pub struct Mesh {
    pub net: tarn_net::Client,
    pub stats: MeshStats,
    /// Peers an anti-entropy run is in progress with: one at a time each,
    /// or syncs triggered by gaps and answers would multiply.
    syncing: Mutex<std::collections::HashSet<PeerId>>,
    pub ledger: Arc<Mutex<Ledger>>,
    key: SigningKey,
    pub peers: Mutex<HashMap<PeerId, PeerState>>,
    pub listen: Mutex<Vec<Multiaddr>>,
    /// The node, for the messages that need more than the ledger (queries);
    /// set once the node is built.
    pub node: std::sync::OnceLock<std::sync::Weak<crate::node::Shared>>,
}

impl Mesh {
    pub fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    pub fn author(&self) -> Author {
        Author(self.key.verifying_key().to_bytes())
    }

    /// Signs and publishes a policy; supersedes `old` (an id of this node's).
    pub async fn publish(
        self: &Arc<Self>,
        policy: &Policy,
        supersedes: Option<String>,
    ) -> Result<VerifiedEntry, ApiError> {
        let op = Op::Put {
            policy: String::from_utf8(policy.canonical()).expect("canonical JSON is UTF-8"),
            supersedes,
        };
        self.append(op).await
    }

    async fn append(self: &Arc<Self>, op: Op) -> Result<VerifiedEntry, ApiError> {
        let me = self.clone();
        let e = tokio::task::spawn_blocking(move || {
            let mut l = me.ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.append_local(&me.key, op, now_ms())
        })
        .await
        .map_err(|e| ApiError::internal("writing the ledger", e))?
        .map_err(|e| ApiError::internal("writing the ledger", e))?;
        if let Err(e) = self.net.publish(LEDGER_TOPIC, e.bytes().to_vec()).await {
            // Anti-entropy delivers it later.
            tracing::debug!("gossiping a ledger entry: {e}");
        }
        Ok(e)
    }

    /// Applies an entry from a peer; on a gap, syncs with that peer.
    async fn receive(self: &Arc<Self>, bytes: Vec<u8>, from: Option<PeerId>) {
        let e = match Entry::verify_bytes(&bytes) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!("dropping a ledger entry from {from:?}: {err}");
                return;
            }
        };
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            me.ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(&e)
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(AppendError::Gap { .. })) => {
                if let Some(p) = from {
                    let me = self.clone();
                    tokio::spawn(async move { me.sync_with(p).await });
                }
            }
            Ok(Err(err)) => tracing::warn!("refusing a ledger entry from {from:?}: {err}"),
            Err(err) => tracing::error!("applying a ledger entry: {err}"),
        }
    }

    /// Anti-entropy with one peer: exchange heads, fetch what is missing.
    /// Returns at once if a run with that peer is already going on.
    pub async fn sync_with(self: &Arc<Self>, peer: PeerId) {
        if !self.syncing.lock().expect("lock poisoned").insert(peer) {
            return;
        }
        self.sync_once(peer).await;
        self.syncing.lock().expect("lock poisoned").remove(&peer);
    }

    async fn sync_once(self: &Arc<Self>, peer: PeerId) {
        let heads = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heads();
        let Some(Rpc::Heads(theirs)) = self.call(peer, &Rpc::Heads(heads)).await else {
            return;
        };
        let wants = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wants(&theirs);
        for (author, mut from) in wants {
            loop {
                let Some(Rpc::Entries(batch)) = self.call(peer, &Rpc::Fetch { author, from }).await
                else {
                    break;
                };
                if batch.is_empty() {
                    break;
                }
                let n = batch.len() as u64;
                let me = self.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    let mut l = me.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    for b in batch {
                        let e = Entry::verify_bytes(&b).map_err(|e| e.to_string())?;
                        if e.entry().author != author {
                            return Err("an entry of another author".to_owned());
                        }
                        l.apply(&e).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
                .await;
                match ok {
                    Ok(Ok(())) => from += n,
                    Ok(Err(e)) => {
                        tracing::warn!("sync with {peer}: {e}");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    async fn call(&self, peer: PeerId, msg: &Rpc) -> Option<Rpc> {
        let data = tarn_net::codec::encode(msg, MAX_RPC).ok()?;
        match self.net.request(peer, data).await {
            Ok(bytes) => match tarn_net::codec::decode::<Rpc>(&bytes, MAX_RPC) {
                Ok(Rpc::Error(e)) => {
                    tracing::debug!("{peer} answered: {e}");
                    None
                }
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("a malformed answer from {peer}: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::debug!("request to {peer}: {e}");
                None
            }
        }
    }

    /// A request to a peer and its answer, or why there is none.
    pub async fn rpc(&self, peer: PeerId, msg: &Rpc) -> Result<Rpc, String> {
        let data = tarn_net::codec::encode(msg, MAX_RPC).map_err(|e| e.to_string())?;
        let bytes = self
            .net
            .request(peer, data)
            .await
            .map_err(|e| e.to_string())?;
        tarn_net::codec::decode::<Rpc>(&bytes, MAX_RPC)
            .map_err(|e| format!("a malformed answer: {e}"))
    }

    async fn answer(self: &Arc<Self>, from: PeerId, id: u64, data: Vec<u8>) {
        let reply = match tarn_net::codec::decode::<Rpc>(&data, MAX_RPC) {
            Ok(msg @ (Rpc::Partial { .. } | Rpc::Query { .. } | Rpc::Next { .. })) => {
                match self.node.get().and_then(std::sync::Weak::upgrade) {
                    Some(shared) => crate::scatter::serve(shared, from, msg).await,
                    None => Rpc::Error("the node is starting or stopping".into()),
                }
            }
            Ok(msg @ (Rpc::Replicate(_) | Rpc::Inventory { .. } | Rpc::Missing { .. })) => {
                match self.node.get().and_then(std::sync::Weak::upgrade) {
                    Some(shared) => crate::replicate::serve(shared, from, msg).await,
                    None => Rpc::Error("the node is starting or stopping".into()),
                }
            }
            Ok(msg @ Rpc::Ingest { .. }) => {
                match self.node.get().and_then(std::sync::Weak::upgrade) {
                    Some(shared) => crate::publish::serve_ingest(shared, msg).await,
                    None => Rpc::Error("the node is starting or stopping".into()),
                }
            }
            Err(e) => Rpc::Error(format!("malformed request: {e}")),
            Ok(Rpc::Heads(theirs)) => {
                let (mine, wants) = {
                    let l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    (l.heads(), l.wants(&theirs))
                };
                // They have what we lack: pull it too (unless already pulling).
                if !wants.is_empty() && !self.syncing.lock().expect("lock poisoned").contains(&from)
                {
                    let me = self.clone();
                    tokio::spawn(async move { me.sync_with(from).await });
                }
                Rpc::Heads(mine)
            }
            Ok(Rpc::Fetch { author, from: seq }) => {
                let me = self.clone();
                let r = tokio::task::spawn_blocking(move || {
                    me.ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entries_from(&author, seq, tarn_ledger::MAX_BATCH)
                })
                .await;
                match r {
                    Ok(Ok(v)) => {
                        Rpc::Entries(v.into_iter().map(serde_bytes::ByteBuf::from).collect())
                    }
                    _ => Rpc::Error("the ledger could not be read".into()),
                }
            }
            Ok(_) => Rpc::Error("not a request".into()),
        };
        let bytes = tarn_net::codec::encode(&reply, MAX_RPC).or_else(|e| {
            tracing::warn!("an answer to {from} did not fit: {e}");
            tarn_net::codec::encode(&Rpc::Error("the answer is too large".into()), MAX_RPC)
        });
        if let Ok(bytes) = bytes {
            let _ = self.net.respond(id, bytes).await;
        }
    }

    /// Reads the policies in force without copying them (the ledger stays
    /// locked while `f` runs: keep it short).
    pub fn with_view<R>(&self, f: impl FnOnce(&tarn_ledger::View) -> R) -> R {
        f(self.ledger.lock().unwrap_or_else(|p| p.into_inner()).view())
    }

    /// The policies currently in force (a copy).
    pub fn view(&self) -> tarn_ledger::View {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view()
            .clone()
    }

    /// Whether a peer answers a request (a heads exchange).
    pub async fn ping(&self, peer: PeerId) -> bool {
        let heads = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heads();
        matches!(
            self.call(peer, &Rpc::Heads(heads)).await,
            Some(Rpc::Heads(_))
        )
    }

    /// Listen addresses with `/p2p/<peer-id>`, loopback last.
    pub fn full_listen_addrs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .listen
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|a| format!("{a}/p2p/{}", self.peer_id()))
            .collect();
        v.sort_by_key(|a| a.contains("/127.0.0.1/"));
        v
    }

    /// Whether a peer is connected now (this node counts as alive).
    pub fn alive(&self, peer: &PeerId) -> bool {
        *peer == self.peer_id()
            || self
                .peers
                .lock()
                .expect("lock poisoned")
                .get(peer)
                .is_some_and(|p| p.connected)
    }
}

/// Starts the network and the mesh tasks.
pub async fn start(
    data_dir: &Path,
    net_cfg: tarn_net::Config,
    secret: [u8; 32],
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Arc<Mesh>> {
    let ledger = {
        let path = data_dir.join("ledger.redb");
        tokio::task::spawn_blocking(move || Ledger::open(&path)).await??
    };
    let (net, events) = tarn_net::start(net_cfg).await?;
    net.publish(LEDGER_TOPIC, Vec::new()).await.ok();
    let mesh = Arc::new(Mesh {
        net,
        ledger: Arc::new(Mutex::new(ledger)),
        key: SigningKey::from_bytes(&secret),
        peers: Mutex::new(HashMap::new()),
        listen: Mutex::new(Vec::new()),
        stats: MeshStats::default(),
        syncing: Mutex::new(std::collections::HashSet::new()),
        node: std::sync::OnceLock::new(),
    });
    tokio::spawn(run(mesh.clone(), events, stop));
    Ok(mesh)
}

/// Most peer messages handled at once; the event loop waits for a free slot
/// (and the network loop behind it for room in the event channel).
const MAX_HANDLERS: usize = 256;

async fn run(
    mesh: Arc<Mesh>,
    mut events: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDLERS));
    let spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let slots = slots.clone();
        async move {
            if let Ok(permit) = slots.acquire_owned().await {
                tokio::spawn(async move {
                    f.await;
                    drop(permit);
                });
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Listening(a) => mesh.listen.lock().expect("lock poisoned").push(a),
                    Event::Connected(p) => {
                        mesh.peers.lock().expect("lock poisoned").insert(p, PeerState { connected: true, last_seen: Instant::now(), addrs: Vec::new() });
                        let m = mesh.clone();
                        spawn(Box::pin(async move { m.sync_with(p).await })).await;
                    }
                    Event::Disconnected(p) => {
                        if let Some(s) = mesh.peers.lock().expect("lock poisoned").get_mut(&p) {
                            s.connected = false;
                            s.last_seen = Instant::now();
                        }
                    }
                    Event::Gossip { from, topic, data } if topic == LEDGER_TOPIC && !data.is_empty() => {
                        use std::sync::atomic::Ordering::Relaxed;
                        mesh.stats.gossip_in_msgs.fetch_add(1, Relaxed);
                        mesh.stats.gossip_in_bytes.fetch_add(data.len() as u64, Relaxed);
                        if let Some(p) = from
                            && let Some(s) = mesh.peers.lock().expect("lock poisoned").get_mut(&p)
                        {
                            s.last_seen = Instant::now();
                        }
                        let m = mesh.clone();
                        spawn(Box::pin(async move { m.receive(data, from).await })).await;
                    }
                    Event::Gossip { .. } => {}
                    Event::Request { from, id, data } => {
                        use std::sync::atomic::Ordering::Relaxed;
                        mesh.stats.rpc_in_msgs.fetch_add(1, Relaxed);
                        mesh.stats.rpc_in_bytes.fetch_add(data.len() as u64, Relaxed);
                        let m = mesh.clone();
                        spawn(Box::pin(async move { m.answer(from, id, data).await })).await;
                    }
                }
            }
            _ = tick.tick() => {
                let peers: Vec<PeerId> = mesh.peers.lock().expect("lock poisoned").iter().filter(|(_, s)| s.connected).map(|(p, _)| *p).collect();
                // A few peers each round: enough to repair, cheap at any size.
                let start = (crate::storage::now_micros() as usize) % peers.len().max(1);
                for p in peers.iter().cycle().skip(start).take(peers.len().min(3)) {
                    let m = mesh.clone();
                    let p = *p;
                    spawn(Box::pin(async move { m.sync_with(p).await })).await;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    (crate::storage::now_micros() / 1000).max(0) as u64
}

/// Publishes (or supersedes) this node's own policies: one per service it
/// runs, naming it by PeerId, never by IP.
pub async fn publish_self(shared: &crate::node::Shared) -> anyhow::Result<()> {
    let mesh = &shared.mesh;
    let me = mesh.author();
    let view = mesh.view();
    for service in &shared.cfg.services {
        let kind = service.name();
        let mut body = serde_json::json!({
            "name": shared.cfg.name,
            "peer_id": mesh.peer_id().to_string(),
            "services": shared.cfg.services,
            "rest": shared.rest_addr.to_string(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(c) = &shared.cfg.cluster {
            body["cluster"] = c.clone().into();
        }
        let policy = Policy::from_value(serde_json::json!({ kind: body }))
            .map_err(|e| anyhow::anyhow!("building the node policy: {e}"))?;
        let mine: Vec<String> = view
            .of_kind(kind)
            .filter(|p| p.author == me)
            .map(|p| p.id.clone())
            .collect();
        if mine.contains(&policy.id()) {
            continue;
        }
        mesh.publish(&policy, mine.first().cloned())
            .await
            .map_err(|e| anyhow::anyhow!("publishing the node policy: {}", e.message))?;
        for old in mine.iter().skip(1) {
            mesh.append(Op::Revoke { id: old.clone() })
                .await
                .map_err(|e| anyhow::anyhow!("revoking an old node policy: {}", e.message))?;
        }
    }
    // The cluster itself: every member writes the same body, so it is one
    // policy; its members are the operators whose policies name it.
    if let (true, Some(c)) = (
        shared.cfg.has(crate::Service::Operator),
        &shared.cfg.cluster,
    ) {
        let policy = Policy::from_value(serde_json::json!({"cluster": {"name": c}}))
            .map_err(|e| anyhow::anyhow!("building the cluster policy: {e}"))?;
        if view.get(&policy.id()).is_none() {
            mesh.publish(&policy, None)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the cluster policy: {}", e.message))?;
        }
    }
    Ok(())
}

/// The cluster an operator's tables belong to: its configured cluster, or a
/// cluster of its own named after its PeerId.
pub fn cluster_of(shared: &crate::node::Shared) -> String {
    shared
        .cfg
        .cluster
        .clone()
        .unwrap_or_else(|| format!("node-{}", shared.mesh.peer_id()))
}

/// Announces every local table not yet in the ledger as a `table` policy
/// `{"table": {"dbms", "name", "cluster"}}`. Operators of one cluster write
/// the same body, so it is one policy however many of them announce it.
pub async fn announce_tables(shared: &crate::node::Shared) {
    if !shared.cfg.has(crate::Service::Operator) {
        return;
    }
    let cluster = cluster_of(shared);
    let view = shared.mesh.view();
    for (db, table) in shared.storage.user_tables() {
        let p = serde_json::json!({"table": {"dbms": db, "name": table, "cluster": cluster}});
        let Ok(policy) = Policy::from_value(p) else {
            continue;
        };
        if view.get(&policy.id()).is_some() {
            continue;
        }
        if let Err(e) = shared.mesh.publish(&policy, None).await {
            tracing::warn!("announcing table {db}.{table}: {}", e.message);
        }
    }
}

/// Every node the ledger knows, by PeerId, with liveness and addresses;
/// two nodes claiming one name are both listed and flagged.
pub async fn node_list(s: &crate::node::Shared) -> Vec<serde_json::Value> {
    let view = s.mesh.view();
    let connected: std::collections::HashMap<String, Vec<String>> = s
        .mesh
        .net
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.peer_id.to_string(),
                p.addrs.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect();
    let peers = s.mesh.peers.lock().expect("lock poisoned").clone();
    let me = s.mesh.peer_id().to_string();
    let mut by_peer: std::collections::BTreeMap<String, serde_json::Value> =
        std::collections::BTreeMap::new();
    let mut names: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
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
            let entry = by_peer.entry(peer.to_owned()).or_insert_with(|| {
                let peer_id: Option<tarn_net::PeerId> = peer.parse().ok();
                let alive = peer == me || connected.contains_key(peer);
                let last_seen = peer_id
                    .and_then(|id| peers.get(&id))
                    .map(|st| st.last_seen.elapsed().as_secs());
                serde_json::json!({
                    "name": body["name"],
                    "peer_id": peer,
                    "services": body["services"],
                    "cluster": body.get("cluster").cloned().unwrap_or(serde_json::Value::Null),
                    "rest": body["rest"],
                    "alive": alive,
                    "addresses": connected.get(peer).cloned().unwrap_or_else(|| if peer == me { s.mesh.full_listen_addrs() } else { Vec::new() }),
                    "last_seen_s_ago": if peer == me || alive { Some(0) } else { last_seen },
                })
            });
            let _ = entry;
            if let Some(n) = body["name"].as_str() {
                let v = names.entry(n.to_owned()).or_default();
                if !v.iter().any(|x| x == peer) {
                    v.push(peer.to_owned());
                }
            }
        }
    }
    // Two nodes claiming one name: both shown, both flagged.
    for v in by_peer.values_mut() {
        let dup = v["name"]
            .as_str()
            .and_then(|n| names.get(n))
            .is_some_and(|peers| peers.len() > 1);
        v["name_conflict"] = dup.into();
    }
    by_peer.into_values().collect()
}
