//! The swarm and the loop that owns it. Everything else talks to it
//! through a [`Client`](crate::Client) (commands in) and a stream of
//! [`Event`]s (news out), both over bounded channels.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, connection_limits, dcutr, gossipsub, identify, mdns, noise,
    ping, relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::{Config, Event, NetError, PeerInfo};
use crate::{book, deferred, rpc};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    book: book::Behaviour,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::Behaviour<rpc::Codec>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
}

/// Commands from [`Client`](crate::Client)s.
pub(crate) enum Command {
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Respond {
        id: u64,
        data: Vec<u8>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
    },
    Addresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Protect {
        peer: PeerId,
        on: bool,
    },
    Disconnect {
        peer: PeerId,
    },
}

/// Most inbound requests waiting for an answer at once; more are refused.
const MAX_PENDING_INBOUND: usize = 1024;
/// A new connection is not closed to stay within the target before it had
/// time to serve (identify, gossipsub subscriptions, anti-entropy).
const GRACE: Duration = Duration::from_secs(10);
/// A connection is idle once no request went over it for this long.
const IDLE: Duration = Duration::from_secs(10);
/// A link unused this long may be closed to make room for a dial this
/// node's limits refused.
pub(crate) const ROOM_IDLE: Duration = Duration::from_secs(1);
/// How long a refused dial is remembered for the request that asked for it.
const DENIED_FOR: Duration = Duration::from_secs(5);
/// Most dials started per tick to get back up to the target.
const DIALS_PER_TICK: usize = 4;
/// Every how many ticks (seconds) a node links to one more peer picked at
/// random, whatever its number of links (the trimming closes an old one):
/// links that only ever follow bootstrap order can leave a group of
/// nodes linked among themselves and to nobody else, and this undoes it.
const SHUFFLE_EVERY: u64 = 60;

/// Where a request's answer goes.
type Reply = oneshot::Sender<Result<Vec<u8>, NetError>>;

/// What the loop knows of a connected peer.
struct Link {
    since: Instant,
    used: Instant,
}

/// A request of this node's, waiting for its answer. A request to a peer
/// it was not linked to keeps its bytes, to be sent again if this node's
/// own limits refuse the dial (see [`deferred`]).
struct Pending {
    peer: PeerId,
    reply: Reply,
    resend: Option<(Vec<u8>, u8)>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    pending_out: HashMap<OutboundRequestId, Pending>,
    /// Peers whose dial this node's connection limits refused, and when;
    /// the request that asked for the dial learns it right after.
    denied: HashMap<PeerId, Instant>,
    deferred: deferred::Queue<Reply>,
    pending_in: HashMap<u64, (PeerId, ResponseChannel<Vec<u8>>)>,
    next_in: u64,
    topics: HashSet<String>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    bootstrap: Vec<Multiaddr>,
    links: HashMap<PeerId, Link>,
    /// Peers never disconnected to stay within the target: bootstrap peers
    /// and those the node asked for (its cluster's members).
    protected: HashSet<PeerId>,
    /// Peers this node is disconnecting on purpose, or that said they are
    /// disconnecting from it (not a lost link).
    closing: HashSet<PeerId>,
    /// Goodbyes sent, by request: the link closes when answered.
    byes: HashMap<OutboundRequestId, PeerId>,
    target: usize,
    rng: u64,
    ticks: u64,
}

