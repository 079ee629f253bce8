//! PostgreSQL over TLS: `migrate` and `serve` honour `sslmode` and `sslrootcert` in the URL, as
//! libpq does. Each test has a PostgreSQL of its own that accepts only TLS (`hostssl`), with a
//! certificate from a test CA: the right CA is trusted, another CA's certificate is refused
//! (also with `sslmode=require`, which verifies the CA once a root certificate is given), a
//! plaintext attempt is refused by the server and the error says what to change, and no output
//! shows the password. A self-signed server certificate given as its own root works with
//! `verify-full`; one marked as a CA (the quick-start kind), which libpq accepts and rustls
//! refuses, fails with an error that says so and what to use instead.

use std::process::{Command, Output};

use crate::support::certs::ServerCert;
use crate::support::commands::{ordersvc, printed, run_successfully, run_to_end, serve_with};
use crate::support::isolation::Names;
use crate::support::nats::SharedStream;
use crate::support::orders::model_with_uid;
use crate::support::postgres::{postgres_bin_dir, OwnPostgres};
use crate::support::service::TestApp;

/// The service's connections that use TLS, as the server sees them.
const TLS_CONNECTIONS_OF_THE_SERVICE: &str = "SELECT count(*) FROM pg_stat_ssl \
     JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name LIKE 'ordersvc-%'";

/// `ordersvc migrate --database-url URL`, run to its end.
fn migrate(url: &str) -> Output {
    run_to_end(ordersvc(&["migrate", "--database-url", url]), b"")
}

/// `sslmode=MODE&sslrootcert=FILE`.
fn with_root_cert(mode: &str, file: &std::path::Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", file.display())
}

#[track_caller]
fn assert_succeeded_without_the_password(output: &Output, pg: &OwnPostgres, what: &str) {
    let printed = printed(output);
    assert!(output.status.success(), "{what} failed\n{printed}");
    assert!(
        !printed.contains(pg.password()),
        "{what} showed the password\n{printed}"
    );
}

/// Migrates and serves on `pg` with the URL parameters `params`: the service must store and
/// serve an order published on the shared NATS server (a stream of the test's own), with its
/// connections to PostgreSQL encrypted, and show the password nowhere.
#[track_caller]
fn assert_migrates_and_serves_over_tls(pg: &OwnPostgres, params: &str) {
    let url = pg.url("orders", params);
    assert_succeeded_without_the_password(&migrate(&url), pg, "migrate");

    let names = Names::fresh();
    // Before the service, so that it outlives it and deletes the stream the service made.
    let stream = SharedStream::of(&names);
    let settings = names.serve_settings(&url, &stream.nats_url);
    let serving = TestApp::start_child(serve_with(&settings, &[]), &names.suffix);

    let uid = format!("tls-{}", names.suffix);
    let order = model_with_uid(&uid);
    let publish = ordersvc(
        &[
            &["publish", "-j", "-"][..],
            &names.stream_flags(&stream.nats_url),
        ]
        .concat(),
    );
    run_successfully(publish, &order);
    assert!(
        serving.wait_for_order(&uid) == order,
        "the served order differs from the published one"
    );

    let encrypted = pg.query_i64(TLS_CONNECTIONS_OF_THE_SERVICE);
    assert!(
        encrypted > 0,
        "the server sees no TLS connection of the service's pools"
    );
    let logs = serving.logs().join("\n");
    assert!(
        !logs.contains(pg.password()),
        "the service logged the password:\n{logs}"
    );
}

/// Runs `migrate`, then `serve`, with a URL the service must not connect with, and asserts that
/// both fail, that their errors say each of `words` (in any case), and that they do not show the
/// password.
#[track_caller]
fn assert_refused(pg: &OwnPostgres, url: &str, words: &[&str]) {
    let names = Names::fresh();
    // Only made if the service wrongly got as far as NATS.
    let stream = SharedStream::of(&names);
    let settings = names.serve_settings(url, &stream.nats_url);
    let check = |what: &str, output: Output| {
        let printed = printed(&output);
        assert!(!output.status.success(), "{what} succeeded\n{printed}");
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        for word in words {
            assert!(
                stderr.contains(&word.to_lowercase()),
                "{what}'s error does not say {word:?}\n{printed}"
            );
        }
        assert!(
            !printed.contains(pg.password()),
            "{what} showed the password\n{printed}"
        );
    };
    // One after the other: a serve that wrongly connects runs until `run_to_end` gives up on it.
    check("migrate", migrate(url));
    check("serve", run_to_end(serve_with(&settings, &[]), b""));
}

