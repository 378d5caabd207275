#pragma once
/// \file
/// Classifier-free guidance (Ho & Salimans 2022) as a denoiser adaptor, with diffusers'
/// guidance rescale (Lin et al. 2023, "Common diffusion noise schedules and sample steps are
/// flawed", sec. 3.4; diffusers `rescale_noise_cfg`; reference/diffusion.md section 6).
///
/// The wrapped model is *batched*: called once on 2B rows, [x; x], it writes the
/// unconditional prediction into rows 0..B-1 and the conditional one into rows B..2B-1 (the
/// condition is the model's business, e.g. a (2B, ...) context whose first half is the empty
/// prompt). The adaptor is itself a `denoiser` on B rows:
///
///     out = out_u + g (out_c - out_u)
///     rescale phi > 0:  out <- phi * out * std(out_c) / std(out) + (1 - phi) * out,
///                       std per batch item over all non-batch elements, unbiased (Bessel).
///
/// It works in whatever space the model predicts (eps, v, x0, or a sigma-space D): plain
/// guidance commutes with the samplers' affine conversions; the rescale does not (as in
/// diffusers, it is applied to the raw output).

#include <cmath>
#include <cstddef>
#include <string>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/ops/context.hpp"

namespace mmfuse::inline v0::diffusion {

/// A B-row denoiser from a 2B-row batched model (see the file comment). `scale` g (any
/// finite value; 1 = conditional only), `rescale` phi in [0, 1]. The batched input and output
/// buffers (2B rows each) are allocated at the first call, from a host arena this object
/// owns, and reused: the batched model is always called on host tensors, so this class is
/// host-only (x and out may live anywhere `ops::combine` can copy from / to, the model not).
/// The rescale reads the per-item statistics on the host as well (`backend_error` for device
/// x / out).
template <compute_type T, denoiser<T> Batched>
class classifier_free_guidance {
public:
    classifier_free_guidance(ops::op_context cx, Batched model, double scale,
                             double rescale = 0.0)
        : cx_(cx), model_(std::move(model)), scale_(scale), rescale_(rescale) {
        if (!std::isfinite(scale))
            throw value_error(cx_.module, "classifier_free_guidance: scale must be finite, got " +
                                              std::to_string(scale));
        if (!(rescale >= 0.0 && rescale <= 1.0))
            throw value_error(cx_.module,
                              "classifier_free_guidance: rescale must lie in [0, 1], got " +
                                  std::to_string(rescale));
    }

    /// out (B, ...) = guided prediction for x (B, ...) at `level` (passed to the model).
    void operator()(tensor_ref<const T> x, double level, tensor_ref<T> out) {
        if (x.rank() < 1 || x.extent(0) < 1)
            throw shape_error(cx_.module, "classifier_free_guidance input", "shape (B, ...), B >= 1",
                              "shape " + x.extents().to_string());
        const index_t b = x.extent(0);
        const extents twice = x.extents().with_axis(0, 2 * b);
        if (bufs_.count() != 2 || bufs_.shape() != twice) bufs_.ensure(twice, 2);
        const tensor_ref<T> in2 = bufs_[0], out2 = bufs_[1];
        lincomb<T>(cx_, in2.narrow(0, 0, b), {x}, {1.0});
        lincomb<T>(cx_, in2.narrow(0, b, b), {x}, {1.0});
        model_(tensor_ref<const T>(in2), level, out2);
        const tensor_ref<const T> u = out2.narrow(0, 0, b), c = out2.narrow(0, b, b);
        lincomb<T>(cx_, out, {u, c}, {1.0 - scale_, scale_});
        if (rescale_ > 0.0) rescale(c, out);
    }

    /// The wrapped 2B-row model (e.g. to change its conditioning between samples).
    Batched& model() noexcept { return model_; }

private:
    /// Unbiased std of every element of `v` (host loops, two passes in double).
    static double item_std(const tensor_ref<const T>& v) {
        double sum = 0.0;
        const double n = double(v.numel());
        mmfuse::detail::for_each_logical(v, [&](const T& e, index_t) { sum += double(e); });
        const double mean = sum / n;
        double ss = 0.0;
        mmfuse::detail::for_each_logical(v, [&](const T& e, index_t) {
            ss += (double(e) - mean) * (double(e) - mean);
        });
        return std::sqrt(ss / (n - 1.0));
    }

    void rescale(tensor_ref<const T> cond, tensor_ref<T> out) const {
        if (out.space() != memory_space::host || cond.space() != memory_space::host)
            throw backend_error(cx_.module,
                                "classifier_free_guidance: guidance rescale needs host memory");
        for (index_t i = 0; i < out.extent(0); ++i) {
            const tensor_ref<T> o = out.narrow(0, i, 1);
            const double factor =
                rescale_ * item_std(cond.narrow(0, i, 1)) / item_std(o) + (1.0 - rescale_);
            lincomb<T>(cx_, o, {tensor_ref<const T>(o)}, {factor});
        }
    }

    ops::op_context cx_;
    Batched model_;
    double scale_;
    double rescale_;
    state_buffers<T> bufs_;  // 0 batched input, 1 batched output
};

}  // namespace mmfuse::inline v0::diffusion
