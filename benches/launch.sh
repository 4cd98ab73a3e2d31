#!/usr/bin/env bash
# Launch benchmarks (median of 3), against a baseline measured in the same run:
#   - host-side launch of three nodes (PKI, overlays, seeds, network, define,
#     start: what `hearth launch` prints as "host side took") vs the same steps
#     as shell tools: 3x `qemu-img create`, 3x `genisoimage` of the same seed
#     files, `virsh define` + `virsh start` of the same domain XML;
#   - host-side reinstall (destroy the three, recreate, start) vs the same.
# Target: launch < 1 s, reinstall < 2 s.
#
# Needs root and the Debian fixture (tests/fixtures/debian-base.sh) in
# HEARTH_FIXTURE_DIR (default target/fixtures). Like tests/vm_appliance.rs it
# runs libvirtd and virtlogd under `tini -s` inside a network namespace of its
# own, so the guests' 192.168.122.0/24 exists only there; no libvirtd may be
# running already. The guests run under TCG and are destroyed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "launch benchmark: needs root (libvirtd in a network namespace)" >&2; exit 1; }
fixture=${HEARTH_FIXTURE_DIR:-$PWD/target/fixtures}
[ -s "$fixture/debian-12-base.qcow2" ] || { echo "no fixture in $fixture: run tests/fixtures/debian-base.sh" >&2; exit 1; }
if virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "launch benchmark: a libvirtd already runs; this benchmark starts its own in a namespace" >&2
  exit 1
