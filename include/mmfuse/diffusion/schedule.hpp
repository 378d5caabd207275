#pragma once
/// \file
/// Diffusion noise schedules: the training tables (betas, alphas_cumprod, sigmas), the
/// inference timestep grids, the sigma schedules of Karras et al. 2022 / k-diffusion / EDM,
/// and the prediction-type conversions every sampler uses. Reference:
/// docs in `../shared/reference/diffusion.md` sections 1-3 and 5; numbers follow Hugging Face
/// diffusers v0.4x (`schedulers/scheduling_*.py`), k-diffusion v0.1.1 (`sampling.py`) and
/// NVlabs/edm (`generate.py`).
///
/// Notation (VP form): x_t = sqrt(ac) x0 + sqrt(1 - ac) eps with ac = alphas_cumprod[t];
/// VE (sigma) form: x = x0 + sigma n with sigma = sqrt((1 - ac) / ac).
///
/// All schedule math is host-side double. diffusers builds its tables as float32 torch
/// tensors; with `schedule_config::float32_tables` (the default) every stored table entry is
/// rounded exactly where diffusers rounds it, so a port reproduces the library's tables to
/// float32 precision; with it off the same formulas are evaluated in double throughout.
/// Memory is allocated when a `noise_schedule` is built and when a timestep / sigma grid is
/// made, never per sampler step. The tensor conversions at the end run through
/// `ops::combine`, so they work on every backend.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/random.hpp"

