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

/// The type EdgeLake would declare for each user column (what `get
/// columns` and the `table` policy show): SQLite's own declaration keeps
/// tarn's affinity, so EdgeLake's name is kept beside it.
pub(super) const COLUMNS_DDL: &str = "CREATE TABLE IF NOT EXISTS tarn_columns (
        tbl TEXT NOT NULL,
        col TEXT NOT NULL,
        decl TEXT NOT NULL,
        PRIMARY KEY (tbl, col)
    ) WITHOUT ROWID;";

/// Records EdgeLake's declared type of the columns a batch adds, from that
/// batch's values (in the transaction that adds them).
pub(super) fn record_declared(
    conn: &Connection,
    table: &str,
    new: &[(String, ColType)],
    rows: &Rows,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO tarn_columns (tbl, col, decl) VALUES (?1, ?2, ?3)",
    )?;
    for (c, t) in new {
        let decl = match rows.columns.iter().position(|x| x == c) {
            Some(i) => edgelake_decl(*t, rows.rows.iter().map(|r| &r[i])),
            None => t.edgelake_name().to_owned(),
        };
        stmt.execute(rusqlite::params![table, c, decl])?;
    }
    Ok(())
}

/// The declared types recorded for `table`'s columns.
pub(super) fn load_declared(
    conn: &Connection,
    table: &str,
) -> rusqlite::Result<HashMap<String, String>> {
    conn.prepare_cached("SELECT col, decl FROM tarn_columns WHERE tbl = ?1")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// EdgeLake's reading of one value (its `get_column_type_by_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decl {
    Char(usize),
    Varchar,
    Uuid,
    Int,
    BigInt,
    Decimal,
    Float,
    Boolean,
    Timestamp,
}

impl Decl {
    fn of(ty: ColType, v: &Val) -> Option<Decl> {
        Some(match (ty, v) {
            (_, Val::Null) => return None,
            (ColType::Boolean, _) => Decl::Boolean,
            (ColType::Timestamp, _) => Decl::Timestamp,
            // EdgeLake takes integers near 2^31 for big ones.
            (ColType::Integer, Val::Int(i)) if i.unsigned_abs() > 0x5F5_E0FF => Decl::BigInt,
            (ColType::Integer, _) => Decl::Int,
            (ColType::Float, Val::Float(f))
                if *f != 0.0 && (1..=5).contains(&py_fraction_len(*f)) =>
            {
                Decl::Decimal
            }
            (ColType::Float, _) => Decl::Float,
            (ColType::Text, Val::Text(t)) if t.is_empty() => Decl::Varchar,
            (ColType::Text, Val::Text(t)) if is_uuid(t) => Decl::Uuid,
            (ColType::Text, Val::Text(t)) if t.chars().count() <= 8 => {
                Decl::Char(t.chars().count())
            }
            (ColType::Text, _) => Decl::Varchar,
        })
    }

    /// Two readings of one column made one (EdgeLake's `resolve_data_type`).
    fn resolve(a: Decl, b: Decl) -> Decl {
        use Decl::*;
        match (a, b) {
            _ if a == b => a,
            (Char(x), Char(y)) => Char(x.max(y)),
            (Char(_), Varchar) | (Varchar, Char(_)) => Varchar,
            (Char(_), _) | (_, Char(_)) => Char(32),
            (Decimal, Int) | (Int, Decimal) => Decimal,
            (Float, _) | (_, Float) => Float,
            (BigInt, Int | Decimal) | (Int | Decimal, BigInt) => BigInt,
            _ => Varchar,
        }
    }

    fn name(self) -> String {
        match self {
            Decl::Char(n) => format!("char({n})"),
            Decl::Varchar => "varchar".into(),
            Decl::Uuid => "uuid".into(),
            Decl::Int => "int".into(),
            Decl::BigInt => "bigint".into(),
            Decl::Decimal => "decimal".into(),
            Decl::Float => "float".into(),
            Decl::Boolean => "boolean".into(),
            Decl::Timestamp => "timestamp".into(),
        }
    }
}

