#pragma once
/// \file
/// Fused scaled-dot-product attention front-ends (`attention_desc`): FlashAttention semantics
/// (Dao et al., NeurIPS 2022; Dao 2023), the math of `torch.nn.functional.
/// scaled_dot_product_attention`, plus the log-sum-exp of every query row for the backward:
///
///     S = scale Q K^T (S_ij = -inf where masked),  P = softmax_j(S),  O = P V,
///     lse_i = log sum_j exp(S_ij)
///
///     ops::attention(cx, q, k, v, o, lse, {.scale = 0.125, .causal = true});
///     ops::attention(cx, q, k, v, o, lse, {.scale = 0.125}, key_padding);  // (B, 1, 1, Lk)
///     ops::attention_backward(cx, q, k, v, o, dout, lse, dq, dk, dv, {.scale = 0.125});
///
/// Masking: position (i, j) is dropped where `keep` is false or, with `causal`, where
/// j > i + causal_offset (offset 0: SDPA's `is_causal`, top-left aligned; Lk - Lq: bottom-right
/// aligned). Unlike SDPA, a query row with nothing kept gives O = 0 and lse = -inf (never NaN)
/// and contributes nothing to dq, dk, dv.

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/softmax.hpp"

namespace mmfuse::inline v0::ops {

namespace detail {

/// The validated operands shared by the forward and the backward: the problem sizes, the
/// keep-mask brought to (B, H, Lq, Lk) (empty view when absent) and the descriptor with
/// `masked` set from the mask.
struct attention_problem {
    index_t batch, heads, lq, lk, d, dv;
    tensor_ref<const bool> keep;
    attention_desc desc;
};

/// Operand names used in the errors of one attention front-end (string literals, so that a
/// valid call builds no string).
struct attention_names {
    std::string_view op, q, k, v, keep;
};
inline constexpr attention_names attention_forward_names{
    "attention", "attention query q (B, H, Lq, D)", "attention key k (B, H, Lk, D)",
    "attention value v (B, H, Lk, Dv)", "attention keep-mask (B, H, Lq, Lk)"};
inline constexpr attention_names attention_backward_names{
    "attention_backward", "attention_backward query q (B, H, Lq, D)",
    "attention_backward key k (B, H, Lk, D)", "attention_backward value v (B, H, Lk, Dv)",
    "attention_backward keep-mask (B, H, Lq, Lk)"};

/// Checks q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) (rank, extents, memory), the
/// scale (finite), and the keep-mask: absent (`{}`: no memory, rank 0) or broadcastable to
/// (B, H, Lq, Lk). `d.masked` set without a mask is refused; a mask turns `masked` on.
/// `names` are the operand names for errors. Builds strings only when it throws.
template <class T>
attention_problem check_attention_inputs(const op_context& cx, const attention_names& names,
                                         const tensor_ref<const T>& q,
                                         const tensor_ref<const T>& k,
                                         const tensor_ref<const T>& v,
                                         const tensor_ref<const bool>& keep, attention_desc d) {
    expect_rank(cx, names.q, q, 4, 4);
    expect_rank(cx, names.k, k, 4, 4);
    expect_rank(cx, names.v, v, 4, 4);
    const index_t b = q.extent(0), h = q.extent(1), lq = q.extent(2), dq = q.extent(3);
    const index_t lk = k.extent(2), dv = v.extent(3);
    if (k.extents() != extents{b, h, lk, dq}) {
        std::string want = "shape ";
        want += extents_except({b, h, lk, dq}, 2);
        want += " to match q ";
        want += q.extents().to_string();
        throw shape_error(cx.module, names.k, want, "shape " + k.extents().to_string());
    }
    if (v.extents() != extents{b, h, lk, dv}) {
        std::string want = "shape ";
        want += extents_except({b, h, lk, dv}, 3);
        want += " to match q ";
        want += q.extents().to_string();
        want += " and k ";
        want += k.extents().to_string();
        throw shape_error(cx.module, names.v, want, "shape " + v.extents().to_string());
    }
    expect_data(cx, names.q, q);
    expect_data(cx, names.k, k);
    expect_data(cx, names.v, v);
    if (!std::isfinite(d.scale)) {
        std::string msg(names.op);
        msg += ": attention_desc::scale must be finite, got ";
        msg += std::to_string(d.scale);
        throw value_error(cx.module, msg);
    }
    const bool has_keep = !(keep.data() == nullptr && keep.rank() == 0);
    if (d.masked && !has_keep) {
        std::string msg(names.op);
        msg += ": attention_desc::masked is set but no keep-mask was given (pass the mask; "
               "`masked` follows it)";
        throw value_error(cx.module, msg);
    }
    attention_problem pr{b, h, lq, lk, dq, dv, {}, d};
    pr.desc.masked = has_keep;
    if (has_keep) {
        expect_data(cx, names.keep, keep);
        pr.keep = broadcast_mask(cx, names.keep, keep, extents{b, h, lq, lk});
    }
    return pr;
}

}  // namespace detail

/// Fused attention forward: o = softmax(scale q k^T, masked) v and lse = the row-wise
/// log-sum-exp of the masked, scaled scores (natural log; -inf for a row with nothing kept,
/// whose o row is 0).
///
/// Shapes (B batch, H heads, Lq queries, Lk keys, D = q/k width, Dv = v width):
///   q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv)  — any strides, e.g. heads split out
///       of a (B, L, H*D) projection with `reshape` + `transpose(1, 2)`, no copy
///   o (B, H, Lq, Dv), lse (B, H, Lq)                    — outputs, in the compute type T
///   keep (optional, bool, true = attend): (B, H, Lq, Lk) or any shape broadcastable to it
///       under NumPy rules, e.g. a key-padding mask (B, 1, 1, Lk) or an (Lq, Lk) mask.
///       `{}` (the default) means no mask.
/// `d.scale` (finite; SDPA's default is 1/sqrt(D)), `d.causal`, `d.causal_offset` as on
/// `attention_desc`. `d.masked` follows `keep` (set by this function); setting it without a
/// mask throws `value_error`. o and lse must not overlap the inputs.
/// Throws `shape_error` naming `cx.module`, the operand and both shapes on a mismatch.
template <compute_type T>
void attention(const op_context& cx, tensor_ref<const std::type_identity_t<T>> q,
               tensor_ref<const std::type_identity_t<T>> k,
               tensor_ref<const std::type_identity_t<T>> v, tensor_ref<T> o, tensor_ref<T> lse,
               attention_desc d = {}, tensor_ref<const bool> keep = {}) {
    const detail::attention_problem p =
        detail::check_attention_inputs<T>(cx, detail::attention_forward_names, q, k, v, keep, d);
    detail::expect_extents(cx, "attention output o (B, H, Lq, Dv)", o,
                           {p.batch, p.heads, p.lq, p.dv});
    detail::expect_extents(cx, "attention output lse (B, H, Lq)", lse, {p.batch, p.heads, p.lq});
    detail::expect_data(cx, "attention output o", o);
    detail::expect_data(cx, "attention output lse", lse);
    if (p.desc.masked)
        detail::submit<4, 2>(cx, p.desc, {q, k, v, p.keep}, {o, lse});
    else
        detail::submit<3, 2>(cx, p.desc, {q, k, v}, {o, lse});
}

/// Backward of `attention` (FlashAttention-2: P recomputed from lse):
///     dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dq = scale dS K,  dk = scale dS^T Q,
///     dv = P^T dO.
/// q, k, v, keep and `d` as given to the forward; o and lse its outputs; dout (B, H, Lq, Dv)
/// the gradient of o. dq, dk, dv have the extents of q, k, v and are overwritten (not
/// accumulated); they must not overlap any input. Rows the forward fully masked (lse = -inf)
/// contribute nothing. Throws like `attention`.
template <compute_type T>
void attention_backward(const op_context& cx, tensor_ref<const std::type_identity_t<T>> q,
                        tensor_ref<const std::type_identity_t<T>> k,
                        tensor_ref<const std::type_identity_t<T>> v,
                        tensor_ref<const std::type_identity_t<T>> o,
                        tensor_ref<const std::type_identity_t<T>> dout,
                        tensor_ref<const std::type_identity_t<T>> lse, tensor_ref<T> dq,
                        tensor_ref<T> dk, tensor_ref<T> dv, attention_desc d = {},
                        tensor_ref<const bool> keep = {}) {
    const detail::attention_problem p =
        detail::check_attention_inputs<T>(cx, detail::attention_backward_names, q, k,
                                          v, keep, d);
    const extents oe{p.batch, p.heads, p.lq, p.dv};
    detail::expect_extents(cx, "attention_backward input o (B, H, Lq, Dv)", o, oe);
    detail::expect_extents(cx, "attention_backward gradient dout (B, H, Lq, Dv)", dout, oe);
    detail::expect_extents(cx, "attention_backward input lse (B, H, Lq)", lse,
                           {p.batch, p.heads, p.lq});
    detail::expect_extents(cx, "attention_backward output dq", dq, q.extents());
    detail::expect_extents(cx, "attention_backward output dk", dk, k.extents());
    detail::expect_extents(cx, "attention_backward output dv", dv, v.extents());
    detail::expect_data(cx, "attention_backward input o", o);
    detail::expect_data(cx, "attention_backward gradient dout", dout);
    detail::expect_data(cx, "attention_backward input lse", lse);
    detail::expect_data(cx, "attention_backward output dq", dq);
    detail::expect_data(cx, "attention_backward output dk", dk);
    detail::expect_data(cx, "attention_backward output dv", dv);
    const attention_backward_desc bd{p.desc};
    if (p.desc.masked)
        detail::submit<7, 3>(cx, bd, {q, k, v, o, dout, lse, p.keep}, {dq, dk, dv});
    else
        detail::submit<6, 3>(cx, bd, {q, k, v, o, dout, lse}, {dq, dk, dv});
}

}  // namespace mmfuse::inline v0::ops
