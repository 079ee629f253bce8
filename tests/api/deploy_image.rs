//! The container image (`deploy/Containerfile`, built by `./install.sh image`): built here with
//! podman (Debian's package; `./install.sh test` installs it, and it builds `FROM scratch`
//! offline), its root filesystem exported, and the binary run inside that root with `chroot`,
//! as the image's non-root user and with the image's environment: it answers, and it serves
//! against the shared PostgreSQL and NATS until ready. Nothing but the binary comes from the
//! machine, so this proves that the image is self-contained. Containers cannot run on these
//! machines (no runtime), so the runtime's own part (its network, its /etc/hosts) is not tested.
//!
//! The build is `./install.sh image` itself: the static release build of the binary
//! (`--target x86_64-unknown-linux-gnu`, a directory of its own under target/): from nothing,
//! 21 minutes once on two cores shared with two other builds and a test run (about five when
//! idle), 0.3 s once built; then podman, about a second. The rest takes about three seconds.
//!
//! The compose file's `ordersvc` service is checked as data only: no compose tool runs here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::support::commands::run_to_end;
use crate::support::isolation::{random_suffix, TempDir};
use crate::support::orders::model_with_uid;
use crate::support::service::TestApp;
use crate::support::world::World;

/// The image's user, as `deploy/Containerfile` sets it.
const IMAGE_USER: &str = "65532:65532";

#[test]
fn the_image_holds_only_the_static_binary_which_serves_from_the_images_own_root() {
    // Arrange: the image, under a name of the test's own (removed however the test ends).
    let podman = podman();
    let image = Image::named(
        &podman,
        format!("localhost/ordersvc-test:{}", random_suffix()),
    );
    let started = Instant::now();
    let mut install = Command::new(repo_path("install.sh"));
    install.arg("image").env("ORDERSVC_IMAGE", &image.tag);
    without_test_cargo_env(&mut install);
    let built = install.status().expect("cannot run ./install.sh image");
    assert!(built.success(), "./install.sh image failed ({built})");
    eprintln!("./install.sh image took {:?}", started.elapsed());
    let config = image.config();
    let scratch = TempDir::new("image");
    let root = scratch.path().join("root");
    image.export_root(&root, &scratch.path().join("root.tar"));

    // Assert: what the image declares.
    assert_eq!(config["User"], IMAGE_USER);
    assert_eq!(config["Entrypoint"], serde_json::json!(["/ordersvc"]));
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    let env = image_env(&config);
    assert!(
        env.iter()
            .any(|(name, value)| name == "ORDERSVC_HTTP_ADDR" && value == "0.0.0.0:8080"),
        "{env:?}"
    );
    // Assert: its root holds the binary and nothing else (no libraries, no loader).
    assert_eq!(files_under(&root), ["ordersvc"]);
    // What a container runtime adds to every container, and a bare chroot lacks: the default
    // devices of the OCI runtime spec. The binary needs /dev/urandom: statically linked, the
    // getrandom crate (under async-nats' rand) cannot look up glibc's getrandom() and reads
    // the file instead.
    add_runtime_devices(&root);

    // Act and assert: the binary answers inside that root, as the image's user.
    let version = in_root(&root, &env, &["--version"]);
    assert!(
        version.status.success()
            && String::from_utf8_lossy(&version.stdout).starts_with("ordersvc "),
        "{version:?}"
    );
    let help = in_root(&root, &env, &["serve", "--help"]);
    assert!(
        help.status.success()
            && String::from_utf8_lossy(&help.stdout).contains("ORDERSVC_HTTP_ADDR"),
        "{help:?}"
    );

    // Act: `serve` inside the root (the chroot shares this machine's network, so it reaches the
    // shared servers on loopback), on a world of the test's own and free ports.
    let world = World::new(None, None);
    let mut app = TestApp::start_child(serve_in_root(&root, &env, &world), &world.names.suffix);
    app.wait_until(
        |_| world.try_consumer_info().is_ok(),
        "the service to create its stream and durable consumer",
    );
    let uid = format!("image{}", world.names.suffix);
    world.publish(&model_with_uid(&uid));

    // Assert: ready (start_child waited for /readyz 200), it stores and serves an order, and it
    // stops cleanly on SIGTERM.
    app.wait_until(
        |app| app.get(&format!("/order/{uid}")).0 == 200,
        "the order to be served",
    );
    app.stop();
}

