#!/bin/bash
# System test of the Debian packages on a booted Debian 12 (systemd as PID 1).
#
# Builds the packages (packaging/build-debs.sh), boots a cached debootstrap'ed
# bookworm root with systemd-nspawn, and inside it, as an operator would:
#   1. apt install mosquitto, mosquitto-clients and both packages: the agent
#      is active (quietly, default config), the indexer is installed, not enabled
#   2. enable --now the indexer, edit both yaml files, reload: results arrive
#      on ping/<target>
#   3. the agent's journal has native entries with structured fields; the
#      STATUS= text shows in systemctl status; WATCHDOG=1 keeps coming; a
#      wedged (SIGSTOPped) indexer is killed by the watchdog and restarted
#   4. both run as swarming; CapEff 0x2000 (agent) and 0 (indexer); the
#      indexer's threads under SCHED_BATCH
#   5. a bad edit + reload: still active, error in journal and status
#   6. stop: Result=success, ExecMainStatus=0; reinstall (upgrade path)
#      restarts; remove keeps conffiles; purge leaves no trace
#   7. systemd-analyze security: agent <= 2.0, indexer <= 1.5; verify is clean
#   security (issue 9, at the end): swarming-broker installed next to both
#      daemons, certificates from swarming-certs, the swarm over mutual TLS
#      with signed lists, ACL and least-privilege checks, analyze <= 1.4 / 1.1
#
# Run as root. Environment:
#   SWARMING_TEST_CACHE  cache directory (default /var/cache/swarming-system-test)
#   SWARMING_TEST_DEBS   directory holding already built .debs (skips the build)
#   SWARMING_TEST_KEEP=1 keep the run's root directory for inspection
#   SWARMING_TEST_MIRROR  Debian mirror for debootstrap (default: the first
#                        .../debian URI of this machine's apt sources)
#   SWARMING_TEST_NETWORK=private (default: the container gets its own network
#                        namespace with only loopback, so nothing on the host,
#                        such as another broker on port 1883, can interfere)
#                        or host (shares the host's; a free port is used)
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache=${SWARMING_TEST_CACHE:-/var/cache/swarming-system-test}
network=${SWARMING_TEST_NETWORK:-private}
suite=bookworm
# The Debian mirror this machine's apt already uses (SWARMING_TEST_MIRROR
# overrides): the first `.../debian` URI of its sources.
mirror=${SWARMING_TEST_MIRROR:-$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
	/etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 | tr -d ' ')}
mirror=${mirror%/}
if [ -z "$mirror" ]; then
	echo "system-test: no Debian mirror in /etc/apt/sources.list*; set SWARMING_TEST_MIRROR" >&2
	exit 1
fi
# A minimal system: minbase plus what booting needs and what the packages
# recommend (ca-certificates). No procps: no /bin/kill, as on many container
# images; `systemctl reload` must work without it.
include=systemd,systemd-sysv,dbus,ca-certificates
# Downloaded into the cached root's apt cache, installed offline by the test.
extra_debs="mosquitto mosquitto-clients"
cache_key="v1 $suite $mirror $include $extra_debs"

passed=0
failed=0
step=setup
t0=$(date +%s)
nspawn_pid=""
ct_pid=""
run_dir=""

say() { printf '[system-test %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
ok() { passed=$((passed + 1)); say "ok   step $step: $*"; }

# in_ct CMD...: runs CMD inside the booted container (bounded).
in_ct() {
	timeout "${CT_TIMEOUT:-120}" nsenter -t "$ct_pid" -a -- \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb \
		SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}
sh_ct() { in_ct sh -c "$1"; }

diagnosed=""
diagnose() {
	[ -n "$ct_pid" ] || return 0
	# Once per step: the first failure's context is the useful one.
	case " $diagnosed " in *" $step "*) return 0 ;; esac
	diagnosed="$diagnosed $step"
	local u
	for u in swarming-agent swarming-indexer; do
		echo "  ----- journalctl -u $u | tail -n 15"
		CT_TIMEOUT=20 in_ct journalctl -u "$u" --no-pager -n 15 2>&1 | sed 's/^/  /' || true
		echo "  ----- systemctl status $u"
		CT_TIMEOUT=20 in_ct systemctl status --no-pager -n 0 "$u" 2>&1 | sed 's/^/  /' || true
	done
	echo "  ----- mosquitto: $(CT_TIMEOUT=10 in_ct systemctl is-active mosquitto 2>&1); log tail:"
	CT_TIMEOUT=10 in_ct tail -n 5 /var/log/mosquitto/mosquitto.log 2>&1 | sed 's/^/  /' || true
	echo "  -----"
}

# fail EXPECTED SEEN: records a failed check, with diagnostics.
fail() {
	failed=$((failed + 1))
	say "FAIL step $step"
	printf '  expected: %s\n' "$1"
	printf '  seen:     %s\n' "$2"
	diagnose
}

# fatal EXPECTED SEEN: a failure the remaining steps cannot go on from.
fatal() {
	fail "$@"
	say "step $step: cannot go on"
	exit 1
}

