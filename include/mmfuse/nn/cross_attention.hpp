#pragma once
/// \file
/// `nn::cross_attention_block`: a query stream attends to a context stream (the cross-attention
/// half of `nn.TransformerDecoderLayer`, as used by cross-modal transformers such as MulT and
/// Flamingo-style blocks), followed by a feed-forward branch; pre-LN by default.

#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/binary.hpp"

namespace mmfuse::inline v0::nn {

/// Input gradients of `cross_attention_block::backward`: dx (B, Lq, E), dcontext (B, Lk, Ec).
template <compute_type T>
struct cross_attention_grads {
    tensor_ref<const T> dx;
    tensor_ref<const T> dcontext;
};

/// Cross-attention transformer block: x (B, Lq, E) attends to context (B, Lk, Ec):
///   pre-LN (norm_first = true, the default here):
///       x = x + cross_attn(norm1(x), ctx, ctx);  y = x + linear2(act(linear1(norm2(x))))
///   post-LN (norm_first = false):
///       x = norm1(x + cross_attn(x, ctx, ctx));  y = norm2(x + linear2(act(linear1(x))))
/// The context is not normalised. Children: `cross_attn` (multi_head_attention with
/// kdim = vdim = Ec; packed `in_proj_weight` when Ec == E, as PyTorch), `linear1` (E->FF),
/// `linear2` (FF->E), `norm1`, `norm2`. Its PyTorch twin (state_dict loads 1:1):
///
///     class CrossAttentionBlock(nn.Module):
///         def __init__(self, E, H, FF, Ec, act=F.relu, eps=1e-5, norm_first=True, bias=True):
///             super().__init__()
///             self.cross_attn = nn.MultiheadAttention(E, H, bias=bias, kdim=Ec, vdim=Ec,
///                                                     batch_first=True)
///             self.linear1 = nn.Linear(E, FF, bias=bias)
///             self.linear2 = nn.Linear(FF, E, bias=bias)
///             self.norm1 = nn.LayerNorm(E, eps=eps, bias=bias)
///             self.norm2 = nn.LayerNorm(E, eps=eps, bias=bias)
///         def forward(self, x, ctx, ctx_keep=None):       # ctx_keep: True = keep
///             kpm = None if ctx_keep is None else ~ctx_keep
///             att = lambda q: self.cross_attn(q, ctx, ctx, key_padding_mask=kpm,
///                                             need_weights=False)[0]
///             ffn = lambda h: self.linear2(self.act(self.linear1(h)))
///             if self.norm_first:
///                 x = x + att(self.norm1(x)); return x + ffn(self.norm2(x))
///             x = self.norm1(x + att(x)); return self.norm2(x + ffn(x))
///
/// Masks (`attention_masks`, true = KEEP): `key_padding` (B, Lk) is the context padding
/// mask; `attn` / `attn_bias` (Lq, Lk) or (B*H, Lq, Lk); `causal`. A query whose context
/// is fully masked receives no attention update (PyTorch: NaN). No dropout.
template <index_t E = dyn, index_t H = dyn, index_t FF = dyn, compute_type T = float>
class cross_attention_block {
public:
    using value_type = T;

    /// `context_dim` Ec defaults (dyn) to E; `options.norm_first` defaults to true here.
    explicit cross_attention_block(dim<E> d_model = {}, dim<H> nhead = {},
                                   dim<FF> dim_feedforward = {}, index_t context_dim = dyn,
                                   transformer_options options = {.norm_first = true})
        : parts_(
              "cross_attn",
              multi_head_attention<E, H, T>(d_model, nhead, context_dim, context_dim, options.bias),
              d_model, dim_feedforward, options) {}

    template <class V>
    void visit(V& v) {
        parts_.visit(v);
    }

    void reset_parameters(philox_generator& g) { parts_.reset_parameters(g); }

    /// x (B, Lq, E), context (B, Lk, Ec) -> (B, Lq, E). Throws `shape_error` naming the
    /// block (or the attention) path and both shapes.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x,
                                tensor_ref<const T> context, const attention_masks<T>& m = {}) {
        detail::check_sequence(parts_.path, "cross_attention_block input x", x, -1,
                               parts_.attn.embed_dim());
        detail::check_sequence(parts_.path, "cross_attention_block context", context, x.extent(0),
                               parts_.attn.kdim());
        const bool pre = parts_.opt.norm_first;
        const tensor_ref<const T> x1 = detail::sublayer_forward<T>(
            cx, parts_.path, pre, parts_.norm1, x,
            [&](tensor_ref<const T> q) { return parts_.attn.forward(cx, q, context, context, m); });
        return detail::sublayer_forward<T>(
            cx, parts_.path, pre, parts_.norm2, x1,
            [&](tensor_ref<const T> in) { return parts_.ffn.forward(cx, in); });
    }

    /// dy (B, Lq, E) -> {dx, dcontext = dkey + dvalue}; adds into every parameter gradient.
    cross_attention_grads<T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        const bool pre = parts_.opt.norm_first;
        const tensor_ref<const T> dx1 = detail::sublayer_backward<T>(
            cx, parts_.path, pre, parts_.norm2, dy,
            [&](tensor_ref<const T> d) { return parts_.ffn.backward(cx, d); });
        tensor_ref<const T> dcontext{};
        const tensor_ref<const T> dx = detail::sublayer_backward<T>(
            cx, parts_.path, pre, parts_.norm1, dx1, [&](tensor_ref<const T> d) {
                const attention_grads<T> g = parts_.attn.backward(cx, d);
                dcontext = detail::residual_add<T>(cx, parts_.path, g.dkey, g.dvalue);
                return g.dquery;
            });
        return {dx, dcontext};
    }

    multi_head_attention<E, H, T>& cross_attn() noexcept { return parts_.attn; }
    linear<E, FF, T>& linear1() noexcept { return parts_.ffn.linear1(); }
    linear<FF, E, T>& linear2() noexcept { return parts_.ffn.linear2(); }
    layer_norm<E, T>& norm1() noexcept { return parts_.norm1; }
    layer_norm<E, T>& norm2() noexcept { return parts_.norm2; }
    const transformer_options& options() const noexcept { return parts_.opt; }
    const std::string& path() const noexcept { return parts_.path; }

private:
    detail::attention_block_parts<E, H, FF, T> parts_;
};

}  // namespace mmfuse::inline v0::nn
