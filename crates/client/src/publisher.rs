//! Pipelined publishing to a JetStream subject, for everything that produces orders: the
//! `publish` and `replay-from-db` commands, `bench ingest` and the integration tests.
//!
//! A publish is only done when the server's ack arrives, and waiting for each ack in turn would
//! cap a producer at one message per round trip. A [`Pipeline`] keeps up to a window of acks
//! outstanding, counts what became of every message, and hands each message's [`Outcome`]
//! (its ack with the stream sequence, or the failure, and when it was seen) to the caller's
//! handler together with the caller's own tag for it. A [`Watermark`] turns those outcomes into
//! a point to resume from.
//!
//! A publish or ack that fails in a way that can pass is retried, the same payload with the same
//! `Nats-Msg-Id`, with backoff, until the message's publish timeout: within the stream's
//! duplicate window the server stores a message once however often it arrives. The case it is
//! for: on nats-server 2.9 only a stream's leader listens on the stream's subjects, so while a
//! new leader is elected (4–10 s after the old one dies) a publish finds no responder at all and
//! fails at once, and an ack that the dead leader owed never comes. A retrying message keeps its
//! place in the window, so the window stays bounded; it is stored after the messages sent
//! meanwhile, so a retry changes the order in the stream (never the [`Watermark`], which goes by
//! send order). A message without an id is retried too, but can then be stored twice: when only
//! its ack was lost, the server cannot tell the second copy from a new message.
//!
//! Runs on the calling command's tokio runtime. The service never publishes: nothing in the
//! service's modules uses this one (it belongs with the load tool).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, publish::PublishAck, ErrorCode};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use clap::Args;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use ordersvc_service::config;

/// `--publish-timeout`'s default: a leader election on a loaded 2.9 cluster (4–10 s, more under
/// load) with room to spare, and well inside the 2-minute duplicate window that makes a retry
/// safe.
pub const DEFAULT_PUBLISH_TIMEOUT: &str = "30s";
/// The pause before a message's first retry; it doubles after every retry, up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two attempts: once a new leader is elected, the messages waiting
/// for it are stored within about a second.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long a message may keep being retried: the same flag on every command that publishes.
#[derive(Args, Clone, Copy, Debug)]
pub struct RetryArgs {
    /// How long a message may take to be acknowledged, from its first send. A publish or ack that
    /// fails in a way that can pass (no responder while a stream leader is elected, an ack lost
    /// with a connection) is retried with the same Nats-Msg-Id until then; other failures count
    /// at once.
    #[arg(long, env = "ORDERSVC_PUBLISH_TIMEOUT", value_name = "DURATION",
          default_value = DEFAULT_PUBLISH_TIMEOUT, value_parser = config::parse_duration)]
    pub publish_timeout: Duration,
}

/// What happened to published messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    /// Stored in the stream.
    pub published: u64,
    /// Dropped by the server as a repeat within the duplicate window (same `Nats-Msg-Id`).
    pub duplicates: u64,
    /// Not sent, or not acknowledged by the server.
    pub failed: u64,
    /// Of all the above, the messages sent more than once because an attempt failed in a way
    /// that can pass.
    pub retried: u64,
}

impl PublishSummary {
    /// Messages the server acknowledged, whether it stored them or dropped them as repeats.
    pub fn acked(&self) -> u64 {
        self.published + self.duplicates
    }
}

/// The line `publish` and `replay-from-db` end with. Tests and docs match its first three
/// counts, so retries are only added, at the end, when there were some.
impl fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {}, duplicates dropped by the server {}, failed {}",
            self.published, self.duplicates, self.failed
        )?;
        if self.retried > 0 {
            write!(f, ", retried {}", self.retried)?;
        }
        Ok(())
    }
}

