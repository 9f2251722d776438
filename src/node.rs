//! A running node: its storage, buffers, watcher and REST server, started
//! from a [`Config`] and stopped by [`Node::shutdown`].

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::config::{Config, Service};
use crate::error::ApiError;
use crate::storage::{QueryLimits, QueryResult, Storage};
use crate::stream::Streams;
use crate::watch::Watcher;

/// What every request handler and background task of one node shares.
pub struct Shared {
    pub cfg: Config,
    pub storage: Arc<Storage>,
    pub streams: Arc<Streams>,
    pub rest_addr: SocketAddr,
    pub started: Instant,
    /// Request bodies in memory, in KiB: bounded by `max_inflight_bytes`.
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub mesh: Arc<crate::mesh::Mesh>,
    /// Query results being pulled by peers.
    pub cursors: crate::scatter::Cursors,
    /// The publisher's queue (publisher service only).
    pub publisher: Option<Arc<crate::publish::Publisher>>,
    /// Batches of other members this node refused, by origin: not pulled
    /// again until a restart.
    pub refused: std::sync::Mutex<std::collections::HashMap<String, Vec<i64>>>,
}

impl Shared {
    /// Validates `sql` and runs it on this node's copy of `db`. Blocking.
    pub fn local_query(
        &self,
        db: &str,
        sql: &str,
        timeout: Option<Duration>,
    ) -> Result<QueryResult, ApiError> {
        if !self.cfg.has(Service::Operator) {
            return Err(ApiError::bad_request(
                "no_operator",
                "this node stores no data (it does not run the operator service)",
            ));
        }
        let bad = |e: tarn_query::PlanError| ApiError::bad_request("invalid_sql", e.to_string());
        let limit = self.cfg.query_timeout();
        let limits = QueryLimits {
            max_rows: self.cfg.max_result_rows,
            timeout: timeout.map_or(limit, |t| t.min(limit)),
        };
        // EdgeLake's time functions, as over the network: now() once,
        // period()'s end first, increments() as grouping.
        let prepared = tarn_query::Prepared::new(sql, crate::storage::now_micros()).map_err(bad)?;
        let end = match prepared.probe() {
            Ok(Some(probe)) => {
                let probe = tarn_query::Select::parse(&probe)
                    .map_err(|e| ApiError::bad_request("invalid_sql", e.to_string()))?;
                match self
                    .storage
                    .query(db, probe, limits)?
                    .rows
                    .first()
                    .and_then(|r| r.first())
                {
                    Some(crate::rows::Val::Text(t)) => Some(t.clone()),
                    _ => None,
                }
            }
            _ => None,
        };
        let mut select = prepared.finish(end.as_deref()).map_err(bad)?;
        let casts = select.take_casts();
        let select = tarn_query::rewrite_increments(select).map_err(bad)?;
        let mut result = self.storage.query(db, select, limits)?;
        crate::format::apply_casts(&mut result, &casts);
        Ok(result)
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.cfg.has(Service::Operator) {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                "no_operator",
                "this node stores no data (it does not run the operator service)",
            ))
        }
    }
}

/// Runs blocking `work` every `period` until `stop` changes. Ticks are
/// never queued up: a slow run delays the next one.
fn every(
    period: Duration,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
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
        .instrument(span),
    )
}

/// A started node. Dropping it without [`Node::shutdown`] stops nothing
/// gracefully; call `shutdown` to flush buffers.
pub struct Node {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _lock: File,
}

