//! Restoring the cache from PostgreSQL: the stored documents, streamed, in chunks, handed to the
//! cache writer like every other change.
//!
//! At start it runs before ingest; after a gap in the changelog (`changelog::follow`) it runs
//! again while ingest and HTTP go on. Either way its chunks go through the one writer, in order
//! with whatever else is sent meanwhile; orders are immutable and an insert keeps an entry
//! already there, so a chunk read before an order was committed and applied after it changes
//! nothing. A chunk is bounded by count and by bytes: documents can be up to the NATS max
//! payload (1 MiB), and ten thousand of those would be ten gigabytes in flight. One chunk is
//! read while the one before is applied, never more. A stop requested meanwhile ends the
//! restore at the next row (or while a query waits on a lock).

use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr};
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use super::{Batch, CacheWriter, Change, Pending};
use crate::order::OrderUid;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Restored orders are handed to the cache in chunks of at most this many…
const CHUNK_ORDERS: usize = 10_000;
/// …and of at most this many document bytes (or the cache's bound, if smaller).
const CHUNK_BYTES: u64 = 16 * 1024 * 1024;
/// Between two progress lines in the log.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// How a restore ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The cache holds what it should and is marked restored.
    Done,
    /// A stop was requested first; the cache is not marked restored.
    Stopped,
}

/// Orders read but not yet in the cache.
struct Chunk {
    orders: Batch,
    bytes: u64,
    max_bytes: u64,
}

impl Chunk {
    fn new(max_bytes: u64) -> Chunk {
        Chunk {
            orders: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds an order; true when the chunk is full and should be handed over.
    fn push(&mut self, uid: OrderUid, document: String) -> bool {
        self.bytes += document.len() as u64;
        self.orders.push((uid, document));
        self.orders.len() >= CHUNK_ORDERS || self.bytes >= self.max_bytes
    }

    fn take(&mut self) -> (Batch, u64) {
        let bytes = std::mem::take(&mut self.bytes);
        (std::mem::take(&mut self.orders), bytes)
    }
}

/// Chunks on their way to the cache writer: one is applied while the next is read, never more.
struct Handing<'a> {
    writer: &'a CacheWriter,
    /// The chunk the writer is applying.
    applying: Option<Pending>,
    /// Orders handed over so far.
    loaded: u64,
    /// Their document bytes, counted here, not read from the cache: the cache evicts to stay
    /// within its bound, so its own byte count never says "full".
    loaded_bytes: u64,
    /// `/metrics`' count of `loaded`.
    gauge: &'a Gauge,
}

impl Handing<'_> {
    /// Hands a chunk (orders, bytes) to the writer once the one before it is applied.
    async fn hand(&mut self, (orders, bytes): (Batch, u64)) -> Result<()> {
        if let Some(before) = self.applying.take() {
            before.applied().await?;
        }
        self.loaded += orders.len() as u64;
        self.loaded_bytes += bytes;
        self.applying = Some(self.writer.send_tracked(Change::Orders(orders)).await?);
        self.gauge
            .set(i64::try_from(self.loaded).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Marks the cache restored, after every chunk handed over, and returns how many orders were.
    async fn done(self) -> Result<u64> {
        // Applied after every chunk before it: once it is, the cache holds all of them.
        self.writer.apply(Change::Restored).await?;
        Ok(self.loaded)
    }
}

/// Loads stored orders into the cache through `writer`, streamed, then marks the cache
/// restored. With a byte bound, the newest orders are loaded until the bound is reached; the
/// rest is read on demand. `restored` counts the orders loaded, for `/metrics`.
pub async fn restore(
    store: &Store,
    writer: &CacheWriter,
    restored: &Gauge,
    shutdown: &Shutdown,
) -> Result<Restored> {
    let cache = writer.cache();
    let started = Instant::now();
    let total = tokio::select! {
        _ = shutdown.requested() => return Ok(Restored::Stopped),
        total = store.count_orders() => total.wrap_err("cannot count stored orders")?,
    };
    info!(
        orders = total,
        max_bytes = cache.max_bytes(),
        "restoring the cache from PostgreSQL"
    );
    let mut rows = match cache.max_bytes() {
        None => store.documents(),
        Some(_) => store.documents_newest_first(),
    };
    let mut chunk = Chunk::new(
        cache
            .max_bytes()
            .map_or(CHUNK_BYTES, |max| max.min(CHUNK_BYTES)),
    );
    let mut handing = Handing {
        writer,
        applying: None,
        loaded: 0,
        loaded_bytes: 0,
        gauge: restored,
    };
    let mut last_log = Instant::now();
    let mut stopped_early = false;
    loop {
        let row = tokio::select! {
            _ = shutdown.requested() => return Ok(Restored::Stopped),
            row = rows.next() => row,
        };
        let Some(row) = row else { break };
        let (uid, document) = row.wrap_err("cannot read stored orders")?;
        let uid = match OrderUid::parse(&uid) {
            Ok(uid) => uid,
            // The table's CHECK constraint makes this impossible; skip rather than refuse to start.
            Err(e) => {
                warn!(error = %e, "skipping a stored order with an invalid id");
                continue;
            }
        };
        if !chunk.push(uid, document) {
            continue;
        }
        handing.hand(chunk.take()).await?;
        if last_log.elapsed() > LOG_EVERY {
            info!(loaded = handing.loaded, total, "restoring the cache");
            last_log = Instant::now();
        }
        if cache
            .max_bytes()
            .is_some_and(|max| handing.loaded_bytes >= max)
        {
            stopped_early = true;
            break;
        }
    }
    drop(rows);
    handing.hand(chunk.take()).await?;
    let loaded = handing.done().await?;
    info!(
        orders = cache.len(),
        bytes = cache.bytes(),
        complete = !stopped_early && (cache.len() as u64) >= loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache restored; ready"
    );
    Ok(Restored::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(i: usize) -> OrderUid {
        OrderUid::parse(&format!("o-{i}")).expect("a valid id")
    }

    #[test]
    fn a_chunk_is_full_at_its_byte_bound_long_before_its_count() {
        let mut chunk = Chunk::new(CHUNK_BYTES);
        let near_max_payload = "x".repeat(1024 * 1024 - 100);
        let full_after = (1..=CHUNK_ORDERS)
            .find(|&i| chunk.push(uid(i), near_max_payload.clone()))
            .expect("the chunk fills up");
        assert_eq!(full_after, 17, "16 MiB of documents of almost 1 MiB");
        let (orders, bytes) = chunk.take();
        assert_eq!(orders.len(), 17);
        assert!((CHUNK_BYTES..CHUNK_BYTES + 1024 * 1024).contains(&bytes));
        assert_eq!(chunk.take().0.len(), 0, "taking empties the chunk");
    }

    #[test]
    fn a_chunk_of_small_documents_is_full_at_its_count() {
        let mut chunk = Chunk::new(CHUNK_BYTES);
        let full_after = (1..=CHUNK_ORDERS + 1)
            .find(|&i| chunk.push(uid(i), "{}".to_owned()))
            .expect("the chunk fills up");
        assert_eq!(full_after, CHUNK_ORDERS);
    }
}
