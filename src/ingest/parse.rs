//! JSON bodies into typed rows: a JSON array of objects, one object, or
//! NDJSON (one object per line), straight from bytes into one column list
//! and one value vector per row (no map per row), because ingest speed is
//! mostly parse speed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize as _, Deserializer as _};

use super::IngestError;
use crate::store::{Rows, Val, column};

/// Parses a body: a JSON array of objects, one object, or NDJSON (one object
/// per line). The whole body is refused if any part of it is malformed.
pub fn parse_body(body: &[u8]) -> Result<Rows, IngestError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let mut acc = Acc::default();
    match start.map(|i| body[i]) {
        None => {
            return Err(IngestError::EmptyBody);
        }
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_slice(body);
            de.deserialize_seq(ArrayVisitor(&mut acc))
                .and_then(|()| de.end())
                .map_err(bad_json)?;
        }
        // One object, or several (NDJSON, or objects one after another).
        Some(b'{') => objects(body, &mut acc)?,
        Some(_) => {
            return Err(IngestError::MalformedJson(
                "expected a JSON object, an array of objects, or one object per line".into(),
            ));
        }
    }
    // The parser reads an integer past 64 bits as a float: refused like one
    // just past the range, rather than stored with its digits lost.
    if acc.suspect
        && let Some(n) = long_integer(body)
    {
        return Err(IngestError::MalformedJson(format!(
            "integer {n} is out of the 64-bit range"
        )));
    }
    acc.finish()
}

/// The first integer literal (no fraction, no exponent) of twenty digits or
/// more outside a string, if any.
fn long_integer(b: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &b[start..i];
                let digits = token.iter().filter(|c| c.is_ascii_digit()).count();
                if digits >= 20 && token.iter().all(|c| c.is_ascii_digit() || *c == b'-') {
                    return Some(String::from_utf8_lossy(token).into_owned());
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// One row as a JSON object, as a client would send it (nulls left out: a
/// missing key and a null are stored alike, and a column seen only as null
/// must not be created with a guessed type).
pub fn row_json(columns: &[String], row: &[Val]) -> Vec<u8> {
    let obj: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .zip(row)
        .filter_map(|(c, v)| {
            let j = match v {
                Val::Null => return None,
                Val::Int(i) => (*i).into(),
                Val::Float(f) => serde_json::Number::from_f64(*f)?.into(),
                Val::Bool(b) => (*b).into(),
                Val::Text(t) => t.clone().into(),
            };
            Some((c.clone(), j))
        })
        .collect();
    serde_json::to_vec(&obj).expect("a JSON object serializes")
}

fn bad_json(e: serde_json::Error) -> IngestError {
    IngestError::MalformedJson(format!("malformed JSON: {e}"))
}

/// Objects one after another, each parsed on its own slice. (Asking one
/// parser whether only white space is left after each object would cost
/// a scan from the start of the body per object: quadratic.)
fn objects(body: &[u8], acc: &mut Acc) -> Result<(), IngestError> {
    let mut at = 0;
    loop {
        while body.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let Some(&first) = body.get(at) else {
            return Ok(());
        };
        let line = || 1 + body[..at].iter().filter(|b| **b == b'\n').count();
        if first != b'{' {
            return Err(IngestError::MalformedJson(format!(
                "malformed JSON: expected an object at line {}",
                line()
            )));
        }
        // Without a closing brace, the parser says what is wrong.
        let end = object_end(body, at).unwrap_or(body.len());
        let mut de = serde_json::Deserializer::from_slice(&body[at..end]);
        RowSeed(acc)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| {
                IngestError::MalformedJson(format!(
                    "malformed JSON: {e} (in the object starting at line {})",
                    line()
                ))
            })?;
        at = end;
    }
}

/// Where the object opening at `at` ends (just past its `}`), by strings
/// and nesting alone; the parser checks everything else. `None` if it does
/// not end.
fn object_end(b: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Default)]
struct Acc {
    columns: Vec<String>,
    index: HashMap<String, usize>,
    rows: Vec<Vec<Val>>,
    /// Per column, the number (from 1) of the last row that set it.
    stamps: Vec<usize>,
    /// A whole number too large for a float to be told from an integer
    /// literal past 64 bits was seen (see [`long_integer`]).
    suspect: bool,
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

