//! Closed networks: who is admitted, from `member` policies.
//!
//! A closed network is named by its root key. A `member` policy admits one
//! peer (by PeerId) with its services and, for an operator, its cluster:
//!
//! ```json
//! {"member": {"peer": "12D3KooW...", "services": ["operator"], "cluster": "c1",
//!             "admin": false, "admitted_ms": 1764633600000}}
//! ```
//!
//! It counts when its author is the root or an admitted admin (a member with
//! `"admin": true`), and until the root or its own author revokes it. That
//! rule only ever adds admins as it is applied, so the set of members is a
//! least fixpoint every replica computes alike from the same entries.

use std::collections::{BTreeMap, BTreeSet};

use crate::entry::Author;
use crate::view::PolicyRecord;

/// The policy type that admits a peer.
pub const KIND: &str = "member";

/// One admitted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The admitted peer's key.
    pub author: Author,
    /// Its PeerId, as the policy names it.
    pub peer: String,
    pub services: Vec<String>,
    pub cluster: Option<String>,
    /// May admit others and revoke any policy.
    pub admin: bool,
    /// The admitting policy's id.
    pub id: String,
    /// Who admitted it.
    pub by: Author,
    /// The admitting entry's Lamport clock.
    pub lamport: u64,
}

impl Member {
    /// Reads a `member` policy record; `None` if it is not well formed.
    fn from_record(r: &PolicyRecord) -> Option<Member> {
        let body = r.policy.get(KIND)?;
        let peer = body.get("peer")?.as_str()?;
        let author = author_of_peer_id(peer)?;
        let services = match body.get("services") {
            None => Vec::new(),
            Some(v) => v
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
        };
        let cluster = match body.get("cluster") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_str()?.to_owned()),
        };
        let admin = match body.get("admin") {
            None => false,
            Some(v) => v.as_bool()?,
        };
        Some(Member {
            author,
            peer: peer.to_owned(),
            services,
            cluster,
            admin,
            id: r.id.clone(),
            by: r.author,
            lamport: r.lamport,
        })
    }
}

/// The members of a closed network, as computed from the policies in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Members {
    pub(crate) by_author: BTreeMap<Author, Member>,
    /// Ids of the member policies that count.
    pub(crate) ids: BTreeSet<String>,
    /// Who may admit and revoke: the root and every member any policy
    /// that counts made an admin.
    pub(crate) admins: BTreeSet<Author>,
}

impl Members {
    /// Computes the members from `member` records (every copy of every id),
    /// given the root and which ids the root revoked.
    pub(crate) fn compute<'a>(
        root: Author,
        records: impl Iterator<Item = &'a PolicyRecord> + Clone,
        revoked_by_root: impl Fn(&str) -> bool,
    ) -> Members {
        let mut admins = BTreeSet::from([root]);
        loop {
            let mut by_author: BTreeMap<Author, Member> = BTreeMap::new();
            for r in records.clone() {
                if !admins.contains(&r.author) || revoked_by_root(&r.id) {
                    continue;
                }
                let Some(m) = Member::from_record(r) else {
                    continue;
                };
                // Several policies for one peer: the latest counts.
                let newer = by_author
                    .get(&m.author)
                    .is_none_or(|old| (m.lamport, &m.id) > (old.lamport, &old.id));
                if newer {
                    by_author.insert(m.author, m);
                }
            }
            // Admins only ever grow: a newer policy without `admin` does not
            // demote (only the root's revocation does), so this ends, even
            // when two admins each publish a demotion of the other.
            let next: BTreeSet<Author> = admins
                .iter()
                .copied()
                .chain(by_author.values().filter(|m| m.admin).map(|m| m.author))
                .collect();
            if next == admins {
                let ids = by_author.values().map(|m| m.id.clone()).collect();
                return Members {
                    by_author,
                    ids,
                    admins,
                };
            }
            admins = next;
        }
    }
}

