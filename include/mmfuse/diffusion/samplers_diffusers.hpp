#pragma once
/// \file
/// diffusers-style schedulers (Hugging Face diffusers `schedulers/scheduling_*.py`, v0.4x;
/// reference/diffusion.md sections 3-5): DDPM, DDIM, Euler and Euler-ancestral, as templates
/// over a VP *model* m(x_in, t, out) that writes its output in `prediction_type` space
/// (the `denoiser` concept with level = training timestep). One interface for all:
///
///     ddim_sampler<float> s(cx, schedule, {.eta = 0.0});
///     s.set_timesteps(50);
///     x = z * s.init_noise_sigma();                 // z ~ N(0, I), the caller's latent
///     s.sample(model, x, noise);                     // the whole loop, or per call i:
///     //   m(s.model_input(i, x), s.timesteps()[i], out);  s.step(i, out, x, noise);
///
/// All arithmetic is double (the coefficients) and T (the tensors, through `ops::combine`);
/// built on a `noise_schedule` with `float32_tables = false` the chains reproduce diffusers
/// run in float64 to ~1e-15, with `true` (diffusers' float32 tables) they follow the float32
/// library to its own precision. State buffers are allocated at the first step (or from a
/// caller's allocator), never per step. Clipping and dynamic thresholding of x0 are host
/// loops (schedule.hpp), so those options need host memory.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::diffusion {

/// How a scheduler post-processes its x0 estimate (diffusers `clip_sample`, `thresholding`;
/// reference section 5). Thresholding takes precedence over clipping.
struct x0_processing {
    bool clip_sample = false;
    double clip_sample_range = 1.0;
    bool thresholding = false;
    double dynamic_thresholding_ratio = 0.995;
    double sample_max_value = 1.0;
};

