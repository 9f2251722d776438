//! Reading: statements on a database's pooled readers, each under a
//! deadline and a row limit, and the parallel scan behind grouped
//! aggregates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use tarn_query::{AggKind, GroupedAggregate, Select};

use super::accumulate::{Groups, RowKey, State, merge};
use super::database::Database;
use super::error::sql_error;
use super::{ColType, Storage, StoreError, Val};

/// Limits for one query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    /// Bytes of values held at most (also the largest value SQLite may
    /// build for it).
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// A query's answer with each column's declared type, when it has one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub types: Vec<Option<ColType>>,
    pub rows: Vec<Vec<Val>>,
}

/// An operator's share of a grouped aggregate: the declared types of the
/// key columns and the partial state of every group.
#[derive(Debug, Default)]
pub struct PartialGroups {
    pub key_types: Vec<Option<String>>,
    pub groups: Groups,
}

/// A validated SELECT bound to one database, its timestamp literals in the
/// stored form of that database's timestamp columns.
pub struct Statement {
    database: Arc<Database>,
    select: Select,
    /// A user database (not `almgm`).
    user: bool,
    db: String,
}

impl Storage {
    /// Binds `select` to `db` (an unknown database is an error).
    pub fn statement(&self, db: &str, mut select: Select) -> Result<Statement, StoreError> {
        self.touch();
        let database = self.database(db)?;
        let ts_cols: Vec<String> = {
            let schemas = database.schemas.read().expect("lock poisoned");
            select
                .tables()
                .iter()
                .filter_map(|t| schemas.get(t))
                .flat_map(|s| s.columns.iter())
                .filter(|(_, t)| *t == ColType::Timestamp)
                .map(|(c, _)| c.clone())
                .chain(std::iter::once("insert_timestamp".to_owned()))
                .collect()
        };
        select.normalize_timestamps(|c| ts_cols.iter().any(|t| t == c));
        let user = !Arc::ptr_eq(&database, &self.almgm);
        Ok(Statement {
            database,
            select,
            user,
            db: db.to_owned(),
        })
    }
}

impl Statement {
    /// The grouped-aggregate split of this statement when scanning
    /// `row_id` ranges in parallel into hash aggregates beats SQLite: a
    /// GROUP BY (or an aggregate SQLite lacks, or an exact sum) over a
    /// stored table. A bare count stays with SQLite, which counts from the
    /// smallest index.
    pub fn grouped(&self) -> Option<GroupedAggregate> {
        let plan = GroupedAggregate::plan(&self.select)?;
        let worth = plan.keys > 0
            || plan
                .aggs
                .iter()
                .any(|a| !matches!(a.kind, AggKind::CountStar | AggKind::Count));
        (self.user && worth && self.database.schema(&plan.table).is_some()).then_some(plan)
    }

    /// Runs the statement with SQLite.
    pub fn run(self, limits: QueryLimits) -> Result<QueryResult, StoreError> {
        let sql = self.select.to_sql();
        let mut conn = self
            .database
            .reader()
            .map_err(|e| StoreError::internal("opening a reader", e))?;
        let result = run_sql(&mut conn, &sql, limits);
        self.database.give_back(conn);
        result
    }

    /// This operator's share of a grouped aggregate (the statement must
    /// plan as one): the partial state of every group, to be merged
    /// elsewhere.
    pub fn partial_groups(
        &self,
        limits: QueryLimits,
    ) -> Result<(GroupedAggregate, PartialGroups), StoreError> {
        let plan = GroupedAggregate::plan(&self.select)
            .ok_or_else(|| StoreError::InvalidSql("not an aggregate tarn can split".into()))?;
        if self.database.schema(&plan.table).is_none() {
            return Err(StoreError::UnknownTable(format!(
                "no table named {:?} in database {:?}",
                plan.table, self.db
            )));
        }
        let part = self.scan(&plan, limits)?;
        Ok((plan, part))
    }

