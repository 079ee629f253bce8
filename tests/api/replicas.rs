//! Several replicas of one service (the same stream and durable consumer) share the ingest work,
//! and every replica serves every stored order: each commits its share, publishes it to the
//! service's changelog before acking, and follows the changelog into its cache.

use std::time::{Duration, Instant};

use crate::support::http::{cached_orders, stored_here, Reply};
use crate::support::orders::{generated_orders, with_ids};
use crate::support::service::{spawn_app, spawn_child_app, Runs};

/// How long a replica may take to hold every order in memory.
const EVENTUALLY: Duration = Duration::from_secs(60);

/// One replica, as far as these tests look at it: its answer to a GET.
type Get<'a> = &'a dyn Fn(&str) -> Reply;

/// `/readyz`'s count of orders in a replica's cache.
fn cached(get: Get) -> u64 {
    cached_orders(&get("/readyz"))
}

/// New orders a replica stored itself (`get` on its admin listener).
fn stored_by(get: Get) -> f64 {
    stored_here(&get("/metrics"))
}

#[test]
fn two_replicas_share_the_ingest_and_each_serves_every_order_from_memory() {
    // Arrange: replica A (the test app) and replica B on the same stream, durable and database.
    let app = spawn_app();
    let second = app.spawn_replica(Runs::InProcess, &[]);
    let a: Get = &|path| app.get(path);
    let b: Get = &|path| second.get(path);
    let (a_admin, b_admin): (Get, Get) =
        (&|path| app.admin_get(path), &|path| second.admin_get(path));
    let orders = generated_orders(&format!("rep-{}", app.names.suffix), 2_000);

    // Act
    app.publish_many(with_ids(&orders));
    app.wait_until(|app| app.orders_count() == 2_000, "2,000 orders stored");

    // Assert: each replica holds all 2,000 in memory, so what the other stored came through the
    // changelog (a miss would also be answered, from PostgreSQL, and prove nothing) ...
    let deadline = Instant::now() + EVENTUALLY;
    for (name, get) in [("A", a), ("B", b)] {
        while cached(get) < 2_000 {
            assert!(
                Instant::now() < deadline,
                "replica {name} holds only {} of 2,000 orders in memory",
                cached(get)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // ... both stored a share, once in all (the consumer really was shared; a replica counts a
    // batch once it is fanned out and acked, which a follower may beat by a moment) ...
    let deadline = Instant::now() + EVENTUALLY;
    while stored_by(a_admin) + stored_by(b_admin) < 2_000.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (by_a, by_b) = (stored_by(a_admin), stored_by(b_admin));
    assert!(by_a > 0.0 && by_b > 0.0, "A stored {by_a}, B stored {by_b}");
    assert_eq!(by_a + by_b, 2_000.0);
    // ... and each serves every order byte for byte, ready for reads.
    for (name, get) in [("A", a), ("B", b)] {
        for (uid, order) in &orders {
            let (status, _, body) = get(&format!("/order/{uid}"));
            assert_eq!(status, 200, "replica {name}, {uid}");
            assert_eq!(&body, order, "replica {name}, {uid}");
        }
        for path in ["/readyz", "/readyz/reads"] {
            assert_eq!(get(path).0, 200, "replica {name} {path}");
        }
    }
}

/// Waits until `get`'s cache holds `n` orders.
#[track_caller]
fn wait_until_cached(name: &str, get: Get, n: u64) {
    let deadline = Instant::now() + EVENTUALLY;
    while cached(get) < n {
        assert!(
            Instant::now() < deadline,
            "replica {name} holds only {} of {n} orders in memory",
            cached(get)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replica_whose_changelog_was_recreated_restores_afresh_and_ends_complete() {
    // Arrange: two replicas in step, then the changelog is deleted under them, so that what they
    // follow from no longer exists (the stream comes back empty, its sequences from 1).
    let app = spawn_child_app();
    let second = app.spawn_replica(Runs::Child, &[]);
    let (a, b): (Get, Get) = (&|path| app.get(path), &|path| second.get(path));
    let before = generated_orders(&format!("gap-a-{}", app.names.suffix), 300);
    app.publish_many(with_ids(&before));
    wait_until_cached("A", a, 300);
    wait_until_cached("B", b, 300);
    app.delete_changelog();

    // Act: more orders, which reach the other replica only through the recreated changelog.
    let after = generated_orders(&format!("gap-b-{}", app.names.suffix), 300);
    app.publish_many(with_ids(&after));
    app.wait_until(|app| app.orders_count() == 600, "600 orders stored");

    // Assert: each replica saw the gap, restored afresh, and holds and serves all 600. It holds
    // most of them before the restore afresh ends (what it held before the gap stays), so the
    // end is what /readyz/reads says.
    for (name, get) in [("A", a), ("B", b)] {
        wait_until_cached(name, get, 600);
        let deadline = Instant::now() + EVENTUALLY;
        while get("/readyz/reads").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "replica {name} is not ready for reads"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let logs = if name == "A" {
            app.logs()
        } else {
            second.logs()
        };
        assert!(
            logs_say_restored_afresh(&logs),
            "replica {name} never restored afresh"
        );
        for (uid, order) in before.iter().chain(&after) {
            let (status, _, body) = get(&format!("/order/{uid}"));
            assert_eq!((status, &body), (200, order), "replica {name}, {uid}");
        }
    }
}

fn logs_say_restored_afresh(logs: &[String]) -> bool {
    logs.iter()
        .any(|line| line.contains("restoring the cache afresh"))
}

#[test]
fn orders_of_a_replica_that_died_between_commit_and_fan_out_reach_every_other_replica() {
    // Arrange: replicas A and C, and B, which aborts right after its first commit, before it
    // publishes to the changelog or acks (a test hook).
    let app = spawn_app();
    let third = app.spawn_replica(Runs::InProcess, &[]);
    let mut doomed = app.serve_command::<&str>(&[]);
    doomed
        .env("ORDERSVC_TEST_ABORT_BEFORE_FANOUT", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut doomed = doomed.spawn().expect("cannot start replica B");
    let (a, c): (Get, Get) = (&|path| app.get(path), &|path| third.get(path));
    // B must be consuming before the orders come, so that it pulls a batch of them.
    app.wait_until(
        |app| app.consumer_info().num_waiting >= 3,
        "three replicas pulling from the consumer",
    );
    let orders = generated_orders(&format!("abort-{}", app.names.suffix), 2_000);

    // Act
    app.publish_many(with_ids(&orders));
    let status = doomed.wait().expect("replica B ends");

    // Assert: B died of its hook; its batch is stored, and it reaches A and C anyway (once
    // redelivered after the ack wait, whoever gets it finds it stored, fans it out, then acks).
    assert!(!status.success(), "replica B did not abort: {status}");
    app.wait_until(|app| app.orders_count() == 2_000, "2,000 orders stored");
    wait_until_cached("A", a, 2_000);
    wait_until_cached("C", c, 2_000);
    for (name, get) in [("A", a), ("C", c)] {
        for (uid, order) in &orders {
            let (status, _, body) = get(&format!("/order/{uid}"));
            assert_eq!((status, &body), (200, order), "replica {name}, {uid}");
        }
    }
}

#[test]
fn a_replica_behind_a_purge_of_the_changelog_restores_afresh_and_ends_complete() {
    // Arrange: replica B frozen (SIGSTOP) while A stores orders and fans them out, then the
    // changelog is purged: what B needs next is gone.
    let app = spawn_app();
    let second = app.spawn_replica(Runs::Child, &[]);
    let (a, b): (Get, Get) = (&|path| app.get(path), &|path| second.get(path));
    second.signal("STOP");
    // Far more than B's pulls can hold: the follower asks for 2 MiB at a time and asks again at
    // half of that, so at most 3 MiB of the changelog is on its way to B while it is frozen. Of
    // these ~9 MB (1.1 KB an order), the rest can only come from the changelog, which the purge
    // empties.
    let orders = generated_orders(&format!("purge-{}", app.names.suffix), 8_000);
    app.publish_many(with_ids(&orders));
    // A alone is pulling: it stores them all and publishes them to the changelog (any that B
    // pulled before it froze come back to A after the ack wait of 30 s).
    app.wait_until(|app| app.orders_count() == 8_000, "8,000 orders stored");
    wait_until_cached("A", a, 8_000);
    app.purge_changelog();

    // Act
    second.signal("CONT");

    // Assert: B finds the gap, restores afresh, and holds and serves every order.
    wait_until_cached("B", b, 8_000);
    assert!(
        logs_say_restored_afresh(&second.logs()),
        "replica B never restored afresh"
    );
    for (uid, order) in &orders {
        let (status, _, body) = b(&format!("/order/{uid}"));
        assert_eq!((status, &body), (200, order), "replica B, {uid}");
    }
    assert_eq!(b("/readyz/reads").0, 200);
}
