//! How a message becomes rows, as EdgeLake maps them: for each subscribed
//! topic a database, a table and columns, each a constant or a `bring`
//! path into the message's JSON (`[a][b]`, `[readings][]` for one row per
//! element of an array, literal text between paths to concatenate), typed
//! `str`, `int`, `float`, `bool` or `timestamp`, or `now()`. A topic with
//! no columns keeps every key of the message (tarn's schema inference), and
//! a topic may name `mapping` policies instead. Sans-I/O: a message in,
//! rows or the reason it does not fit out.

use serde_json::{Map, Value};

/// Most rows one message may become.
pub const MAX_ROWS_PER_MESSAGE: usize = 100_000;

/// A constant or a `bring` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Const(String),
    Now,
    Bring(Vec<Part>),
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Const(c) => f.write_str(c),
            Expr::Now => f.write_str("now()"),
            Expr::Bring(parts) => {
                f.write_str("bring ")?;
                for p in parts {
                    match p {
                        Part::Path(keys) => {
                            for k in keys {
                                write!(f, "[{}]", k.as_deref().unwrap_or(""))?;
                            }
                        }
                        Part::Text(t) => f.write_str(t)?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A piece of a `bring` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// `[a][b][]`: keys into the message; `None` is `[]`, one row per element.
    Path(Vec<Option<String>>),
    /// Text between paths, kept as it is.
    Text(String),
}

/// A column's type, as EdgeLake names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Float,
    Bool,
    Timestamp,
}

impl Type {
    /// `str`, `string`, `varchar`, `char(5)`, `int`, `integer`, `float`,
    /// `decimal`, `bool`, `timestamp`, ... (any case).
    pub fn parse(s: &str) -> Result<Type, String> {
        let t = s.trim().to_ascii_lowercase();
        let base = t.split('(').next().unwrap_or("").trim();
        Ok(match base {
            "str" | "string" | "varchar" | "char" | "text" | "character varying" => Type::Str,
            "int" | "integer" | "bigint" | "smallint" | "long" => Type::Int,
            "float" | "decimal" | "double" | "real" | "numeric" | "double precision" => Type::Float,
            "bool" | "boolean" => Type::Bool,
            "timestamp" | "datetime" | "date" | "timestamp without time zone" => Type::Timestamp,
            _ => {
                return Err(format!(
                    "unknown column type {s:?} (expected str, int, float, bool or timestamp)"
                ));
            }
        })
    }
}

/// A column's type: given, or read from the message (`type = "bring [t]"`).
#[derive(Debug, Clone, PartialEq)]
pub enum TypeOf {
    Fixed(Type),
    From(Expr),
}

/// An `if [path] == value` (or `!=`) test.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    path: Vec<Option<String>>,
    equal: bool,
    value: String,
}

/// One mapped column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: TypeOf,
    pub value: Option<Expr>,
    pub optional: bool,
    pub default: Option<Value>,
    pub condition: Option<Condition>,
}

/// How one topic's (or one policy's) messages become rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    pub dbms: Option<Expr>,
    pub table: Option<Expr>,
    pub columns: Vec<Column>,
    /// A key to a list of readings: each element is one row's source.
    pub readings: Option<Vec<Option<String>>>,
    pub condition: Option<Condition>,
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub db: String,
    pub table: String,
    pub rows: Vec<Map<String, Value>>,
}

