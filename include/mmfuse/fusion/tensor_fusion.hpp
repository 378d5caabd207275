#pragma once
/// \file
/// The tensor fusion family (fusion.md sections 2.5, 2.6): `tensor_fusion` (TFN, the
/// flattened outer product of the modality vectors each extended by a constant 1) and
/// `low_rank_fusion` (LMF, the same multilinear map followed by a linear layer whose weight
/// tensor is kept in CP form, never materialising the outer product).
///
/// Both extend every modality vector as z̃_m = [1; z_m] with the 1 PREPENDED (index 0), as
/// the reference code does (the TFN paper appends it; the choice only permutes the following
/// linear layer's weight). Missing modality rule shared by both: an absent modality's block is
/// [1; 0] for that sample, so the other modalities' unimodal and cross terms survive and only
/// the terms involving the absent one vanish; its input gradient is zero there.

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

namespace detail {

/// z̃ = [1; x] (B, d + 1), x zeroed in the samples where modality `m` is absent.
template <compute_type T>
tensor_ref<const T> prepend_one(const nn::step_context<T>& cx, std::string_view path,
                                const presence& p, std::size_t m, tensor_ref<const T> x) {
    const index_t batch = x.extent(0);
    const tensor_ref<T> one = cx.allocate(extents{batch, 1});
    fill_constant(cx.op(path), one, 1.0);
    const tensor_ref<const T> xm = zero_absent(cx, path, p, m, x);
    const tensor_ref<T> z = cx.allocate(extents{batch, x.extent(1) + 1});
    ops::concat<T>(cx.op(path), 1, {tensor_ref<const T>(one), xm}, z);
    return z;
}

/// The input gradient from dz̃ (B, d + 1): dx = dz̃[:, 1:], zero where modality `m` is
/// absent; contiguous, from the workspace.
template <compute_type T>
tensor_ref<const T> drop_one_grad(const nn::step_context<T>& cx, std::string_view path,
                                  const presence& p, std::size_t m, tensor_ref<const T> dz) {
    const tensor_ref<const T> g = dz.narrow(1, 1, dz.extent(1) - 1);
    if (p.data() != nullptr) return zero_absent(cx, path, p, m, g);
    const tensor_ref<T> dx = cx.allocate(g.extents());
    ops::copy(cx.op(path), g, dx);
    return dx;
}

}  // namespace detail

/// Tensor Fusion Network fusion (Zadeh, Chen, Poria, Cambria, Morency, "Tensor Fusion Network
/// for Multimodal Sentiment Analysis", EMNLP 2017; Justin1904/TensorFusionNetworks : model.py,
/// pliang279/MultiBench : fusions/common_fusions.py TensorFusion).
///   x_m (B, d_m) -> y (B, Π_m (d_m + 1)), the row-major flattening of z̃_0 ⊗ ... ⊗ z̃_{M-1}
///   with z̃_m = [1; x_m] and modality 0 the most significant index:
///     y[b, (i_0 (d_1+1) + i_1)(d_2+1) + i_2 ...] = z̃_0[b, i_0] z̃_1[b, i_1] z̃_2[b, i_2] ...
///   Entry 0 is the constant 1, entries with one non-zero index the unimodal terms, two the
///   bimodal terms, and so on. M = 1 returns the input unchanged (no 1 prepended, as
///   MultiBench), zeroed where the modality is absent.
///   Missing modality: its block is [1; 0] in that sample (terms involving it vanish, the
///   others survive); its input gradient is zero there.
///   No parameters. Built from ops: the 1 by a constant fill and a concat, the outer products
///   by batched matmuls (B, a, 1) x (B, 1, d + 1), one modality at a time; the backward runs
///   the same chain in reverse with two matmuls per step.
/// The width is d_m as given (checked when the widths were passed to the constructor).
template <std::size_t M, compute_type T = float>
class tensor_fusion {
    static_assert(M >= 1, "mmfuse::fusion::tensor_fusion: at least one modality");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// Widths taken from the inputs.
    tensor_fusion() { dims_.fill(-1); }
    /// Widths d_m checked on every forward; throws `value_error` for a negative width.
    explicit tensor_fusion(const std::array<index_t, M>& dims) : dims_(dims) {
        for (index_t d : dims_)
            if (d < 0) throw value_error("fusion::tensor_fusion", "widths must be >= 0");
    }

