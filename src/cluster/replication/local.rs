//! What each replication message does to this member's storage, shared by
//! the driver, the handler of peers' messages and the simulation. All of
//! it blocks (SQLite).

use super::core::{BatchRef, Pulled};
use crate::error::{Code, Coded};
use crate::store::{Ranges, ReplBatch, Storage, StoreError, insert_id};

/// Batches one push or pull message carries at most, in bytes (under the
/// message limit with room for CBOR's overhead).
pub const MESSAGE_BYTES: usize = 4 << 20;
/// Most batches one `Replicate` message may carry.
pub const MAX_BATCHES: usize = 10_000;

/// The batches of the next message of a push, read from `at` on: as many
/// as fit in [`MESSAGE_BYTES`] (at least one), those that could not be
/// read, and where the next message starts.
pub fn read_message(
    store: &Storage,
    batches: &[BatchRef],
    at: usize,
) -> (Vec<ReplBatch>, Vec<BatchRef>, usize) {
    let (mut out, mut missing, mut size, mut i) = (Vec::new(), Vec::new(), 0, at);
    while i < batches.len() && size < MESSAGE_BYTES && out.len() < MAX_BATCHES {
        let b = &batches[i];
        i += 1;
        match store.read_batch(&b.db, &b.origin, b.id) {
            Ok(Some(batch)) => {
                size += batch.approx_size();
                out.push(batch);
            }
            Ok(None) => missing.push(b.clone()),
            Err(e) => {
                tracing::warn!("reading batch {} for replication: {e}", b.id);
                missing.push(b.clone());
            }
        }
    }
    (out, missing, i)
}

/// Stores the batches of a push from `from`: per batch, `None` once it is
/// held here, or why not.
pub fn store_pushed(store: &Storage, from: &str, batches: Vec<ReplBatch>) -> Vec<Option<String>> {
    batches
        .into_iter()
        .map(|b| store.write_replica(b, from).err().map(|e| e.to_string()))
        .collect()
}

/// What this member holds of `origin`, with the ids it will not take again.
pub fn have(store: &Storage, origin: &str, skip: &[i64]) -> Ranges {
    let mut have = store.held(origin);
    for id in skip {
        insert_id(&mut have, *id);
    }
    have
}

/// The batches of `origin` held here and not in `have`, for a member that
/// lacks them: as many as fit in about `budget` bytes (at least one).
pub fn missing(
    store: &Storage,
    origin: &str,
    mut have: Ranges,
    budget: usize,
) -> Result<Vec<ReplBatch>, StoreError> {
    have.sort_unstable();
    store.missing(origin, &have, budget)
}

/// Stores one pull round's batches of `origin`, received from `from`.
pub fn store_pulled(
    store: &Storage,
    from: &str,
    origin: &str,
    batches: Vec<ReplBatch>,
) -> Result<Pulled, String> {
    if batches.iter().any(|b| b.origin.peer != origin) {
        return Err("a batch of another origin".into());
    }
    let mut p = Pulled {
        received: batches.len(),
        ..Default::default()
    };
    for b in batches {
        let id = b.origin.id;
        match store.write_replica(b, from) {
            Ok(w) if !w.duplicate => p.stored += 1,
            Ok(_) => {}
            Err(e) => {
                p.failed += 1;
                tracing::warn!("refusing batch {id} of {origin} from {from}: {e}");
                if e.code() != Code::Internal {
                    p.refused.push(id);
                }
            }
        }
    }
    Ok(p)
}
