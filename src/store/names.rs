//! Which names tarn accepts for databases, tables and columns, and which
//! it keeps for itself.

use std::path::Path;

use super::StoreError;

/// Columns every stored row carries besides its own.
pub const SYSTEM_COLUMNS: [&str; 4] = ["row_id", "insert_timestamp", "tsd_name", "tsd_id"];

/// Names SQLite gives every table's row id: a column may not take them.
pub const ROWID_ALIASES: [&str; 3] = ["rowid", "oid", "_rowid_"];

/// Most columns a table may have, tarn's four included (SQLite's limit).
pub const MAX_COLUMNS: usize = 2000;

/// Names no user database may take.
pub const RESERVED_DBS: [&str; 2] = ["almgm", "system_query"];

/// Longest identifier accepted (databases, tables, columns).
pub const MAX_IDENT: usize = 64;

/// Checks a database, table or column name and returns it in lower case.
/// tarn names are `[a-z_][a-z0-9_]*`, like EdgeLake's, so they never need quoting.
pub fn ident(kind: &str, name: &str) -> Result<String, StoreError> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= MAX_IDENT
        && lower
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && lower
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !lower.starts_with("sqlite_")
        && !lower.starts_with("tarn_");
    if ok {
        Ok(lower)
    } else {
        Err(StoreError::InvalidName(format!(
            "{kind} name {name:?} is not a valid identifier: use letters, digits and _ \
             (not first), at most {MAX_IDENT} characters, not starting with sqlite_ or tarn_"
        )))
    }
}

/// A column's name as rows may send it, in lower case: a valid name that
/// is neither one of tarn's own columns nor one of SQLite's row id.
pub fn column(name: &str) -> Result<String, StoreError> {
    let lower = ident("column", name)?;
    if SYSTEM_COLUMNS.contains(&lower.as_str()) {
        return Err(StoreError::InvalidName(format!(
            "column {name:?} is set by tarn and cannot be sent"
        )));
    }
    if ROWID_ALIASES.contains(&lower.as_str()) {
        return Err(StoreError::InvalidName(format!(
            "column {name:?} is a name SQLite keeps for the row id; rename it"
        )));
    }
    Ok(lower)
}

/// A user database's name, in lower case (not one tarn reserves).
pub fn user_db(db: &str) -> Result<String, StoreError> {
    let name = ident("database", db)?;
    if RESERVED_DBS.contains(&name.as_str()) {
        return Err(StoreError::InvalidName(format!(
            "database name {name:?} is reserved by tarn"
        )));
    }
    Ok(name)
}

/// The database a file under `dbms/` holds, if it is one of tarn's.
pub(super) fn db_name_of(path: &Path) -> Option<String> {
    if path.extension()? != "db" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    ident("database", stem).ok().filter(|s| s == stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(ident("table", "Temp_1").unwrap(), "temp_1");
        for bad in [
            "",
            "1abc",
            "a b",
            "a;drop",
            "sqlite_master",
            "tarn_x",
            &"x".repeat(65),
        ] {
            assert!(ident("table", bad).is_err(), "{bad}");
        }
        assert!(user_db("almgm").is_err());
        for bad in ["row_id", "ROWID", "oid", "_rowid_", "tsd_name"] {
            assert!(column(bad).is_err(), "{bad}");
        }
        assert_eq!(column("Temp").unwrap(), "temp");
    }
}
