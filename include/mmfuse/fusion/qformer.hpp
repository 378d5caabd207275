#pragma once
/// \file
/// `fusion::qformer_layer` and `fusion::qformer`: the query path of the BLIP-2 Querying
/// Transformer (Li, Li, Savarese, Hoi, "BLIP-2: Bootstrapping Language-Image Pre-training
/// with Frozen Image Encoders and Large Language Models", ICML 2023; reference code
/// salesforce/LAVIS : lavis/models/blip2_models/Qformer.py (BertEmbeddings, BertLayer) and
/// blip2.py (init_Qformer); docs/fusion.md, reference catalogue section 4.6): Nq learned
/// query tokens read a variable number of image tokens through cross-attention and come out
/// as a fixed (B, Nq, D) bridge to a language model.
///
/// Out of scope: the text-token path (queries and text sharing the self-attention with a
/// task-dependent mask, the text FFN), the ITC / ITM / ITG heads and losses, dropout.

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/bert_init.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// Widths of a Q-Former (BLIP-2: hidden 768, 12 heads, FFN 3072, image width 1408 (EVA
/// ViT-g), 32 queries, 12 layers, cross-attention every 2nd layer, eps 1e-12).
///   hidden       D, width of the query tokens     heads  H (divides D)
///   ff           FFN inner width                  image_dim  Dimg, width of the image tokens
///   num_queries  Nq                               num_layers  L
///   cross_attention_freq  layer i has cross-attention when i % freq == 0 (freq >= 1)
///   layer_norm_eps  of every LayerNorm (BERT's 1e-12)
struct qformer_options {
    index_t hidden = 0;
    index_t heads = 1;
    index_t ff = 0;
    index_t image_dim = 0;
    index_t num_queries = 0;
    index_t num_layers = 1;
    index_t cross_attention_freq = 2;
    double layer_norm_eps = 1e-12;
};

/// One Q-Former (post-LN BERT) layer over the query tokens H (B, Nq, D):
///   H <- norm1(H + self_attn(H))                      (self-attention over the queries)
///   H <- cross_norm(H + cross_attn(H, I, I))          (only when `cross`; I (B, N, Dimg))
///   H <- norm2(H + linear2(GELU(linear1(H))))         (the query FFN; GELU exact)
/// BERT's attention (query/key/value Linear + output dense) is exactly
/// `nn::multi_head_attention` (in_proj = [W_q; W_k; W_v], out_proj = the dense), so both
/// attentions are one: `self_attn` (D, H; packed in_proj_weight (3D, D)), `cross_attn`
/// (D, H, kdim = vdim = Dimg: q_proj_weight (D, D), k_proj_weight / v_proj_weight (D, Dimg),
/// packed when Dimg == D). Children in visit order: self_attn, cross_attn (if any), linear1
/// (FF, D), linear2 (D, FF), norm1, cross_norm (if any), norm2. Init: `nn::bert_init`.
/// `key_padding` (B, N) (true = KEEP) masks padded image tokens (BERT's additive
/// encoder_attention_mask); a query whose image tokens are all padded gets the cross update
/// cross_attn.out_proj.bias (see multi_head_attention.hpp). No dropout.
template <compute_type T = float>
class qformer_layer {
public:
    using value_type = T;

    qformer_layer(index_t hidden, index_t heads, index_t ff, index_t image_dim, bool cross,
                  double eps = 1e-12)
        : self_attn_(hidden, heads),
          ffn_(hidden, ff, ops::unary_kind::gelu_erf, true),
          norm1_(hidden, eps),
          norm2_(hidden, eps) {
        if (cross) cross_.emplace(hidden, heads, image_dim, eps);
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("self_attn", self_attn_);
        if (cross_) v.child("cross_attn", cross_->attn);
        ffn_.visit(v);
        v.child("norm1", norm1_);
        if (cross_) v.child("cross_norm", cross_->norm);
        v.child("norm2", norm2_);
    }

    void reset_parameters(philox_generator& g) { nn::bert_init(*this, g); }

