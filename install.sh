#!/usr/bin/env bash
# Sets up everything ordersvc needs on a Debian machine, builds it and installs it.
#
#   ./install.sh              dependencies, release build, install onto PATH, `ordersvc migrate`
#   ./install.sh deps         dependencies only
#   ./install.sh test [ARGS]  dependencies, Chromium (page tests) and schemathesis (API contract), then
#                             `cargo test --locked ARGS` (exits with cargo's code)
#   ./install.sh image        the fully static binary, then the container image deploy/Containerfile
#                             (podman, else docker)
#   ./install.sh service      release build, install, and the systemd unit deploy/ordersvc.service
#   ./install.sh -h|--help
#
# Dependencies: Debian packages (Patroni, etcd and haproxy among them, for PostgreSQL high
# availability), a Rust toolchain (>= 1.85, from rustup), PostgreSQL on 127.0.0.1:5432, NATS with
# JetStream on 127.0.0.1:4222 and the PostgreSQL role `ordersvc`.
# Every step checks first and does nothing when the machine is already fine, so running this
# twice is safe. Services are started without systemd (containers and CI machines have none).
set -euo pipefail

# --- settings -------------------------------------------------------------------------------
# These match the defaults in shared/design.md, so that ordersvc needs no configuration.
readonly MIN_RUST="1.85"
readonly PG_HOST="127.0.0.1"
readonly PG_PORT="5432"
readonly NATS_HOST="127.0.0.1"
readonly NATS_PORT="4222"
readonly NATS_STORE="/var/lib/nats-server"
readonly NATS_LOG="/var/log/nats-server.log"
readonly ROLE="ordersvc"
readonly ROLE_PASSWORD="ordersvc"
readonly DEFAULT_DATABASE_URL="postgres://${ROLE}:${ROLE_PASSWORD}@${PG_HOST}:${PG_PORT}/orders?sslmode=disable"
readonly WAIT_SECONDS=30
# patroni, etcd-server and haproxy: PostgreSQL high availability, which the failover tests and
# `scripts/local-cluster.sh up --pg-ha` run on ports of their own. Nothing here starts them. On a
# machine with systemd, etcd-server's package starts a system etcd on 127.0.0.1:2379/2380 and
# haproxy's its own; neither is used, and nothing of ours uses those ports.
readonly DEB_PACKAGES=(postgresql nats-server build-essential pkg-config curl ca-certificates
    patroni etcd-server haproxy)
# Only the test suite needs these: the page tests drive a headless browser; the deploy/ tests
# run promtool and a Prometheus of their own (on a port of their own: on a machine with systemd,
# the package also starts a system Prometheus on :9090, which nothing of ours uses), and build
# deploy/Containerfile with podman (offline: FROM scratch) and run the binary from its root.
readonly TEST_DEB_PACKAGES=(chromium prometheus podman)
# The API contract test runs schemathesis against the live service (from PyPI, pinned so that a
# new release cannot change what the suite checks).
readonly TEST_PYPI_PACKAGES=(schemathesis==4.32.5)

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO_DIR
# The fully static build (README, "A fully static binary") that the container image holds.
readonly STATIC_TARGET="x86_64-unknown-linux-gnu"
readonly DEFAULT_IMAGE="localhost/ordersvc:latest"
# Where `service` installs: the unit runs this binary, and reads its settings from this file.
readonly SERVICE_BIN="/usr/local/bin/ordersvc"
readonly SERVICE_UNIT="/etc/systemd/system/ordersvc.service"
readonly SERVICE_ENV_FILE="/etc/ordersvc/ordersvc.env"

