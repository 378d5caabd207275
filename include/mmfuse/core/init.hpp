#pragma once
/// \file
/// Parameter initialisers with PyTorch's semantics (`torch.nn.init`, PyTorch 2.x:
/// `_calculate_fan_in_and_fan_out`, `calculate_gain`, `xavier_*_`, `kaiming_*_`,
/// `trunc_normal_`, `uniform_`, `normal_`, `constant_`, and `nn.Linear.reset_parameters`).
///
/// Each initialiser is a small policy struct with designated-initialiser parameters and one
/// call operator `(philox_generator&, tensor_ref<T> param)` for T = float or double:
///
///     philox_generator gen(seed);
///     init::xavier_uniform{.gain = init::calculate_gain(init::nonlinearity::tanh)}(gen, w);
///     init::kaiming_normal{.mode = init::fan_mode::fan_out}(gen, conv_w);
///     init::trunc_normal{.std = 0.02}(gen, pos_embed);
///     init::linear_default{}(gen, weight, bias);          // nn.Linear's default
///
/// Random initialisers draw through `fill_uniform` / `fill_normal` (philox.hpp): element i in
/// row-major logical order uses the documented counter mapping, and the generator's offset
/// advances by the words used, so a sequence of initialisers is reproducible from one seed
/// (and on a GPU). Weights are laid out (out, in, *receptive) as in PyTorch.

#include <cmath>
#include <concepts>
#include <limits>
#include <numbers>
#include <optional>
#include <string>
#include <string_view>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::init {

/// Nonlinearities known to `calculate_gain` (`conv` stands for every conv / conv_transpose
/// variant, whose gain is 1 like `linear`).
enum class nonlinearity { linear, conv, sigmoid, tanh, relu, leaky_relu, selu };

/// Which fan kaiming initialisers scale by: `fan_in` preserves the forward variance,
/// `fan_out` the backward one.
enum class fan_mode { fan_in, fan_out };

/// The distribution a scaled initialiser draws from: U(-√3·std, √3·std) or N(0, std²).
enum class distribution { uniform, normal };

/// Fan-in and fan-out of a weight.
struct fans {
    index_t fan_in = 0;
    index_t fan_out = 0;
};

/// `torch.nn.init._calculate_fan_in_and_fan_out`: for a weight of extents (out, in, *r),
/// receptive = prod(r) (1 for rank 2), fan_in = in·receptive, fan_out = out·receptive.
/// Throws `shape_error` naming `module` for rank < 2 (PyTorch raises ValueError).
inline fans calculate_fan_in_and_fan_out(const extents& e, std::string_view module = "init") {
    if (e.rank() < 2)
        throw shape_error(module, "weight for fan computation", "rank >= 2, (out, in, *receptive)",
                          "shape " + e.to_string() + " of rank " + std::to_string(e.rank()));
    index_t receptive = 1;
    for (int a = 2; a < e.rank(); ++a)
        receptive *= e[a];
    return {e[1] * receptive, e[0] * receptive};
}

/// `torch.nn.init.calculate_gain`: linear, conv, sigmoid -> 1; tanh -> 5/3; relu -> √2;
/// leaky_relu -> √(2 / (1 + slope²)) with slope = `param` (0.01 when absent); selu -> 3/4.
/// `param` is ignored for the other nonlinearities, as in PyTorch.
inline double calculate_gain(nonlinearity nl, std::optional<double> param = std::nullopt) {
    switch (nl) {
        case nonlinearity::linear:
        case nonlinearity::conv:
        case nonlinearity::sigmoid:
            return 1.0;
        case nonlinearity::tanh:
            return 5.0 / 3.0;
        case nonlinearity::relu:
            return std::numbers::sqrt2;
        case nonlinearity::leaky_relu: {
            const double slope = param.value_or(0.01);
            if (!std::isfinite(slope))
                throw value_error("calculate_gain",
                                  "expected a finite negative slope, got " + std::to_string(slope));
            return std::sqrt(2.0 / (1.0 + slope * slope));
        }
        case nonlinearity::selu:
            return 0.75;
    }
    throw value_error("calculate_gain", "unknown nonlinearity");
}

/// `I` initialises a `tensor_ref<T>` drawing from a `philox_generator`.
template <class I, class T>
concept initializer = requires(const I& i, philox_generator& g, tensor_ref<T> t) {
    i(g, t);
};

/// Applies initialiser `i` to `param` (same as `i(gen, param)`).
template <compute_type T, initializer<T> I>
void apply(const I& i, philox_generator& gen, tensor_ref<T> param) {
    i(gen, param);
}

