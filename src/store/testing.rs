//! Helpers for tests that write and count rows in real storages.

use std::path::Path;

use super::{Durability, Rows, Storage, Val};

/// A storage in `dir` for the node `name` with PeerId `peer`.
pub fn open(dir: &Path, name: &str, peer: &str) -> Storage {
    Storage::open(dir, name, peer, Durability::Normal, crate::clock::system())
        .expect("a storage opens in a fresh directory")
}

/// Batch `n`: rows with keys `10n..10n+10`; some carry a column the
/// others lack, some nulls, so schemas evolve differently per member.
pub fn rows_of(n: u64) -> Rows {
    let mut columns = vec!["k".to_owned(), "v".to_owned()];
    if n.is_multiple_of(3) {
        columns.push(format!("extra{}", n % 2));
    }
    let rows = (0..10)
        .map(|i| {
            let mut r = vec![Val::Int((n * 10 + i) as i64), Val::Float(i as f64 / 4.0)];
            if n.is_multiple_of(3) {
                r.push(if i % 4 == 0 {
                    Val::Null
                } else {
                    Val::Text(format!("x{i}"))
                });
            }
            r
        })
        .collect();
    Rows { columns, rows }
}

/// `(rows, distinct keys, keys in order)` of `lab.t`, read from its file.
pub fn keys(s: &Storage) -> (i64, i64, Vec<i64>) {
    let Some(path) = s.path_of("lab") else {
        return (0, 0, Vec::new());
    };
    let c = rusqlite::Connection::open(path).expect("the database file opens");
    let (n, d): (i64, i64) = c
        .query_row("SELECT count(*), count(DISTINCT k) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("lab.t has a column k");
    let mut st = c
        .prepare("SELECT k FROM t ORDER BY k")
        .expect("a valid query");
    let ks = st
        .query_map([], |r| r.get(0))
        .expect("a valid query")
        .map(|k| k.expect("an integer key"))
        .collect();
    (n, d, ks)
}
