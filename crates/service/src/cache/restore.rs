//! Restoring the cache from PostgreSQL: the stored documents, streamed, in chunks, handed to the
//! cache writer like every other change.
//!
//! At start it runs before ingest; after a gap in the changelog (`changelog::follow`) it runs
//! again while ingest and HTTP go on. Either way its chunks go through the one writer, in order
//! with whatever else is sent meanwhile; orders are immutable and an insert keeps an entry
//! already there, so a chunk read before an order was committed and applied after it changes
//! nothing, and so does a chunk read twice. A chunk is bounded by count and by bytes: documents
//! can be up to the NATS max payload (1 MiB), and ten thousand of those would be ten gigabytes
//! in flight. Each reader hands over one chunk while it reads the next, never more. A stop
//! requested meanwhile ends the restore at the next row (or while a query waits on a lock).
//!
//! Where it reads (`Source`): the read URL's server (a standby) once it has replayed what the
//! primary had committed (`store::standby`), else the primary. How: over `--restore-connections`
//! connections, each reading ranges of the table's blocks in turn (`store::scan`), so that a
//! restore uses more than one of the server's cores. A statement that fails (a standby cancels
//! queries that conflict with the WAL it replays, once `max_standby_streaming_delay` is over) is
//! read again from the row after the last one received: short statements over small ranges, and
//! a resume that loses nothing, rather than one statement that a busy standby may cancel forever.
//! A bounded cache is restored newest first, in one ordered statement (started over on such a
//! failure): what it can hold is the newest orders, not any part of the table.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use color_eyre::eyre::{Report, Result, WrapErr};
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use super::{CacheWriter, Change, Entry, Pending};
use crate::order::OrderUid;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::scan::{self, Tid};
use crate::store::standby::{self, ReadFrom};
use crate::store::{Role, Store};

/// Restored orders are handed to the cache in chunks of at most this many…
const CHUNK_ORDERS: usize = 10_000;
/// …and of at most this many document bytes (or the cache's bound, if smaller).
const CHUNK_BYTES: u64 = 16 * 1024 * 1024;
/// Between two progress lines in the log.
const LOG_EVERY: Duration = Duration::from_secs(2);
/// Blocks of the table per range a reader takes at a time: 8 MiB of heap, some ten thousand
/// orders of the usual size. Small enough for the ranges to share out evenly and for a statement
/// to finish before a standby's conflict timeout, large enough that a statement's own cost is
/// nothing beside its rows.
const RANGE_BLOCKS: u32 = 1024;
/// Longest wait for the restore's connections to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Failed reads of one range in a row, none of which got a row, before the restore gives up.
const MAX_FAILURES: u32 = 10;
/// Between two reads of a range that failed.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How a restore ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// The cache holds what it should and is marked restored.
    Done,
    /// A stop was requested first; the cache is not marked restored.
    Stopped,
}

/// Where a restore reads, and over how many connections.
#[derive(Clone)]
pub struct Source {
    /// Ingest's pool on the primary: its WAL position, for the standby to catch up with.
    pub primary: Store,
    /// `--database-url`: the primary, for a restore that reads there.
    pub database_url: String,
    /// `--database-read-url`, when it names another server than `--database-url`.
    pub read_url: Option<String>,
    /// How long the read server may take to catch up with the primary.
    pub catch_up: Duration,
    /// Connections a restore reads over.
    pub connections: u16,
}

impl Source {
    /// A pool of the restore's own on the server to read, once it holds every commit needed;
    /// `None` on a stop meanwhile. Its connections are closed when the restore ends.
    async fn open(&self, shutdown: &Shutdown) -> Result<Option<Store>> {
        let role = Role::Restore {
            connections: self.connections,
        };
        let Some(read_url) = &self.read_url else {
            return Ok(Some(Store::open_pool(&self.database_url, role)?));
        };
        let reads = Store::open_pool(read_url, role)?;
        let from = standby::catch_up(&self.primary, &reads, self.catch_up, shutdown).await;
        if from.as_ref().ok() == Some(&ReadFrom::ReadServer) {
            return Ok(Some(reads));
        }
        close(reads).await;
        match from? {
            ReadFrom::Stopped => Ok(None),
            _ => Ok(Some(Store::open_pool(&self.database_url, role)?)),
        }
    }
}

