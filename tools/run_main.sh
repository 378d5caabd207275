#!/usr/bin/env bash
# The "main job" command (README): installs the apt packages, builds Release and runs the
# project's flagship example, examples/speech_to_image (spoken digit -> generated digit
# images: contrastive audio encoder, cross-attention denoiser, DPM-Solver++; about 1 minute on
# 2 cores with oneDNN, 2.5 without). Build tree: build-ci/main (override with
# MMFUSE_BUILD_ROOT). Extra arguments are passed to the example.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_root="${MMFUSE_BUILD_ROOT:-$root/build-ci}"
jobs="${MMFUSE_JOBS:-$(nproc)}"
main_example=speech_to_image

"$root/tools/install_deps.sh"

cmake -S "$root" -B "$build_root/main" -DCMAKE_BUILD_TYPE=Release \
    -DMMFUSE_BUILD_TESTS=OFF -DMMFUSE_BUILD_EXAMPLES=ON -DMMFUSE_BUILD_BENCHMARKS=OFF
cmake --build "$build_root/main" --target "$main_example" -j "$jobs"
exe="$build_root/main/examples/$main_example"
# The fast CPU backend when this build has it (the example lists what is compiled in).
backend=eigen
if "$exe" --help | grep -q "compiled in:.*onednn"; then backend=onednn; fi
"$exe" --threads "$jobs" --backend "$backend" --out "$build_root/main/out/$main_example" "$@"
