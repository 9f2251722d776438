//! EdgeLake's projection casts (`::float(N)`, `::int`, `::str`,
//! `::ljust(N)`, `::rjust(N)`), applied to a query's final answer, and the
//! text EdgeLake (Python) writes for a value, which casts produce.

use crate::store::{QueryResult, Val};

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

/// A value as EdgeLake writes it in a table: NULL is `null`.
pub fn text_value(v: &Val) -> String {
    match v {
        Val::Null => "null".into(),
        Val::Int(i) => i.to_string(),
        Val::Float(f) => py_float(*f),
        Val::Bool(b) => b.to_string(),
        Val::Text(s) => s.clone(),
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
            other => text_value(other),
        }),
        C::Ljust(n) | C::Rjust(n) => {
            let text = match v {
                Val::Text(t) => py_time(t, 'T').unwrap_or_else(|| t.clone()),
                other => text_value(other),
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
