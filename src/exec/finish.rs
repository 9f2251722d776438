//! The query node's last step: the operators' parts merged (group states)
//! or loaded (rows) into an in-memory SQLite table, and the plan's final
//! statement run over it. Nothing here touches the node's store.

use rusqlite::Connection;
use tarn_query::{GroupedAggregate, Plan, Shape};

use super::{ExecError, Part};
use crate::store::{
    ColType, GroupKey, PartialGroups, QueryLimits, QueryResult, State, StoreError, Val, merge,
    run_sql,
};

/// Merges the parts and runs the final step.
pub(super) fn finish(
    plan: &Plan,
    parts: Vec<Part>,
    limits: QueryLimits,
) -> Result<QueryResult, ExecError> {
    match &plan.shape {
        Shape::Groups(agg) => {
            let mut all = PartialGroups::default();
            for p in parts {
                if let Part::Groups(g) = p {
                    if all.key_types.is_empty() {
                        all.key_types = g.key_types;
                    }
                    merge(&mut all.groups, g.groups);
                }
            }
            finish_groups(agg, all, limits)
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
            finish_rows(&plan.table, &columns, &loaded, final_sql, limits)
        }
    }
}

/// The final step of a grouped aggregate: every group's values, written to
/// an in-memory SQLite table `system_query(_k0.., _a0..)`, and the plan's
/// final query over it. A global aggregate over no rows still has its one
/// row (`count(*)` is 0), as in SQLite.
pub(super) fn finish_groups(
    plan: &GroupedAggregate,
    part: PartialGroups,
    limits: QueryLimits,
) -> Result<QueryResult, ExecError> {
    let PartialGroups {
        key_types,
        mut groups,
    } = part;
    if plan.keys == 0 && plan.lead == 0 && groups.is_empty() {
        groups.insert(
            GroupKey(Vec::new()),
            plan.aggs.iter().map(|a| State::new(a.kind)).collect(),
        );
    }
    if let (Some(direct), 0) = (&plan.direct, plan.lead) {
        return direct_row(plan, direct, groups);
    }
    let mut cols = Vec::new();
    for i in 0..plan.lead {
        cols.push(format!("_x{i}"));
    }
    for i in 0..plan.keys {
        let d = key_types
            .get(plan.lead + i)
            .cloned()
            .flatten()
            .unwrap_or_default();
        cols.push(format!("_k{i} {}", sql_type_name(&d)));
    }
    // Aggregates carry no declared type, as in SQLite's own answer.
    for j in 0..plan.aggs.len() {
        cols.push(format!("_a{j}"));
    }
    // Final values first: an error (integer overflow) refuses the query.
    let mut finished = Vec::with_capacity(groups.len());
    for (key, states) in groups {
        let vals = states
            .iter()
            .map(|s| s.finish())
            .collect::<Result<Vec<Val>, _>>()
            .map_err(|e| StoreError::Sql(e.to_owned()))?;
        finished.push((key, vals));
    }
    let mut mem = memory()?;
    let fill = |mem: &mut Connection| -> rusqlite::Result<()> {
        let tx = mem.transaction()?;
        tx.execute_batch(&format!("CREATE TABLE system_query ({})", cols.join(", ")))?;
        {
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let mut ins = tx.prepare(&format!(
                "INSERT INTO system_query VALUES ({})",
                marks.join(", ")
            ))?;
            for (key, vals) in &finished {
                for (i, k) in key.0.iter().enumerate() {
                    ins.raw_bind_parameter(i + 1, k.to_sql_value())?;
                }
                for (j, v) in vals.iter().enumerate() {
                    ins.raw_bind_parameter(plan.lead + plan.keys + j + 1, v)?;
                }
                ins.raw_execute()?;
            }
        }
        tx.commit()
    };
    fill(&mut mem).map_err(|e| ExecError::internal("filling system_query", e))?;
    Ok(run_sql(&mut mem, &plan.final_sql, limits)?)
}

