#!/usr/bin/env bash
# Does the indexer keep up with its broker? One mosquitto, first stock (its
# defaults: 20 messages in flight and 1000 queued per client, then drops),
# then with those limits lifted (max_inflight_messages 0,
# max_queued_messages 0: what a broker feeding indexers should run with),
# the same results published three ways, taken once by a plain
# `mosquitto_sub -q 1` (the anchor) and once by swarming-indexer storing
# into an Elasticsearch stand-in (examples/es_standin.rs, whose own CPU
# is shown). Prints results/s received by mosquitto_sub and stored by
# the indexer, the ratio, and CPU per result (us) of mosquitto_sub, the
# indexer, the stand-in and mosquitto (while feeding mosquitto_sub / the
# indexer). Asserts nothing.
#
#   packaging/bench/indexer-vs-broker.sh [SECONDS]   (paced runs, default 6)
#   MODES="pinned" BROKERS=stock packaging/bench/indexer-vs-broker.sh   (a part)
#
# Modes: unpaced (4 x mosquitto_pub -l, 25,000 results each, as fast as the
# broker takes them), then paced at 10,000/s and 20,000/s (one publisher),
# all processes sharing the cores; then "pinned": unpaced again with the
# load (mosquitto and the publishers) on CPU 0 and the consumer
# (mosquitto_sub, or the indexer and the stand-in) on CPU 1, as when the
# indexer runs on a host of its own (unpinned, an unpaced burst keeps both
# cores busy, and every microsecond the consumer spends is taken from the
# broker and publishers feeding it).
#
# The indexer runs under SCHED_BATCH (`chrt -b 0`), as its systemd unit
# runs it (CPUSchedulingPolicy=batch); mosquitto_sub as a user runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-6}
for p in mosquitto mosquitto_sub mosquitto_pub python3 curl chrt; do
    command -v $p >/dev/null || { echo "needs $p (apt-get install mosquitto mosquitto-clients python3 curl util-linux)"; exit 1; }
done
cargo build --release --quiet --bin swarming-indexer --example es_standin
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user+system, 1/100 s
hz=$(getconf CLK_TCK)

# Results with recent timestamps (the indexer refuses those older than 30
# days), distinct ids: agent bench-<file>-<i % 50>, one ms apart and in
# order, so that each is a new round of its agent and is correlated with
# its peers' views of the target (a late round is only classified).
gen() { # gen FILE COUNT TAG
    python3 - "$1" "$2" "$3" <<'PY'
import sys, time, datetime
path, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.time() - 60 - n / 1000
with open(path, "w") as f:
    for i in range(n):
        t = datetime.datetime.fromtimestamp(start + i / 1000, datetime.timezone.utc)
        ts = t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)
        f.write('{"agent":"bench-%s-%d","labels":{"provider":"x","location":"Lab"},"target":"127.0.0.1","addr":"127.0.0.1","timestamp":"%s","interval":60.0,"sent":5,"received":5,"rtt":{"min":0.04,"avg":0.05,"max":0.06,"stddev":0.01},"rtts":[0.04,0.05,0.06,0.05,0.05]}\n' % (tag, i % 50, ts))
PY
}
# Paces lines from FILE at RATE/s onto stdout (10 ms ticks).
pace() {
    python3 - "$1" "$2" <<'PY'
import sys, time
lines = open(sys.argv[1], "rb").read().splitlines(keepends=True)
rate = int(sys.argv[2]); out = sys.stdout.buffer; t0 = time.monotonic(); i = 0
while i < len(lines):
    due = min(len(lines), int((time.monotonic() - t0) * rate) + 1)
    if due > i:
        out.write(b"".join(lines[i:due])); out.flush(); i = due
    time.sleep(0.002)
PY
}

esport=$(free_port)
target/release/examples/es_standin "$esport" & espid=$!; pids+=($espid)
sleep 0.5