/// The ed25519 key behind a PeerId string (`12D3KooW...`), if it is one.
pub fn author_of_peer_id(s: &str) -> Option<Author> {
    // A PeerId of an ed25519 key is the identity multihash of its protobuf
    // encoding: 0x00 (identity), 36 (length), then the key's protobuf.
    const PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    if s.len() > 64 {
        return None;
    }
    let bytes = bs58::decode(s).into_vec().ok()?;
    if bytes.len() != 38 || bytes[..6] != PREFIX {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[6..]);
    Some(Author(key))
}

/// The PeerId string of an author's key.
pub fn peer_id_of(author: &Author) -> String {
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&author.0);
    bs58::encode(bytes).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_round_trip() {
        let a = Author([7; 32]);
        let s = peer_id_of(&a);
        assert!(s.starts_with("12D3KooW"), "{s}");
        assert_eq!(author_of_peer_id(&s), Some(a));
        for bad in [
            "",
            "12D3KooW",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
            "0OIl",
        ] {
            assert_eq!(author_of_peer_id(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;
    use crate::testing::{key, put};
    use crate::{AppendError, Entry, Ledger, Op, VerifiedEntry};

    fn member(of: u8, admin: bool, cluster: Option<&str>) -> Op {
        let peer = peer_id_of(&Author(key(of).verifying_key().to_bytes()));
        let c = cluster.map_or("null".to_owned(), |c| format!("{c:?}"));
        put(&format!(
            r#"{{"member": {{"peer": "{peer}", "services": ["operator"], "cluster": {c}, "admin": {admin}}}}}"#
        ))
    }

    fn author(n: u8) -> Author {
        Author(key(n).verifying_key().to_bytes())
    }

    /// Root 1 admits admin 2; 2 admits 3; 4 is a stranger.
    #[test]
    fn only_members_write_and_revoked_ones_vanish() {
        let root = author(1);
        let mut l = Ledger::in_memory_network(Some(root)).unwrap();
        let stranger = Entry::sign(&key(4), 1, None, 1, 0, put(r#"{"x": {"a": 1}}"#)).unwrap();
        assert_eq!(l.apply(&stranger), Err(AppendError::NotAdmitted(author(4))));
        let admit2 = l.append_local(&key(1), member(2, true, None), 0).unwrap();
        let admit3 = l
            .append_local(&key(2), member(3, false, Some("c1")), 0)
            .unwrap();
        let p3 = l
            .append_local(&key(3), put(r#"{"table": {"name": "t"}}"#), 0)
            .unwrap();
        assert!(l.view().admitted(&author(3)));
        assert_eq!(
            l.view().member(&author(3)).unwrap().cluster.as_deref(),
            Some("c1")
        );
        assert!(l.view().is_admin(&author(2)) && !l.view().is_admin(&author(3)));
        let p3_id = p3.policy().unwrap().id();
        assert!(l.view().get(&p3_id).is_some());
        // A stranger's heads are not wanted.
        assert!(l.wants(&[(author(4), 5)]).is_empty());

        // Revoking the admin (by the root) revokes what it admitted too.
        let admit2_id = admit2.policy().unwrap().id();
        l.append_local(&key(1), Op::Revoke { id: admit2_id }, 0)
            .unwrap();
        assert!(!l.view().admitted(&author(2)) && !l.view().admitted(&author(3)));
        assert!(
            l.view().get(&p3_id).is_none(),
            "a revoked member's policy is hidden"
        );
        assert!(l.view().get(&admit3.policy().unwrap().id()).is_none());
        let later = Entry::sign(&key(3), 2, Some(p3.hash()), 9, 0, put(r#"{"y": {}}"#)).unwrap();
        assert_eq!(l.apply(&later), Err(AppendError::NotAdmitted(author(3))));
    }

    /// Any admin may revoke any policy but a member one (that is for the
    /// root and the member policy's own author).
    #[test]
    fn admins_revoke_any_policy() {
        let mut l = Ledger::in_memory_network(Some(author(1))).unwrap();
        l.append_local(&key(1), member(2, true, None), 0).unwrap();
        l.append_local(&key(1), member(3, false, None), 0).unwrap();
        let p = l
            .append_local(&key(3), put(r#"{"bogus": {"a": 1}}"#), 0)
            .unwrap();
        let id = p.policy().unwrap().id();
        l.append_local(&key(2), Op::Revoke { id: id.clone() }, 0)
            .unwrap();
        assert!(l.view().get(&id).is_none());
        assert!(l.view().admitted(&author(3)), "3 is still a member");
    }

    /// Two admins that each publish a demotion of the other: the members
    /// are still computed (once an admin, an admin until the root revokes).
    #[test]
    fn mutual_demotion_ends() {
        let mut l = Ledger::in_memory_network(Some(author(1))).unwrap();
        l.append_local(&key(1), member(2, true, None), 0).unwrap();
        l.append_local(&key(1), member(3, true, None), 0).unwrap();
        l.append_local(&key(2), member(3, false, None), 0).unwrap();
        l.append_local(&key(3), member(2, false, None), 0).unwrap();
        assert!(l.view().is_admin(&author(2)) && l.view().is_admin(&author(3)));
    }

    /// Every replica computes the same view whatever order the entries
    /// arrive in (refused ones come again, as anti-entropy brings them).
    #[test]
    fn the_view_is_the_same_in_any_order() {
        let mut a = Ledger::in_memory_network(Some(author(1))).unwrap();
        let mut all: Vec<VerifiedEntry> = vec![
            a.append_local(&key(1), member(2, true, None), 0).unwrap(),
            a.append_local(&key(2), member(3, false, Some("c")), 0)
                .unwrap(),
            a.append_local(&key(3), put(r#"{"t": {"n": 1}}"#), 0)
                .unwrap(),
            a.append_local(&key(2), member(5, false, None), 0).unwrap(),
            a.append_local(&key(5), put(r#"{"t": {"n": 2}}"#), 0)
                .unwrap(),
        ];
        let id5 = all[3].policy().unwrap().id();
        all.push(a.append_local(&key(1), Op::Revoke { id: id5 }, 0).unwrap());
        for seed in 0..20u64 {
            let mut order = all.clone();
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            for i in (1..order.len()).rev() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let mut b = Ledger::in_memory_network(Some(author(1))).unwrap();
            for _ in 0..order.len() {
                for e in &order {
                    let _ = b.apply(e);
                }
            }
            assert_eq!(
                b.view().policies().map(|p| &p.id).collect::<Vec<_>>(),
                a.view().policies().map(|p| &p.id).collect::<Vec<_>>(),
                "seed {seed}"
            );
            assert!(!b.view().admitted(&author(5)));
        }
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;
    use crate::testing::{key, put};
    use crate::{AppendError, Ledger, MAX_AUTHOR_BYTES};

    /// A member that floods the ledger is refused once it has written its
    /// share; the root is not counted.
    #[test]
    fn a_flooding_member_is_stopped() {
        let root = Author(key(1).verifying_key().to_bytes());
        let mut l = Ledger::in_memory_network(Some(root)).unwrap();
        let peer = peer_id_of(&Author(key(2).verifying_key().to_bytes()));
        l.append_local(
            &key(1),
            put(&format!(r#"{{"member": {{"peer": "{peer}"}}}}"#)),
            0,
        )
        .unwrap();
        let filler = "x".repeat(60_000);
        let mut written = 0u64;
        let err = loop {
            let p = put(&format!(
                r#"{{"junk": {{"n": {written}, "f": "{filler}"}}}}"#
            ));
            match l.append_local(&key(2), p, 0) {
                Ok(e) => written += e.bytes().len() as u64,
                Err(e) => break e,
            }
        };
        assert_eq!(
            err,
            AppendError::Quota(Author(key(2).verifying_key().to_bytes()))
        );
        assert!(written <= MAX_AUTHOR_BYTES && written > MAX_AUTHOR_BYTES - 70_000);
    }
}