# wait_for SECONDS CMD...: retries CMD (in the host) every second.
wait_for() {
	local deadline=$(( $(date +%s) + $1 )); shift
	while :; do
		"$@" && return 0
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 1
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		say "stopping the container"
		if [ -n "$ct_pid" ]; then
			CT_TIMEOUT=15 in_ct systemctl poweroff --no-block >/dev/null 2>&1 || true
		fi
		wait_for 40 sh -c "! kill -0 $nspawn_pid 2>/dev/null" ||
			{ kill -TERM "$nspawn_pid" 2>/dev/null; wait_for 20 sh -c "! kill -0 $nspawn_pid 2>/dev/null"; } ||
			{ say "killing systemd-nspawn"; kill -KILL "$nspawn_pid" 2>/dev/null; sleep 1; }
	fi
	if [ -n "$run_dir" ] && [ -d "$run_dir" ]; then
		if [ "${SWARMING_TEST_KEEP:-0}" = 1 ]; then
			say "kept $run_dir"
		else
			rm -rf --one-file-system "$run_dir"
		fi
	fi
	if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
		failed=1
		say "aborted in step $step (exit $rc)"
	fi
	say "summary: $passed checks passed, $failed failed"
	echo "system-test: $passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$rc" -eq 0 ] && exit 0
	exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || { echo "system-test: must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- tools
step=setup
need=""
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v systemd-nspawn >/dev/null || need="$need systemd-container"
command -v nsenter >/dev/null || need="$need util-linux"
command -v flock >/dev/null || need="$need util-linux"
if [ -n "$need" ]; then
	say "installing:$need"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $need >/dev/null || fatal "apt-get install$need" "failed"
fi

# ---------------------------------------------------------------- packages
step=build
if [ -n "${SWARMING_TEST_DEBS:-}" ]; then
	debdir=$SWARMING_TEST_DEBS
else
	say "building the packages (packaging/build-debs.sh --lintian)"
	mkdir -p "$top/target"
	"$top/packaging/build-debs.sh" --lintian >"$top/target/system-test-build.log" 2>&1 ||
		{ tail -n 40 "$top/target/system-test-build.log"
		  fatal "build-debs.sh --lintian succeeds" "it failed (log above)"; }
	debdir=$top/target/debian
fi
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
agent_deb=$debdir/swarming-agent_${version}_${arch}.deb
indexer_deb=$debdir/swarming-indexer_${version}_${arch}.deb
[ -f "$agent_deb" ] && [ -f "$indexer_deb" ] ||
	fatal "$agent_deb and $indexer_deb" "$(ls "$debdir" 2>&1 | tr '\n' ' ')"
ok "built $(basename "$agent_deb") and $(basename "$indexer_deb") (lintian clean)"

# ---------------------------------------------------------------- cached root
step=root
mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w 900 9 || fatal "the cache lock $cache/lock" "still held after 900 s"
pristine=$cache/root
if [ "$(cat "$cache/root.stamp" 2>/dev/null)" != "$cache_key" ]; then
	say "debootstrap $suite into $pristine (cached for later runs)"
	rm -rf --one-file-system "$pristine" "$cache/root.stamp"
	timeout 900 debootstrap --variant=minbase --include="$include" "$suite" "$pristine" "$mirror" \
		>"$cache/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$cache/debootstrap.log"; fatal "debootstrap succeeds" "it failed (log: $cache/debootstrap.log)"; }
	echo swarming-test >"$pristine/etc/hostname"
	cat >"$pristine/etc/hosts" <<-EOF
		127.0.0.1	localhost
		127.0.1.1	swarming-test
		::1	localhost ip6-localhost ip6-loopback
	EOF
	cat >"$pristine/etc/apt/sources.list" <<-EOF
		deb $mirror $suite main
		deb $mirror $suite-updates main
		deb $mirror-security $suite-security main
	EOF
	# Package lists and the mosquitto .debs, so that the test installs offline.
	timeout 600 systemd-nspawn --register=no --keep-unit -q -D "$pristine" --pipe \
		sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only $extra_debs" \
		>"$cache/apt.log" 2>&1 </dev/null ||
		{ tail -n 20 "$cache/apt.log"; fatal "apt-get --download-only $extra_debs" "it failed"; }
	echo "$cache_key" >"$cache/root.stamp"
fi
run_dir=$(mktemp -d "$cache/run.XXXXXX")
cp -a "$pristine" "$run_dir/root"
flock -u 9
mkdir -p "$run_dir/root/root/debs"
cp "$agent_deb" "$indexer_deb" "$run_dir/root/root/debs/"
ok "root ready ($(du -sh "$run_dir/root" | cut -f1))"

# ---------------------------------------------------------------- boot
step=boot
if [ "$network" = host ]; then
	netopt=()
	port=""
	for p in $(shuf -i 20000-60000 -n 50); do
		if ! ss -Htln "sport = :$p" | grep -q .; then port=$p; break; fi
	done
	[ -n "$port" ] || fatal "a free TCP port" "none among 50 tries"
else
	netopt=(--private-network)
	port=$(shuf -i 20000-60000 -n 1)
fi
systemd-nspawn --register=no --keep-unit "${netopt[@]}" -D "$run_dir/root" --boot \
	>"$run_dir/console.log" 2>&1 </dev/null &
nspawn_pid=$!
# The container's init is the nspawn child that has exec'd systemd (an
# intermediate nspawn child, still in the host's namespaces, exists briefly).
find_init() { ct_pid=$(pgrep -P "$nspawn_pid" -x systemd | head -n 1); [ -n "$ct_pid" ]; }
wait_for 30 find_init || fatal "the container's init process" "none after 30 s (console: $(tail -n 5 "$run_dir/console.log"))"
booted() {
	local s
	s=$(CT_TIMEOUT=10 in_ct systemctl is-system-running 2>/dev/null)
	[ "$s" = running ] || [ "$s" = degraded ]
}
wait_for 90 booted || fatal "systemctl is-system-running: running or degraded" \
	"$(CT_TIMEOUT=10 in_ct systemctl is-system-running 2>&1); failed units: $(CT_TIMEOUT=10 in_ct systemctl --failed --plain --no-legend 2>&1 | tr '\n' ' ')"
ok "container booted (init pid $ct_pid, network $network, broker port $port)"

# ---------------------------------------------------------------- helpers
active() { [ "$(CT_TIMEOUT=10 in_ct systemctl is-active "$1" 2>/dev/null)" = active ]; }
prop() { CT_TIMEOUT=10 in_ct systemctl show -p "$2" --value "$1" 2>/dev/null; }
main_pid() { prop "$1" MainPID; }
expect_active() {   # UNIT WHY
	if wait_for 30 active "$1"; then ok "$1 active ($2)"; else
		fail "$1 active ($2)" "$(CT_TIMEOUT=10 in_ct systemctl is-active "$1" 2>&1), Result=$(prop "$1" Result), ExecMainStatus=$(prop "$1" ExecMainStatus)"; fi
}

