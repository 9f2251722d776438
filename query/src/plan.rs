//! Splitting one SELECT into the part every operator runs and the step the
//! query node finishes with.
//!
//! A query goes through three stages, all pure:
//! 1. [`Prepared::new`] evaluates `now()` (and `now() - N unit`) once, on the
//!    query node, and takes EdgeLake's `period(...)` out of the WHERE clause;
//! 2. if there was a `period`, [`Prepared::probe`] is the query that finds
//!    its end (the greatest time at or before the date, over every operator),
//!    and [`Prepared::finish`] puts the window in its place;
//! 3. [`Plan::new`] rewrites `increments(...)` into grouping keys and splits
//!    the statement into a [`Shape`].
//!
//! Aggregates become [`Shape::Groups`]: operators return exact partial
//! states per group, merged on the query node. Everything else over one table
//! becomes [`Shape::Rows`]: operators return the rows that pass the WHERE
//! clause (only the columns the query reads; with ORDER BY/LIMIT pushed down
//! when that is exact) and the query node runs the statement over their
//! union. What cannot be split exactly (joins, subqueries, set operations) is
//! refused with [`PlanError::Unsupported`].

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, LimitClause,
    ObjectNamePart, OrderByKind, Query, SelectItem, SetExpr, Statement, TableFactor, Value, Visit,
    Visitor,
};

use crate::aggregate::{contains_aggregate, projection_aliases};
use crate::time::{self, Micros};
use crate::{GroupedAggregate, Select, SqlError};

/// Why a query cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// Valid SQL that tarn cannot split across operators exactly.
    #[error("cannot run over the network: {0}")]
    Unsupported(String),
    /// The query reads no table (`SELECT 1`): any node can answer it alone.
    #[error("the query reads no table")]
    NoTable,
    /// A malformed EdgeLake time function.
    #[error("{0}")]
    TimeFunction(String),
}

/// How the work is split.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Operators run `partial_sql` and return its rows; the query node loads
    /// them into a table named like the queried one and runs `final_sql`.
    Rows {
        partial_sql: String,
        final_sql: String,
    },
    /// Operators run the aggregate's scan into group states (from the
    /// statement [`Plan::sql`]); the query node merges them and runs
    /// `final_sql` over `system_query`.
    Groups(GroupedAggregate),
}

/// A query split for the network.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The table read (lower case).
    pub table: String,
    /// The rewritten statement (time functions resolved).
    pub sql: String,
    pub shape: Shape,
}

/// A query with `now()` evaluated and `period(...)` taken out.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The text, with `period(...)` still in place when there is one.
    text: String,
    period: Option<Period>,
}

