//! One operator's whole partial result: from this node's own store, or
//! pulled chunk by chunk over the mesh, every chunk checked against the
//! plan and counted against the query's row budget before it is kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tarn_net::PeerId;
use tarn_query::GroupedAggregate;

use super::scatter::Failure;
use super::{Exec, ExecError, Part};
use crate::error::Code;
use crate::mesh::CallError;
use crate::proto::query::{Chunk, Request};
use crate::store::{GroupKey, KeyVal, PartialGroups, State, Val};

/// How long the query node waits for any answer from an operator before
/// moving to another member of its cluster.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most columns a peer's chunk may declare.
const MAX_COLUMNS: usize = 4096;

/// Errors an operator reports that every member would report too.
fn fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidSql
            | Code::SqlError
            | Code::ResultTooLarge
            | Code::UnsupportedQuery
            | Code::Timeout
    )
}

/// What the partial results of one query hold on the query node, in rows
/// (or groups, or distinct values) and in bytes, across its operators.
#[derive(Debug, Default)]
pub(super) struct Budget {
    pub rows: AtomicUsize,
    pub bytes: AtomicUsize,
}

/// What an attempt counted against the query's budget; given back if the
/// attempt fails and another member is asked instead.
struct Held<'a> {
    budget: &'a Budget,
    rows: usize,
    bytes: usize,
    max_rows: usize,
    max_bytes: usize,
}

impl Held<'_> {
    fn take(&mut self, (rows, bytes): (usize, usize)) -> Result<(), Failure> {
        self.rows += rows;
        self.bytes += bytes;
        if self.budget.rows.fetch_add(rows, Ordering::Relaxed) + rows > self.max_rows {
            return Err(Failure::Fatal(ExecError::TooLarge(self.max_rows)));
        }
        if self.budget.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_bytes {
            return Err(Failure::Fatal(ExecError::TooManyBytes(self.max_bytes)));
        }
        Ok(())
    }

    /// The attempt succeeded: what it holds stays counted.
    fn keep(mut self) {
        (self.rows, self.bytes) = (0, 0);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.rows.fetch_sub(self.rows, Ordering::Relaxed);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn row_bytes(row: &[Val]) -> usize {
    row.iter().map(Val::approx_size).sum::<usize>() + 8
}

fn group_bytes(key: &[KeyVal], states: &[State]) -> usize {
    let key: usize = key
        .iter()
        .map(|k| match k {
            KeyVal::Text(t) | KeyVal::Blob(t) => t.len() + 8,
            _ => 9,
        })
        .sum();
    key + states
        .iter()
        .map(|s| 32 + s.distinct_len() * 16)
        .sum::<usize>()
}

/// What a part weighs: rows (or groups and distinct values), and bytes.
fn part_weight(part: &Part) -> (usize, usize) {
    match part {
        Part::Rows { rows, .. } => (rows.len(), rows.iter().map(|r| row_bytes(r)).sum()),
        Part::Groups(g) => (
            g.groups.len(),
            g.groups.iter().map(|(k, s)| group_bytes(&k.0, s)).sum(),
        ),
    }
}

/// One operator's query.
pub(super) struct Ask<'a> {
    pub peer: PeerId,
    pub db: &'a str,
    pub sql: &'a str,
    /// The aggregate's plan, for a groups partial (to check peers' states).
    pub agg: Option<&'a GroupedAggregate>,
    pub deadline: Instant,
}

impl Exec {
    /// One operator's whole partial result.
    pub(super) async fn fetch(&self, ask: Ask<'_>, budget: &Budget) -> Result<Part, Failure> {
        let mut held = Held {
            budget,
            rows: 0,
            bytes: 0,
            max_rows: self.limits.max_result_rows,
            max_bytes: self.limits.max_result_bytes,
        };
        let part = if ask.peer == self.me.peer {
            let part = self.fetch_here(&ask).await?;
            held.take(part_weight(&part))?;
            part
        } else {
            self.fetch_from(&ask, &mut held).await?
        };
        held.keep();
        Ok(part)
    }

    async fn fetch_here(&self, ask: &Ask<'_>) -> Result<Part, Failure> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| Failure::Retry("this node stores no data".into()))?;
        let (db, sql, groups) = (ask.db.to_owned(), ask.sql.to_owned(), ask.agg.is_some());
        let limits = self.limits.until(ask.deadline);
        let r = tokio::task::spawn_blocking(move || {
            super::local::run_partial(&store, &db, &sql, groups, limits)
        })
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
        r.map_err(|e| {
            if fatal(crate::error::Coded::code(&e)) {
                Failure::Fatal(e)
            } else {
                Failure::Retry(e.to_string())
            }
        })
    }