# --- output ---------------------------------------------------------------------------------
info() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
Usage: ./install.sh [deps | test [CARGO_TEST_ARGS...] | image | service | -h | --help]

  (no argument)  install dependencies, build the release binary (cargo build --release --locked),
                 install it as ordersvc (/usr/local/bin as root, else ~/.cargo/bin or ~/.local/bin)
                 and run 'ordersvc migrate'
  deps           only install/start the dependencies: Debian packages, PostgreSQL on
                 ${PG_HOST}:${PG_PORT}, NATS JetStream on ${NATS_HOST}:${NATS_PORT}, role '${ROLE}';
                 checks that Rust >= ${MIN_RUST} is installed (it cannot install Rust)
  test           dependencies, Debian's chromium (the page tests drive it headless) and
                 prometheus (promtool, and a Prometheus for the deploy/ tests), and
                 schemathesis from PyPI (the API contract test runs it), then
                 'cargo test --locked' with the remaining arguments,
                 e.g. ./install.sh test -- --nocapture; exits with cargo's exit code
  image          build the fully static binary (--target ${STATIC_TARGET}, crt-static) and
                 from it the container image deploy/Containerfile, tagged ${DEFAULT_IMAGE}
                 (or \$ORDERSVC_IMAGE), with podman, else docker; needs no PostgreSQL or NATS
  service        build the binary, install it as ${SERVICE_BIN} and the systemd unit
                 deploy/ordersvc.service as ${SERVICE_UNIT}, then enable and
                 (re)start it; settings go in ${SERVICE_ENV_FILE}. Needs root and a
                 running systemd (exits non-zero where systemd does not run)
  -h, --help     show this help

Environment: DATABASE_URL (default ${DEFAULT_DATABASE_URL}) is used by
'ordersvc migrate'. ORDERSVC_IMAGE names the image that 'image' builds. The tests make their own databases (ORDERSVC_TEST_DATABASE_URL,
ORDERSVC_TEST_NATS_URL and CHROMIUM point them elsewhere).
EOF
}

# --- privileges -----------------------------------------------------------------------------
is_root() { [[ ${EUID} -eq 0 ]]; }

# need_root: fail early, with a clear message, when a privileged step is needed but we can get
# no privileges. Checked lazily so that a non-root user on a ready machine needs no sudo at all.
need_root() {
    is_root && return 0
    command -v sudo >/dev/null 2>&1 && return 0
    die "this step needs root: run ./install.sh as root or install sudo ($*)"
}

# as_root CMD...: run CMD as root, through sudo when we are not root.
as_root() {
    need_root "$*"
    if is_root; then
        "$@"
    else
        sudo "$@"
    fi
}

# as_postgres CMD...: run CMD as the OS user postgres (peer authentication on the local socket).
# cd / so that the postgres user does not complain about an unreadable working directory.
as_postgres() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        need_root "run $1 as postgres"
        (cd / && sudo -u postgres -- "$@")
    fi
}

# --- helpers --------------------------------------------------------------------------------
# tcp_open HOST PORT: true when something accepts a TCP connection (bash's /dev/tcp, no extra tools).
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash, on purpose
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

pg_ready() { pg_isready -q -h "${PG_HOST}" -p "${PG_PORT}" -t 2 >/dev/null 2>&1; }
nats_ready() { tcp_open "${NATS_HOST}" "${NATS_PORT}"; }

# wait_for WHAT HINT CHECK...: poll CHECK once a second for up to WAIT_SECONDS.
wait_for() {
    local what=$1 hint=$2 i
    shift 2
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        "$@" && return 0
        sleep 1
    done
    "$@" || die "${what} did not come up within ${WAIT_SECONDS} s: ${hint}"
}

# version_ge A B: true when dotted version A >= B (compares major.minor.patch numerically).
version_ge() {
    local a b i
    IFS=. read -r -a a <<<"$1"
    IFS=. read -r -a b <<<"$2"
    for i in 0 1 2; do
        ((10#${a[i]:-0} > 10#${b[i]:-0})) && return 0
        ((10#${a[i]:-0} < 10#${b[i]:-0})) && return 1
    done
    return 0
}

# --- a/b: Debian packages -------------------------------------------------------------------
# package_present PKG: dpkg says it is installed, or (for tools that may come from elsewhere,
# e.g. PGDG's postgresql-16 without Debian's metapackage) the command it provides exists.
package_present() {
    local pkg=$1
    if [[ "$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)" == "install ok installed" ]]; then
        return 0
    fi
    case "${pkg}" in
        postgresql) command -v pg_ctlcluster >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 ;;
        nats-server) [[ -x /usr/sbin/nats-server ]] || command -v nats-server >/dev/null 2>&1 ;;
        build-essential) command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 ;;
        pkg-config) command -v pkg-config >/dev/null 2>&1 ;;
        curl) command -v curl >/dev/null 2>&1 ;;
        patroni) command -v patroni >/dev/null 2>&1 && command -v patronictl >/dev/null 2>&1 ;;
        etcd-server) [[ -x /usr/bin/etcd ]] || command -v etcd >/dev/null 2>&1 ;;
        haproxy) [[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null 2>&1 ;;
        chromium) [[ -x /usr/bin/chromium ]] ;;
        prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ;;
        podman) command -v podman >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}

