#pragma once
/// \file
/// The multistep and second-order diffusers schedulers (Hugging Face diffusers v0.4x,
/// `schedulers/scheduling_*.py`; reference/diffusion.md sections 3, 4.3, 4.4, 4.7-4.9, 9), with
/// the interface of `samplers_diffusers.hpp` (set_timesteps, timesteps, calls,
/// init_noise_sigma, model_input, output_buffer, step, sample):
///
///   lms_sampler           LMSDiscreteScheduler: linear multistep on d = (x - x0)/sigma
///   heun_sampler          HeunDiscreteScheduler: Heun's 2nd order, 2N - 1 model calls
///   dpm_solver_sampler    DPMSolverMultistepScheduler, algorithm dpmsolver++ (Lu et al. 2022)
///   unipc_sampler         UniPCMultistepScheduler, B(h) = bh1 / bh2 (Zhao et al. 2023)
///   pndm_sampler          PNDMScheduler: PLMS with or without the pseudo Runge-Kutta warm-up
///                         (Liu et al. 2022)
///
///     dpm_solver_sampler<float> s(cx, schedule, {.solver_order = 2});   // DPM-Solver++(2M)
///     s.set_timesteps(25);
///     x = z * s.init_noise_sigma();
///     s.sample(model, x);
///
/// Every elementwise update is one `lincomb` (`ops::combine`) over x, the model output and
/// the sampler's history buffers, which are allocated once per sample shape (`state_buffers`),
/// never per step; so the samplers run on any backend. Coefficients are computed in double.
/// The multistep samplers keep history: call `step` for i = 0, 1, ..., calls() - 1 in order
/// (i = 0 starts a new chain). All five are deterministic: they never draw noise (the noise
/// argument exists for the common interface). Thresholding / clipping of x0 are host loops
/// (schedule.hpp), so those options need host memory.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::diffusion {

namespace detail {

/// Throws unless step i follows the previous one (i = 0 always starts a new chain).
inline void expect_in_order(std::string_view module, int i, int next) {
    if (i != 0 && i != next)
        throw value_error(module, "multistep samplers take their steps in order: expected step " +
                                      std::to_string(next) + ", got " + std::to_string(i));
}

/// The VP level of a VE sigma as DPM-Solver / UniPC write it: alpha = 1/sqrt(sigma^2 + 1),
/// sigma_t = sigma alpha, log-SNR lambda = log alpha - log sigma_t (+inf at sigma = 0).
struct vp_level {
    double alpha;
    double sigma;
    double lambda;
};
inline vp_level level_of(double ve_sigma) {
    const double a = 1.0 / std::sqrt(ve_sigma * ve_sigma + 1.0);
    const double s = ve_sigma * a;
    return {a, s, std::log(a) - std::log(s)};
}

/// Solves the n x n system A r = b (n <= 3) by Gaussian elimination with partial pivoting.
inline std::array<double, 3> solve_small(std::array<std::array<double, 3>, 3> a,
                                         std::array<double, 3> b, int n) {
    for (int c = 0; c < n; ++c) {
        int p = c;
        for (int r = c + 1; r < n; ++r)
            if (std::abs(a[std::size_t(r)][std::size_t(c)]) >
                std::abs(a[std::size_t(p)][std::size_t(c)]))
                p = r;
        std::swap(a[std::size_t(c)], a[std::size_t(p)]);
        std::swap(b[std::size_t(c)], b[std::size_t(p)]);
        for (int r = c + 1; r < n; ++r) {
            const double f = a[std::size_t(r)][std::size_t(c)] / a[std::size_t(c)][std::size_t(c)];
            for (int k = c; k < n; ++k)
                a[std::size_t(r)][std::size_t(k)] -= f * a[std::size_t(c)][std::size_t(k)];
            b[std::size_t(r)] -= f * b[std::size_t(c)];
        }
    }
    std::array<double, 3> x{};
    for (int r = n - 1; r >= 0; --r) {
        double v = b[std::size_t(r)];
        for (int k = r + 1; k < n; ++k)
            v -= a[std::size_t(r)][std::size_t(k)] * x[std::size_t(k)];
        x[std::size_t(r)] = v / a[std::size_t(r)][std::size_t(r)];
    }
    return x;
}

/// One `lincomb` over at most `N` terms, collected one by one.
template <compute_type T, std::size_t N>
struct term_list {
    std::array<tensor_ref<const T>, N> x{};
    std::array<double, N> c{};
    std::size_t n = 0;
    void add(tensor_ref<const T> v, double w) {
        x[n] = v;
        c[n] = w;
        ++n;
    }
    void apply(const ops::op_context& cx, tensor_ref<T> y) const {
        lincomb<T>(cx, y, std::span<const tensor_ref<const T>>(x.data(), n),
                   std::span<const double>(c.data(), n));
    }
};

}  // namespace detail

// ------------------------------------------------------------------------------------------
// LMS

/// Options of `lms_sampler` (diffusers LMSDiscreteScheduler and its step() argument `order`).
struct lms_options {
    timestep_spacing spacing = timestep_spacing::linspace;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    bool use_karras_sigmas = false;
    int order = 4;  ///< linear multistep order, 1..4
};

