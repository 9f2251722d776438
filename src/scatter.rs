//! Queries over the network: the query node scatters a planned query to one
//! live operator per cluster that holds the table, gathers typed partial
//! results in bounded chunks, and finishes in memory; the operator side runs
//! partial queries and hands their results out chunk by chunk.
//!
//! The protocol rides on `/tarn/rpc/1` ([`Rpc`]): `Partial` starts a partial
//! query and answers with its first [`Chunk`]; `Next` pulls the following
//! ones. An operator that has nothing ready within [`HEARTBEAT`] answers an
//! empty chunk, so the query node's idle timeout only fires on an operator
//! that stopped answering, while a long scan keeps the query alive. A
//! libp2p client sends `Query` and pulls the final answer the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tarn_net::PeerId;
use tarn_query::{Plan, Prepared, Shape};
use tokio::sync::mpsc;

use crate::accumulate::{GroupKey, KeyVal, State};
use crate::error::ApiError;
use crate::mesh::Rpc;
use crate::node::Shared;
use crate::rows::Val;
use crate::storage::{PartialGroups, QueryLimits, QueryResult};

/// How long an operator holds a pull before answering an empty chunk.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// How long the query node waits for any answer from an operator before
/// moving to another member of its cluster.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A chunk is cut once its values reach about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// Open cursors per node; more partial queries at once are refused.
const MAX_CURSORS: usize = 256;
/// A cursor nobody pulled for this long is dropped (its producer stops).
const CURSOR_IDLE: Duration = Duration::from_secs(60);
/// Most columns a peer's chunk may declare.
const MAX_COLUMNS: usize = 4096;

/// One piece of a partial (or, for a client, final) result.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Chunk {
    pub cursor: u64,
    /// Column names and declared types (the first chunk of a rows result).
    pub columns: Vec<(String, Option<String>)>,
    pub rows: Vec<Vec<Val>>,
    /// Declared types of the group keys (the first chunk of a groups result).
    pub key_types: Vec<Option<String>>,
    pub groups: Vec<(Vec<KeyVal>, Vec<State>)>,
    /// The last chunk also carries the query's statistics and the nodes
    /// that did not answer (for a client query).
    pub stats: Option<Stats>,
    pub errors: Vec<NodeError>,
    pub done: bool,
}

/// What a network query did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Operators a partial query was sent to (retries included).
    pub asked: usize,
    /// Operators whose whole partial result arrived.
    pub replied: usize,
    /// Partial rows (or groups) received.
    pub rows: usize,
    pub ms: f64,
}

/// A cluster none of whose members answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeError {
    pub cluster: String,
    pub nodes: Vec<String>,
    pub message: String,
}

/// A network query's answer.
#[derive(Debug)]
pub struct Answer {
    pub result: QueryResult,
    pub stats: Stats,
    /// Clusters that did not answer (only with `subset`).
    pub errors: Vec<NodeError>,
}

/// How a network query runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub timeout: Duration,
    /// Answer with what arrived when some clusters do not answer.
    pub subset: bool,
    /// More tables whose rows join the queried one's (EdgeLake's
    /// `include=`): (database, table).
    pub include: Vec<(String, String)>,
    /// Columns put first in every row (EdgeLake's `extend=`): any of
    /// [`EXTEND_COLUMNS`].
    pub extend: Vec<String>,
}

/// What `extend=` can add: where each row came from.
pub const EXTEND_COLUMNS: [&str; 5] = ["table_name", "dbms_name", "node_name", "ip", "port"];

