//! What `GET /v1/clusters` (and `tarn cluster status|verify`) shows: every
//! cluster, its members, their liveness, batches, rows and lag (batches a
//! member lacks that another member holds); with `verify` also rows per
//! table and every difference between members.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::driver::inventory;
use crate::cluster::membership::{self, Member};
use crate::mesh::Mesh;
use crate::store::{Holding, Storage};

/// How long a member may take to answer (a member behind a cut link not
/// noticed yet must not stall the whole report).
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// A member's inventory and rows per table.
type Inventory = (Vec<Holding>, Vec<(String, String, i64)>);

/// The whole report.
pub async fn report(mesh: &Arc<Mesh>, store: Option<&Arc<Storage>>, verify: bool) -> Value {
    let mut out = Vec::new();
    let mut all_ok = true;
    let clusters = mesh.with_view(membership::clusters);
    for (name, members) in clusters {
        let mut answers = Vec::new();
        for m in &members {
            let alive = mesh.alive(&m.peer);
            let inv = if alive {
                Some(inventory_of(mesh, store, m, verify).await)
            } else {
                None
            };
            answers.push((m, alive, inv));
        }
        let (c, ok) = cluster_entry(&name, &answers, verify);
        all_ok &= ok;
        out.push(c);
    }
    if verify {
        json!({"consistent": all_ok, "clusters": out})
    } else {
        json!({"clusters": out})
    }
}

/// One member's answer: this node's own from its store.
async fn inventory_of(
    mesh: &Arc<Mesh>,
    store: Option<&Arc<Storage>>,
    m: &Member,
    tables: bool,
) -> Result<Inventory, String> {
    match store {
        Some(store) if m.peer == mesh.peer_id() => {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let t = if tables {
                    store.table_counts().map_err(|e| e.to_string())?
                } else {
                    Vec::new()
                };
                Ok((store.inventory(), t))
            })
            .await
            .map_err(|e| e.to_string())?
        }
        _ => inventory(mesh, m.peer, tables, ASK_TIMEOUT).await,
    }
}

type Answer<'a> = (&'a Member, bool, Option<Result<Inventory, String>>);

/// One cluster's entry, and whether its members agree.
fn cluster_entry(name: &str, answers: &[Answer<'_>], verify: bool) -> (Value, bool) {
    // The union of what the members that answered hold, per origin.
    let mut most: HashMap<String, (u64, i64)> = HashMap::new();
    for (_, _, inv) in answers {
        if let Some(Ok((holdings, _))) = inv {
            for h in holdings {
                let e = most.entry(h.origin.clone()).or_default();
                *e = (e.0.max(h.batches), e.1.max(h.rows));
            }
        }
    }
    let reference = answers.iter().find_map(|(m, _, inv)| match inv {
        Some(Ok(x)) => Some((m.name.as_str(), x)),
        _ => None,
    });
    let mut differences = Vec::new();
    let mut listed = Vec::new();
    for (m, alive, inv) in answers {
        let mut v = json!({
            "name": m.name,
            "peer_id": m.peer.to_string(),
            "rest": m.rest,
            "alive": alive,
        });
        match inv {
            Some(Ok((holdings, tables))) => {
                member_figures(&mut v, m, holdings, &most);
                if verify {
                    if let Some((ref_name, (ref_h, ref_t))) = reference {
                        let theirs = (m.name.as_str(), holdings.as_slice(), tables.as_slice());
                        diff((ref_name, ref_h, ref_t), theirs, &mut differences);
                    }
                    v["tables"] = tables
                        .iter()
                        .map(|(d, t, n)| json!({"dbms": d, "table": t, "rows": n}))
                        .collect();
                }
            }
            Some(Err(e)) => v["error"] = e.clone().into(),
            None => {}
        }
        listed.push(v);
    }
    let unreachable: Vec<&str> = answers
        .iter()
        .filter(|(_, _, inv)| !matches!(inv, Some(Ok(_))))
        .map(|(m, _, _)| m.name.as_str())
        .collect();
    let mut c = json!({"cluster": name, "members": listed});
    let ok = differences.is_empty() && unreachable.is_empty();
    if verify {
        c["consistent"] = ok.into();
        c["differences"] = differences.into();
        c["not_compared"] = unreachable.into();
    }
    (c, ok)
}

/// A member's batches, rows, lag and production.
fn member_figures(
    v: &mut Value,
    m: &Member,
    holdings: &[Holding],
    most: &HashMap<String, (u64, i64)>,
) {
    let mine: HashMap<&str, &Holding> = holdings.iter().map(|h| (h.origin.as_str(), h)).collect();
    // Saturating: a peer's numbers are its word.
    let (mut lag, mut lag_rows) = (0u64, 0i64);
    for (o, (n, rows)) in most {
        let (b, r) = mine.get(o.as_str()).map_or((0, 0), |h| (h.batches, h.rows));
        lag = lag.saturating_add(n.saturating_sub(b));
        lag_rows = lag_rows.saturating_add(rows.saturating_sub(r).max(0));
    }
    v["batches"] = holdings
        .iter()
        .fold(0u64, |a, h| a.saturating_add(h.batches))
        .into();
    v["rows"] = holdings
        .iter()
        .fold(0i64, |a, h| a.saturating_add(h.rows))
        .into();
    v["lag_batches"] = lag.into();
    v["lag_rows"] = lag_rows.into();
    v["produced"] = holdings
        .iter()
        .find(|h| h.origin == m.peer.to_string())
        .map_or(0, |h| h.batches)
        .into();
}

type Side<'a> = (&'a str, &'a [Holding], &'a [(String, String, i64)]);

/// Every way member `b`'s inventory and row counts differ from `a`'s.
fn diff(a: Side<'_>, b: Side<'_>, out: &mut Vec<String>) {
    let (a_name, a_h, a_tables) = a;
    let (b_name, b_h, b_tables) = b;
    let bh: HashMap<&str, &Holding> = b_h.iter().map(|h| (h.origin.as_str(), h)).collect();
    let ah: HashMap<&str, &Holding> = a_h.iter().map(|h| (h.origin.as_str(), h)).collect();
    for h in a_h {
        match bh.get(h.origin.as_str()) {
            Some(x) if x.same_set(h) => {}
            Some(x) => out.push(format!(
                "batches of {}: {a_name} holds {} (up to id {}), {b_name} holds {} (up to id {})",
                h.name, h.batches, h.max_id, x.batches, x.max_id
            )),
            None => out.push(format!(
                "batches of {}: {a_name} holds {}, {b_name} none",
                h.name, h.batches
            )),
        }
    }
    for h in b_h {
        if !ah.contains_key(h.origin.as_str()) {
            out.push(format!(
                "batches of {}: {b_name} holds {}, {a_name} none",
                h.name, h.batches
            ));
        }
    }
    let bt: HashMap<(&str, &str), i64> = b_tables
        .iter()
        .map(|(d, t, n)| ((d.as_str(), t.as_str()), *n))
        .collect();
    for (d, t, n) in a_tables {
        let other = bt.get(&(d.as_str(), t.as_str())).copied().unwrap_or(0);
        if other != *n {
            out.push(format!("{d}.{t}: {a_name} has {n} rows, {b_name} {other}"));
        }
    }
    for (d, t, n) in b_tables {
        if !a_tables.iter().any(|(x, y, _)| x == d && y == t) {
            out.push(format!("{d}.{t}: {b_name} has {n} rows, {a_name} none"));
        }
    }
}
