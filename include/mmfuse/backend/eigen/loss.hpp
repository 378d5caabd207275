#pragma once
/// \file
/// Eigen reference kernel of `ops::logit_loss_desc`: per-row softmax cross-entropy (with
/// HN-NCE weighting), or sigmoid binary cross-entropy, of z = scale * x + bias, with the
/// gradient, in log-sum-exp form. Everything is accumulated in double for f32 and f64 alike
/// (the reference backend: accuracy first); logits are recomputed from x on every pass, so
/// nothing is allocated. Operands may have any strides.

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// log(1 + e^v) without overflow or cancellation.
inline double softplus(double v) noexcept {
    return std::max(v, 0.0) + std::log1p(std::exp(-std::abs(v)));
}

/// 1 / (1 + e^-v), exact in both tails.
inline double sigmoid(double v) noexcept {
    if (v >= 0.0) return 1.0 / (1.0 + std::exp(-v));
    const double e = std::exp(v);
    return e / (1.0 + e);
}

/// One row of `logit_loss_desc`: reads logits and targets through index functions and hands
/// each column's g = grad_scale * dl/dz to `emit(j, g)`; returns l_r.
template <class Z, class Y, class Emit>
double logit_loss_row(const ops::logit_loss_desc& d, index_t cols, index_t target, Z z, Y y,
                      Emit emit) {
    constexpr double neg_inf = -std::numeric_limits<double>::infinity();
    const double gs = d.grad_scale;
    if (d.kind == ops::logit_loss_kind::sigmoid_binary) {
        double loss = 0.0;
        for (index_t j = 0; j < cols; ++j) {
            const double v = z(j), t = y(j);
            loss += softplus(v) - t * v;
            if (d.gradient) emit(j, gs * (sigmoid(v) - t));
        }
        return loss;
    }
    const bool hn = d.hn_alpha != 1.0 || d.hn_beta != 0.0 || d.hn_weights_in_graph;
    if (!hn) {
        double mx = neg_inf, ysum = 0.0, ydot = 0.0;
        for (index_t j = 0; j < cols; ++j) {
            const double v = z(j), t = y(j);
            mx = std::max(mx, v);
            ysum += t;
            ydot += t * v;
        }
        double sum = 0.0;
        for (index_t j = 0; j < cols; ++j)
            sum += std::exp(z(j) - mx);
        const double lse = mx + std::log(sum);
        if (d.gradient)
            for (index_t j = 0; j < cols; ++j)
                emit(j, gs * (ysum * std::exp(z(j) - lse) - y(j)));
        return ysum == 0.0 ? 0.0 : ysum * lse - ydot;
    }
    // HN-NCE with the positive at column `target` (see ops::logit_loss_desc).
    if (target < 0 || target >= cols) {
        if (d.gradient)
            for (index_t j = 0; j < cols; ++j)
                emit(j, 0.0);
        return 0.0;
    }
    const double beta = d.hn_beta;
    double mb = neg_inf;  // LSE over the negatives of beta * z
    for (index_t j = 0; j < cols; ++j)
        if (j != target) mb = std::max(mb, beta * z(j));
    double sb = 0.0;
    for (index_t j = 0; j < cols; ++j)
        if (j != target) sb += std::exp(beta * z(j) - mb);
    const double lse_beta = mb + std::log(sb);
    const double log_negatives = std::log(double(cols - 1));
    const double log_alpha = d.hn_alpha > 0.0 ? std::log(d.hn_alpha) : neg_inf;
    const auto zp = [&](index_t j) {  // the weighted logits z'
        return j == target ? z(j) + log_alpha : (1.0 + beta) * z(j) + log_negatives - lse_beta;
    };
    double mx = neg_inf;
    for (index_t j = 0; j < cols; ++j)
        mx = std::max(mx, zp(j));
    double sum = 0.0;
    for (index_t j = 0; j < cols; ++j)
        sum += std::exp(zp(j) - mx);
    const double log_denominator = mx + std::log(sum);
    if (d.gradient) {
        double negative_mass = 0.0;  // sum over j != t of pi_j
        for (index_t j = 0; j < cols; ++j)
            if (j != target) negative_mass += std::exp(zp(j) - log_denominator);
        for (index_t j = 0; j < cols; ++j) {
            const double pi = std::exp(zp(j) - log_denominator);
            double g;
            if (j == target)
                g = pi - 1.0;
            else if (d.hn_weights_in_graph)
                g = (1.0 + beta) * pi - beta * std::exp(beta * z(j) - lse_beta) * negative_mass;
            else
                g = pi;
            emit(j, gs * g);
        }
    }
    return log_denominator - z(target);
}

template <class T>
void logit_loss(const ops::logit_loss_desc& d, const tensor_ref<const T>& x,
                const tensor_ref<const T>& targets, const tensor_ref<T>& row_loss,
                const tensor_ref<T>& dx, const tensor_ref<T>& row_stats) {
    const index_t rows = x.extent(0), cols = x.extent(1);
    const index_t sx0 = x.stride(0), sx1 = x.stride(1);
    const bool dense = d.targets == ops::loss_targets::dense;
    for (index_t r = 0; r < rows; ++r) {
        const T* xr = x.data() + r * sx0;
        const index_t target = d.targets == ops::loss_targets::diagonal ? r + d.target_offset : -1;
        const auto z = [&](index_t j) { return d.scale * double(xr[j * sx1]) + d.bias; };
        const auto y = [&](index_t j) -> double {
            if (dense) return double(targets.data()[r * targets.stride(0) + j * targets.stride(1)]);
            return j == target ? 1.0 : 0.0;
        };
        double gx = 0.0, gsum = 0.0;
        const auto emit = [&](index_t j, double g) {
            gx += g * double(xr[j * sx1]);
            gsum += g;
            T& out = dx.data()[r * dx.stride(0) + j * dx.stride(1)];
            out = T((d.accumulate ? double(out) : 0.0) + d.scale * g);
        };
        const double loss = logit_loss_row(d, cols, target, z, y, emit);
        row_loss.data()[r * row_loss.stride(0)] = T(loss);
        if (d.gradient) {
            row_stats.data()[r * row_stats.stride(0)] = T(gx);
            row_stats.data()[r * row_stats.stride(0) + row_stats.stride(1)] = T(gsum);
        }
    }
}

}  // namespace detail

/// logit_loss: in x [, targets]; out row_loss [, dx, row_stats]. See `ops::logit_loss_desc`.
/// Operand shapes a direct `stream::execute` call could get wrong are refused with
/// `backend_error` before anything is read.
inline void run(const ops::logit_loss_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    const extents& e = in[0].extents();
    const auto refuse = [](const std::string& what) {
        throw backend_error("eigen", "logit_loss: " + what);
    };
    if (e.rank() != 2) refuse("x must have rank 2, got shape " + e.to_string());
    if (in.size() > 1 && in[1].extents() != e) refuse("targets must have the shape of x");
    if (out[0].extents() != extents{e[0]}) refuse("row_loss must have shape (rows)");
    if (d.gradient && (out[1].extents() != e || out[2].extents() != extents{e[0], 2}))
        refuse("dx must have the shape of x and row_stats shape (rows, 2)");
    dispatch_compute(in[0].type(), "logit_loss", [&]<class T>() {
        detail::logit_loss<T>(d, in[0].as<const T>(),
                              in.size() > 1 ? in[1].as<const T>() : tensor_ref<const T>{},
                              out[0].as<T>(), d.gradient ? out[1].as<T>() : tensor_ref<T>{},
                              d.gradient ? out[2].as<T>() : tensor_ref<T>{});
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
