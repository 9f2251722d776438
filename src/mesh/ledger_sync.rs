//! The ledger between replicas: entries gossiped in are verified and
//! applied (a gap starts anti-entropy with the sender); anti-entropy
//! compares digests first — two converged replicas exchange two hashes
//! each way and nothing else — then per-author heads, and fetches what is
//! missing, author by author, in bounded batches. The liveness table rides
//! along: its digest is in the same exchange, and a pair whose tables
//! differ pulls them.

use std::sync::Arc;

use tarn_ledger::entry::Entry;
use tarn_ledger::{AppendError, Author};
use tarn_net::PeerId;

use super::{Mesh, Serve};
use crate::error::Code;
use crate::proto::ledger::{Request, Response};
use crate::proto::{Reply, WireError};

/// Most often a node exchanges whole liveness tables, or whole ledger
/// heads, with a peer (each kind on its own clock).
pub(super) const FULL_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The O(N) exchanges that [`FULL_SYNC_EVERY`] limits.
#[derive(Clone, Copy)]
enum Full {
    Members = 0,
    Heads = 1,
}

/// A peer's slot in `Mesh::syncing`, given back when dropped: one
/// anti-entropy run (or gap fill) with a peer at a time.
struct Syncing<'a> {
    mesh: &'a Mesh,
    peer: PeerId,
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.mesh
            .syncing
            .lock()
            .expect("lock poisoned")
            .remove(&self.peer);
    }
}

