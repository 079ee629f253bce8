#!/usr/bin/env bash
# A scale-out ordersvc on one machine: a 3-node NATS JetStream cluster and 3 `ordersvc serve`
# replicas sharing one durable consumer and one PostgreSQL database, everything on 127.0.0.1.
# With --pg-ha that database is a highly available PostgreSQL of its own: 3 nodes under Patroni
# (etcd as its store, synchronous replication) behind haproxy, whose write port follows the
# primary (Patroni's /primary check) and whose read port goes to the standbys (/replica).
#
#   scripts/local-cluster.sh up [--nats-only | --pg-ha]
#                                               start whatever is not running, wait until ready
#   scripts/local-cluster.sh status             each node and replica: pid, port, alive, health
#   scripts/local-cluster.sh kill-node N        SIGKILL NATS node N (1-3), like a crash
#   scripts/local-cluster.sh start-node N       start node N again on its data; wait until it rejoined
#                                               and is a current peer of every stream again
#   scripts/local-cluster.sh kill-replica N     SIGKILL replica N, like a crash
#   scripts/local-cluster.sh start-replica N    start replica N again; wait until /readyz is 200
#   scripts/local-cluster.sh pg-status          (--pg-ha) Patroni's members (leader, synchronous
#                                               standby, lag) and the node each haproxy port reaches
#   scripts/local-cluster.sh kill-pg-primary    (--pg-ha) SIGKILL the leader's Patroni and its
#                                               PostgreSQL, as if its machine were lost; wait until
#                                               the write port reaches the promoted standby
#   scripts/local-cluster.sh pg-switchover      (--pg-ha) planned switchover to the synchronous
#                                               standby (patronictl); wait until the write port follows
#   scripts/local-cluster.sh start-pg-node [N]  (--pg-ha) start PostgreSQL node N (1-3) again under
#                                               Patroni, or every node that is down; wait until it runs
#                                               (a lost primary rejoins as a standby, after pg_rewind)
#   scripts/local-cluster.sh down [--purge]     stop the replicas, then the nodes (and PostgreSQL);
#                                               --purge also deletes the state dirs (streams, logs,
#                                               --pg-ha's PostgreSQL) and the database if `up` created it
#
# Settings, from the environment; the ports and the database are recorded by `up`, and later
# commands keep to the recorded ones while anything runs (or until `up` after `down`):
#   ORDERSVC_CLUSTER_DIR      state dir: data, logs, pid files
#                             (default ${XDG_STATE_HOME:-$HOME/.local/state}/ordersvc-local-cluster)
#   NATS_SERVER               nats-server binary (default /usr/sbin/nats-server, else on PATH)
#   ORDERSVC_BIN              ordersvc binary (default target/release/ordersvc, else on PATH)
#   ORDERSVC_CLUSTER_CLIENT_PORTS   NATS client ports      (default "4301 4302 4303")
#   ORDERSVC_CLUSTER_ROUTE_PORTS    NATS cluster ports     (default "6301 6302 6303")
#   ORDERSVC_CLUSTER_MONITOR_PORTS  NATS monitoring ports  (default "8301 8302 8303")
#   ORDERSVC_CLUSTER_HTTP_PORTS     replicas' HTTP ports   (default "18081 18082 18083")
#   ORDERSVC_CLUSTER_ADMIN_PORTS    replicas' admin ports: /metrics, /rejected (default "18091 18092 18093")
#   DATABASE_URL              the replicas' one database, without --pg-ha
#                             (default postgres://ordersvc:ordersvc@127.0.0.1:5432/orders_cluster?sslmode=disable)
#   ORDERSVC_CLUSTER_TIMEOUT  seconds to wait for a node or a replica to be ready (default 60)
# With --pg-ha (the replicas then use postgres://ordersvc:ordersvc@127.0.0.1:WRITE_PORT/orders_cluster
# as --database-url, and the read port as --database-read-url):
#   ORDERSVC_CLUSTER_PG_DIR         PostgreSQL's data, etcd's, their logs and pid files; the postgres
#                                   user must be able to reach it when run as root (default
#                                   $ORDERSVC_CLUSTER_DIR/pg; as root /var/lib/postgresql/ordersvc-local-cluster)
#   ORDERSVC_CLUSTER_PG_PORTS       PostgreSQL nodes' ports     (default "5441 5442 5443")
#   ORDERSVC_CLUSTER_PATRONI_PORTS  Patroni's REST API ports    (default "8441 8442 8443")
#   ORDERSVC_CLUSTER_ETCD_PORTS     etcd's client and peer port (default "2479 2480": not etcd's
#                                   usual 2379/2380, which a system etcd may hold)
#   ORDERSVC_CLUSTER_PG_WRITE_PORT  haproxy's port to the primary  (default 5440)
#   ORDERSVC_CLUSTER_PG_READ_PORT   haproxy's port to the standbys (default 5450)
#   ORDERSVC_CLUSTER_PG_BIN         PostgreSQL's server programs (default the newest /usr/lib/postgresql/*/bin)
# Other ORDERSVC_* variables (ORDERSVC_STREAM, RUST_LOG, ...) reach the replicas unchanged.
#
# Needs curl and setsid; psql only for --purge to drop the database, jq only for `status` to
# list the streams. Debian's nats-server 2.9.10 elects a new stream leader 4-10 s after the
# leader dies, and a cluster restarted on its data (down, then up) takes about 10 s to elect
# its JetStream meta leader: `up` waits for it. --pg-ha needs Debian's patroni, etcd-server and
# haproxy (./install.sh deps installs them), psql, and as root setpriv (PostgreSQL and Patroni
# run as the postgres user). Patroni promotes the synchronous standby about 10 s after the
# primary is lost (its leader key's ttl is 10 s, checked every 2 s).
set -euo pipefail

# What the environment says, before any recorded settings are read.
ENV_NATS_SERVER=${NATS_SERVER:-}
ENV_ORDERSVC_BIN=${ORDERSVC_BIN:-}
# The state is the user's alone: the settings hold the database URL, password and all.
umask 077
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
STATE_DIR=${ORDERSVC_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/ordersvc-local-cluster}
SETTINGS="$STATE_DIR/settings"
# How long `down` waits after SIGTERM before SIGKILL: above serve's default 15 s stop budget.
REPLICA_STOP_GRACE=20
NODE_STOP_GRACE=10
# Patroni stops its PostgreSQL first (a fast shutdown, then a checkpoint).
PG_STOP_GRACE=30

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

