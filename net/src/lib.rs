//! tarn's overlay network: a libp2p swarm over TCP (Noise + Yamux) and QUIC
//! with identify, ping, mDNS, gossipsub, relay, DCUtR, AutoNAT and
//! one request-response protocol for tarn's own messages (`/tarn/rpc/2`).
//!
//! The pattern is rust-libp2p's file-sharing example: [`start`] spawns an
//! event loop that owns the swarm; the cheap, cloneable [`Client`] sends it
//! commands over a bounded channel (replies come back on oneshots), and
//! [`Event`]s come out on a bounded receiver. The loop never waits for room
//! in that receiver to hand out a request or a gossip message (it drops
//! them, and the peer sees a failed request), so a consumer that is busy
//! answering cannot stall the loop its answers go through. Nodes are addressed by
//! [`PeerId`]; addresses are found, not configured, except for bootstrap.
//!
//! - [`codec`]: bounded CBOR for message bodies
//! - `rpc`: the length-prefixed, size-capped request-response framing
//! - `event_loop`: the swarm and its loop
//!
//! ```
//! use tarn_net::codec;
//! let bytes = codec::encode(&("hello", 42u32), 1024)?;
//! let (s, n): (String, u32) = codec::decode(&bytes, 1024)?;
//! assert_eq!((s.as_str(), n), ("hello", 42));
//! assert!(codec::decode::<(String, u32)>(&bytes, 4).is_err());
//! # Ok::<(), codec::CodecError>(())
//! ```

use std::time::Duration;

pub use libp2p::identity;
pub use libp2p::identity::{Keypair, PublicKey};
pub use libp2p::{Multiaddr, PeerId, multiaddr};
use tokio::sync::{mpsc, oneshot};

mod book;
pub mod codec;
mod deferred;
mod event_loop;
mod rpc;

use event_loop::{Command, EventLoop};

/// How a node joins the mesh.
#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and keep dialing while disconnected.
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Serve as a circuit relay (master nodes).
    pub relay_server: bool,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub max_gossip_bytes: usize,
    pub request_timeout: Duration,
    /// How many peers a node stays connected to, whatever the size of the
    /// network: above it, idle links are closed; below half of it, more
    /// peers are dialed.
    pub peers_target: usize,
    /// The hard cap on connections peers open to this node; more are
    /// refused. The node's own dials (queries, replication) may add
    /// `on_demand` more, closed again when idle.
    pub peers_max: usize,
    /// Connections this node may open beyond `peers_max` for its own
    /// requests. A request that finds no room waits for a link to be freed
    /// (the least recently used idle one is closed) rather than failing.
    pub on_demand: usize,
}

