//! Per-group accumulators for [`tarn_query::GroupedAggregate`]: what SQLite's
//! `count`, `sum`, `avg`, `min` and `max` compute, kept as partial states
//! that merge exactly (sums are exact, not just compensated).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};

use rusqlite::types::ValueRef;
use tarn_query::{AggKind, ExactSum};

use super::Val;
use super::value::to_val;

/// A group key value. Floats are keyed by their bits: `1` and `1.0` from one
/// expression land in two groups, where SQLite would make one (typed tarn
/// columns never mix them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyVal {
    Null,
    Int(i64),
    Real(u64),
    Text(Box<[u8]>),
    Blob(Box<[u8]>),
}

impl KeyVal {
    pub fn from_ref(v: ValueRef<'_>) -> KeyVal {
        match v {
            ValueRef::Null => KeyVal::Null,
            ValueRef::Integer(i) => KeyVal::Int(i),
            ValueRef::Real(f) => KeyVal::Real(f.to_bits()),
            ValueRef::Text(t) => KeyVal::Text(t.into()),
            ValueRef::Blob(b) => KeyVal::Blob(b.into()),
        }
    }

    /// A value the query node adds (EdgeLake's `extend=`), as a key.
    pub fn from_val(v: &Val) -> KeyVal {
        match v {
            Val::Null => KeyVal::Null,
            Val::Int(i) => KeyVal::Int(*i),
            Val::Float(f) => KeyVal::Real(f.to_bits()),
            Val::Bool(b) => KeyVal::Int(i64::from(*b)),
            Val::Text(t) => KeyVal::Text(t.as_bytes().into()),
        }
    }

    pub fn to_sql_value(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value as V;
        match self {
            KeyVal::Null => V::Null,
            KeyVal::Int(i) => V::Integer(*i),
            KeyVal::Real(b) => V::Real(f64::from_bits(*b)),
            KeyVal::Text(t) => V::Text(String::from_utf8_lossy(t).into_owned()),
            KeyVal::Blob(b) => V::Blob(b.to_vec()),
        }
    }
}

/// One aggregate's running state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum State {
    Count(i64),
    Sum(SumState),
    Avg(SumState),
    Min(Option<Val>),
    Max(Option<Val>),
    /// The distinct non-NULL values seen (`count(DISTINCT x)`).
    Distinct(Vec<KeyVal>, #[serde(skip)] hashbrown::HashSet<GroupKey>),
    Variance(VarState),
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SumState {
    n: i64,
    ints: i128,
    ints_only: bool,
    #[serde(with = "exact_wire")]
    exact: ExactSum,
}

/// Count, mean and sum of squared deviations (Welford), merged by Chan's
/// formula; `population` and `root` choose the final value.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VarState {
    n: i64,
    mean: f64,
    m2: f64,
    population: bool,
    root: bool,
}

