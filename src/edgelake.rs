//! EdgeLake's command language on the REST port (`GET /` and `POST /` with a
//! `command`), answered in EdgeLake's shapes so its scripts work unchanged.

use std::sync::Arc;
use std::time::Instant;

use crate::error::ApiError;
use crate::format::{self, Format, Stats};
use crate::node::Shared;

/// EdgeLake-style error codes: tarn's numbering of EdgeLake's error classes
/// (clients test `err_code` for non-zero, not for particular values).
pub mod code {
    pub const COMMAND: i64 = 2;
    pub const SQL: i64 = 19;
    pub const NOT_FOUND: i64 = 33;
    pub const INTERNAL: i64 = 99;
}

/// A command's answer: JSON or text, or an EdgeLake error.
#[derive(Debug)]
pub enum Reply {
    Json(String),
    Text(String),
    Error { code: i64, text: String },
}

impl Reply {
    fn err(code: i64, text: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            text: text.into(),
        }
    }

    fn from_api(e: ApiError) -> Reply {
        let code = match e.code {
            "unknown_database" | "unknown_table" => code::NOT_FOUND,
            "internal" => code::INTERNAL,
            _ => code::SQL,
        };
        Reply::err(code, e.message)
    }
}

/// Runs one command (EdgeLake's GET-only rule for `flush buffers` is not kept:
/// tarn accepts read and write commands by either method).
pub fn run(shared: &Arc<Shared>, command: &str, destination: Option<&str>, body: &[u8]) -> Reply {
    let cmd = command.trim();
    let words: Vec<String> = cmd
        .split_whitespace()
        .take(2)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    match (first, second) {
        ("sql", _) => sql(shared, &cmd[3..], destination),
        ("get", "status") => get_status(shared, where_clause(cmd)),
        ("get", "databases") => get_databases(shared, where_clause(cmd)),
        ("get", "processes") => get_processes(shared, where_clause(cmd)),
        ("get", "tables") => get_tables(shared, where_clause(cmd)),
        ("get", "columns") => get_columns(shared, where_clause(cmd)),
        ("blockchain", "get") => blockchain_get(shared, cmd),
        ("blockchain", "insert") => blockchain_insert(shared, cmd, body),
        ("get", "data") if cmd.to_ascii_lowercase().starts_with("get data nodes") => {
            get_data_nodes(shared, where_clause(cmd))
        }
        ("test", "network") => test_network(shared, where_clause(cmd)),
        ("flush", "buffers") => {
            shared.streams.flush_all();
            Reply::Text(String::new())
        }
        ("", _) => Reply::err(code::COMMAND, "empty command"),
        _ => Reply::err(
            code::COMMAND,
            format!("Failed to process command: '{cmd}' is not a command tarn knows"),
        ),
    }
}

/// The `key = value` pairs after `where`, joined by `and`.
fn where_clause(cmd: &str) -> Vec<(String, String)> {
    let lower = cmd.to_ascii_lowercase();
    let Some(at) = lower.find(" where ") else {
        return Vec::new();
    };
    split_and(&cmd[at + 7..])
        .into_iter()
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), unquote(v.trim()).to_owned()))
        })
        .collect()
}

/// Splits on the word `and` (any case) outside quotes and parentheses.
fn split_and(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            },
        }
        if quote.is_none()
            && depth == 0
            && c.is_whitespace()
            && chars.len() >= i + 5
            && chars[i + 1..i + 4]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("and")
            && chars[i + 4].is_whitespace()
        {
            parts.push(std::mem::take(&mut cur));
            i += 5;
            continue;
        }
        cur.push(c);
        i += 1;
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn wants_json(kv: &[(String, String)]) -> bool {
    get(kv, "format").is_some_and(|f| f.eq_ignore_ascii_case("json"))
}

/// The parsed form of `sql <dbms> [options] <select>`.
#[derive(Debug, PartialEq)]
pub struct SqlCommand {
    pub dbms: String,
    pub format: Format,
    pub stat: bool,
    pub include: Option<String>,
    pub extend: Option<String>,
    pub select: String,
}

