#pragma once
/// \file
/// `contrastive::scaled_pair_head`: what every single-pair contrastive head shares — its
/// temperature (`logit_scale`), its `pairwise_logits` engine and its module path — and the
/// module protocol and accessors over them. A head derives from it and adds its `forward`
/// (and, when it has more state, e.g. SigLIP's bias, extends `visit` / `reset_parameters` /
/// `backward`).

#include <string>

#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::contrastive {

/// Base of the single-pair heads (clip_loss, siglip_loss, multi_positive_loss, negclip_loss,
/// hn_nce_loss, distill_clip_loss). Parameter: "logit_scale" = theta (see `logit_scale`).
template <compute_type T>
class scaled_pair_head {
public:
    using value_type = T;

    explicit scaled_pair_head(logit_scale_options scale) : scale_(scale) {}

    /// Names the head's path and its "logit_scale" parameter.
    template <class V>
    void visit(V& v) {
        v.path(path_);
        scale_.visit(v);
    }
    /// theta = the options' init.
    void reset_parameters(philox_generator& g) { scale_.reset_parameters(g); }

    /// Gradients of the last training-mode forward: {dA, dB, dl/ds, dl/db}; adds dl/dtheta
    /// into "logit_scale".grad.
    pair_gradients<T> backward(nn::step_context<T>& cx) {
        pair_gradients<T> g = logits_.backward(cx, path_);
        scale_.add_gradient(g.d_scale);
        return g;
    }

    /// open_clip's post-step clamp of theta (call after every optimiser step; a no-op for the
    /// other clamp policies).
    void clamp() { scale_.clamp(); }
    /// The temperature: theta = log s ("logit_scale").
    contrastive::logit_scale<T>& logit_scale() noexcept { return scale_; }
    /// The similarity matrix S = A B^T of the last forward, before scale and bias.
    tensor_ref<const T> similarities() const noexcept { return logits_.s(); }

protected:
    contrastive::logit_scale<T> scale_;
    pairwise_logits<T> logits_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::contrastive