# ---------------------------------------------------------------- step 1
step=1
# The broker listens only on the chosen port; the agent's default,
# localhost:1883, has nobody behind it: the agent must wait quietly.
sh_ct "mkdir -p /etc/mosquitto/conf.d && printf 'listener $port 127.0.0.1\nallow_anonymous true\n' >/etc/mosquitto/conf.d/swarming-test.conf"
say "apt install mosquitto mosquitto-clients ./swarming-agent ./swarming-indexer"
CT_TIMEOUT=300 in_ct apt-get install -y -o Dpkg::Use-Pty=0 $extra_debs \
	"/root/debs/$(basename "$agent_deb")" "/root/debs/$(basename "$indexer_deb")" >"$run_dir/install.log" 2>&1 ||
	{ tail -n 30 "$run_dir/install.log"; fatal "apt install of mosquitto and both packages succeeds" "it failed (log above)"; }
ok "apt install succeeded"
s=$(sh_ct 'dpkg-query -W -f="\${db:Status-Status}" procps 2>/dev/null; ls /bin/kill /usr/bin/kill 2>/dev/null' 2>&1)
[ -z "$s" ] || [ "$s" = not-installed ] && ok "minimal system: no procps, no /bin/kill" ||
	fail "no procps and no kill binary in the container" "$s"
wait_for 30 active mosquitto || fatal "mosquitto active" "$(CT_TIMEOUT=10 in_ct systemctl is-active mosquitto 2>&1)"
expect_active swarming-agent "started on install, default config, no broker"
e=$(CT_TIMEOUT=10 in_ct systemctl is-enabled swarming-agent 2>&1)
[ "$e" = enabled ] && ok "swarming-agent enabled" || fail "swarming-agent enabled" "$e"
e=$(CT_TIMEOUT=10 in_ct systemctl is-enabled swarming-indexer 2>&1)
a=$(CT_TIMEOUT=10 in_ct systemctl is-active swarming-indexer 2>&1)
[ "$e" = disabled ] && [ "$a" = inactive ] && ok "swarming-indexer installed, disabled and inactive" ||
	fail "swarming-indexer disabled and inactive" "$e, $a"
s=$(sh_ct 'getent passwd swarming-agent swarming-indexer; stat -c "%a %U:%G %n" /etc/swarming/agent.yaml /etc/swarming/indexer.yaml' 2>&1)
if echo "$s" | grep -q '^swarming-agent:' && echo "$s" | grep -q '^swarming-indexer:' &&
	echo "$s" | grep -qx '640 root:swarming-agent /etc/swarming/agent.yaml' &&
	echo "$s" | grep -qx '640 root:swarming-indexer /etc/swarming/indexer.yaml'; then
	ok "users swarming-agent and swarming-indexer exist; each conffile is 0640 root:<its user>"
else
	fail "users swarming-agent, swarming-indexer; agent.yaml 640 root:swarming-agent, indexer.yaml 640 root:swarming-indexer" "$(echo "$s" | tr '\n' ' ')"
fi
s=$(sh_ct 'for f in /usr/share/man/man8/swarming-agent.8.gz /usr/share/man/man8/swarming-indexer.8.gz /usr/share/doc/swarming-agent/copyright /usr/share/doc/swarming-indexer/changelog.gz; do [ -f $f ] || echo "missing $f"; done' 2>&1)
[ -z "$s" ] && ok "man pages, copyright and changelog installed" || fail "man pages and docs installed" "$s"
sleep 8
n=$(sh_ct "journalctl _SYSTEMD_UNIT=swarming-agent.service -o cat --no-pager | wc -l")
r=$(prop swarming-agent NRestarts)
if active swarming-agent && [ "$r" = 0 ] && [ "${n:-999}" -le 20 ]; then
	ok "agent waits quietly for localhost:1883 ($n log lines in ~10 s, no restart)"
else
	fail "agent active, NRestarts=0, at most 20 log lines while no broker answers" \
		"$(CT_TIMEOUT=10 in_ct systemctl is-active swarming-agent), NRestarts=$r, $n lines"
fi

# ---------------------------------------------------------------- step 2
step=2
# The shipped indexer.yaml has no output: the check says which key to set.
s=$(CT_TIMEOUT=20 in_ct swarming-indexer --check-config 2>&1); rc=$?
[ "$rc" = 78 ] && echo "$s" | grep -q "elasticsearch: no output" && ok "shipped indexer.yaml: $s" ||
	fail "swarming-indexer --check-config: exit 78, elasticsearch: no output" "exit $rc: $s"
# The operator chooses an output, then enables the indexer.
sh_ct "printf 'file: {path: /var/lib/swarming/results.ndjson}\n' >>/etc/swarming/indexer.yaml"
CT_TIMEOUT=60 in_ct systemctl enable --now swarming-indexer >/dev/null 2>&1 ||
	fail "systemctl enable --now swarming-indexer succeeds" "it failed"
expect_active swarming-indexer "after enable --now"
sh_ct "cat >/etc/swarming/indexer.yaml" <<EOF
# system test
brokers: ["127.0.0.1:$port"]
targets: [127.0.0.1, 127.0.0.2, localhost]
file: {path: /var/lib/swarming/results.ndjson}
EOF
sh_ct "cat >/etc/swarming/agent.yaml" <<EOF
# system test
brokers: ["127.0.0.1:$port"]
ping: {interval: 2s, count: 1, timeout: 1s}
EOF
agent_pid=$(main_pid swarming-agent)
indexer_pid=$(main_pid swarming-indexer)
for u in swarming-indexer swarming-agent; do
	if CT_TIMEOUT=60 in_ct systemctl reload "$u" >"$run_dir/reload.log" 2>&1; then ok "systemctl reload $u"; else
		fail "systemctl reload $u succeeds" "$(cat "$run_dir/reload.log")"; fi