    /// h (B, Nq, D), image (B, N, Dimg) (ignored without cross-attention) -> (B, Nq, D).
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> h,
                                tensor_ref<const T> image,
                                tensor_ref<const bool> key_padding = {}) {
        nn::detail::check_sequence(path_, "qformer_layer queries", h, -1, self_attn_.embed_dim());
        tensor_ref<const T> x = nn::detail::sublayer_forward<T>(
            cx, path_, false, norm1_, h,
            [&](tensor_ref<const T> in) { return self_attn_.forward_self(cx, in); });
        if (cross_) {
            nn::detail::check_sequence(path_, "qformer_layer image tokens", image, h.extent(0),
                                       cross_->attn.kdim());
            x = nn::detail::sublayer_forward<T>(
                cx, path_, false, cross_->norm, x, [&](tensor_ref<const T> in) {
                    return cross_->attn.forward(cx, in, image, image, {.key_padding = key_padding});
                });
        }
        return nn::detail::sublayer_forward<T>(
            cx, path_, false, norm2_, x,
            [&](tensor_ref<const T> in) { return ffn_.forward(cx, in); });
    }

    /// dy (B, Nq, D) -> {dh, dimage} (dimage empty without cross-attention); adds into every
    /// parameter gradient.
    nn::cross_attention_grads<T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        tensor_ref<const T> dx = nn::detail::sublayer_backward<T>(
            cx, path_, false, norm2_, dy,
            [&](tensor_ref<const T> d) { return ffn_.backward(cx, d); });
        tensor_ref<const T> dimage{};
        if (cross_)
            dx = nn::detail::sublayer_backward<T>(
                cx, path_, false, cross_->norm, dx, [&](tensor_ref<const T> d) {
                    const nn::attention_grads<T> g = cross_->attn.backward(cx, d);
                    dimage = nn::detail::residual_add<T>(cx, path_, g.dkey, g.dvalue);
                    return g.dquery;
                });
        dx = nn::detail::sublayer_backward<T>(
            cx, path_, false, norm1_, dx,
            [&](tensor_ref<const T> d) { return self_attn_.backward_self(cx, d); });
        return {dx, dimage};
    }

    bool has_cross_attention() const noexcept { return cross_.has_value(); }
    nn::multi_head_attention<dyn, dyn, T>& self_attn() noexcept { return self_attn_; }
    /// Precondition: has_cross_attention().
    nn::multi_head_attention<dyn, dyn, T>& cross_attn() noexcept { return cross_->attn; }
    const std::string& path() const noexcept { return path_; }

private:
    struct cross_part {
        cross_part(index_t hidden, index_t heads, index_t image_dim, double eps)
            : attn(hidden, heads, image_dim, image_dim), norm(hidden, eps) {}
        nn::multi_head_attention<dyn, dyn, T> attn;
        nn::layer_norm<dyn, T> norm;
    };

    nn::multi_head_attention<dyn, dyn, T> self_attn_;
    std::optional<cross_part> cross_;
    nn::detail::feed_forward<dyn, dyn, T> ffn_;
    nn::layer_norm<dyn, T> norm1_;
    nn::layer_norm<dyn, T> norm2_;
    std::string path_;
};

/// The BLIP-2 Q-Former, query path: image tokens (B, N, Dimg) -> query outputs (B, Nq, D).
///   H_0 = norm(Q0) broadcast over the batch (Q0 = query_tokens (1, Nq, D); no position
///   embedding), H_{i+1} = layers.i(H_i, I), output H_L.
/// Parameters: `query_tokens` (1, Nq, D), `norm` (LayerNorm D, LAVIS's embeddings.LayerNorm),
/// `layers.<i>.*` (`qformer_layer`; cross-attention when i % cross_attention_freq == 0).
/// Init: `nn::bert_init` (query tokens and weights N(0, 0.02), biases 0, LayerNorm 1 / 0), as
/// LAVIS's init_Qformer for the parts not loaded from bert-base.
/// A single-input differentiable layer (`nn::differentiable_layer`): forward(cx, image,
/// key_padding = {}) with key_padding (B, N) bool, true = KEEP (BLIP-2 uses all ones; any N
/// works, the image width Dimg is fixed), and backward(cx, dy (B, Nq, D)) -> d image (sum of
/// every cross-attention layer's key and value gradients). Missing image for a sample: mask
/// all of its tokens; each query then gets the cross update out_proj.bias (see
/// multi_head_attention.hpp), i.e. the Q-Former runs on its queries alone.
/// Out of scope: the text path, the ITC / ITM / ITG heads, dropout.
template <compute_type T = float>
class qformer {
public:
    using value_type = T;