# burst MODE: whether MODE publishes the 4 files at once (unpaced, pinned).
burst() { [ "$1" = unpaced ] || [ "$1" = pinned ]; }

# us_per TICKS0 TICKS1 COUNT: CPU ticks spent, in microseconds per item.
us_per() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (n > 0 ? n : 1) }'; }

# publish MODE: the 4 files at once (burst) or one at a rate
publish() {
    if burst "$1"; then
        local pp=() pin=()
        [ "$1" = pinned ] && pin=(taskset -c 0)
        for i in 0 1 2 3; do "${pin[@]}" mosquitto_pub -p "$port" -q 1 -t ping/127.0.0.1 -l < "$work/in-$i" & pp+=($!); done
        wait "${pp[@]}"
    else
        pace "$work/in-p" "$1" | mosquitto_pub -p "$port" -q 1 -t ping/127.0.0.1 -l
    fi
}

# count_until_idle COUNT END: polls COUNT (prints a count) until it stops
# growing for 2 s; prints "count seconds-from-t0-to-END", END printing the
# time the last item arrived (Unix seconds), so the rate does not depend on
# how often the count is polled. Both pollers are cheap (no interpreter
# started): on a saturated machine the poller's CPU is taken from the run.
count_until_idle() {
    local last=-1 at=$t0 n now
    while :; do
        n=$($1); now=$(date +%s.%N)
        if [ "$n" != "$last" ]; then last=$n; at=$now
        elif awk -v a="$at" -v b="$now" 'BEGIN { exit !(b - a > 2) }'; then break; fi
        sleep 0.1
    done
    awk -v a="$t0" -v b="$($2)" -v n="$last" 'BEGIN { printf "%d %.3f\n", n, b - a }'
}

sub_count() { wc -l < "$work/sub.out"; }
sub_end() { stat -c %.9Y "$work/sub.out"; }   # mosquitto_sub flushes each line
es_field() { curl -s "127.0.0.1:$esport/_count" | sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }
es_count() { es_field count; }
es_end() { es_field last; }

run=0
for broker in ${BROKERS:-stock raised}; do
port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/m.conf"
[ $broker = raised ] && printf 'max_inflight_messages 0\nmax_queued_messages 0\n' >> "$work/m.conf"
mosquitto -c "$work/m.conf" >/dev/null 2>&1 & mpid=$!; pids+=($mpid)
sleep 0.5
echo "== mosquitto $broker"
printf '%-9s %9s %8s %9s %6s %8s %8s %8s %11s  %s\n' mode published "sub/s" "indexer/s" ratio "sub us" "idx us" "es us" "mosq us" "(delivered: sub, indexer)"
# The unpaced runs are short and move with the machine's load: each is run
# REPS times (default 3), and two summaries printed: the median of the
# runs' ratios, and the ratio of the median rates (sub and indexer runs
# vary independently, a pair's ratio carries the noise of both).
reps=${REPS:-3}
base="unpaced 10000 20000"
[ "$(nproc)" -ge 2 ] && base="$base pinned"
modes=""
for m in ${MODES:-$base}; do
    case $m in unpaced|pinned) for _ in $(seq "$reps"); do modes="$modes $m"; done ;; *) modes="$modes $m" ;; esac
