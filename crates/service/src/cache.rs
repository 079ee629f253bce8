//! The in-memory read model: stored orders' exact response bodies, by order_uid.
//!
//! Who writes: one thread, the cache writer, and nobody else. Every change to the contents
//! (orders stored by this replica's ingest, orders followed from the changelog, chunks of a
//! restore, an order loaded from PostgreSQL on a miss) is a `Change` sent through a
//! `CacheWriter` handle, and the writer applies them one at a time in the order they arrive.
//! `Cache`'s own mutating methods are private to this module, so the compiler keeps it that way.
//!
//! Erasure (`ordersvc erase`) is a change like the others: it drops the order and remembers its
//! id, and every later insert of that id is ignored, so an erased order cannot come back through
//! a restore chunk read before the erasure, a changelog message published before it, or a miss
//! that raced it, whatever order those arrive in.
//!
//! Who reads: the HTTP worker threads, through `Cache::get` (a read lock, never waiting on the
//! writer for long: a batch is inserted under one write lock). With a byte bound, a miss loads
//! the order from PostgreSQL (one load per missing order: `flight`) and hands it to the writer
//! like any other change. Bodies are shared (`Arc`), so a response is written straight from the
//! cache without copying or re-serialising.
//!
//! Memory: an entry is one `Arc` holding the order_uid and the body in one buffer, and its
//! entity tag as a number, computed the first time the order is served (a restore of a million
//! orders would otherwise hash two gigabytes that are mostly never asked for); the table holds
//! only pointers. That keeps the cost per order near 100 bytes beyond the document itself.
//!
//! Bound (`--cache-max-bytes`): eviction is CLOCK (second chance), the FIFO-with-reinsertion
//! that S3-FIFO's authors found as good as LRU for such workloads at a fraction of the cost: a hit
//! only sets a flag (no lock upgrade, no list move), and the evictor skips (and clears) flagged
//! entries once. Orders that are read again stay; one-off reads pass through.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use hashbrown::HashTable;
use prometheus_client::metrics::counter::Counter;

use crate::order::OrderUid;

mod flight;
mod restore;
mod writer;

pub use self::restore::{restore, Restored, Source};
pub use self::writer::{start, CacheWriter, Change, Pending, WriterGone, WriterThread};

/// One cached order: its id and body in one buffer, and its entity tag.
#[derive(Debug)]
pub struct Entry {
    /// `uid` followed by `body`.
    data: Box<[u8]>,
    uid_len: u8,
    /// A hash of the body, made when first needed.
    tag: OnceLock<u64>,
    /// Set by a hit, cleared by the evictor's first pass: the CLOCK bit.
    referenced: AtomicBool,
}

impl Entry {
    /// Builds an entry for a stored document.
    pub fn new(uid: &OrderUid, document: &str) -> Entry {
        Entry::from_utf8_bytes(uid, document.as_bytes())
    }

    /// Builds an entry for a stored document given as bytes that are known to be UTF-8 (what
    /// PostgreSQL sends of a text column in a UTF8 database).
    pub(crate) fn from_utf8_bytes(uid: &OrderUid, document: &[u8]) -> Entry {
        let uid = uid.as_str().as_bytes();
        let mut data = Vec::with_capacity(uid.len() + document.len());
        data.extend_from_slice(uid);
        data.extend_from_slice(document);
        Entry {
            data: data.into_boxed_slice(),
            // OrderUid is at most 64 bytes.
            uid_len: u8::try_from(uid.len()).unwrap_or(u8::MAX),
            tag: OnceLock::new(),
            referenced: AtomicBool::new(false),
        }
    }

    fn uid_bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.uid_len)]
    }

    /// The exact bytes served.
    pub fn body(&self) -> &[u8] {
        &self.data[usize::from(self.uid_len)..]
    }

    /// The quoted entity tag.
    pub fn etag(&self) -> String {
        let tag = self.tag.get_or_init(|| body_tag(self.body()));
        format!("\"{tag:016x}{:08x}\"", self.body().len())
    }
}

/// Orders are immutable, so a hash of the body is a strong validator. The hasher has fixed keys,
/// so the tag is the same after a restart.
fn body_tag(body: &[u8]) -> u64 {
    #[allow(deprecated)] // SipHasher's keys are fixed on purpose: the tag must not change.
    let mut hasher = std::hash::SipHasher::new();
    hasher.write(body);
    hasher.finish()
}