impl Options {
    pub fn for_node(shared: &Shared, timeout: Option<Duration>, subset: bool) -> Options {
        let limit = shared.cfg.query_timeout();
        Options {
            timeout: timeout.map_or(limit, |t| t.min(limit)),
            subset,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------
// The operator side.

/// Open cursors: partial (or client) results being pulled chunk by chunk.
#[derive(Default)]
pub struct Cursors {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Cursor>>,
}

struct Cursor {
    owner: PeerId,
    touched: Instant,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Result<Chunk, ApiError>>>>,
}

impl Cursors {
    fn open(
        &self,
        owner: PeerId,
    ) -> Result<(u64, mpsc::Sender<Result<Chunk, ApiError>>), ApiError> {
        let mut open = self.open.lock().expect("lock poisoned");
        open.retain(|_, c| c.touched.elapsed() < CURSOR_IDLE);
        if open.len() >= MAX_CURSORS {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many queries in progress on this node",
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(2);
        open.insert(
            id,
            Cursor {
                owner,
                touched: Instant::now(),
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
            },
        );
        Ok((id, tx))
    }

    /// The next chunk of cursor `id`, or an empty one after [`HEARTBEAT`].
    async fn pull(&self, id: u64, from: PeerId) -> Rpc {
        let rx = {
            let mut open = self.open.lock().expect("lock poisoned");
            match open.get_mut(&id) {
                Some(c) if c.owner == from => {
                    c.touched = Instant::now();
                    c.rx.clone()
                }
                _ => {
                    return failed(
                        "no_cursor",
                        "no such query in progress (it may have expired)",
                    );
                }
            }
        };
        let got = {
            let mut rx = rx.lock().await;
            tokio::time::timeout(HEARTBEAT, rx.recv()).await
        };
        let close = || self.open.lock().expect("lock poisoned").remove(&id);
        match got {
            Err(_) => Rpc::Chunk(Chunk {
                cursor: id,
                ..Default::default()
            }),
            Ok(Some(Ok(mut chunk))) => {
                chunk.cursor = id;
                if chunk.done {
                    close();
                }
                Rpc::Chunk(chunk)
            }
            Ok(Some(Err(e))) => {
                close();
                failed(e.code, &e.message)
            }
            Ok(None) => {
                close();
                failed("internal", "the query stopped")
            }
        }
    }
}

fn failed(code: &str, message: &str) -> Rpc {
    Rpc::Failed {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// Answers the query messages of `/tarn/rpc/1`.
pub async fn serve(shared: Arc<Shared>, from: PeerId, msg: Rpc) -> Rpc {
    match msg {
        Rpc::Partial {
            db,
            sql,
            groups,
            timeout_ms,
        } => {
            if let Err(e) = shared.require_operator() {
                return failed(e.code, &e.message);
            }
            let (id, tx) = match shared.cursors.open(from) {
                Ok(x) => x,
                Err(e) => return failed(e.code, &e.message),
            };
            let sh = shared.clone();
            tokio::task::spawn_blocking(move || {
                let timeout = Duration::from_millis(timeout_ms);
                produce(&sh, &db, &sql, groups, timeout, &tx)
            });
            shared.cursors.pull(id, from).await
        }
        Rpc::Query {
            db,
            sql,
            subset,
            timeout_ms,
        } => {
            if !shared.cfg.has(crate::Service::Query) {
                return failed("no_query", "this node does not run the query service");
            }
            let opts = Options::for_node(&shared, Some(Duration::from_millis(timeout_ms)), subset);
            let answer = run(&shared, &db, &sql, opts).await;
            let (id, tx) = match shared.cursors.open(from) {
                Ok(x) => x,
                Err(e) => return failed(e.code, &e.message),
            };
            tokio::task::spawn_blocking(move || match answer {
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
                Ok(a) => {
                    let columns = header(&a.result);
                    send_rows(&tx, columns, a.result.rows, Some(a.stats), a.errors);
                }
            });
            shared.cursors.pull(id, from).await
        }
        Rpc::Next { cursor } => shared.cursors.pull(cursor, from).await,
        _ => failed("bad_request", "not a query message"),
    }
}

/// Runs one partial query on this operator's storage (blocking): group
/// states for a groups partial, rows with their header otherwise.
fn run_partial(
    shared: &Shared,
    db: &str,
    sql: &str,
    groups: bool,
    limits: QueryLimits,
) -> Result<Part, ApiError> {
    let select = tarn_query::Select::parse(sql)
        .map_err(|e| ApiError::bad_request("invalid_sql", e.to_string()))?;
    if groups {
        return shared
            .storage
            .partial_groups(db, select, limits)
            .map(Part::Groups);
    }
    let r = shared.storage.query(db, select, limits)?;
    Ok(Part::Rows {
        columns: header(&r),
        rows: r.rows,
    })
}

/// Column names with their declared types, as chunks carry them.
fn header(r: &QueryResult) -> Vec<(String, Option<String>)> {
    r.columns
        .iter()
        .zip(&r.types)
        .map(|(c, t)| (c.clone(), t.map(|t| t.sql().to_owned())))
        .collect()
}

/// A result rebuilt from a header and rows (declared types read back).
pub(crate) fn result_of(
    columns: Vec<(String, Option<String>)>,
    rows: Vec<Vec<Val>>,
) -> QueryResult {
    QueryResult {
        types: columns
            .iter()
            .map(|(_, t)| t.as_deref().and_then(crate::rows::ColType::from_sql))
            .collect(),
        columns: columns.into_iter().map(|(n, _)| n).collect(),
        rows,
    }
}

/// Runs a partial query and sends its chunks (blocking; stops when the
/// cursor is dropped).
fn produce(
    shared: &Shared,
    db: &str,
    sql: &str,
    groups: bool,
    timeout: Duration,
    tx: &mpsc::Sender<Result<Chunk, ApiError>>,
) {
    let limits = QueryLimits {
        max_rows: shared.cfg.max_result_rows,
        timeout: timeout.min(shared.cfg.query_timeout()),
    };
    match run_partial(shared, db, sql, groups, limits) {
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
        }
        Ok(Part::Groups(p)) => send_groups(tx, p),
        Ok(Part::Rows { columns, rows }) => send_rows(tx, columns, rows, None, Vec::new()),
    }
}

fn val_size(v: &Val) -> usize {
    match v {
        Val::Text(s) => s.len() + 4,
        _ => 9,
    }
}

fn send_rows(
    tx: &mpsc::Sender<Result<Chunk, ApiError>>,
    columns: Vec<(String, Option<String>)>,
    rows: Vec<Vec<Val>>,
    stats: Option<Stats>,
    errors: Vec<NodeError>,
) {
    let mut chunk = Chunk {
        columns,
        ..Default::default()
    };
    let mut size = 0;
    for row in rows {
        size += row.iter().map(val_size).sum::<usize>() + 2;
        chunk.rows.push(row);
        if size >= CHUNK_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            size = 0;
        }
    }
    chunk.stats = stats;
    chunk.errors = errors;
    chunk.done = true;
    let _ = tx.blocking_send(Ok(chunk));
}

fn send_groups(tx: &mpsc::Sender<Result<Chunk, ApiError>>, p: PartialGroups) {
    let mut chunk = Chunk {
        key_types: p.key_types,
        ..Default::default()
    };
    let mut size = 0;
    for (key, states) in p.groups {
        size += key.0.len() * 12
            + states
                .iter()
                .map(|s| 32 + s.distinct_len() * 16)
                .sum::<usize>();
        chunk.groups.push((key.0, states));
        if size >= CHUNK_BYTES {
            if tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
            size = 0;
        }
    }
    chunk.done = true;
    let _ = tx.blocking_send(Ok(chunk));
}

// ---------------------------------------------------------------------------
// The query node side.

/// The operators that can answer for one cluster, best first.
#[derive(Debug, Clone)]
struct Target {
    cluster: String,
    candidates: Vec<PeerId>,
}

/// What one operator sent.
enum Part {
    Rows {
        columns: Vec<(String, Option<String>)>,
        rows: Vec<Vec<Val>>,
    },
    Groups(PartialGroups),
}

/// Why one operator's partial result did not arrive.
enum FetchError {
    /// The same on every member (bad SQL, too large): the query fails.
    Fatal(ApiError),
    /// This member failed; another may answer.
    Retry(String),
}

/// Runs `sql` over every operator holding its table.
pub async fn run(
    shared: &Arc<Shared>,
    db: &str,
    sql: &str,
    opts: Options,
) -> Result<Answer, ApiError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let plan_err = |e: tarn_query::PlanError| match e {
        tarn_query::PlanError::Unsupported(_) => {
            ApiError::bad_request("unsupported_query", e.to_string())
        }
        other => ApiError::bad_request("invalid_sql", other.to_string()),
    };
    let prepared = Prepared::new(sql, crate::storage::now_micros()).map_err(plan_err)?;
    let mut stats = Stats::default();
    let mut errors = Vec::new();
    // Bookkeeping databases and queries of no table are this node's own.
    let reserved = crate::storage::RESERVED_DBS.contains(&db.to_ascii_lowercase().as_str());
    let mut casts = Vec::new();
    let planned = match prepared.probe() {
        _ if reserved => None,
        Err(tarn_query::PlanError::NoTable) => None,
        Err(e) => return Err(plan_err(e)),
        Ok(None) => {
            let mut select = prepared.finish(None).map_err(plan_err)?;
            casts = select.take_casts();
            match Plan::new(select) {
                Err(tarn_query::PlanError::NoTable) => None,
                other => Some(other.map_err(plan_err)?),
            }
        }
        Ok(Some(probe)) => {
            // period(): its end over every operator first.
            let select = tarn_query::Select::parse(&probe)
                .map_err(|e| ApiError::bad_request("invalid_sql", e.to_string()))?;
            let plan = Plan::new(select).map_err(plan_err)?;
            let probe_opts = Options {
                include: Vec::new(),
                extend: Vec::new(),
                ..opts.clone()
            };
            let a = execute(
                shared,
                db,
                &plan,
                &probe_opts,
                deadline,
                &mut stats,
                &mut errors,
            )
            .await?;
            let end = match a.rows.first().and_then(|r| r.first()) {
                Some(Val::Text(t)) => Some(t.clone()),
                _ => None,
            };
            let mut select = prepared.finish(end.as_deref()).map_err(plan_err)?;
            casts = select.take_casts();
            Some(Plan::new(select).map_err(plan_err)?)
        }
    };
    let Some(plan) = planned else {
        let (sh, db, sql) = (shared.clone(), db.to_owned(), sql.to_owned());
        let result =
            tokio::task::spawn_blocking(move || sh.local_query(&db, &sql, Some(opts.timeout)))
                .await
                .map_err(|e| ApiError::internal("a local query", e))??;
        return Ok(Answer {
            stats: Stats {
                asked: 1,
                replied: 1,
                rows: result.rows.len(),
                ms: started.elapsed().as_secs_f64() * 1000.0,
            },
            result,
            errors: Vec::new(),
        });
    };

    let mut result = execute(shared, db, &plan, &opts, deadline, &mut stats, &mut errors).await?;
    crate::format::apply_casts(&mut result, &casts);
    stats.ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(Answer {
        result,
        stats,
        errors,
    })
}

async fn execute(
    shared: &Arc<Shared>,
    db: &str,
    plan: &Plan,
    opts: &Options,
    deadline: Instant,
    stats: &mut Stats,
    errors: &mut Vec<NodeError>,
) -> Result<QueryResult, ApiError> {
    let db = db.to_ascii_lowercase();
    let mut plan = plan.clone();
    if !opts.extend.is_empty() {
        plan.lead_with(&opts.extend)
            .map_err(|e| ApiError::bad_request("unsupported_query", e.to_string()))?;
    }
    let mut sources = vec![(db.clone(), plan.table.clone())];
    for (d, t) in &opts.include {
        let src = (d.to_ascii_lowercase(), t.to_ascii_lowercase());
        if !sources.contains(&src) {
            sources.push(src);
        }
    }
    let mut targets = Vec::new();
    for (d, t) in &sources {
        for target in route(shared, d, t)? {
            targets.push((d.clone(), t.clone(), target));
        }
    }
    // One cluster holds every row: its operator answers the whole query,
    // and the query node only passes the answer on.
    let whole = targets.len() == 1 && opts.extend.is_empty();
    // The aggregate's plan travels with each fetch, to check peers' states.
    let (sql, agg) = match &plan.shape {
        _ if whole => (plan.sql.clone(), None),
        Shape::Rows { partial_sql, .. } => (partial_sql.clone(), None),
        Shape::Groups(g) => (plan.sql.clone(), Some(Arc::new(g.clone()))),
    };
    let names = if opts.extend.is_empty() {
        HashMap::new()
    } else {
        node_names(shared)
    };
    let budget = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (d, table, t) in targets {
        let sql = if table == plan.table {
            sql.clone()
        } else {
            Plan::retarget(&sql, &table)
                .map_err(|e| ApiError::bad_request("invalid_sql", e.to_string()))?
        };
        let (shared, budget) = (shared.clone(), budget.clone());
        let extend = opts.extend.clone();
        let names = names.clone();
        let agg = agg.clone();
        set.spawn(async move {
            let mut tried = Vec::new();
            for peer in t.candidates.clone() {
                if Instant::now() >= deadline {
                    tried.push((peer, "the query's time ran out".to_owned()));
                    break;
                }
                match fetch(&shared, peer, &d, &sql, agg.as_deref(), deadline, &budget).await {
                    Ok(mut part) => {
                        if let Part::Rows { columns, rows } = &mut part
                            && !extend.is_empty()
                        {
                            let (name, rest) = names.get(&peer).cloned().unwrap_or_default();
                            let (ip, port) = rest.rsplit_once(':').unwrap_or((&rest, ""));
                            let vals: Vec<Val> = extend
                                .iter()
                                .map(|e| match e.as_str() {
                                    "table_name" => Val::Text(table.clone()),
                                    "dbms_name" => Val::Text(d.clone()),
                                    "node_name" => Val::Text(name.clone()),
                                    "ip" => Val::Text(ip.to_owned()),
                                    _ => port.parse().map_or(Val::Null, Val::Int),
                                })
                                .collect();
                            let mut cols: Vec<(String, Option<String>)> =
                                extend.iter().map(|e| (e.clone(), None)).collect();
                            cols.append(columns);
                            *columns = cols;
                            for r in rows.iter_mut() {
                                r.splice(0..0, vals.iter().cloned());
                            }
                        }
                        return (t, tried, Ok(Some((peer, part))));
                    }
                    Err(FetchError::Fatal(e)) => return (t, tried, Err(e)),
                    Err(FetchError::Retry(msg)) => {
                        tracing::debug!("{peer} failed a partial query: {msg}");
                        tried.push((peer, msg));
                    }
                }
            }
            (t, tried, Ok(None))
        });
    }
    let mut parts = Vec::new();
    let mut fatal = None;
    while let Some(joined) = set.join_next().await {
        let (t, tried, r) = joined.map_err(|e| ApiError::internal("a partial query", e))?;
        stats.asked += tried.len();
        match r {
            Err(e) => {
                fatal.get_or_insert(e);
            }
            Ok(Some((_, part))) => {
                stats.asked += 1;
                stats.replied += 1;
                parts.push(part);
            }
            Ok(None) => errors.push(NodeError {
                message: if t.candidates.is_empty() {
                    "no operator of this cluster is known".into()
                } else {
                    tried
                        .iter()
                        .map(|(p, m)| format!("{p}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                nodes: t.candidates.iter().map(|p| p.to_string()).collect(),
                cluster: t.cluster,
            }),
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    if !errors.is_empty() && !opts.subset {
        let names: Vec<String> = errors
            .iter()
            .map(|e| format!("cluster {} ({})", e.cluster, e.message))
            .collect();
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "nodes_unavailable",
            format!(
                "no operator answered for: {}; add subset=true to answer from the others",
                names.join(", ")
            ),
        ));
    }
    stats.rows += budget.load(Ordering::Relaxed);
    let limits = QueryLimits {
        max_rows: shared.cfg.max_result_rows,
        timeout: deadline.saturating_duration_since(Instant::now()),
    };
    if whole {
        return Ok(match parts.pop() {
            Some(Part::Rows { columns, rows }) => result_of(columns, rows),
            // Only with subset=true and the one cluster silent.
            _ => QueryResult::default(),
        });
    }
    tokio::task::spawn_blocking(move || finish(&plan, parts, limits))
        .await
        .map_err(|e| ApiError::internal("the final step", e))?
}

/// Merges the parts and runs the final step.
fn finish(plan: &Plan, parts: Vec<Part>, limits: QueryLimits) -> Result<QueryResult, ApiError> {
    match &plan.shape {
        Shape::Groups(agg) => {
            let mut all = PartialGroups::default();
            for p in parts {
                if let Part::Groups(g) = p {
                    if all.key_types.is_empty() {
                        all.key_types = g.key_types;
                    }
                    crate::accumulate::merge(&mut all.groups, g.groups);
                }
            }
            crate::storage::finish_groups(agg, all, limits)
        }
        Shape::Rows { final_sql, .. } => {
            let mut columns: Vec<(String, Option<String>)> = Vec::new();
            let mut loaded = Vec::new();
            for p in parts {
                if let Part::Rows { columns: c, rows } = p {
                    for (name, ty) in &c {
                        if !columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                            columns.push((name.clone(), ty.clone()));
                        }
                    }
                    loaded.push((c.into_iter().map(|(n, _)| n).collect(), rows));
                }
            }
            if columns.is_empty() {
                // No part arrived (subset=true with every cluster silent).
                return Ok(QueryResult::default());
            }
            crate::storage::finish_rows(&plan.table, &columns, &loaded, final_sql, limits)
        }
    }
}

/// Every node's name and REST address, by PeerId (from its own policies).
/// Every node's name and REST address, by PeerId (from its own policies).
fn node_names(shared: &Shared) -> HashMap<PeerId, (String, String)> {
    let mut out: HashMap<PeerId, (String, String)> = shared.mesh.with_view(|view| {
        operators(view)
            .map(|(peer, body)| {
                let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                (peer, (text("name"), text("rest")))
            })
            .collect()
    });
    out.insert(
        shared.mesh.peer_id(),
        (shared.cfg.name.clone(), shared.rest_addr.to_string()),
    );
    out
}

/// `operator` policies with the PeerId they describe, only those signed by
/// that peer's own key.
pub(crate) fn operators(
    view: &tarn_ledger::View,
) -> impl Iterator<Item = (PeerId, &serde_json::Value)> {
    view.of_kind("operator").filter_map(|p| {
        let body = &p.policy["operator"];
        let peer = body["peer_id"].as_str()?.parse::<PeerId>().ok()?;
        (crate::mesh::peer_of(&p.author) == Some(peer)).then_some((peer, body))
    })
}

/// Table → the clusters holding it (from `table` policies) → their
/// operators (from `operator` policies signed by their own key), live ones
/// first, this node first of all.
fn route(shared: &Shared, db: &str, table: &str) -> Result<Vec<Target>, ApiError> {
    let me = shared.mesh.peer_id();
    let (mut clusters, mut members) = shared.mesh.with_view(|view| {
        let mut clusters = BTreeSet::new();
        for p in view.of_kind("table") {
            let t = &p.policy["table"];
            if t["dbms"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case(db))
                && t["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(table))
                && let Some(c) = t["cluster"].as_str()
            {
                clusters.insert(c.to_owned());
            }
        }
        let mut members: HashMap<String, Vec<PeerId>> = HashMap::new();
        for (peer, body) in operators(view) {
            let cluster = body["cluster"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("node-{peer}"));
            let m = members.entry(cluster).or_default();
            if !m.contains(&peer) && peer != me {
                m.push(peer);
            }
        }
        (clusters, members)
    });
    // A table this operator holds counts even before its policy is out.
    let mine =
        shared.cfg.has(crate::Service::Operator) && shared.storage.schema(db, table).is_some();
    if mine {
        clusters.insert(crate::mesh::cluster_of(shared));
    }
    if clusters.is_empty() {
        return Err(ApiError::not_found(
            "unknown_table",
            format!("no operator holds table {db}.{table} (no table policy names it)"),
        ));
    }
    if mine {
        members
            .entry(crate::mesh::cluster_of(shared))
            .or_default()
            .push(me);
    }
    let spin = crate::storage::now_micros() as usize;
    Ok(clusters
        .into_iter()
        .map(|c| {
            let mut all = members.remove(&c).unwrap_or_default();
            if all.is_empty()
                && let Some(p) = c.strip_prefix("node-").and_then(|p| p.parse().ok())
            {
                all.push(p);
            }
            // Spread load over a cluster's live members; dead ones last.
            let n = all.len().max(1);
            all.rotate_left(spin % n);
            let mut candidates: Vec<PeerId> = Vec::with_capacity(all.len());
            if all.contains(&me) && shared.cfg.has(crate::Service::Operator) {
                candidates.push(me);
            }
            candidates.extend(all.iter().filter(|p| **p != me && shared.mesh.alive(p)));
            candidates.extend(all.iter().filter(|p| **p != me && !shared.mesh.alive(p)));
            Target {
                cluster: c,
                candidates,
            }
        })
        .collect())
}

fn fatal_code(code: &str) -> bool {
    matches!(
        code,
        "invalid_sql" | "sql_error" | "result_too_large" | "unsupported_query" | "timeout"
    )
}

/// One operator's whole partial result.
async fn fetch(
    shared: &Arc<Shared>,
    peer: PeerId,
    db: &str,
    sql: &str,
    agg: Option<&tarn_query::GroupedAggregate>,
    deadline: Instant,
    budget: &AtomicUsize,
) -> Result<Part, FetchError> {
    let groups = agg.is_some();
    let max = shared.cfg.max_result_rows;
    // Rows this attempt counted against the query's budget; given back if
    // the attempt fails and another member is asked instead.
    struct Held<'a>(&'a AtomicUsize, AtomicUsize);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0
                .fetch_sub(self.1.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    let held = Held(budget, AtomicUsize::new(0));
    let over = |n: usize| {
        held.1.fetch_add(n, Ordering::Relaxed);
        if budget.fetch_add(n, Ordering::Relaxed) + n > max {
            Err(FetchError::Fatal(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "result_too_large",
                format!(
                    "the operators' partial results exceed {max} rows (the node's limit); add a LIMIT or aggregate"
                ),
            )))
        } else {
            Ok(())
        }
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if peer == shared.mesh.peer_id() {
        let sh = shared.clone();
        let (db, sql) = (db.to_owned(), sql.to_owned());
        let limits = QueryLimits {
            max_rows: max,
            timeout: remaining,
        };
        let r = tokio::task::spawn_blocking(move || run_partial(&sh, &db, &sql, groups, limits))
            .await
            .map_err(|e| FetchError::Retry(e.to_string()))?;
        return match r {
            Ok(p) => {
                over(match &p {
                    Part::Rows { rows, .. } => rows.len(),
                    Part::Groups(g) => g.groups.len(),
                })?;
                held.1.store(0, Ordering::Relaxed);
                Ok(p)
            }
            Err(e) if fatal_code(e.code) => Err(FetchError::Fatal(e)),
            Err(e) => Err(FetchError::Retry(e.message)),
        };
    }
    let mut msg = Rpc::Partial {
        db: db.to_owned(),
        sql: sql.to_owned(),
        groups,
        timeout_ms: remaining.as_millis() as u64,
    };
    let mut columns: Vec<(String, Option<String>)> = Vec::new();
    let mut rows: Vec<Vec<Val>> = Vec::new();
    let mut part = PartialGroups::default();
    let mut first = true;
    loop {
        let wait = IDLE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let reply = match tokio::time::timeout(wait, shared.mesh.rpc(peer, &msg)).await {
            Err(_) => return Err(FetchError::Retry("no answer in time".into())),
            Ok(Err(e)) => return Err(FetchError::Retry(e)),
            Ok(Ok(r)) => r,
        };
        let chunk = match reply {
            Rpc::Chunk(c) => c,
            Rpc::Failed { code, message } => {
                return Err(if fatal_code(&code) {
                    let code: &'static str = match code.as_str() {
                        "invalid_sql" => "invalid_sql",
                        "result_too_large" => "result_too_large",
                        "unsupported_query" => "unsupported_query",
                        "timeout" => "timeout",
                        _ => "sql_error",
                    };
                    FetchError::Fatal(ApiError::bad_request(code, format!("{peer}: {message}")))
                } else {
                    FetchError::Retry(format!("{code}: {message}"))
                });
            }
            Rpc::Error(e) => return Err(FetchError::Retry(e)),
            _ => return Err(FetchError::Retry("an answer of the wrong kind".into())),
        };
        if first && !chunk.columns.is_empty() {
            if chunk.columns.len() > MAX_COLUMNS {
                return Err(FetchError::Retry("too many columns".into()));
            }
            columns = chunk.columns;
            first = false;
        }
        if !chunk.key_types.is_empty() && part.key_types.is_empty() {
            part.key_types = chunk.key_types;
        }
        // Distinct values count too: a peer's sets are memory held here.
        let distinct: usize = chunk
            .groups
            .iter()
            .flat_map(|(_, states)| states.iter().map(State::distinct_len))
            .sum();
        over(chunk.rows.len() + chunk.groups.len() + distinct)?;
        if chunk.rows.iter().any(|r| r.len() != columns.len()) {
            return Err(FetchError::Retry("a row of the wrong width".into()));
        }
        rows.extend(chunk.rows);
        if !chunk.groups.is_empty() {
            let Some(agg) = agg else {
                return Err(FetchError::Retry("groups for a rows query".into()));
            };
            for (key, mut states) in chunk.groups {
                if key.len() != agg.keys
                    || states.len() != agg.aggs.len()
                    || !states.iter().zip(&agg.aggs).all(|(s, a)| s.fits(a.kind))
                {
                    return Err(FetchError::Retry(
                        "a group that does not fit the plan".into(),
                    ));
                }
                states.iter_mut().for_each(State::restore);
                let key = GroupKey(key);
                match part.groups.get_mut(&key) {
                    Some(cur) => cur.iter_mut().zip(&states).for_each(|(x, y)| x.merge(y)),
                    None => {
                        part.groups.insert(key, states);
                    }
                }
            }
        }
        if chunk.done {
            break;
        }
        msg = Rpc::Next {
            cursor: chunk.cursor,
        };
    }
    held.1.store(0, Ordering::Relaxed);
    if groups {
        Ok(Part::Groups(part))
    } else {
        Ok(Part::Rows { columns, rows })
    }
}
