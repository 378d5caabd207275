#pragma once
/// \file Eigen reference kernels: concat, split, copy. (stub, being written)
#include <span>
#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/ops/op_desc.hpp"
namespace mmfuse::inline v0::backend::eigen {
inline void run(const ops::concat_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "concat: not implemented yet"); }
inline void run(const ops::split_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "split: not implemented yet"); }
inline void run(const ops::copy_desc&, std::span<const any_tensor_ref>, std::span<const any_tensor_ref>) { throw backend_error("eigen", "copy: not implemented yet"); }
}  // namespace mmfuse::inline v0::backend::eigen