done
expect_active swarming-indexer "after reload"
expect_active swarming-agent "after reload"
[ "${agent_pid:-0}" != 0 ] && [ "${indexer_pid:-0}" != 0 ] &&
[ "$(main_pid swarming-agent)" = "$agent_pid" ] && [ "$(main_pid swarming-indexer)" = "$indexer_pid" ] &&
	ok "reload kept the processes (no restart)" ||
	fail "same MainPIDs after reload ($agent_pid, $indexer_pid)" "$(main_pid swarming-agent), $(main_pid swarming-indexer)"
# sub TOPIC SECONDS: first message on TOPIC (exit status 0 only if one came).
sub() {
	CT_TIMEOUT=$(($2 + 20)) in_ct mosquitto_sub -h 127.0.0.1 -p "$port" -t "$1" -C 1 -W "$2" \
		2>"$run_dir/sub.err"
}
if w=$(sub watch 10) && echo "$w" | grep -q '127\.0\.0\.2'; then ok "retained 'watch' lists the targets: $(echo "$w" | head -c 200)"; else
	fail "a retained message on 'watch' naming 127.0.0.2" "'${w}' $(cat "$run_dir/sub.err")"; fi
if r=$(sub ping/127.0.0.2 60) && [ -n "$r" ]; then ok "result on ping/127.0.0.2: $(echo "$r" | head -c 300)"; else
	fail "a message on ping/127.0.0.2 within 60 s" "'${r}' $(cat "$run_dir/sub.err")"; fi
# A host name: resolved by glibc inside the sandbox (RestrictAddressFamilies).
if r=$(sub ping/localhost 30) && [ -n "$r" ]; then ok "result on ping/localhost: $(echo "$r" | head -c 200)"; else
	fail "a message on ping/localhost within 30 s" "'${r}' $(cat "$run_dir/sub.err")"; fi
# The indexer's HTTP endpoint on its default address, from inside the
# sandbox (no curl on a minimal system: bash's /dev/tcp).
http_get() {   # PATH
	CT_TIMEOUT=15 in_ct bash -c 'exec 3<>/dev/tcp/127.0.0.1/7883 && printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$1" >&3 && cat <&3' _ "$1" 2>&1
}
m=$(http_get /metrics)
if echo "$m" | grep -q '^HTTP/1.[01] 200' && echo "$m" | grep -qE '^swarming_agents_alive 1(\.0)?$' &&
	echo "$m" | grep -q '^swarming_target_loss_ratio{agent="swarming-test",target="127.0.0.2"}'; then
	ok "GET 127.0.0.1:7883/metrics: $(echo "$m" | grep -E '^swarming_(agents_alive|brokers_connected) ' | tr '\n' ' ')"
else
	fail "/metrics on 127.0.0.1:7883 with swarming_agents_alive 1 and a loss series for 127.0.0.2" "$(echo "$m" | head -n 3 | tr '\r\n' '  ')"
fi
m=$(http_get /api/state)
echo "$m" | grep -q '"name":"swarming-test","labels":{},"alive":true' && ok "GET /api/state: the agent is alive" ||
	fail "/api/state naming the alive agent swarming-test" "$(echo "$m" | tail -n 1 | head -c 300)"

# ---------------------------------------------------------------- step 3
step=3
# Entries the agent's processes sent with the native protocol (systemd's own
# entries about the unit are native too: leave them out).
j=$(sh_ct "journalctl _SYSTEMD_UNIT=swarming-agent.service _TRANSPORT=journal -o json --no-pager" 2>&1)
echo "$j" >"$run_dir/agent-journal.json"
n=$(echo "$j" | grep -c '"_TRANSPORT":"journal"')
[ "$n" -gt 0 ] && ok "$n native journal protocol entries from the agent (_TRANSPORT=journal)" ||
	fail "agent entries with _TRANSPORT=journal" "none; transports: $(sh_ct "journalctl _SYSTEMD_UNIT=swarming-agent.service -o json --no-pager" | grep -o '"_TRANSPORT":"[a-z]*"' | sort | uniq -c | tr '\n' ' ')"