/// Why a message has no ack.
#[derive(Debug)]
pub enum Failure {
    /// The message could not be handed to the connection.
    NotSent(PublishError),
    /// It was sent, but no ack came (an error from the server, or none in time).
    NotAcknowledged(PublishError),
    /// Every attempt failed in a way that can pass, until the publish timeout ran out; with the
    /// last attempt's failure. (How many attempts there were is the outcome's.)
    TimedOut {
        timeout: Duration,
        last: Box<Failure>,
    },
    /// It failed in a way that can pass but was not retried: an earlier message ran out of its
    /// publish timeout and nothing has been acknowledged since, so the outage is taken to last.
    NotRetried(Box<Failure>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "cannot publish: {e}"),
            Failure::NotAcknowledged(e) => write!(f, "not acknowledged: {e}"),
            // No counts or times of this message's own: `bench ingest` groups failures by
            // their text.
            Failure::TimedOut { timeout, last } => write!(
                f,
                "no ack within the publish timeout ({timeout:?}); the last attempt: {last}"
            ),
            Failure::NotRetried(last) => write!(
                f,
                "not retried, since an earlier message ran out of its publish timeout and nothing \
                 was acknowledged since: {last}"
            ),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::NotSent(e) | Failure::NotAcknowledged(e) => Some(e),
            Failure::TimedOut { last, .. } | Failure::NotRetried(last) => Some(last.as_ref()),
        }
    }
}

/// What a failed attempt means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It can pass (an election, a reconnect): send the message again. `maybe_stored` when the
    /// attempt may have been stored all the same, its ack lost on the way.
    Retry { maybe_stored: bool },
    /// Sending it again cannot change it.
    Fail,
}

impl Verdict {
    /// Which failures can pass. Matched exhaustively on the client's kinds, so that a kind a
    /// newer async-nats adds must be decided here.
    fn of(failure: &Failure) -> Verdict {
        let not_stored = Verdict::Retry {
            maybe_stored: false,
        };
        match failure {
            Failure::NotSent(e) => match e.kind() {
                // The request could not be queued on the connection in time (it is backed up,
                // or reconnecting), or the context's own limit of acks outstanding: it never left.
                PublishErrorKind::TimedOut
                | PublishErrorKind::MaxAckPending
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::StreamNotFound => not_stored,
                // Over the server's max payload, an invalid subject, a client that is closed.
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence
                | PublishErrorKind::Other => Verdict::Fail,
            },
            Failure::NotAcknowledged(e) => match e.kind() {
                // No responders: nobody listens on the subject, so nothing stored it. During an
                // election that is every publish (only the leader listens); it is also what a
                // stream that was deleted answers, which is then retried until the timeout.
                PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => not_stored,
                // The ack did not come in time, or the connection that was to bring it went
                // away: the leader may have stored the message and died before answering.
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                    Verdict::Retry { maybe_stored: true }
                }
                PublishErrorKind::Other => server_error(e),
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence => Verdict::Fail,
            },
            Failure::TimedOut { .. } | Failure::NotRetried(_) => Verdict::Fail,
        }
    }
}

/// An error the stream answered a publish with: retried only when it says that the cluster is
/// between leaders. A limit (message too large, stream full, sealed) or an ack that is not
/// JSON fails at once.
fn server_error(error: &PublishError) -> Verdict {
    let Some(answer) = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
    else {
        return Verdict::Fail;
    };
    let between_leaders = match answer.error_code() {
        // "JetStream system temporarily unavailable", "JetStream cluster can not handle request".
        ErrorCode::CLUSTER_NOT_AVAILABLE | ErrorCode::CLUSTER_NOT_LEADER => true,
        // A 503 without a JetStream code is what a leader answers when it cannot propose the
        // message to its peers (it is stepping down): the message was not stored.
        ErrorCode(0) => answer.code() == 503,
        _ => false,
    };
    if between_leaders {
        Verdict::Retry {
            maybe_stored: false,
        }
    } else {
        Verdict::Fail
    }
}

/// The pause after `pause`: doubled, up to `MAX_PAUSE`.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