/// The podman command; panics, saying how to get it, where there is none.
fn podman() -> PathBuf {
    let path = PathBuf::from(std::env::var_os("PODMAN").unwrap_or_else(|| "podman".into()));
    match Command::new(&path).arg("--version").output() {
        Ok(output) if output.status.success() => path,
        Ok(output) => panic!("{} --version failed: {output:?}", path.display()),
        Err(e) => panic!(
            "{} not found ({e}): the image test needs Debian's podman (./install.sh test installs it)",
            path.display()
        ),
    }
}

/// Removes the variables cargo sets for a test run from `command`'s environment. A build
/// script sees them (ring's tracks CARGO_MANIFEST_DIR), so a cargo started with them would
/// rebuild half the static binary here, and again at the next build by hand (minutes each).
fn without_test_cargo_env(command: &mut Command) {
    const SET_FOR_TESTS: [&str; 7] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if SET_FOR_TESTS.contains(&text.as_ref())
            || text.starts_with("CARGO_PKG_")
            || text.starts_with("CARGO_BIN_EXE_")
        {
            command.env_remove(&name);
        }
    }
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// An image the test built; dropping it removes it, and with `--force` every container made
/// from it, also while the test unwinds.
struct Image {
    podman: PathBuf,
    tag: String,
}

impl Image {
    fn named(podman: &Path, tag: String) -> Image {
        Image {
            podman: podman.to_owned(),
            tag,
        }
    }

    fn podman(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.podman);
        command.args(args);
        let output = run_to_end(command, b"");
        assert!(
            output.status.success(),
            "podman {args:?} failed: {output:?}"
        );
        output
    }

    /// The image's `Config` (user, environment, entrypoint, command, ports).
    fn config(&self) -> serde_json::Value {
        let output = self.podman(&["image", "inspect", &self.tag]);
        let inspect: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("podman image inspect prints JSON");
        inspect[0]["Config"].clone()
    }

    /// Unpacks the image's root filesystem into `root` (made here), through `tar`: `podman
    /// export` of a container created from it (created, never started: nothing runs).
    fn export_root(&self, root: &Path, tar: &Path) {
        let created = self.podman(&["create", &self.tag]);
        let container = String::from_utf8_lossy(&created.stdout).trim().to_owned();
        self.podman(&["export", "--output", &tar.to_string_lossy(), &container]);
        self.podman(&["rm", &container]);
        std::fs::create_dir(root).expect("cannot make the root directory");
        let mut untar = Command::new("tar");
        untar.arg("-xf").arg(tar).arg("-C").arg(root);
        let output = run_to_end(untar, b"");
        assert!(output.status.success(), "tar failed: {output:?}");
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // Never panic here. An image that was never built is not an error.
        let mut command = Command::new(&self.podman);
        command.args(["rmi", "--force", "--ignore", &self.tag]);
        let output = run_to_end(command, b"");
        if !output.status.success() {
            eprintln!("cleanup: cannot remove the image {}: {output:?}", self.tag);
        }
    }
}

