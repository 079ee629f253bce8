//! The in-memory read model: every stored order's exact response body, by order_uid.
//!
//! One cache-writer thread fills it (from the restore at start, then from committed ingest
//! batches); the HTTP worker threads only read. Bodies are shared (`Arc`), so a response is
//! written straight from the cache without copying or re-serialising.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use color_eyre::eyre::{Result, WrapErr};
use crossbeam_channel::Receiver;

use crate::order::OrderUid;

/// One cached order: the body HTTP serves and its entity tag.
#[derive(Debug)]
pub struct Entry {
    body: Box<[u8]>,
    etag: String,
}

impl Entry {
    /// Builds an entry for a stored document.
    pub fn new(document: String) -> Entry {
        // Orders are immutable, so a hash of the body is a strong validator.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        document.hash(&mut hasher);
        let etag = format!("\"{:016x}{:08x}\"", hasher.finish(), document.len());
        Entry {
            body: document.into_bytes().into_boxed_slice(),
            etag,
        }
    }

    /// The exact bytes served.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The quoted entity tag.
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

/// The response body of a cached order, readable without copying it out of the cache.
#[derive(Debug, Clone)]
pub struct Body(pub Arc<Entry>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.body()
    }
}

/// What the cache writer receives: a batch of (order_uid, stored document).
pub type Batch = Vec<(OrderUid, String)>;

/// The shared cache.
#[derive(Debug, Default)]
pub struct Cache {
    map: RwLock<HashMap<OrderUid, Arc<Entry>>>,
    restored: AtomicBool,
    bytes: AtomicU64,
}

impl Cache {
    /// An empty cache, not yet restored.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Looks an order up.
    pub fn get(&self, uid: &str) -> Option<Arc<Entry>> {
        // A poisoned lock only means a writer panicked mid-insert; the map itself is still valid.
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(uid).cloned()
    }

    /// Inserts a batch under one write lock. Orders are immutable: an id already present is kept.
    pub fn insert_batch(&self, batch: Batch) {
        let entries: Vec<(OrderUid, Entry)> = batch
            .into_iter()
            .map(|(uid, doc)| (uid, Entry::new(doc)))
            .collect();
        let mut added = 0u64;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (uid, entry) in entries {
            let len = entry.body.len() as u64;
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(uid) {
                slot.insert(Arc::new(entry));
                added += len;
            }
        }
        drop(map);
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    /// Number of cached orders.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no order is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total bytes of cached documents.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Marks the restore from PostgreSQL as complete: from now on a miss is a real 404.
    pub fn mark_restored(&self) {
        self.restored.store(true, Ordering::Release);
    }

    /// Whether the restore from PostgreSQL is complete.
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }
}

/// Starts the one cache-writer thread; it ends when every sender is dropped.
pub fn spawn_writer(cache: Arc<Cache>, batches: Receiver<Batch>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cache-writer".into())
        .spawn(move || {
            for batch in batches {
                cache.insert_batch(batch);
            }
        })
        .wrap_err("cannot start the cache-writer thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> OrderUid {
        OrderUid::parse(s).expect("test uid is valid")
    }

    #[test]
    fn an_inserted_order_is_found_with_its_exact_bytes() {
        let cache = Cache::new();
        cache.insert_batch(vec![(uid("a-1"), "{\"x\": 1}".to_owned())]);
        let entry = cache.get("a-1").expect("cached");
        assert_eq!(entry.body(), b"{\"x\": 1}");
        assert_eq!(cache.bytes(), 8);
        assert!(cache.get("a-2").is_none());
    }

    #[test]
    fn an_order_already_cached_is_never_replaced() {
        let cache = Cache::new();
        cache.insert_batch(vec![(uid("a"), "first".to_owned())]);
        cache.insert_batch(vec![(uid("a"), "second".to_owned())]);
        assert_eq!(cache.get("a").expect("cached").body(), b"first");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), 5);
    }

    #[test]
    fn etags_differ_for_different_bodies_and_are_quoted() {
        let a = Entry::new("one".to_owned());
        let b = Entry::new("two".to_owned());
        assert_ne!(a.etag(), b.etag());
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
    }
}
