//! The lag gauges come from the servers' own state, polled: while ingest is stalled (PostgreSQL
//! unreachable through the test proxy) with messages waiting, `ordersvc_consumer_pending_messages`
//! rises to what waits, though no message is received; once PostgreSQL is back, it falls to 0.
//! The time of the last commit stops while nothing commits.

use crate::support::orders::{generated_orders, with_ids};
use crate::support::service::{spawn_app_behind_proxy, Runs, Server};

#[test]
fn the_consumer_lag_rises_while_ingest_is_stalled_and_falls_once_it_drains() {
    // Arrange: one order stored, so that the last commit's time is set; then PostgreSQL cut.
    let (db, app) = spawn_app_behind_proxy(Server::Postgres, Runs::InProcess);
    let first = generated_orders("lag-first", 1);
    app.publish_many(with_ids(&first));
    app.wait_for_order(&first[0].0);
    // Served can come a moment before the commit's time is recorded (a miss reads the committed
    // order from PostgreSQL).
    app.wait_until(
        |app| app.metric("ordersvc_last_commit_timestamp_seconds") > 0.0,
        "the commit's time to be recorded",
    );
    let committed_at = app.metric("ordersvc_last_commit_timestamp_seconds");
    db.cut();
    app.wait_until_unready("PostgreSQL is unreachable");

    // Act: 500 orders wait in the stream while nothing can be committed.
    let waiting = generated_orders("lag-waiting", 500);
    app.publish_many(with_ids(&waiting));

    // Assert: the gauge counts what waits or is held unacked, from the consumer's own state.
    app.wait_until(
        |app| {
            app.metric("ordersvc_consumer_pending_messages")
                + app.metric("ordersvc_consumer_ack_pending_messages")
                >= 500.0
        },
        "the lag gauges to count the 500 waiting orders",
    );
    assert_eq!(
        app.metric("ordersvc_last_commit_timestamp_seconds"),
        committed_at,
        "a commit while PostgreSQL was unreachable?"
    );

    // Act: PostgreSQL returns.
    db.restore();

    // Assert: drained, and the gauges say so.
    app.wait_until_drained();
    app.wait_until(
        |app| {
            app.metric("ordersvc_consumer_pending_messages") == 0.0
                && app.metric("ordersvc_consumer_ack_pending_messages") == 0.0
        },
        "the lag gauges to fall to 0",
    );
    assert!(app.metric("ordersvc_last_commit_timestamp_seconds") > committed_at);
    assert_eq!(app.metric("ordersvc_changelog_lag_messages"), 0.0);
}
