//! Following the changelog into this replica's cache: the hand-off with the restore at start,
//! the continuity check, and the gap policy (restore afresh from PostgreSQL, then follow on).
//!
//! The follower runs on the ingest runtime beside ingest, from the moment the restore has ended.
//! Everything it reads goes to the cache through the one writer, like ingest's own orders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use color_eyre::eyre::{eyre, Result, WrapErr};
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use super::{format, Changelog, Position, BACKOFF_MAX, BACKOFF_MIN};
use crate::cache::{self, CacheWriter, Change, Restored};
use crate::health::Reporter;
use crate::order::OrderUid;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

/// The follower's pull heartbeat: a lost consumer (a NATS node gone) is noticed within two.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Messages per pull of the follower, and at most per chunk it reads at once.
const FOLLOW_BATCH: usize = 1000;
/// Payload bytes per pull of the follower. A packed message holds up to a max payload of orders,
/// so a pull bounded only by `FOLLOW_BATCH` could bring a gigabyte at once to a replica that is
/// catching up. A pull must still fit the largest message, or the server would refuse it forever.
const FOLLOW_MAX_BYTES: usize = 2 * crate::bus::MAX_PAYLOAD;
/// Between two tries of a restore afresh that failed.
const RESTORE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The follower's two facts for `/readyz`.
#[derive(Debug)]
pub struct FollowHealth {
    /// It cannot read the changelog now (reads stay correct: a miss asks PostgreSQL).
    pub follow: Reporter,
    /// This replica has not yet applied what the changelog held when it (re)started following,
    /// or found a gap and is restoring afresh.
    pub catching_up: Reporter,
}

/// One replica's follower, and what its restores need.
pub struct Follower {
    /// The changelog it follows.
    pub changelog: Changelog,
    /// Where a restore reads (at start, and afresh after a gap).
    pub source: cache::Source,
    /// Where followed and restored orders go.
    pub cache: CacheWriter,
    /// `/metrics`: orders loaded by the latest restore.
    pub restored: Gauge,
    /// The next changelog sequence to apply, for the lag gauges (`lag`); 0 until following.
    pub applied: Arc<AtomicU64>,
    /// Its facts for `/readyz`.
    pub health: FollowHealth,
}

/// Why following stopped.
enum Stopped {
    /// A stop was requested.
    Shutdown,
    /// The changelog does not hold the sequence needed next: restore afresh, then follow on.
    Gap(String),
    /// A pull skipped from the sequence `at` to `to`: unless the messages in between were
    /// deleted (erasure deletes messages), read again from `at`, once, before calling it a gap.
    Skipped { at: u64, to: u64, why: String },
}