/// The one row of a global aggregate whose answer only picks aggregates:
/// what `final_sql` over `system_query` gives, made without SQLite (as
/// SQLite stores them, a boolean is an integer and a NaN a NULL).
fn direct_row(
    plan: &GroupedAggregate,
    direct: &[(usize, String)],
    groups: crate::store::Groups,
) -> Result<QueryResult, ExecError> {
    let states = match groups.into_iter().next() {
        Some((_, s)) => s,
        None => plan.aggs.iter().map(|a| State::new(a.kind)).collect(),
    };
    let vals = states
        .iter()
        .map(|s| {
            s.finish().map(|v| match v {
                Val::Bool(b) => Val::Int(i64::from(b)),
                Val::Float(f) if f.is_nan() => Val::Null,
                v => v,
            })
        })
        .collect::<Result<Vec<Val>, _>>()
        .map_err(|e| StoreError::Sql(e.to_owned()))?;
    Ok(QueryResult {
        columns: direct.iter().map(|(_, n)| n.clone()).collect(),
        types: vec![None; direct.len()],
        rows: vec![
            direct
                .iter()
                .map(|(i, _)| vals.get(*i).cloned().unwrap_or(Val::Null))
                .collect(),
        ],
    })
}

fn memory() -> Result<Connection, ExecError> {
    Connection::open_in_memory().map_err(|e| ExecError::internal("opening system_query", e))
}

/// A declared type from a peer, kept only if it is one tarn writes (it is
/// pasted into a CREATE TABLE).
fn sql_type_name(decl: &str) -> &'static str {
    ColType::from_sql(decl).map_or("", ColType::sql)
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The final step of a query split into rows: the operators' rows, loaded
/// into an in-memory table named like the queried one (columns are the
/// union of theirs, by name), and the final query over it.
fn finish_rows(
    table: &str,
    columns: &[(String, Option<String>)],
    parts: &[(Vec<String>, Vec<Vec<Val>>)],
    final_sql: &str,
    limits: QueryLimits,
) -> Result<QueryResult, ExecError> {
    let mut mem = memory()?;
    let fill = |mem: &mut Connection| -> rusqlite::Result<()> {
        let tx = mem.transaction()?;
        let defs: Vec<String> = columns
            .iter()
            .map(|(c, t)| {
                format!(
                    "{} {}",
                    quoted(c),
                    sql_type_name(t.as_deref().unwrap_or(""))
                )
            })
            .collect();
        tx.execute_batch(&format!(
            "CREATE TABLE {} ({})",
            quoted(table),
            defs.join(", ")
        ))?;
        for (names, rows) in parts {
            if rows.is_empty() {
                continue;
            }
            let cols: Vec<String> = names.iter().map(|c| quoted(c)).collect();
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let mut ins = tx.prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quoted(table),
                cols.join(", "),
                marks.join(", ")
            ))?;
            for row in rows {
                for (i, v) in row.iter().enumerate().take(cols.len()) {
                    ins.raw_bind_parameter(i + 1, v)?;
                }
                ins.raw_execute()?;
            }
        }
        tx.commit()
    };
    fill(&mut mem).map_err(|e| ExecError::internal("filling the query table", e))?;
    Ok(run_sql(&mut mem, final_sql, limits)?)
}

/// A result rebuilt from a header and rows (declared types read back).
pub(crate) fn result_of(
    columns: Vec<(String, Option<String>)>,
    rows: Vec<Vec<Val>>,
) -> QueryResult {
    QueryResult {
        types: columns
            .iter()
            .map(|(_, t)| t.as_deref().and_then(ColType::from_sql))
            .collect(),
        columns: columns.into_iter().map(|(n, _)| n).collect(),
        rows,
    }
}

/// Column names with their declared types, as chunks carry them.
pub(crate) fn header(r: &QueryResult) -> Vec<(String, Option<String>)> {
    r.columns
        .iter()
        .zip(&r.types)
        .map(|(c, t)| (c.clone(), t.map(|t| t.sql().to_owned())))
        .collect()
}