/// An exact sum travels as its partials (and the infinity or NaN, if any).
mod exact_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tarn_query::ExactSum;

    pub fn serialize<S: Serializer>(v: &ExactSum, s: S) -> Result<S::Ok, S::Error> {
        (v.partials(), v.special()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ExactSum, D::Error> {
        let (parts, special): (Vec<f64>, Option<f64>) = Deserialize::deserialize(d)?;
        if parts.len() > 64 || parts.iter().any(|p| !p.is_finite()) {
            return Err(serde::de::Error::custom("not the partials of an exact sum"));
        }
        let mut e = ExactSum::from_partials(&parts);
        if let Some(x) = special {
            e.add(x);
        }
        Ok(e)
    }
}

impl State {
    pub fn new(kind: AggKind) -> State {
        match kind {
            AggKind::CountStar | AggKind::Count => State::Count(0),
            AggKind::Sum => State::Sum(SumState {
                ints_only: true,
                ..Default::default()
            }),
            AggKind::Avg => State::Avg(SumState {
                ints_only: true,
                ..Default::default()
            }),
            AggKind::Min => State::Min(None),
            AggKind::Max => State::Max(None),
            AggKind::CountDistinct => State::Distinct(Vec::new(), Default::default()),
            AggKind::Variance { population, root } => State::Variance(VarState {
                population,
                root,
                ..Default::default()
            }),
        }
    }

    /// Rebuilds what the wire form leaves out (the distinct set's index).
    /// Called on states that came from a peer.
    pub fn restore(&mut self) {
        if let State::Distinct(list, set) = self {
            set.clear();
            list.retain(|k| set.insert(GroupKey(vec![k.clone()])));
        }
    }

    /// Whether this state has the same kind as a fresh state of `kind` and
    /// holds possible values: states from a peer are checked against the
    /// plan before merging.
    pub fn fits(&self, kind: AggKind) -> bool {
        let sane = match self {
            State::Count(n) => *n >= 0,
            State::Sum(s) | State::Avg(s) => s.n >= 0,
            State::Variance(v) => v.n >= 0 && v.mean.is_finite() && v.m2.is_finite() && v.m2 >= 0.0,
            _ => true,
        };
        sane && matches!(
            (self, kind),
            (State::Count(_), AggKind::CountStar | AggKind::Count)
                | (State::Sum(_), AggKind::Sum)
                | (State::Avg(_), AggKind::Avg)
                | (State::Min(_), AggKind::Min)
                | (State::Max(_), AggKind::Max)
                | (State::Distinct(..), AggKind::CountDistinct)
        ) || matches!((self, kind), (State::Variance(v), AggKind::Variance { population, root }) if v.population == population && v.root == root)
    }

    /// Adds one row's argument (`None` for `count(*)`).
    pub fn update(&mut self, arg: Option<ValueRef<'_>>) {
        match (self, arg) {
            (State::Count(n), None) => *n += 1,
            (State::Count(n), Some(v)) if v != ValueRef::Null => *n += 1,
            (State::Sum(s) | State::Avg(s), Some(v)) => s.add(v),
            (State::Min(m), Some(v)) => keep(m, v, Ordering::Less),
            (State::Max(m), Some(v)) => keep(m, v, Ordering::Greater),
            (State::Distinct(list, set), Some(v)) if v != ValueRef::Null => {
                let key = [v];
                let rk = RowKey(&key);
                if !set.contains(&rk) {
                    let k = rk.to_owned();
                    list.push(k.0[0].clone());
                    set.insert(k);
                }
            }
            (State::Variance(s), Some(v)) => {
                if let Some(x) = number(v) {
                    s.n += 1;
                    let d = x - s.mean;
                    s.mean += d / s.n as f64;
                    s.m2 += d * (x - s.mean);
                }
            }
            _ => {}
        }
    }

    /// Distinct values held (to bound what a query keeps in memory).
    pub fn distinct_len(&self) -> usize {
        match self {
            State::Distinct(list, _) => list.len(),
            _ => 0,
        }
    }

    pub fn merge(&mut self, other: &State) {
        match (self, other) {
            // Saturating: states may come from peers, and no input may panic.
            (State::Count(a), State::Count(b)) => *a = a.saturating_add(*b),
            (State::Sum(a), State::Sum(b)) | (State::Avg(a), State::Avg(b)) => {
                a.n = a.n.saturating_add(b.n);
                a.ints = a.ints.saturating_add(b.ints);
                a.ints_only &= b.ints_only;
                a.exact.merge(&b.exact);
            }
            (State::Min(a), State::Min(Some(b))) => keep_val(a, b, Ordering::Less),
            (State::Max(a), State::Max(Some(b))) => keep_val(a, b, Ordering::Greater),
            (State::Distinct(list, set), State::Distinct(other, _)) => {
                for k in other {
                    if set.insert(GroupKey(vec![k.clone()])) {
                        list.push(k.clone());
                    }
                }
            }
            (State::Variance(a), State::Variance(b)) if b.n > 0 => {
                if a.n == 0 {
                    *a = b.clone();
                } else {
                    let n = a.n.saturating_add(b.n);
                    let d = b.mean - a.mean;
                    a.mean += d * b.n as f64 / n as f64;
                    a.m2 += b.m2 + d * d * (a.n as f64 * b.n as f64 / n as f64);
                    a.n = n;
                }
            }
            _ => {}
        }
    }

    /// The final value, or an error SQLite would also raise.
    pub fn finish(&self) -> Result<Val, &'static str> {
        Ok(match self {
            State::Count(n) => Val::Int(*n),
            State::Sum(s) if s.n == 0 => Val::Null,
            State::Sum(s) if s.ints_only => {
                Val::Int(i64::try_from(s.ints).map_err(|_| "integer overflow")?)
            }
            State::Sum(s) => Val::Float(s.exact.value()),
            State::Avg(s) if s.n == 0 => Val::Null,
            // Correctly rounded quotients: the same double however the rows
            // were split over operators or ordered.
            State::Avg(s) if s.ints_only => Val::Float(ExactSum::from_i128(s.ints).div(s.n as u64)),
            State::Avg(s) => Val::Float(s.exact.div(s.n as u64)),
            State::Min(v) | State::Max(v) => v.clone().unwrap_or(Val::Null),
            State::Distinct(list, _) => Val::Int(list.len() as i64),
            State::Variance(s) => {
                let d = if s.population { s.n } else { s.n - 1 };
                if d <= 0 {
                    Val::Null
                } else {
                    let var = (s.m2 / d as f64).max(0.0);
                    Val::Float(if s.root { var.sqrt() } else { var })
                }
            }
        })
    }
}

