//! Message clients and the node's MQTT broker: `run msg client`, `get msg
//! clients`, `exit msg client`, `run message broker`, `get local broker`,
//! and EdgeLake's `POST /` with `command: data` and a `topic` header.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{AppState, Reply, code, get, wants_json};
use crate::ingest::mqtt::{Broker, Client, Message, Origin};

/// EdgeLake's broker port, the default of `run message broker`.
pub const BROKER_PORT: u16 = 32150;

/// `run msg client where ...` (or `run mqtt client`).
pub(super) fn run_client(s: &AppState, cmd: &str) -> Reply {
    match s.msg.add(cmd) {
        Ok(c) => {
            let local = c.spec.broker == Broker::Local && s.msg.broker_addr().is_none();
            let hint = if local {
                " (this node runs no MQTT broker: start one with `run message broker` or --mqtt)"
            } else {
                ""
            };
            Reply::Text(format!("Message client {} started{hint}", c.id))
        }
        Err(e) => Reply::err(code::COMMAND, e),
    }
}

/// `get msg clients [where id = n] [and format = json]` (also `get msg
/// client n`, `get msg client statistics`).
pub(super) fn clients(s: &AppState, cmd: &str, kv: Vec<(String, String)>) -> Reply {
    let id = get(&kv, "id").map(str::to_owned).or_else(|| {
        cmd.split_whitespace()
            .nth(3)
            .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
    });
    let id = match id.map(|i| i.parse::<u32>()) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(_)) => return Reply::err(code::COMMAND, "the client id is not a number"),
    };
    let list: Vec<Arc<Client>> = s
        .msg
        .list()
        .into_iter()
        .filter(|c| id.is_none_or(|i| c.id == i))
        .collect();
    if let (Some(i), true) = (id, list.is_empty()) {
        return Reply::err(code::NOT_FOUND, format!("no message client {i}"));
    }
    if wants_json(&kv) {
        let clients: Vec<Value> = list.iter().map(|c| client_json(s, c)).collect();
        return Reply::Json(json!({"clients": clients, "broker": broker_json(s)}).to_string());
    }
    let mut out = String::new();
    for c in &list {
        out.push_str(&format!(
            "\nSubscription ID: {}\nUser:         {}\nBroker:       {}\nConnection:   {}\n",
            c.id,
            c.spec.user.as_deref().unwrap_or(""),
            broker_name(s, &c.spec.broker),
            connection(s, c),
        ));
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        out.push_str(&format!(
            "Messages:     {}\nRows:         {}\nErrors:       {}\nLast error:   {}\n\n",
            n(&c.counters.messages),
            n(&c.counters.rows),
            n(&c.counters.errors),
            last_error(&c.counters).unwrap_or_default()
        ));
        let rows: Vec<Vec<String>> = c
            .spec
            .topics
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.qos.unwrap_or(c.spec.qos).to_string(),
                    t.mapping
                        .dbms
                        .as_ref()
                        .map_or_else(String::new, |e| e.to_string()),
                    t.mapping
                        .table
                        .as_ref()
                        .map_or_else(String::new, |e| e.to_string()),
                    t.policies.join(","),
                ]
            })
            .collect();
        out.push_str(&crate::api::format::nested_lists(
            &["Topic", "QoS", "DBMS", "Table", "Policies"],
            &rows,
            "    ",
        ));
    }
    if list.is_empty() {
        out.push_str("No message client is running\n");
    }
    Reply::Text(out)
}

fn client_json(s: &AppState, c: &Client) -> Value {
    let topics: Vec<Value> = c
        .spec
        .topics
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "qos": t.qos.unwrap_or(c.spec.qos),
                "dbms": t.mapping.dbms.as_ref().map(|e| e.to_string()),
                "table": t.mapping.table.as_ref().map(|e| e.to_string()),
                "policies": t.policies,
            })
        })
        .collect();
    json!({
        "id": c.id,
        "broker": broker_name(s, &c.spec.broker),
        "connection": connection(s, c),
        "user": c.spec.user,
        "topics": topics,
        "messages": c.counters.messages.load(Ordering::Relaxed),
        "rows": c.counters.rows.load(Ordering::Relaxed),
        "errors": c.counters.errors.load(Ordering::Relaxed),
        "last_error": last_error(&c.counters),
        "command": c.command,
    })
}

fn broker_json(s: &AppState) -> Value {
    let b = &s.msg.broker;
    json!({
        "listening": s.msg.broker_addr().map(|a| a.to_string()),
        "messages": b.messages.load(Ordering::Relaxed),
        "unmatched": s.msg.unmatched.load(Ordering::Relaxed),
        "resent_not_stored": s.msg.resent.load(Ordering::Relaxed),
    })
}

