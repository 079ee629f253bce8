//! `ordersvc serve` as a child process, for `bench ingest --mode backlog` and the integration
//! tests: its command line, and a stop the way an init system does it (SIGTERM, a bounded wait
//! for the clean shutdown, then SIGKILL).
//!
//! The URLs go to the child through its environment, not its arguments: they may hold passwords,
//! and any user can read another's command line (`ps`, `/proc/PID/cmdline`), while
//! `/proc/PID/environ` is readable by the owner only. Used from the caller's thread; nothing of
//! the service uses it.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Between two checks whether the child has exited.
const POLL: Duration = Duration::from_millis(20);

/// Where the started service finds its stream and database, and where it listens. (No `Debug`:
/// it holds the URLs and token as given, secrets and all.)
#[derive(Clone, Copy)]
pub struct ServeSettings<'a> {
    /// `DATABASE_URL` of the child (it may hold a password).
    pub database_url: &'a str,
    /// `NATS_URL` of the child (it may hold a password or token).
    pub nats_url: &'a str,
    /// `NATS_TOKEN` of the child; without one, the child gets none (not this process's).
    pub nats_token: Option<&'a str>,
    /// `NATS_TLS_CA` of the child; without one, the child gets none (not this process's).
    pub nats_tls_ca: Option<&'a Path>,
    /// `--stream`.
    pub stream: &'a str,
    /// `--subject`.
    pub subject: &'a str,
    /// `--durable`.
    pub durable: &'a str,
    /// `--http-addr` (port 0 picks a free one, which the child logs).
    pub http_addr: &'a str,
}

/// `exe serve` with `settings` and then the `extra` flags; standard I/O is the caller's to set.
pub fn serve_command<I, S>(exe: &Path, settings: &ServeSettings<'_>, extra: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(exe);
    command
        .env("DATABASE_URL", settings.database_url)
        .env("NATS_URL", settings.nats_url)
        .arg("serve")
        .args(["--stream", settings.stream])
        .args(["--subject", settings.subject])
        .args(["--durable", settings.durable])
        .args(["--http-addr", settings.http_addr])
        // A free port for the admin listener unless `extra` names one: the child must not take
        // (or fail on) the port of a service already running here.
        .env("ORDERSVC_ADMIN_ADDR", "127.0.0.1:0")
        .args(extra);
    match settings.nats_token {
        Some(token) => command.env("NATS_TOKEN", token),
        None => command.env_remove("NATS_TOKEN"),
    };
    match settings.nats_tls_ca {
        Some(ca) => command.env("NATS_TLS_CA", ca),
        None => command.env_remove("NATS_TLS_CA"),
    };
    command
}

/// What happens to a `ServeProcess` that is dropped while the child still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL at once (a test that is done, or unwinding, has nothing to wait for).
    Kill,
    /// SIGTERM, and SIGKILL if it has not exited within this long.
    Terminate(Duration),
}

/// How `terminate` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The child exited by itself (after SIGTERM, or before it).
    Exited(ExitStatus),
    /// It was still running at the deadline (or SIGTERM could not be sent) and got SIGKILL.
    Killed(ExitStatus),
}

/// A running child process, stopped as `on_drop` says when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// Set once the child has been reaped; from then on its pid may belong to another process,
    /// so no signal is sent after that.
    status: Option<ExitStatus>,
    on_drop: OnDrop,
}

impl ServeProcess {
    /// Starts `command` (typically from `serve_command`, with standard I/O set).
    pub fn spawn(command: &mut Command, on_drop: OnDrop) -> io::Result<ServeProcess> {
        Ok(ServeProcess {
            child: command.spawn()?,
            status: None,
            on_drop,
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's standard error, if it was piped and not taken yet.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// The child's standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status, if the child has exited (it is reaped then).
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits, without a bound, until the child exits.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then waits up to `deadline` for the child to exit, then SIGKILL.
    pub fn terminate(&mut self, deadline: Duration) -> io::Result<Stopped> {
        if let Some(status) = self.exited()? {
            return Ok(Stopped::Exited(status));
        }
        // If SIGTERM cannot be sent, SIGKILL below is all that is left.
        if self.signal(libc::SIGTERM).is_ok() {
            let until = Instant::now() + deadline;
            loop {
                if let Some(status) = self.exited()? {
                    return Ok(Stopped::Exited(status));
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(POLL));
            }
        }
        self.kill().map(Stopped::Killed)
    }

    /// SIGKILL (unless it has exited already), and waits for the child to be gone.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        self.child.kill()?;
        self.wait()
    }

    /// Sends `signal` to the child, which must not have been reaped.
    fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::other("the process has already exited"));
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| io::Error::other("the process id does not fit in pid_t"))?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours. The child is not
        // reaped yet (`status` is None), so its pid cannot have been given to another process:
        // even if it has just exited, it stays a zombie under this pid until `wait`.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Never leave a service behind holding its port and consumer; nothing to report to here.
        let _ = match self.on_drop {
            OnDrop::Kill => self.kill().map(Stopped::Killed),
            OnDrop::Terminate(deadline) => self.terminate(deadline),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServeSettings<'static> {
        ServeSettings {
            database_url: "postgres://u:dbsecret@h/db",
            nats_url: "nats://tokensecret@h:4222",
            nats_token: None,
            nats_tls_ca: None,
            stream: "S",
            subject: "s",
            durable: "d",
            http_addr: "127.0.0.1:0",
        }
    }

