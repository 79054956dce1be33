#!/usr/bin/env bash
# CPU per echo and memory of swarming-agent against fping, pinging the same
# N loopback targets at the same rate, in a private network namespace (so
# no other traffic reaches the raw sockets). Prints figures and ratios to
# fping; asserts nothing.
#
#   sudo packaging/bench/agent-vs-fping.sh [SECONDS] [TARGET COUNTS...]
#
# Defaults: 60 s turns, 1000 and 10000 targets, one echo per target every
# 10 s. fping and the agent take turns, A B A B, for each target count.
# Echoes are counted from the namespace's kernel counter (/proc/net/snmp
# Icmp OutEchos), CPU from the process's own accounting (/proc/PID/stat
# utime + stime, all threads), memory from /proc/PID/status (VmRSS at the end
# of the turn). The agent's figures include JSON encoding and one MQTT
# publish per result (mosquitto's CPU is not counted). The machine's load
# average is printed with each turn: compare figures from a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${1:-60}
shift || true
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 10000)
PERIOD=10
WARMUP=15
[ "$(id -u)" = 0 ] || { echo "run as root (raw ICMP sockets, network namespace)" >&2; exit 77; }

if [ -z "${SWARMING_BENCH_IN_NETNS:-}" ]; then
    for p in fping mosquitto mosquitto_pub; do
        command -v $p >/dev/null || {
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends fping mosquitto mosquitto-clients
            # The package starts a system broker: stop it, it is not ours.
            systemctl disable --now mosquitto 2>/dev/null || true
        }
    done
    cargo build --release --quiet --bin swarming-agent
    exec env SWARMING_BENCH_IN_NETNS=1 unshare --net -- "$0" "$T" "${COUNTS[@]}"
fi

ip link set lo up
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

hz=$(getconf CLK_TCK)
out_echoes() { awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) col[$i] = i; h = 1 } else print $col["OutEchos"] }' /proc/net/snmp; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' "$port" > "$work/m.conf"
chmod 644 "$work/m.conf"
mosquitto -c "$work/m.conf" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do mosquitto_pub -p "$port" -t probe -m x 2>/dev/null && break; sleep 0.1; done

results="$work/results"
: > "$results"

# One turn: measure program $1 (pid $2) for N=$3 targets, turn $4.
measure() {
    local name=$1 pid=$2 n=$3 turn=$4 e0 e1 c0 c1 l0 r
    sleep "$WARMUP" # steady state: the first interval spreads the rounds
    e0=$(out_echoes); c0=$(ticks "$pid"); l0=$(load)
    sleep "$T"
    e1=$(out_echoes); c1=$(ticks "$pid"); r=$(rss_kb "$pid")
    awk -v name="$name" -v n="$n" -v turn="$turn" -v e=$((e1 - e0)) -v d=$((c1 - c0)) \
        -v hz="$hz" -v t="$T" -v rss="$r" -v l0="$l0" -v l1="$(load)" 'BEGIN {
        cpu = d / hz
        printf "%6d  %d  %-14s %8d echoes (%6.1f/s)  cpu %6.2f s  %6.1f us/echo  rss %5.1f MiB  load %s -> %s\n",
            n, turn, name, e, e / t, cpu, (e > 0 ? 1e6 * cpu / e : 0), rss / 1024, l0, l1
        printf "%d %s %f %f\n", n, name, (e > 0 ? 1e6 * cpu / e : 0), rss / 1024 >> "/dev/stderr"
    }' 2>>"$results"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

echo "one echo per target every ${PERIOD}s; ${WARMUP}s warm-up, then ${T}s measured per turn; private network namespace"
echo "targets turn program"
for n in "${COUNTS[@]}"; do
    # N distinct loopback addresses: 127.1.x.y
    for i in $(seq 0 $((n - 1))); do echo "127.1.$((i / 250)).$((i % 250 + 1))"; done > "$work/targets.txt"
    printf '{"targets":[%s],"version":"bench-%s"}' "$(sed 's/.*/"&"/' "$work/targets.txt" | paste -sd,)" "$n" > "$work/watch.json"
    mosquitto_pub -p "$port" -t watch -r -f "$work/watch.json"
    cat > "$work/agent.yaml" <<YAML
name: bench
brokers: ["127.0.0.1:$port"]
ping: {interval: ${PERIOD}s, count: 1, timeout: 2s}
limits: {max_targets: $n, max_rate: $((n / PERIOD * 2 + 10)), max_queued: 100000}
log: {level: warn}
YAML
    spacing_ms=$(awk -v n="$n" -v p="$PERIOD" 'BEGIN { printf "%.3f", p * 1000 / n }')
    for turn in 1 2; do
        # A: fping, loop mode, one echo per target per period, sends spread
        # evenly over the period.
        fping -q -l -p $((PERIOD * 1000)) -i "$spacing_ms" -t 2000 -r 0 -f "$work/targets.txt" >/dev/null 2>&1 &
        pid=$!; pids+=("$pid")
        measure fping "$pid" "$n" "$turn"
        stop "$pid"
        # B: the agent, same targets and rate.
        target/release/swarming-agent -c "$work/agent.yaml" --log stderr 2>"$work/agent.log" &
        pid=$!; pids+=("$pid")
        measure swarming-agent "$pid" "$n" "$turn"
        stop "$pid"
    done
done

echo
echo "| targets | fping CPU/echo | agent CPU/echo | ratio | RSS fping / agent | ratio |"
echo "| ---: | ---: | ---: | ---: | --- | ---: |"
awk '{ cpu[$1 " " $2] += $3; rss[$1 " " $2] = ($4 > rss[$1 " " $2] ? $4 : rss[$1 " " $2]); turns[$1 " " $2]++; ns[$1] = 1 }
    END {
        for (n in ns) {
            f = cpu[n " fping"] / turns[n " fping"]; a = cpu[n " swarming-agent"] / turns[n " swarming-agent"]
            fr = rss[n " fping"]; ar = rss[n " swarming-agent"]
            printf "| %d | %.1f us | %.1f us | %.2fx | %.1f / %.1f MiB | %.2fx |\n", n, f, a, (f > 0 ? a / f : 0), fr, ar, (fr > 0 ? ar / fr : 0)
        }
    }' "$results" | sort -t'|' -k2 -n
echo "(load average at the end: $(load); $(nproc) CPUs)"
