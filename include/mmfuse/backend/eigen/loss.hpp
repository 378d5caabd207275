#pragma once
/// \file
/// Eigen reference kernel of `ops::logit_loss_desc`: per-row softmax cross-entropy (with
/// HN-NCE weighting), or sigmoid binary cross-entropy, of z = scale * x + bias, with the
/// gradient, in log-sum-exp form. Everything is accumulated in double for f32 and f64 alike
/// (the reference backend: accuracy first). Operands may have any strides.
///
/// Cost: the exponentials dominate (a contrastive step runs this over B x B logits), so
/// each is taken once per element: the softmax keeps exp(z_j - max) of the row in a
/// per-thread double scratch row and forms ysum * exp(z_j - lse) as
/// (ysum / sum) * exp(z_j - max) (equal to a few ulps in double); the sigmoid shares
/// exp(-|z|) between softplus and sigmoid (bit-identical). When the rows of x or dx are
/// strided (the column pass over S^T), tiles of rows are gathered into contiguous scratch
/// first. Scratch is per thread and allocated only when a call needs more than any before on
/// the thread. Rows are independent: when compiled with OpenMP, large problems are split by
/// rows over `Eigen::nbThreads()` threads (each row is computed the same way whatever the
/// thread count, so the results do not depend on it).

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// log(1 + e^v) without overflow or cancellation, given e = e^-|v|.
inline double softplus(double v, double e) noexcept { return std::max(v, 0.0) + std::log1p(e); }