impl SqlCommand {
    /// Parses what follows the word `sql`.
    pub fn parse(rest: &str) -> Result<SqlCommand, String> {
        let rest = rest.trim_start();
        let end = rest
            .find(char::is_whitespace)
            .ok_or("expected: sql <dbms> [options] <select>")?;
        let dbms = rest[..end].to_ascii_lowercase();
        let mut s = rest[end..].trim_start();
        let mut cmd = SqlCommand {
            dbms,
            format: Format::Json,
            stat: true,
            include: None,
            extend: None,
            select: String::new(),
        };
        loop {
            let lower = s.to_ascii_lowercase();
            if s.starts_with('"')
                || s.starts_with('\'')
                || lower.starts_with("select")
                || lower.starts_with("with")
            {
                break;
            }
            if let Some(r) = lower.strip_prefix("and ") {
                s = s[s.len() - r.len()..].trim_start();
                continue;
            }
            let eq = s
                .find('=')
                .ok_or_else(|| format!("expected an option or a SELECT at: {s}"))?;
            let key = s[..eq].trim().to_ascii_lowercase();
            let after = s[eq + 1..].trim_start();
            let vlen = if after.starts_with('(') {
                after
                    .find(')')
                    .map(|i| i + 1)
                    .ok_or("unclosed '(' in an option")?
            } else {
                after.find(char::is_whitespace).unwrap_or(after.len())
            };
            let value = &after[..vlen];
            match key.as_str() {
                "format" => {
                    cmd.format = match value.to_ascii_lowercase().as_str() {
                        "json" => Format::Json,
                        "json:list" => Format::JsonList,
                        "table" => Format::Table,
                        other => {
                            return Err(format!(
                                "format={other} is not supported (json, json:list, table)"
                            ));
                        }
                    }
                }
                "stat" => cmd.stat = !value.eq_ignore_ascii_case("false"),
                "include" => cmd.include = Some(value.to_owned()),
                "extend" => cmd.extend = Some(value.to_owned()),
                // Options tarn accepts and ignores because they only tune EdgeLake's own internals.
                "timezone" | "max_time" | "dest" | "file" | "table" | "test" | "source"
                | "title" => {}
                other => return Err(format!("unknown sql option {other:?}")),
            }
            s = after[vlen..].trim_start();
        }
        let mut select = unquote(s.trim()).trim().to_owned();
        while select.ends_with(';') {
            select.pop();
        }
        if select.is_empty() {
            return Err("the sql command has no SELECT".into());
        }
        cmd.select = select;
        Ok(cmd)
    }
}

fn sql(shared: &Arc<Shared>, rest: &str, destination: Option<&str>) -> Reply {
    let started = Instant::now();
    let cmd = match SqlCommand::parse(rest) {
        Ok(c) => c,
        Err(e) => return Reply::err(code::COMMAND, e),
    };
    let mut opts = crate::scatter::Options::for_node(shared, None, false);
    if let Some(list) = &cmd.include {
        for item in option_list(list) {
            opts.include.push(match item.split_once('.') {
                Some((d, t)) => (d.to_owned(), t.to_owned()),
                None => (cmd.dbms.clone(), item.to_owned()),
            });
        }
    }
    if let Some(list) = &cmd.extend {
        for item in option_list(list) {
            let name = item.trim_start_matches(['@', '+']).to_ascii_lowercase();
            if !crate::scatter::EXTEND_COLUMNS.contains(&name.as_str()) {
                return Reply::err(
                    code::COMMAND,
                    format!(
                        "extend={item} is not known; tarn adds {}",
                        crate::scatter::EXTEND_COLUMNS.join(", ")
                    ),
                );
            }
            opts.extend.push(name);
        }
    }
    // include= and extend= need the network path even for this node's data.
    let network = destination.is_some_and(|d| d.trim().eq_ignore_ascii_case("network"))
        || !opts.include.is_empty()
        || !opts.extend.is_empty();
    let (result, nodes) = if network {
        // Called on a blocking thread of the runtime: wait for the network here.
        let run = crate::scatter::run(shared, &cmd.dbms, &cmd.select, opts);
        match tokio::runtime::Handle::current().block_on(run) {
            Ok(a) => (a.result, a.stats.replied),
            Err(e) => return Reply::from_api(e),
        }
    } else {
        match shared.local_query(&cmd.dbms, &cmd.select, None) {
            Ok(r) => (r, 1),
            Err(e) => return Reply::from_api(e),
        }
    };
    let stats = cmd.stat.then(|| Stats {
        count: result.rows.len(),
        elapsed_secs: started.elapsed().as_secs(),
        nodes,
    });
    let text = format::edgelake(&result, cmd.format, stats);
    match cmd.format {
        Format::Table => Reply::Text(text),
        _ => Reply::Json(text),
    }
}

