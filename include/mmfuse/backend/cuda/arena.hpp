#pragma once
/// \file
/// Device memory for steady-state steps without cudaMalloc.
///
/// * `device_arena` — the core bump allocator (`basic_arena`) over one device block: a
///   model's activations for a step on the GPU, sized once with an `arena_planner` and
///   `reset()` at the start of every step. Satisfies `workspace_allocator`.
/// * `scratch_space` — the per-stream scratch the CUDA backend itself needs inside an op
///   (cuBLASLt workspace, attention-backward accumulators). Stream-ordered: an op takes it,
///   enqueues its kernels and gives it back; the next op on the same stream reuses the same
///   bytes, which is safe because the stream serialises them. It grows only when an op needs
///   more than any op before it (synchronising the stream first), so after the first step of
///   a loop it never allocates again; growing while a CUDA graph is being captured is refused
///   with a `backend_error` that says to run one step before capturing. A block outgrown is
///   retired, not freed, until the stream is destroyed: a graph captured before the growth
///   still points into it and stays valid.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>

#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/core/arena.hpp"

namespace mmfuse::inline v0::backend::cuda {

/// `basic_arena` memory resource for device memory (counted `device_malloc`).
struct device_memory {
    static constexpr memory_space space = memory_space::device;
    static void* allocate(std::size_t bytes) { return device_malloc(bytes); }
    static void deallocate(void* p) noexcept { (void)cudaFree(p); }
};

/// Fixed-capacity bump allocator over one device block (views in `memory_space::device`).
using device_arena = basic_arena<device_memory>;

/// Grow-only scratch of one CUDA stream (see the file comment). Not thread-safe; owned by
/// the stream.
class scratch_space {
public:
    /// A device pointer to at least `bytes` bytes (256-byte aligned), valid until the next
    /// `acquire` on this stream. Grows (synchronising `stream`) if needed; throws
    /// `backend_error` if growth is needed while `stream` is being captured into a graph.
    void* acquire(std::size_t bytes, cudaStream_t stream) {
        if (bytes <= buffer_.bytes() && buffer_.data()) return buffer_.data();
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
        if (capture != cudaStreamCaptureStatusNone)
            throw backend_error("cuda", "op scratch must grow to " + std::to_string(bytes) +
                                            " bytes while a CUDA graph is being captured: run "
                                            "one step before capturing (or reserve() it)");
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize (scratch growth)");
        device_buffer larger(round_up(bytes));
        if (buffer_.data()) retired_.push_back(std::move(buffer_));
        buffer_ = std::move(larger);
        return buffer_.data();
    }
    /// Grows to `bytes` now (outside any capture), so that later ops never allocate.
    void reserve(std::size_t bytes, cudaStream_t stream) { (void)acquire(bytes, stream); }
    /// Bytes the current block holds (0 before the first op that needs scratch).
    std::size_t capacity_bytes() const noexcept { return buffer_.bytes(); }

private:
    static std::size_t round_up(std::size_t bytes) {
        constexpr std::size_t granule = std::size_t(1) << 20;  // 1 MiB steps
        return (bytes + granule - 1) / granule * granule;
    }
    device_buffer buffer_;
    std::vector<device_buffer> retired_;  ///< outgrown blocks that captured graphs may still use
};

}  // namespace mmfuse::inline v0::backend::cuda
