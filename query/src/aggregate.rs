//! Splitting a grouped aggregate into a scan and a final step.
//!
//! `SELECT k, avg(v) FROM t WHERE w GROUP BY k HAVING ... ORDER BY ... LIMIT n`
//! becomes
//! - a **scan** that every shard runs (a `row_id` range of the table, later
//!   an operator): `SELECT k, v FROM t WHERE (w) AND row_id >= ?1 AND row_id < ?2`;
//! - **accumulators** the caller keeps per group key (one per aggregate call);
//! - a **final** query over the merged groups, stored as table
//!   `system_query(_k0.., _a0..)`: `SELECT _k0 AS k, _a0 AS "avg(v)" FROM
//!   system_query WHERE <having> ORDER BY ... LIMIT n`.
//!
//! Only what can be split exactly is planned; everything else returns
//! `None` and runs as one SQLite statement.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectNamePart,
    Query, SelectItem, SetExpr, TableFactor, VisitMut, VisitorMut,
};

use crate::Select;

/// The aggregates tarn splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    CountStar,
    Count,
    /// `count(DISTINCT x)`: the distinct values travel, not a number.
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// `variance`/`var_samp`/`var_pop`, and with `root` `stddev`/`stddev_samp`/`stddev_pop`
    /// (which SQLite lacks): count, mean and squared deviations, merged by
    /// Chan's formula.
    Variance {
        population: bool,
        root: bool,
    },
}

/// One aggregate call: its kind and which scan column feeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agg {
    pub kind: AggKind,
    /// Index into the scan's columns; `None` for `count(*)`.
    pub arg: Option<usize>,
}

/// A grouped aggregate split into scan, accumulators and final query.
#[derive(Debug, Clone)]
pub struct GroupedAggregate {
    /// The table scanned (lower case).
    pub table: String,
    /// The scan, with `?1`/`?2` bounding `row_id` (inclusive, exclusive).
    pub scan_sql: String,
    /// The first `keys` scan columns are the group key.
    pub keys: usize,
    pub aggs: Vec<Agg>,
    /// The final query over `system_query(_x0.., _k0.., _a0..)`.
    pub final_sql: String,
    /// Keys the query node puts before the scan's (EdgeLake's `extend=`:
    /// where the groups came from), as `_x0..` in `system_query`.
    pub lead: usize,
    /// When the final query only picks aggregates of the one global group
    /// (no keys, HAVING, ORDER BY, LIMIT or DISTINCT): the aggregate slot
    /// and the name of each answer column, so the answer can be made
    /// without running `final_sql` (the same row SQLite would give).
    pub direct: Option<Vec<(usize, String)>>,
}

