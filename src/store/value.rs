//! The data model every layer shares: a value, a column type, a batch of
//! rows. Values bind to SQLite here and nowhere else.

use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};

/// One value of one row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Val {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

/// The column types tarn infers and stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Integer,
    Float,
    Text,
    Boolean,
    Timestamp,
}

impl ColType {
    /// The type declared in SQLite (it also decides the column's affinity).
    pub fn sql(self) -> &'static str {
        match self {
            ColType::Integer => "INTEGER",
            ColType::Float => "FLOAT",
            ColType::Text => "TEXT",
            ColType::Boolean => "BOOLEAN",
            ColType::Timestamp => "TIMESTAMP",
        }
    }

    /// Reads back a declared type written by [`ColType::sql`].
    pub fn from_sql(decl: &str) -> Option<ColType> {
        Some(match decl.to_ascii_uppercase().as_str() {
            "INTEGER" => ColType::Integer,
            "FLOAT" => ColType::Float,
            "TEXT" => ColType::Text,
            "BOOLEAN" => ColType::Boolean,
            "TIMESTAMP" => ColType::Timestamp,
            _ => return None,
        })
    }

    /// The lower-case name used in the native API.
    pub fn name(self) -> &'static str {
        match self {
            ColType::Integer => "integer",
            ColType::Float => "float",
            ColType::Text => "text",
            ColType::Boolean => "boolean",
            ColType::Timestamp => "timestamp",
        }
    }

    /// The type EdgeLake declares for a column it makes from JSON values of
    /// this kind, as `get columns` shows it.
    pub fn edgelake_name(self) -> &'static str {
        match self {
            ColType::Integer => "int",
            ColType::Float => "decimal",
            ColType::Text => "varchar",
            ColType::Boolean => "boolean",
            ColType::Timestamp => "timestamp",
        }
    }
}

/// A batch of rows: one column list and, per row, one value per column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Val>>,
}

impl Rows {
    /// Appends `other`'s rows, adding its new columns (earlier rows get null).
    pub fn append(&mut self, other: Rows) {
        if self.columns == other.columns {
            self.rows.extend(other.rows);
            return;
        }
        let map: Vec<usize> = other
            .columns
            .into_iter()
            .map(|c| match self.columns.iter().position(|x| *x == c) {
                Some(i) => i,
                None => {
                    self.columns.push(c);
                    self.rows.iter_mut().for_each(|r| r.push(Val::Null));
                    self.columns.len() - 1
                }
            })
            .collect();
        let width = self.columns.len();
        for r in other.rows {
            let mut row = vec![Val::Null; width];
            for (v, i) in r.into_iter().zip(&map) {
                row[*i] = v;
            }
            self.rows.push(row);
        }
    }
}

/// What a JSON value looks like, for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValKind {
    Null,
    Int,
    Float,
    Bool,
    Timestamp,
    Text,
}

impl Val {
    pub fn kind(&self) -> ValKind {
        match self {
            Val::Null => ValKind::Null,
            Val::Int(_) => ValKind::Int,
            Val::Float(_) => ValKind::Float,
            Val::Bool(_) => ValKind::Bool,
            Val::Text(s) if tarn_query::time::parse(s, false).is_some() => ValKind::Timestamp,
            Val::Text(_) => ValKind::Text,
        }
    }

    /// A short form for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Text(s) if s.len() > 40 => format!("{:?}...", &s[..s.floor_char_boundary(40)]),
            Val::Text(s) => format!("{s:?}"),
        }
    }

    /// About how many bytes the value takes in memory or on the wire
    /// (what chunk, part and message sizes are counted in).
    pub fn approx_size(&self) -> usize {
        match self {
            Val::Text(t) => t.len() + 4,
            _ => 9,
        }
    }
}

/// A value read from SQLite (blobs read as text, as tarn never writes one).
pub fn to_val(v: ValueRef<'_>) -> Val {
    match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        ValueRef::Real(f) => Val::Float(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Float(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Val::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}
