//! The work on one batch, stage by stage: parse it (`prepare`), commit it (`commit`, retried
//! until PostgreSQL takes it), then fan it out to the changelog, ack it and hand its orders to
//! the cache (`finish`). Which stage runs when is `schedule`'s decision, not theirs.

use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tracing::{debug, info, warn};

use super::in_flight::{nak_all, InFlight};
use super::{Ingest, Totals, BACKOFF_MAX, BACKOFF_MIN};
use crate::batch::{Incoming, Outcome, Written, ERASED_KIND};
use crate::bus;
use crate::cache::Change;
use crate::order::{Order, OrderUid};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::Record;

/// Failed attempts at a batch before its messages are tried one by one, to find one that
/// PostgreSQL refuses for a reason other than its data (a trigger, a rule).
const ISOLATE_AFTER: u32 = 5;
/// Longest one batch write may take before it is cut off and retried (below the ack wait).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a commit attempt failed (it is retried either way).
enum CommitError {
    /// PostgreSQL refused or could not be reached.
    Database(sqlx::Error),
    /// No answer within `WRITE_TIMEOUT`.
    TimedOut,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Database(e) => e.fmt(f),
            CommitError::TimedOut => write!(f, "no commit within {} s", WRITE_TIMEOUT.as_secs()),
        }
    }
}

/// A stop came while a batch could not be committed or fanned out: it was handed back for
/// redelivery.
pub(super) struct HandedBack;

/// Why a committed batch was not finished.
pub(super) enum BatchError {
    /// A stop came while the changelog would not take the batch: it was nak'd for redelivery.
    HandedBack,
    /// The cache writer is gone: the process cannot serve what it stores, so it must stop.
    CacheGone,
}

/// A pulled batch, parsed, not committed yet.
pub(super) struct Prepared {
    /// Its id in `InFlight`.
    pub(super) id: u64,
    pub(super) messages: Vec<jetstream::Message>,
    incoming: Vec<Incoming>,
}

/// A committed batch, waiting for its fan-out and acks.
pub(super) struct Committed {
    /// Its id in `InFlight`.
    pub(super) id: u64,
    pub(super) messages: Vec<jetstream::Message>,
    received: usize,
    written: Written,
}

impl Ingest {
    /// Parses a pulled batch and registers it as in flight.
    pub(super) fn prepare(
        &self,
        messages: Vec<jetstream::Message>,
        in_flight: &InFlight,
    ) -> Prepared {
        // Of the server this batch came through: the changelog publishes through the same one.
        let max_len = bus::max_document(self.js.client().server_info().max_payload);
        let incoming: Vec<Incoming> = messages
            .iter()
            .map(|m| Incoming {
                seq: m.info().map(|i| i.stream_sequence).unwrap_or(0),
                subject: m.subject.to_string(),
                raw: m.payload.clone(),
                parsed: Order::parse_within(&m.payload, max_len),
            })
            .collect();
        Prepared {
            id: in_flight.add(&messages),
            messages,
            incoming,
        }
    }

