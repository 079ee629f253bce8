//! `spawn_app()`: the real `ordersvc serve` binary against the real PostgreSQL and NATS, isolated
//! per test by a random suffix (its own database, stream, subject and durable consumer).
//!
//! Helpers are synchronous: a private tokio runtime inside `TestApp` runs the NATS and sqlx calls,
//! so tests are plain `#[test]` functions. Dropping the `TestApp` (also while a test panics) kills
//! the service, deletes the stream (and with it the consumer) and drops the database.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, publish::PublishAck};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use ordersvc_client::child::{serve_command, OnDrop, ServeProcess, ServeSettings, Stopped};
use ordersvc_client::publisher::{Outcome, Pipeline};
use ordersvc_service::changelog;

use crate::proxy::Proxy;

/// Where the service's database lives unless `ORDERSVC_TEST_DATABASE_URL` says otherwise; only
/// the database name of either is replaced.
const DEFAULT_DATABASE_URL: &str = "postgres://ordersvc:ordersvc@127.0.0.1:5432/postgres";
/// The NATS server unless `ORDERSVC_TEST_NATS_URL` says otherwise.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long the service may take to start (migrations, restore) and become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a published order may take to be served.
const ORDER_DEADLINE: Duration = Duration::from_secs(30);
/// How long any other eventual outcome may take.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// How long the service may take to stop after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Between two polls.
const POLL: Duration = Duration::from_millis(25);
/// Publish acks awaited at once by `publish_many`.
const PUBLISH_WINDOW: usize = 256;

/// A running service with its own database, stream, subject and durable consumer.
pub struct TestApp {
    /// The HTTP address the service listens on (it changes on `restart`).
    pub addr: SocketAddr,
    /// The admin listener's address (`/metrics`, `/rejected`); it changes on `restart`.
    pub admin_addr: SocketAddr,
    /// The random part of every name, e.g. `3fa9c0d1`.
    pub suffix: String,
    pub database_url: String,
    pub nats_url: String,
    pub stream: String,
    pub subject: String,
    pub durable: String,
    /// The URLs the service is given: the ones above, or a proxy's address in their place.
    service_database_url: String,
    service_nats_url: String,
    /// The running service; dropping it kills it.
    child: Option<ServeProcess>,
    /// Every line the service has logged so far (all runs).
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log_filter: Option<String>,
    serve_args: Vec<String>,
    db: Option<PgPool>,
    js: jetstream::Context,
    http: ureq::Agent,
    // Last, so that it is dropped after everything that runs on it.
    rt: tokio::runtime::Runtime,
}

/// A row of `rejected_messages`.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub stream_seq: i64,
    pub kind: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// An HTTP answer: status, headers (lower-case names), body.
pub type Reply = (u16, HashMap<String, String>, Vec<u8>);

/// Starts the service on fresh names and waits until it is ready and its consumer exists.
pub fn spawn_app() -> TestApp {
    spawn_app_with(&[])
}

/// `spawn_app` with extra `serve` flags (kept for restarts).
pub fn spawn_app_with(serve_args: &[&str]) -> TestApp {
    spawn_app_with_options(SpawnOptions {
        serve_args,
        ..SpawnOptions::default()
    })
}

/// How to start the service, for `spawn_app_with_options`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpawnOptions<'a> {
    /// The service reaches PostgreSQL at this address (a proxy's) instead of the real one.
    pub db_via: Option<SocketAddr>,
    /// The service reaches NATS at this address (a proxy's) instead of the real one.
    pub nats_via: Option<SocketAddr>,
    /// Extra `serve` flags (kept for restarts).
    pub serve_args: &'a [&'a str],
    /// The service's `RUST_LOG` instead of the default filter.
    pub log_filter: Option<&'a str>,
}