namespace detail {

/// The loop every diffusers-style sampler shares (CRTP): for each model call i, the model
/// sees `model_input(i, x)` at `timesteps()[i]`, writes into the output buffer, and
/// `step(i, out, x, noise)` advances x in place.
template <class Derived, compute_type T>
class diffusers_loop {
public:
    /// Runs every model call on x in place (x starts as z * init_noise_sigma()).
    template <denoiser<T> M, noise_source<T> N = no_noise<T>>
    void sample(M& model, tensor_ref<T> x, N&& noise = N{}) {
        Derived& d = static_cast<Derived&>(*this);
        for (int i = 0; i < d.calls(); ++i) {
            const tensor_ref<const T> in = d.model_input(i, x);
            const tensor_ref<T> out = d.output_buffer(x.extents());
            model(in, d.timesteps()[std::size_t(i)], out);
            d.step(i, tensor_ref<const T>(out), x, noise);
        }
    }
};

/// Throws unless set_timesteps ran and 0 <= i < calls.
inline void check_call(std::string_view module, int i, std::size_t calls) {
    if (calls == 0) throw value_error(module, "call set_timesteps(n) before sampling");
    if (i < 0 || std::size_t(i) >= calls)
        throw value_error(module, "model call " + std::to_string(i) + " is outside [0, " +
                                      std::to_string(calls) + ")");
}

/// A diffusers sigma value as the library stores it: rounded to float with `float32_tables`
/// (diffusers keeps its sigma arrays in float32), unchanged otherwise.
inline double stored_sigma(const noise_schedule& s, double sigma) {
    return s.config().float32_tables ? double(float(sigma)) : sigma;
}

/// The sigma grid of diffusers' VE ("discrete") schedulers, Euler / Euler-ancestral / Heun /
/// LMS (reference section 3): N-grid timesteps with fractional linspace values, sigma_i the
/// table interpolated there; with `karras` the Karras sigmas between the ends of that grid
/// (not of the table) and t_i = sigma_to_t(sigma_i) (fractional). `sigmas` ends with the
/// appended 0 (N + 1 values); init_noise_sigma = max sigma, or sqrt(max^2 + 1) for `leading`.
/// Throws `value_error` when a grid sigma is not finite: with `rescale_zero_terminal_snr`
/// and terminal_alpha_cumprod 0 the last training sigma is infinite, which sigma-space
/// samplers cannot step from (diffusers sets 2^-24 there for them).
inline void check_finite_sigmas(std::span<const double> sigmas) {
    for (const double v : sigmas)
        if (!std::isfinite(v))
            throw value_error(schedule_module,
                              "sigma grid: a grid sigma is not finite (zero terminal SNR makes "
                              "the last sigma infinite); set schedule_config "
                              "terminal_alpha_cumprod = 2^-24 (as diffusers' sigma-space "
                              "schedulers do) or use a VP sampler (DDPM / DDIM)");
}

/// The grid of ve_sigma_grid / make_ve_sigma_grid (below): the N timesteps and N + 1 sigmas.
struct ve_sigma_grid {
    std::vector<double> timesteps;
    std::vector<double> sigmas;
    double init_noise_sigma = 1.0;
};
inline ve_sigma_grid make_ve_sigma_grid(const noise_schedule& s, int n, timestep_spacing spacing,
                                        int steps_offset, bool karras) {
    ve_sigma_grid g;
    g.timesteps = diffusion::timesteps(s, n, spacing, steps_offset, false, false);
    g.sigmas.assign(g.timesteps.size(), 0.0);
    for (std::size_t i = 0; i < g.timesteps.size(); ++i)
        g.sigmas[i] = s.sigma_at(g.timesteps[i]);
    if (karras) {
        g.sigmas = karras_sigmas(g.sigmas.back(), g.sigmas.front(), n);
        for (std::size_t i = 0; i < g.sigmas.size(); ++i) {
            g.timesteps[i] = s.sigma_to_t(g.sigmas[i]);
            g.sigmas[i] = stored_sigma(s, g.sigmas[i]);
        }
    }
    check_finite_sigmas(g.sigmas);
    const double top = *std::max_element(g.sigmas.begin(), g.sigmas.end());
    g.init_noise_sigma = spacing == timestep_spacing::leading ? std::sqrt(top * top + 1.0) : top;
    g.sigmas.push_back(0.0);
    return g;
}

/// What diffusers' VE-space samplers (Euler / Euler-ancestral, LMS, Heun) share: the op
/// context, the schedule, the sigma grid, the state buffers (0 model output, 1 model input,
/// then the sampler's own), the accessors over them and the scaled model input. `Derived`
/// adds `set_timesteps`, `step` and a private `ensure(extents)` that sizes its buffers (it
/// befriends this class).
template <class Derived, compute_type T>
class ve_grid_sampler : public diffusers_loop<Derived, T> {
public:
    /// The model timesteps of calls 0 .. calls()-1 (empty before set_timesteps).
    std::span<const double> timesteps() const noexcept { return timesteps_; }
    /// The sigmas of the calls, a final 0 appended (Heun: interleaved, see its comment).
    std::span<const double> sigmas() const noexcept { return sigmas_; }
    /// Number of model calls of one sample.
    int calls() const noexcept { return int(timesteps_.size()); }
    /// The std of the starting noise: x = init_noise_sigma() * z.
    double init_noise_sigma() const noexcept { return init_sigma_; }

    /// x / sqrt(sigmas()[i]^2 + 1) in the sampler's input buffer (what the model sees).
    tensor_ref<const T> model_input(int i, tensor_ref<const T> x) {
        check_call(cx_.module, i, timesteps_.size());
        derived().ensure(x.extents());
        const double s = sigmas_[std::size_t(i)];
        lincomb<T>(cx_, bufs_[1], {x}, {1.0 / std::sqrt(s * s + 1.0)});
        return bufs_[1];
    }
    /// The buffer the model writes its output of extents `e` into.
    tensor_ref<T> output_buffer(const extents& e) {
        derived().ensure(e);
        return bufs_[0];
    }

protected:
    /// `schedule` must outlive the sampler.
    ve_grid_sampler(ops::op_context cx, const noise_schedule& schedule)
        : cx_(cx), schedule_(&schedule) {}

    ops::op_context cx_;
    const noise_schedule* schedule_;
    std::vector<double> timesteps_, sigmas_;
    double init_sigma_ = 1.0;
    state_buffers<T> bufs_;

private:
    Derived& derived() noexcept { return static_cast<Derived&>(*this); }
};

/// Applies `p` to x0 in place (host memory; `scratch` as `dynamic_threshold` needs).
template <compute_type T>
void process_x0(const x0_processing& p, tensor_ref<T> x0, std::vector<double>& scratch) {
    if (p.thresholding) {
        dynamic_threshold(x0, std::span<double>(scratch), p.dynamic_thresholding_ratio,
                          p.sample_max_value);
    } else if (p.clip_sample) {
        clip_sample(x0, p.clip_sample_range);
    }
}

}  // namespace detail

