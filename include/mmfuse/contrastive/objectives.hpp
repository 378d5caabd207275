#pragma once
/// \file
/// Contrastive objectives beyond CLIP and SigLIP, written in the pattern of `clip_loss`
/// (clip.hpp): each head owns its temperature, `forward` returns the loss and keeps what
/// `backward` needs, `backward` returns the embedding gradients and adds dl/dtheta into the
/// "logit_scale" parameter. All of them lower to `pairwise_logits` + `ops::logit_loss`
/// (plus `ops::softmax` for dense targets and `ops::concat` for NegCLIP), so they run on
/// whatever backend runs those ops.
///
///   multi_positive_loss  InfoNCE with a positives mask (SupCon "L_out", UniCL)
///   negclip_loss         image-to-text over [captions; hard-negative captions] (NegCLIP)
///   hn_nce_loss          HN-NCE (Radenovic et al. 2023); DCL / InfoLOOB as alpha = beta = 0
///   distill_clip_loss    CLIP + distillation from a teacher's logits (open_clip DistillClipLoss)
///
/// Equations, defaults and sources: ../shared/reference/contrastive.md sections 0, 1.2, 1.6
/// and 4. Notation: I = image (queries of the rows), T = text, S = I T^T, L = s S, s = e^theta,
/// B = batch size; "image-to-text" is the row direction of S, "text-to-image" its columns.

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/head.hpp"
#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/softmax.hpp"

namespace mmfuse::inline v0::contrastive {

/// How the two directions of a symmetric objective are combined.
enum class symmetric_reduction : unsigned char {
    mean,  ///< (l_i2t + l_t2i) / 2: CLIP, open_clip `ClipLoss`
    sum,   ///< l_i2t + l_t2i: ImageBind's paper, the public HN-NCE reimplementation
};

/// The factor each direction's mean-over-queries loss gets: 1/2 for `mean`, 1 for `sum`.
constexpr double direction_weight(symmetric_reduction r) noexcept {
    return r == symmetric_reduction::mean ? 0.5 : 1.0;
}

/// Positives mask Pi (rows, cols) with Pi_ij = (row_labels[i] == col_labels[j]), e.g. the
/// class ids of a batch's images and texts, for `multi_positive_loss`. Data preparation on
/// the host (the result is a host tensor).
template <class Label>
tensor<bool> same_label_mask(std::span<const Label> row_labels, std::span<const Label> col_labels) {
    tensor<bool> m(extents{index_t(row_labels.size()), index_t(col_labels.size())});
    for (std::size_t i = 0; i < row_labels.size(); ++i)
        for (std::size_t j = 0; j < col_labels.size(); ++j)
            m.data()[i * col_labels.size() + j] = row_labels[i] == col_labels[j];
    return m;
}

// ---------------------------------------------------------------------------------------

/// Multi-positive InfoNCE (SupCon's "L_out", Khosla et al. 2020; UniCL, Yang et al. 2022):
/// with a positives mask Pi (Pi_ij: image i and text j are a positive pair, e.g. same class)
///   q = Pi / rowsum(Pi),  q' = Pi^T / rowsum(Pi^T)  (each query's positives share mass 1),
///   l_i2t = -(1/B) sum_i sum_j q_ij log P_ij,   P = rowsoftmax(L),
///   l_t2i = -(1/B) sum_j sum_i q'_ji log Q_ij,  Q = colsoftmax(L),
///   l = w (l_i2t + l_t2i),  w = 1/2 (mean, default) or 1 (sum);  L = s I T^T.
/// G = dl/dL = w ((P - q) + (Q - q'^T)) / B. A query without any positive contributes 0
/// (its row still counts in the 1/B). Pi = identity gives `clip_loss` exactly.
///   forward:  image (B, D), text (B, D), positives (B, B) bool -> l
///   backward: -> {d image, d text}; adds dl/dtheta into "logit_scale".grad
/// Parameter "logit_scale" (open_clip defaults: init ln(1/0.07), clamp after the step).
template <compute_type T = float>
class multi_positive_loss : public scaled_pair_head<T> {
public:
    explicit multi_positive_loss(logit_scale_options scale = {},
                                 symmetric_reduction directions = symmetric_reduction::mean)
        : scaled_pair_head<T>(scale), directions_(directions) {}