impl GroupedAggregate {
    /// Plans `select` if it is a GROUP BY over one table with only
    /// `count`/`sum`/`avg`/`min`/`max` aggregates (no DISTINCT, FILTER or
    /// window), grouped by plain expressions.
    pub fn plan(select: &Select) -> Option<GroupedAggregate> {
        let sqlparser::ast::Statement::Query(q) = select.statement() else {
            return None;
        };
        if q.with.is_some()
            || q.fetch.is_some()
            || !q.locks.is_empty()
            || !q.pipe_operators.is_empty()
        {
            return None;
        }
        let SetExpr::Select(s) = q.body.as_ref() else {
            return None;
        };
        let distinct = match &s.distinct {
            None => false,
            Some(sqlparser::ast::Distinct::Distinct) => true,
            Some(_) => return None,
        };
        if s.top.is_some()
            || s.into.is_some()
            || s.from.len() != 1
            || !s.from[0].joins.is_empty()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.named_window.is_empty()
            || s.qualify.is_some()
            || !s.sort_by.is_empty()
        {
            return None;
        }
        let TableFactor::Table {
            name, args: None, ..
        } = &s.from[0].relation
        else {
            return None;
        };
        let table = match name.0.last()? {
            ObjectNamePart::Identifier(id) => id.value.to_ascii_lowercase(),
            _ => return None,
        };
        let GroupByExpr::Expressions(keys, modifiers) = &s.group_by else {
            return None;
        };
        if !modifiers.is_empty() {
            return None;
        }
        let aliases = projection_aliases(s);
        // GROUP BY 2 and GROUP BY <alias> name a projection's expression.
        let mut resolved = Vec::with_capacity(keys.len());
        for k in keys {
            resolved.push(match k {
                Expr::Value(v) => {
                    let sqlparser::ast::Value::Number(n, _) = &v.value else {
                        return None;
                    };
                    let i: usize = n.parse().ok()?;
                    match s.projection.get(i.checked_sub(1)?)? {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                            e.clone()
                        }
                        _ => return None,
                    }
                }
                Expr::Identifier(id) if aliases.contains(&id.value.to_ascii_lowercase()) => {
                    let name = id.value.to_ascii_lowercase();
                    s.projection.iter().find_map(|p| match p {
                        SelectItem::ExprWithAlias { expr, alias }
                            if alias.value.to_ascii_lowercase() == name =>
                        {
                            Some(expr.clone())
                        }
                        _ => None,
                    })?
                }
                other => other.clone(),
            });
        }
        if resolved.iter().any(contains_aggregate) {
            return None;
        }
        let keys = &resolved;
        let mut sub = Substitute {
            keys: keys.clone(),
            args: Vec::new(),
            aggs: Vec::new(),
            allowed: Vec::new(),
            ok: true,
        };
        let mut items = Vec::new();
        let mut picks = Vec::new();
        for p in &s.projection {
            let (expr, name) = match p {
                SelectItem::UnnamedExpr(e) => (e.clone(), output_name(e)),
                SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), alias.value.clone()),
                _ => return None,
            };
            let mut e = expr;
            let _ = e.visit(&mut sub);
            items.push(format!("{e} AS {}", quote(&name)));
            let slot = match &e {
                Expr::Identifier(id) => id.value.strip_prefix("_a").and_then(|n| n.parse().ok()),
                _ => None,
            };
            picks.push(slot.map(|i: usize| (i, name)));
        }
        let direct = (keys.is_empty()
            && !distinct
            && s.having.is_none()
            && q.order_by.is_none()
            && q.limit_clause.is_none())
        .then(|| picks.into_iter().collect::<Option<Vec<_>>>())
        .flatten();
        sub.allowed = aliases;
        let having = match &s.having {
            Some(h) => {
                let mut h = h.clone();
                let _ = h.visit(&mut sub);
                format!(" WHERE {h}")
            }
            None => String::new(),
        };
        let mut tail = String::new();
        if let Some(ob) = &q.order_by {
            let mut ob = ob.clone();
            let _ = ob.visit(&mut sub);
            tail.push_str(&format!(" {ob}"));
        } else if !keys.is_empty() {
            // SQLite answers GROUP BY in the order of the group keys (and
            // EdgeLake passes that on); the merged groups have no order.
            let by: Vec<String> = (0..keys.len()).map(|i| format!("_k{i}")).collect();
            tail.push_str(&format!(" ORDER BY {}", by.join(", ")));
        }
        if let Some(l) = &q.limit_clause {
            tail.push_str(&format!("{l}"));
        }
        if !sub.ok || sub.aggs.is_empty() {
            return None;
        }
        let mut scan_cols: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        scan_cols.extend(sub.args.iter().map(|a| a.to_string()));
        if scan_cols.is_empty() {
            scan_cols.push("1".into());
        }
        let filter = s
            .selection
            .as_ref()
            .map(|w| format!("({w}) AND "))
            .unwrap_or_default();
        let scan_sql = format!(
            "SELECT {} FROM {} WHERE {filter}row_id >= ?1 AND row_id < ?2",
            scan_cols.join(", "),
            s.from[0].relation
        );
        let final_sql = format!(
            "SELECT {}{} FROM system_query{having}{tail}",
            if distinct { "DISTINCT " } else { "" },
            items.join(", ")
        );
        Some(GroupedAggregate {
            table,
            scan_sql,
            keys: keys.len(),
            aggs: sub.aggs,
            final_sql,
            lead: 0,
            direct,
        })
    }
}