/// The items of an option value `(a, b.c)` (or a bare `a`).
fn option_list(v: &str) -> Vec<&str> {
    v.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn get_status(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let status = format!("{}@{} running", shared.cfg.name, shared.rest_addr);
    if wants_json(&kv) {
        Reply::Json(
            serde_json::json!({
                "status": status,
                "name": shared.cfg.name,
                "version": env!("CARGO_PKG_VERSION"),
                "services": shared.cfg.services,
                "uptime_s": shared.started.elapsed().as_secs(),
            })
            .to_string(),
        )
    } else {
        Reply::Text(format!("'{status}'"))
    }
}

fn get_databases(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let dbs = shared.storage.databases();
    if wants_json(&kv) {
        let mut m = serde_json::Map::new();
        for d in dbs {
            let path = shared
                .storage
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

fn get_processes(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    use crate::config::Service;
    let running = |on: bool, details: String| {
        if on {
            serde_json::json!({"Status": "Running", "Details": details})
        } else {
            serde_json::json!({"Status": "Not declared", "Details": ""})
        }
    };
    let procs = serde_json::json!({
        "TCP": running(false, String::new()),
        "REST": running(true, format!("Listening on: {}", shared.rest_addr)),
        "Operator": running(shared.cfg.has(Service::Operator), "SQLite storage, streaming and watched directory".into()),
        "Publisher": running(shared.cfg.has(Service::Publisher), String::new()),
        "Blockchain Sync": running(false, String::new()),
        "Scheduler": running(false, String::new()),
        "Blobs Archiver": running(false, String::new()),
        "Streamer": running(true, format!("Flush after {} rows or {} ms", shared.cfg.streaming.threshold_rows, shared.cfg.streaming.threshold_ms)),
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

fn get_tables(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let dbms: Vec<String> = match get(&kv, "dbms") {
        Some("*") | None => shared.storage.databases(),
        Some(d) => vec![d.to_ascii_lowercase()],
    };
    let mut m = serde_json::Map::new();
    for d in &dbms {
        match shared.storage.tables(d) {
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
            Err(e) => return Reply::from_api(e),
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

fn get_columns(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let (Some(dbms), Some(table)) = (get(&kv, "dbms"), get(&kv, "table")) else {
        return Reply::err(
            code::COMMAND,
            "expected: get columns where dbms = X and table = Y",
        );
    };
    let cols = match shared.storage.columns(dbms, table) {
        Ok(c) => c,
        Err(e) => return Reply::from_api(e),
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

/// Policies as EdgeLake lists them, with `cluster` policies merged by name
/// and completed with the tables the ledger's `table` policies assign them.
fn edgelake_policies(shared: &Shared) -> Vec<(String, serde_json::Value)> {
    let view = shared.mesh.view();
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    let mut clusters: std::collections::BTreeMap<String, serde_json::Value> =
        std::collections::BTreeMap::new();
    for p in view.policies() {
        let v = crate::rest::policy_json(p);
        if p.kind == "cluster"
            && let Some(name) = p.policy["cluster"]["name"].as_str()
        {
            clusters.entry(name.to_owned()).or_insert(v);
            continue;
        }
        out.push((p.kind.clone(), v));
    }
    for p in view.of_kind("table") {
        let t = &p.policy["table"];
        let Some(c) = t["cluster"].as_str() else {
            continue;
        };
        let entry = clusters.entry(c.to_owned()).or_insert_with(|| {
            let id = blake3::hash(format!("cluster\0{c}").as_bytes()).to_hex()[..32].to_owned();
            serde_json::json!({"cluster": {"name": c, "id": id, "table": []}})
        });
        let tables = entry["cluster"]
            .as_object_mut()
            .map(|o| o.entry("table").or_insert_with(|| serde_json::json!([])));
        if let Some(serde_json::Value::Array(list)) = tables {
            let item =
                serde_json::json!({"dbms": t["dbms"], "name": t["name"], "status": "active"});
            if !list.contains(&item) {
                list.push(item);
            }
        }
    }
    out.extend(clusters.into_values().map(|v| ("cluster".to_owned(), v)));
    out
}

/// `blockchain get <type|(t1, t2)|*> [where k = v [and ...]] [bring...]`.
fn blockchain_get(shared: &Shared, cmd: &str) -> Reply {
    let rest = cmd["blockchain get".len()..].trim();
    let lower = rest.to_ascii_lowercase();
    let (head, bring) = match lower.find(" bring") {
        Some(i) => (&rest[..i], Some(rest[i..].trim())),
        None => (rest, None),
    };
    let (types, conds) = match head.to_ascii_lowercase().find(" where ") {
        Some(i) => (&head[..i], where_pairs(&head[i + 7..])),
        None => (head, Vec::new()),
    };
    let types: Vec<String> = types
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty() {
        return Reply::err(
            code::COMMAND,
            "expected: blockchain get <type> [where key = value] [bring...]",
        );
    }
    let matches: Vec<serde_json::Value> = edgelake_policies(shared)
        .into_iter()
        .filter(|(k, _)| types.iter().any(|t| t == "*" || t == k))
        .filter(|(k, v)| {
            conds.iter().all(|(key, want)| {
                let got = &v[k][key.as_str()];
                match got {
                    serde_json::Value::String(s) => s.eq_ignore_ascii_case(want),
                    serde_json::Value::Null => false,
                    other => *other.to_string() == **want,
                }
            })
        })
        .map(|(_, v)| v)
        .collect();
    let Some(bring) = bring else {
        return Reply::Json(serde_json::Value::Array(matches).to_string());
    };
    let b = bring.to_ascii_lowercase();
    if b.starts_with("bring.count") {
        return Reply::Text(matches.len().to_string());
    }
    if b.starts_with("bring.first") {
        return Reply::Json(
            serde_json::Value::Array(matches.into_iter().take(1).collect()).to_string(),
        );
    }
    if b.starts_with("bring.last") {
        return Reply::Json(
            serde_json::Value::Array(matches.into_iter().last().into_iter().collect()).to_string(),
        );
    }
    // bring[.unique] [type][key] ... [separator=X]
    let unique = b.starts_with("bring.unique");
    let sep = b.find("separator=").map(|i| {
        bring[i + 10..]
            .trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .to_owned()
    });
    let keys: Vec<String> = bring
        .split('[')
        .skip(1)
        .filter_map(|k| k.split(']').next())
        .map(|k| k.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
        .collect();
    let mut values: Vec<String> = Vec::new();
    for v in &matches {
        let Some((kind, body)) = v.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let key = match keys.as_slice() {
            [t, k] if t == kind || t == "*" => k,
            [k] => k,
            _ => continue,
        };
        let val = match &body[key.as_str()] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        if !unique || !values.contains(&val) {
            values.push(val);
        }
    }
    Reply::Text(values.join(sep.as_deref().unwrap_or("")))
}

fn where_pairs(s: &str) -> Vec<(String, String)> {
    split_and(s)
        .into_iter()
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), unquote(v.trim()).to_owned()))
        })
        .collect()
}

/// `blockchain insert where policy = !x ...` with `x={...}` or the bare policy in the body.
fn blockchain_insert(shared: &Shared, cmd: &str, body: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim();
    if let Some(i) = text.find('=')
        && !text.starts_with('{')
        && text[..i]
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '!')
    {
        text = text[i + 1..].trim();
    }
    if text.is_empty() {
        // The policy may also travel inline: `... where policy = {...}`.
        if let Some(i) = cmd.find('{') {
            text = cmd[i..].trim();
        }
    }
    let policy = match tarn_ledger::policy::Policy::parse(text) {
        Ok(p) => p,
        Err(e) => return Reply::err(code::COMMAND, format!("the policy is not valid: {e}")),
    };
    if shared.mesh.view().get(&policy.id()).is_some() {
        return Reply::Text(String::new());
    }
    let mesh = shared.mesh.clone();
    let r = tokio::runtime::Handle::current()
        .block_on(async move { mesh.publish(&policy, None).await });
    match r {
        Ok(_) => Reply::Text(String::new()),
        Err(e) => Reply::from_api(e),
    }
}

/// `get data nodes [where dbms = X and table = Y and format=json]`.
fn get_data_nodes(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let nodes = tokio::runtime::Handle::current().block_on(crate::mesh::node_list(shared));
    let view = shared.mesh.view();
    let mut rows = Vec::new();
    for p in view.of_kind("table") {
        let t = &p.policy["table"];
        let (Some(dbms), Some(table), Some(cluster)) = (
            t["dbms"].as_str(),
            t["name"].as_str(),
            t["cluster"].as_str(),
        ) else {
            continue;
        };
        if get(&kv, "dbms").is_some_and(|d| d != dbms)
            || get(&kv, "table").is_some_and(|x| x != table)
        {
            continue;
        }
        for n in &nodes {
            let in_cluster = n["cluster"].as_str() == Some(cluster)
                || (n["cluster"].is_null()
                    && format!("node-{}", n["peer_id"].as_str().unwrap_or("")) == cluster);
            let is_operator = n["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "operator"));
            if !in_cluster || !is_operator {
                continue;
            }
            rows.push(serde_json::json!({
                "Company": "",
                "DBMS": dbms,
                "Table": table,
                "Cluster ID": cluster,
                "Cluster Status": "active",
                "Node Name": n["name"],
                "Member ID": n["peer_id"],
                "External IP/Port": n["rest"],
                "Local IP/Port": n["rest"],
                "Main": "+",
                "Node Status": if n["alive"] == true { "active" } else { "inactive" },
            }));
        }
    }
    if wants_json(&kv) {
        Reply::Json(serde_json::Value::Array(rows).to_string())
    } else {
        let mut out = String::from(
            "\nCompany DBMS       Table                Cluster ID                       Node Name            Node Status\n",
        );
        for r in &rows {
            out.push_str(&format!(
                "{:<7} {:<10} {:<20} {:<32} {:<20} {}\n",
                "",
                r["DBMS"].as_str().unwrap_or(""),
                r["Table"].as_str().unwrap_or(""),
                r["Cluster ID"].as_str().unwrap_or(""),
                r["Node Name"].as_str().unwrap_or(""),
                r["Node Status"].as_str().unwrap_or("")
            ));
        }
        Reply::Text(out)
    }
}

/// `test network`: asks every known node for its ledger heads and reports who answered.
fn test_network(shared: &Shared, kv: Vec<(String, String)>) -> Reply {
    let mesh = shared.mesh.clone();
    let nodes = tokio::runtime::Handle::current().block_on(async {
        let list = crate::mesh::node_list(shared).await;
        let mut checks = Vec::new();
        for n in list {
            let m = mesh.clone();
            checks.push(tokio::spawn(async move {
                let peer: Option<tarn_net::PeerId> =
                    n["peer_id"].as_str().and_then(|p| p.parse().ok());
                let ok = match peer {
                    Some(p) if p == m.peer_id() => true,
                    Some(p) => tokio::time::timeout(std::time::Duration::from_secs(3), m.ping(p))
                        .await
                        .unwrap_or(false),
                    None => false,
                };
                (n, ok)
            }));
        }
        let mut out = Vec::new();
        for c in checks {
            if let Ok(v) = c.await {
                out.push(v);
            }
        }
        out
    });
    if wants_json(&kv) {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(n, ok)| {
                serde_json::json!({
                    "Address": n["rest"], "Node Type": n["services"], "Node Name": n["name"],
                    "Peer ID": n["peer_id"], "Status": if *ok { "+" } else { " " },
                })
            })
            .collect();
        return Reply::Json(serde_json::Value::Array(list).to_string());
    }
    let mut out = String::from(
        "\nTest Network\nAddress               Node Type            Node Name            Status\n--------------------- -------------------- -------------------- ------\n",
    );
    for (n, ok) in &nodes {
        let types: Vec<&str> = n["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        out.push_str(&format!(
            "{:<21} {:<20} {:<20} {}\n",
            n["rest"].as_str().unwrap_or(""),
            types.join(","),
            n["name"].as_str().unwrap_or(""),
            if *ok { "+" } else { " " }
        ));
    }
    Reply::Text(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sql_commands() {
        let c =
            SqlCommand::parse(" lab format = table and stat=false \"select * from t;\"").unwrap();
        assert_eq!(c.dbms, "lab");
        assert_eq!(c.format, Format::Table);
        assert!(!c.stat);
        assert_eq!(c.select, "select * from t");
        let c = SqlCommand::parse("lab SELECT count(*) FROM t WHERE a = 'x and y'").unwrap();
        assert_eq!((c.format, c.stat), (Format::Json, true));
        assert_eq!(c.select, "SELECT count(*) FROM t WHERE a = 'x and y'");
        let c = SqlCommand::parse(
            "lab format=json:list and include=(t2, db.t3) and extend=(@table_name) select 1",
        )
        .unwrap();
        assert_eq!(c.format, Format::JsonList);
        assert_eq!(c.include.as_deref(), Some("(t2, db.t3)"));
        assert!(SqlCommand::parse("lab format=xml select 1").is_err());
        assert!(SqlCommand::parse("lab").is_err());
        assert!(SqlCommand::parse("lab format=json").is_err());
    }

    #[test]
    fn parses_where_clauses() {
        assert_eq!(
            where_clause("get columns where dbms = lab and table='t' AND format=json"),
            vec![
                ("dbms".to_owned(), "lab".to_owned()),
                ("table".to_owned(), "t".to_owned()),
                ("format".to_owned(), "json".to_owned())
            ]
        );
    }
}
