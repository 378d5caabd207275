#pragma once
/// \file
/// Building blocks for user-defined hybrid architectures (docs/fusion.md, "Templates"):
/// `mean_tokens` pools a token stream, `cross_exchange` lets two token streams attend to each
/// other through any pair of cross-attention blocks (the bidirectional cross-attention of
/// ViLBERT-style co-attention and of two-stream MulT, with the block left to the user).

#include <cstddef>
#include <string>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// Mean over the token axis: x (B, L, D) -> y (B, D) (`x.mean(dim=1)`), the usual pooling
/// between a token-level interaction and a vector-level fuser. Padding tokens are averaged
/// too (mask them upstream). No parameters.
template <compute_type T = float>
class mean_tokens {
public:
    using value_type = T;

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}

    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        if (x.rank() != 3 || x.extent(1) < 1)
            throw shape_error(path_, "mean_tokens input", "shape (B, L >= 1, D)",
                              "shape " + x.extents().to_string());
        const tensor_ref<T> y = cx.allocate(extents{x.extent(0), x.extent(2)});
        ops::reduce<T>(cx.op(path_), ops::reduce_kind::mean, 1, x, y);
        if (cx.training) x_extents_ = x.extents();
        return y;
    }
    /// dy (B, D) -> dx (B, L, D) = dy / L on every token.
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        if (x_extents_.rank() != 3)
            throw shape_error(path_, "mean_tokens backward", "a training-mode forward first",
                              "no saved forward");
        const extents ye{x_extents_[0], x_extents_[2]};
        if (dy.extents() != ye)
            throw shape_error(path_, "mean_tokens output gradient", "shape " + ye.to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(x_extents_);
        ops::combine<T>(cx.op(path_), dx, {dy.unsqueeze(1).expand(x_extents_)},
                        {1.0 / double(x_extents_[1])});
        return dx;
    }
    const std::string& path() const noexcept { return path_; }

private:
    extents x_extents_{};
    std::string path_;
};

/// Two token streams attend to each other, both from the pre-update inputs (a simultaneous
/// update, as ViLBERT's co-attention):  y_0 = A(x_0, context x_1),  y_1 = B(x_1, context x_0).
///   A, B: any blocks with `forward(cx, x, context, nn::attention_masks<T>)` and
///   `backward(cx, dy) -> {dx, dcontext}` (e.g. `nn::cross_attention_block`), children "0"
///   and "1". x_m (B, L_m, D_m) with A's context width D_1 and B's D_0.
///   Missing modality: when stream m is absent for a sample, its tokens are masked keys for
///   the other stream (whose attention then adds only its output bias, see
///   nn::multi_head_attention), and its own output is its block's output on its input.
///   The key-padding masks are built on the host in the workspace (host backends).
template <class A, class B>
class cross_exchange {
public:
    using value_type = typename A::value_type;
    using T = value_type;
    static constexpr std::size_t arity = 2;

    cross_exchange() = default;
    cross_exchange(A a, B b) : a_(std::move(a)), b_(std::move(b)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("0", a_);
        v.child("1", b_);
    }
    void reset_parameters(philox_generator& g) {
        a_.reset_parameters(g);
        b_.reset_parameters(g);
    }

    views<T, 2> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        for (std::size_t m = 0; m < 2; ++m)
            if (xs[m].rank() != 3)
                throw shape_error(path_, "cross_exchange stream " + std::to_string(m),
                                  "shape (B, L, D)", "shape " + xs[m].extents().to_string());
        check_presence(path_, p, xs[0].extent(0), 2);
        nn::attention_masks<T> ma, mb;
        ma.key_padding = detail::key_keep(cx, {}, p, 1, xs[1].extent(0), xs[1].extent(1));
        mb.key_padding = detail::key_keep(cx, {}, p, 0, xs[0].extent(0), xs[0].extent(1));
        return {a_.forward(cx, xs[0], xs[1], ma), b_.forward(cx, xs[1], xs[0], mb)};
    }

    views<T, 2> backward(nn::step_context<T>& cx, const views<T, 2>& dys) {
        const auto ga = a_.backward(cx, dys[0]);
        const auto gb = b_.backward(cx, dys[1]);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> dx0 = cx.allocate(ga.dx.extents());
        const tensor_ref<T> dx1 = cx.allocate(gb.dx.extents());
        ops::add<T>(op, ga.dx, gb.dcontext, dx0);
        ops::add<T>(op, gb.dx, ga.dcontext, dx1);
        return {dx0, dx1};
    }

    A& first() noexcept { return a_; }
    B& second() noexcept { return b_; }
    const std::string& path() const noexcept { return path_; }

private:
    A a_;
    B b_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
