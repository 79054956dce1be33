#!/bin/sh
# Builds target/debian/swarming-agent_<version>_<arch>.deb,
# target/debian/swarming-indexer_<version>_<arch>.deb and
# target/debian/swarming-broker_<version>_all.deb.
#
# Needs: Debian 12 (root, or sudo for apt-get), the rustup toolchain (cargo).
# Installs with apt-get what it lacks: debhelper (and lintian with --lintian).
# Debian's rustc/cargo are never used (bookworm's 1.63 is too old).
#
# Usage: packaging/build-debs.sh [--lintian]
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
run_lintian=no
for arg in "$@"; do
	case $arg in
	--lintian) run_lintian=yes ;;
	-h|--help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "build-debs: unknown argument $arg" >&2; exit 2 ;;
	esac
done

log() { printf 'build-debs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools ----------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
	PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; export PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install the rustup toolchain (https://rustup.rs)"
case $(command -v cargo) in
/usr/bin/cargo) log "warning: /usr/bin/cargo is Debian's; the rustup toolchain is expected" ;;
esac

need=""
command -v dh >/dev/null 2>&1 || need="$need debhelper"
command -v dpkg-buildpackage >/dev/null 2>&1 || need="$need dpkg-dev"
if [ "$run_lintian" = yes ] && ! command -v lintian >/dev/null 2>&1; then
	need="$need lintian"
fi
if [ -n "$need" ]; then
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	log "installing:$need"
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# --- version --------------------------------------------------------------
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
arch=$(dpkg --print-architecture)
log "version $version ($arch)"

# --- build in a copy of the tree (dpkg-buildpackage writes to ..) ---------
out="$top/target/debian"
src="$out/build/swarming-$version"
rm -rf "$out/build"
mkdir -p "$src"
tar -C "$top" --exclude=./target --exclude=./.git -cf - . | tar -C "$src" -xf -
rm -rf "$src/debian/.debhelper" "$src/debian/swarming-agent" "$src/debian/swarming-indexer" \
	"$src/debian/swarming-broker"

# The package version is Cargo.toml's: add a changelog entry when the
# committed debian/changelog is behind.
clver=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
if [ "$clver" != "$version" ]; then
	log "debian/changelog is at $clver: adding an entry for $version"
	{
		printf 'swarming (%s) unstable; urgency=medium\n\n' "$version"
		printf '  * Upstream version %s.\n\n' "$version"
		printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l "$src/debian/changelog" -S Maintainer)" \
			"$(date -R)"
		cat "$src/debian/changelog"
	} > "$src/debian/changelog.new"
	mv "$src/debian/changelog.new" "$src/debian/changelog"
fi

# Reuse the main target directory so cargo's cache is shared with
# ordinary builds; two jobs at most (shared two-core machines).
jobs=${SWARMING_BUILD_JOBS:-2}
(
	cd "$src"
	CARGO_TARGET_DIR="$top/target" \
	DEB_BUILD_OPTIONS="parallel=$jobs noautodbgsym ${DEB_BUILD_OPTIONS:-}" \
		dpkg-buildpackage -b --no-sign -uc -us >"$out/build.log" 2>&1
) || { tail -n 40 "$out/build.log" >&2; die "dpkg-buildpackage failed (log: $out/build.log)"; }

debs=""
for pkg in swarming-agent:$arch swarming-indexer:$arch swarming-broker:all; do
	a=${pkg#*:} pkg=${pkg%:*}
	deb="$out/build/${pkg}_${version}_${a}.deb"
	[ -f "$deb" ] || die "missing $deb"
	mv -f "$deb" "$out/"
	debs="$debs $out/${pkg}_${version}_${a}.deb"
done
log "built:"
for d in $debs; do printf '%s\n' "$d"; done

if [ "$run_lintian" = yes ]; then
	log "lintian (errors and warnings fail)"
	# shellcheck disable=SC2086
	lintian --fail-on error,warning --tag-display-limit 0 $debs
fi
