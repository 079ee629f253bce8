#!/usr/bin/env bash
# Reproduces the "ordersvc vs nginx" comparison of docs/BENCHMARKS.md on this machine.
#
#   scripts/compare-nginx.sh [ORDERSVC_URL] [RUNS] [DURATION]
#
# ORDERSVC_URL (default http://127.0.0.1:8080) must be a running `ordersvc serve` whose database
# is DATABASE_URL (default: the service's default). The script copies every stored order into
# files that nginx serves as /order/<order_uid> (the same bytes, the same URLs), then runs
# `wrk -t1 -c64` with a random-id Lua script against nginx and ordersvc in turn, RUNS times
# each (default 3) for DURATION (default 10s), and prints every result and the medians.
# With OPEN_LOOP_RATE=N it then also runs `ordersvc bench http --rate N` (open loop, latency
# from when each request was due) against both, RUNS times each, with the binary in ORDERSVC
# (default target/release/ordersvc).
# It needs nginx-light (or nginx), wrk and psql; nginx listens on 127.0.0.1:18081 only and is
# stopped at the end.
set -euo pipefail

ORDERSVC_URL=${1:-http://127.0.0.1:8080}
RUNS=${2:-3}
DURATION=${3:-10s}
DATABASE_URL=${DATABASE_URL:-postgres://ordersvc:ordersvc@127.0.0.1:5432/orders?sslmode=disable}
NGINX_PORT=18081
WORK=$(mktemp -d /tmp/ordersvc-nginx.XXXXXX)
# nginx workers run as an unprivileged user: they must be able to read the files.
chmod 755 "$WORK"

for tool in nginx wrk psql python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light wrk postgresql-client python3)" >&2; exit 1; }
done

cleanup() {
    if [[ -f "$WORK/nginx.pid" ]]; then
        kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> exporting the stored orders into $WORK/www/order/"
mkdir -p "$WORK/www/order" "$WORK/logs"
# base64 keeps any byte of a document intact through psql's text output.
psql -X -q -At -c "COPY (SELECT order_uid, encode(convert_to(document, 'UTF8'), 'base64') FROM orders) TO STDOUT" "$DATABASE_URL" |
    python3 -c '
import base64, sys, os
root, ids = sys.argv[1], open(sys.argv[2], "w")
for line in sys.stdin:
    uid, b64 = line.rstrip("\n").split("\t", 1)
    with open(os.path.join(root, uid), "wb") as f:
        f.write(base64.b64decode(b64.replace("\\n", "")))
    ids.write(uid + "\n")
' "$WORK/www/order" "$WORK/ids.txt"
echo "    $(wc -l <"$WORK/ids.txt") orders"

cat >"$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    open_file_cache max=20000 inactive=60s;
    types { }
    default_type application/json;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
    }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK"

cat >"$WORK/random.lua" <<LUA
-- A random stored order id for every request.
local ids = {}
for line in io.lines("$WORK/ids.txt") do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/order/" .. ids[math.random(#ids)])
end
LUA

first=$(head -n1 "$WORK/ids.txt")
cmp <(curl -sf "$ORDERSVC_URL/order/$first") <(curl -sf "http://127.0.0.1:$NGINX_PORT/order/$first") ||
    { echo "ordersvc and nginx do not serve the same bytes for $first" >&2; exit 1; }

declare -A results
run() { # name url
    local rps
    rps=$(wrk -t1 -c64 -d"$DURATION" -s "$WORK/random.lua" "$2" | awk '/Requests\/sec/ {print $2}')
    echo "    $1 run $3: $rps req/s"
    results[$1]+="$rps "
}
echo "==> wrk -t1 -c64 -d$DURATION, random ids, $RUNS runs each (alternating)"
for i in $(seq "$RUNS"); do
    run nginx "http://127.0.0.1:$NGINX_PORT" "$i"
    run ordersvc "$ORDERSVC_URL" "$i"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=$(echo "${results[nginx]}" | median)
o=$(echo "${results[ordersvc]}" | median)
echo "==> medians: nginx $n req/s, ordersvc $o req/s, ratio $(python3 -c "print(f'{$o/$n:.2f}')")"

if [[ -n "${OPEN_LOOP_RATE:-}" ]]; then
    ORDERSVC=${ORDERSVC:-target/release/ordersvc}
    echo "==> $ORDERSVC bench http --rate $OPEN_LOOP_RATE --connections 64 --duration $DURATION, $RUNS runs each (alternating)"
    for i in $(seq "$RUNS"); do
        for target in "nginx http://127.0.0.1:$NGINX_PORT" "ordersvc $ORDERSVC_URL"; do
            set -- $target
            echo "    $1 run $i:"
            "$ORDERSVC" bench http --url "$2" --rate "$OPEN_LOOP_RATE" --connections 64 \
                --duration "$DURATION" --ids "$WORK/ids.txt" --seed "$i" |
                grep -E 'Latencies|Success' | sed 's/^/      /'
        done
    done
fi
