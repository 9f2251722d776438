//! The watched directory: files named `dbms.table[.source.hash.instructions].json`
//! (optionally `.gz`) are each loaded as one batch, then moved to `archive/`,
//! or to `error/` with the reason in `<name>.err.txt` beside them.
//!
//! A file is read only after its size and modification time have stayed the
//! same for `settle_ms`, so a file still being written is never read. The
//! safest way to drop a file in is still to write it elsewhere on the same
//! file system and rename it into the directory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Ingest, IngestRequest};
use crate::config::WatchConfig;
use crate::store::ident;

/// Largest file (after decompression) the watcher loads.
const MAX_FILE: u64 = 1 << 30;

/// What the watcher remembers about a file it has seen but not yet read.
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    since: Instant,
}

/// Scans `dir` until `stop` fires.
pub struct Watcher {
    ingest: Arc<Ingest>,
    dir: PathBuf,
    settle: Duration,
    seen: HashMap<PathBuf, Seen>,
}

/// The parts of a watched file's name.
#[derive(Debug, PartialEq, Eq)]
pub struct FileName {
    pub dbms: String,
    pub table: String,
    pub source: String,
    pub hash: Option<String>,
    pub instructions: String,
    pub gz: bool,
}

impl FileName {
    /// Parses `dbms.table[.source[.hash[.instructions]]].json[.gz]`.
    pub fn parse(name: &str) -> Result<FileName, String> {
        let (stem, gz) = if let Some(s) = name.strip_suffix(".json.gz") {
            (s, true)
        } else if let Some(s) = name.strip_suffix(".json") {
            (s, false)
        } else {
            return Err("the name does not end in .json or .json.gz".into());
        };
        let parts: Vec<&str> = stem.split('.').collect();
        if parts.len() < 2 || parts.len() > 5 {
            return Err("expected dbms.table[.source.hash.instructions].json".into());
        }
        let dbms = ident("database", parts[0]).map_err(|e| e.to_string())?;
        let table = ident("table", parts[1]).map_err(|e| e.to_string())?;
        let part = |i: usize| {
            parts
                .get(i)
                .filter(|p| !p.is_empty())
                .map(|p| p.to_string())
        };
        Ok(FileName {
            dbms,
            table,
            source: part(2).unwrap_or_else(|| "file".into()),
            hash: part(3).filter(|h| h != "0"),
            instructions: part(4).unwrap_or_default(),
            gz,
        })
    }
}

impl Watcher {
    pub fn new(ingest: Arc<Ingest>, cfg: &WatchConfig, dir: PathBuf) -> anyhow::Result<Watcher> {
        for sub in ["", "archive", "error"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Watcher {
            ingest,
            dir,
            settle: Duration::from_millis(cfg.settle_ms),
            seen: HashMap::new(),
        })
    }

    /// One pass: loads every file that has settled. Blocking.
    pub fn scan(&mut self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("reading watch directory {}: {e}", self.dir.display());
                return;
            }
        };
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.file_type().is_symlink() && !name.starts_with('.') {
                // Following it could read anything the node may read.
                self.move_to(
                    &path,
                    &name,
                    "error",
                    Some("a symbolic link is not read; move the file itself in"),
                );
                continue;
            }
            // Hidden and temporary names are files still being written.
            if !meta.is_file()
                || name.starts_with('.')
                || name.ends_with(".tmp")
                || name.ends_with(".part")
            {
                continue;
            }
            present.push(path.clone());
            let now = Instant::now();
            let modified = meta.modified().ok();
            let s = self.seen.entry(path.clone()).or_insert(Seen {
                len: meta.len(),
                modified,
                since: now,
            });
            if s.len != meta.len() || s.modified != modified {
                *s = Seen {
                    len: meta.len(),
                    modified,
                    since: now,
                };
                continue;
            }
            if now.duration_since(s.since) < self.settle {
                continue;
            }
            self.seen.remove(&path);
            self.load(&path, &name);
        }
        self.seen.retain(|p, _| present.contains(p));
    }

    fn load(&self, path: &Path, name: &str) {
        match self.try_load(path, name) {
            Ok((rows, duplicate)) => {
                tracing::info!(file = %name, rows, duplicate, "loaded watched file");
                self.move_to(path, name, "archive", None);
            }
            Err(reason) => {
                tracing::warn!(file = %name, "watched file refused: {reason}");
                self.move_to(path, name, "error", Some(&reason));
            }
        }
    }

    fn try_load(&self, path: &Path, name: &str) -> Result<(usize, bool), String> {
        let parsed = FileName::parse(name)?;
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let mut data = Vec::new();
        let read = if parsed.gz {
            flate2::read::GzDecoder::new(file)
                .take(MAX_FILE + 1)
                .read_to_end(&mut data)
        } else {
            file.take(MAX_FILE + 1).read_to_end(&mut data)
        };
        read.map_err(|e| format!("cannot read: {e}"))?;
        if data.len() as u64 > MAX_FILE {
            return Err(format!("larger than {MAX_FILE} bytes"));
        }
        let req = IngestRequest {
            hash: parsed.hash,
            instructions: parsed.instructions,
            ..IngestRequest::batch(&parsed.dbms, &parsed.table, data.into(), &parsed.source)
        };
        let (w, _) = self.ingest.write(&req).map_err(|e| e.to_string())?;
        Ok((w.rows, w.duplicate))
    }

    fn move_to(&self, path: &Path, name: &str, sub: &str, reason: Option<&str>) {
        let dir = self.dir.join(sub);
        let mut dest = dir.join(name);
        let mut n = 1;
        while dest.exists() {
            dest = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        if let Err(e) = std::fs::rename(path, &dest) {
            tracing::error!("moving {} to {}: {e}", path.display(), dest.display());
            return;
        }
        if let Some(reason) = reason {
            let note = PathBuf::from(format!("{}.err.txt", dest.display()));
            if let Err(e) = std::fs::write(&note, format!("{reason}\n")) {
                tracing::error!("writing {}: {e}", note.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_names() {
        assert_eq!(
            FileName::parse("lab.readings.dev7.abc123.none.json.gz").unwrap(),
            FileName {
                dbms: "lab".into(),
                table: "readings".into(),
                source: "dev7".into(),
                hash: Some("abc123".into()),
                instructions: "none".into(),
                gz: true,
            }
        );
        let f = FileName::parse("Lab.T.json").unwrap();
        assert_eq!(
            (f.dbms.as_str(), f.table.as_str(), f.hash, f.gz),
            ("lab", "t", None, false)
        );
        for bad in [
            "lab.json",
            "lab.t.csv",
            "a.b.c.d.e.f.json",
            "1x.t.json",
            "lab.t-x.json",
        ] {
            assert!(FileName::parse(bad).is_err(), "{bad}");
        }
    }
}
