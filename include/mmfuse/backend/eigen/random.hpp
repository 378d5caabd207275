#pragma once
/// \file
/// Eigen reference kernels: Philox fills and the fused linear combination (placeholder).

#include <span>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

inline void run(const ops::fill_random_desc&, std::span<const any_tensor_ref>,
                std::span<const any_tensor_ref>) {
    throw backend_error("eigen", "fill_random: not implemented yet");
}
inline void run(const ops::combine_desc&, std::span<const any_tensor_ref>,
                std::span<const any_tensor_ref>) {
    throw backend_error("eigen", "combine: not implemented yet");
}

}  // namespace mmfuse::inline v0::backend::eigen
