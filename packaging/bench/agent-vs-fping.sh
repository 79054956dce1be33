#!/usr/bin/env bash
# CPU per probe and memory of swarming-agent against fping, pinging the
# same N loopback targets at the same rate. Prints figures; asserts nothing.
#
#   sudo packaging/bench/agent-vs-fping.sh [TARGETS] [SECONDS]
#
# Defaults: 2000 targets, 60 s, one echo per target every 10 s (so 200
# echoes/s). Uses the release build (built if missing), a mosquitto on a
# free port, and fping from Debian (installed if missing). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-2000}
T=${2:-60}
PERIOD=10
[ "$(id -u)" = 0 ] || { echo "run as root (raw ICMP sockets)" >&2; exit 77; }
for p in mosquitto fping; do
    command -v $p >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends $p; }
done
cargo build --release --quiet --bin swarming-agent
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# N distinct loopback addresses: 127.1.x.y
targets=$(for i in $(seq 0 $((N - 1))); do echo "127.1.$((i / 250)).$((i % 250 + 1))"; done)
echo "$targets" > "$work/targets.txt"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

measure() { # name pid echoes_per_second
    local t0 t1 r
    sleep 5 # let it reach its steady state (rounds spread over the period)
    t0=$(ticks "$2")
    sleep "$T"
    t1=$(ticks "$2")
    r=$(rss_kb "$2")
    awk -v n="$1" -v d=$((t1 - t0)) -v hz="$hz" -v t="$T" -v rate="$3" -v rss="$r" 'BEGIN {
        cpu = d / hz; probes = rate * t;
        printf "%-15s cpu %6.2f s over %d s (%5.2f%% of a core)  %7.1f us/probe  rss %6.1f MiB\n",
            n, cpu, t, 100 * cpu / t, 1e6 * cpu / probes, rss / 1024 }'
}

rate=$(awk -v n="$N" -v p="$PERIOD" 'BEGIN {print n / p}')
echo "$N targets, one echo each every ${PERIOD}s: $rate echoes/s, measured over ${T}s"

# fping: loop mode, one echo per target per period.
fping -q -l -p $((PERIOD * 1000)) -i 1 -r 0 -f "$work/targets.txt" >/dev/null 2>&1 &
pids+=($!)
measure fping $! "$rate"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/m.conf"; chmod 644 "$work/m.conf"
mosquitto -c "$work/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
# Retained target list (well under 1 MiB).
printf '{"targets":[%s]}' "$(echo "$targets" | sed 's/.*/"&"/' | paste -sd,)" > "$work/watch.json"
mosquitto_pub -p "$port" -t watch -r -f "$work/watch.json" 2>/dev/null || \
    { apt-get install -y -qq mosquitto-clients; mosquitto_pub -p "$port" -t watch -r -f "$work/watch.json"; }
cat > "$work/agent.yaml" <<YAML
name: bench
brokers: ["127.0.0.1:$port"]
ping: {interval: ${PERIOD}s, count: 1, timeout: 2s}
limits: {max_targets: $N, max_rate: $((N / PERIOD * 2 + 10)), max_queued: 100000}
log: {level: warn}
YAML
target/release/swarming-agent -c "$work/agent.yaml" --log stderr 2>/dev/null &
pids+=($!)
measure swarming-agent $! "$rate"
