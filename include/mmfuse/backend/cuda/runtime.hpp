#pragma once
/// \file
/// CUDA runtime essentials for the CUDA backend, in plain C++ (compiled by the host
/// compiler; only the kernel sources under `src/` pass through nvcc):
///
/// * `check(status, what)` — every CUDA runtime / cuBLASLt status becomes a
///   `mmfuse::backend_error` naming the call and the CUDA error.
/// * `device_count()` — 0 (never an exception) when no driver or GPU is present.
/// * `device_buffer` — owning, move-only device allocation; every allocation the backend
///   makes goes through `device_malloc`, which counts them (`allocation_count()`), so tests
///   can prove that a steady-state step allocates nothing.
/// * `device_tensor<T>` — a device buffer with extents; `ref()` is a `tensor_ref` in
///   `memory_space::device` that the CUDA stream accepts.
/// * `to_device` / `to_host` — copies between contiguous host views and device tensors that
///   are complete, with respect to every stream of the device, when they return (they
///   synchronise the device: set-up and tests only, never inside a step). A plain
///   `cudaMemcpy` would not be: the backend's streams are non-blocking, so they do not wait
///   for the legacy default stream, and a pageable H2D copy may return before it lands.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::backend::cuda {

/// Throws `backend_error("cuda", ...)` naming `what` unless `status` is cudaSuccess. Also
/// resets the runtime's last (non-sticky) error so that a later check is not blamed for it;
/// a sticky error (a kernel fault) stays, and every later call reports it.
inline void check(cudaError_t status, std::string_view what) {
    if (status == cudaSuccess) return;
    (void)cudaGetLastError();
    throw backend_error("cuda", std::string(what) + " failed: " + cudaGetErrorName(status) +
                                    " (" + cudaGetErrorString(status) + ")");
}

/// Throws `backend_error("cuda", ...)` naming `what` unless `status` is CUBLAS_STATUS_SUCCESS.
inline void check(cublasStatus_t status, std::string_view what) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    throw backend_error("cuda", std::string(what) + " failed: cuBLAS status " +
                                    std::to_string(int(status)));
}

/// Checks the launch of the kernel just enqueued (`cudaGetLastError`).
inline void check_launch(std::string_view kernel) {
    check(cudaGetLastError(), std::string("launch of ") + std::string(kernel));
}

/// Number of usable CUDA devices; 0 when there is no GPU or no driver (never throws).
inline int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

/// Makes GPU `ordinal` current for the guard's lifetime and restores the previous one
/// (a no-op when it already is current), so that work for one `cuda_device` never lands on
/// another GPU that happened to be current.
class device_guard {
public:
    explicit device_guard(int ordinal) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != ordinal) check(cudaSetDevice(ordinal), "cudaSetDevice");
    }
    ~device_guard() {
        int now = previous_;
        if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
    }
    device_guard(const device_guard&) = delete;
    device_guard& operator=(const device_guard&) = delete;

private:
    int previous_ = 0;
};

/// The counter behind `allocation_count()`.
inline std::atomic<std::uint64_t>& allocation_counter() noexcept {
    static std::atomic<std::uint64_t> n{0};
    return n;
}
/// Device allocations made through `device_malloc` (every allocation of the backend, its
/// arenas and `device_tensor`) since the program started: tests compare it before and after
/// a steady-state step.
inline std::uint64_t allocation_count() noexcept {
    return allocation_counter().load(std::memory_order_relaxed);
}

/// cudaMalloc of `bytes` (at least 1) on the current GPU, counted; throws `backend_error`
/// on failure.
inline void* device_malloc(std::size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
    allocation_counter().fetch_add(1, std::memory_order_relaxed);
    return p;
}

/// Owning, move-only device allocation (cudaMalloc / cudaFree).
class device_buffer {
public:
    device_buffer() = default;
    explicit device_buffer(std::size_t bytes) : data_(device_malloc(bytes)), bytes_(bytes) {}
    device_buffer(device_buffer&& o) noexcept
        : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    device_buffer& operator=(device_buffer&& o) noexcept {
        if (this != &o) {
            release();
            data_ = std::exchange(o.data_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
        }
        return *this;
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;
    ~device_buffer() { release(); }

    /// Device address (null when empty).
    void* data() const noexcept { return data_; }
    /// Size in bytes as requested.
    std::size_t bytes() const noexcept { return bytes_; }

private:
    void release() noexcept {
        if (data_) (void)cudaFree(data_);
        data_ = nullptr;
        bytes_ = 0;
    }
    void* data_ = nullptr;
    std::size_t bytes_ = 0;
};

/// A contiguous row-major tensor in device memory (uninitialised), allocated on the GPU that
/// is current at construction (GPU 0 unless the program calls cudaSetDevice).
///
///     cuda::device_tensor<float> x({32, 64, 256});
///     ops::matmul(cuda_stream, x.cref(), w.cref(), y.ref());
template <element_type T>
class device_tensor {
public:
    device_tensor() = default;
    explicit device_tensor(const mmfuse::extents& e)
        : buffer_(std::size_t(e.numel()) * sizeof(T)), extents_(e) {}

    T* data() const noexcept { return static_cast<T*>(buffer_.data()); }
    const mmfuse::extents& extents() const noexcept { return extents_; }
    index_t numel() const noexcept { return extents_.numel(); }
    std::size_t bytes() const noexcept { return std::size_t(numel()) * sizeof(T); }

    tensor_ref<T> ref() const noexcept { return {data(), extents_, memory_space::device}; }
    tensor_ref<const T> cref() const noexcept { return {data(), extents_, memory_space::device}; }

private:
    device_buffer buffer_;
    mmfuse::extents extents_{};
};

namespace detail {
template <class T>
void expect_same_contiguous(const tensor_ref<T>& host, const mmfuse::extents& dev, std::string_view what) {
    if (host.space() != memory_space::host || !host.is_contiguous())
        throw shape_error("cuda", what, "a contiguous host view",
                          host.space() != memory_space::host ? "a device view" : "a strided view");
    if (host.extents() != dev)
        throw shape_error("cuda", what, "shape " + dev.to_string(), "shape " + host.extents().to_string());
}
}  // namespace detail

/// Copies a contiguous host view into `dst` (same extents); waits for every stream of the
/// device before and after, so no queued op races the copy.
template <element_type T>
void to_device(tensor_ref<const std::type_identity_t<T>> src, const device_tensor<T>& dst) {
    detail::expect_same_contiguous(src, dst.extents(), "to_device source");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (before to_device)");
    check(cudaMemcpy(dst.data(), src.data(), dst.bytes(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (after to_device)");
}

/// Copies `src` into a contiguous host view (same extents) once every op queued on any
/// stream of the device has finished.
template <element_type T>
void to_host(const device_tensor<T>& src, tensor_ref<std::type_identity_t<T>> dst) {
    detail::expect_same_contiguous(dst, src.extents(), "to_host destination");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (before to_host)");
    check(cudaMemcpy(dst.data(), src.data(), src.bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

}  // namespace mmfuse::inline v0::backend::cuda