/// Options of `ddpm_sampler` (diffusers DDPMScheduler; variance_type fixed_small).
struct ddpm_options {
    timestep_spacing spacing = timestep_spacing::leading;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    x0_processing x0{.clip_sample = true};  ///< diffusers' default clip_sample=True
};

/// Options of `ddim_sampler` (diffusers DDIMScheduler and its step() arguments).
struct ddim_options {
    timestep_spacing spacing = timestep_spacing::leading;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    x0_processing x0{.clip_sample = true};  ///< diffusers' default clip_sample=True
    bool set_alpha_to_one = true;           ///< final level 1 (else alphas_cumprod[0])
    double eta = 0.0;                       ///< DDIM's eta: 0 deterministic, 1 DDPM-like
    bool use_clipped_model_output = false;  ///< re-derive eps from the processed x0
};

/// Ancestral VP samplers on a timestep grid: DDPM (Ho et al. 2020; diffusers DDPMScheduler,
/// variance fixed_small) and DDIM (Song et al. 2021; DDIMScheduler), one class since the
/// step is the same shape: x0 (and eps) from the output, processed x0, then
/// x' = a x0 + b eps-or-x + std z. See reference section 4.1 / 4.2 for every rule:
///   DDPM: prev = the next listed timestep (or "-1": level 1); noise only when t > 0.
///   DDIM: prev = t - T div N whatever the spacing; final level 1 or ac[0]; noise (one draw
///         per step, every step) only when eta > 0.
template <compute_type T>
class vp_ancestral_sampler : public detail::diffusers_loop<vp_ancestral_sampler<T>, T> {
public:
    /// DDPM on `schedule` (which must outlive the sampler).
    vp_ancestral_sampler(ops::op_context cx, const noise_schedule& schedule, ddpm_options o)
        : cx_(cx), schedule_(&schedule), ddim_(false), o_{o.spacing, o.steps_offset, o.prediction,
                                                          o.x0,      true,           1.0,
                                                          false} {}
    /// DDIM on `schedule` (which must outlive the sampler).
    vp_ancestral_sampler(ops::op_context cx, const noise_schedule& schedule, ddim_options o)
        : cx_(cx), schedule_(&schedule), ddim_(true), o_(o) {
        if (!(o.eta >= 0.0) || !std::isfinite(o.eta))
            throw value_error(cx_.module, "ddim_sampler: eta must be finite and >= 0, got " +
                                              std::to_string(o.eta));
    }