namespace mmfuse::inline v0::diffusion {

/// How betas are laid over the training grid t = 0 .. T-1 (diffusers `beta_schedule`):
///   linear            beta = linspace(beta_start, beta_end, T)            (Ho et al. 2020)
///   scaled_linear     beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2   (LDM / SD)
///   squaredcos_cap_v2 beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999),
///                     f(u) = cos^2((u + 0.008) / 1.008 * pi / 2)   (Nichol & Dhariwal 2021;
///                     beta_start / beta_end unused)
enum class beta_schedule { linear, scaled_linear, squaredcos_cap_v2 };

/// What the denoiser predicts: the noise eps, the velocity v = sqrt(ac) eps - sqrt(1-ac) x0
/// (Salimans & Ho 2022), or the clean sample x0 ("sample").
enum class prediction_type { epsilon, v_prediction, sample };

/// Inference timestep spacing (diffusers `timestep_spacing`; Lin et al. 2023, Table 2).
enum class timestep_spacing { leading, trailing, linspace };

/// The training schedule (diffusers scheduler config fields of the same names).
struct schedule_config {
    int num_train_timesteps = 1000;  ///< T, >= 2
    double beta_start = 1e-4;        ///< first beta (linear / scaled_linear), in (0, 1)
    double beta_end = 0.02;          ///< last beta (linear / scaled_linear), in (0, 1)
    beta_schedule betas = beta_schedule::linear;
    /// Lin et al. 2023, Alg. 1: rescale so that alphas_cumprod[T-1] = 0 exactly.
    bool rescale_zero_terminal_snr = false;
    /// Not read by `noise_schedule` nor by any sampler: each sampler's options struct has
    /// its own `prediction`, which alone decides. A record of the model's parametrisation for
    /// callers (e.g. examples/diffusion_digits.cpp passes it on to the sampler options).
    prediction_type prediction = prediction_type::epsilon;
    /// diffusers builds its tables in float32: reproduce that rounding when true, exact
    /// double when false.
    bool float32_tables = true;
    /// Only with `rescale_zero_terminal_snr`: the value that then replaces
    /// alphas_cumprod[T-1] = 0. 0 keeps it (diffusers DDPM / DDIM); diffusers' Euler,
    /// Euler-ancestral, DPM-Solver and UniPC use 2^-24 "so the first sigma is not infinite".
    double terminal_alpha_cumprod = 0.0;
};

namespace detail {

inline constexpr const char* schedule_module = "diffusion.schedule";

/// torch.linspace(start, end, n) evaluated in R (ATen's CPU rule: step = (end - start) /
/// (n - 1); the first half counts up from start, the second half down from end).
template <class R>
R torch_linspace_at(R start, R end, int n, int i) {
    if (n == 1) return start;
    const R step = (end - start) / R(n - 1);
    return i < n / 2 ? start + step * R(i) : end - step * R(n - 1 - i);
}

/// numpy.linspace(start, stop, n)[i] (numpy's rule: i * step + start, last = stop).
inline double numpy_linspace_at(double start, double stop, int n, int i) {
    if (n == 1) return start;
    if (i == n - 1) return stop;
    const double step = (stop - start) / double(n - 1);
    return double(i) * step + start;
}

/// Round half to even, numpy's `round` (the default floating-point rounding mode).
inline double round_half_even(double v) { return std::nearbyint(v); }

/// The tables of a schedule, computed in R (float: diffusers' float32 tensors; double: exact).
template <class R>
void build_tables(const schedule_config& c, std::vector<double>& betas_out,
                  std::vector<double>& ac_out, std::vector<double>& sigma_out,
                  std::vector<double>& log_sigma_out) {
    const int n = c.num_train_timesteps;
    const auto count = std::size_t(n);
    std::vector<R> betas(count);
    switch (c.betas) {
    case beta_schedule::linear:
        for (int i = 0; i < n; ++i)
            betas[std::size_t(i)] = torch_linspace_at<R>(R(c.beta_start), R(c.beta_end), n, i);
        break;
    case beta_schedule::scaled_linear:
        for (int i = 0; i < n; ++i) {
            const R b = torch_linspace_at<R>(R(std::sqrt(c.beta_start)), R(std::sqrt(c.beta_end)),
                                             n, i);
            betas[std::size_t(i)] = b * b;
        }
        break;
    case beta_schedule::squaredcos_cap_v2: {
        // diffusers betas_for_alpha_bar: Python doubles, then one cast to the table type.
        const auto f = [](double u) {
            const double c0 = std::cos((u + 0.008) / 1.008 * std::numbers::pi / 2);
            return c0 * c0;
        };
        for (int i = 0; i < n; ++i) {
            const double t1 = double(i) / n, t2 = double(i + 1) / n;
            betas[std::size_t(i)] = R(std::min(1.0 - f(t2) / f(t1), 0.999));
        }
        break;
    }
    }
    // torch.cumprod on the CPU accumulates in double and rounds each output to the tensor type.
    const auto cumprod = [n](const std::vector<R>& a) {
        std::vector<R> out(a.size());
        double acc = 1.0;
        for (int i = 0; i < n; ++i) {
            acc *= double(a[std::size_t(i)]);
            out[std::size_t(i)] = R(acc);
        }
        return out;
    };
    std::vector<R> alphas(count);
    for (int i = 0; i < n; ++i)
        alphas[std::size_t(i)] = R(1) - betas[std::size_t(i)];
    if (c.rescale_zero_terminal_snr) {
        // diffusers rescale_zero_terminal_snr (Lin et al. 2023, Alg. 1), in R.
        const std::vector<R> ac = cumprod(alphas);
        std::vector<R> s(count);
        for (int i = 0; i < n; ++i)
            s[std::size_t(i)] = std::sqrt(ac[std::size_t(i)]);
        const R s0 = s.front(), sT = s.back();
        const R scale = s0 / (s0 - sT);
        std::vector<R> abar(count);
        for (int i = 0; i < n; ++i) {
            const R v = (s[std::size_t(i)] - sT) * scale;
            abar[std::size_t(i)] = v * v;
        }
        for (int i = 0; i < n; ++i) {
            const R a = i == 0 ? abar[0] : abar[std::size_t(i)] / abar[std::size_t(i - 1)];
            betas[std::size_t(i)] = R(1) - a;
        }
        for (int i = 0; i < n; ++i)
            alphas[std::size_t(i)] = R(1) - betas[std::size_t(i)];
    }
    std::vector<R> ac = cumprod(alphas);
    if (c.rescale_zero_terminal_snr) ac.back() = R(c.terminal_alpha_cumprod);

    betas_out.assign(betas.begin(), betas.end());
    ac_out.assign(ac.begin(), ac.end());
    sigma_out.resize(count);
    log_sigma_out.resize(count);
    for (int i = 0; i < n; ++i) {
        const R a = ac[std::size_t(i)];
        const R sigma = std::sqrt((R(1) - a) / a);  // +inf where a == 0
        sigma_out[std::size_t(i)] = double(sigma);
        log_sigma_out[std::size_t(i)] = double(R(std::log(double(sigma))));
    }
}

/// Throws `value_error` unless `v` is finite and lo <= v <= hi (or lo < v when `open_lo`).
inline void expect_in_range(double v, double lo, double hi, bool open_lo, const char* what) {
    if (!std::isfinite(v) || v < lo || v > hi || (open_lo && v == lo)) {
        std::string msg = what;
        msg += " must lie in ";
        msg += open_lo ? "(" : "[";
        msg += std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v);
        throw value_error(schedule_module, msg);
    }
}

}  // namespace detail