/// The response body of a cached order, readable without copying it out of the cache.
#[derive(Debug, Clone)]
pub struct Body(pub Arc<Entry>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.body()
    }
}

/// Stored orders as the cache takes them: (order_uid, stored document).
pub type Batch = Vec<(OrderUid, String)>;

/// Counters for `/metrics` (prometheus counters are plain shared atomics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Lookups answered from memory.
    pub hits: Counter,
    /// Lookups that had to ask PostgreSQL (the order was not in memory).
    pub misses: Counter,
    /// Orders dropped to stay within the byte bound.
    pub evictions: Counter,
    /// Orders erased by an erasure notice (`ordersvc erase`) that this replica had not known
    /// as erased before.
    pub erasures: Counter,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashTable<Arc<Entry>>,
    /// Insertion order, for the evictor (kept only with a byte bound).
    clock: VecDeque<Arc<Entry>>,
    bytes: u64,
    /// Ids of erased orders: never inserted again.
    erased: HashSet<Box<[u8]>>,
}

/// The shared cache: read by anyone, changed only by the writer thread (`writer`).
#[derive(Debug)]
pub struct Cache {
    table: RwLock<Table>,
    hasher: RandomState,
    max_bytes: Option<u64>,
    restored: AtomicBool,
    /// Loads of missing orders from PostgreSQL, one per order.
    flights: flight::Flights,
    /// Ids PostgreSQL said it does not have, a moment ago.
    missing: flight::RecentlyMissing,
    /// Hit, miss and eviction counts.
    pub stats: Stats,
}

/// What a load from the database gave: the order, none, or why it failed.
pub type Loaded = Result<Option<Arc<Entry>>, LoadError>;

/// Why an order that is not in memory could not be looked up in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// PostgreSQL cannot answer now; the text says why.
    Unavailable(String),
    /// Too many distinct orders are being looked up at once (`flight::MAX_FLIGHTS`).
    TooManyLoads,
    /// The load took longer than a request waits (`flight::FLIGHT_WAIT`).
    TimedOut,
    /// The load ended without an answer (it panicked, or its runtime is going away).
    Lost,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unavailable(why) => f.write_str(why),
            LoadError::TooManyLoads => {
                f.write_str("too many orders are being looked up in PostgreSQL")
            }
            LoadError::TimedOut => f.write_str("timed out waiting for PostgreSQL"),
            LoadError::Lost => f.write_str("the load of this order from PostgreSQL failed"),
        }
    }
}

impl std::error::Error for LoadError {}

impl Cache {
    /// An empty cache, not yet restored; `max_bytes` bounds the bytes of documents it keeps.
    /// Private: a cache comes with its writer (`start`).
    fn new(max_bytes: Option<u64>) -> Cache {
        Cache {
            table: RwLock::default(),
            hasher: RandomState::new(),
            max_bytes,
            restored: AtomicBool::new(false),
            flights: flight::Flights::default(),
            missing: flight::RecentlyMissing::default(),
            stats: Stats::default(),
        }
    }

    fn hash(&self, uid: &[u8]) -> u64 {
        self.hasher.hash_one(uid)
    }

    /// Looks an order up in memory.
    pub fn get(&self, uid: &str) -> Option<Arc<Entry>> {
        let uid = uid.as_bytes();
        let hash = self.hash(uid);
        // A poisoned lock only means a writer panicked mid-insert; the table is still valid.
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let entry = table.entries.find(hash, |e| e.uid_bytes() == uid).cloned();
        drop(table);
        if let Some(entry) = &entry {
            self.stats.hits.inc();
            // Only write the flag when it changes: a plain load keeps the cache line shared.
            if self.max_bytes.is_some() && !entry.referenced.load(Ordering::Relaxed) {
                entry.referenced.store(true, Ordering::Relaxed);
            }
        }
        entry
    }

    /// Whether the order was erased: it must not be served, whoever has a copy.
    pub fn is_erased(&self, uid: &str) -> bool {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.erased.contains(uid.as_bytes())
    }

    /// Applies one change: only the writer thread calls this (`writer`).
    fn apply(&self, change: Change) {
        match change {
            Change::Erase(uids) => {
                let newly = self.erase(uids);
                self.stats.erasures.inc_by(newly);
            }
            Change::Tombstones(uids) => {
                self.erase(uids);
            }
            Change::Orders(batch) => self.insert_batch(batch),
            Change::Loaded(entry) => self.insert_entries([entry]),
            Change::Entries(entries) => self.insert_entries(entries),
            Change::Expect(orders) => {
                let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                // A restore afresh finds most of them already there.
                let more = orders.saturating_sub(table.entries.len());
                let hasher = &self.hasher;
                table
                    .entries
                    .reserve(more, |e| hasher.hash_one(e.uid_bytes()));
            }
            Change::Restored => self.restored.store(true, Ordering::Release),
        }
    }

