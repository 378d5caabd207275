#pragma once
/// \file
/// The temperature and bias of contrastive heads, kept as PyTorch keeps them:
/// `logit_scale` stores theta = log s (open_clip's `logit_scale` parameter, a 0-d tensor) and
/// `logit_bias` stores b (SigLIP's `logit_bias`). Reference: ../shared/reference/contrastive.md
/// sections 1.1 (open_clip), 2 (ImageBind), 3 (big_vision).

#include <algorithm>
#include <cmath>
#include <string>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::contrastive {

/// ln(1 / 0.07): CLIP's initial theta (s = 14.2857), open_clip's `init_logit_scale`.
inline constexpr double clip_init_log_scale = 2.659260036932778;
/// ln 10: SigLIP's initial theta (t' in the paper; open_clip `--siglip`).
inline constexpr double siglip_init_log_scale = 2.302585092994046;
/// -10: SigLIP's initial bias (optimal for batches near 22,000; use -ln(B - 1) for small B).
inline constexpr double siglip_init_bias = -10.0;
/// ln 100: the upper clamp of theta in open_clip and CLIP ("4.6052").
inline constexpr double max_log_scale = 4.605170185988092;

/// How a learnable theta is kept in range.
enum class scale_clamp : unsigned char {
    none,        ///< never clamped
    after_step,  ///< open_clip: `clamp()` after every optimiser step projects theta onto
                 ///< [min_log, max_log] (default [0, ln 100]); the gradient is untouched
    in_forward,  ///< ImageBind: s = min(e^theta, max_scale) inside the forward, so the
                 ///< gradient of theta is exactly 0 while saturated
};

/// Options of `logit_scale`. Defaults are open_clip's CLIP settings.
struct logit_scale_options {
    double init = clip_init_log_scale;  ///< theta at `reset_parameters` (log of s)
    bool learnable = true;              ///< false: a fixed scale (ImageBind's audio: ln 20)
    scale_clamp clamp = scale_clamp::after_step;
    double min_log = 0.0;               ///< after_step lower bound of theta
    double max_log = max_log_scale;     ///< after_step upper bound of theta
    double max_scale = 100.0;           ///< in_forward upper bound of s
    /// A fixed scale (learnable = false) given as s itself, used exactly (0: s = e^init).
    /// `bound_modality::fixed` sets it, so that ImageBind's audio scale is 20, not e^(ln 20).
    double fixed_scale = 0.0;
};

/// The multiplicative logit scale s = e^theta of a contrastive head.
/// Parameter (when learnable): "logit_scale", shape () (a 0-d tensor, as open_clip), holding
/// theta; initialised to `options.init`. A fixed scale has no parameter.
/// The scale is read on the host (host backends; the CUDA backend has no contrastive ops yet).
template <compute_type T = float>
class logit_scale {
public:
    using value_type = T;

    explicit logit_scale(logit_scale_options o = {})
        : o_(o), fixed_(o.fixed_scale > 0.0 ? o.fixed_scale : std::exp(o.init)) {
        if (o_.learnable) theta_.shape = extents{};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if (o_.learnable) v.parameter("logit_scale", theta_);
    }
    void reset_parameters(philox_generator&) {
        if (o_.learnable) theta_.value.data()[0] = T(o_.init);
    }

    /// theta = log s as stored (before any in-forward clip); log of the fixed s when fixed.
    double log_scale() const {
        return o_.learnable ? double(theta_.value.data()[0]) : std::log(fixed_);
    }
    /// s used by the forward: e^theta, clipped at `max_scale` under `scale_clamp::in_forward`;
    /// a fixed scale exactly as given (`fixed_scale`, else e^init computed once).
    double scale() const {
        const double s = o_.learnable ? std::exp(log_scale()) : fixed_;
        return o_.clamp == scale_clamp::in_forward ? std::min(s, o_.max_scale) : s;
    }
    /// Adds dl/dtheta = s * dl/ds to the parameter's gradient (0 while an in-forward clip
    /// saturates; nothing for a fixed scale).
    void add_gradient(double d_scale) {
        if (!o_.learnable) return;
        const double s = std::exp(log_scale());
        if (o_.clamp == scale_clamp::in_forward && s > o_.max_scale) return;
        theta_.grad.data()[0] += T(s * d_scale);
    }
    /// open_clip's post-step projection theta <- clamp(theta, min_log, max_log); a no-op for
    /// the other policies. Call it after every optimiser step.
    void clamp() {
        if (!o_.learnable || o_.clamp != scale_clamp::after_step) return;
        T& t = theta_.value.data()[0];
        t = T(std::clamp(double(t), o_.min_log, o_.max_log));
    }

    /// The options given at construction.
    const logit_scale_options& options() const noexcept { return o_; }
    /// The "logit_scale" parameter holding theta (shape (); unallocated for a fixed scale).
    nn::parameter<T>& parameter() noexcept { return theta_; }
    /// This scale's module path, as set by the visitor ("" before `nn::model` visits it).
    const std::string& path() const noexcept { return path_; }

private:
    logit_scale_options o_;
    double fixed_;  // s of a fixed scale
    nn::parameter<T> theta_;
    std::string path_;
};

/// The additive logit bias b of SigLIP. Parameter "logit_bias", shape () (open_clip's name),
/// initialised to `init` (SigLIP: -10).
template <compute_type T = float>
class logit_bias {
public:
    using value_type = T;

    explicit logit_bias(double init = siglip_init_bias) : init_(init) { b_.shape = extents{}; }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("logit_bias", b_);
    }
    void reset_parameters(philox_generator&) { b_.value.data()[0] = T(init_); }

    /// b as stored in the parameter.
    double value() const { return double(b_.value.data()[0]); }
    /// Adds dl/db to the parameter's gradient.
    void add_gradient(double d_bias) { b_.grad.data()[0] += T(d_bias); }

    /// The "logit_bias" parameter holding b (shape ()).
    nn::parameter<T>& parameter() noexcept { return b_; }

private:
    double init_;
    nn::parameter<T> b_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::contrastive
