#!/usr/bin/env bash
# Builds the CUDA tests and benchmarks here (nvcc, no GPU needed) and packs what a GPU
# machine needs to run them into one compressed archive, <dir>.tar.xz (default
# .devbin.tar.xz, ignored by git): the executables and the non-CUDA shared libraries they
# use (Google Benchmark). The executables each embed the kernels' fatbinary, so the archive
# is what travels (a lab's carry limit is 64 MiB).
# Then, on the GPU machine, from the repository root: tools/cuda/device_run.sh .devbin.tar.xz
#   MMFUSE_CUDA_ARCHS  architectures to build (default 90: the H100/H200 the lab lends)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-$root/.devbin}"
build="${MMFUSE_DEVICE_BUILD:-$root/build-device}"
export PATH="/usr/local/cuda/bin:$PATH"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMMFUSE_WITH_CUDA=ON \
    -DMMFUSE_BUILD_TESTS=ON -DMMFUSE_BUILD_EXAMPLES=OFF -DMMFUSE_BUILD_BENCHMARKS=ON \
    -DMMFUSE_CUDA_ARCHITECTURES="${MMFUSE_CUDA_ARCHS:-90}" >/dev/null
targets=(test_cuda_runtime test_cuda_pointwise test_cuda_norm test_cuda_gemm test_cuda_attention
         bench_cuda_gemm bench_cuda_attention)
cmake --build "$build" -j "${MMFUSE_JOBS:-$(nproc)}" --target "${targets[@]}"
rm -rf "$out" && mkdir -p "$out/lib"
for t in "${targets[@]}"; do
    find "$build" -type f -name "$t" -perm -u+x -exec cp {} "$out/" \;
done
# Shared libraries that are neither CUDA's nor the C/C++ runtime's travel along.
for t in "$out"/*; do
    [[ -f "$t" ]] || continue
    { ldd "$t" | awk '/=> \//{print $3}' | grep -E 'libbenchmark' || true; } |
        xargs -r -I{} cp -L {} "$out/lib/"
done
strip --strip-unneeded "$out"/test_* "$out"/bench_* 2>/dev/null || true
tar -C "$(dirname "$out")" -cJf "$out.tar.xz" "$(basename "$out")"
ls -la "$out" "$out/lib" "$out.tar.xz"
