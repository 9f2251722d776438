//! EdgeLake's command language on the REST port (`GET /` and `POST /` with a
//! `command`), answered in EdgeLake's shapes so its scripts work unchanged.
//!
//! - `sql`: `sql <dbms> [options] <select>`
//! - `get`: `get status|databases|processes|tables|columns`
//! - `blockchain`: `blockchain get ...`, `blockchain insert ...`
//! - `network`: `get data nodes`, `test network`
//! - `msg`: `run msg client`, `get msg clients`, `exit msg client`,
//!   `run message broker`, `get local broker`, and `data` (EdgeLake's POST)
//!
//! A new command is a function in one of these and a line in [`run`].

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

mod blockchain;
mod dialect;
mod get;
mod msg;
mod network;
mod shapes;
mod sql;

use super::auth::{self, Principal};
use super::body::read_body;
use super::put::header_str;
use super::{ApiError, AppState};
use crate::error::{Code, Coded};

/// EdgeLake-style error codes: tarn's numbering of EdgeLake's error classes
/// (clients test `err_code` for non-zero, not for particular values).
pub mod code {
    pub const COMMAND: i64 = 2;
    /// EdgeLake's "No metadata info": a table no policy (or store) knows.
    pub const NO_METADATA: i64 = 29;
    pub const SQL: i64 = 19;
    pub const NOT_FOUND: i64 = 33;
    pub const INTERNAL: i64 = 99;
}

/// A command's answer: JSON or text, or an EdgeLake error.
#[derive(Debug)]
pub enum Reply {
    Json(String),
    /// A `sql` command's JSON answer: EdgeLake sends it as `text/json`.
    SqlJson(String),
    Text(String),
    /// Answered with HTTP 400 (500 for an internal error), as EdgeLake does.
    Error {
        code: i64,
        text: String,
        /// EdgeLake's `local_msg`: the detail beside the class of error.
        local: Option<String>,
    },
}

impl Reply {
    fn err(code: i64, text: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            text: text.into(),
            local: None,
        }
    }

    /// Any layer's error, in EdgeLake's classes.
    fn from_error(e: &(impl Coded + ?Sized)) -> Reply {
        let class = match e.code() {
            Code::UnknownDatabase | Code::UnknownTable => code::NOT_FOUND,
            Code::Internal => code::INTERNAL,
            _ => code::SQL,
        };
        Reply::err(class, e.to_string())
    }
}

pub(super) async fn command_get(
    State(s): State<AppState>,
    user: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let Some(cmd) = header_str(&headers, "command").map(str::to_owned) else {
        return reply(
            &s,
            "get",
            Reply::err(code::COMMAND, "missing the 'command' header"),
        );
    };
    if let Err(e) = may_run(user.as_deref(), &cmd) {
        return e.into_response();
    }
    let dest = header_str(&headers, "destination").map(str::to_owned);
    let r = run(&s, &cmd, dest.as_deref(), None, &[]).await;
    reply(&s, "get", r)
}

#[derive(Deserialize)]
struct CommandBody {
    command: String,
    #[serde(default)]
    destination: Option<String>,
}

pub(super) async fn command_post(
    State(s): State<AppState>,
    user: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&s.body, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (cmd, dest, payload) = match header_str(&headers, "command") {
        Some(c) => (
            c.to_owned(),
            header_str(&headers, "destination").map(str::to_owned),
            &body[..],
        ),
        None => match serde_json::from_slice::<CommandBody>(&body) {
            Ok(b) => (b.command, b.destination, &[][..]),
            Err(_) => {
                let text = "expected a 'command' header or a JSON body {\"command\": ...}";
                return reply(&s, "post", Reply::err(code::COMMAND, text));
            }
        },
    };
    if let Err(e) = may_run(user.as_deref(), &cmd) {
        return e.into_response();
    }
    let topic = header_str(&headers, "topic");
    let r = run(&s, &cmd, dest.as_deref(), topic, payload).await;
    reply(&s, "post", r)
}

/// Whether the user may run an EdgeLake command (403 if not).
fn may_run(user: Option<&Principal>, cmd: &str) -> Result<(), ApiError> {
    let (role, db) = auth::command_needs(cmd);
    auth::check(user, role, db.as_deref())
}

fn reply(s: &AppState, method: &str, reply: Reply) -> Response {
    match reply {
        Reply::Json(j) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
        Reply::SqlJson(j) => ([(header::CONTENT_TYPE, "text/json")], j).into_response(),
        Reply::Text(t) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], t).into_response()
        }
        // EdgeLake answers errors with a 4xx status and this object
        // (clients check both); 1.4 puts it in the status line, tarn in the body.
        Reply::Error { code, text, local } => {
            let mut body = serde_json::json!({
                "method": method,
                "node": s.info.rest.ip().to_string(),
                "err_code": code,
                "err_text": text,
            });
            if let Some(l) = local {
                body["local_msg"] = l.into();
            }
            let status = if code == code::INTERNAL {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, axum::Json(body)).into_response()
        }
    }
}