/// `spawn_app` with options. Only the service's URLs go through `db_via` and `nats_via`: the
/// test's own connections (publishing, SQL checks, cleanup) stay direct.
pub fn spawn_app_with_options(options: SpawnOptions) -> TestApp {
    let serve_args = options.serve_args;
    let suffix = format!("{:08x}", rand::random::<u32>());
    let base_url = base_database_url();
    let nats_url = base_nats_url();
    let database_url = with_database(&base_url, &format!("ordersvc_test_{suffix}"));
    let service_database_url = match options.db_via {
        Some(via) => with_host(&database_url, via),
        None => database_url.clone(),
    };
    let service_nats_url = match options.nats_via {
        Some(via) => with_host(&nats_url, via),
        None => nats_url.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("cannot build the tests' tokio runtime");
    let js = rt.block_on(async {
        let client = async_nats::connect(&nats_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to NATS at {nats_url}: {e}"));
        jetstream::new(client)
    });
    let mut app = TestApp {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url,
        nats_url,
        service_database_url,
        service_nats_url,
        stream: format!("TEST_{}", suffix.to_uppercase()),
        subject: format!("test.{suffix}"),
        durable: format!("durable_{suffix}"),
        suffix,
        child: None,
        logs: std::sync::Arc::default(),
        log_filter: options.log_filter.map(str::to_owned),
        serve_args: serve_args.iter().map(|a| (*a).to_owned()).collect(),
        db: None,
        js,
        http: http_agent(),
        rt,
    };
    // From here on, a panic drops `app`, which cleans up whatever was created.
    app.start();
    let url = app.database_url.clone();
    let pool = app.rt.block_on(
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url),
    );
    app.db = Some(pool.expect("cannot connect to the test database that the service created"));
    app
}

/// A server the service can be made to reach only through a `Proxy`.
#[derive(Debug, Clone, Copy)]
pub enum Server {
    Postgres,
    Nats,
}

/// Starts the service reaching `server` only through a new `Proxy` (the test's own connections
/// stay direct), and checks that it really went through it. The proxy comes first so that it
/// outlives the service.
pub fn spawn_app_behind_proxy(server: Server) -> (Proxy, TestApp) {
    let proxy = Proxy::start(match server {
        Server::Postgres => postgres_addr(),
        Server::Nats => nats_addr(),
    });
    let via = Some(proxy.addr());
    let options = match server {
        Server::Postgres => SpawnOptions {
            db_via: via,
            ..SpawnOptions::default()
        },
        Server::Nats => SpawnOptions {
            nats_via: via,
            ..SpawnOptions::default()
        },
    };
    let app = spawn_app_with_options(options);
    assert!(
        proxy.accepted() > 0,
        "the service bypassed the proxy to {server:?}"
    );
    (proxy, app)
}

/// The PostgreSQL server the tests use (`ORDERSVC_TEST_DATABASE_URL` or the default).
pub fn postgres_addr() -> SocketAddr {
    server_addr(&base_database_url(), 5432)
}

/// The NATS server the tests use (`ORDERSVC_TEST_NATS_URL` or the default).
pub fn nats_addr() -> SocketAddr {
    server_addr(&base_nats_url(), 4222)
}

/// The shared PostgreSQL's URL (`ORDERSVC_TEST_DATABASE_URL` or the default).
pub fn base_database_url() -> String {
    std::env::var("ORDERSVC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The shared NATS server's URL (`ORDERSVC_TEST_NATS_URL` or the default).
pub fn base_nats_url() -> String {
    std::env::var("ORDERSVC_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned())
}

/// The `host:port` part of a URL: after the scheme and any `user:password@`, up to the path.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host, end)
}

/// `url` with its host and port replaced by `addr` (scheme, user, path and parameters kept).
fn with_host(url: &str, addr: SocketAddr) -> String {
    let (start, end) = authority(url);
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// The address a URL's `host:port` resolves to (`default_port` when it has none).
fn server_addr(url: &str, default_port: u16) -> SocketAddr {
    let (start, end) = authority(url);
    let host_port = &url[start..end];
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {with_port} (from {url})"))
}

/// The environment variables through which `ordersvc` finds its servers and their secrets:
/// inherited from whoever runs the tests, they would change what a test means.
const CONNECTION_ENV: [&str; 5] = [
    "DATABASE_URL",
    "NATS_URL",
    "NATS_TOKEN",
    "NATS_TLS_CA",
    "ORDERSVC_NATS_CONNECT_TIMEOUT",
];

/// `ordersvc ARGS` logging at `info` (more than the client commands' default, so that log lines
/// are checked too), with none of `CONNECTION_ENV` inherited: a test sets the ones it means.
pub fn ordersvc(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ordersvc"));
    // A `serve` among them takes a free admin port, not the default one (other tests run at the
    // same time); a test's own `--admin-addr` wins over the variable.
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env("ORDERSVC_ADMIN_ADDR", "127.0.0.1:0");
    for name in CONNECTION_ENV {
        command.env_remove(name);
    }
    command
}

/// `ordersvc serve` with `settings` (the URLs in its environment) and then `extra` flags, with
/// nothing else of `CONNECTION_ENV` inherited, logging like a `TestApp` (set `RUST_LOG` after
/// this to change it). For `Serving::start`, or `run_to_end` when it must fail.
pub fn serve_with(settings: &ServeSettings<'_>, extra: &[&str]) -> Command {
    let mut command = serve_command(Path::new(env!("CARGO_BIN_EXE_ordersvc")), settings, extra);
    // serve_command has set (or removed) the first four.
    for name in &CONNECTION_ENV[4..] {
        command.env_remove(name);
    }
    command.env("RUST_LOG", service_log_filter());
    command
}

/// Runs a command to its end, feeding it `stdin`, and returns what it printed; kills it and
/// panics if it has not finished within `EVENTUALLY`.
pub fn run_to_end(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the command");
    // Each pipe has its own thread, so that a command that writes much before it reads its
    // input (or the other way round) cannot deadlock with this one.
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that exits without reading its input is not an error here.
        let _ = input.write_all(&stdin);
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + EVENTUALLY;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {EVENTUALLY:?}");
        }
        std::thread::sleep(POLL);
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("the stdout reader panicked"),
        stderr: stderr.join().expect("the stderr reader panicked"),
    }
}

/// The count of orders in a replica's cache, from its `/readyz` answer (0 if it has none).
pub fn cached_orders(readyz: &Reply) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&readyz.2)
        .ok()
        .and_then(|json| json["orders"].as_u64())
        .unwrap_or(0)
}

