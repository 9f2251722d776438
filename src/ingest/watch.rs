//! The watched directory: files named `dbms.table[.source.hash.instructions].json`
//! (optionally `.gz`) are each loaded as one batch, then moved to `archive/`,
//! or to `error/` with the reason in `<name>.err.txt` beside them.
//!
//! A file is read only once it is finished, judged three ways:
//! - its size and modification time have stayed the same for `settle_ms`;
//! - on Linux, no process holds it open for writing (a read lease cannot be
//!   taken on a file open for writing, so a writer that pauses past
//!   `settle_ms` with the file still open is waited for, however long);
//! - its JSON does not stop in the middle: a file that ends mid-object (or a
//!   gzip stream cut short) stays where it is until it has not changed for
//!   `incomplete_ms`, and only then goes to `error/`.
//!
//! A writer that closes the file half-written and reopens it later is the one
//! case these cannot tell from a finished file; the safe way to drop a file
//! in is still to write it elsewhere on the same file system and rename it
//! into the directory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Ingest, IngestError, IngestRequest};
use crate::config::WatchConfig;
use crate::store::ident;

/// Largest file (after decompression) the watcher loads.
const MAX_FILE: u64 = 1 << 30;

const OPEN_FOR_WRITING: &str = "is open for writing";

/// Whether a body stops where a JSON text cannot end: inside a string, with
/// an object or array still open, or (after trailing white space) on
/// anything but the `}` or `]` that closes one. One pass, by strings and
/// nesting alone (the parser judges the rest).
fn ends_mid_json(data: &[u8]) -> bool {
    let (mut depth, mut i) = (0usize, 0);
    while i < data.len() {
        match data[i] {
            b'"' => {
                i += 1;
                while i < data.len() && data[i] != b'"' {
                    i += if data[i] == b'\\' { 2 } else { 1 };
                }
                if i >= data.len() {
                    return true;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    depth > 0
        || !matches!(
            data.iter().rev().find(|b| !b.is_ascii_whitespace()),
            Some(b'}' | b']') | None
        )
}

/// What the watcher remembers about a file it has seen but not yet read.
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
    since: Instant,
    /// When the file, as it is now, was first found to end mid-JSON.
    incomplete: Option<Instant>,
}

/// Scans `dir` until `stop` fires.
pub struct Watcher {
    ingest: Arc<Ingest>,
    dir: PathBuf,
    settle: Duration,
    incomplete: Duration,
    seen: HashMap<PathBuf, Seen>,
}

/// What became of one attempt to load a file.
enum Loaded {
    Done {
        rows: usize,
        duplicate: bool,
    },
    /// The file is not finished: it stays for a later scan.
    NotYet(&'static str),
    Refused(String),
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
            incomplete: Duration::from_millis(cfg.incomplete_ms),
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
                incomplete: None,
            });
            if s.len != meta.len() || s.modified != modified {
                *s = Seen {
                    len: meta.len(),
                    modified,
                    since: now,
                    incomplete: None,
                };
                continue;
            }
            if now.duration_since(s.since) < self.settle {
                continue;
            }
            match self.try_load(&path, &name) {
                Loaded::Done { rows, duplicate } => {
                    tracing::info!(file = %name, rows, duplicate, "loaded watched file");
                    self.seen.remove(&path);
                    self.move_to(&path, &name, "archive", None);
                }
                Loaded::Refused(reason) => {
                    tracing::warn!(file = %name, "watched file refused: {reason}");
                    self.seen.remove(&path);
                    self.move_to(&path, &name, "error", Some(&reason));
                }
                Loaded::NotYet(why) => self.not_yet(&path, &name, why, now),
            }
        }
        self.seen.retain(|p, _| present.contains(p));
    }

    /// A file that is not finished waits for a later scan; one that ends
    /// mid-JSON goes to `error/` once unchanged for `incomplete_ms`.
    fn not_yet(&mut self, path: &Path, name: &str, why: &str, now: Instant) {
        let s = self.seen.get_mut(path).expect("the entry was just read");
        s.since = now;
        if why == OPEN_FOR_WRITING {
            tracing::debug!(file = %name, "watched file {why}; waiting");
            return;
        }
        let first = *s.incomplete.get_or_insert(now);
        if now.duration_since(first) + self.settle >= self.incomplete {
            let reason = format!(
                "{why}, and it has not changed for {} ms",
                self.incomplete.as_millis()
            );
            tracing::warn!(file = %name, "watched file refused: {reason}");
            self.seen.remove(path);
            self.move_to(path, name, "error", Some(&reason));
        } else {
            tracing::debug!(file = %name, "watched file {why}; waiting");
        }
    }

    fn try_load(&self, path: &Path, name: &str) -> Loaded {
        let parsed = match FileName::parse(name) {
            Ok(p) => p,
            Err(e) => return Loaded::Refused(e),
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => return Loaded::Refused(format!("cannot open: {e}")),
        };
        if lease::open_for_writing(&file) {
            return Loaded::NotYet(OPEN_FOR_WRITING);
        }
        let mut data = Vec::new();
        let read = if parsed.gz {
            flate2::read::GzDecoder::new(file)
                .take(MAX_FILE + 1)
                .read_to_end(&mut data)
        } else {
            file.take(MAX_FILE + 1).read_to_end(&mut data)
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Loaded::NotYet("the gzip stream ends before its end");
            }
            Err(e) => return Loaded::Refused(format!("cannot read: {e}")),
        }
        if data.len() as u64 > MAX_FILE {
            return Loaded::Refused(format!("larger than {MAX_FILE} bytes"));
        }
        let cut_short = ends_mid_json(&data);
        let req = IngestRequest {
            hash: parsed.hash,
            instructions: parsed.instructions,
            ..IngestRequest::batch(&parsed.dbms, &parsed.table, data.into(), &parsed.source)
        };
        match self.ingest.write(&req) {
            Ok((w, _)) => Loaded::Done {
                rows: w.rows,
                duplicate: w.duplicate,
            },
            Err(IngestError::MalformedJson(_)) if cut_short => {
                Loaded::NotYet("the file ends in the middle of its JSON")
            }
            Err(e) => Loaded::Refused(e.to_string()),
        }
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
            // Written aside and renamed, so the reason is never seen half-written.
            let tmp = PathBuf::from(format!("{}.tmp", note.display()));
            if let Err(e) = std::fs::write(&tmp, format!("{reason}\n"))
                .and_then(|()| std::fs::rename(&tmp, &note))
            {
                tracing::error!("writing {}: {e}", note.display());
            }
        }
    }
}

