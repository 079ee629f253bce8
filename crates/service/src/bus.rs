//! NATS JetStream: connecting (`connect`), and making sure the stream and the durable consumer exist.
//! Shared by `serve` (consumer) and the producers (`publish`, `replay-from-db`, `bench`), so all
//! agree on the stream's shape. Publishing itself is `publisher`'s.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use color_eyre::eyre::{Result, WrapErr};

use crate::config::NatsArgs;

mod connect;

pub use connect::connect;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the server waits for an ack before redelivering a message.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered but not yet acked, across all instances sharing the durable consumer.
pub const MAX_ACK_PENDING: i64 = 20_000;
/// NATS's default max payload: nothing larger can be published.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// The stream's configuration: file storage, so that messages survive a NATS restart.
fn stream_config(args: &NatsArgs) -> stream::Config {
    stream::Config {
        name: args.stream.clone(),
        subjects: vec![args.subject.clone()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_PAYLOAD as i32,
        num_replicas: usize::from(args.stream_replicas),
        ..Default::default()
    }
}

/// Creates the stream if it does not exist (an existing one is used as it is).
pub async fn ensure_stream(js: &jetstream::Context, args: &NatsArgs) -> Result<stream::Stream> {
    let config = stream_config(args);
    let stream = js
        .get_or_create_stream(config)
        .await
        .wrap_err_with(|| format!("cannot get or create the JetStream stream {}", args.stream))?;
    warn_if_replicas_differ(&stream, args.stream_replicas);
    Ok(stream)
}

/// An existing stream keeps its replica count (changing it is an operator's decision, with
/// `nats stream edit`): say so when it is not what was asked for.
fn warn_if_replicas_differ(stream: &stream::Stream, wanted: u8) {
    let info = stream.cached_info();
    let has = info.config.num_replicas.max(1);
    if has != usize::from(wanted) {
        tracing::warn!(
            stream = %info.config.name,
            replicas = has,
            wanted,
            "the stream exists with another replica count; using it as it is"
        );
    }
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
