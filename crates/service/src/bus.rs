//! NATS JetStream: connecting (`connect`), and making sure the stream and the durable consumer exist.
//! Shared by `serve` (consumer) and the producers (`publish`, `replay-from-db`, `bench`), so all
//! agree on the stream's shape. Publishing itself is `publisher`'s.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use color_eyre::eyre::{Result, WrapErr};

use crate::config::NatsArgs;
use crate::retry::Backoff;

mod connect;
pub(crate) mod scan;

pub use connect::connect;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a repeated publish.
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the server waits for an ack before redelivering a message.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered but not yet acked, across all instances sharing the durable consumer.
pub(crate) const MAX_ACK_PENDING: i64 = 20_000;
/// NATS's default max payload: nothing larger can be published.
pub(crate) const MAX_PAYLOAD: usize = 1024 * 1024;

/// Bytes of NATS's max payload that an order's document leaves free. The changelog carries each
/// stored order to the other replicas in a message that adds a frame (at most 69 bytes) and
/// headers (under 128) to the document: without this room, a document within a few dozen bytes
/// of the max payload would be stored and then never fanned out, so never acked.
pub(crate) const PAYLOAD_ROOM: usize = 512;

/// The largest document accepted at NATS's default max payload of 1 MiB: 1,048,064 bytes.
pub const MAX_DOCUMENT: usize = max_document(MAX_PAYLOAD);

/// The largest document accepted when the NATS server takes payloads of up to `max_payload`
/// bytes (the stream takes no more than 1 MiB in any case): the limit that ingest hands to
/// `Order::parse_within`. It lives here, not with the order model, because it is the
/// transport's arithmetic: the model checks whatever limit it is given.
pub(crate) const fn max_document(max_payload: usize) -> usize {
    let max_payload = if max_payload < MAX_PAYLOAD {
        max_payload
    } else {
        MAX_PAYLOAD
    };
    max_payload.saturating_sub(PAYLOAD_ROOM)
}

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
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    args: &NatsArgs,
) -> Result<stream::Stream> {
    ensure_stream_within(js, args, Duration::ZERO).await
}

/// `ensure_stream`, asked again with backoff while JetStream cannot answer yet, for up to
/// `patience`: on a cluster, the stream's leader (which answers for it) or the meta leader (which
/// creates it) may be in the middle of an election, which takes 4 to 10 s on nats-server 2.9.
/// For the producers, which have nothing to retry with otherwise; ingest retries by itself.
pub async fn ensure_stream_within(
    js: &jetstream::Context,
    args: &NatsArgs,
    patience: Duration,
) -> Result<stream::Stream> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Backoff::new(LOOKUP_BACKOFF_MIN, LOOKUP_BACKOFF_MAX);
    let stream = loop {
        let delay = backoff.next_delay();
        match js.get_or_create_stream(stream_config(args)).await {
            Ok(stream) => break stream,
            Err(e) if is_transient(&e) && tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(stream = %args.stream, error = %e, "JetStream cannot answer for the stream yet; asking again");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(e).wrap_err_with(|| {
                    format!("cannot get or create the JetStream stream {}", args.stream)
                })
            }
        }
    };
    warn_if_replicas_differ(&stream, args.stream_replicas);
    Ok(stream)
}

/// The stream as it is, or `None` if it does not exist: for a command that must not create one
/// with its own settings (erasure).
pub(crate) async fn existing_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(error)
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).wrap_err_with(|| format!("cannot read the stream {name}")),
    }
}

/// Backoff between two lookups of the stream by `ensure_stream_within`.
const LOOKUP_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LOOKUP_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether a failed stream lookup can pass by itself: no answer in time, no responder, or
/// JetStream saying it is unavailable for now (503: no leader, no quorum yet).
fn is_transient(e: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(error) => error.code() == 503,
        _ => false,
    }
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
pub(crate) async fn ensure_consumer(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{Order, RejectKind};
    use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind as Kind};

    /// model.json padded (in customer_id) to exactly `len` bytes.
    fn model_of_len(len: usize) -> String {
        const MODEL: &str = include_str!("../../../testdata/model.json");
        let field = "\"customer_id\": \"test\"";
        assert!(MODEL.contains(field), "model.json has no {field}");
        let short = MODEL.len() - "test".len();
        let padding = "c".repeat(len - short);
        MODEL.replacen(field, &format!("\"customer_id\": \"{padding}\""), 1)
    }

    #[test]
    fn a_document_of_the_limit_is_accepted_and_one_byte_more_is_too_large() {
        let order = Order::parse_within(model_of_len(MAX_DOCUMENT).as_bytes(), MAX_DOCUMENT)
            .expect("accepted");
        assert_eq!(order.document().len(), MAX_DOCUMENT);
        let r = Order::parse_within(model_of_len(MAX_DOCUMENT + 1).as_bytes(), MAX_DOCUMENT)
            .expect_err("too large");
        assert_eq!(
            (r.kind(), r.to_string()),
            (
                RejectKind::TooLarge,
                "payload: 1048065 bytes, more than the 1048064 an order may take".to_owned()
            )
        );
    }

    #[test]
    fn the_limit_follows_a_smaller_max_payload_and_never_exceeds_the_streams() {
        assert_eq!(MAX_DOCUMENT, 1024 * 1024 - PAYLOAD_ROOM);
        assert_eq!(max_document(64 * 1024), 64 * 1024 - PAYLOAD_ROOM);
        assert_eq!(max_document(8 * 1024 * 1024), MAX_DOCUMENT);
        assert_eq!(max_document(100), 0);
    }

    fn api_error(json: &str) -> CreateStreamError {
        let error: jetstream::Error = serde_json::from_str(json).expect("an API error");
        CreateStreamError::new(Kind::JetStream(error))
    }

    #[test]
    fn a_stream_lookup_is_asked_again_only_when_jetstream_cannot_answer_yet() {
        // An election under way: no answer, no responder, or "temporarily unavailable".
        assert!(is_transient(&CreateStreamError::new(Kind::TimedOut)));
        assert!(is_transient(&CreateStreamError::new(
            Kind::JetStreamUnavailable
        )));
        assert!(is_transient(&api_error(
            r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#
        )));
        // A real answer: asking again would get the same one.
        assert!(!is_transient(&api_error(
            r#"{"code":400,"err_code":10058,"description":"stream name already in use with a different configuration"}"#
        )));
        assert!(!is_transient(&CreateStreamError::new(
            Kind::InvalidStreamName
        )));
    }
}
