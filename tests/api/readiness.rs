//! `/readyz` tells the whole truth, in one JSON shape on 200 and 503: it turns 503 with the
//! reason when PostgreSQL goes away or ingest cannot subscribe, and 200 again when they recover.
//! And a stop requested during the cache restore is honoured, within the stop budget.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ordersvc_client::child::{OnDrop, ServeProcess, Stopped};

use crate::support::orders::{generated_orders, model_with_uid, with_ids};
use crate::support::postgres::OrdersLocked;
use crate::support::service::{spawn_app, spawn_app_behind_proxy, Runs, Server, TestApp};

/// How long anything here may take before the test gives up (generous: a slow machine is no bug).
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn readyz_counts_the_cached_orders_and_healthz_answers_while_alive() {
    // Arrange
    let app = spawn_app();
    let orders = generated_orders("ready", 3);
    app.publish_many(with_ids(&orders));
    for (uid, _) in &orders {
        app.wait_for_order(uid);
    }

    // Act
    let (health, _, health_body) = app.get("/healthz");
    let (_, _, ready_body) = app.get("/readyz");

    // Assert
    assert_eq!(health, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&health_body).expect("JSON"),
        serde_json::json!({ "status": "ok" })
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ready_body).expect("JSON"),
        serde_json::json!({ "status": "ready", "orders": 3, "reasons": [] })
    );
}

#[test]
fn readyz_turns_503_with_the_reason_when_postgres_goes_away_on_an_idle_service_and_200_when_it_returns(
) {
    // Arrange: an idle service that reaches PostgreSQL only through the proxy.
    let (db, app) = spawn_app_behind_proxy(Server::Postgres, Runs::InProcess);
    assert_eq!(app.readiness().0, 200);

    // Act: PostgreSQL goes away, and nothing is being ingested to notice it.
    db.cut();
    let cut = Instant::now();
    let reasons = app.wait_until_unready("PostgreSQL is away");
    // Not asserted (timing on a shared machine is no test), but shown: the monitor's own
    // bounded probe, not the pool's 5 s acquire timeout, is what notices it.
    eprintln!("/readyz answered 503 {:?} after the cut", cut.elapsed());

    // Assert: the reason names PostgreSQL, and it stays so for as long as the outage lasts.
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("PostgreSQL unavailable")),
        "{reasons:?}"
    );
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(app.readiness().0, 503, "/readyz during the outage");
    }

    // Act + Assert: PostgreSQL comes back, and so does readiness.
    db.restore();
    app.wait_until(
        |app| app.readiness().0 == 200,
        "/readyz to answer 200 again",
    );
}

#[test]
fn readyz_stays_503_while_ingest_cannot_subscribe_and_recovers_when_it_can() {
    // Arrange: the service's stream is deleted and another stream takes its subject, so that
    // ingest can neither consume nor recreate it, while the NATS connection itself is fine.
    let app = spawn_app();
    app.delete_stream();
    let blocker = app.take_subject_with_another_stream(&app.names.subject);

    // Act + Assert: not ready, with the reason, on every sample (the monitor that sees the
    // connection up must not overwrite ingest's news).
    let reasons = app.wait_until_unready("ingest cannot subscribe");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("cannot consume the stream")),
        "{reasons:?}"
    );
    let samples: Vec<u16> = (0..12)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(500));
            app.readiness().0
        })
        .collect();
    assert!(
        samples.iter().all(|&status| status == 503),
        "/readyz while ingest cannot subscribe: {samples:?}"
    );

    // Act: the subject is free again.
    app.delete_other_stream(&blocker);

    // Assert: ingest recreates its stream, subscribes, and serves what is published.
    app.wait_until(
        |app| app.readiness().0 == 200,
        "/readyz to answer 200 again",
    );
    app.wait_until(
        |app| app.consumer_info().config.durable_name.is_some(),
        "the consumer to exist again",
    );
    app.publish_many(with_ids(&[(
        "after-blocker".to_owned(),
        model_with_uid("after-blocker"),
    )]));
    app.wait_for_order("after-blocker");
}

#[test]
fn sigterm_during_the_cache_restore_stops_the_service_cleanly() {
    // Arrange: a database and stream set up by a first run, then locked so that the next
    // run's restore waits.
    let mut app = spawn_app();
    app.stop();
    let lock = OrdersLocked::take(&app.database_url);

    let mut command = app.serve_command(&["--shutdown-timeout", "5s"]);
    command.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child =
        ServeProcess::spawn(&mut command, OnDrop::Kill).expect("cannot start the ordersvc binary");
    wait_for(
        || app.query_i64(&waiting_on_the_lock(&app)) > 0,
        "the restore to wait on the table lock",
    );

    // Act
    let asked = Instant::now();
    let stopped = child.terminate(DEADLINE).expect("cannot stop the service");

    // Assert: a clean stop, while the restore was still waiting.
    let Stopped::Exited(status) = stopped else {
        panic!("the service did not stop within {DEADLINE:?} of SIGTERM during its restore");
    };
    // (PostgreSQL keeps the abandoned query waiting until the lock is freed: it learns that its
    // client is gone only when it next writes to it.)
    assert!(status.success(), "exit status {status}");
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    drop(lock);
}

/// Counts the test database's sessions that wait on a lock, except the test's own.
fn waiting_on_the_lock(app: &TestApp) -> String {
    format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'ordersvc_test_{}' \
         AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
        app.names.suffix
    )
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
