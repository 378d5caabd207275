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
#include <vector>

#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse_test {

/// Engine seeded from Catch's --rng-seed, mixed with a per-call salt.
inline std::mt19937_64 make_rng(std::uint64_t salt = 0) {
    return std::mt19937_64(std::uint64_t(Catch::rngSeed()) * 0x9E3779B97F4A7C15ull + salt);
}

/// Tensor of extents `e` with entries uniform in [lo, hi).
template <class T>
mmfuse::tensor<T> random_tensor(const mmfuse::extents& e, std::mt19937_64& rng, double lo = -1.0,
                                double hi = 1.0) {
    mmfuse::tensor<T> t(e);
    std::uniform_real_distribution<double> u(lo, hi);
    for (mmfuse::index_t i = 0; i < t.numel(); ++i) t[i] = T(u(rng));
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

/// Convenience overload for two tensors (or a tensor and a std::vector<double>).
template <class T>
double max_rel_error(const mmfuse::tensor<T>& a, const std::vector<double>& ref) {
    return max_rel_error(std::span<const T>(a.data(), std::size_t(a.numel())),
                         std::span<const double>(ref));
}

/// Tolerance for comparing a T computation against a double-precision reference.
template <class T>
constexpr double tolerance() {
    return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

}  // namespace mmfuse_test
