//! Headless Chromium, driven from its command line: `--dump-dom` gives the DOM after the page's
//! script ran (`--virtual-time-budget` lets its fetches finish first), `--screenshot` a PNG.
//! Debian's `chromium` package; `./install.sh test` installs it when it is missing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian puts it, unless `CHROMIUM` says otherwise.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Virtual time the page gets to fetch and render (it runs faster than real time when idle).
const BUDGET_MS: &str = "10000";
/// Real time Chromium may take at most.
const DEADLINE: Duration = Duration::from_secs(60);

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_owned());
    assert!(
        Path::new(&path).exists(),
        "{path} not found: the page tests need Debian's chromium (./install.sh test installs it)"
    );
    path
}

fn run(args: &[String]) -> Vec<u8> {
    let profile =
        std::env::temp_dir().join(format!("ordersvc-chromium-{:08x}", rand::random::<u32>()));
    let mut command = Command::new(chromium());
    // The flags a sandboxed root CI needs, and none of Chromium's own network chatter.
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("cannot start chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for chromium") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&profile);
            panic!("chromium did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader
        .join()
        .expect("reader thread")
        .expect("cannot read chromium's output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium failed: {status}");
    out
}

/// The DOM of `url` once its script has run, serialised as HTML.
pub fn dump_dom(url: &str) -> String {
    let out = run(&["--dump-dom".to_owned(), url.to_owned()]);
    String::from_utf8(out).expect("chromium's DOM dump is UTF-8")
}

/// The (serialised) text of the first element with this attribute, e.g. `id="status"`, up to
/// its first child element.
pub fn text_of_element<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let start = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no element with {attribute}:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').map_or(rest.len(), |i| i + 1);
    let text = &rest[open..];
    &text[..text.find('<').unwrap_or(text.len())]
}

/// A PNG of `url` at `width`×`height`, written to `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    run(&[
        format!("--screenshot={}", path.display()),
        format!("--window-size={width},{height}"),
        url.to_owned(),
    ]);
    let png =
        std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        path.display()
    );
}
