#pragma once
/// \file
/// Eigen reference kernels: layer normalisation, RMS normalisation and L2 normalisation over
/// the last axis, forward and backward.
///
/// One kernel serves both: RMS norm is layer norm without centring (mean fixed at 0, no
/// beta). Semantics are PyTorch's `nn.LayerNorm` (biased variance, eps inside the square
/// root) and `nn.RMSNorm` (y = x * rsqrt(mean(x^2) + eps) * gamma).
///
/// Precision: row statistics and parameter-gradient sums are accumulated in double for f32
/// and f64 alike, with a two-pass (mean, then centred sum of squares) variance. PyTorch's CPU
/// kernels accumulate f32 input in f32 (Welford / two-pass); a double accumulator is at least
/// as accurate, which is what the reference backend is for. Saved statistics (mean, rstd)
/// are stored in the tensor's dtype, and backward reads those stored values, as PyTorch does.
///
/// Operands may have any strides; no heap allocation.

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// Forward of layer norm (`centered`) or RMS norm (not centred) for every row of x (..., N):
/// mu = centered ? mean(x) : 0, rstd = 1 / sqrt(mean((x - mu)^2) + eps),
/// y = (x - mu) * rstd [* gamma] [+ beta]. `gamma` / `beta` / `mean` are absent when their
/// data is null. `mean` and `rstd` are (R) views, R = number of rows.
template <class T>
void norm_forward(const tensor_ref<const T>& x, const tensor_ref<const T>& gamma,
                  const tensor_ref<const T>& beta, const tensor_ref<T>& y,
                  const tensor_ref<T>& mean, const tensor_ref<T>& rstd, double eps, bool centered) {
    const index_t n = x.extent(-1);
    const index_t sx = x.stride(-1), sy = y.stride(-1);
    const T* g = gamma.data();
    const T* b = beta.data();
    const index_t sg = g ? gamma.stride(0) : 0, sb = b ? beta.stride(0) : 0;
    for_each_row<2>(x.extents(), {x.strides(), y.strides()},
                    [&](index_t row, const std::array<index_t, 2>& off) {
                        const T* xr = x.data() + off[0];
                        T* yr = y.data() + off[1];
                        double mu = 0.0;
                        if (centered) {
                            for (index_t j = 0; j < n; ++j)
                                mu += double(xr[j * sx]);
                            mu /= double(n);
                        }
                        double ss = 0.0;
                        for (index_t j = 0; j < n; ++j) {
                            const double c = double(xr[j * sx]) - mu;
                            ss += c * c;
                        }
                        const double r = 1.0 / std::sqrt(ss / double(n) + eps);
                        for (index_t j = 0; j < n; ++j) {
                            double v = (double(xr[j * sx]) - mu) * r;
                            if (g) v *= double(g[j * sg]);
                            if (b) v += double(b[j * sb]);
                            yr[j * sy] = T(v);
                        }
                        if (centered) mean.data()[row * mean.stride(0)] = T(mu);
                        rstd.data()[row * rstd.stride(0)] = T(r);
                    });
}

