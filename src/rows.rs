//! Rows as they arrive: JSON bodies parsed into columns and values, type
//! inference for new columns, and coercion into existing ones.
//!
//! Parsing goes straight from bytes into a column list plus one value vector
//! per row (no map per row), because ingest speed is mostly parse speed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::ApiError;

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

    /// EdgeLake's name for the type (`get columns`).
    pub fn edgelake_name(self) -> &'static str {
        match self {
            ColType::Integer => "integer",
            ColType::Float => "float",
            ColType::Text => "character varying",
            ColType::Boolean => "boolean",
            ColType::Timestamp => "timestamp without time zone",
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

/// Columns every stored row carries besides its own.
pub const SYSTEM_COLUMNS: [&str; 4] = ["row_id", "insert_timestamp", "tsd_name", "tsd_id"];

/// Longest identifier accepted (databases, tables, columns).
pub const MAX_IDENT: usize = 64;

/// Checks a database, table or column name and returns it in lower case.
/// tarn names are `[a-z_][a-z0-9_]*`, like EdgeLake's, so they never need quoting.
pub fn ident(kind: &str, name: &str) -> Result<String, ApiError> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= MAX_IDENT
        && lower
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && lower
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !lower.starts_with("sqlite_")
        && !lower.starts_with("tarn_");
    if ok {
        Ok(lower)
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "{kind} name {name:?} is not a valid identifier: use letters, digits and _ \
                 (not first), at most {MAX_IDENT} characters, not starting with sqlite_ or tarn_"
            ),
        ))
    }
}

/// Parses a body: a JSON array of objects, one object, or NDJSON (one object
/// per line). The whole body is refused if any part of it is malformed.
pub fn parse_body(body: &[u8]) -> Result<Rows, ApiError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let mut acc = Acc::default();
    match start.map(|i| body[i]) {
        None => {
            return Err(ApiError::bad_request(
                "empty_body",
                "the body holds no rows",
            ));
        }
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_slice(body);
            de.deserialize_seq(ArrayVisitor(&mut acc))
                .and_then(|()| de.end())
                .map_err(bad_json)?;
        }
        Some(b'{') => {
            // One object, or several (NDJSON): parse objects until only
            // white space is left.
            let mut de = serde_json::Deserializer::from_slice(body);
            loop {
                RowSeed(&mut acc).deserialize(&mut de).map_err(bad_json)?;
                if de.end().is_ok() {
                    break;
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "malformed_json",
                "expected a JSON object, an array of objects, or one object per line",
            ));
        }
    }
    acc.finish()
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request("malformed_json", format!("malformed JSON: {e}"))
}

#[derive(Default)]
struct Acc {
    columns: Vec<String>,
    index: HashMap<String, usize>,
    rows: Vec<Vec<Val>>,
}

impl Acc {
    /// The column index of `key`; names are case-insensitive (stored lower case).
    fn column(&mut self, key: &str, guess: usize) -> usize {
        // Rows nearly always repeat the previous row's key order.
        if self.columns.get(guess).is_some_and(|c| c == key) {
            return guess;
        }
        let lower = key.to_ascii_lowercase();
        if let Some(i) = self.index.get(&lower) {
            return *i;
        }
        let i = self.columns.len();
        self.columns.push(lower.clone());
        self.index.insert(lower, i);
        i
    }

    fn finish(self) -> Result<Rows, ApiError> {
        if self.rows.is_empty() {
            return Err(ApiError::bad_request(
                "empty_body",
                "the body holds no rows",
            ));
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let name = ident("column", c)?;
            if SYSTEM_COLUMNS.contains(&name.as_str()) {
                return Err(ApiError::bad_request(
                    "invalid_name",
                    format!("column {c:?} is set by tarn and cannot be sent"),
                ));
            }
            columns.push(name);
        }
        let width = columns.len();
        let mut rows = self.rows;
        for r in &mut rows {
            r.resize(width, Val::Null);
        }
        Ok(Rows { columns, rows })
    }
}

struct ArrayVisitor<'a>(&'a mut Acc);

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(RowSeed(self.0))?.is_some() {}
        Ok(())
    }
}

struct RowSeed<'a>(&'a mut Acc);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object (one row)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let acc = self.0;
        let mut row: Vec<Val> = Vec::with_capacity(acc.columns.len());
        let mut seen = 0usize;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let i = acc.column(&key.0, seen);
            seen += 1;
            let v = map.next_value::<JsonVal>()?.0;
            if row.len() <= i {
                row.resize(i + 1, Val::Null);
            } else if row[i] != Val::Null {
                return Err(de::Error::custom(format!(
                    "key {:?} appears twice in one row (names are case-insensitive)",
                    key.0
                )));
            }
            row[i] = v;
        }
        if seen == 0 {
            return Err(de::Error::custom("a row has no keys"));
        }
        acc.rows.push(row);
        Ok(())
    }
}

struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct JsonVal(Val);