impl Config {
    /// Defaults around a key: TCP and QUIC on port 32048, mDNS on.
    pub fn new(keypair: Keypair) -> Config {
        Config {
            keypair,
            listen: vec![
                "/ip4/0.0.0.0/tcp/32048".parse().expect("a valid multiaddr"),
                "/ip4/0.0.0.0/udp/32048/quic-v1"
                    .parse()
                    .expect("a valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            relay_server: false,
            max_request_bytes: 1 << 20,
            max_response_bytes: 16 << 20,
            max_gossip_bytes: 128 << 10,
            request_timeout: Duration::from_secs(30),
            peers_target: 24,
            peers_max: 48,
            on_demand: 64,
        }
    }

    pub fn validate(&self) -> Result<(), NetError> {
        if self.listen.is_empty() {
            return Err(NetError::Setup(
                "at least one listen address is needed".into(),
            ));
        }
        if self.peers_target == 0 || self.peers_max < self.peers_target {
            return Err(NetError::Setup(format!(
                "peers_target ({}) must be at least 1 and at most peers_max ({})",
                self.peers_target, self.peers_max
            )));
        }
        if self.max_request_bytes == 0 || self.max_response_bytes == 0 || self.max_gossip_bytes == 0
        {
            return Err(NetError::Setup(
                "message size limits must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What the network reports.
#[derive(Debug, Clone)]
pub enum Event {
    Listening(Multiaddr),
    Connected(PeerId),
    /// The last connection with a peer closed; `on_purpose`: this node
    /// closed it (to stay within its target, or when asked), so it says
    /// nothing about the peer's health.
    Disconnected {
        peer: PeerId,
        on_purpose: bool,
    },
    /// A gossip message, from the peer that forwarded it (not signed by
    /// gossipsub: what is gossiped must carry its own signatures; the body
    /// is untrusted).
    Gossip {
        from: Option<PeerId>,
        topic: String,
        data: Vec<u8>,
    },
    /// A request to answer with [`Client::respond`] and this `id`.
    Request {
        from: PeerId,
        id: u64,
        data: Vec<u8>,
    },
}

/// A connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// Network failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("network setup: {0}")]
    Setup(String),
    #[error("listening on {0}")]
    Listen(String),
    #[error("dialing: {0}")]
    Dial(String),
    #[error("request: {0}")]
    Request(String),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("the network loop has stopped")]
    Stopped,
}

/// A handle on the network loop; cheap to clone.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
}

/// Starts the swarm: listens, dials the bootstrap peers, and spawns the loop
/// on the current tokio runtime. The loop ends when every [`Client`] is dropped.
pub async fn start(cfg: Config) -> Result<(Client, mpsc::Receiver<Event>), NetError> {
    cfg.validate()?;
    let mut swarm = event_loop::build(&cfg)?;
    for a in &cfg.listen {
        swarm
            .listen_on(a.clone())
            .map_err(|e| NetError::Listen(format!("{a}: {}", chain(&e))))?;
    }
    for a in &cfg.bootstrap {
        if let Err(e) = swarm.dial(a.clone()) {
            tracing::warn!("dialing bootstrap {a}: {e}");
        }
    }
    let peer_id = *swarm.local_peer_id();
    let (tx, rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    tokio::spawn(EventLoop::new(swarm, rx, ev_tx, &cfg).run());
    Ok((Client { tx, peer_id }, ev_rx))
}

/// An error and its sources, as one line (libp2p's transport errors keep
/// the OS's words in their source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Client {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Publishes on a gossip topic (subscribing to it on first use);
    /// `false`: no peer subscribed to the topic is connected yet.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<bool, NetError> {
        let topic = topic.to_owned();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Sends a request to a peer (dialing it by id if needed) and waits for the answer.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.ask(|reply| Command::Request { peer, data, reply })
            .await?
    }

    /// Answers the inbound request `id` of an [`Event::Request`].
    pub async fn respond(&self, id: u64, data: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(Command::Respond { id, data })
            .await
            .map_err(|_| NetError::Stopped)
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Refuses (or again allows) every connection with a peer: an operator's
    /// ban, and how tests cut links between in-process nodes.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::Block { peer, blocked })
            .await
            .map_err(|_| NetError::Stopped)
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Where `peer` can be dialed, as it announced (replaces what was known).
    pub async fn set_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetError> {
        self.tx
            .send(Command::Addresses { peer, addrs })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Keeps (or no longer keeps) the links with `peer` when trimming to
    /// the target: a cluster's members, say.
    pub async fn protect(&self, peer: PeerId, on: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::Protect { peer, on })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Closes the links with `peer` (reported as closed on purpose), unless
    /// it is protected or a request with it is in flight.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.tx
            .send(Command::Disconnect { peer })
            .await
            .map_err(|_| NetError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u8) -> Config {
        let mut c =
            Config::new(Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes make a key"));
        c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        c.mdns = false;
        c.max_request_bytes = 1024;
        c
    }

    async fn next_matching<T>(
        rx: &mut mpsc::Receiver<Event>,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let e = rx.recv().await.expect("the loop is running");
                if let Some(v) = f(&e) {
                    return v;
                }
            }
        })
        .await
        .expect("the event came before the deadline")
    }

    /// Two peers, the second bootstrapped from the first and connected to
    /// it; the first's full address.
    async fn pair(
        seed_a: u8,
        seed_b: u8,
    ) -> (
        Client,
        mpsc::Receiver<Event>,
        Client,
        mpsc::Receiver<Event>,
        Multiaddr,
    ) {
        let (a, mut a_ev) = start(config(seed_a)).await.unwrap();
        let addr = next_matching(&mut a_ev, |e| match e {
            Event::Listening(addr) => Some(addr.clone()),
            _ => None,
        })
        .await;
        let full = addr.with(libp2p::multiaddr::Protocol::P2p(a.peer_id()));
        let mut cb = config(seed_b);
        cb.bootstrap = vec![full.clone()];
        let (b, mut b_ev) = start(cb).await.unwrap();
        next_matching(&mut b_ev, |e| {
            matches!(e, Event::Connected(p) if *p == a.peer_id()).then_some(())
        })
        .await;
        (a, a_ev, b, b_ev, full)
    }

    /// A link closed on purpose is reported so on both ends (the closer
    /// says goodbye first); a peer that vanishes is not.
    #[tokio::test]
    async fn a_goodbye_tells_a_close_from_a_loss() {
        let (a, mut a_ev, b, mut b_ev, full) = pair(11, 12).await;
        let connected = |e: &Event| matches!(e, Event::Connected(_)).then_some(());
        let closed = |e: &Event| match e {
            Event::Disconnected { on_purpose, .. } => Some(*on_purpose),
            _ => None,
        };
        next_matching(&mut a_ev, connected).await;
        a.disconnect(b.peer_id()).await.unwrap();
        assert!(next_matching(&mut a_ev, closed).await, "the closer");
        assert!(
            next_matching(&mut b_ev, closed).await,
            "the peer told goodbye"
        );
        assert!(
            b.request(a.peer_id(), Vec::new()).await.is_err(),
            "empty requests are the goodbye"
        );

        b.dial(full).await.unwrap();
        next_matching(&mut b_ev, connected).await;
        drop((a, a_ev));
        assert!(
            !next_matching(&mut b_ev, closed).await,
            "a peer that vanished"
        );
    }

    /// The address a freshly started peer listens on, with its id.
    async fn listening(c: &Client, ev: &mut mpsc::Receiver<Event>) -> Multiaddr {
        let addr = next_matching(ev, |e| match e {
            Event::Listening(addr) => Some(addr.clone()),
            _ => None,
        })
        .await;
        addr.with(libp2p::multiaddr::Protocol::P2p(c.peer_id()))
    }

    /// A request to a peer this node is not linked to, while its own
    /// connection cap is reached, waits for an idle link to be closed
    /// instead of failing at once.
    #[tokio::test]
    async fn a_request_waits_for_room_under_the_connection_cap() {
        let mut ca = config(21);
        (ca.peers_target, ca.peers_max, ca.on_demand) = (1, 1, 0);
        let (a, mut a_ev) = start(ca).await.unwrap();
        let (b, mut b_ev) = start(config(22)).await.unwrap();
        let (c, mut c_ev) = start(config(23)).await.unwrap();
        let b_addr = listening(&b, &mut b_ev).await;
        let c_addr = listening(&c, &mut c_ev).await;
        a.dial(b_addr).await.unwrap();
        next_matching(&mut a_ev, |e| {
            matches!(e, Event::Connected(p) if *p == b.peer_id()).then_some(())
        })
        .await;
        a.set_addresses(c.peer_id(), vec![c_addr]).await.unwrap();
        let c2 = c.clone();
        tokio::spawn(async move {
            let id = next_matching(&mut c_ev, |e| match e {
                Event::Request { id, .. } => Some(*id),
                _ => None,
            })
            .await;
            c2.respond(id, b"pong".to_vec()).await.unwrap();
            c_ev
        });
        // The link to B must have been idle a while to be the one closed.
        tokio::time::sleep(event_loop::ROOM_IDLE + Duration::from_millis(200)).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(20),
            a.request(c.peer_id(), b"ping".to_vec()),
        )
        .await
        .expect("answered before the deadline");
        assert_eq!(answer.unwrap(), b"pong");
        drop(b_ev);
    }

    #[tokio::test]
    async fn two_peers_talk_by_peer_id() {
        let (a, mut a_ev, b, mut b_ev, _) = pair(1, 2).await;

        // Request-response, answered by A's consumer.
        let a2 = a.clone();
        let answer = tokio::spawn(async move {
            let (id, data) = next_matching(&mut a_ev, |e| match e {
                Event::Request { id, data, .. } => Some((*id, data.clone())),
                _ => None,
            })
            .await;
            a2.respond(id, [b"echo:".as_slice(), &data].concat())
                .await
                .unwrap();
            a_ev
        });
        assert_eq!(
            b.request(a.peer_id(), b"hi".to_vec()).await.unwrap(),
            b"echo:hi"
        );
        let mut a_ev = answer.await.unwrap();

        // Oversized requests are refused by the sender's codec, never sent.
        assert!(b.request(a.peer_id(), vec![0; 4096]).await.is_err());

        // Gossip: both subscribe, then A's messages reach B.
        b.publish("t", b"hello from b".to_vec()).await.unwrap();
        a.publish("t", b"warm-up".to_vec()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                a.publish("t", b"ping".to_vec()).await.unwrap();
                if let Ok(Some(Event::Gossip { data, .. })) =
                    tokio::time::timeout(Duration::from_millis(300), b_ev.recv()).await
                    && data == b"ping"
                {
                    return true;
                }
            }
        })
        .await;
        assert_eq!(got, Ok(true));
        drop(a_ev.try_recv());
        assert!(!b.peers().await.unwrap().is_empty());
    }
}