impl SumState {
    fn add(&mut self, v: ValueRef<'_>) {
        // SQLite reads text and blobs as numbers here ('12' is 12, 'x' is 0).
        let (i, f) = match v {
            ValueRef::Null => return,
            ValueRef::Integer(i) => (Some(i), i as f64),
            ValueRef::Real(f) => (None, f),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                let s = String::from_utf8_lossy(t);
                let s = s.trim();
                match s.parse::<i64>() {
                    Ok(i) => (Some(i), i as f64),
                    Err(_) => (None, s.parse::<f64>().unwrap_or(0.0)),
                }
            }
        };
        self.n += 1;
        match i {
            Some(i) => self.ints += i128::from(i),
            None => self.ints_only = false,
        }
        self.exact.add(f);
    }
}

/// A value read as a number, as SQLite's arithmetic does (NULL stays out).
fn number(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(
            String::from_utf8_lossy(t)
                .trim()
                .parse::<f64>()
                .unwrap_or(0.0),
        ),
    }
}

fn keep(m: &mut Option<Val>, v: ValueRef<'_>, want: Ordering) {
    if v == ValueRef::Null {
        return;
    }
    let replace = match m {
        None => true,
        Some(cur) => compare_ref(v, cur) == want,
    };
    if replace {
        *m = Some(to_val(v));
    }
}

fn keep_val(m: &mut Option<Val>, v: &Val, want: Ordering) {
    let replace = match m {
        None => true,
        Some(cur) => compare(v, cur) == want,
    };
    if replace {
        *m = Some(v.clone());
    }
}

/// SQLite's order across types: NULL < numbers < text; numbers by value,
/// text by bytes (BINARY collation).
pub fn compare(a: &Val, b: &Val) -> Ordering {
    fn class(v: &Val) -> u8 {
        match v {
            Val::Null => 0,
            Val::Int(_) | Val::Float(_) | Val::Bool(_) => 1,
            Val::Text(_) => 2,
        }
    }
    fn num(v: &Val) -> (Option<i64>, f64) {
        match v {
            Val::Int(i) => (Some(*i), *i as f64),
            Val::Bool(b) => (Some(i64::from(*b)), f64::from(u8::from(*b))),
            Val::Float(f) => (None, *f),
            _ => (None, 0.0),
        }
    }
    match class(a).cmp(&class(b)) {
        Ordering::Equal => match (a, b) {
            (Val::Text(x), Val::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Val::Null, Val::Null) => Ordering::Equal,
            _ => match (num(a), num(b)) {
                ((Some(x), _), (Some(y), _)) => x.cmp(&y),
                ((_, x), (_, y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            },
        },
        o => o,
    }
}

fn compare_ref(a: ValueRef<'_>, b: &Val) -> Ordering {
    match (a, b) {
        (ValueRef::Real(x), Val::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (ValueRef::Integer(x), Val::Int(y)) => x.cmp(y),
        (ValueRef::Text(x), Val::Text(y)) => x.cmp(y.as_bytes()),
        _ => compare(&to_val(a), b),
    }
}

/// A whole group key. Hashed by hand so that a [`RowKey`] (borrowed from
/// the row being scanned) hashes the same and can be looked up without
/// allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey(pub Vec<KeyVal>);

/// The key of the row under the cursor, borrowed.
pub struct RowKey<'a>(pub &'a [ValueRef<'a>]);

fn hash_ref(v: ValueRef<'_>, h: &mut impl Hasher) {
    match v {
        ValueRef::Null => h.write_u8(0),
        ValueRef::Integer(i) => {
            h.write_u8(1);
            h.write_i64(i)
        }
        ValueRef::Real(f) => {
            h.write_u8(2);
            h.write_u64(f.to_bits())
        }
        ValueRef::Text(t) => {
            h.write_u8(3);
            h.write(t);
            h.write_u8(0xff)
        }
        ValueRef::Blob(b) => {
            h.write_u8(4);
            h.write(b);
            h.write_u8(0xff)
        }
    }
}

impl KeyVal {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            KeyVal::Null => ValueRef::Null,
            KeyVal::Int(i) => ValueRef::Integer(*i),
            KeyVal::Real(b) => ValueRef::Real(f64::from_bits(*b)),
            KeyVal::Text(t) => ValueRef::Text(t),
            KeyVal::Blob(b) => ValueRef::Blob(b),
        }
    }

    fn same(&self, v: ValueRef<'_>) -> bool {
        match (self, v) {
            (KeyVal::Null, ValueRef::Null) => true,
            (KeyVal::Int(a), ValueRef::Integer(b)) => *a == b,
            (KeyVal::Real(a), ValueRef::Real(b)) => *a == b.to_bits(),
            (KeyVal::Text(a), ValueRef::Text(b)) => &a[..] == b,
            (KeyVal::Blob(a), ValueRef::Blob(b)) => &a[..] == b,
            _ => false,
        }
    }
}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.iter().for_each(|k| hash_ref(k.as_ref(), h));
    }
}

