//! `tarn query`: a SELECT over REST (or libp2p), printed as a table, JSON or CSV.

use std::io::Write;

use anyhow::Context as _;

use crate::client::Client;

/// Output formats of `tarn query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Table,
    Json,
    Csv,
}

/// `tarn query`: runs a SELECT and prints the rows, through the REST API of
/// `node` or, with `peer`, over libp2p (as the key in `key`, if given).
pub fn query(
    node: &str,
    peer: Option<&str>,
    key: Option<&std::path::Path>,
    db: &str,
    sql: &str,
    format: OutFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let v = match peer {
        None => Client::new(node).query(db, sql)?.ok_json()?,
        Some(addr) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let identity = match key {
                Some(k) => Some(crate::mesh::keypair_of(&crate::mesh::read_key_file(k)?)?),
                None => None,
            };
            rt.block_on(crate::p2p_client::query(
                addr,
                identity,
                db,
                sql,
                false,
                std::time::Duration::from_secs(60),
            ))?
        }
    };
    let columns: Vec<String> = v["columns"]
        .as_array()
        .context("the answer has no columns")?
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_owned())
        .collect();
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().map(cell).collect())
        .collect();
    match format {
        OutFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        OutFormat::Csv => {
            let line = |vals: &[String]| {
                vals.iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            writeln!(out, "{}", line(&columns))?;
            for r in &rows {
                writeln!(out, "{}", line(r))?;
            }
        }
        OutFormat::Table => print_table(&columns, &rows, out)?,
    }
    Ok(())
}

/// A value as the table and CSV show it (null as nothing).
fn cell(x: &serde_json::Value) -> String {
    match x {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest value, ` | ` between them.
fn print_table(
    columns: &[String],
    rows: &[Vec<String>],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |s| s.chars().count()))
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(columns))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for r in rows {
        writeln!(out, "{}", line(r))?;
    }
    let n = rows.len();
    writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
