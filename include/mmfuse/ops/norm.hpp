#pragma once
/// \file
/// Normalisation front-ends over the last axis: layer norm (`nn.LayerNorm`, Ba et al. 2016),
/// RMS norm (`nn.RMSNorm`, Zhang & Sennrich 2019) and L2 normalisation (`F.normalize`),
/// forward and backward.
///
/// Optional parameters are omitted by passing an empty view `{}`:
///
///     ops::layer_norm(s, x, gamma, beta, y, mean, rstd);         // affine with bias
///     ops::layer_norm<float>(s, x, {}, {}, y, mean, rstd);       // no affine parameters
///     ops::layer_norm_backward(s, x, dy, mean, rstd, gamma, dx, dgamma, dbeta);
///
/// Forward saves per-row statistics (mean, rstd = 1 / sqrt(var + eps)) of shape (R),
/// R = numel(x) / N, that backward takes back. Parameter gradients are overwritten, or added
/// to with `accumulate = true` (gradient accumulation over micro-batches).

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

/// True when `t` is the empty view `{}` (an omitted optional operand).
template <class T>
constexpr bool absent(const tensor_ref<T>& t) noexcept {
    return t.data() == nullptr && t.rank() == 0;
}

/// Validates the normalised input `x` (rank >= 1, memory, N = last extent >= 1) and returns
/// the number of rows R = numel / N.
template <class T>
index_t check_norm_input(const op_context& cx, std::string_view name, const tensor_ref<T>& x) {
    expect_rank(cx, name, x, 1, max_rank);
    expect_data(cx, name, x);
    if (x.extent(-1) < 1)
        throw shape_error(cx.module, name, "a last axis of extent >= 1",
                          "shape " + x.extents().to_string());
    return x.numel() / x.extent(-1);
}

/// `t` must be present with extents `e` and memory.
template <class T>
void expect_operand(const op_context& cx, std::string_view name, const tensor_ref<T>& t,
                    const extents& e) {
    expect_extents(cx, name, t, e);
    expect_data(cx, name, t);
}

/// An optional operand: absent, or present with extents `e`. Returns whether present.
template <class T>
bool optional_operand(const op_context& cx, std::string_view name, const tensor_ref<T>& t,
                      const extents& e) {
    if (absent(t)) return false;
    expect_operand(cx, name, t, e);
    return true;
}

/// Throws `shape_error` for operand `name` that must be absent / present together with
/// `other` (e.g. dgamma with gamma).
template <class T>
void expect_paired(const op_context& cx, std::string_view name, const tensor_ref<T>& t, bool want,
                   std::string_view reason, const extents& e) {
    if (absent(t) == !want) return;
    throw shape_error(cx.module, name,
                      want ? "shape " + e.to_string() + " (" + std::string(reason) + ")"
                           : "no operand (" + std::string(reason) + ")",
                      want ? "none" : "shape " + t.extents().to_string());
}

}  // namespace detail

/// Layer normalisation over the last axis (PyTorch `nn.LayerNorm(N, eps)`):
/// y = (x - mean) / sqrt(var + eps) [* gamma] [+ beta], var biased (divides by N).
/// x (..., N), gamma (N) or `{}`, beta (N) or `{}` (only with gamma), y like x,
/// mean (R), rstd (R) with R = numel(x) / N (saved for backward). Any strides.
/// Throws `shape_error` naming `cx.module`, the operand and both shapes.
template <compute_type T>
void layer_norm(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
                tensor_ref<const std::type_identity_t<T>> gamma,
                tensor_ref<const std::type_identity_t<T>> beta, tensor_ref<T> y, tensor_ref<T> mean,
                tensor_ref<T> rstd, double eps = 1e-5) {
    const index_t rows = detail::check_norm_input(cx, "layer_norm input x", x);
    const extents pe{x.extent(-1)}, se{rows};
    const bool affine = detail::optional_operand(cx, "layer_norm gamma", gamma, pe);
    if (!affine) detail::expect_paired(cx, "layer_norm beta", beta, false, "beta needs gamma", pe);
    const bool bias = detail::optional_operand(cx, "layer_norm beta", beta, pe);
    detail::expect_operand(cx, "layer_norm output y", y, x.extents());
    detail::expect_operand(cx, "layer_norm output mean", mean, se);
    detail::expect_operand(cx, "layer_norm output rstd", rstd, se);
    const layer_norm_desc d{eps, affine, bias};
    if (bias)
        detail::submit<3, 3>(cx, d, {x, gamma, beta}, {y, mean, rstd});
    else if (affine)
        detail::submit<2, 3>(cx, d, {x, gamma}, {y, mean, rstd});
    else
        detail::submit<1, 3>(cx, d, {x}, {y, mean, rstd});
}