namespace detail {

/// The one draw path of the fan-scaled initialisers (xavier, kaiming): fills `t` with
/// U(-√3·std, √3·std) or N(0, std²). Zero-element tensors are left alone (PyTorch warns and
/// returns) and consume no words.
template <compute_type T>
void fill_scaled(philox_generator& gen, tensor_ref<T> t, distribution d, double std) {
    if (t.numel() == 0) return;
    if (d == distribution::uniform) {
        const double bound = std::numbers::sqrt3 * std;
        fill_uniform(gen, t, -bound, bound);
    } else {
        fill_normal(gen, t, 0.0, std);
    }
}

/// Inverse error function on [-1, 1] in double precision: Winitzki's closed-form
/// approximation (S. Winitzki, "A handy approximation for the error function and its
/// inverse", 2008; relative error < 2e-3) refined by Halley steps on erf (|y| < 1/2) or erfc
/// (|y| >= 1/2, where 1 - |y| is exact), so the residual is computed without cancellation.
/// erfinv(±1) = ±inf.
inline double erfinv(double y) {
    if (std::isnan(y)) return y;
    const double ay = std::abs(y);
    if (ay >= 1.0) return std::copysign(std::numeric_limits<double>::infinity(), y);
    if (ay == 0.0) return y;
    constexpr double a = 0.147;
    const double ln = std::log((1.0 - ay) * (1.0 + ay));
    const double t = 2.0 / (std::numbers::pi * a) + 0.5 * ln;
    double x = std::sqrt(std::sqrt(t * t - ln / a) - t);
    const double two_over_sqrt_pi = 2.0 / std::sqrt(std::numbers::pi);
    for (int it = 0; it < 6; ++it) {
        // f(x) = erf(x) - ay = (1 - ay) - erfc(x); f' = 2/√π e^{-x²}; f'' = -2x f'.
        const double f = ay < 0.5 ? std::erf(x) - ay : (1.0 - ay) - std::erfc(x);
        const double fp = two_over_sqrt_pi * std::exp(-x * x);
        const double r = f / fp;
        const double dx = r / (1.0 + x * r);  // Halley: f/f' / (1 - f f''/(2 f'^2))
        x -= dx;
        if (std::abs(dx) <= 1e-16 * x) break;
    }
    return std::copysign(x, y);
}

/// Standard normal CDF Φ(x) = (1 + erf(x/√2)) / 2.
inline double norm_cdf(double x) {
    return 0.5 * std::erfc(-x / std::numbers::sqrt2);
}

/// `x` clamped to [lo, hi] and rounded to `T`, nudged by one ulp inward if the rounding left
/// the interval (lo <= hi).
template <compute_type T>
T round_into(double x, double lo, double hi) {
    x = std::min(std::max(x, lo), hi);
    T r = T(x);
    if (double(r) < lo) r = std::nextafter(r, std::numeric_limits<T>::infinity());
    if (double(r) > hi) r = std::nextafter(r, -std::numeric_limits<T>::infinity());
    return r;
}

}  // namespace detail

/// Xavier / Glorot initialisation (Glorot & Bengio, AISTATS 2010; `xavier_uniform_`,
/// `xavier_normal_`): std = gain·√(2 / (fan_in + fan_out)); uniform draws U(-√3·std, √3·std),
/// normal draws N(0, std²). Weight rank >= 2, else `shape_error`.
template <distribution D>
struct xavier {
    double gain = 1.0;

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> weight) const {
        const fans f = calculate_fan_in_and_fan_out(
            weight.extents(), D == distribution::uniform ? "xavier_uniform" : "xavier_normal");
        detail::fill_scaled(gen, weight, D, gain * std::sqrt(2.0 / double(f.fan_in + f.fan_out)));
    }
};
using xavier_uniform = xavier<distribution::uniform>;
using xavier_normal = xavier<distribution::normal>;

/// Kaiming / He initialisation (He et al., ICCV 2015; `kaiming_uniform_`, `kaiming_normal_`):
/// gain = calculate_gain(nonlinearity, a), std = gain / √fan with fan chosen by `mode`;
/// uniform draws U(-√3·std, √3·std), normal draws N(0, std²). PyTorch's defaults: a = 0,
/// fan_in, leaky_relu (so gain √2). Weight rank >= 2, else `shape_error`.
template <distribution D>
struct kaiming {
    double a = 0.0;
    fan_mode mode = fan_mode::fan_in;
    init::nonlinearity nonlinearity = init::nonlinearity::leaky_relu;

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> weight) const {
        const fans f = calculate_fan_in_and_fan_out(
            weight.extents(), D == distribution::uniform ? "kaiming_uniform" : "kaiming_normal");
        const index_t fan = mode == fan_mode::fan_in ? f.fan_in : f.fan_out;
        detail::fill_scaled(gen, weight, D,
                            calculate_gain(nonlinearity, a) / std::sqrt(double(fan)));
    }
};
using kaiming_uniform = kaiming<distribution::uniform>;
using kaiming_normal = kaiming<distribution::normal>;