impl Follower {
    /// Restores the cache from PostgreSQL with the changelog hand-off: the changelog's last
    /// sequence is read first, so whatever is committed during the restore is in the changelog
    /// after it. A restore that fails (PostgreSQL gone, a standby cancelling a statement more
    /// often than a range is retried) is tried again, hand-off and all, after a pause, with the
    /// reason in `/readyz`: a replica waits to be restored rather than exit. Returns where to
    /// follow from, or `None` on a stop.
    pub async fn restore(&self, shutdown: &Shutdown) -> Option<Position> {
        let catching_up = &self.health.catching_up;
        if catching_up.problem().is_none() {
            catching_up.set(Some("catching up with the changelog".to_owned()));
        }
        let mut again = Backoff::new(RESTORE_AGAIN_AFTER, RESTORE_AGAIN_AFTER);
        loop {
            match self.restore_once(shutdown).await {
                Ok(restored) => return restored,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the restore failed; trying again");
                    catching_up.set(Some(format!("the restore failed, trying again: {e:#}")));
                    if again.wait(shutdown).await.is_break() {
                        return None;
                    }
                }
            }
        }
    }

    /// One attempt of `restore`.
    async fn restore_once(&self, shutdown: &Shutdown) -> Result<Option<Position>> {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let end = loop {
            match self.changelog.end().await {
                Ok(end) => break end,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot read the changelog before the restore; retrying");
                    self.health.follow.set(Some(format!("{e:#}")));
                    if backoff.wait(shutdown).await.is_break() {
                        return Ok(None);
                    }
                }
            }
        };
        self.health.follow.set(None);
        let restored = cache::restore(&self.source, &self.cache, &self.restored, shutdown).await?;
        Ok((restored == Restored::Done).then_some(end))
    }

    /// Follows the changelog from `next` until a stop; after a gap, restores afresh (reads wait
    /// meanwhile) and follows on from there.
    pub async fn run(self, mut next: Position, shutdown: Shutdown) {
        loop {
            let why = match self.follow(next, &shutdown).await {
                Stopped::Shutdown => return,
                Stopped::Gap(why) | Stopped::Skipped { why, .. } => why,
            };
            warn!(%why, "the changelog has a gap; restoring the cache afresh from PostgreSQL");
            self.health
                .catching_up
                .set(Some(format!("{why}: restoring afresh from PostgreSQL")));
            match self.restore(&shutdown).await {
                Some(from) => next = from,
                None => return,
            }
        }
    }

    /// Follows the changelog from `position` into the cache until a stop, or until it finds a
    /// gap. `catching_up` stays set until everything the changelog held when following began is
    /// in the cache; `follow` reports why the changelog cannot be read meanwhile (the follower
    /// retries with backoff).
    async fn follow(&self, mut position: Position, shutdown: &Shutdown) -> Stopped {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // A pull can skip a message the stream still holds: one delivered while the connection
        // was being re-established is lost to that consumer. Following again from it, with a new
        // consumer, reads it; only a sequence skipped twice in a row is gone (a deleted message).
        let mut skipped_before = None;
        loop {
            if shutdown.is_requested() {
                return Stopped::Shutdown;
            }
            match self.follow_once(&mut position, shutdown).await {
                Ok(Stopped::Skipped { at, to, why })
                    if self.erased(position.created, at, to).await =>
                {
                    info!(%why, changelog = %self.changelog.name, "the changelog messages skipped were deleted (an erasure); following on");
                    position.next = to;
                    skipped_before = None;
                }
                Ok(Stopped::Skipped { at, why, .. }) if skipped_before != Some(at) => {
                    warn!(%why, changelog = %self.changelog.name, "a pull skipped a changelog message; following again from it");
                    skipped_before = Some(at);
                }
                Ok(Stopped::Skipped { why, .. }) => return Stopped::Gap(why),
                Ok(stopped) => return stopped,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), changelog = %self.changelog.name, "cannot follow the changelog; retrying");
                    self.health.follow.set(Some(format!("{e:#}")));
                    if backoff.wait(shutdown).await.is_break() {
                        return Stopped::Shutdown;
                    }
                }
            }
        }
    }

    /// Whether `erase` deleted every changelog message from `from` up to `to` (excluded) of
    /// the changelog created at `created`: it publishes the other orders they carried again,
    /// later in the changelog, so the hole loses nothing. JetStream itself cannot tell such a
    /// hole from messages lost (a deleted first message just moves the stream's start), so
    /// erasure records its deletions in PostgreSQL. A failure to ask counts as no.
    async fn erased(&self, created: time::OffsetDateTime, from: u64, to: u64) -> bool {
        let name = &self.changelog.name;
        let covered = self
            .source
            .primary
            .changelog_deletions_cover(name, super::created_ns(created), from, to)
            .await;
        match covered {
            Ok(covered) => covered,
            Err(e) => {
                warn!(error = %e, "cannot ask PostgreSQL which changelog messages erasure deleted");
                false
            }
        }
    }

    /// One consumer's worth of following: checks that the changelog still holds the position's
    /// sequence, then reads on from it. `Err` is a NATS problem to retry; `Ok` a stop or a gap.
    async fn follow_once(&self, position: &mut Position, shutdown: &Shutdown) -> Result<Stopped> {
        let (follow, catching_up) = (&self.health.follow, &self.health.catching_up);
        let changelog = &self.changelog;
        let mut stream = changelog.stream().await?;
        let info = stream
            .info()
            .await
            .wrap_err("cannot read the changelog's state")?
            .clone();
        if info.created != position.created {
            return Ok(Stopped::Gap(
                "the changelog was deleted and made again".to_owned(),
            ));
        }
        let state = info.state;
        let next = &mut position.next;
        self.applied.store(*next, Ordering::Relaxed);
        if let Some(gap) = gap_at_start(*next, state.first_sequence, state.last_sequence) {
            let (from, to) = (*next, state.first_sequence);
            if from < to && self.erased(position.created, from, to).await {
                info!(%gap, changelog = %changelog.name, "the changelog messages missing were deleted (an erasure); following on");
                *next = to;
            } else {
                return Ok(Stopped::Gap(gap));
            }
        }
        // Everything up to here was committed before this point: until it is applied, reads
        // would miss orders that a replica in sync serves from memory.
        let target = state.last_sequence;
        if *next > target {
            catching_up.set(None);
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                ack_policy: consumer::AckPolicy::None,
                // Ephemeral: gone by itself once this replica stops pulling.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .wrap_err("cannot create the changelog consumer")?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(FOLLOW_BATCH)
            .max_bytes_per_batch(FOLLOW_MAX_BYTES)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .wrap_err("cannot pull from the changelog")?;
        follow.set(None);
        let mut chunks = messages.ready_chunks(FOLLOW_BATCH);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.requested() => return Ok(Stopped::Shutdown),
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(eyre!("the changelog's message stream ended"));
            };
            let (read, end) = read_chunk(chunk, next, &changelog.name, &changelog.origin);
            // Before anything else: `next` is already past these orders, so a batch dropped here
            // would never be read again (the next consumer starts at `next`). Erasures after
            // the orders: an order erased in the same chunk must not stay (the cache would
            // refuse it after its erasure anyway).
            if !read.orders.is_empty() {
                self.cache.send(Change::Orders(read.orders)).await?;
            }
            if !read.erased.is_empty() {
                info!(orders = read.erased.len(), changelog = %changelog.name, "erasing orders from memory (an erasure notice)");
                self.cache.send(Change::Erase(read.erased)).await?;
            }
            self.applied.store(*next, Ordering::Relaxed);
            match end {
                None => {}
                Some(ChunkEnd::Skipped { at, to, why }) => {
                    return Ok(Stopped::Skipped { at, to, why })
                }
                Some(ChunkEnd::Failed(e)) => return Err(e),
            }
            if *next > target && catching_up.problem().is_some() {
                info!(changelog = %changelog.name, "caught up with the changelog");
                catching_up.set(None);
            }
        }
    }
}

