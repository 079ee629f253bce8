//! Ingest's stages overlap (while one batch commits, the next is pulled and parsed, and the one
//! before is fanned out and acked), and every batch is still acked only after its own commit.

use std::time::{Duration, Instant};

use crate::support::orders::generated_orders;
use crate::support::service::{spawn_app_with, spawn_child_app_with, TestApp};

/// How long the failing store is watched for anything being acked.
const WATCH: Duration = Duration::from_secs(3);

/// With the orders table away and one message per batch, publishes two orders and waits until
/// the batch behind the failing one has been pulled and parsed: two batches in flight while
/// nothing is acked.
fn two_batches_in_flight(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    app.execute_as_owner("ALTER TABLE orders RENAME TO orders_away");
    for (_, message) in orders {
        app.publish(message);
    }
    app.wait_until(
        |app| app.metric("ordersvc_ingest_batches_in_flight") == 2.0,
        "the second batch to be parsed while the first cannot be committed",
    );
    assert_eq!(app.consumer_info().ack_floor.stream_sequence, 0);
}

#[test]
fn a_batch_parsed_behind_one_whose_commit_fails_is_not_acked_until_both_are_committed() {
    // Arrange: two batches of one order each; the first fails to commit, the second is parsed.
    let app = spawn_app_with(&["--batch-size", "1"]);
    let orders = generated_orders("pipelined", 2);
    two_batches_in_flight(&app, &orders);

    // Assert: neither is acked or served for as long as the store fails.
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        let consumer = app.consumer_info();
        assert_eq!(
            consumer.ack_floor.stream_sequence, 0,
            "acked before its commit"
        );
        assert_eq!(consumer.num_ack_pending, 2, "both delivered and held");
        for (uid, _) in &orders {
            assert_ne!(app.get(&format!("/order/{uid}")).0, 200, "{uid} served");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Act: the store accepts again.
    app.execute_as_owner("ALTER TABLE orders_away RENAME TO orders");

    // Assert: both stored once, served, and acked.
    for (uid, message) in &orders {
        assert_eq!(&app.wait_for_order(uid), message, "{uid}");
    }
    app.wait_until_drained();
    assert_eq!(app.orders_count(), 2);
    assert_eq!(app.consumer_info().ack_floor.stream_sequence, 2);
    assert_eq!(app.metric("ordersvc_ingest_batches_in_flight"), 0.0);
}

#[test]
fn kill_9_with_two_batches_in_flight_loses_nothing() {
    // Arrange
    let mut app = spawn_child_app_with(&["--batch-size", "1"]);
    let orders = generated_orders("pipelined-kill", 2);
    two_batches_in_flight(&app, &orders);

    // Act: SIGKILL with both in flight, then the store and the service come back.
    app.kill();
    app.execute_as_owner("ALTER TABLE orders_away RENAME TO orders");
    app.restart();

    // Assert
    for (uid, message) in &orders {
        assert_eq!(&app.wait_for_order(uid), message, "{uid}");
    }
    app.wait_until_drained();
    assert_eq!(app.orders_count(), 2);
    assert!(app.rejected().is_empty(), "{:?}", app.rejected());
}
