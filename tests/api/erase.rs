//! `ordersvc erase`: an order's personal data leaves PostgreSQL, both streams, every replica's
//! cache and `rejected_messages`; a tombstone stays, so that the order never comes back (a
//! restart, a republished message, a replay), and a run cut short by a NATS outage is finished
//! by running it again.

use std::time::{Duration, Instant};

use crate::support::commands::{ordersvc, printed, run_successfully, run_to_end, serve_with};
use crate::support::http::cached_orders;
use crate::support::isolation::Names;
use crate::support::nats::{NatsAuth, NatsTls, OwnNats};
use crate::support::orders::{
    assert_every_order_is_served, model_for, replace_once, testdata, Person,
};
use crate::support::postgres::SharedDatabase;
use crate::support::service::{spawn_app, spawn_child_app, Runs, TestApp};

/// The contract: every replica answers 404 within 1 s of `erase` returning. The polls allow more,
/// so that a loaded machine does not fail the test; the time taken is printed.
const ERASED_EVERYWHERE: Duration = Duration::from_secs(5);
/// Between two polls.
const POLL: Duration = Duration::from_millis(20);

/// `ordersvc erase UIDS --reason test` on the test's servers, which must succeed; its report.
fn erase(app: &TestApp, uids: &[&str]) -> String {
    let mut command = app.command(&[&["erase"][..], uids].concat());
    command.args(["--reason", "test"]);
    run_successfully(command, b"")
}