    /// Drops the orders and remembers them as erased; returns how many were not known as erased.
    fn erase(&self, uids: Vec<OrderUid>) -> u64 {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut newly = 0;
        let mut dropped = false;
        for uid in uids {
            let uid = uid.as_str().as_bytes();
            let hash = self.hash(uid);
            if let Ok(found) = table.entries.find_entry(hash, |e| e.uid_bytes() == uid) {
                let (entry, _) = found.remove();
                table.bytes -= entry.body().len() as u64;
                dropped = true;
            }
            if table.erased.insert(uid.into()) {
                newly += 1;
            }
        }
        // The evictor's queue would keep the erased bodies in memory until it passed them: one
        // pass now, per change rather than per order.
        if dropped && self.max_bytes.is_some() {
            let Table { entries, clock, .. } = &mut *table;
            clock.retain(|e| {
                let hash = self.hasher.hash_one(e.uid_bytes());
                entries.find(hash, |found| Arc::ptr_eq(found, e)).is_some()
            });
        }
        newly
    }

    /// Inserts a batch under one write lock. Orders are immutable: an id already present is kept.
    fn insert_batch(&self, batch: Batch) {
        let entries: Vec<Arc<Entry>> = batch
            .iter()
            .map(|(uid, document)| Arc::new(Entry::new(uid, document)))
            .collect();
        drop(batch);
        self.insert_entries(entries);
    }

    /// Inserts entries under one write lock, then evicts down to the bound.
    fn insert_entries(&self, entries: impl IntoIterator<Item = Arc<Entry>>) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            self.insert_locked(&mut table, entry);
        }
        self.evict_locked(&mut table);
    }

    /// Inserts one entry unless its id is there already (orders are immutable: the first stays)
    /// or was erased.
    fn insert_locked(&self, table: &mut Table, entry: Arc<Entry>) {
        if !table.erased.is_empty() && table.erased.contains(entry.uid_bytes()) {
            return;
        }
        let hash = self.hash(entry.uid_bytes());
        if table
            .entries
            .find(hash, |e| e.uid_bytes() == entry.uid_bytes())
            .is_some()
        {
            return;
        }
        table.bytes += entry.body().len() as u64;
        if self.max_bytes.is_some() {
            table.clock.push_back(entry.clone());
        }
        let hasher = &self.hasher;
        table
            .entries
            .insert_unique(hash, entry, |e| hasher.hash_one(e.uid_bytes()));
    }

    /// Drops entries until the documents fit the bound: each entry hit since the evictor last
    /// passed it gets a second chance.
    fn evict_locked(&self, table: &mut Table) {
        let Some(max) = self.max_bytes else { return };
        while table.bytes > max {
            let Some(entry) = table.clock.pop_front() else {
                break;
            };
            if entry.referenced.swap(false, Ordering::Relaxed) {
                table.clock.push_back(entry);
                continue;
            }
            let hash = self.hash(entry.uid_bytes());
            if let Ok(found) = table.entries.find_entry(hash, |e| Arc::ptr_eq(e, &entry)) {
                found.remove();
                table.bytes -= entry.body().len() as u64;
                self.stats.evictions.inc();
            }
        }
    }

    /// Number of cached orders.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// True when no order is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of cached documents.
    pub fn bytes(&self) -> u64 {
        self.table.read().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// The byte bound, if any.
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// Whether the restore from PostgreSQL is complete.
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }
}

#[cfg(test)]
impl Cache {
    /// An empty cache for other modules' tests (readiness, metrics): restored or not, and never
    /// written to.
    pub(crate) fn empty(restored: bool) -> Cache {
        let cache = Cache::new(None);
        cache.restored.store(restored, Ordering::Release);
        cache
    }
}

