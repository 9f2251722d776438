//! The replicator's loop: feeds the [`Core`] with commits, confirmations,
//! the cluster's live members and the results of its actions, and carries
//! the actions out over the mesh and on the store, each as a task of its
//! own (storage work on blocking threads).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_net::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::core::{Action, BatchRef, Confirmation, Core, Input, Timing};
use super::local;
use crate::cluster::membership::{self, Me, Member};
use crate::mesh::{CallError, Mesh};
use crate::proto::replication::{Request, Response};
use crate::store::{Committed, Holding, ReplBatch, Storage};

/// How often the loop looks at the cluster's members and the time.
const TICK: Duration = Duration::from_millis(100);
/// Confirmations waiting for the loop.
const CONFIRM_QUEUE: usize = 1024;

/// What the replicator needs.
pub struct Deps {
    pub store: Arc<Storage>,
    pub mesh: Arc<Mesh>,
    pub me: Me,
    pub timing: Timing,
}

/// A write's way to wait for its cluster (cheap to clone).
#[derive(Clone)]
pub struct Replicator {
    confirm: mpsc::Sender<(Vec<BatchRef>, oneshot::Sender<Confirmation>)>,
    cluster: String,
}

/// The replicator has stopped (the node is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replicator has stopped")]
pub struct Stopped;

