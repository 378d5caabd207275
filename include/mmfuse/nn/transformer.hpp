#pragma once
/// \file
/// `nn::transformer_encoder_layer`: PyTorch's `nn.TransformerEncoderLayer(batch_first=True,
/// dropout=0)` (Vaswani et al. 2017; pre-LN as Xiong et al., "On layer normalization in the
/// transformer architecture", 2020), post-LN or pre-LN, built from `nn::multi_head_attention`,
/// `nn::linear`, `nn::layer_norm` and `ops::unary` / `ops::binary` (residual adds).
/// Also the pieces shared with `nn::cross_attention_block` (cross_attention.hpp): the
/// position-wise feed-forward branch and the residual sub-layer wrapper.

#include <string>
#include <utility>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/pointwise.hpp"

namespace mmfuse::inline v0::nn {

/// Options of the transformer blocks (PyTorch's constructor arguments of the same meaning).
///   activation      of the feed-forward branch: relu (PyTorch's default) or gelu_erf
///                   ("gelu"); any `ops::unary_kind` is accepted
///   layer_norm_eps  eps of both LayerNorms (1e-5)
///   norm_first      false: post-LN, y = LN(x + f(x)) (PyTorch's default);
///                   true: pre-LN, y = x + f(LN(x))
///   bias            biases of the attention, the linears and the LayerNorms (PyTorch's
///                   `bias=False` removes all of them)
/// Dropout is not supported (PyTorch's `dropout` must be 0 for parity).
struct transformer_options {
    ops::unary_kind activation = ops::unary_kind::relu;
    double layer_norm_eps = 1e-5;
    bool norm_first = false;
    bool bias = true;
};

namespace detail {

/// Position-wise feed-forward branch linear2(act(linear1(x))): x (..., E) -> (..., E)
/// through FF hidden features. Its children are named `linear1` and `linear2` in the
/// PARENT's namespace (visit is transparent), as in PyTorch's transformer layers.
template <index_t E, index_t FF, compute_type T>
class feed_forward {
public:
    feed_forward(dim<E> e, dim<FF> ff, ops::unary_kind act, bool bias)
        : linear1_(e, ff, bias), linear2_(ff, e, bias), act_(act) {}

    template <class V>
    void visit(V& v) {
        v.child("linear1", linear1_);
        v.child("linear2", linear2_);
    }
    void reset_parameters(philox_generator& g) {
        linear1_.reset_parameters(g);
        linear2_.reset_parameters(g);
    }

    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        const tensor_ref<const T> h = linear1_.forward(cx, x);
        const tensor_ref<T> a = cx.allocate(h.extents());
        ops::unary(cx.op(linear1_.path()), act_, h, a);
        if (cx.training) hidden_ = h;
        return linear2_.forward(cx, a);
    }
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        const tensor_ref<const T> da = linear2_.backward(cx, dy);
        const tensor_ref<T> dh = cx.allocate(da.extents());
        ops::unary_backward(cx.op(linear1_.path()), act_, hidden_, da, dh);
        return linear1_.backward(cx, dh);
    }

    linear<E, FF, T>& linear1() noexcept { return linear1_; }
    linear<FF, E, T>& linear2() noexcept { return linear2_; }

private:
    linear<E, FF, T> linear1_;
    linear<FF, E, T> linear2_;
    ops::unary_kind act_;
    tensor_ref<const T> hidden_{};
};

/// y = x + b where every operand has x's extents; y fresh from the workspace.
template <compute_type T>
tensor_ref<const T> residual_add(step_context<T>& cx, std::string_view path, tensor_ref<const T> x,
                                 tensor_ref<const T> b) {
    const tensor_ref<T> y = cx.allocate(x.extents());
    ops::add(cx.op(path), x, b, y);
    return y;
}

/// One residual sub-layer around a branch f with LayerNorm `norm`:
///   pre-LN  y = x + f(norm(x));   post-LN  y = norm(x + f(x)).
/// `f(tensor_ref<const T>) -> tensor_ref<const T>` runs the branch forward.
/// The parts both attention blocks (`transformer_encoder_layer`, `cross_attention_block`)
/// are made of — one attention sub-layer named `attention_name` ("self_attn" or
/// "cross_attn"), the feed-forward branch (`linear1`, `linear2`) and `norm1`, `norm2` — with
/// their one construction, naming and initialisation order (PyTorch's state_dict order).
template <index_t E, index_t H, index_t FF, compute_type T>
struct attention_block_parts {
    attention_block_parts(const char* attention_name, multi_head_attention<E, H, T> attention,
                          dim<E> d_model, dim<FF> dim_feedforward, const transformer_options& o)
        : opt(o),
          attn(std::move(attention)),
          ffn(d_model, dim_feedforward, o.activation, o.bias),
          norm1(d_model, o.layer_norm_eps, true, o.bias),
          norm2(d_model, o.layer_norm_eps, true, o.bias),
          attn_name(attention_name) {}

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child(attn_name, attn);
        ffn.visit(v);
        v.child("norm1", norm1);
        v.child("norm2", norm2);
    }

    void reset_parameters(philox_generator& g) {
        attn.reset_parameters(g);
        ffn.reset_parameters(g);
        norm1.reset_parameters(g);
        norm2.reset_parameters(g);
    }

    transformer_options opt;
    multi_head_attention<E, H, T> attn;
    feed_forward<E, FF, T> ffn;
    layer_norm<E, T> norm1;
    layer_norm<E, T> norm2;
    std::string path;
    const char* attn_name;
};

