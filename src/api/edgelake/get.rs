//! `get status`, `get databases`, `get processes`, `get tables`, `get columns`.

use super::{AppState, Reply, code, get, wants_json};
use crate::config::Service;

/// EdgeLake's `name@ip:port running`, with the address peers reach (the
/// libp2p TCP port, EdgeLake's TCP service), not the REST one.
pub(super) fn status(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let at = match s.mesh.peer_endpoint() {
        Some((ip, port)) if ip.contains(':') => format!("[{ip}]:{port}"),
        Some((ip, port)) => format!("{ip}:{port}"),
        None => s.info.rest.to_string(),
    };
    let status = format!("{}@{at} running", s.info.name);
    if wants_json(&kv) {
        Reply::Json(serde_json::json!({ "Status": status }).to_string())
    } else {
        Reply::Text(status)
    }
}

/// The node's databases; a query node also lists `system_query`, where
/// network answers are consolidated (in memory).
pub(super) fn databases(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let mut dbs = s.store.databases();
    let query = s.info.runs(Service::Query);
    if query && !dbs.iter().any(|d| d == "system_query") {
        dbs.push("system_query".to_owned());
    }
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for d in dbs {
            let path = match s.store.path_of(&d) {
                Some(p) => p.display().to_string(),
                None if d == "system_query" => "MEMORY".to_owned(),
                None => String::new(),
            };
            m.insert(
                d,
                serde_json::json!({"dbms_type": "sqlite", "ip": "Local", "port": "0", "storage": path}),
            );
        }
        Reply::Json(serde_json::Value::Object(m).to_string())
    } else {
        let mut out = String::from("\nList of DBMS connections\n");
        for d in dbs {
            out.push_str(&format!("{d:<20} sqlite\n"));
        }
        Reply::Text(out)
    }
}

/// EdgeLake's processes, in its order, each `Running` with what tarn runs
/// in its place, or `Not declared` where tarn runs nothing like it.
pub(super) fn processes(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let procs = process_list(s);
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for (name, details) in &procs {
            let v = match details {
                Some(d) => serde_json::json!({"Status": "Running", "Details": d}),
                None => serde_json::json!({"Status": "Not declared", "Details": ""}),
            };
            m.insert((*name).to_owned(), v);
        }
        Reply::Json(serde_json::Value::Object(m).to_string())
    } else {
        // EdgeLake's layout for its `get` tables, indented by four spaces.
        let rows: Vec<Vec<String>> = procs
            .iter()
            .map(|(name, details)| {
                let status = if details.is_some() {
                    "Running"
                } else {
                    "Not declared"
                };
                vec![
                    (*name).to_owned(),
                    status.to_owned(),
                    details.clone().unwrap_or_default(),
                ]
            })
            .collect();
        Reply::Text(crate::api::format::nested_lists(
            &["Process", "Status", "Details"],
            &rows,
            "    ",
        ))
    }
}

/// EdgeLake's processes in its order, with what tarn runs for each (`None`:
/// not declared).
fn process_list(s: &AppState) -> Vec<(&'static str, Option<String>)> {
    let peer = s
        .mesh
        .peer_endpoint()
        .map_or_else(String::new, |(ip, port)| format!("{ip}:{port}"));
    let runs = |svc| s.info.runs(svc);
    vec![
        (
            "TCP",
            Some(format!(
                "Listening on: {peer} (libp2p, Noise), Peers: {}",
                s.mesh.connected_count()
            )),
        ),
        (
            "REST",
            Some(format!(
                "Listening on: {}, SSL: {}",
                s.info.rest,
                if s.info.tls { "True" } else { "False" }
            )),
        ),
        (
            "Operator",
            runs(Service::Operator).then(|| match &s.info.cluster {
                Some(c) => format!("Cluster Member: True, Cluster: {c}"),
                None => "Cluster Member: False".to_owned(),
            }),
        ),
        (
            "Blockchain Sync",
            Some(format!(
                "Ledger gossip, and anti-entropy with a few peers every {} seconds",
                crate::mesh::SYNC_EVERY.as_secs()
            )),
        ),
        // EdgeLake's system scheduler (id 0) runs its periodic housekeeping;
        // tarn's node runs the same kind of tasks on timers of its own.
        (
            "Scheduler",
            Some(format!(
                "Schedulers IDs in use: [0 (system)], tasks: streaming flush every {} ms, \
                 ledger anti-entropy every {} seconds, audit retention hourly",
                s.info.streaming.threshold_ms,
                crate::mesh::SYNC_EVERY.as_secs()
            )),
        ),
        // EdgeLake archives the files it ingested; tarn keeps the files it
        // loaded from the watched directory in its `archive/`.
        (
            "Blobs Archiver",
            s.info
                .watch_dir
                .as_ref()
                .map(|d| format!("Archiving loaded files in {}", d.join("archive").display())),
        ),
        mqtt_clients(s),
        message_broker(s),
        ("SMTP", None),
        (
            "Streamer",
            Some(format!(
                "Default streaming thresholds are {} ms and {} rows",
                s.info.streaming.threshold_ms, s.info.streaming.threshold_rows
            )),
        ),
        (
            "Query Pool",
            runs(Service::Query).then(|| "Network queries through this node".to_owned()),
        ),
        ("Kafka Consumer", None),
        ("gRPC", None),
        (
            "Publisher",
            runs(Service::Publisher)
                .then(|| "Routes batches to the operators of their cluster".to_owned()),
        ),
        ("Distributor", None),
        ("Consumer", None),
    ]
}

