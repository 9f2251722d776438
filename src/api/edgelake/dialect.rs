//! EdgeLake's reading of a SELECT where it is not SQL's, so that scripts
//! written against EdgeLake get its answers (the native `/v1/query` keeps
//! SQL's reading). EdgeLake parses the clauses itself
//! (`edge_lake/dbms/select_parser.py`), and:
//!
//! - finds `ORDER BY` only as those two words: an `ORDER` without `BY` is no
//!   clause at all and is dropped (AnyLog's unit tests send
//!   `GROUP BY monitor_id ORDER min_ts, monitor_id DESC` and expect the
//!   groups in their own order);
//! - keeps one direction for the whole `ORDER BY`, the one written after its
//!   last key, so `ORDER BY a, b DESC` sorts both keys descending;
//! - takes a repeated alias (`count(*) as n as n`) as one;
//! - names an unaliased result column by its text, lower case, spaces
//!   tidied (`COUNT(DISTINCT( x ))` answers as `count(distinct(x))`, and
//!   `SELECT DISTINCT(x)` as `distinct(x)`), a cast after `::` left out.

/// A word of the statement outside quotes and parentheses.
#[derive(Debug, Clone, Copy)]
struct Word {
    start: usize,
    end: usize,
}

/// The top-level words and commas of `sql`, as byte ranges (a comma is a
/// one-byte word).
fn top_level(sql: &str) -> Vec<Word> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // A quoted run; a doubled quote stays inside it.
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' if depth == 0 => {
                out.push(Word {
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            c if depth == 0 && (c.is_ascii_alphanumeric() || c == b'_') => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Word { start, end: i });
            }
            _ => i += 1,
        }
    }
    out
}

fn is(sql: &str, w: &Word, word: &str) -> bool {
    sql[w.start..w.end].eq_ignore_ascii_case(word)
}

/// `select` as EdgeLake reads it (see the module's text).
pub fn normalize(select: &str) -> String {
    let mut sql = select.to_owned();
    // Each rewrite starts again from the words of the text it left.
    while let Some(next) = drop_order_without_by(&sql)
        .or_else(|| one_alias(&sql))
        .or_else(|| one_direction(&sql))
    {
        sql = next;
    }
    titled(&sql)
}

