#pragma once
/// \file Eigen reference kernels: sum/mean over an axis. (stub, being written)
#include <span>
#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"
namespace mmfuse::inline v0::backend::eigen {
inline void run(const ops::reduce_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "reduce: not implemented yet"); }
}  // namespace mmfuse::inline v0::backend::eigen