done
declare -A ratios=() subrates=() idxrates=()
for mode in $modes; do
    run=$((run + 1))
    consumer=()
    if [ $mode = pinned ]; then
        consumer=(taskset -c 1)
        taskset -apc 0 $mpid >/dev/null; taskset -apc 1 $espid >/dev/null
    fi
    if burst $mode; then
        n=100000
        for i in 0 1 2 3; do gen "$work/in-$i" 25000 "$run$i"; done
    else
        n=$((mode * SECS))
        gen "$work/in-p" "$n" "$run"
    fi
    # (a) mosquitto_sub
    : > "$work/sub.out"
    "${consumer[@]}" mosquitto_sub -p "$port" -q 1 -i "bench-sub-$run" -t 'ping/+' > "$work/sub.out" & spid=$!
    sleep 0.5
    m0=$(ticks $mpid); s0=$(ticks $spid)
    t0=$(date +%s.%N)
    publish $mode
    read -r sn st < <(count_until_idle sub_count sub_end)
    m1=$(ticks $mpid); s1=$(ticks $spid)
    kill $spid; wait $spid 2>/dev/null || true
    sub_mosq=$(us_per "$m0" "$m1" "$sn")
    sub_cpu=$(us_per "$s0" "$s1" "$sn")
    # (b) the indexer (a fresh state directory, same input regenerated so
    # that its ids are new to the stand-in)
    if burst $mode; then
        for i in 0 1 2 3; do gen "$work/in-$i" 25000 "x$run$i"; done
    else
        gen "$work/in-p" "$n" "x$run"
    fi
    before=$(es_count)
    rm -rf "$work/state"
    cat > "$work/indexer.yaml" <<YAML
name: bench$run
brokers: ["127.0.0.1:$port"]
# Listed, so every result is also judged and correlated (insight).
targets: ["127.0.0.1"]
state_dir: $work/state
elasticsearch: {url: "http://127.0.0.1:$esport", flush_interval: 200ms}
log: {level: warn}
YAML
    "${consumer[@]}" chrt -b 0 target/release/swarming-indexer -c "$work/indexer.yaml" --log stderr 2>>"$work/indexer.log" & ipid=$!; pids+=($ipid)
    sleep 1
    m0=$(ticks $mpid); i0=$(ticks $ipid); e0=$(ticks $espid)
    t0=$(date +%s.%N)
    publish $mode
    read -r inn it < <(count_until_idle es_count es_end)
    inn=$((inn - before))
    m1=$(ticks $mpid); i1=$(ticks $ipid); e1=$(ticks $espid)
    kill -TERM $ipid; wait $ipid 2>/dev/null || true
    if [ $mode = pinned ]; then
        taskset -apc 0-$(($(nproc) - 1)) $mpid >/dev/null; taskset -apc 0-$(($(nproc) - 1)) $espid >/dev/null
    fi
    line=$(awk -v mode="$mode" -v n="$n" -v sn="$sn" -v st="$st" -v inn="$inn" -v it="$it" \
        -v i="$((i1 - i0))" -v m="$((m1 - m0))" -v e="$((e1 - e0))" -v hz="$hz" -v sm="$sub_mosq" -v sc="$sub_cpu" 'BEGIN {
        sr = sn / st; ir = inn / it; d = (inn > 0 ? inn : 1)
        printf "%-9s %9d %8.0f %9.0f %6.2f %8s %8.1f %8.1f %5s/%5.1f  (%d, %d)\n", mode (mode ~ /^[0-9]+$/ ? "/s" : ""), n, sr, ir, ir / sr,
            sc, i / hz * 1e6 / d, e / hz * 1e6 / d, sm, m / hz * 1e6 / d, sn, inn }')
    echo "$line"
    ratios[$mode]="${ratios[$mode]:-} $(echo "$line" | awk '{print $5}')"
    subrates[$mode]="${subrates[$mode]:-} $(echo "$line" | awk '{print $3}')"
    idxrates[$mode]="${idxrates[$mode]:-} $(echo "$line" | awk '{print $4}')"
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for mode in unpaced pinned; do
    [ -n "${ratios[$mode]:-}" ] || continue
    sm=$(echo ${subrates[$mode]} | median); im=$(echo ${idxrates[$mode]} | median)
    echo "$mode: median ratio $(echo ${ratios[$mode]} | median) of ${ratios[$mode]}; median rates: sub $sm/s, indexer $im/s, ratio $(awk -v a="$im" -v b="$sm" 'BEGIN { printf "%.2f", a / b }')"
done
kill $mpid; wait $mpid 2>/dev/null || true
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
