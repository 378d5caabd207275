#pragma once
/// \file
/// `fusion::co_attention_layer`: the ViLBERT co-attentional transformer layer (Co-TRM; Lu,
/// Batra, Parikh, Lee, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations
/// for Vision-and-Language Tasks", NeurIPS 2019; reference code jiasenlu/vilbert_beta :
/// vilbert/vilbert.py, BertBiAttention / BertBiOutput / BertConnectionLayer; docs/fusion.md,
/// reference catalogue section 4.2), an interaction of arity 2 (visual, text). Also
/// `fusion::bert_init`, the BERT initialisation rule shared with the Q-Former (qformer.hpp).

#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/bert_init.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/attention.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::fusion {

/// Widths of a `co_attention_layer` (ViLBERT base: visual 1024, text 768, bi 1024, 8 heads,
/// visual FFN 1024, text FFN 3072, eps 1e-12).
///   visual_dim  Dv, width of the visual tokens       text_dim  Dt, width of the text tokens
///   bi_dim      Dbi, width of the bi-attention (a multiple of `heads`; may differ from both)
///   heads       H, attention heads of width Dbi / H
///   visual_ff   inner width of the visual FFN        text_ff   inner width of the text FFN
///   layer_norm_eps  of all four LayerNorms (BERT's 1e-12)
struct co_attention_options {
    index_t visual_dim = 0;
    index_t text_dim = 0;
    index_t bi_dim = 0;
    index_t heads = 1;
    index_t visual_ff = 0;
    index_t text_ff = 0;
    double layer_norm_eps = 1e-12;
};

namespace detail {

/// The parameters one stream of a co-attention layer owns (child "visual" or "text"):
///   query, key, value  Linear(D -> Dbi) of its own tokens (its query is used for its own
///                      update; its key and value serve the OTHER stream's queries)
///   dense              Linear(Dbi -> D), the output of the attention it receives
///   norm1              LayerNorm(D) after the attention residual
///   linear1, linear2   its FFN, Linear(D -> FF), GELU (erf), Linear(FF -> D)
///   norm2              LayerNorm(D) after the FFN residual
template <compute_type T>
struct co_stream {
    co_stream(index_t d, index_t bi, index_t ff, double eps)
        : query(d, bi),
          key(d, bi),
          value(d, bi),
          dense(bi, d),
          norm1(d, eps),
          ffn(d, ff, ops::unary_kind::gelu_erf, true),
          norm2(d, eps) {}

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("query", query);
        v.child("key", key);
        v.child("value", value);
        v.child("dense", dense);
        v.child("norm1", norm1);
        ffn.visit(v);
        v.child("norm2", norm2);
    }

    nn::linear<dyn, dyn, T> query, key, value, dense;
    nn::layer_norm<dyn, T> norm1;
    nn::detail::feed_forward<dyn, dyn, T> ffn;
    nn::layer_norm<dyn, T> norm2;
    std::string path;
};

}  // namespace detail

/// ViLBERT co-attention layer (Co-TRM): two streams exchange keys and values in one
/// simultaneous bi-attention, then each runs its own post-LN feed-forward sub-layer.
///   inputs   V (B, Nv, Dv) visual tokens (stream 0), T (B, Nt, Dt) text tokens (stream 1)
///   outputs  V'' (B, Nv, Dv), T'' (B, Nt, Dt)
/// With q_s, k_s, v_s = query_s(X_s), key_s(X_s), value_s(X_s) (B, N_s, Dbi), split into H
/// heads of width dh = Dbi / H:
///   C_t = softmax(q_t k_v^T / sqrt(dh), mask_v) v_v   (B, Nt, Dbi)  text queries over image
///   C_v = softmax(q_v k_t^T / sqrt(dh), mask_t) v_t   (B, Nv, Dbi)  image queries over text
///   both from the SAME pre-update inputs (a simultaneous update), heads concatenated;
///   V' = LN_v1(V + dense_v(C_v)),  T' = LN_t1(T + dense_t(C_t));
///   X'' = LN_x2(X' + linear2_x(GELU(linear1_x(X'))))            (post-LN, eps 1e-12).
/// Parameters (children "visual" and "text", see `detail::co_stream`): visual.query.weight
/// (Dbi, Dv), ..., visual.dense.weight (Dv, Dbi), visual.norm1.*, visual.linear1.* (FFv, Dv),
/// visual.linear2.*, visual.norm2.*, then the same under text.*. `reset_parameters` follows
/// BERT (`bert_init`: weights N(0, 0.02), biases 0, LayerNorm 1 / 0).
/// The attention core is `ops::attention` on head views of `nn::linear` projections:
/// `nn::multi_head_attention` does not fit, because its query width must equal its inner
/// width and it ends in an (E, E) out_proj, while ViLBERT projects Dv, Dt -> Dbi and back
/// with one dense Linear(Dbi -> D) per stream (no extra output projection).
/// Masks: `key_padding` {(B, Nv), (B, Nt)} bool, true = KEEP (the inverse of PyTorch's
/// key_padding_mask; ViLBERT's additive (1 - m) * -10000 on a kept/padded 1/0 mask): a padded
/// token is never a key of the other stream; padded queries are computed like the others
/// (their outputs are not meaningful). A query row whose keys are all padded gets C = 0 and
/// so the update dense.bias (ViLBERT: a uniform average over the padded keys).
/// Missing modality (presence (B, 2), true = present): where stream o is absent for sample b,
/// its tokens are treated as masked keys for the other stream s, whose cross update is exactly
/// zero there (X_s' = LN(X_s + 0); implemented as the dense output times the 0/1 presence
/// weight, which is the same function and gradient); the absent stream's own output is its
/// input passed through unchanged (y = x, dy flows to dx as is). Deviations from ViLBERT: no
/// dropout; no co_attention_mask; the scores are named by direction (the reference swaps them).
template <compute_type T = float>
class co_attention_layer {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;
    static constexpr std::size_t visual = 0, text = 1;