/// diffusers' LMSDiscreteScheduler (reference section 4.8) in VE space on the sigma grid of
/// the Euler family (`detail::make_ve_sigma_grid`): the model sees x / sqrt(sigma_i^2 + 1);
/// step i pushes d_i = (x - x0)/sigma_i and takes x' = x + sum_{j<q} c_j d_{i-j} with
/// q = min(i + 1, order) and c_j the Lagrange-basis integral `linear_multistep_weight` over
/// [sigma_i, sigma_{i+1}] (no order reduction at the end). N model calls.
template <compute_type T>
class lms_sampler : public detail::ve_grid_sampler<lms_sampler<T>, T> {
public:
    lms_sampler(ops::op_context cx, const noise_schedule& schedule, lms_options o = {})
        : detail::ve_grid_sampler<lms_sampler<T>, T>(cx, schedule), o_(o) {
        if (o_.order < 1 || o_.order > 4)
            throw value_error(cx_.module, "lms_sampler: order must be in [1, 4], got " +
                                              std::to_string(o_.order));
    }

    /// Chooses the N timesteps and sigmas (diffusers set_timesteps); throws as
    /// `detail::make_ve_sigma_grid`, keeping the previous grid on a throw.
    void set_timesteps(int n) {
        detail::ve_sigma_grid g = detail::make_ve_sigma_grid(*schedule_, n, o_.spacing,
                                                             o_.steps_offset, o_.use_karras_sigmas);
        timesteps_ = std::move(g.timesteps);
        sigmas_ = std::move(g.sigmas);
        init_sigma_ = g.init_noise_sigma;
        next_ = 0;
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, buffer_count());
    }

    /// Model call i (in order) with output `out`: x <- x at sigma_{i+1}.
    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& = N{}) {
        using cref = tensor_ref<const T>;
        detail::check_call(cx_.module, i, timesteps_.size());
        detail::expect_in_order(cx_.module, i, next_);
        ensure(x.extents());
        next_ = i + 1;
        const std::size_t k = std::size_t(i);
        const double s = sigmas_[k];
        // d = (x - x0)/s with x0 = c.x x + c.output out
        const affine_coefficients c = ve_x0_coefficients(o_.prediction, s);
        detail::rotate_history(bufs_, 2, o_.order);
        lincomb<T>(cx_, bufs_[2], {cref(x), out}, {(1.0 - c.x) / s, -c.output / s});
        const int q = std::min(i + 1, o_.order);
        detail::term_list<T, 5> terms;
        terms.add(x, 1.0);
        for (int j = 0; j < q; ++j)
            terms.add(bufs_[2 + j], linear_multistep_weight(q, sigmas_, k, j));
        terms.apply(cx_, x);
    }

private:
    friend class detail::ve_grid_sampler<lms_sampler<T>, T>;
    using base = detail::ve_grid_sampler<lms_sampler<T>, T>;
    using base::bufs_;  // 0 model output, 1 model input, 2.. derivatives (newest first)
    using base::cx_;
    using base::init_sigma_;
    using base::schedule_;
    using base::sigmas_;
    using base::timesteps_;
    int buffer_count() const noexcept { return 2 + o_.order; }
    void ensure(const extents& e) {
        if (bufs_.count() != buffer_count() || bufs_.shape() != e) bufs_.ensure(e, buffer_count());
    }

    lms_options o_;
    int next_ = 0;
};

// ------------------------------------------------------------------------------------------
// Heun

/// diffusers HeunDiscreteScheduler's default training schedule (linear 0.00085 .. 0.012,
/// unlike the other schedulers' 1e-4 .. 0.02); pass it to `noise_schedule` for a default Heun.
inline schedule_config heun_default_schedule() {
    schedule_config c;
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.betas = beta_schedule::linear;
    return c;
}

/// Options of `heun_sampler` (diffusers HeunDiscreteScheduler). diffusers offers clipping of
/// x0 (`clip_sample`, off by default) but no thresholding (refused by the constructor).
struct heun_options {
    timestep_spacing spacing = timestep_spacing::linspace;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    bool use_karras_sigmas = false;
    x0_processing x0{};
};

/// diffusers' HeunDiscreteScheduler (reference section 4.7; Karras et al. 2022, Alg. 1) on
/// the Euler-family sigma grid sigma_0 .. sigma_{N-1}, 0, interleaved as diffusers does:
/// sigmas() = [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0], timesteps() = [t0, t1, t1, ...,
/// t_{N-1}, t_{N-1}]: 2N - 1 model calls. Even call 2k (first order, at s_k): d1 = (x -
/// x0)/s_k, saves x and d1, x' = x + d1 dt with dt = s_{k+1} - s_k. Odd call (second order,
/// at s_{k+1}, on that predictor): x0 uses s_{k+1}, d2 = (x - x0)/s_{k+1}, x' = x_saved +
/// (d1 + d2)/2 dt. The last interval (to 0) is the Euler half only.
template <compute_type T>
class heun_sampler : public detail::ve_grid_sampler<heun_sampler<T>, T> {
public:
    /// Heun on `schedule` (which must outlive the sampler). Throws `value_error` for
    /// `o.x0.thresholding` (diffusers' Heun has clipping only).
    heun_sampler(ops::op_context cx, const noise_schedule& schedule, heun_options o = {})
        : detail::ve_grid_sampler<heun_sampler<T>, T>(cx, schedule), o_(o) {
        if (o_.x0.thresholding)
            throw value_error(cx_.module,
                              "heun_sampler: x0.thresholding is not supported "
                              "(diffusers' Heun offers clip_sample only)");
    }

