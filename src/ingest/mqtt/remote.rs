//! A subscription to an MQTT broker elsewhere (`run msg client where broker
//! = <host>`), on rumqttc: a persistent session under a client id that
//! survives restarts (so the broker keeps QoS 1 and 2 messages while the
//! node is away), acknowledgements sent only once the messages are stored,
//! and reconnection with backoff while the broker is gone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::clients::{Client, Delivery, Message, MsgClients};
use super::command::Broker;

/// Messages read ahead of the store.
const READ_AHEAD: usize = 4096;
/// Most messages stored in one go.
const BATCH: usize = 4096;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Runs `c`'s subscription until the client is stopped.
pub async fn run(clients: Arc<MsgClients>, c: Arc<Client>, node: String) {
    let Broker::Remote { host, port } = c.spec.broker.clone() else {
        return;
    };
    let mut opts = MqttOptions::new(c.mqtt_id(&node), host, port);
    let forget = opts.clone();
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(8 << 20, 1 << 20);
    if let Some(u) = &c.spec.user {
        opts.set_credentials(u.clone(), c.spec.password.clone().unwrap_or_default());
    }
    // Acks wait in the request channel; it holds more than any broker lets
    // be unacknowledged (65,535 packet ids), so an ack never blocks.
    let (mqtt, mut events) = AsyncClient::new(opts, 70_000);
    let filters: Vec<SubscribeFilter> = c
        .spec
        .topics
        .iter()
        .map(|t| SubscribeFilter::new(t.name.clone(), qos(t.qos.unwrap_or(c.spec.qos))))
        .collect();
    let (tx, rx) = mpsc::channel::<Publish>(READ_AHEAD);
    let sender = format!("{}:{}", c.id, c.mqtt_id(&node));
    let store = tokio::spawn(store_loop(clients, c.clone(), mqtt.clone(), rx, sender));
    let mut stop = c.stopped();
    let mut backoff = Duration::from_millis(250);
    loop {
        let ev = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                c.connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(250);
                tracing::info!("msg client {}: connected", c.id);
                if !ack.session_present
                    && let Err(e) = mqtt.try_subscribe_many(filters.clone())
                {
                    c.counters.error(&format!("subscribing: {e}"));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(a))) => {
                if a.return_codes
                    .iter()
                    .any(|r| matches!(r, rumqttc::SubscribeReasonCode::Failure))
                {
                    c.counters.error("the broker refused a subscription");
                }
            }
            Ok(_) => {}
            Err(e) => {
                c.connected.store(false, Ordering::Relaxed);
                c.counters.error(&format!("broker connection: {e}"));
                tracing::debug!("msg client {}: {e}; again in {backoff:?}", c.id);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    drop(tx);
    finish(&mqtt, &mut events, store).await;
    c.connected.store(false, Ordering::Relaxed);
    if c.removed.load(Ordering::Relaxed) {
        forget_session(&c, forget).await;
    }
}

/// `exit msg client`: a clean session ends the broker's copy (its
/// subscriptions and the messages it queues for this client).
async fn forget_session(c: &Client, mut opts: MqttOptions) {
    if let Some(u) = &c.spec.user {
        opts.set_credentials(u.clone(), c.spec.password.clone().unwrap_or_default());
    }
    opts.set_clean_session(true);
    let (mqtt, mut events) = AsyncClient::new(opts, 10);
    let ended = async {
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = mqtt.try_disconnect();
                }
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
}

/// Stops reading, but keeps the link up until what was read is stored and
/// its acks are on the wire: otherwise the broker sends it again after a
/// restart and it is stored twice. What arrives meanwhile is not
/// acknowledged (the broker keeps it for the next session).
async fn finish(mqtt: &AsyncClient, events: &mut EventLoop, mut store: JoinHandle<()>) {
    let flushed = async {
        loop {
            tokio::select! {
                _ = &mut store => break,
                ev = events.poll() => if ev.is_err() {
                    let _ = (&mut store).await;
                    return;
                },
            }
        }
        let _ = mqtt.try_disconnect();
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flushed).await;
}

/// Stores what arrives, a batch at a time, then acknowledges it.
async fn store_loop(
    clients: Arc<MsgClients>,
    c: Arc<Client>,
    mqtt: AsyncClient,
    mut rx: mpsc::Receiver<Publish>,
    sender: String,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let msgs: Vec<Message> = batch
            .iter()
            .filter_map(|p| {
                let topic = c.spec.topic_of(&p.topic);
                if topic.is_none() {
                    c.counters
                        .error(&format!("a message on topic {:?}, not subscribed", p.topic));
                }
                Some(Message {
                    client: c.clone(),
                    topic: topic?,
                    payload: p.payload.clone(),
                    delivery: (p.qos != QoS::AtMostOnce)
                        .then(|| Delivery::new(&sender, p.pkid, &p.payload, p.dup)),
                })
            })
            .collect();
        if let Err(e) = clients.store(msgs).await {
            // Not acknowledged: the broker sends them again once the link
            // is made again. Drop the link so that happens.
            c.counters.error(&format!("storing: {e}"));
            tracing::warn!("msg client {}: storing failed ({e}); reconnecting", c.id);
            let _ = mqtt.try_disconnect();
            continue;
        }
        for p in batch.iter().filter(|p| p.qos != QoS::AtMostOnce) {
            if mqtt.ack(p).await.is_err() {
                return;
            }
        }
    }
}