/// Polls `/order/{uid}` until it answers 404 and returns how long after `since` it did; panics
/// after `ERASED_EVERYWHERE`.
#[track_caller]
fn wait_until_gone(name: &str, replica: &TestApp, uid: &str, since: Instant) -> Duration {
    loop {
        let (status, _, body) = replica.get(&format!("/order/{uid}"));
        if status == 404 {
            let took = since.elapsed();
            eprintln!("replica {name}: 404 for the erased order {took:?} after erase returned");
            return took;
        }
        assert!(
            since.elapsed() < ERASED_EVERYWHERE,
            "replica {name} still answers {status} for the erased order {uid} after \
             {ERASED_EVERYWHERE:?}: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(POLL);
    }
}

/// The order_uids that `/orders?customer_id=...` lists on a replica (one page is enough here).
fn listed_for_customer(replica: &TestApp, customer_id: &str) -> Vec<String> {
    let (status, _, body) = replica.get(&format!("/orders?customer_id={customer_id}&limit=100"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("/orders answers JSON");
    json["orders"]
        .as_array()
        .expect("an orders array")
        .iter()
        .map(|order| order["order_uid"].as_str().expect("order_uid").to_owned())
        .collect()
}

/// Messages a replica refused because their order was erased, from its `/metrics`. The label
/// that names why a message was rejected is `reason` on main (the alert rules select on it); the
/// contract writes it as `kind`: either is taken.
fn rejected_as_erased(replica: &TestApp) -> f64 {
    let (status, _, body) = replica.admin_get("/metrics");
    assert_eq!(status, 200);
    String::from_utf8(body)
        .expect("the metrics are UTF-8")
        .lines()
        .filter(|line| {
            line.starts_with("ordersvc_messages_total{")
                && line.contains(r#"outcome="rejected""#)
                && (line.contains(r#"kind="erased""#) || line.contains(r#"reason="erased""#))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Where any of the person's values is still found: every message of the input stream and of
/// the changelog (payload and headers), every column of every table of the database.
fn personal_values_left(app: &TestApp, person: &Person) -> Vec<String> {
    let mut found = Vec::new();
    for stream in [app.names.stream.clone(), app.changelog_stream()] {
        for message in app.stream_contents(&stream) {
            let headers = format!("{:?}", message.headers);
            for (field, value) in person.personal_values() {
                if holds(&message.payload, value) || headers.contains(value) {
                    found.push(format!("{field} in {stream} message {}", message.sequence));
                }
            }
        }
    }
    for (field, value) in person.personal_values() {
        for column in app.columns_containing(value) {
            found.push(format!("{field} in the column {column}"));
        }
    }
    found
}

#[test]
fn an_erased_order_is_gone_from_every_replica_within_a_second_and_never_comes_back() {
    // Arrange: three replicas serving the order; C is a process, so that it can be restarted.
    let app = spawn_app();
    let b = app.spawn_replica(Runs::InProcess, &[]);
    let mut c = app.spawn_replica(Runs::Child, &[]);
    let person = Person::unique();
    let uid = format!("erase-{}", app.names.suffix);
    let order = model_for(&uid, &person);
    let kept_uid = format!("kept-{}", app.names.suffix);
    let kept = model_for(&kept_uid, &Person::unique());
    app.publish_many([
        (Some(uid.as_str()), order.as_slice()),
        (Some(kept_uid.as_str()), kept.as_slice()),
    ]);
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        assert!(replica.wait_for_order(&uid) == order, "replica {name}");
        assert!(replica.wait_for_order(&kept_uid) == kept, "replica {name}");
        assert_eq!(
            listed_for_customer(replica, &person.customer_id),
            [uid.as_str()],
            "replica {name} before the erase"
        );
    }

    // Act
    let report = erase(&app, &[&uid]);
    let returned = Instant::now();

    // Assert: gone from every replica's memory, listings and searches, counted by each.
    eprintln!("erase reported:\n{report}");
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        wait_until_gone(name, replica, &uid, returned);
    }
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        assert!(
            listed_for_customer(replica, &person.customer_id).is_empty(),
            "replica {name} still lists the erased order"
        );
        app.wait_until(
            |_| replica.metric("ordersvc_erased_orders_total") >= 1.0,
            &format!("replica {name} to count the erase notice it applied"),
        );
    }
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE order_uid = '{uid}'"
        )),
        0
    );
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM erased_orders WHERE order_uid = '{uid}' \
             AND reason = 'test' AND completed_at IS NOT NULL"
        )),
        1,
        "the tombstone"
    );

    // Act: a restart restores the cache from PostgreSQL and follows the changelog again.
    c.stop();
    c.restart();

    // Assert
    assert_eq!(
        c.get(&format!("/order/{uid}")).0,
        404,
        "C after its restart"
    );

    // Act: the same message again under a new Nats-Msg-Id, which the server does not drop.
    let again = format!("{uid}-again");
    let sequence = app.publish_many([(Some(again.as_str()), order.as_slice())])[0] as i64;
    app.wait_until(
        |app| app.rejected().iter().any(|row| row.stream_seq == sequence),
        "the republished message of the erased order to be recorded",
    );
    app.wait_until_drained();

    // Assert: refused as erased, with none of its bytes kept, and not stored or served.
    let rejected = app.rejected();
    let row = rejected
        .iter()
        .find(|row| row.stream_seq == sequence)
        .expect("recorded");
    assert_eq!(row.kind, "erased", "{}", row.reason);
    assert_eq!(row.reason, format!("order {uid} was erased"));
    assert!(
        row.payload.is_empty(),
        "{} bytes of the erased order kept",
        row.payload.len()
    );
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE order_uid = '{uid}'"
        )),
        0,
        "the republished order was stored"
    );
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        assert_eq!(
            replica.get(&format!("/order/{uid}")).0,
            404,
            "replica {name}"
        );
    }
    app.wait_until(
        |app| rejected_as_erased(app) + rejected_as_erased(&b) + rejected_as_erased(&c) >= 1.0,
        "a replica to count the refused message as rejected, erased",
    );

    // Act: the stream fed again from PostgreSQL, as after its loss.
    let replay = ordersvc(
        &[
            &["replay-from-db", "--database-url", &app.database_url][..],
            &app.names.stream_flags(&app.nats_url),
        ]
        .concat(),
    );
    run_successfully(replay, b"");
    app.wait_until_drained();

    // Assert: the erased order is not back; the other one is still stored, once.
    assert_eq!(app.orders_count(), 1);
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE order_uid = '{uid}'"
        )),
        0,
        "replay-from-db brought the erased order back"
    );
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        assert_eq!(
            replica.get(&format!("/order/{uid}")).0,
            404,
            "replica {name} after the replay"
        );
        assert!(listed_for_customer(replica, &person.customer_id).is_empty());
        assert!(replica.wait_for_order(&kept_uid) == kept, "replica {name}");
    }
}

