//! A planned query over the network: the tables it reads (the queried one
//! and `include=`'s), their clusters, the scatter driven by fetches over
//! the mesh, `extend=`'s columns, and the final step.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tarn_net::PeerId;
use tarn_query::{GroupedAggregate, Plan, Shape};

use super::fetch::{Ask, Budget};
use super::scatter::{Fetch, Outcome, Scatter, Target};
use super::{Exec, ExecError, NodeError, Part, QueryRequest, Run};
use crate::cluster::membership;
use crate::store::{KeyVal, QueryResult, Val};

/// What every fetch of one query shares.
struct Job {
    /// The statement each operator runs, per (database, table) read.
    sql: HashMap<(String, String), String>,
    agg: Option<Arc<GroupedAggregate>>,
    deadline: Instant,
    budget: Budget,
}

impl Exec {
    /// Runs `plan` over every operator that holds its tables.
    pub(super) async fn network(
        &self,
        run: &mut Run,
        plan: &Plan,
        req: &QueryRequest,
    ) -> Result<QueryResult, ExecError> {
        let db = run.db.to_ascii_lowercase();
        let mut plan = plan.clone();
        if !req.extend.is_empty() {
            plan.lead_with(&req.extend)
                .map_err(|e| ExecError::Unsupported(e.to_string()))?;
        }
        let mut sources = vec![(db.clone(), plan.table.clone())];
        for (d, t) in &req.include {
            let src = (d.to_ascii_lowercase(), t.to_ascii_lowercase());
            if !sources.contains(&src) {
                sources.push(src);
            }
        }
        let mut targets: Vec<((String, String), Target)> = Vec::new();
        let mut ignored = Vec::new();
        for (d, t) in &sources {
            let (found, left_out) = self.route(d, t)?;
            ignored.extend(left_out);
            for target in found {
                targets.push(((d.clone(), t.clone()), target));
            }
        }
        // One cluster holds every row: its operator answers the whole
        // query, and the query node only passes the answer on.
        let whole = targets.len() == 1 && req.extend.is_empty();
        let (sql, agg) = match &plan.shape {
            _ if whole => (plan.sql.clone(), None),
            Shape::Rows { partial_sql, .. } => (partial_sql.clone(), None),
            Shape::Groups(g) => (plan.sql.clone(), Some(Arc::new(g.clone()))),
        };
        let mut per_source = HashMap::new();
        for src in &sources {
            let s = if src.1 == plan.table {
                sql.clone()
            } else {
                Plan::retarget(&sql, &src.1).map_err(|e| ExecError::InvalidSql(e.to_string()))?
            };
            per_source.insert(src.clone(), s);
        }
        let job = Job {
            sql: per_source,
            agg,
            deadline: run.deadline,
            budget: Budget::default(),
        };
        let outcome = self.gather(&job, &targets).await?;
        run.stats.asked += outcome.asked;
        run.stats.replied += outcome.replied;
        run.stats.rows += job.budget.rows.load(Ordering::Relaxed);
        let mut parts = Vec::with_capacity(outcome.parts.len());
        let names = self.names(&req.extend);
        for (i, (peer, mut part)) in outcome.parts {
            let (d, t) = &targets[i].0;
            extend_part(&mut part, &req.extend, t, d, names.get(&peer));
            parts.push(part);
        }
        self.unavailable(run, outcome.errors, req.subset)?;
        run.errors.extend(ignored);
        let limits = self.limits.until(run.deadline);
        if whole {
            return Ok(match parts.pop() {
                Some(Part::Rows { columns, rows }) => super::finish::result_of(columns, rows),
                // Only with subset=true and the one cluster silent.
                _ => QueryResult::default(),
            });
        }
        tokio::task::spawn_blocking(move || super::finish::finish(&plan, parts, limits))
            .await
            .map_err(|e| ExecError::internal("the final step", e))?
    }