/// When to send again after a pause of `pause` from `now`: `None` if that is not before the
/// deadline (an attempt then would have no time left for its ack).
fn retry_at(
    now: tokio::time::Instant,
    pause: Duration,
    deadline: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    let at = now + pause;
    (at < deadline).then_some(at)
}

/// The end of one message's attempts.
#[derive(Debug)]
struct Settled {
    result: Result<PublishAck, Failure>,
    /// Sends of the message: 1 if it was not retried.
    attempts: u32,
    /// Whether an earlier attempt may have been stored although it failed (its ack was lost).
    maybe_stored: bool,
}

/// Awaits `first` (the first attempt, already sent), then makes attempts with `again` while they
/// fail in a way that can pass, with backoff, until one succeeds or fails for good, or until the
/// next one would start after `deadline`. While `outage` is set, a failure that could pass is
/// not retried.
async fn settle<A>(
    first: impl Future<Output = Result<PublishAck, Failure>>,
    mut again: impl FnMut() -> A,
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
    outage: Rc<Cell<bool>>,
) -> Settled
where
    A: Future<Output = Result<PublishAck, Failure>>,
{
    let mut result = first.await;
    let mut attempts = 1;
    let mut maybe_stored = false;
    let mut pause = FIRST_PAUSE;
    loop {
        let failure = match result {
            Ok(ack) => {
                return Settled {
                    result: Ok(ack),
                    attempts,
                    maybe_stored,
                }
            }
            Err(failure) => failure,
        };
        let Verdict::Retry {
            maybe_stored: this_one,
        } = Verdict::of(&failure)
        else {
            return Settled {
                result: Err(failure),
                attempts,
                maybe_stored,
            };
        };
        maybe_stored |= this_one;
        let give_up = if outage.get() {
            Some(Failure::NotRetried(Box::new(failure)))
        } else {
            match retry_at(tokio::time::Instant::now(), pause, deadline) {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    None
                }
                None => Some(Failure::TimedOut {
                    timeout: deadline - started,
                    last: Box::new(failure),
                }),
            }
        };
        if let Some(failure) = give_up {
            return Settled {
                result: Err(failure),
                attempts,
                maybe_stored,
            };
        }
        pause = next_pause(pause);
        attempts += 1;
        result = again().await;
    }
}

/// Awaits a sent message's ack until `deadline` at the latest (the ack also has a timeout of its
/// own, the context's).
async fn acked(
    ack: PublishAckFuture,
    deadline: tokio::time::Instant,
) -> Result<PublishAck, Failure> {
    match tokio::time::timeout_at(deadline, ack.into_future()).await {
        Ok(result) => result.map_err(Failure::NotAcknowledged),
        Err(_) => Err(Failure::NotAcknowledged(PublishError::new(
            PublishErrorKind::TimedOut,
        ))),
    }
}

/// One more attempt at a message: sent again, then its ack awaited.
async fn resend(
    js: jetstream::Context,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
    deadline: tokio::time::Instant,
) -> Result<PublishAck, Failure> {
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(Failure::NotSent)?;
    acked(ack, deadline).await
}

/// What became of one message, handed to the pipeline's handler.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The message's place in send order, from 0.
    pub index: u64,
    /// What the caller sent along with it (a label, an id, a sample to watch).
    pub tag: T,
    /// The server's ack (with the stream sequence, and whether it was a repeat), or the failure.
    pub result: Result<PublishAck, Failure>,
    /// How many times it was sent: more than 1 if it was retried.
    pub attempts: u32,
    /// When the pipeline saw the outcome: acks are collected after every send, so for an ack
    /// this is within one publish of its arrival.
    pub at: Instant,
}

/// A message on its way, with its index and tag: its ack, or its retries.
type InFlight<T> = LocalBoxFuture<'static, (u64, T, Settled)>;