impl Mesh {
    /// Applies entries gossiped by peers, in one write to the ledger; on a
    /// gap, fetches what came before from the peer that sent it.
    pub(super) async fn receive(self: &Arc<Self>, batch: Vec<(Vec<u8>, Option<PeerId>)>) {
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut from = Vec::with_capacity(batch.len());
            let mut verified = Vec::with_capacity(batch.len());
            for (bytes, peer) in batch {
                match Entry::verify_bytes(&bytes) {
                    Ok(e) => {
                        verified.push(e);
                        from.push(peer);
                    }
                    Err(err) => tracing::warn!("dropping a ledger entry from {peer:?}: {err}"),
                }
            }
            let applied = me
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply_relayed_all(&verified);
            (verified, from, applied)
        })
        .await;
        let (verified, from, applied) = match r {
            Ok((v, f, Ok(a))) => (v, f, a),
            Ok((_, _, Err(err))) => return tracing::error!("applying gossiped entries: {err}"),
            Err(err) => return tracing::error!("applying gossiped entries: {err}"),
        };
        for ((e, from), applied) in verified.iter().zip(from).zip(applied) {
            match applied {
                Ok(tarn_ledger::Applied::Added) => {
                    let source = from.map_or_else(|| "gossip".to_owned(), |p| p.to_string());
                    self.audit_entry(e, &source);
                }
                Ok(_) => {}
                Err(AppendError::Gap { author, have, .. }) => {
                    // The sender has what came before: fetch that author's
                    // entries from it, nothing else.
                    if let Some(p) = from {
                        let me = self.clone();
                        tokio::spawn(async move {
                            if let Some(_slot) = me.sync_slot(p) {
                                me.fetch_author(p, author, have + 1).await;
                            }
                        });
                    }
                }
                Err(err @ AppendError::NotAdmitted(_)) => {
                    tracing::debug!("refusing a ledger entry from {from:?}: {err}")
                }
                Err(err) => tracing::warn!("refusing a ledger entry from {from:?}: {err}"),
            }
        }
        self.enforce_members().await
    }

    /// Anti-entropy with one peer: exchange heads, fetch what is missing.
    /// Returns at once if a run with that peer is already going on.
    pub async fn sync_with(self: &Arc<Self>, peer: PeerId) {
        if let Some(_slot) = self.sync_slot(peer) {
            self.sync_once(peer).await;
        }
    }

    /// Takes `peer`'s anti-entropy slot, unless a run with it holds it.
    fn sync_slot(&self, peer: PeerId) -> Option<Syncing<'_>> {
        // Not `then_some`: that builds a `Syncing` even when the slot is
        // taken, and dropping it would free the other run's slot (and,
        // under this lock, deadlock).
        let free = self.syncing.lock().expect("lock poisoned").insert(peer);
        free.then(|| Syncing { mesh: self, peer })
    }

    async fn sync_once(self: &Arc<Self>, peer: PeerId) {
        let (ledger, members) = self.digests();
        let (their_ledger, their_members) =
            match self.call(peer, &Request::Digest { ledger, members }).await {
                Ok(Response::Digest { ledger, members }) => (ledger, members),
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("digest exchange with {peer}: {e}");
                    return;
                }
            };
        // Tables and heads are O(N) each: pulled at most once per
        // FULL_SYNC_EVERY, since a difference is mostly gossip still on its
        // way (while a network starts, all the time).
        if their_members != members && self.full_sync_due(Full::Members) {
            self.pull_members(peer).await;
        }
        if their_ledger != ledger && self.full_sync_due(Full::Heads) {
            self.sync_heads(peer).await;
        }
    }

    /// Whether a full exchange of this kind may run now; if so, it counts as run.
    fn full_sync_due(&self, kind: Full) -> bool {
        let mut last = self.full_syncs.lock().expect("lock poisoned");
        let now = std::time::Instant::now();
        let at = &mut last[kind as usize];
        if at.is_some_and(|t| now.duration_since(t) < FULL_SYNC_EVERY) {
            return false;
        }
        *at = Some(now);
        true
    }

    /// Heads exchanged, missing entries fetched (the peer pulls what it
    /// lacks of ours on seeing our heads).
    async fn sync_heads(self: &Arc<Self>, peer: PeerId) {
        let (heads, _) = self.ledger_state();
        let theirs = match self.call(peer, &Request::Heads(heads)).await {
            Ok(Response::Heads(theirs)) => theirs,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!("heads exchange with {peer}: {e}");
                return;
            }
        };
        let wants = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wants(&theirs);
        self.fetch_wants(peer, &theirs, wants).await;
    }

    /// Fetches from `peer` what this ledger `wants` of what its heads show.
    async fn fetch_wants(
        self: &Arc<Self>,
        peer: PeerId,
        theirs: &[(Author, u64)],
        mut wants: Vec<(Author, u64)>,
    ) {
        // Fetched entries may admit new authors (a closed network's member
        // policies): ask again for what those wrote, a few rounds at most.
        for _ in 0..4 {
            if wants.is_empty() {
                break;
            }
            let epoch = self.with_view(|v| v.members_epoch());
            for (author, from) in wants {
                self.fetch_author(peer, author, from).await;
            }
            self.enforce_members().await;
            if self.with_view(|v| v.members_epoch()) == epoch {
                break;
            }
            wants = self
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wants(theirs);
        }
    }

    /// Fetches `author`'s entries from `from` on until the peer has no more.
    async fn fetch_author(self: &Arc<Self>, peer: PeerId, author: Author, mut from: u64) {
        loop {
            let batch = match self.call(peer, &Request::Fetch { author, from }).await {
                Ok(Response::Entries(b)) if !b.is_empty() => b,
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("fetching entries from {peer}: {e}");
                    return;
                }
            };
            let n = batch.len() as u64;
            let me = self.clone();
            let ok = tokio::task::spawn_blocking(move || {
                let mut es = Vec::with_capacity(batch.len());
                for b in batch {
                    let e = Entry::verify_bytes(&b).map_err(|e| e.to_string())?;
                    if e.entry().author != author {
                        return Err("an entry of another author".to_owned());
                    }
                    es.push(e);
                }
                let applied = me
                    .ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply_relayed_all(&es)
                    .map_err(|e| e.to_string())?;
                let mut added = Vec::new();
                for (e, a) in es.into_iter().zip(applied) {
                    if a.map_err(|e| e.to_string())? == tarn_ledger::Applied::Added {
                        added.push(e);
                    }
                }
                Ok(added)
            })
            .await;
            match ok {
                Ok(Ok(added)) => {
                    let source = peer.to_string();
                    for e in &added {
                        self.audit_entry(e, &source);
                        // News that gossip missed here it may have missed
                        // elsewhere too (a partition that healed): pass it
                        // on (named by content, each node forwards it once).
                        if self.news(e.entry().time_ms) {
                            let _ = self
                                .net
                                .publish(super::LEDGER_TOPIC, e.bytes().to_vec())
                                .await;
                        }
                    }
                    from += n
                }
                Ok(Err(e)) => {
                    tracing::warn!("sync with {peer}: {e}");
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// The ledger family's handler: heads and entries for peers' anti-entropy.
pub(super) struct LedgerService(pub(super) Arc<Mesh>);

impl Serve<Request> for LedgerService {
    async fn serve(&self, from: PeerId, req: Request) -> Reply<Response> {
        let mesh = &self.0;
        match req {
            Request::Heads(theirs) => {
                let (mine, wants) = {
                    let l = mesh.ledger.lock().unwrap_or_else(|p| p.into_inner());
                    (l.heads(), l.wants(&theirs))
                };
                // They have what we lack: fetch it from them now (their
                // heads are here already, and a whole sync could be skipped
                // by the FULL_SYNC_EVERY limit).
                if !wants.is_empty() {
                    let m = mesh.clone();
                    tokio::spawn(async move {
                        if let Some(_slot) = m.sync_slot(from) {
                            m.fetch_wants(from, &theirs, wants).await;
                        }
                    });
                }
                Ok(Response::Heads(mine))
            }
            Request::Digest { .. } => {
                let (ledger, members) = mesh.digests();
                Ok(Response::Digest { ledger, members })
            }
            Request::Members { after } => {
                let (rows, more) = mesh.table().page(after);
                Ok(Response::Members { rows, more })
            }
            Request::Fetch { author, from: seq } => {
                let m = mesh.clone();
                let r = tokio::task::spawn_blocking(move || {
                    m.ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entries_from(&author, seq, tarn_ledger::MAX_BATCH)
                })
                .await;
                match r {
                    Ok(Ok(v)) => Ok(Response::Entries(
                        v.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                    )),
                    _ => Err(WireError::new(
                        Code::Internal,
                        "the ledger could not be read",
                    )),
                }
            }
        }
    }
}