/// Closes a restore's pool, waiting a moment at most: a statement abandoned on a stop (waiting
/// on a lock, say) keeps its connection busy until PostgreSQL answers, and `close` would wait for
/// it. Whatever is left is closed when the pool is dropped.
async fn close(reads: Store) {
    if tokio::time::timeout(CLOSE_WAIT, reads.close())
        .await
        .is_err()
    {
        warn!("the restore's PostgreSQL connections did not close in time; dropping them");
    }
}

/// Orders read but not yet in the cache, their entries built by the reader: a restore's
/// readers share that work out, and the writer only inserts.
struct Chunk {
    orders: Vec<Arc<Entry>>,
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
    fn push(&mut self, uid: &OrderUid, document: &str) -> bool {
        self.push_bytes(uid, document.as_bytes())
    }

    /// `push` with a document known to be UTF-8.
    fn push_bytes(&mut self, uid: &OrderUid, document: &[u8]) -> bool {
        self.bytes += document.len() as u64;
        self.orders
            .push(Arc::new(Entry::from_utf8_bytes(uid, document)));
        self.orders.len() >= CHUNK_ORDERS || self.bytes >= self.max_bytes
    }

    fn take(&mut self) -> (Vec<Arc<Entry>>, u64) {
        let bytes = std::mem::take(&mut self.bytes);
        (std::mem::take(&mut self.orders), bytes)
    }
}

/// What every reader of one restore adds to.
struct Progress<'a> {
    /// Orders handed over so far.
    loaded: AtomicU64,
    /// Their document bytes, counted here, not read from the cache: the cache evicts to stay
    /// within its bound, so its own byte count never says "full".
    loaded_bytes: AtomicU64,
    /// `/metrics`' count of `loaded`.
    gauge: &'a Gauge,
    /// PostgreSQL's estimate of the orders there are, for the log.
    estimated: i64,
    last_log: Mutex<Instant>,
}

impl Progress<'_> {
    /// Counts a chunk handed over; returns the document bytes handed over so far.
    fn add(&self, orders: usize, bytes: u64) -> u64 {
        let loaded = self.loaded.fetch_add(orders as u64, Ordering::Relaxed) + orders as u64;
        let loaded_bytes = self.loaded_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.gauge.set(i64::try_from(loaded).unwrap_or(i64::MAX));
        if let Ok(mut last) = self.last_log.try_lock() {
            if last.elapsed() > LOG_EVERY {
                info!(loaded, estimated = self.estimated, "restoring the cache");
                *last = Instant::now();
            }
        }
        loaded_bytes
    }

    /// Starts the count again (a restore that starts over).
    fn reset(&self) {
        self.loaded.store(0, Ordering::Relaxed);
        self.loaded_bytes.store(0, Ordering::Relaxed);
    }
}

/// One reader's chunks on their way to the cache writer: one is applied while the next is read,
/// never more.
struct Handing<'a> {
    writer: &'a CacheWriter,
    /// The chunk the writer is applying.
    applying: Option<Pending>,
    progress: &'a Progress<'a>,
}

