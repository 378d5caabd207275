#pragma once
/// \file Eigen reference kernels: bias add and activations. (stub, being written)
#include <span>
#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"
namespace mmfuse::inline v0::backend::eigen {
inline void run(const ops::bias_add_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "bias_add: not implemented yet"); }
inline void run(const ops::unary_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "unary: not implemented yet"); }
inline void run(const ops::unary_backward_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "unary_backward: not implemented yet"); }
}  // namespace mmfuse::inline v0::backend::eigen