/// Publishes messages with up to `window` messages awaiting their ack (or being retried); every
/// message's outcome goes to the handler `F`, in the order they settle (not necessarily the
/// order sent).
pub struct Pipeline<T, F> {
    js: jetstream::Context,
    /// Cloned per message: a `Subject` shares its bytes, a `String` would be copied.
    subject: Subject,
    window: usize,
    in_flight: FuturesUnordered<InFlight<T>>,
    /// Index of the next message sent.
    next: u64,
    /// How long each message may take to be acknowledged, retries included.
    timeout: Duration,
    /// The stream's last sequence before the first send, if the caller knows it: see `is_repeat`.
    last_sequence_before: Option<u64>,
    /// Set when a message has run out of its publish timeout, cleared by the next ack: while it
    /// is set, no message is retried, so that a run against a cluster that stays down ends in
    /// about one timeout, not one per window of messages. Written by `record` only.
    outage: Rc<Cell<bool>>,
    /// Advanced once per outcome; hidden unless the caller gives one.
    progress: ProgressBar,
    on_outcome: F,
    summary: PublishSummary,
}

impl<T: 'static, F: FnMut(Outcome<T>)> Pipeline<T, F> {
    /// A pipeline publishing to `subject` with at most `window` (at least 1) messages awaiting
    /// their ack, each retried for up to `DEFAULT_PUBLISH_TIMEOUT`.
    pub fn new(js: jetstream::Context, subject: &str, window: usize, on_outcome: F) -> Self {
        Pipeline {
            js,
            subject: Subject::from(subject),
            window: window.max(1),
            in_flight: FuturesUnordered::new(),
            next: 0,
            timeout: config::parse_duration(DEFAULT_PUBLISH_TIMEOUT)
                .expect("the default publish timeout parses"),
            last_sequence_before: None,
            outage: Rc::default(),
            progress: ProgressBar::hidden(),
            on_outcome,
            summary: PublishSummary::default(),
        }
    }

    /// Advances `progress` by one for every message's outcome.
    pub fn with_progress(mut self, progress: ProgressBar) -> Self {
        self.progress = progress;
        self
    }

    /// Gives every message `timeout` from its first send to be acknowledged, retries included.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Tells the pipeline the stream's last sequence before this run, so that it can tell a
    /// retried message that its own lost attempt stored from a true repeat (see `is_repeat`).
    pub fn with_last_sequence_before(mut self, sequence: u64) -> Self {
        self.last_sequence_before = Some(sequence);
        self
    }

    /// Publishes one message, with `Nats-Msg-Id` when given (the server then drops a repeat
    /// within its duplicate window), after waiting for a place if the window is full.
    pub async fn send(&mut self, tag: T, payload: Bytes, msg_id: Option<&str>) {
        while self.in_flight.len() >= self.window {
            self.complete_next().await;
        }
        let index = self.next;
        self.next += 1;
        let mut headers = HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        // The first send here, not in the future below: messages leave in the order given.
        let sent = self
            .js
            .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
            .await;
        let first = async move {
            match sent {
                Ok(ack) => acked(ack, deadline).await,
                Err(e) => Err(Failure::NotSent(e)),
            }
        };
        // A retry sends the very same headers and payload (both share their bytes).
        let (js, subject) = (self.js.clone(), self.subject.clone());
        let again = move || {
            resend(
                js.clone(),
                subject.clone(),
                headers.clone(),
                payload.clone(),
                deadline,
            )
        };
        let settled = settle(first, again, started, deadline, Rc::clone(&self.outage));
        self.in_flight
            .push(async move { (index, tag, settled.await) }.boxed_local());
        // Take every message that has already settled, so that an outcome's instant is close
        // to its ack's, and a resume point is never further behind than it must be.
        while let Some(Some((index, tag, settled))) = self.in_flight.next().now_or_never() {
            self.record(index, tag, settled);
        }
    }

    /// The counts so far.
    pub fn summary(&self) -> PublishSummary {
        self.summary
    }

    /// Waits until every message has settled and returns the counts.
    pub async fn finish(mut self) -> PublishSummary {
        while !self.in_flight.is_empty() {
            self.complete_next().await;
        }
        self.summary
    }

    async fn complete_next(&mut self) {
        if let Some((index, tag, settled)) = self.in_flight.next().await {
            self.record(index, tag, settled);
        }
    }

    fn record(&mut self, index: u64, tag: T, settled: Settled) {
        let Settled {
            result,
            attempts,
            maybe_stored,
        } = settled;
        match &result {
            Ok(ack) if is_repeat(ack, maybe_stored, self.last_sequence_before) => {
                self.summary.duplicates += 1
            }
            Ok(_) => self.summary.published += 1,
            Err(_) => self.summary.failed += 1,
        }
        if attempts > 1 {
            self.summary.retried += 1;
        }
        self.outage.set(outage_after(self.outage.get(), &result));
        self.progress.inc(1);
        (self.on_outcome)(Outcome {
            index,
            tag,
            result,
            attempts,
            at: Instant::now(),
        });
    }
}

