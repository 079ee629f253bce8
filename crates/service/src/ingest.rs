//! The ingest loop, on the ingest thread's tokio runtime: pull a batch from the durable consumer,
//! parse every message, commit the batch to PostgreSQL, and only then ack it and hand the stored
//! orders to the cache writer.
//!
//! The stages overlap, one batch in each: while batch N commits, batch N+1 is pulled and parsed,
//! and batch N-1 is fanned out to the other replicas, acked and handed to the cache. A round ends
//! when all three are done, so each batch is acked strictly after its own commit and fan-out, in
//! order, and at most three batches are in flight. Whichever stage is slow (PostgreSQL or NATS
//! down), the messages of every batch in flight are kept in progress meanwhile.
//!
//! A message is acked only after its order (or its rejection record) is committed. When the
//! commit fails, the batch is kept (unacked) and retried with backoff until PostgreSQL takes it;
//! meanwhile its messages are marked in progress so that the server does not redeliver them, and
//! `/readyz` reports the failure. Inserts are idempotent, so any redelivery is harmless.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use color_eyre::eyre::{eyre, Result};
use crossbeam_channel::{Sender, TrySendError};
use futures::stream::ReadyChunks;
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::batch::{Incoming, Outcome, Written};
use crate::bus;
use crate::cache;
use crate::changelog::Changelog;
use crate::config::NatsArgs;
use crate::health::Reporter;
use crate::metrics::Metrics;
use crate::order::{self, Order};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Backoff between retries while PostgreSQL or NATS is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The pull stream's idle heartbeat: a silent server, or a pull request it lost (a consumer
/// leader elected meanwhile), is noticed within two of these, and the subscription rebuilt.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// While a round of the pipeline takes longer (a stage retrying), how often the messages in flight
/// are reported in progress (well within the consumer's ack wait, so the server never redelivers
/// them to someone else meanwhile).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Failed attempts at a batch before its messages are tried one by one, to find one that
/// PostgreSQL refuses for a reason other than its data (a trigger, a rule).
const ISOLATE_AFTER: u32 = 5;
/// Payload bytes one batch holds at most (the rest waits for the next batch), so that a backlog
/// of messages near the NATS max payload makes batches of megabytes, not of a gigabyte. Raised
/// to twice the server's max payload if that is larger, so that any message fits in a pull.
const BATCH_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest a batch waits for more messages before it is written.
const LINGER: Duration = Duration::from_millis(5);
/// Longest one batch write may take before it is cut off and retried (below the ack wait).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many buffered chunks are handed back at shutdown.
const RELEASE_CHUNKS_MAX: usize = 64;

/// Everything the ingest loop needs.
pub struct Ingest {
    /// JetStream context (to recreate the stream or consumer if they disappear).
    pub js: jetstream::Context,
    /// Stream and subject names.
    pub nats: NatsArgs,
    /// Durable consumer name.
    pub durable: String,
    /// Most messages per transaction.
    pub batch_size: usize,
    /// The database.
    pub store: Store,
    /// Committed orders go to the cache writer through this channel.
    pub cache_tx: Sender<cache::Batch>,
    /// Ingest's fact for `/readyz`: batches cannot be committed.
    pub commit: Reporter,
    /// Ingest's other fact: the stream cannot be subscribed to, or stopped delivering.
    pub subscription: Reporter,
    /// Where committed orders go for the other replicas, before their messages are acked.
    pub changelog: Changelog,
    /// Ingest's third fact: committed orders cannot be published to the changelog.
    pub fanout: Reporter,
    /// How long a stop waits for the batch in flight to commit before handing it back.
    pub grace: Duration,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Running totals, logged at shutdown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Messages received.
    pub received: u64,
    /// New orders stored.
    pub stored: u64,
    /// Repeats of stored orders.
    pub duplicates: u64,
    /// Messages recorded in `rejected_messages`.
    pub rejected: u64,
}

impl Totals {
    fn add(&mut self, more: Totals) {
        self.received += more.received;
        self.stored += more.stored;
        self.duplicates += more.duplicates;
        self.rejected += more.rejected;
    }
}

/// A stop came while a batch could not be committed: it was handed back for redelivery.
struct HandedBack;

/// Why a batch was not finished.
enum BatchError {
    /// Shutdown came while PostgreSQL was refusing the batch: it was nak'd for redelivery.
    Shutdown,
    /// The cache writer is gone: the process cannot serve what it stores, so it must stop.
    CacheGone,
}