echo "$j" | grep '"_TRANSPORT":"journal"' | grep -q '"SYSLOG_IDENTIFIER":"swarming-agent"' &&
	ok "SYSLOG_IDENTIFIER=swarming-agent" ||
	fail "native entries with SYSLOG_IDENTIFIER=swarming-agent" "$(echo "$j" | grep -o '"SYSLOG_IDENTIFIER":"[^"]*"' | sort | uniq -c | tr '\n' ' ')"
# The ping target is PING_TARGET; TARGET is tracing-journald's own field (the
# Rust module) and must hold one value, never an array.
f=$(echo "$j" | grep -o '"PING_TARGET":"[^"]*"' | grep '127\.0\.0\.[12]' | sort -u | head -n 2 | tr '\n' ' ')
[ -n "$f" ] && ok "structured field PING_TARGET naming a ping target: $f" ||
	fail "a PING_TARGET field with 127.0.0.1 or 127.0.0.2" "$(echo "$j" | grep -o '"[A-Z_]*TARGET":[^,]*' | sort -u | head -n 5 | tr '\n' ' ')"
f=$(echo "$j" | grep -o '"TARGET":\[[^]]*\]' | sort -u | head -n 2 | tr '\n' ' ')
[ -z "$f" ] && ok "TARGET holds one value (the Rust module)" || fail "TARGET with one value" "arrays: $f"
f=$(echo "$j" | grep -o '"\(BROKER\|AGENT\)":"[^"]*"' | sort -u | head -n 4 | tr '\n' ' ')
[ -n "$f" ] && ok "structured fields: $f" || fail "BROKER or AGENT fields" "none (fields seen: $(echo "$j" | head -n 3 | grep -o '"[A-Z_]*":' | sort -u | tr -d '\n'))"
st=$(prop swarming-agent StatusText)
sa=$(CT_TIMEOUT=10 in_ct systemctl status --no-pager -n 0 swarming-agent 2>&1)
if [ -n "$st" ] && echo "$sa" | grep -qF "Status: \"$st"; then ok "systemctl status shows STATUS=: $st"; else
	fail "systemctl status with a Status: line" "StatusText='$st'"; fi
st=$(prop swarming-indexer StatusText)
[ -n "$st" ] && ok "indexer STATUS=: $st" || fail "indexer StatusText" "empty"
# Watchdog: with a short WatchdogSec (a runtime drop-in, as an admin would
# tune it) the agent must keep pinging (WATCHDOG=1) and not be killed.
sh_ct "mkdir -p /run/systemd/system/swarming-agent.service.d &&
	printf '[Service]\nWatchdogSec=3s\n' >/run/systemd/system/swarming-agent.service.d/watchdog.conf &&
	systemctl daemon-reload && systemctl restart swarming-agent"
wait_for 20 active swarming-agent
w1=$(prop swarming-agent WatchdogTimestampMonotonic); sleep 7
w2=$(prop swarming-agent WatchdogTimestampMonotonic)
r=$(prop swarming-agent NRestarts); a=$(CT_TIMEOUT=10 in_ct systemctl is-active swarming-agent)
if [ "$a" = active ] && [ "$r" = 0 ] && [ "${w1:-0}" != 0 ] && [ "${w2:-0}" -gt "${w1:-0}" ]; then
	ok "watchdog (WatchdogSec=3s): WATCHDOG=1 keeps coming, no restart"
else
	fail "active, NRestarts=0, WatchdogTimestamp advancing with WatchdogSec=3s" \
		"$a, NRestarts=$r, WatchdogTimestampMonotonic $w1 -> $w2"
fi
sh_ct "rm -r /run/systemd/system/swarming-agent.service.d && systemctl daemon-reload && systemctl restart swarming-agent"
wait_for 20 active swarming-agent
# A wedged indexer (stopped with SIGSTOP: it sends no WATCHDOG=1) is killed
# by the watchdog and restarted by systemd. TimeoutAbortSec: a stopped
# process cannot act on the watchdog's SIGABRT, so systemd follows with
# SIGKILL after it.
sh_ct "mkdir -p /run/systemd/system/swarming-indexer.service.d &&
	printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' >/run/systemd/system/swarming-indexer.service.d/watchdog.conf &&
	systemctl daemon-reload && systemctl restart swarming-indexer"
wait_for 20 active swarming-indexer
r0=$(prop swarming-indexer NRestarts); p0=$(main_pid swarming-indexer)
sh_ct "kill -STOP $p0"
restarted() { [ "$(prop swarming-indexer NRestarts)" -gt "${r0:-0}" ] && active swarming-indexer && [ "$(main_pid swarming-indexer)" != "$p0" ]; }
if wait_for 40 restarted; then
	ok "a wedged indexer (SIGSTOP) is killed by the watchdog and restarted (NRestarts $r0 -> $(prop swarming-indexer NRestarts))"
else
	fail "indexer restarted by the watchdog after SIGSTOP" \
		"NRestarts=$(prop swarming-indexer NRestarts), active=$(CT_TIMEOUT=10 in_ct systemctl is-active swarming-indexer), Result=$(prop swarming-indexer Result)"
fi
sh_ct "rm -r /run/systemd/system/swarming-indexer.service.d && systemctl daemon-reload && systemctl restart swarming-indexer"
wait_for 20 active swarming-indexer

# ---------------------------------------------------------------- step 4
step=4
caps() {   # UNIT EXPECTED-CAPEFF (the unit runs as the user named like it)
	local pid s uid
	uid=$(sh_ct "id -u $1")
	owned_uids="${owned_uids:-} $uid"
	pid=$(main_pid "$1")
	s=$(sh_ct "grep -E '^(Uid|CapEff|CapAmb|CapBnd):' /proc/$pid/status" 2>&1)
	if [ "${pid:-0}" != 0 ] && echo "$s" | grep -qE "^Uid:[[:space:]]+$uid[[:space:]]+$uid[[:space:]]+$uid[[:space:]]+$uid\$" &&
		echo "$s" | grep -qE "^CapEff:[[:space:]]+$2\$"; then
		ok "$1 (pid $pid) runs as $1 ($uid) with CapEff $2"
	else
		fail "$1 as uid $uid with CapEff $2" "pid $pid: $(echo "$s" | tr '\n\t' '  ')"
	fi
}
caps swarming-agent 0000000000002000
caps swarming-indexer 0000000000000000
# Every thread of the indexer under SCHED_BATCH (policy 3, field 41 of
# /proc/PID/task/TID/stat), as its unit asks.
pid=$(main_pid swarming-indexer)
s=$(sh_ct "for t in /proc/$pid/task/*; do cut -d')' -f2- \$t/stat | awk '{print \$39}'; done | sort | uniq -c" 2>&1)
if [ "${pid:-0}" != 0 ] && echo "$s" | grep -qE '^ *[0-9]+ 3$' && [ "$(echo "$s" | wc -l)" = 1 ]; then
	ok "every thread of swarming-indexer ($(echo "$s" | awk '{print $1}') now) runs under SCHED_BATCH"
else
	fail "every thread of swarming-indexer under SCHED_BATCH (policy 3)" "pid $pid: $(echo "$s" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- step 5
step=5
bad_reload() {   # UNIT FILE
	local since pid st log
	pid=$(main_pid "$1")
	sh_ct "cp $2 $2.good && printf 'bogus_key: 1\n' >>$2"
	since=$(sh_ct "date '+%Y-%m-%d %H:%M:%S'")
	CT_TIMEOUT=60 in_ct systemctl reload "$1" >/dev/null 2>&1 || true
	sleep 2
	if [ "${pid:-0}" != 0 ] && active "$1" && [ "$(main_pid "$1")" = "$pid" ]; then ok "$1 still active after a bad reload (same pid)"; else
		fail "$1 active, same pid $pid, after a bad reload" "$(CT_TIMEOUT=10 in_ct systemctl is-active "$1" 2>&1), pid $(main_pid "$1")"; fi
	log=$(sh_ct "journalctl -u $1 --since '$since' -o cat --no-pager" 2>&1)
	if echo "$log" | grep -F "$2" | grep -q bogus_key; then ok "journal names file and key: $(echo "$log" | grep -F "$2" | grep bogus_key | head -n 1 | head -c 200)"; else
		fail "a journal line naming $2 and bogus_key" "$(echo "$log" | tail -n 5 | tr '\n' ' ')"; fi
	st=$(prop "$1" StatusText)
	echo "$st" | grep -qi "reload failed" && ok "status: $st" || fail "StatusText with 'reload failed'" "'$st'"
	sh_ct "mv $2.good $2"
	CT_TIMEOUT=60 in_ct systemctl reload "$1" >/dev/null 2>&1 || true
}
bad_reload swarming-agent /etc/swarming/agent.yaml
bad_reload swarming-indexer /etc/swarming/indexer.yaml

# ---------------------------------------------------------------- step 7
step=7
score() {   # UNIT MAX
	local out n
	out=$(CT_TIMEOUT=60 in_ct systemd-analyze security --no-pager "$1.service" 2>&1)
	n=$(echo "$out" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9.]*\).*/\1/p')
	if [ -n "$n" ] && awk "BEGIN{exit !($n <= $2)}"; then ok "systemd-analyze security $1: $n <= $2"; else
		fail "systemd-analyze security $1 <= $2" "${n:-no score}: $(echo "$out" | tail -n 2 | tr '\n' ' ')"; fi
}
score swarming-agent 2.0
score swarming-indexer 1.5
# The installed units load cleanly (no man-db in the test root: --man=no).
v=$(CT_TIMEOUT=60 in_ct systemd-analyze verify --man=no swarming-agent.service swarming-indexer.service 2>&1)
[ -z "$v" ] && ok "systemd-analyze verify: no complaint about either unit" ||
	fail "no output from systemd-analyze verify" "$(echo "$v" | head -n 5 | tr '\n' ' ')"

