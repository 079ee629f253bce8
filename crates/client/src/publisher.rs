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
//! Runs on the calling command's tokio runtime. The service never publishes: nothing in the
//! service's modules uses this one (it belongs with the load tool).

use std::collections::BTreeMap;
use std::fmt;
use std::future::IntoFuture;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishError, publish::PublishAck};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};

/// What happened to published messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    /// Stored in the stream.
    pub published: u64,
    /// Dropped by the server as a repeat within the duplicate window (same `Nats-Msg-Id`).
    pub duplicates: u64,
    /// Not sent, or not acknowledged by the server.
    pub failed: u64,
}

impl PublishSummary {
    /// Messages the server acknowledged, whether it stored them or dropped them as repeats.
    pub fn acked(&self) -> u64 {
        self.published + self.duplicates
    }
}

/// Why a message has no ack.
#[derive(Debug)]
pub enum Failure {
    /// The message could not be handed to the connection.
    NotSent(PublishError),
    /// It was sent, but no ack came (an error from the server, or none in time).
    NotAcknowledged(PublishError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "cannot publish: {e}"),
            Failure::NotAcknowledged(e) => write!(f, "not acknowledged: {e}"),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::NotSent(e) | Failure::NotAcknowledged(e) => Some(e),
        }
    }
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
    /// When the pipeline saw the outcome: acks are collected after every send, so for an ack
    /// this is within one publish of its arrival.
    pub at: Instant,
}

/// An ack on its way, with the message's index and tag.
type InFlight<T> = LocalBoxFuture<'static, (u64, T, Result<PublishAck, PublishError>)>;

/// Publishes messages with up to `window` acks outstanding; every message's outcome goes to the
/// handler `F`, in the order the acks arrive (not necessarily the order sent).
pub struct Pipeline<T, F> {
    js: jetstream::Context,
    /// Cloned per message: a `Subject` shares its bytes, a `String` would be copied.
    subject: Subject,
    window: usize,
    in_flight: FuturesUnordered<InFlight<T>>,
    /// Index of the next message sent.
    next: u64,
    /// Advanced once per outcome; hidden unless the caller gives one.
    progress: ProgressBar,
    on_outcome: F,
    summary: PublishSummary,
}

impl<T: 'static, F: FnMut(Outcome<T>)> Pipeline<T, F> {
    /// A pipeline publishing to `subject` with at most `window` (at least 1) acks outstanding.
    pub fn new(js: jetstream::Context, subject: &str, window: usize, on_outcome: F) -> Self {
        Pipeline {
            js,
            subject: Subject::from(subject),
            window: window.max(1),
            in_flight: FuturesUnordered::new(),
            next: 0,
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

    /// Publishes one message, with `Nats-Msg-Id` when given (the server then drops a repeat
    /// within its duplicate window), after waiting for an ack if the window is full.
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
        match self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => {
                // The ack future has its own timeout (the context's), so none waits forever.
                let ack = ack.into_future();
                self.in_flight
                    .push(async move { (index, tag, ack.await) }.boxed_local());
            }
            Err(e) => self.record(index, tag, Err(Failure::NotSent(e))),
        }
        // Take every ack that has already arrived, so that an outcome's instant is close to
        // its ack's, and a resume point is never further behind than it must be.
        while let Some(Some((index, tag, result))) = self.in_flight.next().now_or_never() {
            self.record(index, tag, result.map_err(Failure::NotAcknowledged));
        }
    }

    /// The counts so far.
    pub fn summary(&self) -> PublishSummary {
        self.summary
    }

    /// Waits for every outstanding ack and returns the counts.
    pub async fn finish(mut self) -> PublishSummary {
        while !self.in_flight.is_empty() {
            self.complete_next().await;
        }
        self.summary
    }

    async fn complete_next(&mut self) {
        if let Some((index, tag, result)) = self.in_flight.next().await {
            self.record(index, tag, result.map_err(Failure::NotAcknowledged));
        }
    }

    fn record(&mut self, index: u64, tag: T, result: Result<PublishAck, Failure>) {
        match &result {
            Ok(ack) if ack.duplicate => self.summary.duplicates += 1,
            Ok(_) => self.summary.published += 1,
            Err(_) => self.summary.failed += 1,
        }
        self.progress.inc(1);
        (self.on_outcome)(Outcome {
            index,
            tag,
            result,
            at: Instant::now(),
        });
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
        };
        assert_eq!(summary.acked(), 5);
    }

    #[test]
    fn a_small_run_gets_no_progress_bar() {
        assert!(progress_bar(10, 20).is_hidden());
    }
}
