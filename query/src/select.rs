//! One read-only SELECT, parsed and checked before anything reaches a store.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, InTarget, ObjectNamePart, Query, SelectItem, SetExpr,
    Statement, Value, ValueWithSpan, Visit, Visitor, visit_expressions_mut, visit_relations,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

use crate::time;

/// Longest SQL text accepted, in bytes.
pub const MAX_SQL_LEN: usize = 256 * 1024;
/// Deepest expression nesting accepted; deeper input is refused, not overflowed.
const RECURSION_LIMIT: usize = 64;

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The text is not valid SQL.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// Empty text, or more than one statement.
    #[error("expected exactly one SELECT statement, found {0}")]
    NotOneStatement(usize),
    /// A statement other than a read-only SELECT.
    #[error("only read-only SELECT statements are accepted, not {0}")]
    NotSelect(String),
    /// Longer than [`MAX_SQL_LEN`].
    #[error("SQL text is {0} bytes; the limit is {MAX_SQL_LEN}")]
    TooLong(usize),
}

/// An EdgeLake projection cast, applied on the query node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputCast {
    /// Round to N decimals (`::float(N)`); `::float` alone reads as float.
    Float(Option<u32>),
    Int,
    Str,
    Ljust(usize),
    Rjust(usize),
}

impl OutputCast {
    fn of(t: &DataType) -> Option<OutputCast> {
        let n = |args: &[sqlparser::ast::TypeModifier]| -> Option<usize> {
            match args {
                [sqlparser::ast::TypeModifier::Number(a, _)] => {
                    a.trim().parse().ok().filter(|n| *n <= 4096)
                }
                _ => None,
            }
        };
        Some(match t {
            DataType::Float(info) => OutputCast::Float(match info {
                sqlparser::ast::ExactNumberInfo::None => None,
                sqlparser::ast::ExactNumberInfo::Precision(p)
                | sqlparser::ast::ExactNumberInfo::PrecisionAndScale(p, _) => {
                    Some((*p).min(17) as u32)
                }
            }),
            DataType::Int(_) | DataType::Integer(_) => OutputCast::Int,
            DataType::Custom(name, args) => {
                let name = name.to_string().to_ascii_lowercase();
                match name.as_str() {
                    "str" => OutputCast::Str,
                    "ljust" => OutputCast::Ljust(n(args)?),
                    "rjust" => OutputCast::Rjust(n(args)?),
                    "float" if args.is_empty() => OutputCast::Float(None),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }
}

/// A validated, read-only SELECT (possibly with CTEs or set operations).
#[derive(Debug, Clone)]
pub struct Select {
    stmt: Statement,
}

impl Select {
    /// Parses `sql` (SQLite dialect) and accepts it only if it is exactly one
    /// read-only query. A trailing `;` is allowed.
    pub fn parse(sql: &str) -> Result<Select, SqlError> {
        if sql.len() > MAX_SQL_LEN {
            return Err(SqlError::TooLong(sql.len()));
        }
        let mut stmts = Parser::new(&SQLiteDialect {})
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
            .map_err(|e| SqlError::Syntax(e.to_string()))?;
        if stmts.len() != 1 {
            return Err(SqlError::NotOneStatement(stmts.len()));
        }
        let stmt = stmts.pop().expect("one statement was just counted");
        if !matches!(stmt, Statement::Query(_)) {
            return Err(SqlError::NotSelect(statement_kind(&stmt)));
        }
        let mut check = ReadOnly(None);
        let _ = stmt.visit(&mut check);
        if let Some(what) = check.0 {
            return Err(SqlError::NotSelect(what));
        }
        Ok(Select { stmt })
    }

    /// Names of the tables the query reads (lower case, last name part; CTE
    /// names may appear too), without duplicates.
    pub fn tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let _ = visit_relations(&self.stmt, |name| {
            if let Some(ObjectNamePart::Identifier(id)) = name.0.last() {
                let t = id.value.to_ascii_lowercase();
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            ControlFlow::<()>::Continue(())
        });
        out
    }

    /// Rewrites string literals compared with a timestamp column (`=`, `<`,
    /// `BETWEEN`, `IN`, ...) into the stored form, so that
    /// `ts >= '2024-01-01T00:00:00+02:00'` compares as time, not as text.
    /// `is_timestamp` says whether a column name (lower case) is a timestamp.
    pub fn normalize_timestamps(&mut self, is_timestamp: impl Fn(&str) -> bool) {
        let is_ts = |e: &Expr| column_name(e).is_some_and(|c| is_timestamp(&c));
        let _ = visit_expressions_mut(&mut self.stmt, |expr| {
            match expr {
                Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                    if is_ts(left) {
                        normalize_literal(right);
                    } else if is_ts(right) {
                        normalize_literal(left);
                    }
                }
                Expr::Between {
                    expr, low, high, ..
                } if is_ts(expr) => {
                    normalize_literal(low);
                    normalize_literal(high);
                }
                Expr::In {
                    expr,
                    target: InTarget::List(list),
                    ..
                } if is_ts(expr) => {
                    list.iter_mut().for_each(normalize_literal);
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }

    /// Takes EdgeLake's projection casts (`x::float(2)`, `::int`, `::str`,
    /// `::ljust(N)`, `::rjust(N)`) off the top level of the projection; they
    /// are applied to the final answer, one entry per output column (an
    /// `increments(...)` item makes no column, so it has no entry). Casts
    /// tarn does not know stay, for SQLite to refuse or apply.
    pub fn take_casts(&mut self) -> Vec<Option<OutputCast>> {
        let Statement::Query(q) = &mut self.stmt else {
            return Vec::new();
        };
        let SetExpr::Select(sel) = q.body.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(sel.projection.len());
        for item in sel.projection.iter_mut() {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => {
                    out.push(None);
                    continue;
                }
            };
            if let Expr::Function(f) = expr
                && f.name.to_string().eq_ignore_ascii_case("increments")
            {
                continue;
            }
            let Expr::Cast {
                kind: CastKind::DoubleColon,
                expr: inner,
                data_type,
                ..
            } = expr
            else {
                out.push(None);
                continue;
            };
            let cast = OutputCast::of(data_type);
            if cast.is_some() {
                let inner = (**inner).clone();
                *expr = inner;
            }
            out.push(cast);
        }
        out
    }

    /// The statement as SQL text for SQLite.
    pub fn to_sql(&self) -> String {
        self.stmt.to_string()
    }

    /// The parsed statement.
    pub fn statement(&self) -> &Statement {
        &self.stmt
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    use BinaryOperator::*;
    matches!(op, Eq | NotEq | Lt | LtEq | Gt | GtEq)
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(id) => Some(id.value.to_ascii_lowercase()),
        Expr::CompoundIdentifier(ids) => ids.last().map(|id| id.value.to_ascii_lowercase()),
        Expr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

fn normalize_literal(e: &mut Expr) {
    if let Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(s),
        ..
    }) = e
        && let Some(t) = time::parse(s.trim(), true)
    {
        *s = time::format_storage(t);
    }
}

fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let kind: Vec<&str> = text.split_whitespace().take(2).collect();
    match kind.first() {
        Some(first)
            if first.eq_ignore_ascii_case("create") || first.eq_ignore_ascii_case("drop") =>
        {
            kind.join(" ").to_ascii_uppercase()
        }
        Some(first) => first.to_ascii_uppercase(),
        None => "an empty statement".into(),
    }
}

/// Finds anything inside a query that would write: `SELECT ... INTO`, or a
/// data-modifying statement nested in a set expression.
struct ReadOnly(Option<String>);

impl Visitor for ReadOnly {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(what) = writes(&query.body) {
            self.0 = Some(what);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        if !matches!(stmt, Statement::Query(_)) {
            self.0 = Some(statement_kind(stmt));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn writes(body: &SetExpr) -> Option<String> {
    match body {
        SetExpr::Select(s) if s.into.is_some() => Some("SELECT INTO".into()),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) | SetExpr::Query(_) => None,
        SetExpr::SetOperation { left, right, .. } => writes(left).or_else(|| writes(right)),
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            Some(statement_kind(s))
        }
        #[allow(unreachable_patterns)]
        _ => Some("an unsupported query form".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_read_only_queries() {
        for sql in [
            "SELECT 1",
            "select count(*) from t;",
            "SELECT a, avg(b) FROM t WHERE c > 3 GROUP BY a HAVING count(*) > 1 ORDER BY 2 DESC LIMIT 5",
            "WITH x AS (SELECT * FROM t) SELECT * FROM x",
            "SELECT * FROM t UNION ALL SELECT * FROM u",
        ] {
            Select::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("DELETE FROM t", "DELETE"),
            ("drop table t", "DROP TABLE"),
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("PRAGMA journal_mode = 1", "PRAGMA"),
            ("ATTACH DATABASE 'x' AS y", "ATTACH"),
            ("CREATE TABLE x (a int)", "CREATE TABLE"),
        ];
        for (sql, kind) in cases {
            match Select::parse(sql) {
                Err(SqlError::NotSelect(k)) => assert_eq!(k, kind, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
        assert_eq!(
            Select::parse("SELECT 1; DELETE FROM t").unwrap_err(),
            SqlError::NotOneStatement(2)
        );
        assert_eq!(Select::parse("").unwrap_err(), SqlError::NotOneStatement(0));
        assert!(matches!(Select::parse("SELEC 1"), Err(SqlError::Syntax(_))));
        let deep = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(Select::parse(&deep), Err(SqlError::Syntax(_))));
        let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_LEN));
        assert!(matches!(Select::parse(&long), Err(SqlError::TooLong(_))));
    }

    #[test]
    fn lists_tables() {
        let s = Select::parse("SELECT * FROM a JOIN B ON a.x = B.x WHERE y IN (SELECT y FROM c)")
            .unwrap();
        assert_eq!(s.tables(), vec!["a", "b", "c"]);
    }

    #[test]
    fn normalizes_timestamp_literals_only_against_timestamp_columns() {
        let mut s = Select::parse(
            "SELECT * FROM t WHERE ts >= '2024-01-01T02:00:00+02:00' AND t.ts < '2024-01-02' \
             AND name = '2024-01-01T00:00:00Z' AND ts BETWEEN '2024-01-01' AND '2024-01-01T01:00Z' \
             AND ts IN ('2024-01-01 00:00:00Z')",
        )
        .unwrap();
        s.normalize_timestamps(|c| c == "ts");
        assert_eq!(
            s.to_sql(),
            "SELECT * FROM t WHERE ts >= '2024-01-01 00:00:00.000000' \
             AND t.ts < '2024-01-02 00:00:00.000000' AND name = '2024-01-01T00:00:00Z' \
             AND ts BETWEEN '2024-01-01 00:00:00.000000' AND '2024-01-01 01:00:00.000000' \
             AND ts IN ('2024-01-01 00:00:00.000000')"
        );
    }
}

#[cfg(test)]
mod cast_tests {
    use super::*;

    #[test]
    fn projection_casts_come_off() {
        let mut s =
            Select::parse("SELECT ts::ljust(19), v::float(3), max(v)::int AS m, d::str, n FROM t")
                .unwrap();
        let casts = s.take_casts();
        assert_eq!(
            casts,
            vec![
                Some(OutputCast::Ljust(19)),
                Some(OutputCast::Float(Some(3))),
                Some(OutputCast::Int),
                Some(OutputCast::Str),
                None
            ]
        );
        assert_eq!(s.to_sql(), "SELECT ts, v, max(v) AS m, d, n FROM t");
    }

    #[test]
    fn increments_makes_no_column_so_no_cast_entry() {
        let mut s = Select::parse(
            "SELECT increments(day, 1, timestamp), min(timestamp)::ljust(19) AS t0, avg(v)::float(3) AS a FROM t",
        )
        .unwrap();
        assert_eq!(
            s.take_casts(),
            vec![
                Some(OutputCast::Ljust(19)),
                Some(OutputCast::Float(Some(3)))
            ]
        );
    }
}
