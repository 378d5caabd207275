#pragma once
/// \file
/// Matmul on the CUDA backend through cuBLASLt (placeholder: to be written).

#include <cublasLt.h>

#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda {

/// cuBLASLt state of one stream.
class gemm_engine {
public:
    gemm_engine() = default;
    gemm_engine(const gemm_engine&) = delete;
    gemm_engine& operator=(const gemm_engine&) = delete;

    void run(const ops::matmul_desc&, kernels::inputs, kernels::outputs,
             const kernels::launch_context&) {
        throw backend_error("cuda", "matmul: not implemented yet");
    }
};

namespace kernels {
/// Matmul goes to the stream's `gemm_engine` (host code, no kernel of ours).
inline void launch(const ops::matmul_desc& d, inputs in, outputs out, const launch_context& cx) {
    cx.gemm->run(d, in, out, cx);
}
}  // namespace kernels

}  // namespace mmfuse::inline v0::backend::cuda
