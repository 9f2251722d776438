//! The loop over the network's events: connections, gossip, and peers'
//! requests, each request handed to the handler registered for its
//! family. Handlers run as tasks, at most [`MAX_HANDLERS`] at once; a
//! request that finds no free slot is answered `busy` at once, so this
//! loop never waits, and the network loop behind it (through which every
//! answer goes) never waits for it. The mesh's own work has room of its
//! own, so it never takes a slot a peer's request needs: gossiped entries
//! queue for one ledger worker ([`GOSSIP_QUEUE`]), and anti-entropy runs
//! with at most [`MAX_SYNCS`] peers at once; what finds no room is left to
//! the next round of anti-entropy.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tarn_net::{Event, PeerId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{LEDGER_TOPIC, Mesh};
use crate::error::Code;
use crate::proto::{self, Envelope, Family, MAX_MESSAGE, Reply, WireError};

/// Most peer messages handled at once; more requests are answered `busy`,
/// more gossip is left to anti-entropy.
pub const MAX_HANDLERS: usize = 256;
/// Gossiped ledger entries waiting to be applied.
pub const GOSSIP_QUEUE: usize = 4096;

/// Most gossiped messages taken from the queue at once (their entries
/// applied in one write to the ledger).
const APPLY_BATCH: usize = 256;
/// Anti-entropy runs at once.
pub const MAX_SYNCS: usize = 32;
/// Probes of lost links at once: one a lost link, and links are bounded
/// (`peers_max`), so this is only reached when most links drop together.
pub const MAX_PROBES: usize = 64;
/// How often each node compares ledger heads with a few peers.
pub const SYNC_EVERY: Duration = Duration::from_secs(3);
/// Peers compared with per round: enough to repair, cheap at any size
/// (a converged pair exchanges two digests).
const SYNC_FANOUT: usize = 1;

/// The network's events, waiting for a [`Router`].
pub struct Events(pub(super) mpsc::Receiver<Event>);

/// A service's side of one message family: answers one request.
pub trait Serve<R: proto::Request>: Send + Sync + 'static {
    fn serve(&self, from: PeerId, req: R) -> impl Future<Output = Reply<R::Response>> + Send;
}

type Answer = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// A handler with its message types erased: bytes in, bytes out.
trait Handler: Send + Sync {
    fn handle(&self, from: PeerId, body: Vec<u8>) -> Answer;
}

struct Typed<R, S> {
    service: Arc<S>,
    _request: PhantomData<fn(R)>,
}

impl<R: proto::Request, S: Serve<R>> Handler for Typed<R, S> {
    fn handle(&self, from: PeerId, body: Vec<u8>) -> Answer {
        let service = self.service.clone();
        Box::pin(async move {
            let reply = match tarn_net::codec::decode::<R>(&body, MAX_MESSAGE) {
                Ok(req) => service.serve(from, req).await,
                Err(e) => Err(WireError::new(
                    Code::BadRequest,
                    format!("malformed request: {e}"),
                )),
            };
            proto::encode_reply(&reply)
        })
    }
}

/// Routes each family's requests to its handler; the ledger's own family
/// is routed from the start.
pub struct Router {
    mesh: Arc<Mesh>,
    handlers: HashMap<Family, Arc<dyn Handler>>,
    slots: usize,
}

impl Router {
    pub fn new(mesh: Arc<Mesh>) -> Router {
        let ledger = Arc::new(super::ledger_sync::LedgerService(mesh.clone()));
        Router {
            mesh,
            handlers: HashMap::new(),
            slots: MAX_HANDLERS,
        }
        .route(ledger)
    }

    /// Sends requests of `R`'s family to `service`.
    pub fn route<R: proto::Request>(mut self, service: Arc<impl Serve<R>>) -> Router {
        let handler = Typed::<R, _> {
            service,
            _request: PhantomData,
        };
        self.handlers.insert(R::FAMILY, Arc::new(handler));
        self
    }

    /// At most `n` handlers at once (tests).
    #[cfg(test)]
    fn slots(mut self, n: usize) -> Router {
        self.slots = n;
        self
    }

