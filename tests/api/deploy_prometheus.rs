//! What `deploy/` gives Prometheus and Grafana users, proven: the alert rules pass promtool's
//! checks and their own unit tests (`alerts_test.yml`), and so does the example configuration;
//! every metric the rules and the dashboard name is one the service exports; and Debian's
//! `prometheus` (`./install.sh test` installs it), started with the example configuration
//! pointed at a running service's admin listener (with the admin token), finds the target up and
//! every rule healthy, and answers every query of the dashboard without an error. With ingest
//! stalled (PostgreSQL cut by the test proxy) and orders waiting, that Prometheus sees the stall
//! alert's expression hold while no message is received.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::commands::run_successfully;
use crate::support::orders::{generated_orders, with_ids};
use crate::support::postgres::postgres_addr;
use crate::support::proxy::Proxy;
use crate::support::service::{spawn_app, spawn_app_with, spawn_app_with_options, SpawnOptions};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const TOKEN: &str = "the-admin-token-prometheus-sends";
/// How long Prometheus may take to start, scrape and evaluate the rules (it does each every
/// second here).
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Between two polls.
const POLL: Duration = Duration::from_millis(100);

fn deploy_file(name: &str) -> PathBuf {
    Path::new(DEPLOY).join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `program ARGS`, after checking that the program is there at all: a clear message rather than
/// a failed spawn when the test packages are not installed.
fn tool(program: &str, args: &[&str]) -> Command {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{program} is not installed: `./install.sh test` installs Debian's prometheus package"
    );
    let mut command = Command::new(program);
    command.args(args);
    command
}

#[test]
fn promtool_accepts_the_rules_the_example_configuration_and_the_rules_unit_tests() {
    let alerts = deploy_file("prometheus/alerts.yml");
    let config = deploy_file("prometheus/prometheus.yml");
    let alerts = alerts.to_str().expect("a UTF-8 path");
    let config = config.to_str().expect("a UTF-8 path");

    run_successfully(tool("promtool", &["check", "rules", alerts]), b"");
    // Syntax only: the example's token file does not exist here.
    run_successfully(
        tool("promtool", &["check", "config", "--syntax-only", config]),
        b"",
    );
    // Each alert fires where it should and not where it should not.
    let mut unit_tests = tool("promtool", &["test", "rules", "alerts_test.yml"]);
    unit_tests.current_dir(deploy_file("prometheus"));
    let printed = run_successfully(unit_tests, b"");
    assert!(printed.contains("SUCCESS"), "{printed}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_one_the_service_exports() {
    // Arrange: a stored order, since a family with labels is exported from its first sample
    // on (`ordersvc_messages_total` from the first message).
    let app = spawn_app();
    app.publish_model_and_wait("deploy-prometheus-1");
    // Served is not yet counted: a request can load the order from PostgreSQL once it is
    // committed, before ingest counts the message (after its fan-out and ack).
    app.wait_until(
        |app| {
            let (_, _, body) = app.admin_get("/metrics");
            String::from_utf8_lossy(&body).contains("ordersvc_messages_total{")
        },
        "the stored order to be counted",
    );
    let (status, _, body) = app.admin_get("/metrics");
    assert_eq!(status, 200);
    let exposition = String::from_utf8(body).expect("the metrics are UTF-8");
    let exported = exported_names(&exposition);

    // Act: every name in the rules (comments included), the dashboard's queries and its
    // template variables.
    let mut named = metric_names(&read(&deploy_file("prometheus/alerts.yml")));
    let dashboard = dashboard();
    for query in dashboard_queries(&dashboard)
        .iter()
        .chain(&template_queries(&dashboard))
    {
        named.extend(metric_names(query));
    }

    // Assert
    assert!(
        named.len() >= 20,
        "too few names found, is the parsing right? {named:?}"
    );
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "deploy/ names metrics the service does not export: {missing:?}\nit exports {exported:?}"
    );
}