#[test]
fn after_an_erase_no_personal_value_is_left_anywhere_and_the_orders_packed_with_it_stay() {
    // Arrange: the order among twenty others, published while the only replica is frozen, so
    // that it pulls them in one batch and fans them out packed together in one changelog
    // message; then two more replicas.
    let app = spawn_child_app();
    let person = Person::unique();
    let uid = format!("erase-{}", app.names.suffix);
    let order = model_for(&uid, &person);
    let others: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let uid = format!("kept-{}-{i:02}", app.names.suffix);
            let order = model_for(&uid, &Person::unique());
            (uid, order)
        })
        .collect();
    let mut messages: Vec<(Option<&str>, &[u8])> = others[..10]
        .iter()
        .map(|(uid, order)| (Some(uid.as_str()), order.as_slice()))
        .collect();
    messages.push((Some(uid.as_str()), order.as_slice()));
    messages.extend(
        others[10..]
            .iter()
            .map(|(uid, order)| (Some(uid.as_str()), order.as_slice())),
    );
    app.signal("STOP");
    app.publish_many(messages);
    app.signal("CONT");
    app.wait_until(|app| app.orders_count() == 21, "21 orders stored");
    app.wait_until_drained();
    let b = app.spawn_replica(Runs::InProcess, &[]);
    let c = app.spawn_replica(Runs::Child, &[]);
    for replica in [&app, &b, &c] {
        assert!(replica.wait_for_order(&uid) == order);
    }
    // Without these the test would prove nothing: the scan finds the values before the erase, and
    // the changelog message that carries the order carries others too.
    let before = personal_values_left(&app, &person);
    for stream in [app.names.stream.clone(), app.changelog_stream()] {
        assert!(
            before
                .iter()
                .any(|place| place.contains(&format!(" in {stream} "))),
            "the scan found no personal value in {stream} before the erase: {before:?}"
        );
    }
    assert!(
        before.iter().any(|place| place.contains("orders.document")),
        "the scan found no personal value in orders.document before the erase: {before:?}"
    );
    let changelog = app.stream_contents(&app.changelog_stream());
    assert!(
        changelog
            .iter()
            .any(|message| holds(&message.payload, &person.name)
                && others
                    .iter()
                    .any(|(other, _)| holds(&message.payload, other))),
        "no changelog message packs the order with another one: nothing to replace"
    );

    // Act
    erase(&app, &[&uid]);

    // Assert: no personal value anywhere ...
    let left = personal_values_left(&app, &person);
    assert!(left.is_empty(), "left after the erase: {left:?}");
    // ... and the orders it was packed with are still on the changelog, stored and served by
    // every replica.
    let changelog = app.stream_contents(&app.changelog_stream());
    for (other, _) in &others {
        assert!(
            changelog
                .iter()
                .any(|message| holds(&message.payload, other)),
            "{other} is no longer on the changelog"
        );
    }
    assert_eq!(app.orders_count(), 20);
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        wait_until_gone(name, replica, &uid, Instant::now());
        assert_every_order_is_served(replica, &others);
    }
}