/// New orders a replica stored itself, from its `/metrics` answer.
pub fn stored_here(metrics: &Reply) -> f64 {
    let text = std::str::from_utf8(&metrics.2).expect("the metrics are UTF-8");
    text.lines()
        .filter(|line| {
            line.starts_with("ordersvc_messages_total{") && line.contains("outcome=\"stored\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Both outputs of a run, for messages and for looking for secrets.
pub fn printed(output: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a command to its end like `run_to_end` and returns what it printed on stdout; panics,
/// showing the command and both outputs, unless it exited successfully.
pub fn run_successfully(command: Command, stdin: &[u8]) -> String {
    let shown = format!("{command:?}");
    let output = run_to_end(command, stdin);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{shown} failed ({})\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago): connecting to it
/// is refused at once.
pub fn closed_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a port on 127.0.0.1");
    listener.local_addr().expect("a bound address").port()
}

/// A file under testdata/, byte for byte.
pub fn testdata(path: &str) -> Vec<u8> {
    let full = format!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/{}"), path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// The orders as `publish_many` takes them: each with its order_uid as `Nats-Msg-Id`.
pub fn with_ids(orders: &[(String, Vec<u8>)]) -> impl Iterator<Item = (Option<&str>, &[u8])> {
    orders
        .iter()
        .map(|(uid, message)| (Some(uid.as_str()), message.as_slice()))
}

/// A directory under the system's temporary one, removed when dropped (also on a panic).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// `ordersvc-test-{suffix}`: give it the `TestApp`'s suffix, so that tests running at the
    /// same time do not share it.
    pub fn new(suffix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ordersvc-test-{suffix}"));
        std::fs::create_dir_all(&path).expect("cannot create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// testdata/model.json with another order_uid (and nothing else changed).
pub fn model_with_uid(uid: &str) -> Vec<u8> {
    let model = String::from_utf8(testdata("model.json")).expect("model.json is UTF-8");
    let from = r#""order_uid": "b563feb7b2b84b6test""#;
    assert!(model.contains(from), "model.json no longer has {from}");
    model
        .replacen(from, &format!(r#""order_uid": "{uid}""#), 1)
        .into_bytes()
}

/// `url` with its database name replaced by `name` (user, host, port and parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = main.find("://").map_or(0, |i| i + 3);
    let path = main[authority..]
        .find('/')
        .map_or(main.len(), |i| authority + i);
    format!("{}/{name}{query}", &main[..path])
}

/// testdata/model.json as text, with `from` replaced once by `to`.
pub fn replace_once(model: &str, from: &str, to: &str) -> String {
    assert!(model.contains(from), "the model no longer has {from}");
    model.replacen(from, to, 1)
}

/// A valid order of exactly `size` bytes: the model with huge strings of several kinds
/// (multi-byte UTF-8, JSON escapes, markup, and plain ASCII to make up the exact size).
pub fn order_of_size(uid: &str, size: usize) -> Vec<u8> {
    let model = String::from_utf8(model_with_uid(uid)).expect("model.json is UTF-8");
    let wide = "Ü🦀ж".repeat(30_000); // 9 bytes each
    let escaped = r#"\"\\\n\t\u0000\u00e9</script><b>"#.repeat(10_000);
    let order = replace_once(
        &model,
        r#""address": "Ploshad Mira 15""#,
        &format!(r#""address": "{wide}""#),
    );
    let order = replace_once(
        &order,
        r#""name": "Mascaras""#,
        &format!(r#""name": "{escaped}""#),
    );
    let placeholder = r#""customer_id": "test""#;
    let without_padding = order.len() - "test".len();
    assert!(
        without_padding < size,
        "the fixed part is already too large"
    );
    let padding = "c".repeat(size - without_padding);
    let order = replace_once(
        &order,
        placeholder,
        &format!(r#""customer_id": "{padding}""#),
    );
    assert_eq!(order.len(), size);
    order.into_bytes()
}

/// The model with this id, creation time (RFC 3339), top-level track number and customer (the
/// items' track numbers stay as they are).
pub fn model_with(uid: &str, date: &str, track: &str, customer: &str) -> Vec<u8> {
    let model = String::from_utf8(model_with_uid(uid)).expect("UTF-8");
    let model = replace_once(
        &model,
        r#""date_created": "2021-11-26T06:22:19Z""#,
        &format!(r#""date_created": {}"#, serde_json::json!(date)),
    );
    // The first track_number is the order's own.
    let model = replace_once(
        &model,
        r#""track_number": "WBILMTESTTRACK""#,
        &format!(r#""track_number": {}"#, serde_json::json!(track)),
    );
    replace_once(
        &model,
        r#""customer_id": "test""#,
        &format!(r#""customer_id": {}"#, serde_json::json!(customer)),
    )
    .into_bytes()
}

/// The status code of a raw HTTP answer.
pub fn status_of(answer: &[u8]) -> u16 {
    let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(answer)))
}

impl TestApp {
    /// Spawns `ordersvc serve` and waits for it: address logged, `/readyz` 200, consumer present.
    fn start(&mut self) {
        assert!(self.child.is_none(), "the service is already running");
        let mut command = self.serve_command(&self.serve_args);
        command.env(
            "RUST_LOG",
            self.log_filter.clone().unwrap_or_else(service_log_filter),
        );
        let (child, addrs) = spawn_serve(command, &self.suffix, &self.logs);
        self.child = Some(child);
        self.addr = addrs.public;
        self.admin_addr = addrs.admin;
        let child = self.child.as_mut().expect("just set");
        wait_until_ready(&self.http, self.addr, child);
        // Ready can come before ingest has made the stream and the consumer: until they exist, a
        // publish would find no stream.
        self.wait_until(
            |app| app.try_consumer_info().is_ok(),
            "the service to create its stream and durable consumer",
        );
    }

    /// Every line the service has logged so far, over all its runs.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the service is not running");
        child.kill().expect("cannot SIGKILL the service");
    }

    /// SIGTERM, and wait (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the service is not running");
        match child
            .terminate(STOP_DEADLINE)
            .expect("cannot stop the service")
        {
            Stopped::Exited(status) => status,
            Stopped::Killed(_) => {
                panic!("the service did not stop within {STOP_DEADLINE:?} of SIGTERM")
            }
        }
    }

    /// Starts the service again on the same database, stream, subject and durable (after `kill`
    /// or `terminate`), and waits until it is ready.
    pub fn restart(&mut self) {
        self.start();
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[])
    }

    /// Any method, with extra headers; 4xx and 5xx are answers, not errors.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http_request(&self.http, self.addr, method, path, headers)
    }

    /// `GET path`, which must answer `status` with a JSON body (an error's): the body, parsed.
    #[track_caller]
    pub fn get_json_error(&self, path: &str, status: u16) -> serde_json::Value {
        let (got, headers, body) = self.get(path);
        assert_eq!(got, status, "GET {path}");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "GET {path}"
        );
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("GET {path}: the body is not JSON ({e})"))
    }

    /// `GET path` on the admin listener.
    pub fn admin_get(&self, path: &str) -> Reply {
        self.admin_request("GET", path, &[])
    }

    /// Any method on the admin listener, with extra headers.
    pub fn admin_request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http_request(&self.http, self.admin_addr, method, path, headers)
    }

    /// The service's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("the service is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("cannot read the service's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .expect("no VmHWM in /proc status")
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let (status, _, body) = self.admin_get("/metrics");
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("the metrics are UTF-8");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Sends `request` as it is on a new connection (which it should ask to close) and returns
    /// every byte the service answers: for checks an HTTP client would hide, such as a HEAD body.
    pub fn raw_http(&self, request: impl AsRef<[u8]>) -> Vec<u8> {
        let mut conn = TcpStream::connect(self.addr).expect("cannot connect to the service");
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("set a read timeout");
        conn.write_all(request.as_ref())
            .expect("cannot send the request");
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .expect("the service did not close the connection");
        answer
    }

    /// Publishes without `Nats-Msg-Id` (the server cannot drop repeats) and awaits the ack.
    pub fn publish(&self, payload: &[u8]) -> PublishAck {
        self.rt.block_on(async {
            self.js
                .publish(self.subject.clone(), payload.to_vec().into())
                .await
                .expect("cannot publish")
                .await
                .expect("the publish was not acknowledged")
        })
    }

    /// Publishes many messages with their acks pipelined; see `Publisher::publish_many`.
    pub fn publish_many<'m>(
        &self,
        messages: impl IntoIterator<Item = (Option<&'m str>, &'m [u8])>,
    ) -> Vec<u64> {
        self.publisher().publish_many(messages)
    }

    /// A handle that publishes to this test's subject from any thread, independently of the
    /// `TestApp` (so that the test can kill or stop the service meanwhile).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            js: self.js.clone(),
            subject: self.subject.clone(),
            rt: self.rt.handle().clone(),
        }
    }

    /// `ordersvc publish` aimed at this test's NATS, stream and subject; add the arguments.
    pub fn publish_command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ordersvc"));
        command
            .arg("publish")
            .args(["--nats-url", &self.nats_url])
            .args(["--stream", &self.stream])
            .args(["--subject", &self.subject])
            .env("RUST_LOG", "info");
        command
    }

    /// Runs a command to its end (bounded), feeding it `stdin`, and returns what it printed.
    pub fn run(&self, command: Command, stdin: &[u8]) -> Output {
        run_to_end(command, stdin)
    }

    /// Polls `GET /order/{uid}` until it is 200 and returns the body.
    pub fn wait_for_order(&self, uid: &str) -> Vec<u8> {
        wait_for_order_at(&self.http, self.addr, uid)
    }

    /// Publishes testdata/model.json with the order_uid `uid`, waits until it is served, and
    /// returns the message.
    pub fn publish_model_and_wait(&self, uid: &str) -> Vec<u8> {
        let order = model_with_uid(uid);
        self.publish(&order);
        self.wait_for_order(uid);
        order
    }

    /// Polls `condition` until it holds; panics naming `what` after a generous deadline.
    pub fn wait_until(&self, mut condition: impl FnMut(&TestApp) -> bool, what: &str) {
        let deadline = Instant::now() + EVENTUALLY;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {EVENTUALLY:?} waiting for {what}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every message on the stream has been delivered and acked: after that, the
    /// database holds the final outcome of each.
    pub fn wait_until_drained(&self) {
        self.wait_until(
            |app| {
                let info = app.consumer_info();
                info.num_pending == 0 && info.num_ack_pending == 0
            },
            "the consumer to have no message pending or unacked",
        );
    }

    /// The durable consumer's state as the server reports it.
    pub fn consumer_info(&self) -> consumer::Info {
        self.try_consumer_info()
            .unwrap_or_else(|e| panic!("cannot read the consumer's info: {e}"))
    }

    fn try_consumer_info(&self) -> Result<consumer::Info, String> {
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(&self.stream)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .consumer_info(&self.durable)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// How many messages this test's stream holds.
    pub fn stream_messages(&self) -> u64 {
        self.rt.block_on(async {
            let mut stream = self
                .js
                .get_stream(&self.stream)
                .await
                .expect("cannot get the stream");
            stream
                .info()
                .await
                .expect("cannot get the stream's info")
                .state
                .messages
        })
    }

    /// Deletes the stream (and so the consumer) behind the service's back.
    pub fn delete_stream(&self) {
        self.rt
            .block_on(self.js.delete_stream(&self.stream))
            .expect("cannot delete the stream");
    }

    /// Every rejected message, in stream order.
    pub fn rejected(&self) -> Vec<RejectedRow> {
        let rows: Vec<(i64, String, String, Vec<u8>)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT stream_seq, kind, reason, payload FROM rejected_messages \
                     ORDER BY stream_seq, id",
                )
                .fetch_all(self.db()),
            )
            .expect("cannot read rejected_messages");
        rows.into_iter()
            .map(|(stream_seq, kind, reason, payload)| RejectedRow {
                stream_seq,
                kind,
                reason,
                payload,
            })
            .collect()
    }

    /// Number of stored orders.
    pub fn orders_count(&self) -> i64 {
        self.rt
            .block_on(sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(self.db()))
            .expect("cannot count the orders")
    }

    /// One integer from a query in the test database (e.g. `SELECT max(stream_seq) FROM orders`;
    /// NULL reads as 0).
    pub fn query_i64(&self, query: &str) -> i64 {
        let value: Option<i64> = self
            .rt
            .block_on(sqlx::query_scalar(query).fetch_one(self.db()))
            .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"));
        value.unwrap_or(0)
    }

    /// Runs one SQL statement in the test database as its owner (the service's role).
    pub fn execute_as_owner(&self, statement: &str) {
        self.rt
            .block_on(sqlx::query(statement).execute(self.db()))
            .unwrap_or_else(|e| panic!("cannot run {statement:?}: {e}"));
    }

    fn db(&self) -> &PgPool {
        self.db.as_ref().expect("the test database is connected")
    }
}

impl TestApp {
    /// `ordersvc serve` on this test's names and a free port, then `extra` flags: the same
    /// command line as `bench ingest` starts (URLs in the environment). Standard I/O is the
    /// caller's to set.
    pub fn serve_command<S: AsRef<std::ffi::OsStr>>(&self, extra: &[S]) -> Command {
        let settings = ServeSettings {
            database_url: &self.service_database_url,
            nats_url: &self.service_nats_url,
            nats_token: None,
            nats_tls_ca: None,
            stream: &self.stream,
            subject: &self.subject,
            durable: &self.durable,
            http_addr: "127.0.0.1:0",
        };
        serve_command(Path::new(env!("CARGO_BIN_EXE_ordersvc")), &settings, extra)
    }

    /// `/readyz`: its status and its reasons (empty when ready), after checking that 200 and 503
    /// answer the same JSON shape, with this process's cache count.
    pub fn readiness(&self) -> (u16, Vec<String>) {
        let (status, _, body) = self.get("/readyz");
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("/readyz answered {status} without JSON ({e})"));
        let word = if status == 200 { "ready" } else { "not ready" };
        assert_eq!(json["status"], word, "/readyz {status}: {json}");
        assert!(
            json["orders"].is_u64(),
            "/readyz without its cache count: {json}"
        );
        let reasons: Vec<String> = json["reasons"]
            .as_array()
            .unwrap_or_else(|| panic!("/readyz without a reasons list: {json}"))
            .iter()
            .map(|reason| reason.as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            reasons.is_empty(),
            status == 200,
            "/readyz {status} with the reasons {reasons:?}"
        );
        (status, reasons)
    }

    /// Waits until `/readyz` answers 503 and returns its reasons.
    pub fn wait_until_unready(&self, what: &str) -> Vec<String> {
        let mut reasons = Vec::new();
        self.wait_until(
            |app| {
                let (status, now) = app.readiness();
                reasons = now;
                status == 503
            },
            &format!("/readyz to answer 503 while {what}"),
        );
        reasons
    }

    /// Creates a stream of the test's own (named with its suffix, deleted with the test) that
    /// captures `subject`, so that the service's stream cannot be made on it.
    pub fn take_subject_with_another_stream(&self, subject: &str) -> String {
        let name = format!("BLOCKER_{}", self.suffix);
        self.rt
            .block_on(self.js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.to_owned()],
                ..Default::default()
            }))
            .expect("cannot create the blocking stream");
        name
    }

    /// Deletes the service's changelog stream (the service recreates it).
    pub fn delete_changelog(&self) {
        let name = changelog::stream_name(&self.stream, &self.durable);
        self.rt
            .block_on(self.js.delete_stream(&name))
            .expect("cannot delete the changelog stream");
    }

    /// Purges the service's changelog stream: it keeps its sequence numbers but no message.
    pub fn purge_changelog(&self) {
        let name = changelog::stream_name(&self.stream, &self.durable);
        self.rt
            .block_on(async {
                let stream = self.js.get_stream(&name).await?;
                stream.purge().await.map(|_| ()).map_err(Into::into)
            })
            .unwrap_or_else(|e: Box<dyn std::error::Error + Send + Sync>| {
                panic!("cannot purge the changelog stream: {e}")
            });
    }

    /// Deletes a stream made by `take_subject_with_another_stream`.
    pub fn delete_other_stream(&self, name: &str) {
        self.rt
            .block_on(self.js.delete_stream(name))
            .expect("cannot delete the blocking stream");
    }
}

