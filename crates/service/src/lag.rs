//! The lag metrics, read from the servers' own state every few seconds: how far the durable
//! consumer is behind the stream (pending and ack-pending), and how far this replica is behind
//! the changelog (messages, and the age of the oldest it has not applied).
//!
//! Polled rather than taken from the messages ingest receives: a gauge "as of the last message
//! received" freezes exactly when ingest stalls, which is when a lag alert must fire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tracing::debug;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Between two polls.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Longest one poll may take (a NATS that does not answer leaves the gauges as they were).
const POLL_TIMEOUT: Duration = Duration::from_secs(4);

/// What the poller reads, and where it writes.
pub(crate) struct LagPoller {
    pub(crate) js: jetstream::Context,
    /// The input stream and its durable consumer.
    pub(crate) stream: String,
    pub(crate) durable: String,
    /// The changelog stream's name.
    pub(crate) changelog: String,
    /// The next changelog sequence this replica's follower will apply (0 until it follows).
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) metrics: Arc<Metrics>,
}

impl LagPoller {
    /// Polls until a stop is requested.
    pub(crate) async fn run(self, shutdown: Shutdown) {
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = every.tick() => {}
            }
            if tokio::time::timeout(POLL_TIMEOUT, self.poll())
                .await
                .is_err()
            {
                debug!("the lag poll timed out; the lag gauges keep their last values");
            }
        }
    }

    async fn poll(&self) {
        if let Err(e) = self.poll_consumer().await {
            debug!(error = %e, "cannot read the consumer's state for the lag gauges");
        }
        if let Err(e) = self.poll_changelog().await {
            debug!(error = %e, "cannot read the changelog's state for the lag gauges");
        }
    }

    async fn poll_consumer(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let stream = self.js.get_stream(&self.stream).await?;
        let info = stream.consumer_info(&self.durable).await?;
        self.metrics
            .consumer_pending
            .set(saturating(info.num_pending));
        self.metrics
            .consumer_ack_pending
            .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
        Ok(())
    }

    async fn poll_changelog(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let next = self.applied.load(Ordering::Relaxed);
        if next == 0 {
            return Ok(());
        }
        let mut stream = self.js.get_stream(&self.changelog).await?;
        let last = stream.info().await?.state.last_sequence;
        let behind = changelog_behind(next, last);
        self.metrics.changelog_lag_messages.set(saturating(behind));
        let age = if behind == 0 {
            0.0
        } else {
            let oldest = stream.get_raw_message(next).await?;
            let published = oldest.time;
            (time::OffsetDateTime::now_utc() - published)
                .as_seconds_f64()
                .max(0.0)
        };
        self.metrics.changelog_lag_seconds.set(age);
        Ok(())
    }
}

/// Messages of a changelog that ends at `last` not yet applied by a follower whose next is
/// `next`.
fn changelog_behind(next: u64, last: u64) -> u64 {
    (last + 1).saturating_sub(next)
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_at_the_end_is_not_behind() {
        assert_eq!(changelog_behind(11, 10), 0, "applied up to 10 of 10");
        assert_eq!(changelog_behind(8, 10), 3, "8, 9 and 10 to apply");
        assert_eq!(changelog_behind(1, 0), 0, "an empty changelog");
        assert_eq!(
            changelog_behind(20, 10),
            0,
            "a recreated changelog is a gap, not lag"
        );
    }
}