impl<'de> de::Deserialize<'de> for JsonVal {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonVal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Null))
            }
            fn visit_bool<E>(self, v: bool) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonVal, E> {
                i64::try_from(v)
                    .map(|v| JsonVal(Val::Int(v)))
                    .map_err(|_| E::custom(format!("integer {v} is out of the 64-bit range")))
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Float(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Text(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<JsonVal, E> {
                Ok(JsonVal(Val::Text(v)))
            }
            // Nested objects and arrays are kept as JSON text.
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<JsonVal, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(JsonVal(Val::Text(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JsonVal, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(JsonVal(Val::Text(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

use serde::Deserialize as _;

/// The type a new column gets from its values in one batch: numbers widen to
/// float, timestamps mixed with other text become text; numbers, booleans and
/// text in one new column are refused rather than guessed.
pub fn infer(column: &str, values: impl Iterator<Item = ValKind>) -> Result<ColType, ApiError> {
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
                return Err(ApiError::bad_request(
                    "type_mismatch",
                    format!(
                        "column {column:?} gets both {} and {} values in one batch",
                        a.name(),
                        b.name()
                    ),
                ));
            }
        });
    }
    // A column seen only as null is text until a value says otherwise.
    Ok(ty.unwrap_or(ColType::Text))
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

    fn describe(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Text(s) if s.len() > 40 => format!("{:?}...", &s[..s.floor_char_boundary(40)]),
            Val::Text(s) => format!("{s:?}"),
        }
    }
}

/// Converts `v` in place into the stored form of a `ty` column, or says why not.
pub fn coerce(column: &str, ty: ColType, v: &mut Val) -> Result<(), ApiError> {
    let ok = match (ty, &*v) {
        (_, Val::Null) => true,
        (ColType::Integer, Val::Int(_)) => true,
        (ColType::Integer, Val::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            *v = Val::Int(*f as i64);
            true
        }
        (ColType::Integer, Val::Text(s)) => match s.trim().parse::<i64>() {
            Ok(i) => {
                *v = Val::Int(i);
                true
            }
            Err(_) => false,
        },
        (ColType::Float, Val::Float(_)) => true,
        (ColType::Float, Val::Int(i)) => {
            *v = Val::Float(*i as f64);
            true
        }
        (ColType::Float, Val::Text(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => {
                *v = Val::Float(f);
                true
            }
            _ => false,
        },
        (ColType::Text, Val::Text(_)) => true,
        (ColType::Text, Val::Int(i)) => {
            *v = Val::Text(i.to_string());
            true
        }
        (ColType::Text, Val::Float(f)) => {
            *v = Val::Text(f.to_string());
            true
        }
        (ColType::Text, Val::Bool(b)) => {
            *v = Val::Text(b.to_string());
            true
        }
        (ColType::Boolean, Val::Bool(_)) => true,
        (ColType::Boolean, Val::Int(i @ (0 | 1))) => {
            *v = Val::Bool(*i == 1);
            true
        }
        (ColType::Boolean, Val::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => {
                *v = Val::Bool(true);
                true
            }
            "false" | "0" => {
                *v = Val::Bool(false);
                true
            }
            _ => false,
        },
        (ColType::Timestamp, Val::Text(s)) => {
            if tarn_query::time::is_storage_form(s) {
                true
            } else {
                match tarn_query::time::parse(s.trim(), true) {
                    Some(t) => {
                        *v = Val::Text(tarn_query::time::format_storage(t));
                        true
                    }
                    None => false,
                }
            }
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "type_mismatch",
            format!(
                "value {} cannot be stored in {} column {column:?}",
                v.describe(),
                ty.name()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(body: &str) -> Rows {
        parse_body(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"))
    }

    #[test]
    fn parses_array_object_and_ndjson_alike() {
        let want = Rows {
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec![Val::Int(1), Val::Text("x".into())],
                vec![Val::Float(2.5), Val::Null],
            ],
        };
        assert_eq!(rows(r#"[{"a":1,"b":"x"},{"A":2.5}]"#), want);
        assert_eq!(rows("{\"a\":1,\"b\":\"x\"}\n\n{\"a\":2.5}\n"), want);
        assert_eq!(rows("{\"a\":1,\"b\":\"x\"}{\"a\":2.5}").rows.len(), 2);
        assert_eq!(
            rows(r#"{"a": {"n": [1, 2]}}"#).rows[0][0],
            Val::Text(r#"{"n":[1,2]}"#.into())
        );
        assert_eq!(
            rows("{\"b\":1,\"a\":2}\n{\"a\":3,\"b\":4}").rows[1],
            [Val::Int(4), Val::Int(3)]
        );
    }

    #[test]
    fn refuses_malformed_bodies_whole() {
        for body in [
            "",
            "  ",
            "[",
            "[{\"a\":1},]",
            "{\"a\":1}\n{\"a\":",
            "{\"a\":1}\nnot json",
            "[1, 2]",
            "42",
            "[]",
            "{}",
            r#"{"a":1,"a":2}"#,
            r#"{"a-b":1}"#,
            r#"{"row_id":1}"#,
            r#"{"A":1,"a":2}"#,
            r#"{"x":18446744073709551615}"#,
        ] {
            assert!(
                parse_body(body.as_bytes()).is_err(),
                "{body:?} was accepted"
            );
        }
    }

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

    #[test]
    fn identifiers() {
        assert_eq!(ident("table", "Temp_1").unwrap(), "temp_1");
        for bad in [
            "",
            "1abc",
            "a b",
            "a;drop",
            "sqlite_master",
            "tarn_x",
            &"x".repeat(65),
        ] {
            assert!(ident("table", bad).is_err(), "{bad}");
        }
    }
}
