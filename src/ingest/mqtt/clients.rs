//! The node's message clients (`run msg client`): their subscriptions,
//! counters, the file that keeps them across restarts, and the one path
//! every message takes to the ingest service — mapped, grouped by table,
//! written as streaming rows (journaled before anything is acknowledged).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::command::{self, Broker, ClientSpec};
use super::mapping::{self, Mapping};
use super::resent::Resent;
use crate::error::{Code, Coded};
use crate::ingest::{Consistency, Ingest, IngestError, IngestRequest, Mode};

/// Most message clients one node runs.
pub const MAX_CLIENTS: usize = 64;

/// Checks the user name and password a device connects with (and from
/// where): `Err` with the reason to refuse it.
pub type Login = Arc<
    dyn Fn(
            Option<(String, String)>,
            Option<SocketAddr>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Finds a `mapping` policy by its id (the one its body gives, or the ledger's).
pub type PolicyLookup = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// Counters of one client (or of the node's broker).
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When a refusal was last logged without `log = true`.
    logged: Mutex<Option<std::time::Instant>>,
}

impl Counters {
    pub(super) fn error(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_owned());
    }
}

/// One `run msg client`.
#[derive(Debug)]
pub struct Client {
    pub id: u32,
    pub spec: ClientSpec,
    pub command: String,
    pub counters: Counters,
    /// Remote brokers only: whether the link is up now.
    pub connected: AtomicBool,
    /// Stopped by `exit msg client` (not by the node stopping): its
    /// session at the broker ends too.
    pub removed: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Client {
    /// The MQTT client id it uses with a remote broker: stable across
    /// restarts, so the broker keeps its session (and its QoS 1 messages).
    pub fn mqtt_id(&self, node: &str) -> String {
        self.spec
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tarn-{node}-{}", self.id))
    }

    fn new(id: u32, spec: ClientSpec, command: String) -> Arc<Client> {
        let (stop, _) = watch::channel(false);
        Arc::new(Client {
            id,
            spec,
            command,
            counters: Counters::default(),
            connected: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            stop,
        })
    }

    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    id: u32,
    command: String,
}

/// Where a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The node's own MQTT broker.
    Broker,
    /// `POST /` with `command: data`.
    Rest,
}

/// A message to store, and whose it is.
pub struct Message {
    pub client: Arc<Client>,
    /// Which of the client's topics it matched.
    pub topic: usize,
    pub payload: Bytes,
    /// QoS 1 and 2 only: who sent it and under which packet id, and
    /// whether it is marked as sent again (see `resent.rs`).
    pub delivery: Option<Delivery>,
}

/// How an acknowledged delivery is told apart from its resends.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// A digest of the sender (MQTT client id), packet id and payload.
    pub key: u64,
    /// The DUP flag: the sender is sending it again.
    pub dup: bool,
}

impl Delivery {
    pub fn new(sender: &str, pkid: u16, payload: &[u8], dup: bool) -> Delivery {
        // BLAKE3, not std's hasher: the keys are kept on disk, and std's
        // algorithm may change between Rust releases.
        let mut h = blake3::Hasher::new();
        h.update(&(sender.len() as u64).to_le_bytes());
        h.update(sender.as_bytes());
        h.update(&pkid.to_le_bytes());
        h.update(payload);
        let digest = h.finalize();
        let first: [u8; 8] = digest.as_bytes()[..8]
            .try_into()
            .expect("a BLAKE3 digest is 32 bytes");
        Delivery {
            key: u64::from_le_bytes(first),
            dup,
        }
    }
}

/// The registry of message clients.
pub struct MsgClients {
    ingest: Arc<Ingest>,
    policies: PolicyLookup,
    file: PathBuf,
    node: String,
    clients: Mutex<BTreeMap<u32, Arc<Client>>>,
    /// Messages the node's broker took (all topics).
    pub broker: Counters,
    /// Messages on no subscribed topic.
    pub unmatched: AtomicU64,
    /// Resent messages that had been stored already, and were not again.
    pub resent: AtomicU64,
    stored: Mutex<Resent>,
    /// Where the node's broker listens, once started.
    broker_addr: Mutex<Option<SocketAddr>>,
    /// The node's stop signal: ends the broker and every client.
    node_stop: watch::Receiver<bool>,
    /// How the broker checks devices (`None`: it takes any).
    login: Option<Login>,
    /// The broker's limits, also when `run message broker` starts it.
    limits: super::BrokerLimits,
}