#[derive(Debug, Clone)]
struct Period {
    /// Byte range of the call in `text`.
    span: (usize, usize),
    unit: Unit,
    n: i64,
    date: String,
    column: String,
    filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn parse(s: &str) -> Option<Unit> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_suffix('s').unwrap_or(&s);
        Some(match s {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    /// `t` moved back by `n` units (months and years by the calendar, the
    /// day clamped to the month's length); `None` when the arithmetic
    /// overflows or the result is outside the years 0 to 9999.
    fn back(self, t: Micros, n: i64) -> Option<Micros> {
        const S: i64 = 1_000_000;
        let fixed = match self {
            Unit::Second => Some(S),
            Unit::Minute => Some(60 * S),
            Unit::Hour => Some(3600 * S),
            Unit::Day => Some(86_400 * S),
            Unit::Week => Some(7 * 86_400 * S),
            Unit::Month | Unit::Year => None,
        };
        if let Some(step) = fixed {
            return time::in_range(t.checked_sub(step.checked_mul(n)?)?);
        }
        let months = if self == Unit::Year {
            n.checked_mul(12)?
        } else {
            n
        };
        let (y, mo, d, h, mi, s, us) = time::fields(t);
        let total = y
            .checked_mul(12)?
            .checked_add(mo - 1)?
            .checked_sub(months)?;
        let (y2, mo2) = (total.div_euclid(12), total.rem_euclid(12) + 1);
        let d2 = d.min(time::days_in_month(y2, mo2));
        time::from_fields(y2, mo2, d2, h, mi, s, us)
    }
}

impl Prepared {
    /// Evaluates `now()` at `now` and finds a `period(...)` call.
    pub fn new(sql: &str, now: Micros) -> Result<Prepared, PlanError> {
        if sql.len() > crate::MAX_SQL_LEN {
            return Err(SqlError::TooLong(sql.len()).into());
        }
        let text = substitute_now(sql, now)?;
        let period = find_period(&text)?;
        Ok(Prepared { text, period })
    }

    /// The query that finds the end of the `period` window: the greatest
    /// time at or before the date (the optional filter applied, the rest of
    /// the WHERE clause not), as one row with one value.
    pub fn probe(&self) -> Result<Option<String>, PlanError> {
        let Some(p) = &self.period else {
            return Ok(None);
        };
        let table = self.table_with(&format!(
            "{}(1 = 1){}",
            &self.text[..p.span.0],
            &self.text[p.span.1..]
        ))?;
        let filter = p
            .filter
            .as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default();
        Ok(Some(format!(
            "SELECT max({c}) FROM {table} WHERE {c} <= '{d}'{filter}",
            c = p.column,
            d = p.date
        )))
    }

    fn table_with(&self, text: &str) -> Result<String, PlanError> {
        let select = Select::parse(text)?;
        let from = single_table(&select)?;
        Ok(from)
    }

    /// The statement, with the `period` window put in (from `end`, the
    /// probe's answer: `None` when no row is at or before the date).
    pub fn finish(self, end: Option<&str>) -> Result<Select, PlanError> {
        let Some(p) = &self.period else {
            return Ok(Select::parse(&self.text)?);
        };
        let window = match end {
            None => "(1 = 0)".to_owned(),
            Some(end) => {
                let t = time::parse(end.trim(), true).ok_or_else(|| {
                    PlanError::TimeFunction(format!("period: {end:?} is not a time"))
                })?;
                let start = p.unit.back(t, p.n).ok_or_else(|| {
                    PlanError::TimeFunction("period: the window starts out of range".into())
                })?;
                format!(
                    "({c} > '{s}' AND {c} <= '{e}')",
                    c = p.column,
                    s = time::format_storage(start),
                    e = time::format_storage(t)
                )
            }
        };
        let text = format!(
            "{}{window}{}",
            &self.text[..p.span.0],
            &self.text[p.span.1..]
        );
        Ok(Select::parse(&text)?)
    }
}

/// Byte offsets of `sql` that are code (not inside a quoted string or
/// identifier).
fn code_mask(sql: &str) -> Vec<bool> {
    let b = sql.as_bytes();
    let mut mask = vec![true; b.len()];
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            None if matches!(b[i], b'\'' | b'"' | b'`') => {
                quote = Some(b[i]);
                mask[i] = false;
            }
            None if b[i] == b'[' => {
                quote = Some(b']');
                mask[i] = false;
            }
            None => {}
            Some(q) => {
                mask[i] = false;
                if b[i] == q {
                    if q != b']' && b.get(i + 1) == Some(&q) {
                        mask[i + 1] = false;
                        i += 1;
                    } else {
                        quote = None;
                    }
                }
            }
        }
        i += 1;
    }
    mask
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Finds the function `name(` at a word boundary in code, from `from`:
/// the start of the name and the index after `(`.
fn find_call(sql: &str, mask: &[bool], name: &str, from: usize) -> Option<(usize, usize)> {
    let b = sql.as_bytes();
    let lower = sql.to_ascii_lowercase();
    let mut at = from;
    while let Some(off) = lower[at..].find(name) {
        let s = at + off;
        let e = s + name.len();
        at = e;
        if !mask[s] || (s > 0 && is_word(b[s - 1])) || b.get(e).is_some_and(|c| is_word(*c)) {
            continue;
        }
        let mut j = e;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&b'(') && mask[j] {
            return Some((s, j + 1));
        }
    }
    None
}

/// Replaces `now()`, `now() - N unit` and `now() + N unit` with the time as a
/// literal, evaluated once.
fn substitute_now(sql: &str, now: Micros) -> Result<String, PlanError> {
    let mut out = sql.to_owned();
    let mut from = 0;
    loop {
        let mask = code_mask(&out);
        let Some((s, open)) = find_call(&out, &mask, "now", from) else {
            return Ok(out);
        };
        let b = out.as_bytes();
        let mut j = open;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) != Some(&b')') {
            return Err(PlanError::TimeFunction("now() takes no arguments".into()));
        }
        let mut end = j + 1;
        let mut t = now;
        // An optional `- N unit` / `+ N unit`.
        let rest = &out[end..];
        let trimmed = rest.trim_start();
        if let Some(sign) = trimmed.chars().next().filter(|c| *c == '-' || *c == '+') {
            let after = trimmed[1..].trim_start();
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            let word_part = after[digits.len()..].trim_start();
            let word: String = word_part
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if !digits.is_empty()
                && let Some(unit) = Unit::parse(&word)
            {
                let n: i64 = digits.parse().map_err(|_| {
                    PlanError::TimeFunction(format!("now() {sign} {digits}: too large"))
                })?;
                let n = if sign == '-' { n } else { -n };
                t = unit.back(now, n).ok_or_else(|| {
                    PlanError::TimeFunction("now() arithmetic out of range".into())
                })?;
                let consumed = rest.len() - word_part.len() + word.len();
                end += consumed;
            }
        }
        let lit = format!("'{}'", time::format_storage(t));
        out.replace_range(s..end, &lit);
        from = s + lit.len();
    }
}

