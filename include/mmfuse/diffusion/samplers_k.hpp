#pragma once
/// \file
/// k-diffusion's samplers (Crowson, crowsonkb/k-diffusion `k_diffusion/sampling.py`, v0.1.1;
/// reference/diffusion.md section 7) and the EDM stochastic sampler (Karras et al. 2022,
/// Algorithm 2; NVlabs/edm `edm_sampler`; section 8), as one template over a sigma-space
/// denoiser D(x, sigma) ~ E[x0 | x] on the VE sample x = x0 + sigma n:
///
///     k_sampler<double> s(cx, k_method::dpmpp_2m, sigmas);   // sigmas: sigma_0 > ... > 0
///     x = noise * s.init_noise_sigma();                      // the caller's start
///     s.sample(denoiser, x, noise_source);                   // or s.step(denoiser, i, x, ...)
///
/// Every update is one or two `ops::combine` calls (via `lincomb`), in place on x; the state
/// (denoised estimates, history) lives in buffers allocated once per sample shape.
/// Notation: sigma = sigma_i, sigma' = sigma_{i+1}, d = (x - D)/sigma (Karras' ODE derivative).

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::diffusion {

/// The k-diffusion sampling methods (function `sample_<name>` in k-diffusion).
enum class k_method {
    euler,               ///< Euler (Karras Alg. 2 without the Heun correction), with churn
    euler_ancestral,     ///< Euler + ancestral noise (eta)
    heun,                ///< Heun's 2nd order (Karras Alg. 2), with churn; Euler on the last step
    dpm_2,               ///< DPM-Solver-2 (midpoint in log sigma), with churn; Euler last
    dpmpp_2m,            ///< DPM-Solver++(2M) (Lu et al. 2022), multistep
    dpmpp_2s_ancestral,  ///< DPM-Solver++(2S) single-step + ancestral noise (eta)
    lms,                 ///< linear multistep on the derivative (order 1..4)
};

/// Options of `k_sampler` (k-diffusion's keyword arguments and defaults).
///   s_churn, s_tmin, s_tmax, s_noise: churn of euler / heun / dpm_2 (Karras' S_churn, S_tmin,
///     S_tmax, S_noise): gamma = min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma <= s_tmax;
///     s_noise also scales the ancestral noise.
///   eta: ancestral noise amount of euler_ancestral / dpmpp_2s_ancestral (0 = deterministic).
///   lms_order: order of lms, 1..4.
///   draw_every_step: euler / heun / dpm_2 draw their churn noise on every step, used or not
///     (k-diffusion 0.1.1 and NVlabs/edm: `randn_like` before the gamma test), or, when
///     false, only when gamma > 0 (later k-diffusion). Only the stream position of later
///     draws depends on it; with `no_noise` nothing is drawn while gamma = 0.
struct k_options {
    double s_churn = 0.0;
    double s_tmin = 0.0;
    double s_tmax = std::numeric_limits<double>::infinity();
    double s_noise = 1.0;
    double eta = 1.0;
    int lms_order = 4;
    bool draw_every_step = true;
};

/// The linear-multistep weight c_j = integral over [t[i], t[i+1]] of the Lagrange basis
/// polynomial prod_{k != j, k < order} (tau - t[i-k]) / (t[i-j] - t[i-k]) (k-diffusion's
/// `linear_multistep_coeff`, there by adaptive quadrature). Computed exactly: 3-point
/// Gauss-Legendre integrates the (degree <= 3) polynomial without error.
/// Throws `value_error` unless 1 <= order, 0 <= j < order, order - 1 <= i and
/// i + 1 < t.size() (the nodes t[i - order + 1 .. i] and the interval end t[i + 1] exist).
inline double linear_multistep_weight(int order, std::span<const double> t, std::size_t i,
                                      int j) {
    if (order < 1 || j < 0 || j >= order || i < std::size_t(order - 1) || i + 1 >= t.size()) {
        std::string msg = "linear_multistep_weight: need 1 <= order, 0 <= j < order, order - 1 "
                          "<= i and i + 1 < t.size(), got order ";
        msg += std::to_string(order);
        msg += ", i ";
        msg += std::to_string(i);
        msg += ", j ";
        msg += std::to_string(j);
        msg += ", t.size() ";
        msg += std::to_string(t.size());
        throw value_error("diffusion.samplers_k", msg);
    }
    const auto basis = [&](double tau) {
        double p = 1.0;
        for (int k = 0; k < order; ++k) {
            if (k == j) continue;
            p *= (tau - t[i - std::size_t(k)]) / (t[i - std::size_t(j)] - t[i - std::size_t(k)]);
        }
        return p;
    };
    const double a = t[i], b = t[i + 1];
    const double mid = 0.5 * (a + b), half = 0.5 * (b - a);
    const double node = std::sqrt(3.0 / 5.0);
    return half * (5.0 / 9.0 * basis(mid - half * node) + 8.0 / 9.0 * basis(mid) +
                   5.0 / 9.0 * basis(mid + half * node));
}

/// A k-diffusion sampler over a fixed sigma sequence sigma_0 > sigma_1 > ... > sigma_N
/// (normally sigma_N = 0; N steps). See `k_method` for the methods. Noise draws, exactly where
/// k-diffusion draws (so a recorded sequence replays): euler / heun / dpm_2: one per step,
/// always (used only when gamma > 0); euler_ancestral / dpmpp_2s_ancestral: one per step with
/// sigma' > 0, whatever eta (as k-diffusion), except that with `no_noise` a step whose
/// sigma_up is 0 (eta = 0) draws nothing; others: none.
/// Denoiser calls: N (euler, euler_a, dpmpp_2m, lms), 2N - 1 (heun, dpm_2 when sigma_N = 0),
/// up to 2N (dpmpp_2s_ancestral). Steps must be taken in order 0, 1, ..., N-1.
template <compute_type T>
class k_sampler {
public:
    /// Sampler of `method` over `sigmas` (at least 2 values, finite, >= 0, strictly
    /// decreasing). Throws `value_error` naming the problem.
    k_sampler(ops::op_context cx, k_method method, std::span<const double> sigmas,
              k_options options = {})
        : cx_(cx), method_(method), sigmas_(sigmas.begin(), sigmas.end()), opt_(options) {
        if (sigmas_.size() < 2)
            throw value_error(cx_.module, "k_sampler: need at least 2 sigmas, got " +
                                              std::to_string(sigmas_.size()));
        for (std::size_t i = 0; i < sigmas_.size(); ++i) {
            if (!std::isfinite(sigmas_[i]) || sigmas_[i] < 0.0)
                throw value_error(cx_.module, "k_sampler: sigma " + std::to_string(i) +
                                                  " must be finite and >= 0, got " +
                                                  std::to_string(sigmas_[i]));
            if (i > 0 && !(sigmas_[i] < sigmas_[i - 1]))
                throw value_error(cx_.module, "k_sampler: sigmas must decrease strictly");
        }
        if (method_ == k_method::lms && (opt_.lms_order < 1 || opt_.lms_order > 4))
            throw value_error(cx_.module, "k_sampler: lms_order must be in [1, 4], got " +
                                              std::to_string(opt_.lms_order));
    }

    /// Number of steps N (= sigmas - 1).
    int steps() const noexcept { return int(sigmas_.size()) - 1; }
    /// The sigma sequence sigma_0 > ... > sigma_N given to the constructor.
    std::span<const double> sigmas() const noexcept { return sigmas_; }
    /// The std of the starting noise: x_0 = sigma_0 * z.
    double init_noise_sigma() const noexcept { return sigmas_.front(); }

    /// Allocates the state buffers for samples of extents `e` from `a` (optional: otherwise
    /// they are allocated from an owned host arena at the first step).
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, buffer_count());
    }

    /// Runs all N steps on x in place.
    template <denoiser<T> D, noise_source<T> N = no_noise<T>>
    void sample(D& denoise, tensor_ref<T> x, N&& noise = N{}) {
        for (int i = 0; i < steps(); ++i)
            step(denoise, i, x, noise);
    }

    /// Step i (0-based; call in order): x <- x at sigma_{i+1}.
    template <denoiser<T> D, noise_source<T> N = no_noise<T>>
    void step(D& denoise, int i, tensor_ref<T> x, N&& noise = N{}) {
        if (i < 0 || i >= steps())
            throw value_error(cx_.module, "k_sampler: step " + std::to_string(i) +
                                              " is outside [0, " + std::to_string(steps()) + ")");
        if (i != next_step_ && i != 0)
            throw value_error(cx_.module, "k_sampler: steps must be taken in order; expected " +
                                              std::to_string(next_step_) + ", got " +
                                              std::to_string(i));
        if (bufs_.count() != buffer_count() || bufs_.shape() != x.extents())
            bufs_.ensure(x.extents(), buffer_count());
        if (i == 0) history_ = 0;
        next_step_ = i + 1;
        switch (method_) {
            case k_method::euler:
            case k_method::heun:
            case k_method::dpm_2: churned_step(denoise, i, x, noise); break;
            case k_method::euler_ancestral: euler_ancestral_step(denoise, i, x, noise); break;
            case k_method::dpmpp_2m: dpmpp_2m_step(denoise, i, x); break;
            case k_method::dpmpp_2s_ancestral: dpmpp_2s_step(denoise, i, x, noise); break;
            case k_method::lms: lms_step(denoise, i, x); break;
        }
    }