usage() {
    local code=${1:-0} text
    text=$(sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//')
    if ((code == 0)); then echo "$text"; else echo "$text" >&2; fi
    exit "$code"
}

# The settings: the binaries and the timeout from the environment (or the defaults); the ports
# and the database as `up` recorded them, else from the environment too. `up` passes "fresh"
# to take the environment's when nothing is running.
load_settings() {
    if [[ ${1:-} != fresh && -f $SETTINGS ]]; then
        # shellcheck source=/dev/null
        source "$SETTINGS"
        # Recorded before replicas had admin ports, or before --pg-ha.
        ADMIN_PORTS=${ADMIN_PORTS:-${ORDERSVC_CLUSTER_ADMIN_PORTS:-18091 18092 18093}}
        PG_HA=${PG_HA:-no}
        [[ -n ${PG_DIR:-} ]] || pg_settings_from_env
    else
        CLIENT_PORTS=${ORDERSVC_CLUSTER_CLIENT_PORTS:-4301 4302 4303}
        ROUTE_PORTS=${ORDERSVC_CLUSTER_ROUTE_PORTS:-6301 6302 6303}
        MONITOR_PORTS=${ORDERSVC_CLUSTER_MONITOR_PORTS:-8301 8302 8303}
        HTTP_PORTS=${ORDERSVC_CLUSTER_HTTP_PORTS:-18081 18082 18083}
        ADMIN_PORTS=${ORDERSVC_CLUSTER_ADMIN_PORTS:-18091 18092 18093}
        CLUSTER_DATABASE_URL=${DATABASE_URL:-postgres://ordersvc:ordersvc@127.0.0.1:5432/orders_cluster?sslmode=disable}
        DATABASE_CREATED=no
        PG_HA=no
        pg_settings_from_env
    fi
    local nats_default=/usr/sbin/nats-server
    [[ -x $nats_default ]] || nats_default=$(command -v nats-server || echo nats-server)
    local bin_default="$REPO_DIR/target/release/ordersvc"
    [[ -x $bin_default ]] || bin_default=$(command -v ordersvc || echo ordersvc)
    NATS_SERVER=${ENV_NATS_SERVER:-$nats_default}
    ORDERSVC_BIN=${ENV_ORDERSVC_BIN:-$bin_default}
    TIMEOUT=${ORDERSVC_CLUSTER_TIMEOUT:-60}
    # As root, PostgreSQL and Patroni run as the postgres user (initdb and postgres refuse root).
    AS_SERVER=()
    ((EUID != 0)) || AS_SERVER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    check_settings
}

# The --pg-ha settings from the environment (or the defaults); its passwords made afresh.
pg_settings_from_env() {
    local dir_default="$STATE_DIR/pg" bin_default
    # root's home is closed to the postgres user; Debian's PostgreSQL keeps its data under
    # /var/lib/postgresql, the postgres user's home.
    ((EUID != 0)) || dir_default=/var/lib/postgresql/ordersvc-local-cluster
    PG_DIR=${ORDERSVC_CLUSTER_PG_DIR:-$dir_default}
    PG_PORTS=${ORDERSVC_CLUSTER_PG_PORTS:-5441 5442 5443}
    PATRONI_PORTS=${ORDERSVC_CLUSTER_PATRONI_PORTS:-8441 8442 8443}
    ETCD_PORTS=${ORDERSVC_CLUSTER_ETCD_PORTS:-2479 2480}
    PG_WRITE_PORT=${ORDERSVC_CLUSTER_PG_WRITE_PORT:-5440}
    PG_READ_PORT=${ORDERSVC_CLUSTER_PG_READ_PORT:-5450}
    bin_default=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -V | tail -n 1 || true)
    PG_BIN=${ORDERSVC_CLUSTER_PG_BIN:-${bin_default%/initdb}}
    PG_SUPERUSER_PASSWORD=$(random_password)
    PG_REPLICATION_PASSWORD=$(random_password)
    CLUSTER_DATABASE_READ_URL=""
}

# 32 hex digits from the kernel's random source (no tool beyond coreutils).
random_password() {
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

save_settings() {
    local name
    {
        echo "# Recorded by scripts/local-cluster.sh up; later commands use these."
        for name in CLIENT_PORTS ROUTE_PORTS MONITOR_PORTS HTTP_PORTS ADMIN_PORTS CLUSTER_DATABASE_URL \
            DATABASE_CREATED PG_HA PG_DIR PG_PORTS PATRONI_PORTS ETCD_PORTS PG_WRITE_PORT PG_READ_PORT \
            PG_BIN PG_SUPERUSER_PASSWORD PG_REPLICATION_PASSWORD CLUSTER_DATABASE_READ_URL; do
            printf '%s=%q\n' "$name" "${!name}"
        done
    } >"$SETTINGS.new"
    mv "$SETTINGS.new" "$SETTINGS"
}

# Word N (1-based) of a space-separated list.
nth() {
    local -a words
    read -r -a words <<<"$1"
    echo "${words[$(($2 - 1))]}"
}

count() {
    local -a words
    read -r -a words <<<"$1"
    echo "${#words[@]}"
}

check_settings() {
    local nodes
    nodes=$(count "$CLIENT_PORTS")
    [[ $(count "$ROUTE_PORTS") == "$nodes" && $(count "$MONITOR_PORTS") == "$nodes" ]] ||
        die "ORDERSVC_CLUSTER_CLIENT_PORTS, _ROUTE_PORTS and _MONITOR_PORTS must list as many ports each"
    [[ $(count "$ADMIN_PORTS") == "$(count "$HTTP_PORTS")" ]] ||
        die "ORDERSVC_CLUSTER_HTTP_PORTS and _ADMIN_PORTS must list as many ports each"
    [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "ORDERSVC_CLUSTER_TIMEOUT must be a number of seconds"
    [[ $(count "$PATRONI_PORTS") == "$(count "$PG_PORTS")" ]] ||
        die "ORDERSVC_CLUSTER_PG_PORTS and _PATRONI_PORTS must list as many ports each"
    [[ $(count "$ETCD_PORTS") == 2 ]] || die "ORDERSVC_CLUSTER_ETCD_PORTS must list two ports: client, peer"
    local port
    for port in $CLIENT_PORTS $ROUTE_PORTS $MONITOR_PORTS $HTTP_PORTS $ADMIN_PORTS $PG_PORTS \
        $PATRONI_PORTS $ETCD_PORTS $PG_WRITE_PORT $PG_READ_PORT; do
        [[ $port =~ ^[1-9][0-9]{0,4}$ && $port -le 65535 ]] || die "$port is not a port number"
    done
}

node_count() { count "$CLIENT_PORTS"; }
replica_count() { count "$HTTP_PORTS"; }

nats_urls() {
    local port urls=()
    for port in $CLIENT_PORTS; do
        urls+=("nats://127.0.0.1:$port")
    done
    local IFS=,
    echo "${urls[*]}"
}

node_dir() { echo "$STATE_DIR/node-$1"; }
replica_dir() { echo "$STATE_DIR/replica-$1"; }

# Whether a process is alive: a zombie (killed, not yet reaped by whoever inherited it) is not.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # The state follows the command name's closing parenthesis.
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# The pid in a pid file if that process is alive and still the one we started (its command
# line holds `marker`): a stale pid file, or a pid reused by another program, reads as not
# running.
live_pid() {
    local pid_file=$1 marker=$2 pid cmdline
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$marker"* ]] || return 1
    echo "$pid"
}

node_pid() { live_pid "$(node_dir "$1")/nats.pid" "$(node_dir "$1")/nats.conf"; }
replica_pid() { live_pid "$(replica_dir "$1")/serve.pid" "--http-addr 127.0.0.1:$(nth "$HTTP_PORTS" "$1")"; }

# Waits (at most 5 s) until the process just started in the background has become the program
# whose command line holds `marker`: until its exec, /proc/PID/cmdline is still this script's,
# and live_pid would take it for a stale pid file. An exit before that is left to the caller's
# wait, which reports it with the log.
await_exec() {
    local pid=$1 marker=$2 cmdline deadline=$((SECONDS + 5))
    while alive "$pid" && ((SECONDS < deadline)); do
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
        [[ $cmdline == *"$marker"* ]] && return 0
        sleep 0.05
    done
}

# Whether something accepts connections on 127.0.0.1:PORT.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The status line and body of a GET, on one line ("no answer" if none).
http_line() {
    local answer
    answer=$(curl -sS -i --max-time 2 "$1" 2>/dev/null | tr -d '\r' | sed -n '1p; $p' | paste -sd ' ') || true
    echo "${answer:-no answer}"
}

# A URL with its password replaced by ***.
redacted_url() {
    sed 's#^\([a-z]*://[^:/@]*\):[^@]*@#\1:***@#' <<<"$1"
}

http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

check_index() {
    local what=$1 n=$2 max=$3
    [[ $n =~ ^[1-9][0-9]*$ && $n -le $max ]] || die "no $what $n: there are $max (1-$max)"
}

write_node_config() {
    local n=$1 dir routes="" port
    dir=$(node_dir "$n")
    for port in $ROUTE_PORTS; do
        routes+="    \"nats-route://127.0.0.1:$port\""$'\n'
    done
    mkdir -p "$dir/jetstream"
    cat >"$dir/nats.conf" <<CONF
# Written by scripts/local-cluster.sh: node $n of the local ordersvc cluster.
server_name: "local-n$n"
listen: "127.0.0.1:$(nth "$CLIENT_PORTS" "$n")"
http: "127.0.0.1:$(nth "$MONITOR_PORTS" "$n")"
jetstream {
  store_dir: "$dir/jetstream"
  max_memory_store: 256MB
  max_file_store: 2GB
}
cluster {
  name: "ordersvc-local"
  listen: "127.0.0.1:$(nth "$ROUTE_PORTS" "$n")"
  # Every node, itself included (a route to itself is skipped).
  routes: [
$routes  ]
}
CONF
}

# Fails unless node N's ports are free (when it is not running: its own are in use otherwise).
check_node_ports() {
    local n=$1 port
    node_pid "$n" >/dev/null && return 0
    for port in "$(nth "$CLIENT_PORTS" "$n")" "$(nth "$ROUTE_PORTS" "$n")" "$(nth "$MONITOR_PORTS" "$n")"; do
        ! listening "$port" || die "node $n: port $port is taken by another program (see ORDERSVC_CLUSTER_*_PORTS)"
    done
}

check_replica_port() {
    local n=$1 port
    replica_pid "$n" >/dev/null && return 0
    port=$(nth "$HTTP_PORTS" "$n")
    ! listening "$port" || die "replica $n: port $port is taken by another program (see ORDERSVC_CLUSTER_HTTP_PORTS)"
    port=$(nth "$ADMIN_PORTS" "$n")
    ! listening "$port" || die "replica $n: admin port $port is taken by another program (see ORDERSVC_CLUSTER_ADMIN_PORTS)"
}

# Starts node N's process if it is not running (no wait).
spawn_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    node_pid "$n" >/dev/null && return 0
    check_node_ports "$n"
    write_node_config "$n"
    echo "starting NATS node $n on 127.0.0.1:$(nth "$CLIENT_PORTS" "$n")"
    echo "===== $(date -Is) local-cluster.sh starts node $n =====" >>"$dir/nats.log"
    # setsid: its own session, so that a Ctrl-C in this terminal later does not reach it. The
    # script has no job control, so setsid does not fork and $! is the server's pid.
    setsid "$NATS_SERVER" -c "$dir/nats.conf" </dev/null >>"$dir/nats.log" 2>&1 &
    echo $! >"$dir/nats.pid"
    await_exec $! "$dir/nats.conf"
}

# Waits until node N is current with a JetStream meta leader (what /healthz?js-server-only
# checks on 2.9); fails pointing at its log if it exits or the timeout passes.
wait_node() {
    local n=$1 dir url deadline
    dir=$(node_dir "$n")
    url="http://127.0.0.1:$(nth "$MONITOR_PORTS" "$n")/healthz?js-server-only=true"
    deadline=$((SECONDS + TIMEOUT))
    until [[ $(http_code "$url") == 200 ]]; do
        if ! node_pid "$n" >/dev/null; then
            tail -n 20 "$dir/nats.log" >&2 || true
            die "NATS node $n exited; its log: $dir/nats.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$dir/nats.log" >&2 || true
            die "NATS node $n not ready after ${TIMEOUT}s ($(http_line "$url")); its log: $dir/nats.log"
        fi
        sleep 0.5
    done
    echo "NATS node $n ready"
}

# Waits until node N is a current peer of every stream it belongs to, as each stream's leader
# sees it: /healthz?js-server-only (wait_node) is 200 as soon as the node is current with the
# meta leader, seconds before it has caught up with the streams it missed. Needs jq; without it
# only wait_node's wait is done.
wait_node_current() {
    local n=$1 i view views behind deadline
    command -v jq >/dev/null || {
        echo "NATS node $n: no jq to check that its streams caught up; \`status\` shows it"
        return 0
    }
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        views=()
        for i in $(seq 1 "$(node_count)"); do
            view=$(curl -fsS --max-time 2 "http://127.0.0.1:$(nth "$MONITOR_PORTS" "$i")/jsz?accounts=true&streams=true" 2>/dev/null) || continue
            views+=("{\"self\":\"local-n$i\",\"jsz\":$view}")
        done
        # Streams whose leader lists node N as a peer that is not current, or that have no
        # leader yet (an election after the node's absence); none means caught up.
        if ((${#views[@]} == 0)); then
            behind="(no node answers)"
        else
            behind=$(printf '%s\n' "${views[@]}" | jq -rs --arg me "local-n$n" '
                [.[] | .self as $self | .jsz.account_details // [] | .[] | .stream_detail // [] | .[]
                 | . + {self: $self}] | group_by(.name) | .[]
                 | (map(select(.cluster.leader == .self)) | first) as $led
                 | if $led == null then .[0].name
                   elif ([$led.cluster.replicas // [] | .[] | select(.name == $me and (.current | not))]
                         | length) > 0 then $led.name
                   else empty end' | paste -sd ' ')
        fi
        [[ -z $behind ]] && break
        if ((SECONDS >= deadline)); then
            die "NATS node $n is up but not yet current in: $behind after ${TIMEOUT}s (see \`status\`)"
        fi
        sleep 0.5
    done
    echo "NATS node $n current in every stream"
}

# --- PostgreSQL HA (--pg-ha) ------------------------------------------------------------------
# Patroni runs each PostgreSQL node and keeps the leader key in etcd; haproxy asks each node's
# Patroni REST API which one is the primary (/primary) and which are standbys (/replica).

pg_node_count() { count "$PG_PORTS"; }
pg_node_dir() { echo "$PG_DIR/node-$1"; }
pg_node_name() { echo "pg$1"; }
patroni_url() { echo "http://127.0.0.1:$(nth "$PATRONI_PORTS" "$1")"; }

etcd_pid() { live_pid "$PG_DIR/etcd.pid" "--data-dir $PG_DIR/etcd"; }
patroni_pid() { live_pid "$(pg_node_dir "$1")/patroni.pid" "$(pg_node_dir "$1")/patroni.yml"; }
haproxy_pid() { live_pid "$PG_DIR/haproxy.pid" "$PG_DIR/haproxy.cfg"; }

# Node N's postmaster: the first line of its postmaster.pid, if that process runs and names its
# data directory (a stale file, or a reused pid, reads as not running).
postmaster_pid() {
    local data pid cmdline
    data="$(pg_node_dir "$1")/data"
    [[ -f $data/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$data/postmaster.pid")
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$data"* ]] || return 1
    echo "$pid"
}

pg_running() {
    [[ $PG_HA == yes ]] || return 1
    local n
    etcd_pid >/dev/null && return 0
    haproxy_pid >/dev/null && return 0
    for n in $(seq 1 "$(pg_node_count)"); do
        patroni_pid "$n" >/dev/null && return 0
        postmaster_pid "$n" >/dev/null && return 0
    done
    return 1
}

# The replicas' URLs: the ordersvc role (development password, as install.sh makes it on the
# shared server) through haproxy's ports.
pg_set_urls() {
    CLUSTER_DATABASE_URL="postgres://ordersvc:ordersvc@127.0.0.1:$PG_WRITE_PORT/orders_cluster?sslmode=disable"
    CLUSTER_DATABASE_READ_URL="postgres://ordersvc:ordersvc@127.0.0.1:$PG_READ_PORT/orders_cluster?sslmode=disable"
}

check_pg_tools() {
    local tool
    for tool in patroni patronictl etcd psql; do
        command -v "$tool" >/dev/null || die "--pg-ha needs $tool: ./install.sh deps installs it (Debian's patroni, etcd-server, postgresql)"
    done
    [[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null ||
        die "--pg-ha needs haproxy: ./install.sh deps installs it"
    [[ -x $PG_BIN/initdb ]] || die "no PostgreSQL server programs in '$PG_BIN' (set ORDERSVC_CLUSTER_PG_BIN)"
    if ((EUID == 0)); then
        command -v setpriv >/dev/null || die "--pg-ha as root needs setpriv (util-linux) to run PostgreSQL as postgres"
        id postgres >/dev/null 2>&1 || die "--pg-ha as root needs the postgres user (Debian's postgresql package makes it)"
    fi
}

haproxy_bin() {
    if [[ -x /usr/sbin/haproxy ]]; then echo /usr/sbin/haproxy; else command -v haproxy; fi
}

# Fails unless the --pg-ha ports of what is not running are free.
check_pg_ports() {
    local n port
    if ! etcd_pid >/dev/null; then
        for port in $ETCD_PORTS; do
            ! listening "$port" || die "etcd: port $port is taken by another program (see ORDERSVC_CLUSTER_ETCD_PORTS)"
        done
    fi
    if ! haproxy_pid >/dev/null; then
        for port in $PG_WRITE_PORT $PG_READ_PORT; do
            ! listening "$port" || die "haproxy: port $port is taken by another program (see ORDERSVC_CLUSTER_PG_WRITE_PORT, _READ_PORT)"
        done
    fi
    for n in $(seq 1 "$(pg_node_count)"); do
        patroni_pid "$n" >/dev/null && continue
        port=$(nth "$PATRONI_PORTS" "$n")
        ! listening "$port" || die "PostgreSQL node $n: port $port is taken by another program (see ORDERSVC_CLUSTER_PATRONI_PORTS)"
        # A PostgreSQL of its own, left running without its Patroni, holds the port: Patroni
        # takes such a server over when it starts.
        postmaster_pid "$n" >/dev/null && continue
        port=$(nth "$PG_PORTS" "$n")
        ! listening "$port" || die "PostgreSQL node $n: port $port is taken by another program (see ORDERSVC_CLUSTER_PG_PORTS)"
    done
}

# Patroni's configuration of node N. The `bootstrap` part is read once, when the first node
# makes the cluster; it is kept in etcd afterwards. The leader key lives `ttl` s unless renewed
# every `loop_wait` s (Patroni wants loop_wait + 2 * retry_timeout <= ttl): a lost primary is
# replaced after about ttl. `synchronous_mode`: a commit is acknowledged once the synchronous
# standby has it, and only that standby may be promoted, so nothing ordersvc was told is stored
# can be lost with the primary. `hot_standby_feedback`: long restores read from a standby.
write_patroni_config() {
    local n=$1 dir
    dir=$(pg_node_dir "$n")
    mkdir -p "$dir"
    cat >"$dir/patroni.yml" <<CONF
# Written by scripts/local-cluster.sh: PostgreSQL node $n of the local ordersvc cluster.
scope: "ordersvc-local"
name: "$(pg_node_name "$n")"
restapi:
  listen: "127.0.0.1:$(nth "$PATRONI_PORTS" "$n")"
  connect_address: "127.0.0.1:$(nth "$PATRONI_PORTS" "$n")"
etcd3:
  hosts: "127.0.0.1:$(nth "$ETCD_PORTS" 1)"
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        hot_standby_feedback: "on"
        max_connections: 100
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: "127.0.0.1:$(nth "$PG_PORTS" "$n")"
  connect_address: "127.0.0.1:$(nth "$PG_PORTS" "$n")"
  data_dir: "$dir/data"
  bin_dir: "$PG_BIN"
  pgpass: "$dir/pgpass"
  parameters:
    unix_socket_directories: "$dir"
  # A rewound primary's data directory that pg_rewind cannot fix is made afresh from the leader.
  remove_data_directory_on_rewind_failure: true
  authentication:
    superuser:
      username: "postgres"
      password: "$PG_SUPERUSER_PASSWORD"
    replication:
      username: "replicator"
      password: "$PG_REPLICATION_PASSWORD"
    rewind:
      username: "postgres"
      password: "$PG_SUPERUSER_PASSWORD"
  pg_hba:
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
CONF
}

# haproxy: the write port to whichever node answers /primary, the read port to those answering
# /replica. OPTIONS is Patroni's same check, answered with the status only (a GET's body is cut
# off by haproxy and Patroni logs a stack trace for each). A server marked down (two failed
# checks 500 ms apart) has its connections cut, so that no client keeps writing to a node that
# is no longer the primary.
write_haproxy_config() {
    local servers="" n
    for n in $(seq 1 "$(pg_node_count)"); do
        servers+="  server $(pg_node_name "$n") 127.0.0.1:$(nth "$PG_PORTS" "$n") check port $(nth "$PATRONI_PORTS" "$n")"$'\n'
    done
    cat >"$PG_DIR/haproxy.cfg" <<CONF
# Written by scripts/local-cluster.sh: the local ordersvc cluster's PostgreSQL ports.
global
  maxconn 1000
  log stderr format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check 1s
  default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
listen write
  bind 127.0.0.1:$PG_WRITE_PORT
  balance first
  option httpchk OPTIONS /primary
  http-check expect status 200
$servers
listen read
  bind 127.0.0.1:$PG_READ_PORT
  balance roundrobin
  option httpchk OPTIONS /replica
  http-check expect status 200
$servers
CONF
}

# Gives the --pg-ha directory to the postgres user when run as root.
own_pg_dir() {
    ((EUID != 0)) || chown -R postgres:postgres "$PG_DIR"
}

spawn_etcd() {
    local client peer
    etcd_pid >/dev/null && return 0
    client="http://127.0.0.1:$(nth "$ETCD_PORTS" 1)"
    peer="http://127.0.0.1:$(nth "$ETCD_PORTS" 2)"
    echo "starting etcd on $client"
    echo "===== $(date -Is) local-cluster.sh starts etcd =====" >>"$PG_DIR/etcd.log"
    own_pg_dir
    # In its own directory: as postgres, the caller's (root's home, say) may be closed to it.
    (cd "$PG_DIR" && exec setsid "${AS_SERVER[@]}" etcd --name ordersvc-local --data-dir "$PG_DIR/etcd" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "ordersvc-local=$peer" --initial-cluster-state new \
        </dev/null >>"$PG_DIR/etcd.log" 2>&1) &
    echo $! >"$PG_DIR/etcd.pid"
    await_exec $! "--data-dir $PG_DIR/etcd"
}

wait_etcd() {
    local url deadline
    url="http://127.0.0.1:$(nth "$ETCD_PORTS" 1)/health"
    deadline=$((SECONDS + TIMEOUT))
    until curl -s --max-time 2 "$url" 2>/dev/null | grep -q '"health":"true"'; do
        etcd_pid >/dev/null || {
            tail -n 20 "$PG_DIR/etcd.log" >&2 || true
            die "etcd exited; its log: $PG_DIR/etcd.log"
        }
        ((SECONDS < deadline)) || die "etcd not healthy after ${TIMEOUT}s; its log: $PG_DIR/etcd.log"
        sleep 0.5
    done
}

# Starts node N's Patroni (which starts its PostgreSQL) if it is not running (no wait).
spawn_patroni() {
    local n=$1 dir
    dir=$(pg_node_dir "$n")
    patroni_pid "$n" >/dev/null && return 0
    write_patroni_config "$n"
    echo "starting PostgreSQL node $n (Patroni $(pg_node_name "$n")) on 127.0.0.1:$(nth "$PG_PORTS" "$n")"
    echo "===== $(date -Is) local-cluster.sh starts Patroni $(pg_node_name "$n") =====" >>"$dir/patroni.log"
    own_pg_dir
    # The passwords are in the configuration file, not on the command line (ps shows that).
    (cd "$dir" && exec setsid "${AS_SERVER[@]}" patroni "$dir/patroni.yml" </dev/null >>"$dir/patroni.log" 2>&1) &
    echo $! >"$dir/patroni.pid"
    await_exec $! "$dir/patroni.yml"
}

spawn_haproxy() {
    haproxy_pid >/dev/null && return 0
    write_haproxy_config
    echo "starting haproxy: write port 127.0.0.1:$PG_WRITE_PORT, read port 127.0.0.1:$PG_READ_PORT"
    echo "===== $(date -Is) local-cluster.sh starts haproxy =====" >>"$PG_DIR/haproxy.log"
    own_pg_dir
    # -db: in the foreground, so that the pid is haproxy's own.
    (cd "$PG_DIR" && exec setsid "${AS_SERVER[@]}" "$(haproxy_bin)" -f "$PG_DIR/haproxy.cfg" -db \
        </dev/null >>"$PG_DIR/haproxy.log" 2>&1) &
    echo $! >"$PG_DIR/haproxy.pid"
    await_exec $! "$PG_DIR/haproxy.cfg"
}

# The node whose Patroni answers /primary (the leader), or fails.
pg_leader() {
    local n
    for n in $(seq 1 "$(pg_node_count)"); do
        [[ $(http_code "$(patroni_url "$n")/primary") == 200 ]] && echo "$n" && return 0
    done
    return 1
}

# The node whose Patroni answers /sync (the synchronous standby), or fails.
pg_sync_standby() {
    local n
    for n in $(seq 1 "$(pg_node_count)"); do
        [[ $(http_code "$(patroni_url "$n")/sync") == 200 ]] && echo "$n" && return 0
    done
    return 1
}

# psql as the superuser through 127.0.0.1:PORT: psql_super PORT ARGS...
psql_super() {
    local port=$1
    shift
    PGPASSWORD=$PG_SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=2 psql -X -w -q -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

# The node a haproxy port reaches and its role ("2 primary", "3 standby"), or "none".
port_reaches() {
    local answer n
    answer=$(psql_super "$1" -At -F ' ' -c "SELECT inet_server_port(), pg_is_in_recovery()" 2>/dev/null) || answer=""
    for n in $(seq 1 "$(pg_node_count)"); do
        case $answer in
            "$(nth "$PG_PORTS" "$n") f") echo "$n primary" && return 0 ;;
            "$(nth "$PG_PORTS" "$n") t") echo "$n standby" && return 0 ;;
        esac
    done
    echo none
}

# Waits until a node other than `old` (0: any) leads, the write port reaches it and it has
# named a synchronous standby; prints the leader.
wait_pg_leader() {
    local old=${1:-0} leader deadline
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        if leader=$(pg_leader) && [[ $leader != "$old" ]] &&
            [[ $(port_reaches "$PG_WRITE_PORT") == "$leader primary" ]]; then
            break
        fi
        ((SECONDS < deadline)) || die "no PostgreSQL primary behind the write port after ${TIMEOUT}s (see pg-status and $PG_DIR/node-*/patroni.log)"
        sleep 0.5
    done
    echo "$leader"
}

# Waits until the leader has named a synchronous standby: until then Patroni would promote
# nobody if the primary were lost.
wait_pg_sync() {
    local deadline=$((SECONDS + TIMEOUT))
    until pg_sync_standby >/dev/null; do
        ((SECONDS < deadline)) || die "no synchronous standby after ${TIMEOUT}s (see pg-status)"
        sleep 0.5
    done
}

# The ordersvc role on the cluster, as install.sh makes it on the shared server: it logs in and
# creates its database, and is no superuser.
ensure_pg_role() {
    local exists
    exists=$(psql_super "$PG_WRITE_PORT" -Atc "SELECT count(*) FROM pg_roles WHERE rolname = 'ordersvc'") ||
        die "cannot reach PostgreSQL's primary through the write port 127.0.0.1:$PG_WRITE_PORT"
    if [[ $exists == 0 ]]; then
        echo "creating the PostgreSQL role ordersvc (LOGIN CREATEDB, password 'ordersvc': development only)"
        psql_super "$PG_WRITE_PORT" -v ON_ERROR_STOP=1 -c "CREATE ROLE ordersvc LOGIN CREATEDB NOSUPERUSER PASSWORD 'ordersvc'"
    fi
}

pg_up() {
    local n leader
    mkdir -p "$PG_DIR"
    spawn_etcd
    wait_etcd
    for n in $(seq 1 "$(pg_node_count)"); do spawn_patroni "$n"; done
    spawn_haproxy
    leader=$(wait_pg_leader)
    wait_pg_sync
    ensure_pg_role
    echo "PostgreSQL ready: primary node $leader, synchronous standby node $(pg_sync_standby); write port 127.0.0.1:$PG_WRITE_PORT, read port 127.0.0.1:$PG_READ_PORT"
}

# SIGKILLs node N's postmaster and every process it started, as a lost machine would end them:
# each child has a session of its own, so it is killed by its parent's pid (stopped first, so
# that it forks nothing meanwhile). Left alone, the children would notice the postmaster's
# death and tell their clients, which a lost machine never does.
kill_postmaster() {
    local pid
    pid=$(postmaster_pid "$1") || return 0
    kill -STOP "$pid"
    pkill -KILL -P "$pid" || true
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.1; done
}

pg_stop() {
    local n pid pids=()
    if pid=$(haproxy_pid); then stop_pids TERM "$NODE_STOP_GRACE" "$pid"; fi
    rm -f "$PG_DIR/haproxy.pid"
    for n in $(seq 1 "$(pg_node_count)"); do
        if pid=$(patroni_pid "$n"); then pids+=("$pid"); fi
        rm -f "$(pg_node_dir "$n")/patroni.pid"
    done
    ((${#pids[@]} == 0)) || echo "stopping ${#pids[@]} PostgreSQL node(s) (Patroni stops its PostgreSQL)"
    stop_pids TERM "$PG_STOP_GRACE" "${pids[@]}"
    # A PostgreSQL whose Patroni was SIGKILLed (by kill-pg-primary, or above) runs on alone.
    pids=()
    for n in $(seq 1 "$(pg_node_count)"); do
        if pid=$(postmaster_pid "$n"); then pids+=("$pid"); fi
    done
    # SIGINT is PostgreSQL's fast shutdown.
    stop_pids INT "$NODE_STOP_GRACE" "${pids[@]}"
    if pid=$(etcd_pid); then stop_pids TERM "$NODE_STOP_GRACE" "$pid"; fi
    rm -f "$PG_DIR/etcd.pid"
}

require_pg_ha() {
    [[ $PG_HA == yes ]] || die "the cluster runs without PostgreSQL HA: down, then up --pg-ha"
}

cmd_pg_status() {
    local n pid role
    load_settings
    require_pg_ha
    echo "PostgreSQL HA: $PG_DIR"
    if pid=$(etcd_pid); then echo "etcd      pid $pid  client 127.0.0.1:$(nth "$ETCD_PORTS" 1)"; else echo "etcd      down"; fi
    if pid=$(haproxy_pid); then
        echo "haproxy   pid $pid  write port 127.0.0.1:$PG_WRITE_PORT reaches: $(port_reaches "$PG_WRITE_PORT")  read port 127.0.0.1:$PG_READ_PORT reaches: $(port_reaches "$PG_READ_PORT")"
    else
        echo "haproxy   down"
    fi
    for n in $(seq 1 "$(pg_node_count)"); do
        if pid=$(patroni_pid "$n"); then
            role=$(curl -s --max-time 2 "$(patroni_url "$n")/patroni" 2>/dev/null |
                sed -n 's/.*"role": *"\([^"]*\)".*/\1/p')
            printf 'pg node %s pid %-8s postgres 127.0.0.1:%s  patroni %s  role %s\n' "$n" "$pid" \
                "$(nth "$PG_PORTS" "$n")" "$(patroni_url "$n")" "${role:-unknown}"
        else
            printf 'pg node %s down (postmaster: %s)\n' "$n" "$(postmaster_pid "$n" || echo none)"
        fi
    done
    if etcd_pid >/dev/null; then
        patronictl -c "$(pg_node_dir 1)/patroni.yml" list 2>&1 || true
    fi
}

cmd_kill_pg_primary() {
    local leader sync pid started
    load_settings
    require_pg_ha
    leader=$(pg_leader) || die "no PostgreSQL node is the primary now (see pg-status)"
    sync=$(pg_sync_standby) ||
        echo "warning: no synchronous standby is named now: Patroni will promote none until the primary is back" >&2
    pid=$(patroni_pid "$leader") || die "node $leader's Patroni is not one this script started"
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.1; done
    rm -f "$(pg_node_dir "$leader")/patroni.pid"
    kill_postmaster "$leader"
    started=$SECONDS
    echo "killed PostgreSQL node $leader (Patroni pid $pid and its PostgreSQL); synchronous standby: node ${sync:-none}"
    local lost=$leader
    leader=$(wait_pg_leader "$lost")
    echo "node $leader is the primary behind the write port, $((SECONDS - started)) s after the kill"
    echo "start node $lost again with: $0 start-pg-node $lost"
}

cmd_pg_switchover() {
    local leader sync started
    load_settings
    require_pg_ha
    leader=$(pg_leader) || die "no PostgreSQL node is the primary now (see pg-status)"
    sync=$(pg_sync_standby) || die "no synchronous standby is named yet, and only it may take over: try again in a few seconds"
    started=$SECONDS
    patronictl -c "$(pg_node_dir "$leader")/patroni.yml" switchover --force \
        --leader "$(pg_node_name "$leader")" --candidate "$(pg_node_name "$sync")"
    leader=$(wait_pg_leader "$leader")
    echo "node $leader is the primary behind the write port, $((SECONDS - started)) s after the switchover began"
}

# Starts node N again, or without N every node whose Patroni is not running, and waits until
# each runs its PostgreSQL.
cmd_start_pg_node() {
    local n nodes=() deadline
    load_settings
    require_pg_ha
    if (($# > 0)); then
        check_index "PostgreSQL node" "$1" "$(pg_node_count)"
        nodes=("$1")
    else
        for n in $(seq 1 "$(pg_node_count)"); do
            patroni_pid "$n" >/dev/null || nodes+=("$n")
        done
        ((${#nodes[@]} > 0)) || {
            echo "every PostgreSQL node runs"
            return 0
        }
    fi
    etcd_pid >/dev/null || die "etcd is not running: use up --pg-ha"
    for n in "${nodes[@]}"; do
        [[ -d $(pg_node_dir "$n") ]] || die "PostgreSQL node $n has never run here: use up --pg-ha"
        spawn_patroni "$n"
    done
    for n in "${nodes[@]}"; do
        deadline=$((SECONDS + TIMEOUT))
        until [[ $(http_code "$(patroni_url "$n")/health") == 200 ]]; do
            patroni_pid "$n" >/dev/null || die "node $n's Patroni exited; its log: $(pg_node_dir "$n")/patroni.log"
            ((SECONDS < deadline)) || die "PostgreSQL node $n not running after ${TIMEOUT}s; its log: $(pg_node_dir "$n")/patroni.log"
            sleep 0.5
        done
        echo "PostgreSQL node $n runs: $(port_reaches "$(nth "$PG_PORTS" "$n")" | cut -d' ' -f2)"
    done
}

# Records whether the database exists before any replica creates it, so that --purge drops
# only a database `up` made.
note_database() {
    command -v psql >/dev/null || return 0
    local base=${CLUSTER_DATABASE_URL%%\?*} query="" name maintenance exists
    [[ $CLUSTER_DATABASE_URL == *\?* ]] && query="?${CLUSTER_DATABASE_URL#*\?}"
    name=${base##*/}
    maintenance="${base%/*}/postgres$query"
    # On stdin, not -c: psql substitutes :'name' (quoted as a literal) only there.
    exists=$(psql -X -At -v ON_ERROR_STOP=1 -v name="$name" "$maintenance" 2>/dev/null \
        <<<"SELECT count(*) FROM pg_database WHERE datname = :'name'") || return 0
    if [[ $exists == 0 && $DATABASE_CREATED == no ]]; then
        DATABASE_CREATED=yes
        save_settings
    fi
}

drop_database() {
    local base=${CLUSTER_DATABASE_URL%%\?*} query="" name maintenance
    [[ $CLUSTER_DATABASE_URL == *\?* ]] && query="?${CLUSTER_DATABASE_URL#*\?}"
    name=${base##*/}
    maintenance="${base%/*}/postgres$query"
    if [[ $DATABASE_CREATED != yes ]]; then
        echo "database $name left as it was (up did not create it)"
    elif ! command -v psql >/dev/null; then
        echo "kept database $name: no psql to drop it with" >&2
    elif psql -X -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"${name//\"/\"\"}\" WITH (FORCE)" "$maintenance"; then
        echo "dropped database $name"
    else
        echo "could not drop database $name" >&2
    fi
}

# Whether this ordersvc has the flag the replicas need (it comes with the scale-out issue).
check_ordersvc() {
    command -v "$ORDERSVC_BIN" >/dev/null ||
        die "no ordersvc binary at $ORDERSVC_BIN: build it (cargo build --release) or set ORDERSVC_BIN"
    local help
    # Read whole, not piped into `grep -q`: grep leaving early would fail the pipe.
    help=$("$ORDERSVC_BIN" serve --help 2>&1) || true
    [[ $help == *--stream-replicas* ]] ||
        die "$ORDERSVC_BIN serve has no --stream-replicas flag (this ordersvc predates the scale-out issue); \`$0 up --nats-only\` starts the NATS cluster alone"
    if [[ $PG_HA == yes && $help != *--database-read-url* ]]; then
        echo "note: $ORDERSVC_BIN serve has no --database-read-url: the replicas read from the primary too"
    fi
}

spawn_replica() {
    local n=$1 dir port
    dir=$(replica_dir "$n")
    port=$(nth "$HTTP_PORTS" "$n")
    replica_pid "$n" >/dev/null && return 0
    check_replica_port "$n"
    mkdir -p "$dir"
    echo "starting replica $n on http://127.0.0.1:$port"
    echo "===== $(date -Is) local-cluster.sh starts replica $n =====" >>"$dir/serve.log"
    # The database URLs go in the environment, where `ps` does not show their passwords. Without
    # --pg-ha, reads go to the one database too.
    DATABASE_URL=$CLUSTER_DATABASE_URL DATABASE_READ_URL=${CLUSTER_DATABASE_READ_URL:-$CLUSTER_DATABASE_URL} \
        setsid "$ORDERSVC_BIN" serve \
        --nats-url "$(nats_urls)" --stream-replicas "$(node_count)" \
        --http-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$(nth "$ADMIN_PORTS" "$n")" \
        </dev/null >>"$dir/serve.log" 2>&1 &
    echo $! >"$dir/serve.pid"
    await_exec $! "--http-addr 127.0.0.1:$port"
}

wait_replica() {
    local n=$1 dir url deadline
    dir=$(replica_dir "$n")
    url="http://127.0.0.1:$(nth "$HTTP_PORTS" "$n")/readyz"
    deadline=$((SECONDS + TIMEOUT))
    until [[ $(http_code "$url") == 200 ]]; do
        if ! replica_pid "$n" >/dev/null; then
            tail -n 20 "$dir/serve.log" >&2 || true
            die "replica $n exited; its log: $dir/serve.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$dir/serve.log" >&2 || true
            die "replica $n not ready after ${TIMEOUT}s ($(http_line "$url")); its log: $dir/serve.log"
        fi
        sleep 0.5
    done
    echo "replica $n ready"
}

# Sends `signal` to each pid, waits up to `grace` seconds for all to exit, then SIGKILLs the rest.
stop_pids() {
    local signal=$1 grace=$2 pid deadline
    shift 2
    (($# > 0)) || return 0
    kill "-$signal" "$@" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if alive "$pid"; then
            echo "pid $pid still running ${grace}s after SIG$signal: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

anything_running() {
    local n
    for n in $(seq 1 "$(node_count)"); do node_pid "$n" >/dev/null && return 0; done
    for n in $(seq 1 "$(replica_count)"); do replica_pid "$n" >/dev/null && return 0; done
    pg_running
}

cmd_up() {
    local nats_only=no pg_ha=no n
    case ${1:-} in
        "") ;;
        --nats-only) nats_only=yes ;;
        --pg-ha) pg_ha=yes ;;
        *) usage 2 ;;
    esac
    command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
    # Recorded settings while anything runs (the running processes were started with them),
    # else the environment's.
    load_settings
    if ! anything_running; then
        # Whether `up` created the database is remembered while the database stays the same,
        # and the PostgreSQL cluster's passwords while its directory does (its data keeps them).
        local database=$CLUSTER_DATABASE_URL created=$DATABASE_CREATED pg_dir=$PG_DIR
        local superuser=$PG_SUPERUSER_PASSWORD replication=$PG_REPLICATION_PASSWORD
        load_settings fresh
        [[ $CLUSTER_DATABASE_URL != "$database" ]] || DATABASE_CREATED=$created
        if [[ $PG_DIR == "$pg_dir" && -n $superuser ]]; then
            PG_SUPERUSER_PASSWORD=$superuser
            PG_REPLICATION_PASSWORD=$replication
        fi
        PG_HA=$pg_ha
    elif [[ $pg_ha == yes && $PG_HA != yes ]]; then
        die "the cluster runs without PostgreSQL HA: down, then up --pg-ha"
    fi
    if [[ $PG_HA == yes ]]; then
        check_pg_tools
        pg_set_urls
    fi
    command -v "$NATS_SERVER" >/dev/null || die "no nats-server at $NATS_SERVER (apt-get install nats-server, or set NATS_SERVER)"
    [[ $nats_only == yes ]] || check_ordersvc
    # Every port before anything starts: a taken one fails `up` with nothing half started.
    for n in $(seq 1 "$(node_count)"); do check_node_ports "$n"; done
    if [[ $nats_only == no ]]; then
        for n in $(seq 1 "$(replica_count)"); do check_replica_port "$n"; done
    fi
    [[ $PG_HA == no ]] || check_pg_ports
    mkdir -p "$STATE_DIR"
    save_settings

    # All nodes first, then the waits: a node has no meta leader until a majority is up.
    # PostgreSQL meanwhile (its bootstrap takes 10-15 s).
    for n in $(seq 1 "$(node_count)"); do spawn_node "$n"; done
    [[ $PG_HA == no ]] || pg_up
    for n in $(seq 1 "$(node_count)"); do wait_node "$n"; done
    echo "NATS cluster ready: $(nats_urls)"
    [[ $nats_only == yes ]] && return 0

    # The database on a --pg-ha cluster goes with the cluster's directory.
    [[ $PG_HA == yes ]] || note_database
    # One at a time: the first creates the database, the streams and the durable consumer,
    # and a failure points at one log.
    for n in $(seq 1 "$(replica_count)"); do
        spawn_replica "$n"
        wait_replica "$n"
    done
    echo "replicas ready: $(for port in $HTTP_PORTS; do printf 'http://127.0.0.1:%s ' "$port"; done)"
}

cmd_down() {
    local purge=no n pid pids=()
    case ${1:-} in
        "") ;;
        --purge) purge=yes ;;
        *) usage 2 ;;
    esac
    load_settings
    for n in $(seq 1 "$(replica_count)"); do
        if pid=$(replica_pid "$n"); then pids+=("$pid"); fi
        rm -f "$(replica_dir "$n")/serve.pid"
    done
    ((${#pids[@]} == 0)) || echo "stopping ${#pids[@]} replica(s)"
    stop_pids TERM "$REPLICA_STOP_GRACE" "${pids[@]}"
    pids=()
    for n in $(seq 1 "$(node_count)"); do
        if pid=$(node_pid "$n"); then pids+=("$pid"); fi
        rm -f "$(node_dir "$n")/nats.pid"
    done
    ((${#pids[@]} == 0)) || echo "stopping ${#pids[@]} NATS node(s)"
    stop_pids TERM "$NODE_STOP_GRACE" "${pids[@]}"
    pg_stop
    if [[ $purge == yes ]]; then
        [[ $PG_HA == yes ]] || drop_database
        # Only a directory this script made: it holds etcd's data or haproxy's configuration.
        if [[ -d $PG_DIR/etcd || -f $PG_DIR/haproxy.cfg ]]; then
            rm -rf "$PG_DIR"
            echo "removed $PG_DIR (PostgreSQL HA)"
        fi
        rm -rf "$STATE_DIR"
        echo "removed $STATE_DIR"
    else
        if [[ $PG_HA == yes ]]; then
            echo "stopped; data kept in $STATE_DIR and $PG_DIR (down --purge removes them)"
        else
            echo "stopped; data kept in $STATE_DIR (down --purge removes it)"
        fi
    fi
}

# The JetStream meta leader and each stream's leader, messages and replicas, from the nodes'
# /jsz. Each node lists only the streams it holds, so every node is asked, and a stream is shown
# as its leader sees it.
jetstream_summary() {
    local n views=() jsz down=""
    for n in $(seq 1 "$(node_count)"); do
        node_pid "$n" >/dev/null || down+=" local-n$n "
        jsz=$(curl -fsS --max-time 2 "http://127.0.0.1:$(nth "$MONITOR_PORTS" "$n")/jsz?accounts=true&streams=true&consumers=true" 2>/dev/null) || continue
        views+=("{\"self\":\"local-n$n\",\"jsz\":$jsz}")
    done
    if ((${#views[@]} == 0)); then
        echo "JetStream: no node answers"
    elif command -v jq >/dev/null; then
        # A leader that is down is what a follower still believes before its election timeout.
        # Replicated consumers are the durable ones (ingest's); the changelog followers' are
        # ephemeral R1 consumers, each on one node, and are not listed.
        printf '%s\n' "${views[@]}" | jq -rs --arg down "$down" '
            def mark: . as $who | if ($down | contains(" \($who) ")) then " (down: an election is due)" else "" end;
            ([.[].jsz.meta_cluster.leader // empty][0] // "none") as $meta
            | "JetStream meta leader: \($meta)\($meta | mark)",
            ([.[] | .self as $self | .jsz.account_details // [] | .[] | .stream_detail // [] | .[]
              | . + {self: $self}]
             | group_by(.name) | .[]
             | (map(select(.cluster.leader == .self)) + .)[0]
             | (.cluster.leader // "none") as $leader
             | "stream \(.name): leader \($leader)\($leader | mark), \(.state.messages) messages, other replicas: \(
                 [.cluster.replicas // [] | .[] | "\(.name)\(if .current then "" else " (not current)" end)"]
                 | if length == 0 then "none" else join(", ") end)"),
            ([.[] | .self as $self | .jsz.account_details // [] | .[] | .stream_detail // [] | .[]
              | .name as $stream | .consumer_detail // [] | .[]
              | select((.cluster.replicas // []) | length > 0) | . + {self: $self, stream: $stream}]
             | group_by([.stream, .name]) | .[]
             | (map(select(.cluster.leader == .self)) + .)[0]
             | (.cluster.leader // "none") as $leader
             | "consumer \(.stream) > \(.name): leader \($leader)\($leader | mark), \(.num_pending) pending, \(.num_ack_pending) unacked")'
    else
        echo "JetStream meta leader: $(sed -n 's/.*"meta_cluster":{[^}]*"leader":"\([^"]*\)".*/\1/p' <<<"${views[0]}")"
    fi
}

cmd_status() {
    local n pid alive port
    load_settings
    echo "state: $STATE_DIR"
    echo "NATS URLs: $(nats_urls)"
    for n in $(seq 1 "$(node_count)"); do
        port=$(nth "$CLIENT_PORTS" "$n")
        if pid=$(node_pid "$n"); then alive=alive; else pid=-; alive=down; fi
        printf 'node %s     pid %-8s client 127.0.0.1:%s  route %s  %-5s  healthz: %s\n' \
            "$n" "$pid" "$port" "$(nth "$ROUTE_PORTS" "$n")" "$alive" \
            "$(http_line "http://127.0.0.1:$(nth "$MONITOR_PORTS" "$n")/healthz")"
    done
    for n in $(seq 1 "$(replica_count)"); do
        port=$(nth "$HTTP_PORTS" "$n")
        if pid=$(replica_pid "$n"); then alive=alive; else pid=-; alive=down; fi
        printf 'replica %s  pid %-8s http 127.0.0.1:%s  admin 127.0.0.1:%s  %-5s  readyz/reads: %s  readyz: %s\n' \
            "$n" "$pid" "$port" "$(nth "$ADMIN_PORTS" "$n")" "$alive" "$(http_code "http://127.0.0.1:$port/readyz/reads")" \
            "$(http_line "http://127.0.0.1:$port/readyz")"
    done
    jetstream_summary
    if [[ $PG_HA == yes ]]; then
        echo "PostgreSQL: primary node $(pg_leader || echo none), synchronous standby node $(pg_sync_standby || echo none); write port $PG_WRITE_PORT reaches: $(port_reaches "$PG_WRITE_PORT"), read port $PG_READ_PORT reaches: $(port_reaches "$PG_READ_PORT") (pg-status shows more)"
    else
        echo "PostgreSQL: $(redacted_url "$CLUSTER_DATABASE_URL")"
    fi
}

cmd_kill_node() {
    local n=${1:-} pid
    load_settings
    check_index node "$n" "$(node_count)"
    pid=$(node_pid "$n") || die "NATS node $n is not running"
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.1; done
    rm -f "$(node_dir "$n")/nats.pid"
    echo "killed NATS node $n (pid $pid)"
}

cmd_start_node() {
    local n=${1:-}
    load_settings
    check_index node "$n" "$(node_count)"
    [[ -d $(node_dir "$n") ]] || die "node $n has never run here: use up"
    spawn_node "$n"
    wait_node "$n"
    wait_node_current "$n"
}

cmd_kill_replica() {
    local n=${1:-} pid
    load_settings
    check_index replica "$n" "$(replica_count)"
    pid=$(replica_pid "$n") || die "replica $n is not running"
    kill -KILL "$pid"
    while alive "$pid"; do sleep 0.1; done
    rm -f "$(replica_dir "$n")/serve.pid"
    echo "killed replica $n (pid $pid)"
}

cmd_start_replica() {
    local n=${1:-}
    load_settings
    check_index replica "$n" "$(replica_count)"
    [[ -f $SETTINGS ]] || die "the cluster has never been up here: use up"
    check_ordersvc
    spawn_replica "$n"
    wait_replica "$n"
}

main() {
    local command=${1:-}
    shift || true
    case $command in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        kill-node) cmd_kill_node "$@" ;;
        start-node) cmd_start_node "$@" ;;
        kill-replica) cmd_kill_replica "$@" ;;
        start-replica) cmd_start_replica "$@" ;;
        pg-status) cmd_pg_status ;;
        kill-pg-primary) cmd_kill_pg_primary ;;
        pg-switchover) cmd_pg_switchover ;;
        start-pg-node) cmd_start_pg_node "$@" ;;
        -h | --help | help) usage 0 ;;
        *) usage 2 ;;
    esac
}

main "$@"