/// The projection's aliases, in lower case.
pub(crate) fn projection_aliases(s: &sqlparser::ast::Select) -> Vec<String> {
    s.projection
        .iter()
        .filter_map(|p| match p {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// SQLite's name for an unaliased result column: a column's own name, or
/// the expression's text.
fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct Substitute {
    keys: Vec<Expr>,
    /// Distinct aggregate arguments, in scan order after the keys.
    args: Vec<Expr>,
    /// What each `_a{i}` stands for; equal calls share one slot.
    aggs: Vec<Agg>,
    /// Names that may stand bare (projection aliases, in HAVING and ORDER BY).
    allowed: Vec<String>,
    ok: bool,
}

const OTHER_AGGREGATES: [&str; 9] = [
    "total",
    "group_concat",
    "string_agg",
    "json_group_array",
    "json_group_object",
    "jsonb_group_array",
    "jsonb_group_object",
    "median",
    "percentile",
];

impl Substitute {
    /// The slot of aggregate `kind` over `arg` (added if new).
    fn slot(&mut self, kind: AggKind, arg: Option<&Expr>) -> Expr {
        let arg = arg.map(|a| match self.args.iter().position(|x| x == a) {
            Some(i) => self.keys.len() + i,
            None => {
                self.args.push(a.clone());
                self.keys.len() + self.args.len() - 1
            }
        });
        let agg = Agg { kind, arg };
        let idx = match self.aggs.iter().position(|x| *x == agg) {
            Some(i) => i,
            None => {
                self.aggs.push(agg);
                self.aggs.len() - 1
            }
        };
        Expr::Identifier(Ident::new(format!("_a{idx}")))
    }

    /// `Some(Some(slot expression))` for an aggregate tarn splits,
    /// `Some(None)` for one it cannot, `None` for anything else.
    fn aggregate(&mut self, e: &Expr) -> Option<Option<Expr>> {
        let Expr::Function(f) = e else { return None };
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(id)] => id.value.to_ascii_lowercase(),
            _ => return None,
        };
        let FunctionArguments::List(list) = &f.args else {
            return is_aggregate_name(&name, 1).then_some(None);
        };
        if !is_aggregate_name(&name, list.args.len()) {
            return None;
        }
        let distinct = match list.duplicate_treatment {
            None | Some(sqlparser::ast::DuplicateTreatment::All) => false,
            Some(sqlparser::ast::DuplicateTreatment::Distinct) => true,
        };
        if list.args.len() != 1
            || !list.clauses.is_empty()
            || f.filter.is_some()
            || f.over.is_some()
            || f.null_treatment.is_some()
            || !f.within_group.is_empty()
        {
            return Some(None);
        }
        let arg = match &list.args[0] {
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" && !distinct => {
                return Some(Some(self.slot(AggKind::CountStar, None)));
            }
            FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) if !contains_aggregate(a) => a.clone(),
            _ => return Some(None),
        };
        let variance = |population, root| AggKind::Variance { population, root };
        let kind = match (name.as_str(), distinct) {
            ("count", true) => AggKind::CountDistinct,
            (_, true) => return Some(None),
            ("count", _) => AggKind::Count,
            ("sum", _) => AggKind::Sum,
            ("avg", _) => AggKind::Avg,
            ("min", _) => AggKind::Min,
            ("max", _) => AggKind::Max,
            ("variance" | "var_samp", _) => variance(false, false),
            ("var_pop", _) => variance(true, false),
            ("stddev" | "stddev_samp", _) => variance(false, true),
            ("stddev_pop", _) => variance(true, true),
            ("range", _) => {
                // EdgeLake's range(x): max(x) - min(x).
                let hi = self.slot(AggKind::Max, Some(&arg));
                let lo = self.slot(AggKind::Min, Some(&arg));
                return Some(Some(Expr::Nested(Box::new(Expr::BinaryOp {
                    left: Box::new(hi),
                    op: sqlparser::ast::BinaryOperator::Minus,
                    right: Box::new(lo),
                }))));
            }
            _ => return Some(None),
        };
        Some(Some(self.slot(kind, Some(&arg))))
    }
}