/// Splits `text` (the inside of a call) at top-level commas.
fn split_args(text: &str) -> Vec<&str> {
    let mask = code_mask(text);
    let mut depth = 0i32;
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.bytes().enumerate() {
        if !mask[i] {
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(text[start..].trim());
    out
}

/// The index just past the `)` closing a call whose arguments start at `open`.
fn close_paren(sql: &str, mask: &[bool], open: usize) -> Option<usize> {
    let mut depth = 1;
    for (i, c) in sql.bytes().enumerate().skip(open) {
        if !mask[i] {
            continue;
        }
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn find_period(text: &str) -> Result<Option<Period>, PlanError> {
    let mask = code_mask(text);
    let Some((s, open)) = find_call(text, &mask, "period", 0) else {
        return Ok(None);
    };
    let bad = |m: &str| {
        PlanError::TimeFunction(format!("period(unit, N, 'date', column [, filter]): {m}"))
    };
    let end = close_paren(text, &mask, open).ok_or_else(|| bad("unclosed '('"))?;
    if find_call(text, &mask, "period", end).is_some() {
        return Err(PlanError::Unsupported(
            "more than one period() in a query".into(),
        ));
    }
    let args = split_args(&text[open..end - 1]);
    if !(4..=5).contains(&args.len()) {
        return Err(bad(&format!("{} arguments given", args.len())));
    }
    let unit = Unit::parse(args[0]).ok_or_else(|| bad(&format!("unknown unit {:?}", args[0])))?;
    let n: i64 = args[1]
        .parse()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad(&format!("{:?} is not a whole number", args[1])))?;
    // EdgeLake's documentation and users quote the date either way.
    let date_text = ['\'', '"']
        .iter()
        .find_map(|q| args[2].strip_prefix(*q).and_then(|d| d.strip_suffix(*q)))
        .unwrap_or(args[2]);
    let date = time::parse(date_text.trim(), true)
        .ok_or_else(|| bad(&format!("{:?} is not a date", args[2])))?;
    let column = args[3];
    if column.is_empty() || !column.bytes().all(|c| is_word(c) || c == b'.' || c == b'"') {
        return Err(bad(&format!("{column:?} is not a column")));
    }
    let filter = args.get(4).map(|f| {
        let f = f.trim();
        let lower = f.to_ascii_lowercase();
        match lower.strip_prefix("and ") {
            Some(r) => f[f.len() - r.len()..].trim().to_owned(),
            None => f.to_owned(),
        }
    });
    if let Some(f) = &filter {
        // The filter is SQL pasted into the probe: make sure it is one expression.
        Select::parse(&format!("SELECT 1 FROM t WHERE {f}"))
            .map_err(|e| bad(&format!("the filter: {e}")))?;
    }
    Ok(Some(Period {
        span: (s, end),
        unit,
        n,
        date: time::format_storage(date),
        column: column.to_owned(),
        filter,
    }))
}

/// The one table a query reads, or why there is not exactly one.
fn single_table(select: &Select) -> Result<String, PlanError> {
    let Statement::Query(q) = select.statement() else {
        return Err(PlanError::Unsupported("not a query".into()));
    };
    if q.with.is_some() {
        return Err(PlanError::Unsupported(
            "WITH (common table expressions)".into(),
        ));
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err(PlanError::Unsupported(
            "UNION/INTERSECT/EXCEPT; query each part on its own".into(),
        ));
    };
    if s.from.is_empty() {
        return Err(PlanError::NoTable);
    }
    if s.from.len() != 1 || !s.from[0].joins.is_empty() {
        return Err(PlanError::Unsupported(
            "joins and queries over several tables".into(),
        ));
    }
    let TableFactor::Table {
        name, args: None, ..
    } = &s.from[0].relation
    else {
        return Err(PlanError::Unsupported("FROM must name one table".into()));
    };
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => Ok(id.value.to_ascii_lowercase()),
        _ => Err(PlanError::Unsupported("FROM must name one table".into())),
    }
}

/// Finds a nested query anywhere in the statement (not the statement itself).
struct Nested(usize);

impl Visitor for Nested {
    type Break = ();
    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.0 += 1;
        if self.0 > 1 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Plan {
    /// `sql` (one SELECT over one table, as in [`Plan::sql`] or a rows
    /// partial) reading `table` instead: EdgeLake's `include=`.
    pub fn retarget(sql: &str, table: &str) -> Result<String, PlanError> {
        let select = Select::parse(sql)?;
        single_table(&select)?;
        let mut stmt = select.statement().clone();
        let s = select_mut(&mut stmt);
        if let TableFactor::Table { name, .. } = &mut s.from[0].relation {
            *name = sqlparser::ast::ObjectName(vec![ObjectNamePart::Identifier(Ident::new(table))]);
        }
        Ok(stmt.to_string())
    }

    /// Puts columns `names` first in the answer (EdgeLake's `extend=`):
    /// the query node adds them to every operator's rows, or makes them the
    /// leading keys of an aggregate's groups (one row per value, as
    /// EdgeLake answers `extend=(@table_name) "select count(*) ..."`). A
    /// `SELECT *` shows them already.
    pub fn lead_with(&mut self, names: &[String]) -> Result<(), PlanError> {
        let (final_sql, groups) = match &mut self.shape {
            Shape::Rows { final_sql, .. } => (final_sql, false),
            Shape::Groups(g) => {
                g.lead = names.len();
                g.direct = None;
                (&mut g.final_sql, true)
            }
        };
        let select = Select::parse(final_sql)?;
        let mut stmt = select.statement().clone();
        let s = select_mut(&mut stmt);
        if !s
            .projection
            .iter()
            .any(|p| matches!(p, SelectItem::Wildcard(_)))
        {
            for (i, n) in names.iter().enumerate() {
                let item = if groups {
                    SelectItem::ExprWithAlias {
                        expr: Expr::Identifier(Ident::new(format!("_x{i}"))),
                        alias: Ident::with_quote('"', n),
                    }
                } else {
                    SelectItem::UnnamedExpr(Expr::Identifier(Ident::with_quote('"', n)))
                };
                s.projection.insert(i, item);
            }
        }
        if groups {
            // Each source's groups together, in the sources' order.
            let q = query_mut(&mut stmt);
            let lead: Vec<sqlparser::ast::OrderByExpr> = (0..names.len())
                .map(|i| sqlparser::ast::OrderByExpr {
                    expr: Expr::Identifier(Ident::new(format!("_x{i}"))),
                    options: sqlparser::ast::OrderByOptions::default(),
                    with_fill: None,
                })
                .collect();
            match &mut q.order_by {
                Some(ob) => match &mut ob.kind {
                    sqlparser::ast::OrderByKind::Expressions(exprs) => {
                        exprs.splice(0..0, lead);
                    }
                    sqlparser::ast::OrderByKind::All(_) => {}
                },
                None => {
                    q.order_by = Some(sqlparser::ast::OrderBy {
                        kind: sqlparser::ast::OrderByKind::Expressions(lead),
                        interpolate: None,
                    });
                }
            }
        }
        *final_sql = stmt.to_string();
        Ok(())
    }

    /// Splits a prepared statement.
    pub fn new(select: Select) -> Result<Plan, PlanError> {
        let table = single_table(&select)?;
        let mut nested = Nested(0);
        if select.statement().visit(&mut nested).is_break() {
            return Err(PlanError::Unsupported("subqueries".into()));
        }
        let select = rewrite_increments(select)?;
        let sql = select.to_sql();
        if let Some(agg) = GroupedAggregate::plan(&select) {
            return Ok(Plan {
                table,
                sql,
                shape: Shape::Groups(agg),
            });
        }
        let shape = rows_shape(&select)?;
        Ok(Plan { table, sql, shape })
    }
}

fn select_mut(stmt: &mut Statement) -> &mut sqlparser::ast::Select {
    let Statement::Query(q) = stmt else {
        unreachable!("single_table accepted only queries")
    };
    let SetExpr::Select(s) = q.body.as_mut() else {
        unreachable!("single_table accepted only plain SELECTs")
    };
    s
}

fn query_mut(stmt: &mut Statement) -> &mut Query {
    let Statement::Query(q) = stmt else {
        unreachable!("single_table accepted only queries")
    };
    q
}

/// EdgeLake's `increments(unit, N, ts)` in the projection: the item goes,
/// the rows are grouped by (ts truncated to the next larger unit,
/// `extract(unit) / N`), and ordered by them unless an ORDER BY is given.
/// tarn stores times as `YYYY-MM-DD HH:MM:SS.ffffff`, so both are `substr`.
pub fn rewrite_increments(select: Select) -> Result<Select, PlanError> {
    // Only a plain SELECT can hold increments() (a UNION, a CTE: left as is).
    match select.statement() {
        Statement::Query(q)
            if q.with.is_none() && matches!(q.body.as_ref(), SetExpr::Select(_)) => {}
        _ => return Ok(select),
    }
    let mut stmt = select.statement().clone();
    let s = select_mut(&mut stmt);
    let mut found = None;
    for (i, item) in s.projection.iter().enumerate() {
        let (SelectItem::UnnamedExpr(Expr::Function(f))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        }) = item
        else {
            continue;
        };
        if !matches!(f.name.0.as_slice(), [ObjectNamePart::Identifier(id)] if id.value.eq_ignore_ascii_case("increments"))
        {
            continue;
        }
        if found.is_some() {
            return Err(PlanError::Unsupported("more than one increments()".into()));
        }
        let bad = |m: &str| PlanError::TimeFunction(format!("increments(unit, N, column): {m}"));
        let FunctionArguments::List(list) = &f.args else {
            return Err(bad("no arguments"));
        };
        let args: Vec<&Expr> = list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        if args.len() != 3 || list.args.len() != 3 {
            return Err(bad(&format!("{} arguments given", list.args.len())));
        }
        let unit_text = match args[0] {
            Expr::Identifier(id) => id.value.clone(),
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        let unit =
            Unit::parse(&unit_text).ok_or_else(|| bad(&format!("unknown unit {}", args[0])))?;
        let n: i64 = match args[1] {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse().ok(),
                _ => None,
            },
            _ => None,
        }
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(&format!("{} is not a positive whole number", args[1])))?;
        found = Some((i, unit, n, args[2].clone()));
    }
    let Some((i, unit, n, col)) = found else {
        return Ok(select);
    };
    s.projection.remove(i);
    if s.projection.is_empty() {
        return Err(PlanError::TimeFunction(
            "increments() needs other columns to compute per bucket".into(),
        ));
    }
    // (truncation length, position and length of the field) in the stored form.
    let (trunc, field) = match unit {
        Unit::Second => (Some(16), (18, 2)),
        Unit::Minute => (Some(13), (15, 2)),
        Unit::Hour => (Some(10), (12, 2)),
        Unit::Day => (Some(7), (9, 2)),
        Unit::Month => (Some(4), (6, 2)),
        Unit::Year => (None, (1, 4)),
        Unit::Week => {
            return Err(PlanError::TimeFunction(
                "increments(week, ...) is not supported; use day with N = 7".into(),
            ));
        }
    };
    let c = col.to_string();
    let mut keys = Vec::new();
    if let Some(len) = trunc {
        keys.push(format!("substr({c}, 1, {len})"));
    }
    keys.push(format!(
        "CAST(substr({c}, {}, {}) AS INTEGER) / {n}",
        field.0, field.1
    ));
    let key_exprs: Vec<Expr> = keys
        .iter()
        .map(|k| parse_expr(k))
        .collect::<Result<_, _>>()?;
    match &mut s.group_by {
        GroupByExpr::Expressions(list, _) => list.extend(key_exprs.iter().cloned()),
        GroupByExpr::All(_) => {
            return Err(PlanError::Unsupported(
                "GROUP BY ALL with increments()".into(),
            ));
        }
    }
    let q = query_mut(&mut stmt);
    if q.order_by.is_none() {
        let text = format!("SELECT 1 FROM t ORDER BY {}", keys.join(", "));
        let parsed = Select::parse(&text)?;
        if let Statement::Query(pq) = parsed.statement() {
            q.order_by = pq.order_by.clone();
        }
    }
    Ok(Select::parse(&stmt.to_string())?)
}

fn parse_expr(text: &str) -> Result<Expr, PlanError> {
    let s = Select::parse(&format!("SELECT {text}"))?;
    if let Statement::Query(q) = s.statement()
        && let SetExpr::Select(sel) = q.body.as_ref()
        && let Some(SelectItem::UnnamedExpr(e)) = sel.projection.first()
    {
        return Ok(e.clone());
    }
    Err(PlanError::Unsupported(format!("the expression {text}")))
}

/// Column names an expression reads (last name part, as written).
fn columns_of(e: &Expr, out: &mut Vec<Ident>) {
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        let id = match x {
            Expr::Identifier(id) => Some(id),
            Expr::CompoundIdentifier(ids) => ids.last(),
            _ => None,
        };
        if let Some(id) = id
            && !out.iter().any(|o| o.value.eq_ignore_ascii_case(&id.value))
        {
            out.push(id.clone());
        }
        ControlFlow::<()>::Continue(())
    });
}