impl Expr {
    /// `bring [a][b] _ [c]`, `now()`, or a constant (quotes removed).
    pub fn parse(s: &str) -> Result<Expr, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if lower == "now()" {
            return Ok(Expr::Now);
        }
        if let Some(rest) = lower
            .strip_prefix("bring")
            .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace) || r.starts_with('['))
        {
            let rest = &s[s.len() - rest.len()..];
            return Ok(Expr::Bring(parse_parts(rest)?));
        }
        if s.starts_with('[') {
            // A policy's `bring` key holds the paths without the word.
            return Ok(Expr::Bring(parse_parts(s)?));
        }
        Ok(Expr::Const(s.to_owned()))
    }

    /// Whether the expression reads an array element by element.
    fn iterates(&self) -> Option<&[Option<String>]> {
        match self {
            Expr::Bring(parts) => parts.iter().find_map(|p| match p {
                Part::Path(keys) if keys.iter().any(Option::is_none) => Some(&keys[..]),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The value for row `i` of `msg`; `None` when a path is missing.
    fn eval(&self, msg: &Value, i: usize) -> Option<Value> {
        match self {
            Expr::Const(c) => Some(Value::String(c.clone())),
            Expr::Now => Some(Value::String(jiff::Timestamp::now().to_string())),
            Expr::Bring(parts) => {
                if let [Part::Path(keys)] = &parts[..] {
                    return lookup(msg, keys, i).cloned();
                }
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Path(keys) => match lookup(msg, keys, i)? {
                            Value::String(s) => out.push_str(s),
                            Value::Null => return None,
                            v => out.push_str(&v.to_string()),
                        },
                    }
                }
                Some(Value::String(out))
            }
        }
    }
}

/// `[a]['b c'][]x[d]`: paths and the text between them (white space dropped).
fn parse_parts(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut keys: Vec<Option<String>> = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                if !text.is_empty() {
                    if !keys.is_empty() {
                        parts.push(Part::Path(std::mem::take(&mut keys)));
                    }
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                let mut key = String::new();
                let mut quote: Option<char> = None;
                loop {
                    match (chars.next(), quote) {
                        (None, _) => return Err(format!("an unclosed '[' in {s:?}")),
                        (Some(q), Some(open)) if q == open => quote = None,
                        (Some(c), Some(_)) => key.push(c),
                        (Some(q @ ('\'' | '"')), None) => quote = Some(q),
                        (Some(']'), None) => break,
                        (Some(c), None) => key.push(c),
                    }
                }
                let key = key.trim();
                keys.push((!key.is_empty()).then(|| key.to_owned()));
            }
            c if c.is_whitespace() => {
                if !keys.is_empty() && chars.peek() != Some(&'[') {
                    parts.push(Part::Path(std::mem::take(&mut keys)));
                }
            }
            c => {
                if !keys.is_empty() {
                    parts.push(Part::Path(std::mem::take(&mut keys)));
                }
                text.push(c)
            }
        }
    }
    if !keys.is_empty() {
        parts.push(Part::Path(keys));
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    if !parts.iter().any(|p| matches!(p, Part::Path(_))) {
        return Err(format!("bring {s:?} names no [key]"));
    }
    Ok(parts)
}

/// The value at `keys` in `v`, taking element `i` at `[]`.
fn lookup<'a>(v: &'a Value, keys: &[Option<String>], i: usize) -> Option<&'a Value> {
    let mut cur = v;
    for k in keys {
        cur = match (k, cur) {
            (Some(k), Value::Object(m)) => m.get(k)?,
            (Some(k), Value::Array(a)) => a.get(k.parse::<usize>().ok()?)?,
            (None, Value::Array(a)) => a.get(i)?,
            _ => return None,
        };
    }
    Some(cur)
}

impl Condition {
    /// `if [path] == value` or `if [path] != value`.
    pub fn parse(s: &str) -> Result<Condition, String> {
        let bad = || format!("a condition must read: if [key] == value, not {s:?}");
        let body = s.trim();
        let body = body
            .strip_prefix("if ")
            .or_else(|| body.strip_prefix("IF "))
            .ok_or_else(bad)?;
        let (lhs, rhs, equal) = if let Some((l, r)) = body.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = body.split_once("!=") {
            (l, r, false)
        } else {
            return Err(bad());
        };
        let path = match parse_parts(lhs.trim())?.as_slice() {
            [Part::Path(p)] => p.clone(),
            _ => return Err(bad()),
        };
        let value = rhs
            .trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .to_owned();
        Ok(Condition { path, equal, value })
    }

    fn holds(&self, msg: &Value, i: usize) -> bool {
        let v = match lookup(msg, &self.path, i) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => return !self.equal,
            Some(v) => v.to_string(),
        };
        (v == self.value) == self.equal
    }
}

/// A database or table name as EdgeLake keeps it: lower case, spaces as `_`.
pub fn name_of(s: &str) -> String {
    s.trim().to_lowercase().replace(' ', "_")
}

impl Mapping {
    /// Whether this mapping applies to `msg` (its policy's `condition`).
    pub fn applies(&self, msg: &Value) -> bool {
        self.condition.as_ref().is_none_or(|c| c.holds(msg, 0))
    }