/// Whether an ack is a repeat that the server dropped, counted under "duplicates dropped by the
/// server". A `duplicate` answer is, unless it may be the message's own earlier attempt: one
/// that failed in a way that leaves it maybe stored (its ack lost), after which the message was
/// sent again with the same id. Then the sequence the answer points to tells: an original older
/// than this run (`last_sequence_before`) is a true repeat; one stored during this run (or
/// still being stored: nats-server 2.10.14 to 2.11 answer sequence 0 for a repeat of a message
/// that is proposed but not applied yet; 2.9 answers only once it is applied) is almost certainly
/// the lost attempt, and the message counts as published. Almost: the
/// same id sent twice in this run, or by another producer meanwhile, looks the same, and then a
/// true repeat is counted as published. Without `last_sequence_before` nothing can be told, and
/// the answer counts as a repeat.
fn is_repeat(ack: &PublishAck, maybe_stored: bool, last_sequence_before: Option<u64>) -> bool {
    let stored_during_run =
        || last_sequence_before.is_some_and(|before| ack.sequence == 0 || ack.sequence > before);
    ack.duplicate && !(maybe_stored && stored_during_run())
}

/// Whether an outage is under way once a message has settled with `result`: it starts when a
/// message runs out of its publish timeout and ends with the next ack.
fn outage_after(outage: bool, result: &Result<PublishAck, Failure>) -> bool {
    match result {
        Ok(_) => false,
        Err(Failure::TimedOut { .. }) => true,
        Err(_) => outage,
    }
}

/// How far a run got, for a producer that can resume: the longest run of messages from the first
/// one sent, in send order, that were all acknowledged, and the tag of its last message.
///
/// Acks arrive out of order, so those ahead of a gap wait here until it closes. A failed message
/// is a gap that never closes: nothing after it is kept.
#[derive(Debug)]
pub struct Watermark<T> {
    /// Messages `0..through` are all acknowledged.
    through: u64,
    /// Acknowledged messages beyond the first gap, by index.
    ahead: BTreeMap<u64, T>,
    /// The first failed message, if any: the watermark never passes it.
    failed_at: Option<u64>,
    /// The tag of message `through - 1`.
    last: Option<T>,
}

impl<T> Default for Watermark<T> {
    fn default() -> Self {
        Watermark {
            through: 0,
            ahead: BTreeMap::new(),
            failed_at: None,
            last: None,
        }
    }
}

impl<T> Watermark<T> {
    /// Records that message `index` was acknowledged.
    pub fn acknowledged(&mut self, index: u64, tag: T) {
        if self.failed_at.is_some_and(|failed| index > failed) || index < self.through {
            return;
        }
        self.ahead.insert(index, tag);
        while let Some(tag) = self.ahead.remove(&self.through) {
            self.last = Some(tag);
            self.through += 1;
        }
    }

    /// Records that message `index` failed: a resume must start at or before it.
    pub fn failed(&mut self, index: u64) {
        let first = self.failed_at.map_or(index, |failed| failed.min(index));
        self.failed_at = Some(first);
        // Nothing beyond the failure can join the run: let go of it.
        self.ahead.retain(|&i, _| i < first);
    }

