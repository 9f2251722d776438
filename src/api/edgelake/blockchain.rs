//! `blockchain get <type|(t1, t2)|*> [where k = v [and ...]] [bring...]`
//! and `blockchain insert where policy = !x`, over the ledger, with the
//! policies shaped as EdgeLake lists them.

use serde_json::Value;

use super::{AppState, Reply, code, split_and, unquote};

/// A parsed `blockchain get`.
#[derive(Debug, PartialEq)]
pub(super) struct Query {
    types: Vec<String>,
    conds: Vec<(String, String)>,
    bring: Option<String>,
}

impl Query {
    /// Parses what follows `blockchain get`.
    pub(super) fn parse(rest: &str) -> Result<Query, &'static str> {
        let rest = rest.trim();
        let lower = rest.to_ascii_lowercase();
        let (head, bring) = match lower.find(" bring") {
            Some(i) => (&rest[..i], Some(rest[i..].trim().to_owned())),
            None => (rest, None),
        };
        let (types, conds) = match head.to_ascii_lowercase().find(" where ") {
            Some(i) => (&head[..i], where_pairs(&head[i + 7..])),
            None => (head, Vec::new()),
        };
        let types: Vec<String> = types
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        if types.is_empty() {
            return Err("expected: blockchain get <type> [where key = value] [bring...]");
        }
        Ok(Query {
            types,
            conds,
            bring,
        })
    }

    /// The policies it selects.
    fn select(&self, policies: Vec<(String, Value)>) -> Vec<Value> {
        policies
            .into_iter()
            .filter(|(k, _)| self.types.iter().any(|t| t == "*" || t == k))
            .filter(|(k, v)| {
                self.conds
                    .iter()
                    .all(|(key, want)| match &v[k][key.as_str()] {
                        Value::String(s) => s.eq_ignore_ascii_case(want),
                        Value::Null => false,
                        other => *other.to_string() == **want,
                    })
            })
            .map(|(_, v)| v)
            .collect()
    }
}

pub(super) fn get(s: &AppState, rest: &str) -> Reply {
    let q = match Query::parse(rest) {
        Ok(q) => q,
        Err(e) => return Reply::err(code::COMMAND, e),
    };
    let matches = s.mesh.with_view(|v| q.select(super::shapes::policies(v)));
    match &q.bring {
        None => Reply::Json(Value::Array(matches).to_string()),
        Some(b) => bring(matches, b),
    }
}

/// `bring.count`, `bring.first`, `bring.last`, `bring[.unique] [type][key]
/// ... [separator=X]`.
fn bring(matches: Vec<Value>, bring: &str) -> Reply {
    let b = bring.to_ascii_lowercase();
    if b.starts_with("bring.count") {
        return Reply::Text(matches.len().to_string());
    }
    if b.starts_with("bring.first") {
        return Reply::Json(Value::Array(matches.into_iter().take(1).collect()).to_string());
    }
    if b.starts_with("bring.last") {
        return Reply::Json(
            Value::Array(matches.into_iter().last().into_iter().collect()).to_string(),
        );
    }
    let unique = b.starts_with("bring.unique");
    if unique && !bring.contains('[') {
        // The policies themselves, each once.
        let mut seen: Vec<Value> = Vec::new();
        for m in matches {
            if !seen.contains(&m) {
                seen.push(m);
            }
        }
        return Reply::Json(Value::Array(seen).to_string());
    }
    let sep = b.find("separator=").map(|i| {
        bring[i + 10..]
            .trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .to_owned()
    });
    let keys: Vec<String> = bring
        .split('[')
        .skip(1)
        .filter_map(|k| k.split(']').next())
        .map(|k| k.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
        .collect();
    let mut values: Vec<String> = Vec::new();
    for v in &matches {
        let Some((kind, body)) = v.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let key = match keys.as_slice() {
            [t, k] if t == kind || t == "*" => k,
            [k] => k,
            _ => continue,
        };
        let val = match &body[key.as_str()] {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        if !unique || !values.contains(&val) {
            values.push(val);
        }
    }
    Reply::Text(values.join(sep.as_deref().unwrap_or("")))
}

fn where_pairs(s: &str) -> Vec<(String, String)> {
    split_and(s)
        .into_iter()
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), unquote(v.trim()).to_owned()))
        })
        .collect()
}

/// The policy a command carries: in the body as the bare policy, as
/// `name={...}`, or as EdgeLake's assignment `<name={...}>`; or inline in
/// the command (`... where policy = {...}`).
fn policy_of(cmd: &str, body: &[u8]) -> Result<tarn_ledger::policy::Policy, Reply> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Reply::err(code::COMMAND, "the policy is not UTF-8"));
    };
    let mut text = text.trim();
    if let Some(inner) = text.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        text = inner.trim();
    }
    if let Some(i) = text.find('=')
        && !text.starts_with('{')
        && text[..i]
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '!')
    {
        text = text[i + 1..].trim();
    }
    if text.is_empty()
        && let Some(i) = cmd.find('{')
    {
        text = cmd[i..].trim();
    }
    tarn_ledger::policy::Policy::parse(text)
        .map_err(|e| Reply::err(code::COMMAND, format!("the policy is not valid: {e}")))
}

/// `blockchain prepare policy !x` with the policy in the body: checks it and
/// answers it with the `id` the ledger will give it (EdgeLake adds its id
/// and date the same way). Nothing is stored.
pub(super) fn prepare(cmd: &str, body: &[u8]) -> Reply {
    let policy = match policy_of(cmd, body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut v = policy.json().clone();
    if let Some(b) = v.get_mut(policy.kind()).and_then(Value::as_object_mut) {
        b.insert("id".into(), policy.id().into());
    }
    Reply::Json(v.to_string())
}

/// `blockchain insert where policy = !x ...` with the policy in the body
/// (see [`policy_of`]).
pub(super) async fn insert(s: &AppState, cmd: &str, body: &[u8]) -> Reply {
    let policy = match policy_of(cmd, body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if s.mesh.with_view(|v| v.get(&policy.id()).is_some()) {
        return Reply::Text(String::new());
    }
    match s.mesh.publish_for_client(&policy).await {
        Ok(_) => Reply::Text(String::new()),
        Err(e) => Reply::from_error(&e),
    }
}

/// `blockchain get`'s filter language over arbitrary text: parsed and run
/// over sample policies, or refused, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn policies() -> Vec<(String, Value)> {
        let p = |k: &str, v: Value| (k.to_owned(), serde_json::json!({ k: v }));
        vec![
            p(
                "operator",
                serde_json::json!({"name": "a", "port": 7, "cluster": "c1"}),
            ),
            p(
                "table",
                serde_json::json!({"dbms": "lab", "name": "t", "cluster": "c1"}),
            ),
            p(
                "sensor",
                serde_json::json!({"name": "é日", "n": null, "list": [1, 2]}),
            ),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_filters_never_panic(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "operator", "table", "sensor", "*", "(", ")", ",", " where ", " and ", "name",
                " = ", "'a'", "\"lab\"", " bring", ".count", ".first", ".last", ".unique", "[",
                "]", "[*]", "[name]", " separator=", "'", "\"", "é", "\u{2003}", " ", "7",
            ]),
            0..24,
        )) {
            if let Ok(q) = Query::parse(&parts.concat()) {
                let matches = q.select(policies());
                if let Some(b) = &q.bring {
                    let _ = bring(matches, b);
                }
            }
        }
    }
}