/// Truncated normal (`trunc_normal_(mean, std, a, b)`): N(mean, std²) conditioned on
/// [a, b]; a and b are absolute bounds (PyTorch's defaults a = -2, b = 2, not in units of
/// std). Inverse-CDF method as in PyTorch: with l = Φ((a - mean)/std), u = Φ((b - mean)/std),
/// element i takes the i-th uniform U_i of the stream (as `fill_uniform`), y = (2l - 1) +
/// 2(u - l)·U_i, then x = mean + std·√2·erfinv(y), clamped to [a, b]. Computed in double, so
/// each element uses exactly `words_per_uniform<T>` words (no rejection loop): deterministic
/// and element-wise reproducible. y is kept inside (-1, 1) so no element becomes infinite.
/// Throws `value_error` unless mean, std > 0, a < b are all finite. Accuracy degrades when
/// [a, b] lies far in one tail (PyTorch warns when mean is more than 2 std outside [a, b]).
struct trunc_normal {
    double mean = 0.0;
    double std = 1.0;
    double a = -2.0;
    double b = 2.0;

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> param) const {
        if (!(std::isfinite(mean) && std::isfinite(std) && std > 0 && std::isfinite(a) &&
              std::isfinite(b) && a < b))
            throw value_error("trunc_normal",
                              "expected finite mean, std > 0 and a < b, got mean = " +
                                  std::to_string(mean) + ", std = " + std::to_string(std) +
                                  ", a = " + std::to_string(a) + ", b = " + std::to_string(b));
        const double lo = 2.0 * detail::norm_cdf((a - mean) / std) - 1.0;
        const double hi = 2.0 * detail::norm_cdf((b - mean) / std) - 1.0;
        const double ymin = std::nextafter(-1.0, 0.0), ymax = std::nextafter(1.0, 0.0);
        mmfuse::detail::fill_with_uniforms(gen, param, "trunc_normal", [&](T u) {
            const double y = std::min(std::max(lo + (hi - lo) * double(u), ymin), ymax);
            return detail::round_into<T>(mean + std * std::numbers::sqrt2 * detail::erfinv(y), a,
                                         b);
        });
    }
};

/// U[lo, hi) (`uniform_`, defaults 0 and 1): `fill_uniform(gen, param, lo, hi)`.
struct uniform {
    double lo = 0.0;
    double hi = 1.0;

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> param) const {
        fill_uniform(gen, param, lo, hi);
    }
};

/// N(mean, std²) (`normal_`, defaults 0 and 1): `fill_normal(gen, param, mean, std)`.
struct normal {
    double mean = 0.0;
    double std = 1.0;

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> param) const {
        fill_normal(gen, param, mean, std);
    }
};

/// Every element set to `value` (`constant_`); draws nothing (the generator is untouched).
/// Same view requirements as the random fills (host, no stride-0 axes).
struct constant {
    double value = 0.0;

    template <compute_type T>
    void operator()(tensor_ref<T> param) const {
        static_assert(!std::is_const_v<T>, "mmfuse::init::constant: view of const elements");
        mmfuse::detail::expect_writable_host(param, "init::constant");
        const T v = T(value);
        mmfuse::detail::for_each_logical(param, [v](T& x, index_t) { x = v; });
    }
    template <compute_type T>
    void operator()(philox_generator&, tensor_ref<T> param) const {
        (*this)(param);
    }
};

/// All zeros (`zeros_`).
struct zeros : constant {
    constexpr zeros() : constant{0.0} {}
};

/// All ones (`ones_`).
struct ones : constant {
    constexpr ones() : constant{1.0} {}
};

/// PyTorch's `nn.Linear.reset_parameters` (also the conv layers'): weight ~
/// kaiming_uniform(a = √5), i.e. U(-1/√fan_in, 1/√fan_in); bias ~ U(-1/√fan_in, 1/√fan_in)
/// with the weight's fan_in (bound 0 when fan_in is 0). Weight (out, in, *receptive), bias
/// (out,); the weight is drawn first, then the bias, as in PyTorch. Shapes are checked before
/// anything is drawn (`shape_error`).
struct linear_default {
    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> weight) const {
        kaiming_uniform{.a = std::sqrt(5.0)}(gen, weight);
    }

    template <compute_type T>
    void operator()(philox_generator& gen, tensor_ref<T> weight, tensor_ref<T> bias) const {
        const fans f = calculate_fan_in_and_fan_out(weight.extents(), "linear_default");
        check_extents(bias, extents{weight.extent(0)}, "linear_default", "bias");
        (*this)(gen, weight);
        const double bound = f.fan_in > 0 ? 1.0 / std::sqrt(double(f.fan_in)) : 0.0;
        fill_uniform(gen, bias, -bound, bound);
    }
};

}  // namespace mmfuse::inline v0::init