    /// Chooses the N timesteps (diffusers set_timesteps).
    /// Throws as `diffusion::timesteps`; on a throw the sampler keeps its previous grid.
    void set_timesteps(int n) {
        std::vector<double> grid = diffusion::timesteps(*schedule_, n, o_.spacing, o_.steps_offset);
        timesteps_ = std::move(grid);  // commit only after validation (strong guarantee)
        steps_ = n;
    }
    /// The model timesteps of calls 0 .. calls()-1 (empty before set_timesteps).
    std::span<const double> timesteps() const noexcept { return timesteps_; }
    /// Number of model calls (steps) of one sample.
    int calls() const noexcept { return int(timesteps_.size()); }
    /// The std of the starting noise: x = init_noise_sigma() * z.
    double init_noise_sigma() const noexcept { return 1.0; }
    /// The model input of call i: x itself (VP samplers do not scale).
    tensor_ref<const T> model_input(int, tensor_ref<const T> x) const noexcept { return x; }
    /// The buffer `sample` lets the model write into.
    tensor_ref<T> output_buffer(const extents& e) {
        ensure(e);
        return bufs_[0];
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, 3);
        scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
    }

    /// Model call i with output `out` (must not be this sampler's x0 / eps buffers; the
    /// output buffer is fine): x <- x at the previous timestep.
    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& noise = N{}) {
        detail::check_call(cx_.module, i, timesteps_.size());
        ensure(x.extents());
        const auto ac = schedule_->alphas_cumprod();
        const int t = int(timesteps_[std::size_t(i)]);
        const double ac_t = ac[std::size_t(t)];
        double ac_prev;
        if (ddim_) {
            const int prev = t - schedule_->num_train_timesteps() / steps_;
            ac_prev = prev >= 0 ? ac[std::size_t(prev)] : (o_.set_alpha_to_one ? 1.0 : ac[0]);
        } else {
            const int prev =
                std::size_t(i) + 1 < timesteps_.size() ? int(timesteps_[std::size_t(i) + 1]) : -1;
            ac_prev = prev >= 0 ? ac[std::size_t(prev)] : 1.0;
        }
        const tensor_ref<T> x0 = bufs_[1], eps = bufs_[2];
        const affine_coefficients cx0 = vp_x0_coefficients(o_.prediction, ac_t);
        lincomb<T>(cx_, x0, {tensor_ref<const T>(x), out}, {cx0.x, cx0.output});
        detail::process_x0(o_.x0, x0, scratch_);
        using cref = tensor_ref<const T>;
        if (!ddim_) {
            const double beta = 1.0 - ac_t / ac_prev;
            const double c_x0 = std::sqrt(ac_prev) * beta / (1.0 - ac_t);
            const double c_x = std::sqrt(ac_t / ac_prev) * (1.0 - ac_prev) / (1.0 - ac_t);
            if (t > 0) {
                const double var = std::max(beta * (1.0 - ac_prev) / (1.0 - ac_t), 1e-20);
                const noise_term<T> z = noise.next(x.extents());
                lincomb<T>(cx_, x, {cref(x), cref(x0)}, {c_x, c_x0}, std::sqrt(var), &z);
            } else {
                lincomb<T>(cx_, x, {cref(x), cref(x0)}, {c_x, c_x0});
            }
            return;
        }
        const double sigma =
            o_.eta * std::sqrt((1.0 - ac_prev) / (1.0 - ac_t) * (1.0 - ac_t / ac_prev));
        if (o_.use_clipped_model_output) {
            eps_from_x0_vp<T>(cx_, eps, x, x0, ac_t);
        } else {
            const affine_coefficients ce = vp_eps_coefficients(o_.prediction, ac_t);
            lincomb<T>(cx_, eps, {cref(x), out}, {ce.x, ce.output});
        }
        const double c_eps = std::sqrt(std::max(1.0 - ac_prev - sigma * sigma, 0.0));
        if (o_.eta > 0.0) {
            const noise_term<T> z = noise.next(x.extents());
            lincomb<T>(cx_, x, {cref(x0), cref(eps)}, {std::sqrt(ac_prev), c_eps}, sigma, &z);
        } else {
            lincomb<T>(cx_, x, {cref(x0), cref(eps)}, {std::sqrt(ac_prev), c_eps});
        }
    }

private:
    void ensure(const extents& e) {
        if (bufs_.count() != 3 || bufs_.shape() != e) {
            bufs_.ensure(e, 3);
            scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
        }
    }

    ops::op_context cx_;
    const noise_schedule* schedule_;
    bool ddim_;
    ddim_options o_;
    int steps_ = 0;
    std::vector<double> timesteps_;
    state_buffers<T> bufs_;  // 0 model output, 1 x0, 2 eps
    std::vector<double> scratch_;
};

/// DDPM (diffusers DDPMScheduler, fixed_small variance).
template <compute_type T>
vp_ancestral_sampler<T> ddpm_sampler(ops::op_context cx, const noise_schedule& s,
                                     const ddpm_options& o = {}) {
    return vp_ancestral_sampler<T>(cx, s, o);
}
/// DDIM (diffusers DDIMScheduler).
template <compute_type T>
vp_ancestral_sampler<T> ddim_sampler(ops::op_context cx, const noise_schedule& s,
                                     const ddim_options& o = {}) {
    return vp_ancestral_sampler<T>(cx, s, o);
}

/// Options of the Euler-family schedulers (diffusers EulerDiscreteScheduler /
/// EulerAncestralDiscreteScheduler, and their step() churn arguments).
struct euler_options {
    timestep_spacing spacing = timestep_spacing::linspace;  ///< the N-grid (see `timesteps`)
    int steps_offset = 0;                                   ///< added to `leading` grids
    prediction_type prediction = prediction_type::epsilon;  ///< what the model outputs
    bool use_karras_sigmas = false;  ///< Karras sigmas between the grid's ends
    bool ancestral = false;          ///< EulerAncestralDiscreteScheduler (eta = 1 split; no churn)
    double s_churn = 0.0;            ///< Karras churn S_churn (gamma = min(S_churn / N, sqrt2 - 1))
    double s_tmin = 0.0;             ///< churn only for sigma in [s_tmin, s_tmax]
    double s_tmax = std::numeric_limits<double>::infinity();  ///< see s_tmin
    double s_noise = 1.0;  ///< scale of the churn noise (S_noise)
};

