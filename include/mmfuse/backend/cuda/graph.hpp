#pragma once
/// \file
/// CUDA graphs of mmfuse op sequences: capture everything a callable enqueues on a
/// `cuda_stream` once, then replay it with one launch (no per-op launch overhead, no host
/// work). The ops must not allocate while being captured: run the sequence once first (so
/// the stream's scratch has grown) or `reserve_scratch()`.
///
///     auto step = cuda::graph::capture(s, [&] { sampler_loop(s); });
///     step.launch(s);  s.synchronize();
///
/// A graph bakes in the pointers and op parameters it saw: replaying it recomputes the same
/// ops on whatever the captured buffers hold now. It also uses the capturing stream's
/// scratch, so it replays only on that stream (ordered with its eager ops); `launch` on
/// another stream is refused.

#include <utility>

#include <cuda_runtime_api.h>

#include "mmfuse/backend/cuda/device.hpp"

namespace mmfuse::inline v0::backend::cuda {

/// An instantiated, replayable CUDA graph (move-only).
class graph {
public:
    /// Captures what `f()` enqueues on `s` (thread-local capture mode: other threads'
    /// streams are unaffected). If `f` throws, the capture is ended and discarded and the
    /// exception propagates.
    template <class F>
    static graph capture(cuda_stream& s, F&& f) {
        check(cudaStreamBeginCapture(s.native(), cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture");
        try {
            f();
        } catch (...) {
            cudaGraph_t broken = nullptr;
            (void)cudaStreamEndCapture(s.native(), &broken);
            if (broken) (void)cudaGraphDestroy(broken);
            (void)cudaGetLastError();
            throw;
        }
        cudaGraph_t g = nullptr;
        check(cudaStreamEndCapture(s.native(), &g), "cudaStreamEndCapture");
        graph out;
        out.stream_ = s.native();
        const cudaError_t status = cudaGraphInstantiate(&out.exec_, g, 0);
        (void)cudaGraphDestroy(g);
        check(status, "cudaGraphInstantiate");
        return out;
    }

    graph() = default;
    graph(graph&& o) noexcept
        : exec_(std::exchange(o.exec_, nullptr)), stream_(std::exchange(o.stream_, nullptr)) {}
    graph& operator=(graph&& o) noexcept {
        if (this != &o) {
            destroy();
            exec_ = std::exchange(o.exec_, nullptr);
            stream_ = std::exchange(o.stream_, nullptr);
        }
        return *this;
    }
    graph(const graph&) = delete;
    graph& operator=(const graph&) = delete;
    ~graph() { destroy(); }

    /// Enqueues one replay on `s`, which must be the stream it was captured on.
    void launch(cuda_stream& s) const {
        if (!exec_) throw backend_error("cuda", "graph::launch on an empty graph");
        if (s.native() != stream_)
            throw backend_error("cuda", "graph::launch on a stream other than the one it was "
                                        "captured on (its ops use that stream's scratch)");
        check(cudaGraphLaunch(exec_, s.native()), "cudaGraphLaunch");
    }

private:
    void destroy() noexcept {
        if (exec_) (void)cudaGraphExecDestroy(exec_);
        exec_ = nullptr;
    }
    cudaGraphExec_t exec_ = nullptr;
    cudaStream_t stream_ = nullptr;  ///< the capturing stream
};

}  // namespace mmfuse::inline v0::backend::cuda
