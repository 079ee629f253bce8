//! `ordersvc bench http` against running services: with several URLs, every service gets its
//! share of the connections, and the report accounts for each one beside the totals.

use serde_json::Value;

use crate::support::commands::{ordersvc, run_successfully};
use crate::support::isolation::TempDir;
use crate::support::orders::{generated_orders, with_ids};
use crate::support::service::{spawn_app, TestApp};

/// `GET /order/{id}` requests the service has answered 200, from its own `/metrics`: what really
/// reached it, whatever the bench believes it sent where.
fn orders_served(app: &TestApp) -> u64 {
    let (status, _, body) = app.admin_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("the metrics are UTF-8");
    text.lines()
        .filter(|line| line.starts_with("ordersvc_http_requests"))
        .filter(|line| line.contains(r#"route="order""#) && line.contains(r#"status="200""#))
        .find_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

#[test]
fn bench_http_with_two_urls_loads_both_services_and_reports_each_beside_the_totals() {
    // Arrange: two services (each with its own database) holding the same orders, and the ids
    // in a file, since ids read from the first URL's `/orders` would be that service's alone.
    let (a, b) = (spawn_app(), spawn_app());
    let orders = generated_orders(&format!("bench-{}", a.names.suffix), 20);
    for app in [&a, &b] {
        app.publish_many(with_ids(&orders));
        for (uid, _) in &orders {
            app.wait_for_order(uid);
        }
    }
    let dir = TempDir::new(&a.names.suffix);
    let ids = dir.path().join("ids.txt");
    let list: String = orders.iter().map(|(uid, _)| format!("{uid}\n")).collect();
    std::fs::write(&ids, list).expect("cannot write the ids file");
    let served_before = (orders_served(&a), orders_served(&b));
    let urls = [format!("http://{}", a.addr), format!("http://{}", b.addr)];

    // Act: 5 connections, so that the round-robin split (3 and 2) shows.
    let stdout = run_successfully(
        ordersvc(&[
            "bench",
            "http",
            "--url",
            &urls.join(","),
            "--rate",
            "200",
            "--duration",
            "2s",
            "--connections",
            "5",
            "--ids",
            ids.to_str().expect("a UTF-8 path"),
            "--json",
        ]),
        b"",
    );

    // Assert
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}"));
    let targets = report["targets"].as_array().expect("a targets array");
    assert_eq!(targets.len(), 2, "{report}");
    let count = |target: &Value, field: &str| {
        target[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {target}"))
    };
    for (target, (url, connections)) in targets.iter().zip(urls.iter().zip([3, 2])) {
        assert_eq!(target["url"], url.as_str(), "{report}");
        assert_eq!(count(target, "connections"), connections, "{report}");
        assert!(
            count(target, "requests") > 0,
            "{url} got no requests: {report}"
        );
        assert_eq!(
            count(target, "successes"),
            count(target, "requests"),
            "{report}"
        );
        assert_eq!(target["errors"], serde_json::json!([]), "{report}");
    }
    let sum = |field: &str| targets.iter().map(|t| count(t, field)).sum::<u64>();
    assert_eq!(count(&report, "requests"), sum("requests"), "{report}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["success_ratio"], 1.0, "{report}");
    // Each service answered exactly the requests the report puts on its line.
    let served = (
        orders_served(&a) - served_before.0,
        orders_served(&b) - served_before.1,
    );
    assert_eq!(
        served,
        (
            count(&targets[0], "successes"),
            count(&targets[1], "successes")
        ),
        "requests each service served, against the report: {report}"
    );
}