/// The training noise schedule: betas, alphas_cumprod and the sigma table
/// sigma_t = sqrt((1 - ac_t) / ac_t) over t = 0 .. T-1, built once (see the file comment for
/// the float32 rule). Throws `value_error` for T < 2, betas outside (0, 1), or a
/// `terminal_alpha_cumprod` outside [0, 1).
class noise_schedule {
public:
    explicit noise_schedule(const schedule_config& c) : config_(c) {
        if (c.num_train_timesteps < 2)
            throw value_error(detail::schedule_module,
                              "num_train_timesteps must be at least 2, got " +
                                  std::to_string(c.num_train_timesteps));
        if (c.betas != beta_schedule::squaredcos_cap_v2) {
            detail::expect_in_range(c.beta_start, 0.0, 1.0, true, "beta_start");
            detail::expect_in_range(c.beta_end, 0.0, 1.0, true, "beta_end");
        }
        if (!(c.terminal_alpha_cumprod >= 0.0 && c.terminal_alpha_cumprod < 1.0))
            throw value_error(detail::schedule_module,
                              "terminal_alpha_cumprod must lie in [0, 1), got " +
                                  std::to_string(c.terminal_alpha_cumprod));
        if (c.float32_tables)
            detail::build_tables<float>(c, betas_, alphas_cumprod_, sigmas_, log_sigmas_);
        else
            detail::build_tables<double>(c, betas_, alphas_cumprod_, sigmas_, log_sigmas_);
    }

    /// The configuration the tables were built from (as validated by the constructor).
    const schedule_config& config() const noexcept { return config_; }
    /// T.
    int num_train_timesteps() const noexcept { return config_.num_train_timesteps; }
    /// beta_t, t = 0 .. T-1 (after the zero-SNR rescale when enabled).
    std::span<const double> betas() const noexcept { return betas_; }
    /// ac_t = prod_{i <= t} (1 - beta_i), t = 0 .. T-1 (ac_{T-1} = terminal_alpha_cumprod
    /// under the zero-SNR rescale).
    std::span<const double> alphas_cumprod() const noexcept { return alphas_cumprod_; }
    /// The sigma table sqrt((1 - ac_t) / ac_t), t = 0 .. T-1 (+inf where ac_t = 0).
    std::span<const double> sigmas() const noexcept { return sigmas_; }

    /// sigma at a (fractional) timestep t: the sigma table linearly interpolated in t
    /// (numpy.interp, as diffusers' Euler / Heun / LMS / DPM-Solver / UniPC do), t clamped to
    /// [0, T-1]; rounded to float when `float32_tables` (diffusers stores sigmas as float32).
    /// Throws `value_error` for NaN t.
    double sigma_at(double t) const {
        if (std::isnan(t)) throw value_error(detail::schedule_module, "sigma_at: t is NaN");
        const int last = num_train_timesteps() - 1;
        double r;
        if (t <= 0.0) {
            r = sigmas_.front();
        } else if (t >= double(last)) {
            r = sigmas_.back();
        } else {
            const auto j = std::size_t(std::floor(t));
            const double slope = sigmas_[j + 1] - sigmas_[j];
            r = t == double(j) ? sigmas_[j] : slope * (t - double(j)) + sigmas_[j];
        }
        return config_.float32_tables ? double(float(r)) : r;
    }

