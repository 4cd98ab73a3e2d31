#!/usr/bin/env bash
# Build benchmarks, each a ratio or figure measured in this run (median of 3):
#   - a full build from a warm store (`hearth build --check` rebuilds everything)
#     vs `qemu-img convert -c -o compression_type=zstd` of the resulting raw disk;
#   - a no-op rebuild (entry present): must be < 0.2 s;
#   - peak memory (max RSS) of a build, for the fixture and for the fixture plus
#     a 1 GiB file: it must not grow with the image.
# Needs the Debian fixture (tests/fixtures/debian-base.sh, as root) in
# HEARTH_FIXTURE_DIR (default target/fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=${HEARTH_FIXTURE_DIR:-$PWD/target/fixtures}
[ -s "$fixture/debian-12-base.qcow2" ] || { echo "no fixture in $fixture: run tests/fixtures/debian-base.sh" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release --locked -q
bin=$PWD/target/release/hearth
work=$(mktemp -d "${TMPDIR:-/tmp}/hearth-bench.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
store=$work/store

sha() { sha256sum "$1" | cut -d' ' -f1; }
recipe() { # recipe NAME [EXTRA_FILE]
  local r=$work/$1.toml
  cat > "$r" <<EOT
name = "$1"
[output]
virtual_size = "6GiB"
headroom = "256MiB"
epoch = 1700000000
[base]
name = "debian-12-base.qcow2"
urls = ["file://$fixture/debian-12-base.qcow2"]
sha256 = "$(sha "$fixture/debian-12-base.qcow2")"
format = "qcow2"
EOT
  for deb in "$fixture"/debs/*.deb; do
    printf '[[debs]]\nname = "%s"\nurls = ["file://%s"]\nsha256 = "%s"\n' \
      "$(basename "$deb" | cut -d_ -f1)" "$deb" "$(sha "$deb")" >> "$r"
  done
  if [ -n "${2:-}" ]; then
    printf '[[files]]\npath = "/var/big"\nurls = ["file://%s"]\nsha256 = "%s"\n' "$2" "$(sha "$2")" >> "$r"
  fi
  echo "$r"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

small=$(recipe bench-small)
"$bin" --store "$store" -q build "$small" >/dev/null   # warm: inputs fetched, entry built
entry=$("$bin" --store "$store" -q build "$small")

raw=$work/disk.raw
qemu-img convert -O raw "$entry/disk.qcow2" "$raw"
builds=(); converts=()
for _ in 1 2 3; do
  builds+=("$(secs "$bin" --store "$store" -q build --check "$small")")
  rm -f "$work/q.qcow2"
  converts+=("$(secs qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$work/q.qcow2")")
done
b=$(printf '%s\n' "${builds[@]}" | median); c=$(printf '%s\n' "${converts[@]}" | median)
printf 'full build from a warm store: hearth %.2f s, qemu-img convert -c zstd of its raw disk %.2f s: ratio %.2fx (target <= 2x, aim <= 1x)\n' "$b" "$c" "$(echo "$b / $c" | bc -l)"
printf '  (image: %s MiB qcow2, %s MiB virtual)\n' "$(( $(stat -c %s "$entry/disk.qcow2") >> 20 ))" "$(( $(stat -c %s "$raw") >> 20 ))"

noops=()
for _ in 1 2 3 4 5; do noops+=("$(secs "$bin" --store "$store" -q build "$small")"); done
printf 'no-op rebuild (entry present): %.3f s (target < 0.2 s)\n' "$(printf '%s\n' "${noops[@]}" | median)"

big_file=$work/big.bin
head -c $((1 << 30)) /dev/urandom > "$big_file"
big=$(recipe bench-big "$big_file")
"$bin" --store "$store" -q fetch "$big" >/dev/null
rss_small=$( { /usr/bin/time -f '%M' "$bin" --store "$store" -q build --check "$small" >/dev/null; } 2>&1 | tail -n1)
"$bin" --store "$store" -q build "$big" >/dev/null
rss_big=$( { /usr/bin/time -f '%M' "$bin" --store "$store" -q build --check "$big" >/dev/null; } 2>&1 | tail -n1)
printf 'peak memory of a build: %s MiB (fixture image), %s MiB (fixture + a 1 GiB file): ratio %.2f\n' \
  "$((rss_small / 1024))" "$((rss_big / 1024))" "$(echo "$rss_big / $rss_small" | bc -l)"
