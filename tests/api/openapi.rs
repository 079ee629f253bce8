//! The API document: `GET /openapi.json` serves the embedded document, and schemathesis (PyPI;
//! `./install.sh test` installs it) checks the live service against it with every check it
//! has: status codes, content types, headers and bodies as documented, schema-valid requests
//! accepted, invalid ones refused, no server error. That the document lists exactly the routes
//! the server answers is checked without a server, in `http`'s unit tests.

use std::process::Command;

use crate::support::commands::run_to_end;
use crate::support::service::spawn_app;

/// The order_uid of `testdata/model.json`, which the document also gives as its example: the
/// examples phase then asks for an order that exists, and its body is checked too.
const MODEL_UID: &str = "b563feb7b2b84b6test";

#[test]
fn the_document_is_served_on_the_public_listener_as_embedded() {
    let app = spawn_app();

    let (status, headers, body) = app.get("/openapi.json");

    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, ordersvc_service::openapi::DOCUMENT.as_bytes());
    let document: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert!(document["paths"]["/order/{order_uid}"]["get"].is_object());
    assert_eq!(app.admin_get("/openapi.json").0, 404);
}

#[test]
fn schemathesis_finds_nothing_the_document_and_the_service_disagree_on() {
    // Arrange: a stored order (the document's example), a listing with more than one page.
    let app = spawn_app();
    let model = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/model.json"))
        .expect("testdata/model.json");
    assert!(String::from_utf8_lossy(&model).contains(MODEL_UID));
    app.publish(&model);
    app.wait_for_order(MODEL_UID);
    let python = std::env::var("SCHEMATHESIS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let report = std::env::temp_dir().join(format!("ordersvc-schemathesis-{}", app.names.suffix));

    // Act: deterministic (a fixed seed), bounded in examples per operation.
    // In a directory of the test's own: schemathesis keeps a cache of examples where it runs.
    std::fs::create_dir_all(&report).expect("a scratch directory");
    let mut command = Command::new(&python);
    command
        .current_dir(&report)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/openapi.json", app.addr))
        .args(["--checks", "all"])
        .args(["--max-examples", "40"])
        .args(["--seed", "1"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "10"])
        .arg("--report-dir")
        .arg(report.join("report"))
        .env("NO_COLOR", "1");
    let output = run_to_end(command, b"");
    let _ = std::fs::remove_dir_all(&report);

    // Assert
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "schemathesis is not installed for {python} (./install.sh test installs it): {stderr}"
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It really ran: every operation it selected from the document was tested.
    let count = |label: &str| -> Option<u32> {
        let rest = &stdout[stdout.find(label)? + label.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let (selected, tested) = (count("Selected: "), count("Tested: "));
    assert!(
        selected.is_some_and(|n| n >= 9) && tested == selected,
        "selected {selected:?}, tested {tested:?}:\n{stdout}"
    );
}
