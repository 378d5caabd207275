#pragma once
/// \file
/// Batched matrix product front-end: C = alpha * op(A) op(B) + beta * C.

#include <type_traits>

#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

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
/// Throws `shape_error` naming the module and both shapes on a mismatch, before submitting.
template <compute_type T>
void matmul(const op_context& cx, tensor_ref<const std::type_identity_t<T>> a,
            tensor_ref<const std::type_identity_t<T>> b, tensor_ref<T> c, matmul_desc d = {}) {
    detail::expect_rank(cx, "matmul operand a", a, 2, 3);
    detail::expect_rank(cx, "matmul operand b", b, 2, 3);
    detail::expect_data(cx, "matmul operand a", a);
    detail::expect_data(cx, "matmul operand b", b);
    detail::expect_data(cx, "matmul output c", c);
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
    detail::expect_extents(cx, "matmul output c", c, expected);
    detail::submit<2, 1>(cx, d, {a, b}, {c});
}

}  // namespace mmfuse::inline v0::ops