# ---------------------------------------------------------------- step 6
step=6
# Upgrade path: reinstalling runs postinst configure with the old version,
# which restarts running services.
agent_pid=$(main_pid swarming-agent)
indexer_pid=$(main_pid swarming-indexer)
CT_TIMEOUT=180 in_ct apt-get install -y --reinstall -o Dpkg::Use-Pty=0 \
	"/root/debs/$(basename "$agent_deb")" "/root/debs/$(basename "$indexer_deb")" >"$run_dir/upgrade.log" 2>&1 ||
	fail "apt install --reinstall succeeds" "$(tail -n 5 "$run_dir/upgrade.log" | tr '\n' ' ')"
wait_for 30 active swarming-agent; wait_for 30 active swarming-indexer
a=$(main_pid swarming-agent); i=$(main_pid swarming-indexer)
if active swarming-agent && active swarming-indexer && [ "${agent_pid:-0}" != 0 ] && [ "${indexer_pid:-0}" != 0 ] && [ "$a" != "$agent_pid" ] && [ "$i" != "$indexer_pid" ]; then
	ok "upgrade (reinstall) restarted both services (pids $agent_pid->$a, $indexer_pid->$i)"
else
	fail "both active with new pids after reinstall" "agent $agent_pid->$a $(CT_TIMEOUT=10 in_ct systemctl is-active swarming-agent), indexer $indexer_pid->$i $(CT_TIMEOUT=10 in_ct systemctl is-active swarming-indexer)"
fi
grep -q 'yaml' <(sh_ct 'ls /etc/swarming/*.dpkg-* 2>/dev/null') &&
	fail "no .dpkg-* files after reinstall" "$(sh_ct 'ls /etc/swarming')"
for u in swarming-agent swarming-indexer; do
	CT_TIMEOUT=120 in_ct systemctl stop "$u" >/dev/null 2>&1 || true
	r=$(prop "$u" Result); s=$(prop "$u" ExecMainStatus)
	[ "$r" = success ] && [ "$s" = 0 ] && ok "$u stopped cleanly (Result=success, ExecMainStatus=0)" ||
		fail "$u: Result=success ExecMainStatus=0" "Result=$r ExecMainStatus=$s"
done
CT_TIMEOUT=180 in_ct apt-get remove -y -o Dpkg::Use-Pty=0 swarming-agent swarming-indexer >"$run_dir/remove.log" 2>&1 ||
	fail "apt remove succeeds" "$(tail -n 5 "$run_dir/remove.log" | tr '\n' ' ')"
s=$(sh_ct 'grep -c "^brokers:" /etc/swarming/agent.yaml /etc/swarming/indexer.yaml; getent passwd swarming-agent >/dev/null && getent passwd swarming-indexer >/dev/null && echo user' 2>&1)
[ "$(echo "$s" | grep -c ':1$')" = 2 ] && echo "$s" | grep -qx user &&
	ok "remove kept the edited conffiles and the user" || fail "conffiles (edited) and user kept after remove" "$(echo "$s" | tr '\n' ' ')"
CT_TIMEOUT=180 in_ct apt-get purge -y -o Dpkg::Use-Pty=0 swarming-agent swarming-indexer >"$run_dir/purge.log" 2>&1 ||
	fail "apt purge succeeds" "$(tail -n 5 "$run_dir/purge.log" | tr '\n' ' ')"