    /// Throws `shape_error` unless every width is positive, heads divides hidden and
    /// cross_attention_freq >= 1.
    explicit qformer(const qformer_options& o)
        : opt_(checked(o)), norm_(o.hidden, o.layer_norm_eps) {
        query_tokens_.shape = extents{1, o.num_queries, o.hidden};
        layers_.reserve(std::size_t(o.num_layers));
        for (index_t i = 0; i < o.num_layers; ++i)
            layers_.emplace_back(o.hidden, o.heads, o.ff, o.image_dim,
                                 i % o.cross_attention_freq == 0, o.layer_norm_eps);
        names_.reserve(layers_.size());
        for (std::size_t i = 0; i < layers_.size(); ++i)
            names_.push_back("layers." + std::to_string(i));
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("query_tokens", query_tokens_);
        v.child("norm", norm_);
        for (std::size_t i = 0; i < layers_.size(); ++i)
            v.child(names_[i], layers_[i]);
    }

    void reset_parameters(philox_generator& g) { nn::bert_init(*this, g); }

    /// image (B, N, Dimg) -> (B, Nq, D) in the workspace. Throws `shape_error` naming the
    /// module path (or the rejecting child's), the operand and both shapes.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> image,
                                tensor_ref<const bool> key_padding = {}) {
        nn::detail::check_sequence(path_, "qformer image tokens", image, -1, opt_.image_dim);
        const index_t b = image.extent(0);
        const tensor_ref<T> q0 = cx.allocate(extents{b, opt_.num_queries, opt_.hidden});
        ops::copy(cx.op(path_), tensor_ref<const T>(query_tokens_.value).expand(q0.extents()), q0);
        tensor_ref<const T> h = norm_.forward(cx, q0);
        for (auto& l : layers_)
            h = l.forward(cx, h, image, key_padding);
        if (cx.training) {
            image_extents_ = image.extents();
            y_extents_ = h.extents();
            saved_ = true;
        }
        return h;
    }

    /// dy (B, Nq, D) -> d image (B, N, Dimg); adds into every parameter gradient.
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "qformer", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> dimage = cx.allocate(image_extents_);
        bool first = true;
        tensor_ref<const T> d = dy;
        for (std::size_t i = layers_.size(); i-- > 0;) {
            const nn::cross_attention_grads<T> g = layers_[i].backward(cx, d);
            d = g.dx;
            if (g.dcontext.data() == nullptr) continue;
            if (first)
                ops::copy(op, g.dcontext, dimage);
            else
                ops::add<T>(op, dimage, g.dcontext, dimage);
            first = false;
        }
        const tensor_ref<const T> dq = norm_.backward(cx, d);
        ops::reduce<T>(op, ops::reduce_kind::sum, 0, dq,
                       query_tokens_.grad.reshape(extents{opt_.num_queries, opt_.hidden}), true);
        return dimage;
    }

    nn::parameter<T>& query_tokens() noexcept { return query_tokens_; }
    std::vector<qformer_layer<T>>& layers() noexcept { return layers_; }
    const qformer_options& options() const noexcept { return opt_; }
    const std::string& path() const noexcept { return path_; }

private:
    static qformer_options checked(const qformer_options& o) {
        if (o.hidden < 1 || o.ff < 1 || o.image_dim < 1 || o.num_queries < 1 || o.num_layers < 1)
            throw shape_error(
                "qformer", "widths", "positive hidden, ff, image_dim, num_queries, num_layers",
                std::to_string(o.hidden) + ", " + std::to_string(o.ff) + ", " +
                    std::to_string(o.image_dim) + ", " + std::to_string(o.num_queries) + ", " +
                    std::to_string(o.num_layers));
        if (o.heads < 1 || o.hidden % o.heads != 0)
            throw shape_error("qformer", "heads",
                              "a positive divisor of hidden " + std::to_string(o.hidden),
                              std::to_string(o.heads) + " heads");
        if (o.cross_attention_freq < 1)
            throw shape_error("qformer", "cross_attention_freq", ">= 1",
                              std::to_string(o.cross_attention_freq));
        return o;
    }

    qformer_options opt_;
    nn::parameter<T> query_tokens_;
    nn::layer_norm<dyn, T> norm_;
    std::vector<qformer_layer<T>> layers_;
    std::vector<std::string> names_;
    std::string path_;
    extents image_extents_{}, y_extents_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::fusion
