//! The messages of every batch in ingest's pipeline, by batch: what to keep in progress while a
//! stage is retrying, and what to hand back at a stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_nats::jetstream::{self, AckKind};
use async_nats::Subject;
use prometheus_client::metrics::gauge::Gauge;

/// The reply subjects of every batch in the pipeline, by batch: what to keep in progress while a
/// stage is retrying, so that the server redelivers none of them to another replica meanwhile.
pub(super) struct InFlight {
    batches: Mutex<BTreeMap<u64, Vec<Subject>>>,
    next_id: AtomicU64,
    /// `/metrics`' count of them.
    gauge: Gauge,
}

impl InFlight {
    pub(super) fn new(gauge: Gauge) -> InFlight {
        gauge.set(0);
        InFlight {
            batches: Default::default(),
            next_id: Default::default(),
            gauge,
        }
    }

    /// Registers a batch's messages; returns its id.
    pub(super) fn add(&self, messages: &[jetstream::Message]) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replies = messages.iter().filter_map(|m| m.reply.clone()).collect();
        let mut batches = self.lock();
        batches.insert(id, replies);
        self.gauge.set(batches.len() as i64);
        id
    }

    /// Hands a batch back for redelivery at once (see `nak_all`) and forgets it.
    pub(super) async fn hand_back(&self, id: u64, messages: &[jetstream::Message]) {
        nak_all(messages).await;
        self.remove(id);
    }

    /// Forgets a batch: acked, or handed back.
    pub(super) fn remove(&self, id: u64) {
        let mut batches = self.lock();
        batches.remove(&id);
        self.gauge.set(batches.len() as i64);
    }

    /// Every reply subject in flight.
    pub(super) fn replies(&self) -> Vec<async_nats::Subject> {
        self.lock().values().flatten().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Vec<Subject>>> {
        // Nothing panics while holding it; a poisoned map is still a correct map.
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands messages back for redelivery at once (to another instance, or the next start) and
/// returns how many. A nak that does not reach the server only means a redelivery after the ack
/// wait instead.
pub(super) async fn nak_all<'a>(
    messages: impl IntoIterator<Item = &'a jetstream::Message>,
) -> usize {
    let naks = messages.into_iter().map(|m| m.ack_with(AckKind::Nak(None)));
    futures::future::join_all(naks).await.len()
}
