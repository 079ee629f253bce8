#!/usr/bin/env bash
# A scale-out ordersvc on one machine: a 3-node NATS JetStream cluster and 3 `ordersvc serve`
# replicas sharing one durable consumer and one PostgreSQL database, everything on 127.0.0.1.
#
#   scripts/local-cluster.sh up [--nats-only]   start whatever is not running, wait until ready
#   scripts/local-cluster.sh status             each node and replica: pid, port, alive, health
#   scripts/local-cluster.sh kill-node N        SIGKILL NATS node N (1-3), like a crash
#   scripts/local-cluster.sh start-node N       start node N again on its data; wait until it rejoined
#                                               and is a current peer of every stream again
#   scripts/local-cluster.sh kill-replica N     SIGKILL replica N, like a crash
#   scripts/local-cluster.sh start-replica N    start replica N again; wait until /readyz is 200
#   scripts/local-cluster.sh down [--purge]     stop the replicas, then the nodes; --purge also
#                                               deletes the state dir (streams, logs) and the
#                                               database if `up` created it
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
#   DATABASE_URL              the replicas' one database
#                             (default postgres://ordersvc:ordersvc@127.0.0.1:5432/orders_cluster?sslmode=disable)
#   ORDERSVC_CLUSTER_TIMEOUT  seconds to wait for a node or a replica to be ready (default 60)
# Other ORDERSVC_* variables (ORDERSVC_STREAM, RUST_LOG, ...) reach the replicas unchanged.
#
# Needs curl and setsid; psql only for --purge to drop the database, jq only for `status` to
# list the streams. Debian's nats-server 2.9.10 elects a new stream leader 4-10 s after the
# leader dies, and a cluster restarted on its data (down, then up) takes about 10 s to elect
# its JetStream meta leader: `up` waits for it.
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
        # Recorded before replicas had admin ports.
        ADMIN_PORTS=${ADMIN_PORTS:-${ORDERSVC_CLUSTER_ADMIN_PORTS:-18091 18092 18093}}
    else
        CLIENT_PORTS=${ORDERSVC_CLUSTER_CLIENT_PORTS:-4301 4302 4303}
        ROUTE_PORTS=${ORDERSVC_CLUSTER_ROUTE_PORTS:-6301 6302 6303}
        MONITOR_PORTS=${ORDERSVC_CLUSTER_MONITOR_PORTS:-8301 8302 8303}
        HTTP_PORTS=${ORDERSVC_CLUSTER_HTTP_PORTS:-18081 18082 18083}
        ADMIN_PORTS=${ORDERSVC_CLUSTER_ADMIN_PORTS:-18091 18092 18093}
        CLUSTER_DATABASE_URL=${DATABASE_URL:-postgres://ordersvc:ordersvc@127.0.0.1:5432/orders_cluster?sslmode=disable}
        DATABASE_CREATED=no
    fi
    local nats_default=/usr/sbin/nats-server
    [[ -x $nats_default ]] || nats_default=$(command -v nats-server || echo nats-server)
    local bin_default="$REPO_DIR/target/release/ordersvc"
    [[ -x $bin_default ]] || bin_default=$(command -v ordersvc || echo ordersvc)
    NATS_SERVER=${ENV_NATS_SERVER:-$nats_default}
    ORDERSVC_BIN=${ENV_ORDERSVC_BIN:-$bin_default}
    TIMEOUT=${ORDERSVC_CLUSTER_TIMEOUT:-60}
    check_settings
}

save_settings() {
    local name
    {
        echo "# Recorded by scripts/local-cluster.sh up; later commands use these."
        for name in CLIENT_PORTS ROUTE_PORTS MONITOR_PORTS HTTP_PORTS ADMIN_PORTS CLUSTER_DATABASE_URL \
            DATABASE_CREATED; do
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
    local port
    for port in $CLIENT_PORTS $ROUTE_PORTS $MONITOR_PORTS $HTTP_PORTS $ADMIN_PORTS; do
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
    # The database URL goes in the environment, where `ps` does not show its password.
    DATABASE_URL=$CLUSTER_DATABASE_URL setsid "$ORDERSVC_BIN" serve \
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
    return 1
}

cmd_up() {
    local nats_only=no n
    case ${1:-} in
        "") ;;
        --nats-only) nats_only=yes ;;
        *) usage 2 ;;
    esac
    command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
    # Recorded settings while anything runs (the running processes were started with them),
    # else the environment's.
    load_settings
    if ! anything_running; then
        # Whether `up` created the database is remembered while the database stays the same.
        local database=$CLUSTER_DATABASE_URL created=$DATABASE_CREATED
        load_settings fresh
        [[ $CLUSTER_DATABASE_URL != "$database" ]] || DATABASE_CREATED=$created
    fi
    command -v "$NATS_SERVER" >/dev/null || die "no nats-server at $NATS_SERVER (apt-get install nats-server, or set NATS_SERVER)"
    [[ $nats_only == yes ]] || check_ordersvc
    # Every port before anything starts: a taken one fails `up` with nothing half started.
    for n in $(seq 1 "$(node_count)"); do check_node_ports "$n"; done
    if [[ $nats_only == no ]]; then
        for n in $(seq 1 "$(replica_count)"); do check_replica_port "$n"; done
    fi
    mkdir -p "$STATE_DIR"
    save_settings

    # All nodes first, then the waits: a node has no meta leader until a majority is up.
    for n in $(seq 1 "$(node_count)"); do spawn_node "$n"; done
    for n in $(seq 1 "$(node_count)"); do wait_node "$n"; done
    echo "NATS cluster ready: $(nats_urls)"
    [[ $nats_only == yes ]] && return 0

    note_database
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
    if [[ $purge == yes ]]; then
        drop_database
        rm -rf "$STATE_DIR"
        echo "removed $STATE_DIR"
    else
        echo "stopped; data kept in $STATE_DIR (down --purge removes it)"
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
        -h | --help | help) usage 0 ;;
        *) usage 2 ;;
    esac
}

main "$@"
