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

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::clients::{Delivery, Message, MsgClients, Origin};
use super::wire::{In, Out, Publish, Version, WireError, read, write};

/// Broker limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted (a larger one closes the connection).
    pub max_packet: usize,
    /// Most clients connected at once (more are refused).
    pub max_connections: usize,
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
    #[error("login refused: {0}")]
    Login(String),
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
                    login,
                })) => {
                    self.version = version;
                    if let Some(check) = self.clients.login()
                        && let Err(e) = check(login, self.sock.peer_addr().ok()).await
                    {
                        self.send(Out::RefuseLogin).await?;
                        return Err(ConnError::Login(e));
                    }
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

    /// Takes a PUBLISH: into `batch` if a subscription wants it, its ack
    /// into `acks` (sent once the batch is stored).
    fn publish(&mut self, p: Publish, batch: &mut Vec<Message>, acks: &mut Vec<Out>) {
        self.clients.broker.messages.fetch_add(1, Ordering::Relaxed);
        let resent = p.qos == 2 && self.received.contains(&p.pkid);
        if !resent {
            match self.clients.route(Origin::Broker, &p.topic) {
                Some((client, topic)) => batch.push(Message {
                    client,
                    topic,
                    delivery: (p.qos > 0)
                        .then(|| Delivery::new(&self.sender, p.pkid, &p.payload, p.dup)),
                    payload: p.payload,
                }),
                None => {
                    self.clients.unmatched.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("MQTT: no subscription for topic {:?}", p.topic);
                }
            }
        }
        match p.qos {
            0 => {}
            1 => acks.push(Out::PubAck(p.pkid)),
            _ => {
                self.received.insert(p.pkid);
                acks.push(Out::PubRec(p.pkid))
            }
        }
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
                In::Publish(p) => self.publish(p, &mut batch, &mut acks),
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
