//! Queries: one pipeline for every query a node answers, local or over
//! the network, from REST, EdgeLake's `sql` or a libp2p client.
//!
//! prepare (`now()` once, `period()` taken out) → probe (the period's end,
//! on the same operators) → finish the statement, take EdgeLake's casts →
//! route (this node's store, or the clusters that hold the table) →
//! scatter (one live operator per cluster, failing over) → merge → final
//! step → casts.
//!
//! - `route`: which clusters and operators answer for a table
//! - `scatter`: the failover state of a network query, without I/O
//! - `network`: the scatter driven over the mesh; `fetch`: one operator's part
//! - `finish`: merging parts and the final step (in-memory SQLite)
//! - `local`: a statement on this node's store
//! - `serve`: the operator's side ([`Server`]: partial queries in chunks)
//! - [`casts`]: EdgeLake's projection casts and value text
//!
//! Uses `cluster` (membership), `mesh` (requests to operators), `proto`,
//! `store`; used by `api` and by the mesh through [`Server`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarn_query::{Plan, PlanError, Prepared, Select};

pub mod casts;
mod error;
mod fetch;
mod finish;
mod local;
mod network;
mod route;
mod scatter;
mod serve;

pub use error::ExecError;
pub(crate) use finish::result_of;
pub use serve::Server;

use crate::clock::SharedClock;
use crate::cluster::membership::Me;
use crate::mesh::Mesh;
pub use crate::proto::query::{NodeError, Stats};
use crate::store::{QueryLimits, QueryResult, RESERVED_DBS, Storage, Val};

/// What bounds every query of a node.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rows (or groups) a query may hold, partial results included.
    pub max_result_rows: usize,
    /// Most bytes of values a query may hold, partial results included.
    pub max_result_bytes: usize,
    /// Longest a query may run.
    pub query_timeout: Duration,
}

impl Limits {
    /// The time a query gets: what it asks for, at most the node's limit.
    pub fn timeout(&self, asked: Option<Duration>) -> Duration {
        asked.map_or(self.query_timeout, |t| t.min(self.query_timeout))
    }

    /// The limits of one statement that must end by `deadline`.
    pub fn until(&self, deadline: Instant) -> QueryLimits {
        QueryLimits {
            max_rows: self.max_result_rows,
            max_bytes: self.max_result_bytes,
            timeout: deadline.saturating_duration_since(Instant::now()),
        }
    }
}

/// Where a query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This node's store only.
    Local,
    /// Every operator that holds the table.
    Network,
}

/// What `extend=` can add: where each row came from.
pub const EXTEND_COLUMNS: [&str; 5] = ["table_name", "dbms_name", "node_name", "ip", "port"];

/// One query.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub db: String,
    pub sql: String,
    pub scope: Scope,
    /// Shorter than the node's limit, if given.
    pub timeout: Option<Duration>,
    /// Answer with what arrived when some clusters do not answer.
    pub subset: bool,
    /// More tables whose rows join the queried one's (EdgeLake's
    /// `include=`): (database, table).
    pub include: Vec<(String, String)>,
    /// Columns put first in every row (EdgeLake's `extend=`): any of
    /// [`EXTEND_COLUMNS`].
    pub extend: Vec<String>,
}

impl QueryRequest {
    pub fn new(db: &str, sql: &str, scope: Scope) -> QueryRequest {
        QueryRequest {
            db: db.to_owned(),
            sql: sql.to_owned(),
            scope,
            timeout: None,
            subset: false,
            include: Vec::new(),
            extend: Vec::new(),
        }
    }
}

/// A query's answer.
#[derive(Debug)]
pub struct Answer {
    pub result: QueryResult,
    pub stats: Stats,
    /// Clusters that did not answer (only with `subset`).
    pub errors: Vec<NodeError>,
}

/// What one operator sent.
#[derive(Debug)]
pub(crate) enum Part {
    Rows {
        columns: Vec<(String, Option<String>)>,
        rows: Vec<Vec<Val>>,
    },
    Groups(crate::store::PartialGroups),
}