/// `n` copies of testdata/model.json, each with its own order_uid `{prefix}-{i:05}`.
pub fn generated_orders(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let uid = format!("{prefix}-{i:05}");
            let message = model_with_uid(&uid);
            (uid, message)
        })
        .collect()
}

/// Asserts that every order answers 200 on its first request (no waiting) with exactly the bytes
/// that were published. A failure points at the caller's line.
#[track_caller]
pub fn assert_every_order_is_served(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    for (uid, message) in orders {
        let (status, _, body) = app.get(&format!("/order/{uid}"));
        assert_eq!(status, 200, "{uid}: {}", String::from_utf8_lossy(&body));
        // Not assert_eq!: the bodies can be megabytes.
        assert!(&body == message, "{uid}: the body differs from the message");
    }
}

/// A transaction of the test's own that holds an exclusive lock on `orders`: every write of the
/// service waits for it, with its query in flight and no answer (while pings still succeed).
pub struct OrdersLocked {
    // Before the runtime: the connection is dropped inside it.
    conn: Option<PgConnection>,
    rt: tokio::runtime::Runtime,
}

impl OrdersLocked {
    pub fn take(database_url: &str) -> OrdersLocked {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the lock");
        let conn = rt.block_on(async {
            let mut conn = PgConnection::connect(database_url).await?;
            sqlx::query("BEGIN").execute(&mut conn).await?;
            sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        });
        OrdersLocked {
            conn: Some(conn.expect("cannot lock the orders table")),
            rt,
        }
    }

    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.rt
                .block_on(async {
                    sqlx::query("ROLLBACK").execute(&mut conn).await?;
                    conn.close().await
                })
                .expect("cannot release the lock");
        }
    }
}

