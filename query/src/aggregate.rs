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
    Sum,
    Avg,
    Min,
    Max,
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
    /// The final query over `system_query(_k0.., _a0..)`.
    pub final_sql: String,
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
        if s.distinct.is_some()
            || s.top.is_some()
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
        if keys.is_empty() || !modifiers.is_empty() {
            return None;
        }
        let aliases: Vec<String> = s
            .projection
            .iter()
            .filter_map(|p| match p {
                SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        // GROUP BY 1 or GROUP BY <alias>: leave to SQLite.
        for k in keys {
            match k {
                Expr::Value(_) => return None,
                Expr::Identifier(id) if aliases.contains(&id.value.to_ascii_lowercase()) => {
                    return None;
                }
                _ => {}
            }
        }
        let mut sub = Substitute {
            keys: keys.clone(),
            args: Vec::new(),
            aggs: Vec::new(),
            agg_exprs: Vec::new(),
            allowed: Vec::new(),
            ok: true,
        };
        let mut items = Vec::new();
        for p in &s.projection {
            let (expr, name) = match p {
                SelectItem::UnnamedExpr(e) => (e.clone(), output_name(e)),
                SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), alias.value.clone()),
                _ => return None,
            };
            let mut e = expr;
            let _ = e.visit(&mut sub);
            items.push(format!("{e} AS {}", quote(&name)));
        }
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
        }
        if let Some(l) = &q.limit_clause {
            tail.push_str(&format!("{l}"));
        }
        if !sub.ok || sub.aggs.is_empty() {
            return None;
        }
        let mut scan_cols: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        scan_cols.extend(sub.args.iter().map(|a| a.to_string()));
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
            "SELECT {} FROM system_query{having}{tail}",
            items.join(", ")
        );
        Some(GroupedAggregate {
            table,
            scan_sql,
            keys: keys.len(),
            aggs: sub.aggs,
            final_sql,
        })
    }
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
    aggs: Vec<Agg>,
    /// The aggregate call each `_a{i}` stands for, to reuse equal calls.
    agg_exprs: Vec<Expr>,
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
    fn aggregate(&mut self, e: &Expr) -> Option<Option<Expr>> {
        let Expr::Function(f) = e else { return None };
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(id)] => id.value.to_ascii_lowercase(),
            _ => return None,
        };
        let FunctionArguments::List(list) = &f.args else {
            return matches!(name.as_str(), "count" | "sum" | "avg" | "min" | "max")
                .then_some(None);
        };
        let kind = match (name.as_str(), list.args.len()) {
            ("count", 1) => AggKind::Count,
            ("sum", 1) => AggKind::Sum,
            ("avg", 1) => AggKind::Avg,
            ("min", 1) => AggKind::Min,
            ("max", 1) => AggKind::Max,
            ("count" | "sum" | "avg", _) => return Some(None),
            (n, _) if OTHER_AGGREGATES.contains(&n) => return Some(None),
            _ => return None,
        };
        if list.duplicate_treatment.is_some()
            || !list.clauses.is_empty()
            || f.filter.is_some()
            || f.over.is_some()
            || f.null_treatment.is_some()
            || !f.within_group.is_empty()
        {
            return Some(None);
        }
        let (kind, arg) = match &list.args[0] {
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if kind == AggKind::Count => {
                (AggKind::CountStar, None)
            }
            FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) => {
                if contains_aggregate(a) {
                    return Some(None);
                }
                let i = match self.args.iter().position(|x| x == a) {
                    Some(i) => i,
                    None => {
                        self.args.push(a.clone());
                        self.args.len() - 1
                    }
                };
                (kind, Some(self.keys.len() + i))
            }
            _ => return Some(None),
        };
        let idx = match self.agg_exprs.iter().position(|x| x == e) {
            Some(i) => i,
            None => {
                self.agg_exprs.push(e.clone());
                self.aggs.push(Agg { kind, arg });
                self.aggs.len() - 1
            }
        };
        Some(Some(Expr::Identifier(Ident::new(format!("_a{idx}")))))
    }
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

fn contains_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::Function(f) = x
            && let [ObjectNamePart::Identifier(id)] = f.name.0.as_slice()
        {
            let n = id.value.to_ascii_lowercase();
            let args = match &f.args {
                FunctionArguments::List(l) => l.args.len(),
                _ => 0,
            };
            if (matches!(n.as_str(), "count" | "sum" | "avg")
                || (matches!(n.as_str(), "min" | "max") && args == 1))
                || OTHER_AGGREGATES.contains(&n.as_str())
            {
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
    fn leaves_the_rest_to_sqlite() {
        for sql in [
            "SELECT count(*) FROM t",
            "SELECT a, count(DISTINCT b) FROM t GROUP BY a",
            "SELECT a, b, count(*) FROM t GROUP BY a",
            "SELECT a, count(*) FROM t JOIN u ON t.x = u.x GROUP BY a",
            "SELECT a, group_concat(b) FROM t GROUP BY a",
            "SELECT a, count(*) FROM t GROUP BY 1",
            "SELECT a AS x, count(*) FROM t GROUP BY x",
            "SELECT a, (SELECT max(b) FROM u) FROM t GROUP BY a",
            "SELECT * FROM t GROUP BY a",
            "SELECT a, sum(b) OVER () FROM t GROUP BY a",
            "SELECT DISTINCT a, count(*) FROM t GROUP BY a",
            "WITH x AS (SELECT * FROM t) SELECT a, count(*) FROM x GROUP BY a",
        ] {
            assert!(plan(sql).is_none(), "{sql} was planned");
        }
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
