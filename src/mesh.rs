//! The node in the mesh: its identity, the ledger replica, gossip of new
//! entries, anti-entropy, and the dispatch of peers' requests to the
//! handlers the node registered for each message family.
//!
//! - `identity`: the node's key; who a ledger author is
//! - `dispatch`: the loop over the network's events; [`Router`] and [`Serve`]
//! - `ledger_sync`: gossip in, anti-entropy (digests, heads, fetches), the ledger's handler
//! - `liveness`: who is up, as a sans-I/O table of signed records and suspicions
//! - `presence`: that table driven (rumors, probes, pulls, its tick)
//!
//! Uses `proto` (messages), `clock` and `error`; knows none of the services
//! above it: they register with the [`Router`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tarn_ledger::policy::Policy;
use tarn_ledger::{Author, Ledger, Op, VerifiedEntry};
use tarn_net::{Multiaddr, PeerId};

mod dispatch;
mod identity;
mod ledger_sync;
pub mod liveness;
mod presence;
pub mod sim;

pub use dispatch::{Events, Router, SYNC_EVERY, Serve};
pub use identity::{
    author_of, create_key_file, keypair_of, load_or_create as identity, peer_of, read_key_file,
};

use crate::clock::SharedClock;
use crate::error::{Code, Coded};
use crate::proto::{self, WireError};

/// The gossip topic of ledger entries.
pub const LEDGER_TOPIC: &str = "tarn/ledger/1";

/// Policies clients may publish through one node per second, on average
/// (a burst of [`POLICY_BURST`] first): every node stores every policy.
pub const POLICY_RATE: u32 = 10;
const POLICY_BURST: f64 = 100.0;

/// Own entries kept for gossip while no peer is subscribed.
const MAX_UNSENT: usize = 256;

/// Most strangers kept on the block list at once.
const MAX_SHUT_OUT: usize = 4096;

/// What the node knows about a peer's connection.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub connected: bool,
    pub last_seen: Instant,
}

/// Traffic counters (message bodies, not transport overhead).
#[derive(Debug, Default)]
pub struct MeshStats {
    pub gossip_in_msgs: AtomicU64,
    pub gossip_in_bytes: AtomicU64,
    /// Of `gossip_in_msgs`, the liveness rumors.
    pub rumors_in_msgs: AtomicU64,
    pub rpc_in_msgs: AtomicU64,
    pub rpc_in_bytes: AtomicU64,
    /// Links opened (the first connection with a peer), since start.
    pub links_opened: AtomicU64,
}

/// Why a request to a peer has no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The peer could not be reached, or the request failed on the way.
    #[error("{0}")]
    Net(String),
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(WireError),
    /// The peer's answer could not be read.
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

impl Coded for CallError {
    fn code(&self) -> Code {
        match self {
            CallError::Remote(e) => e.code,
            CallError::Net(_) | CallError::Malformed(_) => Code::Internal,
        }
    }
}

/// Why a policy could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("this node is not a member of its network yet: an admin must admit it")]
    NotAdmitted,
    #[error("this node has written its share of the network's ledger ({} MiB)", tarn_ledger::MAX_AUTHOR_BYTES >> 20)]
    Quota,
    #[error("more than {POLICY_RATE} policies a second from clients: try again shortly")]
    TooFast,
    #[error("writing the ledger: {0}")]
    Ledger(String),
}

impl Coded for PublishError {
    fn code(&self) -> Code {
        match self {
            PublishError::NotAdmitted => Code::NotAdmitted,
            PublishError::Quota | PublishError::TooFast => Code::QuotaExceeded,
            PublishError::Ledger(_) => Code::Internal,
        }
    }
}

