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
//!
//! In a closed network (a view with a root key) the view shows only what
//! admitted authors published (see [`crate::member`]), and a `Revoke` by the
//! root or an admin withdraws a policy whoever published it. Nothing is
//! forgotten when a member is revoked: its policies are hidden, and shown
//! again if it is admitted again.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::entry::{Author, Hash, Op, VerifiedEntry};
use crate::member::{self, Member, Members};

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
    /// The root key of a closed network; `None` for an open one.
    root: Option<Author>,
    /// Who revoked each id (in a closed network an admin's revoke counts
    /// for every copy).
    revokes: BTreeMap<String, BTreeSet<Author>>,
    members: Members,
    /// Bumped whenever the set of members changes.
    epoch: u64,
}

impl View {
    /// An empty view of a closed network named by its root key.
    pub(crate) fn closed(root: Author) -> View {
        View {
            root: Some(root),
            ..View::default()
        }
    }

    pub(crate) fn apply(&mut self, e: &VerifiedEntry) {
        let entry = e.entry();
        let touches_members = match &entry.op {
            Op::Revoke { .. } => true,
            Op::Put { policy, .. } => policy.starts_with("{\"member\":"),
        };
        self.apply_entry(e);
        if touches_members && let Some(root) = self.root {
            let next = Members::compute(
                root,
                self.live
                    .values()
                    .flat_map(|copies| copies.values())
                    .filter(|r| r.kind == member::KIND),
                |id| self.revokes.get(id).is_some_and(|by| by.contains(&root)),
            );
            if next != self.members {
                self.members = next;
                self.epoch += 1;
            }
        }
    }

    fn apply_entry(&mut self, e: &VerifiedEntry) {
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
            Op::Revoke { id } => {
                if self.root.is_some() {
                    self.revokes
                        .entry(id.clone())
                        .or_default()
                        .insert(entry.author);
                }
                self.withdraw(entry.author, id)
            }
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
            .filter_map(|copies| copies.values().find(|r| self.shown(r)))
    }

    /// Whether a stored copy counts: always in an open network; in a closed
    /// one, if its author is admitted and no admin revoked its id.
    fn shown(&self, r: &PolicyRecord) -> bool {
        if self.root.is_none() {
            return true;
        }
        if !self.admitted(&r.author) {
            return false;
        }
        if r.kind == member::KIND {
            return self.members.ids.contains(&r.id);
        }
        !self
            .revokes
            .get(&r.id)
            .is_some_and(|by| by.iter().any(|a| self.is_admin(a)))
    }

    /// The closed network's root key, if this is one.
    pub fn network(&self) -> Option<Author> {
        self.root
    }

    /// Whether `author` may take part: anyone in an open network; the root
    /// and the members in a closed one.
    pub fn admitted(&self, author: &Author) -> bool {
        match self.root {
            None => true,
            Some(root) => *author == root || self.members.by_author.contains_key(author),
        }
    }

    /// Whether `author` may admit others and revoke any policy.
    pub fn is_admin(&self, author: &Author) -> bool {
        self.root == Some(*author) || self.members.admins.contains(author)
    }

    /// A member of the closed network, by key.
    pub fn member(&self, author: &Author) -> Option<&Member> {
        self.members.by_author.get(author)
    }

    /// Every member, in key order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.by_author.values()
    }

    /// Changes whenever the set of members does (a cheap way to notice).
    pub fn members_epoch(&self) -> u64 {
        self.epoch
    }

    /// Policies of one type (root key).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a PolicyRecord> + 'a {
        self.policies().filter(move |p| p.kind == kind)
    }

    /// The copies of policies of one type that `author` published and has
    /// not withdrawn, including those another author published first (which
    /// [`View::of_kind`] shows under that author).
    pub fn authored_by<'a>(
        &'a self,
        author: &'a Author,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a PolicyRecord> + 'a {
        self.live
            .values()
            .flat_map(|copies| copies.values())
            .filter(move |r| r.author == *author && r.kind == kind && self.shown(r))
    }

    pub fn get(&self, id: &str) -> Option<&PolicyRecord> {
        self.live
            .get(id)
            .and_then(|c| c.values().find(|r| self.shown(r)))
    }

    pub fn len(&self) -> usize {
        match self.root {
            None => self.live.len(),
            Some(_) => self.policies().count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