    /// The (fractional) timestep of `sigma` by log-sigma interpolation (diffusers
    /// `_sigma_to_t`, k-diffusion `DiscreteSchedule.sigma_to_t`): with L_i = log sigma_i (the
    /// table's logs, float32 when `float32_tables`) and l = log(max(sigma, 1e-10)), lo = the
    /// last i with L_i <= l (0 if none) clipped to T-2, w = (L_lo - l) / (L_lo - L_{lo+1})
    /// clipped to [0, 1], t = (1 - w) lo + w (lo + 1). Not rounded.
    double sigma_to_t(double sigma) const {
        if (std::isnan(sigma)) throw value_error(detail::schedule_module, "sigma_to_t: sigma is NaN");
        const double l = std::log(std::max(sigma, 1e-10));
        const std::size_t n = log_sigmas_.size();
        std::size_t lo = 0;
        for (std::size_t i = 0; i < n; ++i)
            if (l - log_sigmas_[i] >= 0.0) lo = i;
        lo = std::min(lo, n - 2);
        const double low = log_sigmas_[lo], high = log_sigmas_[lo + 1];
        const double w = std::clamp((low - l) / (low - high), 0.0, 1.0);
        return (1.0 - w) * double(lo) + w * double(lo + 1);
    }

private:
    schedule_config config_;
    std::vector<double> betas_;
    std::vector<double> alphas_cumprod_;
    std::vector<double> sigmas_;
    std::vector<double> log_sigmas_;
};

/// The inference timesteps for `steps` sampler steps, in sampling order (descending), as
/// diffusers' `set_timesteps` makes them (reference section 3; T = num_train_timesteps,
/// `round` = numpy's half-to-even):
///
/// N-grid (`n_plus_one_grid` false: DDPM, DDIM, PNDM, Euler, Euler-a, Heun, LMS):
///   linspace  round(linspace(0, T-1, N)) reversed; with `round_linspace` false the values
///             stay fractional (Euler, Heun, LMS), rounded to float when `float32_tables`
///   leading   k * (T div N) for k = N-1 .. 0, plus `steps_offset`
///   trailing  round(arange(T, 0, -T/N)) - 1
/// N+1 grid (`n_plus_one_grid` true: DPM-Solver multistep, UniPC), last point dropped:
///   linspace  round(linspace(0, T-1, N+1)) reversed, without the final 0
///   leading   k * (T div (N+1)) for k = N .. 1, plus `steps_offset`
///   trailing  as the N-grid
/// `steps_offset` applies to `leading` only (as in diffusers). PNDM's repeated timestep and
/// Heun's interleaving are the samplers' business. Throws `value_error` unless
/// 1 <= steps <= T (steps <= T - 1 for the N+1 grid, whose points would otherwise repeat)
/// and steps_offset >= 0, and when a leading grid plus `steps_offset` would
/// reach past timestep T - 1 (diffusers would index out of its tables there).
inline std::vector<double> timesteps(const noise_schedule& s, int steps, timestep_spacing spacing,
                                     int steps_offset = 0, bool n_plus_one_grid = false,
                                     bool round_linspace = true) {
    const int T = s.num_train_timesteps();
    if (steps < 1 || steps > T)
        throw value_error(detail::schedule_module, "timesteps: steps must lie in [1, " +
                                                       std::to_string(T) + "], got " +
                                                       std::to_string(steps));
    if (n_plus_one_grid && steps > T - 1)  // N + 1 points on T timesteps: h = 0 somewhere
        throw value_error(detail::schedule_module,
                          "timesteps: the N+1 grid (DPM-Solver / UniPC) needs steps <= " +
                              std::to_string(T - 1) + " (T - 1), got " + std::to_string(steps));
    if (steps_offset < 0)
        throw value_error(detail::schedule_module, "timesteps: steps_offset must be >= 0, got " +
                                                       std::to_string(steps_offset));
    std::vector<double> out;
    out.reserve(std::size_t(steps));
    const int grid = n_plus_one_grid ? steps + 1 : steps;
    switch (spacing) {
    case timestep_spacing::linspace:
        for (int k = grid - 1; k >= grid - steps; --k) {
            const double v = detail::numpy_linspace_at(0.0, double(T - 1), grid, k);
            out.push_back(round_linspace               ? detail::round_half_even(v)
                          : s.config().float32_tables ? double(float(v))
                                                      : v);
        }
        break;
    case timestep_spacing::leading: {
        const int ratio = T / grid;
        const long long top = static_cast<long long>(grid - 1) * ratio + steps_offset;
        if (top > T - 1)  // would index alphas_cumprod past its end
            throw value_error(detail::schedule_module,
                              "timesteps: leading spacing with steps_offset " +
                                  std::to_string(steps_offset) + " puts the first timestep at " +
                                  std::to_string(top) + ", beyond the last training timestep " +
                                  std::to_string(T - 1));
        for (int k = grid - 1; k >= grid - steps; --k)
            out.push_back(double(k * ratio + steps_offset));
        break;
    }
    case timestep_spacing::trailing: {
        // numpy.arange(T, 0, -T/N): a_0 = T, delta = (T - T/N) - T, a_i = a_0 + i * delta.
        const double a0 = double(T);
        const double delta = (a0 + -(double(T) / steps)) - a0;
        for (int i = 0; i < steps; ++i)
            out.push_back(detail::round_half_even(a0 + double(i) * delta) - 1.0);
        break;
    }
    }
    return out;
}

