#!/usr/bin/env bash
# Installs everything mmfuse's build, tests, examples and benchmarks need on Debian
# bookworm, from apt only. Runs apt-get as root, or through sudo when not root.
# Set MMFUSE_SKIP_APT=1 to skip this step on a machine that is already set up.
# CUDA is not an apt package here: when nvcc is on PATH (or CUDACXX is set) the build also
# provides the mmfuse::cuda component; without it that component is simply off.
set -euo pipefail

packages=(
    cmake g++ make                          # toolchain (CMake >= 3.24, g++ 12)
    libeigen3-dev                           # Eigen 3.4: core + reference backend
    xtensor-dev libxsimd-dev                # xtensor 0.24 (+ xtl, xsimd 8): interop, .npy
    libdnnl-dev                             # oneDNN 2.6: the mmfuse::onednn component
    catch2                                  # Catch2 v2: tests
    libbenchmark-dev                        # Google Benchmark: benchmarks
    libstb-dev nlohmann-json3-dev           # PNG output, safetensors headers
    libsndfile1-dev                         # audio for the examples
    zlib1g-dev                              # the examples read the gzipped digits
)

if [[ "${MMFUSE_SKIP_APT:-0}" == "1" ]]; then
    echo "install_deps: MMFUSE_SKIP_APT=1, not installing packages"
    exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "install_deps: not root and no sudo; run as root or set MMFUSE_SKIP_APT=1" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
