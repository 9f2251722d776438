//! Timestamps as tarn stores them.
//!
//! Every timestamp is normalised to UTC and kept as text of one fixed width,
//! `YYYY-MM-DD HH:MM:SS.ffffff`, which is SQLite's own `datetime()` layout plus
//! microseconds. Fixed width makes text comparison equal time comparison, so
//! `WHERE ts > '...'` and range scans over an index are correct.

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// The earliest time tarn stores: 0000-01-01 00:00:00 UTC (the stored form
/// has four digits of year).
pub fn min_time() -> Micros {
    days_from_civil(0, 1, 1) * SECS_PER_DAY * MICROS_PER_SEC
}

/// The latest time tarn stores: 9999-12-31 23:59:59.999999 UTC.
pub fn max_time() -> Micros {
    (days_from_civil(9999, 12, 31) + 1) * SECS_PER_DAY * MICROS_PER_SEC - 1
}

/// `t` if it is within [`min_time`] ..= [`max_time`].
pub fn in_range(t: Micros) -> Option<Micros> {
    (min_time()..=max_time()).contains(&t).then_some(t)
}

/// Parses an ISO 8601 / RFC 3339 timestamp (`T` or space between date and time,
/// optional seconds and fraction, optional `Z` or `±HH:MM` offset; no offset
/// means UTC). With `date_only`, a bare `YYYY-MM-DD` is midnight UTC.
/// Returns `None` for anything else, including impossible dates.
pub fn parse(s: &str, date_only: bool) -> Option<Micros> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return date_only.then_some(days * SECS_PER_DAY * MICROS_PER_SEC);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 16 || b[13] != b':' {
        return None;
    }
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let mut i = 16;
    let mut second = 0;
    let mut micros = 0i64;
    if b.get(i) == Some(&b':') {
        second = digits(b.get(i + 1..i + 3)?)?;
        i += 3;
        if matches!(b.get(i), Some(b'.') | Some(b',')) {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 6 {
                    micros = micros * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 || n > 9 {
                return None;
            }
            for _ in n..6 {
                micros *= 10;
            }
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset_secs = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * MICROS_PER_SEC + micros)
}

/// The stored form: `YYYY-MM-DD HH:MM:SS.ffffff` (UTC).
pub fn format_storage(t: Micros) -> String {
    format_with(t, ' ', "")
}

/// ISO 8601 with `T` and `Z`: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_iso(t: Micros) -> String {
    format_with(t, 'T', "Z")
}

/// Converts a stored timestamp to ISO 8601 without parsing the digits, or
/// `None` when `s` is not in the stored form.
pub fn storage_to_iso(s: &str) -> Option<String> {
    if !is_storage_form(s) {
        return None;
    }
    let mut out = String::with_capacity(27);
    out.push_str(&s[..10]);
    out.push('T');
    out.push_str(&s[11..]);
    out.push('Z');
    Some(out)
}

/// True when `s` has exactly the stored layout `YYYY-MM-DD HH:MM:SS.ffffff`.
pub fn is_storage_form(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 26
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

fn format_with(t: Micros, sep: char, suffix: &str) -> String {
    // Hand-rolled: this runs for every timestamp ingested, and `format!` is
    // several times slower.
    let (y, mo, d, h, mi, s, us) = fields(t);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}.{us:06}{suffix}");
    }
    let mut b = [0u8; 26];
    let mut put = |at: usize, v: i64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, mo, 2);
    put(8, d, 2);
    put(11, h, 2);
    put(14, mi, 2);
    put(17, s, 2);
    put(20, us, 6);
    b[4] = b'-';
    b[7] = b'-';
    b[10] = sep as u8;
    b[13] = b':';
    b[16] = b':';
    b[19] = b'.';
    let mut out = String::with_capacity(26 + suffix.len());
    out.push_str(std::str::from_utf8(&b).expect("digits and separators are ASCII"));
    out.push_str(suffix);
    out
}

/// Splits a timestamp into (year, month, day, hour, minute, second, micros).
pub fn fields(t: Micros) -> (i64, i64, i64, i64, i64, i64, i64) {
    let secs = t.div_euclid(MICROS_PER_SEC);
    let micros = t.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, sod / 3600, sod % 3600 / 60, sod % 60, micros)
}

/// Builds a timestamp from UTC fields; `None` when they name no real
/// instant or one outside the years 0 to 9999.
pub fn from_fields(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64, us: i64) -> Option<Micros> {
    if !(0..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d < 1
        || d > days_in_month(y, mo)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..60).contains(&s)
        || !(0..MICROS_PER_SEC).contains(&us)
    {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * SECS_PER_DAY + h * 3600 + mi * 60 + s;
    Some(secs * MICROS_PER_SEC + us)
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1..=12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days: exact for the proleptic
// Gregorian calendar over the whole i64-day range tarn can meet.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms_to_utc() {
        let want = parse("2024-03-01 12:30:00", false).unwrap();
        for s in [
            "2024-03-01T12:30:00Z",
            "2024-03-01T12:30Z",
            "2024-03-01 12:30:00.000000",
            "2024-03-01T14:30:00+02:00",
            "2024-03-01T07:30:00-0500",
            "2024-03-01T13:30:00+01",
        ] {
            assert_eq!(parse(s, false), Some(want), "{s}");
        }
        assert_eq!(format_storage(want), "2024-03-01 12:30:00.000000");
        assert_eq!(format_iso(want), "2024-03-01T12:30:00.000000Z");
        assert_eq!(
            format_storage(parse("2024-02-29T23:59:59.1234567Z", false).unwrap()),
            "2024-02-29 23:59:59.123456"
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for s in [
            "",
            "hello",
            "2024-02-30T00:00:00",
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-01-01 24:00:00",
            "2024-01-01X00:00:00",
            "2024-01-01 00:00:00 ",
            "2024-01-01 00:00:00.",
            "2024-01-01 00:00:00+2",
            "12345",
        ] {
            assert_eq!(parse(s, true), None, "{s:?}");
        }
        assert_eq!(parse("2024-01-01", false), None);
        assert_eq!(
            parse("2024-01-01", true),
            parse("2024-01-01T00:00:00Z", false)
        );
    }

    #[test]
    fn storage_form_is_recognised() {
        assert!(is_storage_form("1999-12-31 23:59:59.999999"));
        assert!(!is_storage_form("1999-12-31T23:59:59.999999"));
        assert_eq!(
            storage_to_iso("1999-12-31 23:59:59.999999").as_deref(),
            Some("1999-12-31T23:59:59.999999Z")
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(t in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            let s = format_storage(t);
            prop_assert!(is_storage_form(&s));
            prop_assert_eq!(parse(&s, false), Some(t));
            prop_assert_eq!(parse(&format_iso(t), false), Some(t));
            let (y, mo, d, h, mi, se, us) = fields(t);
            prop_assert_eq!(from_fields(y, mo, d, h, mi, se, us), Some(t));
        }

        #[test]
        fn text_order_is_time_order(a in 0i64..4_102_444_800_000_000, b in 0i64..4_102_444_800_000_000) {
            prop_assert_eq!(format_storage(a).cmp(&format_storage(b)), a.cmp(&b));
        }
    }
}