impl CacheWriter {
    /// Looks an order up, and on a miss loads it with `load` (once, however many requests ask
    /// for it at the same time, in a task of its own) and hands it to the writer to keep (without
    /// waiting for it to be applied: the requests are answered with the entry itself). Memory
    /// never proves that an order does not exist: with a byte bound it may have been evicted,
    /// and with several replicas another one may have stored it a moment ago. An id PostgreSQL
    /// has just said it does not have is answered `None` for `NEGATIVE_TTL` without asking
    /// again. A load that fails, panics or never finishes, or that finds too many loads in
    /// flight already, is an error for every request that waits for it, and the next request
    /// loads again.
    pub async fn get_or_load<F>(&self, uid: &OrderUid, load: impl FnOnce() -> F) -> Loaded
    where
        F: Future<Output = Result<Option<String>, LoadError>> + Send + 'static,
    {
        let cache = self.cache();
        if let Some(entry) = cache.get(uid.as_str()) {
            return Ok(Some(entry));
        }
        if cache.missing.contains(uid) {
            return Ok(None);
        }
        cache.stats.misses.inc();
        let (writer, key) = (self.clone(), uid.clone());
        cache
            .flights
            .join(uid, move || {
                let document = load();
                async move {
                    // Kept by the load's task itself, so that the order is cached even if every
                    // request that wanted it is gone by then.
                    match document.await? {
                        Some(document) => {
                            let entry = Arc::new(Entry::new(&key, &document));
                            // A writer that has stopped (the service is stopping) keeps nothing,
                            // but the order is still PostgreSQL's answer to this request.
                            let _ = writer.send(Change::Loaded(entry.clone())).await;
                            Ok(Some(entry))
                        }
                        None => {
                            writer.cache().missing.insert(key);
                            Ok(None)
                        }
                    }
                }
            })
            .await
    }
}