impl std::fmt::Debug for MsgClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgClients")
            .field("file", &self.file)
            .finish()
    }
}

impl MsgClients {
    /// The registry, kept in `file` (`msg_clients.json` in the data directory).
    pub fn new(
        ingest: Arc<Ingest>,
        policies: PolicyLookup,
        file: PathBuf,
        node: &str,
        node_stop: watch::Receiver<bool>,
        limits: super::BrokerLimits,
    ) -> Self {
        let delivered = file.with_file_name("msg_delivered.bin");
        MsgClients {
            ingest,
            policies,
            file,
            node: node.to_owned(),
            clients: Mutex::new(BTreeMap::new()),
            broker: Counters::default(),
            unmatched: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            stored: Mutex::new(Resent::open(&delivered)),
            broker_addr: Mutex::new(None),
            node_stop,
            login: None,
            limits,
        }
    }

    /// Devices must log in to the broker, as `login` decides.
    pub fn with_login(mut self, login: Login) -> Self {
        self.login = Some(login);
        self
    }

    pub(super) fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// Starts the node's MQTT broker on `addr` (one per node); where it listens.
    pub async fn start_broker(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr, String> {
        if let Some(a) = self.broker_addr() {
            return Err(format!("this node's MQTT broker runs already, on {a}"));
        }
        let bound = super::spawn_broker(
            addr,
            self.clone(),
            self.limits.clone(),
            self.node_stop.clone(),
        )
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
        *self.broker_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(bound);
        if self.login.is_none() && !bound.ip().is_loopback() {
            tracing::warn!(
                "the MQTT broker on {bound} takes data from any device that reaches it \
                 (start the node with --auth for device logins)"
            );
        }
        Ok(bound)
    }

    /// Where the node's broker listens (`None`: it does not run).
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        *self.broker_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clients the file holds, started again (a command that no longer
    /// parses is logged and dropped); all of them stop with the node.
    pub fn restore(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let mut stop = self.node_stop.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            if let Some(this) = this.upgrade() {
                for c in this.list() {
                    let _ = c.stop.send(true);
                }
            }
        });
        let saved: Vec<Saved> = match std::fs::read(&self.file) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{}: {e}; no message client restored", self.file.display());
                    return;
                }
            },
            Err(_) => return,
        };
        for s in saved {
            match command::parse(&s.command) {
                Ok(spec) => {
                    let c = Client::new(s.id, spec, s.command);
                    self.clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(s.id, c.clone());
                    self.start(&c);
                }
                Err(e) => tracing::error!("message client {} not restored: {e}", s.id),
            }
        }
    }

    /// Starts a client from a `run msg client` command.
    pub fn add(self: &Arc<Self>, cmd: &str) -> Result<Arc<Client>, String> {
        let spec = command::parse(cmd)?;
        let c = {
            // The id is chosen and taken under one lock: two commands at
            // once get two ids.
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients.len() >= MAX_CLIENTS {
                return Err(format!(
                    "this node runs {MAX_CLIENTS} message clients already"
                ));
            }
            let id = clients.keys().next_back().map_or(1, |k| k + 1);
            let c = Client::new(id, spec, cmd.trim().to_owned());
            clients.insert(id, c.clone());
            c
        };
        self.start(&c);
        self.save()
            .map_err(|e| format!("the client runs but was not saved: {e}"))?;
        Ok(c)
    }

    /// Starts what a client runs of its own: a subscription to a remote broker.
    fn start(self: &Arc<Self>, c: &Arc<Client>) {
        if let Broker::Remote { .. } = c.spec.broker {
            tokio::spawn(super::remote::run(
                self.clone(),
                c.clone(),
                self.node.clone(),
            ));
        }
    }

    /// Stops client `id`, or all with `None`; how many stopped.
    pub fn remove(&self, id: Option<u32>) -> Result<usize, String> {
        let gone: Vec<Arc<Client>> = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match id {
                Some(id) => clients.remove(&id).into_iter().collect(),
                None => std::mem::take(&mut *clients).into_values().collect(),
            }
        };
        for c in &gone {
            c.removed.store(true, Ordering::Relaxed);
            let _ = c.stop.send(true);
        }
        self.save()
            .map_err(|e| format!("saving the message clients: {e}"))?;
        Ok(gone.len())
    }

    pub fn list(&self) -> Vec<Arc<Client>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn save(&self) -> std::io::Result<()> {
        let saved: Vec<Saved> = self
            .list()
            .iter()
            .map(|c| Saved {
                id: c.id,
                command: c.command.clone(),
            })
            .collect();
        let tmp = self.file.with_extension("json.tmp");
        // Only the node's user reads it: commands may carry broker passwords.
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&saved)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.file)
    }

    /// The client and topic a message on `topic` that came in by `origin` is for.
    pub fn route(&self, origin: Origin, topic: &str) -> Option<(Arc<Client>, usize)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.values().find_map(|c| {
            let ours = matches!(
                (&c.spec.broker, origin),
                (Broker::Local, Origin::Broker) | (Broker::Rest, Origin::Rest)
            );
            if !ours {
                return None;
            }
            Some((c.clone(), c.spec.topic_of(topic)?))
        })
    }

    /// Stores messages: each mapped to rows, rows grouped by table, each
    /// table's rows written to its streaming buffer at once. A message that
    /// does not fit is counted against its client and dropped, and takes no
    /// other message with it. `Err` only when the node could not store what
    /// fits (then nothing may be acknowledged); `Ok` holds why each message
    /// refused in this call was.
    pub async fn store(&self, mut msgs: Vec<Message>) -> Result<Vec<String>, IngestError> {
        {
            // A resend of what was stored before, or of what is earlier in this batch.
            let stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
            let mut here = std::collections::HashSet::new();
            msgs.retain(|m| match m.delivery {
                Some(d) if d.dup && (stored.contains(d.key) || here.contains(&d.key)) => {
                    self.resent.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Some(d) => {
                    here.insert(d.key);
                    true
                }
                None => true,
            });
        }
        // How many of its tables each message still waits for: a message
        // whose every table is written is remembered even if a later table
        // fails the batch, so that its resend is not stored twice.
        let mut left = vec![0usize; msgs.len()];
        let mut refused = Vec::new();
        let r = self.store_new(&msgs, &mut left, &mut refused).await;
        let keys: Vec<u64> = msgs
            .iter()
            .zip(&left)
            .filter(|(_, l)| **l == 0)
            .filter_map(|(m, _)| m.delivery.map(|d| d.key))
            .collect();
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&keys);
        r.map(|()| refused)
    }

    async fn store_new(
        &self,
        msgs: &[Message],
        left: &mut [usize],
        refused: &mut Vec<String>,
    ) -> Result<(), IngestError> {
        let mut refuse = |m: &Message, why: String| {
            self.refuse(m, &why);
            refused.push(why);
        };
        // Each mapping policy is read from the ledger once per batch.
        let mut policies = HashMap::new();
        // (db, table, source) -> rows, and which message gave how many of them.
        let mut groups: HashMap<(String, String, String), Group> = HashMap::new();
        for (n, m) in msgs.iter().enumerate() {
            m.client.counters.messages.fetch_add(1, Ordering::Relaxed);
            match self.map(m, &mut policies) {
                Ok(sets) => {
                    // The source names the subscribed topic: a publisher
                    // routes each topic's rows to one cluster.
                    let source = format!("mqtt:{}", m.client.spec.topics[m.topic].name);
                    for r in sets {
                        let g = groups.entry((r.db, r.table, source.clone())).or_default();
                        g.from.push((n, r.rows.len()));
                        left[n] += 1;
                        g.rows.extend(r.rows);
                    }
                }
                Err(e) => refuse(m, e),
            }
        }
        let mut done = |n: usize, k: usize| {
            msgs[n]
                .client
                .counters
                .rows
                .fetch_add(k as u64, Ordering::Relaxed);
            left[n] -= 1;
        };
        for ((db, table, source), g) in groups {
            match self.write(&db, &table, &source, &g.rows).await {
                Ok(()) => g.from.into_iter().for_each(|(n, k)| done(n, k)),
                Err(e) if node_failure(&e) => return Err(e),
                // Rows of one message the table refuses: write message by
                // message, so that only the ones that do not fit are lost.
                Err(_) => {
                    let mut at = 0;
                    for (n, k) in g.from {
                        let rows = &g.rows[at..at + k];
                        at += k;
                        match self.write(&db, &table, &source, rows).await {
                            Ok(()) => done(n, k),
                            Err(e) if node_failure(&e) => return Err(e),
                            Err(e) => {
                                refuse(&msgs[n], format!("{db}.{table}: {e}"));
                                done(n, 0);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn refuse(&self, m: &Message, why: &str) {
        m.client.counters.error(why);
        let topic = &m.client.spec.topics[m.topic].name;
        // With `log = true` every refusal is logged; otherwise one every
        // ten seconds per client, so that a bad device cannot flood the log.
        let quiet = !m.client.spec.log && {
            let mut last = m
                .client
                .counters
                .logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let recent = last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10));
            if !recent {
                *last = Some(std::time::Instant::now());
            }
            recent
        };
        if quiet {
            tracing::debug!("msg client {} topic {topic:?}: {why}", m.client.id);
        } else {
            tracing::warn!("msg client {} topic {topic:?}: {why}", m.client.id);
        }
    }

    async fn write(
        &self,
        db: &str,
        table: &str,
        source: &str,
        rows: &[Map<String, Value>],
    ) -> Result<(), IngestError> {
        let body =
            serde_json::to_vec(rows).map_err(|e| IngestError::internal("encoding rows", e))?;
        let mut req = IngestRequest::batch(db, table, Bytes::from(body), source);
        req.mode = Mode::Streaming;
        req.consistency = Consistency::Local;
        self.ingest.ingest(req).await.map(|_| ())
    }

    /// The rows of one message, per table.
    fn map(
        &self,
        m: &Message,
        policies: &mut HashMap<String, Result<Mapping, String>>,
    ) -> Result<Vec<mapping::Rows>, String> {
        let msg: Value = serde_json::from_slice(&m.payload)
            .map_err(|e| format!("the message is not JSON: {e}"))?;
        let topic = &m.client.spec.topics[m.topic];
        if topic.policies.is_empty() {
            return Ok(vec![topic.mapping.apply(&msg)?]);
        }
        let mut out = Vec::new();
        for id in &topic.policies {
            let mut map = policies
                .entry(id.clone())
                .or_insert_with(|| {
                    let p =
                        (self.policies)(id).ok_or_else(|| format!("no mapping policy {id:?}"))?;
                    mapping::from_policy(&p)
                })
                .clone()?;
            // The topic's own dbms and table stand in for ones the policy leaves out.
            map.dbms = map.dbms.or_else(|| topic.mapping.dbms.clone());
            map.table = map.table.or_else(|| topic.mapping.table.clone());
            if map.applies(&msg) {
                out.push(map.apply(&msg)?);
            }
        }
        if out.is_empty() {
            return Err("no mapping policy of the topic applies to the message".into());
        }
        Ok(out)
    }
}

#[derive(Default)]
struct Group {
    rows: Vec<Map<String, Value>>,
    from: Vec<(usize, usize)>,
}

/// Whether an ingest error is the node's (nothing can be acknowledged)
/// rather than the data's.
fn node_failure(e: &IngestError) -> bool {
    matches!(
        e.code(),
        Code::Internal | Code::QueueFull | Code::NoOperator | Code::Busy | Code::TooManyBatches
    )
}