impl Drop for OrdersLocked {
    fn drop(&mut self) {
        // Closing the connection ends the transaction, and with it the lock.
        let _inside = self.rt.enter();
        drop(self.conn.take());
    }
}

/// Publishes to a test's subject; made by `TestApp::publisher`.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    subject: String,
    rt: tokio::runtime::Handle,
}

impl Publisher {
    /// Publishes every message in order, each with `Nats-Msg-Id` when it has an id, with up to
    /// `PUBLISH_WINDOW` acks awaited at once (the service's own pipeline, as `ordersvc publish`
    /// uses); returns the stream sequences in the same order (a repeat the server dropped within
    /// its duplicate window gets the original's sequence).
    pub fn publish_many<'m>(
        &self,
        messages: impl IntoIterator<Item = (Option<&'m str>, &'m [u8])>,
    ) -> Vec<u64> {
        self.rt.block_on(async {
            let mut sequences = Vec::new();
            let on_outcome = |outcome: Outcome<()>| {
                let ack = outcome.result.unwrap_or_else(|failure| {
                    panic!("message {} was not published: {failure}", outcome.index)
                });
                let at = usize::try_from(outcome.index).expect("an index fits in usize");
                if sequences.len() <= at {
                    sequences.resize(at + 1, 0);
                }
                sequences[at] = ack.sequence;
            };
            let mut pipeline =
                Pipeline::new(self.js.clone(), &self.subject, PUBLISH_WINDOW, on_outcome);
            for (msg_id, payload) in messages {
                pipeline.send((), payload.to_vec().into(), msg_id).await;
            }
            pipeline.finish().await;
            sequences
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The service first (dropping it kills it), so that it lets go of the database.
        drop(self.child.take());
        let db = self.db.take();
        let maintenance = with_database(&self.database_url, "postgres");
        let name = format!("ordersvc_test_{}", self.suffix);
        // Never panic here: this also runs while a failed test unwinds.
        let result = self.rt.block_on(async {
            let bounded = Duration::from_secs(30);
            if let Some(pool) = db {
                let _ = tokio::time::timeout(bounded, pool.close()).await;
            }
            let stream = tokio::time::timeout(bounded, self.js.delete_stream(&self.stream)).await;
            let changelog = changelog::stream_name(&self.stream, &self.durable);
            let _ = tokio::time::timeout(bounded, self.js.delete_stream(&changelog)).await;
            // Made only by some tests; usually absent.
            let blocker = format!("BLOCKER_{}", self.suffix);
            let _ = tokio::time::timeout(bounded, self.js.delete_stream(&blocker)).await;
            let database = tokio::time::timeout(bounded, async {
                let mut conn = PgConnection::connect(&maintenance).await?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&sql).execute(&mut conn).await?;
                conn.close().await
            })
            .await;
            (stream, database)
        });
        match result.0 {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("[{}] cleanup: cannot delete stream: {e}", self.suffix),
            Err(_) => eprintln!("[{}] cleanup: deleting the stream timed out", self.suffix),
        }
        match result.1 {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[{}] cleanup: cannot drop {name}: {e}", self.suffix),
            Err(_) => eprintln!("[{}] cleanup: dropping {name} timed out", self.suffix),
        }
    }
}

