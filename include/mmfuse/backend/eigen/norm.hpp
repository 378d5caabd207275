#pragma once
/// \file Eigen reference kernels: layer norm and RMS norm. (stub, being written)
#include <span>
#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"
namespace mmfuse::inline v0::backend::eigen {
inline void run(const ops::layer_norm_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "layer_norm: not implemented yet"); }
inline void run(const ops::layer_norm_backward_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "layer_norm_backward: not implemented yet"); }
inline void run(const ops::rms_norm_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "rms_norm: not implemented yet"); }
inline void run(const ops::rms_norm_backward_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "rms_norm_backward: not implemented yet"); }
}  // namespace mmfuse::inline v0::backend::eigen
