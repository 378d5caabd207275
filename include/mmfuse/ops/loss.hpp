#pragma once
/// \file
/// `ops::logit_loss`: the fused loss-and-gradient op over a logits matrix that every
/// contrastive objective lowers to (`logit_loss_desc` has the equations). One call per
/// direction: the image-to-text direction on S (B, B), the text-to-image direction on the
/// transposed view of S with `accumulate = true` into the transposed view of dS.

#include <array>
#include <type_traits>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/norm.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// Loss l_r per row of z = d.scale * x + d.bias, and (when `d.gradient`) its gradient.
///   x         (R, C) logits before scale and bias (e.g. cosine similarities), any strides
///   targets   (R, C) when `d.targets == loss_targets::dense`, else `{}`
///   row_loss  (R) written with l_r (not multiplied by `d.grad_scale`)
///   dx        (R, C) = d.grad_scale * d.scale * dl/dz (added to when `d.accumulate`), or `{}`
///             when `!d.gradient`
///   row_stats (R, 2) = {sum_j g_rj x_rj, sum_j g_rj}, g = d.grad_scale * dl/dz, or `{}`
/// Throws `shape_error` naming `cx.module` and the operand for a shape mismatch, and
/// `value_error` for HN-NCE settings outside their domain (alpha < 0, non-diagonal targets,
/// sigmoid kind, C < 2).
template <compute_type T>
void logit_loss(const op_context& cx, const logit_loss_desc& d,
                tensor_ref<const std::type_identity_t<T>> x,
                tensor_ref<const std::type_identity_t<T>> targets, tensor_ref<T> row_loss,
                tensor_ref<T> dx, tensor_ref<T> row_stats) {
    detail::expect_rank(cx, "logit_loss input x", x, 2, 2);
    detail::expect_data(cx, "logit_loss input x", x);
    const index_t rows = x.extent(0);
    const bool dense = d.targets == loss_targets::dense;
    detail::expect_paired(cx, "logit_loss targets", targets, dense,
                          dense ? "dense targets" : "diagonal or no targets", x.extents());
    if (dense) detail::expect_operand(cx, "logit_loss targets", targets, x.extents());
    detail::expect_operand(cx, "logit_loss output row_loss", row_loss, extents{rows});
    detail::expect_paired(cx, "logit_loss output dx", dx, d.gradient,
                          d.gradient ? "gradient requested" : "no gradient requested",
                          x.extents());
    detail::expect_paired(cx, "logit_loss output row_stats", row_stats, d.gradient,
                          d.gradient ? "gradient requested" : "no gradient requested",
                          extents{rows, 2});
    if (d.gradient) {
        detail::expect_operand(cx, "logit_loss output dx", dx, x.extents());
        detail::expect_operand(cx, "logit_loss output row_stats", row_stats, extents{rows, 2});
    }
    check_hn_nce(cx.module, d, x.extent(1));
    std::array<any_tensor_ref, 2> in{x, targets};
    std::array<any_tensor_ref, 3> out{row_loss, dx, row_stats};
    detail::submit(cx, d, std::span<const any_tensor_ref>(in.data(), dense ? 2 : 1),
                   std::span<const any_tensor_ref>(out.data(), d.gradient ? 3 : 1));
}

}  // namespace mmfuse::inline v0::ops