/// Backward of `norm_forward` from the saved statistics (mean ignored unless `centered`).
/// With xhat = (x - mu) * rstd and g = dy [* gamma]:
///   dx     = rstd * (g - [centered] mean(g) - xhat * mean(g * xhat))
///   dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy
/// (dgamma / dbeta skipped when their data is null; added to when `accumulate`). Parameter
/// gradients are computed first, so dx may be the same memory (same strides) as dy.
template <class T>
void norm_backward(const tensor_ref<const T>& x, const tensor_ref<const T>& dy,
                   const tensor_ref<const T>& mean, const tensor_ref<const T>& rstd,
                   const tensor_ref<const T>& gamma, const tensor_ref<T>& dx,
                   const tensor_ref<T>& dgamma, const tensor_ref<T>& dbeta, bool centered,
                   bool accumulate) {
    const index_t n = x.extent(-1);
    const index_t sx = x.stride(-1), sdy = dy.stride(-1), sdx = dx.stride(-1);
    const index_t smu = centered ? mean.stride(0) : 0, sr = rstd.stride(0);
    const auto mu_of = [&](index_t row) { return centered ? double(mean.data()[row * smu]) : 0.0; };
    const auto r_of = [&](index_t row) { return double(rstd.data()[row * sr]); };

    // Parameter gradients: columns in blocks, double accumulators on the stack.
    if (dgamma.data() || dbeta.data()) {
        constexpr index_t block = 32;
        for (index_t c0 = 0; c0 < n; c0 += block) {
            const index_t cn = std::min(block, n - c0);
            std::array<double, block> ag{}, ab{};
            for_each_row<2>(x.extents(), {x.strides(), dy.strides()},
                            [&](index_t row, const std::array<index_t, 2>& off) {
                                const double mu = mu_of(row), r = r_of(row);
                                const T* xr = x.data() + off[0] + c0 * sx;
                                const T* dyr = dy.data() + off[1] + c0 * sdy;
                                for (index_t j = 0; j < cn; ++j) {
                                    const double d = double(dyr[j * sdy]);
                                    ag[size_t(j)] += d * (double(xr[j * sx]) - mu) * r;
                                    ab[size_t(j)] += d;
                                }
                            });
            const auto store = [&](const tensor_ref<T>& t, const std::array<double, block>& a) {
                if (!t.data()) return;
                for (index_t j = 0; j < cn; ++j) {
                    T& o = t.data()[(c0 + j) * t.stride(0)];
                    o = accumulate ? T(double(o) + a[size_t(j)]) : T(a[size_t(j)]);
                }
            };
            store(dgamma, ag);
            store(dbeta, ab);
        }
    }

    const T* g = gamma.data();
    const index_t sg = g ? gamma.stride(0) : 0;
    for_each_row<3>(x.extents(), {x.strides(), dy.strides(), dx.strides()},
                    [&](index_t row, const std::array<index_t, 3>& off) {
                        const T* xr = x.data() + off[0];
                        const T* dyr = dy.data() + off[1];
                        T* dxr = dx.data() + off[2];
                        const double mu = mu_of(row), r = r_of(row);
                        const auto grad = [&](index_t j) {
                            const double d = double(dyr[j * sdy]);
                            return g ? d * double(g[j * sg]) : d;
                        };
                        double sum_g = 0.0, sum_gx = 0.0;
                        for (index_t j = 0; j < n; ++j) {
                            const double gj = grad(j);
                            sum_g += gj;
                            sum_gx += gj * (double(xr[j * sx]) - mu) * r;
                        }
                        const double mean_g = centered ? sum_g / double(n) : 0.0;
                        const double mean_gx = sum_gx / double(n);
                        for (index_t j = 0; j < n; ++j) {
                            const double xhat = (double(xr[j * sx]) - mu) * r;
                            dxr[j * sdx] = T(r * (grad(j) - mean_g - xhat * mean_gx));
                        }
                    });
}

/// `any_tensor_ref` of `in` / `out` at `i` as a typed view, or an empty view when absent.
template <class T>
tensor_ref<T> optional_operand(std::span<const any_tensor_ref> ops, bool present, std::size_t i) {
    return present ? ops[i].as<T>() : tensor_ref<T>{};
}

/// y = x / max(||x||, eps) for every row of x (..., N); norm (R) receives ||x|| (the sum of
/// squares accumulated in double). y may be the memory of x.
template <class T>
void l2_normalize_forward(const tensor_ref<const T>& x, const tensor_ref<T>& y,
                          const tensor_ref<T>& norm, double eps) {
    const index_t n = x.extent(-1);
    const index_t sx = x.stride(-1), sy = y.stride(-1);
    for_each_row<2>(x.extents(), {x.strides(), y.strides()},
                    [&](index_t row, const std::array<index_t, 2>& off) {
                        const T* xr = x.data() + off[0];
                        T* yr = y.data() + off[1];
                        double ss = 0.0;
                        for (index_t j = 0; j < n; ++j)
                            ss += double(xr[j * sx]) * double(xr[j * sx]);
                        const double nrm = std::sqrt(ss);
                        const double inv = 1.0 / std::max(nrm, eps);
                        for (index_t j = 0; j < n; ++j)
                            yr[j * sy] = T(double(xr[j * sx]) * inv);
                        norm.data()[row * norm.stride(0)] = T(nrm);
                    });
}

/// dx = (dy - (dy . y) y) / norm per row where norm > eps, else dy / eps (PyTorch's
/// gradient of x / clamp_min(||x||, eps): the clamp passes no gradient to the norm).
/// dx may be the memory of dy.
template <class T>
void l2_normalize_backward(const tensor_ref<const T>& y, const tensor_ref<const T>& dy,
                           const tensor_ref<const T>& norm, const tensor_ref<T>& dx, double eps) {
    const index_t n = y.extent(-1);
    const index_t sy = y.stride(-1), sdy = dy.stride(-1), sdx = dx.stride(-1);
    for_each_row<3>(y.extents(), {y.strides(), dy.strides(), dx.strides()},
                    [&](index_t row, const std::array<index_t, 3>& off) {
                        const T* yr = y.data() + off[0];
                        const T* dyr = dy.data() + off[1];
                        T* dxr = dx.data() + off[2];
                        const double nrm = double(norm.data()[row * norm.stride(0)]);
                        if (!(nrm > eps)) {
                            for (index_t j = 0; j < n; ++j)
                                dxr[j * sdx] = T(double(dyr[j * sdy]) / eps);
                            return;
                        }
                        double dot = 0.0;
                        for (index_t j = 0; j < n; ++j)
                            dot += double(dyr[j * sdy]) * double(yr[j * sy]);
                        const double inv = 1.0 / nrm;
                        for (index_t j = 0; j < n; ++j)
                            dxr[j * sdx] =
                                T((double(dyr[j * sdy]) - dot * double(yr[j * sy])) * inv);
                    });
}

}  // namespace detail