    /// Loss of the batch. image, text (B, D) unit rows; positives (B, B), any strides.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text,
                   tensor_ref<const bool> positives) {
        expect_matched_batch(path_, "multi_positive_loss", image, text);
        const index_t b = image.extent(0);
        check_extents(positives, extents{b, b}, path_, "multi_positive_loss positives");
        if (positives.data() == nullptr)
            throw shape_error(path_, "multi_positive_loss positives", "a (B, B) mask with memory",
                              "a view without memory");
        logits_.similarities(cx, path_, image, text);
        // q = Pi / rowsum(Pi), q' = Pi^T / rowsum(Pi^T) (rows without a positive all zero).
        const tensor_ref<const T> q_rows =
            logits_.mask_targets(cx, path_, positives, direction::rows, true);
        const tensor_ref<const T> q_cols =
            logits_.mask_targets(cx, path_, positives, direction::columns, true);
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.targets = ops::loss_targets::dense;
        d.scale = scale_.scale();
        d.grad_scale = direction_weight(directions_) / double(b);
        return logits_.pass(cx, path_, d, direction::rows, q_rows, cx.training) +
               logits_.pass(cx, path_, d, direction::columns, q_cols, cx.training);
    }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
    symmetric_reduction directions_;
};

// ---------------------------------------------------------------------------------------

/// Gradients of `negclip_loss`: `da` (images), `db` (true captions) and the hard negatives'.
template <compute_type T>
struct negclip_gradients : pair_gradients<T> {
    tensor_ref<const T> d_negatives;  ///< dl/d hard_negatives, (N, D)
};

/// NegCLIP (Yuksekgonul et al. 2023; vinid/neg_clip): CLIP whose image-to-text softmax also
/// runs over N hard-negative captions (e.g. word-order perturbations of the true ones):
///   L_img = s I [T; T_neg]^T  (B, B + N),  L_txt = s T I^T  (B, B),  targets diagonal,
///   l = ( CE(L_img) + CE(L_txt) ) / 2   (each CE a mean over its B queries).
/// Hard-negative captions only enlarge the image-to-text softmax; they are never queries.
/// (NegCLIP's hard-negative *images* are ordinary extra pairs: append them to image and
/// text.) N = 0 gives `clip_loss` exactly.
///   forward:  image (B, D), text (B, D), hard_negatives (N, D), N >= 0 (`{}`: N = 0) -> l
///   backward: -> {d image, d text, d hard_negatives}; adds dl/dtheta into "logit_scale".grad
/// Parameter "logit_scale" (open_clip defaults).
template <compute_type T = float>
class negclip_loss : public scaled_pair_head<T> {
public:
    explicit negclip_loss(logit_scale_options scale = {}) : scaled_pair_head<T>(scale) {}

    /// Loss of the batch. image, text (B, D) unit rows; hard_negatives (N, D) unit rows, or
    /// `{}` (an empty view) for N = 0.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text,
                   tensor_ref<const T> hard_negatives) {
        expect_matched_batch(path_, "negclip_loss", image, text);
        const bool none = hard_negatives.rank() == 0 && hard_negatives.data() == nullptr;
        if (!none)
            expect_embedding_pair(path_, "negclip_loss hard_negatives", text, hard_negatives);
        const index_t b = image.extent(0), n = none ? 0 : hard_negatives.extent(0);
        tensor_ref<const T> captions = text;
        if (n > 0) {
            const tensor_ref<T> all = cx.allocate({b + n, text.extent(1)});
            ops::concat<T>(cx.op(path_), 0, {text, hard_negatives}, all);
            captions = all;
        }
        batch_ = b;
        negatives_ = n;
        logits_.similarities(cx, path_, image, captions);
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.scale = scale_.scale();
        d.grad_scale = 0.5 / double(b);
        // Columns: the N hard-negative columns have no diagonal target (index >= B), so their
        // rows of S^T contribute neither loss nor gradient: text-to-image runs over the true
        // captions only.
        return logits_.pass(cx, path_, d, direction::rows, {}, cx.training) +
               logits_.pass(cx, path_, d, direction::columns, {}, cx.training);
    }

    /// Gradients of the last training-mode forward.
    negclip_gradients<T> backward(nn::step_context<T>& cx) {
        const pair_gradients<T> g = logits_.backward(cx, path_);
        scale_.add_gradient(g.d_scale);
        negclip_gradients<T> r;
        r.da = g.da;
        r.db = g.db.narrow(0, 0, batch_);
        r.d_negatives = g.db.narrow(0, batch_, negatives_);
        r.d_scale = g.d_scale;
        r.d_bias = g.d_bias;
        return r;
    }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
    index_t batch_ = 0, negatives_ = 0;
};

