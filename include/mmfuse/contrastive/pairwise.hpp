#pragma once
/// \file
/// `contrastive::pairwise_logits`: the engine every contrastive loss is written with.
/// It forms the similarity matrix S = A B^T of two embedding batches, runs one or more
/// `ops::logit_loss` passes over the rows of S (query = a row of A) or its columns
/// (query = a row of B), accumulating one gradient dS, and turns dS into the gradients of
/// both embedding matrices and of the scale and bias (reference contrastive.md section 0):
///
///     dA = dS B,   dB = dS^T A,   dl/ds = sum_r row_stats[r][0],   dl/db = sum_r row_stats[r][1]
///
/// (dS already carries the scale s, see `ops::logit_loss_desc`). Scalars (the loss, dl/ds,
/// dl/db) are summed in double on the host, so the engine needs a host backend.

#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/softmax.hpp"

namespace mmfuse::inline v0::contrastive {

/// Which side of S a `logit_loss` pass treats as its queries.
enum class direction : unsigned char {
    rows,     ///< each row of A against every row of B (image-to-text on S)
    columns,  ///< each row of B against every row of A (text-to-image on S^T)
};

/// Gradients of a contrastive objective (views into the step's workspace).
template <compute_type T>
struct pair_gradients {
    tensor_ref<const T> da;  ///< dl/dA, A's shape
    tensor_ref<const T> db;  ///< dl/dB, B's shape
    double d_scale = 0.0;    ///< dl/ds (s = e^theta; `logit_scale::add_gradient` takes it)
    double d_bias = 0.0;     ///< dl/db (the logit bias)
};

/// Throws `shape_error` naming `path` unless a (Ra, D) and b (Rb, D) are rank-2 batches of
/// the same width.
template <class T>
void expect_embedding_pair(std::string_view path, std::string_view what,
                           const tensor_ref<T>& a, const tensor_ref<T>& b) {
    if (a.rank() != 2 || b.rank() != 2 || a.extent(1) != b.extent(1))
        throw shape_error(path, what, "two (rows, D) batches of one width D",
                          "shapes " + a.extents().to_string() + " and " + b.extents().to_string());
}

namespace detail {
/// The cold path of `expect_matched_batch`: formats and throws its `shape_error`.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_unmatched_batch(
    std::string_view path, std::string_view head, const extents& a, const extents& b) {
    std::string what(head);
    what += " embeddings";
    std::string actual = "shapes ";
    actual += a.to_string();
    actual += " and ";
    actual += b.to_string();
    throw shape_error(path, what, "two (B, D) batches of the same shape, with at least one row",
                      std::move(actual));
}
}  // namespace detail

/// Throws `shape_error` naming `path` unless a (B, D) and b (B, D) are a batch of B >= 1
/// matched pairs of one width (`head` names the objective in the message: "<head>
/// embeddings"). Allocates nothing unless it throws (a per-step check).
template <class T>
void expect_matched_batch(std::string_view path, std::string_view head, const tensor_ref<T>& a,
                          const tensor_ref<T>& b) {
    if (a.rank() != 2 || b.rank() != 2 || a.extents() != b.extents() || a.extent(0) == 0)
        detail::throw_unmatched_batch(path, head, a.extents(), b.extents());
}

/// The similarity matrix of one step and the passes run over it. Lives for one step:
/// `similarities`, then any number of `pass` calls, then `backward`.
template <compute_type T>
class pairwise_logits {
public:
    /// S = a b^T, (Ra, Rb), in the workspace. a (Ra, D), b (Rb, D). Resets the passes.
    tensor_ref<const T> similarities(nn::step_context<T>& cx, std::string_view path,
                                     tensor_ref<const T> a, tensor_ref<const T> b) {
        expect_embedding_pair(path, "contrastive embeddings", a, b);
        a_ = nn::contiguous(cx, path, a);
        b_ = nn::contiguous(cx, path, b);
        const tensor_ref<T> s = cx.allocate({a.extent(0), b.extent(0)});
        ops::matmul(cx.op(path), a_, b_, s, {.transpose_b = true});
        s_ = s;
        ds_ = {};
        d_scale_ = d_bias_ = 0.0;
        return s_;
    }

