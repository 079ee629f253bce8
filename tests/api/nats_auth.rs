//! NATS with credentials and TLS: `publish` and `serve` reach a server that wants a user and
//! password or a token, over TLS with a private CA or not, given as the URL's user info
//! (`nats://user:password@host`, `nats://token@host`, `tls://…`, comma-separated lists) or as
//! `--nats-token` and `--nats-tls-ca` (or their environment variables). A refused credential or
//! certificate fails at once instead of being retried until `--nats-connect-timeout`, a server
//! that is not up yet is waited for, and no output, log line or HTTP answer shows the password or
//! token. Each test has nats-servers of its own; the orders go to a database of its own on the
//! shared PostgreSQL.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::commands::{ordersvc, printed, run_to_end, serve_with};
use crate::support::isolation::{closed_port, random_secret, Names};
use crate::support::nats::{NatsAuth, NatsTls, OwnNats};
use crate::support::orders::model_with_uid;
use crate::support::postgres::SharedDatabase;
use crate::support::service::TestApp;

/// The connect timeout of the runs that must fail at once: far above `NOT_RETRIED`.
const CONNECT_TIMEOUT: &str = "30s";
/// What "at once" means for a refused credential or certificate: well under `CONNECT_TIMEOUT`,
/// with room for a loaded 2-core machine (and for serve's database and migrations first).
const NOT_RETRIED: Duration = Duration::from_secs(15);