/// layer_norm: in x [, gamma [, beta]]; out y, mean, rstd. See `ops::layer_norm_desc`.
inline void run(const ops::layer_norm_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    const bool bias = d.affine && d.bias;
    dispatch_compute(in[0].type(), "layer_norm", [&]<class T>() {
        detail::norm_forward<T>(in[0].as<const T>(),
                                detail::optional_operand<const T>(in, d.affine, 1),
                                detail::optional_operand<const T>(in, bias, 2), out[0].as<T>(),
                                out[1].as<T>(), out[2].as<T>(), d.eps, true);
    });
}

/// layer_norm_backward: in x, dy, mean, rstd [, gamma]; out dx [, dgamma [, dbeta]].
/// See `ops::layer_norm_backward_desc`.
inline void run(const ops::layer_norm_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    const bool bias = d.affine && d.bias;
    dispatch_compute(in[0].type(), "layer_norm_backward", [&]<class T>() {
        detail::norm_backward<T>(in[0].as<const T>(), in[1].as<const T>(), in[2].as<const T>(),
                                 in[3].as<const T>(),
                                 detail::optional_operand<const T>(in, d.affine, 4), out[0].as<T>(),
                                 detail::optional_operand<T>(out, d.affine, 1),
                                 detail::optional_operand<T>(out, bias, 2), true, d.accumulate);
    });
}

/// rms_norm: in x [, gamma]; out y, rstd. See `ops::rms_norm_desc`.
inline void run(const ops::rms_norm_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "rms_norm", [&]<class T>() {
        detail::norm_forward<T>(
            in[0].as<const T>(), detail::optional_operand<const T>(in, d.affine, 1),
            tensor_ref<const T>{}, out[0].as<T>(), tensor_ref<T>{}, out[1].as<T>(), d.eps, false);
    });
}

/// rms_norm_backward: in x, dy, rstd [, gamma]; out dx [, dgamma].
/// See `ops::rms_norm_backward_desc`.
inline void run(const ops::rms_norm_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "rms_norm_backward", [&]<class T>() {
        detail::norm_backward<T>(
            in[0].as<const T>(), in[1].as<const T>(), tensor_ref<const T>{}, in[2].as<const T>(),
            detail::optional_operand<const T>(in, d.affine, 3), out[0].as<T>(),
            detail::optional_operand<T>(out, d.affine, 1), tensor_ref<T>{}, false, d.accumulate);
    });
}

namespace detail {
/// Refuses (`backend_error`) the operand shapes a direct `stream::execute` of an L2
/// normalisation op could get wrong: `same` must all have the extents of `x` (rank >= 1) and
/// `norm` must be (rows).
inline void check_l2_operands(std::string_view op, const any_tensor_ref& x,
                              std::initializer_list<const any_tensor_ref*> same,
                              const any_tensor_ref& norm) {
    const extents& e = x.extents();
    std::string why;
    if (e.rank() < 1 || e[-1] < 1)
        why = "x must have rank >= 1 and a non-empty last axis, got shape " + e.to_string();
    for (const any_tensor_ref* t : same)
        if (why.empty() && t->extents() != e) why = "operands must all have the shape of x";
    if (why.empty() && norm.extents() != extents{e.numel() / e[-1]})
        why = "norm must have shape (rows)";
    if (!why.empty()) {
        std::string msg(op);
        msg += ": ";
        msg += why;
        throw backend_error("eigen", msg);
    }
}
}  // namespace detail

/// l2_normalize: in x; out y, norm. See `ops::l2_normalize_desc`.
inline void run(const ops::l2_normalize_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    detail::check_l2_operands("l2_normalize", in[0], {&out[0]}, out[1]);
    dispatch_compute(in[0].type(), "l2_normalize", [&]<class T>() {
        detail::l2_normalize_forward<T>(in[0].as<const T>(), out[0].as<T>(), out[1].as<T>(),
                                        d.eps);
    });
}

/// l2_normalize_backward: in y, dy, norm; out dx. See `ops::l2_normalize_backward_desc`.
inline void run(const ops::l2_normalize_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    detail::check_l2_operands("l2_normalize_backward", in[0], {&in[1], &out[0]}, in[2]);
    dispatch_compute(in[0].type(), "l2_normalize_backward", [&]<class T>() {
        detail::l2_normalize_backward<T>(in[0].as<const T>(), in[1].as<const T>(),
                                         in[2].as<const T>(), out[0].as<T>(), d.eps);
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
