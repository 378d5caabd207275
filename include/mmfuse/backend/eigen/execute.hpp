#pragma once
/// \file
/// The definition of `eigen_stream::execute`: the dispatch from an op descriptor to the Eigen
/// kernels, and with it every kernel instantiated for every dtype (the bulk of the Eigen
/// backend's object code).
///
/// Included by eigen/device.hpp (inline, header-only) unless `MMFUSE_EIGEN_EXTERN_KERNELS`
/// is defined; then exactly one translation unit of the program includes this header and
/// the definition is an ordinary out-of-line function compiled once.

#include <span>
#include <variant>

#include "mmfuse/backend/eigen/attention.hpp"
#include "mmfuse/backend/eigen/device.hpp"
#include "mmfuse/backend/eigen/gather.hpp"
#include "mmfuse/backend/eigen/layout.hpp"
#include "mmfuse/backend/eigen/loss.hpp"
#include "mmfuse/backend/eigen/matmul.hpp"
#include "mmfuse/backend/eigen/norm.hpp"
#include "mmfuse/backend/eigen/pointwise.hpp"
#include "mmfuse/backend/eigen/random.hpp"
#include "mmfuse/backend/eigen/reduce.hpp"
#include "mmfuse/backend/eigen/softmax.hpp"

namespace mmfuse::inline v0::backend::eigen {

#if !defined(MMFUSE_EIGEN_EXTERN_KERNELS)
inline
#endif
    void
    eigen_stream::execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                          std::span<const any_tensor_ref> outputs) {
    check_operand_count("eigen", op, inputs, outputs);
    for (const any_tensor_ref& t : inputs)
        check_host(op, t);
    for (const any_tensor_ref& t : outputs)
        check_host(op, t);
    std::visit([&](const auto& d) { run(d, inputs, outputs); }, op);
}

}  // namespace mmfuse::inline v0::backend::eigen
