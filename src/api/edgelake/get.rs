//! `get status`, `get databases`, `get processes`, `get tables`, `get columns`.

use super::{AppState, Reply, code, get, wants_json};
use crate::config::Service;

pub(super) fn status(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let status = format!("{}@{} running", s.info.name, s.info.rest);
    if wants_json(&kv) {
        let (files, rows) = s.streams.errors();
        Reply::Json(
            serde_json::json!({
                "status": status,
                "name": s.info.name,
                "version": env!("CARGO_PKG_VERSION"),
                "services": s.info.services,
                "uptime_s": s.info.started.elapsed().as_secs(),
                "stream_errors": {"files": files, "rows": rows},
            })
            .to_string(),
        )
    } else {
        Reply::Text(format!("'{status}'"))
    }
}

pub(super) fn databases(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let dbs = s.store.databases();
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for d in dbs {
            let path = s
                .store
                .path_of(&d)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
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

pub(super) fn processes(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let running = |on: bool, details: String| {
        if on {
            serde_json::json!({"Status": "Running", "Details": details})
        } else {
            serde_json::json!({"Status": "Not declared", "Details": ""})
        }
    };
    let procs = serde_json::json!({
        "TCP": running(false, String::new()),
        "REST": running(true, format!("Listening on: {}", s.info.rest)),
        "Operator": running(s.info.runs(Service::Operator), "SQLite storage, streaming and watched directory".into()),
        "Publisher": running(s.info.runs(Service::Publisher), String::new()),
        "Blockchain Sync": running(false, String::new()),
        "Scheduler": running(false, String::new()),
        "Blobs Archiver": running(false, String::new()),
        "Streamer": running(true, format!("Flush after {} rows or {} ms", s.info.streaming.threshold_rows, s.info.streaming.threshold_ms)),
    });
    if wants_json(&kv) {
        Reply::Json(procs.to_string())
    } else {
        let mut out = String::from(
            "\n    Process         Status       Details\n    ---------------|------------|-------\n",
        );
        if let Some(m) = procs.as_object() {
            for (k, v) in m {
                out.push_str(&format!(
                    "    {k:<15}| {:<11}| {}\n",
                    v["Status"].as_str().unwrap_or(""),
                    v["Details"].as_str().unwrap_or("")
                ));
            }
        }
        Reply::Text(out)
    }
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

pub(super) fn columns(s: &AppState, kv: Vec<(String, String)>) -> Reply {
    let (Some(dbms), Some(table)) = (get(&kv, "dbms"), get(&kv, "table")) else {
        return Reply::err(
            code::COMMAND,
            "expected: get columns where dbms = X and table = Y",
        );
    };
    let cols = match s.store.columns(dbms, table) {
        Ok(c) => c,
        Err(e) => return Reply::from_error(&e),
    };
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for (c, t) in cols {
            m.insert(c, t.edgelake_name().into());
        }
        Reply::Json(serde_json::Value::Object(m).to_string())
    } else {
        let mut out = format!(
            "\nSchema for DBMS: '{dbms}' and Table: '{table}'\nColumn Name          Column Type\n-------------------- -----------------------------\n"
        );
        for (c, t) in cols {
            out.push_str(&format!("{c:<20} {}\n", t.edgelake_name()));
        }
        Reply::Text(out)
    }
}
