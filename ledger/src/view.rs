//! The current view of the policies, derived from the set of entries.
//!
//! Rules (each author's entries are applied in chain order, authors in any
//! interleaving, and the result is the same):
//! - a `Put` shows its policy, unless its author has withdrawn that id;
//! - a `Put` that supersedes id X, or a `Revoke` of X, withdraws X for its
//!   author (other authors' copies of X stay);
//! - a policy several authors published (the same body, so the same id) is
//!   shown once, as published by the earliest entry (Lamport clock, then
//!   entry hash).

use std::collections::{BTreeMap, HashSet};

use crate::entry::{Author, Hash, Op, VerifiedEntry};

/// One policy as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    pub id: String,
    pub kind: String,
    pub author: Author,
    pub lamport: u64,
    pub time_ms: u64,
    pub policy: serde_json::Value,
}

/// The policies currently in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    live: BTreeMap<String, BTreeMap<(u64, Hash), PolicyRecord>>,
    withdrawn: HashSet<(Author, String)>,
}

impl View {
    pub(crate) fn apply(&mut self, e: &VerifiedEntry) {
        let entry = e.entry();
        match &entry.op {
            Op::Put { supersedes, .. } => {
                if let Some(old) = supersedes {
                    self.withdraw(entry.author, old);
                }
                let Some(p) = e.policy() else { return };
                let id = p.id();
                if self.withdrawn.contains(&(entry.author, id.clone())) {
                    return;
                }
                let rec = PolicyRecord {
                    id: id.clone(),
                    kind: p.kind().to_owned(),
                    author: entry.author,
                    lamport: entry.lamport,
                    time_ms: entry.time_ms,
                    policy: p.json().clone(),
                };
                self.live
                    .entry(id)
                    .or_default()
                    .insert((entry.lamport, e.hash()), rec);
            }
            Op::Revoke { id } => self.withdraw(entry.author, id),
        }
    }

    fn withdraw(&mut self, author: Author, id: &str) {
        self.withdrawn.insert((author, id.to_owned()));
        if let Some(copies) = self.live.get_mut(id) {
            copies.retain(|_, r| r.author != author);
            if copies.is_empty() {
                self.live.remove(id);
            }
        }
    }

    /// Every policy in force, one per id, in id order.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRecord> {
        self.live
            .values()
            .filter_map(|copies| copies.values().next())
    }

    /// Policies of one type (root key).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a PolicyRecord> + 'a {
        self.policies().filter(move |p| p.kind == kind)
    }

    pub fn get(&self, id: &str) -> Option<&PolicyRecord> {
        self.live.get(id).and_then(|c| c.values().next())
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}
