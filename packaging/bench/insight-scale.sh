#!/usr/bin/env bash
# How judging results ("is it me or the target?") scales with the swarm:
# CPU per result and per once-a-second tick of the indexer's correlator,
# for the same number of (agent, target) pairs with 1, 10, 100, ... agents
# per target: a steady round (all up, as before), the round in which every
# target goes down for everyone, and the confirming round after it. Each
# ratio column is against the first row (one agent per target). No
# network, no disk: examples/insight_scale.rs feeds the correlator
# directly. Prints figures; asserts nothing.
#
#   packaging/bench/insight-scale.sh [PAIRS [MOST]]   (default 10000 pairs,
#   and up to MOST agents per target, default all of them)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example insight_scale
target/release/examples/insight_scale "$@"
