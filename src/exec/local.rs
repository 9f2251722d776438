//! A statement on this node's store: the parallel grouped path when it
//! applies (finished here), SQLite otherwise; and an operator's partial
//! query. Blocking.

use tarn_query::Select;

use super::finish::{finish_groups, header};
use super::{ExecError, Part};
use crate::store::{QueryLimits, QueryResult, Storage};

/// Runs a finished statement on `db`.
pub(super) fn run(
    store: &Storage,
    db: &str,
    select: Select,
    limits: QueryLimits,
) -> Result<QueryResult, ExecError> {
    let stmt = store.statement(db, select)?;
    match stmt.grouped() {
        Some(plan) => {
            let part = stmt.scan(&plan, limits)?;
            finish_groups(&plan, part, limits)
        }
        None => Ok(stmt.run(limits)?),
    }
}

/// One partial query on this operator: group states for a groups
/// partial, rows with their header otherwise.
pub(super) fn run_partial(
    store: &Storage,
    db: &str,
    sql: &str,
    groups: bool,
    limits: QueryLimits,
) -> Result<Part, ExecError> {
    let select = Select::parse(sql)?;
    if groups {
        let (_, part) = store.statement(db, select)?.partial_groups(limits)?;
        return Ok(Part::Groups(part));
    }
    let r = run(store, db, select, limits)?;
    Ok(Part::Rows {
        columns: header(&r),
        rows: r.rows,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ingest::parse_body;
    use crate::store::{BatchMeta, Durability, Val, compare, run_sql};

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(
            dir.path(),
            "t",
            "12D3KooWTest",
            Durability::Normal,
            crate::clock::system(),
        )
        .unwrap();
        (dir, s)
    }

    fn limits() -> QueryLimits {
        QueryLimits {
            max_rows: 100_000,
            max_bytes: 1 << 30,
            timeout: Duration::from_secs(60),
        }
    }

    /// The direct SQLite answer, bypassing the grouped-aggregate path.
    fn direct(s: &Storage, db: &str, sql: &str) -> QueryResult {
        let path = s.path_of(db).unwrap();
        let mut conn = rusqlite::Connection::open(path).unwrap();
        run_sql(&mut conn, sql, limits()).unwrap()
    }

    fn sorted(mut r: QueryResult) -> QueryResult {
        r.rows.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| compare(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        r
    }

    fn same(a: &Val, b: &Val) -> bool {
        match (a, b) {
            (Val::Float(x), Val::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => a == b,
        }
    }

    #[test]
    fn grouped_path_matches_sqlite() {
        let (_d, s) = storage();
        let mut seed = 42u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Enough rows for the parallel split, with nulls, negatives and ties.
        for b in 0..30 {
            let mut body = String::from("[");
            for i in 0..5000 {
                let r = next();
                if i > 0 {
                    body.push(',');
                }
                let v = if r % 17 == 0 {
                    "null".to_owned()
                } else {
                    format!("{}", (r % 20_001) as f64 / 7.0 - 1000.0)
                };
                body.push_str(&format!(
                    r#"{{"dev": "d{}", "zone": {}, "v": {v}, "n": {}, "ok": {}, "ts": "2024-01-0{}T0{}:00:00Z"}}"#,
                    r % 13,
                    r % 3,
                    (r >> 8) % 1000,
                    r % 2 == 0,
                    1 + r % 5,
                    r % 10
                ));
            }
            body.push(']');
            let rows = parse_body(body.as_bytes()).unwrap();
            let meta = BatchMeta {
                source: "t".into(),
                hash: format!("b{b}"),
                instructions: String::new(),
            };
            s.write("lab", "m", rows, &meta).unwrap();
        }
        for sql in [
            "SELECT dev, count(*), count(v), sum(v), avg(v), min(v), max(v) FROM m GROUP BY dev",
            "SELECT dev, zone, sum(n), avg(n), min(n), max(n) FROM m WHERE n > 100 GROUP BY dev, zone",
            "SELECT zone, max(v) - min(v) AS spread, count(*) AS c FROM m GROUP BY zone HAVING count(*) > 10 ORDER BY spread DESC, zone LIMIT 2",
            "SELECT ok, count(*), min(ts), max(ts) FROM m GROUP BY ok",
            "SELECT substr(ts, 1, 10) AS day, avg(v) FROM m GROUP BY substr(ts, 1, 10) ORDER BY day",
            "SELECT dev, sum(n) FROM m WHERE dev = 'nobody' GROUP BY dev",
            // Global aggregates (answered without a final query).
            "SELECT count(*), avg(v) FROM m",
            "SELECT max(ok) AS yes, min(ts), sum(n), count(v) AS c, max(v) FROM m WHERE zone = 1",
            "SELECT avg(v), count(*), sum(v), min(n) FROM m WHERE dev = 'nobody'",
        ] {
            let select = tarn_query::Select::parse(sql).unwrap();
            assert!(
                tarn_query::GroupedAggregate::plan(&select).is_some(),
                "{sql} not planned"
            );
            let got = run(&s, "lab", select, limits()).unwrap();
            let want = direct(&s, "lab", sql);
            assert_eq!(got.columns, want.columns, "{sql}");
            assert_eq!(got.types, want.types, "{sql}");
            let (got, want) = if sql.contains("ORDER BY") {
                (got, want)
            } else {
                (sorted(got), sorted(want))
            };
            assert_eq!(got.rows.len(), want.rows.len(), "{sql}");
            for (g, w) in got.rows.iter().zip(&want.rows) {
                assert!(
                    g.iter().zip(w).all(|(a, b)| same(a, b)),
                    "{sql}\n got {g:?}\nwant {w:?}"
                );
            }
        }
    }
}