// ---------------------------------------------------------------------------------------

/// Whether HN-NCE's importance weights w are differentiated.
enum class hn_weights : unsigned char {
    detached,  ///< w treated as constants (computed under no_grad / `.detach()`)
    in_graph,  ///< the gradient also flows through w (plain autograd of the formula)
};

/// Settings of `hn_nce_loss`. alpha = 1, beta = 0 is InfoNCE (= `clip_loss` with `mean`);
/// alpha = 0, beta = 0 is DCL / InfoLOOB (`dcl_options`).
struct hn_nce_options {
    double alpha = 1.0;  ///< weight of the positive in the denominator, >= 0
    double beta = 0.0;   ///< hardness: negatives weighted by e^{beta L_ij}, finite
    hn_weights weights = hn_weights::in_graph;
    symmetric_reduction directions = symmetric_reduction::mean;
};

/// Decoupled contrastive learning (Yeh et al. 2022; CLOOB's InfoLOOB): the positive is
/// removed from the denominator, l_i = -L_ii + LSE_{j != i} L_ij per direction.
constexpr hn_nce_options dcl_options(
    symmetric_reduction directions = symmetric_reduction::mean) noexcept {
    return {0.0, 0.0, hn_weights::in_graph, directions};
}

/// HN-NCE (Radenovic et al. 2023, arXiv 2301.02280), per direction (image-to-text shown;
/// text-to-image is the same on L^T):
///   l_i2t = -(1/B) sum_i log[ e^{L_ii} / (alpha e^{L_ii} + sum_{j!=i} w_ij e^{L_ij}) ],
///   w_ij  = (B - 1) e^{beta L_ij} / sum_{k!=i} e^{beta L_ik},
///   l = w_dir (l_i2t + l_t2i), w_dir = 1/2 (mean) or 1 (sum).
/// Evaluated in log-sum-exp form by `ops::logit_loss`. Both conventions for the weights
/// (`hn_weights`) and for the directions (`symmetric_reduction`) are explicit options.
///   forward:  image (B, D), text (B, D), unit rows, B >= 2 -> l
///   backward: -> {d image, d text}; adds dl/dtheta into "logit_scale".grad
/// Parameter "logit_scale" (open_clip defaults). Throws `value_error` for alpha < 0 or a
/// non-finite alpha / beta.
template <compute_type T = float>
class hn_nce_loss : public scaled_pair_head<T> {
public:
    explicit hn_nce_loss(hn_nce_options o = {}, logit_scale_options scale = {})
        : scaled_pair_head<T>(scale), o_(o) {
        ops::check_hn_nce("hn_nce_loss", descriptor(), 2);  // B >= 2 is checked per batch
    }

    /// Loss of the batch. image, text (B, D) unit rows, B >= 2 (one negative at least).
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text) {
        expect_matched_batch(path_, "hn_nce_loss", image, text);
        if (image.extent(0) < 2)
            throw shape_error(path_, "hn_nce_loss embeddings", "B >= 2 pairs (one negative)",
                              "shape " + image.extents().to_string());
        logits_.similarities(cx, path_, image, text);
        ops::logit_loss_desc d = descriptor();
        d.scale = scale_.scale();
        d.grad_scale = direction_weight(o_.directions) / double(image.extent(0));
        return logits_.pass(cx, path_, d, direction::rows, {}, cx.training) +
               logits_.pass(cx, path_, d, direction::columns, {}, cx.training);
    }

    /// The settings given at construction.
    const hn_nce_options& options() const noexcept { return o_; }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
    /// The `logit_loss` settings of both directions, before scale and grad_scale.
    ops::logit_loss_desc descriptor() const noexcept {
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.hn_alpha = o_.alpha;
        d.hn_beta = o_.beta;
        d.hn_weights_in_graph = o_.weights == hn_weights::in_graph;
        return d;
    }

    hn_nce_options o_;
};