    /// How many messages from the first one on were all acknowledged.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// The tag of the last message of that run (`None` while the first is not acknowledged).
    pub fn last(&self) -> Option<&T> {
        self.last.as_ref()
    }
}

/// A progress bar for `total` messages, drawn only from `min` messages on.
pub fn progress_bar(total: u64, min: u64) -> ProgressBar {
    if total < min {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_advances_over_acks_in_any_order_but_not_past_a_gap() {
        let mut w = Watermark::default();
        assert_eq!((w.through(), w.last()), (0, None));
        w.acknowledged(1, "b");
        w.acknowledged(2, "c");
        assert_eq!((w.through(), w.last()), (0, None), "message 0 is the gap");
        w.acknowledged(0, "a");
        assert_eq!((w.through(), w.last()), (3, Some(&"c")));
        w.acknowledged(4, "e");
        assert_eq!((w.through(), w.last()), (3, Some(&"c")));
        w.acknowledged(3, "d");
        assert_eq!((w.through(), w.last()), (5, Some(&"e")));
    }

    #[test]
    fn the_watermark_stops_for_good_at_a_failed_message() {
        let mut w = Watermark::default();
        w.acknowledged(0, 0);
        w.acknowledged(2, 2);
        w.failed(1);
        w.acknowledged(3, 3);
        assert_eq!((w.through(), w.last()), (1, Some(&0)));
        assert!(w.ahead.is_empty(), "nothing beyond the failure is kept");
        // A message before the failure still counts.
        let mut w = Watermark::default();
        w.failed(2);
        w.acknowledged(1, 1);
        w.acknowledged(0, 0);
        assert_eq!((w.through(), w.last()), (2, Some(&1)));
    }

    #[test]
    fn acked_counts_stored_messages_and_dropped_repeats() {
        let summary = PublishSummary {
            published: 3,
            duplicates: 2,
            failed: 1,
            retried: 4,
        };
        assert_eq!(summary.acked(), 5);
    }

    #[test]
    fn the_summary_line_names_retries_only_when_there_were_some() {
        let mut summary = PublishSummary {
            published: 5000,
            duplicates: 0,
            failed: 0,
            retried: 0,
        };
        assert_eq!(
            summary.to_string(),
            "published 5000, duplicates dropped by the server 0, failed 0"
        );
        summary.retried = 256;
        assert_eq!(
            summary.to_string(),
            "published 5000, duplicates dropped by the server 0, failed 0, retried 256"
        );
    }

    fn not_acknowledged(kind: PublishErrorKind) -> Failure {
        Failure::NotAcknowledged(PublishError::new(kind))
    }

    /// An error answer of the stream, as the client wraps it.
    fn answered(code: u16, err_code: u64) -> Failure {
        let error: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": "from the server",
        }))
        .expect("a JetStream error");
        Failure::NotAcknowledged(PublishError::with_source(PublishErrorKind::Other, error))
    }

    const NOT_STORED: Verdict = Verdict::Retry {
        maybe_stored: false,
    };
    const MAYBE_STORED: Verdict = Verdict::Retry { maybe_stored: true };

    #[test]
    fn no_responders_a_lost_ack_and_a_cluster_between_leaders_are_retried() {
        for (failure, verdict) in [
            // A publish while the stream's leader is being elected (2.9: nobody listens).
            (
                not_acknowledged(PublishErrorKind::StreamNotFound),
                NOT_STORED,
            ),
            // The leader may have stored it and died, or the connection went with the ack.
            (not_acknowledged(PublishErrorKind::TimedOut), MAYBE_STORED),
            (not_acknowledged(PublishErrorKind::BrokenPipe), MAYBE_STORED),
            // The connection is backed up or reconnecting: the request never left.
            (
                Failure::NotSent(PublishError::new(PublishErrorKind::TimedOut)),
                NOT_STORED,
            ),
            // "JetStream system temporarily unavailable", "cluster can not handle request".
            (answered(503, 10008), NOT_STORED),
            (answered(500, 10009), NOT_STORED),
            // A leader that cannot propose the message ("raft: not leader").
            (answered(503, 0), NOT_STORED),
        ] {
            assert_eq!(Verdict::of(&failure), verdict, "{failure}");
        }
    }

    #[test]
    fn limits_conflicts_and_a_closed_client_fail_at_once() {
        let not_json =
            serde_json::from_slice::<serde_json::Value>(b"<html>").expect_err("not JSON");
        for failure in [
            // The client refuses a message over the server's max payload before sending it.
            Failure::NotSent(PublishError::new(PublishErrorKind::MaxPayloadExceeded)),
            // An invalid subject, a client that was closed.
            Failure::NotSent(PublishError::with_source(
                PublishErrorKind::Other,
                "invalid subject",
            )),
            not_acknowledged(PublishErrorKind::WrongLastSequence),
            not_acknowledged(PublishErrorKind::WrongLastMessageId),
            // Sealed, message over the stream's maximum, a limit reached, storage full.
            answered(400, 10109),
            answered(400, 10054),
            answered(503, 10077),
            answered(503, 10023),
            // Another code without a JetStream code is not the election's 503.
            answered(500, 0),
            // An ack that is not JSON.
            Failure::NotAcknowledged(PublishError::with_source(PublishErrorKind::Other, not_json)),
            // Once given up, a message stays failed.
            Failure::TimedOut {
                timeout: Duration::from_secs(30),
                last: Box::new(not_acknowledged(PublishErrorKind::StreamNotFound)),
            },
        ] {
            assert_eq!(Verdict::of(&failure), Verdict::Fail, "{failure}");
        }
    }

    #[test]
    fn the_pause_doubles_from_100_ms_to_at_most_a_second() {
        let pauses: Vec<u128> = std::iter::successors(Some(FIRST_PAUSE), |&p| Some(next_pause(p)))
            .take(7)
            .map(|p| p.as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn no_attempt_starts_at_or_after_the_deadline() {
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_secs(1);
        let pause = Duration::from_millis(400);
        assert_eq!(retry_at(now, pause, deadline), Some(now + pause));
        assert_eq!(
            retry_at(now + Duration::from_millis(600), pause, deadline),
            None
        );
        assert_eq!(retry_at(deadline, pause, deadline), None);
    }

    #[test]
    fn the_default_publish_timeout_is_a_valid_duration() {
        assert_eq!(
            config::parse_duration(DEFAULT_PUBLISH_TIMEOUT),
            Ok(Duration::from_secs(30))
        );
    }

    fn ack(sequence: u64, duplicate: bool) -> PublishAck {
        serde_json::from_value(serde_json::json!({
            "stream": "S", "seq": sequence, "duplicate": duplicate,
        }))
        .expect("an ack")
    }

    /// Runs `settle` over scripted attempts: the first result is the first attempt's.
    async fn settle_scripted(
        script: Vec<Result<PublishAck, Failure>>,
        timeout: Duration,
        outage: bool,
    ) -> (Settled, Duration) {
        let started = tokio::time::Instant::now();
        let mut script = script.into_iter();
        let first = std::future::ready(script.next().expect("a first attempt"));
        let again = || std::future::ready(script.next().expect("the script ran out"));
        let settled = settle(
            first,
            again,
            started,
            started + timeout,
            Rc::new(Cell::new(outage)),
        )
        .await;
        (settled, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_sent_again_with_backoff_until_it_is_acknowledged() {
        // Arrange: an election, then an ack that the dying leader owed, then the new leader.
        let script = vec![
            Err(not_acknowledged(PublishErrorKind::StreamNotFound)),
            Err(not_acknowledged(PublishErrorKind::StreamNotFound)),
            Err(not_acknowledged(PublishErrorKind::TimedOut)),
            Ok(ack(7, true)),
        ];

        // Act
        let (settled, took) = settle_scripted(script, Duration::from_secs(30), false).await;

        // Assert: three pauses, 100 + 200 + 400 ms; the lost ack is remembered.
        assert_eq!(settled.result.expect("acknowledged").sequence, 7);
        assert_eq!(settled.attempts, 4);
        assert!(settled.maybe_stored);
        assert_eq!(took, Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_keeps_failing_gives_up_before_its_deadline() {
        // Arrange: nobody answers, for longer than the timeout of 3 s.
        let script = (0..100)
            .map(|_| Err(not_acknowledged(PublishErrorKind::StreamNotFound)))
            .collect();

        // Act
        let (settled, took) = settle_scripted(script, Duration::from_secs(3), false).await;

        // Assert: attempts at 0, 0.1, 0.3, 0.7, 1.5 and 2.5 s; the next would be at 3.5 s.
        let Err(Failure::TimedOut { timeout, last }) = settled.result else {
            panic!("not timed out: {:?}", settled.result);
        };
        assert_eq!(timeout, Duration::from_secs(3));
        assert_eq!(settled.attempts, 6);
        assert!(matches!(*last, Failure::NotAcknowledged(_)), "{last}");
        assert!(!settled.maybe_stored);
        assert_eq!(took, Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_cannot_pass_ends_the_message_at_once() {
        let script = vec![
            Err(not_acknowledged(PublishErrorKind::StreamNotFound)),
            Err(Failure::NotSent(PublishError::new(
                PublishErrorKind::MaxPayloadExceeded,
            ))),
        ];
        let (settled, took) = settle_scripted(script, Duration::from_secs(30), false).await;
        assert!(
            matches!(settled.result, Err(Failure::NotSent(_))),
            "{:?}",
            settled.result
        );
        assert_eq!(settled.attempts, 2);
        assert_eq!(took, FIRST_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn during_an_outage_a_failure_that_could_pass_is_not_retried() {
        let script = vec![Err(not_acknowledged(PublishErrorKind::StreamNotFound))];
        let (settled, took) = settle_scripted(script, Duration::from_secs(30), true).await;
        assert!(
            matches!(settled.result, Err(Failure::NotRetried(_))),
            "{:?}",
            settled.result
        );
        assert_eq!((settled.attempts, took), (1, Duration::ZERO));
    }

    #[test]
    fn an_outage_starts_with_a_message_out_of_time_and_ends_with_the_next_ack() {
        let timed_out = Err(Failure::TimedOut {
            timeout: Duration::from_secs(30),
            last: Box::new(not_acknowledged(PublishErrorKind::StreamNotFound)),
        });
        let refused = Err(not_acknowledged(PublishErrorKind::WrongLastSequence));
        assert!(outage_after(false, &timed_out));
        assert!(outage_after(true, &refused));
        assert!(!outage_after(false, &refused));
        assert!(!outage_after(true, &Ok(ack(1, false))));
    }

    #[test]
    fn a_repeat_answer_to_a_retry_counts_as_published_when_its_lost_attempt_stored_it() {
        let before = Some(100);
        // Not a repeat, however it went.
        assert!(!is_repeat(&ack(101, false), true, before));
        // A repeat at the first attempt, or after attempts that nobody received: a true one.
        assert!(is_repeat(&ack(101, true), false, before));
        // After a lost ack: the original stored during this run is the lost attempt...
        assert!(!is_repeat(&ack(101, true), true, before));
        // ...also when the server has not applied it yet (2.10.14 to 2.11 answer sequence 0)...
        assert!(!is_repeat(&ack(0, true), true, before));
        // ...but one stored before this run is a true repeat.
        assert!(is_repeat(&ack(100, true), true, before));
        // Without the stream's sequence before the run, nothing can be told.
        assert!(is_repeat(&ack(101, true), true, None));
    }

    #[test]
    fn a_small_run_gets_no_progress_bar() {
        assert!(progress_bar(10, 20).is_hidden());
    }
}
