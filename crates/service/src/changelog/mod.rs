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
//! gap, and the replica restores afresh from PostgreSQL before it reads on. Messages that
//! `ordersvc erase` deleted are no gap: it publishes an erasure notice (ids only) that every
//! replica applies, publishes again the other orders of each message it deletes, and records each
//! deletion in PostgreSQL first, where a follower that meets the hole looks it up (`scrub`,
//! `Follower::erased`).
//!
//! The component, one file per part: this module publishes (and owns the stream and its names);
//! `format` is the wire format; `follow` is the follower with its hand-off, continuity check and
//! gap policy.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use color_eyre::eyre::{eyre, Result, WrapErr};

use crate::bus::MAX_PAYLOAD;
use crate::config::NatsArgs;
use crate::order::OrderUid;
use crate::store::Store;

use self::format::{FORMAT, FORMAT_HEADER, HEADER_ROOM, ORIGIN_HEADER};

mod follow;
mod format;

pub use self::follow::{FollowHealth, Follower};

/// How long the changelog keeps an order. A replica needs it only from the moment its restore
/// began until it has caught up; one that was away longer restores afresh anyway.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// The stream's duplicate window (no longer than `MAX_AGE`): messages of the earlier form, one
/// order each, carry `Nats-Msg-Id` = order_uid; packed ones carry none.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Backoff between the follower's attempts while NATS is unavailable.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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
            origin: format::new_origin(),
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
        let payloads = format::pack(orders, self.payload_limit());
        self.publish_all(FORMAT, payloads, "a message of orders")
            .await
    }

    /// Room for a payload in one message, headers aside.
    fn payload_limit(&self) -> usize {
        let max_payload = self.js.client().server_info().max_payload.min(MAX_PAYLOAD);
        max_payload.saturating_sub(HEADER_ROOM)
    }

    /// Publishes payloads of the `format` given, named as this process's, and waits until
    /// JetStream has stored every one (`what` names them in an error).
    async fn publish_all(
        &self,
        format: &'static str,
        payloads: Vec<Bytes>,
        what: &str,
    ) -> Result<()> {
        let mut acks = Vec::new();
        for payload in payloads {
            let mut headers = HeaderMap::new();
            headers.insert(FORMAT_HEADER, format);
            headers.insert(ORIGIN_HEADER, self.origin.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .wrap_err_with(|| format!("cannot publish {what} to the changelog"))?;
            acks.push(ack);
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.map_err(|e| eyre!("the changelog did not store {what}: {e}"))?;
        }
        Ok(())
    }
}

/// What erasure did to the changelog (`Changelog::scrub`).
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// Messages read.
    pub read: u64,
    /// Messages that carried an erased order, deleted.
    pub deleted: u64,
    /// Orders of those messages that were not erased, published again first.
    pub republished: usize,
}

impl Changelog {
    /// The changelog stream as it is, or `None` if it does not exist (no replica has run yet).
    /// Erasure uses this rather than creating one with its own settings.
    async fn existing(&self) -> Result<Option<stream::Stream>> {
        crate::bus::existing_stream(&self.js, &self.name).await
    }

    /// Whether the changelog exists: none means no replica has run yet, so none needs what a
    /// command would publish there (one that starts restores from PostgreSQL).
    pub async fn exists(&self) -> Result<bool> {
        Ok(self.existing().await?.is_some())
    }

    /// Publishes an erasure notice: every replica that follows the changelog drops these
    /// orders and never inserts them again. `false` if there is no changelog (no replica ever
    /// ran; one that starts restores the tombstones from PostgreSQL).
    pub async fn publish_erase(&self, uids: &[OrderUid]) -> Result<bool> {
        if !self.exists().await? {
            return Ok(false);
        }
        let payloads = format::pack_erase(uids, self.payload_limit());
        self.publish_all(format::ERASE_FORMAT, payloads, "the erasure notice")
            .await?;
        Ok(true)
    }

    /// Removes the erased orders from every changelog message: a message that carries one is
    /// deleted (its bytes overwritten), once the other orders it carried are published again,
    /// so that a replica still behind it loses none of them.
    /// Each deletion is recorded in PostgreSQL first, so that a replica still behind the
    /// message knows that the hole in the sequences lost it nothing (`Follower::erased`).
    pub async fn scrub(&self, erased: &HashSet<&str>, store: &Store) -> Result<Scrubbed> {
        let Some(mut stream) = self.existing().await? else {
            return Ok(Scrubbed::default());
        };
        let created = created_ns(stream.cached_info().created);
        let (found, read) = crate::bus::scan::matching(&mut stream, |message| {
            let Some(headers) = message.headers.as_ref() else {
                return false;
            };
            format::carried_orders(headers, &message.payload)
                .iter()
                .any(|(uid, _)| erased.contains(uid.as_str()))
        })
        .await?;
        let mut scrubbed = Scrubbed {
            read,
            ..Scrubbed::default()
        };
        for message in found {
            let headers = message.headers.as_ref();
            let kept: Vec<(OrderUid, String)> = headers
                .map(|headers| format::carried_orders(headers, &message.payload))
                .unwrap_or_default()
                .into_iter()
                .filter(|(uid, _)| !erased.contains(uid.as_str()))
                .collect();
            if !kept.is_empty() {
                self.publish(&kept).await?;
                scrubbed.republished += kept.len();
            }
            let seq = message
                .info()
                .map_err(|e| eyre!("a changelog message without its sequence: {e}"))?
                .stream_sequence;
            store
                .record_changelog_deletion(&self.name, created, seq)
                .await
                .wrap_err("cannot record a changelog message's deletion")?;
            crate::bus::scan::erase_message(&stream, seq)
                .await
                .wrap_err("cannot delete a changelog message that carries an erased order")?;
            scrubbed.deleted += 1;
        }
        Ok(scrubbed)
    }
}

/// A stream's creation time as erasure records it (nanoseconds since 1970; 2262 is far).
pub(crate) fn created_ns(created: time::OffsetDateTime) -> i64 {
    i64::try_from(created.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// The changelog stream of the service made of `stream` and `durable` (for tools and tests that
/// clean up after a service).
pub fn stream_name(stream: &str, durable: &str) -> String {
    format!("{stream}_{durable}_CHANGELOG")
}
