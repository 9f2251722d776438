//! `sql <dbms> [format=...] [and stat=false] [and include=(...)] [and
//! extend=(...)] <select>`: through the node's one query pipeline, local
//! or over the network (`destination: network`, and always with
//! `include=` or `extend=`).

use std::time::Instant;

use super::{AppState, Reply, code, unquote};
use crate::api::format::{self, Format, Stats};
use crate::error::Coded as _;
use crate::exec::{EXTEND_COLUMNS, QueryRequest, Scope};

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

pub(super) async fn run(s: &AppState, rest: &str, destination: Option<&str>) -> Reply {
    let started = Instant::now();
    let cmd = match SqlCommand::parse(rest) {
        Ok(c) => c,
        Err(e) => return Reply::err(code::COMMAND, e),
    };
    let mut req = QueryRequest::new(&cmd.dbms, &cmd.select, Scope::Local);
    if let Some(list) = &cmd.include {
        for item in option_list(list) {
            req.include.push(match item.split_once('.') {
                Some((d, t)) => (d.to_owned(), t.to_owned()),
                None => (cmd.dbms.clone(), item.to_owned()),
            });
        }
    }
    if let Some(list) = &cmd.extend {
        for item in option_list(list) {
            let name = item.trim_start_matches(['@', '+']).to_ascii_lowercase();
            if !EXTEND_COLUMNS.contains(&name.as_str()) {
                return Reply::err(
                    code::COMMAND,
                    format!(
                        "extend={item} is not known; tarn adds {}",
                        EXTEND_COLUMNS.join(", ")
                    ),
                );
            }
            req.extend.push(name);
        }
    }
    // include= and extend= need the network path even for this node's data.
    if destination.is_some_and(|d| d.trim().eq_ignore_ascii_case("network"))
        || !req.include.is_empty()
        || !req.extend.is_empty()
    {
        req.scope = Scope::Network;
    }
    let network = req.scope == Scope::Network;
    let a = match s.exec.run(req).await {
        Ok(a) => a,
        Err(e) if e.code() == crate::error::Code::UnknownTable => {
            let table = tarn_query::Select::parse(&cmd.select)
                .ok()
                .and_then(|q| q.tables().into_iter().next())
                .unwrap_or_default();
            return Reply::Error {
                code: code::NO_METADATA,
                text: "No metadata info".into(),
                local: Some(format!(
                    "Table '{table}' in DBMS '{}' not defined (using 'sqlite')",
                    cmd.dbms
                )),
            };
        }
        Err(e) => return Reply::from_error(&e),
    };
    let stats = cmd.stat.then(|| Stats {
        count: a.result.rows.len(),
        elapsed_secs: started.elapsed().as_secs(),
        // EdgeLake counts the operators that answered a network query, and
        // says 0 for a local one.
        nodes: if network { a.stats.replied } else { 0 },
    });
    let text = format::edgelake(&a.result, cmd.format, stats);
    match cmd.format {
        Format::Table => Reply::Text(text),
        _ => Reply::SqlJson(text),
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
}