    fn finish(self) -> Result<Rows, IngestError> {
        if self.rows.is_empty() {
            return Err(IngestError::EmptyBody);
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let name = column(c)?;
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
            if acc.stamps.len() <= i {
                acc.stamps.resize(i + 1, 0);
            }
            // Stamped with this row's number once set (a null counts too).
            if acc.stamps[i] == acc.rows.len() + 1 {
                return Err(de::Error::custom(format!(
                    "key {:?} appears twice in one row (names are case-insensitive)",
                    key.0
                )));
            }
            acc.stamps[i] = acc.rows.len() + 1;
            if let Val::Float(f) = v
                && f.fract() == 0.0
                && f.abs() >= 9.2e18
            {
                acc.suspect = true;
            }
            if row.len() <= i {
                row.resize(i + 1, Val::Null);
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
        // Large floats are floats; large digits in text are text.
        assert_eq!(rows(r#"{"x": 1e30}"#).rows[0][0], Val::Float(1e30));
        assert_eq!(
            rows(r#"{"x": 1.0e30, "s": "123456789012345678901234567890"}"#).rows[0][0],
            Val::Float(1e30)
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
            r#"{"a":null,"a":2}"#,
            r#"{"a":1}
{"b":2,"b":null}"#,
            "{\"a\":1}\n[1]",
            "{\"a\":1}\n{\"a\":\"x}",
            r#"{"x":18446744073709551615}"#,
            r#"{"x":123456789012345678901234567890}"#,
            r#"[{"x":-99999999999999999999999}]"#,
        ] {
            assert!(
                parse_body(body.as_bytes()).is_err(),
                "{body:?} was accepted"
            );
        }
    }
}

/// Bodies from arbitrary bytes and from JSON-ish token soup: refused or
/// read, never a panic; the same rows read alike as an array, as NDJSON
/// and as objects one after another. Longer runs:
/// `PROPTEST_CASES=200000 cargo test --lib fuzz_`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn fuzz_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_body(&bytes);
        }

        #[test]
        fn fuzz_token_soup_never_panics(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"a\"", "\"A\"", "\"b\"", "\"\\\\\"", "\"\\u00e9\"",
                "1", "-1", "1.5e300", "123456789012345678901234567890", "null", "true", "\n",
                " ", "\"x\"", "{\"a\":1}", "\"row_id\"", "\"rowid\"", "é", "\"\\\"",
            ]),
            0..40,
        )) {
            let body: String = parts.concat();
            let _ = parse_body(body.as_bytes());
        }

        #[test]
        fn fuzz_the_three_layouts_read_alike(rows in proptest::collection::vec(
            proptest::collection::vec((0usize..4, prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                "[a-z ]{0,6}".prop_map(|s| format!("{s:?}")),
                Just("null".to_owned()),
                Just("true".to_owned()),
                (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
            ]), 1..4),
            1..12,
        )) {
            let objects: Vec<String> = rows
                .iter()
                .map(|r| {
                    let mut seen = Vec::new();
                    let fields: Vec<String> = r
                        .iter()
                        .filter(|(k, _)| { let new = !seen.contains(k); seen.push(*k); new })
                        .map(|(k, v)| format!("\"c{k}\": {v}"))
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                })
                .collect();
            let array = parse_body(format!("[{}]", objects.join(",")).as_bytes());
            let lines = parse_body(objects.join("\n").as_bytes());
            let glued = parse_body(objects.concat().as_bytes());
            prop_assert_eq!(&array, &lines);
            prop_assert_eq!(&array, &glued);
        }
    }
}
