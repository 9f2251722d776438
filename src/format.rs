//! Rendering query results: the native JSON form and EdgeLake's output
//! formats (`json`, `json:list`, `table`), byte for byte as EdgeLake prints them.

use std::fmt::Write as _;

use crate::rows::{ColType, Val};
use crate::storage::QueryResult;

/// A value in the native API: timestamps in ISO 8601 (`...T...Z`).
pub fn native_value(v: &Val, ty: Option<ColType>) -> serde_json::Value {
    match v {
        Val::Null => serde_json::Value::Null,
        Val::Int(i) => (*i).into(),
        Val::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Val::Bool(b) => (*b).into(),
        Val::Text(s) => {
            let iso = (ty == Some(ColType::Timestamp) || ty.is_none())
                .then(|| tarn_query::time::storage_to_iso(s))
                .flatten();
            serde_json::Value::String(iso.unwrap_or_else(|| s.clone()))
        }
    }
}

/// A result's rows in the native API's JSON form.
pub fn native_rows(r: &QueryResult) -> Vec<serde_json::Value> {
    r.rows
        .iter()
        .map(|row| {
            serde_json::Value::Array(
                row.iter()
                    .zip(&r.types)
                    .map(|(v, t)| native_value(v, *t))
                    .collect(),
            )
        })
        .collect()
}

/// Python's `repr(float)`: the shortest text that reads back as the same
/// float, `.0` on whole numbers, exponent form outside 1e-4 ..= 1e16.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: d[.ddd]e[-]x.
    let sci = format!("{f:e}");
    let (mant, exp) = sci
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes a decimal exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// A value as EdgeLake writes it in JSON output: NULL is `""`.
fn edgelake_json_value(out: &mut String, v: &Val) {
    match v {
        Val::Null => out.push_str("\"\""),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Float(f) if f.is_finite() => out.push_str(&py_float(*f)),
        Val::Float(_) => out.push_str("\"\""),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Text(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
    }
}

/// A value as EdgeLake writes it in a table: NULL is `null`.
fn edgelake_text_value(v: &Val) -> String {
    match v {
        Val::Null => "null".into(),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => py_float(*f),
        Val::Bool(b) => b.to_string(),
        Val::Text(s) => s.clone(),
    }
}

/// EdgeLake's statistics block values.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub count: usize,
    pub elapsed_secs: u64,
    pub nodes: usize,
}

fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// EdgeLake's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonList,
    Table,
}

fn row_objects(out: &mut String, r: &QueryResult, names: &[String]) {
    out.push('[');
    for (i, row) in r.rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::String(names[j].clone()).to_string());
            out.push(':');
            edgelake_json_value(out, v);
        }
        out.push('}');
    }
    out.push(']');
}

/// Renders a result as EdgeLake's `sql` command does.
pub fn edgelake(r: &QueryResult, format: Format, stats: Option<Stats>) -> String {
    let names: Vec<String> = r.columns.iter().map(|c| c.to_ascii_lowercase()).collect();
    if r.rows.is_empty() && stats.is_none() && format != Format::JsonList {
        return "{\"reply\" : \"Empty data set\"}".into();
    }
    let mut out = String::new();
    match format {
        Format::JsonList => row_objects(&mut out, r, &names),
        Format::Json => {
            out.push_str("{\"Query\":");
            row_objects(&mut out, r, &names);
            if let Some(s) = stats {
                let _ = write!(
                    out,
                    ",\n\"Statistics\":[{{\"Count\": {},\"Time\":\"{}\",\"Nodes\": {}}}]",
                    s.count,
                    hms(s.elapsed_secs),
                    s.nodes
                );
            }
            out.push('}');
        }
        Format::Table => {
            for block in r.rows.chunks(25) {
                table_block(&mut out, &names, block);
            }
            if r.rows.is_empty() {
                table_block(&mut out, &names, &[]);
            }
            if let Some(s) = stats {
                let _ = write!(
                    out,
                    "\n{{\"Statistics\":[{{\"Count\": {},\n                \"Time\":\"{}\",\n                \"Nodes\": {}}}]}}",
                    s.count,
                    hms(s.elapsed_secs),
                    s.nodes
                );
            }
        }
    }
    out
}

