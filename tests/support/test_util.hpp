#pragma once
// Shared helpers for mmfuse tests: fresh random inputs, poisoned outputs, error measures.
// Tests draw inputs from std::mt19937_64 seeded by Catch's random seed, so each run of
// `ctest` exercises new numbers (reproduce with `--rng-seed <n>`).

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse_test {

/// Engine seeded from Catch's --rng-seed, mixed with a per-call salt.
inline std::mt19937_64 make_rng(std::uint64_t salt = 0) {
    return std::mt19937_64(std::uint64_t(Catch::rngSeed()) * 0x9E3779B97F4A7C15ull + salt);
}

/// Converts a double to any element type (bf16 and half through float).
template <class T>
T from_double(double v) {
    if constexpr (std::is_same_v<T, mmfuse::bf16> || std::is_same_v<T, mmfuse::half>)
        return T(float(v));
    else
        return T(v);
}

/// `n` values uniform in [lo, hi), drawn from `rng` in order.
inline std::vector<double> uniform_values(std::mt19937_64& rng, mmfuse::index_t n, double lo,
                                          double hi) {
    std::uniform_real_distribution<double> u(lo, hi);
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v)
        x = u(rng);
    return v;
}

/// `n` values in {0, 1}, 1 with probability `p` (boolean masks).
inline std::vector<double> bernoulli_values(std::mt19937_64& rng, mmfuse::index_t n, double p) {
    std::bernoulli_distribution b(p);
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v)
        x = b(rng) ? 1.0 : 0.0;
    return v;
}

/// Tensor of extents `e` with entries uniform in [lo, hi).
template <class T>
mmfuse::tensor<T> random_tensor(const mmfuse::extents& e, std::mt19937_64& rng, double lo = -1.0,
                                double hi = 1.0) {
    mmfuse::tensor<T> t(e);
    std::uniform_real_distribution<double> u(lo, hi);
    for (mmfuse::index_t i = 0; i < t.numel(); ++i)
        t[i] = T(u(rng));
    return t;
}

/// Fills every element reachable through `t` with NaN, so an op that forgets to write an
/// output element is caught.
template <class T>
void poison(mmfuse::tensor<T>& t) {
    t.fill(std::numeric_limits<T>::quiet_NaN());
}

/// max_i |a_i - b_i| / max(1, |b_i|) over two equally long ranges (NaN anywhere -> inf).
template <class A, class B>
double max_rel_error(std::span<const A> a, std::span<const B> b) {
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double x = double(a[i]), y = double(b[i]);
        if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::infinity();
        worst = std::max(worst, std::abs(x - y) / std::max(1.0, std::abs(y)));
    }
    return worst;
}

/// Convenience overload for a tensor (its elements in storage order) and a reference.
template <class T>
double max_rel_error(const mmfuse::tensor<T>& a, const std::vector<double>& ref) {
    return max_rel_error(std::span<const T>(a.data(), std::size_t(a.numel())),
                         std::span<const double>(ref));
}

/// Convenience overload for two vectors of values (e.g. `to_vector` of a view and a reference).
inline double max_rel_error(const std::vector<double>& got, const std::vector<double>& ref) {
    return max_rel_error(std::span<const double>(got), std::span<const double>(ref));
}

/// Central difference (loss(v + h) - loss(v - h)) / 2h of `loss()` with respect to the
/// scalar `v` (restored afterwards): the one numeric derivative the gradient checks use.
template <class Loss>
double central_difference(double& v, Loss&& loss, double h) {
    const double v0 = v;
    v = v0 + h;
    const double lp = loss();
    v = v0 - h;
    const double lm = loss();
    v = v0;
    return (lp - lm) / (2 * h);
}

/// Tolerance for comparing a T computation against a double-precision reference.
template <class T>
constexpr double tolerance() {
    return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

/// Sample statistics of a tensor's elements: mean, central moments m2, m3, m4 about a given
/// `mu` (m_k = mean (x - mu)^k), min, max and max |x|, over n elements.
struct moments {
    double n = 0, mean = 0, m2 = 0, m3 = 0, m4 = 0, min = 0, max = 0, max_abs = 0;
};

/// The `moments` of every element of `t` about `mu`; REQUIREs that every element is finite
/// (a NaN would otherwise slip through min/max comparisons).
template <class T>
moments sample_moments(const mmfuse::tensor<T>& t, double mu) {
    moments m;
    m.n = double(t.numel());
    m.min = std::numeric_limits<double>::infinity();
    m.max = -m.min;
    mmfuse::index_t nonfinite = 0;
    for (mmfuse::index_t i = 0; i < t.numel(); ++i) {
        const double x = double(t[i]), d = x - mu;
        if (!std::isfinite(x)) ++nonfinite;
        m.mean += x;
        m.m2 += d * d;
        m.m3 += d * d * d;
        m.m4 += d * d * d * d;
        m.max_abs = std::max(m.max_abs, std::abs(x));
        m.min = std::min(m.min, x);
        m.max = std::max(m.max, x);
    }
    REQUIRE(nonfinite == 0);
    m.mean /= m.n;
    m.m2 /= m.n;
    m.m3 /= m.n;
    m.m4 /= m.n;
    return m;
}

}  // namespace mmfuse_test