left=$(sh_ct '
	for p in swarming-agent swarming-indexer; do
		s=$(dpkg-query -W -f="\${db:Status-Status}" $p 2>/dev/null); [ -z "$s" ] || [ "$s" = not-installed ] || echo "dpkg status $p: $s"
		[ ! -e /var/lib/dpkg/info/$p.list ] || echo "/var/lib/dpkg/info/$p.list"
	done
	for f in /etc/swarming /var/lib/swarming /var/lib/private/swarming /usr/sbin/swarming-agent /usr/sbin/swarming-indexer \
		/lib/systemd/system/swarming-agent.service /lib/systemd/system/swarming-indexer.service \
		/usr/lib/sysusers.d/swarming-agent.conf /usr/lib/sysusers.d/swarming-indexer.conf /usr/share/swarming \
		/usr/share/doc/swarming-agent /usr/share/doc/swarming-indexer \
		/var/lib/systemd/deb-systemd-helper-enabled/swarming-agent.service.dsh-also \
		/var/lib/systemd/deb-systemd-helper-enabled/swarming-indexer.service.dsh-also; do
		[ ! -e $f ] || echo "$f"
	done
	find /etc/systemd/system -name "swarming-*" 2>/dev/null
	for u in swarming swarming-agent swarming-indexer; do
		getent passwd $u && echo "user $u"
		getent group $u && echo "group $u"
	done
	for i in '"${owned_uids:-}"'; do find / -xdev -uid "$i" -print 2>/dev/null | head -n 5; done
	true' 2>&1)
[ -z "$left" ] && ok "purge left no trace (files, state, user, group, unit links)" ||
	fail "nothing left after purge" "$(echo "$left" | tr '\n' ' ')"

# ================================================================ security
# Issue 9, kept apart from the steps above: swarming-broker next to both
# daemons, certificates from the documented command (swarming-certs), the
# swarm over mutual TLS with the shipped drop-in and ACL, signed target
# lists, and least privilege on the host. Runs on the purged system left
# by step 6.
step=security
broker_deb=$debdir/swarming-broker_${version}_all.deb
[ -f "$broker_deb" ] || fatal "$broker_deb built (and lintian clean) by build-debs.sh" "$(ls "$debdir" 2>&1 | tr '\n' ' ')"
cp "$broker_deb" "$agent_deb" "$indexer_deb" "$run_dir/root/root/debs/"
# The plain test listener of step 1 (anonymous) must not stay next to ours.
sh_ct "rm -f /etc/mosquitto/conf.d/swarming-test.conf"
CT_TIMEOUT=300 in_ct apt-get install -y -o Dpkg::Use-Pty=0 "/root/debs/$(basename "$broker_deb")" \
	"/root/debs/$(basename "$agent_deb")" "/root/debs/$(basename "$indexer_deb")" >"$run_dir/install-sec.log" 2>&1 ||
	{ tail -n 30 "$run_dir/install-sec.log"; fatal "apt install of swarming-broker and both daemons succeeds" "it failed (log above)"; }
ok "apt install swarming-broker swarming-agent swarming-indexer"
wait_for 30 active mosquitto && ok "mosquitto active with the swarming drop-in (TLS listener 8883)" ||
	fatal "mosquitto active with the drop-in" "$(CT_TIMEOUT=10 in_ct systemctl is-active mosquitto 2>&1); $(CT_TIMEOUT=10 in_ct tail -n 5 /var/log/mosquitto/mosquitto.log 2>&1 | tr '\n' ' ')"
s=$(sh_ct 'stat -c "%a %U:%G %n" /etc/mosquitto/swarming /etc/mosquitto/swarming/ca.key /etc/mosquitto/swarming/broker.key' 2>&1)
echo "$s" | grep -qx '750 root:mosquitto /etc/mosquitto/swarming' && echo "$s" | grep -qx '600 root:root /etc/mosquitto/swarming/ca.key' &&
	echo "$s" | grep -qx '640 root:mosquitto /etc/mosquitto/swarming/broker.key' &&
	ok "CA and broker certificate made at installation; CA key root-only" ||
	fail "/etc/mosquitto/swarming 750 root:mosquitto, ca.key 600 root:root, broker.key 640 root:mosquitto" "$(echo "$s" | tr '\n' ' ')"

# The documented commands (docs/security.md): client certificates, files
# installed with their owners, the watch key.
sh_ct 'set -e; cd /etc/mosquitto/swarming
	swarming-certs -d . agent probe-st >/dev/null
	swarming-certs -d . indexer >/dev/null
	install -m 0644 ca.pem indexer.pem /etc/swarming/tls/
	install -m 0644 agent-probe-st.pem /etc/swarming/tls/agent.pem
	install -o root -g swarming-agent -m 0640 agent-probe-st.key /etc/swarming/tls/agent.key
	install -o root -g swarming-indexer -m 0640 indexer.key /etc/swarming/tls/indexer.key' >"$run_dir/certs.log" 2>&1 &&
	ok "swarming-certs: agent and indexer certificates installed" ||
	fail "swarming-certs agent/indexer and install succeed" "$(tr '\n' ' ' <"$run_dir/certs.log")"
pub=$(sh_ct 'swarming-indexer --gen-watch-key /etc/swarming/watch.key 2>/dev/null &&
	chgrp swarming-indexer /etc/swarming/watch.key && chmod 0640 /etc/swarming/watch.key' | grep '^ed25519:')
[ -n "$pub" ] && ok "swarming-indexer --gen-watch-key: $pub" || fail "a public key printed by --gen-watch-key" "none"
tls_dir=/etc/swarming/tls
sh_ct "cat >/etc/swarming/indexer.yaml" <<EOF
# system test: mutual TLS
brokers: ["mqtts://localhost"]
tls: {ca: $tls_dir/ca.pem, cert: $tls_dir/indexer.pem, key: $tls_dir/indexer.key}
watch_key: /etc/swarming/watch.key
targets: [127.0.0.1, 127.0.0.2]
file: {path: /var/lib/swarming/results.ndjson}
EOF
# No name: the agent takes its certificate's CN.
sh_ct "cat >/etc/swarming/agent.yaml" <<EOF
# system test: mutual TLS
brokers: ["mqtts://localhost"]
tls: {ca: $tls_dir/ca.pem, cert: $tls_dir/agent.pem, key: $tls_dir/agent.key}
watch_keys: ["$pub"]
deny: [127.0.0.1/32]
ping: {interval: 2s, count: 1, timeout: 1s}
EOF
sec_since=$(sh_ct "date '+%Y-%m-%d %H:%M:%S'")
CT_TIMEOUT=60 in_ct systemctl enable --now swarming-indexer >/dev/null 2>&1 || true
CT_TIMEOUT=60 in_ct systemctl restart swarming-agent swarming-indexer >/dev/null 2>&1 || true
expect_active swarming-indexer "over mqtts://localhost"
expect_active swarming-agent "over mqtts://localhost"
# ssub WHO TOPIC SECONDS: first message on TOPIC, connected with WHO's certificate.
ssub() {
	CT_TIMEOUT=$(($3 + 20)) in_ct mosquitto_sub -h localhost -p 8883 --cafile $tls_dir/ca.pem \
		--cert "/etc/mosquitto/swarming/$1.pem" --key "/etc/mosquitto/swarming/$1.key" \
		-t "$2" -C 1 -W "$3" 2>"$run_dir/ssub.err"
}
if r=$(ssub indexer ping/127.0.0.2 60) && echo "$r" | grep -q '"agent":"probe-st"'; then
	ok "over mTLS, result of agent probe-st (name from its CN): $(echo "$r" | head -c 200)"
else
	fail "a result from probe-st on ping/127.0.0.2 within 60 s" "'${r:-}' $(cat "$run_dir/ssub.err")"
fi
if wait_for 30 sh -c "nsenter -t $ct_pid -a grep -q '\"probe-st\"' /var/lib/swarming/results.ndjson 2>/dev/null"; then
	ok "the indexer (mTLS) wrote probe-st's results"
else
	fail "probe-st results in /var/lib/swarming/results.ndjson" "$(sh_ct 'tail -c 300 /var/lib/swarming/results.ndjson' 2>&1)"
fi
# The running agent's own lines (the one started at install had no watch_keys).
j=$(sh_ct "journalctl _PID=$(main_pid swarming-agent) --since '$sec_since' -o cat --no-pager" 2>&1)
echo "$j" | grep -q 'target refused by the agent' && echo "$j" | grep -q 'target list applied' &&
	ok "signed list applied; 127.0.0.1 refused by deny" ||
	fail "journal: target list applied, target refused by the agent's rules" "$(echo "$j" | tail -n 5 | tr '\n' ' ')"
! echo "$j" | grep -q 'no watch_keys configured' && ok "agent with watch_keys does not trust any publisher" ||
	fail "no 'no watch_keys configured' line" "present"
if CT_TIMEOUT=30 in_ct mosquitto_sub -h localhost -p 8883 --cafile $tls_dir/ca.pem -t '#' -C 1 -W 5 >/dev/null 2>&1; then
	fail "a client without a certificate is refused" "it received a message"
else
	ok "a client without a certificate is refused"
fi
# An agent's certificate publishing a retained watch: dropped by the ACL,
# the retained list stays the indexer's signed one.
CT_TIMEOUT=30 in_ct mosquitto_pub -h localhost -p 8883 --cafile $tls_dir/ca.pem \
	--cert /etc/mosquitto/swarming/agent-probe-st.pem --key /etc/mosquitto/swarming/agent-probe-st.key \
	-q 1 -r -t watch -m '{"targets":["127.0.0.9"]}' >/dev/null 2>&1
if w=$(ssub agent-probe-st watch 10) && echo "$w" | grep -q '"signature":"ed25519:' && ! echo "$w" | grep -q 127.0.0.9; then
	ok "the ACL kept the agent's watch out; the retained list is the signed one"
else
	fail "retained watch signed by the indexer, without 127.0.0.9" "'${w:-}' $(cat "$run_dir/ssub.err")"
fi

# Least privilege: each daemon reads its own files only.
as() { sh_ct "setpriv --reuid=$1 --regid=$1 --init-groups sh -c '$2' >/dev/null 2>&1"; }
bad=""
for f in /etc/swarming/indexer.yaml /etc/swarming/tls/indexer.key /etc/swarming/watch.key /var/lib/swarming/results.ndjson; do
	as swarming-agent "cat $f" && bad="$bad agent-reads:$f"
done
as swarming-indexer "cat /etc/swarming/tls/agent.key" && bad="$bad indexer-reads:agent.key"
as swarming-agent "cat /etc/swarming/tls/agent.key" || bad="$bad agent-cannot-read-own-key"
as swarming-indexer "cat /etc/swarming/tls/indexer.key /etc/swarming/watch.key" || bad="$bad indexer-cannot-read-own-keys"
[ -z "$bad" ] && ok "the agent cannot read the indexer's config, keys or state; each reads its own key" ||
	fail "file access by user as documented" "$bad"
score swarming-agent 1.4
score swarming-indexer 1.1

# Purge the broker package: its CA and certificates go, mosquitto stays up.
CT_TIMEOUT=180 in_ct apt-get purge -y -o Dpkg::Use-Pty=0 swarming-broker >"$run_dir/purge-broker.log" 2>&1 ||
	fail "apt purge swarming-broker succeeds" "$(tail -n 5 "$run_dir/purge-broker.log" | tr '\n' ' ')"
left=$(sh_ct 'ls -d /etc/mosquitto/swarming /etc/mosquitto/conf.d/swarming.conf /etc/mosquitto/swarming.acl /usr/sbin/swarming-certs 2>/dev/null')
[ -z "$left" ] && wait_for 30 active mosquitto && ok "purge swarming-broker: files gone, mosquitto active" ||
	fail "nothing of swarming-broker left, mosquitto active" "$left $(CT_TIMEOUT=10 in_ct systemctl is-active mosquitto 2>&1)"

step=done
say "all steps run"