/// Backward of `layer_norm` from the saved mean and rstd.
/// x, dy, dx (..., N); mean, rstd (R); gamma (N) or `{}`; dgamma (N) exactly when gamma is
/// given; dbeta (N) or `{}` (only with gamma). dgamma / dbeta are overwritten, or added to
/// when `accumulate`. Any strides.
template <compute_type T>
void layer_norm_backward(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
                         tensor_ref<const std::type_identity_t<T>> dy,
                         tensor_ref<const std::type_identity_t<T>> mean,
                         tensor_ref<const std::type_identity_t<T>> rstd,
                         tensor_ref<const std::type_identity_t<T>> gamma, tensor_ref<T> dx,
                         tensor_ref<T> dgamma, tensor_ref<T> dbeta, bool accumulate = false) {
    const index_t rows = detail::check_norm_input(cx, "layer_norm_backward input x", x);
    const extents pe{x.extent(-1)}, se{rows};
    detail::expect_operand(cx, "layer_norm_backward input dy", dy, x.extents());
    detail::expect_operand(cx, "layer_norm_backward input mean", mean, se);
    detail::expect_operand(cx, "layer_norm_backward input rstd", rstd, se);
    const bool affine = detail::optional_operand(cx, "layer_norm_backward gamma", gamma, pe);
    detail::expect_paired(cx, "layer_norm_backward output dgamma", dgamma, affine,
                          affine ? "gamma was given" : "no gamma was given", pe);
    if (!affine)
        detail::expect_paired(cx, "layer_norm_backward output dbeta", dbeta, false,
                              "dbeta needs gamma", pe);
    detail::optional_operand(cx, "layer_norm_backward output dgamma", dgamma, pe);
    const bool bias = detail::optional_operand(cx, "layer_norm_backward output dbeta", dbeta, pe);
    detail::expect_operand(cx, "layer_norm_backward output dx", dx, x.extents());
    const layer_norm_backward_desc d{affine, bias, accumulate};
    if (bias)
        detail::submit<5, 3>(cx, d, {x, dy, mean, rstd, gamma}, {dx, dgamma, dbeta});
    else if (affine)
        detail::submit<5, 2>(cx, d, {x, dy, mean, rstd, gamma}, {dx, dgamma});
    else
        detail::submit<4, 1>(cx, d, {x, dy, mean, rstd}, {dx});
}

/// RMS normalisation over the last axis (PyTorch `nn.RMSNorm(N, eps)`):
/// y = x / sqrt(mean(x^2) + eps) [* gamma].
/// x (..., N), gamma (N) or `{}`, y like x, rstd (R) with R = numel(x) / N. Any strides.
template <compute_type T>
void rms_norm(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
              tensor_ref<const std::type_identity_t<T>> gamma, tensor_ref<T> y, tensor_ref<T> rstd,
              double eps = 1e-6) {
    const index_t rows = detail::check_norm_input(cx, "rms_norm input x", x);
    const bool affine =
        detail::optional_operand(cx, "rms_norm gamma", gamma, extents{x.extent(-1)});
    detail::expect_operand(cx, "rms_norm output y", y, x.extents());
    detail::expect_operand(cx, "rms_norm output rstd", rstd, extents{rows});
    const rms_norm_desc d{eps, affine};
    if (affine)
        detail::submit<2, 2>(cx, d, {x, gamma}, {y, rstd});
    else
        detail::submit<1, 2>(cx, d, {x}, {y, rstd});
}