/// The image's environment, as `NAME=value` pairs split.
fn image_env(config: &serde_json::Value) -> Vec<(String, String)> {
    config["Env"]
        .as_array()
        .expect("the image has an environment")
        .iter()
        .filter_map(|pair| pair.as_str()?.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The devices every OCI runtime creates in a container's /dev (runtime-spec, "Default
/// Devices"; /dev/tty and /dev/console need a terminal and are left out).
fn add_runtime_devices(root: &Path) {
    let dev = root.join("dev");
    std::fs::create_dir(&dev).expect("cannot make /dev in the root");
    for (name, minor) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        let mut mknod = Command::new("mknod");
        mknod
            .args(["-m", "0666"])
            .arg(dev.join(name))
            .args(["c", "1", &minor.to_string()]);
        let output = run_to_end(mknod, b"");
        assert!(output.status.success(), "mknod /dev/{name}: {output:?}");
    }
}

/// Every file (not directory) under `root`, relative to it, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("cannot read the image's root") {
            let path = entry.expect("cannot read the image's root").path();
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("under the root");
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// `/ordersvc ARGS` run in `root` as the image's user, with the image's environment and nothing
/// of this process's (`chroot` execs the binary, so the process is the service itself).
fn chroot_command(root: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new("/usr/sbin/chroot");
    command
        .arg(format!("--userspec={IMAGE_USER}"))
        .arg(root)
        .arg("/ordersvc")
        .args(args);
    // Removing each variable, rather than env_clear, survives TestApp's copy of the command.
    for (name, _) in std::env::vars_os() {
        command.env_remove(&name);
    }
    command.envs(
        env.iter()
            .map(|(n, v)| (OsString::from(n), OsString::from(v))),
    );
    command
}

fn in_root(root: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    run_to_end(chroot_command(root, env, args), b"")
}

/// `serve` in `root` on `world`'s database, stream and names, on free loopback ports (the
/// image's defaults are for a container's own network). The URLs go in the environment.
fn serve_in_root(root: &Path, env: &[(String, String)], world: &World) -> Command {
    let names = &world.names;
    let mut command = chroot_command(
        root,
        env,
        &[
            "serve",
            "--stream",
            &names.stream,
            "--subject",
            &names.subject,
            "--durable",
            &names.durable,
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
    );
    command
        .env("DATABASE_URL", &world.database_url)
        .env("NATS_URL", &world.nats_url);
    command
}

#[test]
fn the_compose_file_runs_the_image_install_sh_builds_in_the_app_profile() {
    // Arrange: the compose file as JSON, through Python's YAML parser (PyYAML comes with
    // schemathesis, which ./install.sh test installs); no compose tool runs on these machines.
    let python = std::env::var("SCHEMATHESIS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut command = Command::new(&python);
    command.args([
        "-c",
        "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
    ]);
    command.arg(repo_path("docker-compose.yaml"));
    let output = run_to_end(command, b"");
    assert!(
        output.status.success(),
        "docker-compose.yaml is not valid YAML (or {python} has no yaml module): {output:?}"
    );
    let compose: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("JSON from the YAML");
    let install_sh = std::fs::read_to_string(repo_path("install.sh")).expect("install.sh");

    // Assert: the service runs the image `./install.sh image` tags by default, only with
    // `--profile app`, after its dependencies are healthy, with their addresses in its
    // environment; the plain `docker compose up` still starts only the dependencies.
    let services = &compose["services"];
    let service = &services["ordersvc"];
    assert_eq!(service["profiles"], serde_json::json!(["app"]));
    let image = service["image"].as_str().expect("an image");
    let default = image
        .strip_prefix("${ORDERSVC_IMAGE:-")
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("the image is ${ORDERSVC_IMAGE:-...}");
    assert!(
        install_sh.contains(&format!("readonly DEFAULT_IMAGE=\"{default}\"")),
        "install.sh image does not tag {default} by default"
    );
    for dependency in ["postgres", "nats"] {
        assert!(services[dependency]["profiles"].is_null(), "{dependency}");
        assert_eq!(
            service["depends_on"][dependency]["condition"],
            "service_healthy"
        );
    }
    let env = &service["environment"];
    assert!(env["DATABASE_URL"]
        .as_str()
        .is_some_and(|url| url.contains("@postgres:5432/")));
    assert_eq!(env["NATS_URL"], "nats://nats:4222");
    // Its admin listener is published, so it must have a token, or serve refuses to start.
    assert!(env["ORDERSVC_ADMIN_ADDR"]
        .as_str()
        .is_some_and(|a| a.starts_with("0.0.0.0:")));
    assert!(env["ORDERSVC_ADMIN_TOKEN"].is_string());
}
