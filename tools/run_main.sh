#!/usr/bin/env bash
# The "main job" command (README): installs the apt packages, builds Release and runs the
# project's main example (examples/01_quickstart until the flagship example exists). Build tree: build-ci/main
# (override with MMFUSE_BUILD_ROOT). Extra arguments are passed to the example.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${MMFUSE_BUILD_ROOT:-$root/build-ci}"
jobs="${MMFUSE_JOBS:-$(nproc)}"
main_example=01_quickstart

"$root/tools/install_deps.sh"

cmake -S "$root" -B "$build_root/main" -DCMAKE_BUILD_TYPE=Release \
    -DMMFUSE_BUILD_TESTS=OFF -DMMFUSE_BUILD_EXAMPLES=ON -DMMFUSE_BUILD_BENCHMARKS=OFF
cmake --build "$build_root/main" --target "$main_example" -j "$jobs"
"$build_root/main/examples/$main_example" --out "$build_root/main/out" "$@"
