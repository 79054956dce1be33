# Sourced by .ci/run and packaging/swarm.sh: build as the invoking user,
# run with privileges only what needs them, on a fresh Debian 12 where the
# user may be root without sudo, or a user with sudo and rustup.
#
#   as_user CMD...   runs CMD as the user who owns the toolchain: the caller,
#                    or SUDO_USER when the script was started with sudo (with
#                    that user's login environment, where rustup put cargo)
#   as_root CMD...   runs CMD as root: directly when root, else with sudo
#   test_runner_env  prints CARGO_TARGET_<host>_RUNNER=... that runs test
#                    binaries as root (nothing when the build user is root)

# The invoking user when started with sudo by someone else than root.
_build_user=""
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "${SUDO_USER}" != root ]; then
	_build_user=$SUDO_USER
fi

as_user() {
	if [ -n "$_build_user" ]; then
		# A login shell reads ~/.profile, where rustup adds ~/.cargo/bin.
		sudo -u "$_build_user" -H bash -lc \
			'PATH="$HOME/.cargo/bin:$PATH"; cd "$0" && exec "$@"' "$PWD" "$@"
	else
		if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
			PATH="$HOME/.cargo/bin:$PATH"
			export PATH
		fi
		"$@"
	fi
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		echo "$0: this step needs root and there is no sudo: run it as root" >&2
		return 77
	fi
}

# Prints CARGO_TARGET_<HOST>_RUNNER=... for `env`, so that `cargo test` run
# by as_user builds as the user and runs each test binary as root (raw ICMP
# sockets, network namespaces and setpriv need it); prints nothing when the
# build user is root already.
test_runner_env() {
	if [ "$(id -u)" -eq 0 ] && [ -z "$_build_user" ]; then
		return 0
	fi
	local host
	host=$(as_user rustc -vV | sed -n 's/^host: //p')
	echo "CARGO_TARGET_$(echo "$host" | tr 'a-z.-' 'A-Z__')_RUNNER=sudo --preserve-env=RUST_BACKTRACE,RUST_LOG,CI"
}