/// What follows the first `n` words of `cmd` (words split on any white
/// space, Unicode's included).
fn after_words(cmd: &str, n: usize) -> &str {
    let mut rest = cmd.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

/// Runs one command (EdgeLake's GET-only rule for `flush buffers` is not kept:
/// tarn accepts read and write commands by either method).
pub async fn run(
    s: &AppState,
    command: &str,
    destination: Option<&str>,
    topic: Option<&str>,
    body: &[u8],
) -> Reply {
    // EdgeLake's scripts wrap a command that spans lines in `<...>`.
    let cmd = command.trim();
    let cmd = match cmd.strip_prefix('<').and_then(|c| c.strip_suffix('>')) {
        Some(inner) => inner.trim(),
        None => cmd,
    };
    let words: Vec<String> = cmd
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let kv = || where_clause(cmd);
    match (word(0), word(1)) {
        ("sql", _) => sql::run(s, after_words(cmd, 1), destination).await,
        ("get", "status") => get::status(s, kv()),
        ("get", "databases") => get::databases(s, kv()),
        ("get", "processes") => get::processes(s, kv()),
        ("get", "tables") => get::tables(s, kv()),
        ("get", "columns") => get::columns(s, kv()).await,
        ("get", "data") if word(2) == "nodes" => network::data_nodes(s, kv()).await,
        ("blockchain", "get") => blockchain::get(s, after_words(cmd, 2)),
        ("blockchain", "insert") => blockchain::insert(s, cmd, body).await,
        ("blockchain", "prepare") => blockchain::prepare(cmd, body),
        ("test", "network") => network::test(s, kv()).await,
        ("run", "msg" | "mqtt") if word(2) == "client" => msg::run_client(s, cmd),
        ("run", "message") if word(2) == "broker" => msg::run_broker(s, kv()).await,
        ("get", "msg") if word(2).starts_with("client") => msg::clients(s, cmd, kv()),
        ("get", "local") if word(2) == "broker" => msg::local_broker(s, kv()),
        ("exit", "msg" | "mqtt") => msg::exit(s, &cmd.to_ascii_lowercase()),
        ("data", "") => msg::data(s, topic, body).await,
        // tarn's own: rows `stream/error/` keeps, written again.
        ("replay", "stream") if word(2) == "errors" => {
            let streams = s.streams.clone();
            match tokio::task::spawn_blocking(move || streams.replay_errors()).await {
                Ok((stored, left)) => Reply::Json(
                    serde_json::json!({"stored_rows": stored, "rows_left": left}).to_string(),
                ),
                Err(e) => Reply::err(code::INTERNAL, format!("the replay failed: {e}")),
            }
        }
        ("flush", "buffers") => {
            let streams = s.streams.clone();
            match tokio::task::spawn_blocking(move || streams.flush_all()).await {
                Ok(_) => Reply::Text(String::new()),
                Err(e) => Reply::err(code::INTERNAL, format!("flushing the buffers failed: {e}")),
            }
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

pub(super) use crate::ingest::mqtt::split_and;

pub(super) fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

pub(super) fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn wants_json(kv: &[(String, String)]) -> bool {
    get(kv, "format").is_some_and(|f| f.eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn words_end_on_any_white_space() {
        assert_eq!(
            after_words("blockchain\u{2003}\u{2003}get  operator", 2),
            "operator"
        );
        assert_eq!(after_words(" sql\u{3000}lab select 1", 1), "lab select 1");
        assert_eq!(after_words("sql", 1), "");
    }

    proptest::proptest! {
        /// Commands made of words, Unicode white space, quotes and
        /// operators never panic the parsers.
        #[test]
        fn command_parsing_never_panics(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "sql", "blockchain", "get", "insert", "where", "and", "bring", "bring.unique",
                "separator=", "=", "'", "\"", "(", ")", "[", "]", "format=table", " ",
                "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}", "é", "日本", "99999999999999999999",
                "lab", "select", "*", "from", "t", "include=(a,", "extend=", "@table_name",
            ]),
            0..24,
        )) {
            let cmd: String = parts.concat();
            let _ = where_clause(&cmd);
            let _ = after_words(&cmd, 2);
            let _ = sql::SqlCommand::parse(after_words(&cmd, 1));
            let _ = blockchain::Query::parse(after_words(&cmd, 2));
        }
    }
}