#[test]
fn a_replica_behind_the_deleted_changelog_message_reads_past_it_without_restoring_afresh() {
    // Arrange: replica B (a process) frozen long enough that the server holds no pull request
    // of its, and its changelog consumer is gone (both expire within 30 s): what is published
    // from now on is still ahead of it when the erase deletes the changelog message.
    let app = spawn_app();
    let b = app.spawn_replica(Runs::Child, &[]);
    b.signal("STOP");
    std::thread::sleep(Duration::from_secs(40));
    let person = Person::unique();
    let uid = format!("erase-{}", app.names.suffix);
    let order = model_for(&uid, &person);
    let others: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let uid = format!("kept-{}-{i}", app.names.suffix);
            let order = model_for(&uid, &Person::unique());
            (uid, order)
        })
        .collect();
    let mut messages = vec![(Some(uid.as_str()), order.as_slice())];
    messages.extend(
        others
            .iter()
            .map(|(uid, order)| (Some(uid.as_str()), order.as_slice())),
    );
    app.publish_many(messages);
    app.wait_until(|app| app.orders_count() == 6, "6 orders stored");
    assert!(app.wait_for_order(&uid) == order);

    // Act
    erase(&app, &[&uid]);
    b.signal("CONT");

    // Assert: B drops the order, holds the others in memory (through the changelog: the
    // erase published them again), and read past the deleted message rather than treating it
    // as a gap and restoring afresh.
    wait_until_gone("B", &b, &uid, Instant::now());
    b.wait_until(
        |b| cached_orders(&b.get("/readyz")) == 5,
        "B holds the 5 other orders in memory",
    );
    assert_every_order_is_served(&b, &others);
    let logs = b.logs();
    assert!(
        logs.iter()
            .any(|line| line.contains("were deleted (an erasure)")),
        "B never met the deleted changelog message: the test proves nothing\n{}",
        logs.join("\n")
    );
    let afresh: Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("restoring the cache afresh"))
        .collect();
    assert!(afresh.is_empty(), "B restored afresh: {afresh:?}");
}

#[test]
fn an_erase_cut_short_by_a_nats_outage_says_what_is_not_done_and_a_second_run_finishes_it() {
    // Arrange: a NATS server of the test's own (so that it can be stopped) and a replica on it
    // serving the order.
    let mut nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::Off);
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let nats_url = nats.url_with("nats", &nats.credentials());
    let serving = TestApp::start_child(
        serve_with(&names.serve_settings(&db.url, &nats_url), &[]),
        &names.suffix,
    );
    let uid = format!("erase-{}", names.suffix);
    let order = model_for(&uid, &Person::unique());
    let publish = ordersvc(&[&["publish", "-j", "-"][..], &names.stream_flags(&nats_url)].concat());
    run_successfully(publish, &order);
    assert!(serving.wait_for_order(&uid) == order);
    let erase_command = || {
        let mut command = ordersvc(&["erase", &uid, "--reason", "test"]);
        command
            .args(["--database-url", &db.url])
            .args(names.consumer_flags(&nats_url));
        command
    };
    let tombstones = |condition: &str| {
        db.query_i64(&format!(
            "SELECT count(*) FROM erased_orders WHERE order_uid = '{uid}' AND {condition}"
        ))
    };
    let stored = || {
        db.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE order_uid = '{uid}'"
        ))
    };

    // Act: NATS goes down.
    nats.stop();
    let output = run_to_end(erase_command(), b"");

    // Assert: a failure that says what is left. PostgreSQL's part comes first and is done: the
    // tombstone is what keeps the order from coming back while the rest waits for NATS.
    let printed = printed(&output);
    assert!(
        !output.status.success(),
        "erase succeeded with NATS down\n{printed}"
    );
    let lower = printed.to_lowercase();
    assert!(
        lower.contains("nats") && lower.contains("not done"),
        "the output does not say that the NATS steps are not done\n{printed}"
    );
    assert_eq!(stored(), 0, "the order is still stored");
    assert_eq!(
        tombstones("completed_at IS NULL"),
        1,
        "no tombstone, or one marked complete although the erase failed"
    );

    // Act: NATS comes back, and the erase is run again.
    nats.run();
    serving.wait_until(
        |serving| serving.readiness().0 == 200,
        "the replica to be ready again",
    );
    run_successfully(erase_command(), b"");
    let returned = Instant::now();

    // Assert
    wait_until_gone("A", &serving, &uid, returned);
    assert_eq!(stored(), 0);
    assert_eq!(tombstones("completed_at IS NOT NULL"), 1, "the tombstone");
}