/// Backward of `rms_norm` from the saved rstd.
/// x, dy, dx (..., N); rstd (R); gamma (N) or `{}`; dgamma (N) exactly when gamma is given
/// (overwritten, or added to when `accumulate`). Any strides.
template <compute_type T>
void rms_norm_backward(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
                       tensor_ref<const std::type_identity_t<T>> dy,
                       tensor_ref<const std::type_identity_t<T>> rstd,
                       tensor_ref<const std::type_identity_t<T>> gamma, tensor_ref<T> dx,
                       tensor_ref<T> dgamma, bool accumulate = false) {
    const index_t rows = detail::check_norm_input(cx, "rms_norm_backward input x", x);
    const extents pe{x.extent(-1)};
    detail::expect_operand(cx, "rms_norm_backward input dy", dy, x.extents());
    detail::expect_operand(cx, "rms_norm_backward input rstd", rstd, extents{rows});
    const bool affine = detail::optional_operand(cx, "rms_norm_backward gamma", gamma, pe);
    detail::expect_paired(cx, "rms_norm_backward output dgamma", dgamma, affine,
                          affine ? "gamma was given" : "no gamma was given", pe);
    detail::optional_operand(cx, "rms_norm_backward output dgamma", dgamma, pe);
    detail::expect_operand(cx, "rms_norm_backward output dx", dx, x.extents());
    const rms_norm_backward_desc d{affine, accumulate};
    if (affine)
        detail::submit<4, 2>(cx, d, {x, dy, rstd, gamma}, {dx, dgamma});
    else
        detail::submit<3, 1>(cx, d, {x, dy, rstd}, {dx});
}

/// L2 normalisation over the last axis (`F.normalize(x, dim=-1, eps=eps)`):
/// y = x / max(||x||_2, eps). x (..., N), y like x (may be the memory of x), norm (R) =
/// ||x||_2 per row, R = numel(x) / N (saved for backward). Any strides.
template <compute_type T>
void l2_normalize(const op_context& cx, tensor_ref<const std::type_identity_t<T>> x,
                  tensor_ref<T> y, tensor_ref<T> norm, double eps = 1e-12) {
    const index_t rows = detail::check_norm_input(cx, "l2_normalize input x", x);
    detail::expect_operand(cx, "l2_normalize output y", y, x.extents());
    detail::expect_operand(cx, "l2_normalize output norm", norm, extents{rows});
    detail::submit<1, 2>(cx, l2_normalize_desc{eps}, {x}, {y, norm});
}

/// Backward of `l2_normalize` from its output y and the saved norm:
/// dx = (dy - (dy . y) y) / norm per row (dy / eps where norm <= eps).
/// y, dy, dx (..., N) (dx may be the memory of dy); norm (R). Any strides.
template <compute_type T>
void l2_normalize_backward(const op_context& cx, tensor_ref<const std::type_identity_t<T>> y,
                           tensor_ref<const std::type_identity_t<T>> dy,
                           tensor_ref<const std::type_identity_t<T>> norm, tensor_ref<T> dx,
                           double eps = 1e-12) {
    const index_t rows = detail::check_norm_input(cx, "l2_normalize_backward input y", y);
    detail::expect_operand(cx, "l2_normalize_backward input dy", dy, y.extents());
    detail::expect_operand(cx, "l2_normalize_backward input norm", norm, extents{rows});
    detail::expect_operand(cx, "l2_normalize_backward output dx", dx, y.extents());
    detail::submit<3, 1>(cx, l2_normalize_backward_desc{eps}, {y, dy, norm}, {dx});
}

}  // namespace mmfuse::inline v0::ops
