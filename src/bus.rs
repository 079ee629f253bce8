//! NATS JetStream: connecting, and making sure the stream and the durable consumer exist.
//! Shared by `serve` (consumer) and `publish` (producer), so both agree on the stream's shape.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use color_eyre::eyre::{Result, WrapErr};

use crate::config::{redact_url, NatsArgs};

/// How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the server waits for an ack before redelivering a message.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered but not yet acked, across all instances sharing the durable consumer.
pub const MAX_ACK_PENDING: i64 = 20_000;
/// NATS's default max payload: nothing larger can be published.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Connects to NATS; the client reconnects by itself for as long as the process lives.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .wrap_err_with(|| format!("cannot connect to NATS at {}", redact_url(url)))
}

/// The stream's configuration: file storage, so that messages survive a NATS restart.
fn stream_config(args: &NatsArgs) -> stream::Config {
    stream::Config {
        name: args.stream.clone(),
        subjects: vec![args.subject.clone()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_PAYLOAD as i32,
        ..Default::default()
    }
}

/// Creates the stream if it does not exist (an existing one is used as it is).
pub async fn ensure_stream(js: &jetstream::Context, args: &NatsArgs) -> Result<stream::Stream> {
    js.get_or_create_stream(stream_config(args))
        .await
        .wrap_err_with(|| format!("cannot get or create the JetStream stream {}", args.stream))
}

/// Creates the durable pull consumer with explicit acks if it does not exist. An existing consumer
/// keeps its configuration (the server does not update it here): delete it to change it.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    durable: &str,
) -> Result<consumer::Consumer<consumer::pull::Config>> {
    let config = consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        deliver_policy: consumer::DeliverPolicy::All,
        // Never give up on a message: a database outage can last longer than any retry budget,
        // and a message that is never stored is data lost.
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(durable, config)
        .await
        .wrap_err_with(|| format!("cannot get or create the durable consumer {durable}"))
}

/// What happened to published messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    /// Stored in the stream.
    pub published: u64,
    /// Dropped by the server as a repeat within the duplicate window (same `Nats-Msg-Id`).
    pub duplicates: u64,
    /// Not acknowledged by the server.
    pub failed: u64,
}

type AckFuture = futures::future::BoxFuture<
    'static,
    (
        u64,
        Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ),
>;

/// Publishes messages with their acks pipelined (up to `window` awaited at once), counting
/// outcomes and tracking how far every message has been acknowledged, for resumable producers.
pub struct Pipeline {
    js: jetstream::Context,
    subject: String,
    window: usize,
    acks: futures::stream::FuturesUnordered<AckFuture>,
    labels: std::collections::HashMap<u64, String>,
    next: u64,
    finished_early: std::collections::BTreeSet<u64>,
    through: u64,
    progress: indicatif::ProgressBar,
    /// Counts so far.
    pub summary: PublishSummary,
}

impl Pipeline {
    /// A pipeline publishing to `subject`; `progress` is advanced once per acknowledged message.
    pub fn new(
        js: jetstream::Context,
        subject: &str,
        window: usize,
        progress: indicatif::ProgressBar,
    ) -> Pipeline {
        Pipeline {
            js,
            subject: subject.to_owned(),
            window: window.max(1),
            acks: futures::stream::FuturesUnordered::new(),
            labels: std::collections::HashMap::new(),
            next: 0,
            finished_early: std::collections::BTreeSet::new(),
            through: 0,
            progress,
            summary: PublishSummary::default(),
        }
    }

    /// Publishes one message (with `Nats-Msg-Id` when given), waiting first if the window is full.
    pub async fn send(&mut self, label: String, payload: bytes::Bytes, msg_id: Option<&str>) {
        use futures::FutureExt;
        use std::future::IntoFuture;
        while self.acks.len() >= self.window {
            self.complete_one().await;
        }
        let index = self.next;
        self.next += 1;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        match self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
        {
            Ok(ack) => {
                self.labels.insert(index, label);
                let ack = ack.into_future();
                self.acks.push(async move { (index, ack.await) }.boxed());
            }
            Err(e) => {
                self.progress
                    .suspend(|| eprintln!("{label}: cannot publish: {e}"));
                self.summary.failed += 1;
                self.progress.inc(1);
            }
        }
    }

    /// Waits for every outstanding ack and returns the counts.
    pub async fn finish(&mut self) -> PublishSummary {
        while !self.acks.is_empty() {
            self.complete_one().await;
        }
        self.progress.finish_and_clear();
        self.summary
    }

    /// How many leading messages (in send order) were all acknowledged by the server.
    pub fn acknowledged_through(&self) -> u64 {
        self.through
    }

    async fn complete_one(&mut self) {
        use futures::StreamExt;
        let Some((index, result)) = self.acks.next().await else {
            return;
        };
        let label = self.labels.remove(&index).unwrap_or_default();
        self.progress.inc(1);
        match result {
            Ok(ack) if ack.duplicate => self.summary.duplicates += 1,
            Ok(_) => self.summary.published += 1,
            Err(e) => {
                self.progress
                    .suspend(|| eprintln!("{label}: not acknowledged: {e}"));
                self.summary.failed += 1;
                // A failed message stops the watermark: a resume must start before it.
                return;
            }
        }
        self.finished_early.insert(index);
        while self.finished_early.remove(&self.through) {
            self.through += 1;
        }
    }
}

/// A progress bar for `total` messages, drawn only from `min` messages on.
pub fn progress_bar(total: u64, min: u64) -> indicatif::ProgressBar {
    if total < min {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