// ---------------------------------------------------------------------------------------

/// The two terms of `distill_clip_loss` (open_clip returns them separately; the trainer sums
/// them with weight 1).
struct distill_losses {
    double contrastive;  ///< `clip_loss` of the student
    double distill;      ///< cross-entropy of the teacher's softmaxes against the student's
    double total() const { return contrastive + distill; }
};

/// open_clip's `DistillClipLoss`: CLIP on the student plus distillation of a frozen teacher's
/// logits. Student L = s I T^T (s = e^theta), teacher L^t = s_t I_t T_t^T;
///   H(A || C) = -(1/B) sum_i sum_j softmax(A_i)_j log softmax(C_i)_j   (teacher A, student C),
///   distill = ( H(L^t || L) + H(L^t^T || L^T) ) / 2,   contrastive = clip_loss (mean).
/// The teacher's row and column softmaxes P^t, Q^t (`ops::softmax`, the column one through a
/// transposed view) are the dense targets of two extra `logit_loss` passes, so
/// G = ((P - E) + (Q - E) + (P - P^t) + (Q - Q^t)) / (2B).
///   forward:  image, text (B, D) student unit rows; teacher_image, teacher_text (B, D_t)
///             teacher unit rows (any width D_t); teacher_scale = s_t, the teacher's
///             *multiplicative* scale (e^theta_t, open_clip's `dist_logit_scale`), finite > 0
///   backward: -> {d image, d text} of contrastive + distill (the teacher gets no gradient);
///             adds dl/dtheta into "logit_scale".grad
/// Parameter "logit_scale" (open_clip defaults).
template <compute_type T = float>
class distill_clip_loss : public scaled_pair_head<T> {
public:
    explicit distill_clip_loss(logit_scale_options scale = {}) : scaled_pair_head<T>(scale) {}

    /// Both terms of the batch's loss.
    distill_losses forward(nn::step_context<T>& cx, tensor_ref<const T> image,
                           tensor_ref<const T> text, tensor_ref<const T> teacher_image,
                           tensor_ref<const T> teacher_text, double teacher_scale) {
        expect_matched_batch(path_, "distill_clip_loss", image, text);
        expect_matched_batch(path_, "distill_clip_loss teacher", teacher_image, teacher_text);
        const index_t b = image.extent(0);
        if (teacher_image.extent(0) != b)
            throw shape_error(path_, "distill_clip_loss teacher embeddings",
                              "the student's batch B = " + std::to_string(b),
                              "shape " + teacher_image.extents().to_string());
        if (!(teacher_scale > 0.0) || !std::isfinite(teacher_scale)) {
            std::string msg = "teacher_scale must be finite and > 0, got ";
            msg += std::to_string(teacher_scale);
            throw value_error(path_, msg);
        }
        const ops::op_context op = cx.op(path_);
        // Teacher similarities and its softmaxes (rows: image queries; columns: text queries).
        const tensor_ref<T> st = cx.allocate({b, b});
        ops::matmul(op, nn::contiguous(cx, path_, teacher_image),
                    nn::contiguous(cx, path_, teacher_text), st, {.transpose_b = true});
        const tensor_ref<T> p_teacher = cx.allocate({b, b});
        const tensor_ref<T> q_teacher = cx.allocate({b, b});
        ops::softmax<T>(op, tensor_ref<const T>(st), p_teacher, teacher_scale);
        ops::softmax<T>(op, tensor_ref<const T>(st).transpose(0, 1), q_teacher, teacher_scale);

        logits_.similarities(cx, path_, image, text);
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.scale = scale_.scale();
        d.grad_scale = 0.5 / double(b);
        distill_losses l{};
        l.contrastive = logits_.pass(cx, path_, d, direction::rows, {}, cx.training) +
                        logits_.pass(cx, path_, d, direction::columns, {}, cx.training);
        d.targets = ops::loss_targets::dense;
        l.distill = logits_.pass(cx, path_, d, direction::rows, p_teacher, cx.training) +
                    logits_.pass(cx, path_, d, direction::columns, q_teacher, cx.training);
        return l;
    }

private:
    using base = scaled_pair_head<T>;
    using base::logits_;
    using base::path_;
    using base::scale_;
};

}  // namespace mmfuse::inline v0::contrastive
