//! Reading a whole stream, and deleting messages from it: what erasure does to the input stream
//! and the changelog, which JetStream cannot search by content.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, ErrorCode};
use color_eyre::eyre::{eyre, Result, WrapErr};
use futures::StreamExt;

/// Longest wait for the next message of a scan: the stream holds it already, so a longer
/// silence is a lost connection or consumer, not a slow producer.
const STALL: Duration = Duration::from_secs(15);
/// Payload bytes per pull: two max payloads, so that the largest message always fits.
const MAX_BYTES: usize = 2 * super::MAX_PAYLOAD;

/// Every message the stream holds now, from its first to its last, handed to `visit` in order;
/// returns those for which it returned true, and how many it read. Messages published after
/// the scan began are not read.
pub(crate) async fn matching(
    stream: &mut stream::Stream,
    mut visit: impl FnMut(&jetstream::Message) -> bool,
) -> Result<(Vec<jetstream::Message>, u64)> {
    let name = stream.cached_info().config.name.clone();
    let state = stream
        .info()
        .await
        .wrap_err_with(|| format!("cannot read the stream {name}"))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok((Vec::new(), 0));
    }
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            // Ephemeral: gone by itself if this process dies mid-scan.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .wrap_err_with(|| format!("cannot create a consumer to read the stream {name}"))?;
    let mut messages = consumer
        .stream()
        .max_bytes_per_batch(MAX_BYTES)
        .messages()
        .await
        .wrap_err_with(|| format!("cannot read the stream {name}"))?;
    let (mut found, mut read) = (Vec::new(), 0u64);
    loop {
        let message = tokio::time::timeout(STALL, messages.next())
            .await
            .map_err(|_| eyre!("reading the stream {name} stalled"))?
            .ok_or_else(|| eyre!("the stream {name} ended before its last message"))?
            .map_err(|e| eyre!("cannot read the stream {name}: {e}"))?;
        let info = message
            .info()
            .map_err(|e| eyre!("a message of {name} without its sequence: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        read += 1;
        if visit(&message) {
            found.push(message);
        }
        if seq >= state.last_sequence || pending == 0 {
            return Ok((found, read));
        }
    }
}

/// Deletes a message, overwriting its bytes on disk (JetStream's default for a delete). One
/// that is gone already counts as deleted.
pub(crate) async fn erase_message<I>(stream: &stream::Stream<I>, seq: u64) -> Result<()> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            // nats-server answers "no message found" (under either code, by version) for a
            // sequence that was deleted, or never held.
            stream::DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::NO_MESSAGE_FOUND
                    || (js.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        && js.to_string().contains("no message found")) =>
            {
                Ok(())
            }
            _ => Err(eyre!("cannot delete message {seq}: {e}")),
        },
    }
}
