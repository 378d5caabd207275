#pragma once
/// \file
/// `film`: Feature-wise Linear Modulation, Perez, Strub, de Vries, Dumoulin and Courville,
/// "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018 (fusion.md section
/// 4.7; reference ethanjperez/film : vr/models/filmed_net.py (FiLM) and vr/models/film_gen.py
/// (FiLMGen's linear decoder, gamma_option linear, gamma_baseline 1)).

#include <array>
#include <cstddef>
#include <span>
#include <string>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// FiLM as a fuser of arity 2: features x modulated per channel by a conditioning vector c.
///
///   x (B, C) or (B, ..., C) channels LAST (the reference's maps are NCHW: move the channel
///   axis last, e.g. (B, H*W, C)), c (B, Dc)  ->  y like x.
///   [dgamma | beta] = c W^T + b        W = proj.weight (2C, Dc), b = proj.bias (2C)
///   gamma = 1 + dgamma                 (gamma_baseline 1: starts near the identity)
///   y_{b,...,k} = gamma_{b,k} x_{b,...,k} + beta_{b,k}   (broadcast over the middle axes)
/// The generator is one linear layer (FiLMGen's "linear" decoder for one module); put the
/// question encoder (GRU, transformer, ...) in front of it as c's encoder.
/// Init: PyTorch's `nn.Linear` default (the reference uses kaiming_uniform on weights).
/// Missing modality (presence columns: 0 = x, 1 = c):
///   c absent  -> identity modulation for that sample (gamma 1, beta 0): y = x; no gradient
///                reaches c or the generator from that sample.
///   x absent  -> x is taken as zeros (the concat rule), so y = beta(c) carries the
///                conditioning alone; x's gradient is zero there. Both absent: y = 0.
template <compute_type T = float>
class film {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    /// `channels` = C, `cond_features` = Dc; throws `value_error` unless both are >= 1.
    film(index_t channels, index_t cond_features)
        : c_(checked(channels, cond_features)), dc_(cond_features), proj_(dc_, 2 * c_, true) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("proj", proj_);
    }
    void reset_parameters(philox_generator& g) { proj_.reset_parameters(g); }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, 2);
        check_inputs(xs, batch);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> x = detail::zero_absent(cx, path_, p, 0, xs[0]);
        const tensor_ref<const T> gb =
            detail::zero_absent(cx, path_, p, 1, proj_.forward(cx, xs[1]));
        const tensor_ref<T> gamma = cx.allocate(extents{batch, c_});
        detail::fill_constant(op, gamma, 1.0);
        ops::add<T>(op, gamma, gb.narrow(-1, 0, c_), gamma);
        const tensor_ref<T> y = cx.allocate(x.extents());
        ops::binary<T>(op, ops::binary_kind::mul, x, per_sample(gamma, x.rank()), y);
        ops::add<T>(op, y, per_sample(gb.narrow(-1, c_, c_), x.rank()), y);
        if (cx.training) {
            x_ = x;
            gamma_ = gamma;
            p_ = p;
            saved_ = true;
        }
        return y;
    }

    views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "film", saved_, x_.extents(), dy);
        const ops::op_context op = cx.op(path_);
        const index_t batch = x_.extent(0);
        const tensor_ref<T> dx = cx.allocate(x_.extents());
        ops::binary<T>(op, ops::binary_kind::mul, dy, per_sample(gamma_, dy.rank()), dx);
        // d[dgamma | beta] = sums over the middle axes of [dy x | dy].
        const tensor_ref<T> dgb = cx.allocate(extents{batch, 2 * c_});
        const tensor_ref<T> dyx = cx.allocate(x_.extents());
        ops::binary<T>(op, ops::binary_kind::mul, dy, x_, dyx);
        sum_middle(cx, dyx, dgb.narrow(-1, 0, c_));
        sum_middle(cx, nn::contiguous(cx, path_, dy), dgb.narrow(-1, c_, c_));
        const tensor_ref<const T> dc =
            proj_.backward(cx, detail::zero_absent(cx, path_, p_, 1, tensor_ref<const T>(dgb)));
        return {detail::zero_absent(cx, path_, p_, 0, tensor_ref<const T>(dx)), dc};
    }

    index_t channels() const noexcept { return c_; }
    nn::linear<dyn, dyn, T>& generator() noexcept { return proj_; }
    const std::string& path() const noexcept { return path_; }

private:
    static index_t checked(index_t channels, index_t cond) {
        if (channels < 1 || cond < 1)
            throw value_error("fusion::film", "channels and cond_features must be >= 1");
        return channels;
    }

    void check_inputs(const views<T, 2>& xs, index_t batch) const {
        const tensor_ref<const T>& x = xs[0];
        const tensor_ref<const T>& c = xs[1];
        if (x.rank() < 2 || x.extent(0) != batch || x.extent(-1) != c_)
            throw shape_error(path_, "film input 0 (features x)",
                              "shape (" + std::to_string(batch) + ", ..., " + std::to_string(c_) +
                                  ") (batch, ..., channels last)",
                              x.data() == nullptr && x.rank() == 0
                                  ? std::string("an empty view")
                                  : "shape " + x.extents().to_string());
        const index_t dc = dc_;
        if (c.rank() != 2 || c.extent(0) != batch || c.extent(1) != dc)
            throw shape_error(path_, "film input 1 (conditioning c)",
                              "shape (" + std::to_string(batch) + ", " + std::to_string(dc) + ")",
                              c.data() == nullptr && c.rank() == 0
                                  ? std::string("an empty view")
                                  : "shape " + c.extents().to_string());
    }

    /// A (B, C) view as (B, 1, ..., 1, C) of rank `rank` (broadcasts over the middle axes).
    static tensor_ref<const T> per_sample(tensor_ref<const T> v, int rank) {
        for (int k = 2; k < rank; ++k)
            v = v.unsqueeze(1);
        return v;
    }

    /// out (B, C) = sum of the contiguous t (B, ..., C) over its middle axes.
    void sum_middle(const nn::step_context<T>& cx, tensor_ref<const T> t, tensor_ref<T> out) const {
        if (t.rank() == 2) {
            ops::copy(cx.op(path_), t, out);
            return;
        }
        const index_t b = t.extent(0);
        if (b == 0) return;
        const tensor_ref<const T> t3 = t.reshape(extents{b, t.numel() / (b * c_), c_});
        ops::reduce<T>(cx.op(path_), ops::reduce_kind::sum, 1, t3, out);
    }

    index_t c_;
    index_t dc_;
    nn::linear<dyn, dyn, T> proj_;
    tensor_ref<const T> x_{}, gamma_{};
    presence p_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
