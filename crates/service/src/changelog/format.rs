//! The changelog's wire format: a batch's orders packed into as few messages as the max payload
//! allows, and read back in that form or in the earlier one (one order per message). Pure: what
//! goes over NATS is `publish`'s and `follow`'s business.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};

use crate::order::OrderUid;

/// The header that marks a message of packed orders, and its value.
pub(super) const FORMAT_HEADER: &str = "Ordersvc-Changelog";
pub(super) const FORMAT: &str = "orders-v1";
/// The header that names the process that published a message.
pub(super) const ORIGIN_HEADER: &str = "Ordersvc-Origin";
/// Room left in a message's max payload for its headers (the two take under 100 bytes; a unit
/// test checks that they fit).
pub(super) const HEADER_ROOM: usize = 256;

/// The value of `FORMAT_HEADER` on an erasure notice (`ordersvc erase`): its payload is the
/// erased orders' ids, one per line. It carries no personal data.
pub(super) const ERASE_FORMAT: &str = "erase-v1";

/// What a changelog message says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// Stored orders, for the cache.
    Orders(Vec<(OrderUid, String)>),
    /// Erased orders: out of the cache, and never back in.
    Erase(Vec<OrderUid>),
}

/// What one changelog message says, given its headers and payload: packed orders, orders in the
/// earlier form (written before packing: one order with its order_uid in `Nats-Msg-Id`), or an
/// erasure notice. No orders from a message that `origin` (this process) published. `None` if it
/// is not a changelog message.
pub(super) fn read_message(headers: &HeaderMap, payload: &[u8], origin: &str) -> Option<Read> {
    match headers.get(FORMAT_HEADER).map(|v| v.as_str()) {
        Some(FORMAT) if headers.get(ORIGIN_HEADER).map(|v| v.as_str()) == Some(origin) => {
            Some(Read::Orders(Vec::new()))
        }
        Some(FORMAT) => unpack(payload).map(Read::Orders),
        Some(ERASE_FORMAT) => {
            let text = std::str::from_utf8(payload).ok()?;
            let uids = text.lines().map(OrderUid::parse).collect::<Result<_, _>>();
            uids.ok().map(Read::Erase)
        }
        Some(_) => None,
        None => {
            let uid = OrderUid::parse(headers.get("Nats-Msg-Id")?.as_str()).ok()?;
            let document = std::str::from_utf8(payload).ok()?.to_owned();
            Some(Read::Orders(vec![(uid, document)]))
        }
    }
}

/// The orders a changelog message carries, whoever published it (for erasure, which looks for
/// every copy).
pub(super) fn carried_orders(headers: &HeaderMap, payload: &[u8]) -> Vec<(OrderUid, String)> {
    match read_message(headers, payload, "") {
        Some(Read::Orders(orders)) => orders,
        Some(Read::Erase(_)) | None => Vec::new(),
    }
}

/// Erased ids in payloads of at most `limit` bytes each, one id per line.
pub(super) fn pack_erase(uids: &[OrderUid], limit: usize) -> Vec<Bytes> {
    let mut payloads = Vec::new();
    let mut current = BytesMut::new();
    for uid in uids {
        if !current.is_empty() && current.len() + 1 + uid.as_str().len() > limit {
            payloads.push(std::mem::take(&mut current).freeze());
        }
        if !current.is_empty() {
            current.put_u8(b'\n');
        }
        current.put_slice(uid.as_str().as_bytes());
    }
    if !current.is_empty() {
        payloads.push(current.freeze());
    }
    payloads
}

/// A name for this process's changelog messages: 64 random bits (std's `RandomState` is seeded
/// from the OS for each new one), in hex.
pub(super) fn new_origin() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{random:016x}")
}

/// Frames orders into payloads of at most `limit` bytes each, in order. An order whose frame
/// alone is larger goes alone (the server then refuses it, and the fan-out says why); ingest
/// accepts no such order (`bus::PAYLOAD_ROOM`).
pub(super) fn pack(orders: &[(OrderUid, String)], limit: usize) -> Vec<Bytes> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
            &"x".repeat(crate::bus::MAX_DOCUMENT),
        );
        let limit = crate::bus::MAX_PAYLOAD - HEADER_ROOM;
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
        let read = |headers: &HeaderMap, payload: &[u8], origin: &str| match read_message(
            headers, payload, origin,
        ) {
            Some(Read::Orders(orders)) => Some(orders),
            Some(Read::Erase(uids)) => panic!("read as an erasure of {uids:?}"),
            None => None,
        };
        assert_eq!(read(&packed, &payload, "me"), Some(orders.clone()));
        // Its own messages: this process's ingest handed their orders to its cache already.
        packed.insert(ORIGIN_HEADER, "me");
        assert_eq!(read(&packed, &payload, "me"), Some(vec![]));
        assert_eq!(read(&packed, &payload, "other"), Some(orders.clone()));
        // Erasure looks for every copy, its own process's too.
        assert_eq!(carried_orders(&packed, &payload), orders);

        let mut earlier = HeaderMap::new();
        earlier.insert("Nats-Msg-Id", "a");
        assert_eq!(read(&earlier, b"{}", "me"), Some(vec![order("a", "{}")]));
        // Neither form: not a changelog message.
        assert_eq!(read(&HeaderMap::new(), b"{}", "me"), None);
        let mut unknown = HeaderMap::new();
        unknown.insert(FORMAT_HEADER, "orders-v9");
        assert_eq!(read_message(&unknown, &payload, "me"), None);
        assert_ne!(new_origin(), new_origin());
    }

    #[test]
    fn an_erasure_notice_names_its_ids_in_messages_within_the_limit() {
        let uids: Vec<OrderUid> = ["a1", "b22", "c333"]
            .iter()
            .map(|id| OrderUid::parse(id).expect("valid"))
            .collect();
        let payloads = pack_erase(&uids, 7);
        assert_eq!(payloads, [Bytes::from("a1\nb22"), Bytes::from("c333")]);
        let mut notice = HeaderMap::new();
        notice.insert(FORMAT_HEADER, ERASE_FORMAT);
        let read: Vec<OrderUid> = payloads
            .iter()
            .flat_map(|p| match read_message(&notice, p, "me") {
                Some(Read::Erase(uids)) => uids,
                other => panic!("not read as an erasure: {other:?}"),
            })
            .collect();
        assert_eq!(read, uids);
        assert!(carried_orders(&notice, &payloads[0]).is_empty());
        // An id that breaks the rule makes the notice unreadable, not a partial erasure.
        assert_eq!(read_message(&notice, b"a1\nno way", "me"), None);
    }
}
