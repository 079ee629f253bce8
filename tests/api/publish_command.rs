//! `ordersvc publish`: files, stdin, JSON Lines, and the embedded samples reach the service.

use crate::support::commands::run_successfully;
use crate::support::isolation::TempDir;
use crate::support::orders::{model_with_uid, testdata};
use crate::support::service::{spawn_app, TestApp};

/// Runs `ordersvc publish ARGS` (feeding it `stdin`), checks that it succeeded, and returns the
/// summary line it printed.
fn publish(app: &TestApp, args: &[&str], stdin: &[u8]) -> String {
    let mut command = app.publish_command();
    command.args(args);
    run_successfully(command, stdin).trim_end().to_owned()
}

/// The invalid samples and the kind each is rejected as.
const INVALID_SAMPLES: [(&str, &str); 11] = [
    ("invalid/not-utf8.bin", "not_utf8"),
    ("invalid/not-json.txt", "bad_json"),
    ("invalid/truncated.json", "bad_json"),
    ("invalid/not-object.json", "not_object"),
    ("invalid/deeply-nested.json", "too_deep"),
    ("invalid/missing-field.json", "missing_field"),
    ("invalid/wrong-type.json", "wrong_type"),
    ("invalid/negative-amount.json", "invalid_value"),
    ("invalid/bad-uid.json", "invalid_value"),
    ("invalid/bad-date.json", "invalid_value"),
    ("invalid/empty-items.json", "invalid_value"),
];

#[test]
fn publish_command_publishes_files_and_samples() {
    // Arrange
    let app = spawn_app();
    let dir = TempDir::new(&app.names.suffix);
    let lines: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|i| {
            let uid = format!("from-lines-{i}");
            let value: serde_json::Value =
                serde_json::from_slice(&model_with_uid(&uid)).expect("the model is JSON");
            (uid, serde_json::to_vec(&value).expect("serialisable"))
        })
        .collect();
    let jsonl = dir.path().join("orders.jsonl");
    let mut content = Vec::new();
    for (_, line) in &lines {
        content.extend_from_slice(line);
        content.push(b'\n');
    }
    std::fs::write(&jsonl, content).expect("cannot write the JSON Lines file");
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/valid/multi-item.json"
    );
    let from_stdin = model_with_uid("from-stdin-1");

    // Act
    let by_file = publish(&app, &["-j", file], b"");
    let by_stdin = publish(&app, &["-j", "-"], &from_stdin);
    let by_lines = publish(
        &app,
        &["--lines", "-j", jsonl.to_str().expect("a UTF-8 path")],
        b"",
    );
    // multi-item.json was published by the first run with its order_uid as Nats-Msg-Id, so the
    // server drops that sample as a repeat.
    let samples = publish(&app, &[], b"");

    // Assert
    assert_eq!(
        by_file,
        "published 1, duplicates dropped by the server 0, failed 0"
    );
    assert_eq!(
        by_stdin,
        "published 1, duplicates dropped by the server 0, failed 0"
    );
    assert_eq!(
        by_lines,
        "published 3, duplicates dropped by the server 0, failed 0"
    );
    assert_eq!(
        samples,
        "published 15, duplicates dropped by the server 1, failed 0"
    );

    assert_eq!(
        app.wait_for_order("multi-item-order-0001"),
        testdata("valid/multi-item.json")
    );
    assert_eq!(app.wait_for_order("from-stdin-1"), from_stdin);
    for (uid, line) in &lines {
        assert_eq!(&app.wait_for_order(uid), line, "{uid}");
    }
    for (uid, file) in [
        ("b563feb7b2b84b6test", "model.json"),
        ("extra-fields-order-0001", "valid/extra-fields.json"),
        ("html-in-fields-0001", "valid/html-in-fields.json"),
        ("unicode-order-0001", "valid/unicode.json"),
    ] {
        assert_eq!(app.wait_for_order(uid), testdata(file), "{file}");
    }
    app.wait_until_drained();
    assert_eq!(app.orders_count(), 1 + 1 + 3 + 4);
    let rejected = app.rejected();
    assert_eq!(rejected.len(), INVALID_SAMPLES.len(), "{rejected:?}");
    for (file, kind) in INVALID_SAMPLES {
        let payload = testdata(file);
        let row = rejected
            .iter()
            .find(|r| r.payload == payload)
            .unwrap_or_else(|| panic!("{file} was not recorded as rejected"));
        assert_eq!(row.kind, kind, "{file}: {}", row.reason);
    }
}

#[test]
fn publish_logs_only_warnings_by_default_and_rust_log_still_turns_info_on() {
    // Arrange
    let app = spawn_app();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/model.json");
    let stderr_of = |rust_log: Option<&str>| {
        let mut command = app.publish_command();
        command.args(["-j", file]);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let output = app.run(command, b"");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    // Act
    let quiet = stderr_of(None);
    let verbose = stderr_of(Some("info"));

    // Assert: the NATS client's "connected successfully" is an INFO line.
    assert!(
        !quiet.contains("INFO") && !quiet.contains("connected"),
        "{quiet}"
    );
    assert!(
        verbose.contains("INFO") && verbose.contains("connected"),
        "{verbose}"
    );
}