impl Node {
    /// Opens the data directory, replays what a crash left, binds the REST
    /// port and starts the background work.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
        let lock = File::create(cfg.data_dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "data directory {} is in use by another tarn node",
                cfg.data_dir.display()
            );
        }
        let span = tracing::info_span!("node", name = %cfg.name);
        let (secret, keypair) = crate::mesh::identity(&cfg.data_dir)?;
        let peer_id = keypair.public().to_peer_id().to_string();
        let (storage, streams, publisher) = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let publisher = if cfg.has(Service::Publisher) {
                    Some(Arc::new(crate::publish::Publisher::open(
                        &cfg.data_dir,
                        cfg.durability,
                        &cfg.publisher,
                    )?))
                } else {
                    None
                };
                let storage = Arc::new(Storage::open(
                    &cfg.data_dir,
                    &cfg.name,
                    &peer_id,
                    cfg.durability,
                )?);
                let streams = Arc::new(Streams::open(
                    storage.clone(),
                    &cfg.data_dir,
                    cfg.streaming.clone(),
                )?);
                Ok((storage, streams, publisher))
            })
            .await??
        };
        let (stop, stopped) = watch::channel(false);
        let mut net_cfg = tarn_net::Config::new(keypair);
        (net_cfg.listen, net_cfg.bootstrap) = cfg.multiaddrs();
        net_cfg.mdns = cfg.mdns;
        net_cfg.relay_server = cfg.has(Service::Master);
        // Requests carry batches too (replication pushes, a publisher's
        // batches): as large as any message the node accepts.
        net_cfg.max_request_bytes = crate::mesh::MAX_RPC;
        let mesh = crate::mesh::start(&cfg.data_dir, net_cfg, secret, stopped.clone()).await?;
        let listener = tokio::net::TcpListener::bind(cfg.rest)
            .await
            .with_context(|| format!("binding the REST port {}", cfg.rest))?;
        let rest_addr = listener.local_addr()?;
        let cfg_inflight_kib = cfg.max_inflight_bytes.div_ceil(1024);
        let shared = Arc::new(Shared {
            cfg,
            storage,
            streams,
            rest_addr,
            started: Instant::now(),
            inflight: Arc::new(tokio::sync::Semaphore::new(cfg_inflight_kib)),
            mesh,
            cursors: Default::default(),
            publisher,
            refused: Default::default(),
        });
        let _ = shared.mesh.node.set(Arc::downgrade(&shared));
        let mut tasks = Vec::new();

        let app = crate::rest::router(shared.clone());
        let mut rx = stopped.clone();
        tasks.push(tokio::spawn(
            async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("REST server stopped: {e}");
                }
            }
            .instrument(span.clone()),
        ));

        let streams = shared.streams.clone();
        let period = Duration::from_millis((shared.cfg.streaming.threshold_ms / 4).clamp(10, 250));
        tasks.push(every(period, stopped.clone(), span.clone(), move || {
            streams.tick()
        }));

        let storage = shared.storage.clone();
        let period = Duration::from_millis(200);
        tasks.push(every(period, stopped.clone(), span.clone(), move || {
            storage.checkpoint()
        }));

        if shared.cfg.has(Service::Operator) && shared.cfg.watch.enabled {
            let dir = shared.cfg.watch_dir();
            let watcher = Watcher::new(shared.storage.clone(), &shared.cfg.watch, dir.clone())?;
            let watcher = std::sync::Mutex::new(watcher);
            let period = Duration::from_millis(shared.cfg.watch.poll_ms);
            tracing::info!(parent: &span, "watching {} for data files", dir.display());
            tasks.push(every(period, stopped.clone(), span.clone(), move || {
                watcher.lock().unwrap_or_else(|p| p.into_inner()).scan()
            }));
        }
        tasks.extend(crate::replicate::spawn(
            &shared,
            stopped.clone(),
            span.clone(),
        ));
        if let Some(p) = &shared.publisher {
            tasks.push(tokio::spawn(
                crate::publish::send_loop(shared.clone(), p.clone(), stopped.clone())
                    .instrument(span.clone()),
            ));
        }
        // Wait (briefly) for the swarm's listen addresses, so that the start
        // line can print them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.mesh.listen.lock().expect("lock poisoned").is_empty()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::mesh::publish_self(&shared).await?;
        crate::mesh::announce_tables(&shared).await;
        let sh = shared.clone();
        let mut rx = stopped.clone();
        tasks.push(tokio::spawn(
            async move {
                let changed = sh.storage.tables_changed.clone();
                loop {
                    tokio::select! {
                        biased;
                        _ = rx.changed() => break,
                        _ = changed.notified() => crate::mesh::announce_tables(&sh).await,
                        // Also periodically: a notice lost to a crash is repaired.
                        _ = tokio::time::sleep(Duration::from_secs(30)) => crate::mesh::announce_tables(&sh).await,
                    }
                }
            }
            .instrument(span.clone()),
        ));
        tracing::info!(parent: &span, "REST API listening on http://{rest_addr}");
        Ok(Node {
            shared,
            stop,
            tasks,
            _lock: lock,
        })
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.shared.rest_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The node's PeerId.
    pub fn peer_id(&self) -> tarn_net::PeerId {
        self.shared.mesh.peer_id()
    }

    /// Where the node listens for peers, each with `/p2p/<peer-id>`.
    pub fn p2p_addrs(&self) -> Vec<String> {
        self.shared.mesh.full_listen_addrs()
    }

    /// Stops accepting requests, lets running ones finish, and writes every
    /// streaming buffer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let streams = self.shared.streams.clone();
        let n = tokio::task::spawn_blocking(move || streams.flush_all()).await?;
        if n > 0 {
            tracing::info!("flushed {n} buffered rows");
        }
        // Wait for the ledger to be released (requests in flight hold it), so
        // that the data directory can be opened again at once.
        let ledger = Arc::downgrade(&self.shared.mesh.ledger);
        drop(self.shared);
        drop(self._lock);
        let deadline = Instant::now() + Duration::from_secs(40);
        while ledger.strong_count() > 0 {
            if Instant::now() > deadline {
                anyhow::bail!("the ledger is still in use after shutdown");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
