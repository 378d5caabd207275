#!/usr/bin/env bash
# The "all tests" command (README; .ci/run calls exactly this):
#   1. installs the apt packages (tools/install_deps.sh),
#   2. builds Release with tests, examples and benchmarks, runs every test with ctest
#      (unit, compile-fail, install-and-consume),
#   3. builds the core, ops, interop and nn tests again in Debug with ASan + UBSan and runs them.
# Build trees: build-ci/release and build-ci/asan (override with MMFUSE_BUILD_ROOT).
# Parallelism: MMFUSE_JOBS (default: number of cores).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${MMFUSE_BUILD_ROOT:-$root/build-ci}"
jobs="${MMFUSE_JOBS:-$(nproc)}"

"$root/tools/install_deps.sh"

# The CUDA toolkit is not an apt package: when it is installed (nvcc under /usr/local/cuda),
# the build also compiles and links the CUDA backend and its [cuda] tests, which report
# SKIPPED without a GPU. CI compiles sm_90 here and sm_80 in the install-and-consume test.
if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
cuda_archs="${MMFUSE_CUDA_ARCHS:-90}"

echo "== Release build: every test"
cmake -S "$root" -B "$build_root/release" -DCMAKE_BUILD_TYPE=Release \
    -DMMFUSE_BUILD_TESTS=ON -DMMFUSE_BUILD_EXAMPLES=ON -DMMFUSE_BUILD_BENCHMARKS=ON \
    -DMMFUSE_CUDA_ARCHITECTURES="$cuda_archs"
cmake --build "$build_root/release" -j "$jobs"
# A failure here is reported at the end, after the sanitizer stage has run too.
release_status=0
ctest --test-dir "$build_root/release" --output-on-failure -j "$jobs" || release_status=$?

echo "== Debug build with AddressSanitizer + UndefinedBehaviorSanitizer: core, ops, interop, nn"
cmake -S "$root" -B "$build_root/asan" -DCMAKE_BUILD_TYPE=Debug \
    -DMMFUSE_SANITIZE=address,undefined \
    -DMMFUSE_BUILD_TESTS=ON -DMMFUSE_BUILD_EXAMPLES=OFF -DMMFUSE_BUILD_BENCHMARKS=OFF
cmake --build "$build_root/asan" --target mmfuse_sanitize_tests -j "$jobs"
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    ctest --test-dir "$build_root/asan" -L '^(core|ops|interop|nn)$' --output-on-failure -j "$jobs"

if [[ "$release_status" != "0" ]]; then
    echo "== the Release tests FAILED (see above); the sanitizer tests passed" >&2
    exit "$release_status"
fi
echo "== all tests passed"
