//! `ordersvc rejected reprocess`: recorded rejections go through today's rules again once the
//! cause is fixed. What is stored now is stored once and served by every replica, each row is
//! marked with its outcome (and kept), a second run changes nothing, a dry run touches nothing,
//! and a message refused again is an outcome, not a failure.

use crate::support::commands::{printed, run_successfully};
use crate::support::http::cached_orders;
use crate::support::orders::{model_with, testdata, with_ids};
use crate::support::service::{spawn_app, Runs, TestApp};

/// Customers that a rule in PostgreSQL refuses (see `refuse_customers`).
const RULE_A: &str = "rule-a";
const RULE_B: &str = "rule-b";

/// A rule on `orders` that refuses these customers as a check violation: PostgreSQL refusing
/// the data (SQLSTATE class 23), so ingest records such an order as `store_error` instead of
/// retrying it as an outage. Called again, it replaces the rule.
fn refuse_customers(app: &TestApp, customers: &[&str]) {
    let list = customers
        .iter()
        .map(|customer| format!("'{customer}'"))
        .collect::<Vec<_>>()
        .join(", ");
    app.execute_as_owner(&format!(
        "CREATE OR REPLACE FUNCTION refuse_customers() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.customer_id IN ({list}) THEN \
         RAISE EXCEPTION 'customer % is refused by a rule', NEW.customer_id \
         USING ERRCODE = '23514'; END IF; RETURN NEW; END $$"
    ));
    app.execute_as_owner("DROP TRIGGER IF EXISTS refuse_customers ON orders");
    app.execute_as_owner(
        "CREATE TRIGGER refuse_customers BEFORE INSERT ON orders \
         FOR EACH ROW EXECUTE FUNCTION refuse_customers()",
    );
}

/// The fix: the rule is gone.
fn drop_the_rule(app: &TestApp) {
    app.execute_as_owner("DROP TRIGGER refuse_customers ON orders");
}

/// Orders with their order_uids.
type Orders = Vec<(String, Vec<u8>)>;

/// `n` valid orders of `customer`, with order_uids `{prefix}-NN`.
fn orders_of(prefix: &str, customer: &str, n: usize) -> Orders {
    (0..n)
        .map(|i| {
            let uid = format!("{prefix}-{i:02}");
            let order = model_with(&uid, "2021-11-26T06:22:19Z", "WBILMTESTTRACK", customer);
            (uid, order)
        })
        .collect()
}