# install_packages PKG...: installs those of the packages that are missing.
install_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        package_present "${pkg}" || missing+=("${pkg}")
    done
    ((${#missing[@]} == 0)) && return 0

    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages: ${missing[*]}; this script installs them only with apt-get (Debian/Ubuntu)"
    info "Installing Debian packages: ${missing[*]}"
    # apt-get update only now: it is slow and needs the network, and nothing needs it otherwise.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}"
}

# install_pypi_packages NAME==VERSION...: pip-installs those not installed at that version, for
# the python3 on PATH (the one the tests run).
install_pypi_packages() {
    local missing=() spec
    for spec in "$@"; do
        [[ $(python3 -m pip show "${spec%%==*}" 2>/dev/null | sed -n 's/^Version: //p') == "${spec##*==}" ]] ||
            missing+=("${spec}")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v python3 >/dev/null 2>&1 || die "python3 is missing: the API contract test needs it for schemathesis"
    info "Installing from PyPI: ${missing[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
}

# --- c: Rust --------------------------------------------------------------------------------
# We cannot download a toolchain here, and Debian's rustc is older than the crates need.
check_rust() {
    # rustup puts cargo in ~/.cargo/bin; a non-login shell may not have it on PATH yet.
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "${HOME}/.cargo/env" ]]; then
        # shellcheck disable=SC1091 # written by rustup, not part of this repo
        . "${HOME}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust >= ${MIN_RUST} with rustup (https://rustup.rs), then run this again (Debian's rustc is too old)"
    command -v rustc >/dev/null 2>&1 ||
        die "cargo is installed but rustc is not: repair the toolchain with rustup (https://rustup.rs)"

    local version
    version="$(rustc --version | awk '{print $2}')"
    version="${version%%-*}" # 1.86.0-nightly -> 1.86.0
    [[ "${version}" =~ ^[0-9]+\.[0-9]+ ]] || die "cannot read the Rust version from: $(rustc --version)"
    version_ge "${version}" "${MIN_RUST}" ||
        die "Rust ${version} is too old: ordersvc needs Rust >= ${MIN_RUST} (rustup update stable)"
    RUST_VERSION="${version}"
}

# --- d: PostgreSQL --------------------------------------------------------------------------
# highest_version DIR: the highest PostgreSQL major version that has a directory in DIR.
highest_version() {
    find "$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | grep -E '^[0-9]+(\.[0-9]+)?$' | sort -V | tail -n 1 || true
}

start_postgres() {
    pg_ready && return 0

    local version
    version="$(highest_version /etc/postgresql)"
    if [[ -z "${version}" || ! -d "/etc/postgresql/${version}/main" ]]; then
        # No cluster yet (e.g. the package was installed without creating one): make the default
        # one. Debian's default listen_addresses is 'localhost', which is what we want.
        [[ -n "${version}" ]] || version="$(highest_version /usr/lib/postgresql)"
        [[ -n "${version}" ]] || die "no PostgreSQL server found under /usr/lib/postgresql: is the postgresql package installed?"
        info "Creating PostgreSQL ${version} cluster 'main'"
        as_root pg_createcluster "${version}" main >/dev/null
    fi

    # A running cluster that does not answer on 127.0.0.1:5432 needs a human: starting it again
    # would fail with "already running".
    if pg_ctlcluster "${version}" main status >/dev/null 2>&1; then
        die "PostgreSQL ${version}/main is running but not accepting connections on ${PG_HOST}:${PG_PORT}; check its port and listen_addresses in /etc/postgresql/${version}/main/postgresql.conf (see pg_lsclusters)"
    fi

    info "Starting PostgreSQL ${version}/main"
    # --skip-systemctl-redirect: start the server directly, also where systemd is not running.
    as_root pg_ctlcluster --skip-systemctl-redirect "${version}" main start ||
        die "pg_ctlcluster failed to start PostgreSQL ${version}/main; see /var/log/postgresql/postgresql-${version}-main.log"
    wait_for "PostgreSQL on ${PG_HOST}:${PG_PORT}" \
        "see pg_lsclusters and /var/log/postgresql/postgresql-${version}-main.log" pg_ready
}

