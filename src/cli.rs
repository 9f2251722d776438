//! The client commands of the `tarn` binary: `query`, `ingest`, `status`.
//! Each prints its result to stdout and returns an error for the binary to
//! print as one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::client::Client;

/// Output formats of `tarn query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Table,
    Json,
    Csv,
}

/// `tarn query`: runs a SELECT and prints the rows.
pub fn query(
    node: &str,
    peer: Option<&str>,
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
            rt.block_on(crate::p2p_client::query(
                addr,
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
    let empty = Vec::new();
    let rows = v["rows"].as_array().unwrap_or(&empty);
    let cell = |x: &serde_json::Value| match x {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match format {
        OutFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        OutFormat::Csv => {
            writeln!(
                out,
                "{}",
                columns
                    .iter()
                    .map(|c| csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for r in rows {
                let cells: Vec<String> = r
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .map(|x| csv_field(&cell(x)))
                    .collect();
                writeln!(out, "{}", cells.join(","))?;
            }
        }
        OutFormat::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.as_array().unwrap_or(&empty).iter().map(cell).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
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
            writeln!(out, "{}", line(&columns))?;
            writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-+-")
            )?;
            for r in &cells {
                writeln!(out, "{}", line(r))?;
            }
            let n = rows.len();
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        }
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `tarn status`.
pub fn status(node: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let v = Client::new(node).get("/v1/status", &[])?.ok_json()?;
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

/// `tarn ingest`: sends a file (a JSON array, or one object per line) in
/// batches of `batch_rows`, with a progress bar on large inputs. Each batch
/// is idempotent on the node, so an interrupted ingest can simply be re-run.
///
/// With several nodes (members of one cluster), a batch whose node cannot be
/// reached goes to the next one; `consistency` is `local` or `cluster`.
pub fn ingest(
    nodes: &[String],
    db: &str,
    table: &str,
    file: Option<&str>,
    batch_rows: usize,
    consistency: &str,
) -> anyhow::Result<()> {
    if batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    if nodes.is_empty() {
        bail!("give at least one --node");
    }
    if consistency != "local" && consistency != "cluster" {
        bail!("--consistency must be local or cluster, not {consistency:?}");
    }
    let clients: Vec<Client> = nodes.iter().map(|n| Client::new(n)).collect();
    let mut current = 0;
    let path = format!("/v1/data/{db}/{table}?consistency={consistency}");
    let mut unconfirmed = 0usize;
    let (reader, total): (Box<dyn Read>, Option<u64>) = match file {
        None | Some("-") => (Box::new(std::io::stdin()), None),
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let bar = match total {
        Some(n) if n > 4 << 20 => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("the template is valid"),
            );
            Some(b)
        }
        _ => None,
    };
    let started = Instant::now();
    let (mut rows, mut batches, mut dups) = (0usize, 0usize, 0usize);
    let mut send = |body: &[u8], n: usize, bytes: usize| -> anyhow::Result<()> {
        // A node that cannot be reached: the next one takes the batch (the
        // batch's hash makes a re-send after a lost answer harmless).
        let mut tried = 0;
        let answer = loop {
            let c = &clients[current];
            match c.post(&path, &[("content-type", "application/json")], body) {
                Ok(a) => break a,
                Err(e) if tried + 1 < clients.len() => {
                    tried += 1;
                    let next = (current + 1) % clients.len();
                    eprintln!(
                        "tarn: {} failed ({e:#}); moving to {}",
                        c.base(),
                        clients[next].base()
                    );
                    current = next;
                }
                Err(e) => return Err(e),
            }
        };
        let v = answer
            .ok_json()
            .with_context(|| format!("batch {} refused", batches + 1))?;
        if consistency == "cluster"
            && v["replicas"]["confirmed"]
                .as_array()
                .is_none_or(|c| c.is_empty())
        {
            unconfirmed += 1;
        }
        batches += 1;
        if v["duplicate"].as_bool() == Some(true) {
            dups += 1;
        } else {
            rows += n;
        }
        if let Some(b) = &bar {
            b.inc(bytes as u64);
            b.set_message(format!("{rows} rows"));
        }
        Ok(())
    };
    let first = loop {
        let buf = reader.fill_buf()?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let c = buf[i];
                reader.consume(i);
                break Some(c);
            }
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        None => bail!("the input holds no rows"),
        Some(b'[') => {
            let all: Vec<serde_json::Value> = serde_json::from_reader(reader)
                .context("the input is not a JSON array of objects")?;
            for chunk in all.chunks(batch_rows) {
                let body = serde_json::to_vec(chunk)?;
                send(&body, chunk.len(), body.len())?;
            }
        }
        Some(_) => {
            let mut body = Vec::with_capacity(1 << 20);
            let mut n = 0;
            let mut line = Vec::new();
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line)?;
                if read > 0 && !line.iter().all(u8::is_ascii_whitespace) {
                    body.extend_from_slice(&line);
                    if !line.ends_with(b"\n") {
                        body.push(b'\n');
                    }
                    n += 1;
                }
                if (read == 0 && n > 0) || n >= batch_rows {
                    send(&body, n, body.len())?;
                    body.clear();
                    n = 0;
                }
                if read == 0 {
                    break;
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    if unconfirmed > 0 {
        eprintln!(
            "tarn: {unconfirmed} batches were stored on one node only (no other member confirmed them)"
        );
    }
    eprintln!(
        "ingested {rows} rows into {db}.{table} in {batches} batches{} ({:.0} rows/s)",
        if dups > 0 {
            format!(" ({dups} already stored)")
        } else {
            String::new()
        },
        rows as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `tarn cluster status` / `tarn cluster verify`: members, liveness,
/// batches and lag; `verify` fails (non-zero exit) on any difference.
pub fn cluster(node: &str, verify: bool, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let path = if verify {
        "/v1/clusters?verify=true"
    } else {
        "/v1/clusters"
    };
    let v = Client::new(node).get(path, &[])?.ok_json()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for c in v["clusters"].as_array().into_iter().flatten() {
            let name = c["cluster"].as_str().unwrap_or("");
            match c["consistent"].as_bool() {
                Some(true) => writeln!(out, "cluster {name}: consistent")?,
                Some(false) => writeln!(out, "cluster {name}: DIFFERENCES")?,
                None => writeln!(out, "cluster {name}")?,
            }
            writeln!(
                out,
                "  {:<20} {:<6} {:>9} {:>12} {:>9} {:>11} {:>9}  peer_id",
                "member", "alive", "batches", "rows", "produced", "lag_batches", "lag_rows"
            )?;
            for m in c["members"].as_array().into_iter().flatten() {
                let num = |k: &str| m[k].as_i64().map_or("-".to_owned(), |n| n.to_string());
                writeln!(
                    out,
                    "  {:<20} {:<6} {:>9} {:>12} {:>9} {:>11} {:>9}  {}{}",
                    m["name"].as_str().unwrap_or(""),
                    if m["alive"] == true { "yes" } else { "no" },
                    num("batches"),
                    num("rows"),
                    num("produced"),
                    num("lag_batches"),
                    num("lag_rows"),
                    m["peer_id"].as_str().unwrap_or(""),
                    m["error"]
                        .as_str()
                        .map(|e| format!("  ({e})"))
                        .unwrap_or_default(),
                )?;
            }
            for d in c["differences"].as_array().into_iter().flatten() {
                writeln!(out, "  difference: {}", d.as_str().unwrap_or(""))?;
            }
            for d in c["not_compared"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "  not compared (unreachable): {}",
                    d.as_str().unwrap_or("")
                )?;
            }
        }
    }
    if verify && v["consistent"] != true {
        bail!("the members of a cluster differ (see above)");
    }
    Ok(())
}

/// `tarn nodes`.
pub fn nodes(node: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let v = Client::new(node).get("/v1/nodes", &[])?.ok_json()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let list = v.as_array().context("the answer is not a list")?;
    writeln!(
        out,
        "{:<20} {:<52} {:<6} {:<12} {:<22} services",
        "name", "peer_id", "alive", "cluster", "rest"
    )?;
    for n in list {
        let s = |k: &str| n[k].as_str().unwrap_or("").to_owned();
        let services: Vec<String> = n["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        writeln!(
            out,
            "{:<20} {:<52} {:<6} {:<12} {:<22} {}{}",
            s("name"),
            s("peer_id"),
            if n["alive"] == true { "yes" } else { "no" },
            s("cluster"),
            s("rest"),
            services.join(","),
            if n["name_conflict"] == true {
                "  (name claimed twice)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

/// `tarn policies [TYPE]`.
pub fn policies(node: &str, kind: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
    let path = match kind {
        Some(k) => format!("/v1/policies?type={k}"),
        None => "/v1/policies".to_owned(),
    };
    let v = Client::new(node).get(&path, &[])?.ok_json()?;
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    Ok(())
}

/// `tarn policy add FILE`.
pub fn policy_add(node: &str, file: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let body = if file == "-" {
        let mut s = Vec::new();
        std::io::stdin().read_to_end(&mut s)?;
        s
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))?
    };
    let v = Client::new(node)
        .post(
            "/v1/policies",
            &[("content-type", "application/json")],
            &body,
        )?
        .ok_json()?;
    writeln!(out, "{}", v["id"].as_str().unwrap_or(""))?;
    Ok(())
}