/// Numbers, and short strings of digits, `.`, `,` and one leading `-`, are
/// right-aligned in EdgeLake's tables.
fn right_aligned(v: &Val, text: &str) -> bool {
    match v {
        Val::Int(_) | Val::Float(_) => true,
        Val::Text(_) => {
            let body = text.strip_prefix('-').unwrap_or(text);
            text.chars().count() < 20
                && !body.is_empty()
                && body
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        }
        _ => false,
    }
}

fn table_block(out: &mut String, names: &[String], rows: &[Vec<Val>]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(edgelake_text_value).collect())
        .collect();
    let widths: Vec<usize> = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            cells
                .iter()
                .map(|r| r[j].chars().count())
                .chain(std::iter::once(n.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let last = names.len().saturating_sub(1);
    out.push('\n');
    for (j, n) in names.iter().enumerate() {
        if j == last {
            out.push_str(n);
        } else {
            let _ = write!(out, "{n:<w$}", w = widths[j] + 1);
        }
    }
    out.push('\n');
    for w in &widths {
        out.push_str(&"-".repeat(*w));
        out.push(' ');
    }
    for (row, vals) in cells.iter().zip(rows) {
        out.push('\n');
        for (j, (c, v)) in row.iter().zip(vals).enumerate() {
            if right_aligned(v, c) {
                let _ = write!(out, "{c:>w$} ", w = widths[j]);
            } else if j == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}", w = widths[j] + 1);
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (248.76575133333333, "248.76575133333333"),
            (-1.0500001907348633, "-1.0500001907348633"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e100, "1e+100"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(f), s, "{f:e}");
        }
    }

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["Device".into(), "count(*)".into(), "note".into()],
            types: vec![None; 3],
            rows: vec![
                vec![Val::Text("a".into()), Val::Int(12), Val::Null],
                vec![
                    Val::Text("bb".into()),
                    Val::Float(1.5),
                    Val::Text("x".into()),
                ],
            ],
        }
    }

    #[test]
    fn json_forms() {
        let r = result();
        assert_eq!(
            edgelake(&r, Format::Json, None),
            r#"{"Query":[{"device":"a","count(*)":12,"note":""},{"device":"bb","count(*)":1.5,"note":"x"}]}"#
        );
        let stats = Stats {
            count: 2,
            elapsed_secs: 3725,
            nodes: 1,
        };
        assert!(
            edgelake(&r, Format::Json, Some(stats)).ends_with(
                "],\n\"Statistics\":[{\"Count\": 2,\"Time\":\"01:02:05\",\"Nodes\": 1}]}"
            )
        );
        assert!(edgelake(&r, Format::JsonList, None).starts_with("[{\"device\":\"a\""));
        let empty = QueryResult { rows: vec![], ..r };
        assert_eq!(
            edgelake(&empty, Format::Json, None),
            "{\"reply\" : \"Empty data set\"}"
        );
        assert_eq!(
            edgelake(&empty, Format::Table, None),
            "{\"reply\" : \"Empty data set\"}"
        );
    }

    #[test]
    fn table_layout() {
        let out = edgelake(&result(), Format::Table, None);
        assert_eq!(
            out,
            "\ndevice count(*) note\n------ -------- ---- \na            12 null\nbb          1.5 x\n"
        );
    }

    #[test]
    fn timestamps_become_iso_in_native_output() {
        let v = Val::Text("2024-01-01 00:00:00.000000".into());
        assert_eq!(native_value(&v, None), "2024-01-01T00:00:00.000000Z");
        assert_eq!(
            native_value(&v, Some(ColType::Text)),
            "2024-01-01 00:00:00.000000"
        );
    }
}