impl<'a> Handing<'a> {
    fn new(writer: &'a CacheWriter, progress: &'a Progress<'a>) -> Handing<'a> {
        Handing {
            writer,
            applying: None,
            progress,
        }
    }

    /// Hands a chunk (orders, bytes) to the writer once the one before it is applied; returns
    /// the document bytes handed over so far by every reader.
    async fn hand(&mut self, (orders, bytes): (Vec<Arc<Entry>>, u64)) -> Result<u64> {
        if let Some(before) = self.applying.take() {
            before.applied().await?;
        }
        let handed = self.progress.add(orders.len(), bytes);
        if !orders.is_empty() {
            self.applying = Some(self.writer.send_tracked(Change::Entries(orders)).await?);
        }
        Ok(handed)
    }

    /// Waits until the last chunk handed over is applied.
    async fn finish(mut self) -> Result<()> {
        if let Some(last) = self.applying.take() {
            last.applied().await?;
        }
        Ok(())
    }
}

/// Loads stored orders into the cache through `writer`, streamed, then marks the cache
/// restored. With a byte bound, the newest orders are loaded until the bound is reached; the
/// rest is read on demand. `restored` counts the orders loaded, for `/metrics`.
pub async fn restore(
    source: &Source,
    writer: &CacheWriter,
    restored: &Gauge,
    shutdown: &Shutdown,
) -> Result<Restored> {
    let started = Instant::now();
    let Some(reads) = source.open(shutdown).await? else {
        return Ok(Restored::Stopped);
    };
    let loaded = match tombstones(&reads, writer).await {
        Ok(()) => load(&reads, source.connections, writer, restored, shutdown).await,
        Err(e) => Err(e),
    };
    close(reads).await;
    let Some(loaded) = loaded? else {
        return Ok(Restored::Stopped);
    };
    // Applied after every chunk before it: once it is, the cache holds all of them.
    writer.apply(Change::Restored).await?;
    let cache = writer.cache();
    info!(
        orders = cache.len(),
        bytes = cache.bytes(),
        loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache restored; ready"
    );
    Ok(Restored::Done)
}

/// Hands the erased orders' ids to the cache before any order: a restore afresh (after a
/// changelog gap) may have missed an erasure notice, and a chunk read before an erasure must not
/// bring its order back.
async fn tombstones(reads: &Store, writer: &CacheWriter) -> Result<()> {
    let uids = reads
        .tombstones()
        .await
        .wrap_err("cannot read the erased orders' tombstones")?;
    if !uids.is_empty() {
        let uids = uids.iter().filter_map(|uid| valid_uid(uid)).collect();
        writer.send(Change::Tombstones(uids)).await?;
    }
    Ok(())
}

/// Reads every stored order (or, into a bounded cache, the newest that fit) from `reads` into
/// the cache; returns how many were handed over, or `None` on a stop.
async fn load(
    reads: &Store,
    connections: u16,
    writer: &CacheWriter,
    gauge: &Gauge,
    shutdown: &Shutdown,
) -> Result<Option<u64>> {
    let estimated = tokio::select! {
        _ = shutdown.requested() => return Ok(None),
        estimated = reads.estimated_orders() => estimated.wrap_err("cannot read the orders table's size")?,
    };
    let max_bytes = writer.cache().max_bytes();
    info!(
        estimated,
        connections, max_bytes, "restoring the cache from PostgreSQL"
    );
    let progress = Progress {
        loaded: AtomicU64::new(0),
        loaded_bytes: AtomicU64::new(0),
        gauge,
        estimated,
        last_log: Mutex::new(Instant::now()),
    };
    let done = match max_bytes {
        None => in_parts(reads, connections, writer, &progress, shutdown).await?,
        Some(max) => newest_first(reads, max, writer, &progress, shutdown).await?,
    };
    Ok(done.then(|| progress.loaded.load(Ordering::Relaxed)))
}

/// The table's blocks in ranges, taken in turn by the readers.
struct Ranges {
    count: u64,
    next: AtomicU32,
}

impl Ranges {
    fn of(blocks: u32) -> Ranges {
        Ranges {
            count: u64::from(blocks).div_ceil(u64::from(RANGE_BLOCKS)).max(1),
            next: AtomicU32::new(0),
        }
    }

    /// The next range's first block and end (the last range runs to the table's end, however
    /// far it has grown since the table's size was read), or `None` once all are taken.
    fn take(&self) -> Option<(u32, Option<u32>)> {
        let i = u64::from(self.next.fetch_add(1, Ordering::Relaxed));
        if i >= self.count {
            return None;
        }
        let block = |i: u64| u32::try_from(i * u64::from(RANGE_BLOCKS)).unwrap_or(u32::MAX);
        let end = (i + 1 < self.count).then(|| block(i + 1));
        Some((block(i), end))
    }
}

/// What the readers of one restore in parts share.
struct Scan<'a> {
    reads: &'a Store,
    ranges: Ranges,
    /// The documents are valid UTF-8 as sent (see `Store::utf8_database`).
    utf8_database: bool,
    shutdown: &'a Shutdown,
}