    /// The rows of one message.
    pub fn apply(&self, msg: &Value) -> Result<Rows, String> {
        let name = |e: &Option<Expr>, what: &str| -> Result<String, String> {
            let e = e.as_ref().ok_or_else(|| format!("no {what} is mapped"))?;
            match e.eval(msg, 0) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(name_of(&s)),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(format!(
                    "the message holds no {what} name where the mapping says"
                )),
            }
        };
        let db = name(&self.dbms, "dbms")?;
        let table = name(&self.table, "table")?;
        let sources: Vec<&Value> = match &self.readings {
            Some(path) => match lookup(msg, path, 0) {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v @ Value::Object(_)) => vec![v],
                _ => return Err("the message holds no readings where the mapping says".into()),
            },
            None => vec![msg],
        };
        let mut rows = Vec::new();
        for src in sources {
            if self.columns.is_empty() {
                rows.extend(whole(src)?);
            } else {
                self.columns_of(src, &mut rows)?;
            }
            if rows.len() > MAX_ROWS_PER_MESSAGE {
                return Err(format!(
                    "the message makes more than {MAX_ROWS_PER_MESSAGE} rows"
                ));
            }
        }
        if rows.is_empty() {
            return Err("the message makes no rows".into());
        }
        Ok(Rows { db, table, rows })
    }

    /// Rows from the mapped columns of one source: one, or one per element
    /// of the array a `[]` path walks.
    fn columns_of(&self, src: &Value, rows: &mut Vec<Map<String, Value>>) -> Result<(), String> {
        let n = match self
            .columns
            .iter()
            .filter_map(|c| c.value.as_ref().and_then(Expr::iterates))
            .next()
        {
            Some(keys) => {
                let upto = keys.iter().position(Option::is_none).unwrap_or(keys.len());
                match lookup(src, &keys[..upto], 0) {
                    Some(Value::Array(a)) => a.len(),
                    _ => return Err("the message holds no array where a [] path walks".into()),
                }
            }
            None => 1,
        };
        for i in 0..n {
            let mut row = Map::new();
            for c in &self.columns {
                if c.condition.as_ref().is_some_and(|k| !k.holds(src, i)) {
                    continue;
                }
                let v = c.value.as_ref().and_then(|e| e.eval(src, i));
                let v = match v.filter(|v| !v.is_null()).or_else(|| c.default.clone()) {
                    Some(v) => v,
                    None if c.optional || c.condition.is_some() => continue,
                    None => return Err(format!("column {:?}: the message holds no value", c.name)),
                };
                let ty = match &c.ty {
                    TypeOf::Fixed(t) => *t,
                    TypeOf::From(e) => match e.eval(src, i) {
                        Some(Value::String(s)) => Type::parse(&s)?,
                        _ => return Err(format!("column {:?}: the message holds no type", c.name)),
                    },
                };
                match convert(&v, ty) {
                    Some(v) => {
                        row.insert(c.name.clone(), v);
                    }
                    None if c.optional => {}
                    None => {
                        return Err(format!(
                            "column {:?}: {} is not of type {}",
                            c.name,
                            short(&v),
                            type_name(ty)
                        ));
                    }
                }
            }
            if !row.is_empty() {
                rows.push(row);
            }
        }
        Ok(())
    }
}

/// With no columns mapped, the message's own keys (names lower-cased).
fn whole(src: &Value) -> Result<Vec<Map<String, Value>>, String> {
    let lower = |m: &Map<String, Value>| {
        m.iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect::<Map<String, Value>>()
    };
    match src {
        Value::Object(m) => Ok(vec![lower(m)]),
        Value::Array(a) => a
            .iter()
            .map(|v| match v {
                Value::Object(m) => Ok(lower(m)),
                _ => Err("an array of something other than objects".to_owned()),
            })
            .collect(),
        _ => Err("the message is not a JSON object".into()),
    }
}