pub(crate) fn build(cfg: &Config) -> Result<Swarm<Behaviour>, NetError> {
    let err = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let relay_server = cfg.relay_server;
    let mdns_on = cfg.mdns;
    let codec = rpc::Codec {
        max_request: cfg.max_request_bytes,
        max_response: cfg.max_response_bytes,
    };
    let request_timeout = cfg.request_timeout;
    let max_gossip = cfg.max_gossip_bytes;
    // Peers may open at most `peers_max` connections to this node; the
    // node itself may open up to `on_demand` more (a query over many
    // operators, replication), closed again once idle.
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(cfg.peers_max as u32))
        .with_max_established(Some((cfg.peers_max + cfg.on_demand) as u32))
        .with_max_established_per_peer(Some(4))
        .with_max_pending_incoming(Some(cfg.peers_max as u32))
        .with_max_pending_outgoing(Some(cfg.on_demand.max(1) as u32));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            // tarn's gossip carries only self-signed payloads (ledger
            // entries, liveness records), checked once by the node: signing
            // each message again, and checking every copy a node receives
            // (each arrives from several mesh peers), was most of the CPU of
            // a network starting. Messages are named by their content.
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Anonymous,
                gossipsub::ConfigBuilder::default()
                    .max_transmit_size(max_gossip)
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .message_id_fn(|m: &gossipsub::Message| {
                        gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
                    })
                    .heartbeat_interval(Duration::from_millis(500))
                    .build()
                    .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))?,
            )?;
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                blocked: Default::default(),
                limits: connection_limits::Behaviour::new(limits),
                book: Default::default(),
                relay_client,
                relay_server: relay_server
                    .then(|| relay::Behaviour::new(peer_id, relay::Config::default()))
                    .into(),
                // A link cut without a reset (a partition, a pulled cable)
                // leaves TCP open for many minutes: a ping that times out
                // closes the connection instead (see `swarm_event`).
                // Every 30 s: a node has a couple dozen links, and pings are
                // most of what an idle mesh costs. A crashed peer is noticed
                // sooner (its OS closes the sockets); only a silently cut
                // link waits for a ping.
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(30))
                        .with_timeout(Duration::from_secs(10)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/tarn/id/1".into(), key.public())
                        .with_agent_version(format!("tarn/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                ),
                mdns: mdns.into(),
                gossipsub,
                rpc: request_response::Behaviour::with_codec(
                    codec,
                    [(rpc::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(request_timeout),
                ),
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
            })
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        cfg: &Config,
    ) -> EventLoop {
        let protected = cfg.bootstrap.iter().filter_map(peer_of).collect();
        let me = swarm.local_peer_id().to_bytes();
        let rng = me.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        EventLoop {
            swarm,
            commands,
            events,
            pending_out: HashMap::new(),
            denied: HashMap::new(),
            deferred: deferred::Queue::default(),
            pending_in: HashMap::new(),
            next_in: 0,
            topics: HashSet::new(),
            addrs: HashMap::new(),
            bootstrap: cfg.bootstrap.clone(),
            links: HashMap::new(),
            protected,
            closing: HashSet::new(),
            byes: HashMap::new(),
            target: cfg.peers_target,
            rng,
            ticks: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        let mut manage = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    // Every client is gone: the node is shutting down.
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev).await,
                _ = sleep_until(self.deferred.next_due()), if self.deferred.next_due().is_some() => {
                    self.resend_due();
                }
                _ = redial.tick() => self.keep_bootstrap_connected(),
                _ = manage.tick() => self.manage_links(),
            }
        }
    }

    /// The fewest links a node keeps before it dials more.
    fn low_water(&self) -> usize {
        (self.target / 2).max(1)
    }

    /// Redials bootstrap addresses while the node has too few links, so a
    /// node that lost its mesh (or a bootstrap that moved back) is found
    /// again. A node with enough links leaves its bootstrap peers alone:
    /// a master that every node kept dialing would be connected to all.
    fn keep_bootstrap_connected(&mut self) {
        if self.links.len() >= self.low_water() {
            return;
        }
        for addr in self.bootstrap.clone() {
            if peer_of(&addr).is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!("redialing {addr}: {e}");
            }
        }
    }

    /// Keeps the number of links near the target whatever the size of the
    /// network: above it, closes the least recently used idle links (never
    /// a protected peer's, a new one's, or one with a request in flight,
    /// peers outside the gossip mesh first); below half of it, dials a few
    /// peers it knows of.
    fn manage_links(&mut self) {
        let now = Instant::now();
        let n = self.links.len();
        if n > self.target {
            let mesh: HashSet<PeerId> = self
                .swarm
                .behaviour()
                .gossipsub
                .all_mesh_peers()
                .copied()
                .collect();
            let busy = self.busy();
            let mut idle: Vec<(bool, Instant, PeerId)> = self
                .links
                .iter()
                .filter(|(p, l)| {
                    !self.protected.contains(p)
                        && !self.closing.contains(p)
                        && !busy.contains(p)
                        && now.duration_since(l.since) >= GRACE
                        && now.duration_since(l.used) >= IDLE
                })
                .map(|(p, l)| (mesh.contains(p), l.used, *p))
                .collect();
            idle.sort();
            for (_, _, p) in idle.into_iter().take(n - self.target) {
                self.say_bye(p);
            }
        }
        self.ticks += 1;
        let shuffle = self.ticks.is_multiple_of(SHUFFLE_EVERY);
        if n < self.low_water() || shuffle {
            let me = *self.swarm.local_peer_id();
            let mut known: Vec<PeerId> = self.swarm.behaviour().book.peers().copied().collect();
            known.sort();
            known.dedup();
            known.retain(|p| *p != me && !self.links.contains_key(p));
            let want = if n < self.low_water() {
                DIALS_PER_TICK.min(self.low_water() - n)
            } else {
                1
            };
            let mut dialed = 0;
            while dialed < want && !known.is_empty() {
                let i = (self.next_random() % known.len() as u64) as usize;
                let p = known.swap_remove(i);
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if self.swarm.dial(opts).is_ok() {
                    dialed += 1;
                }
            }
        }
    }

    /// Closes the links with `peer` after telling it so (an empty request,
    /// answered by its network loop), so that it does not take the close
    /// for a failure: a transport cannot tell a close from a crash.
    fn say_bye(&mut self, peer: PeerId) {
        self.closing.insert(peer);
        let id = self
            .swarm
            .behaviour_mut()
            .rpc
            .send_request(&peer, Vec::new());
        self.byes.insert(id, peer);
    }

    /// A request of this node's ended: a goodbye closes its link; any
    /// other's outcome goes to its caller.
    fn answered(&mut self, id: OutboundRequestId, outcome: Result<Vec<u8>, NetError>) {
        if let Some(p) = self.byes.remove(&id) {
            if self.closing.contains(&p) {
                let _ = self.swarm.disconnect_peer_id(p);
            }
            return;
        }
        if let Some(p) = self.pending_out.remove(&id) {
            self.used(&p.peer);
            let _ = p.reply.send(outcome);
        }
    }

    /// Sends `data` to `peer`, keeping a copy to send again if the peer is
    /// not linked yet (the dial may be refused by this node's limits).
    fn send(&mut self, peer: PeerId, data: Vec<u8>, reply: Reply, resends: u8) {
        let resend = (!self.swarm.is_connected(&peer)).then(|| (data.clone(), resends));
        let id = self.swarm.behaviour_mut().rpc.send_request(&peer, data);
        self.closing.remove(&peer);
        self.used(&peer);
        self.pending_out.insert(
            id,
            Pending {
                peer,
                reply,
                resend,
            },
        );
    }

    /// A request failed: one whose dial this node's own limits refused is
    /// kept to be sent again once a link is freed (one is closed now);
    /// any other failure goes to its caller.
    fn request_failed(&mut self, id: OutboundRequestId, error: NetError, dial: bool) {
        let Some(p) = self.pending_out.get(&id) else {
            return self.answered(id, Err(error));
        };
        let refused_here = dial && self.denied.remove(&p.peer).is_some();
        if !refused_here || p.resend.is_none() || p.reply.is_closed() {
            return self.answered(id, Err(error));
        }
        let p = self.pending_out.remove(&id).expect("looked up above");
        let (data, resends) = p.resend.expect("checked above");
        match self
            .deferred
            .defer(p.peer, data, p.reply, resends, Instant::now())
        {
            Ok(()) => {
                tracing::debug!("{}: no room for a link, sending again soon", p.peer);
                self.make_room();
            }
            Err(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Sends again the deferred requests that are due (not those whose
    /// caller has given up).
    fn resend_due(&mut self) {
        for d in self.deferred.take_due(Instant::now()) {
            if !d.reply.is_closed() {
                self.send(d.peer, d.data, d.reply, d.resends + 1);
            }
        }
    }

    /// Closes the least recently used link that nothing is using and no
    /// rule keeps (this node's limits refused a dial).
    fn make_room(&mut self) {
        let now = Instant::now();
        let busy = self.busy();
        let lru = self
            .links
            .iter()
            .filter(|(p, l)| {
                !self.protected.contains(p)
                    && !self.closing.contains(p)
                    && !busy.contains(p)
                    && now.duration_since(l.used) >= ROOM_IDLE
            })
            .min_by_key(|(_, l)| l.used)
            .map(|(p, _)| *p);
        if let Some(p) = lru {
            self.say_bye(p);
        }
    }

    /// xorshift64: which peers to dial needs no more than spread.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// A request to or from `peer` started or ended.
    fn used(&mut self, peer: &PeerId) {
        if let Some(l) = self.links.get_mut(peer) {
            l.used = Instant::now();
        }
    }

    /// Peers with a request in flight either way (derived from the pending
    /// maps, so it holds whether or not a link existed when it started).
    fn busy(&self) -> HashSet<PeerId> {
        self.pending_out
            .values()
            .map(|p| p.peer)
            .chain(self.pending_in.values().map(|(p, _)| *p))
            .collect()
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Publish { topic, data, reply } => {
                let t = gossipsub::IdentTopic::new(&topic);
                if self.topics.insert(topic) {
                    let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&t);
                }
                let r = match self.swarm.behaviour_mut().gossipsub.publish(t, data) {
                    Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(true),
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(false),
                    Err(e) => Err(NetError::Publish(e.to_string())),
                };
                let _ = reply.send(r);
            }
            Command::Request { peer, data, reply } => {
                if data.is_empty() {
                    // The empty request is the goodbye (see `say_bye`).
                    let _ = reply.send(Err(NetError::Request("an empty request".into())));
                    return;
                }
                self.send(peer, data, reply, 0);
            }
            Command::Respond { id, data } => {
                if let Some((peer, ch)) = self.pending_in.remove(&id) {
                    self.used(&peer);
                    let _ = self.swarm.behaviour_mut().rpc.send_response(ch, data);
                }
            }
            Command::Dial { addr, reply } => {
                let r = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| NetError::Dial(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Peers { reply } => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| PeerInfo {
                        peer_id: *p,
                        addrs: self.addrs.get(p).cloned().unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Block { peer, blocked } => {
                if blocked {
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                } else {
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                }
            }
            Command::Addresses { peer, addrs } => {
                if peer != *self.swarm.local_peer_id() {
                    self.swarm.behaviour_mut().book.set(peer, addrs);
                }
            }
            Command::Protect { peer, on } => {
                if on {
                    self.protected.insert(peer);
                } else if !self.bootstrap.iter().any(|a| peer_of(a) == Some(peer)) {
                    self.protected.remove(&peer);
                }
            }
            Command::Disconnect { peer } => {
                let idle = self.links.contains_key(&peer) && !self.busy().contains(&peer);
                if idle && !self.protected.contains(&peer) && !self.closing.contains(&peer) {
                    self.say_bye(peer);
                }
            }
        }
    }

    async fn emit(&mut self, e: Event) {
        // Bounded: a slow consumer slows the network loop instead of growing
        // memory. Only for news about connections and listeners, which are
        // rare; see `offer` for what peers send.
        let _ = self.events.send(e).await;
    }

    /// Hands a peer's message to the consumer only if there is room now:
    /// the consumer's answers go through this loop, so waiting here for it
    /// could stall both. A dropped request fails at its sender; a dropped
    /// gossip message is repaired by anti-entropy.
    fn offer(&mut self, e: Event) -> bool {
        match self.events.try_send(e) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("dropping a message from a peer: the node is too busy");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    async fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}/p2p/{}", self.swarm.local_peer_id());
                self.emit(Event::Listening(address)).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    self.swarm.behaviour_mut().book.learn(peer_id, vec![addr]);
                }
                if num_established.get() == 1 {
                    let now = Instant::now();
                    self.links.insert(
                        peer_id,
                        Link {
                            since: now,
                            used: now,
                        },
                    );
                    self.emit(Event::Connected(peer_id)).await;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!("dialing {peer} failed: {error:?}");
                // Only this node's connection cap: a blocked peer stays
                // refused at once.
                let capped = match &error {
                    libp2p::swarm::DialError::Denied { cause } => cause
                        .downcast_ref::<connection_limits::Exceeded>()
                        .is_some(),
                    _ => false,
                };
                if capped {
                    let now = Instant::now();
                    self.denied
                        .retain(|_, at| now.duration_since(*at) < DENIED_FOR);
                    if self.denied.len() < deferred::MAX_DEFERRED {
                        self.denied.insert(peer, now);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.links.remove(&peer_id);
                let on_purpose = self.closing.remove(&peer_id);
                self.emit(Event::Disconnected {
                    peer: peer_id,
                    on_purpose,
                })
                .await;
            }
            // A peer without ping (a light client) is fine; one that
            // stopped answering (a timeout, or a stream that could not even
            // be opened in time) is behind a cut link.
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) if !matches!(e, ping::Failure::Unsupported) => {
                tracing::info!("{peer} did not answer a ping ({e}): closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // All of them, loopback too: dialing tries them in turn.
                self.swarm
                    .behaviour_mut()
                    .book
                    .learn(peer_id, info.listen_addrs.clone());
                let known = self.addrs.entry(peer_id).or_default();
                *known = info.listen_addrs.clone();
                known.truncate(16);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm
                        .behaviour_mut()
                        .book
                        .learn(peer, vec![addr.clone()]);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                propagation_source,
                ..
            })) => {
                self.offer(Event::Gossip {
                    from: Some(propagation_source),
                    topic: message.topic.into_string(),
                    data: message.data,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if request.is_empty() {
                        // A goodbye: the peer is closing the link on purpose.
                        self.closing.insert(peer);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .rpc
                            .send_response(channel, Vec::new());
                        return;
                    }
                    self.closing.remove(&peer);
                    if self.pending_in.len() >= MAX_PENDING_INBOUND {
                        tracing::warn!("dropping a request from {peer}: too many pending");
                        return;
                    }
                    self.next_in += 1;
                    let id = self.next_in;
                    let offered = self.offer(Event::Request {
                        from: peer,
                        id,
                        data: request,
                    });
                    // Dropping the channel fails the request at its sender.
                    if offered {
                        self.used(&peer);
                        self.pending_in.insert(id, (peer, channel));
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.answered(request_id, Ok(response)),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                let dial = matches!(error, request_response::OutboundFailure::DialFailure);
                let error = NetError::Request(format!("{peer}: {error}"));
                self.request_failed(request_id, error, dial);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::debug!("inbound request from {peer} failed: {error}");
            }
            _ => {}
        }
        // Responses whose handlers went away: drop their channels.
        self.pending_in.retain(|_, (_, ch)| ch.is_open());
    }
}

/// Sleeps until `at` (at once if `None`: the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The peer a `/p2p/<id>` address names.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