    /// Chooses the interleaved timesteps and sigmas (diffusers set_timesteps); throws as
    /// `detail::make_ve_sigma_grid`, keeping the previous grid on a throw.
    void set_timesteps(int n) {
        const detail::ve_sigma_grid g = detail::make_ve_sigma_grid(
            *schedule_, n, o_.spacing, o_.steps_offset, o_.use_karras_sigmas);
        std::vector<double> timesteps(1, g.timesteps.front()), sigmas(1, g.sigmas.front());
        for (std::size_t k = 1; k < g.timesteps.size(); ++k) {
            timesteps.insert(timesteps.end(), 2, g.timesteps[k]);
            sigmas.insert(sigmas.end(), 2, g.sigmas[k]);
        }
        sigmas.push_back(0.0);
        timesteps_ = std::move(timesteps);  // commit (strong guarantee)
        sigmas_ = std::move(sigmas);
        init_sigma_ = g.init_noise_sigma;
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, 5);
        scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
    }

    /// Model call i with output `out`: a first-order call (i even) moves x to the Euler
    /// predictor, a second-order call (i odd, right after i - 1) to the Heun corrector.
    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& = N{}) {
        using cref = tensor_ref<const T>;
        detail::check_call(cx_.module, i, timesteps_.size());
        const bool first = i % 2 == 0;
        if (!first && i != next_)
            throw value_error(cx_.module, "heun_sampler: second-order call " + std::to_string(i) +
                                              " must follow call " + std::to_string(i - 1));
        ensure(x.extents());
        next_ = i + 1;
        const std::size_t k = std::size_t(first ? i : i - 1);
        const double s = sigmas_[k], s_next = sigmas_[k + 1];
        const double dt = s_next - s;
        const tensor_ref<T> x0 = bufs_[2], saved = bufs_[3], d1 = bufs_[4];
        const affine_coefficients c = ve_x0_coefficients(o_.prediction, first ? s : s_next);
        lincomb<T>(cx_, x0, {cref(x), out}, {c.x, c.output});
        detail::process_x0(o_.x0, x0, scratch_);
        // The operations follow diffusers' order (difference, then scale; the derivative
        // times dt added last): the cosine schedule's first step (sigma ~ 2e4 -> ~10) makes
        // the corrector amplify any rounding of the predictor by dt / sigma_next ~ 1e3.
        lincomb<T>(cx_, x0, {cref(x), cref(x0)}, {1.0, -1.0});  // x - x0
        if (first) {
            lincomb<T>(cx_, d1, {cref(x0)}, {1.0 / s});
            lincomb<T>(cx_, saved, {cref(x)}, {1.0});
            lincomb<T>(cx_, x, {cref(x), cref(d1)}, {1.0, dt});
            return;
        }
        // x_saved + dt (d1 + (x - x0)/s_next) / 2
        lincomb<T>(cx_, d1, {cref(d1), cref(x0)}, {0.5, 0.5 / s_next});
        lincomb<T>(cx_, x, {cref(saved), cref(d1)}, {1.0, dt});
    }

private:
    friend class detail::ve_grid_sampler<heun_sampler<T>, T>;
    using base = detail::ve_grid_sampler<heun_sampler<T>, T>;
    using base::bufs_;  // 0 model output, 1 model input, 2 x0, 3 saved sample, 4 d1
    using base::cx_;
    using base::init_sigma_;
    using base::schedule_;
    using base::sigmas_;
    using base::timesteps_;
    void ensure(const extents& e) {
        if (bufs_.count() != 5 || bufs_.shape() != e) {
            bufs_.ensure(e, 5);
            scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
        }
    }

    heun_options o_;
    int next_ = 0;
    std::vector<double> scratch_;
};

// ------------------------------------------------------------------------------------------
// DPM-Solver++ multistep and UniPC

/// The final sigma DPM-Solver / UniPC append to their grid (diffusers `final_sigmas_type`):
/// 0 (the last step returns the x0 estimate) or sigma(t = 0) of the table.
enum class final_sigma_type { zero, sigma_min };

/// DPM-Solver++'s second-order multistep form (diffusers `solver_type`).
enum class dpm_solver_type { midpoint, heun };

/// UniPC's B(h) (diffusers `solver_type`): bh1 B(h) = h, bh2 B(h) = expm1(h) (in x0 mode h is
/// the negated log-SNR step).
enum class unipc_solver_type { bh1, bh2 };

/// Options of `dpm_solver_sampler` (diffusers DPMSolverMultistepScheduler with
/// algorithm_type "dpmsolver++"; defaults are diffusers'). `x0` processes the x0 estimate:
/// thresholding as diffusers' `thresholding` options; clipping has no diffusers counterpart
/// here (off by default).
struct dpm_solver_options {
    timestep_spacing spacing = timestep_spacing::linspace;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    int solver_order = 2;  ///< 1, 2 or 3 (2: DPM-Solver++(2M))
    dpm_solver_type solver_type = dpm_solver_type::midpoint;
    bool lower_order_final = true;
    bool euler_at_final = false;
    bool use_karras_sigmas = false;
    final_sigma_type final_sigmas = final_sigma_type::zero;
    x0_processing x0{};
};

