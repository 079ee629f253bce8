//! `spawn_app()`: the very `App` that `ordersvc serve` runs, built in this process on a `World`
//! of the test's own, and `TestApp`, the one handle of a running service.
//!
//! A service runs in one of two ways (`Runs`). In this process by default: `App::build` from
//! `ServeArgs` parsed the way the binary parses them, `run_until_stopped` on a thread of its own,
//! its addresses asked of the `App`. As a child `ordersvc serve` process only where a test needs
//! a process: to SIGKILL or SIGSTOP it, to measure its memory, to read its log, or to use a crash
//! hook that aborts the whole process; the child's addresses come from the one JSON line it
//! prints on stdout once both listeners are bound.
//!
//! Helpers are synchronous: the `World`'s tokio runtime runs the NATS and sqlx calls, so tests
//! are plain `#[test]` functions. Dropping a `TestApp` (also while a test panics) stops the
//! service (an in-process one is stopped and joined; a child is killed) before the `World` it
//! holds cleans up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches};
use ordersvc_client::child::{OnDrop, ServeProcess, Stopped};
use ordersvc_service::serve::{App, ServeArgs};

use super::commands::{run_to_end, service_log_filter};
use super::http::{http_agent, http_request, wait_for_order_at, Reply};
use super::nats::{nats_addr, Publisher};
use super::orders::model_with_uid;
use super::postgres::postgres_addr;
use super::proxy::Proxy;
use super::world::World;

/// How long the service may take to start (migrations, restore) and become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long any other eventual outcome may take.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// How long the service may take to stop (SIGTERM, or an in-process stop).
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Between two polls.
const POLL: Duration = Duration::from_millis(25);

/// How a service runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// The `App` in this process: what ships, without a process boundary.
    #[default]
    InProcess,
    /// An `ordersvc serve` child process: for tests that kill, freeze or measure the process,
    /// read its log, or set its environment.
    Child,
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
    /// The child's `RUST_LOG` instead of the default filter (`Runs::Child` only).
    pub log_filter: Option<&'a str>,
    pub runs: Runs,
}

/// A running service (or one between a stop and its restart); see the module's documentation.
/// It dereferences to its `World` (names, publishing, SQL checks) when it has one.
pub struct TestApp {
    /// The HTTP address the service listens on (it changes on `restart`).
    pub addr: SocketAddr,
    /// The admin listener's address (`/metrics`, `/rejected`); it changes on `restart`.
    pub admin_addr: SocketAddr,
    /// How to start it (again).
    launch: Launch,
    /// `None` between a stop and a restart.
    running: Option<Running>,
    /// Every line a child has logged so far (all runs); forwarded to stderr with `prefix`.
    logs: Arc<Mutex<Vec<String>>>,
    prefix: String,
    http: ureq::Agent,
    /// The test's names, database and stream; `None` for a service on servers of the test's own,
    /// whose test owns them. Last: it cleans up after the service has stopped.
    world: Option<Arc<World>>,
}

/// How a `TestApp` starts its service.
enum Launch {
    /// `App::build` from these `serve` flags.
    InProcess(Vec<String>),
    /// This command line (copied for each start).
    Child(Command),
}

/// A service that runs.
enum Running {
    InProcess(InProcessApp),
    Child(ServeProcess),
}

/// An `App` running on a thread of its own until `stop` is sent (or dropped).
struct InProcessApp {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<color_eyre::Result<()>>>,
}

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

/// `spawn_app` as a child `ordersvc serve` process, for a test that needs a process.
pub fn spawn_child_app() -> TestApp {
    spawn_child_app_with(&[])
}

/// `spawn_app_with` as a child `ordersvc serve` process, for a test that needs a process.
pub fn spawn_child_app_with(serve_args: &[&str]) -> TestApp {
    spawn_app_with_options(SpawnOptions {
        serve_args,
        runs: Runs::Child,
        ..SpawnOptions::default()
    })
}

