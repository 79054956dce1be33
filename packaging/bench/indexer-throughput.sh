#!/usr/bin/env bash
# Can the indexer keep up with a broker? Publishes M results as fast as
# mosquitto takes them and reports how fast (a) a plain mosquitto_sub and
# (b) swarming-indexer (durable file output, fsync per batch) took them in.
# Prints figures; asserts nothing.
#
#   packaging/bench/indexer-throughput.sh [MESSAGES]     (default 50000)
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:-50000}
for p in mosquitto mosquitto_sub; do
    command -v $p >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients; }
done
cargo build --release --quiet --bin swarming-indexer
work=$(mktemp -d); chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n' "$port" > "$work/m.conf"
chmod 644 "$work/m.conf"
mosquitto -c "$work/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5

# M distinct results, one per line, timestamped within the last hour (the
# indexer refuses results older than 30 days).
hour=$(date -u -d '1 hour ago' +%Y-%m-%dT%H)
awk -v m="$M" -v hour="$hour" 'BEGIN { for (i = 0; i < m; i++) {
    printf "{\"agent\":\"bench-%d\",\"labels\":{\"provider\":\"x\",\"location\":\"Lab\"},\"target\":\"127.0.0.1\",\"addr\":\"127.0.0.1\",\"timestamp\":\"%s:%02d:%02d.%03dZ\",\"interval\":60.0,\"sent\":5,\"received\":5,\"rtt\":{\"min\":0.04,\"avg\":0.05,\"max\":0.06,\"stddev\":0.01},\"rtts\":[0.04,0.05,0.06,0.05,0.05]}\n", i % 50, hour, int(i / 60000) % 60, int(i / 1000) % 60, i % 1000 } }' > "$work/results.ndjson"

now() { date +%s.%N; }
report() { awk -v n="$1" -v m="$M" -v a="$2" -v b="$3" 'BEGIN { printf "%-22s %7d messages in %6.2f s: %8.0f msg/s\n", n, m, b - a, m / (b - a) }'; }

# (a) what the broker delivers to a plain subscriber
timeout 300 mosquitto_sub -p "$port" -q 1 -t 'ping/+' -C "$M" > /dev/null & sub=$!
sleep 0.5
t0=$(now)
mosquitto_pub -p "$port" -q 1 -t ping/127.0.0.1 -l < "$work/results.ndjson"
wait $sub
report "mosquitto_sub (QoS 1)" "$t0" "$(now)"

# (b) the indexer, durable file output
cat > "$work/indexer.yaml" <<YAML
name: bench
brokers: ["127.0.0.1:$port"]
state_dir: $work/state
file: {path: $work/out.ndjson, max_bytes: 10737418240}
log: {level: warn}
YAML
target/release/swarming-indexer -c "$work/indexer.yaml" --log stderr & pids+=($!)
sleep 1
t0=$(now)
mosquitto_pub -p "$port" -q 1 -t ping/127.0.0.1 -l < "$work/results.ndjson"
deadline=$((SECONDS + 300))
while [ "$(wc -l < "$work/out.ndjson" 2>/dev/null || echo 0)" -lt "$M" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
report "swarming-indexer" "$t0" "$(now)"
echo "indexer rss: $(awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' /proc/${pids[-1]}/status)"
