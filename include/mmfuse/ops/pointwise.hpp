#pragma once
/// \file
/// Point-wise op front-ends: bias add, activations (`unary_kind`) and their backward.
/// The scalar formulas live in `mmfuse/ops/activation_math.hpp`.

#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// y = x + bias, bias broadcast over every axis but the last (the bias of `nn.Linear`).
///   x (..., N) of rank >= 1, bias (N), y (..., N) like x.
/// Any strides; y may be the memory of x (in place). Throws `shape_error` naming
/// `cx.module` and both shapes on a mismatch, before the op is submitted.
template <compute_type T>
void bias_add(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
              tensor_ref<const std::type_identity_t<T>> bias, tensor_ref<T> y) {
    detail::expect_rank(cx, "bias_add input x", x, 1, max_rank);
    detail::expect_rank(cx, "bias_add bias", bias, 1, 1);
    if (bias.extent(0) != x.extent(-1))
        throw shape_error(cx.module, "bias_add bias",
                          "shape (" + std::to_string(x.extent(-1)) +
                              ") matching the last axis of x " + x.extents().to_string(),
                          "shape " + bias.extents().to_string());
    detail::expect_extents(cx, "bias_add output y", y, x.extents());
    detail::expect_data(cx, "bias_add input x", x);
    detail::expect_data(cx, "bias_add bias", bias);
    detail::expect_data(cx, "bias_add output y", y);
    detail::submit<2, 1>(cx, bias_add_desc{}, {x, bias}, {y});
}

/// y = f(x) element-wise for the activation `kind` (PyTorch semantics, see `unary_kind`).
///   x any shape, y the same extents. Any strides; y may be the memory of x (in place).
template <compute_type T>
void unary(const op_context& cx, unary_kind kind, tensor_ref<const std::type_identity_t<T>> x,
           tensor_ref<T> y) {
    detail::expect_extents(cx, "unary output y", y, x.extents());
    detail::expect_data(cx, "unary input x", x);
    detail::expect_data(cx, "unary output y", y);
    detail::submit<1, 1>(cx, unary_desc{kind}, {x}, {y});
}

/// dx = f'(x) * dy element-wise: the backward of `unary` for the same `kind`, given the
/// forward input x. x, dy and dx have equal extents; dx may be the memory of dy or x.
template <compute_type T>
void unary_backward(const op_context& cx, unary_kind kind,
                    tensor_ref<const std::type_identity_t<T>> x,
                    tensor_ref<const std::type_identity_t<T>> dy, tensor_ref<T> dx) {
    detail::expect_extents(cx, "unary_backward gradient dy", dy, x.extents());
    detail::expect_extents(cx, "unary_backward output dx", dx, x.extents());
    detail::expect_data(cx, "unary_backward input x", x);
    detail::expect_data(cx, "unary_backward gradient dy", dy);
    detail::expect_data(cx, "unary_backward output dx", dx);
    detail::submit<2, 1>(cx, unary_backward_desc{kind}, {x, dy}, {dx});
}

}  // namespace mmfuse::inline v0::ops