/// A pulled batch, parsed, not committed yet.
struct Prepared {
    id: u64,
    messages: Vec<jetstream::Message>,
    incoming: Vec<Incoming>,
}

/// A committed batch, waiting for its fan-out and acks.
struct Committed {
    id: u64,
    messages: Vec<jetstream::Message>,
    received: usize,
    written: Written,
}

/// The reply subjects of every batch in the pipeline, by batch: what to keep in progress while a
/// stage is retrying, so that the server redelivers none of them to another replica meanwhile.
struct InFlight {
    batches: std::sync::Mutex<std::collections::BTreeMap<u64, Vec<async_nats::Subject>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// `/metrics`' count of them.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl InFlight {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> InFlight {
        gauge.set(0);
        InFlight {
            batches: Default::default(),
            next_id: Default::default(),
            gauge,
        }
    }

    /// Registers a batch's messages; returns its id.
    fn add(&self, messages: &[jetstream::Message]) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replies = messages.iter().filter_map(|m| m.reply.clone()).collect();
        let mut batches = self.lock();
        batches.insert(id, replies);
        self.gauge.set(batches.len() as i64);
        id
    }

    /// Hands a batch back for redelivery at once (see `nak_all`) and forgets it.
    async fn hand_back(&self, id: u64, messages: &[jetstream::Message]) {
        nak_all(messages).await;
        self.remove(id);
    }

    /// Forgets a batch: acked, or handed back.
    fn remove(&self, id: u64) {
        let mut batches = self.lock();
        batches.remove(&id);
        self.gauge.set(batches.len() as i64);
    }

    /// Every reply subject in flight.
    fn replies(&self) -> Vec<async_nats::Subject> {
        self.lock().values().flatten().cloned().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Vec<async_nats::Subject>>> {
        // Nothing panics while holding it; a poisoned map is still a correct map.
        self.batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the subscription has next.
enum Next {
    /// Messages to write, at most a batch's count and bytes.
    Batch(Vec<jetstream::Message>),
    /// No more batches from this subscription.
    Stop(Stop),
}

/// Why a subscription gives no more batches.
enum Stop {
    /// The pull stream ended: subscribe again.
    StreamEnded,
    /// The pull stream reported an error (a missed heartbeat, or worse).
    StreamFailed(pull::MessagesError),
    /// A stop was requested.
    Shutdown,
}

/// How one subscription's pipeline ended.
enum Ended {
    /// Subscribe again (after a backoff).
    Resubscribe,
    /// A stop: everything in flight is finished or handed back.
    Shutdown,
}

/// A pulled item: a message, or the pull stream's error.
type Pulled = Result<jetstream::Message, pull::MessagesError>;

/// One subscription to the durable consumer, cut into batches.
struct Subscription {
    chunks: ReadyChunks<pull::Stream>,
    /// Items pulled but not yet in a batch (what a full batch left over).
    carry: Vec<Pulled>,
    /// An error pulled behind the messages of the last batch: reported by the next call.
    failed: Option<pull::MessagesError>,
    batch_size: usize,
    max_bytes: usize,
}

impl Subscription {
    /// The next batch, or why there is none. A commit costs about the same for one message as
    /// for a thousand, and messages arrive in small bursts: under load this waits a moment for a
    /// fuller batch; when idle, a lone message waits at most `LINGER`.
    async fn next_batch(&mut self, shutdown: &Shutdown) -> Next {
        if let Some(e) = self.failed.take() {
            return Next::Stop(Stop::StreamFailed(e));
        }
        // The flag, not only the future: a stop may have come while a batch was being written.
        if shutdown.is_requested() {
            return Next::Stop(Stop::Shutdown);
        }
        if self.carry.is_empty() {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.requested() => return Next::Stop(Stop::Shutdown),
                chunk = self.chunks.next() => chunk,
            };
            match chunk {
                Some(chunk) => self.carry = chunk,
                None => return Next::Stop(Stop::StreamEnded),
            }
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut carried_bytes: usize = self.carry.iter().map(payload_len).sum();
        while self.carry.len() < self.batch_size && carried_bytes < self.max_bytes {
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Ok(Some(more)) => {
                    carried_bytes += more.iter().map(payload_len).sum::<usize>();
                    self.carry.extend(more);
                }
                // The deadline, or the end of the stream (seen again on the next pull).
                _ => break,
            }
        }
        let take = batch_len(&self.carry, payload_len, self.batch_size, self.max_bytes);
        let rest = self.carry.split_off(take);
        let mut batch = Vec::with_capacity(take);
        for item in std::mem::replace(&mut self.carry, rest) {
            match item {
                Ok(message) => batch.push(message),
                Err(e) => self.failed = Some(e),
            }
        }
        match (batch.is_empty(), self.failed.take()) {
            (true, Some(e)) => Next::Stop(Stop::StreamFailed(e)),
            (false, failed) => {
                self.failed = failed;
                Next::Batch(batch)
            }
            // A chunk is never empty, so a taken one holds a message or an error.
            (true, None) => Next::Stop(Stop::StreamEnded),
        }
    }

    /// On shutdown, hands back the messages pulled ahead but not handled (those carried over
    /// from a full batch, and those buffered in the stream), so that the next consumer gets them
    /// at once instead of after the ack wait.
    async fn release(mut self) {
        use futures::FutureExt;
        let mut released = nak_all(self.carry.iter().flatten()).await;
        // Only what is already buffered: polling must not wait for (or pull) more.
        for _ in 0..RELEASE_CHUNKS_MAX {
            let Some(Some(chunk)) = self.chunks.next().now_or_never() else {
                break;
            };
            released += nak_all(chunk.iter().flatten()).await;
        }
        if released > 0 {
            info!(released, "handed messages pulled ahead back to the stream");
        }
    }
}

impl Ingest {
    /// Runs until a stop is requested; the batches in flight are finished (committed and acked)
    /// first, or handed back if they cannot be within the grace period.
    pub async fn run(self, shutdown: Shutdown) -> Result<Totals> {
        let mut totals = Totals::default();
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_requested() {
            let subscription = match self.subscribe().await {
                Ok(subscription) => {
                    self.subscription.set(None);
                    backoff = BACKOFF_MIN;
                    subscription
                }
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to the consumer; retrying");
                    self.subscription.set(Some(format!("{e:#}")));
                    sleep_or_shutdown(&mut backoff, &shutdown).await;
                    continue;
                }
            };
            match self.pipeline(subscription, &mut totals, &shutdown).await? {
                Ended::Shutdown => return Ok(totals),
                Ended::Resubscribe => sleep_or_shutdown(&mut backoff, &shutdown).await,
            };
        }
        Ok(totals)
    }

    /// Runs the stages over one subscription until it fails or a stop comes, and every batch
    /// in flight is finished or handed back.
    async fn pipeline(
        &self,
        mut subscription: Subscription,
        totals: &mut Totals,
        shutdown: &Shutdown,
    ) -> Result<Ended> {
        let in_flight = InFlight::new(self.metrics.batches_in_flight.clone());
        let mut to_commit: Option<Prepared> = None;
        let mut to_finish: Option<Committed> = None;
        // Why the subscription stopped giving batches: once set, the pipeline drains.
        let mut stopped: Option<Stop> = None;
        loop {
            let pulling = stopped.is_none();
            let idle = to_commit.is_none() && to_finish.is_none();
            let pull = async {
                if !pulling {
                    return None;
                }
                Some(match subscription.next_batch(shutdown).await {
                    Next::Batch(messages) => Ok(self.prepare(messages, &in_flight)),
                    Next::Stop(stop) => Err(stop),
                })
            };
            let commit = async {
                match to_commit.take() {
                    Some(batch) => Some(self.commit(batch, &in_flight, shutdown).await),
                    None => None,
                }
            };
            let finish = async {
                match to_finish.take() {
                    Some(batch) => Some(self.finish(batch, &in_flight, shutdown).await),
                    None => None,
                }
            };
            let round = async {
                if idle {
                    return (None, None, pull.await);
                }
                // The commit's query and the fan-out's publishes are on their way before the
                // next batch is parsed on this thread, so PostgreSQL, NATS and parsing overlap
                // instead of waiting for one another. The round ends with the commit and the
                // fan-out: a pull still waiting for messages then is dropped (`next_batch` keeps
                // what it took), or the last batch of a quiet stream would wait for its ack
                // until another message came.
                let work = async { tokio::join!(biased; commit, finish) };
                tokio::pin!(work, pull);
                let mut pulled = None;
                loop {
                    tokio::select! {
                        biased;
                        (committed, finished) = &mut work => return (committed, finished, pulled.flatten()),
                        next = &mut pull, if pulled.is_none() => pulled = Some(next),
                    }
                }
            };
            let (committed, finished, pulled) = self.keep_in_progress(&in_flight, round).await;

            let mut handed_back = false;
            match finished {
                Some(Ok(done)) => totals.add(done),
                Some(Err(BatchError::CacheGone)) => return Err(eyre!("the cache writer stopped")),
                Some(Err(BatchError::Shutdown)) => handed_back = true,
                None => {}
            }
            match committed {
                Some(Ok(batch)) => to_finish = Some(batch),
                Some(Err(HandedBack)) => handed_back = true,
                None => {}
            }
            match pulled {
                Some(Ok(batch)) => {
                    if self.subscription.problem().is_some() {
                        self.subscription.set(None);
                    }
                    to_commit = Some(batch);
                }
                Some(Err(next)) => stopped = Some(next),
                None => {}
            }
            if handed_back {
                // A stop, and some batch could not be finished within the grace period: hand
                // back whatever else is in flight, too.
                for (id, messages) in [
                    to_commit.take().map(|b| (b.id, b.messages)),
                    to_finish.take().map(|b| (b.id, b.messages)),
                ]
                .into_iter()
                .flatten()
                {
                    in_flight.hand_back(id, &messages).await;
                }
                subscription.release().await;
                return Ok(Ended::Shutdown);
            }
            if to_commit.is_some() || to_finish.is_some() {
                continue;
            }
            let Some(stop) = stopped.take() else {
                continue;
            };
            return Ok(match stop {
                // No heartbeat: the server holds no pull request of ours any more (one sent
                // while the consumer had no leader, on a cluster, is lost for good). The pull
                // stream does not always recover by itself: subscribe again.
                Stop::StreamFailed(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    warn!("missed heartbeats from NATS; subscribing again");
                    self.subscription.set(Some("missed heartbeats".into()));
                    subscription.release().await;
                    Ended::Resubscribe
                }
                Stop::StreamFailed(e) => {
                    warn!(error = %e, "the message stream failed; subscribing again");
                    self.subscription.set(Some(e.to_string()));
                    Ended::Resubscribe
                }
                Stop::StreamEnded => {
                    warn!("the message stream ended; subscribing again");
                    Ended::Resubscribe
                }
                Stop::Shutdown => {
                    subscription.release().await;
                    Ended::Shutdown
                }
            });
        }
    }

    /// Runs `work`, and while it takes longer than `PROGRESS_EVERY` (a stage retrying while
    /// PostgreSQL or NATS is down), tells the server that every message in flight is still being
    /// worked on, so that none is redelivered to someone else meanwhile.
    async fn keep_in_progress<T>(
        &self,
        in_flight: &InFlight,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    let client = self.js.client();
                    let progress = in_flight.replies().into_iter().map(|reply| {
                        let client = client.clone();
                        async move { client.publish(reply, AckKind::Progress.into()).await }
                    });
                    futures::future::join_all(progress).await;
                }
            }
        }
    }

    /// The payload bytes of one batch (and of one pull) at most.
    fn batch_max_bytes(&self) -> usize {
        let max_payload = self.js.client().server_info().max_payload;
        BATCH_MAX_BYTES.max(max_payload.saturating_mul(2))
    }

    /// Makes sure the stream and consumer exist (they may have been deleted) and starts pulling.
    async fn subscribe(&self) -> Result<Subscription> {
        // Per subscription: a reconnection may reach a server with another max payload.
        let max_bytes = self.batch_max_bytes();
        let stream = bus::ensure_stream(&self.js, &self.nats).await?;
        let consumer = bus::ensure_consumer(&stream, &self.durable).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch_size)
            .max_bytes_per_batch(max_bytes)
            .heartbeat(HEARTBEAT)
            .messages()
            .await?;
        Ok(Subscription {
            chunks: messages.ready_chunks(self.batch_size),
            carry: Vec::new(),
            failed: None,
            batch_size: self.batch_size,
            max_bytes,
        })
    }

    /// Parses a pulled batch and registers it as in flight.
    fn prepare(&self, messages: Vec<jetstream::Message>, in_flight: &InFlight) -> Prepared {
        // Of the server this batch came through: the changelog publishes through the same one.
        let max_len = order::max_document(self.js.client().server_info().max_payload);
        let incoming: Vec<Incoming> = messages
            .iter()
            .map(|m| Incoming {
                seq: m.info().map(|i| i.stream_sequence).unwrap_or(0),
                subject: m.subject.to_string(),
                raw: m.payload.clone(),
                parsed: Order::parse_within(&m.payload, max_len),
            })
            .collect();
        if let Some(info) = messages.last().and_then(|m| m.info().ok()) {
            self.metrics
                .consumer_pending
                .set(i64::try_from(info.pending).unwrap_or(i64::MAX));
        }
        Prepared {
            id: in_flight.add(&messages),
            messages,
            incoming,
        }
    }

    /// Commits a batch, retrying with backoff until PostgreSQL takes it; on a stop meanwhile
    /// (after the grace period, or at once while PostgreSQL refuses it), hands it back.
    async fn commit(
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
        let mut backoff = BACKOFF_MIN;
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
                result = attempt => result.unwrap_or_else(|_| Err(write_timed_out())),
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
                    break written;
                }
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    if self.commit.problem().is_none() {
                        warn!(error = %e, "cannot commit a batch; retrying until PostgreSQL takes it");
                    }
                    self.commit.set(Some(e.to_string()));
                    if sleep_or_shutdown(&mut backoff, shutdown).await {
                        // Hand the batch back at once: another instance, or the next start, takes it.
                        in_flight.hand_back(id, &messages).await;
                        return Err(HandedBack);
                    }
                }
            }
        };
        if self.commit.problem().is_some() {
            info!("PostgreSQL takes batches again");
            self.commit.set(None);
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
    async fn finish(
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
            self.send_to_cache(written.to_cache).await?;
        }
        Ok(totals)
    }

    /// Publishes a committed batch's orders to the changelog, retrying with backoff until
    /// JetStream stores them, like a commit that fails. On a stop meanwhile the messages are
    /// handed back: whoever gets them finds the orders stored, and fans them out before acking.
    async fn fan_out(
        &self,
        orders: &[(crate::order::OrderUid, String)],
        messages: &[jetstream::Message],
        shutdown: &Shutdown,
    ) -> Result<(), BatchError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let published = tokio::select! {
                biased;
                published = self.changelog.publish(orders) => published,
                _ = self.after_grace(shutdown) => {
                    warn!("a batch in flight was not fanned out within the shutdown grace period; handing it back");
                    nak_all(messages).await;
                    return Err(BatchError::Shutdown);
                }
            };
            match published {
                Ok(()) => {
                    if self.fanout.problem().is_some() {
                        info!("the changelog takes orders again");
                        self.fanout.set(None);
                    }
                    return Ok(());
                }
                Err(e) => {
                    if self.fanout.problem().is_none() {
                        warn!(error = %format!("{e:#}"), changelog = self.changelog.name(), "cannot publish committed orders to the changelog; retrying");
                    }
                    self.fanout.set(Some(format!("{e:#}")));
                    if sleep_or_shutdown(&mut backoff, shutdown).await {
                        nak_all(messages).await;
                        return Err(BatchError::Shutdown);
                    }
                }
            }
        }
    }

    /// Writes a batch. If PostgreSQL refuses it because of a message's data (or, with
    /// `isolate_refusals`, for any reason it answers with), writes the messages one by one so
    /// that the one it refuses is recorded as rejected and blocks nothing.
    async fn write(
        &self,
        incoming: &[Incoming],
        isolate_refusals: bool,
    ) -> Result<Written, sqlx::Error> {
        let error = match self.store.write_batch(&self.nats.stream, incoming).await {
            Ok(written) => return Ok(written),
            Err(e) => e,
        };
        let refusal = |e: &sqlx::Error| {
            is_data_error(e) || (isolate_refusals && matches!(e, sqlx::Error::Database(_)))
        };
        if !refusal(&error) {
            return Err(error);
        }
        warn!(error = %error, "PostgreSQL refused a batch; writing it message by message");
        let mut all = Written::default();
        let mut refused = Vec::new();
        for (i, message) in incoming.iter().enumerate() {
            match self
                .store
                .write_batch(&self.nats.stream, std::slice::from_ref(message))
                .await
            {
                Ok(written) => {
                    all.outcomes.extend(written.outcomes);
                    all.to_cache.extend(written.to_cache);
                }
                Err(e) if refusal(&e) => refused.push((i, e)),
                Err(e) => return Err(e),
            }
        }
        // When no message escapes a refusal that is not about data, ask whether PostgreSQL takes
        // a known-good order at all: if not, it is the database's problem (a missing table, a
        // permission), and the batch is retried rather than every order in it rejected.
        if refused.len() == incoming.len()
            && !refused.iter().all(|(_, e)| is_data_error(e))
            && self.store.probe_write().await.is_err()
        {
            return Err(error);
        }
        for (i, e) in refused {
            let message = &incoming[i];
            warn!(seq = message.seq, error = %e, "PostgreSQL refused a message; recording it as rejected");
            self.store
                .reject_one(&self.nats.stream, message, &format!("store error: {e}"))
                .await?;
            all.outcomes.push(Outcome::Rejected("store_error"));
        }
        Ok(all)
    }

    /// Resolves `grace` after a stop is requested (never, if none is).
    async fn after_grace(&self, shutdown: &Shutdown) {
        shutdown.requested().await;
        tokio::time::sleep(self.grace).await;
    }

    /// Hands stored orders to the cache writer without blocking the runtime's thread.
    async fn send_to_cache(&self, mut batch: cache::Batch) -> Result<(), BatchError> {
        loop {
            match self.cache_tx.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    batch = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(BatchError::CacheGone),
            }
        }
    }
}