    /// One `logit_loss` pass with descriptor `d` (its `gradient` and `accumulate` fields are
    /// set here) over the rows or the columns of S; `targets` has the pass's (queries, keys)
    /// shape when `d.targets` is dense, else `{}`. Returns d.grad_scale * sum_r l_r, the
    /// pass's contribution to the loss. With `gradient`, its gradient is added to dS.
    double pass(nn::step_context<T>& cx, std::string_view path, ops::logit_loss_desc d,
                direction dir, tensor_ref<const T> targets = {}, bool gradient = true) {
        const tensor_ref<const T> x = dir == direction::rows ? s_ : s_.transpose(0, 1);
        const index_t queries = x.extent(0);
        d.gradient = gradient;
        d.accumulate = ds_.data() != nullptr;
        const tensor_ref<T> loss = cx.allocate({queries});
        tensor_ref<T> dx{}, stats{};
        if (gradient) {
            if (ds_.data() == nullptr) ds_ = cx.allocate(s_.extents());
            dx = dir == direction::rows ? ds_ : ds_.transpose(0, 1);
            stats = cx.allocate({queries, 2});
        }
        ops::logit_loss<T>(cx.op(path), d, x, targets, loss, dx, stats);
        double total = 0.0;
        for (index_t r = 0; r < queries; ++r)
            total += double(loss.data()[r]);
        if (gradient)
            for (index_t r = 0; r < queries; ++r) {
                d_scale_ += double(stats.data()[2 * r]);
                d_bias_ += double(stats.data()[2 * r + 1]);
            }
        return d.grad_scale * total;
    }

    /// Dense targets of a `pass` in direction `dir` from a positives mask over S (mask (Ra, Rb)
    /// bool, any strides; `mask(i, j)`: row i of A and row j of B match), in the workspace,
    /// with the pass's (queries, keys) shape:
    ///   per_query_mass = false:  y = Pi exactly (0 or 1; SigLIP's labels),
    ///   per_query_mass = true:   y = Pi / rowsum(Pi) (each query's positives share mass 1,
    ///                            a query without a positive gets an all-zero row; SupCon).
    /// Both are `ops::softmax` of 0 * S restricted to the mask: over each query's row, or
    /// over a unit trailing axis (each element alone: e^0 / e^0 = 1 where kept, 0 where not).
    tensor_ref<const T> mask_targets(nn::step_context<T>& cx, std::string_view path,
                                     tensor_ref<const bool> mask, direction dir,
                                     bool per_query_mass) const {
        const bool rows = dir == direction::rows;
        const tensor_ref<const T> x = rows ? s_ : s_.transpose(0, 1);
        const tensor_ref<const bool> m = rows ? mask : mask.transpose(0, 1);
        const tensor_ref<T> y = cx.allocate(x.extents());
        if (per_query_mass)
            ops::softmax<T>(cx.op(path), x, m, y, 0.0);
        else
            ops::softmax<T>(cx.op(path), x.unsqueeze(2), m.unsqueeze(2), y.unsqueeze(2), 0.0);
        return y;
    }

    /// dA = dS b, dB = dS^T a and the scalar gradients of every pass since `similarities`.
    /// Throws `shape_error` naming `path` if no pass asked for a gradient.
    pair_gradients<T> backward(nn::step_context<T>& cx, std::string_view path) const {
        if (ds_.data() == nullptr)
            throw shape_error(path, "contrastive backward", "a forward pass with gradient first",
                              "none");
        const tensor_ref<T> da = cx.allocate(a_.extents());
        const tensor_ref<T> db = cx.allocate(b_.extents());
        const ops::op_context op = cx.op(path);
        ops::matmul(op, tensor_ref<const T>(ds_), b_, da);
        ops::matmul(op, tensor_ref<const T>(ds_), a_, db, {.transpose_a = true});
        return {da, db, d_scale_, d_bias_};
    }

    /// S of the current step.
    tensor_ref<const T> s() const noexcept { return s_; }

private:
    tensor_ref<const T> a_{}, b_{}, s_{};
    tensor_ref<T> ds_{};
    double d_scale_ = 0.0, d_bias_ = 0.0;
};

}  // namespace mmfuse::inline v0::contrastive
