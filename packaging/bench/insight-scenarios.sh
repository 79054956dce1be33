#!/usr/bin/env bash
# Scripted faults against a small real swarm, and the verdicts the indexer
# publishes about them (issue 11). Run as root:
#
#   sudo packaging/bench/insight-scenarios.sh [--scenarios down,uplink,...]
#        [--repeat N] [--interval SECONDS] [--broker-down SECONDS]
#        [--bin DIR] [--keep]
#
# Everything runs in a private network namespace: one mosquitto, one
# swarming-indexer (file output), four agents (a1 a2 with label provider
# p1, a3 a4 with p2), each under its own uid so nftables can tell their
# echoes apart (meta skuid), and six targets, 10.9.0.1-6 on lo. Faults are
# nftables rules in a table of the namespace (echo requests dropped
# silently on arrival, so the agents see lost echoes rather than send
# errors); the slow target is answered by a userspace responder
# (insight-scenarios.py respond) while the kernel's own replies from it are
# dropped.
#
# Scenarios (default: all, in this order):
#   down      10.9.0.1 unreachable for everyone  -> target down, cause target
#   uplink    a4's echoes all lost (its MQTT still works)
#             -> agent a4 trouble, no target verdict with cause target
#   provider  10.9.0.2 unreachable from p1 (a1, a2)
#             -> target down, cause provider, provider p1
#   lossy     50 % of the echoes to 10.9.0.3 lost -> target lossy, cause target
#   slow      10.9.0.5 answers after 300 ms       -> target slow, cause target
#   broker    mosquitto stopped for 4 s (--broker-down), restarted (no
#             persistence)
#             -> no verdict changes: everything stays up / ok
#
# For each: clear the faults, wait until every agent's rounds are up and
# every verdict healthy, inject, then follow `verdict/#` (mosquitto_sub)
# until the subject's first verdict. A scenario is right when that verdict
# is the expected one, came within 2 rounds of the fault (rounds: the most
# post-fault rounds of the subject published by an agent that sees the
# fault when the verdict came: 1 shows it, 1 confirms it) and no other
# verdict went bad meanwhile. Prints a table, a confusion
# matrix, the accuracy, and a last line `SUMMARY right=N total=M`.
# Exit status 0 whatever the verdicts (the caller judges); non-zero only
# when the harness itself could not run (77: not root or a tool missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

ALL=(down uplink provider lossy slow broker)
scenarios=("${ALL[@]}")
repeat=1
interval=2
broker_down=4
bin=
keep=
while [ $# -gt 0 ]; do
    case $1 in
        --scenarios) IFS=, read -r -a scenarios <<<"${2:?}"; shift 2 ;;
        --scenarios=*) IFS=, read -r -a scenarios <<<"${1#*=}"; shift ;;
        --repeat) repeat=${2:?}; shift 2 ;;
        --interval) interval=${2:?}; shift 2 ;;
        --broker-down) broker_down=${2:?}; shift 2 ;;
        --bin) bin=${2:?}; shift 2 ;;
        --bin=*) bin=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for s in "${scenarios[@]}"; do
    case " ${ALL[*]} " in *" $s "*) ;; *) echo "unknown scenario: $s (one of: ${ALL[*]})" >&2; exit 2 ;; esac
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "--repeat: a positive number" >&2; exit 2; }
[[ $interval =~ ^[1-9][0-9]*$ ]] || { echo "--interval: whole seconds" >&2; exit 2; }
[[ $broker_down =~ ^[0-9]+$ ]] || { echo "--broker-down: whole seconds" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespace, nftables, agents under other uids)" >&2; exit 77; }
for tool in mosquitto mosquitto_sub mosquitto_pub nft python3 setpriv unshare ip; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 77; }
done

# The binaries: --bin, else the newer of target/release and target/debug.
if [ -z "$bin" ]; then
    bin=$repo/target/debug
    if [ -x "$repo/target/release/swarming-agent" ] &&
        { [ ! -x "$bin/swarming-agent" ] || [ "$repo/target/release/swarming-agent" -nt "$bin/swarming-agent" ]; }; then
        bin=$repo/target/release
    fi
