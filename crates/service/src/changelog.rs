//! The changelog: how every replica of one service gets every committed order, whichever
//! replica pulled its message.
//!
//! Replicas that share a durable consumer split the messages between them, so each one's own
//! ingest stores only a part of the orders. After a batch commits, and before its messages are
//! acked, ingest publishes what it hands its own cache (orders stored, or found already stored
//! with the same content) to a JetStream stream of the service's own: this is `publish`. Every
//! replica follows that stream into its cache: this is `follow`. The pattern is Kafka Streams'
//! changelog topics.
//!
//! A changelog message carries many orders (as many as fit in the server's max payload), framed
//! as `uid length (1 byte) | uid | document length (4 bytes, big-endian) | document`, repeated,
//! under the header `Ordersvc-Changelog: orders-v1`. One message per order cost NATS a publish, a
//! stored message and an ack per order on top of the order's own delivery and ack: it halved the
//! drain rate (docs/BENCHMARKS.md). A message of the earlier form (one order, `Nats-Msg-Id` =
//! order_uid, the document as payload) is still read, so a changelog written before an upgrade
//! is followed to its end.
//!
//! Each message also names the process that published it (`Ordersvc-Origin`, random per
//! process): a replica's follower skips its own, whose orders its ingest has handed to its cache
//! directly. Reading them back cost the replica a UTF-8 check, a copy and a cache insert per
//! order for nothing (docs/BENCHMARKS.md).
//!
//! The hand-off at start: the changelog's last sequence S0 is read *before* the restore from
//! PostgreSQL begins, and the follower starts at S0 + 1, so an order committed during the restore
//! is in one or the other (or both: inserting into the cache is idempotent). A replica that dies
//! between commit and publish leaves its messages unacked; whoever gets them next finds the orders
//! stored, publishes them, then acks.
//!
//! The follower checks stream sequences, not only what the consumer delivers: if the changelog no
//! longer holds the sequence it needs (expired by age, purged, or the stream recreated), that is a
//! gap, and the replica restores afresh from PostgreSQL before it reads on.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use color_eyre::eyre::{eyre, Result, WrapErr};
use crossbeam_channel::Sender;
use futures::StreamExt;
use tracing::{info, warn};

use crate::bus::MAX_PAYLOAD;
use crate::cache;
use crate::config::NatsArgs;
use crate::health::Reporter;
use crate::order::OrderUid;
use crate::shutdown::Shutdown;

/// How long the changelog keeps an order. A replica needs it only from the moment its restore
/// began until it has caught up; one that was away longer restores afresh anyway.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// The stream's duplicate window (no longer than `MAX_AGE`): messages of the earlier form, one
/// order each, carry `Nats-Msg-Id` = order_uid; packed ones carry none.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The follower's pull heartbeat: a lost consumer (a NATS node gone) is noticed within two.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Messages per pull of the follower, and at most per chunk it reads at once.
const FOLLOW_BATCH: usize = 1000;
/// Payload bytes per pull of the follower. A packed message holds up to a max payload of orders,
/// so a pull bounded only by `FOLLOW_BATCH` could bring a gigabyte at once to a replica that is
/// catching up. A pull must still fit the largest message, or the server would refuse it forever.
const FOLLOW_MAX_BYTES: usize = 2 * MAX_PAYLOAD;
/// Backoff between the follower's attempts while NATS is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The header that marks a message of packed orders, and its value.
const FORMAT_HEADER: &str = "Ordersvc-Changelog";
const FORMAT: &str = "orders-v1";
/// The header that names the process that published a message.
const ORIGIN_HEADER: &str = "Ordersvc-Origin";
/// Room left in a message's max payload for its headers (the two take under 100 bytes; a unit
/// test checks that they fit).
const HEADER_ROOM: usize = 256;

/// One service's changelog: a stream named from the service's stream and durable consumer, so
/// that two services on one stream (two durables) never mix theirs.
#[derive(Clone)]
pub struct Changelog {
    js: jetstream::Context,
    name: String,
    subject: String,
    replicas: usize,
    /// This process's name in `ORIGIN_HEADER`.
    origin: String,
}

