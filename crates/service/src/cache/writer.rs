//! The cache's one writer: a thread of its own that applies every `Change`, one at a time, in the
//! order they were sent, and the `CacheWriter` handle through which everyone else asks for them.
//!
//! The channel is tokio's bounded mpsc: senders on the tokio runtimes await room (backpressure
//! without blocking a worker thread, and without polling), and the writer thread takes changes
//! with a blocking receive. Applying a batch takes the table's write lock once, so readers wait
//! at most one batch's worth of inserts.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use color_eyre::eyre::{Result, WrapErr};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{Batch, Cache, Entry};
use crate::order::OrderUid;

/// Changes waiting for the writer before their senders wait for it. A change is a whole batch
/// (up to a thousand orders) or a restore's chunk (up to 16 MiB).
const QUEUE: usize = 64;

/// A change to what the cache holds.
#[derive(Debug)]
pub enum Change {
    /// Stored orders, as stored: committed by this replica's ingest, read from the changelog, or
    /// read by a restore. Orders are immutable: an id already cached keeps its entry.
    Orders(Batch),
    /// Stored orders read by a restore, their entries built by the reader (off the writer's
    /// thread). As with `Orders`, an id already cached keeps its entry.
    Entries(Vec<Arc<Entry>>),
    /// A restore is about to hand over about this many orders in all: the table makes room for
    /// them at once instead of growing (and rehashing everything) again and again.
    Expect(usize),
    /// One order loaded from PostgreSQL on a miss, its entry already built (the requests that
    /// wanted it are answered with this same entry).
    Loaded(Arc<Entry>),
    /// An erasure notice (`ordersvc erase`, through the changelog): these orders are dropped,
    /// and never inserted again, whoever sends them.
    Erase(Vec<OrderUid>),
    /// The erased orders' ids as PostgreSQL keeps them (a restore reads them first): the same
    /// as `Erase`, but not counted as erasures.
    Tombstones(Vec<OrderUid>),
    /// The restore has loaded all it will: from now on lookups are answered (a miss that is not
    /// in memory asks PostgreSQL), never "still restoring".
    Restored,
}

/// What goes through the channel: a change (and whom to tell once it is applied), or the end.
enum Message {
    Apply(Change, Option<oneshot::Sender<()>>),
    Stop,
}

/// The writer has stopped (the service is stopping): a change sent now is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterGone;

impl fmt::Display for WriterGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the cache writer has stopped")
    }
}

impl std::error::Error for WriterGone {}

/// The handle every writer of the cache holds: ingest, the changelog follower, the restore and
/// the HTTP side's miss loads. Cheap to clone; it also reads the cache it writes to.
#[derive(Clone, Debug)]
pub struct CacheWriter {
    tx: mpsc::Sender<Message>,
    cache: Arc<Cache>,
}

/// A change sent and not yet known to be applied.
#[must_use = "a change is only known to be applied once `applied` resolves"]
pub struct Pending(oneshot::Receiver<()>);

impl Pending {
    /// Resolves once the writer has applied the change (an error if it stopped before).
    pub async fn applied(self) -> Result<(), WriterGone> {
        self.0.await.map_err(|_| WriterGone)
    }
}

impl CacheWriter {
    /// The cache this writer changes, for reading.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Queues a change (waiting for room in the queue, not for the change to be applied).
    pub async fn send(&self, change: Change) -> Result<(), WriterGone> {
        self.tx
            .send(Message::Apply(change, None))
            .await
            .map_err(|_| WriterGone)
    }

    /// Queues a change and returns what tells when it is applied.
    pub async fn send_tracked(&self, change: Change) -> Result<Pending, WriterGone> {
        let (done, applied) = oneshot::channel();
        self.tx
            .send(Message::Apply(change, Some(done)))
            .await
            .map_err(|_| WriterGone)?;
        Ok(Pending(applied))
    }

    /// Queues a change and waits until it is applied.
    pub async fn apply(&self, change: Change) -> Result<(), WriterGone> {
        self.send_tracked(change).await?.applied().await
    }
}

/// The writer thread, owned by whoever runs the service; `stop` ends it.
#[derive(Debug)]
pub struct WriterThread {
    /// Kept to send the stop: the writer ends on it, not when the last handle goes (a handle
    /// held by an HTTP task that outlives the stop would otherwise keep it waiting).
    tx: mpsc::Sender<Message>,
    thread: JoinHandle<()>,
}

