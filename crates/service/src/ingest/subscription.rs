//! One subscription to the durable consumer, cut into batches: at most a batch's count and
//! bytes each, lingering a moment for a fuller batch under load.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use color_eyre::eyre::Result;
use futures::stream::ReadyChunks;
use futures::StreamExt;
use tracing::info;

use super::in_flight::nak_all;
use crate::bus;
use crate::config::NatsArgs;
use crate::shutdown::Shutdown;

/// The pull stream's idle heartbeat: a silent server, or a pull request it lost (a consumer
/// leader elected meanwhile), is noticed within two of these, and the subscription rebuilt.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Payload bytes one batch holds at most (the rest waits for the next batch), so that a backlog
/// of messages near the NATS max payload makes batches of megabytes, not of a gigabyte. Raised
/// to twice the server's max payload if that is larger, so that any message fits in a pull.
const BATCH_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest a batch waits for more messages before it is written.
const LINGER: Duration = Duration::from_millis(5);
/// At most this many buffered chunks are handed back at shutdown.
const RELEASE_CHUNKS_MAX: usize = 64;

/// What the subscription has next.
pub(super) enum Next {
    /// Messages to write, at most a batch's count and bytes.
    Batch(Vec<jetstream::Message>),
    /// No more batches from this subscription.
    Stop(Stop),
}

/// Why a subscription gives no more batches.
pub(super) enum Stop {
    /// The pull stream ended: subscribe again.
    StreamEnded,
    /// The pull stream reported an error (a missed heartbeat, or worse).
    StreamFailed(pull::MessagesError),
    /// A stop was requested.
    Shutdown,
}

/// A pulled item: a message, or the pull stream's error.
type Pulled = Result<jetstream::Message, pull::MessagesError>;

/// One subscription to the durable consumer, cut into batches.
pub(super) struct Subscription {
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
    pub(super) async fn next_batch(&mut self, shutdown: &Shutdown) -> Next {
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
    pub(super) async fn release(mut self) {
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

impl Subscription {
    /// Makes sure the stream and consumer exist (they may have been deleted) and starts pulling
    /// batches of at most `batch_size` messages.
    pub(super) async fn open(
        js: &jetstream::Context,
        nats: &NatsArgs,
        durable: &str,
        batch_size: usize,
    ) -> Result<Subscription> {
        // Per subscription: a reconnection may reach a server with another max payload.
        let max_payload = js.client().server_info().max_payload;
        let max_bytes = BATCH_MAX_BYTES.max(max_payload.saturating_mul(2));
        let stream = bus::ensure_stream(js, nats).await?;
        let consumer = bus::ensure_consumer(&stream, durable).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch_size)
            .max_bytes_per_batch(max_bytes)
            .heartbeat(HEARTBEAT)
            .messages()
            .await?;
        Ok(Subscription {
            chunks: messages.ready_chunks(batch_size),
            carry: Vec::new(),
            failed: None,
            batch_size,
            max_bytes,
        })
    }
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