fn type_name(t: Type) -> &'static str {
    match t {
        Type::Str => "string",
        Type::Int => "integer",
        Type::Float => "float",
        Type::Bool => "boolean",
        Type::Timestamp => "timestamp",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

/// `v` as a column of type `t`; `None` if it is not one.
pub fn convert(v: &Value, t: Type) -> Option<Value> {
    match t {
        Type::Str => Some(match v {
            Value::String(_) => v.clone(),
            other => Value::String(other.to_string()),
        }),
        Type::Int => match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.trunc() as i64)
                })
                .map(Value::from),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>()
                    .ok()
                    .or_else(|| {
                        s.parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())
                            .map(|f| f.trunc() as i64)
                    })
                    .map(Value::from)
            }
            Value::Bool(b) => Some(Value::from(*b as i64)),
            _ => None,
        },
        Type::Float => match v {
            Value::Number(n) => n.as_f64().map(Value::from),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from),
            _ => None,
        },
        Type::Bool => match v {
            Value::Bool(_) => Some(v.clone()),
            Value::Number(n) => n
                .as_i64()
                .filter(|i| *i == 0 || *i == 1)
                .map(|i| Value::Bool(i == 1)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(Value::Bool(true)),
                "false" | "0" | "no" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        },
        Type::Timestamp => match v {
            Value::Number(n) => epoch(n.as_f64()?).map(Value::String),
            Value::String(s) if !s.trim().is_empty() => {
                let s = s.trim();
                match s.parse::<f64>() {
                    Ok(f) => epoch(f).map(Value::String),
                    Err(_) => Some(Value::String(s.to_owned())),
                }
            }
            _ => None,
        },
    }
}

/// An epoch number as an ISO 8601 UTC time: seconds, milliseconds or
/// microseconds, told apart by size.
fn epoch(f: f64) -> Option<String> {
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    let micros = if f < 1e11 {
        f * 1e6
    } else if f < 1e14 {
        f * 1e3
    } else {
        f
    };
    jiff::Timestamp::from_microsecond(micros as i64)
        .ok()
        .map(|t| t.to_string())
}

