#pragma once
/// \file
/// Scalar formulas of the point-wise activations (`unary_kind`) and of their derivatives,
/// written once for every backend kernel and layer that needs them (PyTorch semantics).
///
///     using namespace mmfuse::ops;
///     double y  = act::value<unary_kind::gelu_erf>(0.3);
///     double dy = act::derivative<unary_kind::gelu_erf>(0.3);
///     act::visit(kind, [&](auto k) { /* k.value is the kind, a compile-time constant */ });
///
/// `visit` hoists the switch on the run-time kind out of element loops: a kernel
/// instantiates its loop once per kind. `sigmoid`, `value<K>` and `derivative<K>` are
/// `MMFUSE_HOST_DEVICE`, so CUDA kernels call these very formulas.

#include <cmath>
#include <concepts>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops::act {

/// The compile-time tag `visit` hands to its callback.
template <unary_kind K>
using kind_constant = std::integral_constant<unary_kind, K>;

/// Calls `f(kind_constant<K>{})` for the run-time kind `k` and returns its result.
template <class F>
decltype(auto) visit(unary_kind k, F&& f) {
    switch (k) {
        case unary_kind::relu:
            return f(kind_constant<unary_kind::relu>{});
        case unary_kind::gelu_erf:
            return f(kind_constant<unary_kind::gelu_erf>{});
        case unary_kind::gelu_tanh:
            return f(kind_constant<unary_kind::gelu_tanh>{});
        case unary_kind::silu:
            return f(kind_constant<unary_kind::silu>{});
        case unary_kind::sigmoid:
            return f(kind_constant<unary_kind::sigmoid>{});
        case unary_kind::tanh:
            break;
    }
    return f(kind_constant<unary_kind::tanh>{});
}

/// Logistic sigmoid 1 / (1 + exp(-x)), evaluated so that no intermediate overflows: for
/// x < 0 as e / (1 + e) with e = exp(x). Saturates to exactly 0 or 1; NaN stays NaN.
template <std::floating_point T>
MMFUSE_HOST_DEVICE T sigmoid(T x) noexcept {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    const T e = std::exp(x);
    return e / (T(1) + e);
}

/// sqrt(2 / pi) and the cubic coefficient of the tanh approximation of GELU
/// (Hendrycks & Gimpel 2016; PyTorch `gelu(approximate='tanh')`).
inline constexpr double gelu_tanh_beta = 0.7978845608028654;
inline constexpr double gelu_tanh_kappa = 0.044715;
/// 1 / sqrt(2) and 1 / sqrt(2 pi), for the exact (erf) GELU.
inline constexpr double inv_sqrt2 = 0.7071067811865476;
inline constexpr double inv_sqrt_2pi = 0.3989422804014327;

/// f(x) for activation `K` (formulas on `unary_kind`).
template <unary_kind K, std::floating_point T>
MMFUSE_HOST_DEVICE T value(T x) noexcept {
    if constexpr (K == unary_kind::relu) {
        return x < T(0) ? T(0) : x;  // NaN propagates, as torch.relu
    } else if constexpr (K == unary_kind::gelu_erf) {
        return T(0.5) * x * (T(1) + std::erf(x * T(inv_sqrt2)));
    } else if constexpr (K == unary_kind::gelu_tanh) {
        const T u = T(gelu_tanh_beta) * (x + T(gelu_tanh_kappa) * x * x * x);
        return T(0.5) * x * (T(1) + std::tanh(u));
    } else if constexpr (K == unary_kind::silu) {
        return x * sigmoid(x);
    } else if constexpr (K == unary_kind::sigmoid) {
        return sigmoid(x);
    } else {
        static_assert(K == unary_kind::tanh);
        return std::tanh(x);
    }
}

/// f'(x) for activation `K`:
///   relu       1 for x > 0, 0 for x < 0 and at x = 0 (PyTorch's convention)
///   gelu_erf   Phi(x) + x phi(x)
///   gelu_tanh  0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) beta (1 + 3 kappa x^2),
///              u = beta (x + kappa x^3); the second term is 0 once tanh saturates
///   silu       s (1 + x (1 - s)), s = sigmoid(x)
///   sigmoid    s (1 - s)
///   tanh       1 - tanh^2 x
template <unary_kind K, std::floating_point T>
MMFUSE_HOST_DEVICE T derivative(T x) noexcept {
    if constexpr (K == unary_kind::relu) {
        return x <= T(0) ? T(0) : T(1);
    } else if constexpr (K == unary_kind::gelu_erf) {
        const T cdf = T(0.5) * (T(1) + std::erf(x * T(inv_sqrt2)));
        const T pdf = T(inv_sqrt_2pi) * std::exp(T(-0.5) * x * x);
        return cdf + x * pdf;
    } else if constexpr (K == unary_kind::gelu_tanh) {
        const T x2 = x * x;
        const T t = std::tanh(T(gelu_tanh_beta) * (x + T(gelu_tanh_kappa) * x2 * x));
        const T sech2 = T(1) - t * t;
        // Guard: for huge |x|, x^2 overflows while sech2 is 0 (0 * inf would give NaN).
        const T inner = sech2 == T(0) ? T(0)
                                      : T(0.5) * x * sech2 * T(gelu_tanh_beta) *
                                            (T(1) + T(3 * gelu_tanh_kappa) * x2);
        return T(0.5) * (T(1) + t) + inner;
    } else if constexpr (K == unary_kind::silu) {
        const T s = sigmoid(x);
        return s * (T(1) + x * (T(1) - s));
    } else if constexpr (K == unary_kind::sigmoid) {
        const T s = sigmoid(x);
        return s * (T(1) - s);
    } else {
        static_assert(K == unary_kind::tanh);
        const T t = std::tanh(x);
        return T(1) - t * t;
    }
}

/// Run-time-kind forms of `value` and `derivative` (one switch per call; prefer `visit`
/// around a loop).
template <std::floating_point T>
T value(unary_kind k, T x) noexcept {
    return visit(k, [x](auto kc) { return value<decltype(kc)::value>(x); });
}
template <std::floating_point T>
T derivative(unary_kind k, T x) noexcept {
    return visit(k, [x](auto kc) { return derivative<decltype(kc)::value>(x); });
}

}  // namespace mmfuse::inline v0::ops::act
