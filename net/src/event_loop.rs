//! The swarm and the loop that owns it. Everything else talks to it
//! through a [`Client`](crate::Client) (commands in) and a stream of
//! [`Event`]s (news out), both over bounded channels.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, gossipsub, identify, kad, mdns,
    noise, ping, relay, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::rpc;
use crate::{Config, Event, NetError, PeerInfo};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
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
        reply: oneshot::Sender<Result<(), NetError>>,
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
}

/// Most inbound requests waiting for an answer at once; more are refused.
const MAX_PENDING_INBOUND: usize = 1024;

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    pending_out: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    pending_in: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_in: u64,
    topics: HashSet<String>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    bootstrap: Vec<Multiaddr>,
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
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::ConfigBuilder::default()
                    .max_transmit_size(max_gossip)
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .heartbeat_interval(Duration::from_millis(500))
                    .build()
                    .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))?,
            )?;
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new("/tarn/kad/1")),
            );
            // A tarn mesh is small and mostly private: serve the DHT at once.
            kad.set_mode(Some(kad::Mode::Server));
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
                relay_client,
                relay_server: relay_server
                    .then(|| relay::Behaviour::new(peer_id, relay::Config::default()))
                    .into(),
                // A link cut without a reset (a partition, a pulled cable)
                // leaves TCP open for many minutes: a ping that times out
                // closes the connection instead (see `swarm_event`).
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(10)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/tarn/id/1".into(), key.public())
                        .with_agent_version(format!("tarn/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                ),
                kad,
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
        bootstrap: Vec<Multiaddr>,
    ) -> EventLoop {
        EventLoop {
            swarm,
            commands,
            events,
            pending_out: HashMap::new(),
            pending_in: HashMap::new(),
            next_in: 0,
            topics: HashSet::new(),
            addrs: HashMap::new(),
            bootstrap,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        let mut discover = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    // Every client is gone: the node is shutting down.
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev).await,
                _ = redial.tick() => self.keep_bootstrap_connected(),
                // A Kademlia walk connects the node to more of the mesh than
                // its bootstrap peers, so gossip has several paths.
                _ = discover.tick() => { let _ = self.swarm.behaviour_mut().kad.bootstrap(); }
            }
        }
    }

    /// Redials bootstrap addresses whose peer is not connected, so a node
    /// that lost its mesh (or a bootstrap that moved back) is found again.
    fn keep_bootstrap_connected(&mut self) {
        for addr in self.bootstrap.clone() {
            let peer = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if peer.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!("redialing {addr}: {e}");
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Publish { topic, data, reply } => {
                let t = gossipsub::IdentTopic::new(&topic);
                if self.topics.insert(topic) {
                    let _ = self.swarm.behaviour_mut().gossipsub.subscribe(&t);
                }
                let r = match self.swarm.behaviour_mut().gossipsub.publish(t, data) {
                    Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                    Err(gossipsub::PublishError::Duplicate) => Ok(()),
                    Err(e) => Err(NetError::Publish(e.to_string())),
                };
                let _ = reply.send(r);
            }
            Command::Request { peer, data, reply } => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, data);
                self.pending_out.insert(id, reply);
            }
            Command::Respond { id, data } => {
                if let Some(ch) = self.pending_in.remove(&id) {
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
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                if num_established.get() == 1 {
                    if self.swarm.connected_peers().count() == 1 {
                        // The first peer: look for the rest of the mesh now.
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                    self.emit(Event::Connected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.emit(Event::Disconnected(peer_id)).await;
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
                // Only routable addresses: skip loopback ones from other hosts? Keep all;
                // dialing tries them in turn.
                for a in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                let known = self.addrs.entry(peer_id).or_default();
                *known = info.listen_addrs.clone();
                known.truncate(16);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let from = message.source;
                self.offer(Event::Gossip {
                    from,
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
                        self.pending_in.insert(id, channel);
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(r) = self.pending_out.remove(&request_id) {
                        let _ = r.send(Ok(response));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                if let Some(r) = self.pending_out.remove(&request_id) {
                    let _ = r.send(Err(NetError::Request(format!("{peer}: {error}"))));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::debug!("inbound request from {peer} failed: {error}");
            }
            _ => {}
        }
        // Responses whose handlers went away: drop their channels.
        self.pending_in.retain(|_, ch| ch.is_open());
    }
}