/// The byte offsets in `sql[from..to]` where `sep` stands outside quotes
/// and parentheses.
fn top_level_at(sql: &str, from: usize, to: usize, sep: &[u8]) -> Vec<usize> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut i) = (0usize, from);
    while i < to {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < to && b[i] != q {
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if depth == 0 && b[i..to].starts_with(sep) => {
                out.push(i);
                i += sep.len();
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every unaliased result column of the first SELECT given its EdgeLake
/// title as an alias (a bare column, `*`, and `increments(...)`, which
/// makes no column, are left as they are).
fn titled(sql: &str) -> String {
    let w = top_level(sql);
    let Some(select) = w.iter().position(|x| is(sql, x, "select")) else {
        return sql.to_owned();
    };
    let Some(from) = w[select..].iter().find(|x| is(sql, x, "from")) else {
        return sql.to_owned();
    };
    let mut start = w[select].end;
    // `DISTINCT x` is the select's; `DISTINCT(x)` is, for EdgeLake, the
    // first column's text.
    if let Some(d) = w
        .get(select + 1)
        .filter(|x| is(sql, x, "distinct") || is(sql, x, "all"))
        && !sql[d.end..].starts_with('(')
    {
        start = d.end;
    }
    let mut cuts = vec![start];
    cuts.extend(
        top_level_at(sql, start, from.start, b",")
            .iter()
            .map(|c| c + 1),
    );
    cuts.push(from.start);
    // Each alias goes right after its column's text; all else stays.
    let mut out = String::with_capacity(sql.len() + 32);
    let mut copied = 0;
    for pair in cuts.windows(2) {
        let item = &sql[pair[0]..pair[1]];
        let body = item.trim_end();
        let body = body.strip_suffix(',').unwrap_or(body).trim_end();
        if let Some(title) = title(body) {
            let at = pair[0] + body.len();
            out.push_str(&sql[copied..at]);
            out.push_str(&format!(" AS \"{}\"", title.replace('"', "\"\"")));
            copied = at;
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// EdgeLake's title for one result column, `None` where it needs none.
fn title(item: &str) -> Option<String> {
    let t = item.trim();
    let words = top_level(t);
    let quoted = |q: char| t.len() > 1 && t.starts_with(q) && t.ends_with(q);
    let plain = quoted('"')
        || quoted('`')
        || t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
    if t.is_empty()
        || plain
        || t.ends_with('*')
        || words.iter().any(|x| is(t, x, "as"))
        || t.to_ascii_lowercase().starts_with("increments")
    {
        return None;
    }
    let text = match top_level_at(t, 0, t.len(), b"::").first() {
        Some(&c) => &t[..c],
        None => t,
    };
    Some(tidy(text))
}

/// Lower case outside quotes, one space between words, none inside
/// parentheses' edges, one after each comma.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut space = false;
    for c in text.trim().chars() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                if space && !out.ends_with('(') {
                    out.push(' ');
                }
                space = false;
                quote = Some(c);
                out.push(c);
            }
            c if c.is_whitespace() => space = true,
            ')' | ',' => {
                space = c == ',';
                out.push(c);
            }
            c => {
                if space && !out.ends_with('(') {
                    out.push(' ');
                }
                space = false;
                out.push(c.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `... ORDER x, y` (no `BY`) without that tail (up to a `LIMIT`).
fn drop_order_without_by(sql: &str) -> Option<String> {
    let w = top_level(sql);
    let i = (0..w.len())
        .find(|&i| is(sql, &w[i], "order") && !w.get(i + 1).is_some_and(|n| is(sql, n, "by")))?;
    let end = w[i + 1..]
        .iter()
        .find(|x| is(sql, x, "limit"))
        .map_or(sql.len(), |x| x.start);
    let (head, rest) = (sql[..w[i].start].trim_end(), sql[end..].trim_start());
    let gap = if rest.is_empty() { "" } else { " " };
    Some(format!("{head}{gap}{rest}"))
}

/// `expr AS a AS b` as `expr AS b`.
fn one_alias(sql: &str) -> Option<String> {
    let w = top_level(sql);
    let i = (0..w.len().saturating_sub(3)).find(|&i| {
        is(sql, &w[i], "as")
            && is(sql, &w[i + 2], "as")
            && sql[w[i].end..w[i + 1].start].trim().is_empty()
            && sql[w[i + 1].end..w[i + 2].start].trim().is_empty()
            && !is(sql, &w[i + 1], ",")
    })?;
    Some(format!("{}{}", &sql[..w[i].start], &sql[w[i + 2].start..]))
}

/// `ORDER BY a, b DESC` as `ORDER BY a DESC, b DESC`: one direction, the
/// last key's, for every key that names none.
fn one_direction(sql: &str) -> Option<String> {
    let w = top_level(sql);
    let by = (0..w.len().saturating_sub(1))
        .find(|&i| is(sql, &w[i], "order") && is(sql, &w[i + 1], "by"))?
        + 1;
    let end = w[by + 1..]
        .iter()
        .position(|x| is(sql, x, "limit"))
        .map_or(w.len(), |p| by + 1 + p);
    // The words of each key, split at the clause's commas.
    let mut keys: Vec<&[Word]> = w[by + 1..end].split(|x| is(sql, x, ",")).collect();
    keys.retain(|k| !k.is_empty());
    let direction = |k: &[Word]| {
        k.last()
            .filter(|x| is(sql, x, "desc") || is(sql, x, "asc"))
            .map(|x| sql[x.start..x.end].to_ascii_uppercase())
    };
    let (last, rest) = keys.split_last()?;
    let dir = direction(last)?;
    if dir != "DESC" || rest.is_empty() || rest.iter().any(|k| direction(k).is_some()) {
        return None;
    }
    // Insert from the back so earlier offsets stay valid. A key ends where
    // the next comma starts: its text may end in a parenthesis.
    let mut out = sql.to_owned();
    for k in rest.iter().rev() {
        let after = w
            .iter()
            .find(|x| x.start >= k[k.len() - 1].end && is(sql, x, ","))
            .map_or(k[k.len() - 1].end, |c| c.start);
        let at = sql[..after].trim_end().len();
        out.insert_str(at, " DESC");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use proptest::prelude::*;

    proptest! {
        /// Any text a client sends: read, never a panic, never a loop.
        #[test]
        fn fuzz_edgelake_dialect_never_panics(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "select ", "SELECT ", "distinct", "(", ")", ",", " from ", "t", " where ",
                " order ", " ORDER BY ", " by ", " group by ", " as ", " AS ", "x", "y",
                " desc", " ASC", " limit 5", "'", "\"", "`", "::float(3)", "::", "count(*)",
                "increments(day, 1, ts)", "é", "\u{2003}", " ", "*", ".", "''",
            ]),
            0..30,
        )) {
            let _ = normalize(&parts.concat());
        }
    }

    #[test]
    fn reads_selects_as_edgelake_does() {
        // AnyLog's unit tests (test_sql_queries.py, test_aggregations_group_by):
        // answered in the groups' order, one row_count column.
        assert_eq!(
            normalize(
                "SELECT monitor_id, count(*) as row_count as row_count FROM t \
                 GROUP BY monitor_id ORDER min_ts, monitor_id DESC"
            ),
            "SELECT monitor_id, count(*) as row_count FROM t GROUP BY monitor_id"
        );
        // test_period_complex: EdgeLake answered BSP (2024-02-09) before
        // DF2 (2024-01-18), both keys descending.
        assert_eq!(
            normalize("SELECT a, min(ts) as ts FROM t GROUP BY a ORDER BY ts, a  DESC"),
            "SELECT a, min(ts) as ts FROM t GROUP BY a ORDER BY ts DESC, a  DESC"
        );
        assert_eq!(
            normalize("SELECT a FROM t ORDER BY max(ts), a DESC LIMIT 5"),
            "SELECT a FROM t ORDER BY max(ts) DESC, a DESC LIMIT 5"
        );
        assert_eq!(
            normalize("SELECT a FROM t ORDER x LIMIT 5"),
            "SELECT a FROM t LIMIT 5"
        );
        // Unaliased columns are titled as EdgeLake titles them.
        assert_eq!(
            normalize("SELECT DISTINCT(Value) FROM t ORDER BY value"),
            "SELECT DISTINCT(Value) AS \"distinct(value)\" FROM t ORDER BY value"
        );
        assert_eq!(
            normalize(
                "select COUNT( DISTINCT(device_name) ), avg(v)::float(3), substr(ts,1,  10) from t"
            ),
            "select COUNT( DISTINCT(device_name) ) AS \"count(distinct(device_name))\", \
             avg(v)::float(3) AS \"avg(v)\", substr(ts,1,  10) AS \"substr(ts, 1, 10)\" from t"
        );
        assert_eq!(
            normalize("SELECT increments(day, 1, timestamp), max(v), x FROM t WHERE y = 'A b'"),
            "SELECT increments(day, 1, timestamp), max(v) AS \"max(v)\", x FROM t WHERE y = 'A b'"
        );
        // What SQL and EdgeLake read alike is left as it is.
        for same in [
            "SELECT a, b FROM t ORDER BY a, b",
            "SELECT a, b FROM t ORDER BY a ASC, b DESC",
            "SELECT a, b FROM t ORDER BY a DESC",
            "SELECT a FROM t WHERE name = 'order x' ORDER BY a",
            "SELECT cast(a as int) as b FROM t",
            "SELECT \"order\" FROM t",
            "SELECT a as x, b as y FROM t",
        ] {
            assert_eq!(normalize(same), same);
        }
    }
}
