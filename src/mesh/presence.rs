//! The liveness table ([`super::liveness`]) driven by the node: rumors
//! decoded from gossip and gossiped out, probes of peers whose link was
//! lost, table pulls from neighbours, and the once-a-second tick that
//! turns standing suspicions into deaths, announces this node's record
//! until a peer has it, and now and then tries to reach a dead peer again
//! (how a healed partition is found).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tarn_ledger::Author;
use tarn_net::{Multiaddr, PeerId};

use super::liveness::Applied;
use super::{Mesh, author_of, peer_of};
use crate::proto::ledger::{Request, Response};
use crate::proto::liveness::{MAX_RUMOR_BYTES, Rumor, TOPIC};

/// How long a probe of a peer whose link was lost may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a probe a lost link with the same peer is not probed.
pub(super) const PROBE_QUIET: Duration = Duration::from_secs(60);
/// Every how many ticks (seconds) a dead peer is tried again.
pub(super) const RETRY_DEAD_EVERY: u64 = 30;
/// Most pages read in one table pull.
const MAX_PAGES: usize = super::liveness::MAX_PEERS / super::liveness::PAGE + 1;

impl Mesh {
    /// Whether `peer` is up: connected now, or believed up by the liveness
    /// table (alive, or only suspected).
    pub fn alive(&self, peer: &PeerId) -> bool {
        if *peer == self.peer_id() || self.connected_now(peer) {
            return true;
        }
        author_of(peer).is_some_and(|a| self.table().is_up(&a) == Some(true))
    }