fi
cargo build --release --locked -q
bin=$PWD/target/release/hearth
ns=hearth-bench
V="virsh -c qemu:///system"
work=$(mktemp -d "${TMPDIR:-/tmp}/hearth-launch-bench.XXXXXX")
chmod 755 "$work"
kvm_mode=""
cleanup() {
  set +e
  for d in $($V list --all --name 2>/dev/null | grep -E '^(bench|base)-'); do
    $V destroy "$d" >/dev/null 2>&1; $V undefine "$d" >/dev/null 2>&1
  done
  "$bin" --store "$work/store" --state "$work/state" -q destroy "$work/appliance.toml" >/dev/null 2>&1
  for i in 1 2 3; do
    for scope in --config --live; do
      $V net-update default delete ip-dhcp-host "<host mac='52:54:00:be:00:0$i'/>" $scope >/dev/null 2>&1
    done
  done
  $V net-destroy default >/dev/null 2>&1
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  sleep 1
  ip netns del "$ns" 2>/dev/null
  [ -n "$kvm_mode" ] && chmod "$kvm_mode" /dev/kvm && chgrp "$kvm_group" /dev/kvm
  chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT

# As udev does on a real host (see tests/vm_appliance.rs): without it libvirtd
# probes QEMU again on every define.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  kvm_mode=$(stat -c %a /dev/kvm); kvm_group=$(stat -c %g /dev/kvm)
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
(ip netns exec "$ns" tini -s -- virtlogd >/dev/null 2>&1 &)
(ip netns exec "$ns" tini -s -- libvirtd >/dev/null 2>&1 &)
for _ in $(seq 1 60); do $V version >/dev/null 2>&1 && break; sleep 0.5; done

sha() { sha256sum "$1" | cut -d' ' -f1; }
cat > "$work/node.toml" <<EOT
name = "bench-node"
[output]
virtual_size = "3GiB"
headroom = "256MiB"
epoch = 1700000000
[base]
name = "debian-12-base.qcow2"
urls = ["file://$fixture/debian-12-base.qcow2"]
sha256 = "$(sha "$fixture/debian-12-base.qcow2")"
format = "qcow2"
EOT
"$bin" --store "$work/store" -q build "$work/node.toml" >/dev/null
chmod 755 "$work/store"
cat > "$work/appliance.toml" <<EOT
name = "bench"
domain_type = "qemu"
recipe = "node.toml"
storage_dir = "storage"
[[nodes]]
name = "cp"
role = "control-plane"
ip = "192.168.122.10"
vcpus = 2
memory_mib = 1792
disk_gib = 10
[[nodes]]
name = "w1"
role = "worker"
ip = "192.168.122.11"
vcpus = 1
memory_mib = 1024
disk_gib = 10
[[nodes]]
name = "w2"
role = "worker"
ip = "192.168.122.12"
vcpus = 1
memory_mib = 1024
disk_gib = 10
EOT
h() { ip netns exec "$ns" "$bin" --store "$work/store" --state "$work/state" "$@"; }
took() { sed -n "s/.*$1 took \([0-9.]*\) s.*/\1/p" | tail -n1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The baseline: the same host-side steps with shell tools, on the files and
# XML hearth made (domains renamed base-*): reservations on `default` (when
# asked), overlays, seeds, define, start.
macs=()
baseline_up() { # baseline_up reserve|keep
  local s e n i=0 scope active
  s=$(date +%s.%N)
  if [ "$1" = reserve ]; then
    active=$($V net-info default | awk '/^Active:/ {print $2}')
    if [ "$active" = yes ]; then scope="--live --config"; else scope="--config"; fi
    for n in cp w1 w2; do
      i=$((i + 1))
      $V net-update default add-last ip-dhcp-host "<host mac='52:54:00:be:00:0$i' name='base-$n' ip='192.168.122.2$i'/>" $scope >/dev/null
    done
    [ "$active" = yes ] || $V net-start default >/dev/null
  fi
  for n in cp w1 w2; do
    qemu-img create -q -f qcow2 -F qcow2 -b "$image/disk.qcow2" "$work/base-$n.qcow2" 10G
    genisoimage -quiet -output "$work/base-$n.iso" -volid cidata -joliet -rock \
      "$work/seeds/$n/user-data" "$work/seeds/$n/meta-data" "$work/seeds/$n/network-config"
    $V define "$work/base-$n.xml" >/dev/null
    $V start "base-$n" >/dev/null
  done
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}
baseline_down() { # baseline_down [unreserve]
  local n i=0
  for n in cp w1 w2; do
    i=$((i + 1))
    $V destroy "base-$n" >/dev/null 2>&1 || true
    $V undefine "base-$n" >/dev/null
    rm -f "$work/base-$n.qcow2" "$work/base-$n.iso"
    if [ "${1:-}" = unreserve ]; then
      $V net-update default delete ip-dhcp-host "<host mac='52:54:00:be:00:0$i'/>" --live --config >/dev/null
    fi
  done
}
# `default` as Debian ships it (defined, not started) or as Ubuntu runs it.
default_state() {
  if [ "$1" = inactive ]; then $V net-destroy default >/dev/null 2>&1 || true
  else $V net-start default >/dev/null 2>&1 || true; fi
}

declare -A hl hr bl br
for case in inactive running; do
  for i in 1 2 3; do
    default_state "$case"
    h -v launch "$work/appliance.toml" --wait running 2>"$work/launch.err" >/dev/null
    grep "host side:" "$work/launch.err" | sed "s/^/  ($case default) /" >&2
    hl[$case]+="$(took "host side" < "$work/launch.err") "
    hr[$case]+="$(h reinstall "$work/appliance.toml" --wait running 2>&1 >/dev/null | took "reinstall host side") "
    if [ -z "${image:-}" ]; then
      image=$(sed -n 's/.*"image": "\(.*\)".*/\1/p' "$work/state/bench/launched.json")
      cp -r "$work/state/bench/seeds" "$work/seeds"
      for n in cp w1 w2; do
        $V dumpxml "bench-$n" --inactive | sed -e "s|<name>bench-$n</name>|<name>base-$n</name>|" \
          -e '/<uuid>/d' -e "/<mac address/d" -e "s|$work/storage/bench-$n.qcow2|$work/base-$n.qcow2|" \
          -e "s|$work/storage/bench-$n.seed.iso|$work/base-$n.iso|" \
          -e "s|$work/storage/bench-$n.console.log|$work/base-$n.log|" \
          -e '/<metadata>/,/<\/metadata>/d' > "$work/base-$n.xml"
      done
    fi
    h -q destroy "$work/appliance.toml" >/dev/null
    default_state "$case"
    bl[$case]+="$(baseline_up reserve) " || exit 1
    # Reinstall, shell style: destroy and undefine, remove files, recreate, start.
    s=$(date +%s.%N); baseline_down; baseline_up keep >/dev/null; e=$(date +%s.%N)
    br[$case]+="$(echo "$e - $s" | bc -l) "
    baseline_down unreserve
  done
done
for case in inactive running; do
  echo "($case default) hearth launch: ${hl[$case]}; reinstall: ${hr[$case]}; shell launch: ${bl[$case]}; reinstall: ${br[$case]}"
  l=$(printf '%s\n' ${hl[$case]} | median); b=$(printf '%s\n' ${bl[$case]} | median)
  r=$(printf '%s\n' ${hr[$case]} | median); c=$(printf '%s\n' ${br[$case]} | median)
  printf 'host-side launch, 3 nodes, `default` %-8s  hearth %.3f s   shell tools %.3f s   ratio %.2fx   (target < 1 s)\n' \
    "$case:" "$l" "$b" "$(echo "$l / $b" | bc -l)"
  printf 'host-side reinstall, 3 nodes, `default` %-8s hearth %.3f s   shell tools %.3f s   ratio %.2fx   (target < 2 s)\n' \
    "$case:" "$r" "$c" "$(echo "$r / $c" | bc -l)"
done