/// The mesh side of a node.
pub struct Mesh {
    net: tarn_net::Client,
    pub stats: MeshStats,
    /// Peers an anti-entropy run is in progress with: one at a time each,
    /// or syncs triggered by gaps and answers would multiply.
    syncing: Mutex<HashSet<PeerId>>,
    ledger: Arc<Mutex<Ledger>>,
    key: SigningKey,
    peers: Mutex<HashMap<PeerId, PeerState>>,
    listen: Mutex<Vec<Multiaddr>>,
    clock: SharedClock,
    /// The closed network's root key; `None`: open.
    network: Option<Author>,
    /// The members' keys (root included), refreshed when the ledger's
    /// members change: read for every peer message, so never the ledger's lock.
    members: std::sync::RwLock<HashSet<Author>>,
    /// Peers shut out because they are not members (closed networks).
    shut_out: Mutex<HashSet<PeerId>>,
    /// The members epoch the connections were last checked against.
    enforced: AtomicU64,
    /// Clients' policies: tokens left and when they were counted.
    policy_bucket: Mutex<(f64, Instant)>,
    /// Where ledger changes and refused peers are recorded.
    audit: std::sync::OnceLock<crate::audit::Sink>,
    /// Who is up (see `presence`).
    liveness: Mutex<liveness::Table>,
    /// This node's record is still to be gossiped to at least one peer.
    announce: std::sync::atomic::AtomicBool,
    /// Peers whose links are kept when trimming (its cluster's members).
    kept: Mutex<HashSet<PeerId>>,
    /// When each peer was last probed (see `presence`).
    probed: Mutex<HashMap<PeerId, Instant>>,
    /// When the liveness table and the ledger heads were last exchanged whole.
    full_syncs: Mutex<[Option<Instant>; 2]>,
    /// Own entries no peer took yet (see `gossip_entry`).
    unsent: Mutex<std::collections::VecDeque<Vec<u8>>>,
    /// When this node started (ms): what anti-entropy repairs is passed on
    /// only if it is newer (see `presence::news`).
    started_ms: u64,
}

impl Mesh {
    /// Opens the ledger under `data_dir` and starts the network. Peers'
    /// messages wait in the returned [`Events`] until a [`Router`] runs.
    pub async fn start(
        data_dir: &Path,
        net_cfg: tarn_net::Config,
        secret: [u8; 32],
        clock: SharedClock,
        network: Option<Author>,
    ) -> anyhow::Result<(Arc<Mesh>, Events)> {
        let ledger = {
            let path = data_dir.join("ledger.redb");
            tokio::task::spawn_blocking(move || Ledger::open_network(&path, network)).await??
        };
        let (net, events) = tarn_net::start(net_cfg).await?;
        net.publish(LEDGER_TOPIC, Vec::new()).await.ok();
        net.publish(proto::liveness::TOPIC, Vec::new()).await.ok();
        let key = SigningKey::from_bytes(&secret);
        // The wall clock at start: a restarted node outranks its past self.
        let started_ms = clock.now_ms();
        let table = liveness::Table::new(key.clone(), started_ms, Vec::new());
        let mesh = Arc::new(Mesh {
            net,
            ledger: Arc::new(Mutex::new(ledger)),
            key,
            peers: Mutex::new(HashMap::new()),
            listen: Mutex::new(Vec::new()),
            stats: MeshStats::default(),
            syncing: Mutex::new(HashSet::new()),
            clock,
            network,
            members: std::sync::RwLock::new(HashSet::new()),
            shut_out: Mutex::new(HashSet::new()),
            enforced: AtomicU64::new(u64::MAX),
            policy_bucket: Mutex::new((POLICY_BURST, Instant::now())),
            audit: std::sync::OnceLock::new(),
            liveness: Mutex::new(table),
            announce: std::sync::atomic::AtomicBool::new(true),
            kept: Mutex::new(HashSet::new()),
            probed: Mutex::new(HashMap::new()),
            full_syncs: Mutex::new([None, None]),
            unsent: Mutex::new(std::collections::VecDeque::new()),
            started_ms,
        });
        mesh.refresh_members();
        Ok((mesh, Events(events)))
    }

    pub fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    pub fn author(&self) -> Author {
        Author(self.key.verifying_key().to_bytes())
    }

    /// The network loop's handle (links are cut through it in tests).
    pub fn net(&self) -> &tarn_net::Client {
        &self.net
    }

    /// Records ledger changes and refused peers in `sink` from now on.
    pub fn set_audit(&self, sink: crate::audit::Sink) {
        let _ = self.audit.set(sink);
    }

    fn record(&self, who: &str, what: String, source: &str, outcome: &str) {
        if let Some(s) = self.audit.get() {
            s.record(crate::audit::Event::now(who, what, source, outcome));
        }
    }

    /// Records an entry the ledger took, from `source` (a peer, or `local`).
    pub(crate) fn audit_entry(&self, e: &VerifiedEntry, source: &str) {
        let what = match &e.entry().op {
            Op::Put { .. } => match e.policy() {
                Some(p) => format!("policy {} {}", p.kind(), p.id()),
                None => "policy".to_owned(),
            },
            Op::Revoke { id } => format!("revoke {id}"),
        };
        let who = format!(
            "peer:{}",
            tarn_ledger::member::peer_id_of(&e.entry().author)
        );
        self.record(&who, what, source, "applied");
    }