    /// Runs the loop until `stop` changes or the network stops.
    pub fn spawn(
        self,
        events: Events,
        stop: watch::Receiver<bool>,
        span: tracing::Span,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(events.0, stop).instrument(span))
    }

    async fn run(self, mut events: mpsc::Receiver<Event>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut seconds = 0u64;
        let room = Room {
            slots: Arc::new(Semaphore::new(self.slots)),
            syncs: Arc::new(Semaphore::new(MAX_SYNCS)),
            tick: Arc::new(Semaphore::new(1)),
            probes: Arc::new(Semaphore::new(MAX_PROBES)),
            gossip: self.ledger_worker(),
        };
        let mut round = 0usize;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                ev = events.recv() => match ev {
                    Some(ev) => self.event(ev, &room),
                    None => break,
                },
                _ = tick.tick() => {
                    round = round.wrapping_add(1);
                    self.sync_round(round, &room.syncs);
                }
                _ = second.tick() => {
                    seconds += 1;
                    let m = self.mesh.clone();
                    if let Some(permit) = free(&room.tick) {
                        spawn(permit, async move { m.liveness_tick(seconds).await });
                    }
                }
            }
        }
    }

    /// Applies gossiped entries and liveness rumors one after another (the
    /// ledger takes one writer at a time anyway); ends when the loop does.
    fn ledger_worker(&self) -> mpsc::Sender<Gossiped> {
        let (tx, mut rx) = mpsc::channel::<Gossiped>(GOSSIP_QUEUE);
        let mesh = self.mesh.clone();
        tokio::spawn(
            async move {
                // Entries waiting are applied together: one write to the
                // ledger, one trip to a blocking thread (a starting network
                // gossips them faster than one at a time keeps up with).
                while let Some(g) = rx.recv().await {
                    let mut entries = Vec::new();
                    let mut next = Some(g);
                    let mut taken = 0;
                    while let Some(g) = next.take() {
                        match g {
                            Gossiped::Entry(data, from) => entries.push((data, from)),
                            Gossiped::Rumor(data) => mesh.hear(&data).await,
                        }
                        taken += 1;
                        if taken < APPLY_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !entries.is_empty() {
                        mesh.receive(entries).await;
                    }
                }
            }
            .in_current_span(),
        );
        tx
    }

    fn event(&self, ev: Event, room: &Room) {
        let mesh = &self.mesh;
        match ev {
            Event::Listening(a) => {
                mesh.listen.lock().expect("lock poisoned").push(a);
                mesh.addrs_changed();
            }
            Event::Connected(p) => {
                mesh.note(p, Some(true));
                mesh.stats
                    .links_opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let m = mesh.clone();
                if let Some(permit) = free(&room.syncs) {
                    spawn(permit, async move {
                        if !m.shut_out_unless_admitted(p).await {
                            m.sync_with(p).await;
                        }
                    });
                } else {
                    tokio::spawn(
                        async move { m.shut_out_unless_admitted(p).await }.in_current_span(),
                    );
                }
            }
            Event::Disconnected { peer, on_purpose } => {
                mesh.note(peer, Some(false));
                if !on_purpose {
                    match free(&room.probes) {
                        Some(permit) => {
                            let m = mesh.clone();
                            spawn(permit, async move { m.link_lost(peer).await });
                        }
                        None => tracing::warn!(
                            "{peer} was lost with {MAX_PROBES} probes running: not probed"
                        ),
                    }
                }
            }
            // Only members' gossip (its entries would be refused anyway).
            Event::Gossip { from, .. } if from.is_some_and(|p| !mesh.admits(&p)) => {}
            Event::Gossip { from, topic, data } if topic == LEDGER_TOPIC && !data.is_empty() => {
                let stats = &mesh.stats;
                mesh.count_in(&stats.gossip_in_msgs, &stats.gossip_in_bytes, data.len());
                if let Some(p) = from {
                    mesh.note(p, None);
                }
                if room.gossip.try_send(Gossiped::Entry(data, from)).is_err() {
                    tracing::debug!("too busy for a ledger entry: anti-entropy repairs it");
                }
            }
            Event::Gossip { topic, data, .. } if topic == proto::liveness::TOPIC => {
                let stats = &mesh.stats;
                mesh.count_in(&stats.gossip_in_msgs, &stats.gossip_in_bytes, data.len());
                stats
                    .rumors_in_msgs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if room.gossip.try_send(Gossiped::Rumor(data)).is_err() {
                    tracing::debug!("too busy for a liveness rumor: anti-entropy repairs it");
                }
            }
            Event::Gossip { .. } => {}
            Event::Request { from, id, data } => {
                let stats = &mesh.stats;
                mesh.count_in(&stats.rpc_in_msgs, &stats.rpc_in_bytes, data.len());
                self.request(from, id, data, &room.slots);
            }
        }
    }

    /// Hands a request to its family's handler, or answers at once why not.
    fn request(&self, from: PeerId, id: u64, data: Vec<u8>, slots: &Arc<Semaphore>) {
        let refuse = |e: WireError| {
            let net = self.mesh.net.clone();
            let bytes = proto::encode_reply::<()>(&Err(e));
            tokio::spawn(async move { net.respond(id, bytes).await }.in_current_span());
        };
        // In a closed network only members are answered, whatever they ask.
        if !self.mesh.admits(&from) {
            let m = self.mesh.clone();
            tokio::spawn(async move { m.shut_out_unless_admitted(from).await }.in_current_span());
            return refuse(WireError::new(
                Code::NotAdmitted,
                "this node answers only members of its network",
            ));
        }
        let env = match tarn_net::codec::decode::<Envelope>(&data, MAX_MESSAGE) {
            Ok(env) => env,
            Err(e) => {
                return refuse(WireError::new(
                    Code::BadRequest,
                    format!("malformed request: {e}"),
                ));
            }
        };
        let Some(handler) = self.handlers.get(&env.family) else {
            return refuse(WireError::new(
                Code::BadRequest,
                format!("this node does not serve {:?} requests", env.family),
            ));
        };
        let Some(permit) = free(slots) else {
            return refuse(WireError::new(
                Code::Busy,
                "too many requests in progress on this node",
            ));
        };
        let answer = handler.handle(from, env.body.into_vec());
        let net = self.mesh.net.clone();
        spawn(permit, async move {
            let bytes = answer.await;
            let _ = net.respond(id, bytes).await;
        });
    }

    /// Anti-entropy with a few connected peers, a different few each round.
    fn sync_round(&self, round: usize, syncs: &Arc<Semaphore>) {
        let mut peers: Vec<PeerId> = self
            .mesh
            .peer_states()
            .into_iter()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| p)
            .collect();
        peers.sort();
        let n = peers.len();
        for k in 0..n.min(SYNC_FANOUT) {
            let p = peers[(round * SYNC_FANOUT + k) % n];
            let Some(permit) = free(syncs) else { return };
            let m = self.mesh.clone();
            spawn(permit, async move { m.sync_with(p).await });
        }
    }
}