/// The type EdgeLake declares for a column made from `values`: `int` or
/// `bigint`; `decimal` for floats written with 1 to 5 decimals, `float`
/// otherwise; `boolean`; `timestamp`; for text `uuid`, `char(n)` for values
/// of at most 8 characters, `varchar` otherwise. A column of nulls only is
/// named after tarn's type.
pub fn edgelake_decl<'a>(ty: ColType, values: impl Iterator<Item = &'a Val>) -> String {
    values
        .filter_map(|v| Decl::of(ty, v))
        .reduce(Decl::resolve)
        .map_or_else(|| ty.edgelake_name().to_owned(), Decl::name)
}

/// How many characters follow the last `.` of Python's `str(f)` (EdgeLake
/// counts them to tell `decimal` from `float`): the shortest round-trip
/// digits, in exponent form outside 1e-4..1e16.
fn py_fraction_len(f: f64) -> usize {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits = mantissa.replace('.', "").len() as i32;
    if (-4..16).contains(&exp) {
        (digits - 1 - exp).max(1) as usize
    } else if digits == 1 {
        // "1e-05": no '.', the whole text counts.
        format!("1e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()).len()
    } else {
        // "1.25e-07": the digits after the point, and the exponent.
        (digits - 1) as usize + 2 + format!("{:02}", exp.abs()).len()
    }
}

fn is_uuid(t: &str) -> bool {
    let b = t.as_bytes();
    let hex = |r: &[u8]| r.iter().all(u8::is_ascii_hexdigit);
    match b.len() {
        32 => hex(b),
        36 => {
            [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
                && hex(&b[..8])
                && hex(&b[9..13])
                && hex(&b[14..18])
                && hex(&b[19..23])
                && hex(&b[24..])
        }
        _ => false,
    }
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
    fn declares_columns_as_edgelake_does() {
        let t = |v: &[&str]| {
            let vals: Vec<Val> = v.iter().map(|s| Val::Text((*s).into())).collect();
            edgelake_decl(ColType::Text, vals.iter())
        };
        // Source: EdgeLake's suggest_create_table.py, and AnyLog's unit
        // tests (monitor_id 'BCT'..'BG10' is char(4), a 21-letter one varchar).
        assert_eq!(t(&["BCT", "BG10", "DF2"]), "char(4)");
        assert_eq!(t(&["true", "false"]), "char(5)");
        assert_eq!(t(&["InconLoadTapChangerAI"]), "varchar");
        assert_eq!(t(&["BCT", "InconLoadTapChangerAI"]), "varchar");
        assert_eq!(t(&["f0bd0832-a81e-11ea-b46d-d4856454f4ba"]), "uuid");
        assert_eq!(
            t(&["f0bd0832-a81e-11ea-b46d-d4856454f4ba", "ab"]),
            "char(32)"
        );
        let f = |v: &[f64]| {
            let vals: Vec<Val> = v.iter().map(|x| Val::Float(*x)).collect();
            edgelake_decl(ColType::Float, vals.iter())
        };
        assert_eq!(f(&[8.491, 431.448, 276.0]), "decimal");
        assert_eq!(f(&[-1.0399999618530273]), "float");
        assert_eq!(f(&[8.491, -1.0399999618530273]), "float");
        assert_eq!(f(&[0.0]), "float");
        assert_eq!(f(&[1e-5]), "decimal");
        assert_eq!(f(&[1.25e-7]), "float");
        assert_eq!(f(&[1.5e20]), "decimal");
        let i = |v: &[i64]| {
            let vals: Vec<Val> = v.iter().map(|x| Val::Int(*x)).collect();
            edgelake_decl(ColType::Integer, vals.iter())
        };
        assert_eq!(i(&[0, 6000, -5]), "int");
        assert_eq!(i(&[1, 1_700_000_000]), "bigint");
        assert_eq!(edgelake_decl(ColType::Text, [Val::Null].iter()), "varchar");
        assert_eq!(
            edgelake_decl(ColType::Boolean, [Val::Bool(true)].iter()),
            "boolean"
        );
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