/// Two messages no rule of today accepts, and the kinds they are rejected as.
fn invalid_messages() -> [(&'static str, Vec<u8>); 2] {
    [
        ("bad_json", testdata("invalid/not-json.txt")),
        ("missing_field", testdata("invalid/missing-field.json")),
    ]
}

/// `ordersvc rejected reprocess ARGS` on the test's servers, which must succeed; its report.
fn reprocess(app: &TestApp, args: &[&str]) -> String {
    let command = app.command(&[&["rejected", "reprocess"][..], args].concat());
    run_successfully(command, b"")
}

/// N of the report's line `LABEL: N` (e.g. `stored`, `would be refused`).
#[track_caller]
fn count_of(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix(label)?.strip_prefix(": "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no line `{label}: N` in the report:\n{report}"))
}

/// Every rejected row as it is kept: stream sequence, kind, reason, payload.
fn rows(app: &TestApp) -> Vec<(i64, String, String, Vec<u8>)> {
    app.rejected()
        .into_iter()
        .map(|row| (row.stream_seq, row.kind, row.reason, row.payload))
        .collect()
}

/// Publishes orders of `RULE_A` (refused by the rule in place), the invalid messages and some
/// orders nobody refuses, and waits until every one is accounted for. Returns the refused and
/// the normal orders.
fn publish_refused_invalid_and_normal(app: &TestApp, refused: usize) -> (Orders, Orders) {
    refuse_customers(app, &[RULE_A]);
    let suffix = &app.names.suffix;
    let refused = orders_of(&format!("refused-{suffix}"), RULE_A, refused);
    let normal = orders_of(&format!("normal-{suffix}"), "test", 5);
    app.publish_many(with_ids(&refused));
    for (_, message) in invalid_messages() {
        app.publish(&message);
    }
    app.publish_many(with_ids(&normal));
    let expected = refused.len() + invalid_messages().len();
    app.wait_until(
        |app| app.rejected().len() == expected,
        "every refused and invalid message to be recorded",
    );
    app.wait_until_drained();
    assert_eq!(app.orders_count(), normal.len() as i64);
    assert_eq!(
        app.query_i64("SELECT count(*) FROM rejected_messages WHERE kind = 'store_error'"),
        refused.len() as i64,
        "{:?}",
        app.rejected()
    );
    (refused, normal)
}

#[test]
fn store_errors_reprocessed_after_the_fix_are_stored_once_marked_and_served_by_every_replica() {
    // Arrange: 20 orders refused by a rule, then the fix, and three replicas.
    let app = spawn_app();
    let (refused, normal) = publish_refused_invalid_and_normal(&app, 20);
    drop_the_rule(&app);
    let b = app.spawn_replica(Runs::InProcess, &[]);
    let c = app.spawn_replica(Runs::Child, &[]);
    let kept = rows(&app);

    // Act
    let report = reprocess(&app, &["--kind", "store_error"]);

    // Assert: stored, once each ...
    assert_eq!(count_of(&report, "stored"), 20, "{report}");
    assert_eq!(count_of(&report, "failed"), 0, "{report}");
    let all = (refused.len() + normal.len()) as i64;
    assert_eq!(app.orders_count(), all);
    assert_eq!(
        app.query_i64(&format!(
            "SELECT count(*) FROM orders WHERE customer_id = '{RULE_A}'"
        )),
        20
    );
    // ... in every replica's memory through the changelog (counted before any GET, since a miss
    // would be answered from PostgreSQL and prove nothing) and served ...
    for (name, replica) in [("A", &app), ("B", &b), ("C", &c)] {
        app.wait_until(
            |_| cached_orders(&replica.get("/readyz")) == all as u64,
            &format!("replica {name} to hold every order in memory"),
        );
        for (uid, order) in &refused {
            assert!(
                replica.wait_for_order(uid) == *order,
                "replica {name}, {uid}"
            );
        }
    }
    // ... each row marked and kept, the others untouched ...
    assert_eq!(rows(&app), kept, "a row was changed or removed");
    assert_eq!(
        app.query_i64(
            "SELECT count(*) FROM rejected_messages WHERE kind = 'store_error' \
             AND outcome = 'stored' AND reprocessed_at IS NOT NULL"
        ),
        20
    );
    assert_eq!(
        app.query_i64(
            "SELECT count(*) FROM rejected_messages WHERE kind <> 'store_error' \
             AND (outcome IS NOT NULL OR reprocessed_at IS NOT NULL)"
        ),
        0,
        "a row that was not selected is marked"
    );
    // ... and shown to operators.
    let (status, _, body) = app.admin_get("/rejected?limit=200");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("/rejected answers JSON");
    let listed = json["rejected"].as_array().expect("a rejected array");
    assert_eq!(listed.len(), kept.len());
    for row in listed {
        if row["kind"] == "store_error" {
            assert_eq!(row["outcome"]["outcome"], "stored", "{row}");
            assert!(row["outcome"]["at"].is_string(), "{row}");
        } else {
            assert!(row["outcome"].is_null(), "{row}");
        }
    }
}

#[test]
fn reprocessing_again_stores_nothing_and_changes_no_outcome() {
    // Arrange: the store errors reprocessed once after the fix.
    let app = spawn_app();
    let (refused, normal) = publish_refused_invalid_and_normal(&app, 20);
    drop_the_rule(&app);
    reprocess(&app, &["--kind", "store_error"]);
    let marks = "SELECT count(*) FROM rejected_messages WHERE outcome = 'stored'";
    // The sum of the marks' times: any row marked again changes it.
    let times = "SELECT sum((extract(epoch FROM reprocessed_at) * 1000000)::bigint)::bigint \
                 FROM rejected_messages";
    let (marked, at) = (app.query_i64(marks), app.query_i64(times));
    assert_eq!(marked, 20);

    // Act
    let report = reprocess(&app, &["--kind", "store_error"]);

    // Assert
    assert_eq!(count_of(&report, "stored"), 0, "{report}");
    assert_eq!(app.orders_count(), (refused.len() + normal.len()) as i64);
    assert_eq!(app.query_i64(marks), marked);
    assert_eq!(app.query_i64(times), at, "a row was marked again");
}

#[test]
fn a_dry_run_says_invalid_messages_would_be_refused_and_a_real_run_marks_them_refused() {
    // Arrange
    let app = spawn_app();
    for (_, message) in invalid_messages() {
        app.publish(&message);
    }
    app.publish_model_and_wait(&format!("normal-{}", app.names.suffix));
    app.wait_until(|app| app.rejected().len() == 2, "two rejections");
    let kinds = ["--kind", "bad_json", "--kind", "missing_field"];
    let unmarked = "SELECT count(*) FROM rejected_messages \
                    WHERE outcome IS NULL AND outcome_kind IS NULL AND reprocessed_at IS NULL";

    // Act
    let report = reprocess(&app, &[&kinds[..], &["--dry-run"]].concat());

    // Assert: what would happen, and nothing happened.
    assert!(report.to_lowercase().contains("dry run"), "{report}");
    assert_eq!(count_of(&report, "would be refused"), 2, "{report}");
    assert_eq!(count_of(&report, "would be stored"), 0, "{report}");
    assert_eq!(app.query_i64(unmarked), 2, "a dry run marked a row");
    assert_eq!(app.orders_count(), 1);

    // Act: refused again is an outcome, so the run succeeds.
    let report = reprocess(&app, &kinds);

    // Assert: marked refused, with today's kind and reason (the rules have not changed).
    assert_eq!(count_of(&report, "refused"), 2, "{report}");
    assert_eq!(
        app.query_i64(
            "SELECT count(*) FROM rejected_messages WHERE outcome = 'refused' \
             AND outcome_kind = kind AND outcome_reason = reason AND reprocessed_at IS NOT NULL"
        ),
        2,
        "{report}"
    );
    assert_eq!(app.orders_count(), 1);
}

#[test]
fn reprocessing_an_id_that_does_not_exist_fails_naming_it() {
    // Arrange: one rejected row, which `--id` can select.
    let app = spawn_app();
    app.publish(&testdata("invalid/not-json.txt"));
    app.wait_until(|app| app.rejected().len() == 1, "one rejection");
    let id = app.query_i64("SELECT max(id) FROM rejected_messages");
    let report = reprocess(&app, &["--id", &id.to_string(), "--dry-run"]);
    assert_eq!(count_of(&report, "would be refused"), 1, "{report}");
    let missing = (id + 1000).to_string();

    // Act
    let output = app.run(
        app.command(&["rejected", "reprocess", "--id", &missing]),
        b"",
    );

    // Assert
    let printed = printed(&output);
    assert!(
        !output.status.success(),
        "reprocess of a missing id succeeded\n{printed}"
    );
    assert!(printed.contains(&missing), "{printed}");
    assert_eq!(
        app.query_i64("SELECT count(*) FROM rejected_messages WHERE outcome IS NOT NULL"),
        0
    );
}

#[test]
fn rows_a_rule_still_refuses_are_marked_refused_as_store_error_and_the_others_stored() {
    // Arrange: two customers refused by the rule; the fix lifts it for one of them only.
    let app = spawn_app();
    refuse_customers(&app, &[RULE_A, RULE_B]);
    let suffix = &app.names.suffix;
    let lifted = orders_of(&format!("lifted-{suffix}"), RULE_A, 10);
    let still = orders_of(&format!("still-{suffix}"), RULE_B, 10);
    app.publish_many(with_ids(&lifted).chain(with_ids(&still)));
    app.wait_until(|app| app.rejected().len() == 20, "20 store errors");
    app.wait_until_drained();
    refuse_customers(&app, &[RULE_B]);
    let of_customer = |customer: &str, condition: &str| {
        app.query_i64(&format!(
            "SELECT count(*) FROM rejected_messages \
             WHERE convert_from(payload, 'UTF8') LIKE '%\"customer_id\": \"{customer}\"%' \
             AND {condition}"
        ))
    };

    // Act
    let report = reprocess(&app, &["--kind", "store_error"]);

    // Assert
    assert_eq!(count_of(&report, "stored"), 10, "{report}");
    assert_eq!(count_of(&report, "refused"), 10, "{report}");
    assert_eq!(of_customer(RULE_A, "outcome = 'stored'"), 10);
    assert_eq!(
        of_customer(
            RULE_B,
            "outcome = 'refused' AND outcome_kind = 'store_error' \
             AND outcome_reason IS NOT NULL AND reprocessed_at IS NOT NULL"
        ),
        10
    );
    for (uid, order) in &lifted {
        assert!(app.wait_for_order(uid) == *order, "{uid}");
    }
    for (uid, _) in &still {
        assert_eq!(app.get(&format!("/order/{uid}")).0, 404, "{uid}");
    }

    // Act: the rule goes entirely; the rows refused again are taken up again.
    drop_the_rule(&app);
    let report = reprocess(&app, &["--kind", "store_error"]);

    // Assert
    assert_eq!(count_of(&report, "stored"), 10, "{report}");
    assert_eq!(app.orders_count(), 20);
    assert_eq!(of_customer(RULE_B, "outcome = 'stored'"), 10);
    for (uid, order) in &still {
        assert!(app.wait_for_order(uid) == *order, "{uid}");
    }
}
