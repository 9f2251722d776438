//! The node's own MQTT broker (MQTT 3.1.1 and 5), for devices that publish: a
//! sink, not a relay. Each connection reads what has arrived, stores the
//! publishes of that read together (one write per table) and only then
//! acknowledges them (PUBACK, or PUBREC for QoS 2), so an acknowledged
//! message is as safe as a streamed `PUT`. Subscriptions are refused
//! (SUBACK failure): tarn does not forward messages to other clients.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::Error as V4Error;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::clients::{Delivery, Message, MsgClients, Origin};

/// Broker limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted (a larger one closes the connection).
    pub max_packet: usize,
    /// Most clients connected at once (more are refused).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet: 8 << 20,
            max_connections: 1024,
        }
    }
}

/// Accepts devices on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    clients: Arc<MsgClients>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("MQTT accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "MQTT: {peer} refused, {} clients connected",
                limits.max_connections
            );
            continue;
        };
        let (clients, limits, stop) = (clients.clone(), limits.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = sock.set_nodelay(true);
            if let Err(e) = Conn::new(sock, clients, limits).run(stop).await {
                tracing::debug!("MQTT client {peer}: {e}");
            }
        });
    }
}

/// Binds `addr` and serves it in the background; the bound address.
pub async fn spawn(
    addr: SocketAddr,
    clients: Arc<MsgClients>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    tokio::spawn(serve(l, clients, limits, stop));
    Ok(bound)
}

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

/// What the broker reads, whatever the version.
#[derive(Debug)]
enum In {
    Connect {
        version: Version,
        keep_alive: u16,
        client_id: String,
    },
    Publish {
        topic: String,
        qos: u8,
        pkid: u16,
        dup: bool,
        payload: Bytes,
    },
    PubRel(u16),
    PingReq,
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    Disconnect,
    /// Acks of messages this broker never sends, and AUTH.
    Ignored,
}

/// What the broker writes.
#[derive(Debug, Clone, Copy)]
enum Out {
    ConnAck,
    RefuseVersion,
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    PingResp,
    SubAckFailure { pkid: u16, filters: usize },
    UnsubAck { pkid: u16, filters: usize },
}

#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("{0}")]
    V4(V4Error),
    #[error("{0}")]
    V5(rumqttc::v5::mqttbytes::Error),
    #[error("an MQTT version other than 3.1.1 and 5 (protocol level {0})")]
    Level(u8),
}

/// Reads one packet from `buf`; `Ok(None)` until a whole one is there.
fn read(version: Option<Version>, buf: &mut BytesMut, max: usize) -> Result<Option<In>, WireError> {
    // A v5 DISCONNECT may have no body, which the codec refuses.
    if version == Some(Version::V5) && buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(In::Disconnect));
    }
    match version {
        None => match connect_level(buf) {
            // Which version: CONNECT's protocol level.
            None => Ok(None),
            Some(4) => read(Some(Version::V4), buf, max),
            Some(5) => read(Some(Version::V5), buf, max),
            Some(l) => Err(WireError::Level(l)),
        },
        Some(Version::V4) => from_v4(v4::Packet::read(buf, max)),
        Some(Version::V5) => {
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            match v5::Packet::read(buf, Some(max)) {
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(WireError::V5(e)),
                Ok(p) => Ok(Some(match p {
                    v5::Packet::Connect(c, _, _) => In::Connect {
                        version: Version::V5,
                        keep_alive: c.keep_alive,
                        client_id: c.client_id,
                    },
                    v5::Packet::Publish(p) => In::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        dup: p.dup,
                        payload: p.payload,
                    },
                    v5::Packet::PubRel(r) => In::PubRel(r.pkid),
                    v5::Packet::PingReq(_) => In::PingReq,
                    v5::Packet::Subscribe(s) => In::Subscribe {
                        pkid: s.pkid,
                        filters: s.filters.len(),
                    },
                    v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                        pkid: u.pkid,
                        filters: u.filters.len(),
                    },
                    v5::Packet::Disconnect(_) => In::Disconnect,
                    _ => In::Ignored,
                })),
            }
        }
    }
}

/// The protocol level of the CONNECT at the head of `buf` (`None`: not
/// all there yet); what is not a CONNECT reads as level 4, for the codec
/// to refuse.
fn connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return Some(4);
    }
    // The remaining length: one to four bytes of 7 bits.
    let mut at = 1;
    loop {
        let b = *buf.get(at)?;
        at += 1;
        if b & 0x80 == 0 || at == 5 {
            break;
        }
    }
    let name = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]) as usize;
    buf.get(at + 2 + name).copied()
}

