#pragma once
/// \file
/// Batched matrix product front-ends: C = alpha * op(A) op(B) + beta * C, and the same with a
/// fused epilogue, C = act(alpha * op(A) op(B) + beta * C + bias) (`matmul_epilogue`).

#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// Name of an epilogue ("none", "bias", "bias_relu", "bias_gelu_tanh").
constexpr std::string_view epilogue_name(matmul_epilogue e) noexcept {
    switch (e) {
        case matmul_epilogue::none:
            return "none";
        case matmul_epilogue::bias:
            return "bias";
        case matmul_epilogue::bias_relu:
            return "bias_relu";
        case matmul_epilogue::bias_gelu_tanh:
            return "bias_gelu_tanh";
    }
    return "?";
}

namespace detail {

/// Validates a, b and c of a matmul under `d` (ranks, inner dimensions, batch, output
/// extents, memory) and returns N, the number of columns of C. Throws `shape_error` naming
/// `cx.module`, the operand and both shapes.
template <class T>
index_t check_matmul(const op_context& cx, const tensor_ref<const T>& a,
                     const tensor_ref<const T>& b, const tensor_ref<T>& c, const matmul_desc& d) {
    expect_rank(cx, "matmul operand a", a, 2, 3);
    expect_rank(cx, "matmul operand b", b, 2, 3);
    expect_data(cx, "matmul operand a", a);
    expect_data(cx, "matmul operand b", b);
    expect_data(cx, "matmul output c", c);
    const index_t m = d.transpose_a ? a.extent(-1) : a.extent(-2);
    const index_t ka = d.transpose_a ? a.extent(-2) : a.extent(-1);
    const index_t kb = d.transpose_b ? b.extent(-1) : b.extent(-2);
    const index_t n = d.transpose_b ? b.extent(-2) : b.extent(-1);
    if (ka != kb)
        throw shape_error(cx.module, "matmul operand b (inner dimension)",
                          "a shape with " + std::to_string(ka) +
                              (d.transpose_b ? " columns (transpose_b)" : " rows") +
                              " to match op(a) = (" + std::to_string(m) + ", " +
                              std::to_string(ka) + ") from a " + a.extents().to_string(),
                          "shape " + b.extents().to_string());
    const bool batched = a.rank() == 3 || b.rank() == 3;
    if (a.rank() == 3 && b.rank() == 3 && a.extent(0) != b.extent(0))
        throw shape_error(
            cx.module, "matmul batch of operand b",
            "batch " + std::to_string(a.extent(0)) + " like a " + a.extents().to_string(),
            "b " + b.extents().to_string());
    const index_t batch = a.rank() == 3 ? a.extent(0) : (b.rank() == 3 ? b.extent(0) : 1);
    const extents expected = batched ? extents{batch, m, n} : extents{m, n};
    expect_extents(cx, "matmul output c", c, expected);
    return n;
}

/// Throws `value_error` naming `cx.module` when the epilogue of `d` does not fit the
/// overload: `with_bias` is true for the form that takes a bias.
inline void check_epilogue(const op_context& cx, const matmul_desc& d, bool with_bias) {
    if ((d.epilogue != matmul_epilogue::none) == with_bias) return;
    std::string msg = "matmul: epilogue ";
    msg += epilogue_name(d.epilogue);
    msg += with_bias ? " takes no bias; call matmul(cx, a, b, c, desc) without one, or ask for "
                       "an epilogue (bias, bias_relu, bias_gelu_tanh)"
                     : " needs a bias operand; call matmul(cx, a, b, bias, c, desc)";
    throw value_error(cx.module, msg);
}

}  // namespace detail

/// C = alpha * op(A) op(B) + beta * C, where op transposes the last two axes when asked.
///
/// Shapes (B = batch, optional):
///   a  (M, K) | (B, M, K)     — (K, M) | (B, K, M) with `transpose_a`
///   b  (K, N) | (B, K, N)     — (N, K) | (B, N, K) with `transpose_b`
///   c  (M, N) | (B, M, N)     — rank 3 iff a or b is rank 3; a rank-2 operand is shared
///                               by every batch entry (e.g. x (B, T, K) @ W^T: reshape x)
/// Any non-negative strides are accepted (a transposed or narrowed view needs no copy; inputs
/// may be stride-0 broadcasts). With beta == 0, C is write-only (NaNs in C are ignored); with
/// alpha == 0 or K == 0, A and B are not read (BLAS semantics). C must not overlap A or B.
/// `d.epilogue` must be `none` (an epilogue needs a bias: use the overload below; anything
/// else throws `value_error`). Throws `shape_error` naming the module and both shapes on a
/// mismatch, before submitting.
template <compute_type T>
void matmul(const op_context& cx, tensor_ref<const std::type_identity_t<T>> a,
            tensor_ref<const std::type_identity_t<T>> b, tensor_ref<T> c, matmul_desc d = {}) {
    detail::check_epilogue(cx, d, false);
    detail::check_matmul<T>(cx, a, b, c, d);
    detail::submit<2, 1>(cx, d, {a, b}, {c});
}

/// C = act(alpha * op(A) op(B) + beta * C + bias): the product of the form above with a
/// fused epilogue, `d.epilogue` one of `bias` (act = identity), `bias_relu` or
/// `bias_gelu_tanh` (the tanh approximation, `nn.GELU(approximate='tanh')`).
///   a, b, c as above; bias (N), broadcast over the rows and the batch of C (any stride).
/// The result equals `matmul` then `bias_add` then `unary` (within rounding), in one op —
/// `nn.Linear` followed by its activation. `d.epilogue == none` throws `value_error`.
template <compute_type T>
void matmul(const op_context& cx, tensor_ref<const std::type_identity_t<T>> a,
            tensor_ref<const std::type_identity_t<T>> b,
            tensor_ref<const std::type_identity_t<T>> bias, tensor_ref<T> c, matmul_desc d) {
    detail::check_epilogue(cx, d, true);
    const index_t n = detail::check_matmul<T>(cx, a, b, c, d);
    detail::expect_extents(cx, "matmul bias", bias, extents{n});
    detail::expect_data(cx, "matmul bias", bias);
    detail::submit<3, 1>(cx, d, {a, b, bias}, {c});
}

}  // namespace mmfuse::inline v0::ops