/// 1 / (1 + e^-v), exact in both tails, given e = e^-|v|.
inline double sigmoid(double v, double e) noexcept {
    return v >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/// `n` elements of this thread's `logit_loss` scratch of element type U (contents
/// unspecified; `slot` tells apart two buffers of one type). Valid until the next call on the
/// same thread; allocates only when `n` exceeds every earlier request on the thread.
template <class U, int slot = 0>
std::span<U> loss_scratch(std::size_t n) {
    thread_local std::vector<U> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return {buffer.data(), n};
}

/// One row of `logit_loss_desc`: reads logits and targets through index functions and hands
/// each column's g = grad_scale * dl/dz to `emit(j, g)`; returns l_r. `scratch` holds at
/// least `cols` doubles when `d.gradient`.
template <class Z, class Y, class Emit>
double logit_loss_row(const ops::logit_loss_desc& d, index_t cols, index_t target, Z z, Y y,
                      Emit emit, std::span<double> scratch) {
    constexpr double neg_inf = -std::numeric_limits<double>::infinity();
    const double gs = d.grad_scale;
    if (d.kind == ops::logit_loss_kind::sigmoid_binary) {
        double loss = 0.0;
        for (index_t j = 0; j < cols; ++j) {
            const double v = z(j), t = y(j);
            const double e = std::exp(-std::abs(v));
            loss += softplus(v, e) - t * v;
            if (d.gradient) emit(j, gs * (sigmoid(v, e) - t));
        }
        return loss;
    }
    if (!ops::uses_hn_nce(d)) {
        double mx = neg_inf, ysum = 0.0, ydot = 0.0;
        for (index_t j = 0; j < cols; ++j) {
            const double v = z(j), t = y(j);
            mx = std::max(mx, v);
            ysum += t;
            ydot += t * v;
        }
        double sum = 0.0;
        for (index_t j = 0; j < cols; ++j) {
            const double e = std::exp(z(j) - mx);
            if (d.gradient) scratch[std::size_t(j)] = e;
            sum += e;
        }
        const double lse = mx + std::log(sum);
        if (d.gradient) {
            const double weight = ysum / sum;  // ysum * exp(z_j - lse) = weight * exp(z_j - mx)
            for (index_t j = 0; j < cols; ++j)
                emit(j, gs * (weight * scratch[std::size_t(j)] - y(j)));
        }
        return ysum * lse - ydot;  // lse is finite (max-shifted), so no target mass gives 0
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

/// Rows x columns below which the kernel stays on the calling thread (thread start-up would
/// cost more than it saves).
inline constexpr index_t logit_loss_parallel_elements = index_t(1) << 16;
/// Rows per tile when the rows of x or dx are strided in memory (a column pass over S^T): a
/// tile is gathered into contiguous scratch, so that memory is read a cache line at a time.
inline constexpr index_t logit_loss_tile_rows = 16;

template <class T>
void logit_loss(const ops::logit_loss_desc& d, const tensor_ref<const T>& x,
                const tensor_ref<const T>& targets, const tensor_ref<T>& row_loss,
                const tensor_ref<T>& dx, const tensor_ref<T>& row_stats) {
    const index_t rows = x.extent(0), cols = x.extent(1);
    const index_t sx0 = x.stride(0), sx1 = x.stride(1);
    const bool dense = d.targets == ops::loss_targets::dense;
    // strides read once: tensor_ref::stride normalises its axis on every call
    const index_t st0 = dense ? targets.stride(0) : 0, st1 = dense ? targets.stride(1) : 0;
    const index_t sd0 = d.gradient ? dx.stride(0) : 0, sd1 = d.gradient ? dx.stride(1) : 0;
    const index_t sl0 = row_loss.stride(0);
    const index_t ss0 = d.gradient ? row_stats.stride(0) : 0;
    const index_t ss1 = d.gradient ? row_stats.stride(1) : 0;
    // Row r of x at xr (column stride xs) and of dx at dxr (column stride ds).
    const auto one_row = [&](index_t r, const T* xr, index_t xs, T* dxr, index_t ds,
                             std::span<double> exps) {
        const index_t target = d.targets == ops::loss_targets::diagonal ? r + d.target_offset : -1;
        const auto z = [&](index_t j) { return d.scale * double(xr[j * xs]) + d.bias; };
        const auto y = [&](index_t j) -> double {
            if (dense) return double(targets.data()[r * st0 + j * st1]);
            return j == target ? 1.0 : 0.0;
        };
        double gx = 0.0, gsum = 0.0;
        const auto emit = [&](index_t j, double g) {
            gx += g * double(xr[j * xs]);
            gsum += g;
            T& out = dxr[j * ds];
            out = T((d.accumulate ? double(out) : 0.0) + d.scale * g);
        };
        const double loss = logit_loss_row(d, cols, target, z, y, emit, exps);
        row_loss.data()[r * sl0] = T(loss);
        if (d.gradient) {
            row_stats.data()[r * ss0] = T(gx);
            row_stats.data()[r * ss0 + ss1] = T(gsum);
        }
    };
    const bool tiled = rows > 1 && cols > 1 && (sx1 != 1 || (d.gradient && sd1 != 1));
    const index_t tile = tiled ? logit_loss_tile_rows : 1;
    // Rows [begin, begin + tile) (fewer at the end), on this thread's scratch.
    const auto run_tile = [&](index_t begin) {
        const index_t n = std::min(tile, rows - begin);
        const std::span<double> exps = loss_scratch<double>(d.gradient ? std::size_t(cols) : 0);
        if (!tiled) {
            for (index_t r = begin; r < begin + n; ++r)
                one_row(r, x.data() + r * sx0, sx1, d.gradient ? dx.data() + r * sd0 : nullptr,
                        sd1, exps);
            return;
        }
        const std::size_t size = std::size_t(tile * cols);
        T* xt = loss_scratch<T, 1>(size).data();
        T* dxt = loss_scratch<T, 2>(d.gradient ? size : 0).data();
        const auto at = [&](index_t i, index_t j) { return std::size_t(i * cols + j); };
        for (index_t j = 0; j < cols; ++j)  // memory-order gather: i is the unit-stride axis
            for (index_t i = 0; i < n; ++i) {
                xt[at(i, j)] = x.data()[(begin + i) * sx0 + j * sx1];
                if (d.accumulate) dxt[at(i, j)] = dx.data()[(begin + i) * sd0 + j * sd1];
            }
        for (index_t i = 0; i < n; ++i)
            one_row(begin + i, xt + at(i, 0), 1, d.gradient ? dxt + at(i, 0) : nullptr, 1, exps);
        if (d.gradient)
            for (index_t j = 0; j < cols; ++j)
                for (index_t i = 0; i < n; ++i)
                    dx.data()[(begin + i) * sd0 + j * sd1] = dxt[at(i, j)];
    };
    const index_t tiles = (rows + tile - 1) / tile;
#ifdef _OPENMP
    const int threads = rows * cols >= logit_loss_parallel_elements ? Eigen::nbThreads() : 1;
    if (threads > 1) {
        _Pragma("omp parallel for num_threads(threads) schedule(static)")
        for (index_t t = 0; t < tiles; ++t)
            run_tile(t * tile);
        return;
    }
#endif
    for (index_t t = 0; t < tiles; ++t)
        run_tile(t * tile);
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