    /// Commits a batch, retrying with backoff until PostgreSQL takes it; on a stop meanwhile
    /// (after the grace period, or at once while PostgreSQL refuses it), hands it back.
    pub(super) async fn commit(
        &self,
        batch: Prepared,
        in_flight: &InFlight,
        shutdown: &Shutdown,
    ) -> Result<Committed, HandedBack> {
        let Prepared {
            id,
            messages,
            incoming,
        } = batch;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut attempts = 0u32;
        let written = loop {
            attempts += 1;
            let started = Instant::now();
            // A write that hangs (a lock, a silent network) is cut off and retried, and it never
            // holds up a shutdown for longer than the grace period.
            // After a few refusals, look for a message that PostgreSQL refuses on its own.
            let isolate = attempts > ISOLATE_AFTER;
            let attempt = tokio::time::timeout(WRITE_TIMEOUT, self.write(&incoming, isolate));
            let result = tokio::select! {
                biased;
                result = attempt => result
                    .map_err(|_| CommitError::TimedOut)
                    .and_then(|written| written.map_err(CommitError::Database)),
                _ = self.after_grace(shutdown) => {
                    warn!("a batch in flight was not committed within the shutdown grace period; handing it back");
                    in_flight.hand_back(id, &messages).await;
                    return Err(HandedBack);
                }
            };
            match result {
                Ok(written) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |since| since.as_secs_f64());
                    self.metrics.last_commit_timestamp.set(now);
                    break written;
                }
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    if self.health.commit.problem().is_none() {
                        warn!(error = %e, "cannot commit a batch; retrying until PostgreSQL takes it");
                    }
                    self.health.commit.set(Some(e.to_string()));
                    if backoff.wait(shutdown).await.is_break() {
                        // Hand the batch back at once: another instance, or the next start, takes it.
                        in_flight.hand_back(id, &messages).await;
                        return Err(HandedBack);
                    }
                }
            }
        };
        if self.health.commit.problem().is_some() {
            info!("PostgreSQL takes batches again");
            self.health.commit.set(None);
        }
        self.metrics.batch_size.observe(incoming.len() as f64);
        Ok(Committed {
            id,
            messages,
            received: incoming.len(),
            written,
        })
    }

    /// Fans a committed batch out to the other replicas, acks it, counts it and hands its
    /// orders to the cache writer; returns what it counted.
    pub(super) async fn finish(
        &self,
        batch: Committed,
        in_flight: &InFlight,
        shutdown: &Shutdown,
    ) -> Result<Totals, BatchError> {
        let Committed {
            id,
            messages,
            received,
            written,
        } = batch;
        // Committed; the other replicas must have the orders before the messages may go.
        crash_here_if_testing();
        if !written.to_cache.is_empty() {
            if let Err(e) = self.fan_out(&written.to_cache, &messages, shutdown).await {
                in_flight.remove(id);
                return Err(e);
            }
        }

        // Committed and fanned out: ack every message. A lost ack only means a redelivery, which is idempotent.
        let acks = futures::future::join_all(messages.iter().map(|m| m.ack())).await;
        in_flight.remove(id);
        let failed = acks.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            warn!(
                failed,
                "some acks could not be sent; those messages will be redelivered"
            );
        }

        self.erase_refused(&written, &messages).await;

        let mut totals = Totals {
            received: received as u64,
            ..Totals::default()
        };
        for outcome in &written.outcomes {
            match outcome {
                Outcome::Stored => {
                    totals.stored += 1;
                    self.metrics.count_message("stored", "");
                }
                Outcome::Duplicate => {
                    totals.duplicates += 1;
                    self.metrics.count_message("duplicate", "");
                }
                Outcome::Rejected(kind) => {
                    totals.rejected += 1;
                    self.metrics.count_message("rejected", kind);
                    debug!(kind, "message rejected");
                }
            }
        }
        debug!(size = received, "batch committed");
        if !written.to_cache.is_empty() {
            self.cache
                .send(Change::Orders(written.to_cache))
                .await
                .map_err(|_| BatchError::CacheGone)?;
        }
        Ok(totals)
    }

    /// Publishes a committed batch's orders to the changelog, retrying with backoff until
    /// JetStream stores them, like a commit that fails. On a stop meanwhile the messages are
    /// handed back: whoever gets them finds the orders stored, and fans them out before acking.
    async fn fan_out(
        &self,
        orders: &[(OrderUid, String)],
        messages: &[jetstream::Message],
        shutdown: &Shutdown,
    ) -> Result<(), BatchError> {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let published = tokio::select! {
                biased;
                published = self.changelog.publish(orders) => published,
                _ = self.after_grace(shutdown) => {
                    warn!("a batch in flight was not fanned out within the shutdown grace period; handing it back");
                    nak_all(messages).await;
                    return Err(BatchError::HandedBack);
                }
            };
            match published {
                Ok(()) => {
                    if self.health.fanout.problem().is_some() {
                        info!("the changelog takes orders again");
                        self.health.fanout.set(None);
                    }
                    return Ok(());
                }
                Err(e) => {
                    if self.health.fanout.problem().is_none() {
                        warn!(error = %format!("{e:#}"), changelog = self.changelog.name(), "cannot publish committed orders to the changelog; retrying");
                    }
                    self.health.fanout.set(Some(format!("{e:#}")));
                    if backoff.wait(shutdown).await.is_break() {
                        nak_all(messages).await;
                        return Err(BatchError::HandedBack);
                    }
                }
            }
        }
    }

    /// Writes a batch, taking it apart if PostgreSQL refuses a message of it (`Store::write`).
    async fn write(
        &self,
        incoming: &[Incoming],
        isolate_refusals: bool,
    ) -> Result<Written, sqlx::Error> {
        self.store
            .write(
                &self.nats.stream,
                incoming,
                Record::Rejections,
                isolate_refusals,
            )
            .await
    }

    /// Deletes from the stream the messages of erased orders that this batch refused (a
    /// republish, a replay of an old backup): their rejection rows keep no payload, and the
    /// stream should keep none either. At worst (NATS failing now) they stay until the next
    /// `ordersvc erase` of the order, which finds them.
    async fn erase_refused(&self, written: &Written, messages: &[jetstream::Message]) {
        let erased: Vec<u64> = written
            .outcomes
            .iter()
            .zip(messages)
            .filter(|(outcome, _)| **outcome == Outcome::Rejected(ERASED_KIND))
            .filter_map(|(_, message)| message.info().ok().map(|info| info.stream_sequence))
            .collect();
        if erased.is_empty() {
            return;
        }
        let stream = match self.js.get_stream_no_info(&self.nats.stream).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "cannot delete the messages of erased orders from the stream");
                return;
            }
        };
        for seq in erased {
            if let Err(e) = bus::scan::erase_message(&stream, seq).await {
                warn!(seq, error = %format!("{e:#}"), "cannot delete the message of an erased order from the stream");
            }
        }
    }

    /// Resolves `grace` after a stop is requested (never, if none is).
    async fn after_grace(&self, shutdown: &Shutdown) {
        shutdown.requested().await;
        tokio::time::sleep(self.grace).await;
    }
}

/// The fault the replica tests inject: with `ORDERSVC_TEST_ABORT_BEFORE_FANOUT` set, the process
/// aborts (no unwinding, no acks, no cleanup, as `kill -9` would) right after its first commit,
/// before the fan-out. Compiled into debug builds only (the tests' build): a release binary, the
/// one that ships, has no such hook, whatever its environment says.
#[cfg(debug_assertions)]
fn crash_here_if_testing() {
    static ABORT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ABORT.get_or_init(|| std::env::var_os("ORDERSVC_TEST_ABORT_BEFORE_FANOUT").is_some()) {
        eprintln!("ORDERSVC_TEST_ABORT_BEFORE_FANOUT: aborting between commit and fan-out");
        std::process::abort();
    }
}

/// Release builds: no test hook.
#[cfg(not(debug_assertions))]
fn crash_here_if_testing() {}
