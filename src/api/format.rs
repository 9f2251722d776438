//! Rendering query results: the native JSON form and EdgeLake's output
//! formats (`json`, `json:list`, `table`), byte for byte as EdgeLake prints them.

use std::fmt::Write as _;

use crate::exec::casts::{py_float, text_value};
use crate::store::{ColType, QueryResult, Val};

/// A value in the native API: timestamps in ISO 8601 (`...T...Z`).
pub fn native_value(v: &Val, ty: Option<ColType>) -> serde_json::Value {
    match v {
        Val::Null => serde_json::Value::Null,
        Val::Int(i) => (*i).into(),
        Val::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Val::Bool(b) => (*b).into(),
        Val::Text(s) => {
            let iso = (ty == Some(ColType::Timestamp) || ty.is_none())
                .then(|| tarn_query::time::storage_to_iso(s))
                .flatten();
            serde_json::Value::String(iso.unwrap_or_else(|| s.clone()))
        }
    }
}

/// A result's rows in the native API's JSON form.
pub fn native_rows(r: &QueryResult) -> Vec<serde_json::Value> {
    r.rows
        .iter()
        .map(|row| {
            serde_json::Value::Array(
                row.iter()
                    .zip(&r.types)
                    .map(|(v, t)| native_value(v, *t))
                    .collect(),
            )
        })
        .collect()
}

/// A value as EdgeLake writes it in JSON output: NULL is `""`.
fn edgelake_json_value(out: &mut String, v: &Val) {
    match v {
        Val::Null => out.push_str("\"\""),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Float(f) if f.is_finite() => out.push_str(&py_float(*f)),
        Val::Float(_) => out.push_str("\"\""),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Text(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
    }
}

/// EdgeLake's statistics block values.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub count: usize,
    pub elapsed_secs: u64,
    pub nodes: usize,
}

fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// EdgeLake's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonList,
    Table,
}

fn row_objects(out: &mut String, r: &QueryResult, names: &[String]) {
    out.push('[');
    for (i, row) in r.rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::String(names[j].clone()).to_string());
            out.push(':');
            edgelake_json_value(out, v);
        }
        out.push('}');
    }
    out.push(']');
}

/// Renders a result as EdgeLake's `sql` command does.
pub fn edgelake(r: &QueryResult, format: Format, stats: Option<Stats>) -> String {
    let names: Vec<String> = r.columns.iter().map(|c| c.to_ascii_lowercase()).collect();
    if r.rows.is_empty() && stats.is_none() && format != Format::JsonList {
        return "{\"reply\" : \"Empty data set\"}".into();
    }
    let mut out = String::new();
    match format {
        Format::JsonList => row_objects(&mut out, r, &names),
        Format::Json => {
            out.push_str("{\"Query\":");
            row_objects(&mut out, r, &names);
            if let Some(s) = stats {
                let _ = write!(
                    out,
                    ",\n\"Statistics\":[{{\"Count\": {},\"Time\":\"{}\",\"Nodes\": {}}}]",
                    s.count,
                    hms(s.elapsed_secs),
                    s.nodes
                );
            }
            out.push('}');
        }
        Format::Table => {
            for block in r.rows.chunks(25) {
                table_block(&mut out, &names, block);
            }
            if r.rows.is_empty() {
                table_block(&mut out, &names, &[]);
            }
            if let Some(s) = stats {
                let _ = write!(
                    out,
                    "\n{{\"Statistics\":[{{\"Count\": {},\n                \"Time\":\"{}\",\n                \"Nodes\": {}}}]}}",
                    s.count,
                    hms(s.elapsed_secs),
                    s.nodes
                );
            }
        }
    }
    out
}

/// Numbers, and short strings of digits, `.`, `,` and one leading `-`, are
/// right-aligned in EdgeLake's tables.
fn right_aligned(v: &Val, text: &str) -> bool {
    match v {
        Val::Int(_) | Val::Float(_) => true,
        Val::Text(_) => {
            let body = text.strip_prefix('-').unwrap_or(text);
            text.chars().count() < 20
                && !body.is_empty()
                && body
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        }
        _ => false,
    }
}

