//! Tables' columns and types: inference for new columns, coercion of
//! values into existing ones, and the SQL that creates and extends tables.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use super::names::{MAX_COLUMNS, SYSTEM_COLUMNS};
use super::{ColType, Rows, StoreError, Val, ValKind};

/// The user columns of one table, in order, with their types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableSchema {
    pub columns: Vec<(String, ColType)>,
}

/// Columns a batch adds to its table.
pub type NewColumns = Vec<(String, ColType)>;

impl TableSchema {
    pub fn get(&self, name: &str) -> Option<ColType> {
        self.columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, t)| *t)
    }

    /// Decides each batch column's type (existing columns keep theirs, new
    /// ones are inferred), coerces every value in place, and returns the
    /// columns the batch adds. Nothing is written; an error means the batch
    /// must be refused whole.
    pub fn plan(&self, rows: &mut Rows) -> Result<NewColumns, StoreError> {
        self.plan_hinted(rows, None)
    }

    /// [`TableSchema::plan`] for a replicated batch (`replica` holds the
    /// types it declares): a new column takes its declared type, and a value
    /// that does not fit this member's column is kept as it is rather than
    /// refused. Another member accepted the batch; refusing it here would
    /// leave the members different for good (columns created concurrently
    /// on two members can differ: `1` makes an integer column, `1.5` a
    /// float one).
    pub fn plan_hinted(
        &self,
        rows: &mut Rows,
        replica: Option<&[(String, ColType)]>,
    ) -> Result<NewColumns, StoreError> {
        let hints = replica.unwrap_or_default();
        let mut new = Vec::new();
        let mut types = Vec::with_capacity(rows.columns.len());
        for (i, c) in rows.columns.iter().enumerate() {
            let ty = match self.get(c) {
                Some(t) => t,
                None => {
                    let hinted = hints.iter().find(|(h, _)| h == c).map(|(_, t)| *t);
                    let t = match hinted {
                        Some(t) => t,
                        None => infer(c, rows.rows.iter().map(|r| r[i].kind()))?,
                    };
                    new.push((c.clone(), t));
                    t
                }
            };
            types.push(ty);
        }
        let width = SYSTEM_COLUMNS.len() + self.columns.len() + new.len();
        if width > MAX_COLUMNS {
            return Err(StoreError::TooManyColumns(format!(
                "the table would have {width} columns; at most {MAX_COLUMNS} (tarn's 4 included)"
            )));
        }
        for row in &mut rows.rows {
            for ((v, ty), c) in row.iter_mut().zip(&types).zip(&rows.columns) {
                if let Err(e) = coerce(c, *ty, v)
                    && replica.is_none()
                {
                    return Err(e);
                }
            }
        }
        Ok(new)
    }

    /// This schema with `new` columns appended.
    pub fn extended(&self, new: &[(String, ColType)]) -> TableSchema {
        let mut columns = self.columns.clone();
        columns.extend(new.iter().cloned());
        TableSchema { columns }
    }
}

/// The type a new column gets from its values in one batch: numbers widen to
/// float, timestamps mixed with other text become text; numbers, booleans and
/// text in one new column are refused rather than guessed.
pub fn infer(column: &str, values: impl Iterator<Item = ValKind>) -> Result<ColType, StoreError> {
    let mut ty: Option<ColType> = None;
    for k in values {
        let t = match k {
            ValKind::Null => continue,
            ValKind::Int => ColType::Integer,
            ValKind::Float => ColType::Float,
            ValKind::Bool => ColType::Boolean,
            ValKind::Timestamp => ColType::Timestamp,
            ValKind::Text => ColType::Text,
        };
        ty = Some(match (ty, t) {
            (None, t) => t,
            (Some(a), b) if a == b => a,
            (Some(ColType::Integer | ColType::Float), ColType::Integer | ColType::Float) => {
                ColType::Float
            }
            (Some(ColType::Text | ColType::Timestamp), ColType::Text | ColType::Timestamp) => {
                ColType::Text
            }
            (Some(a), b) => {
                return Err(StoreError::TypeMismatch(format!(
                    "column {column:?} gets both {} and {} values in one batch",
                    a.name(),
                    b.name()
                )));
            }
        });
    }
    // A column seen only as null is text until a value says otherwise.
    Ok(ty.unwrap_or(ColType::Text))
}

/// Converts `v` in place into the stored form of a `ty` column, or says why not.
pub fn coerce(column: &str, ty: ColType, v: &mut Val) -> Result<(), StoreError> {
    let converted = match (ty, &*v) {
        (_, Val::Null)
        | (ColType::Integer, Val::Int(_))
        | (ColType::Float, Val::Float(_))
        | (ColType::Text, Val::Text(_))
        | (ColType::Boolean, Val::Bool(_)) => return Ok(()),
        (ColType::Integer, Val::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Some(Val::Int(*f as i64))
        }
        (ColType::Integer, Val::Text(s)) => s.trim().parse::<i64>().ok().map(Val::Int),
        (ColType::Float, Val::Int(i)) => Some(Val::Float(*i as f64)),
        (ColType::Float, Val::Text(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Val::Float),
        (ColType::Text, Val::Int(i)) => Some(Val::Text(i.to_string())),
        (ColType::Text, Val::Float(f)) => Some(Val::Text(f.to_string())),
        (ColType::Text, Val::Bool(b)) => Some(Val::Text(b.to_string())),
        (ColType::Boolean, Val::Int(i @ (0 | 1))) => Some(Val::Bool(*i == 1)),
        (ColType::Boolean, Val::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Val::Bool(true)),
            "false" | "0" => Some(Val::Bool(false)),
            _ => None,
        },
        (ColType::Timestamp, Val::Text(s)) if tarn_query::time::is_storage_form(s) => {
            return Ok(());
        }
        (ColType::Timestamp, Val::Text(s)) => tarn_query::time::parse(s.trim(), true)
            .map(|t| Val::Text(tarn_query::time::format_storage(t))),
        _ => None,
    };
    match converted {
        Some(c) => {
            *v = c;
            Ok(())
        }
        None => Err(StoreError::TypeMismatch(format!(
            "value {} cannot be stored in {} column {column:?}",
            v.describe(),
            ty.name()
        ))),
    }
}

