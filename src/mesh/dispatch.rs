//! The loop over the network's events: connections, gossip, and peers'
//! requests, each request handed to the handler registered for its
//! family. Handlers run as tasks, at most [`MAX_HANDLERS`] at once; a
//! request that finds no free slot is answered `busy` at once, so this
//! loop never waits, and the network loop behind it (through which every
//! answer goes) never waits for it.

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
/// How often each node compares ledger heads with a few peers.
const SYNC_EVERY: Duration = Duration::from_secs(3);
/// Peers compared with per round: enough to repair, cheap at any size.
const SYNC_FANOUT: usize = 3;

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
}

impl Router {
    pub fn new(mesh: Arc<Mesh>) -> Router {
        let ledger = Arc::new(super::ledger_sync::LedgerService(mesh.clone()));
        Router {
            mesh,
            handlers: HashMap::new(),
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
        let slots = Arc::new(Semaphore::new(MAX_HANDLERS));
        let mut round = 0usize;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                ev = events.recv() => match ev {
                    Some(ev) => self.event(ev, &slots),
                    None => break,
                },
                _ = tick.tick() => {
                    round = round.wrapping_add(1);
                    self.sync_round(round, &slots);
                }
            }
        }
    }

    fn event(&self, ev: Event, slots: &Arc<Semaphore>) {
        let mesh = &self.mesh;
        match ev {
            Event::Listening(a) => mesh.listen.lock().expect("lock poisoned").push(a),
            Event::Connected(p) => {
                mesh.note(p, Some(true));
                if let Some(permit) = free(slots) {
                    let m = mesh.clone();
                    spawn(permit, async move { m.sync_with(p).await });
                }
            }
            Event::Disconnected(p) => mesh.note(p, Some(false)),
            Event::Gossip { from, topic, data } if topic == LEDGER_TOPIC && !data.is_empty() => {
                mesh.count_in(
                    &mesh.stats.gossip_in_msgs,
                    &mesh.stats.gossip_in_bytes,
                    data.len(),
                );
                if let Some(p) = from {
                    mesh.note(p, None);
                }
                match free(slots) {
                    Some(permit) => {
                        let m = mesh.clone();
                        spawn(permit, async move { m.receive(data, from).await });
                    }
                    None => tracing::debug!("too busy for a ledger entry: anti-entropy repairs it"),
                }
            }
            Event::Gossip { .. } => {}
            Event::Request { from, id, data } => {
                mesh.count_in(
                    &mesh.stats.rpc_in_msgs,
                    &mesh.stats.rpc_in_bytes,
                    data.len(),
                );
                self.request(from, id, data, slots);
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
    fn sync_round(&self, round: usize, slots: &Arc<Semaphore>) {
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
            let Some(permit) = free(slots) else { return };
            let m = self.mesh.clone();
            spawn(permit, async move { m.sync_with(p).await });
        }
    }
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
