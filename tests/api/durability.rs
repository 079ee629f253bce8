//! Ack only after commit: while PostgreSQL refuses the batch, nothing is acked or served, and
//! once it accepts again every message is stored exactly once.

use std::time::{Duration, Instant};

use crate::support::orders::{generated_orders, model_with_uid};
use crate::support::service::spawn_app;

/// How long the failing store is watched for anything being acked or served.
const WATCH: Duration = Duration::from_secs(4);

#[test]
fn a_batch_is_acked_only_after_it_is_committed() {
    // Arrange: commits fail while the orders table is away.
    let app = spawn_app();
    app.execute_as_owner("ALTER TABLE orders RENAME TO orders_away");
    let orders = generated_orders("acked-after-commit", 5);

    // Act
    for (_, message) in &orders {
        app.publish(message);
    }

    // Assert: not served, not acked, and not ready, for as long as the store fails.
    app.wait_until(
        |app| app.get("/readyz").0 == 503,
        "/readyz to answer 503 while batches cannot be committed",
    );
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        for (uid, _) in &orders {
            // Not found, or 503 because the lookup in PostgreSQL fails as well: never a 200.
            let (status, _, _) = app.get(&format!("/order/{uid}"));
            assert!(
                status == 404 || status == 503,
                "{uid} answered {status} although it was never committed"
            );
        }
        let consumer = app.consumer_info();
        assert_eq!(
            consumer.ack_floor.stream_sequence, 0,
            "a message was acked although its batch was never committed"
        );
        assert_eq!(
            consumer.num_pending + consumer.num_ack_pending as u64,
            orders.len() as u64,
            "every message is either waiting or delivered and unacked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Act: the store accepts again.
    app.execute_as_owner("ALTER TABLE orders_away RENAME TO orders");

    // Assert: everything arrives, once.
    for (uid, message) in &orders {
        let mut served = None;
        app.wait_until(
            |app| {
                let (status, _, body) = app.get(&format!("/order/{uid}"));
                if status == 200 {
                    served = Some(body);
                }
                status == 200
            },
            &format!("{uid} to be served once the store accepts writes again"),
        );
        assert_eq!(served.as_ref(), Some(message), "{uid}");
    }
    app.wait_until_drained();
    assert_eq!(app.orders_count(), orders.len() as i64);
    assert!(app.rejected().is_empty(), "{:?}", app.rejected());
    app.wait_until(
        |app| app.get("/readyz").0 == 200,
        "/readyz to answer 200 again",
    );
}

#[test]
fn readyz_stays_503_for_as_long_as_batches_cannot_be_committed() {
    // Arrange: every commit fails while the orders table is away.
    let app = spawn_app();
    app.execute_as_owner("ALTER TABLE orders RENAME TO orders_away");
    app.publish(&model_with_uid("never-committed"));
    app.wait_until(
        |app| app.get("/readyz").0 == 503,
        "/readyz to answer 503 while batches cannot be committed",
    );

    // Act: sample readiness while the store keeps failing.
    let mut answers = Vec::new();
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        answers.push(app.get("/readyz").0);
        std::thread::sleep(Duration::from_millis(50));
    }

    // Assert
    // The lookup in PostgreSQL fails too (its table is away): 503, not a false 404.
    assert_eq!(app.get("/order/never-committed").0, 503);
    let ready = answers.iter().filter(|&&status| status == 200).count();
    assert_eq!(
        ready,
        0,
        "/readyz answered 200 in {ready} of {} samples while no batch could be committed",
        answers.len()
    );
}