fi
bin=$(cd "$bin" 2>/dev/null && pwd) || { echo "no such directory: $bin" >&2; exit 2; }
for b in swarming-agent swarming-indexer; do
    [ -x "$bin/$b" ] || { echo "no $bin/$b (build it: cargo build --bins)" >&2; exit 2; }
done

if [ -z "${SWARMING_SCENARIOS_IN_NETNS:-}" ]; then
    sc=$(IFS=,; echo "${scenarios[*]}")
    args=(--scenarios "$sc" --repeat "$repeat" --interval "$interval" --broker-down "$broker_down" --bin "$bin")
    [ -z "$keep" ] || args+=(--keep)
    exec env SWARMING_SCENARIOS_IN_NETNS=1 unshare --net -- bash "$0" "${args[@]}"
fi

# ---------------------------------------------------------------- the swarm
unset RUST_LOG
helper=$here/insight-scenarios.py
PORT=1883 # the namespace is ours: nothing else listens in it
TARGETS=(10.9.0.1 10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6)
AGENTS=(a1 a2 a3 a4)
declare -A PROVIDER=([a1]=p1 [a2]=p1 [a3]=p2 [a4]=p2)
declare -A UID_OF=([a1]=64201 [a2]=64202 [a3]=64203 [a4]=64204)
T_DOWN=10.9.0.1 T_PROVIDER=10.9.0.2 T_LOSSY=10.9.0.3 T_SLOW=10.9.0.5
A_UPLINK=a4
P1_AGENTS=(a1 a2)
LOSS=50        # % of the echoes to the lossy target dropped
SLOW_MS=300    # the slow target's delay
COUNT=10       # echoes per round: enough for the loss to show in every round
timeout=1s
[ "$interval" -ge 2 ] || timeout=500ms
TABLE=swarming_scenarios
targets_csv=$(IFS=,; echo "${TARGETS[*]}")
agents_csv=$(IFS=,; echo "${AGENTS[*]}")

ip link set lo up
for t in "${TARGETS[@]}"; do ip addr add "$t/32" dev lo; done

