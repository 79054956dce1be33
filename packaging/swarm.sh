#!/usr/bin/env bash
# A local swarm on this machine: two mosquitto brokers on free ports, one
# indexer with its live page, three agents pinging loopback targets, and a
# compact summary with each agent's broker. At 20 s broker #1 is stopped
# (its agents move to #2, as the summary shows), at 40 s it comes back.
#
#   packaging/swarm.sh                        # results to an NDJSON file
#   packaging/swarm.sh http://localhost:9200  # also into Elasticsearch
#   DURATION=120 packaging/swarm.sh           # run 120 s (default 60; 0 = until Ctrl-C)
#
# Run it as root, or as a user with sudo and rustup: cargo builds as the
# user; the swarm runs as root (agents open raw ICMP sockets). Installs
# mosquitto with apt-get if it is missing, and leaves its packaged service
# stopped and disabled. Stops agents first, then the indexer, then brokers.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
. packaging/privileges.sh

ES_URL=${1:-}
DURATION=${DURATION:-60}
say() { printf 'swarm: %s\n' "$*"; }

if [ -z "${SWARM_BUILT:-}" ]; then
	say "building the daemons and the summary with cargo (the first build takes a few minutes)"
	as_user cargo build --bins --example summary
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null ||
			{ echo "swarm: the agents need root (raw ICMP sockets) and there is no sudo: run it as root" >&2; exit 77; }
		say "built; the swarm runs as root (raw ICMP sockets): sudo"
		exec sudo env SWARM_BUILT=1 DURATION="$DURATION" "$self" "$@"
	fi
fi
[ "$(id -u)" -eq 0 ] || { echo "swarm: run as root (agents need CAP_NET_RAW)" >&2; exit 77; }

if ! command -v mosquitto >/dev/null; then
	say "installing mosquitto (apt-get)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
	# The package starts a system broker on port 1883: not ours, not wanted.
	systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
bin=target/debug

work=$(mktemp -d /tmp/swarm.XXXXXX)
chmod 755 "$work"
agents=()
indexer=""
b1=""
b2=""

stop() { # pid...: TERM, then wait for each
	local p
	for p in "$@"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
	for p in "$@"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}
cleanup() {
	# Whatever failed before, every process must be stopped.
	set +e
	trap - EXIT INT TERM
	echo
	say "stopping: agents (they send their shutdown notice), then the indexer, then the brokers"
	[ -n "${summary:-}" ] && kill "$summary" 2>/dev/null
	stop "${agents[@]}"
	stop "$indexer"
	stop "$b1" "$b2"
	say "stopped; logs and results kept in $work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	local p
	for p in $(shuf -i 20000-60000 -n 50); do
		ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
	return 1
}

start_broker() { # name port; sets $started
	# mosquitto drops root for its own user: no files of its own here.
	printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n' "$2" >"$work/$1.conf"
	chmod 644 "$work/$1.conf"
	mosquitto -c "$work/$1.conf" >>"$work/$1.log" 2>&1 </dev/null &
	started=$!
}

p1=$(free_port); p2=$(free_port); http=$(free_port)
start_broker broker1 "$p1"; b1=$started
start_broker broker2 "$p2"; b2=$started
say "brokers: #1 127.0.0.1:$p1, #2 127.0.0.1:$p2"

es=""
[ -n "$ES_URL" ] && es="elasticsearch: {url: \"$ES_URL\", flush_interval: 1s}"
cat >"$work/indexer.yaml" <<YAML
name: swarm-indexer
brokers: ["127.0.0.1:$p1", "127.0.0.1:$p2"]
keepalive: 2s
targets: [127.0.0.1, 127.0.0.2, 127.0.0.3, "::1"]
state_dir: $work/state
file: {path: $work/results.ndjson}
http: {listen: "127.0.0.1:$http"}
$es
YAML
$bin/swarming-indexer -c "$work/indexer.yaml" --log stderr 2>"$work/indexer.log" &
indexer=$!

for a in paris:ovh lyon:free berlin:hetzner; do
	name=${a%%:*}; provider=${a##*:}
	cat >"$work/agent-$name.yaml" <<YAML
name: probe-$name
labels: {provider: $provider, location: ${name^}}
brokers: ["127.0.0.1:$p1", "127.0.0.1:$p2"]
keepalive: 2s
ping: {interval: 2s, count: 3, timeout: 500ms}
YAML
	$bin/swarming-agent -c "$work/agent-$name.yaml" --log stderr 2>"$work/agent-$name.log" &
	agents+=($!)
done
say "indexer and 3 agents started; logs and results in $work"
say "live page: http://127.0.0.1:$http/   (metrics: /metrics, JSON: /api/state)"
say "summary: each agent @ its broker; a failover shows as the number changing"

$bin/examples/summary "http://127.0.0.1:$http" "$DURATION" &
summary=$!

# The broker outage, scripted.
sleep 20
say ">>> stopping broker #1 (127.0.0.1:$p1): its agents move to #2"
stop "$b1"
sleep 20
say ">>> starting broker #1 again"
start_broker broker1 "$p1"; b1=$started
if [ "$DURATION" = 0 ]; then
	wait "$summary"
else
	remaining=$((DURATION - 40))
	[ "$remaining" -le 0 ] || sleep "$remaining"
fi
