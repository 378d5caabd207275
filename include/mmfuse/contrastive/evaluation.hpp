#pragma once
/// \file
/// Evaluation of contrastive models, on the host: zero-shot classification (a classifier
/// from per-class prompt embeddings, logits with CLIP's fixed factor 100, top-k accuracy) and
/// cross-modal retrieval metrics (R@1/5/10, mean and median rank, one or several captions per
/// image). References: ../shared/reference/contrastive.md sections 1.7 (open_clip
/// `build_zero_shot_classifier`, `zero_shot.run`, `accuracy`) and 1.8 (open_clip
/// `get_clip_metrics`; big_vision's any-hit rule for several captions per image).
///
/// Ranks are 0-based positions in a *stable* descending sort (ties go to the lower index):
///
///     rank(pos) = #{j : x_j > x_pos} + #{j < pos : x_j == x_pos}
///
/// open_clip's chunked metrics use this rule; its older argsort version leaves ties
/// unspecified. The same rule decides top-k accuracy (a sample is top-k correct when the
/// rank of its target is < k), so ties never make a result depend on a sort implementation.
///
/// Every function reads host memory through `tensor_ref` (any strides) and accumulates in
/// double. Inputs must be host views; NaN scores and logits are refused (they have no rank).

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::contrastive {

/// CLIP's zero-shot logit factor: logits = 100 * cos (open_clip `zero_shot.run`), fixed,
/// not the model's learned scale (irrelevant for accuracy, relevant for probabilities).
inline constexpr double zero_shot_logit_factor = 100.0;

/// Retrieval summary of one direction, from 0-based ranks r (open_clip's definitions):
/// recall_at_k = mean(r < k), mean_rank = mean(r) + 1, median_rank = floor(median(r)) + 1
/// (the median of an even count averages the two middle ranks, as numpy's).
struct rank_metrics {
    double recall_at_1 = 0.0;
    double recall_at_5 = 0.0;
    double recall_at_10 = 0.0;
    double mean_rank = 0.0;
    double median_rank = 0.0;
};

/// Both directions of a retrieval evaluation and the ranks behind them.
struct retrieval_result {
    std::vector<index_t> image_ranks;  ///< (N_images): best rank over the image's captions
    std::vector<index_t> text_ranks;   ///< (N_texts): rank of the text's image
    rank_metrics image_to_text;        ///< summary of image_ranks (any-hit)
    rank_metrics text_to_image;        ///< summary of text_ranks
};

namespace detail {

/// Throws `value_error` naming `where` unless `x` is a host view with data (or empty).
template <class T>
void expect_host(std::string_view where, std::string_view what, const tensor_ref<T>& x) {
    if (x.space() != memory_space::host) {
        std::string msg(what);
        msg += ": evaluation reads host memory, got a device view";
        throw value_error(where, msg);
    }
    if (x.numel() > 0 && x.data() == nullptr) {
        std::string msg(what);
        msg += ": null data for shape ";
        msg += x.extents().to_string();
        throw value_error(where, msg);
    }
}

/// Throws `shape_error` naming `where` unless `x` has rank `rank`.
template <class T>
void expect_rank_of(std::string_view where, std::string_view what, const tensor_ref<T>& x,
                    int rank, std::string_view expected) {
    if (x.rank() != rank)
        throw shape_error(where, what, std::string(expected), "shape " + x.extents().to_string());
}

/// Throws `value_error` naming `where` if any element of the rank-2 view `x` is NaN.
template <class T>
void expect_no_nan(std::string_view where, std::string_view what, const tensor_ref<const T>& x) {
    for (index_t i = 0; i < x.extent(0); ++i)
        for (index_t j = 0; j < x.extent(1); ++j)
            if (std::isnan(double(x(i, j)))) {
                std::string msg(what);
                msg += ": NaN at (" + std::to_string(i);
                msg += ", " + std::to_string(j);
                msg += ") has no rank";
                throw value_error(where, msg);
            }
}

/// 1 / max(||x||, 1e-12) of a rank-1 view: torch.nn.functional.normalize's divisor, which
/// open_clip's `encode_*(normalize=True)` uses (a zero vector stays zero).
template <class T>
double inverse_norm(const tensor_ref<const T>& x) {
    double sq = 0.0;
    for (index_t j = 0; j < x.extent(0); ++j)
        sq += double(x(j)) * double(x(j));
    return 1.0 / std::max(std::sqrt(sq), 1e-12);
}

}  // namespace detail

/// 0-based position of entry `pos` of the rank-1 view `line` in a stable descending sort:
/// #{j : line_j > line_pos} + #{j < pos : line_j == line_pos}. No bounds or NaN checks
/// (callers validate); O(length).
template <class T>
index_t stable_rank(const tensor_ref<const T>& line, index_t pos) {
    const T s = line(pos);
    index_t r = 0;
    for (index_t j = 0; j < line.extent(0); ++j)
        r += (line(j) > s || (j < pos && line(j) == s)) ? 1 : 0;
    return r;
}

/// mean(r < k) over 0-based ranks r. Throws `value_error` for no ranks or k < 1.
inline double recall_at(std::span<const index_t> ranks, index_t k) {
    if (ranks.empty()) throw value_error("recall_at", "no ranks to summarise");
    if (k < 1) throw value_error("recall_at", "k must be >= 1, got " + std::to_string(k));
    const auto hits = std::count_if(ranks.begin(), ranks.end(), [k](index_t r) { return r < k; });
    return double(hits) / double(ranks.size());
}

/// R@1/5/10, mean rank and median rank of 0-based ranks (see `rank_metrics`).
/// Throws `value_error` for no ranks or a negative rank.
inline rank_metrics summarize_ranks(std::span<const index_t> ranks) {
    if (ranks.empty()) throw value_error("summarize_ranks", "no ranks to summarise");
    std::vector<index_t> sorted(ranks.begin(), ranks.end());
    std::sort(sorted.begin(), sorted.end());
    if (sorted.front() < 0)
        throw value_error("summarize_ranks",
                          "ranks are 0-based positions, got " + std::to_string(sorted.front()));
    const std::size_t n = sorted.size();
    index_t sum = 0;
    for (index_t r : sorted)
        sum += r;
    // numpy: the median of an even count is the mean of the two middle values; floor of a
    // non-negative half-integer is integer division.
    const index_t median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    rank_metrics m;
    m.recall_at_1 = recall_at(ranks, 1);
    m.recall_at_5 = recall_at(ranks, 5);
    m.recall_at_10 = recall_at(ranks, 10);
    m.mean_rank = double(sum) / double(n) + 1.0;
    m.median_rank = double(median) + 1.0;
    return m;
}

/// Retrieval metrics from a score matrix with several captions per image.
///   scores      (N_images, N_texts), higher = more similar (e.g. s I T^T or I T^T; the
///               scale changes nothing); no NaN
///   text_owner  (N_texts): the image index in [0, N_images) each text describes; every
///               image must own at least one text
/// image->text (big_vision's any-hit rule): an image's rank is the best stable rank of its
/// captions in its row, so R@k = the fraction of images with any caption in the top k.
/// text->image: a text's rank is the stable rank of its image in its column.
/// Throws `shape_error` (rank, N_texts mismatch, no images) and `value_error` (owner out of
/// range, an image without captions, NaN, device view), naming "retrieval_metrics".
template <class T>
retrieval_result retrieval_metrics(tensor_ref<const T> scores, std::span<const index_t> text_owner) {
    constexpr std::string_view where = "retrieval_metrics";
    detail::expect_rank_of(where, "scores", scores, 2, "shape (N_images, N_texts)");
    detail::expect_host(where, "scores", scores);
    const index_t n_images = scores.extent(0), n_texts = scores.extent(1);
    if (n_images == 0 || n_texts == 0)
        throw shape_error(where, "scores", "at least one image and one text",
                          "shape " + scores.extents().to_string());
    if (index_t(text_owner.size()) != n_texts)
        throw shape_error(where, "text_owner", "one image index per text (" +
                                                   std::to_string(n_texts) + " entries)",
                          std::to_string(text_owner.size()) + " entries");
    detail::expect_no_nan(where, "scores", scores);

    // Each image's best caption: highest score, lowest index among equals. Its stable rank is
    // the smallest of the image's captions (the rank is monotone in that order).
    std::vector<index_t> best(static_cast<std::size_t>(n_images), -1);
    for (index_t t = 0; t < n_texts; ++t) {
        const index_t i = text_owner[static_cast<std::size_t>(t)];
        if (i < 0 || i >= n_images) {
            std::string msg = "text_owner[" + std::to_string(t);
            msg += "] = " + std::to_string(i);
            msg += " is not an image index in [0, " + std::to_string(n_images);
            msg += ")";
            throw value_error(where, msg);
        }
        index_t& b = best[static_cast<std::size_t>(i)];
        if (b < 0 || scores(i, t) > scores(i, b)) b = t;
    }
    retrieval_result res;
    res.image_ranks.resize(static_cast<std::size_t>(n_images));
    for (index_t i = 0; i < n_images; ++i) {
        const index_t b = best[static_cast<std::size_t>(i)];
        if (b < 0)
            throw value_error(where, "image " + std::to_string(i) + " owns no text in text_owner");
        res.image_ranks[static_cast<std::size_t>(i)] = stable_rank(scores.select(0, i), b);
    }
    res.text_ranks.resize(static_cast<std::size_t>(n_texts));
    for (index_t t = 0; t < n_texts; ++t)
        res.text_ranks[static_cast<std::size_t>(t)] =
            stable_rank(scores.select(1, t), text_owner[static_cast<std::size_t>(t)]);
    res.image_to_text = summarize_ranks(res.image_ranks);
    res.text_to_image = summarize_ranks(res.text_ranks);
    return res;
}

/// Retrieval metrics with one caption per image: scores (N, N), text t describes image t
/// (pairs on the diagonal; open_clip's `get_clip_metrics` with the stable tie rule).
/// Throws `shape_error` unless scores is square, else as the general overload.
template <class T>
retrieval_result retrieval_metrics(tensor_ref<const T> scores) {
    detail::expect_rank_of("retrieval_metrics", "scores", scores, 2, "shape (N, N)");
    if (scores.extent(0) != scores.extent(1))
        throw shape_error("retrieval_metrics", "scores", "a square (N, N) matrix (one caption per "
                          "image; pass text_owner for several)",
                          "shape " + scores.extents().to_string());
    std::vector<index_t> owner(static_cast<std::size_t>(scores.extent(1)));
    for (std::size_t t = 0; t < owner.size(); ++t)
        owner[t] = index_t(t);
    return retrieval_metrics(scores, std::span<const index_t>(owner));
}

/// Zero-shot classifier from per-class prompt embeddings (open_clip
/// `build_zero_shot_classifier`): w_c = normalize( (1/K_c) sum_k normalize(t_ck) ).
///   prompts     one (K_c, D) view per class (K_c >= 1 templates, raw or unit rows; rows are
///               normalised as F.normalize does, so a zero row contributes nothing)
///   classifier  (C, D) output, unit rows (open_clip's weights transposed)
/// Throws `shape_error` (no classes, ranks, widths, output shape, K_c = 0) and `value_error`
/// (a class whose averaged direction is zero, device views), naming "zero_shot_classifier".
template <compute_type T>
void zero_shot_classifier(std::span<const tensor_ref<const T>> prompts, tensor_ref<T> classifier) {
    constexpr std::string_view where = "zero_shot_classifier";
    if (prompts.empty())
        throw shape_error(where, "prompts", "at least one class", "none");
    const index_t c = index_t(prompts.size());
    detail::expect_rank_of(where, "classifier", classifier, 2, "shape (C, D)");
    detail::expect_host(where, "classifier", classifier);
    const index_t d = classifier.extent(1);
    if (classifier.extent(0) != c)
        throw shape_error(where, "classifier", "shape (" + std::to_string(c) + ", D)",
                          "shape " + classifier.extents().to_string());
    std::vector<double> mean(static_cast<std::size_t>(d));
    for (index_t k = 0; k < c; ++k) {
        const tensor_ref<const T>& p = prompts[static_cast<std::size_t>(k)];
        std::string what = "prompts of class " + std::to_string(k);
        detail::expect_host(where, what, p);
        if (p.rank() != 2 || p.extent(1) != d || p.extent(0) == 0)
            throw shape_error(where, what, "shape (K >= 1, " + std::to_string(d) + ")",
                              "shape " + p.extents().to_string());
        std::fill(mean.begin(), mean.end(), 0.0);
        for (index_t t = 0; t < p.extent(0); ++t) {
            const tensor_ref<const T> row = p.select(0, t);
            const double inv = detail::inverse_norm(row);
            for (index_t j = 0; j < d; ++j)
                mean[static_cast<std::size_t>(j)] += double(row(j)) * inv;
        }
        double sq = 0.0;
        for (double v : mean)
            sq += v * v;
        // open_clip divides by the plain norm: a zero mean would be NaN there.
        if (!(sq > 0.0) || !std::isfinite(sq)) {
            what += ": the averaged prompt direction is zero or not finite";
            throw value_error(where, what);
        }
        // normalize(mean / K) = normalize(mean): the 1/K cancels.
        const double inv = 1.0 / std::sqrt(sq);
        for (index_t j = 0; j < d; ++j)
            classifier(k, j) = T(mean[static_cast<std::size_t>(j)] * inv);
    }
}

/// The same from a (C, K, D) block of prompt embeddings (K templates for every class);
/// returns the (C, D) classifier.
template <compute_type T>
tensor<T> zero_shot_classifier(tensor_ref<const T> prompts) {
    detail::expect_rank_of("zero_shot_classifier", "prompts", prompts, 3, "shape (C, K, D)");
    std::vector<tensor_ref<const T>> per_class;
    for (index_t k = 0; k < prompts.extent(0); ++k)
        per_class.push_back(prompts.select(0, k));
    tensor<T> w({prompts.extent(0), prompts.extent(2)});
    zero_shot_classifier(std::span<const tensor_ref<const T>>(per_class), w.ref());
    return w;
}

/// Zero-shot logits 100 * normalize(image_n) . w_c (open_clip `zero_shot.run`; images are
/// normalised as F.normalize does, which leaves `encode_image(normalize=True)` output as is).
///   images      (N, D) image embeddings
///   classifier  (C, D) from `zero_shot_classifier`
///   logits      (N, C) output
/// Throws `shape_error` for mismatched shapes and `value_error` for device views, naming
/// "zero_shot_logits".
template <compute_type T>
void zero_shot_logits(tensor_ref<const T> images, tensor_ref<const T> classifier,
                      tensor_ref<T> logits) {
    constexpr std::string_view where = "zero_shot_logits";
    detail::expect_rank_of(where, "images", images, 2, "shape (N, D)");
    detail::expect_rank_of(where, "classifier", classifier, 2, "shape (C, D)");
    if (classifier.extent(1) != images.extent(1))
        throw shape_error(where, "classifier", "shape (C, " + std::to_string(images.extent(1)) + ")",
                          "shape " + classifier.extents().to_string());
    const index_t n = images.extent(0), c = classifier.extent(0), d = images.extent(1);
    if (logits.extents() != extents{n, c})
        throw shape_error(where, "logits", "shape " + extents{n, c}.to_string(),
                          "shape " + logits.extents().to_string());
    detail::expect_host(where, "images", images);
    detail::expect_host(where, "classifier", classifier);
    detail::expect_host(where, "logits", logits);
    for (index_t i = 0; i < n; ++i) {
        const tensor_ref<const T> x = images.select(0, i);
        const double factor = zero_shot_logit_factor * detail::inverse_norm(x);
        for (index_t k = 0; k < c; ++k) {
            double dot = 0.0;
            for (index_t j = 0; j < d; ++j)
                dot += double(x(j)) * double(classifier(k, j));
            logits(i, k) = T(factor * dot);
        }
    }
}

/// Convenience: the (N, C) logits as a new tensor.
template <compute_type T>
tensor<T> zero_shot_logits(tensor_ref<const T> images, tensor_ref<const T> classifier) {
    detail::expect_rank_of("zero_shot_logits", "images", images, 2, "shape (N, D)");
    detail::expect_rank_of("zero_shot_logits", "classifier", classifier, 2, "shape (C, D)");
    tensor<T> out({images.extent(0), classifier.extent(0)});
    zero_shot_logits(images, classifier, out.ref());
    return out;
}

/// Number of samples whose target is among the k highest logits (stable tie rule: rank of
/// the target < k), as open_clip's `accuracy()` counts.
///   logits   (N, C), no NaN;  targets (N) class indices in [0, C);  1 <= k <= C
/// Throws `shape_error` (ranks, target count) and `value_error` (k, a target out of range,
/// NaN, device view), naming "top_k_correct".
template <class T>
index_t top_k_correct(tensor_ref<const T> logits, std::span<const index_t> targets, index_t k) {
    constexpr std::string_view where = "top_k_correct";
    detail::expect_rank_of(where, "logits", logits, 2, "shape (N, C)");
    detail::expect_host(where, "logits", logits);
    const index_t n = logits.extent(0), c = logits.extent(1);
    if (index_t(targets.size()) != n)
        throw shape_error(where, "targets", "one class index per row (" + std::to_string(n) + ")",
                          std::to_string(targets.size()) + " entries");
    if (k < 1 || k > c) {
        std::string msg = "k must be in [1, C = " + std::to_string(c);
        msg += "], got " + std::to_string(k);
        throw value_error(where, msg);
    }
    detail::expect_no_nan(where, "logits", logits);
    index_t correct = 0;
    for (index_t i = 0; i < n; ++i) {
        const index_t t = targets[static_cast<std::size_t>(i)];
        if (t < 0 || t >= c) {
            std::string msg = "targets[" + std::to_string(i);
            msg += "] = " + std::to_string(t);
            msg += " is not a class index in [0, " + std::to_string(c);
            msg += ")";
            throw value_error(where, msg);
        }
        correct += stable_rank(logits.select(0, i), t) < k ? 1 : 0;
    }
    return correct;
}

/// top_k_correct / N: the top-k accuracy open_clip reports (k = 1 and 5). Throws as
/// `top_k_correct`, and `shape_error` for N = 0.
template <class T>
double top_k_accuracy(tensor_ref<const T> logits, std::span<const index_t> targets, index_t k) {
    detail::expect_rank_of("top_k_accuracy", "logits", logits, 2, "shape (N, C)");
    if (logits.extent(0) == 0)
        throw shape_error("top_k_accuracy", "logits", "at least one row",
                          "shape " + logits.extents().to_string());
    return double(top_k_correct(logits, targets, k)) / double(logits.extent(0));
}

}  // namespace mmfuse::inline v0::contrastive