fn last_error(c: &crate::ingest::mqtt::Counters) -> Option<String> {
    c.last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn broker_name(s: &AppState, b: &Broker) -> String {
    match b {
        Broker::Local => match s.msg.broker_addr() {
            Some(a) => format!("local ({a})"),
            None => "local (not running)".to_owned(),
        },
        Broker::Rest => format!("rest ({})", s.info.rest),
        Broker::Remote { host, port } => format!("{host}:{port}"),
    }
}

fn connection(s: &AppState, c: &Client) -> &'static str {
    match &c.spec.broker {
        Broker::Remote { .. } if c.connected.load(Ordering::Relaxed) => "Connected",
        Broker::Remote { .. } => "Not connected",
        Broker::Local if s.msg.broker_addr().is_none() => "Waiting for the local broker",
        Broker::Local | Broker::Rest => "Listening",
    }
}

/// `exit msg client <id|all>`, `exit mqtt [id]`.
pub(super) fn exit(s: &AppState, cmd: &str) -> Reply {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let arg = match words.as_slice() {
        [_, "msg" | "mqtt", "client" | "clients", a] => Some(*a),
        [_, "msg" | "mqtt", "client" | "clients"] | [_, "mqtt"] => None,
        [_, "mqtt", a] => Some(*a),
        _ => return Reply::err(code::COMMAND, "expected: exit msg client <id|all>"),
    };
    let id = match arg {
        None | Some("all") => None,
        Some(a) => match a.parse::<u32>() {
            Ok(i) => Some(i),
            Err(_) => return Reply::err(code::COMMAND, format!("{a:?} is not a client id or all")),
        },
    };
    match s.msg.remove(id) {
        Ok(0) if id.is_some() => Reply::err(
            code::NOT_FOUND,
            format!("no message client {}", id.unwrap_or_default()),
        ),
        Ok(n) => Reply::Text(format!("{n} message client(s) stopped")),
        Err(e) => Reply::err(code::INTERNAL, e),
    }
}

/// `run message broker where external_ip = ... and external_port = ...
/// and internal_ip = ... and internal_port = ...`: the node's broker, on
/// all interfaces at the external port (the external IP is often a NAT's,
/// not this machine's), or on the IP itself with `bind = true`.
pub(super) async fn run_broker(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let port = ["external_port", "internal_port", "port"]
        .iter()
        .find_map(|k| get(&kv, k));
    let port = match port.map(str::parse::<u16>) {
        None => BROKER_PORT,
        Some(Ok(p)) => p,
        Some(Err(_)) => return Reply::err(code::COMMAND, "the broker port is not a port number"),
    };
    let bind = get(&kv, "bind").is_some_and(|b| b.eq_ignore_ascii_case("true"));
    let ip = match (
        bind,
        ["external_ip", "internal_ip", "ip"]
            .iter()
            .find_map(|k| get(&kv, k)),
    ) {
        (true, Some(ip)) => match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Reply::err(code::COMMAND, format!("{ip:?} is not an IP address")),
        },
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    match s.msg.start_broker((ip, port).into()).await {
        Ok(a) => Reply::Text(format!("Message broker listening on {a}")),
        Err(e) => Reply::err(code::COMMAND, e),
    }
}

/// `get local broker`.
pub(super) fn local_broker(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let b = broker_json(s);
    if wants_json(&kv) {
        return Reply::Json(b.to_string());
    }
    match s.msg.broker_addr() {
        Some(a) => Reply::Text(format!(
            "Local broker listening on {a}: {} messages, {} on no subscribed topic\n",
            s.msg.broker.messages.load(Ordering::Relaxed),
            s.msg.unmatched.load(Ordering::Relaxed)
        )),
        None => Reply::Text("Local broker is not running\n".to_owned()),
    }
}

/// `POST /` with `command: data` and `topic: <name>`: the body is one
/// message, or a JSON array of messages, for the `broker = rest` client
/// subscribed to the topic. Answered only once the rows are stored.
pub(super) async fn data(s: &AppState, topic: Option<&str>, body: &[u8]) -> Reply {
    let Some(topic) = topic.map(str::trim).filter(|t| !t.is_empty()) else {
        return Reply::err(code::COMMAND, "command: data needs a 'topic' header");
    };
    let Some((client, t)) = s.msg.route(Origin::Rest, topic) else {
        return Reply::err(
            code::COMMAND,
            format!("no `run msg client where broker = rest` subscribes to topic {topic:?}"),
        );
    };
    let payloads: Vec<Bytes> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(msgs)) => msgs
            .iter()
            .map(|m| Bytes::from(serde_json::to_vec(m).unwrap_or_default()))
            .collect(),
        // Not JSON or one message: the mapping counts and explains a bad one.
        _ => vec![Bytes::copy_from_slice(body)],
    };
    let msgs: Vec<Message> = payloads
        .into_iter()
        .map(|payload| Message {
            client: client.clone(),
            topic: t,
            payload,
            delivery: None,
        })
        .collect();
    let n = msgs.len();
    match s.msg.store(msgs).await {
        Err(e) => Reply::from_error(&e),
        Ok(refused) => match refused.first() {
            Some(why) if n == 1 => {
                Reply::err(code::COMMAND, format!("the message was not stored: {why}"))
            }
            _ => Reply::Text(String::new()),
        },
    }
}
