#pragma once
// Helpers for the [cuda] tests: moving host tensors to the GPU and back, poisoning device
// outputs, and the CUDA stream under test. Every test compares the CUDA backend against the
// Eigen reference on fresh random inputs (test_util.hpp), with device outputs poisoned
// (all bits set: NaN in f32, bf16 and f16) before each run, so an unwritten element fails.

#include <catch2/catch.hpp>

#include <cmath>
#include <span>
#include <vector>

#include "mmfuse/backend/cuda/device.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/core/tensor.hpp"

namespace mmfuse_test::gpu {

namespace mc = mmfuse::backend::cuda;

/// The default stream of GPU 0 (the test main skips the binary when there is none).
inline mc::cuda_stream& stream() {
    return static_cast<mc::cuda_stream&>(mc::cuda_device::instance(0).default_stream());
}

/// A device copy of host tensor `h`.
template <class T>
mc::device_tensor<T> upload(const mmfuse::tensor<T>& h) {
    mc::device_tensor<T> d(h.extents());
    mc::to_device<T>(h.cref(), d);
    return d;
}

/// A host copy of device tensor `d` (synchronises the device first).
template <class T>
mmfuse::tensor<T> download(const mc::device_tensor<T>& d) {
    mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    mmfuse::tensor<T> h(d.extents());
    mc::to_host<T>(d, h.ref());
    return h;
}

/// A device tensor of extents `e` with every byte 0xFF (NaN for every float dtype).
template <class T>
mc::device_tensor<T> poisoned(const mmfuse::extents& e) {
    mc::device_tensor<T> d(e);
    mc::check(cudaMemset(d.data(), 0xFF, d.bytes()), "cudaMemset");
    // cudaMemset runs on the legacy stream, which the backend's non-blocking streams do not
    // wait for: finish it before any op can be queued.
    mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return d;
}

/// ||a - b|| / ||b|| over two equally long ranges (as doubles); infinity if a has a NaN.
template <class A, class B>
double rel_l2_error(std::span<const A> a, std::span<const B> b) {
    REQUIRE(a.size() == b.size());
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double x = double(a[i]), y = double(b[i]);
        if (std::isnan(x)) return INFINITY;
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

}  // namespace mmfuse_test::gpu