/// Where a replica is in the changelog: the next sequence it needs, in which incarnation of
/// the stream (a deleted and recreated stream starts its sequences again, so a sequence alone
/// cannot tell whether it is still the same history).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    next: u64,
    created: time::OffsetDateTime,
}

/// Why following stopped.
pub enum Stopped {
    /// A stop was requested.
    Shutdown,
    /// The changelog does not hold the sequence needed next: restore afresh, then follow on.
    Gap(String),
}

impl Changelog {
    /// The changelog of the service made of `nats.stream` and `durable`.
    pub fn new(js: jetstream::Context, nats: &NatsArgs, durable: &str) -> Changelog {
        // Stream and durable names hold no `.`, `*`, `>` or spaces (JetStream refuses them), so
        // both names below are valid and distinct per (stream, durable).
        Changelog {
            js,
            name: stream_name(&nats.stream, durable),
            subject: format!("ordersvc.changelog.{}.{durable}", nats.stream),
            replicas: usize::from(nats.stream_replicas),
            origin: new_origin(),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the changelog stream if it does not exist, and returns it.
    async fn stream(&self) -> Result<stream::Stream> {
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![self.subject.clone()],
            storage: stream::StorageType::File,
            max_age: MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: MAX_PAYLOAD as i32,
            num_replicas: self.replicas,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .wrap_err_with(|| format!("cannot get or create the changelog stream {}", self.name))
    }

    /// Just after the last order in the changelog: where a replica follows from once it has
    /// restored from PostgreSQL (the hand-off's S0 + 1, read before the restore begins).
    pub async fn end(&self) -> Result<Position> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .wrap_err_with(|| format!("cannot read the changelog stream {}", self.name))?;
        Ok(Position {
            next: info.state.last_sequence + 1,
            created: info.created,
        })
    }

    /// Publishes committed orders, packed into as few messages as the server's max payload
    /// allows, and waits until JetStream has stored every message.
    pub async fn publish(&self, orders: &[(OrderUid, String)]) -> Result<()> {
        let max_payload = self.js.client().server_info().max_payload.min(MAX_PAYLOAD);
        let mut acks = Vec::new();
        for payload in pack(orders, max_payload.saturating_sub(HEADER_ROOM)) {
            let mut headers = HeaderMap::new();
            headers.insert(FORMAT_HEADER, FORMAT);
            headers.insert(ORIGIN_HEADER, self.origin.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .wrap_err("cannot publish to the changelog")?;
            acks.push(ack);
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.map_err(|e| eyre!("the changelog did not store a message of orders: {e}"))?;
        }
        Ok(())
    }

    /// Follows the changelog from sequence `next` into the cache until a stop, or until it finds
    /// a gap. `catching_up` stays set until everything the changelog held when following began
    /// is in the cache; `follow` reports why the changelog cannot be read meanwhile (the follower
    /// retries with backoff).
    pub async fn follow(
        &self,
        mut position: Position,
        cache_tx: &Sender<cache::Batch>,
        follow: &Reporter,
        catching_up: &Reporter,
        shutdown: &Shutdown,
    ) -> Stopped {
        let mut backoff = BACKOFF_MIN;
        loop {
            if shutdown.is_requested() {
                return Stopped::Shutdown;
            }
            match self
                .follow_once(&mut position, cache_tx, catching_up, follow, shutdown)
                .await
            {
                Ok(stopped) => return stopped,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), changelog = %self.name, "cannot follow the changelog; retrying");
                    follow.set(Some(format!("{e:#}")));
                    tokio::select! {
                        _ = shutdown.requested() => return Stopped::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One consumer's worth of following: checks that the changelog still holds `next`, then
    /// reads on from it. `Err` is a NATS problem to retry; `Ok` a stop or a gap.
    async fn follow_once(
        &self,
        position: &mut Position,
        cache_tx: &Sender<cache::Batch>,
        catching_up: &Reporter,
        follow: &Reporter,
        shutdown: &Shutdown,
    ) -> Result<Stopped> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .wrap_err("cannot read the changelog's state")?
            .clone();
        if info.created != position.created {
            return Ok(Stopped::Gap(
                "the changelog was deleted and made again".to_owned(),
            ));
        }
        let state = info.state;
        let next = &mut position.next;
        if let Some(gap) = gap_at_start(*next, state.first_sequence, state.last_sequence) {
            return Ok(Stopped::Gap(gap));
        }
        // Everything up to here was committed before this point: until it is applied, reads
        // would miss orders that a replica in sync serves from memory.
        let target = state.last_sequence;
        if *next > target {
            catching_up.set(None);
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                ack_policy: consumer::AckPolicy::None,
                // Ephemeral: gone by itself once this replica stops pulling.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .wrap_err("cannot create the changelog consumer")?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(FOLLOW_BATCH)
            .max_bytes_per_batch(FOLLOW_MAX_BYTES)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .wrap_err("cannot pull from the changelog")?;
        follow.set(None);
        let mut chunks = messages.ready_chunks(FOLLOW_BATCH);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.requested() => return Ok(Stopped::Shutdown),
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(eyre!("the changelog's message stream ended"));
            };
            let (batch, end) = read_chunk(chunk, next, &self.name, &self.origin);
            // Before anything else: `next` is already past these orders, so a batch dropped here
            // would never be read again (the next consumer starts at `next`).
            if !batch.is_empty() {
                send(cache_tx, batch).await?;
            }
            match end {
                None => {}
                Some(ChunkEnd::Gap(gap)) => return Ok(Stopped::Gap(gap)),
                Some(ChunkEnd::Failed(e)) => return Err(e),
            }
            if *next > target && catching_up.problem().is_some() {
                info!(changelog = %self.name, "caught up with the changelog");
                catching_up.set(None);
            }
        }
    }
}

/// What cut a chunk short.
enum ChunkEnd {
    /// The changelog skipped sequences: they are gone.
    Gap(String),
    /// The pull stream failed (a missed heartbeat, a lost connection): follow again from `next`.
    Failed(color_eyre::Report),
}

/// A pulled changelog message, as the follower reads it.
trait Pulled {
    /// Its stream sequence.
    fn sequence(&self) -> Result<u64>;
    /// The orders it carries, none if `origin` published it; `None` if it is not a changelog
    /// message.
    fn orders(&self, origin: &str) -> Option<Vec<(OrderUid, String)>>;
}

impl Pulled for jetstream::Message {
    fn sequence(&self) -> Result<u64> {
        self.info()
            .map(|info| info.stream_sequence)
            .map_err(|e| eyre!("a changelog message without its sequence: {e}"))
    }

    fn orders(&self, origin: &str) -> Option<Vec<(OrderUid, String)>> {
        read_message(self.headers.as_ref()?, &self.payload, origin)
    }
}

/// Reads one pulled chunk from `next` on: the orders it holds up to the first gap or error, with
/// `next` moved past each message read, and what ended it early, if anything did. The caller
/// must hand those orders on whatever the end.
fn read_chunk<M: Pulled, E: std::error::Error + Send + Sync + 'static>(
    chunk: Vec<std::result::Result<M, E>>,
    next: &mut u64,
    changelog: &str,
    origin: &str,
) -> (cache::Batch, Option<ChunkEnd>) {
    let mut batch = Vec::with_capacity(chunk.len());
    for item in chunk {
        let read = item
            .wrap_err("the changelog's message stream failed")
            .and_then(|message| Ok((message.sequence()?, message)));
        let (seq, message) = match read {
            Ok(read) => read,
            Err(e) => return (batch, Some(ChunkEnd::Failed(e))),
        };
        if seq != *next {
            // An ordered read that skips: the sequences in between are gone.
            let gap = format!("the changelog skipped from sequence {} to {seq}", *next);
            return (batch, Some(ChunkEnd::Gap(gap)));
        }
        *next = seq + 1;
        match message.orders(origin) {
            Some(orders) => batch.extend(orders),
            // Only ingest publishes here, and only validated orders: anything else is not ours
            // to serve.
            None => warn!(
                seq,
                changelog, "ignored a changelog message that is not an order"
            ),
        }
    }
    (batch, None)
}

/// The changelog stream of the service made of `stream` and `durable` (for tools and tests that
/// clean up after a service).
pub fn stream_name(stream: &str, durable: &str) -> String {
    format!("{stream}_{durable}_CHANGELOG")
}

/// Why the changelog cannot be followed from `next`, given its first and last sequence, if so.
/// A stream never written to has both at 0; one emptied (by age or a purge) has `first = last + 1`.
fn gap_at_start(next: u64, first: u64, last: u64) -> Option<String> {
    if next < first {
        Some(format!(
            "the changelog no longer holds sequence {next} (it starts at {first})"
        ))
    } else if next > last.saturating_add(1) {
        Some(format!(
            "the changelog ends at sequence {last}, before {next}: it was recreated"
        ))
    } else {
        None
    }
}

/// The orders of one changelog message, given its headers and payload, in either form: packed
/// orders, or (written before packing) one order with its order_uid in `Nats-Msg-Id`. None from
/// a message that `origin` (this process) published.
fn read_message(
    headers: &HeaderMap,
    payload: &[u8],
    origin: &str,
) -> Option<Vec<(OrderUid, String)>> {
    if headers.get(FORMAT_HEADER).map(|v| v.as_str()) == Some(FORMAT) {
        if headers.get(ORIGIN_HEADER).map(|v| v.as_str()) == Some(origin) {
            return Some(Vec::new());
        }
        return unpack(payload);
    }
    let uid = OrderUid::parse(headers.get("Nats-Msg-Id")?.as_str()).ok()?;
    let document = std::str::from_utf8(payload).ok()?.to_owned();
    Some(vec![(uid, document)])
}

/// A name for this process's changelog messages: 64 random bits (std's `RandomState` is seeded
/// from the OS for each new one), in hex.
fn new_origin() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{random:016x}")
}