    /// Scans the whole table in up to four `row_id` ranges at once.
    pub fn scan(
        &self,
        plan: &GroupedAggregate,
        limits: QueryLimits,
    ) -> Result<PartialGroups, StoreError> {
        let database = &self.database;
        let deadline = Instant::now() + limits.timeout;
        let reader = || {
            database
                .reader()
                .map_err(|e| StoreError::internal("opening a reader", e))
        };
        let first = reader()?;
        let bounds: (Option<i64>, Option<i64>) = first
            .query_row(
                // Two subqueries: SQLite finds a lone min() or max() of the
                // rowid from the b-tree's ends, but scans the whole table
                // for both in one select.
                &format!(
                    "SELECT (SELECT min(row_id) FROM \"{t}\"), (SELECT max(row_id) FROM \"{t}\")",
                    t = plan.table
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql_error)?;
        let lo = bounds.0.unwrap_or(0);
        let hi = bounds.1.map_or(0, |h| h + 1);
        let span = (hi - lo).max(0);
        let parts: i64 = if span < 100_000 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as i64
        };
        let key_types: Vec<Option<String>> = if plan.keys == 0 {
            Vec::new()
        } else {
            let st = first.prepare_cached(&plan.scan_sql).map_err(sql_error)?;
            st.columns()
                .take(plan.keys)
                .map(|c| c.decl_type().map(str::to_owned))
                .collect()
        };
        let mut conns = vec![first];
        for _ in 1..parts {
            conns.push(reader()?);
        }
        let results: Vec<Result<Groups, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = conns
                .iter_mut()
                .enumerate()
                .map(|(p, c)| {
                    let (a, b) = (
                        lo + span * p as i64 / parts,
                        lo + span * (p as i64 + 1) / parts,
                    );
                    s.spawn(move || scan_range(c, plan, (a, b), deadline, limits))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StoreError::internal("a scan", "the thread panicked"))
                    })
                })
                .collect()
        });
        for c in conns {
            database.give_back(c);
        }
        let mut groups = Groups::new();
        for r in results {
            merge(&mut groups, r?);
            if groups.len() > limits.max_rows {
                return Err(StoreError::TooManyRows(limits.max_rows));
            }
        }
        Ok(PartialGroups { key_types, groups })
    }
}

/// One range of `row_id`s of a grouped scan into hash aggregates.
fn scan_range(
    conn: &mut Connection,
    plan: &GroupedAggregate,
    (lo, hi): (i64, i64),
    deadline: Instant,
    limits: QueryLimits,
) -> Result<Groups, StoreError> {
    let max_groups = limits.max_rows;
    with_deadline(conn, deadline, limits.max_bytes, |conn| {
        let mut st = conn.prepare_cached(&plan.scan_sql).map_err(sql_error)?;
        let mut rows = st.query(rusqlite::params![lo, hi]).map_err(sql_error)?;
        let mut groups = Groups::new();
        if plan.keys == 0 {
            // One group: no key to hash per row.
            let mut states: Option<Vec<State>> = None;
            while let Some(r) = rows.next().map_err(sql_error)? {
                let states = states
                    .get_or_insert_with(|| plan.aggs.iter().map(|a| State::new(a.kind)).collect());
                update(states, plan, r, max_groups)?;
            }
            if let Some(states) = states {
                groups.insert(RowKey(&[]).to_owned(), states);
            }
            return Ok(groups);
        }
        // What the groups' keys take, counted against the byte limit.
        let mut key_bytes = 0usize;
        while let Some(r) = rows.next().map_err(sql_error)? {
            let mut refs = [ValueRef::Null; 8];
            let key: Vec<ValueRef<'_>>;
            let key: &[ValueRef<'_>] = if plan.keys <= refs.len() {
                for (i, slot) in refs.iter_mut().take(plan.keys).enumerate() {
                    *slot = r.get_ref(i).map_err(sql_error)?;
                }
                &refs[..plan.keys]
            } else {
                key = (0..plan.keys)
                    .map(|i| r.get_ref(i))
                    .collect::<Result<_, _>>()
                    .map_err(sql_error)?;
                &key
            };
            let key = RowKey(key);
            match groups.get_mut(&key) {
                Some(states) => update(states, plan, r, max_groups)?,
                None => {
                    if groups.len() >= max_groups {
                        return Err(StoreError::TooManyRows(max_groups));
                    }
                    key_bytes += key.0.iter().map(|v| ref_size(*v)).sum::<usize>();
                    if key_bytes > limits.max_bytes {
                        return Err(StoreError::TooLarge(limits.max_bytes));
                    }
                    let mut states: Vec<State> =
                        plan.aggs.iter().map(|a| State::new(a.kind)).collect();
                    update(&mut states, plan, r, max_groups)?;
                    groups.insert(key.to_owned(), states);
                }
            }
        }
        Ok(groups)
    })
}

