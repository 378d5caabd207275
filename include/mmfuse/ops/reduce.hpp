#pragma once
/// \file
/// Reduction front-end: sum or mean over one axis (`torch.sum` / `torch.mean` with one
/// `dim`, `keepdim` chosen by the output's rank).

#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// y = sum or mean of x over `axis` (negative counts from the end).
///   x of rank >= 1; y with x's extents and `axis` removed (keepdim = false) or kept with
///   extent 1 (keepdim = true). The mean over an empty axis is NaN (as in PyTorch).
/// With `accumulate` the result is added to y instead of overwriting it (y += reduce(x)).
/// Any strides. Throws `shape_error` naming `cx.module` and both shapes on a mismatch.
template <compute_type T>
void reduce(const op_context& cx, reduce_kind kind, int axis,
            tensor_ref<const std::type_identity_t<T>> x, tensor_ref<T> y, bool accumulate = false) {
    detail::expect_rank(cx, "reduce input x", x, 1, max_rank);
    const int r = x.rank();
    if (axis < -r || axis >= r)
        throw shape_error(cx.module, "reduce axis",
                          "an axis in [" + std::to_string(-r) + ", " + std::to_string(r) +
                              ") for x " + x.extents().to_string(),
                          "axis " + std::to_string(axis));
    const int ax = axis < 0 ? axis + r : axis;
    const extents removed = x.extents().without_axis(ax);
    const extents kept = x.extents().with_axis(ax, 1);
    if (y.extents() != removed && y.extents() != kept)
        throw shape_error(cx.module, "reduce output y",
                          "shape " + removed.to_string() + " or " + kept.to_string() + " (x " +
                              x.extents().to_string() + " reduced over axis " +
                              std::to_string(axis) + ")",
                          "shape " + y.extents().to_string());
    detail::expect_data(cx, "reduce input x", x);
    detail::expect_data(cx, "reduce output y", y);
    detail::submit<1, 1>(cx, reduce_desc{kind, ax, accumulate}, {x}, {y});
}

}  // namespace mmfuse::inline v0::ops