private:
    using cref = tensor_ref<const T>;
    // Buffers: 0 denoised, 1 second-stage sample, 2 second-stage denoised, 3.. history.
    int buffer_count() const noexcept {
        switch (method_) {
            case k_method::dpmpp_2m: return 4;
            case k_method::lms: return 3 + opt_.lms_order;
            default: return 3;
        }
    }

    template <class D>
    void denoise_into(D& denoise, cref x, double sigma, tensor_ref<T> out) {
        denoise(x, sigma, out);
    }

    /// euler / heun / dpm_2 with Karras churn (sigma_hat = sigma (1 + gamma)).
    template <class D, class N>
    void churned_step(D& denoise, int i, tensor_ref<T> x, N& noise) {
        const double s = sigmas_[std::size_t(i)], s_next = sigmas_[std::size_t(i) + 1];
        const bool churn_here = opt_.s_tmin <= s && s <= opt_.s_tmax;
        const double gamma =
            churn_here ? std::min(opt_.s_churn / double(steps()), std::sqrt(2.0) - 1.0) : 0.0;
        constexpr bool deterministic = std::is_same_v<std::remove_cvref_t<N>, no_noise<T>>;
        const bool draw = gamma > 0.0 || (opt_.draw_every_step && !deterministic);
        const noise_term<T> z = draw ? noise.next(x.extents()) : noise_term<T>{};
        const double s_hat = s * (gamma + 1.0);
        if (gamma > 0.0)
            lincomb<T>(cx_, x, {cref(x)}, {1.0},
                       opt_.s_noise * std::sqrt(s_hat * s_hat - s * s), &z);
        const tensor_ref<T> den = bufs_[0];
        denoise_into(denoise, x, s_hat, den);
        const double dt = s_next - s_hat;
        if (method_ == k_method::euler || s_next == 0.0) {
            // x + d dt, d = (x - den) / s_hat
            lincomb<T>(cx_, x, {cref(x), cref(den)}, {1.0 + dt / s_hat, -dt / s_hat});
            return;
        }
        const tensor_ref<T> x2 = bufs_[1], den2 = bufs_[2];
        if (method_ == k_method::heun) {
            lincomb<T>(cx_, x2, {cref(x), cref(den)}, {1.0 + dt / s_hat, -dt / s_hat});
            denoise_into(denoise, x2, s_next, den2);
            // x + dt (d + d2) / 2, d2 = (x2 - den2) / s_next
            const double a = 0.5 * dt / s_hat, b = 0.5 * dt / s_next;
            lincomb<T>(cx_, x, {cref(x), cref(den), cref(x2), cref(den2)}, {1.0 + a, -a, b, -b});
            return;
        }
        // dpm_2: midpoint in log sigma
        const double log_hat = std::log(s_hat);
        const double s_mid = std::exp(log_hat + 0.5 * (std::log(s_next) - log_hat));
        const double dt1 = s_mid - s_hat;
        lincomb<T>(cx_, x2, {cref(x), cref(den)}, {1.0 + dt1 / s_hat, -dt1 / s_hat});
        denoise_into(denoise, x2, s_mid, den2);
        // x + d2 dt, d2 = (x2 - den2) / s_mid
        lincomb<T>(cx_, x, {cref(x), cref(x2), cref(den2)}, {1.0, dt / s_mid, -dt / s_mid});
    }

    /// Whether an ancestral step to s_next draws: k-diffusion draws whenever s_next > 0 (so
    /// a real source advances even at eta = 0); with `no_noise` and sigma_up = 0 nothing is
    /// drawn, so eta = 0 runs deterministically.
    template <class N>
    static bool ancestral_draws(double s_next, const ancestral_split& a) {
        constexpr bool deterministic = std::is_same_v<std::remove_cvref_t<N>, no_noise<T>>;
        return s_next > 0.0 && !(deterministic && a.sigma_up == 0.0);
    }

    template <class D, class N>
    void euler_ancestral_step(D& denoise, int i, tensor_ref<T> x, N& noise) {
        const double s = sigmas_[std::size_t(i)], s_next = sigmas_[std::size_t(i) + 1];
        const tensor_ref<T> den = bufs_[0];
        denoise_into(denoise, x, s, den);
        const ancestral_split a = ancestral_step(s, s_next, opt_.eta);
        const double dt = a.sigma_down - s;
        if (ancestral_draws<N>(s_next, a)) {
            const noise_term<T> z = noise.next(x.extents());
            lincomb<T>(cx_, x, {cref(x), cref(den)}, {1.0 + dt / s, -dt / s},
                       opt_.s_noise * a.sigma_up, &z);
        } else {
            lincomb<T>(cx_, x, {cref(x), cref(den)}, {1.0 + dt / s, -dt / s});
        }
    }

    template <class D>
    void dpmpp_2m_step(D& denoise, int i, tensor_ref<T> x) {
        const std::size_t k = std::size_t(i);
        const double s = sigmas_[k], s_next = sigmas_[k + 1];
        const tensor_ref<T> den = bufs_[0], old = bufs_[3];
        denoise_into(denoise, x, s, den);
        const double h = std::log(s) - std::log(s_next);  // t_next - t with t = -log sigma
        const double ratio = s_next / s, phi = std::expm1(-h);
        if (history_ == 0 || s_next == 0.0) {
            lincomb<T>(cx_, x, {cref(x), cref(den)}, {ratio, -phi});
        } else {
            const double r = (std::log(sigmas_[k - 1]) - std::log(s)) / h;
            const double c_new = 1.0 + 1.0 / (2.0 * r), c_old = -1.0 / (2.0 * r);
            lincomb<T>(cx_, x, {cref(x), cref(den), cref(old)},
                       {ratio, -phi * c_new, -phi * c_old});
        }
        bufs_.swap(0, 3);  // the denoised estimate becomes the history
        history_ = 1;
    }

    template <class D, class N>
    void dpmpp_2s_step(D& denoise, int i, tensor_ref<T> x, N& noise) {
        const double s = sigmas_[std::size_t(i)], s_next = sigmas_[std::size_t(i) + 1];
        const tensor_ref<T> den = bufs_[0], x2 = bufs_[1], den2 = bufs_[2];
        denoise_into(denoise, x, s, den);
        const ancestral_split a = ancestral_step(s, s_next, opt_.eta);
        const bool noisy = ancestral_draws<N>(s_next, a);
        const noise_term<T> z = noisy ? noise.next(x.extents()) : noise_term<T>{};
        const double up = noisy ? opt_.s_noise * a.sigma_up : 0.0;
        if (a.sigma_down == 0.0) {  // Euler to sigma_down = 0
            const double dt = a.sigma_down - s;
            lincomb<T>(cx_, x, {cref(x), cref(den)}, {1.0 + dt / s, -dt / s}, up, &z);
            return;
        }
        const double t = -std::log(s), t_next = -std::log(a.sigma_down);
        const double h = t_next - t, t_mid = t + 0.5 * h;
        const double s_mid = std::exp(-t_mid);
        lincomb<T>(cx_, x2, {cref(x), cref(den)}, {s_mid / s, -std::expm1(-0.5 * h)});
        denoise_into(denoise, x2, s_mid, den2);
        lincomb<T>(cx_, x, {cref(x), cref(den2)}, {std::exp(-t_next) / std::exp(-t),
                                                   -std::expm1(-h)},
                   up, &z);
    }

    template <class D>
    void lms_step(D& denoise, int i, tensor_ref<T> x) {
        const std::size_t k = std::size_t(i);
        const double s = sigmas_[k];
        const int order = opt_.lms_order;
        const tensor_ref<T> den = bufs_[0];
        denoise_into(denoise, x, s, den);
        // History ring: buffers 3 .. 3+order-1, newest first; the oldest slot becomes 3,
        // which d_i then overwrites.
        detail::rotate_history(bufs_, 3, order);
        const tensor_ref<T> d = bufs_[3];
        lincomb<T>(cx_, d, {cref(x), cref(den)}, {1.0 / s, -1.0 / s});
        history_ = std::min(history_ + 1, order);
        const int q = std::min(i + 1, order);
        std::array<cref, 5> terms{};
        std::array<double, 5> w{};
        terms[0] = x;
        w[0] = 1.0;
        for (int j = 0; j < q; ++j) {
            terms[std::size_t(j) + 1] = bufs_[3 + j];
            w[std::size_t(j) + 1] = linear_multistep_weight(q, sigmas_, k, j);
        }
        lincomb<T>(cx_, x, std::span<const cref>(terms.data(), std::size_t(q) + 1),
                   std::span<const double>(w.data(), std::size_t(q) + 1));
    }

    ops::op_context cx_;
    k_method method_;
    std::vector<double> sigmas_;
    k_options opt_;
    state_buffers<T> bufs_;
    int history_ = 0;
    int next_step_ = 0;
};