fn from_v4(r: Result<v4::Packet, V4Error>) -> Result<Option<In>, WireError> {
    match r {
        Err(V4Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(WireError::V4(e)),
        Ok(p) => Ok(Some(match p {
            v4::Packet::Connect(c) => In::Connect {
                version: Version::V4,
                keep_alive: c.keep_alive,
                client_id: c.client_id,
            },
            v4::Packet::Publish(p) => In::Publish {
                topic: p.topic,
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                payload: p.payload,
            },
            v4::Packet::PubRel(r) => In::PubRel(r.pkid),
            v4::Packet::PingReq => In::PingReq,
            v4::Packet::Subscribe(s) => In::Subscribe {
                pkid: s.pkid,
                filters: s.filters.len(),
            },
            v4::Packet::Unsubscribe(u) => In::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics.len(),
            },
            v4::Packet::Disconnect => In::Disconnect,
            _ => In::Ignored,
        })),
    }
}

/// Writes `out` in `version`'s encoding.
fn write(version: Version, out: Out, buf: &mut BytesMut) -> Result<(), WireError> {
    match version {
        Version::V4 => {
            let p = match out {
                Out::ConnAck => {
                    v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false))
                }
                Out::RefuseVersion => v4::Packet::ConnAck(v4::ConnAck::new(
                    v4::ConnectReturnCode::RefusedProtocolVersion,
                    false,
                )),
                Out::PubAck(id) => v4::Packet::PubAck(v4::PubAck::new(id)),
                Out::PubRec(id) => v4::Packet::PubRec(v4::PubRec::new(id)),
                Out::PubComp(id) => v4::Packet::PubComp(v4::PubComp::new(id)),
                Out::PingResp => v4::Packet::PingResp,
                Out::SubAckFailure { pkid, filters } => v4::Packet::SubAck(v4::SubAck::new(
                    pkid,
                    vec![v4::SubscribeReasonCode::Failure; filters],
                )),
                Out::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
            };
            p.write(buf, usize::MAX).map(|_| ()).map_err(WireError::V4)
        }
        Version::V5 => {
            let connack = |code| {
                v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code,
                    properties: None,
                })
            };
            let p = match out {
                Out::ConnAck => connack(v5::ConnectReturnCode::Success),
                Out::RefuseVersion => connack(v5::ConnectReturnCode::UnsupportedProtocolVersion),
                Out::PubAck(id) => v5::Packet::PubAck(v5::PubAck::new(id, None)),
                Out::PubRec(id) => v5::Packet::PubRec(v5::PubRec::new(id, None)),
                Out::PubComp(id) => v5::Packet::PubComp(v5::PubComp::new(id, None)),
                Out::PingResp => v5::Packet::PingResp(v5::PingResp),
                Out::SubAckFailure { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters],
                    properties: None,
                }),
                Out::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
                    properties: None,
                }),
            };
            p.write(buf, None).map(|_| ()).map_err(WireError::V5)
        }
    }
}

struct Conn {
    sock: TcpStream,
    clients: Arc<MsgClients>,
    limits: Limits,
    version: Version,
    /// The client id it connected with.
    sender: String,
    rx: BytesMut,
    tx: BytesMut,
    /// QoS 2 packet ids stored and awaiting PUBREL: a resend is not stored again.
    received: HashSet<u16>,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("storing: {0}")]
    Store(String),
}