/// The fault the replica tests inject: with `ORDERSVC_TEST_ABORT_BEFORE_FANOUT` set, the process
/// aborts (no unwinding, no acks, no cleanup, as `kill -9` would) right after its first commit,
/// before the fan-out. For tests only; nothing reads it otherwise.
fn crash_here_if_testing() {
    static ABORT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ABORT.get_or_init(|| std::env::var_os("ORDERSVC_TEST_ABORT_BEFORE_FANOUT").is_some()) {
        eprintln!("ORDERSVC_TEST_ABORT_BEFORE_FANOUT: aborting between commit and fan-out");
        std::process::abort();
    }
}

/// The error a write gets when it takes longer than `WRITE_TIMEOUT` (retried like any outage).
fn write_timed_out() -> sqlx::Error {
    let message = format!("no commit within {} s", WRITE_TIMEOUT.as_secs());
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

/// Hands messages back for redelivery at once (to another instance, or the next start) and
/// returns how many. A nak that does not reach the server only means a redelivery after the ack
/// wait instead.
async fn nak_all<'a>(messages: impl IntoIterator<Item = &'a jetstream::Message>) -> usize {
    let naks = messages.into_iter().map(|m| m.ack_with(AckKind::Nak(None)));
    futures::future::join_all(naks).await.len()
}