    /// Output width for input widths `dims`: Π (d_m + 1), or d_0 when M = 1.
    static index_t output_width(const std::array<index_t, M>& dims) noexcept {
        if constexpr (M == 1) return dims[0];
        index_t w = 1;
        for (index_t d : dims)
            w *= d + 1;
        return w;
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
            detail::expect_rows(path_, {"tensor_fusion input", int(m)}, xs[m], batch, dims_[m]);
        std::array<tensor_ref<const T>, M> z{}, acc{};
        tensor_ref<const T> y;
        if constexpr (M == 1) {
            y = detail::zero_absent(cx, path_, p, 0, xs[0]);
        } else {
            const ops::op_context op = cx.op(path_);
            for (std::size_t m = 0; m < M; ++m)
                z[m] = detail::prepend_one(cx, path_, p, m, xs[m]);
            acc[0] = z[0];
            for (std::size_t m = 1; m < M; ++m) {
                const index_t a = acc[m - 1].extent(1), d = z[m].extent(1);
                const tensor_ref<T> out = cx.allocate(extents{batch, a * d});
                ops::matmul<T>(op, acc[m - 1].reshape({batch, a, 1}), z[m].reshape({batch, 1, d}),
                               out.reshape({batch, a, d}));
                acc[m] = out;
            }
            y = acc[M - 1];
        }
        if (cx.training) {
            z_ = z;
            acc_ = acc;
            p_ = p;
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "tensor_fusion", saved_, y_extents_, dy);
        views<T, M> dxs{};
        if constexpr (M == 1) {
            dxs[0] = detail::zero_absent(cx, path_, p_, 0, dy);
        } else {
            const ops::op_context op = cx.op(path_);
            const index_t batch = dy.extent(0);
            tensor_ref<const T> g = nn::contiguous(cx, path_, dy);
            for (std::size_t m = M - 1; m >= 1; --m) {
                // y_m = acc_{m-1} ⊗ z̃_m:  dz̃_m = acc_{m-1}^T dY,  d acc_{m-1} = dY z̃_m.
                const index_t a = acc_[m - 1].extent(1), d = z_[m].extent(1);
                const tensor_ref<const T> g3 = g.reshape({batch, a, d});
                const tensor_ref<T> dz = cx.allocate(extents{batch, 1, d});
                ops::matmul<T>(op, acc_[m - 1].reshape({batch, 1, a}), g3, dz);
                const tensor_ref<T> da = cx.allocate(extents{batch, a, 1});
                ops::matmul<T>(op, g3, z_[m].reshape({batch, d, 1}), da);
                dxs[m] = detail::drop_one_grad(cx, path_, p_, m,
                                               tensor_ref<const T>(dz).reshape({batch, d}));
                g = tensor_ref<const T>(da).reshape({batch, a});
            }
            dxs[0] = detail::drop_one_grad(cx, path_, p_, 0, g);
        }
        return dxs;
    }

    const std::string& path() const noexcept { return path_; }

private:
    std::array<index_t, M> dims_{};
    std::array<tensor_ref<const T>, M> z_{};    // z̃_m (B, d_m + 1)
    std::array<tensor_ref<const T>, M> acc_{};  // z̃_0 ⊗ ... ⊗ z̃_m flattened (B, Π_{j<=m})
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

/// Low-rank Multimodal Fusion (Liu, Shen, Lakshminarasimhan, Liang, Zadeh, Morency,
/// "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018;
/// Justin1904/Low-rank-Multimodal-Fusion : model.py, pliang279/MultiBench :
/// fusions/common_fusions.py LowRankTensorFusion).
///   x_m (B, d_m) -> y (B, o):
///     z̃_m = [1; x_m],  f_m[k] = z̃_m F_m[k] (B, o),  y = Σ_k w_k (f_0[k] ⊙ ... ⊙ f_{M-1}[k]) + b
///   i.e. TFN followed by a linear layer whose (d_0+1) x ... x (d_{M-1}+1) x o weight is the
///   CP sum Σ_k w_k F_0[k] ∘ ... ∘ F_{M-1}[k] (never materialised).
///   Parameters (state_dict names): factor0 ... factor{M-1} (r, d_m + 1, o),
///   fusion_weights (1, r), fusion_bias (1, o).
///   Init (as the reference): xavier_normal on every factor (fan_in (d_m+1)·o, fan_out r·o) and
///   on fusion_weights (fan_in r, fan_out 1); fusion_bias = 0.
///   Missing modality: its block is [1; 0] in that sample, so f_m[k] = F_m[k][0, :] (the
///   factor's constant row); its input gradient is zero there.
/// Deviation: MultiBench keeps the factors in a Python list (unregistered, fusion.md section
/// 8); here they are ordinary parameters named factor<m>.
template <std::size_t M, compute_type T = float>
class low_rank_fusion {
    static_assert(M >= 1, "mmfuse::fusion::low_rank_fusion: at least one modality");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// Input widths d_m >= 0, output width o >= 1, rank r >= 1 (else `value_error`).
    low_rank_fusion(const std::array<index_t, M>& dims, index_t out, index_t rank)
        : dims_(dims), out_(out), rank_(rank) {
        if (out < 1 || rank < 1)
            throw value_error("fusion::low_rank_fusion", "output width and rank must be >= 1");
        for (std::size_t m = 0; m < M; ++m) {
            if (dims[m] < 0)
                throw value_error("fusion::low_rank_fusion", "input widths must be >= 0");
            factors_[m].shape = extents{rank, dims[m] + 1, out};
            names_[m] = "factor" + std::to_string(m);
        }
        weights_.shape = extents{1, rank};
        bias_.shape = extents{1, out};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t m = 0; m < M; ++m)
            v.parameter(names_[m], factors_[m]);
        v.parameter("fusion_weights", weights_);
        v.parameter("fusion_bias", bias_);
    }