work=$(mktemp -d /tmp/swarming-scenarios.XXXXXX)
chmod 755 "$work"
declare -A PID=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Agents first (their shutdown notices reach the broker), broker last.
    for k in "${AGENTS[@]}" indexer responder sub broker; do
        [ -n "${PID[$k]:-}" ] || continue
        kill "${PID[$k]}" 2>/dev/null || true
        wait "${PID[$k]}" 2>/dev/null || true
    done
    nft delete table inet "$TABLE" 2>/dev/null || true
    if [ -n "$keep" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

broke() { # the harness itself failed: say why, show the logs, exit 1
    echo "harness: $*" >&2
    for f in "$work"/*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
    exit 1
}
now() { echo "$EPOCHREALTIME"; }
log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

start_broker() {
    mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
    PID[broker]=$!
    local _
    for _ in $(seq 100); do
        mosquitto_pub -p "$PORT" -t scenarios/probe -n 2>/dev/null && return 0
        kill -0 "${PID[broker]}" 2>/dev/null || break
        sleep 0.1
    done
    broke "mosquitto did not start"
}
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$work/mosquitto.conf"
chmod 644 "$work/mosquitto.conf"
start_broker

# Every message, stamped on arrival; the helper reads this log.
sub_log=$work/messages
mosquitto_sub -p "$PORT" -q 1 -F '%U %t %p' -t 'ping/#' -t 'verdict/#' >"$sub_log" 2>"$work/sub.log" &
PID[sub]=$!

# The indexer. Per-target levels and `levels` are used when this indexer
# knows them (the slow target promises 100 ms).
mkdir -m 700 "$work/state"
indexer_yaml() { # $1: with levels
    local t
    printf 'name: scenarios-indexer\nbrokers: ["127.0.0.1:%s"]\nkeepalive: 2s\ntargets:\n' "$PORT"
    for t in "${TARGETS[@]}"; do
        if [ "$1" = 1 ] && [ "$t" = "$T_SLOW" ]; then echo "  - {host: $t, slow: 100ms}"; else echo "  - $t"; fi
    done
    [ "$1" = 1 ] && printf 'levels: {slow: 150ms, lossy: 0.1}\n'
    printf 'file: {path: %s/results.ndjson}\nstate_dir: %s/state\n' "$work" "$work"
    printf 'http: {listen: "off"}\nlog: {level: info, target: stderr}\n'
}
indexer_yaml 1 >"$work/indexer.yaml"
if ! "$bin/swarming-indexer" --check-config -c "$work/indexer.yaml" >/dev/null 2>&1; then
    indexer_yaml 0 >"$work/indexer.yaml"
    "$bin/swarming-indexer" --check-config -c "$work/indexer.yaml" >"$work/check.log" 2>&1 ||
        broke "indexer config refused: $(cat "$work/check.log")"
    log "this indexer has no per-target levels: plain target list, default levels"
fi
"$bin/swarming-indexer" -c "$work/indexer.yaml" --log stderr >"$work/indexer.log" 2>&1 &
PID[indexer]=$!

# The agents, each under its own uid with only CAP_NET_RAW (its own copy
# of the binary: the build directory may not be reachable by other uids).
install -m 755 "$bin/swarming-agent" "$work/swarming-agent"
for a in "${AGENTS[@]}"; do
    printf 'name: %s\nlabels: {provider: %s}\nbrokers: ["127.0.0.1:%s"]\nkeepalive: 2s\n' "$a" "${PROVIDER[$a]}" "$PORT" >"$work/$a.yaml"
    printf 'ping: {interval: %ss, count: %s, timeout: %s}\nlimits: {max_targets: 20, max_rate: 100}\n' "$interval" "$COUNT" "$timeout" >>"$work/$a.yaml"
    printf 'log: {level: info, target: stderr}\n' >>"$work/$a.yaml"
    chmod 644 "$work/$a.yaml"
    u=${UID_OF[$a]}
    setpriv --reuid="$u" --regid="$u" --clear-groups --inh-caps=+net_raw --ambient-caps=+net_raw \
        "$work/swarming-agent" -c "$work/$a.yaml" --log stderr >"$work/$a.log" 2>&1 &
    PID[$a]=$!
done

# ---------------------------------------------------------------- faults
clear_faults() {
    nft delete table inet "$TABLE" 2>/dev/null || true
    nft add table inet "$TABLE"
    if [ -n "${PID[responder]:-}" ]; then
        kill "${PID[responder]}" 2>/dev/null || true
        wait "${PID[responder]}" 2>/dev/null || true
        unset 'PID[responder]'
    fi
}
# $1: rules of the output chain, $2: rules of the input chain (priority 0).
faults() {
    nft -f - <<EOF
table inet $TABLE {
    chain out { type filter hook output priority 0; policy accept; $1 }
    chain in { type filter hook input priority 0; policy accept; $2 }
}
EOF
}
# Echo requests sent by these uids are marked on the way out and dropped on
# arrival: the sender sees a lost echo, not a send error.
MARK=0x5ca
uids() { local a s=(); for a in "$@"; do s+=("${UID_OF[$a]}"); done; (IFS=,; echo "${s[*]}"); }

inject() {
    case $1 in
        down) faults "" "ip daddr $T_DOWN icmp type echo-request drop;" ;;
        uplink) faults "meta skuid $(uids "$A_UPLINK") icmp type echo-request meta mark set $MARK;" \
            "meta mark $MARK drop;" ;;
        provider) faults "ip daddr $T_PROVIDER meta skuid { $(uids "${P1_AGENTS[@]}") } icmp type echo-request meta mark set $MARK;" \
            "meta mark $MARK drop;" ;;
        lossy) faults "" "ip daddr $T_LOSSY icmp type echo-request numgen random mod 100 < $LOSS drop;" ;;
        slow)
            python3 "$helper" respond "$T_SLOW" "$SLOW_MS" >"$work/responder.out" 2>"$work/responder.log" &
            PID[responder]=$!
            local _
            for _ in $(seq 50); do grep -q ready "$work/responder.out" && break; sleep 0.1; done
            grep -q ready "$work/responder.out" || broke "the slow responder did not start"
            # Only the responder (root) may answer for the slow target; the
            # kernel's replies come from no process and are dropped.
            faults "ip saddr $T_SLOW icmp type echo-reply meta skuid 0 accept; ip saddr $T_SLOW icmp type echo-reply drop;" "" ;;
    esac
}

declare -A EXPECT=([down]=down/target [uplink]=trouble [provider]=down/provider/p1
    [lossy]=lossy/target [slow]=slow/target [broker]="no change")
declare -A KIND=([down]=target [uplink]=agent [provider]=target [lossy]=target [slow]=target [broker]=none)
declare -A SUBJECT=([down]=$T_DOWN [uplink]=$A_UPLINK [provider]=$T_PROVIDER [lossy]=$T_LOSSY [slow]=$T_SLOW [broker]="")

common=(--agents "$agents_csv" --targets "$targets_csv")
verdicts=()

# ---------------------------------------------------------------- run
clear_faults
log "swarm: ${AGENTS[*]} (uids ${UID_OF[*]}), targets ${TARGETS[*]}, rounds of $COUNT echoes every ${interval}s; binaries from $bin"
python3 "$helper" ready "$sub_log" "${common[@]}" --timeout $((10 * interval + 20)) ||
    broke "the agents' first rounds did not come (up) from every agent"
log "every agent reports every target up"
# Verdicts: wait for them once; without any, the scenarios still run (the
# faults show in the results) and every one scores `none`.
if python3 "$helper" ready "$sub_log" "${common[@]}" --verdicts --timeout $((12 * interval)); then
    verdicts=(--verdicts)
    log "every verdict healthy"
elif grep -q ' verdict/' "$sub_log"; then
    verdicts=(--verdicts)
    log "verdicts published, but not all healthy yet: carrying on"
else
    log "NOTE: this indexer publishes no verdict/# at all: every scenario will score none"
fi

results=$work/results.jsonl
: >"$results"
for ((i = 1; i <= repeat; i++)); do
    for s in "${scenarios[@]}"; do
        clear_faults
        since=$(now)
        if ! python3 "$helper" ready "$sub_log" "${common[@]}" "${verdicts[@]}" --since "$since" --timeout $((15 * interval + 10)); then
            log "$s: the swarm did not get healthy first; scored wrong"
            printf '{"scenario":"%s","subject":"-","expected":"%s","published":"not healthy before","rounds":null,"seconds":null,"right":false,"false":[],"seen":"-","notes":["not healthy before the fault"]}\n' \
                "$s" "${EXPECT[$s]}" >>"$results"
            continue
        fi
        for a in "${AGENTS[@]}"; do kill -0 "${PID[$a]}" 2>/dev/null || broke "agent $a died"; done
        kill -0 "${PID[indexer]}" 2>/dev/null || broke "the indexer died"
        after=()
        if [ "$s" = broker ]; then
            t0=$(now)
            log "$s: stopping the broker for ${broker_down}s"
            kill "${PID[broker]}"
            wait "${PID[broker]}" 2>/dev/null || true
            sleep "$broker_down" # the outage itself, not a wait for something
            start_broker
            after=(--after "$(now)")
            max_rounds=3
        else
            inject "$s"
            t0=$(now)
            log "$s: fault injected (expect ${KIND[$s]} ${SUBJECT[$s]} ${EXPECT[$s]})"
            max_rounds=5
        fi
        python3 "$helper" observe "$sub_log" "${common[@]}" "${verdicts[@]}" --name "$s" \
            --kind "${KIND[$s]}" --subject "${SUBJECT[$s]}" --expect "${EXPECT[$s]}" \
            --t0 "$t0" "${after[@]}" --max-rounds "$max_rounds" \
            --timeout $(((max_rounds + 4) * interval + 20)) >>"$results" ||
            broke "observe failed for $s"
        tail -n 1 "$results" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("          published: %s%s%s" % (r["published"], "" if r["seconds"] is None else " after %.1f s (%s rounds)" % (r["seconds"], r["rounds"]), "" if r["right"] else "   <- WRONG"))'
    done
done
clear_faults
python3 "$helper" report "$results"
