#pragma once
/// \file
/// `binding_loss`: ImageBind's training objective (Girdhar et al., CVPR 2023). Several
/// modalities M_1..M_K are each bound to one anchor modality A (ImageBind: the image) with
/// the symmetric InfoNCE of CLIP at a per-modality temperature; M_k and M_l are never
/// compared, their alignment emerges through the anchor. Reference: contrastive.md section 2
/// (ImageBind's released scales: text learnable from 1/0.07 and clipped at 100 inside the
/// forward, audio fixed 20, depth 5, thermal 10, IMU 5).

#include <cmath>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/objectives.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/loss.hpp"

namespace mmfuse::inline v0::contrastive {

/// One modality bound to the anchor: its name (the parameter path: "text" gives
/// "text.logit_scale") and its temperature.
struct bound_modality {
    std::string name;
    logit_scale_options scale{};

    /// A fixed scale s (no parameter; the forward uses s exactly): ImageBind's audio (20),
    /// depth (5), thermal (10), IMU (5).
    static bound_modality fixed(std::string name, double s) {
        return {std::move(name),
                {.init = std::log(s),
                 .learnable = false,
                 .clamp = scale_clamp::none,
                 .fixed_scale = s}};
    }
    /// A learnable theta initialised to ln(init_scale) with s = min(e^theta, max_scale) in
    /// the forward (zero gradient while saturated): ImageBind's text (1/0.07, 100).
    static bound_modality clipped(std::string name, double init_scale = 1.0 / 0.07,
                                  double max_scale = 100.0) {
        return {std::move(name),
                {.init = std::log(init_scale),
                 .learnable = true,
                 .clamp = scale_clamp::in_forward,
                 .max_scale = max_scale}};
    }
};

/// Gradients of `binding_loss` (views into the step's workspace / the head's storage).
template <compute_type T>
struct binding_gradients {
    tensor_ref<const T> anchor;                       ///< dl/d anchor, summed over modalities
    std::span<const tensor_ref<const T>> modalities;  ///< dl/d M_k, in construction order
};

/// ImageBind-style binding of K modalities to an anchor:
///   L_k = s_k A M_k^T (B, B),  l_k = w ( CE(L_k, diag) + CE(L_k^T, diag) ),  l = sum_k l_k,
///   w = 1 (`symmetric_reduction::sum`, ImageBind's L_{I,M} + L_{M,I}, default) or 1/2
///   (`mean`, open_clip's convention: a factor 2 in gradient scale).
///   forward:  anchor (B, D), modalities: K tensors (B, D) in construction order, unit rows
///             -> l
///   backward: -> {d anchor = sum_k dl_k/dA, d M_k}; adds dl/dtheta_k into each learnable
///             "<name>.logit_scale".grad
/// Parameters: "<name>.logit_scale" for each learnable modality. Throws `value_error` for
/// no modality, an empty, dotted or repeated name.
template <compute_type T = float>
class binding_loss {
public:
    using value_type = T;

    explicit binding_loss(std::vector<bound_modality> modalities,
                          symmetric_reduction directions = symmetric_reduction::sum)
        : directions_(directions) {
        if (modalities.empty())
            throw value_error("binding_loss", "no modality to bind");
        for (std::size_t k = 0; k < modalities.size(); ++k) {
            const std::string& n = modalities[k].name;
            if (n.empty() || n.find('.') != std::string::npos)
                throw value_error("binding_loss",
                                  "a modality name must be non-empty and contain no '.', got '" +
                                      n + "'");
            for (std::size_t j = 0; j < k; ++j)
                if (modalities[j].name == n)
                    throw value_error("binding_loss", "modality '" + n + "' bound twice");
        }
        for (auto& m : modalities) {
            std::string label = "binding_loss (anchor, ";
            label += m.name;
            label += ")";
            labels_.push_back(std::move(label));
            names_.push_back(std::move(m.name));
            scales_.emplace_back(m.scale);
        }
        logits_.resize(names_.size());
        losses_.resize(names_.size());
        grads_.resize(names_.size());
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t k = 0; k < scales_.size(); ++k)
            v.child(names_[k], scales_[k]);
    }
    void reset_parameters(philox_generator& g) {
        for (auto& s : scales_)
            s.reset_parameters(g);
    }

    /// Sum over modalities of the symmetric losses. anchor (B, D); modalities[k] (B, D).
    double forward(nn::step_context<T>& cx, tensor_ref<const T> anchor,
                   std::span<const tensor_ref<const T>> modalities) {
        if (modalities.size() != names_.size())
            throw shape_error(path_, "binding_loss modalities",
                              std::to_string(names_.size()) + " embedding batches",
                              std::to_string(modalities.size()));
        double total = 0.0;
        for (std::size_t k = 0; k < names_.size(); ++k) {
            expect_matched_batch(path_, labels_[k], anchor, modalities[k]);
            logits_[k].similarities(cx, path_, anchor, modalities[k]);
            ops::logit_loss_desc d;
            d.kind = ops::logit_loss_kind::softmax_cross_entropy;
            d.scale = scales_[k].scale();
            d.grad_scale = direction_weight(directions_) / double(anchor.extent(0));
            losses_[k] = logits_[k].pass(cx, path_, d, direction::rows, {}, cx.training) +
                         logits_[k].pass(cx, path_, d, direction::columns, {}, cx.training);
            total += losses_[k];
        }
        return total;
    }
    double forward(nn::step_context<T>& cx, tensor_ref<const T> anchor,
                   std::initializer_list<tensor_ref<const T>> modalities) {
        return forward(cx, anchor, std::span(modalities.begin(), modalities.size()));
    }

    /// Gradients of the last training-mode forward (valid until the next backward).
    binding_gradients<T> backward(nn::step_context<T>& cx) {
        tensor_ref<const T> anchor{};
        tensor_ref<T> sum{};  // the running anchor sum once there are two terms
        for (std::size_t k = 0; k < names_.size(); ++k) {
            const pair_gradients<T> g = logits_[k].backward(cx, path_);
            scales_[k].add_gradient(g.d_scale);
            grads_[k] = g.db;
            if (k == 0) {
                anchor = g.da;
                continue;
            }
            if (k == 1) sum = cx.allocate(g.da.extents());
            ops::add<T>(cx.op(path_), anchor, g.da, sum);
            anchor = sum;
        }
        return {anchor, std::span<const tensor_ref<const T>>(grads_)};
    }

    /// open_clip's post-step clamp for every modality whose policy is `after_step`.
    void clamp() {
        for (auto& s : scales_)
            s.clamp();
    }
    /// K, the number of bound modalities.
    std::size_t size() const noexcept { return names_.size(); }
    /// The name of modality k < K (its parameter path); throws std::out_of_range otherwise.
    const std::string& name(std::size_t k) const { return names_.at(k); }
    /// The temperature of modality k < K; throws std::out_of_range otherwise.
    contrastive::logit_scale<T>& logit_scale(std::size_t k) { return scales_.at(k); }
    /// l_k of each modality in the last forward.
    std::span<const double> losses() const noexcept { return losses_; }
    /// S_k = A M_k^T of the last forward, (B, B); throws std::out_of_range for k >= K.
    tensor_ref<const T> similarities(std::size_t k) const { return logits_.at(k).s(); }

private:
    symmetric_reduction directions_;
    std::vector<std::string> names_;
    std::vector<std::string> labels_;  // "binding_loss (anchor, <name>)", for shape errors
    std::vector<contrastive::logit_scale<T>> scales_;
    std::vector<pairwise_logits<T>> logits_;
    std::vector<double> losses_;
    std::vector<tensor_ref<const T>> grads_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::contrastive
