//! The deliveries stored lately, so that a resend is not stored twice. A
//! QoS 1 message whose acknowledgement was lost (a link that broke, a
//! broker that restarted, this node killed between storing and
//! acknowledging) comes again with the DUP flag, the same packet id and
//! payload; one found here was stored already, and is acknowledged without
//! being stored again.
//!
//! The keys are appended to a file once their rows are stored and before
//! they are acknowledged, so they outlive a crash of the process as the
//! streaming journal does; the window left is between the journal's write
//! and this one.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Deliveries remembered.
const CAPACITY: usize = 200_000;

#[derive(Debug)]
pub struct Resent {
    order: VecDeque<u64>,
    keys: HashSet<u64>,
    path: PathBuf,
    log: Option<File>,
    /// Whether opening `log` was tried (once: a failure is logged once).
    opened: bool,
    /// Keys in the file: it is rewritten with only the remembered ones
    /// when it holds twice as many.
    logged: usize,
}

impl Resent {
    /// The deliveries `path` remembers (none if it cannot be read).
    pub fn open(path: &Path) -> Resent {
        let mut r = Resent {
            order: VecDeque::new(),
            keys: HashSet::new(),
            path: path.to_owned(),
            log: None,
            opened: false,
            logged: 0,
        };
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(path) {
            let _ = f.read_to_end(&mut bytes);
        }
        // A key cut short by a crash is dropped.
        for k in bytes.chunks_exact(8) {
            r.remember(u64::from_le_bytes(k.try_into().expect("chunks of 8 bytes")));
        }
        r.logged = bytes.len() / 8;
        r
    }

    fn append(&self) -> Option<File> {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; resent messages are recognised until a restart only",
                    self.path.display()
                );
                None
            }
        }
    }

    pub fn contains(&self, k: u64) -> bool {
        self.keys.contains(&k)
    }

    /// Remembers deliveries whose rows are stored (before they are acknowledged).
    pub fn record(&mut self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        for &k in keys {
            self.remember(k);
        }
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
        // Opened on first use: a node that takes no MQTT has no such file.
        if !self.opened {
            self.opened = true;
            self.log = self.append();
        }
        if let Some(f) = &mut self.log
            && let Err(e) = f.write_all(&bytes)
        {
            tracing::warn!("{}: {e}", self.path.display());
        }
        self.logged += keys.len();
        if self.logged > 2 * CAPACITY {
            self.compact();
        }
    }

    fn remember(&mut self, k: u64) {
        if self.keys.insert(k) {
            self.order.push_back(k);
            if self.order.len() > CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    /// Rewrites the file with the remembered keys only.
    fn compact(&mut self) {
        let tmp = self.path.with_extension("tmp");
        let bytes: Vec<u8> = self.order.iter().flat_map(|k| k.to_le_bytes()).collect();
        match std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            Ok(()) => {
                self.logged = self.order.len();
                self.log = self.append();
            }
            Err(e) => tracing::warn!("{}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_across_a_reopen_and_forgets_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivered");
        let mut r = Resent::open(&path);
        r.record(&[1, 2, 3]);
        drop(r);
        // A crash may leave half a key at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 9, 9]).unwrap();
        let mut r = Resent::open(&path);
        assert!(r.contains(1) && r.contains(3) && !r.contains(4));
        let many: Vec<u64> = (10..10 + 2 * CAPACITY as u64 + 5).collect();
        r.record(&many);
        assert!(!r.contains(1), "the oldest is forgotten");
        assert!(r.contains(*many.last().unwrap()));
        assert!(std::fs::metadata(&path).unwrap().len() <= 8 * 2 * CAPACITY as u64 + 8);
        let r = Resent::open(&path);
        assert!(r.contains(*many.last().unwrap()) && !r.contains(10));
    }
}