/// The service's log filter: `RUST_LOG` if the tests were given one (to debug a test), else
/// `info`; the `listening on` line is always kept, since `start` reads the address from it.
fn service_log_filter() -> String {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".to_owned());
    format!("{base},ordersvc_service::serve=info")
}

/// Which listener a `listening on` log line names, and its address.
fn listening_addr(line: &str) -> Option<(Listener, SocketAddr)> {
    const ADMIN: &str = "admin listening on http://";
    const PUBLIC: &str = "listening on http://";
    let (listener, rest) = match line.find(ADMIN) {
        Some(at) => (Listener::Admin, &line[at + ADMIN.len()..]),
        None => (Listener::Public, &line[line.find(PUBLIC)? + PUBLIC.len()..]),
    };
    // Text logs end the address with a space, JSON logs with a quote.
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    Some((listener, rest[..end].parse().ok()?))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

/// The two addresses a service logs at start.
#[derive(Clone, Copy, Debug)]
struct Addrs {
    public: SocketAddr,
    admin: SocketAddr,
}

/// The tests' HTTP client: bounded requests, no redirects followed.
fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .redirects(0)
        .build()
}

/// Spawns a `serve` command line (text logs; standard I/O is set here) and waits until it logs
/// its HTTP and admin addresses. Every log line goes to `logs` and is forwarded to the test's stderr with
/// `prefix` (cargo shows them when a test fails). The child is killed when the returned process
/// is dropped, also when this panics.
fn spawn_serve(
    mut command: Command,
    prefix: &str,
    logs: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> (ServeProcess, Addrs) {
    command
        .env("ORDERSVC_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child =
        ServeProcess::spawn(&mut command, OnDrop::Kill).expect("cannot start the ordersvc binary");
    let stderr = child.take_stderr().expect("stderr is piped");

    // The reader keeps forwarding every line and hands over the addresses from the two
    // "listening on" lines.
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_owned();
    let logs = logs.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let (mut public, mut admin) = (None, None);
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            eprintln!("[{prefix}] {line}");
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone().into_owned());
            match listening_addr(&line) {
                Some((Listener::Public, addr)) => public = Some(addr),
                Some((Listener::Admin, addr)) => admin = Some(addr),
                None => {}
            }
            if let (Some(public), Some(admin)) = (public, admin) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Addrs { public, admin });
                }
            }
        }
    });
    match rx.recv_timeout(START_DEADLINE) {
        Ok(addrs) => (child, addrs),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().ok();
            panic!("the service exited ({status:?}) before logging its addresses")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the service logged no two `listening on` lines within {START_DEADLINE:?}")
        }
    }
}