/// Whether another process holds a file open for writing, by asking for a
/// read lease: Linux refuses one (EAGAIN) while any writer has the file open.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod lease {
    use std::os::fd::AsRawFd;
    use std::sync::Once;

    pub fn open_for_writing(file: &std::fs::File) -> bool {
        // A lease is broken by a signal to its holder (SIGIO unless set
        // otherwise), whose default action ends the process; a writer that
        // opens the file in the instant the lease is held must not kill the
        // node. Nothing else in the node uses SIGIO.
        static IGNORE_SIGIO: Once = Once::new();
        IGNORE_SIGIO.call_once(|| {
            // SAFETY: setting a signal's disposition to SIG_IGN installs no
            // handler code and touches no memory of ours.
            unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        });
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is open for the whole call (borrowed from `file`);
        // F_SETLEASE takes an integer argument and touches no memory.
        let taken = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
        if taken == 0 {
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
            return false;
        }
        // EAGAIN: a writer has it open. Anything else (EACCES when the file
        // is another user's, EINVAL where leases are off or unsupported):
        // the settle time alone decides.
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
    }
}

#[cfg(not(target_os = "linux"))]
mod lease {
    pub fn open_for_writing(_: &std::fs::File) -> bool {
        false
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

    #[test]
    fn tells_json_cut_short() {
        for cut in [
            "[{\"a\": 1},",
            "{\"a\": 1}\n{\"a\"",
            "{\"a\": \"x}",
            "[{\"a\": 1}, 2",
        ] {
            assert!(ends_mid_json(cut.as_bytes()), "{cut}");
        }
        for whole in ["[{\"a\": 1}]", "{\"a\": 1}\n{\"a\": 2}\n\n", "", "  "] {
            assert!(!ends_mid_json(whole.as_bytes()), "{whole}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sees_a_writer_holding_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        let writer = std::fs::File::create(&path).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        assert!(lease::open_for_writing(&reader));
        drop(writer);
        assert!(!lease::open_for_writing(&reader));
    }
}

/// File names from arbitrary text: parsed or refused, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::FileName;

    proptest! {
        #[test]
        fn fuzz_file_names_never_panic(name in "[a-zA-Z0-9_.é日 -]{0,40}(\\.json|\\.json\\.gz)?") {
            if let Ok(f) = FileName::parse(&name) {
                prop_assert!(!f.dbms.is_empty() && !f.table.is_empty());
            }
        }
    }
}