/// Options of the EDM sampler (NVlabs/edm `edm_sampler` defaults): `num_steps` sigmas
/// from the Karras schedule (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
/// sigma_max^(1/rho)))^rho, i < N, then 0; churn S_churn, S_min, S_max, S_noise.
struct edm_options {
    int num_steps = 18;
    double sigma_min = 0.002;
    double sigma_max = 80.0;
    double rho = 7.0;
    double s_churn = 0.0;
    double s_min = 0.0;
    double s_max = std::numeric_limits<double>::infinity();
    double s_noise = 1.0;
};

/// The EDM stochastic sampler (Karras et al. 2022, Alg. 2): Heun with churn over
/// `edm_sigmas(o.num_steps, o.sigma_min, o.sigma_max, o.rho)`: `k_sampler` heun on those
/// sigmas, one noise draw on every step (edm draws `randn_like` every step); the Heun
/// correction is skipped on the step to 0 (edm's `i < num_steps - 1`).
template <compute_type T>
k_sampler<T> edm_sampler(ops::op_context cx, const edm_options& o = {}) {
    const std::vector<double> sigmas = edm_sigmas(o.num_steps, o.sigma_min, o.sigma_max, o.rho);
    return k_sampler<T>(cx, k_method::heun, sigmas,
                        k_options{.s_churn = o.s_churn, .s_tmin = o.s_min, .s_tmax = o.s_max,
                                  .s_noise = o.s_noise});
}

}  // namespace mmfuse::inline v0::diffusion
