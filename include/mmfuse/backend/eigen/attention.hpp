#pragma once
/// \file
/// Eigen reference kernels: fused attention forward and backward (placeholder until written).

#include <span>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

inline void run(const ops::attention_desc&, std::span<const any_tensor_ref>,
                std::span<const any_tensor_ref>) {
    throw backend_error("eigen", "attention: not implemented yet");
}
inline void run(const ops::attention_backward_desc&, std::span<const any_tensor_ref>,
                std::span<const any_tensor_ref>) {
    throw backend_error("eigen", "attention_backward: not implemented yet");
}

}  // namespace mmfuse::inline v0::backend::eigen
