#pragma once
/// \file
/// The two standard contrastive heads: `clip_loss` (symmetric InfoNCE, Radford et al. 2021;
/// open_clip `ClipLoss`) and `siglip_loss` (pairwise sigmoid loss, Zhai et al. 2023;
/// open_clip `SigLipLoss`). Both take L2-normalised embeddings (normalise with
/// `nn::l2_normalize` or a `projection_head`), own their temperature (and bias), and follow
/// the module protocol: `forward` returns the loss and keeps what `backward` needs;
/// `backward` returns the embedding gradients and adds the temperature/bias gradients into
/// their parameters. Equations: ../shared/reference/contrastive.md sections 1.2 and 1.4.

#include <string>

#include "mmfuse/contrastive/head.hpp"
#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/loss.hpp"

namespace mmfuse::inline v0::contrastive {

/// CLIP's symmetric InfoNCE over a batch of B matched pairs:
///   L = s I T^T (+ b),  l = ( CE(L, arange B) + CE(L^T, arange B) ) / 2,  s = e^theta.
///   forward:  image (B, D), text (B, D), unit rows -> l (a scalar)
///   backward: -> {d image (B, D), d text (B, D)}; adds dl/dtheta into "logit_scale".grad
/// Parameter: "logit_scale" = theta, init ln(1/0.07), clamped to [0, ln 100] by `clamp()`
/// after each optimiser step (open_clip). A constant bias has no effect on this loss (its
/// gradient is exactly 0), so the head has none.
template <compute_type T = float>
class clip_loss : public scaled_pair_head<T> {
public:
    explicit clip_loss(logit_scale_options scale = {}) : scaled_pair_head<T>(scale) {}

    /// Loss of the batch. image, text (B, D) with unit rows (B >= 1).
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text) {
        expect_matched_batch(path_, "clip_loss", image, text);
        logits_.similarities(cx, path_, image, text);
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.scale = scale_.scale();
        d.grad_scale = 0.5 / double(image.extent(0));
        return logits_.pass(cx, path_, d, direction::rows, {}, cx.training) +
               logits_.pass(cx, path_, d, direction::columns, {}, cx.training);
    }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
};

/// SigLIP's pairwise sigmoid loss over a batch of B matched pairs:
///   L = s I T^T + b,  z = 2E - 1,  l = (1/B) sum_ij softplus(-z_ij L_ij)
/// (a sum over all B^2 pairs divided by B, as open_clip and big_vision).
///   forward:  image (B, D), text (B, D), unit rows -> l
///   backward: -> {d image, d text}; adds into "logit_scale".grad and "logit_bias".grad
/// Parameters: "logit_scale" = theta (init ln 10), "logit_bias" = b (init -10; for small
/// batches -ln(B - 1) is the principled start, contrastive.md 1.4).
template <compute_type T = float>
class siglip_loss : public scaled_pair_head<T> {
public:
    explicit siglip_loss(logit_scale_options scale = {.init = siglip_init_log_scale},
                         double init_bias = siglip_init_bias)
        : scaled_pair_head<T>(scale), bias_(init_bias) {}

    /// Names the path, "logit_scale" and "logit_bias".
    template <class V>
    void visit(V& v) {
        base::visit(v);
        bias_.visit(v);
    }
    /// theta and b = their initial values.
    void reset_parameters(philox_generator& g) {
        base::reset_parameters(g);
        bias_.reset_parameters(g);
    }

    /// Loss of the batch. image, text (B, D) with unit rows.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text) {
        return forward(cx, image, text, {});
    }

    /// Multi-positive SigLIP (contrastive.md section 4): the labels are a positives mask,
    /// z = 2 Pi - 1, l = (1/B) sum_ij softplus(-z_ij L_ij), G = (sigmoid(L) - Pi) / B.
    /// positives (B, B) bool (Pi_ij: image i and text j match; the mask `same_label_mask`
    /// returns and `multi_positive_loss` takes), any strides; `{}` (no memory) means the
    /// identity, i.e. the plain form above.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text,
                   tensor_ref<const bool> positives) {
        expect_matched_batch(path_, "siglip_loss", image, text);
        const bool dense = positives.data() != nullptr;
        if (dense)
            check_extents(positives, extents{image.extent(0), image.extent(0)}, path_,
                          "siglip_loss positives");
        logits_.similarities(cx, path_, image, text);
        const tensor_ref<const T> targets =
            dense ? logits_.mask_targets(cx, path_, positives, direction::rows, false)
                  : tensor_ref<const T>{};
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::sigmoid_binary;
        d.targets = dense ? ops::loss_targets::dense : ops::loss_targets::diagonal;
        d.scale = scale_.scale();
        d.bias = bias_.value();
        d.grad_scale = 1.0 / double(image.extent(0));
        return logits_.pass(cx, path_, d, direction::rows, targets, cx.training);
    }

    /// Gradients of the last training-mode forward; adds dl/dtheta and dl/db into their
    /// parameters.
    pair_gradients<T> backward(nn::step_context<T>& cx) {
        pair_gradients<T> g = base::backward(cx);
        bias_.add_gradient(g.d_bias);
        return g;
    }

    /// The additive bias b ("logit_bias").
    contrastive::logit_bias<T>& logit_bias() noexcept { return bias_; }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
    contrastive::logit_bias<T> bias_;
};

}  // namespace mmfuse::inline v0::contrastive