/// Options of `unipc_sampler` (diffusers UniPCMultistepScheduler with predict_x0 = True and
/// no solver_p; defaults are diffusers'). `disable_corrector` lists steps k whose result is
/// not corrected (the corrector of step k + 1 is skipped). `x0` as `dpm_solver_options`.
struct unipc_options {
    timestep_spacing spacing = timestep_spacing::linspace;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    int solver_order = 2;  ///< 1, 2 or 3
    unipc_solver_type solver_type = unipc_solver_type::bh2;
    bool lower_order_final = true;
    std::vector<int> disable_corrector{};
    bool use_karras_sigmas = false;
    final_sigma_type final_sigmas = final_sigma_type::zero;
    x0_processing x0{};
};

/// The VP multistep samplers on diffusers' N+1 timestep grid (reference sections 3, 4.4,
/// 4.9): DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++") and UniPC (Zhao et al. 2023,
/// "UniPC: a unified predictor-corrector framework"), one class since they share grid, state
/// and conversion. The model sees x itself (VP sample) at integer timesteps; sigmas() =
/// sigma_0 .. sigma_{N-1}, final (0 or the table's sigma(0)); with Karras sigmas the ends
/// are the table's and t = round(sigma_to_t(sigma)) (DPM-Solver truncates instead for the
/// cosine schedule, as diffusers). In log-SNR lambda = -log sigma (VP alpha = 1/sqrt(sigma^2
/// + 1), sigma_t = sigma alpha), every step converts the output to m_i = x0 (thresholded if
/// asked) and keeps the last `solver_order` of them.
///
/// DPM-Solver++: order 1 at the first step, on the last step when the final sigma is 0 (or
/// euler_at_final, or lower_order_final with N < 15), order <= 2 on the second step and on
/// the second-to-last when lower_order_final and N < 15; with h = lambda_{i+1} - lambda_i and
/// phi = expm1(-h): 1st x' = (s'/s) x - a' phi m_i; 2nd / 3rd the midpoint / heun and
/// third-order multistep formulas of diffusers (section 4.4).
/// UniPC: a corrector (UniC, the previous step's order, from the previous predictor's start
/// and the fresh m_i) then a predictor (UniP) of order p = min(order, N - i, steps seen)
/// (lower_order_final) with the B(h) variant's coefficients (section 4.9). A final sigma of 0
/// takes the last step to m_i exactly (diffusers' bh1 returns NaN there).
template <compute_type T>
class vp_multistep_sampler : public detail::diffusers_loop<vp_multistep_sampler<T>, T> {
public:
    /// DPM-Solver++ multistep on `schedule` (which must outlive the sampler).
    vp_multistep_sampler(ops::op_context cx, const noise_schedule& schedule, dpm_solver_options o)
        : cx_(cx),
          schedule_(&schedule),
          unipc_(false),
          c_{o.spacing,           o.steps_offset,      o.prediction,   o.solver_order,
             o.lower_order_final, o.use_karras_sigmas, o.final_sigmas, o.x0},
          dpm_type_(o.solver_type),
          euler_at_final_(o.euler_at_final) {
        check_order("dpm_solver_sampler");
    }
    /// UniPC on `schedule` (which must outlive the sampler).
    vp_multistep_sampler(ops::op_context cx, const noise_schedule& schedule, unipc_options o)
        : cx_(cx),
          schedule_(&schedule),
          unipc_(true),
          c_{o.spacing,           o.steps_offset,      o.prediction,   o.solver_order,
             o.lower_order_final, o.use_karras_sigmas, o.final_sigmas, o.x0},
          bh2_(o.solver_type == unipc_solver_type::bh2),
          disable_corrector_(std::move(o.disable_corrector)) {
        check_order("unipc_sampler");
        if (!c_.lower_order_final && c_.final_sigmas == final_sigma_type::zero &&
            c_.solver_order > 1)
            throw value_error(cx_.module,
                              "unipc_sampler: lower_order_final = false with a zero final sigma "
                              "divides by a zero log-SNR ratio on the last step (NaN in "
                              "diffusers); use lower_order_final or final_sigma_type::sigma_min");
    }