/// What cut a chunk short.
enum ChunkEnd {
    /// The pull skipped from sequence `at` to `to`: gone from the stream, or lost on the way.
    Skipped { at: u64, to: u64, why: String },
    /// The pull stream failed (a missed heartbeat, a lost connection): follow again from `next`.
    Failed(color_eyre::Report),
}

/// A pulled changelog message, as the follower reads it.
trait Pulled {
    /// Its stream sequence.
    fn sequence(&self) -> Result<u64>;
    /// What it says (no orders if `origin` published it); `None` if it is not a changelog
    /// message.
    fn read(&self, origin: &str) -> Option<format::Read>;
}

impl Pulled for jetstream::Message {
    fn sequence(&self) -> Result<u64> {
        self.info()
            .map(|info| info.stream_sequence)
            .map_err(|e| eyre!("a changelog message without its sequence: {e}"))
    }

    fn read(&self, origin: &str) -> Option<format::Read> {
        format::read_message(self.headers.as_ref()?, &self.payload, origin)
    }
}

/// What a chunk of changelog messages says: orders to insert, orders to erase.
#[derive(Default)]
struct ChunkRead {
    orders: cache::Batch,
    erased: Vec<OrderUid>,
}

/// Reads one pulled chunk from `next` on: the orders (and erasures) it holds up to the first gap
/// or error, with `next` moved past each message read, and what ended it early, if anything
/// did. The caller must hand those on whatever the end.
fn read_chunk<M: Pulled, E: std::error::Error + Send + Sync + 'static>(
    chunk: Vec<std::result::Result<M, E>>,
    next: &mut u64,
    changelog: &str,
    origin: &str,
) -> (ChunkRead, Option<ChunkEnd>) {
    let mut batch = ChunkRead {
        orders: Vec::with_capacity(chunk.len()),
        erased: Vec::new(),
    };
    for item in chunk {
        let read = item
            .wrap_err("the changelog's message stream failed")
            .and_then(|message| Ok((message.sequence()?, message)));
        let (seq, message) = match read {
            Ok(read) => read,
            Err(e) => return (batch, Some(ChunkEnd::Failed(e))),
        };
        if seq != *next {
            // An ordered read that skips: the sequences in between are gone, or were lost.
            let why = format!("the changelog skipped from sequence {} to {seq}", *next);
            let (at, to) = (*next, seq);
            return (batch, Some(ChunkEnd::Skipped { at, to, why }));
        }
        *next = seq + 1;
        match message.read(origin) {
            Some(format::Read::Orders(orders)) => batch.orders.extend(orders),
            Some(format::Read::Erase(uids)) => batch.erased.extend(uids),
            // Only ingest publishes here, and only validated orders: anything else is not ours
            // to serve.
            None => warn!(
                seq,
                changelog, "ignored a changelog message that is not an order"
            ),
        }
    }
    (batch, None)
}

