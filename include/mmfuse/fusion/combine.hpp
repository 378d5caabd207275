#pragma once
/// \file
/// Parameter-free fusers: `concat` (MultiBench Concat / ConcatEarly, MMF ConcatBERT) and
/// `mean` (decision-level late fusion: the average of per-modality logits, MMF late_fusion;
/// fusion.md sections 2.1, 2.2, 3.1).

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"

namespace mmfuse::inline v0::fusion {

/// Feature concatenation: y = [x_0; ...; x_{M-1}] on the last axis.
///   x_m (B, ..., d_m), equal on every axis but the last -> y (B, ..., sum d_m). With (B, d_m)
///   inputs this is MultiBench's Concat ("simple late fusion"); with aligned token
///   sequences (B, T, d_m) it is ConcatEarly (use it in `early<>`).
///   Missing modality: its block is zero for that sample (MultiBench's practice of feeding
///   zeros, applied by the fuser from the presence mask); its input gradient is zero there.
///   No parameters. At most `ops::max_parts` modalities.
template <std::size_t M, compute_type T = float>
class concat {
    static_assert(M >= 1 && M <= ops::max_parts, "mmfuse::fusion::concat: 1 to 16 modalities");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        views<T, M> parts{};
        index_t total = 0;
        for (std::size_t m = 0; m < M; ++m) {
            if (xs[m].data() == nullptr && xs[m].rank() == 0)
                throw shape_error(path_, "concat input " + std::to_string(m),
                                  "a tensor (a missing modality is marked in the presence mask)",
                                  "an empty view");
            if (xs[m].rank() != xs[0].rank() ||
                xs[m].extents().with_axis(-1, 1) != xs[0].extents().with_axis(-1, 1))
                throw shape_error(path_, "concat input " + std::to_string(m),
                                  "shape " +
                                      xs[0].extents().with_axis(-1, xs[m].extent(-1)).to_string() +
                                      " (input 0's but the last axis)",
                                  "shape " + xs[m].extents().to_string());
            parts[m] = detail::zero_absent(cx, path_, p, m, xs[m]);
            widths_[m] = xs[m].extent(-1);
            total += widths_[m];
        }
        const tensor_ref<T> y = cx.allocate(xs[0].extents().with_axis(-1, total));
        ops::concat<T>(cx.op(path_), -1, std::span<const tensor_ref<const T>>(parts), y);
        if (cx.training) {
            p_ = p;
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "concat", saved_, y_extents_, dy);
        views<T, M> dxs{};
        index_t at = 0;
        for (std::size_t m = 0; m < M; ++m) {
            dxs[m] = detail::zero_absent(cx, path_, p_, m, dy.narrow(-1, at, widths_[m]));
            at += widths_[m];
        }
        return dxs;
    }

    const std::string& path() const noexcept { return path_; }

private:
    std::array<index_t, M> widths_{};
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

/// Weighted mean over the present modalities: y_b = sum_m c_bm x_m,b with
///   c_bm = p_bm w_m / sum_k p_bk w_k  (0 for a sample with no modality present).
///   x_m (B, ...) all of one shape -> y (B, ...). Weights w_m > 0 are fixed (default: all
///   equal, i.e. MMF late_fusion's (C_t(t) + C_v(v)) / 2 when both are present).
///   Missing modality: left out and the others renormalised, so a sample with only one
///   modality gets that modality's output. No parameters.
/// The coefficient table c (B, M) is computed on the host from the presence mask (host
/// backends).
template <std::size_t M, compute_type T = float>
class mean {
    static_assert(M >= 1, "mmfuse::fusion::mean: at least one modality");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// Equal weights.
    mean() { weights_.fill(1.0); }
    /// Fixed positive weights, one per modality; throws `value_error` otherwise.
    explicit mean(const std::array<double, M>& weights) : weights_(weights) {
        for (double w : weights_)
            if (!(w > 0.0))
                throw value_error("fusion::mean", "weights must be positive and finite");
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        for (std::size_t m = 0; m < M; ++m)
            if (xs[m].extents() != xs[0].extents())
                throw shape_error(path_, "mean input " + std::to_string(m),
                                  "shape " + xs[0].extents().to_string() + " (input 0's)",
                                  "shape " + xs[m].extents().to_string());
        coeff_ = coefficients(cx, p, batch);
        const tensor_ref<T> y = cx.allocate(xs[0].extents());
        const ops::op_context op = cx.op(path_);
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<const T> c = column(m, xs[0].rank());
            if (m == 0) {
                ops::binary<T>(op, ops::binary_kind::mul, xs[0], c, y);
            } else {
                const tensor_ref<T> t = cx.allocate(xs[0].extents());
                ops::binary<T>(op, ops::binary_kind::mul, xs[m], c, t);
                ops::add<T>(op, y, t, y);
            }
        }
        if (cx.training) {
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "mean", saved_, y_extents_, dy);
        views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<T> d = cx.allocate(dy.extents());
            ops::binary<T>(cx.op(path_), ops::binary_kind::mul, dy, column(m, dy.rank()), d);
            dxs[m] = d;
        }
        return dxs;
    }

    const std::array<double, M>& weights() const noexcept { return weights_; }
    const std::string& path() const noexcept { return path_; }

private:
    /// c (B, M) in the workspace (host memory).
    tensor_ref<const T> coefficients(const nn::step_context<T>& cx, const presence& p,
                                     index_t batch) const {
        const tensor_ref<T> c = cx.allocate(extents{batch, index_t(M)});
        for (index_t b = 0; b < batch; ++b) {
            double total = 0.0;
            for (std::size_t m = 0; m < M; ++m)
                total += present(p, b, m) ? weights_[m] : 0.0;
            for (std::size_t m = 0; m < M; ++m)
                c.data()[b * index_t(M) + index_t(m)] =
                    present(p, b, m) && total > 0.0 ? T(weights_[m] / total) : T(0);
        }
        return c;
    }
    static bool present(const presence& p, index_t b, std::size_t m) noexcept {
        return p.data() == nullptr || p.data()[b * p.stride(0) + index_t(m) * p.stride(1)];
    }
    /// Column m of the coefficients as (B, 1, ..., 1) of rank `rank`.
    tensor_ref<const T> column(std::size_t m, int rank) const {
        std::array<index_t, max_rank> e{};
        e.fill(1);
        e[0] = coeff_.extent(0);
        std::array<index_t, max_rank> s{};
        s[0] = index_t(M);
        const std::size_t r = std::size_t(rank < 1 ? 1 : rank);
        return tensor_ref<const T>(coeff_.data() + m,
                                   extents::from(std::span<const index_t>(e.data(), r)),
                                   std::span<const index_t>(s.data(), r));
    }

    std::array<double, M> weights_{};
    tensor_ref<const T> coeff_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