/// A `mapping` policy's body (`{"mapping": {...}}` or what it holds).
pub fn from_policy(p: &Value) -> Result<Mapping, String> {
    let m = p.get("mapping").unwrap_or(p);
    let s = |k: &str| m.get(k).and_then(Value::as_str);
    let expr = |k: &str| s(k).map(Expr::parse).transpose();
    let schema = m
        .get("schema")
        .and_then(Value::as_object)
        .ok_or("a mapping policy needs a \"schema\" object")?;
    let mut columns = Vec::new();
    for (name, c) in schema {
        let ty = c
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("column {name:?} of the mapping policy has no type"))?;
        let value = c
            .get("bring")
            .and_then(Value::as_str)
            .map(Expr::parse)
            .transpose()?;
        let default = c.get("default").cloned();
        if value.is_none() && default.is_none() {
            return Err(format!("column {name:?} needs \"bring\" or \"default\""));
        }
        columns.push(Column {
            name: name.to_lowercase(),
            ty: TypeOf::Fixed(Type::parse(ty)?),
            value,
            optional: c.get("optional").and_then(Value::as_bool).unwrap_or(false),
            default,
            condition: c
                .get("condition")
                .and_then(Value::as_str)
                .map(Condition::parse)
                .transpose()?,
        });
    }
    let readings = match s("readings") {
        Some(r) if r.trim().starts_with('[') => match parse_parts(r)?.as_slice() {
            [Part::Path(p)] => Some(p.clone()),
            _ => return Err(format!("readings {r:?} is not a path")),
        },
        Some(r) => Some(vec![Some(r.trim().to_owned())]),
        None => None,
    };
    Ok(Mapping {
        dbms: expr("dbms")?,
        table: expr("table")?,
        columns,
        readings,
        condition: s("condition").map(Condition::parse).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str, ty: Type, e: &str) -> Column {
        Column {
            name: name.into(),
            ty: TypeOf::Fixed(ty),
            value: Some(Expr::parse(e).unwrap()),
            optional: false,
            default: None,
            condition: None,
        }
    }

    #[test]
    fn bring_paths_concatenate_and_walk_arrays() {
        let msg = json!({"metadata": {"company": "AnyLog", "machine_name": "cutter 23",
            "serial_number": "1234567890"}, "ts": 1607959427550u64, "value": 210,
            "readings": [{"v": 1.5}, {"v": "2"}]});
        let m = Mapping {
            dbms: Some(Expr::parse("bring [metadata][company]").unwrap()),
            table: Some(
                Expr::parse("bring [metadata][machine_name] _ [metadata][serial_number]").unwrap(),
            ),
            columns: vec![
                col("timestamp", Type::Timestamp, "bring [ts]"),
                col("value", Type::Float, "bring [readings][][v]"),
                col("id", Type::Int, "bring [value]"),
            ],
            ..Default::default()
        };
        let r = m.apply(&msg).unwrap();
        assert_eq!(r.db, "anylog");
        assert_eq!(r.table, "cutter_23_1234567890");
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0]["timestamp"], json!("2020-12-14T15:23:47.55Z"));
        assert_eq!(r.rows[1]["value"], json!(2.0));
        assert_eq!(r.rows[1]["id"], json!(210));
    }

    #[test]
    fn missing_and_bad_values_are_refused_unless_optional() {
        let mut m = Mapping {
            dbms: Some(Expr::parse("test").unwrap()),
            table: Some(Expr::parse("t").unwrap()),
            columns: vec![col("v", Type::Int, "bring [v]")],
            ..Default::default()
        };
        assert!(m.apply(&json!({"w": 1})).unwrap_err().contains("no value"));
        assert!(
            m.apply(&json!({"v": "x"}))
                .unwrap_err()
                .contains("not of type integer")
        );
        m.columns.push(col("w", Type::Int, "bring [w]"));
        m.columns[0].optional = true;
        assert!(m.apply(&json!({"v": "x"})).is_err(), "w is still required");
        let r = m.apply(&json!({"v": "x", "w": 2})).unwrap();
        assert_eq!(r.rows[0], json!({"w": 2}).as_object().unwrap().clone());
    }

    #[test]
    fn unmapped_columns_keep_the_message() {
        let m = Mapping {
            dbms: Some(Expr::parse("Test DB").unwrap()),
            table: Some(Expr::parse("bring [t]").unwrap()),
            ..Default::default()
        };
        let r = m.apply(&json!({"t": "Temp", "Value": 3})).unwrap();
        assert_eq!((r.db.as_str(), r.table.as_str()), ("test_db", "temp"));
        assert_eq!(r.rows[0]["value"], json!(3));
        assert!(m.apply(&json!([1, 2])).is_err());
    }

    #[test]
    fn policies_map_readings_with_conditions() {
        let p = json!({"mapping": {"id": "device", "dbms": "EdgeX", "table": "device",
        "readings": "readings", "condition": "if [device] == 'Modbus'",
        "schema": {
            "timestamp": {"bring": "[created]", "type": "timestamp"},
            "Temperature": {"condition": "if [name] == Temperature", "bring": "[value]", "type": "decimal"},
            "mode": {"condition": "if [name] == OperationMode", "bring": "[value]", "type": "string"}
        }}});
        let m = from_policy(&p).unwrap();
        let msg = json!({"device": "Modbus", "readings": [
            {"created": 1607959427, "name": "Temperature", "value": "21.5"},
            {"created": 1607959428, "name": "OperationMode", "value": "Heat"}]});
        assert!(m.applies(&msg));
        assert!(!m.applies(&json!({"device": "other"})));
        let r = m.apply(&msg).unwrap();
        assert_eq!(r.db, "edgex");
        assert_eq!(r.rows[0]["temperature"], json!(21.5));
        assert!(r.rows[0].get("mode").is_none());
        assert_eq!(r.rows[1]["mode"], json!("Heat"));
    }

    #[test]
    fn types_convert_as_edgelake_does() {
        assert_eq!(convert(&json!("12.7"), Type::Int), Some(json!(12)));
        assert_eq!(convert(&json!(1), Type::Bool), Some(json!(true)));
        assert_eq!(convert(&json!(3), Type::Str), Some(json!("3")));
        assert_eq!(convert(&json!("x"), Type::Float), None);
        assert_eq!(
            convert(&json!(1607959427), Type::Timestamp),
            Some(json!("2020-12-14T15:23:47Z"))
        );
        assert!(Type::parse("CHAR(5)").is_ok() && Type::parse("blob").is_err());
    }

    proptest::proptest! {
        #[test]
        fn fuzz_mapping_never_panics(e in ".{0,40}", msg in ".{0,60}") {
            if let Ok(e) = Expr::parse(&e) {
                let m = Mapping {
                    dbms: Some(e.clone()),
                    table: Some(Expr::Const("t".into())),
                    columns: vec![Column { name: "c".into(), ty: TypeOf::Fixed(Type::Timestamp),
                        value: Some(e), optional: false, default: None, condition: None }],
                    ..Default::default()
                };
                if let Ok(v) = serde_json::from_str::<Value>(&msg) {
                    let _ = m.apply(&v);
                }
            }
            let _ = Condition::parse(&msg);
        }
    }
}
