#pragma once
/// \file
/// Shape checks shared by the op front-ends. Each throws `shape_error` whose message names
/// the module path, the op and operand, and both the expected and the actual shape.

#include <string>
#include <string_view>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::ops::detail {

/// `operand` must have exactly the extents `expected`.
template <class T>
void expect_extents(const op_context& cx, std::string_view operand, const tensor_ref<T>& t,
                    const extents& expected) {
    if (t.extents() != expected)
        throw shape_error(cx.module, operand, "shape " + expected.to_string(),
                          "shape " + t.extents().to_string());
}

/// `operand` must have a rank in [lo, hi].
template <class T>
void expect_rank(const op_context& cx, std::string_view operand, const tensor_ref<T>& t, int lo,
                 int hi) {
    if (t.rank() < lo || t.rank() > hi)
        throw shape_error(
            cx.module, operand,
            lo == hi ? "rank " + std::to_string(lo)
                     : "rank " + std::to_string(lo) + " to " + std::to_string(hi),
            "rank " + std::to_string(t.rank()) + ", shape " + t.extents().to_string());
}

/// `operand` must be non-null when it has elements (a planner view was passed by mistake).
template <class T>
void expect_data(const op_context& cx, std::string_view operand, const tensor_ref<T>& t) {
    if (t.data() == nullptr && t.numel() > 0)
        throw shape_error(cx.module, operand, "a view with memory",
                          "a null view " + t.extents().to_string());
}

/// An extent of `operand` must equal `expected` (used for e.g. the last axis of a norm).
inline void expect_extent(const op_context& cx, std::string_view operand, index_t actual,
                          index_t expected, const extents& full) {
    if (actual != expected)
        throw shape_error(cx.module, operand, "extent " + std::to_string(expected),
                          "extent " + std::to_string(actual) + " in shape " + full.to_string());
}

}  // namespace mmfuse::inline v0::ops::detail