/// Why the changelog cannot be followed from `next`, given its first and last sequence, if so.
/// A stream never written to has both at 0; one emptied (by age or a purge) has `first = last + 1`.
fn gap_at_start(next: u64, first: u64, last: u64) -> Option<String> {
    if next < first {
        Some(format!(
            "the changelog no longer holds sequence {next} (it starts at {first})"
        ))
    } else if next > last.saturating_add(1) {
        Some(format!(
            "the changelog ends at sequence {last}, before {next}: it was recreated"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pulled message: its sequence, and the order_uid it carries (none: not an order).
    struct Fake(u64, Option<&'static str>);

    impl Pulled for Fake {
        fn sequence(&self) -> Result<u64> {
            Ok(self.0)
        }

        fn read(&self, _origin: &str) -> Option<format::Read> {
            let uid = OrderUid::parse(self.1?).ok()?;
            let document = format!("{{\"seq\":{}}}", self.0);
            Some(format::Read::Orders(vec![(uid, document)]))
        }
    }

    fn fake(seq: u64, uid: &'static str) -> Result<Fake, std::io::Error> {
        Ok(Fake(seq, Some(uid)))
    }

    fn uids(read: &ChunkRead) -> Vec<&str> {
        read.orders.iter().map(|(uid, _)| uid.as_str()).collect()
    }

    #[test]
    fn a_chunk_read_in_order_moves_past_every_message_and_yields_its_orders() {
        let mut next = 7;
        let chunk = vec![fake(7, "a"), Ok(Fake(8, None)), fake(9, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a", "c"]);
        assert!(end.is_none());
        assert_eq!(next, 10);
    }

    #[test]
    fn a_chunk_that_fails_midway_still_yields_the_orders_read_before_the_failure() {
        // A missed heartbeat behind two orders: `next` moves past them, so the caller must get
        // them now; the next consumer starts after them.
        let mut next = 1;
        let heartbeat = std::io::Error::other("missed idle heartbeat");
        let chunk = vec![fake(1, "a"), fake(2, "b"), Err(heartbeat), fake(3, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a", "b"]);
        assert!(matches!(end, Some(ChunkEnd::Failed(_))));
        assert_eq!(next, 3);
    }

    #[test]
    fn a_chunk_that_skips_a_sequence_yields_what_came_before_and_names_the_gap() {
        let mut next = 4;
        let chunk = vec![fake(4, "a"), fake(6, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a"]);
        let Some(ChunkEnd::Skipped { at, to, why }) = end else {
            panic!("no gap");
        };
        assert!(why.contains("from sequence 5 to 6"), "{why}");
        assert_eq!((at, to, next), (5, 6, 5));
    }

    #[test]
    fn a_gap_at_start_is_seen_when_the_needed_sequence_is_gone_or_the_stream_is_new() {
        // In order: nothing missing.
        assert_eq!(gap_at_start(1, 0, 0), None); // never written
        assert_eq!(gap_at_start(5, 1, 4), None); // at the end
        assert_eq!(gap_at_start(3, 1, 10), None); // inside
        assert_eq!(gap_at_start(11, 11, 10), None); // emptied by age exactly up to here
                                                    // Gaps.
        assert!(gap_at_start(3, 5, 10).is_some()); // 3 and 4 expired or purged
        assert!(gap_at_start(10, 11, 10).is_some()); // emptied past where we were
        assert!(gap_at_start(20, 1, 10).is_some()); // the stream was recreated
    }
}