    /// Chooses the N timesteps and N + 1 sigmas (diffusers set_timesteps). Throws as
    /// `diffusion::timesteps`, and `value_error` when a sigma is infinite (zero terminal SNR
    /// without terminal_alpha_cumprod); on a throw the sampler keeps its previous grid.
    void set_timesteps(int n) {
        const noise_schedule& s = *schedule_;
        std::vector<double> timesteps =
            diffusion::timesteps(s, n, c_.spacing, c_.steps_offset, true, true);
        std::vector<double> sigmas(timesteps.size(), 0.0);
        if (c_.use_karras_sigmas) {
            const auto table = s.sigmas();
            const std::vector<double> k = karras_sigmas(table.front(), table.back(), n);
            const bool truncate = !unipc_ && s.config().betas == beta_schedule::squaredcos_cap_v2;
            for (std::size_t i = 0; i < k.size(); ++i) {
                const double t = s.sigma_to_t(k[i]);
                timesteps[i] = truncate ? std::trunc(t) : detail::round_half_even(t);
                sigmas[i] = detail::stored_sigma(s, k[i]);
            }
        } else {
            for (std::size_t i = 0; i < timesteps.size(); ++i)
                sigmas[i] = s.sigma_at(timesteps[i]);
        }
        sigmas.push_back(c_.final_sigmas == final_sigma_type::zero ? 0.0 : s.sigmas().front());
        detail::check_finite_sigmas(sigmas);
        timesteps_ = std::move(timesteps);  // commit (strong guarantee)
        sigmas_ = std::move(sigmas);
        next_ = 0;
    }
    /// The model timesteps of calls 0 .. calls()-1 (empty before set_timesteps).
    std::span<const double> timesteps() const noexcept { return timesteps_; }
    /// sigma_0 .. sigma_{N-1}, final sigma (VE sigmas).
    std::span<const double> sigmas() const noexcept { return sigmas_; }
    /// Number of model calls (steps) of one sample.
    int calls() const noexcept { return int(timesteps_.size()); }
    /// The std of the starting noise: x = init_noise_sigma() * z.
    double init_noise_sigma() const noexcept { return 1.0; }
    /// The model input of call i: x itself (VP samplers do not scale).
    tensor_ref<const T> model_input(int, tensor_ref<const T> x) const noexcept { return x; }
    tensor_ref<T> output_buffer(const extents& e) {
        ensure(e);
        return bufs_[0];
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, buffer_count());
        scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
    }

    /// Model call i (in order) with output `out`: x <- x at sigma_{i+1}.
    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& = N{}) {
        detail::check_call(cx_.module, i, timesteps_.size());
        detail::expect_in_order(cx_.module, i, next_);
        ensure(x.extents());
        if (i == 0) lower_order_nums_ = 0;
        next_ = i + 1;
        // m_i = x0 estimate at sigma_i, into the newest history slot
        const double s = sigmas_[std::size_t(i)];
        detail::rotate_history(bufs_, history_first(), history_size());
        const tensor_ref<T> m = bufs_[history_first()];
        const affine_coefficients c = vp_x0_coefficients(c_.prediction, 1.0 / (s * s + 1.0));
        lincomb<T>(cx_, m, {tensor_ref<const T>(x), out}, {c.x, c.output});
        detail::process_x0(c_.x0, m, scratch_);
        if (unipc_)
            unipc_step(i, x);
        else
            dpm_step(i, x);
        lower_order_nums_ = std::min(lower_order_nums_ + 1, c_.solver_order);
    }