/// `spawn_app` with options. Only the service's URLs go through `db_via` and `nats_via`: the
/// test's own connections (publishing, SQL checks, cleanup) stay direct.
pub fn spawn_app_with_options(options: SpawnOptions) -> TestApp {
    let world = Arc::new(World::new(options.db_via, options.nats_via));
    let launch = launch_on(&world, options.runs, options.serve_args, options.log_filter);
    let prefix = world.names.suffix.clone();
    // `start` connects the test's pool once the service has created the database.
    TestApp::start(launch, &prefix, Some(world))
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
pub fn spawn_app_behind_proxy(server: Server, runs: Runs) -> (Proxy, TestApp) {
    let proxy = Proxy::start(match server {
        Server::Postgres => postgres_addr(),
        Server::Nats => nats_addr(),
    });
    let via = Some(proxy.addr());
    let options = match server {
        Server::Postgres => SpawnOptions {
            db_via: via,
            runs,
            ..SpawnOptions::default()
        },
        Server::Nats => SpawnOptions {
            nats_via: via,
            runs,
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

/// How to start a service on `world`: its names, URLs and free ports, then `extra` flags.
fn launch_on(world: &World, runs: Runs, extra: &[&str], log_filter: Option<&str>) -> Launch {
    match runs {
        Runs::InProcess => {
            assert!(
                log_filter.is_none(),
                "an in-process service logs nowhere: a log filter needs Runs::Child"
            );
            let mut flags = world.serve_flags(extra);
            flags.extend(extra.iter().map(|&a| a.to_owned()));
            Launch::InProcess(flags)
        }
        Runs::Child => {
            let mut command = world.serve_command(extra);
            command.env(
                "RUST_LOG",
                log_filter.map_or_else(service_log_filter, str::to_owned),
            );
            Launch::Child(command)
        }
    }
}

/// `ServeArgs` from `serve` flags, parsed as the binary parses them but with every environment
/// fallback switched off: what a test does not say is the documented default, whatever the
/// environment of the process running the tests holds. A flag given twice is an error, as it is
/// for the binary.
fn serve_args(flags: &[String]) -> ServeArgs {
    #[derive(clap::Parser)]
    #[command(name = "serve")]
    struct Serve {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let command = Serve::command().mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(std::iter::once("serve").chain(flags.iter().map(String::as_str)))
        .unwrap_or_else(|e| panic!("bad serve flags {flags:?}: {e}"));
    Serve::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("bad serve flags {flags:?}: {e}"))
        .serve
}

impl TestApp {
    /// Starts a child `ordersvc serve` from a command line of the test's own (its own servers,
    /// URLs and flags; `RUST_LOG` is the caller's, standard I/O is set here) and waits until
    /// `/readyz` answers 200. Log lines are forwarded with `prefix`. It has no `World`: the test
    /// owns the database and streams.
    pub fn start_child(command: Command, prefix: &str) -> TestApp {
        TestApp::start(Launch::Child(command), prefix, None)
    }

    /// Another replica on this service's world (database, stream, durable), started `runs` with
    /// `extra` flags, ready when this returns.
    pub fn spawn_replica(&self, runs: Runs, extra: &[&str]) -> TestApp {
        let world = self.world().clone();
        let launch = launch_on(&world, runs, extra, None);
        TestApp::start(launch, &self.prefix, Some(world))
    }

    fn start(launch: Launch, prefix: &str, world: Option<Arc<World>>) -> TestApp {
        let mut app = TestApp {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            launch,
            running: None,
            logs: Arc::default(),
            prefix: prefix.to_owned(),
            http: http_agent(),
            world,
        };
        // From here on, a panic drops `app`, which stops what was started and cleans up.
        app.boot();
        app
    }

    /// Starts the service and waits for it: `/readyz` 200 and, on a `World`, the durable
    /// consumer present and the test's pool connected.
    fn boot(&mut self) {
        assert!(self.running.is_none(), "the service is already running");
        let (running, addrs) = match &self.launch {
            Launch::InProcess(flags) => {
                let app = App::build(serve_args(flags))
                    .unwrap_or_else(|e| panic!("the App did not build: {e:?}"));
                let addrs = Addrs {
                    public: app.local_addr(),
                    admin: app.admin_addr(),
                };
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let thread = std::thread::Builder::new()
                    .name(format!("app-{}", self.prefix))
                    // A dropped sender stops it too.
                    .spawn(move || {
                        app.run_until_stopped(async move {
                            let _ = stopped.await;
                        })
                    })
                    .expect("cannot start the App's thread");
                let running = InProcessApp {
                    stop: Some(stop),
                    thread: Some(thread),
                };
                (Running::InProcess(running), addrs)
            }
            Launch::Child(command) => {
                let (child, addrs) = spawn_serve(copy_of(command), &self.prefix, &self.logs);
                (Running::Child(child), addrs)
            }
        };
        self.running = Some(running);
        self.addr = addrs.public;
        self.admin_addr = addrs.admin;
        self.wait_until_ready();
        if let Some(world) = &self.world {
            // Ready can come before ingest has made the stream and the consumer: until they
            // exist, a publish would find no stream.
            self.wait_until(
                |app| app.try_consumer_info().is_ok(),
                "the service to create its stream and durable consumer",
            );
            world.connect_database();
        }
    }

    /// The test's world; panics for a service on servers of the test's own.
    fn world(&self) -> &Arc<World> {
        self.world
            .as_ref()
            .expect("this service runs on servers of the test's own: it has no World")
    }

    fn child(&self) -> &ServeProcess {
        match &self.running {
            Some(Running::Child(child)) => child,
            Some(Running::InProcess(_)) => {
                panic!("this needs a process: start the service with Runs::Child")
            }
            None => panic!("the service is not running"),
        }
    }

    fn take_child(&mut self) -> ServeProcess {
        self.child();
        match self.running.take() {
            Some(Running::Child(child)) => child,
            _ => unreachable!("checked by `child`"),
        }
    }

    /// Polls `/readyz` until it answers 200; panics if the service ends first or after
    /// `START_DEADLINE`.
    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let (status, _, body) = http_request(&self.http, self.addr, "GET", "/readyz", &[]);
            if status == 200 {
                return;
            }
            if let Some(end) = self.ended() {
                panic!("the service ended ({end}) before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still {status} after {START_DEADLINE:?}: {}",
                String::from_utf8_lossy(&body)
            );
            std::thread::sleep(POLL);
        }
    }

    /// How the service ended, if it has.
    fn ended(&mut self) -> Option<String> {
        match self.running.as_mut()? {
            Running::Child(child) => child.exited().ok().flatten().map(|s| s.to_string()),
            Running::InProcess(app) => {
                let thread = app.thread.take_if(|t| t.is_finished())?;
                Some(match thread.join() {
                    Ok(ran) => format!("run_until_stopped returned {ran:?}"),
                    Err(_) => "the App's thread panicked".to_owned(),
                })
            }
        }
    }

    /// Every line the service has logged so far, over all its runs (`Runs::Child` only).
    pub fn logs(&self) -> Vec<String> {
        assert!(
            matches!(self.launch, Launch::Child(_)),
            "an in-process service logs nowhere: read logs with Runs::Child"
        );
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL, and wait for the process to be gone (`Runs::Child` only).
    pub fn kill(&mut self) {
        self.take_child()
            .kill()
            .expect("cannot SIGKILL the service");
    }

    /// SIGTERM, and wait (bounded) for the process to exit; returns its exit status
    /// (`Runs::Child` only).
    pub fn terminate(&mut self) -> ExitStatus {
        match self
            .take_child()
            .terminate(STOP_DEADLINE)
            .expect("cannot stop the service")
        {
            Stopped::Exited(status) => status,
            Stopped::Killed(_) => {
                panic!("the service did not stop within {STOP_DEADLINE:?} of SIGTERM")
            }
        }
    }

    /// A clean stop, however it runs (SIGTERM for a child, the stop future for an `App`); panics
    /// unless it ended successfully within `STOP_DEADLINE`.
    pub fn stop(&mut self) {
        match self.running.as_ref() {
            Some(Running::Child(_)) => {
                let status = self.terminate();
                assert!(
                    status.success(),
                    "the service exited with {status} after SIGTERM"
                );
            }
            Some(Running::InProcess(_)) => {
                let Some(Running::InProcess(mut app)) = self.running.take() else {
                    unreachable!()
                };
                match app.stop(STOP_DEADLINE) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => panic!("the App stopped with an error: {e}"),
                    None => panic!("the App did not stop within {STOP_DEADLINE:?}"),
                }
            }
            None => panic!("the service is not running"),
        }
    }

    /// Starts the service again with the same settings on the same world (after `kill`,
    /// `terminate` or `stop`), and waits until it is ready.
    pub fn restart(&mut self) {
        self.boot();
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the service with kill(1) (`Runs::Child` only).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child().id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The service's peak resident memory so far (VmHWM), in bytes (`Runs::Child` only).
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.child().id();
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

    /// A handle that publishes to this test's subject from any thread, independently of the
    /// `TestApp` (so that the test can kill or stop the service meanwhile).
    pub fn publisher(&self) -> Publisher {
        self.world().publisher()
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
}

impl Deref for TestApp {
    type Target = World;

    fn deref(&self) -> &World {
        self.world()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The service first, so that it lets go of the database before the world drops it.
        // Never panic here: this also runs while a failed test unwinds.
        match self.running.take() {
            Some(Running::InProcess(mut app)) => match app.stop(STOP_DEADLINE) {
                Some(_) => {}
                None => eprintln!(
                    "[{}] the App did not stop within {STOP_DEADLINE:?}; leaving its thread",
                    self.prefix
                ),
            },
            // Dropping it kills it.
            Some(Running::Child(child)) => drop(child),
            None => {}
        }
    }
}

impl InProcessApp {
    /// Resolves the stop future and waits up to `deadline` for `run_until_stopped` to return:
    /// `None` if it did not (its thread is left running).
    fn stop(&mut self, deadline: Duration) -> Option<color_eyre::Result<()>> {
        drop(self.stop.take());
        let thread = self.thread.take()?;
        let until = Instant::now() + deadline;
        while !thread.is_finished() {
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(POLL);
        }
        Some(match thread.join() {
            Ok(ran) => ran,
            Err(_) => Err(color_eyre::eyre::eyre!("the App's thread panicked")),
        })
    }
}

/// A copy of a command line: program, arguments, environment changes and directory (standard
/// I/O is set by whoever spawns it).
fn copy_of(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(name, value),
            None => copy.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        copy.current_dir(dir);
    }
    copy
}

/// The two addresses a service has bound.
#[derive(Clone, Copy, Debug)]
struct Addrs {
    public: SocketAddr,
    admin: SocketAddr,
}

impl Addrs {
    /// The line `ordersvc serve` prints on stdout once both listeners are bound:
    /// `{"http_addr":"127.0.0.1:PORT","admin_addr":"127.0.0.1:PORT"}`.
    fn parse(line: &str) -> Result<Addrs, String> {
        let json: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let addr = |key: &str| {
            json[key]
                .as_str()
                .and_then(|addr| addr.parse().ok())
                .ok_or_else(|| format!("no address {key}"))
        };
        Ok(Addrs {
            public: addr("http_addr")?,
            admin: addr("admin_addr")?,
        })
    }
}

/// Spawns a `serve` command line (text logs; standard I/O is set here) and waits for the one
/// JSON line it prints on stdout once both listeners are bound. Every log line (stderr) goes to
/// `logs` and is forwarded to the test's stderr with `prefix` (cargo shows them when a test
/// fails). The child is killed when the returned process is dropped, also when this panics.
fn spawn_serve(
    mut command: Command,
    prefix: &str,
    logs: &Arc<Mutex<Vec<String>>>,
) -> (ServeProcess, Addrs) {
    command
        .env("ORDERSVC_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        ServeProcess::spawn(&mut command, OnDrop::Kill).expect("cannot start the ordersvc binary");
    let stderr = child.take_stderr().expect("stderr is piped");
    let stdout = child.take_stdout().expect("stdout is piped");

    let prefix = prefix.to_owned();
    let logs = logs.clone();
    let forward_prefix = prefix.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            eprintln!("[{forward_prefix}] {line}");
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.into_owned());
        }
    });
    // The reader hands over the first stdout line, parsed, and then keeps reading (showing
    // anything else the service prints there), so that the service never blocks on the pipe.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match tx.take() {
                Some(tx) => {
                    let _ = tx.send(Addrs::parse(&line).map_err(|e| {
                        format!("the first line on stdout is not the addresses ({e}): {line}")
                    }));
                }
                None => eprintln!("[{prefix}] stdout: {line}"),
            }
        }
    });
    match rx.recv_timeout(START_DEADLINE) {
        Ok(Ok(addrs)) => (child, addrs),
        Ok(Err(e)) => panic!("{e}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().ok();
            panic!("the service exited ({status:?}) before printing its addresses")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the service printed no addresses on stdout within {START_DEADLINE:?}")
        }
    }
}