/// Python's `datetime.isoformat()` of a stored time (`sep` between date and
/// time; the fraction only when it is not zero), or `None` for other text.
fn py_time(s: &str, sep: char) -> Option<String> {
    if !tarn_query::time::is_storage_form(s) {
        return None;
    }
    let frac = &s[20..];
    let mut out = format!("{}{sep}{}", &s[..10], &s[11..19]);
    if frac.bytes().any(|b| b != b'0') {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// A number read from a value, as Python's `float()` would.
fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        Val::Bool(b) => Some(f64::from(u8::from(*b))),
        Val::Text(t) => t.trim().parse().ok(),
        Val::Null => None,
    }
}

fn cast_val(v: &Val, cast: tarn_query::OutputCast) -> Val {
    use tarn_query::OutputCast as C;
    if *v == Val::Null {
        return Val::Null;
    }
    match cast {
        C::Float(places) => match as_f64(v) {
            None => v.clone(),
            Some(x) => Val::Float(match places {
                // Python's round(x, n): the exact binary value, rounded once.
                Some(n) if x.is_finite() => format!("{x:.*}", n as usize).parse().unwrap_or(x),
                _ => x,
            }),
        },
        C::Int => match v {
            Val::Int(_) => v.clone(),
            Val::Text(t) if t.trim().parse::<i64>().is_ok() => {
                Val::Int(t.trim().parse().expect("checked just above"))
            }
            _ => as_f64(v)
                .filter(|x| x.is_finite())
                .map_or_else(|| v.clone(), |x| Val::Int(x.trunc() as i64)),
        },
        C::Str => Val::Text(match v {
            Val::Text(t) => py_time(t, ' ').unwrap_or_else(|| t.clone()),
            other => edgelake_text_value(other),
        }),
        C::Ljust(n) | C::Rjust(n) => {
            let text = match v {
                Val::Text(t) => py_time(t, 'T').unwrap_or_else(|| t.clone()),
                other => edgelake_text_value(other),
            };
            let pad = " ".repeat(n.saturating_sub(text.chars().count()));
            Val::Text(if matches!(cast, C::Ljust(_)) {
                text + &pad
            } else {
                pad + &text
            })
        }
    }
}

/// Applies EdgeLake's projection casts (taken off the query by
/// [`tarn_query::Select::take_casts`]) to a final answer.
pub fn apply_casts(r: &mut QueryResult, casts: &[Option<tarn_query::OutputCast>]) {
    for (i, cast) in casts.iter().enumerate().take(r.columns.len()) {
        let Some(cast) = cast else { continue };
        r.types[i] = None;
        for row in &mut r.rows {
            if let Some(v) = row.get_mut(i) {
                *v = cast_val(v, *cast);
            }
        }
    }
}

#[cfg(test)]
mod cast_tests {
    use super::*;
    use tarn_query::OutputCast as C;

    #[test]
    fn casts_as_edgelake_prints_them() {
        let ts = Val::Text("2023-01-31 14:34:48.000000".into());
        assert_eq!(
            cast_val(&ts, C::Ljust(21)),
            Val::Text("2023-01-31T14:34:48  ".into())
        );
        assert_eq!(
            cast_val(&ts, C::Str),
            Val::Text("2023-01-31 14:34:48".into())
        );
        assert_eq!(
            cast_val(&Val::Float(2.675), C::Float(Some(2))),
            Val::Float(2.67),
            "2.675 is 2.67499999... in binary, as Python rounds it"
        );
        assert_eq!(cast_val(&Val::Float(-1.5), C::Int), Val::Int(-1));
        assert_eq!(cast_val(&Val::Int(7), C::Float(Some(1))), Val::Float(7.0));
        assert_eq!(
            cast_val(&Val::Float(1.0), C::Rjust(5)),
            Val::Text("  1.0".into())
        );
        assert_eq!(cast_val(&Val::Null, C::Str), Val::Null);
    }
}