    void reset_parameters(philox_generator& g) {
        for (auto& f : factors_)
            init::xavier_normal{}(g, f.value);
        init::xavier_normal{}(g, weights_.value);
        init::zeros{}(bias_.value);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        for (std::size_t m = 0; m < M; ++m)
            detail::expect_rows(path_, {"low_rank_fusion input", int(m)}, xs[m], batch, dims_[m]);
        const ops::op_context op = cx.op(path_);
        const extents rbo{rank_, batch, out_};
        std::array<tensor_ref<const T>, M> z{}, f{}, pre{};
        tensor_ref<const T> prod;
        for (std::size_t m = 0; m < M; ++m) {
            z[m] = detail::prepend_one(cx, path_, p, m, xs[m]);
            const tensor_ref<T> fm = cx.allocate(rbo);  // (B, a) shared x (r, a, o) -> (r, B, o)
            ops::matmul<T>(op, z[m], tensor_ref<const T>(factors_[m].value), fm);
            f[m] = fm;
            pre[m] = prod;  // f_0 ⊙ ... ⊙ f_{m-1} (empty for m = 0)
            if (m == 0) {
                prod = fm;
            } else {
                const tensor_ref<T> next = cx.allocate(rbo);
                ops::binary<T>(op, ops::binary_kind::mul, prod, f[m], next);
                prod = next;
            }
        }
        const tensor_ref<T> y = cx.allocate(extents{batch, out_});
        ops::matmul<T>(op, tensor_ref<const T>(weights_.value), prod.reshape({rank_, batch * out_}),
                       y.reshape({1, batch * out_}));
        ops::bias_add<T>(op, tensor_ref<const T>(y),
                         tensor_ref<const T>(bias_.value).reshape({out_}), y);
        if (cx.training) {
            z_ = z;
            f_ = f;
            pre_ = pre;
            prod_ = prod;
            p_ = p;
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "low_rank_fusion", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        const index_t batch = dy.extent(0);
        const extents rbo{rank_, batch, out_};
        const tensor_ref<const T> g = nn::contiguous(cx, path_, dy);
        const tensor_ref<const T> g1 = g.reshape({1, batch * out_});
        ops::reduce<T>(op, ops::reduce_kind::sum, 0, g, bias_.grad, true);
        ops::matmul<T>(op, g1, prod_.reshape({rank_, batch * out_}), weights_.grad,
                       {.transpose_b = true, .beta = 1.0});
        // s = dP ⊙ f_{m+1} ⊙ ... ⊙ f_{M-1}, so df_m = s ⊙ pre_m (O(M) products, no division).
        const tensor_ref<T> dprod = cx.allocate(rbo);
        ops::matmul<T>(op, tensor_ref<const T>(weights_.value), g1,
                       dprod.reshape({rank_, batch * out_}), {.transpose_a = true});
        tensor_ref<const T> s = dprod;
        views<T, M> dxs{};
        for (std::size_t i = M; i-- > 0;) {
            tensor_ref<const T> df = s;
            if (i > 0) {
                const tensor_ref<T> t = cx.allocate(rbo);
                ops::binary<T>(op, ops::binary_kind::mul, s, pre_[i], t);
                df = t;
            }
            const index_t a = z_[i].extent(1);
            ops::matmul<T>(op, z_[i], df, factors_[i].grad, {.transpose_a = true, .beta = 1.0});
            const tensor_ref<T> dzr = cx.allocate(extents{rank_, batch, a});
            ops::matmul<T>(op, df, tensor_ref<const T>(factors_[i].value), dzr,
                           {.transpose_b = true});
            const tensor_ref<T> dz = cx.allocate(extents{batch, a});
            ops::reduce<T>(op, ops::reduce_kind::sum, 0, dzr, dz);
            dxs[i] = detail::drop_one_grad(cx, path_, p_, i, tensor_ref<const T>(dz));
            if (i > 0) {
                const tensor_ref<T> t = cx.allocate(rbo);
                ops::binary<T>(op, ops::binary_kind::mul, s, f_[i], t);
                s = t;
            }
        }
        return dxs;
    }

    nn::parameter<T>& factor(std::size_t m) noexcept { return factors_[m]; }
    nn::parameter<T>& fusion_weights() noexcept { return weights_; }
    nn::parameter<T>& fusion_bias() noexcept { return bias_; }
    const std::string& path() const noexcept { return path_; }

private:
    std::array<index_t, M> dims_{};
    index_t out_;
    index_t rank_;
    std::array<nn::parameter<T>, M> factors_{};
    std::array<std::string, M> names_{};
    nn::parameter<T> weights_;
    nn::parameter<T> bias_;
    std::array<tensor_ref<const T>, M> z_{}, f_{}, pre_{};
    tensor_ref<const T> prod_{};
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