/// Parses a byte size: a number with an optional unit (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 2GB, 1000000)"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use futures::future::{BoxFuture, FutureExt};

    use super::*;

    fn uid(s: &str) -> OrderUid {
        OrderUid::parse(s).expect("test uid is valid")
    }

    fn batch(items: &[(&str, &str)]) -> Batch {
        items
            .iter()
            .map(|(u, d)| (uid(u), (*d).to_owned()))
            .collect()
    }

    /// A cache's writer, its thread left running for the test's life (the thread's handle is
    /// dropped: the thread ends with the test process).
    fn started(max_bytes: Option<u64>) -> CacheWriter {
        let (writer, thread) = start(max_bytes).expect("the writer starts");
        drop(thread);
        writer
    }

    #[test]
    fn an_inserted_order_is_found_with_its_exact_bytes() {
        let cache = Cache::new(None);
        cache.insert_batch(batch(&[("a-1", "{\"x\": 1}")]));
        let entry = cache.get("a-1").expect("cached");
        assert_eq!(entry.body(), b"{\"x\": 1}");
        assert_eq!(cache.bytes(), 8);
        assert!(cache.get("a-2").is_none());
        assert!(cache.get("a").is_none(), "a prefix of an id is another id");
    }

    #[test]
    fn an_order_already_cached_is_never_replaced() {
        let cache = Cache::new(None);
        cache.insert_batch(batch(&[("a", "first")]));
        cache.insert_batch(batch(&[("a", "second")]));
        assert_eq!(cache.get("a").expect("cached").body(), b"first");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), 5);
    }

    #[test]
    fn etags_differ_for_different_bodies_are_quoted_and_stable() {
        let a = Entry::new(&uid("a"), "one");
        let b = Entry::new(&uid("b"), "two");
        assert_ne!(a.etag(), b.etag());
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
        assert_eq!(
            a.etag(),
            Entry::new(&uid("c"), "one").etag(),
            "the tag depends on the body only"
        );
    }

    #[test]
    fn a_bounded_cache_keeps_its_documents_within_the_bound() {
        let cache = Cache::new(Some(100));
        for i in 0..50 {
            cache.insert_batch(batch(&[(&format!("o-{i}"), &"x".repeat(10))]));
            assert!(cache.bytes() <= 100, "{} bytes after {i}", cache.bytes());
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.stats.evictions.get(), 40);
        // The newest ten are the ones kept when nothing was read.
        assert!(cache.get("o-49").is_some() && cache.get("o-40").is_some());
        assert!(cache.get("o-39").is_none());
    }

    #[test]
    fn an_order_read_since_the_last_sweep_survives_eviction() {
        let cache = Cache::new(Some(30));
        cache.insert_batch(batch(&[
            ("hot", &"h".repeat(10)),
            ("b", &"b".repeat(10)),
            ("c", &"c".repeat(10)),
        ]));
        assert!(cache.get("hot").is_some());
        cache.insert_batch(batch(&[("d", &"d".repeat(10))]));
        assert!(
            cache.get("hot").is_some(),
            "the order that was read must get a second chance"
        );
        assert!(
            cache.get("b").is_none(),
            "the oldest unread order goes first"
        );
    }

    /// Waits until the writer has applied everything sent to it so far (changes are applied in
    /// the order sent, and an empty batch changes nothing).
    async fn settled(cache: &CacheWriter) {
        cache
            .apply(Change::Orders(Vec::new()))
            .await
            .expect("the writer runs");
    }

    /// A bounded cache: a miss asks the loader.
    fn incomplete() -> CacheWriter {
        started(Some(1_000))
    }

    /// The loader a request would pass: a document, after `delay`.
    fn loader(
        loads: &Arc<AtomicU64>,
        delay: Duration,
        document: &str,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Option<String>, LoadError>> {
        let (loads, document) = (loads.clone(), document.to_owned());
        move || {
            async move {
                loads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                Ok(Some(document))
            }
            .boxed()
        }
    }

    /// Asks for `id`, which must be found, with a loader of `document` that counts its runs.
    async fn load_counting(
        cache: &CacheWriter,
        id: &str,
        document: &'static str,
    ) -> (Arc<Entry>, Arc<AtomicU64>) {
        let loads = Arc::new(AtomicU64::new(0));
        let entry = cache
            .get_or_load(&uid(id), loader(&loads, Duration::ZERO, document))
            .await
            .expect("loaded")
            .expect("found");
        (entry, loads)
    }

    #[tokio::test]
    async fn a_miss_on_an_incomplete_cache_loads_once_and_keeps_the_order() {
        let cache = incomplete();
        let (first, loads) = load_counting(&cache, "far", "{\"doc\":1}").await;
        assert_eq!(first.body(), b"{\"doc\":1}");
        settled(&cache).await;
        let again = cache
            .get_or_load(&uid("far"), || async {
                panic!("a cached order must not be loaded again")
            })
            .await
            .expect("cached")
            .expect("found");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(loads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_for_one_order_make_one_load() {
        let cache = incomplete();
        let loads = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                // Long enough for the others to find this load in flight.
                let load = loader(&loads, Duration::from_millis(200), "doc");
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.get_or_load(&uid("same"), load).await
                })
            })
            .collect();
        for request in requests {
            assert_eq!(found(request).await.body(), b"doc");
        }
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        assert_eq!(cache.cache().flights.len(), 0);
    }

    #[tokio::test]
    async fn an_unbounded_cache_still_asks_on_a_miss_since_another_replica_may_have_stored_it() {
        let cache = started(None);
        let loads = Arc::new(AtomicU64::new(0));
        let got = cache
            .get_or_load(&uid("elsewhere"), loader(&loads, Duration::ZERO, "doc"))
            .await
            .expect("no error");
        assert_eq!(got.expect("found").body(), b"doc");
        assert_eq!(loads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_id_just_found_missing_is_not_asked_for_again_at_once_but_is_after_a_moment() {
        let cache = started(None);
        let asked = Arc::new(AtomicU64::new(0));
        let ask = |asked: &Arc<AtomicU64>| {
            let asked = asked.clone();
            move || async move {
                asked.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        };
        for _ in 0..3 {
            let got = cache.get_or_load(&uid("nowhere"), ask(&asked)).await;
            assert!(matches!(got, Ok(None)));
        }
        assert_eq!(asked.load(Ordering::Relaxed), 1);
        tokio::time::sleep(flight::NEGATIVE_TTL + Duration::from_millis(50)).await;
        let got = cache.get_or_load(&uid("nowhere"), ask(&asked)).await;
        assert!(matches!(got, Ok(None)));
        assert_eq!(asked.load(Ordering::Relaxed), 2);
    }

    /// A request for `id` whose load waits for the returned sender, then ends as `load` does;
    /// it has started (and holds the flight) when this returns.
    fn request_gated(
        cache: &CacheWriter,
        id: &'static str,
        load: impl Future<Output = Result<Option<String>, LoadError>> + Send + 'static,
    ) -> (JoinHandle<Loaded>, oneshot::Sender<()>) {
        let (release, released) = oneshot::channel::<()>();
        let cache = cache.clone();
        let request = tokio::spawn(async move {
            cache
                .get_or_load(&uid(id), || async move {
                    let _ = released.await;
                    load.await
                })
                .await
        });
        (request, release)
    }

    /// A second request for `id`, which must join the load in flight (its own load would panic).
    async fn request_joining(cache: &CacheWriter, id: &'static str) -> JoinHandle<Loaded> {
        tokio::task::yield_now().await;
        let cache = cache.clone();
        let request = tokio::spawn(async move {
            cache
                .get_or_load(&uid(id), || async { panic!("joins the load in flight") })
                .await
        });
        tokio::task::yield_now().await;
        request
    }

    /// The order a request ended with; it must not have panicked, failed or found nothing.
    async fn found(request: JoinHandle<Loaded>) -> Arc<Entry> {
        request
            .await
            .expect("the request itself does not panic")
            .expect("loaded")
            .expect("found")
    }

    /// Stands for a bug anywhere in a load (in sqlx, in the cache's insert).
    async fn panicking_load() -> Result<Option<String>, LoadError> {
        panic!("injected: the load panics")
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_misses_is_bounded_and_the_excess_is_an_error_not_a_not_found() {
        // Arrange: as many loads in flight as allowed, each waiting.
        let cache = incomplete();
        let mut gated = Vec::new();
        for i in 0..flight::MAX_FLIGHTS {
            let id: &'static str = Box::leak(format!("flood-{i}").into_boxed_str());
            gated.push(request_gated(&cache, id, async {
                Ok(Some("doc".to_owned()))
            }));
        }
        for _ in 0..1_000 {
            if cache.cache().flights.len() == flight::MAX_FLIGHTS {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.cache().flights.len(), flight::MAX_FLIGHTS);

        // Act: one more id.
        let refused = cache
            .get_or_load(&uid("one-too-many"), || async {
                Ok(Some("doc".to_owned()))
            })
            .await;

        // Assert: refused at once (the page answers 503), and the others all load.
        assert!(
            matches!(&refused, Err(LoadError::TooManyLoads)),
            "{refused:?}"
        );
        for (request, release) in gated {
            let _ = release.send(());
            assert_eq!(found(request).await.body(), b"doc");
        }
        assert_eq!(cache.cache().flights.len(), 0);
        // The 64 orders loaded can fill the writer's queue, and a load that waits for room there
        // would see paused time jump past its deadline (the writer is a thread, not a task):
        // let the writer catch up first.
        settled(&cache).await;
        let (again, _) = load_counting(&cache, "one-too-many", "doc").await;
        assert_eq!(again.body(), b"doc");
    }

    // Paused time: a waiter stranded on a dead load would sit out FLIGHT_WAIT, which shows as
    // virtual time having passed; a waiter told of the failure at once sees none pass.
    #[tokio::test(start_paused = true)]
    async fn a_load_that_panics_is_an_error_for_its_waiters_and_the_next_request_loads_again() {
        // Arrange: a load that panics once a second request waits for it too.
        let cache = incomplete();
        let (first, release) = request_gated(&cache, "boom", panicking_load());
        let started = tokio::time::Instant::now();
        let second = request_joining(&cache, "boom").await;

        // Act
        let _ = release.send(());
        let first = first.await.expect("the request itself does not panic");
        let second = second.await.expect("the request itself does not panic");

        // Assert: both told at once, nothing left in flight, and the next request loads again.
        assert!(first.is_err() && second.is_err(), "{first:?} {second:?}");
        assert!(started.elapsed() < flight::FLIGHT_WAIT);
        assert_eq!(cache.cache().flights.len(), 0);
        let (again, loads) = load_counting(&cache, "boom", "doc").await;
        assert_eq!(again.body(), b"doc");
        assert_eq!(loads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_dropped_mid_load_strands_no_waiter_and_leaves_no_load_behind() {
        // Arrange: a first request whose load is under way, and a second that waits for it.
        let cache = incomplete();
        let (first, release) = request_gated(&cache, "gone", async { Ok(Some("doc".to_owned())) });
        let started = tokio::time::Instant::now();
        let second = request_joining(&cache, "gone").await;

        // Act: the first client goes away (hyper drops its request's future), then the load ends.
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        let _ = release.send(());

        // Assert: the waiter gets the order, at once, and nothing is left in flight.
        assert_eq!(found(second).await.body(), b"doc");
        assert!(started.elapsed() < flight::FLIGHT_WAIT);
        assert_eq!(cache.cache().flights.len(), 0);
        settled(&cache).await;
        assert!(
            cache.cache().get("gone").is_some(),
            "the order loaded is kept"
        );
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size(" 1 GiB "), Ok(1 << 30));
        for bad in ["", "MiB", "12XB", "0", "-5MiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