/// Whether a call of `name` with `args` arguments is an aggregate (SQLite's,
/// or one tarn adds). `min`/`max` with two or more arguments are scalar.
fn is_aggregate_name(name: &str, args: usize) -> bool {
    matches!(
        name,
        "count"
            | "sum"
            | "avg"
            | "range"
            | "variance"
            | "var_samp"
            | "var_pop"
            | "stddev"
            | "stddev_samp"
            | "stddev_pop"
    ) || (matches!(name, "min" | "max") && args == 1)
        || OTHER_AGGREGATES.contains(&name)
}

impl VisitorMut for Substitute {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        // Subqueries in the projection or HAVING: leave to SQLite.
        self.ok = false;
        ControlFlow::Break(())
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some(i) = self.keys.iter().position(|k| k == e) {
            *e = Expr::Identifier(Ident::new(format!("_k{i}")));
            return ControlFlow::Continue(());
        }
        match self.aggregate(e) {
            Some(Some(r)) => *e = r,
            Some(None) => {
                self.ok = false;
                return ControlFlow::Break(());
            }
            None => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        let bare = match e {
            Expr::Identifier(id) => {
                let v = id.value.to_ascii_lowercase();
                !(is_slot(&v) || self.allowed.contains(&v))
            }
            Expr::CompoundIdentifier(_) => true,
            _ => false,
        };
        if bare {
            // A column that is neither grouped nor aggregated.
            self.ok = false;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn is_slot(name: &str) -> bool {
    let rest = name.strip_prefix("_k").or_else(|| name.strip_prefix("_a"));
    rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|c| c.is_ascii_digit()))
}

/// Whether `e` calls an aggregate anywhere.
pub(crate) fn contains_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::Function(f) = x
            && let [ObjectNamePart::Identifier(id)] = f.name.0.as_slice()
        {
            let args = match &f.args {
                FunctionArguments::List(l) => l.args.len(),
                _ => 0,
            };
            if f.over.is_some() || is_aggregate_name(&id.value.to_ascii_lowercase(), args) {
                found = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> Option<GroupedAggregate> {
        GroupedAggregate::plan(&Select::parse(sql).unwrap())
    }

    #[test]
    fn splits_grouped_aggregates() {
        let p = plan(
            "SELECT device, avg(temp), count(*) AS n, max(temp) - min(temp) AS spread FROM readings \
             WHERE temp > 0 GROUP BY device HAVING count(*) > 2 ORDER BY avg(temp) DESC LIMIT 3",
        )
        .unwrap();
        assert_eq!(p.table, "readings");
        assert_eq!(
            p.scan_sql,
            "SELECT device, temp FROM readings WHERE (temp > 0) AND row_id >= ?1 AND row_id < ?2"
        );
        assert_eq!(p.keys, 1);
        assert_eq!(
            p.aggs,
            vec![
                Agg {
                    kind: AggKind::Avg,
                    arg: Some(1)
                },
                Agg {
                    kind: AggKind::CountStar,
                    arg: None
                },
                Agg {
                    kind: AggKind::Max,
                    arg: Some(1)
                },
                Agg {
                    kind: AggKind::Min,
                    arg: Some(1)
                },
            ]
        );
        assert_eq!(
            p.final_sql,
            "SELECT _k0 AS \"device\", _a0 AS \"avg(temp)\", _a1 AS \"n\", _a2 - _a3 AS \"spread\" \
             FROM system_query WHERE _a1 > 2 ORDER BY _a0 DESC LIMIT 3"
        );
    }

    #[test]
    fn plain_global_aggregates_need_no_final_query() {
        let p = plan("SELECT count(*), avg(v) AS a, count(*) AS again FROM t WHERE v > 0").unwrap();
        assert_eq!(
            p.direct,
            Some(vec![
                (0, "count(*)".to_owned()),
                (1, "a".to_owned()),
                (0, "again".to_owned())
            ])
        );
        for sql in [
            "SELECT k, count(*) FROM t GROUP BY k",
            "SELECT max(v) - min(v) FROM t",
            "SELECT count(*) FROM t HAVING count(*) > 1",
            "SELECT avg(v) FROM t LIMIT 0",
            "SELECT avg(v) FROM t ORDER BY 1",
            "SELECT DISTINCT avg(v) FROM t",
        ] {
            assert_eq!(plan(sql).unwrap().direct, None, "{sql}");
        }
    }

    #[test]
    fn leaves_the_rest_to_sqlite() {
        for sql in [
            "SELECT a FROM t",
            "SELECT a, sum(DISTINCT b) FROM t GROUP BY a",
            "SELECT a, b, count(*) FROM t GROUP BY a",
            "SELECT a, count(*) FROM t JOIN u ON t.x = u.x GROUP BY a",
            "SELECT a, group_concat(b) FROM t GROUP BY a",
            "SELECT a, count(*) FROM t GROUP BY 3",
            "SELECT count(*) AS n FROM t GROUP BY n",
            "SELECT a, (SELECT max(b) FROM u) FROM t GROUP BY a",
            "SELECT * FROM t GROUP BY a",
            "SELECT a, sum(b) OVER () FROM t GROUP BY a",
            "SELECT count(*) FILTER (WHERE a > 1) FROM t",
            "WITH x AS (SELECT * FROM t) SELECT a, count(*) FROM x GROUP BY a",
        ] {
            assert!(plan(sql).is_none(), "{sql} was planned");
        }
    }

    #[test]
    fn global_distinct_positional_and_tarn_aggregates() {
        let p = plan("SELECT count(*), range(v), stddev(v), count(DISTINCT d) FROM t").unwrap();
        assert_eq!(p.keys, 0);
        assert_eq!(
            p.scan_sql,
            "SELECT v, d FROM t WHERE row_id >= ?1 AND row_id < ?2"
        );
        let kinds: Vec<AggKind> = p.aggs.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            vec![
                AggKind::CountStar,
                AggKind::Max,
                AggKind::Min,
                AggKind::Variance {
                    population: false,
                    root: true
                },
                AggKind::CountDistinct
            ]
        );
        assert_eq!(
            p.final_sql,
            "SELECT _a0 AS \"count(*)\", (_a1 - _a2) AS \"range(v)\", _a3 AS \"stddev(v)\", \
             _a4 AS \"count(DISTINCT d)\" FROM system_query"
        );
        let p = plan("SELECT DISTINCT a % 2 AS odd, count(*) FROM t GROUP BY 1").unwrap();
        assert_eq!(
            p.scan_sql,
            "SELECT a % 2 FROM t WHERE row_id >= ?1 AND row_id < ?2"
        );
        assert!(p.final_sql.starts_with("SELECT DISTINCT _k0 AS \"odd\""));
        let p = plan("SELECT a % 2 AS odd, count(*) FROM t GROUP BY odd").unwrap();
        assert_eq!(p.keys, 1);
        assert_eq!(
            p.scan_sql,
            "SELECT a % 2 FROM t WHERE row_id >= ?1 AND row_id < ?2"
        );
        let p = plan("SELECT count(*) FROM t").unwrap();
        assert_eq!(
            p.scan_sql,
            "SELECT 1 FROM t WHERE row_id >= ?1 AND row_id < ?2"
        );
    }

    #[test]
    fn grouped_expressions_and_shared_arguments() {
        let p = plan("SELECT substr(ts, 1, 13) AS hour, sum(v), avg(v) FROM t GROUP BY substr(ts, 1, 13) ORDER BY hour")
            .unwrap();
        assert_eq!(
            p.scan_sql,
            "SELECT SUBSTR(ts, 1, 13), v FROM t WHERE row_id >= ?1 AND row_id < ?2"
        );
        assert_eq!(p.aggs[0].arg, Some(1));
        assert_eq!(p.aggs[1].arg, Some(1));
        assert_eq!(
            p.final_sql,
            "SELECT _k0 AS \"hour\", _a0 AS \"sum(v)\", _a1 AS \"avg(v)\" FROM system_query ORDER BY hour"
        );
    }
}
