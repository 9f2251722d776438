//! A running node. This file only wires: it opens the data directory,
//! builds each service with exactly what it needs, registers the services'
//! handlers with the mesh, starts the background tasks, and stops them.
//!
//! Everything that decides behaviour is passed in ([`Builder`]): the
//! configuration, the REST listener, the clock and the shutdown signal, so
//! that tests can run many nodes in one process on `127.0.0.1:0`.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::api::{self, AppState, BodyLimits, Info};
use crate::audit::Sink;
use crate::clock::SharedClock;
use crate::cluster::announce;
use crate::cluster::membership::Me;
use crate::cluster::replication::{self, Replicator, Timing};
use crate::config::{Config, Service};
use crate::exec::{self, Exec, Limits};
use crate::ingest::mqtt::{self, MsgClients};
use crate::ingest::{self, Ingest, Publisher, Streams, Watcher};
use crate::mesh::{Events, Mesh, Router};
use crate::store::Storage;

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long the store is idle before SQLite gives back its caches.
const IDLE_RELEASE: Duration = Duration::from_secs(20);

/// How a node is started: its configuration and what the embedding
/// program provides.
pub struct Builder {
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
    clock: SharedClock,
    shutdown: Option<Signal>,
}

impl Builder {
    /// The REST API on this listener instead of binding `cfg.rest`.
    pub fn rest_listener(mut self, l: tokio::net::TcpListener) -> Builder {
        self.listener = Some(l);
        self
    }

    /// The clock rows, queries and ledger entries read.
    pub fn clock(mut self, clock: SharedClock) -> Builder {
        self.clock = clock;
        self
    }

    /// Stops the node when `signal` completes (see [`Node::wait`]).
    pub fn shutdown_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Builder {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Opens the data directory, replays what a crash left, binds the REST
    /// port and starts the background work.
    pub async fn start(self) -> anyhow::Result<Node> {
        Node::start_with(self).await
    }
}

/// What the node opened from its data directory.
struct Opened {
    lock: File,
    secret: [u8; 32],
    keypair: tarn_net::Keypair,
    store: Arc<Storage>,
    streams: Arc<Streams>,
    publisher: Option<Arc<Publisher>>,
}

/// The node on the network, before its services exist.
struct Net {
    mesh: Arc<Mesh>,
    me: Me,
    clock: SharedClock,
    rest: SocketAddr,
}

/// A started node. Dropping it without [`Node::shutdown`] stops nothing
/// gracefully; call `shutdown` (or `wait`) to flush buffers.
pub struct Node {
    state: AppState,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    _lock: File,
}

impl Node {
    pub fn builder(cfg: Config) -> Builder {
        Builder {
            cfg,
            listener: None,
            clock: crate::clock::system(),
            shutdown: None,
        }
    }

    /// Starts a node on `cfg` with the system clock.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        Node::builder(cfg).start().await
    }

