#!/usr/bin/env bash
# Runs the [cuda] tests and the CUDA benchmarks on a GPU machine, from the binaries that
# tools/cuda/build_for_device.sh gathered. Usage (repository root): device_run.sh BIN [OUT]
# Writes logs and benchmark JSON under OUT (default ./device-out) and prints a summary last.
#   MMFUSE_DEVICE_TESTS=0       skip the tests;  MMFUSE_DEVICE_BENCH=0  skip the benchmarks
#   MMFUSE_TEST_ARGS            extra Catch2 arguments (e.g. a test-name filter)
set -uo pipefail
bin="${1:-.devbin.tar.xz}"
out="${2:-device-out}"
mkdir -p "$out"
if [[ "$bin" == *.tar.xz ]]; then
    mkdir -p /tmp/mmfuse-devbin && tar -C /tmp/mmfuse-devbin -xJf "$bin"
    bin="/tmp/mmfuse-devbin/$(basename "$bin" .tar.xz)"
fi
pylibs="$(python3 - <<'PY' 2>/dev/null
import glob, os, site
paths = []
for sp in site.getsitepackages():
    paths += glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "nvidia", "cu13", "lib"))
print(":".join(paths))
PY
)"
export LD_LIBRARY_PATH="$bin/lib:/usr/local/cuda/lib64:${pylibs}:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/gpu.txt"
summary=()
worst=0  # the worst exit code of any test or benchmark: this script's own exit code
if [[ "${MMFUSE_DEVICE_TESTS:-1}" == "1" ]]; then
    for t in "$bin"/test_cuda_*; do
        name="$(basename "$t")"
        "$t" --rng-seed time ${MMFUSE_TEST_ARGS:-} >"$out/$name.log" 2>&1
        rc=$?
        (( rc > worst )) && worst=$rc
        tail -n 4 "$out/$name.log"
        summary+=("$name: exit $rc, $(grep -E '^(All tests passed|test cases:)' "$out/$name.log" | tail -n 1)")
    done
fi
if [[ "${MMFUSE_DEVICE_BENCH:-1}" == "1" ]]; then
    "$bin/bench_cuda_gemm" --benchmark_format=console --benchmark_out="$out/bench_gemm.json" \
        --benchmark_out_format=json >"$out/bench_gemm.txt" 2>&1
    rc=$?; (( rc > worst )) && worst=$rc
    summary+=("bench_cuda_gemm: exit $rc")
    PYTHONUNBUFFERED=1 python3 benchmarks/cuda/sdpa_compare.py "$bin/bench_cuda_attention" \
        >"$out/attention.md" 2>&1
    rc=$?; (( rc > worst )) && worst=$rc
    summary+=("sdpa_compare: exit $rc")
    cat "$out/bench_gemm.txt" | tail -n 30
    cat "$out/attention.md"
fi
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$worst"
