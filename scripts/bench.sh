#!/usr/bin/env bash
# Builds the release binary and the benchmark, runs the benchmark against the binary as a child
# process and prints the table (markdown) on stdout; progress goes to stderr.
#
#   scripts/bench.sh                 # the full run: about 30 minutes
#   scripts/bench.sh --quick         # a few runs of each measurement, to check the bench
#   scripts/bench.sh --out table.md  # also write the table to a file
#   scripts/bench.sh --only edge     # one phase (here: RSS under bursts of 2,000 connections)
#
# CARGO_TARGET_DIR is honoured (default: ./target). The builds run under `nice -n 10`; the
# measurement itself does not.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$target"
nice -n 10 cargo build --release --bin solar-charging-backend --example bench >&2
exec "$target/release/examples/bench" --bin "$target/release/solar-charging-backend" "$@"