/// Where work goes: peers' requests, the mesh's anti-entropy, gossip.
struct Room {
    slots: Arc<Semaphore>,
    syncs: Arc<Semaphore>,
    /// Liveness has rooms of its own: syncs with peers behind a cut link
    /// wait out their timeouts, and while they filled every sync slot, lost
    /// links went unprobed and suspicions never became deaths.
    tick: Arc<Semaphore>,
    probes: Arc<Semaphore>,
    gossip: mpsc::Sender<Gossiped>,
}

/// What the gossip worker applies, in arrival order.
enum Gossiped {
    Entry(Vec<u8>, Option<PeerId>),
    Rumor(Vec<u8>),
}

fn free(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    slots.clone().try_acquire_owned().ok()
}

/// Runs `f` holding one handler slot.
fn spawn(permit: OwnedSemaphorePermit, f: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(
        async move {
            f.await;
            drop(permit);
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::mesh::CallError;
    use crate::proto::ingest::{Request, Response};

    /// Answers every ingest request with its table name as `rows`, after
    /// waiting for `gate` when the table is `wait`.
    struct Echo {
        gate: Arc<Notify>,
        waiting: Arc<AtomicUsize>,
    }

    impl Serve<Request> for Echo {
        async fn serve(&self, _from: PeerId, req: Request) -> Reply<Response> {
            let Request::Ingest { table, .. } = req;
            if table == "wait" {
                let woken = self.gate.notified();
                self.waiting.fetch_add(1, Ordering::SeqCst);
                woken.await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(Response::Ingested {
                rows: table.len() as u64,
                batch: 0,
                duplicate: false,
            })
        }
    }

    fn ingest(table: &str) -> Request {
        Request::Ingest {
            db: "lab".into(),
            table: table.into(),
            source: String::new(),
            hash: "h".into(),
            body: serde_bytes::ByteBuf::new(),
        }
    }

    async fn mesh(
        dir: &std::path::Path,
        seed: u8,
        boot: Vec<tarn_net::Multiaddr>,
    ) -> (Arc<Mesh>, Events) {
        let key = tarn_net::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let mut cfg = tarn_net::Config::new(key);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.bootstrap = boot;
        cfg.mdns = false;
        cfg.max_request_bytes = MAX_MESSAGE;
        Mesh::start(dir, cfg, [seed; 32], crate::clock::system(), None)
            .await
            .unwrap()
    }

    /// A routed family reaches its handler; a family nobody registered and
    /// bytes that are no envelope get a clear error; with every handler
    /// slot taken a request is answered `busy` at once, and the slots come
    /// back when the handlers finish.
    #[tokio::test]
    async fn requests_reach_their_family_or_get_a_typed_refusal() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, a_events) = mesh(da.path(), 1, Vec::new()).await;
        let gate = Arc::new(Notify::new());
        let waiting = Arc::new(AtomicUsize::new(0));
        let (_stop, stopped) = watch::channel(false);
        let span = tracing::Span::none();
        let _ra = Router::new(a.clone())
            .route(Arc::new(Echo {
                gate: gate.clone(),
                waiting: waiting.clone(),
            }))
            .slots(2)
            .spawn(a_events, stopped.clone(), span.clone());
        a.wait_listening(Duration::from_secs(5)).await;
        let addr = a.full_listen_addrs()[0].parse().unwrap();
        let (b, b_events) = mesh(db.path(), 2, vec![addr]).await;
        let _rb = Router::new(b.clone()).spawn(b_events, stopped, span);
        let peer = a.peer_id();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !b.alive(&peer) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("b connects to a");

        let r = b.call(peer, &ingest("abc")).await.unwrap();
        assert!(matches!(r, Response::Ingested { rows: 3, .. }));
        // b registered no ingest handler.
        match a.call(b.peer_id(), &ingest("x")).await {
            Err(CallError::Remote(e)) => assert_eq!(e.code, Code::BadRequest, "{e}"),
            other => panic!("{other:?}"),
        }
        // Not an envelope.
        let raw = b
            .net
            .request(peer, b"\x01\x02 not cbor".to_vec())
            .await
            .unwrap();
        let reply = proto::decode_reply::<Request>(&raw).unwrap();
        assert_eq!(reply.unwrap_err().code, Code::BadRequest);

        // Two handlers wait (a wait refused while a ledger sync held a slot
        // is started again); then a request finds no slot.
        let mut waits: Vec<tokio::task::JoinHandle<_>> = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while waiting.load(Ordering::SeqCst) < 2 {
                if waits.iter().filter(|w| !w.is_finished()).count() < 2 {
                    let b = b.clone();
                    waits.push(tokio::spawn(
                        async move { b.call(peer, &ingest("wait")).await },
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("two handlers waiting");
        match b.call(peer, &ingest("now")).await {
            Err(CallError::Remote(e)) => assert_eq!(e.code, Code::Busy, "{e}"),
            other => panic!("not refused while both slots are taken: {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while !waits.iter().all(|w| w.is_finished()) {
                gate.notify_waiters();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the waiting handlers end");
        let r = b.call(peer, &ingest("again")).await.unwrap();
        assert!(matches!(r, Response::Ingested { rows: 5, .. }));
    }
}