/// Polls `/readyz` at `addr` until it answers 200; panics if `child` exits first or after
/// `START_DEADLINE`.
fn wait_until_ready(http: &ureq::Agent, addr: SocketAddr, child: &mut ServeProcess) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let (status, _, body) = http_request(http, addr, "GET", "/readyz", &[]);
        if status == 200 {
            return;
        }
        if let Ok(Some(exit)) = child.exited() {
            panic!("the service exited ({exit}) before it was ready");
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after {START_DEADLINE:?}: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(POLL);
    }
}

/// Any method at `addr`, with extra headers; 4xx and 5xx are answers, not errors.
fn http_request(
    http: &ureq::Agent,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("http://{addr}{path}");
    let mut request = http.request(method, &url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{method} {url} failed: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("cannot read the body of {method} {url}: {e}"));
    (status, headers, body)
}

/// Polls `GET /order/{uid}` at `addr` until it is 200 and returns the body.
fn wait_for_order_at(http: &ureq::Agent, addr: SocketAddr, uid: &str) -> Vec<u8> {
    let deadline = Instant::now() + ORDER_DEADLINE;
    loop {
        let (status, _, body) = http_request(http, addr, "GET", &format!("/order/{uid}"), &[]);
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "order {uid} was not served within {ORDER_DEADLINE:?}; the last answer was {status} {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(POLL);
    }
}

