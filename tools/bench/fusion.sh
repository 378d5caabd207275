#!/usr/bin/env bash
# One command for the fusion benchmarks (issue 4): builds bench_fusion (Release, benchmarks
# on), runs it and regenerates docs/fusion-benchmarks.md and docs/fusion-benchmarks.png with
# tools/bench/fusion_report.py.
#
#   tools/bench/fusion.sh            the "small" setting (the issue's common one)
#   tools/bench/fusion.sh --all      both settings ("large" takes several times longer)
#
# Environment:
#   MMFUSE_BENCH_BUILD   build tree (default: build-bench)
#   MMFUSE_BENCH_THREADS Eigen threads (default here: 1; on a loaded machine more threads
#                        mostly wait on each other)
#   FUSION_BENCH_ARGS    extra Google Benchmark flags (e.g. --benchmark_filter=late_)
#   FUSION_BENCH_NOTE    paragraph placed above the table (machine state, ...)
#   FUSION_BENCH_OUT     output folder of the page and chart (default: docs)
# Needs python3 with matplotlib (pip install matplotlib) and libbenchmark-dev.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${MMFUSE_BENCH_BUILD:-$root/build-bench}"
out="${FUSION_BENCH_OUT:-$root/docs}"
filter="--benchmark_filter=/small/"
if [[ "${1:-}" == "--all" ]]; then filter="--benchmark_filter=BM_fusion/"; fi
export MMFUSE_BENCH_THREADS="${MMFUSE_BENCH_THREADS:-1}"

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMFUSE_WITH_CUDA=OFF \
    -DMMFUSE_BUILD_TESTS=OFF -DMMFUSE_BUILD_EXAMPLES=OFF -DMMFUSE_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$build" --target bench_fusion

json="$build/fusion-benchmarks.json"
args=("$filter" --benchmark_repetitions=3 --benchmark_min_time=0.05
      --benchmark_out="$json" --benchmark_out_format=json)
# shellcheck disable=SC2206  # FUSION_BENCH_ARGS is a list of flags
extra=(${FUSION_BENCH_ARGS:-})
"$build/benchmarks/fusion/bench_fusion" "${args[@]}" "${extra[@]}"

python3 "$root/tools/bench/fusion_report.py" "$json" --out-dir "$out" \
    --note "${FUSION_BENCH_NOTE:-}" \
    --command "MMFUSE_BENCH_THREADS=$MMFUSE_BENCH_THREADS tools/bench/fusion.sh${1:+ $*}"