    /// Throws `shape_error` unless every width is positive and `heads` divides `bi_dim`.
    explicit co_attention_layer(const co_attention_options& o)
        : opt_(checked(o)),
          streams_{detail::co_stream<T>(o.visual_dim, o.bi_dim, o.visual_ff, o.layer_norm_eps),
                   detail::co_stream<T>(o.text_dim, o.bi_dim, o.text_ff, o.layer_norm_eps)} {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("visual", streams_[visual]);
        v.child("text", streams_[text]);
    }

    /// BERT's initialisation (`bert_init`, std 0.02).
    void reset_parameters(philox_generator& g) { nn::bert_init(*this, g); }

    /// forward with the member `key_padding`.
    views<T, 2> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        return forward(cx, xs, p, key_padding);
    }

    /// xs = {V (B, Nv, Dv), T (B, Nt, Dt)} -> {V'', T''} in the workspace; `kp` = {(B, Nv),
    /// (B, Nt)} keep-masks (an empty view: no padding in that stream). Throws `shape_error`
    /// naming the layer path, the operand and both shapes.
    views<T, 2> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p,
                        const std::array<tensor_ref<const bool>, 2>& kp) {
        nn::detail::check_sequence(path_, "co_attention_layer visual input", xs[visual], -1,
                                   opt_.visual_dim);
        const index_t b = xs[visual].extent(0);
        nn::detail::check_sequence(path_, "co_attention_layer text input", xs[text], b,
                                   opt_.text_dim);
        check_presence(path_, p, b, 2);
        for (std::size_t s = 0; s < 2; ++s)
            if (kp[s].data() != nullptr && kp[s].extents() != extents{b, xs[s].extent(1)})
                throw shape_error(path_,
                                  s == visual ? "co_attention_layer visual key_padding mask"
                                              : "co_attention_layer text key_padding mask",
                                  "shape " + extents{b, xs[s].extent(1)}.to_string() +
                                      " (batch, tokens) or an empty view",
                                  "shape " + kp[s].extents().to_string());
        const bool gated = !all_present(p);
        std::array<tensor_ref<const T>, 2> q{}, k{}, v{};
        for (std::size_t s = 0; s < 2; ++s) {
            q[s] = streams_[s].query.forward(cx, xs[s]);
            k[s] = streams_[s].key.forward(cx, xs[s]);
            v[s] = streams_[s].value.forward(cx, xs[s]);
        }
        views<T, 2> ys{};
        for (std::size_t s = 0; s < 2; ++s) {
            const std::size_t o = 1 - s;
            // Stream s's queries over the other stream's keys and values (pre-update inputs).
            const tensor_ref<const T> c = attend(cx, s, q[s], k[o], v[o], kp[o]);
            detail::co_stream<T>& st = streams_[s];
            const tensor_ref<const T> x1 = nn::detail::sublayer_forward<T>(
                cx, path_, false, st.norm1, xs[s], [&](tensor_ref<const T>) {
                    const tensor_ref<const T> u = st.dense.forward(cx, c);
                    return gated ? fusion::detail::zero_absent(cx, path_, p, o, u) : u;
                });
            const tensor_ref<const T> x2 = nn::detail::sublayer_forward<T>(
                cx, path_, false, st.norm2, x1,
                [&](tensor_ref<const T> in) { return st.ffn.forward(cx, in); });
            ys[s] = gated ? pass_absent(cx, p, s, xs[s], x2) : x2;
        }
        if (cx.training) {
            p_ = gated ? p : presence{};
            for (std::size_t s = 0; s < 2; ++s) {
                kp_[s] = kp[s];
                y_extents_[s] = xs[s].extents();
            }
            saved_ = true;
        }
        return ys;
    }

    /// {dV'', dT''} -> {dV, dT}; adds into every parameter gradient.
    views<T, 2> backward(nn::step_context<T>& cx, const views<T, 2>& dys) {
        if (!saved_)
            throw shape_error(path_, "co_attention_layer backward", "a training-mode forward first",
                              "no saved forward");
        for (std::size_t s = 0; s < 2; ++s)
            if (dys[s].extents() != y_extents_[s])
                throw shape_error(path_,
                                  s == visual ? "co_attention_layer visual output gradient"
                                              : "co_attention_layer text output gradient",
                                  "shape " + y_extents_[s].to_string(),
                                  "shape " + dys[s].extents().to_string());
        const bool gated = p_.data() != nullptr;
        const ops::op_context op = cx.op(path_);
        std::array<tensor_ref<const T>, 2> d_direct{}, ds{}, dq{}, dk{}, dv{};
        for (std::size_t s = 0; s < 2; ++s) {
            detail::co_stream<T>& st = streams_[s];
            tensor_ref<const T> dx2 = dys[s];
            if (gated) {  // y = x + w (x2 - x): dx2 = w dy, dx (direct) = dy - w dy
                dx2 = fusion::detail::zero_absent(cx, path_, p_, s, dys[s]);
                const tensor_ref<T> dd = cx.allocate(dys[s].extents());
                ops::binary<T>(op, ops::binary_kind::sub, dys[s], dx2, dd);
                d_direct[s] = dd;
            }
            const tensor_ref<const T> dx1 = nn::detail::sublayer_backward<T>(
                cx, path_, false, st.norm2, dx2,
                [&](tensor_ref<const T> d) { return st.ffn.backward(cx, d); });
            ds[s] = st.norm1.backward(cx, dx1);  // d (X_s + update_s)
        }
        for (std::size_t s = 0; s < 2; ++s) {
            const std::size_t o = 1 - s;
            const tensor_ref<const T> du =
                gated ? fusion::detail::zero_absent(cx, path_, p_, o, ds[s]) : ds[s];
            attend_backward(cx, s, streams_[s].dense.backward(cx, du), dq[s], dk[o], dv[o]);
        }
        views<T, 2> dxs{};
        for (std::size_t s = 0; s < 2; ++s) {
            detail::co_stream<T>& st = streams_[s];
            const tensor_ref<T> dx = cx.allocate(y_extents_[s]);
            ops::add<T>(op, ds[s], st.query.backward(cx, dq[s]), dx);
            ops::add<T>(op, dx, st.key.backward(cx, dk[s]), dx);
            ops::add<T>(op, dx, st.value.backward(cx, dv[s]), dx);
            if (gated) ops::add<T>(op, dx, d_direct[s], dx);
            dxs[s] = dx;
        }
        return dxs;
    }

    /// The parameters of stream s (0 = visual, 1 = text).
    detail::co_stream<T>& stream(std::size_t s) noexcept { return streams_[s]; }
    const co_attention_options& options() const noexcept { return opt_; }
    const std::string& path() const noexcept { return path_; }

    /// Key padding masks used by `forward(cx, xs, p)`: {(B, Nv), (B, Nt)}, true = KEEP.
    std::array<tensor_ref<const bool>, 2> key_padding{};