/// Frames orders into payloads of at most `limit` bytes each, in order. An order whose frame
/// alone is larger goes alone (the server then refuses it, and the fan-out says why); ingest
/// accepts no such order (`order::PAYLOAD_ROOM`).
fn pack(orders: &[(OrderUid, String)], limit: usize) -> Vec<Bytes> {
    let mut payloads = Vec::new();
    let mut current = BytesMut::new();
    for (uid, document) in orders {
        let frame_len = 1 + uid.as_str().len() + 4 + document.len();
        if !current.is_empty() && current.len() + frame_len > limit {
            payloads.push(std::mem::take(&mut current).freeze());
        }
        if current.is_empty() {
            current.reserve(limit.max(frame_len));
        }
        // An order_uid is at most 64 bytes and a document less than the 1 MiB max payload
        // (`OrderUid::parse`, `bus::MAX_PAYLOAD`), so both lengths fit their fields.
        current.put_u8(uid.as_str().len() as u8);
        current.put_slice(uid.as_str().as_bytes());
        current.put_u32(document.len() as u32);
        current.put_slice(document.as_bytes());
    }
    if !current.is_empty() {
        payloads.push(current.freeze());
    }
    payloads
}

/// The orders framed in one payload (see `pack`); `None` if it is cut short or a frame does not
/// hold a valid order_uid and a UTF-8 document.
fn unpack(mut payload: &[u8]) -> Option<Vec<(OrderUid, String)>> {
    let mut orders = Vec::new();
    while let Some((&uid_len, rest)) = payload.split_first() {
        let (uid, rest) = rest.split_at_checked(usize::from(uid_len))?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let (document, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        let uid = OrderUid::parse(std::str::from_utf8(uid).ok()?).ok()?;
        orders.push((uid, std::str::from_utf8(document).ok()?.to_owned()));
        payload = rest;
    }
    Some(orders)
}

/// Hands a batch to the cache writer without blocking the runtime's thread.
async fn send(cache_tx: &Sender<cache::Batch>, batch: cache::Batch) -> Result<()> {
    let tx = cache_tx.clone();
    tokio::task::spawn_blocking(move || tx.send(batch))
        .await
        .map_err(|e| eyre!("the cache hand-off failed: {e}"))?
        .map_err(|_| eyre!("the cache writer stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pulled message: its sequence, and the order_uid it carries (none: not an order).
    struct Fake(u64, Option<&'static str>);

    impl Pulled for Fake {
        fn sequence(&self) -> Result<u64> {
            Ok(self.0)
        }

        fn orders(&self, _origin: &str) -> Option<Vec<(OrderUid, String)>> {
            let uid = OrderUid::parse(self.1?).ok()?;
            Some(vec![(uid, format!("{{\"seq\":{}}}", self.0))])
        }
    }

    fn fake(seq: u64, uid: &'static str) -> Result<Fake, std::io::Error> {
        Ok(Fake(seq, Some(uid)))
    }

    fn uids(batch: &cache::Batch) -> Vec<&str> {
        batch.iter().map(|(uid, _)| uid.as_str()).collect()
    }

    #[test]
    fn a_chunk_read_in_order_moves_past_every_message_and_yields_its_orders() {
        let mut next = 7;
        let chunk = vec![fake(7, "a"), Ok(Fake(8, None)), fake(9, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a", "c"]);
        assert!(end.is_none());
        assert_eq!(next, 10);
    }

    #[test]
    fn a_chunk_that_fails_midway_still_yields_the_orders_read_before_the_failure() {
        // A missed heartbeat behind two orders: `next` moves past them, so the caller must get
        // them now; the next consumer starts after them.
        let mut next = 1;
        let heartbeat = std::io::Error::other("missed idle heartbeat");
        let chunk = vec![fake(1, "a"), fake(2, "b"), Err(heartbeat), fake(3, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a", "b"]);
        assert!(matches!(end, Some(ChunkEnd::Failed(_))));
        assert_eq!(next, 3);
    }

    #[test]
    fn a_chunk_that_skips_a_sequence_yields_what_came_before_and_names_the_gap() {
        let mut next = 4;
        let chunk = vec![fake(4, "a"), fake(6, "c")];
        let (batch, end) = read_chunk(chunk, &mut next, "test", "me");
        assert_eq!(uids(&batch), ["a"]);
        let Some(ChunkEnd::Gap(gap)) = end else {
            panic!("no gap");
        };
        assert!(gap.contains("from sequence 5 to 6"), "{gap}");
        assert_eq!(next, 5);
    }

    fn order(uid: &str, document: &str) -> (OrderUid, String) {
        (
            OrderUid::parse(uid).expect("a valid uid"),
            document.to_owned(),
        )
    }

    #[test]
    fn packed_orders_unpack_to_the_same_orders_in_the_same_order() {
        let orders = vec![
            order("a", "{}"),
            order(&"Z".repeat(crate::order::MAX_UID_LEN), "{\"x\":\"é\"}"),
            order("c", ""),
        ];
        let payloads = pack(&orders, 1 << 20);
        assert_eq!(payloads.len(), 1);
        assert_eq!(unpack(&payloads[0]), Some(orders));
    }

    #[test]
    fn packing_cuts_messages_at_the_limit_and_puts_an_order_larger_than_it_alone() {
        // Each frame here: 1 + 1 + 4 + 10 = 16 bytes.
        let ten = "0123456789";
        let orders: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|uid| order(uid, ten))
            .collect();
        let payloads = pack(&orders, 40);
        assert_eq!(
            payloads.iter().map(Bytes::len).collect::<Vec<_>>(),
            [32, 32, 16]
        );
        let unpacked: Vec<_> = payloads.iter().flat_map(|p| unpack(p).unwrap()).collect();
        assert_eq!(unpacked, orders);

        let big = order("big", &"x".repeat(100));
        let payloads = pack(&[orders[0].clone(), big.clone(), orders[1].clone()], 40);
        assert_eq!(payloads.len(), 3);
        assert_eq!(unpack(&payloads[1]), Some(vec![big]));
        assert!(pack(&[], 40).is_empty());
    }

    #[test]
    fn the_largest_order_accepted_fits_one_changelog_message_with_its_headers() {
        // What `publish` sends beside the payload: NATS's header block for the two headers.
        let headers = format!(
            "NATS/1.0\r\n{FORMAT_HEADER}: {FORMAT}\r\n{ORIGIN_HEADER}: {}\r\n\r\n",
            new_origin()
        );
        assert!(headers.len() <= HEADER_ROOM, "{} bytes", headers.len());
        let largest = order(
            &"Z".repeat(crate::order::MAX_UID_LEN),
            &"x".repeat(crate::order::MAX_DOCUMENT),
        );
        let limit = MAX_PAYLOAD - HEADER_ROOM;
        let payloads = pack(std::slice::from_ref(&largest), limit);
        assert_eq!(payloads.len(), 1);
        assert!(payloads[0].len() <= limit, "{} bytes", payloads[0].len());
    }

    #[test]
    fn a_payload_cut_short_or_with_a_bad_frame_is_not_read_as_orders() {
        let payload = pack(&[order("a", "{}"), order("b", "{}")], 1 << 20).remove(0);
        // Each frame is 8 bytes: a cut between the two is a valid payload of one order.
        assert_eq!(unpack(&payload[..8]), Some(vec![order("a", "{}")]));
        for cut in (1..payload.len()).filter(|&cut| cut != 8) {
            assert_eq!(unpack(&payload[..cut]), None, "cut at {cut}");
        }
        // An order_uid that `OrderUid::parse` refuses, and a document that is not UTF-8.
        assert_eq!(unpack(b"\x01 \x00\x00\x00\x00"), None);
        assert_eq!(unpack(b"\x01a\x00\x00\x00\x01\xff"), None);
        assert_eq!(unpack(b""), Some(vec![]));
    }

    #[test]
    fn a_message_is_read_in_the_packed_form_or_in_the_earlier_one_order_form() {
        let orders = vec![order("a", "{}"), order("b", "[]")];
        let mut packed = HeaderMap::new();
        packed.insert(FORMAT_HEADER, FORMAT);
        let payload = pack(&orders, 1 << 20).remove(0);
        assert_eq!(read_message(&packed, &payload, "me"), Some(orders.clone()));
        // Its own messages: this process's ingest handed their orders to its cache already.
        packed.insert(ORIGIN_HEADER, "me");
        assert_eq!(read_message(&packed, &payload, "me"), Some(vec![]));
        assert_eq!(read_message(&packed, &payload, "other"), Some(orders));

        let mut earlier = HeaderMap::new();
        earlier.insert("Nats-Msg-Id", "a");
        assert_eq!(
            read_message(&earlier, b"{}", "me"),
            Some(vec![order("a", "{}")])
        );
        // Neither form: not a changelog message.
        assert_eq!(read_message(&HeaderMap::new(), b"{}", "me"), None);
        let mut unknown = HeaderMap::new();
        unknown.insert(FORMAT_HEADER, "orders-v9");
        assert_eq!(read_message(&unknown, &payload, "me"), None);
        assert_ne!(new_origin(), new_origin());
    }

    #[test]
    fn a_gap_at_start_is_seen_when_the_needed_sequence_is_gone_or_the_stream_is_new() {
        // In order: nothing missing.
        assert_eq!(gap_at_start(1, 0, 0), None); // never written
        assert_eq!(gap_at_start(5, 1, 4), None); // at the end
        assert_eq!(gap_at_start(3, 1, 10), None); // inside
        assert_eq!(gap_at_start(11, 11, 10), None); // emptied by age exactly up to here
                                                    // Gaps.
        assert!(gap_at_start(3, 5, 10).is_some()); // 3 and 4 expired or purged
        assert!(gap_at_start(10, 11, 10).is_some()); // emptied past where we were
        assert!(gap_at_start(20, 1, 10).is_some()); // the stream was recreated
    }
}
