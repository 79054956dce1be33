#!/usr/bin/env bash
# A local swarm on this machine: two mosquitto brokers on free ports, one
# indexer, three agents pinging loopback targets, and a live summary of the
# results. Halfway through, one broker is stopped and later restarted: the
# flow of results goes on.
#
#   sudo packaging/swarm.sh                 # results to an NDJSON file
#   sudo packaging/swarm.sh http://localhost:9200   # also into Elasticsearch
#   DURATION=120 sudo packaging/swarm.sh    # run for 120 s (default 60; 0 = until Ctrl-C)
#
# Needs root (the agents open raw ICMP sockets; no setcap on a build tree)
# and installs mosquitto with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

ES_URL=${1:-}
DURATION=${DURATION:-60}
[ "$(id -u)" = 0 ] || { echo "swarm.sh: run as root (agents need CAP_NET_RAW): sudo $0 $*" >&2; exit 77; }
if ! command -v mosquitto >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto
fi
cargo build --quiet --bins --example summary
bin=target/debug

work=$(mktemp -d /tmp/swarm.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "swarm stopped; files kept in $work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || shuf -i 20000-60000 -n 1; }

start_broker() { # name port; prints the pid
    # mosquitto drops root for its own user: no files of its own here.
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n' "$2" > "$work/$1.conf"
    chmod 644 "$work/$1.conf"
    mosquitto -c "$work/$1.conf" >>"$work/$1.log" 2>&1 </dev/null & echo $!
}

p1=$(free_port); p2=$(free_port)
b1=$(start_broker broker1 "$p1"); pids+=("$b1")
b2=$(start_broker broker2 "$p2"); pids+=("$b2")
echo "brokers: 127.0.0.1:$p1 (pid $b1), 127.0.0.1:$p2 (pid $b2)"

es=""
[ -n "$ES_URL" ] && es="elasticsearch: {url: \"$ES_URL\", flush_interval: 1s}"
cat > "$work/indexer.yaml" <<YAML
name: swarm-indexer
brokers: ["127.0.0.1:$p1", "127.0.0.1:$p2"]
keepalive: 2s
targets: [127.0.0.1, 127.0.0.2, 127.0.0.3, "::1"]
state_dir: $work/state
file: {path: $work/results.ndjson}
$es
YAML
$bin/swarming-indexer -c "$work/indexer.yaml" --log stderr 2> "$work/indexer.log" & pids+=($!)

for a in paris:ovh lyon:free berlin:hetzner; do
    name=${a%%:*}; provider=${a##*:}
    cat > "$work/agent-$name.yaml" <<YAML
name: probe-$name
labels: {provider: $provider, location: ${name^}}
brokers: ["127.0.0.1:$p1", "127.0.0.1:$p2"]
keepalive: 2s
ping: {interval: 2s, count: 3, timeout: 500ms}
YAML
    $bin/swarming-agent -c "$work/agent-$name.yaml" --log stderr 2> "$work/agent-$name.log" & pids+=($!)
done
echo "indexer and 3 agents started; logs and results in $work"

# The broker outage, scripted: stop broker1 at 20 s, start it again at 40 s.
(
    sleep 20
    echo ">>> stopping broker1 (127.0.0.1:$p1): agents on it move to broker2"
    kill -TERM "$b1"
    sleep 20
    echo ">>> starting broker1 again"
    start_broker broker1 "$p1" > "$work/broker1.pid"
) & pids+=($!)

cargo run --quiet --example summary -- "$work/results.ndjson" "$DURATION" &
summary=$!
pids+=("$summary")
if [ "$DURATION" = 0 ]; then wait "$summary"; else wait "$summary" || true; fi
[ -f "$work/broker1.pid" ] && pids+=("$(cat "$work/broker1.pid")")
