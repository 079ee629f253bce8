//! The systemd unit (`deploy/ordersvc.service`, installed by `./install.sh service`):
//! `systemd-analyze verify` finds nothing to say about it, and it gives the clean stop more time
//! than the service takes. Verifying needs no running systemd, so it runs on these machines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::commands::{ordersvc, run_to_end};
use crate::support::isolation::TempDir;

/// Where the unit runs the binary (and where `./install.sh service` puts it).
const INSTALLED_EXEC: &str = "ExecStart=/usr/local/bin/ordersvc serve";

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    // Arrange
    let (_dir, copy) = unit_copy();

    // Act
    let output = systemd_analyze(&["verify"], &copy);

    // Assert: success, and not one line about this unit (verify exits 0 on unknown keys and
    // values it cannot parse, and only warns). Lines about other units of this machine, which
    // verify also loads, are not the unit's to answer for.
    assert!(output.0, "systemd-analyze verify failed:\n{}", output.1);
    let about_unit: Vec<&str> = output
        .1
        .lines()
        .filter(|line| line.contains("ordersvc"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warns:\n{}",
        output.1
    );
}

#[test]
fn the_systemd_unit_runs_the_service_as_its_own_user_in_a_sandbox() {
    // Arrange
    let (_dir, copy) = unit_copy();
    let unit = shipped_unit();

    // Act: systemd's own score of the sandbox (0 = locked down, 10 = none), computed from the
    // file alone; --threshold=20 fails it above 2.0 (the unit scores 1.4 with systemd 252).
    let output = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &copy);

    // Assert: the settings the issue names are spelled out (DynamicUser implies the first two,
    // but a reader should not have to know that), and the whole scores as "OK".
    for setting in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|line| line == setting),
            "the unit lacks {setting}"
        );
    }
    assert!(
        output.0,
        "systemd-analyze security scores the unit above 2.0:\n{}",
        output.1
    );
}

#[test]
fn the_systemd_unit_waits_longer_for_a_stop_than_the_service_takes() {
    // Arrange: the unit's stop timeout, and --shutdown-timeout's default as `serve --help` says.
    let unit = shipped_unit();
    let stop = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let help = run_to_end(ordersvc(&["serve", "--help"]), b"");
    let help = String::from_utf8_lossy(&help.stdout);
    let after_flag = &help[help
        .find("--shutdown-timeout")
        .expect("serve has --shutdown-timeout")..];
    let default = after_flag
        .split("[default: ")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("--shutdown-timeout has a default");

    // Assert
    assert!(
        seconds(stop) > seconds(default),
        "TimeoutStopSec={stop} must exceed --shutdown-timeout's default {default}, or systemd kills a clean stop"
    );
}

/// `30s`, `2min`, `1m` or a bare number of seconds (what both sides here use).
fn seconds(value: &str) -> Duration {
    let value = value.trim();
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {value}"));
    match &value[digits.len()..] {
        "" | "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number * 60),
        unit => panic!("unexpected unit {unit} in {value}"),
    }
}

/// The unit as shipped.
fn shipped_unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/ordersvc.service"
    ))
    .expect("deploy/ordersvc.service")
}

/// A copy of the unit to check, in a directory of the test's own. Verifying refuses a unit
/// whose ExecStart binary does not exist ("is not executable"), and the suite must not install
/// one into /usr/local/bin: so the copy, under the same file name (which is the unit's name),
/// runs the binary under test; the rest of it is byte for byte the shipped unit.
fn unit_copy() -> (TempDir, PathBuf) {
    let unit = shipped_unit();
    assert_eq!(unit.matches(INSTALLED_EXEC).count(), 1, "{unit}");
    let dir = TempDir::new("unit");
    let copy = dir.path().join("ordersvc.service");
    let exec = format!("ExecStart={} serve", env!("CARGO_BIN_EXE_ordersvc"));
    std::fs::write(&copy, unit.replace(INSTALLED_EXEC, &exec)).expect("cannot write the copy");
    (dir, copy)
}

/// `systemd-analyze ARGS UNIT`: whether it succeeded, and all it printed.
fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let analyze =
        std::env::var("SYSTEMD_ANALYZE").unwrap_or_else(|_| "/usr/bin/systemd-analyze".to_owned());
    assert!(
        Path::new(&analyze).exists(),
        "{analyze} not found: the unit tests need Debian's systemd package"
    );
    let mut command = Command::new(&analyze);
    command.args(args).arg(unit);
    let output = run_to_end(command, b"");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}
