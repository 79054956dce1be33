#!/usr/bin/env bash
# CPU per result of the indexer's intake, in process: parse, validate,
# judge, write the check document, update the swarm state and agents, for
# results shaped like indexer-vs-broker.sh's (200 agents, one listed
# target, rounds in order), beside the anchor: parsing the same payload
# with serde_json alone. No network, no disk (examples/intake_cost.rs);
# best of three passes. Prints figures; asserts nothing. The throughput
# benchmark measures the same work in place, with the broker, the disk and
# Elasticsearch around it.
#
#   packaging/bench/intake-cost.sh [RESULTS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example intake_cost
target/release/examples/intake_cost "$@"