    /// The closed network's root key; `None` when the network is open.
    pub fn network(&self) -> Option<Author> {
        self.network
    }

    /// Whether a peer may take part: any peer in an open network; in a
    /// closed one, the members (by a `member` policy in force).
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.network.is_none()
            || author_of(peer).is_some_and(|a| {
                self.members
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&a)
            })
    }

    /// Whether this node itself is a member (always, in an open network).
    pub fn admitted(&self) -> bool {
        self.network.is_none()
            || self
                .members
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&self.author())
    }

    /// Reads the members from the ledger's view if they changed since the
    /// last time; returns whether they did.
    fn refresh_members(&self) -> bool {
        let Some(root) = self.network else {
            return false;
        };
        let epoch = self.with_view(|v| v.members_epoch());
        if self.enforced.swap(epoch, Ordering::SeqCst) == epoch {
            return false;
        }
        let set: HashSet<Author> = self.with_view(|v| {
            std::iter::once(root)
                .chain(v.members().map(|m| m.author))
                .collect()
        });
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = set;
        true
    }

    /// After the members changed: closes the connections of peers that are
    /// not members any more and lets back in those that now are. A node
    /// that is not yet a member itself shuts nobody out (it is still
    /// learning the ledger from the peers it dialled).
    pub(super) async fn enforce_members(&self) {
        if !self.refresh_members() || !self.admitted() {
            return;
        }
        let connected: Vec<PeerId> = self
            .peer_states()
            .into_iter()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| p)
            .collect();
        for p in connected {
            self.shut_out_unless_admitted(p).await;
        }
        let back: Vec<PeerId> = {
            let out = self.shut_out.lock().expect("lock poisoned");
            out.iter().filter(|p| self.admits(p)).copied().collect()
        };
        for p in back {
            self.shut_out.lock().expect("lock poisoned").remove(&p);
            tracing::info!("{p} is a member again: letting it back in");
            let _ = self.net.set_blocked(p, false).await;
        }
    }

    /// Closes every connection of `peer` and refuses new ones, unless it
    /// is a member (or this node is not one yet). Returns whether it was shut out.
    pub(super) async fn shut_out_unless_admitted(&self, peer: PeerId) -> bool {
        if self.admits(&peer) || !self.admitted() {
            return false;
        }
        let evicted = {
            let mut out = self.shut_out.lock().expect("lock poisoned");
            if !out.insert(peer) {
                None
            } else {
                tracing::warn!("{peer} is not a member of this network: connection refused");
                let p = peer.to_string();
                self.record(
                    &format!("peer:{p}"),
                    "connection".into(),
                    &p,
                    "not_admitted",
                );
                // Strangers can make keys without end: the list is bounded,
                // and one let go is only shut out again when it comes back.
                let old = (out.len() > MAX_SHUT_OUT)
                    .then(|| out.iter().find(|p| **p != peer).copied())
                    .flatten();
                if let Some(o) = old {
                    out.remove(&o);
                }
                old
            }
        };
        if let Some(o) = evicted {
            let _ = self.net.set_blocked(o, false).await;
        }
        let _ = self.net.set_blocked(peer, true).await;
        true
    }

    /// Signs and publishes a policy; supersedes `old` (an id of this node's).
    pub async fn publish(
        self: &Arc<Self>,
        policy: &Policy,
        supersedes: Option<String>,
    ) -> Result<VerifiedEntry, PublishError> {
        let op = Op::Put {
            policy: String::from_utf8(policy.canonical()).expect("canonical JSON is UTF-8"),
            supersedes,
        };
        self.append(op).await
    }

    /// Publishes a policy a client sent (REST, EdgeLake's `blockchain
    /// insert`), at most [`POLICY_RATE`] a second on average.
    pub async fn publish_for_client(
        self: &Arc<Self>,
        policy: &Policy,
    ) -> Result<VerifiedEntry, PublishError> {
        {
            let mut b = self.policy_bucket.lock().expect("lock poisoned");
            let now = Instant::now();
            let refill = now.duration_since(b.1).as_secs_f64() * f64::from(POLICY_RATE);
            *b = ((b.0 + refill).min(POLICY_BURST), now);
            if b.0 < 1.0 {
                return Err(PublishError::TooFast);
            }
            b.0 -= 1.0;
        }
        self.publish(policy, None).await
    }

    /// Revokes a policy of this node's.
    pub async fn revoke(self: &Arc<Self>, id: String) -> Result<VerifiedEntry, PublishError> {
        self.append(Op::Revoke { id }).await
    }

    async fn append(self: &Arc<Self>, op: Op) -> Result<VerifiedEntry, PublishError> {
        self.append_as(self.key.clone(), op).await
    }

    /// Admits this node to its closed network with the network's root key
    /// (or an admin's), unless it is a member already.
    pub async fn admit_self(
        self: &Arc<Self>,
        admin: SigningKey,
        services: &[String],
        cluster: Option<&str>,
    ) -> Result<(), PublishError> {
        if self.admitted() {
            return Ok(());
        }
        let policy = Policy::from_value(serde_json::json!({"member": {
            "peer": self.peer_id().to_string(),
            "services": services,
            "cluster": cluster,
            "admin": true,
            "admitted_ms": self.clock.now_ms(),
        }}))
        .map_err(|e| PublishError::Ledger(e.to_string()))?;
        let op = Op::Put {
            policy: String::from_utf8(policy.canonical()).expect("canonical JSON is UTF-8"),
            supersedes: None,
        };
        self.append_as(admin, op).await?;
        tracing::info!("admitted itself to the network with the admin key");
        Ok(())
    }

    /// Adds an entry signed elsewhere (`tarn admit`, `tarn revoke`) and
    /// gossips it.
    pub async fn submit(
        self: &Arc<Self>,
        e: VerifiedEntry,
    ) -> Result<(), tarn_ledger::AppendError> {
        let me = self.clone();
        let bytes = e.bytes().to_vec();
        let kept = e.clone();
        let applied = tokio::task::spawn_blocking(move || {
            me.ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(&e)
        })
        .await
        .map_err(|e| tarn_ledger::AppendError::Storage(e.to_string()))??;
        if applied == tarn_ledger::Applied::Added {
            self.audit_entry(&kept, "rest");
        }
        self.enforce_members().await;
        self.gossip_entry(bytes).await;
        Ok(())
    }

    /// Gossips an entry this node added; one that finds no subscribed peer
    /// yet (a node still joining) is kept and sent again on the next ticks,
    /// so it spreads at gossip speed instead of waiting for anti-entropy.
    async fn gossip_entry(&self, bytes: Vec<u8>) {
        match self.net.publish(LEDGER_TOPIC, bytes.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                let mut unsent = self.unsent.lock().expect("lock poisoned");
                if unsent.len() < MAX_UNSENT {
                    unsent.push_back(bytes);
                }
            }
            // Anti-entropy delivers it later.
            Err(e) => tracing::debug!("gossiping a ledger entry: {e}"),
        }
    }

    /// Sends again the entries no peer took (see `gossip_entry`).
    pub(super) async fn resend_unsent(&self) {
        loop {
            let Some(bytes) = self.unsent.lock().expect("lock poisoned").pop_front() else {
                return;
            };
            if !matches!(
                self.net.publish(LEDGER_TOPIC, bytes.clone()).await,
                Ok(true)
            ) {
                self.unsent.lock().expect("lock poisoned").push_front(bytes);
                return;
            }
        }
    }

    /// An author's head in this replica: its last seq and entry hash, and
    /// the Lamport clock (what a remote signer needs to extend its chain).
    pub fn head_of(&self, author: &Author) -> (u64, Option<[u8; 32]>, u64) {
        let l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, hash) = l.head(author).map_or((0, None), |(s, h)| (s, Some(h)));
        (seq, hash, l.lamport())
    }

    async fn append_as(
        self: &Arc<Self>,
        key: SigningKey,
        op: Op,
    ) -> Result<VerifiedEntry, PublishError> {
        let me = self.clone();
        let e = tokio::task::spawn_blocking(move || {
            let mut l = me.ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.append_local(&key, op, me.clock.now_ms())
        })
        .await
        .map_err(|e| PublishError::Ledger(e.to_string()))?
        .map_err(|e| match e {
            tarn_ledger::AppendError::NotAdmitted(_) => PublishError::NotAdmitted,
            tarn_ledger::AppendError::Quota(_) => PublishError::Quota,
            e => PublishError::Ledger(e.to_string()),
        })?;
        self.audit_entry(&e, "local");
        self.enforce_members().await;
        self.gossip_entry(e.bytes().to_vec()).await;
        Ok(e)
    }

    /// Reads the policies in force without copying them (the ledger stays
    /// locked while `f` runs: keep it short).
    pub fn with_view<R>(&self, f: impl FnOnce(&tarn_ledger::View) -> R) -> R {
        f(self.ledger.lock().unwrap_or_else(|p| p.into_inner()).view())
    }

    /// The policies currently in force (a copy).
    pub fn view(&self) -> tarn_ledger::View {
        self.with_view(|v| v.clone())
    }

    /// The ledger's per-author heads and its number of entries.
    pub fn ledger_state(&self) -> (Vec<(Author, u64)>, usize) {
        let l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        (l.heads(), l.len())
    }

    /// A request to a peer and its answer, or why there is none.
    pub async fn call<R: proto::Request>(
        &self,
        peer: PeerId,
        req: &R,
    ) -> Result<R::Response, CallError> {
        let data = proto::encode_request(req).map_err(|e| CallError::Net(e.to_string()))?;
        let bytes = self
            .net
            .request(peer, data)
            .await
            .map_err(|e| CallError::Net(e.to_string()))?;
        proto::decode_reply::<R>(&bytes)
            .map_err(|e| CallError::Malformed(e.to_string()))?
            .map_err(CallError::Remote)
    }

    /// Whether a peer answers a request (a digest exchange).
    pub async fn ping(&self, peer: PeerId) -> bool {
        let (ledger, members) = self.digests();
        matches!(
            self.call(peer, &proto::ledger::Request::Digest { ledger, members })
                .await,
            Ok(proto::ledger::Response::Digest { .. })
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

    /// The IP address and TCP port peers reach this node at (EdgeLake's
    /// `ip` and `port`): the first TCP listen address, loopback last.
    pub fn peer_endpoint(&self) -> Option<(String, u16)> {
        let mut found: Vec<(String, u16)> = self
            .listen
            .lock()
            .expect("lock poisoned")
            .iter()
            .filter_map(|a| {
                use tarn_net::multiaddr::Protocol;
                let mut ip = None;
                for p in a.iter() {
                    match p {
                        Protocol::Ip4(v) => ip = Some(v.to_string()),
                        Protocol::Ip6(v) => ip = Some(v.to_string()),
                        Protocol::Tcp(port) => return ip.map(|ip| (ip, port)),
                        _ => {}
                    }
                }
                None
            })
            .collect();
        found.sort_by_key(|(ip, _)| ip.starts_with("127.") || ip == "::1");
        found.into_iter().next()
    }

    /// Waits (at most `limit`) until the network listens somewhere.
    pub async fn wait_listening(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.listen.lock().expect("lock poisoned").is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the links with `peer` on purpose (with a goodbye), unless it
    /// is protected or has a request in flight: for links opened on demand.
    pub async fn release(&self, peer: PeerId) {
        let _ = self.net.disconnect(peer).await;
    }

    /// Whether a peer is connected now.
    pub fn connected_now(&self, peer: &PeerId) -> bool {
        self.peers
            .lock()
            .expect("lock poisoned")
            .get(peer)
            .is_some_and(|p| p.connected)
    }

    /// How many peers are connected now.
    pub fn connected_count(&self) -> usize {
        let peers = self.peers.lock().expect("lock poisoned");
        peers.values().filter(|p| p.connected).count()
    }

    /// What is known of every peer seen since start.
    pub fn peer_states(&self) -> HashMap<PeerId, PeerState> {
        self.peers.lock().expect("lock poisoned").clone()
    }

    /// Connected peers with the addresses they announce.
    pub async fn connected(&self) -> Vec<tarn_net::PeerInfo> {
        self.net.peers().await.unwrap_or_default()
    }

    fn note(&self, peer: PeerId, connected: Option<bool>) {
        let mut peers = self.peers.lock().expect("lock poisoned");
        match connected {
            Some(true) => {
                peers.insert(
                    peer,
                    PeerState {
                        connected: true,
                        last_seen: Instant::now(),
                    },
                );
            }
            Some(false) => {
                if let Some(s) = peers.get_mut(&peer) {
                    s.connected = false;
                    s.last_seen = Instant::now();
                }
            }
            None => {
                if let Some(s) = peers.get_mut(&peer) {
                    s.last_seen = Instant::now();
                }
            }
        }
    }

    fn count_in(&self, msgs: &AtomicU64, bytes: &AtomicU64, len: usize) {
        msgs.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}