#[test]
fn a_real_prometheus_scrapes_the_admin_listener_and_runs_the_rules_and_every_dashboard_query() {
    // Arrange: a service whose admin listener wants the token, and Prometheus with the example
    // configuration, pointed at it.
    let app = spawn_app_with(&["--admin-token", TOKEN]);
    let prometheus = Prometheus::start(app.admin_addr, &app.names.suffix);

    // Act and assert: scraped with the token.
    prometheus.wait_until_the_target_is_up();
    let ready = prometheus.query("ordersvc_ready");
    assert_eq!(
        ready["data"]["result"][0]["value"][1], "1",
        "the scraped ordersvc_ready: {ready}"
    );

    // Every rule evaluated without an error.
    let rules = prometheus.wait_until_every_rule_is_evaluated();
    let expected = read(&deploy_file("prometheus/alerts.yml"))
        .matches("- alert:")
        .count();
    assert_eq!(
        rules.len(),
        expected,
        "the rules Prometheus loaded: {rules:?}"
    );
    let unhealthy: Vec<&Value> = rules.iter().filter(|rule| rule["health"] != "ok").collect();
    assert!(unhealthy.is_empty(), "rules in error: {unhealthy:#?}");

    // Every panel's query, as Grafana would send it for all replicas.
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 20, "too few queries found: {queries:?}");
    for query in &queries {
        let answer = prometheus.query(&as_grafana_sends(query));
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }
}

#[test]
fn a_real_prometheus_sees_the_stall_alert_hold_while_ingest_is_stalled_with_orders_waiting() {
    // Arrange: one order stored, then PostgreSQL cut; Prometheus scrapes from then on, so the
    // messages counter it sees never moves.
    let db = Proxy::start(postgres_addr());
    let app = spawn_app_with_options(SpawnOptions {
        db_via: Some(db.addr()),
        serve_args: &["--admin-token", TOKEN],
        ..SpawnOptions::default()
    });
    let first = generated_orders("stall-first", 1);
    app.publish_many(with_ids(&first));
    app.wait_for_order(&first[0].0);
    db.cut();
    app.wait_until_unready("PostgreSQL is unreachable");
    let prometheus = Prometheus::start(app.admin_addr, &app.names.suffix);
    prometheus.wait_until_the_target_is_up();
    let waiting = "ordersvc_consumer_pending_messages + ordersvc_consumer_ack_pending_messages";
    prometheus.wait_until("the lag is scraped before the orders arrive", |p| {
        Some(!p.query(waiting)["data"]["result"].as_array()?.is_empty())
    });

    // Act: 500 orders arrive while nothing can commit.
    let orders = generated_orders("stall-waiting", 500);
    app.publish_many(with_ids(&orders));

    // Assert: the rule's own expression, as Prometheus loaded it, holds for this replica: the
    // waiting messages rose and none was received. Its alert is then pending (it fires after
    // its `for:`).
    let stalled = prometheus
        .rule("OrdersvcIngestStalled")
        .get("query")
        .and_then(Value::as_str)
        .expect("the rule's query")
        .to_owned();
    prometheus.wait_until("the stall alert's expression holds", |p| {
        Some(!p.query(&stalled)["data"]["result"].as_array()?.is_empty())
    });
    let received = prometheus.query("sum(increase(ordersvc_messages_total[5m]))");
    assert_eq!(
        received["data"]["result"][0]["value"][1], "0",
        "messages received while stalled: {received}"
    );
    prometheus.wait_until("the stall alert is pending or firing", |p| {
        let alerts = p.api("/api/v1/alerts", &[]);
        Some(
            alerts["data"]["alerts"]
                .as_array()?
                .iter()
                .any(|alert| alert["labels"]["alertname"] == "OrdersvcIngestStalled"),
        )
    });
}

/// Every metric name a PromQL text (or a whole file of them) names: each `ordersvc_` word.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ordersvc_") {
        let starts_a_word = !rest[..at].ends_with(|c: char| is_word(c) || c.is_ascii_uppercase());
        let word_end = rest[at..]
            .find(|c: char| !is_word(c))
            .map_or(rest.len(), |n| at + n);
        if starts_a_word {
            names.insert(rest[at..word_end].to_owned());
        }
        rest = &rest[word_end..];
    }
    names
}

/// The names a query can use for what the exposition holds: each sample's name, and for each
/// declared family those of its type (a counter's `_total`, a histogram's `_bucket`, `_sum` and
/// `_count`), so that a family with no sample yet (a label set not seen yet) counts too.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&deploy_file("grafana/ordersvc.json")))
        .expect("deploy/grafana/ordersvc.json is JSON")
}

/// Every `expr` of the dashboard's panels (rows' panels too).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn collect(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (key, field) in fields {
                    match (key.as_str(), field) {
                        ("expr", Value::String(expr)) => into.push(expr.clone()),
                        _ => collect(field, into),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, into)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    collect(&dashboard["panels"], &mut queries);
    queries
}

/// The template variables' queries (`label_values(METRIC, label)`).
fn template_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|variable| variable["definition"].as_str().map(str::to_owned))
        .collect()
}