#[test]
fn an_erase_empties_the_payloads_of_rejected_messages_of_the_order_and_no_other() {
    // Arrange: the order and a conflicting duplicate of it (recorded as rejected), another
    // order with a conflicting duplicate of its own, and a message that is not JSON.
    let app = spawn_app();
    let person = Person::unique();
    let uid = format!("erase-{}", app.names.suffix);
    let order = String::from_utf8(model_for(&uid, &person)).expect("UTF-8");
    let conflicting = replace_once(&order, r#""sm_id": 99"#, r#""sm_id": 98"#);
    let other_uid = format!("kept-{}", app.names.suffix);
    let other = String::from_utf8(model_for(&other_uid, &Person::unique())).expect("UTF-8");
    let other_conflicting = replace_once(&other, r#""sm_id": 99"#, r#""sm_id": 98"#);
    // Without Nats-Msg-Id: the server must keep the repeats for the service to refuse.
    app.publish(order.as_bytes());
    let erased_seq = app.publish(conflicting.as_bytes()).sequence as i64;
    app.publish(other.as_bytes());
    app.publish(other_conflicting.as_bytes());
    app.publish(&testdata("invalid/not-json.txt"));
    app.wait_until(|app| app.rejected().len() == 3, "three rejections");
    app.wait_until_drained();
    let untouched = |app: &TestApp| -> Vec<(i64, String, String, Vec<u8>)> {
        app.rejected()
            .into_iter()
            .filter(|row| row.stream_seq != erased_seq)
            .map(|row| (row.stream_seq, row.kind, row.reason, row.payload))
            .collect()
    };
    let others_before = untouched(&app);
    assert_eq!(others_before.len(), 2);

    // Act
    erase(&app, &[&uid]);

    // Assert: the duplicate's payload is erased, and said to be; the other rows are as they were.
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM rejected_messages WHERE stream_seq = {erased_seq} \
             AND payload = ''::bytea AND payload_erased_at IS NOT NULL"
        )),
        1,
        "the conflicting duplicate's payload is not erased"
    );
    assert_eq!(untouched(&app), others_before);
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM rejected_messages WHERE stream_seq <> {erased_seq} \
             AND payload_erased_at IS NULL"
        )),
        2
    );
    let (status, _, body) = app.admin_get("/rejected?limit=200");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("/rejected answers JSON");
    for row in json["rejected"].as_array().expect("a rejected array") {
        let erased = row["stream_seq"].as_i64() == Some(erased_seq);
        assert_eq!(row["payload_erased"], erased, "{row}");
    }
    let left: Vec<String> = person
        .personal_values()
        .iter()
        .flat_map(|(_, value)| app.columns_containing(value))
        .collect();
    assert!(left.is_empty(), "left in the database: {left:?}");
    app.wait_for_order(&other_uid);
}

#[test]
fn erasing_an_unknown_id_succeeds_and_keeps_a_tombstone_that_refuses_it_later() {
    // Arrange
    let app = spawn_app();
    let uid = format!("never-seen-{}", app.names.suffix);

    // Act: a valid message of the order, and a broken one (cut short: not an order at all, but
    // still carrying its id and personal data).
    erase(&app, &[&uid]);
    let order = model_for(&uid, &Person::unique());
    let broken = &order[..order.len() / 2];
    let sequences = app.publish_many([
        (Some(uid.as_str()), order.as_slice()),
        (Some("broken"), broken),
    ]);
    let (sequence, broken_sequence) = (sequences[0] as i64, sequences[1] as i64);

    // Assert: the tombstone came first, so the order is refused as erased, keeping no byte of it.
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM erased_orders WHERE order_uid = '{uid}' AND reason = 'test'"
        )),
        1,
        "no tombstone for the unknown id"
    );
    app.wait_until(
        |app| app.rejected().len() == 2,
        "both messages of the erased id to be recorded",
    );
    app.wait_until_drained();
    for row in app.rejected() {
        assert!(
            [sequence, broken_sequence].contains(&row.stream_seq),
            "{row:?}"
        );
        assert_eq!(row.kind, "erased", "{}", row.reason);
        assert!(row.payload.is_empty());
    }
    assert_eq!(app.orders_count(), 0);
    assert_eq!(app.get(&format!("/order/{uid}")).0, 404);
}
