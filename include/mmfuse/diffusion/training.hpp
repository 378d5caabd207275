#pragma once
/// \file
/// Diffusion training helpers (DDPM, Ho et al. 2020): the forward noising q(x_t | x0), the
/// v-prediction target (Salimans & Ho 2022), uniform timestep sampling from Philox, and the
/// min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
/// Weighting Strategy"). Conventions of diffusers' `DDPMScheduler.add_noise` /
/// `get_velocity` and `examples/text_to_image/train_text_to_image.py` (`--snr_gamma`, with
/// `diffusers.training_utils.compute_snr`).
///
/// Per-sample timesteps: axis 0 of every tensor is the batch; sample b uses level
/// ac = alphas_cumprod[t_b] of the schedule. The elementwise work is one `ops::combine` per
/// batch item, so it runs on any backend; nothing is allocated.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/random.hpp"

namespace mmfuse::inline v0::diffusion {

namespace detail {

inline constexpr const char* training_module = "diffusion.training";

/// Checks that `t` has one timestep per batch item of `batch` and that each lies in [0, T).
inline void check_timesteps(const noise_schedule& s, std::span<const int> t, index_t batch,
                            const char* what) {
    if (index_t(t.size()) != batch)
        throw shape_error(training_module, std::string(what) + " timesteps",
                          std::to_string(batch) + " timesteps (one per batch item)",
                          std::to_string(t.size()));
    for (const int v : t)
        if (v < 0 || v >= s.num_train_timesteps())
            throw value_error(training_module, std::string(what) + ": timestep " +
                                                   std::to_string(v) + " outside [0, " +
                                                   std::to_string(s.num_train_timesteps()) + ")");
}

/// out[b] = ca(ac_b) a[b] + cb(ac_b) b[b] for each batch item b (ac_b = alphas_cumprod[t_b]).
template <compute_type T, class Coeffs>
void per_sample_combine(const ops::op_context& cx, const noise_schedule& s, tensor_ref<T> out,
                        tensor_ref<const T> a, tensor_ref<const T> b, std::span<const int> t,
                        const char* what, Coeffs&& coeffs) {
    if (out.rank() < 1)
        throw shape_error(training_module, std::string(what) + " output",
                          "a tensor of rank >= 1 (batch first)", "rank 0");
    if (a.extents() != out.extents() || b.extents() != out.extents())
        throw shape_error(training_module, std::string(what) + " inputs",
                          "both of shape " + out.extents().to_string(),
                          a.extents().to_string() + " and " + b.extents().to_string());
    check_timesteps(s, t, out.extent(0), what);
    const auto ac = s.alphas_cumprod();
    for (index_t i = 0; i < out.extent(0); ++i) {
        const auto [ca, cb] = coeffs(ac[std::size_t(t[std::size_t(i)])]);
        ops::combine<T>(cx, out.narrow(0, i, 1), {a.narrow(0, i, 1), b.narrow(0, i, 1)}, {ca, cb});
    }
}

}  // namespace detail

/// The forward process: x_t[b] = sqrt(ac_b) x0[b] + sqrt(1 - ac_b) noise[b] with
/// ac_b = alphas_cumprod[timesteps[b]] (diffusers `add_noise`). x_t, x0, noise: equal extents
/// with the batch on axis 0; `timesteps` one per batch item, in [0, T). x_t may alias x0 or
/// noise. Throws `shape_error` / `value_error` naming "diffusion.training".
template <compute_type T>
void add_noise(const ops::op_context& cx, const noise_schedule& s, tensor_ref<T> x_t,
               tensor_ref<const std::type_identity_t<T>> x0,
               tensor_ref<const std::type_identity_t<T>> noise, std::span<const int> timesteps) {
    detail::per_sample_combine<T>(cx, s, x_t, x0, noise, timesteps, "add_noise", [](double ac) {
        return affine_coefficients{std::sqrt(ac), std::sqrt(1.0 - ac)};
    });
}

/// The v-prediction target v[b] = sqrt(ac_b) noise[b] - sqrt(1 - ac_b) x0[b] (Salimans & Ho
/// 2022, sec. 4; diffusers `get_velocity`). Shapes and errors as `add_noise`.
template <compute_type T>
void velocity_target(const ops::op_context& cx, const noise_schedule& s, tensor_ref<T> v,
                     tensor_ref<const std::type_identity_t<T>> x0,
                     tensor_ref<const std::type_identity_t<T>> noise, std::span<const int> timesteps) {
    detail::per_sample_combine<T>(cx, s, v, x0, noise, timesteps, "velocity_target", [](double ac) {
        return affine_coefficients{-std::sqrt(1.0 - ac), std::sqrt(ac)};
    });
}

/// Philox words `sample_timesteps` uses for n timesteps (one double uniform each).
constexpr std::uint64_t timestep_words(std::uint64_t n) noexcept { return uniform_words<double>(n); }

/// Uniform training timesteps: out[i] = floor(u_i * num_timesteps), u_i the i-th double
/// uniform in [0, 1) at `gen`'s offset (`uniform_at<double>(stream, offset, i)`, 53-bit), so
/// out[i] is in [0, num_timesteps) (bias below 2^-40 for T <= 2^13). Advances `gen` by
/// `timestep_words(out.size())`; the same (seed, subsequence, offset) gives the same
/// timesteps everywhere. Throws `value_error` for num_timesteps < 1.
inline void sample_timesteps(philox_generator& gen, std::span<int> out, int num_timesteps) {
    if (num_timesteps < 1)
        throw value_error(detail::training_module,
                          "sample_timesteps: num_timesteps must be >= 1, got " +
                              std::to_string(num_timesteps));
    philox_cursor c{gen.stream()};
    const std::uint64_t base = gen.offset();
    for (std::size_t i = 0; i < out.size(); ++i) {
        const double u = uniform_at<double>(c, base, i);
        out[i] = std::min(int(std::floor(u * num_timesteps)), num_timesteps - 1);
    }
    gen.skip(timestep_words(out.size()));
}

/// SNR(t) = ac_t / (1 - ac_t) (diffusers `compute_snr`: (sqrt(ac)/sqrt(1-ac))^2); +inf at
/// ac = 1, 0 at ac = 0 (zero terminal SNR). Throws `value_error` for t outside [0, T).
inline double snr(const noise_schedule& s, int t) {
    if (t < 0 || t >= s.num_train_timesteps())
        throw value_error(detail::training_module,
                          "snr: timestep " + std::to_string(t) + " outside [0, " +
                              std::to_string(s.num_train_timesteps()) + ")");
    const double ac = s.alphas_cumprod()[std::size_t(t)];
    return ac / (1.0 - ac);
}

/// Min-SNR-gamma loss weights (Hang et al. 2023, eq. 10 and sec. 3.4), one per timestep,
/// for a plain MSE on the model's own target, as diffusers' train_text_to_image.py applies
/// them with `--snr_gamma` (`mse_loss_weights = min(snr, gamma)`, then `/ snr` for epsilon,
/// `/ (snr + 1)` for v_prediction, unchanged for sample):
///   epsilon       min(SNR, gamma) / SNR      (taken as its limit 1 when SNR = 0)
///   v_prediction  min(SNR, gamma) / (SNR + 1)
///   sample        min(SNR, gamma)
/// At SNR = +inf (ac = 1) the eps and v weights are 0 and the sample weight gamma.
/// Throws `value_error` for gamma <= 0 or a timestep outside [0, T), `shape_error` when
/// out.size() != timesteps.size().
inline void min_snr_weights(const noise_schedule& s, std::span<const int> timesteps, double gamma,
                            prediction_type p, std::span<double> out) {
    if (!(gamma > 0.0))
        throw value_error(detail::training_module,
                          "min_snr_weights: gamma must be > 0, got " + std::to_string(gamma));
    if (out.size() != timesteps.size())
        throw shape_error(detail::training_module, "min_snr_weights output",
                          std::to_string(timesteps.size()) + " weights",
                          std::to_string(out.size()));
    for (std::size_t i = 0; i < timesteps.size(); ++i) {
        const double r = snr(s, timesteps[i]);
        const double m = std::min(r, gamma);
        switch (p) {
        case prediction_type::epsilon: out[i] = r <= gamma ? 1.0 : gamma / r; break;
        case prediction_type::v_prediction: out[i] = std::isinf(r) ? 0.0 : m / (r + 1.0); break;
        case prediction_type::sample: out[i] = m; break;
        }
    }
}

}  // namespace mmfuse::inline v0::diffusion