impl WriterThread {
    /// Applies what was sent before, then ends the thread and waits for it. Must not be called
    /// on a tokio runtime's thread (it blocks).
    pub fn stop(self) {
        // An error means the receiver is gone: the thread has ended already (it panicked).
        let _ = self.tx.blocking_send(Message::Stop);
        if self.thread.join().is_err() {
            warn!("the cache writer panicked");
        }
    }
}

/// An empty cache (`max_bytes` bounds its documents), its writer thread, and the handle to it.
pub fn start(max_bytes: Option<u64>) -> Result<(CacheWriter, WriterThread)> {
    let cache = Arc::new(Cache::new(max_bytes));
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let owned = cache.clone();
    let thread = std::thread::Builder::new()
        .name("cache-writer".into())
        .spawn(move || {
            while let Some(message) = rx.blocking_recv() {
                match message {
                    Message::Apply(change, done) => {
                        owned.apply(change);
                        if let Some(done) = done {
                            // Whoever asked may have stopped waiting; the change holds anyway.
                            let _ = done.send(());
                        }
                    }
                    Message::Stop => break,
                }
            }
        })
        .wrap_err("cannot start the cache-writer thread")?;
    Ok((
        CacheWriter {
            tx: tx.clone(),
            cache,
        },
        WriterThread { tx, thread },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(ids: &[&str]) -> Change {
        Change::Orders(
            ids.iter()
                .map(|id| {
                    (
                        OrderUid::parse(id).expect("valid"),
                        format!("{{\"id\":\"{id}\"}}"),
                    )
                })
                .collect(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_are_applied_in_the_order_they_were_sent_whoever_sends_them() {
        let (writer, thread) = start(None).expect("the writer starts");
        let other = writer.clone();
        writer.send(orders(&["a", "b"])).await.expect("queued");
        other.send(orders(&["c"])).await.expect("queued");
        let loaded = Arc::new(Entry::new(&OrderUid::parse("d").expect("valid"), "{}"));
        other
            .send(Change::Loaded(loaded.clone()))
            .await
            .expect("queued");
        assert!(!writer.cache().is_restored());
        writer.apply(Change::Restored).await.expect("applied");

        // Everything sent before `Restored` is applied by the time it is.
        let cache = writer.cache();
        assert!(cache.is_restored());
        assert_eq!(cache.len(), 4);
        assert!(Arc::ptr_eq(&cache.get("d").expect("cached"), &loaded));
        tokio::task::spawn_blocking(move || thread.stop())
            .await
            .expect("stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_stop_a_change_is_refused_not_lost_silently() {
        let (writer, thread) = start(None).expect("the writer starts");
        writer.send(orders(&["kept"])).await.expect("queued");
        tokio::task::spawn_blocking(move || thread.stop())
            .await
            .expect("stopped");
        // What was sent before the stop was applied; what comes after is an error.
        assert!(writer.cache().get("kept").is_some());
        assert_eq!(writer.send(orders(&["late"])).await, Err(WriterGone));
        assert_eq!(writer.apply(Change::Restored).await, Err(WriterGone));
        assert!(writer.cache().get("late").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erased_order_is_dropped_and_never_inserted_again_by_anyone() {
        let (writer, thread) = start(Some(1 << 20)).expect("the writer starts");
        writer
            .send(orders(&["gone", "kept"]))
            .await
            .expect("queued");
        let uid = OrderUid::parse("gone").expect("valid");
        writer
            .send(Change::Erase(vec![uid.clone()]))
            .await
            .expect("queued");
        // What a restore chunk, a changelog message or a miss read before the erasure would send.
        writer.send(orders(&["gone"])).await.expect("queued");
        let late = Arc::new(Entry::new(&uid, "{}"));
        writer.send(Change::Loaded(late)).await.expect("queued");
        writer
            .apply(Change::Tombstones(vec![uid.clone()]))
            .await
            .expect("applied");

        let cache = writer.cache();
        assert!(cache.get("gone").is_none());
        assert!(cache.is_erased("gone"));
        assert!(cache.get("kept").is_some());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), "{\"id\":\"kept\"}".len() as u64);
        assert_eq!(
            cache.stats.erasures.get(),
            1,
            "counted once, not for the tombstone"
        );
        tokio::task::spawn_blocking(move || thread.stop())
            .await
            .expect("stopped");
    }
}