/// Rows per INSERT statement, and SQLite's limit on parameters per statement.
pub(super) const ROWS_PER_INSERT: usize = 256;
pub(super) const MAX_PARAMS: usize = 30_000;

/// A multi-row INSERT of `rows` rows into `table` (system values first).
pub(super) fn insert_sql(table: &str, columns: &[String], rows: usize) -> String {
    // Anonymous parameters, so the text is one tuple repeated: cheap to build
    // for every chunk, and the system values are bound again per row.
    let mut sql = format!("INSERT INTO \"{table}\" (insert_timestamp, tsd_name, tsd_id");
    for c in columns {
        sql.push_str(", \"");
        sql.push_str(c);
        sql.push('"');
    }
    sql.push_str(") VALUES ");
    let mut tuple = "?,".repeat(columns.len() + 3);
    tuple.pop();
    let tuple = format!("({tuple}),");
    sql.push_str(&tuple.repeat(rows));
    sql.pop();
    sql
}

pub(super) fn create_table_sql(table: &str, cols: &[(String, ColType)]) -> String {
    let mut sql = format!(
        "CREATE TABLE \"{table}\" (row_id INTEGER PRIMARY KEY, insert_timestamp TIMESTAMP NOT NULL, \
         tsd_name TEXT NOT NULL, tsd_id INTEGER NOT NULL"
    );
    for (c, t) in cols {
        sql.push_str(&format!(", \"{c}\" {}", t.sql()));
    }
    sql.push_str(");");
    for (c, t) in cols {
        if *t == ColType::Timestamp {
            sql.push_str(&index_sql(table, c));
        }
    }
    sql
}

// Every timestamp column is indexed: time-range scans are the common query.
// Names are quoted everywhere: a valid tarn name may still be an SQL keyword.
// An index's name starts with `tarn_` and holds a `:`, which no table's name
// may, so it never takes a table's name nor another index's.
pub(super) fn index_sql(table: &str, column: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"tarn_idx:{table}:{column}\" ON \"{table}\" (\"{column}\");"
    )
}

/// The DDL that brings `table` from `schema` to `schema + new`.
pub(super) fn alter_sql(table: &str, schema: &TableSchema, new: &[(String, ColType)]) -> String {
    if schema.columns.is_empty() {
        return create_table_sql(table, new);
    }
    let mut sql = String::new();
    for (c, t) in new {
        sql.push_str(&format!(
            "ALTER TABLE \"{table}\" ADD COLUMN \"{c}\" {};",
            t.sql()
        ));
        if *t == ColType::Timestamp {
            sql.push_str(&index_sql(table, c));
        }
    }
    sql
}

/// Every table's user columns as the database declares them.
pub(super) fn load_schemas(
    conn: &Connection,
) -> rusqlite::Result<HashMap<String, Arc<TableSchema>>> {
    let mut out = HashMap::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'tarn\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in tables {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{t}\")"))?;
        let columns = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
            .filter_map(|c| c.ok())
            .filter(|(c, _)| !SYSTEM_COLUMNS.contains(&c.as_str()))
            .map(|(c, decl)| (c, ColType::from_sql(&decl).unwrap_or(ColType::Text)))
            .collect();
        out.insert(t, Arc::new(TableSchema { columns }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_and_widens_new_columns() {
        use ValKind::*;
        assert_eq!(
            infer("c", [Int, Null].into_iter()).unwrap(),
            ColType::Integer
        );
        assert_eq!(
            infer("c", [Int, Float].into_iter()).unwrap(),
            ColType::Float
        );
        assert_eq!(
            infer("c", [Timestamp, Text].into_iter()).unwrap(),
            ColType::Text
        );
        assert_eq!(infer("c", [Null].into_iter()).unwrap(), ColType::Text);
        assert!(infer("c", [Int, Text].into_iter()).is_err());
        assert!(infer("c", [Bool, Int].into_iter()).is_err());
    }

    #[test]
    fn coerces_or_refuses() {
        let mut v = Val::Float(3.0);
        coerce("c", ColType::Integer, &mut v).unwrap();
        assert_eq!(v, Val::Int(3));
        assert!(coerce("c", ColType::Integer, &mut Val::Float(3.5)).is_err());
        assert!(coerce("c", ColType::Float, &mut Val::Text("warm".into())).is_err());
        assert!(coerce("c", ColType::Boolean, &mut Val::Int(2)).is_err());
        let mut t = Val::Text("2024-01-01T01:00:00+01:00".into());
        coerce("c", ColType::Timestamp, &mut t).unwrap();
        assert_eq!(t, Val::Text("2024-01-01 00:00:00.000000".into()));
        assert!(coerce("c", ColType::Timestamp, &mut Val::Int(5)).is_err());
    }
}