fn rows_shape(select: &Select) -> Result<Shape, PlanError> {
    let mut stmt = select.statement().clone();
    let q = query_mut(&mut stmt).clone();
    let s = select_mut(&mut stmt);
    let aliases = projection_aliases(s);
    // Columns the final step reads: the projection's always; GROUP BY,
    // HAVING and ORDER BY's unless they name a projection alias.
    let mut wildcard = false;
    let mut cols: Vec<Ident> = Vec::new();
    for p in &s.projection {
        match p {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                columns_of(e, &mut cols)
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => wildcard = true,
            other => {
                return Err(PlanError::Unsupported(format!(
                    "the projection item {other}"
                )));
            }
        }
    }
    let mut later: Vec<Ident> = Vec::new();
    if let GroupByExpr::Expressions(list, _) = &s.group_by {
        list.iter().for_each(|e| columns_of(e, &mut later));
    }
    if let Some(h) = &s.having {
        columns_of(h, &mut later);
    }
    let mut order_exprs: Vec<Expr> = Vec::new();
    if let Some(ob) = &q.order_by
        && let OrderByKind::Expressions(list) = &ob.kind
    {
        order_exprs = list.iter().map(|o| o.expr.clone()).collect();
    }
    order_exprs.iter().for_each(|e| columns_of(e, &mut later));
    for id in later {
        if !aliases.contains(&id.value.to_ascii_lowercase())
            && !cols.iter().any(|c| c.value.eq_ignore_ascii_case(&id.value))
        {
            cols.push(id);
        }
    }
    let list = if wildcard {
        "*".to_owned()
    } else if cols.is_empty() {
        "row_id".to_owned()
    } else {
        cols.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let filter = s
        .selection
        .take()
        .map(|w| format!(" WHERE {w}"))
        .unwrap_or_default();
    // ORDER BY + LIMIT push down when each operator's top rows are a
    // superset of the answer's: no grouping, DISTINCT, aggregates or window
    // functions, and ORDER BY over columns (not aliases or positions).
    let mut tail = String::new();
    let plain = s.distinct.is_none()
        && matches!(&s.group_by, GroupByExpr::Expressions(l, _) if l.is_empty())
        && s.having.is_none()
        && !s.projection.iter().any(|p| match p {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                contains_aggregate(e)
            }
            _ => false,
        });
    if plain
        && let Some(LimitClause::LimitOffset {
            limit: Some(limit),
            offset,
            ..
        }) = &q.limit_clause
    {
        let number = |e: &Expr| match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse::<u64>().ok(),
                _ => None,
            },
            _ => None,
        };
        let off = match offset {
            None => Some(0),
            Some(o) => number(&o.value),
        };
        let ordered_by_columns = order_exprs.iter().all(|e| {
            !matches!(e, Expr::Value(_)) && {
                let mut ids = Vec::new();
                columns_of(e, &mut ids);
                !ids.iter()
                    .any(|i| aliases.contains(&i.value.to_ascii_lowercase()))
                    && !contains_aggregate(e)
            }
        });
        if let (Some(n), Some(off)) = (number(limit), off)
            && ordered_by_columns
        {
            if let Some(ob) = &q.order_by {
                tail.push_str(&format!(" {ob}"));
            }
            tail.push_str(&format!(" LIMIT {}", n.saturating_add(off)));
        }
    }
    let partial_sql = format!("SELECT {list} FROM {}{filter}{tail}", s.from[0].relation);
    let final_sql = stmt.to_string();
    Ok(Shape::Rows {
        partial_sql,
        final_sql,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_700_000_000_000_000; // 2023-11-14 22:13:20 UTC

    fn plan(sql: &str) -> Result<Plan, PlanError> {
        Plan::new(Prepared::new(sql, NOW)?.finish(None)?)
    }

    fn rows(sql: &str) -> (String, String) {
        match plan(sql).unwrap().shape {
            Shape::Rows {
                partial_sql,
                final_sql,
            } => (partial_sql, final_sql),
            Shape::Groups(g) => panic!("{sql} planned as groups: {g:?}"),
        }
    }

    #[test]
    fn projections_ship_only_what_is_read() {
        assert_eq!(
            rows("SELECT device, v * 2 AS double FROM t WHERE v > 1 ORDER BY double DESC"),
            (
                "SELECT device, v FROM t WHERE v > 1".into(),
                "SELECT device, v * 2 AS double FROM t ORDER BY double DESC".into()
            )
        );
        assert_eq!(
            rows("SELECT * FROM t WHERE a = 1 ORDER BY ts DESC LIMIT 5 OFFSET 2").0,
            "SELECT * FROM t WHERE a = 1 ORDER BY ts DESC LIMIT 7"
        );
        // Not pushed: DISTINCT, an alias in ORDER BY, an aggregate.
        assert_eq!(
            rows("SELECT DISTINCT a FROM t ORDER BY a LIMIT 3").0,
            "SELECT a FROM t"
        );
        assert_eq!(
            rows("SELECT a + 1 AS b FROM t ORDER BY b LIMIT 3").0,
            "SELECT a FROM t"
        );
        assert_eq!(rows("SELECT group_concat(a) FROM t").0, "SELECT a FROM t");
    }

    #[test]
    fn include_and_extend_rewrite_the_statement() {
        assert_eq!(
            Plan::retarget("SELECT a FROM t WHERE a > 1", "u").unwrap(),
            "SELECT a FROM u WHERE a > 1"
        );
        let mut p = plan("SELECT a FROM t WHERE a > 1 ORDER BY a").unwrap();
        p.lead_with(&["table_name".into()]).unwrap();
        let Shape::Rows { final_sql, .. } = &p.shape else {
            panic!()
        };
        assert_eq!(final_sql, "SELECT \"table_name\", a FROM t ORDER BY a");
        // An aggregate: the extended values lead the groups.
        let mut p = plan("SELECT count(*) FROM t").unwrap();
        p.lead_with(&["table_name".into()]).unwrap();
        let Shape::Groups(g) = &p.shape else { panic!() };
        assert_eq!(g.lead, 1);
        assert_eq!(
            g.final_sql,
            "SELECT _x0 AS \"table_name\", _a0 AS \"count(*)\" FROM system_query ORDER BY _x0"
        );
    }

    #[test]
    fn aggregates_split_into_groups() {
        let p = plan("SELECT device, avg(v) FROM t GROUP BY device").unwrap();
        assert!(matches!(p.shape, Shape::Groups(_)));
        assert_eq!(p.table, "t");
    }

    #[test]
    fn refuses_what_it_cannot_split() {
        for sql in [
            "SELECT * FROM t JOIN u ON t.a = u.a",
            "SELECT a FROM t UNION SELECT a FROM u",
            "SELECT * FROM t WHERE a IN (SELECT a FROM u)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(
                matches!(plan(sql), Err(PlanError::Unsupported(_))),
                "{sql}: {:?}",
                plan(sql)
            );
        }
    }

    proptest::proptest! {
        /// Hostile text around the time functions is refused, never a panic.
        #[test]
        fn never_panics_on_time_function_soup(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "SELECT ", "count(*)", " FROM t", " WHERE ", "period(", "increments(", "now()",
                " - ", " + ", "1", " day", " year", " month", "'", "\"", "(", ")", ",", "ts",
                "minute", "'2024-01-01'", "\"2024-03-12 13:42:58\"", "'9999-12-31'",
                "'0000-01-01'", " and ", "é", "日本", "\u{3000}", "\u{a0}", "::float(2)",
                "::ljust(", " GROUP BY ", "x", ";", "300000", "9223372036854775807",
                "99999999999999999999", "-1",
            ]),
            0..24,
        )) {
            let sql: String = parts.concat();
            if let Ok(p) = Prepared::new(&sql, NOW) {
                let _ = p.probe();
                if let Ok(mut s) = p.finish(Some("2024-01-01 00:00:00.000000")) {
                    let _ = s.take_casts();
                    let _ = rewrite_increments(s.clone());
                    let _ = Plan::new(s);
                }
            }
        }
    }

    /// Time arithmetic far out of the calendar is an error, not a panic
    /// or a literal no time has.
    #[test]
    fn time_arithmetic_out_of_range_is_refused() {
        for sql in [
            "SELECT * FROM t WHERE ts > now() - 300000 year",
            "SELECT * FROM t WHERE ts > now() + 300000 year",
            "SELECT * FROM t WHERE ts > now() - 9223372036854775807 year",
            "SELECT * FROM t WHERE ts > now() - 9223372036854775807 second",
            "SELECT * FROM t WHERE ts > now() - 99999999 day",
        ] {
            assert!(
                matches!(Prepared::new(sql, NOW), Err(PlanError::TimeFunction(_))),
                "{sql}"
            );
        }
        for unit in ["year", "month", "week", "second"] {
            let sql = format!(
                "SELECT count(*) FROM t WHERE period({unit}, 9223372036854775807, '2024-01-01', ts)"
            );
            let p = Prepared::new(&sql, NOW).unwrap();
            assert!(p.probe().unwrap().is_some());
            assert!(
                matches!(
                    p.finish(Some("2024-01-01 00:00:00.000000")),
                    Err(PlanError::TimeFunction(_))
                ),
                "{sql}"
            );
        }
        let p = Prepared::new(
            "SELECT count(*) FROM t WHERE period(year, 300000, '2024-01-01', ts)",
            NOW,
        )
        .unwrap();
        assert!(p.finish(Some("2024-01-01 00:00:00.000000")).is_err());
        // The edges of the calendar still work.
        let p = Prepared::new("SELECT * FROM t WHERE ts > now() - 2000 year", NOW).unwrap();
        assert!(
            p.text.contains("'0023-11-14 22:13:20.000000'"),
            "{}",
            p.text
        );
    }

    #[test]
    fn increments_leave_other_statements_alone() {
        for sql in [
            "SELECT 1 UNION SELECT 2",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "SELECT a FROM t JOIN u ON t.k = u.k",
            "VALUES (1)",
        ] {
            let Ok(s) = Select::parse(sql) else { continue };
            assert_eq!(rewrite_increments(s.clone()).unwrap().to_sql(), s.to_sql());
        }
    }

    #[test]
    fn constant_queries_need_no_table() {
        assert_eq!(plan("SELECT 1").unwrap_err(), PlanError::NoTable);
    }

    #[test]
    fn now_is_evaluated_once() {
        let p = Prepared::new(
            "SELECT * FROM t WHERE ts > NOW() - 2 hours AND ts < now() AND note = 'now()'",
            NOW,
        )
        .unwrap();
        assert_eq!(
            p.text,
            "SELECT * FROM t WHERE ts > '2023-11-14 20:13:20.000000' AND ts < '2023-11-14 22:13:20.000000' AND note = 'now()'"
        );
        let p = Prepared::new("SELECT * FROM t WHERE ts > now() - 1 month", NOW).unwrap();
        assert!(
            p.text.contains("'2023-10-14 22:13:20.000000'"),
            "{}",
            p.text
        );
    }

    #[test]
    fn period_takes_a_date_in_double_quotes() {
        let single = Prepared::new(
            "SELECT count(*) FROM t WHERE period(minute, 10, '2024-03-12 13:42:58', timestamp)",
            NOW,
        )
        .unwrap();
        let double = Prepared::new(
            r#"SELECT count(*) FROM t WHERE period(minute, 10, "2024-03-12 13:42:58", timestamp)"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            single.probe().unwrap().unwrap(),
            double.probe().unwrap().unwrap()
        );
        let end = "2024-03-12 13:40:00.000000";
        assert_eq!(
            single.finish(Some(end)).unwrap().to_sql(),
            double.finish(Some(end)).unwrap().to_sql()
        );
    }

    #[test]
    fn period_probes_then_windows() {
        let p = Prepared::new(
            "SELECT count(*) FROM t WHERE period(minute, 5, '2024-01-01 00:10:00', ts, and device = 'a') AND v > 1",
            NOW,
        )
        .unwrap();
        assert_eq!(
            p.probe().unwrap().unwrap(),
            "SELECT max(ts) FROM t WHERE ts <= '2024-01-01 00:10:00.000000' AND (device = 'a')"
        );
        let s = p.finish(Some("2024-01-01 00:09:00.000000")).unwrap();
        assert_eq!(
            s.to_sql(),
            "SELECT count(*) FROM t WHERE (ts > '2024-01-01 00:04:00.000000' AND ts <= '2024-01-01 00:09:00.000000') AND v > 1"
        );
        let p = Prepared::new(
            "SELECT * FROM t WHERE period(month, 1, '2024-03-31', ts)",
            NOW,
        )
        .unwrap();
        let s = p.finish(Some("2024-03-31 00:00:00.000000")).unwrap();
        assert!(
            s.to_sql().contains("ts > '2024-02-29 00:00:00.000000'"),
            "{}",
            s.to_sql()
        );
        let p = Prepared::new("SELECT * FROM t WHERE period(day, 1, now(), ts)", NOW).unwrap();
        assert_eq!(
            p.finish(None).unwrap().to_sql(),
            "SELECT * FROM t WHERE (1 = 0)"
        );
        assert!(Prepared::new("SELECT * FROM t WHERE period(day, 1, 'x', ts)", NOW).is_err());
    }

    #[test]
    fn increments_group_by_buckets() {
        let p =
            plan("SELECT increments(minute, 10, ts), max(ts), avg(v) FROM t WHERE v > 0").unwrap();
        assert_eq!(
            p.sql,
            "SELECT max(ts), avg(v) FROM t WHERE v > 0 GROUP BY SUBSTR(ts, 1, 13), CAST(SUBSTR(ts, 15, 2) AS INTEGER) / 10 \
             ORDER BY SUBSTR(ts, 1, 13), CAST(SUBSTR(ts, 15, 2) AS INTEGER) / 10"
        );
        let Shape::Groups(g) = p.shape else { panic!() };
        assert_eq!(g.keys, 2);
        assert!(
            g.final_sql.ends_with("ORDER BY _k0, _k1"),
            "{}",
            g.final_sql
        );
        let p = plan("SELECT increments(year, 2, ts), count(*) FROM t").unwrap();
        assert!(
            p.sql
                .contains("GROUP BY CAST(SUBSTR(ts, 1, 4) AS INTEGER) / 2"),
            "{}",
            p.sql
        );
    }
}