/// Every stored order, read in ranges of blocks by `connections` readers at once; false on a stop.
async fn in_parts(
    reads: &Store,
    connections: u16,
    writer: &CacheWriter,
    progress: &Progress<'_>,
    shutdown: &Shutdown,
) -> Result<bool> {
    // Taking the table's size waits for a lock on it (an ALTER TABLE, a test's LOCK).
    let blocks = tokio::select! {
        _ = shutdown.requested() => return Ok(false),
        blocks = reads.order_blocks() => blocks.wrap_err("cannot read the orders table's size")?,
    };
    let utf8_database = reads
        .utf8_database()
        .await
        .wrap_err("cannot read the database's encoding")?;
    let scan = Scan {
        reads,
        ranges: Ranges::of(blocks),
        utf8_database,
        shutdown,
    };
    if let Ok(estimated) = usize::try_from(progress.estimated) {
        writer.send(Change::Expect(estimated)).await?;
    }
    let readers =
        (0..connections.max(1)).map(|_| read_ranges(&scan, Handing::new(writer, progress)));
    let mut done = true;
    for finished in futures::future::join_all(readers).await {
        done &= finished?;
    }
    Ok(done)
}

/// One reader: takes ranges until none is left; false on a stop.
async fn read_ranges(scan: &Scan<'_>, mut handing: Handing<'_>) -> Result<bool> {
    let mut chunk = Chunk::new(CHUNK_BYTES);
    while let Some((first, end)) = scan.ranges.take() {
        if !read_range(scan, first, end, &mut chunk, &mut handing).await? {
            return Ok(false);
        }
    }
    handing.hand(chunk.take()).await?;
    handing.finish().await?;
    Ok(true)
}

/// Why one statement of a restore ended early.
enum Failed {
    /// PostgreSQL's error: the statement may be read again.
    Database(sqlx::Error),
    /// The cache writer is gone: the restore cannot go on.
    Writer(Report),
}

/// Reads one range into `chunk`, handing full chunks over; after a failed statement, reads on
/// from the row after the last one received. False on a stop.
async fn read_range(
    scan: &Scan<'_>,
    first: u32,
    end: Option<u32>,
    chunk: &mut Chunk,
    handing: &mut Handing<'_>,
) -> Result<bool> {
    let mut from = Tid::start_of(first);
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut failures = 0;
    loop {
        let before = from;
        let error = match read_from(scan, &mut from, end, chunk, handing).await {
            Ok(done) => return Ok(done),
            Err(Failed::Writer(e)) => return Err(e),
            Err(Failed::Database(e)) => e,
        };
        if from != before {
            failures = 0;
            backoff.reset();
        }
        failures += 1;
        if failures > MAX_FAILURES || !worth_retrying(&error) {
            return Err(error).wrap_err("cannot read stored orders");
        }
        warn!(error = %error, block = from.block, "a read of stored orders failed; reading on from the last row received");
        if backoff.wait(scan.shutdown).await.is_break() {
            return Ok(false);
        }
    }
}

/// One statement's worth of `read_range`: `from` follows the rows received.
async fn read_from(
    scan: &Scan<'_>,
    from: &mut Tid,
    end: Option<u32>,
    chunk: &mut Chunk,
    handing: &mut Handing<'_>,
) -> Result<bool, Failed> {
    let mut conn = scan
        .reads
        .scan_connection()
        .await
        .map_err(Failed::Database)?;
    let mut rows = scan::orders_between(&mut conn, *from, end);
    loop {
        let row = tokio::select! {
            _ = scan.shutdown.requested() => return Ok(false),
            row = rows.next() => row,
        };
        let Some(row) = row else { return Ok(true) };
        let row = row.map_err(Failed::Database)?;
        let (tid, uid, document) = scan::decode(&row).map_err(Failed::Database)?;
        *from = tid.after();
        let Some(uid) = valid_uid(uid) else { continue };
        if !scan.utf8_database && std::str::from_utf8(document).is_err() {
            warn!(
                order_uid = uid.as_str(),
                "skipping a stored order whose document is not UTF-8"
            );
            continue;
        }
        if chunk.push_bytes(&uid, document) {
            handing.hand(chunk.take()).await.map_err(Failed::Writer)?;
        }
    }
}

