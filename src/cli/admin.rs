//! `tarn status`, `tarn nodes`, `tarn policies`, `tarn policy add`,
//! `tarn cluster status|verify`: a node's REST answers, printed.

use std::io::{Read, Write};

use anyhow::{Context as _, bail};

use crate::client::Client;

/// `tarn status`.
pub fn status(node: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let v = Client::new(node).get("/v1/status", &[])?.ok_json()?;
    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
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