/// Adds one scanned row to its group's states.
#[inline]
fn update(
    states: &mut [State],
    plan: &GroupedAggregate,
    r: &rusqlite::Row<'_>,
    max_values: usize,
) -> Result<(), StoreError> {
    // Aggregates over one column (`min(v), max(v), avg(v)`) read it once.
    let mut read: [Option<ValueRef<'_>>; 8] = [None; 8];
    for (s, a) in states.iter_mut().zip(&plan.aggs) {
        let arg = match a.arg {
            Some(i) => Some(match read.get_mut(i.wrapping_sub(plan.keys)) {
                Some(Some(v)) => *v,
                Some(slot) => *slot.insert(r.get_ref(i).map_err(sql_error)?),
                None => r.get_ref(i).map_err(sql_error)?,
            }),
            None => None,
        };
        s.update(arg);
        if s.distinct_len() > max_values {
            return Err(StoreError::TooManyRows(max_values));
        }
    }
    Ok(())
}

/// Runs `f` with SQLite interrupting it past `deadline` and refusing to
/// build a value larger than `max_value` bytes.
fn with_deadline<T>(
    conn: &mut Connection,
    deadline: Instant,
    max_value: usize,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let cap = i32::try_from(max_value).unwrap_or(i32::MAX);
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, cap)
        .map_err(|e| StoreError::internal("setting a value limit", e))?;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
        .map_err(|e| StoreError::internal("setting a query deadline", e))?;
    let result = f(conn);
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
    result
}

/// About how many bytes a value SQLite hands out takes once kept.
fn ref_size(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.len() + 4,
        _ => 9,
    }
}

/// Runs one statement on `conn` (a store's reader, or an in-memory table of
/// a query's final step), within `limits`: rows and bytes are counted as
/// the answer is built, not after.
pub(crate) fn run_sql(
    conn: &mut Connection,
    sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, StoreError> {
    let deadline = Instant::now() + limits.timeout;
    with_deadline(conn, deadline, limits.max_bytes, |conn| {
        let mut stmt = conn.prepare(sql).map_err(sql_error)?;
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let types: Vec<Option<ColType>> = stmt
            .columns()
            .map(|c| c.decl_type().and_then(ColType::from_sql))
            .collect();
        let width = columns.len();
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut q = stmt.query([]).map_err(sql_error)?;
        while let Some(r) = q.next().map_err(sql_error)? {
            if rows.len() >= limits.max_rows {
                return Err(StoreError::TooManyRows(limits.max_rows));
            }
            let mut row = Vec::with_capacity(width);
            for (i, ty) in types.iter().enumerate() {
                let v = r.get_ref(i).map_err(sql_error)?;
                // A blob is kept as hex text: twice its size.
                bytes += ref_size(v)
                    + matches!(v, ValueRef::Blob(b) if !b.is_empty()) as usize * ref_size(v);
                if bytes > limits.max_bytes {
                    return Err(StoreError::TooLarge(limits.max_bytes));
                }
                row.push(match v {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) if *ty == Some(ColType::Boolean) => Val::Bool(v != 0),
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => Val::Float(v),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Text(b.iter().map(|x| format!("{x:02x}")).collect()),
                });
            }
            rows.push(row);
        }
        Ok(QueryResult {
            columns,
            types,
            rows,
        })
    })
}