/// diffusers' Euler / Euler-ancestral schedulers (reference sections 3, 4.5, 4.6) in VE
/// space: sigmas interpolated on the training table at the (fractional) timesteps, or
/// Karras sigmas between the grid's ends with t = sigma_to_t(sigma); a final 0 appended.
/// The model sees x / sqrt(sigma_i^2 + 1). Euler: churn as Karras (noise drawn only when
/// gamma > 0); x0 uses sigma_hat for eps, sigma_i for v; x' = x + (x - x0)/sigma_hat
/// (sigma_{i+1} - sigma_hat). Euler-ancestral: x' = x + (x - x0)/sigma (sigma_down - sigma)
/// + sigma_up z, one draw on every step (the last too).
template <compute_type T>
class euler_sampler : public detail::ve_grid_sampler<euler_sampler<T>, T> {
public:
    euler_sampler(ops::op_context cx, const noise_schedule& schedule, euler_options o = {})
        : detail::ve_grid_sampler<euler_sampler<T>, T>(cx, schedule), o_(o) {
        if (o_.ancestral && o_.prediction == prediction_type::sample)
            throw value_error(cx_.module,
                              "euler_sampler: the ancestral scheduler does not support "
                              "prediction_type sample (as diffusers)");
    }

    /// Chooses the N timesteps and sigmas (diffusers set_timesteps); throws as
    /// `detail::make_ve_sigma_grid`, keeping the previous grid on a throw.
    void set_timesteps(int n) {
        detail::ve_sigma_grid g = detail::make_ve_sigma_grid(*schedule_, n, o_.spacing,
                                                             o_.steps_offset, o_.use_karras_sigmas);
        timesteps_ = std::move(g.timesteps);
        sigmas_ = std::move(g.sigmas);
        init_sigma_ = g.init_noise_sigma;
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, 3);
    }

    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& noise = N{}) {
        using cref = tensor_ref<const T>;
        detail::check_call(cx_.module, i, timesteps_.size());
        ensure(x.extents());
        const double s = sigmas_[std::size_t(i)], s_next = sigmas_[std::size_t(i) + 1];
        const tensor_ref<T> x0 = bufs_[2];
        if (o_.ancestral) {
            const affine_coefficients c = ve_x0_coefficients(o_.prediction, s);
            lincomb<T>(cx_, x0, {cref(x), out}, {c.x, c.output});
            const ancestral_split a = ancestral_step(s, s_next, 1.0);  // diffusers: eta = 1
            const double dt = a.sigma_down - s;
            const noise_term<T> z = noise.next(x.extents());
            lincomb<T>(cx_, x, {cref(x), cref(x0)}, {1.0 + dt / s, -dt / s}, a.sigma_up, &z);
            return;
        }
        const double gamma =
            o_.s_tmin <= s && s <= o_.s_tmax
                ? std::min(o_.s_churn / double(this->calls()), std::sqrt(2.0) - 1.0)
                : 0.0;
        const double s_hat = s * (gamma + 1.0);
        if (gamma > 0.0) {
            const noise_term<T> z = noise.next(x.extents());
            lincomb<T>(cx_, x, {cref(x)}, {1.0}, o_.s_noise * std::sqrt(s_hat * s_hat - s * s), &z);
        }
        const affine_coefficients c = ve_x0_coefficients(
            o_.prediction, o_.prediction == prediction_type::v_prediction ? s : s_hat);
        lincomb<T>(cx_, x0, {cref(x), out}, {c.x, c.output});
        const double dt = s_next - s_hat;
        lincomb<T>(cx_, x, {cref(x), cref(x0)}, {1.0 + dt / s_hat, -dt / s_hat});
    }

private:
    friend class detail::ve_grid_sampler<euler_sampler<T>, T>;
    using base = detail::ve_grid_sampler<euler_sampler<T>, T>;
    using base::bufs_;  // 0 model output, 1 model input, 2 x0
    using base::cx_;
    using base::init_sigma_;
    using base::schedule_;
    using base::sigmas_;
    using base::timesteps_;
    void ensure(const extents& e) {
        if (bufs_.count() != 3 || bufs_.shape() != e) bufs_.ensure(e, 3);
    }

    euler_options o_;
};

}  // namespace mmfuse::inline v0::diffusion