template <compute_type T, class Norm, class F>
tensor_ref<const T> sublayer_forward(step_context<T>& cx, std::string_view path, bool pre,
                                     Norm& norm, tensor_ref<const T> x, F&& f) {
    if (pre) return residual_add<T>(cx, path, x, f(norm.forward(cx, x)));
    return norm.forward(cx, residual_add<T>(cx, path, x, f(x)));
}

/// Backward of `sublayer_forward`; `fb(d branch output) -> d branch input`.
///   pre-LN  dx = dy + norm'(f'(dy));   post-LN  ds = norm'(dy), dx = ds + f'(ds).
template <compute_type T, class Norm, class FB>
tensor_ref<const T> sublayer_backward(step_context<T>& cx, std::string_view path, bool pre,
                                      Norm& norm, tensor_ref<const T> dy, FB&& fb) {
    if (pre) return residual_add<T>(cx, path, dy, norm.backward(cx, fb(dy)));
    const tensor_ref<const T> ds = norm.backward(cx, dy);
    return residual_add<T>(cx, path, ds, fb(ds));
}

}  // namespace detail

/// `torch.nn.TransformerEncoderLayer(d_model=E, nhead=H, dim_feedforward=FF, dropout=0.0,
/// activation, layer_norm_eps, batch_first=True, norm_first, bias)`:
///   x (B, L, E) -> y (B, L, E)
///   post-LN (norm_first = false, PyTorch's default):
///       x = norm1(x + self_attn(x));  y = norm2(x + linear2(act(linear1(x))))
///   pre-LN (norm_first = true):
///       x = x + self_attn(norm1(x));  y = x + linear2(act(linear1(norm2(x))))
/// Children (PyTorch names, so a state_dict loads 1:1): `self_attn` (multi_head_attention,
/// packed in_proj_weight), `linear1` (E->FF), `linear2` (FF->E), `norm1`, `norm2` (LayerNorm
/// weight = 1, bias = 0); initialised in PyTorch's construction order.
/// Masks: `masks` (public) is used by `forward(cx, x)`; its `key_padding` is PyTorch's
/// `src_key_padding_mask` with the INVERSE polarity (true = keep), `attn` / `attn_bias` are
/// `src_mask` (boolean true = keep / additive), `causal` is `is_causal` (a real mask here).
/// A query with every key masked attends to nothing (see multi_head_attention.hpp; PyTorch
/// gives NaN). No dropout; no nested-tensor fast path (its outputs for padded positions
/// differ from the slow path in PyTorch; here padded queries are computed normally).
template <index_t E = dyn, index_t H = dyn, index_t FF = dyn, compute_type T = float>
class transformer_encoder_layer {
public:
    using value_type = T;
    static constexpr index_t in_features = E;
    static constexpr index_t out_features = E;

    explicit transformer_encoder_layer(dim<E> d_model = {}, dim<H> nhead = {},
                                       dim<FF> dim_feedforward = {},
                                       transformer_options options = {})
        : parts_("self_attn", multi_head_attention<E, H, T>(d_model, nhead, dyn, dyn, options.bias),
                 d_model, dim_feedforward, options) {}

    template <class V>
    void visit(V& v) {
        parts_.visit(v);
    }

    void reset_parameters(philox_generator& g) { parts_.reset_parameters(g); }

    /// x (B, L, E) -> (B, L, E) with the member `masks`.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        return forward(cx, x, masks);
    }

    /// x (B, L, E) -> (B, L, E) with explicit masks (true = keep). Throws `shape_error`
    /// naming the layer path and both shapes on a bad input or mask.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x,
                                const attention_masks<T>& m) {
        detail::check_sequence(parts_.path, "transformer_encoder_layer input", x, -1,
                               parts_.attn.embed_dim());
        const bool pre = parts_.opt.norm_first;
        const tensor_ref<const T> x1 = detail::sublayer_forward<T>(
            cx, parts_.path, pre, parts_.norm1, x,
            [&](tensor_ref<const T> in) { return parts_.attn.forward_self(cx, in, m); });
        return detail::sublayer_forward<T>(
            cx, parts_.path, pre, parts_.norm2, x1,
            [&](tensor_ref<const T> in) { return parts_.ffn.forward(cx, in); });
    }

    /// dy (B, L, E) -> dx (B, L, E); adds into every parameter gradient.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        const bool pre = parts_.opt.norm_first;
        const tensor_ref<const T> dx1 = detail::sublayer_backward<T>(
            cx, parts_.path, pre, parts_.norm2, dy,
            [&](tensor_ref<const T> d) { return parts_.ffn.backward(cx, d); });
        return detail::sublayer_backward<T>(
            cx, parts_.path, pre, parts_.norm1, dx1,
            [&](tensor_ref<const T> d) { return parts_.attn.backward_self(cx, d); });
    }

    multi_head_attention<E, H, T>& self_attn() noexcept { return parts_.attn; }
    linear<E, FF, T>& linear1() noexcept { return parts_.ffn.linear1(); }
    linear<FF, E, T>& linear2() noexcept { return parts_.ffn.linear2(); }
    layer_norm<E, T>& norm1() noexcept { return parts_.norm1; }
    layer_norm<E, T>& norm2() noexcept { return parts_.norm2; }
    const transformer_options& options() const noexcept { return parts_.opt; }
    const std::string& path() const noexcept { return parts_.path; }

    /// Masks used by `forward(cx, x)` (src_key_padding_mask, src_mask, is_causal).
    attention_masks<T> masks{};

private:
    detail::attention_block_parts<E, H, FF, T> parts_;
};

}  // namespace mmfuse::inline v0::nn