/// Every mode that encrypts connects: `prefer` and `require` without a CA, `verify-ca` and
/// `verify-full` with the CA that signed the server's certificate.
#[test]
fn migrate_connects_with_every_sslmode_that_encrypts() {
    let pg = OwnPostgres::start();
    for (n, params) in [
        "sslmode=prefer".to_owned(),
        "sslmode=require".to_owned(),
        with_root_cert("verify-ca", pg.ca_file()),
        with_root_cert("verify-full", pg.ca_file()),
    ]
    .iter()
    .enumerate()
    {
        let output = migrate(&pg.url(&format!("orders_{n}"), params));
        assert_succeeded_without_the_password(&output, &pg, params);
    }
}

/// `sslmode=require` without a root certificate encrypts without verifying the server: enough
/// for a server that accepts only TLS.
#[test]
fn migrate_and_serve_work_with_sslmode_require() {
    let pg = OwnPostgres::start();
    assert_migrates_and_serves_over_tls(&pg, "sslmode=require");
}

/// `verify-full` with the CA that signed the server's certificate, for IP 127.0.0.1: the
/// setting for a production database.
#[test]
fn migrate_and_serve_work_with_verify_full_and_the_servers_ca() {
    let pg = OwnPostgres::start();
    assert_migrates_and_serves_over_tls(&pg, &with_root_cert("verify-full", pg.ca_file()));
}

/// A server whose certificate another CA signed is not the one the operator meant.
#[test]
fn verify_full_with_another_ca_is_refused_naming_the_certificate() {
    let pg = OwnPostgres::start();
    let url = pg.url("orders", &with_root_cert("verify-full", pg.other_ca_file()));
    assert_refused(&pg, &url, &["certificate"]);
}

/// libpq's rule: `require` with a root certificate file verifies the server's CA (like
/// `verify-ca`), so adding `sslrootcert` to a `require` URL never silently trusts any server.
#[test]
fn require_with_another_ca_as_root_certificate_is_refused_naming_the_certificate() {
    let pg = OwnPostgres::start();
    let url = pg.url("orders", &with_root_cert("require", pg.other_ca_file()));
    assert_refused(&pg, &url, &["certificate"]);
}

/// The server accepts only TLS: `sslmode=disable` is refused by the server itself ("no
/// encryption" are its words), and the service's error tells the operator to change `sslmode`.
#[test]
fn sslmode_disable_is_refused_by_the_server_with_a_hint_about_sslmode() {
    let pg = OwnPostgres::start();
    let url = pg.url("orders", "sslmode=disable");
    assert_refused(&pg, &url, &["no encryption", "sslmode"]);
}

/// `psql` (libpq) with `url` runs `SELECT 1`: the yardstick for what a URL should do.
fn libpq_connects(url: &str) -> Output {
    let output = Command::new(postgres_bin_dir().join("psql"))
        .args(["-X", "-w", "-At", "-c", "SELECT 1", url])
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("cannot run psql");
    assert!(output.status.success(), "psql failed\n{}", printed(&output));
    output
}

/// PostgreSQL's documentation makes a quick-start certificate with `openssl req -x509`, which is
/// self-signed and marked as a CA; libpq takes it as its own root with `verify-full`, rustls
/// refuses a CA certificate as a server's own (`CaUsedAsEndEntity`). The service cannot do what
/// libpq does, so its error must say what the certificate is and what to use instead.
#[test]
fn a_self_signed_ca_certificate_as_the_servers_own_is_refused_saying_what_to_use_instead() {
    let pg = OwnPostgres::start_with(ServerCert::SelfSignedCa);
    let url = pg.url("orders", &with_root_cert("verify-full", pg.ca_file()));
    libpq_connects(&pg.url("postgres", &with_root_cert("verify-full", pg.ca_file())));
    assert_refused(
        &pg,
        &url,
        &["a CA certificate", "CA:FALSE", "subjectAltName"],
    );
}

/// A self-signed server certificate that is no CA (basicConstraints CA:FALSE), for IP
/// 127.0.0.1, given as its own root: the remedy the error above names.
#[test]
fn migrate_and_serve_work_with_verify_full_and_a_self_signed_certificate_as_its_own_root() {
    let pg = OwnPostgres::start_with(ServerCert::SelfSigned);
    libpq_connects(&pg.url("postgres", &with_root_cert("verify-full", pg.ca_file())));
    assert_migrates_and_serves_over_tls(&pg, &with_root_cert("verify-full", pg.ca_file()));
}