/// Errors that come from the data of a row, not from PostgreSQL being unavailable: retrying the
/// same batch would fail forever, so the offending message must be isolated instead.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 22: data exception, 23: integrity constraint violation, 54: program limit exceeded.
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Sleeps for `backoff` (then doubles it, up to the maximum) unless a stop comes first; true on a stop.
async fn sleep_or_shutdown(backoff: &mut Duration, shutdown: &Shutdown) -> bool {
    let pause = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.requested() => {}
        _ = tokio::time::sleep(pause) => {}
    }
    shutdown.is_requested()
}

/// A pulled item's payload size (an error item takes no room).
fn payload_len(item: &Pulled) -> usize {
    item.as_ref().map_or(0, |message| message.payload.len())
}

/// How many of the first `items` make one batch: at most `max_messages`, and no more than
/// `max_bytes` of them by `size`, except that a batch always takes at least one item.
fn batch_len<T>(
    items: &[T],
    size: impl Fn(&T) -> usize,
    max_messages: usize,
    max_bytes: usize,
) -> usize {
    let mut bytes = 0usize;
    for (i, item) in items.iter().take(max_messages).enumerate() {
        bytes = bytes.saturating_add(size(item));
        if bytes > max_bytes {
            return i.max(1);
        }
    }
    items.len().min(max_messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stops_at_the_message_count_or_the_byte_bound_but_takes_at_least_one() {
        let sizes = [10usize, 10, 10, 10];
        let size = |n: &usize| *n;
        assert_eq!(batch_len(&sizes, size, 1000, 1000), 4);
        assert_eq!(batch_len(&sizes, size, 3, 1000), 3);
        assert_eq!(batch_len(&sizes, size, 1000, 20), 2);
        assert_eq!(batch_len(&sizes, size, 1000, 25), 2);
        // One message over the bound still makes a batch of its own.
        assert_eq!(batch_len(&[50usize, 1], size, 1000, 20), 1);
        assert_eq!(batch_len(&[] as &[usize], size, 1000, 20), 0);
    }
}