fn table_block(out: &mut String, names: &[String], rows: &[Vec<Val>]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(text_value).collect())
        .collect();
    let widths: Vec<usize> = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            cells
                .iter()
                .map(|r| r[j].chars().count())
                .chain(std::iter::once(n.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let last = names.len().saturating_sub(1);
    out.push('\n');
    for (j, n) in names.iter().enumerate() {
        if j == last {
            out.push_str(n);
        } else {
            let _ = write!(out, "{n:<w$}", w = widths[j] + 1);
        }
    }
    out.push('\n');
    for w in &widths {
        out.push_str(&"-".repeat(*w));
        out.push(' ');
    }
    for (row, vals) in cells.iter().zip(rows) {
        out.push('\n');
        for (j, (c, v)) in row.iter().zip(vals).enumerate() {
            if right_aligned(v, c) {
                let _ = write!(out, "{c:>w$} ", w = widths[j]);
            } else if j == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}", w = widths[j] + 1);
            }
        }
    }
    out.push('\n');
}

/// EdgeLake's layout of its `get` tables (`utils_print.output_nested_lists`):
/// each title left-aligned to its column's width and one space, a line of
/// dashes with `|` after each column, then each row's cells, numbers (and
/// short number-like text) right-aligned, each followed by `|`. A column is
/// as wide as its title or widest cell (at most 100; a longer cell runs on
/// in lines of 100 under its column). Lines end in `\r\n`, as EdgeLake's do,
/// and begin with `prefix` (`get processes` indents by four spaces).
pub fn nested_lists(titles: &[&str], rows: &[Vec<String>], prefix: &str) -> String {
    const MAX: usize = 100;
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = titles.iter().map(|t| len(t)).collect();
    for r in rows {
        for (j, c) in r.iter().enumerate() {
            let l = len(c).min(MAX);
            match widths.get_mut(j) {
                Some(w) => *w = (*w).max(l),
                None => widths.push(l),
            }
        }
    }
    let mut out = format!("\r\n{prefix}");
    for (t, w) in titles.iter().zip(&widths) {
        let _ = write!(out, "{t:<w$}", w = w + 1);
    }
    let _ = write!(out, "\r\n{prefix}");
    for w in widths.iter().take(titles.len()) {
        out.push_str(&"-".repeat(*w));
        out.push('|');
    }
    for r in rows {
        let _ = write!(out, "\r\n{prefix}");
        // The text that starts a continuation line: the columns before.
        let mut before = format!("\r\n{prefix}");
        for (c, w) in r.iter().zip(&widths) {
            let w = *w;
            let text = c.replace('\r', "").replace(['\n', '\t'], " ");
            if right_shift(&text) {
                let _ = write!(out, "{text:>w$}|");
            } else if len(&text) <= MAX {
                let _ = write!(out, "{text:<w$}|");
            } else {
                let chars: Vec<char> = text.chars().collect();
                for (k, part) in chars.chunks(MAX).enumerate() {
                    if k > 0 {
                        out.push_str(&before);
                    }
                    let part: String = part.iter().collect();
                    let _ = write!(out, "{part:<MAX$}|");
                }
            }
            before.push_str(&" ".repeat(w));
            before.push('|');
        }
    }
    out.push_str("\r\n");
    out
}

/// EdgeLake's `is_right_shift` for text: shorter than 20 characters, only
/// digits, `.` and `,`, a `-` only before the first digit (the empty text
/// counts too).
fn right_shift(text: &str) -> bool {
    if len_lt(text, 20) {
        let mut number = false;
        for c in text.chars() {
            match c {
                '0'..='9' => number = true,
                '-' if number => return false,
                '-' => number = true,
                '.' | ',' => {}
                _ => return false,
            }
        }
        true
    } else {
        false
    }
}

