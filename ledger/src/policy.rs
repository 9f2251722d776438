//! Policies: shape, canonical encoding, id.

use serde_json::Value;

/// Largest policy accepted, in bytes of JSON.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Deepest nesting accepted inside a policy.
pub const MAX_DEPTH: usize = 16;

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("a policy is at most {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    #[error("a policy is not valid JSON: {0}")]
    Json(String),
    #[error(
        "a policy is one object with one root key naming its type, like {{\"operator\": {{...}}}}"
    )]
    Shape,
    #[error("policy type {0:?} must be 1-64 letters, digits or '_'")]
    Kind(String),
    #[error("a policy nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    kind: String,
    body: Value,
}

impl Policy {
    /// Parses and checks a policy in EdgeLake's JSON form.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge);
        }
        let v: Value = serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        Policy::from_value(v)
    }

    /// Checks an already parsed policy.
    pub fn from_value(v: Value) -> Result<Policy, PolicyError> {
        let Value::Object(root) = &v else {
            return Err(PolicyError::Shape);
        };
        if root.len() != 1 {
            return Err(PolicyError::Shape);
        }
        let (kind, body) = root.iter().next().expect("one key was just counted");
        if !body.is_object() {
            return Err(PolicyError::Shape);
        }
        if kind.is_empty()
            || kind.len() > 64
            || !kind.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(PolicyError::Kind(kind.clone()));
        }
        if depth(&v) > MAX_DEPTH {
            return Err(PolicyError::TooDeep);
        }
        Ok(Policy {
            kind: kind.clone(),
            body: v,
        })
    }

    /// The policy's type: its root key.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The policy as JSON.
    pub fn json(&self) -> &Value {
        &self.body
    }

    /// The canonical encoding: JSON with object keys sorted by their UTF-8
    /// bytes, no white space, numbers as serde_json writes them (integers
    /// exactly, floats in shortest round-trip form).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        canonical(&self.body, &mut out);
        out
    }

    /// The id: BLAKE3 of the canonical encoding, 32 hex digits.
    pub fn id(&self) -> String {
        blake3::hash(&self.canonical()).to_hex()[..32].to_owned()
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(&o[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_is_not_a_policy() {
        for bad in [
            "[]",
            "{}",
            "{\"a\": 1}",
            "{\"a\": {}, \"b\": {}}",
            "{\"a b\": {}}",
            "not json",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        let deep = format!(
            "{{\"a\": {}{}}}",
            "{\"x\": ".repeat(20) + "1",
            "}".repeat(20)
        );
        assert_eq!(Policy::parse(&deep), Err(PolicyError::TooDeep));
        let big = format!("{{\"a\": {{\"x\": \"{}\"}}}}", "y".repeat(MAX_POLICY_BYTES));
        assert_eq!(Policy::parse(&big), Err(PolicyError::TooLarge));
    }

    #[test]
    fn canonical_form_is_stable() {
        let p = Policy::parse(
            r#"{"cluster": {"table": [{"name": "t", "dbms": "d"}], "name": "c1", "n": 1.50}}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(p.canonical()).unwrap(),
            r#"{"cluster":{"n":1.5,"name":"c1","table":[{"dbms":"d","name":"t"}]}}"#
        );
        // A pinned id: changing the encoding changes every id in every ledger.
        assert_eq!(p.id(), blake3::hash(&p.canonical()).to_hex()[..32]);
        assert_eq!(p.id().len(), 32);
    }

    proptest! {
        #[test]
        fn id_ignores_key_order(keys in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 1..8)) {
            let fwd: Vec<String> = keys.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            let rev: Vec<String> = fwd.iter().rev().cloned().collect();
            let a = Policy::parse(&format!("{{\"t\": {{{}}}}}", fwd.join(","))).unwrap();
            let b = Policy::parse(&format!("{{\"t\": {{{}}}}}", rev.join(", "))).unwrap();
            prop_assert_eq!(a.id(), b.id());
        }
    }
}
