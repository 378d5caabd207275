#pragma once
/// \file
/// Softmax front-ends: y = softmax(scale * x) over the last axis, optionally masked, and its
/// backward. Semantics of `torch.softmax(scale * x.masked_fill(~mask, -inf), -1)`, except
/// that a row whose mask is all false gives zeros (never NaN) and zero gradient.

#include <string>
#include <type_traits>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

namespace detail {

/// Checks shared by every softmax front-end: `x` has rank >= 1 and memory, `y` has the
/// extents of `x` and memory.
template <class T, class U>
void check_softmax_pair(const op_context& cx, std::string_view xname, const tensor_ref<T>& x,
                        std::string_view yname, const tensor_ref<U>& y) {
    expect_rank(cx, xname, x, 1, max_rank);
    expect_data(cx, xname, x);
    expect_extents(cx, yname, y, x.extents());
    expect_data(cx, yname, y);
}

/// `mask` brought to extents `e`: returned unchanged when it already has them, else
/// broadcast (NumPy rules: leading axes added, extent-1 axes stretched). Throws
/// `shape_error` naming the module and both shapes when it cannot be broadcast.
inline tensor_ref<const bool> broadcast_mask(const op_context& cx,
                                             const tensor_ref<const bool>& mask, const extents& e) {
    if (mask.extents() == e) return mask;
    bool ok = mask.rank() <= e.rank();
    for (int k = 0; ok && k < mask.rank(); ++k) {
        const index_t m = mask.extent(k), t = e[k + e.rank() - mask.rank()];
        ok = m == t || m == 1;
    }
    if (!ok)
        throw shape_error(cx.module, "softmax mask", "a shape broadcastable to " + e.to_string(),
                          "shape " + mask.extents().to_string());
    return mask.expand(e);
}

}  // namespace detail

/// y = softmax(scale * x) over the last axis.
/// x (..., N), y (..., N) (rank >= 1, any strides; y may be the same memory as x with the
/// same strides). Throws `shape_error` naming `cx.module` and both shapes on a mismatch.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x, tensor_ref<T> y,
             double scale = 1.0) {
    detail::check_softmax_pair(cx, "softmax input x", x, "softmax output y", y);
    detail::submit<1, 1>(cx, softmax_desc{scale, false}, {x}, {y});
}

/// Masked softmax: entries where `mask` is false get probability 0; a row with no true
/// entry is all zeros. `mask` (true = keep) has the extents of x or broadcasts to them
/// (e.g. a key-padding mask (B, 1, Lk) for scores (B, Lq, Lk)); any strides.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
             tensor_ref<const bool> mask, tensor_ref<T> y, double scale = 1.0) {
    detail::check_softmax_pair(cx, "softmax input x", x, "softmax output y", y);
    detail::expect_data(cx, "softmax mask", mask);
    const tensor_ref<const bool> m = detail::broadcast_mask(cx, mask, x.extents());
    detail::submit<2, 1>(cx, softmax_desc{scale, true}, {x, m}, {y});
}

/// Backward of `softmax` from its output: dx = scale * y * (dy - sum(dy * y)) per row.
/// y, dy, dx all (..., N) with equal extents, any strides (dx may alias dy with the same
/// strides). Masked entries have y = 0, hence dx = 0.
template <compute_type T>
void softmax_backward(const op_context& cx, tensor_ref<const std::type_identity_t<T>> y,
                      tensor_ref<const std::type_identity_t<T>> dy, tensor_ref<T> dx,
                      double scale = 1.0) {
    detail::check_softmax_pair(cx, "softmax_backward input y", y, "softmax_backward output dx", dx);
    detail::expect_extents(cx, "softmax_backward input dy", dy, y.extents());
    detail::expect_data(cx, "softmax_backward input dy", dy);
    detail::submit<2, 1>(cx, softmax_backward_desc{scale}, {y, dy}, {dx});
}

}  // namespace mmfuse::inline v0::ops