private:
    using cref = tensor_ref<const T>;
    struct common_options {
        timestep_spacing spacing;
        int steps_offset;
        prediction_type prediction;
        int solver_order;
        bool lower_order_final;
        bool use_karras_sigmas;
        final_sigma_type final_sigmas;
        x0_processing x0;
    };

    void check_order(const char* who) const {
        if (c_.solver_order < 1 || c_.solver_order > 3) {
            std::string msg = who;
            msg += ": solver_order must be 1, 2 or 3, got ";
            msg += std::to_string(c_.solver_order);
            throw value_error(cx_.module, msg);
        }
    }
    // Buffers: 0 model output; UniPC: 1 the predictor's start ("last_sample"); then the x0
    // history ring, newest first (UniPC keeps one more: the corrector reads the previous
    // step's `order` outputs and the new one).
    int history_first() const noexcept { return unipc_ ? 2 : 1; }
    int history_size() const noexcept { return c_.solver_order + (unipc_ ? 1 : 0); }
    int buffer_count() const noexcept { return history_first() + history_size(); }
    void ensure(const extents& e) {
        if (bufs_.count() != buffer_count() || bufs_.shape() != e) {
            bufs_.ensure(e, buffer_count());
            scratch_.resize(std::size_t(dynamic_threshold_scratch_size(e)));
        }
    }
    /// The x0 estimate of `age` steps ago.
    cref history(int age) const { return bufs_[history_first() + age]; }

    void dpm_step(int i, tensor_ref<T> x) {
        const int n = calls();
        const bool final_zero = c_.final_sigmas == final_sigma_type::zero;
        const bool first_final =
            i == n - 1 && (euler_at_final_ || (c_.lower_order_final && n < 15) || final_zero);
        const bool second_final = i == n - 2 && c_.lower_order_final && n < 15;
        const int order = c_.solver_order;
        const int p = (order == 1 || lower_order_nums_ < 1 || first_final)    ? 1
                      : (order == 2 || lower_order_nums_ < 2 || second_final) ? 2
                                                                              : 3;
        const std::size_t k = std::size_t(i);
        const detail::vp_level t = detail::level_of(sigmas_[k + 1]);
        const detail::vp_level s0 = detail::level_of(sigmas_[k]);
        const double h = t.lambda - s0.lambda;
        const double phi = std::expm1(-h);
        detail::term_list<T, 4> terms;
        terms.add(x, t.sigma / s0.sigma);
        if (p == 1) {
            terms.add(history(0), -t.alpha * phi);
        } else if (p == 2) {
            const double r0 = (s0.lambda - detail::level_of(sigmas_[k - 1]).lambda) / h;
            // D0 = m0, D1 = (m0 - m1)/r0
            const double d1 = dpm_type_ == dpm_solver_type::midpoint ? -0.5 * t.alpha * phi
                                                                     : t.alpha * (phi / h + 1.0);
            terms.add(history(0), -t.alpha * phi + d1 / r0);
            terms.add(history(1), -d1 / r0);
        } else {
            const double l1 = detail::level_of(sigmas_[k - 1]).lambda;
            const double l2 = detail::level_of(sigmas_[k - 2]).lambda;
            const double r0 = (s0.lambda - l1) / h, r1 = (l1 - l2) / h;
            // D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0+r1) with
            // D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1; x' = ... + A D1 + B D2
            const double a = t.alpha * (phi / h + 1.0);
            const double b = -t.alpha * ((phi + h) / (h * h) - 0.5);
            const double c10 = a * (1.0 + r0 / (r0 + r1)) + b / (r0 + r1);
            const double c11 = -a * r0 / (r0 + r1) - b / (r0 + r1);
            terms.add(history(0), -t.alpha * phi + c10 / r0);
            terms.add(history(1), -c10 / r0 + c11 / r1);
            terms.add(history(2), -c11 / r1);
        }
        terms.apply(cx_, x);
    }

    /// y = UniPC update from `base` at sigma index s0 to index t with order p over the x0
    /// history starting at age `m0_age` (m_k = history(m0_age + k) at index s0 - k); the
    /// corrector (`corrector`) adds the rho_p (m_t - m0) term with m_t = history(0).
    void unipc_update(tensor_ref<T> y, cref base, int s0, int t, int p, int m0_age,
                      bool corrector) {
        const detail::vp_level lt = detail::level_of(sigmas_[std::size_t(t)]);
        const detail::vp_level ls = detail::level_of(sigmas_[std::size_t(s0)]);
        const double h = lt.lambda - ls.lambda;
        const double hh = -h;  // x0 mode
        const double h_phi_1 = std::expm1(hh);
        const double b_h = bh2_ ? std::expm1(hh) : hh;
        std::array<double, 3> rks{}, b{};
        for (int k = 1; k < p; ++k)
            rks[std::size_t(k - 1)] =
                (detail::level_of(sigmas_[std::size_t(s0 - k)]).lambda - ls.lambda) / h;
        rks[std::size_t(p - 1)] = 1.0;
        double h_phi_k = h_phi_1 / hh - 1.0, factorial = 1.0;
        for (int j = 1; j <= p; ++j) {
            b[std::size_t(j - 1)] = h_phi_k * factorial / b_h;
            factorial *= j + 1;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        // rho: the corrector solves the full p x p system R rho = b (R_jk = r_k^j), the
        // predictor the leading (p-1) x (p-1) one; 1/2 for the smallest cases.
        const int solved = corrector ? p : p - 1;
        std::array<double, 3> rho{};
        if (solved == 1) {
            rho[0] = 0.5;
        } else if (solved > 1) {
            std::array<std::array<double, 3>, 3> r{};
            for (int j = 0; j < solved; ++j)
                for (int k = 0; k < solved; ++k)
                    r[std::size_t(j)][std::size_t(k)] = std::pow(rks[std::size_t(k)], j);
            rho = detail::solve_small(r, b, solved);
        }
        detail::term_list<T, 5> terms;
        terms.add(base, lt.sigma / ls.sigma);
        double c_m0 = -lt.alpha * h_phi_1;
        const double w = -lt.alpha * b_h;  // weight of the residual sum
        for (int k = 1; k < p; ++k) {
            const double c = w * rho[std::size_t(k - 1)] / rks[std::size_t(k - 1)];
            c_m0 -= c;
            terms.add(history(m0_age + k), c);
        }
        if (corrector) {
            const double c = w * rho[std::size_t(p - 1)];
            c_m0 -= c;
            terms.add(history(0), c);
        }
        terms.add(history(m0_age), c_m0);
        terms.apply(cx_, y);
    }

    void unipc_step(int i, tensor_ref<T> x) {
        const tensor_ref<T> last = bufs_[1];
        const bool corrected =
            i > 0 && std::find(disable_corrector_.begin(), disable_corrector_.end(), i - 1) ==
                         disable_corrector_.end();
        if (corrected)
            unipc_update(last, last, i - 1, i, this_order_, 1, true);
        else
            lincomb<T>(cx_, last, {cref(x)}, {1.0});
        int p = c_.lower_order_final ? std::min(c_.solver_order, calls() - i) : c_.solver_order;
        p = std::min(p, lower_order_nums_ + 1);
        this_order_ = p;
        unipc_update(x, last, i, i + 1, p, 0, false);
    }

    ops::op_context cx_;
    const noise_schedule* schedule_;
    bool unipc_;
    common_options c_;
    dpm_solver_type dpm_type_ = dpm_solver_type::midpoint;
    bool euler_at_final_ = false;
    bool bh2_ = true;
    std::vector<int> disable_corrector_;
    std::vector<double> timesteps_, sigmas_;
    int next_ = 0;
    int lower_order_nums_ = 0;
    int this_order_ = 1;
    state_buffers<T> bufs_;
    std::vector<double> scratch_;
};