impl Conn {
    fn new(sock: TcpStream, clients: Arc<MsgClients>, limits: Limits) -> Conn {
        Conn {
            sock,
            clients,
            limits,
            version: Version::V4,
            sender: String::new(),
            rx: BytesMut::with_capacity(64 << 10),
            tx: BytesMut::with_capacity(4 << 10),
            received: HashSet::new(),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), ConnError> {
        let keep_alive = self.connect().await?;
        // MQTT's rule: one and a half keep-alive periods of silence end a session.
        let idle = match keep_alive {
            0 => Duration::from_secs(3600),
            s => Duration::from_millis(s as u64 * 1500),
        };
        loop {
            // Packets that came with CONNECT (or in the last read) first.
            let done = self.handle().await?;
            if !self.tx.is_empty() {
                self.sock.write_all(&self.tx).await?;
                self.tx.clear();
            }
            if done {
                return Ok(());
            }
            let n = tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = tokio::time::timeout(idle, self.sock.read_buf(&mut self.rx)) => match r {
                    Err(_) => return Err(ConnError::Protocol("keep-alive timed out")),
                    Ok(r) => r?,
                },
            };
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Reads CONNECT and answers it; the client's keep-alive in seconds.
    async fn connect(&mut self) -> Result<u16, ConnError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match read(None, &mut self.rx, self.limits.max_packet) {
                Ok(Some(In::Connect {
                    version,
                    keep_alive,
                    client_id,
                })) => {
                    self.version = version;
                    // An empty client id asks for a clean session of its own.
                    self.sender = match client_id.is_empty() {
                        true => format!(
                            "anonymous:{}",
                            self.sock
                                .peer_addr()
                                .map(|a| a.to_string())
                                .unwrap_or_default()
                        ),
                        false => client_id,
                    };
                    self.send(Out::ConnAck).await?;
                    return Ok(keep_alive);
                }
                Ok(Some(_)) => return Err(ConnError::Protocol("the first packet was not CONNECT")),
                Ok(None) => {}
                Err(WireError::Level(l)) => {
                    self.send(Out::RefuseVersion).await?;
                    return Err(WireError::Level(l).into());
                }
                Err(e) => return Err(e.into()),
            }
            let n = tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.rx))
                .await
                .map_err(|_| ConnError::Protocol("no CONNECT within 10 s"))??;
            if n == 0 {
                return Err(ConnError::Protocol("closed before CONNECT"));
            }
        }
    }

    async fn send(&mut self, out: Out) -> Result<(), ConnError> {
        write(self.version, out, &mut self.tx)?;
        self.sock.write_all(&self.tx).await?;
        self.tx.clear();
        Ok(())
    }

    /// Handles every whole packet read so far; whether the client left.
    /// What came before a malformed packet is still stored and answered.
    async fn handle(&mut self) -> Result<bool, ConnError> {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut done = false;
        let mut failed = None;
        loop {
            let p = match read(Some(self.version), &mut self.rx, self.limits.max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(ConnError::from(e));
                    break;
                }
            };
            match p {
                In::Publish {
                    topic,
                    qos,
                    pkid,
                    dup,
                    payload,
                } => {
                    self.clients.broker.messages.fetch_add(1, Ordering::Relaxed);
                    let resent = qos == 2 && self.received.contains(&pkid);
                    if !resent {
                        match self.clients.route(Origin::Broker, &topic) {
                            Some((client, topic)) => batch.push(Message {
                                client,
                                topic,
                                delivery: (qos > 0)
                                    .then(|| Delivery::new(&self.sender, pkid, &payload, dup)),
                                payload,
                            }),
                            None => {
                                self.clients.unmatched.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("MQTT: no subscription for topic {topic:?}");
                            }
                        }
                    }
                    match qos {
                        0 => {}
                        1 => acks.push(Out::PubAck(pkid)),
                        _ => {
                            self.received.insert(pkid);
                            acks.push(Out::PubRec(pkid))
                        }
                    }
                }
                In::PubRel(pkid) => {
                    self.received.remove(&pkid);
                    acks.push(Out::PubComp(pkid));
                }
                In::PingReq => acks.push(Out::PingResp),
                In::Subscribe { pkid, filters } => acks.push(Out::SubAckFailure { pkid, filters }),
                In::Unsubscribe { pkid, filters } => acks.push(Out::UnsubAck { pkid, filters }),
                In::Disconnect => {
                    done = true;
                    break;
                }
                In::Connect { .. } => {
                    failed = Some(ConnError::Protocol("a second CONNECT"));
                    break;
                }
                In::Ignored => {}
            }
        }
        if !batch.is_empty() {
            // Nothing is acknowledged unless it is stored: on failure the
            // connection closes and the client sends again.
            self.clients
                .store(batch)
                .await
                .map_err(|e| ConnError::Store(e.to_string()))?;
        }
        for a in acks {
            write(self.version, a, &mut self.tx)?;
        }
        match failed {
            Some(e) => {
                if !self.tx.is_empty() {
                    self.sock.write_all(&self.tx).await?;
                    self.tx.clear();
                }
                Err(e)
            }
            None => Ok(done),
        }
    }
}