/// How a command reaches NATS: a URL, and the flags and environment variables that go with it.
#[derive(Debug, Clone)]
struct Reach {
    url: String,
    flags: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Reach {
    fn url(url: String) -> Reach {
        Reach {
            url,
            flags: Vec::new(),
            env: Vec::new(),
        }
    }

    fn flag(mut self, name: &str, value: impl ToString) -> Reach {
        self.flags.push(name.to_owned());
        self.flags.push(value.to_string());
        self
    }

    fn env(mut self, name: &'static str, value: impl ToString) -> Reach {
        self.env.push((name, value.to_string()));
        self
    }

    fn apply(&self, command: &mut Command) {
        command.args(&self.flags);
        for (name, value) in &self.env {
            command.env(name, value);
        }
    }
}

/// `ordersvc publish` of what it reads on stdin to the test's stream, reaching NATS by `reach`
/// (the URL as `--nats-url`), with `extra` flags.
fn publish_command(reach: &Reach, names: &Names, extra: &[&str]) -> Command {
    let mut command =
        ordersvc(&[&["publish", "-j", "-"][..], &names.stream_flags(&reach.url)].concat());
    reach.apply(&mut command);
    command.args(extra);
    command
}

/// `ordersvc serve` on the test's names and database, reaching NATS by `reach` (the URL in
/// `NATS_URL`), with `extra` flags.
fn serve_command(reach: &Reach, names: &Names, db: &SharedDatabase, extra: &[&str]) -> Command {
    let settings = names.serve_settings(&db.url, &reach.url);
    let mut command = serve_with(&settings, extra);
    reach.apply(&mut command);
    command
}

#[track_caller]
fn assert_shows_none(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// Starts `serve` reaching `nats` by `serve` (logging at `log_filter`), then publishes one order
/// with each of `publishes`: each publish must succeed and its order be served. Neither any
/// output nor the service's logs, `/readyz` or `/metrics` may show the server's secret.
#[track_caller]
fn assert_publishes_and_serves(
    nats: &OwnNats,
    publishes: &[Reach],
    serve: &Reach,
    log_filter: &str,
) {
    let secret = nats.secret();
    let names = Names::fresh();
    // Before the service, so that it outlives it.
    let db = SharedDatabase::named(&names.suffix);
    let mut command = serve_command(serve, &names, &db, &[]);
    command.env("RUST_LOG", log_filter);
    let serving = TestApp::start_child(command, &names.suffix);

    for (n, reach) in publishes.iter().enumerate() {
        let uid = format!("auth-{}-{n}", names.suffix);
        let order = model_with_uid(&uid);
        let output = run_to_end(publish_command(reach, &names, &[]), &order);
        let printed = printed(&output);
        assert!(
            output.status.success(),
            "publish with {reach:?} failed\n{printed}"
        );
        assert_shows_none(&printed, &[secret], "publish");
        assert!(
            serving.wait_for_order(&uid) == order,
            "order {uid} is served with other bytes than were published"
        );
    }

    for path in ["/readyz", "/metrics"] {
        let (status, _, body) = serving.admin_get(path);
        assert_eq!(status, 200, "{path}");
        assert_shows_none(&String::from_utf8_lossy(&body), &[secret], path);
    }
    assert_shows_none(&serving.logs().join("\n"), &[secret], "the service's log");
}

/// Runs a command that must be refused at once: it fails within `NOT_RETRIED` (although it was
/// given `--nats-connect-timeout 30s`), its error says one of `any_of` (in any case), and no
/// output shows any of `secrets`.
#[track_caller]
fn assert_refused_at_once(mut command: Command, any_of: &[&str], secrets: &[&str], what: &str) {
    command.args(["--nats-connect-timeout", CONNECT_TIMEOUT]);
    let started = Instant::now();
    let output = run_to_end(command, b"{}");
    let took = started.elapsed();
    let printed = printed(&output);
    assert!(!output.status.success(), "{what} succeeded\n{printed}");
    assert!(
        took < NOT_RETRIED,
        "{what} took {took:?} to fail: it was retried\n{printed}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(
        any_of.iter().any(|word| stderr.contains(word)),
        "{what}'s error says none of {any_of:?}\n{printed}"
    );
    assert_shows_none(&printed, secrets, what);
}

/// The words that say a credential was refused.
const REFUSED_CREDENTIALS: [&str; 2] = ["authoriz", "credential"];

/// The usual way to give NATS credentials: `nats://user:password@host:port`, which ordersvc
/// takes apart and hands to the client (which would otherwise ignore them).
#[test]
fn publish_and_serve_reach_a_server_with_the_user_and_password_in_the_url() {
    let nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::Off);
    let reach = Reach::url(nats.url_with("nats", &nats.credentials()));
    assert_publishes_and_serves(&nats, std::slice::from_ref(&reach), &reach, "info");
}

/// A token as `--nats-token`, as `NATS_TOKEN` (kept out of the command line, which any user can
/// read), or as the user info of the URL.
#[test]
fn publish_and_serve_reach_a_server_with_a_token_as_a_flag_in_the_environment_or_in_the_url() {
    let nats = OwnNats::start(NatsAuth::Token, NatsTls::Off);
    let token = nats.secret();
    let publishes = [
        Reach::url(nats.url("nats")).flag("--nats-token", token),
        Reach::url(nats.url_with("nats", token)),
    ];
    let serve = Reach::url(nats.url("nats")).env("NATS_TOKEN", token);
    assert_publishes_and_serves(&nats, &publishes, &serve, "info");
}

/// A private CA: given as `--nats-tls-ca` or `NATS_TLS_CA`, with a `tls://` URL or with a plain
/// `nats://` one (the server demands TLS, and the client upgrades).
#[test]
fn publish_and_serve_reach_a_tls_server_with_a_user_and_password_and_its_private_ca() {
    let nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::On);
    let credentials = nats.credentials();
    let ca = nats.ca_file().display();
    let publishes = [
        Reach::url(nats.url_with("tls", &credentials)).flag("--nats-tls-ca", &ca),
        Reach::url(nats.url_with("nats", &credentials)).flag("--nats-tls-ca", &ca),
    ];
    let serve = Reach::url(nats.url_with("tls", &credentials)).env("NATS_TLS_CA", &ca);
    assert_publishes_and_serves(&nats, &publishes, &serve, "info");
}

/// A token and a private CA together, each given either way.
#[test]
fn publish_and_serve_reach_a_tls_server_with_a_token_and_its_private_ca() {
    let nats = OwnNats::start(NatsAuth::Token, NatsTls::On);
    let token = nats.secret();
    let ca = nats.ca_file().display();
    let publishes = [
        Reach::url(nats.url_with("tls", token)).flag("--nats-tls-ca", &ca),
        Reach::url(nats.url("nats"))
            .flag("--nats-token", token)
            .flag("--nats-tls-ca", &ca),
    ];
    let serve = Reach::url(nats.url("tls"))
        .env("NATS_TOKEN", token)
        .flag("--nats-tls-ca", &ca);
    assert_publishes_and_serves(&nats, &publishes, &serve, "info");
}

/// At `debug` the NATS client logs how it connects; neither the password nor the token may be
/// in those lines (nor anywhere else the service shows).
#[test]
fn serve_at_debug_level_logs_neither_the_nats_password_nor_the_token() {
    for auth in [NatsAuth::UserPassword, NatsAuth::Token] {
        let nats = OwnNats::start(auth, NatsTls::Off);
        let reach = Reach::url(nats.url_with("nats", &nats.credentials()));
        assert_publishes_and_serves(&nats, std::slice::from_ref(&reach), &reach, "debug");
    }
}