/// DPM-Solver++ multistep (diffusers DPMSolverMultistepScheduler, algorithm dpmsolver++).
template <compute_type T>
vp_multistep_sampler<T> dpm_solver_sampler(ops::op_context cx, const noise_schedule& s,
                                           const dpm_solver_options& o = {}) {
    return vp_multistep_sampler<T>(cx, s, o);
}
/// UniPC (diffusers UniPCMultistepScheduler, predict_x0).
template <compute_type T>
vp_multistep_sampler<T> unipc_sampler(ops::op_context cx, const noise_schedule& s,
                                      const unipc_options& o = {}) {
    return vp_multistep_sampler<T>(cx, s, o);
}

// ------------------------------------------------------------------------------------------
// PNDM

/// Options of `pndm_sampler` (diffusers PNDMScheduler; defaults are diffusers').
/// `prediction` must be epsilon or v_prediction (diffusers refuses sample).
struct pndm_options {
    timestep_spacing spacing = timestep_spacing::leading;
    int steps_offset = 0;
    prediction_type prediction = prediction_type::epsilon;
    bool skip_prk_steps = false;    ///< true: pure PLMS (the SD configuration)
    bool set_alpha_to_one = false;  ///< final level 1 (else alphas_cumprod[0])
};

/// diffusers' PNDMScheduler (Liu et al. 2022, "Pseudo numerical methods for diffusion models
/// on manifolds"; reference section 4.3). Every sub-step is the transfer
///   x' = sqrt(a_p/a_t) x - (a_p - a_t) e / (a_t sqrt(1 - a_p) + sqrt(a_t (1 - a_t) a_p))
/// from level a_t = ac[t] to a_p = ac[t'] (final level for t' < 0), e a weighted sum of
/// model outputs (turned into eps with the transfer's (x, t) for v models); with r = T div N:
///   PRK warm-up (skip_prk_steps false; N >= 4): 12 calls, RK4 on the top 4 grid points with
///     half steps r div 2 from the saved block start (weights 1/6, 1/3, 1/3, 1/6); the first
///     output of each block enters the history; then PLMS of order 4 on the remaining
///     points: N + 9 calls.
///   PLMS only: timesteps b_{N-1}, b_{N-2}, b_{N-2}, ..., b_0 (N + 1 calls); call 0 steps t ->
///     t - r with e_0, call 1 repeats from the saved start with (e_0 + e_1)/2, then Adams-
///     Bashforth weights of order 2, 3, 4 on the history (at most 4 outputs) and t -> t - r.
template <compute_type T>
class pndm_sampler : public detail::diffusers_loop<pndm_sampler<T>, T> {
public:
    pndm_sampler(ops::op_context cx, const noise_schedule& schedule, pndm_options o = {})
        : cx_(cx), schedule_(&schedule), o_(o) {
        if (o_.prediction == prediction_type::sample)
            throw value_error(cx_.module,
                              "pndm_sampler: prediction_type sample is not supported "
                              "(as diffusers): use epsilon or v_prediction");
    }

    /// Chooses the timesteps (diffusers set_timesteps; see the class comment).
    /// Throws as `diffusion::timesteps`, and `value_error` for n < 4 without skip_prk_steps;
    /// on a throw the sampler keeps its previous grid.
    void set_timesteps(int n) {
        // b_0 > b_1 > ... > b_{N-1}: the N-grid in sampling order
        const std::vector<double> b =
            diffusion::timesteps(*schedule_, n, o_.spacing, o_.steps_offset);
        if (!o_.skip_prk_steps && n < 4)
            throw value_error(cx_.module,
                              "pndm_sampler: the Runge-Kutta warm-up needs at least "
                              "4 steps, got " +
                                  std::to_string(n) + " (or set skip_prk_steps)");
        const int ratio = schedule_->num_train_timesteps() / n;
        std::vector<double> timesteps;
        if (o_.skip_prk_steps) {
            timesteps = b;
            if (n >= 2) timesteps.insert(timesteps.begin() + 2, b[1]);
        } else {
            const double half = double(ratio / 2);
            // RK4 block from b_k: b_k, b_{k+1} + r/2 (twice), b_{k+1}
            for (std::size_t k = 0; k < 3; ++k)
                timesteps.insert(timesteps.end(),
                                 {b[k], b[k + 1] + half, b[k + 1] + half, b[k + 1]});
            timesteps.insert(timesteps.end(), b.begin() + 3, b.end());
        }
        timesteps_ = std::move(timesteps);  // commit (strong guarantee)
        ratio_ = ratio;
        prk_calls_ = o_.skip_prk_steps ? 0 : 12;
        next_ = 0;
    }
    /// The model timesteps of calls 0 .. calls()-1 (empty before set_timesteps).
    std::span<const double> timesteps() const noexcept { return timesteps_; }
    /// Number of model calls (steps) of one sample.
    int calls() const noexcept { return int(timesteps_.size()); }
    /// The std of the starting noise: x = init_noise_sigma() * z.
    double init_noise_sigma() const noexcept { return 1.0; }
    tensor_ref<const T> model_input(int, tensor_ref<const T> x) const noexcept { return x; }
    tensor_ref<T> output_buffer(const extents& e) {
        ensure(e);
        return bufs_[0];
    }
    template <workspace_allocator A>
    void allocate_state(A& a, const extents& e) {
        bufs_.allocate_from(a, e, 7);
    }