    /// Drives the scatter: a fetch per cluster at once, the next member
    /// of a cluster when one fails, until every cluster answered or gave up
    /// (or one refused the query, which ends the others' fetches).
    async fn gather(
        &self,
        job: &Job,
        targets: &[((String, String), Target)],
    ) -> Result<Outcome<(PeerId, Part)>, ExecError> {
        let mut scatter = Scatter::new(
            targets.iter().map(|(_, t)| t.clone()).collect(),
            job.deadline,
        );
        let start = |f: Fetch| {
            let (db, table) = &targets[f.target].0;
            let ask = Ask {
                peer: f.peer,
                db,
                sql: &job.sql[&(db.clone(), table.clone())],
                agg: job.agg.as_deref(),
                deadline: job.deadline,
            };
            async move { (f, self.fetch(ask, &job.budget).await) }
        };
        let mut flying = FuturesUnordered::new();
        for f in scatter.start(Instant::now()) {
            flying.push(start(f));
        }
        while let Some((f, r)) = flying.next().await {
            let r = r.map(|part| (f.peer, part));
            if let Some(next) = scatter.on_result(f.target, f.peer, r, Instant::now()) {
                flying.push(start(next));
            }
            if scatter.finished() {
                break;
            }
        }
        scatter.outcome()
    }

    /// Clusters that did not answer: an error, or with `subset` a list in
    /// the answer.
    fn unavailable(
        &self,
        run: &mut Run,
        errors: Vec<NodeError>,
        subset: bool,
    ) -> Result<(), ExecError> {
        if !errors.is_empty() && !subset {
            let names: Vec<String> = errors
                .iter()
                .map(|e| format!("cluster {} ({})", e.cluster, e.message))
                .collect();
            return Err(ExecError::NodesUnavailable(names.join(", ")));
        }
        run.errors.extend(errors);
        Ok(())
    }

    /// Every operator's name and `ip:port`, by PeerId (from its own
    /// policies), when `extend=` needs them: EdgeLake's `@ip` and `@port`
    /// are where peers reach the node (its TCP service; here libp2p's),
    /// the REST address where a policy has none.
    fn names(&self, extend: &[String]) -> HashMap<PeerId, (String, String)> {
        if extend.is_empty() {
            return HashMap::new();
        }
        let mut out: HashMap<PeerId, (String, String)> = self.mesh.with_view(|view| {
            membership::operators(view)
                .map(|(peer, body)| {
                    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                    let at = match (body["ip"].as_str(), body["port"].as_u64()) {
                        (Some(ip), Some(port)) if !ip.is_empty() => format!("{ip}:{port}"),
                        _ => text("rest"),
                    };
                    (peer, (text("name"), at))
                })
                .collect()
        });
        let at = self
            .mesh
            .peer_endpoint()
            .map_or_else(|| self.me.rest.clone(), |(ip, port)| format!("{ip}:{port}"));
        out.insert(self.me.peer, (self.me.name.clone(), at));
        out
    }
}

/// Puts `extend=`'s columns (where the rows came from) first in a rows
/// part, or first in every group key of an aggregate's part.
fn extend_part(
    part: &mut Part,
    extend: &[String],
    table: &str,
    db: &str,
    node: Option<&(String, String)>,
) {
    if extend.is_empty() {
        return;
    }
    let (name, rest) = node.cloned().unwrap_or_default();
    let (ip, port) = rest.rsplit_once(':').unwrap_or((&rest, ""));
    let vals: Vec<Val> = extend
        .iter()
        .map(|e| match e.as_str() {
            "table_name" => Val::Text(table.to_owned()),
            "dbms_name" => Val::Text(db.to_owned()),
            "node_name" => Val::Text(name.clone()),
            "ip" => Val::Text(ip.to_owned()),
            _ => port.parse().map_or(Val::Null, Val::Int),
        })
        .collect();
    let (columns, rows) = match part {
        Part::Rows { columns, rows } => (columns, rows),
        Part::Groups(g) => {
            let lead: Vec<KeyVal> = vals.iter().map(KeyVal::from_val).collect();
            g.key_types.splice(0..0, extend.iter().map(|_| None));
            g.groups = std::mem::take(&mut g.groups)
                .into_iter()
                .map(|(mut k, v)| {
                    k.0.splice(0..0, lead.iter().cloned());
                    (k, v)
                })
                .collect();
            return;
        }
    };
    let mut cols: Vec<(String, Option<String>)> =
        extend.iter().map(|e| (e.clone(), None)).collect();
    cols.append(columns);
    *columns = cols;
    for r in rows.iter_mut() {
        r.splice(0..0, vals.iter().cloned());
    }
}
