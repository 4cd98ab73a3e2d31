#!/usr/bin/env bash
# The whole test suite, as README's test command and .ci/run run it: installs
# what is missing, checks the flake parses, lints, then runs every test. External
# tools are required here (a missing one fails its test instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup-host.sh --tests
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export HEARTH_REQUIRE_TOOLS=1

echo "== Kubernetes tools for the platform tests (Helm, kubectl 1.29, kubernetes-validate)"
eval "$(bash tests/tools/k8s-tools.sh target/test-tools)"

echo "== flake.nix parses"
nix-instantiate --parse flake.nix >/dev/null

echo "== clippy"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "clippy is not installed; skipped"
fi

# The Debian fixture base for the boot test needs root (mmdebstrap); CI is root.
if [ "$(id -u)" -eq 0 ]; then
  echo "== Debian fixture base"
  export HEARTH_FIXTURE_DIR="$PWD/target/fixtures"
  bash tests/fixtures/debian-base.sh "$HEARTH_FIXTURE_DIR"
  export HEARTH_VM_TESTS=1
else
  echo "== not root: the Debian fixture and the VM boot test are skipped"
fi

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary, and the
# last of those may be a crate without tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