    /// The addresses `peer` announced in its latest record.
    pub fn announced_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        author_of(peer)
            .and_then(|a| self.table().record(&a).map(|r| addrs_of(&r.addrs)))
            .unwrap_or_default()
    }

    /// Peers believed up and dead, as the table counts them.
    pub fn liveness_counts(&self) -> (usize, usize) {
        self.table().counts()
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, super::liveness::Table> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's addresses changed: a new record, announced on the next tick.
    pub(super) fn addrs_changed(&self) {
        let addrs: Vec<Vec<u8>> = self
            .full_listen_addrs()
            .into_iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| a.to_vec())
            .collect();
        if self.table().set_addrs(addrs).is_some() {
            self.announce.store(true, Ordering::SeqCst);
        }
    }

    /// A liveness rumor from gossip (untrusted bytes: bounded, decoded, checked).
    pub(super) async fn hear(&self, data: &[u8]) {
        if data.len() > MAX_RUMOR_BYTES {
            return;
        }
        let Ok(rumor) = tarn_net::codec::decode::<Rumor>(data, MAX_RUMOR_BYTES) else {
            tracing::debug!("dropping a malformed liveness rumor");
            return;
        };
        // In a closed network, only members are tracked (a member could
        // relay a stranger's record; strangers cannot connect at all).
        let about = match &rumor {
            Rumor::Alive(r) => r.peer,
            Rumor::Suspect { peer, .. } => *peer,
        };
        if !self.admits_author(&about) {
            return;
        }
        let now = self.clock.now_ms();
        let applied = self.table().apply(rumor, now);
        self.follow(vec![applied], false).await;
    }

    /// Acts on what the table did: new addresses to the network's book,
    /// refutations out, and (`pass_on`: the rows came from a table pull)
    /// records that are news here gossiped on, since gossip missed them
    /// around here (rumors are named by content: each node forwards one once).
    async fn follow(&self, applied: Vec<Applied>, pass_on: bool) {
        for a in applied {
            if let Some(r) = a.record {
                // Incarnations are wall-clock ms (see `news`).
                if pass_on && self.news(r.incarnation) {
                    self.gossip(&Rumor::Alive(r.clone())).await;
                }
                if let Some(peer) = peer_of(&r.peer) {
                    if r.leaving {
                        tracing::info!("{peer} left the network");
                    }
                    let _ = self.net.set_addresses(peer, addrs_of(&r.addrs)).await;
                }
            }
            if let Some(g) = a.gossip {
                match &g {
                    Rumor::Alive(_) => tracing::info!("refuting a rumor that this node is down"),
                    // Merged tables disagreed: the suspect must hear it.
                    Rumor::Suspect { .. } => tracing::debug!("passing on a suspicion"),
                }
                if !self.gossip(&g).await {
                    self.announce.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// The last link with `peer` closed, not on purpose: probe it, and
    /// gossip a suspicion if it does not answer. A peer that answered a
    /// probe lately is not probed again: a close on purpose comes with a
    /// goodbye, but one that got lost looks, from here, like a failure, and
    /// probing it every time would only make the link again.
    pub(super) async fn link_lost(self: &Arc<Self>, peer: PeerId) {
        let Some(author) = author_of(&peer) else {
            return;
        };
        if !self.table().lost(&author) {
            return;
        }
        {
            let mut probed = self.probed.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if probed
                .get(&peer)
                .is_some_and(|t| now.duration_since(*t) < PROBE_QUIET)
            {
                return;
            }
            probed.retain(|_, t| now.duration_since(*t) < PROBE_QUIET);
            probed.insert(peer, now);
        }
        if tokio::time::timeout(PROBE_TIMEOUT, self.ping(peer))
            .await
            .unwrap_or(false)
        {
            return;
        }
        self.probed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
        let now = self.clock.now_ms();
        let rumor = self.table().probe_failed(&author, now);
        if let Some(r) = rumor {
            tracing::info!("{peer} does not answer: suspected down");
            self.gossip(&r).await;
        }
    }

    async fn gossip(&self, r: &Rumor) -> bool {
        match tarn_net::codec::encode(r, MAX_RUMOR_BYTES) {
            Ok(bytes) => self.net.publish(TOPIC, bytes).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Once a second: deaths, the pending announcement, a dead peer retried.
    pub(super) async fn liveness_tick(self: &Arc<Self>, tick: u64) {
        let now = self.clock.now_ms();
        let died = self.table().tick(now);
        for a in died {
            if let Some(p) = peer_of(&a) {
                tracing::info!("{p} is down: nobody heard from it since it was suspected");
            }
        }
        self.resend_unsent().await;
        if self.announce.load(Ordering::SeqCst) {
            let own = Rumor::Alive(self.table().own().clone());
            if self.gossip(&own).await {
                self.announce.store(false, Ordering::SeqCst);
            }
        }
        if tick % RETRY_DEAD_EVERY == RETRY_DEAD_EVERY - 1 {
            let dead: Vec<Author> = self.table().dead().copied().collect();
            if !dead.is_empty() {
                let pick = dead[(tick / RETRY_DEAD_EVERY) as usize % dead.len()];
                if let Some(p) = peer_of(&pick) {
                    let me = self.clone();
                    tokio::spawn(async move { me.sync_with(p).await });
                }
            }
        }
    }

    /// Keeps the links with exactly these peers when trimming (the
    /// cluster's members): tells the network of each change.
    pub async fn keep_linked(&self, peers: impl Iterator<Item = PeerId>) {
        let want: std::collections::HashSet<PeerId> = peers.collect();
        let (add, drop): (Vec<PeerId>, Vec<PeerId>) = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let add = want.difference(&kept).copied().collect();
            let drop = kept.difference(&want).copied().collect();
            *kept = want;
            (add, drop)
        };
        for p in add {
            let _ = self.net.protect(p, true).await;
        }
        for p in drop {
            let _ = self.net.protect(p, false).await;
        }
    }

    /// Whether something made at `ms` (its author's clock) is news to pass
    /// on when anti-entropy brings it: made after this node started, so
    /// gossip should have brought it and missed (a partition that healed).
    /// What is older is history a starting node pulls; passing a whole
    /// ledger on would flood every node once per join.
    pub(super) fn news(&self, ms: u64) -> bool {
        ms > self.started_ms
    }

    fn admits_author(&self, a: &Author) -> bool {
        self.network.is_none() || peer_of(a).is_some_and(|p| self.admits(&p))
    }

    /// Before stopping: tell the network, so nobody waits for a suspicion.
    pub async fn leave(&self) {
        let r = self.table().leave();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.gossip(&r)).await;
    }

    /// Pulls `peer`'s liveness table, page by page, and merges it.
    pub(super) async fn pull_members(self: &Arc<Self>, peer: PeerId) {
        let mut after = None;
        for _ in 0..MAX_PAGES {
            let (rows, more) = match self.call(peer, &Request::Members { after }).await {
                Ok(Response::Members { rows, more }) => (rows, more),
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("pulling the liveness table of {peer}: {e}");
                    return;
                }
            };
            let last = rows.last().map(|r| r.record.peer);
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| self.admits_author(&r.record.peer))
                .collect();
            let me = self.clone();
            let now = self.clock.now_ms();
            let applied = tokio::task::spawn_blocking(move || me.table().merge(rows, now))
                .await
                .unwrap_or_default();
            self.follow(applied, true).await;
            match last {
                Some(l) if more && Some(l) > after => after = Some(l),
                _ => return,
            }
        }
    }

    /// This node's digests: its ledger heads and its liveness table.
    pub(super) fn digests(&self) -> ([u8; 32], [u8; 32]) {
        let ledger = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .digest();
        (ledger, self.table().digest())
    }
}

fn addrs_of(raw: &[serde_bytes::ByteBuf]) -> Vec<Multiaddr> {
    raw.iter()
        .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
        .collect()
}