fn len_lt(text: &str, n: usize) -> bool {
    text.chars().count() < n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["Device".into(), "count(*)".into(), "note".into()],
            types: vec![None; 3],
            rows: vec![
                vec![Val::Text("a".into()), Val::Int(12), Val::Null],
                vec![
                    Val::Text("bb".into()),
                    Val::Float(1.5),
                    Val::Text("x".into()),
                ],
            ],
        }
    }

    #[test]
    fn json_forms() {
        let r = result();
        assert_eq!(
            edgelake(&r, Format::Json, None),
            r#"{"Query":[{"device":"a","count(*)":12,"note":""},{"device":"bb","count(*)":1.5,"note":"x"}]}"#
        );
        let stats = Stats {
            count: 2,
            elapsed_secs: 3725,
            nodes: 1,
        };
        assert!(
            edgelake(&r, Format::Json, Some(stats)).ends_with(
                "],\n\"Statistics\":[{\"Count\": 2,\"Time\":\"01:02:05\",\"Nodes\": 1}]}"
            )
        );
        assert!(edgelake(&r, Format::JsonList, None).starts_with("[{\"device\":\"a\""));
        let empty = QueryResult { rows: vec![], ..r };
        assert_eq!(
            edgelake(&empty, Format::Json, None),
            "{\"reply\" : \"Empty data set\"}"
        );
        assert_eq!(
            edgelake(&empty, Format::Table, None),
            "{\"reply\" : \"Empty data set\"}"
        );
    }

    #[test]
    fn table_layout() {
        let out = edgelake(&result(), Format::Table, None);
        assert_eq!(
            out,
            "\ndevice count(*) note\n------ -------- ---- \na            12 null\nbb          1.5 x\n"
        );
    }

    #[test]
    fn timestamps_become_iso_in_native_output() {
        let v = Val::Text("2024-01-01 00:00:00.000000".into());
        assert_eq!(native_value(&v, None), "2024-01-01T00:00:00.000000Z");
        assert_eq!(
            native_value(&v, Some(ColType::Text)),
            "2024-01-01 00:00:00.000000"
        );
    }

    #[test]
    fn get_tables_layout() {
        // An AnyLog node's `get operator` error summary, as its docs show it
        // (AnyLog-co/documentation, deployment examples).
        let rows: Vec<Vec<String>> = [
            "Duplicate JSON Files",
            "JSON Files Errors",
            "SQL Files Errors",
        ]
        .iter()
        .map(|e| {
            vec![
                e.to_string(),
                "0".into(),
                "".into(),
                "".into(),
                "0".into(),
                "".into(),
            ]
        })
        .collect();
        let out = nested_lists(
            &[
                "Error Type",
                "Counter",
                "DBMS Name",
                "Table Name",
                "Last Error",
                "Last Error Text",
            ],
            &rows,
            "",
        );
        assert_eq!(
            out,
            "\r\nError Type           Counter DBMS Name Table Name Last Error Last Error Text \r\n\
             --------------------|-------|---------|----------|----------|---------------|\r\n\
             Duplicate JSON Files|      0|         |          |         0|               |\r\n\
             JSON Files Errors   |      0|         |          |         0|               |\r\n\
             SQL Files Errors    |      0|         |          |         0|               |\r\n"
        );
        // EdgeLake's `get processes` (AnyLog's deployment docs show it so).
        let out = nested_lists(
            &["Process", "Status", "Details"],
            &[
                vec![
                    "TCP".into(),
                    "Running".into(),
                    "Listening on: 45.79.74.39:32048, Threads Pool: 6".into(),
                ],
                vec!["Operator".into(), "Not declared".into(), "".into()],
                vec![
                    "Blockchain Sync".into(),
                    "Running".into(),
                    "Sync every 30 seconds".into(),
                ],
            ],
            "    ",
        );
        assert_eq!(
            out,
            "\r\n    Process         Status       Details                                          \
             \r\n    ---------------|------------|------------------------------------------------|\
             \r\n    TCP            |Running     |Listening on: 45.79.74.39:32048, Threads Pool: 6|\
             \r\n    Operator       |Not declared|                                                |\
             \r\n    Blockchain Sync|Running     |Sync every 30 seconds                           |\r\n"
        );
        // A cell over 100 characters runs on under its column.
        let long = "x".repeat(150);
        let out = nested_lists(&["a", "b"], &[vec!["1".into(), long]], "");
        assert_eq!(
            out,
            format!(
                "\r\na b{pad}\r\n-|{dash}|\r\n1|{x100}|\r\n |{x50}{s50}|\r\n",
                pad = " ".repeat(100),
                dash = "-".repeat(100),
                x100 = "x".repeat(100),
                x50 = "x".repeat(50),
                s50 = " ".repeat(50)
            )
        );
    }
}