impl Hash for RowKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.iter().for_each(|v| hash_ref(*v, h));
    }
}

impl Equivalent<GroupKey> for RowKey<'_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.0.len() == key.0.len() && key.0.iter().zip(self.0).all(|(k, v)| k.same(*v))
    }
}

impl RowKey<'_> {
    pub fn to_owned(&self) -> GroupKey {
        GroupKey(self.0.iter().map(|v| KeyVal::from_ref(*v)).collect())
    }
}

/// Groups and their aggregate states.
pub type Groups = HashMap<GroupKey, Vec<State>>;

/// Merges `b` into `a`.
pub fn merge(a: &mut Groups, b: Groups) {
    for (k, states) in b {
        match a.get_mut(&k) {
            Some(cur) => cur.iter_mut().zip(&states).for_each(|(x, y)| x.merge(y)),
            None => {
                a.insert(k, states);
            }
        }
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    fn state(kind: AggKind, vals: &[ValueRef<'_>]) -> State {
        let mut s = State::new(kind);
        vals.iter().for_each(|v| s.update(Some(*v)));
        s
    }

    #[test]
    fn states_cross_the_wire_and_merge_like_one() {
        let kinds = [
            AggKind::Count,
            AggKind::CountDistinct,
            AggKind::Sum,
            AggKind::Avg,
            AggKind::Min,
            AggKind::Max,
            AggKind::Variance {
                population: false,
                root: true,
            },
        ];
        let a = [
            ValueRef::Real(0.1),
            ValueRef::Real(1e16),
            ValueRef::Integer(3),
        ];
        let b = [ValueRef::Real(-1e16), ValueRef::Real(0.1), ValueRef::Null];
        let all: Vec<ValueRef<'_>> = a.iter().chain(&b).copied().collect();
        for kind in kinds {
            let mut left = state(kind, &a);
            let wire = tarn_net::codec::encode(&state(kind, &b), 1 << 20).unwrap();
            let mut right: State = tarn_net::codec::decode(&wire, 1 << 20).unwrap();
            right.restore();
            assert!(right.fits(kind), "{kind:?}");
            left.merge(&right);
            assert_eq!(
                left.finish().map(|v| format!("{v:?}")),
                state(kind, &all).finish().map(|v| format!("{v:?}")),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn hostile_states_are_refused_or_saturate() {
        assert!(!State::Count(-1).fits(AggKind::Count));
        assert!(!State::Count(1).fits(AggKind::Sum));
        let mut c = State::Count(i64::MAX);
        c.merge(&State::Count(i64::MAX));
        assert_eq!(c.finish(), Ok(Val::Int(i64::MAX)));
    }
}
