//! `ordersvc replay-from-db`: a lost stream is rebuilt from PostgreSQL, and a second service fed
//! from it serves the same orders byte for byte; a resumed run adds nothing the server keeps.

use std::process::Command;

use crate::support::commands::run_successfully;
use crate::support::orders::{generated_orders, testdata};
use crate::support::postgres::with_database;
use crate::support::service::{spawn_app, TestApp};

/// `ordersvc replay-from-db` reading `source`'s database and publishing to `target`'s stream.
fn replay_command(source: &TestApp, target: &TestApp, extra: &[&str]) -> Command {
    replay_command_from(&source.database_url, target, extra)
}

/// `ordersvc replay-from-db` reading the database at `database_url`, publishing to `target`'s stream.
fn replay_command_from(database_url: &str, target: &TestApp, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ordersvc"));
    command
        .arg("replay-from-db")
        .args(["--database-url", database_url])
        .args(["--nats-url", &target.nats_url])
        .args(["--stream", &target.names.stream])
        .args(["--subject", &target.names.subject])
        .args(extra);
    command
}

/// Runs a replay that must succeed and returns its report.
fn replay(source: &TestApp, target: &TestApp, extra: &[&str]) -> String {
    run_successfully(replay_command(source, target, extra), b"")
}

fn stored_orders(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let mut orders = generated_orders("replayed", 40);
    orders.push((
        "multi-item-order-0001".into(),
        testdata("valid/multi-item.json"),
    ));
    orders.push(("unicode-order-0001".into(), testdata("valid/unicode.json")));
    for (_, message) in &orders {
        app.publish(message);
    }
    for (uid, _) in &orders {
        app.wait_for_order(uid);
    }
    orders
}

#[test]
fn a_lost_stream_is_rebuilt_from_postgres_and_a_fresh_service_serves_the_same_orders() {
    // Arrange: orders stored by one service, whose stream is then lost.
    let source = spawn_app();
    let orders = stored_orders(&source);
    source.delete_stream();
    let target = spawn_app();

    // Act
    let report = replay(&source, &target, &[]);

    // Assert: everything published once, and served by the second service byte for byte.
    assert!(
        report.contains(&format!(
            "published {}, duplicates dropped by the server 0, failed 0",
            orders.len()
        )),
        "{report}"
    );
    for (uid, message) in &orders {
        assert_eq!(&target.wait_for_order(uid), message, "{uid}");
    }
    target.wait_until_drained();
    assert_eq!(target.orders_count(), orders.len() as i64);
    assert!(target.rejected().is_empty(), "{:?}", target.rejected());
}

#[test]
fn a_resumed_replay_publishes_nothing_twice_that_the_server_keeps() {
    // Arrange: a first run has already published everything (as an interrupted run did up to a point).
    let source = spawn_app();
    let orders = stored_orders(&source);
    let target = spawn_app();
    replay(&source, &target, &[]);
    let kept = target.stream_messages();

    // Act: resume after the tenth order in creation order, as an interrupted run would.
    let mut in_order: Vec<&String> = orders.iter().map(|(uid, _)| uid).collect();
    in_order.sort(); // same date_created everywhere: creation order is order_uid order
    let after = in_order[9];
    let report = replay(&source, &target, &["--after", after]);

    // Assert: the rest was offered again and dropped as duplicates; the stream kept nothing new.
    let rest = orders.len() - 10;
    assert!(
        report.contains(&format!(
            "published 0, duplicates dropped by the server {rest}, failed 0"
        )),
        "{report}"
    );
    assert_eq!(target.stream_messages(), kept);
    assert_eq!(kept, orders.len() as u64);
}

#[test]
fn a_dry_run_revalidates_every_stored_order_and_publishes_nothing() {
    let source = spawn_app();
    let orders = stored_orders(&source);
    let target = spawn_app();
    let report = replay(&source, &target, &["--dry-run"]);
    assert!(
        report.contains(&format!("read {} orders", orders.len())),
        "{report}"
    );
    assert!(report.contains("0 no longer valid"), "{report}");
    assert_eq!(target.stream_messages(), 0);
}

#[test]
fn replaying_after_an_unknown_order_fails_clearly() {
    let source = spawn_app();
    let command = replay_command(&source, &source, &["--after", "no-such-order"]);
    let output = source.run(command, b"");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no such order is stored"), "{stderr}");
}

#[test]
fn replaying_from_a_database_that_does_not_exist_fails_and_creates_nothing() {
    // Arrange: a mistyped database name on a server that is up.
    let source = spawn_app();
    let missing = format!("ordersvc_test_{}_mistyped", source.names.suffix);
    let missing_url = with_database(&source.database_url, &missing);
    let exists = |app: &TestApp| {
        app.query_i64(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{missing}'"
        )) > 0
    };

    for extra in [&[][..], &["--dry-run"][..]] {
        // Act
        let output = source.run(replay_command_from(&missing_url, &source, extra), b"");

        // Assert: a clear failure naming the database, which is still not there.
        let created = exists(&source);
        if created {
            source.execute_as_owner(&format!("DROP DATABASE \"{missing}\" WITH (FORCE)"));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{extra:?}: it succeeded: {}{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(stderr.contains(&missing), "{extra:?}: {stderr}");
        assert!(!created, "{extra:?}: replay-from-db created {missing}");
    }
}