/// Whether a failed read may succeed if made again: anything but a sign that the settings are
/// wrong (no such table, database or role, no permission, a refused login).
fn worth_retrying(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => !e.code().is_some_and(|code| {
            ["42", "28", "3D"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => true,
    }
}

/// An id from the table; the table's CHECK constraint makes an invalid one impossible, and one
/// is skipped rather than refusing to start.
fn valid_uid(uid: &str) -> Option<OrderUid> {
    match OrderUid::parse(uid) {
        Ok(uid) => Some(uid),
        Err(e) => {
            warn!(error = %e, "skipping a stored order with an invalid id");
            None
        }
    }
}

/// The newest orders, until the cache's bound is reached; false on a stop. A failed statement
/// starts over (what was handed over stays: an insert keeps an entry already there).
async fn newest_first(
    reads: &Store,
    max_bytes: u64,
    writer: &CacheWriter,
    progress: &Progress<'_>,
    shutdown: &Shutdown,
) -> Result<bool> {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut failures = 0;
    loop {
        let mut handing = Handing::new(writer, progress);
        let error = match newest_until(reads, max_bytes, &mut handing, shutdown).await {
            Ok(done) => {
                handing.finish().await?;
                return Ok(done);
            }
            Err(Failed::Writer(e)) => return Err(e),
            Err(Failed::Database(e)) => e,
        };
        failures += 1;
        if failures > MAX_FAILURES || !worth_retrying(&error) {
            return Err(error).wrap_err("cannot read stored orders");
        }
        warn!(error = %error, "a read of the newest stored orders failed; starting it over");
        if backoff.wait(shutdown).await.is_break() {
            return Ok(false);
        }
        progress.reset();
    }
}

/// One statement's worth of `newest_first`.
async fn newest_until(
    reads: &Store,
    max_bytes: u64,
    handing: &mut Handing<'_>,
    shutdown: &Shutdown,
) -> Result<bool, Failed> {
    let mut rows = reads.documents_newest_first();
    let mut chunk = Chunk::new(max_bytes.min(CHUNK_BYTES));
    loop {
        let row = tokio::select! {
            _ = shutdown.requested() => return Ok(false),
            row = rows.next() => row,
        };
        let Some(row) = row else { break };
        let (uid, document) = row.map_err(Failed::Database)?;
        let Some(uid) = valid_uid(&uid) else { continue };
        if chunk.push(&uid, &document)
            && handing.hand(chunk.take()).await.map_err(Failed::Writer)? >= max_bytes
        {
            return Ok(true);
        }
    }
    drop(rows);
    handing.hand(chunk.take()).await.map_err(Failed::Writer)?;
    Ok(true)
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
            .find(|&i| chunk.push(&uid(i), &near_max_payload))
            .expect("the chunk fills up");
        assert_eq!(full_after, 17, "16 MiB of documents of almost 1 MiB");
        let (orders, bytes) = chunk.take();
        assert_eq!(orders.len(), 17);
        assert!((CHUNK_BYTES..CHUNK_BYTES + 1024 * 1024).contains(&bytes));
        assert_eq!(chunk.take().0.len(), 0, "taking empties the chunk");
    }

    #[test]
    fn the_ranges_cover_every_block_once_and_the_last_runs_to_the_end() {
        let ranges = Ranges::of(2 * RANGE_BLOCKS + 1);
        let taken: Vec<_> = std::iter::from_fn(|| ranges.take()).collect();
        assert_eq!(
            taken,
            vec![
                (0, Some(RANGE_BLOCKS)),
                (RANGE_BLOCKS, Some(2 * RANGE_BLOCKS)),
                (2 * RANGE_BLOCKS, None)
            ]
        );
        let empty = Ranges::of(0);
        assert_eq!(
            empty.take(),
            Some((0, None)),
            "an empty table is still read"
        );
        assert_eq!(empty.take(), None);
    }

    #[test]
    fn a_chunk_of_small_documents_is_full_at_its_count() {
        let mut chunk = Chunk::new(CHUNK_BYTES);
        let full_after = (1..=CHUNK_ORDERS + 1)
            .find(|&i| chunk.push(&uid(i), "{}"))
            .expect("the chunk fills up");
        assert_eq!(full_after, CHUNK_ORDERS);
    }
}
