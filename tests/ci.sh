#!/usr/bin/env bash
# The whole test suite, as README's test command and .ci/run run it: installs
# what is missing, checks the flake parses, lints, then runs every test. External
# tools are required here (a missing one fails its test instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup-host.sh --tests
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export HEARTH_REQUIRE_TOOLS=1

echo "== flake.nix parses"
nix-instantiate --parse flake.nix >/dev/null

echo "== clippy"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "clippy is not installed; skipped"
fi

echo "== tests"
cargo test --workspace --locked
