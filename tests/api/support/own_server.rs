//! What every server process of a test's own needs (PostgreSQL, nats-server): the user it runs
//! as, and a bounded stop that never panics.

use std::fs;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a server of a test's own may take to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a server may take to stop after its stop signal before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Between two polls.
pub const POLL: Duration = Duration::from_millis(50);

/// The user and group a server process runs as: `postgres` when the tests run as root (initdb
/// and postgres refuse to run as root), else the tests' own (`None`: no change).
pub fn server_user() -> Option<(u32, u32)> {
    // Looked up once: getpwnam returns a static buffer, which tests on other threads would
    // overwrite if each looked it up itself.
    static USER: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // SAFETY: the name is a NUL-terminated literal; the record is read at once, inside the
        // OnceLock's initialisation, which runs on one thread only (nothing else in the tests
        // calls getpwnam).
        let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !entry.is_null(),
            "running as root, and there is no `postgres` user to run PostgreSQL as"
        );
        // SAFETY: non-null, so it points at a valid passwd record.
        Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
    })
}

/// Gives `path` and everything under it to `user` (when there is one to give it to).
pub fn give_to(path: &Path, user: Option<(u32, u32)>) {
    let Some((uid, gid)) = user else { return };
    chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("cannot list a directory of the test's own") {
            give_to(&entry.expect("a directory entry").path(), user);
        }
    }
}

/// A command that runs as `user` (when there is one).
pub fn command_as(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        // std also drops root's supplementary groups when it changes the uid.
        command.uid(uid).gid(gid);
    }
    command
}

/// Stops a server: `signal`, a bounded wait, then SIGKILL; never panics (it runs in `Drop`).
pub fn stop(child: &mut Child, signal: libc::c_int) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) touches no memory of ours; the child is not reaped yet (try_wait said
        // so), so the pid is still its own.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
