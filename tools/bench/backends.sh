#!/usr/bin/env bash
# One command for the backend benchmarks (issue 7): builds bench_backends (Release, benchmarks
# on, CUDA off), runs it, runs the PyTorch twins (benchmarks/backends/torch_backends.py) at the
# same thread counts in the same invocation, and writes docs/backends-benchmarks.md with
# tools/bench/backends_report.py (also printed).
#
#   tools/bench/backends.sh            the full run (about 10 minutes on 2 idle cores)
#   tools/bench/backends.sh --smoke    one short repetition of everything (checks the pipeline;
#                                      the numbers mean little)
#
# Environment:
#   MMFUSE_BENCH_BUILD     build tree (default: build-bench)
#   MMFUSE_BENCH_THREADS   thread counts, comma-separated (default: 1,2)
#   BACKENDS_BENCH_ARGS    extra Google Benchmark flags (e.g. --benchmark_filter=transformer)
#   BACKENDS_TORCH_ARGS    extra torch_backends.py flags (e.g. --filter transformer)
#   BACKENDS_BENCH_NOTE    paragraph placed above the tables (machine state, ...)
#   BACKENDS_BENCH_OUT     the page to write (default: docs/backends-benchmarks.md)
#   OMP_WAIT_POLICY        passed to both sides as is (PASSIVE on a shared machine)
# Needs oneDNN (libdnnl-dev), libbenchmark-dev and python3 with torch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${MMFUSE_BENCH_BUILD:-$root/build-bench}"
out="${BACKENDS_BENCH_OUT:-$root/docs/backends-benchmarks.md}"
threads="${MMFUSE_BENCH_THREADS:-1,2}"
export MMFUSE_BENCH_THREADS="$threads"

reps=3 min_time=0.2 budget=1.0 min_reps=5
if [[ "${1:-}" == "--smoke" ]]; then reps=1 min_time=0.01 budget=0.05 min_reps=2; fi

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMFUSE_WITH_CUDA=OFF \
    -DMMFUSE_WITH_ONEDNN=ON -DMMFUSE_BUILD_TESTS=OFF -DMMFUSE_BUILD_EXAMPLES=OFF \
    -DMMFUSE_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$build" --target bench_backends

json="$build/backends-benchmarks.json"
torch_json="$build/backends-torch.json"
# shellcheck disable=SC2206  # the *_ARGS variables are lists of flags
extra=(${BACKENDS_BENCH_ARGS:-})
"$build/benchmarks/backends/bench_backends" --benchmark_repetitions="$reps" \
    --benchmark_min_time="$min_time" --benchmark_out="$json" --benchmark_out_format=json \
    "${extra[@]}"

# shellcheck disable=SC2206
torch_extra=(${BACKENDS_TORCH_ARGS:-})
python3 "$root/benchmarks/backends/torch_backends.py" --out "$torch_json" --threads "$threads" \
    --budget "$budget" --min-reps "$min_reps" "${torch_extra[@]}"

python3 "$root/tools/bench/backends_report.py" "$json" "$torch_json" --out "$out" \
    --note "${BACKENDS_BENCH_NOTE:-}" \
    --command "MMFUSE_BENCH_THREADS=$threads tools/bench/backends.sh${1:+ $*}"
