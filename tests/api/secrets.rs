//! No credential shows where others can read it: a command that cannot reach PostgreSQL or NATS
//! names the server it tried, but neither its error message nor its log lines carry the password
//! or token of the URL it was given.

use std::process::Command;

use crate::support::commands::{self, run_to_end};
use crate::support::isolation::closed_port;
use crate::support::service::spawn_app;

/// The secret in every URL below; nothing a command prints may contain it.
const SECRET: &str = "s3cretpw";

/// `commands::ordersvc`, with the retries while NATS does not answer cut short: nothing listens
/// on the ports below (their log lines are checked too).
fn ordersvc(args: &[&str]) -> Command {
    let mut command = commands::ordersvc(args);
    command.env("ORDERSVC_NATS_CONNECT_TIMEOUT", "1s");
    command
}

/// Runs `ordersvc ARGS` and asserts that it failed, printed nothing with the secret, and named
/// `server`.
#[track_caller]
fn assert_fails_without_the_secret(args: &[&str], server: &str) {
    let output = run_to_end(ordersvc(args), b"");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "it succeeded\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.contains(SECRET), "the secret on stdout: {stdout}");
    assert!(!stderr.contains(SECRET), "the secret on stderr: {stderr}");
    assert!(
        stderr.contains(server),
        "the error does not say which server: {stderr}"
    );
}

#[test]
fn publish_to_an_unreachable_nats_url_with_a_password_or_token_does_not_show_it() {
    let port = closed_port();
    let server = format!("127.0.0.1:{port}");
    for url in [
        format!("nats://user:{SECRET}@{server}"),
        format!("nats://{SECRET}@{server}"),
    ] {
        assert_fails_without_the_secret(&["publish", "--nats-url", &url], &server);
    }
}

#[test]
fn migrate_with_a_database_url_it_cannot_use_does_not_show_the_password() {
    let port = closed_port();
    for url in [
        // Nothing listens there.
        format!("postgres://ordersvc:{SECRET}@127.0.0.1:{port}/orders"),
        // The server answers, and refuses the role.
        format!("postgres://no_such_role_x:{SECRET}@127.0.0.1:5432/orders"),
        // The password as a parameter.
        format!("postgres://ordersvc@127.0.0.1:{port}/orders?password={SECRET}"),
    ] {
        assert_fails_without_the_secret(&["migrate", "--database-url", &url], "127.0.0.1");
    }
}

#[test]
fn serve_with_a_database_or_nats_url_it_cannot_use_does_not_show_the_password() {
    // PostgreSQL unreachable.
    let port = closed_port();
    let database_url = format!("postgres://ordersvc:{SECRET}@127.0.0.1:{port}/orders");
    assert_fails_without_the_secret(
        &[
            "serve",
            "--database-url",
            &database_url,
            "--http-addr",
            "127.0.0.1:0",
        ],
        "127.0.0.1",
    );

    // PostgreSQL fine (a test's own database), NATS unreachable.
    let app = spawn_app();
    let nats_url = format!("nats://user:{SECRET}@127.0.0.1:{port}");
    assert_fails_without_the_secret(
        &[
            &[
                "serve",
                "--database-url",
                &app.database_url,
                "--http-addr",
                "127.0.0.1:0",
            ][..],
            &app.names.consumer_flags(&nats_url),
        ]
        .concat(),
        &format!("127.0.0.1:{port}"),
    );
}

#[test]
fn help_does_not_show_the_urls_given_in_the_environment() {
    for command in ["serve", "migrate", "publish", "replay-from-db"] {
        let mut help = ordersvc(&[command, "--help"]);
        help.env(
            "DATABASE_URL",
            format!("postgres://ordersvc:{SECRET}@127.0.0.1/orders"),
        )
        .env("NATS_URL", format!("nats://{SECRET}@127.0.0.1:4222"))
        .env("NATS_TOKEN", SECRET)
        .env("ORDERSVC_ADMIN_TOKEN", SECRET);
        let output = run_to_end(help, b"");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command} --help: {output:?}");
        assert!(stdout.contains("--"), "{command} --help printed no help");
        assert!(!stdout.contains(SECRET), "{command} --help: {stdout}");
    }
    let mut help = ordersvc(&["bench", "ingest", "--help"]);
    help.env(
        "DATABASE_URL",
        format!("postgres://ordersvc:{SECRET}@127.0.0.1/orders"),
    );
    let output = run_to_end(help, b"");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(SECRET));
}