    /// Model call i (in order) with output `out`: x <- the next sub-step's sample.
    template <noise_source<T> N = no_noise<T>>
    void step(int i, tensor_ref<const T> out, tensor_ref<T> x, N&& = N{}) {
        detail::check_call(cx_.module, i, timesteps_.size());
        detail::expect_in_order(cx_.module, i, next_);
        ensure(x.extents());
        if (i == 0) history_ = 0;
        next_ = i + 1;
        const tensor_ref<T> start = bufs_[1], acc = bufs_[2];
        const int t_call = int(timesteps_[std::size_t(i)]);
        detail::term_list<T, 6> e;  // the weighted outputs, after the source sample
        if (i < prk_calls_) {
            const int prev = t_call - (i % 2 ? 0 : ratio_ / 2);
            const int t = int(timesteps_[std::size_t(i / 4 * 4)]);
            const int sub = i % 4;
            if (sub == 0) {
                lincomb<T>(cx_, acc, {out}, {1.0 / 6.0});
                push_history(out);
                lincomb<T>(cx_, start, {cref(x)}, {1.0});
            } else if (sub < 3) {
                lincomb<T>(cx_, acc, {cref(acc), out}, {1.0, 1.0 / 3.0});
            }
            if (sub < 3) {
                e.add(out, 1.0);
            } else {
                e.add(acc, 1.0);
                e.add(out, 1.0 / 6.0);
            }
            transfer(x, start, t, prev, e);
            return;
        }
        int t = t_call, prev = t_call - ratio_;
        if (i != 1) {
            push_history(out);
        } else {
            prev = t_call;
            t = t_call + ratio_;
        }
        cref source = x;
        if (history_ == 1 && i == 0) {
            e.add(history(0), 1.0);
            lincomb<T>(cx_, start, {cref(x)}, {1.0});
        } else if (history_ == 1 && i == 1) {
            e.add(out, 0.5);
            e.add(history(0), 0.5);
            source = start;
        } else if (history_ == 2) {
            e.add(history(0), 1.5);
            e.add(history(1), -0.5);
        } else if (history_ == 3) {
            e.add(history(0), 23.0 / 12.0);
            e.add(history(1), -16.0 / 12.0);
            e.add(history(2), 5.0 / 12.0);
        } else {
            e.add(history(0), 55.0 / 24.0);
            e.add(history(1), -59.0 / 24.0);
            e.add(history(2), 37.0 / 24.0);
            e.add(history(3), -9.0 / 24.0);
        }
        transfer(x, source, t, prev, e);
    }

private:
    using cref = tensor_ref<const T>;
    static constexpr int history_first = 3, history_slots = 4;

    void ensure(const extents& e) {
        if (bufs_.count() != 7 || bufs_.shape() != e) bufs_.ensure(e, 7);
    }
    cref history(int age) const { return bufs_[history_first + age]; }
    void push_history(cref out) {
        detail::rotate_history(bufs_, history_first, history_slots);
        lincomb<T>(cx_, bufs_[history_first], {out}, {1.0});
        history_ = std::min(history_ + 1, history_slots);
    }

    /// y = transfer of `source` from level ac[t] to ac[prev] (final level for prev < 0) with
    /// noise estimate e = the weighted outputs (v outputs turned into eps with `source`).
    void transfer(tensor_ref<T> y, cref source, int t, int prev,
                  const detail::term_list<T, 6>& e) const {
        const auto ac = schedule_->alphas_cumprod();
        const int last = schedule_->num_train_timesteps() - 1;
        if (t < 0 || t > last || prev > last)
            throw value_error(cx_.module, "pndm_sampler: timestep " + std::to_string(t) + " -> " +
                                              std::to_string(prev) + " is outside the table");
        const double a_t = ac[std::size_t(t)];
        const double a_p = prev >= 0 ? ac[std::size_t(prev)] : (o_.set_alpha_to_one ? 1.0 : ac[0]);
        const double c_x = std::sqrt(a_p / a_t);
        const double c_e =
            (a_p - a_t) / (a_t * std::sqrt(1.0 - a_p) + std::sqrt(a_t * (1.0 - a_t) * a_p));
        // eps = sqrt(a_t) v + sqrt(1 - a_t) x for v models
        const bool v = o_.prediction == prediction_type::v_prediction;
        detail::term_list<T, 7> terms;
        terms.add(source, v ? c_x - c_e * std::sqrt(1.0 - a_t) : c_x);
        const double scale = v ? -c_e * std::sqrt(a_t) : -c_e;
        for (std::size_t k = 0; k < e.n; ++k)
            terms.add(e.x[k], scale * e.c[k]);
        terms.apply(cx_, y);
    }

    ops::op_context cx_;
    const noise_schedule* schedule_;
    pndm_options o_;
    std::vector<double> timesteps_;
    int ratio_ = 1;
    int prk_calls_ = 0;
    int next_ = 0;
    int history_ = 0;
    state_buffers<T> bufs_;  // 0 model output, 1 saved start, 2 RK accumulator, 3..6 outputs
};

}  // namespace mmfuse::inline v0::diffusion
