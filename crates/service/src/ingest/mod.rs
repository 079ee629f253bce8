//! Ingest, on the ingest thread's tokio runtime: pull batches from the durable consumer, parse
//! every message, commit each batch to PostgreSQL, and only then fan it out to the changelog, ack
//! it and hand the stored orders to the cache writer.
//!
//! The stages overlap, one batch in each: while batch N commits, batch N+1 is pulled and parsed,
//! and batch N-1 is fanned out to the other replicas, acked and handed to the cache. Which stage
//! starts when, and when a batch may be acked (after its own commit and fan-out, in order), is
//! decided by `schedule`, which does no I/O and has tests of its own; the work of each stage is in
//! `stages`; this module's loop only starts what the schedule says and tells it how each stage
//! ended. Whichever stage is slow (PostgreSQL or NATS down), the messages of every batch in
//! flight are kept in progress meanwhile (`in_flight`).
//!
//! A message is acked only after its order (or its rejection record) is committed. When the
//! commit fails, the batch is kept (unacked) and retried with backoff until PostgreSQL takes it;
//! meanwhile its messages are marked in progress so that the server does not redeliver them, and
//! `/readyz` reports the failure. Inserts are idempotent, so any redelivery is harmless.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use color_eyre::eyre::{eyre, Result};
use tracing::warn;

use self::in_flight::InFlight;
use self::schedule::{End, Event, Schedule, Start};
use self::stages::{BatchError, Committed, HandedBack, Prepared};
use self::subscription::{Next, Stop, Subscription};
use crate::cache::CacheWriter;
use crate::changelog::Changelog;
use crate::config::NatsArgs;
use crate::health::Reporter;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::Store;

mod in_flight;
mod schedule;
mod stages;
mod subscription;

/// Backoff between retries while PostgreSQL or NATS is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While no stage ends for this long (a stage retrying), the messages in flight are reported in
/// progress, again and again (well within the consumer's ack wait, so the server never
/// redelivers them to someone else meanwhile).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Ingest's three facts for `/readyz`; it is their only writer.
#[derive(Debug)]
pub struct IngestHealth {
    /// Batches cannot be committed.
    pub commit: Reporter,
    /// The stream cannot be subscribed to, or stopped delivering.
    pub subscription: Reporter,
    /// Committed orders cannot be published to the changelog.
    pub fanout: Reporter,
}

/// Everything ingest needs.
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
    /// Where committed orders go for this replica's cache, after their fan-out.
    pub cache: CacheWriter,
    /// Where committed orders go for the other replicas, before their messages are acked.
    pub changelog: Changelog,
    /// Its facts for `/readyz`.
    pub health: IngestHealth,
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

/// How one subscription's run ended.
enum Ended {
    /// Subscribe again (after a backoff).
    Resubscribe,
    /// A stop: everything in flight is finished or handed back.
    Shutdown,
}

/// A stage under way: its future, or nothing.
type Slot<'a, T> = Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

/// Which stage's future ended, with its output.
enum Done {
    /// The subscription comes back with what it gave (boxed: it is much larger than the rest).
    Pull(Box<Subscription>, Next),
    Commit(Result<Committed, HandedBack>),
    Finish(Result<Totals, BatchError>),
}

impl Ingest {
    /// Runs until a stop is requested; the batches in flight are finished (committed and acked)
    /// first, or handed back if they cannot be within the grace period.
    pub async fn run(self, shutdown: Shutdown) -> Result<Totals> {
        let mut totals = Totals::default();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        while !shutdown.is_requested() {
            let opened =
                Subscription::open(&self.js, &self.nats, &self.durable, self.batch_size).await;
            let subscription = match opened {
                Ok(subscription) => {
                    self.health.subscription.set(None);
                    backoff.reset();
                    subscription
                }
                Err(e) => {
                    warn!(error = %e, "cannot subscribe to the consumer; retrying");
                    self.health.subscription.set(Some(format!("{e:#}")));
                    let _ = backoff.wait(&shutdown).await;
                    continue;
                }
            };
            match self.pipeline(subscription, &mut totals, &shutdown).await? {
                Ended::Shutdown => return Ok(totals),
                Ended::Resubscribe => {
                    let _ = backoff.wait(&shutdown).await;
                }
            }
        }
        Ok(totals)
    }