    /// Asks a remote operator; a link opened for this ask alone is closed
    /// once it is answered (a query over hundreds of operators would
    /// otherwise hold a link to each of them until the idle trimming, and
    /// reach the connection cap before it is done).
    async fn fetch_from(&self, ask: &Ask<'_>, held: &mut Held<'_>) -> Result<Part, Failure> {
        let linked = self.mesh.connected_now(&ask.peer);
        let r = self.fetch_chunks(ask, held).await;
        if !linked {
            self.mesh.release(ask.peer).await;
        }
        r
    }

    async fn fetch_chunks(&self, ask: &Ask<'_>, held: &mut Held<'_>) -> Result<Part, Failure> {
        let remaining = ask.deadline.saturating_duration_since(Instant::now());
        let mut msg = Request::Partial {
            db: ask.db.to_owned(),
            sql: ask.sql.to_owned(),
            groups: ask.agg.is_some(),
            timeout_ms: remaining.as_millis() as u64,
        };
        let mut gather = Gather::new(ask.agg);
        loop {
            let wait = IDLE_TIMEOUT.min(ask.deadline.saturating_duration_since(Instant::now()));
            let chunk = match tokio::time::timeout(wait, self.mesh.call(ask.peer, &msg)).await {
                Err(_) => return Err(Failure::Retry("no answer in time".into())),
                Ok(Ok(c)) => c,
                Ok(Err(CallError::Remote(e))) if fatal(e.code) => {
                    return Err(Failure::Fatal(ExecError::Peer {
                        peer: ask.peer.to_string(),
                        code: e.code,
                        message: e.message,
                    }));
                }
                Ok(Err(CallError::Remote(e))) => {
                    return Err(Failure::Retry(format!("{}: {}", e.code, e.message)));
                }
                Ok(Err(e)) => return Err(Failure::Retry(e.to_string())),
            };
            held.take(gather.weight(&chunk))?;
            let (cursor, done) = (chunk.cursor, chunk.done);
            gather.add(chunk).map_err(|e| Failure::Retry(e.into()))?;
            if done {
                return Ok(gather.finish());
            }
            msg = Request::Next { cursor };
        }
    }
}

/// One operator's chunks, checked and put together.
struct Gather<'a> {
    agg: Option<&'a GroupedAggregate>,
    columns: Vec<(String, Option<String>)>,
    rows: Vec<Vec<Val>>,
    part: PartialGroups,
    first: bool,
}

impl<'a> Gather<'a> {
    fn new(agg: Option<&'a GroupedAggregate>) -> Gather<'a> {
        Gather {
            agg,
            columns: Vec::new(),
            rows: Vec::new(),
            part: PartialGroups::default(),
            first: true,
        }
    }

    /// What a chunk costs in memory here: rows, groups and the values of
    /// `count(distinct)` sets (a peer's sets are memory held here), and
    /// their bytes.
    fn weight(&self, chunk: &Chunk) -> (usize, usize) {
        let distinct: usize = chunk
            .groups
            .iter()
            .flat_map(|(_, states)| states.iter().map(State::distinct_len))
            .sum();
        let bytes = chunk.rows.iter().map(|r| row_bytes(r)).sum::<usize>()
            + chunk
                .groups
                .iter()
                .map(|(k, s)| group_bytes(k, s))
                .sum::<usize>();
        (chunk.rows.len() + chunk.groups.len() + distinct, bytes)
    }

    fn add(&mut self, chunk: Chunk) -> Result<(), &'static str> {
        if self.first && !chunk.columns.is_empty() {
            if chunk.columns.len() > MAX_COLUMNS {
                return Err("too many columns");
            }
            self.columns = chunk.columns;
            self.first = false;
        }
        if !chunk.key_types.is_empty() && self.part.key_types.is_empty() {
            self.part.key_types = chunk.key_types;
        }
        if chunk.rows.iter().any(|r| r.len() != self.columns.len()) {
            return Err("a row of the wrong width");
        }
        self.rows.extend(chunk.rows);
        if chunk.groups.is_empty() {
            return Ok(());
        }
        let Some(agg) = self.agg else {
            return Err("groups for a rows query");
        };
        for (key, mut states) in chunk.groups {
            if key.len() != agg.keys
                || states.len() != agg.aggs.len()
                || !states.iter().zip(&agg.aggs).all(|(s, a)| s.fits(a.kind))
            {
                return Err("a group that does not fit the plan");
            }
            states.iter_mut().for_each(State::restore);
            let key = GroupKey(key);
            match self.part.groups.get_mut(&key) {
                Some(cur) => cur.iter_mut().zip(&states).for_each(|(x, y)| x.merge(y)),
                None => {
                    self.part.groups.insert(key, states);
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Part {
        if self.agg.is_some() {
            Part::Groups(self.part)
        } else {
            Part::Rows {
                columns: self.columns,
                rows: self.rows,
            }
        }
    }
}