private:
    static co_attention_options checked(const co_attention_options& o) {
        if (o.visual_dim < 1 || o.text_dim < 1 || o.bi_dim < 1 || o.visual_ff < 1 || o.text_ff < 1)
            throw shape_error("co_attention_layer", "widths",
                              "positive visual_dim, text_dim, bi_dim, visual_ff, text_ff",
                              std::to_string(o.visual_dim) + ", " + std::to_string(o.text_dim) +
                                  ", " + std::to_string(o.bi_dim) + ", " +
                                  std::to_string(o.visual_ff) + ", " + std::to_string(o.text_ff));
        if (o.heads < 1 || o.bi_dim % o.heads != 0)
            throw shape_error("co_attention_layer", "heads",
                              "a positive divisor of bi_dim " + std::to_string(o.bi_dim),
                              std::to_string(o.heads) + " heads");
        return o;
    }

    /// (B, L, Dbi) contiguous -> (B, H, L, dh) view.
    tensor_ref<const T> heads_of(tensor_ref<const T> x) const {
        const index_t h = opt_.heads;
        return x.reshape(extents{x.extent(0), x.extent(1), h, opt_.bi_dim / h}).transpose(1, 2);
    }
    tensor_ref<T> heads_of(tensor_ref<T> x) const {
        const index_t h = opt_.heads;
        return x.reshape(extents{x.extent(0), x.extent(1), h, opt_.bi_dim / h}).transpose(1, 2);
    }
    /// A (B, Lk) keep-mask as (B, 1, 1, Lk) (empty stays empty).
    static tensor_ref<const bool> key_mask(const tensor_ref<const bool>& m) {
        if (m.data() == nullptr) return {};
        const std::array<index_t, 4> st{m.stride(0), 0, 0, m.stride(1)};
        return tensor_ref<const bool>(m.data(), extents{m.extent(0), 1, 1, m.extent(1)}, st,
                                      m.space());
    }
    double scale() const { return 1.0 / std::sqrt(double(opt_.bi_dim / opt_.heads)); }

    /// The context of direction s (queries of stream s): (B, Nq, Dbi); saves o and lse.
    tensor_ref<const T> attend(nn::step_context<T>& cx, std::size_t s, tensor_ref<const T> q,
                               tensor_ref<const T> k, tensor_ref<const T> v,
                               const tensor_ref<const bool>& keep) {
        const index_t b = q.extent(0), lq = q.extent(1);
        const tensor_ref<T> c = cx.allocate(extents{b, lq, opt_.bi_dim});
        const tensor_ref<T> lse = cx.allocate(extents{b, opt_.heads, lq});
        ops::attention<T>(cx.op(path_), heads_of(q), heads_of(k), heads_of(v), heads_of(c), lse,
                          {.scale = scale()}, key_mask(keep));
        if (cx.training) dir_[s] = {q, k, v, c, lse};
        return c;
    }

    /// Backward of direction s: dc (B, Nq, Dbi) -> dq (B, Nq, Dbi), dk, dv (B, Nk, Dbi).
    void attend_backward(nn::step_context<T>& cx, std::size_t s, tensor_ref<const T> dc,
                         tensor_ref<const T>& dq, tensor_ref<const T>& dk,
                         tensor_ref<const T>& dv) {
        const saved_direction& d = dir_[s];
        const tensor_ref<T> gq = cx.allocate(d.q.extents());
        const tensor_ref<T> gk = cx.allocate(d.k.extents());
        const tensor_ref<T> gv = cx.allocate(d.v.extents());
        ops::attention_backward<T>(cx.op(path_), heads_of(d.q), heads_of(d.k), heads_of(d.v),
                                   heads_of(d.c), heads_of(nn::contiguous(cx, path_, dc)), d.lse,
                                   heads_of(gq), heads_of(gk), heads_of(gv), {.scale = scale()},
                                   key_mask(kp_[1 - s]));
        dq = gq;
        dk = gk;
        dv = gv;
    }

    /// y = x + w_s (x2 - x): x2 where stream s is present, x where it is absent.
    tensor_ref<const T> pass_absent(nn::step_context<T>& cx, const presence& p, std::size_t s,
                                    tensor_ref<const T> x, tensor_ref<const T> x2) const {
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> d = cx.allocate(x.extents());
        ops::binary<T>(op, ops::binary_kind::sub, x2, x, d);
        const tensor_ref<const T> dw =
            fusion::detail::zero_absent(cx, path_, p, s, tensor_ref<const T>(d));
        const tensor_ref<T> y = cx.allocate(x.extents());
        ops::add<T>(op, x, dw, y);
        return y;
    }

    struct saved_direction {
        tensor_ref<const T> q, k, v, c, lse;
    };

    co_attention_options opt_;
    std::array<detail::co_stream<T>, 2> streams_;
    std::string path_;
    // Saved by a training-mode forward.
    std::array<saved_direction, 2> dir_{};
    std::array<tensor_ref<const bool>, 2> kp_{};
    std::array<extents, 2> y_extents_{};
    presence p_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::fusion
