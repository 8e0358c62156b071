#!/usr/bin/env bash
# One command on an Apple-silicon Mac: set up, build the patched llama.cpp, make the 780M / 1.3B / 2.7B
# fixtures and run the whole benchmark suite with powermetrics energy, one results directory per shape.
#
#   bash bench/mac_energy.sh                 # all three shapes, threads 1, 4 and all performance cores
#   SHAPES="780m" THREADS="1,4" bash bench/mac_energy.sh
#
# Needs: Xcode command line tools, `brew install cmake`, Python >= 3.10, and sudo (powermetrics is root-only:
# you are asked for your password once per shape). Disk: the fixtures are random bf16 checkpoints
# (1.5 / 2.7 / 5.3 GB) plus their GGUF files (about 3.6 / 6 / 11 GB); time: about an hour per shape.
# NOT RUN BY US: nobody on this project has a Mac; the script is written from the powermetrics and
# sysctl documentation and has been checked only with `bash -n` and shellcheck-style reading.
set -euo pipefail

cd "$(dirname "$0")/.."
[[ "$(uname -s)" == "Darwin" ]] || { echo "mac_energy.sh: this script is for macOS" >&2; exit 1; }
[[ "$(uname -m)" == "arm64" ]] || echo "mac_energy.sh: warning: not an Apple-silicon Mac; energy keys may differ" >&2

SHAPES="${SHAPES:-780m 1.3b 2.7b}"
PERF_CORES="$(sysctl -n hw.perflevel0.physicalcpu 2>/dev/null || sysctl -n hw.physicalcpu)"
THREADS="${THREADS:-1,4,${PERF_CORES}}"
OUT="${OUT:-bench-results/mac-$(sysctl -n hw.model)-$(date +%Y%m%d)}"

make setup runtime                                  # .venv, torch (CPU), the patched llama.cpp (Metal off)
.venv/bin/pip install -q -e '.[bench]'              # matplotlib for the plots

# dedupe the thread list (e.g. 1,4,4 on a 4-performance-core machine)
THREADS="$(echo "$THREADS" | tr ',' '\n' | awk '!seen[$0]++' | paste -sd, -)"

for shape in $SHAPES; do
    echo "== $shape: threads $THREADS -> $OUT/$shape"
    # make the fixture and its comparison set first (long for 2.7B), so sudo's timestamp is fresh when the
    # suite starts powermetrics (one `sudo -n powermetrics` process kept for the whole suite)
    .venv/bin/bimamba-bench --fixture "$shape" --prepare-only
    sudo -v
    .venv/bin/bimamba-bench --fixture "$shape" --threads "$THREADS" --energy powermetrics \
        --idle-seconds 5 --out "$OUT/$shape"
done
echo "done: $OUT/*/results.md (JSON beside each, plots as PNG)"