    /// Runs the stages over one subscription, as `schedule` decides, until it fails or a stop
    /// comes and every batch in flight is finished or handed back.
    async fn pipeline(
        &self,
        subscription: Subscription,
        totals: &mut Totals,
        shutdown: &Shutdown,
    ) -> Result<Ended> {
        let in_flight = InFlight::new(self.metrics.batches_in_flight.clone());
        let mut schedule = Schedule::new();
        // The subscription, while no pull holds it.
        let mut idle = Some(subscription);
        let mut pull: Slot<'_, (Box<Subscription>, Next)> = None;
        let mut commit: Slot<'_, Result<Committed, HandedBack>> = None;
        let mut finish: Slot<'_, Result<Totals, BatchError>> = None;
        loop {
            for start in schedule.next() {
                match start {
                    Start::Pull => {
                        let Some(subscription) = idle.take() else {
                            return Err(eyre!("ingest's schedule started a second pull"));
                        };
                        let mut subscription = Box::new(subscription);
                        pull = Some(Box::pin(async move {
                            let next = subscription.next_batch(shutdown).await;
                            (subscription, next)
                        }));
                    }
                    Start::Commit(batch) => {
                        commit = Some(Box::pin(self.commit(batch, &in_flight, shutdown)));
                    }
                    Start::Finish(batch) => {
                        finish = Some(Box::pin(self.finish(batch, &in_flight, shutdown)));
                    }
                }
            }
            if let Some(end) = schedule.end() {
                return Ok(self.end(end, idle, &in_flight).await);
            }
            let done = self
                .keep_in_progress(&in_flight, async {
                    // Biased, commit and finish first: a stage just started sends its query
                    // and its publishes before a pull that is ready at once (messages already
                    // buffered) has its batch parsed on this thread, so that PostgreSQL, NATS
                    // and parsing overlap instead of waiting for one another.
                    tokio::select! {
                        biased;
                        committed = run(&mut commit) => Done::Commit(committed),
                        finished = run(&mut finish) => Done::Finish(finished),
                        (subscription, next) = run(&mut pull) => Done::Pull(subscription, next),
                    }
                })
                .await;
            let event = match done {
                Done::Pull(subscription, next) => {
                    pull = None;
                    idle = Some(*subscription);
                    self.pulled(next, &in_flight)
                }
                Done::Commit(Ok(batch)) => {
                    commit = None;
                    Event::Committed(batch)
                }
                Done::Commit(Err(HandedBack)) => {
                    commit = None;
                    Event::CommitHandedBack
                }
                Done::Finish(finished) => {
                    finish = None;
                    finished_event(finished, totals)?
                }
            };
            schedule.on(event);
        }
    }

    /// What a pull gave, as the schedule takes it: a batch, parsed, or why there is none.
    fn pulled(&self, next: Next, in_flight: &InFlight) -> Event<Prepared, Committed, Stop> {
        match next {
            Next::Batch(messages) => {
                if self.health.subscription.problem().is_some() {
                    self.health.subscription.set(None);
                }
                Event::Pulled(self.prepare(messages, in_flight))
            }
            Next::Stop(why) => Event::PullStopped(why),
        }
    }

    /// Ends a subscription's run as the schedule says: hands back what is left after a batch was
    /// handed back, or, once everything drained, decides whether to subscribe again.
    async fn end(
        &self,
        end: End<Prepared, Committed, Stop>,
        subscription: Option<Subscription>,
        in_flight: &InFlight,
    ) -> Ended {
        let release = |subscription: Option<Subscription>| async move {
            if let Some(subscription) = subscription {
                subscription.release().await;
            }
        };
        let stop = match end {
            End::HandBack {
                prepared,
                committed,
            } => {
                // A stop, and some batch could not be finished within the grace period: hand
                // back whatever else is in flight, too.
                let left = [
                    prepared.map(|b| (b.id, b.messages)),
                    committed.map(|b| (b.id, b.messages)),
                ];
                for (id, messages) in left.into_iter().flatten() {
                    in_flight.hand_back(id, &messages).await;
                }
                release(subscription).await;
                return Ended::Shutdown;
            }
            End::Drained(stop) => stop,
        };
        match stop {
            // No heartbeat: the server holds no pull request of ours any more (one sent while
            // the consumer had no leader, on a cluster, is lost for good). The pull stream does
            // not always recover by itself: subscribe again.
            Stop::StreamFailed(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                warn!("missed heartbeats from NATS; subscribing again");
                self.health
                    .subscription
                    .set(Some("missed heartbeats".into()));
                release(subscription).await;
                Ended::Resubscribe
            }
            Stop::StreamFailed(e) => {
                warn!(error = %e, "the message stream failed; subscribing again");
                self.health.subscription.set(Some(e.to_string()));
                Ended::Resubscribe
            }
            Stop::StreamEnded => {
                warn!("the message stream ended; subscribing again");
                Ended::Resubscribe
            }
            Stop::Shutdown => {
                release(subscription).await;
                Ended::Shutdown
            }
        }
    }

    /// Runs `work`, and while it takes longer than `PROGRESS_EVERY` (a stage retrying while
    /// PostgreSQL or NATS is down), tells the server that every message in flight is still being
    /// worked on, so that none is redelivered to someone else meanwhile.
    async fn keep_in_progress<T>(&self, in_flight: &InFlight, work: impl Future<Output = T>) -> T {
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
}

/// How a finish ended, as the schedule takes it (its counts added to `totals`); an error when
/// the cache writer is gone, which stops ingest: it could not serve what it stores.
fn finished_event(
    finished: Result<Totals, BatchError>,
    totals: &mut Totals,
) -> Result<Event<Prepared, Committed, Stop>> {
    match finished {
        Ok(done) => {
            totals.add(done);
            Ok(Event::Finished)
        }
        Err(BatchError::HandedBack) => Ok(Event::FinishHandedBack),
        Err(BatchError::CacheGone) => Err(eyre!("the cache writer stopped")),
    }
}

/// The output of the stage in `slot`; never resolves while the slot is empty.
async fn run<T>(slot: &mut Slot<'_, T>) -> T {
    match slot {
        Some(stage) => stage.await,
        None => std::future::pending().await,
    }
}
