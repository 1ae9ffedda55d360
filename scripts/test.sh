#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then format check, clippy
# with warnings as errors, and every test (unit, boundary and end-to-end) in one debug profile.
# The multi-host tests make network namespaces and nftables rules: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run this binary; build it once here rather than from inside a test.
cargo build -p shoal-cli --bin shoal
export SHOAL_BIN="$PWD/target/debug/shoal"
# The end-to-end tests start whole clusters; two at a time is what 2 cores carry.
cargo test --workspace -- --test-threads=2