namespace detail {
inline void check_sigma_range(double sigma_min, double sigma_max, int n, const char* what) {
    if (n < 1)
        throw value_error(schedule_module,
                          std::string(what) + ": n must be at least 1, got " + std::to_string(n));
    if (!(sigma_min > 0.0) || !(sigma_max >= sigma_min) || !std::isfinite(sigma_max))
        throw value_error(schedule_module, std::string(what) +
                                               ": need 0 < sigma_min <= sigma_max < inf, got " +
                                               std::to_string(sigma_min) + " and " +
                                               std::to_string(sigma_max));
}
inline void check_rho(double rho, const char* what) {
    if (!(rho > 0.0) || !std::isfinite(rho))
        throw value_error(schedule_module,
                          std::string(what) + ": rho must be positive, got " + std::to_string(rho));
}
}  // namespace detail

/// Karras et al. 2022 (eq. 5) sigmas, descending: sigma_i = (sigma_max^(1/rho) + r_i
/// (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with r = linspace(0, 1, n) (numpy's rule,
/// diffusers `_convert_to_karras`). Returns the n sigmas WITHOUT the final sigma that
/// diffusers and k-diffusion append (0, or sigma_min for `final_sigmas_type="sigma_min"`):
/// the caller appends what its sampler needs. Throws `value_error` for n < 1, rho <= 0 or
/// not 0 < sigma_min <= sigma_max.
inline std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n,
                                         double rho = 7.0) {
    detail::check_sigma_range(sigma_min, sigma_max, n, "karras_sigmas");
    detail::check_rho(rho, "karras_sigmas");
    const double min_inv = std::pow(sigma_min, 1.0 / rho), max_inv = std::pow(sigma_max, 1.0 / rho);
    std::vector<double> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        out[std::size_t(i)] =
            std::pow(max_inv + detail::numpy_linspace_at(0.0, 1.0, n, i) * (min_inv - max_inv), rho);
    return out;
}

/// k-diffusion `get_sigmas_exponential`: exp(linspace(log sigma_max, log sigma_min, n)),
/// descending, WITHOUT k-diffusion's appended 0 (as `karras_sigmas`). Errors as there.
inline std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int n) {
    detail::check_sigma_range(sigma_min, sigma_max, n, "exponential_sigmas");
    std::vector<double> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        out[std::size_t(i)] =
            std::exp(detail::torch_linspace_at(std::log(sigma_max), std::log(sigma_min), n, i));
    return out;
}

/// k-diffusion `get_sigmas_polyexponential`: exp(r_i^rho (log sigma_max - log sigma_min) +
/// log sigma_min) with r = linspace(1, 0, n) (rho = 1 is `exponential_sigmas`), descending,
/// WITHOUT the appended 0. Errors as `karras_sigmas`.
inline std::vector<double> polyexponential_sigmas(double sigma_min, double sigma_max, int n,
                                                  double rho = 1.0) {
    detail::check_sigma_range(sigma_min, sigma_max, n, "polyexponential_sigmas");
    detail::check_rho(rho, "polyexponential_sigmas");
    const double lmin = std::log(sigma_min), lmax = std::log(sigma_max);
    std::vector<double> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        out[std::size_t(i)] =
            std::exp(std::pow(detail::torch_linspace_at(1.0, 0.0, n, i), rho) * (lmax - lmin) + lmin);
    return out;
}