/// The SQL gate and the planner over arbitrary bytes and SQL token soup:
/// refused or planned, never a panic. Longer runs:
/// `PROPTEST_CASES=200000 cargo test -p tarn-query fuzz_`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn all_stages(sql: &str) {
        let Ok(p) = Prepared::new(sql, 1_700_000_000_000_000) else {
            return;
        };
        let _ = p.probe();
        let Ok(mut s) = p.finish(Some("2024-01-01 00:00:00.000000")) else {
            return;
        };
        let _ = s.take_casts();
        s.normalize_timestamps(|c| c == "ts");
        let _ = s.to_sql();
        let _ = s.tables();
        let _ = GroupedAggregate::plan(&s);
        let _ = rewrite_increments(s.clone());
        if let Ok(mut plan) = Plan::new(s) {
            let _ = Plan::retarget(&plan.sql, "u");
            let _ = plan.lead_with(&["table_name".to_owned()]);
        }
    }

    proptest! {
        #[test]
        fn fuzz_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            all_stages(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn fuzz_sql_soup_never_panics(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "SELECT ", "DISTINCT ", "*", "a", "ts", "count(*)", "count(DISTINCT a)", "avg(a)",
                "sum(a)", "min(ts)", "max(a)", "stddev(a)", " FROM ", "t", " u", " JOIN u ON t.a = u.a",
                " WHERE ", " GROUP BY ", " HAVING ", " ORDER BY ", " LIMIT ", " OFFSET ", " AND ",
                " OR ", " NOT ", "(", ")", ",", " = ", " < ", " > ", "'2024-01-01'", "'x'", "1",
                "-1", "1e999", "99999999999999999999", " UNION SELECT 1", "WITH x AS (SELECT 1) ",
                "CASE WHEN a THEN 1 ELSE 2 END", " AS k", "::float(2)", "::ljust(9)", " ;",
                "increments(minute, 5, ts)", "period(day, 1, now(), ts)", "now() - 3 day", "é",
                "\u{3000}", " 1 ", "a.b", "\"q\"", "[x]", "`y`", " IN (SELECT 1)", " BETWEEN 1 AND 2",
            ]),
            0..30,
        )) {
            all_stages(&parts.concat());
        }
    }
}