impl Replicator {
    /// The cluster this node replicates within.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Waits until the cluster's live members hold `batches`, or until
    /// each had its time to confirm; says who holds them.
    pub async fn confirm(&self, batches: Vec<BatchRef>) -> Result<Confirmation, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.confirm
            .send((batches, tx))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Starts the replicator of an operator in a cluster.
pub fn spawn(
    deps: Deps,
    stop: watch::Receiver<bool>,
    span: tracing::Span,
) -> (Replicator, JoinHandle<()>) {
    let (committed_tx, committed) = mpsc::channel(super::core::MAX_QUEUE);
    deps.store.on_commit(committed_tx);
    let (confirm, confirms) = mpsc::channel(CONFIRM_QUEUE);
    let handle = Replicator {
        confirm,
        cluster: deps.me.table_cluster(),
    };
    let task = tokio::spawn(run(Arc::new(deps), committed, confirms, stop).instrument(span));
    (handle, task)
}

type ConfirmRx = mpsc::Receiver<(Vec<BatchRef>, oneshot::Sender<Confirmation>)>;

async fn run(
    deps: Arc<Deps>,
    mut committed: mpsc::Receiver<Committed>,
    mut confirms: ConfirmRx,
    mut stop: watch::Receiver<bool>,
) {
    let mut core = Core::new(deps.timing, Instant::now());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut io: JoinSet<Input> = JoinSet::new();
    // What each task reports if it fails without an answer (it panicked).
    let mut failures: HashMap<tokio::task::Id, Input> = HashMap::new();
    let mut waiting: HashMap<u64, oneshot::Sender<Confirmation>> = HashMap::new();
    let mut next_waiter = 0u64;
    let origin = deps.store.origin().to_owned();
    loop {
        let now = Instant::now();
        let actions = tokio::select! {
            biased;
            _ = stop.changed() => break,
            // Finish what is under way before taking more.
            Some(done) = io.join_next_with_id(), if !io.is_empty() => {
                let input = match done {
                    Ok((id, input)) => {
                        failures.remove(&id);
                        Some(input)
                    }
                    Err(e) => {
                        tracing::error!("a replication task failed: {e}");
                        failures.remove(&e.id())
                    }
                };
                input.map(|i| core.step(i, now)).unwrap_or_default()
            },
            Some((batches, reply)) = confirms.recv() => {
                next_waiter += 1;
                waiting.insert(next_waiter, reply);
                let mut a = core.step(Input::Members(members(&deps)), now);
                a.extend(core.step(Input::Confirm { waiter: next_waiter, batches }, now));
                a
            }
            Some(c) = committed.recv() => {
                let b = BatchRef { db: c.db, origin: origin.clone(), id: c.id };
                core.step(Input::Committed(b), now)
            }
            _ = tick.tick() => {
                let ms = members(&deps);
                // The cluster's links are kept when the node trims to its target.
                deps.mesh.keep_linked(ms.iter().map(|(m, _)| m.peer)).await;
                let mut a = core.step(Input::Members(ms), now);
                a.extend(core.tick(now));
                a
            }
        };
        for action in actions {
            let io_action = match action {
                Action::Confirmed { waiter, report } => {
                    if let Some(tx) = waiting.remove(&waiter) {
                        let _ = tx.send(report);
                    }
                    continue;
                }
                Action::Push { push, batches, to } => Io::Push { push, batches, to },
                Action::AskInventory(peer) => Io::Ask(peer),
                Action::Pull { peer, origin, skip } => Io::Pull { peer, origin, skip },
            };
            let failure = io_action.failed();
            let task = io.spawn(perform(deps.clone(), io_action).in_current_span());
            failures.insert(task.id(), failure);
        }
    }
}

/// The actions that are I/O, each done by a task of its own.
enum Io {
    Push {
        push: u64,
        batches: Vec<BatchRef>,
        to: Vec<PeerId>,
    },
    Ask(PeerId),
    Pull {
        peer: PeerId,
        origin: String,
        skip: Vec<i64>,
    },
}

impl Io {
    /// What the core is told when the task ends without an answer.
    fn failed(&self) -> Input {
        let lost = "the task failed".to_owned();
        match self {
            Io::Push { push, to, .. } => Input::Pushed {
                push: *push,
                missing: Vec::new(),
                results: to.iter().map(|p| (*p, Err(lost.clone()))).collect(),
            },
            Io::Ask(peer) => Input::Inventory {
                peer: *peer,
                theirs: Err(lost),
                mine: Vec::new(),
            },
            Io::Pull { peer, origin, .. } => Input::Pulled {
                peer: *peer,
                origin: origin.clone(),
                result: Err(lost),
            },
        }
    }
}

/// The other members of the cluster, and whether each is live.
fn members(deps: &Deps) -> Vec<(Member, bool)> {
    deps.mesh
        .with_view(|view| membership::members(view, &deps.me))
        .into_iter()
        .map(|m| {
            let live = deps.mesh.alive(&m.peer);
            (m, live)
        })
        .collect()
}

/// Carries out one action; returns its result as the core's next input.
async fn perform(deps: Arc<Deps>, io: Io) -> Input {
    match io {
        Io::Push { push, batches, to } => {
            let (missing, results) = push_to(&deps, &batches, &to).await;
            Input::Pushed {
                push,
                missing,
                results,
            }
        }
        Io::Ask(peer) => {
            let theirs = inventory(&deps.mesh, peer, false, deps.timing.ack_timeout)
                .await
                .map(|(h, _)| h);
            Input::Inventory {
                peer,
                theirs,
                mine: deps.store.inventory(),
            }
        }
        Io::Pull { peer, origin, skip } => {
            let result = pull(&deps, peer, &origin, skip).await;
            Input::Pulled {
                peer,
                origin,
                result,
            }
        }
    }
}

/// Sends `batches` to each of `to`, message after message; a member that
/// fails one gets no more. Returns the batches not found here and, per
/// member, whether it holds every batch sent.
async fn push_to(
    deps: &Arc<Deps>,
    batches: &[BatchRef],
    to: &[PeerId],
) -> (Vec<BatchRef>, Vec<(PeerId, Result<(), String>)>) {
    let batches: Arc<[BatchRef]> = batches.into();
    let mut failed: HashMap<PeerId, String> = HashMap::new();
    let mut missing = Vec::new();
    let mut at = 0;
    while at < batches.len() {
        // One message at a time, read as it is sent: memory stays at about
        // one message however far behind the pusher is.
        let (store, refs) = (deps.store.clone(), batches.clone());
        let read =
            tokio::task::spawn_blocking(move || local::read_message(&store, &refs, at)).await;
        let Ok((message, gone, next)) = read else {
            break;
        };
        at = next;
        missing.extend(gone);
        if message.is_empty() {
            continue;
        }
        let targets: Vec<PeerId> = to
            .iter()
            .filter(|p| !failed.contains_key(p))
            .copied()
            .collect();
        for (peer, r) in send_to_all(&deps.mesh, &targets, message, deps.timing.ack_timeout).await {
            if let Err(e) = r {
                tracing::debug!("replicating to {peer}: {e}");
                failed.insert(peer, e);
            }
        }
    }
    let results = to
        .iter()
        .map(|p| (*p, failed.remove(p).map_or(Ok(()), Err)))
        .collect();
    (missing, results)
}

/// One `Replicate` message to each member at once; per member, whether it
/// holds every batch.
async fn send_to_all(
    mesh: &Arc<Mesh>,
    to: &[PeerId],
    batches: Vec<ReplBatch>,
    timeout: Duration,
) -> Vec<(PeerId, Result<(), String>)> {
    let n = batches.len();
    let msg = Arc::new(Request::Replicate(batches));
    let mut set = JoinSet::new();
    for peer in to {
        let (mesh, msg, peer) = (mesh.clone(), msg.clone(), *peer);
        set.spawn(async move {
            let r = match tokio::time::timeout(timeout, mesh.call(peer, &*msg)).await {
                Err(_) => Err(format!("no answer in {} ms", timeout.as_millis())),
                Ok(Ok(Response::Replicated(results))) if results.len() == n => {
                    match results.into_iter().flatten().next() {
                        None => Ok(()),
                        Some(e) => Err(e),
                    }
                }
                Ok(Ok(_)) => Err("an unexpected answer".into()),
                Ok(Err(e)) => Err(e.to_string()),
            };
            (peer, r)
        });
    }
    set.join_all().await
}

/// A member's inventory (and rows per table with `tables`), or why there
/// is none. Short: a member behind a cut link not noticed yet must not
/// stall whoever asks.
pub async fn inventory(
    mesh: &Mesh,
    peer: PeerId,
    tables: bool,
    timeout: Duration,
) -> Result<(Vec<Holding>, Vec<(String, String, i64)>), String> {
    match tokio::time::timeout(timeout, mesh.call(peer, &Request::Inventory { tables })).await {
        Err(_) => Err(format!("no answer in {} s", timeout.as_secs())),
        Ok(Ok(Response::Holdings { holdings, tables })) => Ok((holdings, tables)),
        Ok(Ok(_)) => Err("an unexpected answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// One pull round: what `peer` holds of `origin` that this node lacks,
/// stored here.
async fn pull(
    deps: &Arc<Deps>,
    peer: PeerId,
    origin: &str,
    skip: Vec<i64>,
) -> Result<super::core::Pulled, String> {
    let have = local::have(&deps.store, origin, &skip);
    let msg = Request::Missing {
        origin: origin.to_owned(),
        have,
    };
    let batches = match deps.mesh.call(peer, &msg).await {
        Ok(Response::Batches(b)) => b,
        Ok(_) => return Err("an unexpected answer".into()),
        Err(CallError::Remote(e)) => return Err(e.message),
        Err(e) => return Err(e.to_string()),
    };
    let (store, from, origin) = (deps.store.clone(), peer.to_string(), origin.to_owned());
    tokio::task::spawn_blocking(move || local::store_pulled(&store, &from, &origin, batches))
        .await
        .map_err(|e| e.to_string())?
}
