//! Bad messages: each is recorded with its reason and raw bytes, acked, and blocks nothing.

use crate::support::orders::testdata;
use crate::support::service::spawn_app;

/// A bad message and what the service must record for it.
struct Bad {
    what: String,
    payload: Vec<u8>,
    kind: &'static str,
    /// The field path the reason must name (`payload` for the message as a whole).
    path: &'static str,
}

fn bad(what: &str, payload: Vec<u8>, kind: &'static str, path: &'static str) -> Bad {
    Bad {
        what: what.to_owned(),
        payload,
        kind,
        path,
    }
}

/// testdata/model.json as a JSON value, to break one field of.
fn model() -> serde_json::Value {
    serde_json::from_slice(&testdata("model.json")).expect("model.json is JSON")
}

fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialisable")
}

fn every_kind_of_bad_message() -> Vec<Bad> {
    let mut all: Vec<Bad> = [
        ("not-utf8.bin", "not_utf8", "payload"),
        ("not-json.txt", "bad_json", "payload"),
        ("truncated.json", "bad_json", "payload"),
        ("not-object.json", "not_object", "payload"),
        ("deeply-nested.json", "too_deep", "payload"),
        ("missing-field.json", "missing_field", "payment.amount"),
        ("wrong-type.json", "wrong_type", "payment.amount"),
        ("negative-amount.json", "invalid_value", "payment.amount"),
        ("bad-uid.json", "invalid_value", "order_uid"),
        ("bad-date.json", "invalid_value", "date_created"),
        ("empty-items.json", "invalid_value", "items"),
    ]
    .into_iter()
    .map(|(file, kind, path)| bad(file, testdata(&format!("invalid/{file}")), kind, path))
    .collect();

    let model_bytes = testdata("model.json");
    let mut missing = model();
    missing["delivery"]
        .as_object_mut()
        .expect("delivery is an object")
        .remove("email");
    let mut mistyped = model();
    mistyped["sm_id"] = "99".into();
    let mut bad_uid = model();
    bad_uid["order_uid"] = "no/slashes/please".into();
    let mut bad_date = model();
    bad_date["date_created"] = "26.11.2021 06:22".into();
    let mut huge = model();
    huge["order_uid"] = "x".repeat(600_000).into();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();

    all.extend([
        bad(
            "inline non-UTF-8",
            b"{\"a\": \"\xff\xfe\"}".to_vec(),
            "not_utf8",
            "payload",
        ),
        bad(
            "inline non-JSON",
            b"hello, orders".to_vec(),
            "bad_json",
            "payload",
        ),
        bad(
            "inline array",
            b"[1, 2, 3]".to_vec(),
            "not_object",
            "payload",
        ),
        bad(
            "inline truncated",
            model_bytes[..model_bytes.len() / 2].to_vec(),
            "bad_json",
            "payload",
        ),
        bad("inline 10,000 levels deep", deep, "too_deep", "payload"),
        bad(
            "inline missing delivery.email",
            to_bytes(&missing),
            "missing_field",
            "delivery.email",
        ),
        bad(
            "inline sm_id as a string",
            to_bytes(&mistyped),
            "wrong_type",
            "sm_id",
        ),
        bad(
            "inline bad order_uid",
            to_bytes(&bad_uid),
            "invalid_value",
            "order_uid",
        ),
        bad(
            "inline bad date_created",
            to_bytes(&bad_date),
            "invalid_value",
            "date_created",
        ),
        bad("empty payload", Vec::new(), "bad_json", "payload"),
        bad("null", b"null".to_vec(), "not_object", "payload"),
        bad(
            "a 600 kB order_uid",
            to_bytes(&huge),
            "invalid_value",
            "order_uid",
        ),
    ]);
    all
}

#[test]
fn each_kind_of_bad_message_is_recorded_with_its_reason_and_does_not_block_the_next() {
    // Arrange
    let app = spawn_app();
    let bad_messages = every_kind_of_bad_message();
    let valid = testdata("valid/multi-item.json");

    // Act
    let sequences: Vec<u64> = bad_messages
        .iter()
        .map(|m| app.publish(&m.payload).sequence)
        .collect();
    app.publish(&valid);

    // Assert
    assert_eq!(app.wait_for_order("multi-item-order-0001"), valid);
    app.wait_until_drained();
    assert_eq!(app.orders_count(), 1, "only the valid order is stored");
    let rejected = app.rejected();
    assert_eq!(
        rejected.len(),
        bad_messages.len(),
        "one rejection per bad message: {:?}",
        rejected
            .iter()
            .map(|r| (r.stream_seq, &r.kind, &r.reason))
            .collect::<Vec<_>>()
    );
    for (message, seq) in bad_messages.iter().zip(sequences) {
        let what = &message.what;
        let row = rejected
            .iter()
            .find(|r| r.stream_seq == seq as i64)
            .unwrap_or_else(|| panic!("{what} (stream sequence {seq}) was not recorded"));
        assert_eq!(row.kind, message.kind, "{what}: {}", row.reason);
        assert!(
            row.reason.starts_with(&format!("{}: ", message.path)),
            "{what}: the reason {:?} does not name {}",
            row.reason,
            message.path
        );
        assert!(
            row.payload == message.payload,
            "{what}: the stored payload differs from the message ({} bytes stored, {} sent)",
            row.payload.len(),
            message.payload.len()
        );
    }
    let consumer = app.consumer_info();
    assert_eq!(
        (consumer.num_pending, consumer.num_ack_pending),
        (0, 0),
        "pending, unacked"
    );
}
