//! The audit log: every change (ingest, policies, members, users, flushes)
//! and every refused connection or request, with who, what, when, from
//! where and the outcome. Events go through a bounded queue to one writer
//! that stores them in `almgm.audit` in batches (queryable with SQL like
//! any table, and through `GET /v1/audit`), pruned to the retention.
//!
//! Uses `clock`: the layers that record (`api`, `mesh`, `ingest`) hold a
//! [`Sink`]; `node.rs` connects it to the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::clock::Clock as _;

/// Events waiting to be stored; more are counted as dropped (and the count
/// is stored with the next batch), never queued without bound.
pub const QUEUE: usize = 16384;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Microseconds since the epoch.
    pub ts_micros: i64,
    /// A user name, `peer:<id>`, or `anonymous`.
    pub who: String,
    /// What was done: `POST /v1/data/lab/t`, `connection`, `member`, ...
    pub what: String,
    /// Where from: an IP address, or a PeerId.
    pub source: String,
    /// `ok`, an HTTP status, or a refusal's code.
    pub outcome: String,
}

impl Event {
    /// An event now, by the system clock.
    pub fn now(
        who: &str,
        what: impl Into<String>,
        source: &str,
        outcome: impl Into<String>,
    ) -> Event {
        Event {
            ts_micros: crate::clock::SystemClock.now_micros(),
            who: who.to_owned(),
            what: what.into(),
            source: source.to_owned(),
            outcome: outcome.into(),
        }
    }
}

/// Where events are recorded; cheap to clone. A disabled sink records nothing.
#[derive(Debug, Clone, Default)]
pub struct Sink {
    tx: Option<mpsc::Sender<Event>>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// A sink and the receiving end its writer drains.
    pub fn new() -> (Sink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Sink {
                tx: Some(tx),
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Records an event without waiting.
    pub fn record(&self, e: Event) {
        if let Some(tx) = &self.tx
            && tx.try_send(e).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of events that found the queue full (the writer takes it).
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}