    async fn start_with(b: Builder) -> anyhow::Result<Node> {
        let Builder {
            cfg,
            listener,
            clock,
            shutdown,
        } = b;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => {
                Some(api::tls::server_config(cert, key).map_err(|e| anyhow::anyhow!(e))?)
            }
            _ => None,
        };
        let span = tracing::info_span!("node", name = %cfg.name);
        let opened = open(&cfg, &clock).await?;
        let (stop, stopped) = watch::channel(false);
        if let Some(signal) = shutdown {
            let stop = stop.clone();
            tokio::spawn(async move {
                signal.await;
                let _ = stop.send(true);
            });
        }
        let (network, admin) = network_of(&cfg)?;
        let (mesh, events) = Mesh::start(
            &cfg.data_dir,
            net_config(&cfg, &opened),
            opened.secret,
            clock.clone(),
            network,
        )
        .await?;
        match network {
            None => tracing::warn!(
                parent: &span,
                "open network: any peer that reaches this node may join, read and write \
                 (start with --network <id> for a closed one)"
            ),
            Some(n) => tracing::info!(
                parent: &span,
                "closed network {}: only admitted members take part",
                tarn_ledger::member::peer_id_of(&n)
            ),
        }
        if let Some(key) = admin {
            let services: Vec<String> = cfg.services.iter().map(|s| s.name().to_owned()).collect();
            mesh.admit_self(key, &services, cfg.cluster.as_deref())
                .await
                .context("admitting this node with the admin key")?;
        }
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(cfg.rest)
                .await
                .with_context(|| format!("binding the REST port {}", cfg.rest))?,
        };
        let rest = listener.local_addr()?;
        let me = Me {
            peer: mesh.peer_id(),
            name: cfg.name.clone(),
            services: cfg.services.clone(),
            cluster: cfg.cluster.clone(),
            rest: rest.to_string(),
        };
        let net = Net {
            mesh,
            me,
            clock,
            rest,
        };
        let mut node = Node::wire(&cfg, opened, net, (stop, stopped), &span);
        node.run(&cfg, listener, tls, events, &span).await?;
        tracing::info!(parent: &span, "REST API listening on http://{rest}");
        Ok(node)
    }

    /// Builds the services and the API over them.
    fn wire(
        cfg: &Config,
        o: Opened,
        net: Net,
        (stop, stopped): (watch::Sender<bool>, watch::Receiver<bool>),
        span: &tracing::Span,
    ) -> Node {
        let Net {
            mesh,
            me,
            clock,
            rest,
        } = net;
        let operator = cfg.has(Service::Operator);
        let data = operator.then(|| o.store.clone());
        let mut tasks = Vec::new();
        let replicator: Option<Replicator> = (operator && cfg.cluster.is_some()).then(|| {
            let deps = replication::Deps {
                store: o.store.clone(),
                mesh: mesh.clone(),
                me: me.clone(),
                timing: Timing {
                    sync_every: Duration::from_millis(cfg.replication.sync_ms),
                    ack_timeout: Duration::from_millis(cfg.replication.ack_timeout_ms),
                },
            };
            let (handle, task) = replication::spawn(deps, stopped.clone(), span.clone());
            tasks.push(task);
            handle
        });
        // A node that publishes and stores nothing queues what it takes.
        let queue = o.publisher.clone().filter(|_| !operator);
        let ingest = Arc::new(Ingest::new(
            data.clone(),
            operator.then(|| o.streams.clone()),
            queue,
            replicator,
        ));
        let limits = Limits {
            max_result_rows: cfg.max_result_rows,
            max_result_bytes: cfg.max_result_bytes,
            query_timeout: cfg.query_timeout(),
        };
        let exec = Arc::new(Exec::new(me, data, mesh.clone(), limits, clock));
        let info = info_of(cfg, rest);
        let auth = cfg
            .auth
            .enabled
            .then(|| Arc::new(api::auth::Auth::new(mesh.clone())));
        let (audit, audit_rx) = Sink::new();
        mesh.set_audit(audit.clone());
        tasks.push(audit_writer(
            o.store.clone(),
            audit.clone(),
            audit_rx,
            cfg.audit.clone(),
            stopped.clone(),
            span,
        ));
        let state = AppState {
            info: Arc::new(info),
            msg: Arc::new(msg_clients(cfg, &ingest, &mesh, auth.as_ref(), &stopped)),
            ingest,
            exec,
            mesh,
            store: o.store,
            streams: o.streams,
            publisher: o.publisher,
            auth,
            audit,
            body: BodyLimits::new(
                cfg.max_body_bytes,
                cfg.max_inflight_bytes,
                Duration::from_millis(cfg.body_timeout_ms),
            ),
        };
        Node {
            state,
            stop,
            stopped,
            tasks,
            _lock: o.lock,
        }
    }

    /// Starts serving: the mesh's handlers, REST, and the periodic work.
    async fn run(
        &mut self,
        cfg: &Config,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        events: Events,
        span: &tracing::Span,
    ) -> anyhow::Result<()> {
        let s = self.state.clone();
        let stopped = self.stopped.clone();
        let router = Router::new(s.mesh.clone())
            .route(Arc::new(exec::Server::new(s.exec.clone())))
            .route(Arc::new(replication::Server {
                store: s.store.clone(),
                mesh: s.mesh.clone(),
                me: me_of(&s, cfg),
            }))
            .route(Arc::new(ingest::Server(s.ingest.clone(), s.audit.clone())));
        self.tasks
            .push(router.spawn(events, stopped.clone(), span.clone()));
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let rest = api::serve(listener, api::router(s.clone()), stopped.clone(), idle, tls);
        self.tasks.push(tokio::spawn(rest.instrument(span.clone())));
        let streams = s.streams.clone();
        let period = Duration::from_millis((cfg.streaming.threshold_ms / 4).clamp(10, 250));
        self.tasks
            .push(every(period, stopped.clone(), span, move || streams.tick()));
        let store = s.store.clone();
        let period = Duration::from_millis(200);
        self.tasks
            .push(every(period, stopped.clone(), span, move || {
                store.checkpoint();
                store.release_if_idle(IDLE_RELEASE);
            }));
        if cfg.has(Service::Operator) && cfg.watch.enabled {
            let dir = cfg.watch_dir();
            let watcher = Watcher::new(s.ingest.clone(), &cfg.watch, dir.clone())?;
            let watcher = std::sync::Mutex::new(watcher);
            let period = Duration::from_millis(cfg.watch.poll_ms);
            tracing::info!(parent: span, "watching {} for data files", dir.display());
            self.tasks
                .push(every(period, stopped.clone(), span, move || {
                    watcher.lock().unwrap_or_else(|p| p.into_inner()).scan()
                }));
        }
        start_mqtt(&s.msg, cfg, span).await?;
        if let (Some(p), false) = (&s.publisher, cfg.has(Service::Operator)) {
            self.tasks.push(ingest::spawn_forwarder(
                s.mesh.clone(),
                p.clone(),
                stopped.clone(),
                span.clone(),
            ));
        }
        // The start line prints the swarm's listen addresses.
        s.mesh.wait_listening(Duration::from_secs(5)).await;
        let me = me_of(&s, cfg);
        self.publish_self(cfg, &me, span).await?;
        if cfg.has(Service::Operator) {
            announce::announce_tables(&s.mesh, &me, &s.store).await;
            self.tasks.push(announce::spawn_table_announcer(
                s.mesh.clone(),
                me,
                s.store.clone(),
                stopped,
                span.clone(),
            ));
        }
        Ok(())
    }

    /// Publishes this node's own policies now, or once it is admitted to
    /// its closed network.
    async fn publish_self(
        &mut self,
        cfg: &Config,
        me: &Me,
        span: &tracing::Span,
    ) -> anyhow::Result<()> {
        let s = &self.state;
        self.tasks.push(announce::spawn_address_watch(
            s.mesh.clone(),
            me.clone(),
            self.stopped.clone(),
            span.clone(),
        ));
        if s.mesh.admitted() {
            return announce::publish_self(&s.mesh, me).await;
        }
        tracing::warn!(
            parent: span,
            "not a member of network {} yet: ask an admin to run `tarn admit {}`",
            cfg.network.as_deref().unwrap_or_default(),
            s.mesh.peer_id()
        );
        self.tasks.push(announce::spawn_when_admitted(
            s.mesh.clone(),
            me.clone(),
            cfg.has(Service::Operator).then(|| s.store.clone()),
            self.stopped.clone(),
            span.clone(),
        ));
        Ok(())
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.state.info.rest
    }

    /// The REST API's URL: `https://` when the node serves TLS.
    pub fn rest_url(&self) -> String {
        let scheme = if self.state.info.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.state.info.rest)
    }

    /// The node's mesh: its ledger view, peers, and requests to them.
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.state.mesh
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> tarn_net::PeerId {
        self.state.mesh.peer_id()
    }

    /// Where the node listens for peers, each with `/p2p/<peer-id>`.
    pub fn p2p_addrs(&self) -> Vec<String> {
        self.state.mesh.full_listen_addrs()
    }

    /// The REST router over this node's services, to drive in process
    /// (drop it before [`Node::shutdown`]: it holds the services).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Waits for the shutdown signal (see [`Builder::shutdown_signal`]),
    /// then shuts down.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while !*self.stopped.borrow() {
            if self.stopped.changed().await.is_err() {
                break;
            }
        }
        self.shutdown().await
    }

    /// Stops accepting requests, lets running ones finish, and writes every
    /// streaming buffer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // Peers mark it down at once instead of suspecting it first.
        self.state.mesh.leave().await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let streams = self.state.streams.clone();
        let n = tokio::task::spawn_blocking(move || streams.flush_all()).await?;
        if n > 0 {
            tracing::info!("flushed {n} buffered rows");
        }
        // Wait for the mesh (and its ledger) to be released by requests in
        // flight, so that the data directory can be opened again at once.
        let mesh = Arc::downgrade(&self.state.mesh);
        drop(self.state);
        drop(self._lock);
        let deadline = Instant::now() + Duration::from_secs(40);
        while mesh.strong_count() > 0 {
            if Instant::now() > deadline {
                anyhow::bail!("the ledger is still in use after shutdown");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The message clients; with REST authentication on, devices log in to
/// the MQTT broker with a user's name and token (a writer of every database).
fn msg_clients(
    cfg: &Config,
    ingest: &Arc<Ingest>,
    mesh: &Arc<Mesh>,
    auth: Option<&Arc<api::auth::Auth>>,
    stopped: &watch::Receiver<bool>,
) -> MsgClients {
    let msg = MsgClients::new(
        ingest.clone(),
        mapping_lookup(mesh),
        cfg.data_dir.join("msg_clients.json"),
        &cfg.name,
        stopped.clone(),
        mqtt::BrokerLimits {
            max_packet: cfg.mqtt.max_packet_bytes,
            max_connections: cfg.mqtt.max_connections,
        },
    );
    let Some(auth) = auth else { return msg };
    let auth = Arc::downgrade(auth);
    msg.with_login(Arc::new(move |login, from| {
        let auth = auth.clone();
        Box::pin(async move {
            let (name, secret) = login.ok_or("a user name and token are required")?;
            let auth = auth.upgrade().ok_or("the node is stopping")?;
            let p = auth
                .login(name, secret, from.map(|a| a.ip()))
                .await
                .map_err(|e| e.to_string())?;
            p.require(api::auth::Role::Writer, None)
                .map_err(|e| e.to_string())?;
            if p.dbs.is_some() {
                return Err(format!("user {} is limited to some databases", p.name));
            }
            Ok(())
        })
    }))
}

/// Starts the message clients kept in the data directory, and the MQTT
/// broker if the configuration asks for one.
async fn start_mqtt(
    msg: &Arc<MsgClients>,
    cfg: &Config,
    span: &tracing::Span,
) -> anyhow::Result<()> {
    msg.restore();
    if let Some(addr) = cfg.mqtt.listen {
        let bound = msg
            .start_broker(addr)
            .await
            .map_err(|e| anyhow::anyhow!("the MQTT broker: {e}"))?;
        tracing::info!(parent: span, "MQTT broker listening on {bound}");
    }
    Ok(())
}

/// Finds `mapping` policies in the ledger by their id, the ledger's or the
/// one the policy's body names (EdgeLake refers to them by the latter).
fn mapping_lookup(mesh: &Arc<Mesh>) -> mqtt::PolicyLookup {
    let mesh = Arc::downgrade(mesh);
    Arc::new(move |id: &str| {
        mesh.upgrade()?.with_view(|v| {
            v.get(id)
                .filter(|p| p.kind == "mapping")
                .or_else(|| {
                    v.policies().find(|p| {
                        p.kind == "mapping" && p.policy["mapping"]["id"].as_str() == Some(id)
                    })
                })
                .map(|p| p.policy.clone())
        })
    })
}

/// The closed network the node is in (`None`: open), and the admin key it
/// admits itself with.
fn network_of(
    cfg: &Config,
) -> anyhow::Result<(
    Option<tarn_ledger::Author>,
    Option<ed25519_dalek::SigningKey>,
)> {
    let named = cfg
        .network
        .as_deref()
        .and_then(tarn_ledger::member::author_of_peer_id);
    let Some(path) = &cfg.admin_key else {
        return Ok((named, None));
    };
    let key = crate::mesh::read_key_file(path)?;
    let root = tarn_ledger::Author(key.verifying_key().to_bytes());
    if named.is_some_and(|n| n != root) {
        anyhow::bail!(
            "{} is not the key of network {}",
            path.display(),
            cfg.network.as_deref().unwrap_or_default()
        );
    }
    Ok((Some(root), Some(key)))
}

/// What `/v1/status` says of the node.
fn info_of(cfg: &Config, rest: SocketAddr) -> Info {
    Info {
        name: cfg.name.clone(),
        services: cfg.services.clone(),
        rest,
        data_dir: cfg.data_dir.clone(),
        durability: cfg.durability,
        started: Instant::now(),
        cluster: cfg.cluster.clone(),
        streaming: cfg.streaming.clone(),
        tls: cfg.tls.cert.is_some(),
        watch_dir: (cfg.has(Service::Operator) && cfg.watch.enabled).then(|| cfg.watch_dir()),
    }
}

/// This node as the network knows it.
fn me_of(s: &AppState, cfg: &Config) -> Me {
    Me {
        peer: s.mesh.peer_id(),
        name: cfg.name.clone(),
        services: cfg.services.clone(),
        cluster: cfg.cluster.clone(),
        rest: s.info.rest.to_string(),
    }
}

/// Takes the data directory (one node at a time) and opens what is in it.
async fn open(cfg: &Config, clock: &SharedClock) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let lock = File::create(cfg.data_dir.join("LOCK"))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "data directory {} is in use by another tarn node",
            cfg.data_dir.display()
        );
    }
    let (secret, keypair) = crate::mesh::identity(&cfg.data_dir)?;
    let peer_id = keypair.public().to_peer_id().to_string();
    let (cfg, clock) = (cfg.clone(), clock.clone());
    let (store, streams, publisher) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let publisher = if cfg.has(Service::Publisher) {
            Some(Arc::new(Publisher::open(
                &cfg.data_dir,
                cfg.durability,
                &cfg.publisher,
            )?))
        } else {
            None
        };
        crate::store::set_memory_budget(cfg.sqlite_memory_mb)?;
        let store = Arc::new(Storage::open(
            &cfg.data_dir,
            &cfg.name,
            &peer_id,
            cfg.durability,
            clock.clone(),
        )?);
        let streams = Arc::new(Streams::open(
            store.clone(),
            &cfg.data_dir,
            cfg.streaming.clone(),
            clock,
        )?);
        Ok((store, streams, publisher))
    })
    .await??;
    Ok(Opened {
        lock,
        secret,
        keypair,
        store,
        streams,
        publisher,
    })
}