/// A panel's query with Grafana's variables replaced as Grafana does: every replica selected,
/// and a rate window of a minute.
fn as_grafana_sends(query: &str) -> String {
    let sent = query
        .replace("$__rate_interval", "1m")
        .replace("$instance", ".+");
    assert!(!sent.contains('$'), "a variable left in {sent}");
    sent
}

/// Debian's `prometheus` on a free port and a directory of its own, running the example
/// configuration with the test's target, token and intervals; stopped and its directory
/// removed when dropped (also when the test panics).
struct Prometheus {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
    http: ureq::Agent,
}

impl Prometheus {
    fn start(target: SocketAddr, suffix: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("ordersvc-prometheus-{suffix}"));
        std::fs::create_dir_all(&dir).expect("a directory for Prometheus");
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, TOKEN).expect("the token file");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, test_configuration(target, &token_file))
            .expect("the configuration");
        // A port free a moment ago: nothing else of the tests binds ports it did not ask the
        // system for.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let log = File::create(dir.join("prometheus.log")).expect("a log file");
        let child = tool("prometheus", &[])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("cannot start prometheus: {e}")
            });
        let prometheus = Prometheus {
            addr,
            dir,
            child,
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(15))
                .build(),
        };
        prometheus.wait_until("Prometheus is ready", |p| {
            p.get("/-/ready", &[]).map(|(status, _)| status == 200)
        });
        prometheus
    }

    /// `GET path?query` on the API: the status and the body, or `None` if it does not answer.
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
        let mut request = self.http.get(&format!("http://{}{path}", self.addr));
        for (name, value) in query {
            request = request.query(name, value);
        }
        match request.call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => {
                let status = response.status();
                Some((status, response.into_string().ok()?))
            }
            Err(_) => None,
        }
    }

    /// `GET path` on the API, as JSON.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self
            .get(path, query)
            .unwrap_or_else(|| panic!("Prometheus does not answer {path}\n{}", self.log()));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path} answered {status} and not JSON ({e}): {body}"))
    }

    fn query(&self, query: &str) -> Value {
        self.api("/api/v1/query", &[("query", query)])
    }

    fn wait_until_the_target_is_up(&self) {
        self.wait_until("the service's admin listener is scraped", |p| {
            let targets = p.api("/api/v1/targets", &[]);
            let active = targets["data"]["activeTargets"].as_array()?.clone();
            Some(active.len() == 1 && active[0]["health"] == "up")
        });
    }

    /// The loaded rule named `name`, as `/api/v1/rules` shows it (its `query`, `health`, ...).
    fn rule(&self, name: &str) -> Value {
        let rules = self.api("/api/v1/rules", &[]);
        rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .find(|rule| rule["name"] == name)
            .unwrap_or_else(|| panic!("no rule {name} in {rules}"))
    }

    /// The rules, once each has been evaluated at least once (none `unknown`).
    fn wait_until_every_rule_is_evaluated(&self) -> Vec<Value> {
        let mut rules = Vec::new();
        self.wait_until("every rule is evaluated", |p| {
            let answer = p.api("/api/v1/rules", &[]);
            rules = answer["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            Some(!rules.is_empty() && rules.iter().all(|rule| rule["health"] != "unknown"))
        });
        rules
    }

    /// Polls `condition` until it holds (`None` is "not yet"), within `EVENTUALLY`; panics with
    /// Prometheus's log if it exits or the time is up.
    fn wait_until(&self, what: &str, mut condition: impl FnMut(&Prometheus) -> Option<bool>) {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            if condition(self) == Some(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not within {EVENTUALLY:?}: {what}\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    fn log(&self) -> String {
        format!(
            "prometheus's log:\n{}",
            std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example `deploy/prometheus/prometheus.yml` made to run here: this test's target and
/// token file, the rules by their full path, and every interval a second (so that the test
/// waits seconds, not minutes). Each replaced text must be in the example.
fn test_configuration(target: SocketAddr, token_file: &Path) -> String {
    let rules = deploy_file("prometheus/alerts.yml");
    let replacements = [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("- alerts.yml", format!("- {}", rules.display())),
        (
            "/etc/prometheus/ordersvc-admin-token",
            token_file.display().to_string(),
        ),
        ("127.0.0.1:8081", target.to_string()),
    ];
    let mut config = read(&deploy_file("prometheus/prometheus.yml"));
    for (example, here) in replacements {
        assert!(
            config.contains(example),
            "the example configuration has no `{example}`"
        );
        config = config.replace(example, &here);
    }
    config
}