/// EdgeLake's `MQTT` process: tarn's message clients, when there are any.
fn mqtt_clients(s: &AppState) -> (&'static str, Option<String>) {
    let n = s.msg.list().len();
    (
        "MQTT",
        (n > 0).then(|| format!("Message clients: {n} (get msg clients)")),
    )
}

/// EdgeLake's `Message Broker`: the node's MQTT broker, when it runs.
fn message_broker(s: &AppState) -> (&'static str, Option<String>) {
    let at = s.msg.broker_addr();
    (
        "Message Broker",
        at.map(|a| format!("Listening on: {a} (MQTT 3.1.1 and 5)")),
    )
}

pub(super) fn tables(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let dbms: Vec<String> = match get(&kv, "dbms") {
        Some("*") | None => s.store.databases(),
        Some(d) => vec![d.to_ascii_lowercase()],
    };
    let mut m = serde_json::Map::new();
    for d in &dbms {
        match s.store.tables(d) {
            Ok(tables) => {
                m.insert(
                    d.clone(),
                    serde_json::json!(
                        tables
                            .iter()
                            .map(|t| serde_json::json!({"table": t, "local": true}))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            Err(e) => return Reply::from_error(&e),
        }
    }
    if wants_json(&kv) {
        Reply::Json(serde_json::Value::Object(m).to_string())
    } else {
        let mut out = String::from(
            "\nDatabase             Table name           Local DBMS\n-------------------- -------------------- ----------\n",
        );
        for (d, tables) in &m {
            for t in tables.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{d:<20} {:<20} V\n",
                    t["table"].as_str().unwrap_or("")
                ));
            }
        }
        Reply::Text(out)
    }
}

pub(super) async fn columns(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let (Some(dbms), Some(table)) = (get(&kv, "dbms"), get(&kv, "table")) else {
        return Reply::err(
            code::COMMAND,
            "expected: get columns where dbms = X and table = Y",
        );
    };
    // A node that holds the table answers from its store; any other (a
    // query node) from the schema its operators announced in the ledger.
    // The declared types are read from the database: off the runtime.
    let (store, d, t) = (s.store.clone(), dbms.to_owned(), table.to_owned());
    let declared = tokio::task::spawn_blocking(move || store.declared_columns(&d, &t))
        .await
        .unwrap_or_else(|e| Err(crate::store::StoreError::internal("reading columns", e)));
    let cols: Vec<(String, String)> = match declared {
        Ok(c) => c,
        Err(e) => match s
            .mesh
            .with_view(|v| crate::cluster::announce::announced_columns(v, dbms, table))
        {
            Some(c) => c,
            None => return Reply::from_error(&e),
        },
    };
    // EdgeLake shows the declared types in PostgreSQL's words (its
    // `unify_data_type`): `timestamp without time zone`, `character varying`.
    let cols = cols.into_iter().map(|(c, t)| {
        let shown = match t.as_str() {
            "serial" => "integer".to_owned(),
            "timestamp" => "timestamp without time zone".to_owned(),
            "varchar" => "character varying".to_owned(),
            _ => t,
        };
        (c, shown)
    });
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for (c, t) in cols {
            m.insert(c, t.into());
        }
        Reply::Json(serde_json::Value::Object(m).to_string())
    } else {
        let mut out = format!(
            "\nSchema for DBMS: '{dbms}' and Table: '{table}'\nColumn Name          Column Type\n-------------------- -----------------------------\n"
        );
        for (c, t) in cols {
            out.push_str(&format!("{c:<20} {t}\n"));
        }
        Reply::Text(out)
    }
}