# --- e: NATS --------------------------------------------------------------------------------
nats_binary() {
    if [[ -x /usr/sbin/nats-server ]]; then
        echo /usr/sbin/nats-server
    else
        command -v nats-server || die "nats-server not found"
    fi
}

start_nats() {
    if ! nats_ready; then
        info "Starting nats-server with JetStream on ${NATS_HOST}:${NATS_PORT} (log: ${NATS_LOG})"
        [[ -d "${NATS_STORE}" ]] || as_root mkdir -p "${NATS_STORE}"
        # The same command the machine images use; --oknodo: not an error if it already runs.
        # --background makes start-stop-daemon detach it and point its stdio at /dev/null.
        as_root start-stop-daemon --start --oknodo --background --exec "$(nats_binary)" -- \
            -a "${NATS_HOST}" -p "${NATS_PORT}" -js -sd "${NATS_STORE}" -l "${NATS_LOG}"
        # start-stop-daemon does nothing when a nats-server already runs (e.g. on another port),
        # so name that case in the message if the port never opens.
        wait_for "nats-server on ${NATS_HOST}:${NATS_PORT}" \
            "see ${NATS_LOG}; is another nats-server already running elsewhere (pgrep -a nats-server)?" nats_ready
    fi
    check_jetstream
}

# check_jetstream: the server's first line (INFO {...}) says "jetstream":true when JetStream is
# on. Reading it is one connection and no extra tools; if it cannot be read, skip the check.
check_jetstream() {
    local banner
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash, on purpose
    banner="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r -t 2 line <&3 && printf "%s" "$line"' _ "${NATS_HOST}" "${NATS_PORT}" 2>/dev/null || true)"
    [[ "${banner}" == INFO* ]] || return 0
    [[ "${banner}" == *'"jetstream":true'* ]] ||
        die "the NATS server on ${NATS_HOST}:${NATS_PORT} runs without JetStream, which ordersvc needs: restart it with -js (e.g. -js -sd ${NATS_STORE})"
}

# --- f: the ordersvc role -------------------------------------------------------------------
# superuser_psql ARGS...: psql as the postgres superuser. Prefer peer auth on the local socket
# (works with Debian's default pg_hba); fall back to TCP as postgres, which works where
# pg_hba trusts 127.0.0.1 (as on the CI machines).
SUPERUSER_ROUTE=""
readonly PSQL_OPTS=(-X -q -v ON_ERROR_STOP=1 -p "${PG_PORT}" -d postgres)

# find_superuser_route: decide once (not inside a $(...) subshell, so that it sticks).
find_superuser_route() {
    [[ -n "${SUPERUSER_ROUTE}" ]] && return 0
    if (is_root || command -v sudo >/dev/null 2>&1) &&
        as_postgres psql "${PSQL_OPTS[@]}" -Atc 'select 1' >/dev/null 2>&1; then
        SUPERUSER_ROUTE=socket
    elif PGCONNECT_TIMEOUT=5 psql -w -h "${PG_HOST}" -p "${PG_PORT}" -U postgres "${PSQL_OPTS[@]}" -Atc 'select 1' >/dev/null 2>&1; then
        SUPERUSER_ROUTE=tcp
    else
        die "cannot connect to PostgreSQL as the superuser postgres (tried the local socket as OS user postgres, and ${PG_HOST}:${PG_PORT} as postgres); run as root or with sudo"
    fi
}

superuser_psql() {
    find_superuser_route
    if [[ "${SUPERUSER_ROUTE}" == socket ]]; then
        as_postgres psql "${PSQL_OPTS[@]}" "$@"
    else
        PGCONNECT_TIMEOUT=5 psql -w -h "${PG_HOST}" -p "${PG_PORT}" -U postgres "${PSQL_OPTS[@]}" "$@"
    fi
}

create_role() {
    local attrs
    find_superuser_route
    attrs="$(superuser_psql -Atc "select rolcanlogin, rolcreatedb, rolsuper from pg_roles where rolname = '${ROLE}'")"
    case "${attrs}" in
        "")
            info "Creating PostgreSQL role ${ROLE} (LOGIN CREATEDB NOSUPERUSER, password '${ROLE_PASSWORD}')"
            superuser_psql -c "CREATE ROLE ${ROLE} LOGIN CREATEDB NOSUPERUSER PASSWORD '${ROLE_PASSWORD}'"
            warn "role ${ROLE} has the development password '${ROLE_PASSWORD}': outside development change it (ALTER ROLE ${ROLE} PASSWORD '...') and set DATABASE_URL to match"
            ;;
        "t|t|f") ;; # already as it should be; its password is left alone (it may have been changed)
        *)
            info "Fixing PostgreSQL role ${ROLE}: LOGIN CREATEDB NOSUPERUSER"
            superuser_psql -c "ALTER ROLE ${ROLE} LOGIN CREATEDB NOSUPERUSER"
            ;;
    esac
}

