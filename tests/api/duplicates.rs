//! Idempotent storage: repeats are stored once; a conflicting repeat never replaces an order.

use crate::support::orders::testdata;
use crate::support::service::spawn_app;

#[test]
fn the_same_order_published_three_times_is_stored_once() {
    // Arrange
    let app = spawn_app();
    let message = testdata("model.json");

    // Act: no Nats-Msg-Id, so JetStream keeps all three and only the service can dedupe.
    let acks: Vec<_> = (0..3).map(|_| app.publish(&message)).collect();

    // Assert
    assert!(
        acks.iter().all(|ack| !ack.duplicate),
        "the server must not have deduplicated: {acks:?}"
    );
    assert_eq!(app.wait_for_order("b563feb7b2b84b6test"), message);
    app.wait_until_drained();
    assert_eq!(app.orders_count(), 1);
    assert!(
        app.rejected().is_empty(),
        "a same-content repeat is not a rejection: {:?}",
        app.rejected()
    );
}

#[test]
fn a_conflicting_duplicate_keeps_the_first_order_and_is_rejected() {
    // Arrange
    let app = spawn_app();
    let first = testdata("model.json");
    let second = String::from_utf8(first.clone())
        .expect("model.json is UTF-8")
        .replacen(
            r#""customer_id": "test""#,
            r#""customer_id": "someone-else""#,
            1,
        )
        .into_bytes();
    assert_ne!(first, second);

    // Act
    app.publish(&first);
    let conflicting = app.publish(&second);
    app.wait_until_drained();

    // Assert
    assert_eq!(app.wait_for_order("b563feb7b2b84b6test"), first);
    assert_eq!(app.orders_count(), 1);
    let rejected = app.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let row = &rejected[0];
    assert_eq!(row.stream_seq, conflicting.sequence as i64);
    assert_eq!(row.kind, "conflicting_duplicate");
    assert_eq!(row.reason, "conflicting duplicate");
    assert_eq!(row.payload, second);
}