/// The EDM discretisation (Karras et al. 2022, eq. 5; NVlabs/edm generate.py `edm_sampler`):
/// t_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
/// i = 0 .. n-1, then t_n = 0 — n + 1 values (this one INCLUDES the final 0, as edm does).
/// Defaults are the paper's. Errors as `karras_sigmas`.
inline std::vector<double> edm_sigmas(int n, double sigma_min = 0.002, double sigma_max = 80.0,
                                      double rho = 7.0) {
    detail::check_sigma_range(sigma_min, sigma_max, n, "edm_sigmas");
    detail::check_rho(rho, "edm_sigmas");
    const double min_inv = std::pow(sigma_min, 1.0 / rho), max_inv = std::pow(sigma_max, 1.0 / rho);
    std::vector<double> out(std::size_t(n) + 1, 0.0);
    for (int i = 0; i < n; ++i) {
        const double r = n == 1 ? 0.0 : double(i) / double(n - 1);
        out[std::size_t(i)] = std::pow(max_inv + r * (min_inv - max_inv), rho);
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Prediction-type conversions (reference section 1). Each is affine in (x, model output):
// value = x * coefficient.x + output * coefficient.output, so a sampler can fold it into one
// ops::combine with its own step coefficients.

/// value = x * `x` + model_output * `output`.
struct affine_coefficients {
    double x = 0.0;
    double output = 0.0;
};

namespace detail {
inline void check_alpha_cumprod(double ac, const char* what) {
    if (!(ac >= 0.0 && ac <= 1.0))
        throw value_error(schedule_module,
                          std::string(what) + ": alpha_cumprod must lie in [0, 1], got " +
                              std::to_string(ac));
}
inline void check_sigma(double sigma, bool positive, const char* what) {
    if (!std::isfinite(sigma) || sigma < 0.0 || (positive && sigma == 0.0))
        throw value_error(schedule_module, std::string(what) + ": sigma must be finite and " +
                                               (positive ? "> 0" : ">= 0") + ", got " +
                                               std::to_string(sigma));
}
[[noreturn]] inline void undefined_conversion(const char* what, const char* why) {
    std::string msg = what;
    msg += ": ";
    msg += why;
    throw value_error(schedule_module, msg);
}
}  // namespace detail

/// x0 from a model output on a VP sample x at level ac (eps: (x - sqrt(1-ac) eps)/sqrt(ac);
/// v: sqrt(ac) x - sqrt(1-ac) v; sample: the output). Throws `value_error` for ac outside
/// [0, 1] and for eps at ac = 0 (zero terminal SNR: x0 is not determined; use v).
inline affine_coefficients vp_x0_coefficients(prediction_type p, double ac) {
    detail::check_alpha_cumprod(ac, "vp_x0_coefficients");
    const double a = std::sqrt(ac), s = std::sqrt(1.0 - ac);
    switch (p) {
    case prediction_type::epsilon:
        if (ac == 0.0)
            detail::undefined_conversion("vp_x0_coefficients",
                                         "epsilon prediction at alpha_cumprod 0 (zero terminal "
                                         "SNR) does not determine x0; use v_prediction");
        return {1.0 / a, -s / a};
    case prediction_type::v_prediction: return {a, -s};
    case prediction_type::sample: return {0.0, 1.0};
    }
    return {};
}

/// eps from a model output on a VP sample x at level ac (eps: the output; v: sqrt(ac) v +
/// sqrt(1-ac) x; sample: (x - sqrt(ac) x0)/sqrt(1-ac)). Throws `value_error` for ac outside
/// [0, 1] and for sample at ac = 1.
inline affine_coefficients vp_eps_coefficients(prediction_type p, double ac) {
    detail::check_alpha_cumprod(ac, "vp_eps_coefficients");
    const double a = std::sqrt(ac), s = std::sqrt(1.0 - ac);
    switch (p) {
    case prediction_type::epsilon: return {0.0, 1.0};
    case prediction_type::v_prediction: return {s, a};
    case prediction_type::sample:
        if (ac == 1.0)
            detail::undefined_conversion("vp_eps_coefficients",
                                         "sample prediction at alpha_cumprod 1 does not "
                                         "determine eps");
        return {1.0 / s, -a / s};
    }
    return {};
}

/// x0 from a model output on a VE sample x at noise level sigma, the model having seen
/// x / sqrt(sigma^2 + 1) (eps: x - sigma eps; v: x/(sigma^2+1) - sigma/sqrt(sigma^2+1) v;
/// sample: the output). Throws `value_error` for a negative or non-finite sigma.
inline affine_coefficients ve_x0_coefficients(prediction_type p, double sigma) {
    detail::check_sigma(sigma, false, "ve_x0_coefficients");
    switch (p) {
    case prediction_type::epsilon: return {1.0, -sigma};
    case prediction_type::v_prediction: {
        const double q = sigma * sigma + 1.0;
        return {1.0 / q, -sigma / std::sqrt(q)};
    }
    case prediction_type::sample: return {0.0, 1.0};
    }
    return {};
}

namespace detail {
template <compute_type T>
void apply_affine(const ops::op_context& cx, tensor_ref<T> out, tensor_ref<const std::type_identity_t<T>> x,
                  tensor_ref<const std::type_identity_t<T>> y, affine_coefficients c) {
    ops::combine<T>(cx, out, {x, y}, {c.x, c.output});
}
}  // namespace detail

/// x0 = conversion of `model_output` on the VP sample `x` at level `alpha_cumprod`
/// (`vp_x0_coefficients`). x0, x, model_output: equal extents (x0 may alias either input).
/// One `ops::combine`: runs on any backend; shape errors as combine.
template <compute_type T>
void predict_x0_vp(const ops::op_context& cx, tensor_ref<T> x0, tensor_ref<const std::type_identity_t<T>> x,
                   tensor_ref<const std::type_identity_t<T>> model_output, prediction_type p,
                   double alpha_cumprod) {
    detail::apply_affine<T>(cx, x0, x, model_output, vp_x0_coefficients(p, alpha_cumprod));
}

/// eps = conversion of `model_output` on the VP sample `x` at level `alpha_cumprod`
/// (`vp_eps_coefficients`). Layout rules as `predict_x0_vp`.
template <compute_type T>
void predict_eps_vp(const ops::op_context& cx, tensor_ref<T> eps, tensor_ref<const std::type_identity_t<T>> x,
                    tensor_ref<const std::type_identity_t<T>> model_output, prediction_type p,
                    double alpha_cumprod) {
    detail::apply_affine<T>(cx, eps, x, model_output, vp_eps_coefficients(p, alpha_cumprod));
}

/// x0 = conversion of `model_output` on the VE sample `x` at noise level `sigma`
/// (`ve_x0_coefficients`). Layout rules as `predict_x0_vp`.
template <compute_type T>
void predict_x0_ve(const ops::op_context& cx, tensor_ref<T> x0, tensor_ref<const std::type_identity_t<T>> x,
                   tensor_ref<const std::type_identity_t<T>> model_output, prediction_type p,
                   double sigma) {
    detail::apply_affine<T>(cx, x0, x, model_output, ve_x0_coefficients(p, sigma));
}

/// eps = (x - sqrt(ac) x0) / sqrt(1 - ac) from a VP sample and an x0 estimate (DDIM's
/// `use_clipped_model_output`). Throws `value_error` for ac outside [0, 1).
template <compute_type T>
void eps_from_x0_vp(const ops::op_context& cx, tensor_ref<T> eps, tensor_ref<const std::type_identity_t<T>> x,
                    tensor_ref<const std::type_identity_t<T>> x0, double alpha_cumprod) {
    detail::check_alpha_cumprod(alpha_cumprod, "eps_from_x0_vp");
    if (alpha_cumprod == 1.0)
        detail::undefined_conversion("eps_from_x0_vp", "alpha_cumprod 1 (no noise) has no eps");
    const double s = std::sqrt(1.0 - alpha_cumprod);
    detail::apply_affine<T>(cx, eps, x, x0, {1.0 / s, -std::sqrt(alpha_cumprod) / s});
}

/// The Karras ODE derivative d = (x - x0) / sigma (k-diffusion `to_d`; also the VE eps
/// from an x0 estimate). Throws `value_error` unless sigma is finite and > 0.
template <compute_type T>
void karras_derivative(const ops::op_context& cx, tensor_ref<T> d, tensor_ref<const std::type_identity_t<T>> x,
                       tensor_ref<const std::type_identity_t<T>> x0, double sigma) {
    detail::check_sigma(sigma, true, "karras_derivative");
    detail::apply_affine<T>(cx, d, x, x0, {1.0 / sigma, -1.0 / sigma});
}

// ---------------------------------------------------------------------------------------
// Clipping and dynamic thresholding of x0 (reference section 5). Host loops.

namespace detail {
template <class T>
void expect_host(const tensor_ref<T>& t, const char* what) {
    if (t.space() != memory_space::host)
        throw backend_error(schedule_module,
                            std::string(what) + ": expected a host tensor, got a device tensor");
    if (t.numel() > 0 && t.data() == nullptr)
        throw shape_error(schedule_module, what, "a view with data", "a null view " + t.describe());
}
}  // namespace detail

/// diffusers `clip_sample`: x0 <- clamp(x0, -range, range), in place (any strides, host
/// memory). Throws `value_error` unless range is finite and > 0, `backend_error` for device
/// memory.
template <compute_type T>
void clip_sample(tensor_ref<T> x0, double range = 1.0) {
    if (!(range > 0.0) || !std::isfinite(range))
        throw value_error(detail::schedule_module,
                          "clip_sample: range must be finite and > 0, got " + std::to_string(range));
    detail::expect_host(x0, "clip_sample");
    const T lo = T(-range), hi = T(range);
    mmfuse::detail::for_each_logical(x0, [&](T& v, index_t) { v = std::clamp(v, lo, hi); });
}

/// Scratch elements `dynamic_threshold` needs for a tensor of extents `e`: one batch item.
inline index_t dynamic_threshold_scratch_size(const extents& e) {
    return e.rank() == 0 || e[0] == 0 ? 0 : e.numel() / e[0];
}

/// Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3; diffusers
/// `_threshold_sample`), in place: for each batch item b (axis 0), over all its other
/// elements, s = the `ratio`-quantile of |x0[b]| (torch.quantile's linear interpolation
/// between order statistics at position ratio * (n - 1)), clamped to [1, max_value]; then
/// x0[b] <- clamp(x0[b], -s, s) / s. `scratch` holds at least
/// `dynamic_threshold_scratch_size(x0.extents())` doubles (so no allocation per step).
/// diffusers requires rank >= 3; any rank >= 1 works here. Throws `value_error` unless
/// 0 <= ratio <= 1 and max_value >= 1, `shape_error` for rank 0 or short scratch,
/// `backend_error` for device memory.
template <compute_type T>
void dynamic_threshold(tensor_ref<T> x0, std::span<double> scratch, double ratio = 0.995,
                       double max_value = 1.0) {
    detail::expect_in_range(ratio, 0.0, 1.0, false, "dynamic_threshold ratio");
    if (!(max_value >= 1.0) || !std::isfinite(max_value))
        throw value_error(detail::schedule_module,
                          "dynamic_threshold: max_value must be finite and >= 1, got " +
                              std::to_string(max_value));
    detail::expect_host(x0, "dynamic_threshold");
    if (x0.rank() < 1)
        throw shape_error(detail::schedule_module, "dynamic_threshold x0",
                          "a tensor of rank >= 1 (batch first)", "rank 0");
    const index_t per = dynamic_threshold_scratch_size(x0.extents());
    if (index_t(scratch.size()) < per)
        throw shape_error(detail::schedule_module, "dynamic_threshold scratch",
                          std::to_string(per) + " elements", std::to_string(scratch.size()));
    if (per == 0) return;
    for (index_t b = 0; b < x0.extent(0); ++b) {
        tensor_ref<T> item = x0.narrow(0, b, 1);
        mmfuse::detail::for_each_logical(
            item, [&](T& v, index_t i) { scratch[std::size_t(i)] = std::abs(double(v)); });
        const auto first = scratch.begin();
        const double pos = ratio * double(per - 1);
        const auto lo_i = std::size_t(std::floor(pos));
        const double w = pos - double(lo_i);
        std::nth_element(first, first + std::ptrdiff_t(lo_i), first + std::ptrdiff_t(per));
        const double lo = scratch[lo_i];
        double hi = lo;
        if (lo_i + 1 < std::size_t(per))
            hi = *std::min_element(first + std::ptrdiff_t(lo_i) + 1, first + std::ptrdiff_t(per));
        const double s = std::clamp(lo + w * (hi - lo), 1.0, max_value);
        mmfuse::detail::for_each_logical(
            item, [&](T& v, index_t) { v = T(std::clamp(double(v), -s, s) / s); });
    }
}

/// `dynamic_threshold` with its own scratch (allocates; for one-off use outside a sampler
/// loop).
template <compute_type T>
void dynamic_threshold(tensor_ref<T> x0, double ratio = 0.995, double max_value = 1.0) {
    std::vector<double> scratch(std::size_t(dynamic_threshold_scratch_size(x0.extents())));
    dynamic_threshold(x0, std::span<double>(scratch), ratio, max_value);
}

}  // namespace mmfuse::inline v0::diffusion