# --- g: can the service log in with its defaults? -------------------------------------------
# The service connects over TCP with a password (DATABASE_URL). A fresh Debian cluster asks for
# scram-sha-256 on 127.0.0.1, which the password satisfies; a pg_hba 'reject' or a changed
# password does not.
check_login() {
    local url="postgres://${ROLE}:${ROLE_PASSWORD}@${PG_HOST}:${PG_PORT}/postgres" err
    if [[ -n "${DATABASE_URL:-}" && "${DATABASE_URL}" != "${DEFAULT_DATABASE_URL}" ]]; then
        # A user-chosen URL may point elsewhere or carry options psql does not know: only warn.
        if ! err="$(PGCONNECT_TIMEOUT=5 psql -w -X -Atqc 'select 1' "${DATABASE_URL}" 2>&1 >/dev/null)" &&
            [[ "${err}" != *"does not exist"* ]]; then # a missing database is fine: migrate creates it
            warn "cannot log in with DATABASE_URL (...@${DATABASE_URL#*@}): ${err//$'\n'/ }"
        fi
        return 0
    fi
    err="$(PGCONNECT_TIMEOUT=5 psql -w -X -Atqc 'select 1' "${url}" 2>&1 >/dev/null)" && return 0

    local hba
    hba="$(superuser_psql -Atc 'show hba_file' 2>/dev/null || echo 'pg_hba.conf')"
    printf 'install.sh: error: role %s cannot log in with the default DATABASE_URL (%s):\n  %s\n' \
        "${ROLE}" "${DEFAULT_DATABASE_URL}" "${err//$'\n'/ }" >&2
    if [[ "${err}" == *"password authentication failed"* ]]; then
        printf '  its password is not %s: set DATABASE_URL to the real one, or (development only) ALTER ROLE %s PASSWORD '"'"'%s'"'"'\n' \
            "'${ROLE_PASSWORD}'" "${ROLE}" "${ROLE_PASSWORD}" >&2
    else
        printf '  allow password logins from 127.0.0.1: put this line before any other matching line of %s\n    host all %s 127.0.0.1/32 scram-sha-256\n  then reload PostgreSQL (pg_ctlcluster <version> main reload)\n' \
            "${hba}" "${ROLE}" >&2
    fi
    exit 1
}

# --- modes ----------------------------------------------------------------------------------
RUST_VERSION=""
deps() {
    install_packages "${DEB_PACKAGES[@]}"
    check_rust
    start_postgres
    start_nats
    create_role
    check_login
    info "Dependencies OK: Rust ${RUST_VERSION}, PostgreSQL on ${PG_HOST}:${PG_PORT} with role ${ROLE}, NATS JetStream on ${NATS_HOST}:${NATS_PORT}"
}

# install_dir: where the binary goes; root installs system-wide, others into their own bin dir.
install_dir() {
    if is_root; then
        echo /usr/local/bin
    elif [[ -d "${HOME}/.cargo/bin" ]]; then
        echo "${HOME}/.cargo/bin"
    else
        echo "${HOME}/.local/bin"
    fi
}

build() {
    info "Building ordersvc (cargo build --release --locked)"
    (cd "${REPO_DIR}" && cargo build --release --locked)
}

install_binary() {
    local dir
    dir="$(install_dir)"
    mkdir -p "${dir}"
    install -m 0755 "${REPO_DIR}/target/release/ordersvc" "${dir}/ordersvc"
    info "Installed ${dir}/ordersvc"
    case ":${PATH}:" in
        *":${dir}:"*) ;;
        *) warn "${dir} is not on your PATH: add it (export PATH=\"${dir}:\$PATH\") or run ${dir}/ordersvc" ;;
    esac
    INSTALLED_BIN="${dir}/ordersvc"
}

migrate() {
    info "Running ordersvc migrate"
    "${INSTALLED_BIN}" migrate
}