/// `ordersvc serve` from a command line of the test's own (its own servers, URLs and flags), for
/// tests that a `TestApp` on the shared servers cannot express. Dropping it kills the service.
pub struct Serving {
    /// The HTTP address the service listens on.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    child: ServeProcess,
    /// Every line the service has logged so far.
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    http: ureq::Agent,
}

impl Serving {
    /// Spawns `command` (a `serve` command line, e.g. from `serve_command`; `RUST_LOG` is the
    /// caller's, standard I/O is set here) and waits until `/readyz` answers 200. Log lines are
    /// forwarded with `prefix`.
    pub fn start(command: Command, prefix: &str) -> Serving {
        let logs = std::sync::Arc::default();
        let (child, addrs) = spawn_serve(command, prefix, &logs);
        let mut serving = Serving {
            addr: addrs.public,
            admin_addr: addrs.admin,
            child,
            logs,
            http: http_agent(),
        };
        wait_until_ready(&serving.http, serving.addr, &mut serving.child);
        serving
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        http_request(&self.http, self.addr, "GET", path, &[])
    }

    /// `GET path` on the admin listener.
    pub fn admin_get(&self, path: &str) -> Reply {
        http_request(&self.http, self.admin_addr, "GET", path, &[])
    }

    /// Polls `GET /order/{uid}` until it is 200 and returns the body.
    pub fn wait_for_order(&self, uid: &str) -> Vec<u8> {
        wait_for_order_at(&self.http, self.addr, uid)
    }

    /// Every line the service has logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the service with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}
