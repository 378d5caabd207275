#pragma once
/// \file Eigen reference kernels: masked softmax. (stub, being written)
#include <span>
#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"
namespace mmfuse::inline v0::backend::eigen {
inline void run(const ops::softmax_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "softmax: not implemented yet"); }
inline void run(const ops::softmax_backward_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "softmax_backward: not implemented yet"); }
}  // namespace mmfuse::inline v0::backend::eigen