/// The query service of a node.
pub struct Exec {
    me: Me,
    /// This node's store, when it runs the operator service.
    store: Option<Arc<Storage>>,
    mesh: Arc<Mesh>,
    limits: Limits,
    clock: SharedClock,
}

/// One query on its way through the pipeline.
struct Run {
    db: String,
    network: bool,
    deadline: Instant,
    stats: Stats,
    errors: Vec<NodeError>,
}

impl Exec {
    pub fn new(
        me: Me,
        store: Option<Arc<Storage>>,
        mesh: Arc<Mesh>,
        limits: Limits,
        clock: SharedClock,
    ) -> Exec {
        Exec {
            me,
            store,
            mesh,
            limits,
            clock,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs one query through the pipeline.
    pub async fn run(&self, req: QueryRequest) -> Result<Answer, ExecError> {
        let started = Instant::now();
        if req.scope == Scope::Local && self.store.is_none() {
            return Err(ExecError::NoOperator);
        }
        let reserved = RESERVED_DBS.contains(&req.db.to_ascii_lowercase().as_str());
        let mut run = Run {
            db: req.db.clone(),
            // Bookkeeping databases are this node's own.
            network: req.scope == Scope::Network && !reserved,
            deadline: started + self.limits.timeout(req.timeout),
            stats: Stats::default(),
            errors: Vec::new(),
        };
        let prepared = Prepared::new(&req.sql, self.clock.now_micros())?;
        let end = self.probe(&mut run, &req, &prepared).await?;
        let mut select = prepared.finish(end.as_deref())?;
        let casts = select.take_casts();
        let mut result = self.execute(&mut run, select, &req).await?;
        casts::apply_casts(&mut result, &casts);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let stats = if run.network {
            Stats { ms, ..run.stats }
        } else {
            Stats {
                asked: 1,
                replied: 1,
                rows: result.rows.len(),
                ms,
            }
        };
        Ok(Answer {
            result,
            stats,
            errors: run.errors,
        })
    }

    /// The end of a `period()` window: the greatest time at or before its
    /// date, found where the query itself will run.
    async fn probe(
        &self,
        run: &mut Run,
        req: &QueryRequest,
        prepared: &Prepared,
    ) -> Result<Option<String>, ExecError> {
        let probe = match prepared.probe() {
            Ok(Some(probe)) => probe,
            Ok(None) => return Ok(None),
            // A query of no table is this node's own.
            Err(PlanError::NoTable) => {
                run.network = false;
                return Ok(None);
            }
            Err(e) if run.network => return Err(e.into()),
            // Locally, an unplannable probe leaves an empty window.
            Err(_) => return Ok(None),
        };
        let select = Select::parse(&probe)?;
        let plain = QueryRequest {
            include: Vec::new(),
            extend: Vec::new(),
            ..req.clone()
        };
        let a = self.execute(run, select, &plain).await?;
        Ok(match a.rows.first().and_then(|r| r.first()) {
            Some(Val::Text(t)) => Some(t.clone()),
            _ => None,
        })
    }

    /// Runs a finished statement where the query runs.
    async fn execute(
        &self,
        run: &mut Run,
        select: Select,
        req: &QueryRequest,
    ) -> Result<QueryResult, ExecError> {
        if run.network {
            match Plan::new(select.clone()) {
                Ok(plan) => return self.network(run, &plan, req).await,
                Err(PlanError::NoTable) => run.network = false,
                Err(e) => return Err(e.into()),
            }
        }
        let store = self.store.clone().ok_or(ExecError::NoOperator)?;
        let limits = self.limits.until(run.deadline);
        let db = run.db.clone();
        tokio::task::spawn_blocking(move || {
            let select = tarn_query::rewrite_increments(select)?;
            local::run(&store, &db, select, limits)
        })
        .await
        .map_err(|e| ExecError::internal("a local query", e))?
    }
}
