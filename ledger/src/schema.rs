//! The ledger's redb tables. Keys are big-endian so that one author's
//! entries are contiguous and ordered by sequence number.

use redb::TableDefinition;

/// `author (32 bytes) || seq (u64 BE)` → the entry's verified encoding.
pub const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries_v1");
/// `author` → `seq (u64 BE) || hash (32 bytes)` of the author's latest entry.
pub const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads_v1");

pub fn entry_key(author: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(author);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn head_value(seq: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(hash);
    v
}

pub fn parse_head(v: &[u8]) -> Option<(u64, [u8; 32])> {
    let seq = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let hash = v.get(8..40)?.try_into().ok()?;
    Some((seq, hash))
}
