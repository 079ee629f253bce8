//! `ordersvc bench ingest`: with `--mode backlog --reference-copy`, the drain is set beside
//! PostgreSQL's own COPY of the very rows it stored, and the scratch table of that COPY is gone
//! afterwards; with `--mode live --rate`, a step per rate, each watched on every replica.

use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::support::commands::{ordersvc, run_successfully};
use crate::support::isolation::{closed_port, Names};
use crate::support::nats::SharedStream;
use crate::support::postgres::SharedDatabase;
use crate::support::service::{spawn_app, Runs};

/// Messages published; every one a valid order.
const ORDERS: u64 = 600;

/// Tables of the database whose name starts with `prefix`.
fn tables_named(database_url: &str, prefix: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut conn = PgConnection::connect(database_url)
            .await
            .expect("cannot connect to the test database");
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE starts_with(tablename, $1)")
                .bind(prefix)
                .fetch_one(&mut conn)
                .await
                .expect("cannot count tables");
        conn.close().await.ok();
        count
    })
}

#[test]
fn a_backlog_run_with_reference_copy_times_copy_of_the_rows_it_stored_and_drops_its_table() {
    // Arrange: a database and a stream of the test's own, nothing consuming.
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let stream = SharedStream::of(&names);
    let url = format!("http://127.0.0.1:{}", closed_port());
    let orders = ORDERS.to_string();

    // Act
    let stdout = run_successfully(
        ordersvc(
            &[
                &[
                    "bench",
                    "ingest",
                    "--mode",
                    "backlog",
                    "--reference-copy",
                    "--orders",
                    &orders,
                    "--seed",
                    "11",
                    "--sample-every",
                    "50",
                    "--url",
                    &url,
                    "--database-url",
                    &db.url,
                    "--json",
                ][..],
                &names.consumer_flags(&stream.nats_url),
            ]
            .concat(),
        ),
        b"",
    );

    // Assert: COPY took exactly this run's rows, and a ratio is reported from both rates.
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}"));
    // The service's log is kept for the user of a bench; the test leaves nothing behind.
    if let Some(log) = report["service_log"].as_str() {
        let _ = std::fs::remove_file(log);
    }
    let copy = &report["reference_copy"];
    assert_eq!(copy["rows"], ORDERS, "{report}");
    let rate = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number: {report}"))
    };
    let expected = rate(&report["drain"]["orders_per_s"]) / rate(&copy["rows_per_s"]);
    assert!(
        (rate(&copy["drain_to_copy"]) - expected).abs() < 0.01,
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(tables_named(&db.url, "ordersvc_bench_copy_"), 0);
}

#[test]
fn a_live_run_at_fixed_rates_reports_a_step_per_rate_with_orders_visible_on_every_replica() {
    // Arrange: two replicas of one service.
    let app = spawn_app();
    let second = app.spawn_replica(Runs::InProcess, &[]);
    let urls = format!("http://{},http://{}", app.addr, second.addr);
    let orders = 300u64;

    // Act: two steps, 300 messages each at 500/s and at 1,000/s.
    let stdout = run_successfully(
        ordersvc(
            &[
                &[
                    "bench",
                    "ingest",
                    "--mode",
                    "live",
                    "--rate",
                    "500,1000",
                    "--orders",
                    &orders.to_string(),
                    "--seed",
                    "21",
                    "--sample-every",
                    "10",
                    "--url",
                    &urls,
                    "--json",
                ][..],
                &app.names.consumer_flags(&app.nats_url),
            ]
            .concat(),
        ),
        b"",
    );

    // Assert
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}"));
    let steps = report["steps"].as_array().expect("a steps array");
    assert_eq!(steps.len(), 2, "{report}");
    for (step, (rate, seed)) in steps.iter().zip([(500.0, 21), (1000.0, 22)]) {
        assert_eq!(step["rate"], rate, "{report}");
        assert_eq!(step["seed"], seed, "{report}");
        assert_eq!(step["acked"], orders, "{report}");
        assert_eq!(step["seen"], step["watched"], "{report}");
        assert!(step["backlog_at_end"].is_u64(), "{report}");
        // Open loop: the last message is not due before (orders - 1) / rate.
        let took = step["publish_time_s"].as_f64().expect("a publish time");
        assert!(took >= (orders - 1) as f64 / rate, "{report}");
        assert!(
            step["due_to_visible_us"]["max"].as_u64() > Some(0),
            "{report}"
        );
    }
    // Visible on every replica means both hold both steps' orders.
    for uid in ["bench-21-0000000299", "bench-22-0000000299"] {
        assert_eq!(app.get(&format!("/order/{uid}")).0, 200);
        assert_eq!(second.get(&format!("/order/{uid}")).0, 200);
    }
}