# target_dir: cargo's output directory, also when CARGO_TARGET_DIR moves it.
target_dir() { echo "${CARGO_TARGET_DIR:-${REPO_DIR}/target}"; }

# container_tool: podman if there is one, else docker; the Containerfile suits both.
container_tool() {
    if command -v podman >/dev/null 2>&1; then
        echo podman
    elif command -v docker >/dev/null 2>&1; then
        echo docker
    else
        die "neither podman nor docker is installed: install one (apt-get install podman) to build the image"
    fi
}

# image: the static binary, then the image from a build context that holds only that binary.
image() {
    local tool tag binary context linkage
    tool="$(container_tool)"
    tag="${ORDERSVC_IMAGE:-${DEFAULT_IMAGE}}"
    check_rust
    info "Building the static binary (RUSTFLAGS=-C target-feature=+crt-static, --target ${STATIC_TARGET})"
    (cd "${REPO_DIR}" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target "${STATIC_TARGET}")
    binary="$(target_dir)/${STATIC_TARGET}/release/ordersvc"
    # A dynamic binary would start on this machine and fail in the image: refuse it here.
    linkage="$(ldd "${binary}" 2>&1 || true)" # ldd exits 1 on a static binary
    [[ "${linkage}" == *"statically linked"* || "${linkage}" == *"not a dynamic executable"* ]] ||
        die "${binary} is not statically linked: ${linkage}"
    context="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: the variable is local
    trap "rm -rf '${context}'" EXIT
    install -m 0755 "${binary}" "${context}/ordersvc"
    info "Building the image ${tag} with ${tool}"
    "${tool}" build --file "${REPO_DIR}/deploy/Containerfile" --tag "${tag}" "${context}"
    info "Built ${tag}: ${tool} run --rm -p 8080:8080 -e DATABASE_URL=... -e NATS_URL=... ${tag}"
}

# systemd_running: PID 1 is systemd and answers (containers and CI machines have none).
systemd_running() {
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# service: the release binary and the hardened unit, enabled and started. The unit runs as a
# dynamic user and reads ${SERVICE_ENV_FILE}, which this creates (empty, mode 0600) if missing.
service() {
    systemd_running ||
        die "systemd is not running on this machine (no /run/systemd/system): install the unit by hand from deploy/ordersvc.service, or run 'ordersvc serve' under your own supervisor"
    need_root "install a systemd unit"
    check_rust
    build
    info "Installing ${SERVICE_BIN}, ${SERVICE_UNIT} and ${SERVICE_ENV_FILE}"
    as_root install -m 0755 "$(target_dir)/release/ordersvc" "${SERVICE_BIN}"
    as_root install -m 0644 "${REPO_DIR}/deploy/ordersvc.service" "${SERVICE_UNIT}"
    as_root install -d -m 0755 "$(dirname "${SERVICE_ENV_FILE}")"
    if ! as_root test -e "${SERVICE_ENV_FILE}"; then
        # It may hold DATABASE_URL's password and the admin token: readable by root only.
        as_root install -m 0600 /dev/null "${SERVICE_ENV_FILE}"
        info "Created an empty ${SERVICE_ENV_FILE}: put DATABASE_URL, NATS_URL, ... there"
    fi
    as_root systemctl daemon-reload
    as_root systemctl enable ordersvc.service
    as_root systemctl restart ordersvc.service
    info "Started ordersvc.service: systemctl status ordersvc; journalctl -u ordersvc"
}

main() {
    local mode=${1:-install}
    case "${mode}" in
        -h | --help | help)
            usage
            ;;
        install)
            deps
            build
            install_binary
            migrate
            info "Done. Start the service with: ordersvc serve   (ordersvc --help lists flags and env vars)"
            ;;
        deps)
            [[ $# -le 1 ]] || die "'deps' takes no arguments"
            deps
            ;;
        test)
            shift
            deps
            install_packages "${TEST_DEB_PACKAGES[@]}"
            install_pypi_packages "${TEST_PYPI_PACKAGES[@]}"
            cd "${REPO_DIR}"
            info "Running cargo test --locked${*:+ $*}"
            exec cargo test --locked "$@"
            ;;
        image)
            [[ $# -le 1 ]] || die "'image' takes no arguments"
            image
            ;;
        service)
            [[ $# -le 1 ]] || die "'service' takes no arguments"
            service
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

# Run only when executed, so that the functions can also be sourced (e.g. to test one step).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
