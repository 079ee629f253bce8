//! The `ordersvc` command line for the tests: a command of the binary under test with none of
//! the connection settings of the tests' own environment, and running one to its end (bounded).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ordersvc_client::child::{serve_command, ServeSettings};

/// How long a command may take to finish.
const EVENTUALLY: Duration = Duration::from_secs(60);
/// Between two polls.
const POLL: Duration = Duration::from_millis(25);

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

/// The service's log filter: `RUST_LOG` if the tests were given one (to debug a test), else
/// `info`; the `listening on` line is always kept, since `start` reads the address from it.
pub fn service_log_filter() -> String {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".to_owned());
    format!("{base},ordersvc_service::serve=info")
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

/// Both outputs of a run, for messages and for looking for secrets.
pub fn printed(output: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
