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
    /// EdgeLake's `timezone=`: the zone timestamps are shown in (UTC when
    /// absent).
    pub timezone: Option<jiff::tz::TimeZone>,
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
            timezone: None,
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
                "timezone" => cmd.timezone = zone(unquote(value))?,
                // Options tarn accepts and ignores because they only tune EdgeLake's own internals.
                "max_time" | "dest" | "file" | "table" | "test" | "source" | "title" => {}
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
        cmd.select = super::dialect::normalize(&select);
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
    let mut a = match s.exec.run(req).await {
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
    if let Some(tz) = &cmd.timezone {
        in_zone(&mut a.result, tz);
    }
    let text = format::edgelake(&a.result, cmd.format, stats);
    match cmd.format {
        Format::Table => Reply::Text(text),
        _ => Reply::SqlJson(text),
    }
}

/// The zone `timezone=` names: `utc`, `local` (this node's), EdgeLake's
/// `pt`/`mt`/`ct`/`et`, or any IANA name (`Europe/Oslo`). `None` for UTC,
/// where timestamps are stored and shown already.
fn zone(name: &str) -> Result<Option<jiff::tz::TimeZone>, String> {
    let iana = match name.to_ascii_lowercase().as_str() {
        "utc" | "gmt" | "z" => return Ok(None),
        "local" => return Ok(Some(jiff::tz::TimeZone::system())),
        "pt" => "America/Los_Angeles",
        "mt" => "America/Denver",
        "ct" => "America/Chicago",
        "et" => "America/New_York",
        _ => name,
    };
    jiff::tz::TimeZone::get(iana)
        .map(Some)
        .map_err(|_| format!("timezone={name} is not a known time zone (utc, local, pt, mt, ct, et or an IANA name such as Europe/Oslo)"))
}

/// Shows every timestamp of `r` (a timestamp column, or a value in the
/// stored layout where the type is not known, as `min(timestamp)`) in `tz`.
fn in_zone(r: &mut crate::store::QueryResult, tz: &jiff::tz::TimeZone) {
    use crate::store::{ColType, Val};
    for row in &mut r.rows {
        for (v, ty) in row.iter_mut().zip(&r.types) {
            let Val::Text(s) = v else { continue };
            if !matches!(ty, Some(ColType::Timestamp) | None)
                || !tarn_query::time::is_storage_form(s)
            {
                continue;
            }
            let Some(us) = tarn_query::time::parse(s, false) else {
                continue;
            };
            let Ok(at) = jiff::Timestamp::from_microsecond(us) else {
                continue;
            };
            let shifted = us + i64::from(tz.to_offset(at).seconds()) * 1_000_000;
            *s = tarn_query::time::format_storage(shifted);
        }
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
    fn timezones_shift_timestamps_and_nothing_else() {
        use crate::store::{ColType, QueryResult, Val};
        assert_eq!(zone("UTC").unwrap(), None);
        assert!(zone("Nowhere/Place").unwrap_err().contains("Nowhere/Place"));
        let et = zone("et").unwrap().unwrap();
        assert_eq!(Some(et.clone()), zone("America/New_York").unwrap());
        let text = |s: &str| Val::Text(s.into());
        let mut r = QueryResult {
            columns: vec!["t".into(), "min(t)".into(), "name".into()],
            types: vec![Some(ColType::Timestamp), None, Some(ColType::Text)],
            rows: vec![
                vec![
                    text("2024-07-01 12:00:00.250000"),
                    text("2024-01-01 00:30:00.000000"),
                    text("2024-07-01 12:00:00.000000"),
                ],
                vec![Val::Null, text("soon"), Val::Int(1)],
            ],
        };
        in_zone(&mut r, &et);
        assert_eq!(
            r.rows[0],
            [
                text("2024-07-01 08:00:00.250000"),
                text("2023-12-31 19:30:00.000000"),
                // A text column keeps its value, whatever it looks like.
                text("2024-07-01 12:00:00.000000"),
            ]
        );
        assert_eq!(r.rows[1], [Val::Null, text("soon"), Val::Int(1)]);
    }

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
        // Read as EdgeLake reads it: the column titled by its text.
        assert_eq!(
            c.select,
            "SELECT count(*) AS \"count(*)\" FROM t WHERE a = 'x and y'"
        );
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
