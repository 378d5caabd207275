#pragma once
/// \file
/// Softmax front-ends: y = softmax(scale * x) over the last axis, optionally masked, and its
/// backward. Semantics of `torch.softmax(scale * x.masked_fill(~keep, -inf), -1)`, where
/// `keep` is the AND of up to two boolean masks and an optional causal rule, except that a
/// row with nothing kept gives zeros (never NaN) and zero gradient.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
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

/// `mask` (operand `name`) brought to extents `e`: returned unchanged when it already has them,
/// else broadcast (NumPy rules: leading axes added, extent-1 axes stretched). Throws `shape_error`
/// naming the module and both shapes when it cannot be broadcast.
inline tensor_ref<const bool> broadcast_mask(const op_context& cx, std::string_view name,
                                             const tensor_ref<const bool>& mask, const extents& e) {
    if (mask.extents() == e) return mask;
    bool ok = mask.rank() <= e.rank();
    for (int k = 0; ok && k < mask.rank(); ++k) {
        const index_t m = mask.extent(k), t = e[k + e.rank() - mask.rank()];
        ok = m == t || m == 1;
    }
    if (!ok)
        throw shape_error(cx.module, name, "a shape broadcastable to " + e.to_string(),
                          "shape " + mask.extents().to_string());
    return mask.expand(e);
}

}  // namespace detail

/// Options of `softmax`: the scale applied to x before the softmax, and the causal rule —
/// with `causal`, the row whose index along axis -2 is i keeps only the columns
/// j <= i + `causal_offset` (0: PyTorch's `is_causal` / `F.scaled_dot_product_attention`
/// top-left alignment; Lk - Lq: bottom-right alignment), with no mask memory.
struct softmax_options {
    double scale = 1.0;
    bool causal = false;
    index_t causal_offset = 0;
};

namespace detail {

/// The one implementation behind every `softmax` form: validates x, y and the masks present
/// (`mask1`, `mask2`; an empty view `{}` — no memory, rank 0 — is absent), broadcasts the masks to
/// x's extents and submits one `softmax_desc` with 1 + (number of masks) inputs. Never allocates.
template <class T>
void softmax_impl(const op_context& cx, const tensor_ref<const T>& x,
                  const tensor_ref<const bool>& mask1, const tensor_ref<const bool>& mask2,
                  const tensor_ref<T>& y, const softmax_options& o) {
    check_softmax_pair(cx, "softmax input x", x, "softmax output y", y);
    if (o.causal)
        expect_rank(cx, "softmax input x (causal: axis -2 indexes queries)", x, 2, max_rank);
    std::array<any_tensor_ref, 3> in{x, {}, {}};
    std::uint8_t masks = 0;
    const auto add = [&](const tensor_ref<const bool>& m, std::string_view name) {
        if (m.data() == nullptr && m.rank() == 0) return;  // `{}`: absent
        expect_data(cx, name, m);
        in[++masks] = broadcast_mask(cx, name, m, x.extents());
    };
    add(mask1, "softmax mask");
    add(mask2, "softmax mask2");
    const std::array<any_tensor_ref, 1> out{y};
    submit(cx, softmax_desc{o.scale, masks, o.causal, o.causal_offset},
           std::span<const any_tensor_ref>(in.data(), std::size_t(1 + masks)), out);
}

}  // namespace detail

/// y = softmax(scale * x) over the last axis.
/// x (..., N), y (..., N) (rank >= 1, any strides; y may be the same memory as x with the
/// same strides). Throws `shape_error` naming `cx.module` and both shapes on a mismatch.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x, tensor_ref<T> y,
             double scale = 1.0) {
    detail::softmax_impl<T>(cx, x, {}, {}, y, {.scale = scale});
}

/// y = softmax(o.scale * x) over the last axis with the causal rule of `o` (x rank >= 2
/// when `o.causal`). Shapes as the plain form.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x, tensor_ref<T> y,
             const softmax_options& o) {
    detail::softmax_impl<T>(cx, x, {}, {}, y, o);
}

/// Masked softmax: entries where `mask` is false get probability 0; a row with no true
/// entry is all zeros. `mask` (true = keep) has the extents of x or broadcasts to them
/// (e.g. a key-padding mask (B, 1, Lk) for scores (B, Lq, Lk)); any strides.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
             tensor_ref<const bool> mask, tensor_ref<T> y, double scale = 1.0) {
    detail::expect_data(cx, "softmax mask", mask);
    detail::softmax_impl<T>(cx, x, mask, {}, y, {.scale = scale});
}

/// Masked softmax with options: `mask` as in the form above, combined (AND) with the causal
/// rule of `o`.
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
             tensor_ref<const bool> mask, tensor_ref<T> y, const softmax_options& o) {
    detail::expect_data(cx, "softmax mask", mask);
    detail::softmax_impl<T>(cx, x, mask, {}, y, o);
}

/// The general form: up to two keep-masks, ANDed with each other and with the causal rule
/// of `o` — e.g. scores (B, H, Lq, Lk) with a key-padding mask (B, 1, 1, Lk) and an
/// attention mask (Lq, Lk). Each mask has x's extents or broadcasts to them, any strides;
/// either may be an empty view (`{}`: no memory, rank 0), which means absent (a null view
/// with extents is an error, as for x). Entries not kept get
/// probability 0; a row with nothing kept is all zeros (and gets zero gradient).
template <compute_type T>
void softmax(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
             tensor_ref<const bool> mask1, tensor_ref<const bool> mask2, tensor_ref<T> y,
             const softmax_options& o = {}) {
    detail::softmax_impl<T>(cx, x, mask1, mask2, y, o);
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
