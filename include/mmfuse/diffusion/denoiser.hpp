#pragma once
/// \file
/// The `denoiser` concept every sampler is a template over, and `vp_model_denoiser`, which turns a diffusers-style network (VP input,
/// discrete timestep, epsilon/v/x0 output) into a k-diffusion denoiser D(x, sigma) in sigma
/// space — k-diffusion's `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` semantics
/// (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"):
///
///     c_in = 1 / sqrt(sigma^2 + 1),   t = sigma_to_t(sigma),   out = model(c_in x, t)
///     epsilon: D = x - sigma out;   v: D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) out;
///     sample:  D = out.

#include <cmath>
#include <concepts>
#include <string>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::diffusion {

/// A model evaluated at one noise level: `d(x, level, out)` reads the noisy sample x and
/// writes its prediction into `out` (x's extents; `out` never aliases x). What `level` and
/// the prediction mean is fixed by the sampler that calls it:
///   * k-diffusion / EDM samplers call a *sigma-space denoiser*: x = x0 + sigma n (VE form),
///     level = sigma, out = D(x, sigma) ~ E[x0 | x];
///   * diffusers-style samplers call a *model*: x = the scheduler's scaled model input,
///     level = the (possibly fractional) training timestep t, out = the network output in
///     its `prediction_type` space (epsilon, v or x0).
/// The condition (text embedding, class label, ...) is captured by the callable. A
/// classifier-free-guided denoiser is made by `guidance.hpp` from a *batched* model: the same
/// signature, called on a batch of 2B rows, [unconditional; conditional].
template <class D, class T>
concept denoiser =
    compute_type<T> && std::invocable<D&, tensor_ref<const T>, double, tensor_ref<T>>;

/// A sigma-space denoiser D(x, sigma) made of a VP model m(x_in, t, out) trained on
/// `schedule` with output type `prediction` (see the file comment). With `quantize` the
/// timestep is the nearest training index (k-diffusion `quantize=True`), otherwise the
/// fractional log-sigma interpolation `schedule.sigma_to_t`. The schedule must outlive this
/// object; the scaled-input buffer is allocated at the first call (and again only when the
/// sample's extents change) from a host arena this object owns, so the model is always
/// called on a host tensor: this adapter is host-only.
template <compute_type T, denoiser<T> Model>
class vp_model_denoiser {
public:
    vp_model_denoiser(ops::op_context cx, Model model, const noise_schedule& schedule,
                      prediction_type prediction, bool quantize = false)
        : cx_(cx), model_(std::move(model)), schedule_(&schedule), prediction_(prediction),
          quantize_(quantize) {}

    /// out = D(x, sigma); sigma > 0.
    void operator()(tensor_ref<const T> x, double sigma, tensor_ref<T> out) {
        if (!(sigma > 0.0) || !std::isfinite(sigma))
            throw value_error(cx_.module, "vp_model_denoiser: sigma must be finite and > 0, got " +
                                              std::to_string(sigma));
        input_.ensure(x.extents(), 1);
        const tensor_ref<T> xin = input_[0];
        lincomb<T>(cx_, xin, {x}, {1.0 / std::sqrt(sigma * sigma + 1.0)});
        model_(tensor_ref<const T>(xin), timestep(sigma), out);
        const affine_coefficients w = ve_x0_coefficients(prediction_, sigma);
        lincomb<T>(cx_, out, {x, tensor_ref<const T>(out)}, {w.x, w.output});
    }

    /// The model timestep used at `sigma`.
    double timestep(double sigma) const {
        const double t = schedule_->sigma_to_t(sigma);
        return quantize_ ? std::round(t) : t;
    }

    /// The wrapped VP model.
    Model& model() noexcept { return model_; }

private:
    ops::op_context cx_;
    Model model_;
    const noise_schedule* schedule_;
    prediction_type prediction_;
    bool quantize_;
    state_buffers<T> input_;
};

}  // namespace mmfuse::inline v0::diffusion