fn net_config(cfg: &Config, o: &Opened) -> tarn_net::Config {
    let mut net = tarn_net::Config::new(o.keypair.clone());
    (net.listen, net.bootstrap) = cfg.multiaddrs();
    net.mdns = cfg.mdns;
    net.relay_server = cfg.has(Service::Master);
    net.peers_target = cfg.peers_target;
    net.peers_max = cfg.peers_max;
    // Requests carry batches too (replication pushes, a publisher's
    // batches): as large as any message the node accepts.
    net.max_request_bytes = crate::proto::MAX_MESSAGE;
    net
}

/// Stores audit events in batches (up to 5,000 at a time, a batch at most
/// every 200 ms), and prunes the log to its retention every hour. Ends,
/// having stored what was queued, when the node stops.
fn audit_writer(
    store: Arc<Storage>,
    sink: Sink,
    mut rx: tokio::sync::mpsc::Receiver<crate::audit::Event>,
    cfg: crate::config::AuditConfig,
    mut stop: watch::Receiver<bool>,
    span: &tracing::Span,
) -> JoinHandle<()> {
    let dropped = sink.dropped_counter();
    drop(sink);
    tokio::spawn(
        async move {
            let mut pruned = Instant::now() - Duration::from_secs(3600);
            let mut stopping = false;
            loop {
                let first = if stopping {
                    match rx.try_recv() {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        biased;
                        e = rx.recv() => match e {
                            Some(e) => e,
                            None => break,
                        },
                        _ = stop.changed() => {
                            stopping = true;
                            continue;
                        }
                    }
                };
                let mut batch = vec![first];
                while batch.len() < 5000 {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let lost = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
                if lost > 0 {
                    batch.push(crate::audit::Event::now(
                        "tarn",
                        format!("{lost} audit events dropped: the queue was full"),
                        "",
                        "dropped",
                    ));
                }
                let prune = pruned.elapsed() >= Duration::from_secs(3600);
                if prune {
                    pruned = Instant::now();
                }
                let store = store.clone();
                let cfg = cfg.clone();
                let r = tokio::task::spawn_blocking(move || {
                    store.audit_write(&batch)?;
                    if prune {
                        let keep = i64::from(cfg.retention_days) * 86_400_000_000;
                        let now = crate::clock::Clock::now_micros(&crate::clock::SystemClock);
                        store.audit_prune(now - keep, cfg.max_rows)?;
                    }
                    Ok::<_, crate::store::StoreError>(())
                })
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::error!("the audit log could not be written");
                }
                if !stopping {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        .instrument(span.clone()),
    )
}

/// Runs blocking `work` every `period` until `stop` changes. Ticks are
/// never queued up: a slow run delays the next one.
fn every(
    period: Duration,
    mut stop: watch::Receiver<bool>,
    span: &tracing::Span,
    work: impl Fn() + Send + Sync + 'static,
) -> JoinHandle<()> {
    let work = Arc::new(work);
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        let w = work.clone();
                        let _ = tokio::task::spawn_blocking(move || w()).await;
                    }
                }
            }
        }
        .instrument(span.clone()),
    )
}