    #[test]
    fn the_serve_command_carries_the_urls_in_its_environment_only() {
        let command = serve_command(Path::new("ordersvc"), &settings(), ["--batch-size=5"]);
        let args: Vec<&OsStr> = command.get_args().collect();
        assert_eq!(
            args,
            [
                "serve",
                "--stream",
                "S",
                "--subject",
                "s",
                "--durable",
                "d",
                "--http-addr",
                "127.0.0.1:0",
                "--batch-size=5"
            ]
        );
        let envs: Vec<(&OsStr, Option<&OsStr>)> = command.get_envs().collect();
        assert!(envs.contains(&(
            OsStr::new("DATABASE_URL"),
            Some(OsStr::new("postgres://u:dbsecret@h/db"))
        )));
        assert!(envs.contains(&(
            OsStr::new("NATS_URL"),
            Some(OsStr::new("nats://tokensecret@h:4222"))
        )));
    }

    #[test]
    fn a_token_and_a_ca_go_to_the_child_in_its_environment_and_none_is_inherited() {
        let mut with = settings();
        with.nats_token = Some("tokensecret");
        with.nats_tls_ca = Some(Path::new("/etc/ca.pem"));
        let command = serve_command(Path::new("ordersvc"), &with, ["--batch-size=5"]);
        assert!(command
            .get_args()
            .all(|arg| !arg.to_string_lossy().contains("tokensecret")));
        let envs: Vec<(&OsStr, Option<&OsStr>)> = command.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("NATS_TOKEN"), Some(OsStr::new("tokensecret")))));
        assert!(envs.contains(&(OsStr::new("NATS_TLS_CA"), Some(OsStr::new("/etc/ca.pem")))));

        let without = serve_command(Path::new("ordersvc"), &settings(), ["--batch-size=5"]);
        let envs: Vec<(&OsStr, Option<&OsStr>)> = without.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("NATS_TOKEN"), None)), "{envs:?}");
        assert!(
            envs.contains(&(OsStr::new("NATS_TLS_CA"), None)),
            "{envs:?}"
        );
    }

    /// A child that ignores SIGTERM (`trap '' TERM`) for the kill path, one that does not for
    /// the clean path.
    fn sleeper(ignore_term: bool) -> ServeProcess {
        // An ignored signal stays ignored across exec.
        let script = if ignore_term {
            "trap '' TERM; exec sleep 30"
        } else {
            "exec sleep 30"
        };
        ServeProcess::spawn(Command::new("sh").args(["-c", script]), OnDrop::Kill)
            .expect("cannot start sh")
    }

    #[test]
    fn terminate_stops_a_child_that_honours_sigterm() {
        let mut child = sleeper(false);
        let stopped = child.terminate(Duration::from_secs(10)).expect("terminate");
        let Stopped::Exited(status) = stopped else {
            panic!("killed: {stopped:?}")
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(child.exited().expect("exited"), Some(status));
    }

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm_after_the_deadline() {
        let mut child = sleeper(true);
        // Give the shell time to install its trap.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let stopped = child
            .terminate(Duration::from_millis(300))
            .expect("terminate");
        assert!(matches!(stopped, Stopped::Killed(_)), "{stopped:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Stopping again is harmless: no signal goes to a reaped pid.
        assert_eq!(
            child.terminate(Duration::ZERO).expect("again"),
            Stopped::Exited(match stopped {
                Stopped::Killed(s) | Stopped::Exited(s) => s,
            })
        );
    }
}