/// Each address of a list carries its own credentials; the first is not up, the second is.
#[test]
fn publish_takes_a_comma_separated_list_of_urls_with_credentials() {
    let nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::Off);
    let credentials = nats.credentials();
    let list = format!(
        "nats://{credentials}@127.0.0.1:{},{}",
        closed_port(),
        nats.url_with("nats", &credentials)
    );
    let names = Names::fresh();
    let order = model_with_uid(&format!("list-{}", names.suffix));
    let output = run_to_end(publish_command(&Reach::url(list), &names, &[]), &order);
    let printed = printed(&output);
    assert!(output.status.success(), "publish failed\n{printed}");
    assert!(printed.contains("published 1,"), "{printed}");
    assert_shows_none(&printed, &[nats.secret()], "publish");
}

/// Retrying a refused password cannot help: the operator must learn at once, from an error that
/// says it is the credentials, and neither the password given nor the right one may leak.
#[test]
fn a_wrong_password_fails_publish_and_serve_at_once_without_showing_either_password() {
    let nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::Off);
    let wrong = random_secret("wrongpw");
    let reach = Reach::url(nats.url_with("nats", &format!("{}:{wrong}", nats.user())));
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let secrets = [wrong.as_str(), nats.secret()];
    assert_refused_at_once(
        publish_command(&reach, &names, &[]),
        &REFUSED_CREDENTIALS,
        &secrets,
        "publish",
    );
    assert_refused_at_once(
        serve_command(&reach, &names, &db, &[]),
        &REFUSED_CREDENTIALS,
        &secrets,
        "serve",
    );
}

/// As for a wrong password, with the token given as a flag or in the URL.
#[test]
fn a_wrong_token_fails_publish_and_serve_at_once_without_showing_either_token() {
    let nats = OwnNats::start(NatsAuth::Token, NatsTls::Off);
    let wrong = random_secret("wrongtoken");
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let secrets = [wrong.as_str(), nats.secret()];
    let as_flag = Reach::url(nats.url("nats")).flag("--nats-token", &wrong);
    let in_url = Reach::url(nats.url_with("nats", &wrong));
    for (what, command) in [
        (
            "publish --nats-token",
            publish_command(&as_flag, &names, &[]),
        ),
        (
            "publish nats://TOKEN@",
            publish_command(&in_url, &names, &[]),
        ),
        (
            "serve nats://TOKEN@",
            serve_command(&in_url, &names, &db, &[]),
        ),
    ] {
        assert_refused_at_once(command, &REFUSED_CREDENTIALS, &secrets, what);
    }
}

/// The test CA is no public one: without `--nats-tls-ca`, or with another CA's file, the
/// server's certificate cannot be trusted, and retrying would not change that.
#[test]
fn a_tls_server_is_refused_at_once_without_its_ca_or_with_another_ca() {
    let nats = OwnNats::start(NatsAuth::UserPassword, NatsTls::On);
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let tls = Reach::url(nats.url_with("tls", &nats.credentials()));
    let other_ca = nats.other_ca_file().display();
    let secrets = [nats.secret()];
    for (what, command) in [
        ("publish without a CA", publish_command(&tls, &names, &[])),
        (
            "publish with another CA",
            publish_command(&tls.clone().flag("--nats-tls-ca", &other_ca), &names, &[]),
        ),
        (
            "serve with another CA",
            serve_command(&tls.clone().env("NATS_TLS_CA", &other_ca), &names, &db, &[]),
        ),
    ] {
        assert_refused_at_once(command, &["certificate"], &secrets, what);
    }
}

/// A node that is not up yet (a restart, a deploy in progress) is an I/O error, retried until
/// the connect timeout: publish started first still gets its order through.
#[test]
fn publish_waits_for_a_nats_server_that_is_not_up_yet() {
    let mut nats = OwnNats::prepare(NatsAuth::UserPassword, NatsTls::Off);
    let names = Names::fresh();
    let order = model_with_uid(&format!("late-{}", names.suffix));
    let reach = Reach::url(nats.url_with("nats", &nats.credentials()));
    let command = publish_command(&reach, &names, &["--nats-connect-timeout", "20s"]);
    let publish = std::thread::spawn(move || run_to_end(command, &order));
    std::thread::sleep(Duration::from_secs(2));
    nats.run();
    let output = publish.join().expect("the publish thread panicked");
    let printed = printed(&output);
    assert!(
        output.status.success(),
        "publish did not wait for the server\n{printed}\nserver log:\n{}",
        nats.log()
    );
    assert!(printed.contains("published 1,"), "{printed}");
}
