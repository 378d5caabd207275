#pragma once
/// \file
/// Flamingo's fusion blocks (Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot
/// Learning", NeurIPS 2022; references: lucidrains/flamingo-pytorch,
/// flamingo_pytorch/flamingo_pytorch.py and mlfoundations/open_flamingo,
/// open_flamingo/src/helpers.py; docs/fusion.md sections 4.4 and 4.5):
///   `gated_cross_attention`  GATED XATTN-DENSE: text tokens attend to media tokens through
///                            tanh-gated residual branches (identity at init), a fuser of
///                            arity 2 (text, media) -> text;
///   `perceiver_resampler`    a fixed number of learned latents attend to a variable number
///                            of media tokens (a layer: (B, n, D) -> (B, n_lat, D)).
/// Both are built from `nn::linear`, `nn::layer_norm` and the fused `ops::attention`
/// (the inner width heads * dim_head may differ from the model width, which
/// `nn::multi_head_attention` does not allow). Parameter names are OpenFlamingo's.

#include <array>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/attention.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

namespace detail {

/// A (B, L, H*dh) block of rows (row stride `rs`, unit column stride) starting at `data`, as
/// the (B, H, L, dh) heads view `ops::attention` takes (no copy).
template <class U>
tensor_ref<U> heads_of(U* data, index_t b, index_t l, index_t h, index_t dh, index_t rs,
                       memory_space space) {
    const std::array<index_t, 4> st{l * rs, dh, rs, 1};
    return tensor_ref<U>(data, extents{b, h, l, dh}, st, space);
}

/// Input gradients of `flamingo_attention::backward` (and `masked_cross_attention`'s):
/// the query input's (text) and the key/value input's (media).
template <compute_type T>
struct query_key_grads {
    tensor_ref<const T> dquery;
    tensor_ref<const T> dkv;
};

/// Input gradients of `perceiver_attention::backward`: media and latents.
template <compute_type T>
struct media_latent_grads {
    tensor_ref<const T> dmedia;
    tensor_ref<const T> dlatents;
};

/// The projections and attention shared by Flamingo's two attention modules (bias-free):
///   q = xq W_q^T (B, Lq, H*dh); [k, v] = xkv W_kv^T (B, Lk, 2*H*dh), k first;
///   o_h = softmax(q_h k_h^T / sqrt(dh), key keep-mask) v_h; out = concat_h(o_h) W_o^T.
/// Children `to_q` (H*dh, Dq), `to_kv` (2*H*dh, Dkv), `to_out` (Dout, H*dh), named in the
/// PARENT's namespace (visit is transparent). A query row with every key masked gets 0.
template <compute_type T>
class flamingo_attention {
public:
    flamingo_attention(index_t dim_q, index_t dim_kv, index_t dim_out, index_t heads,
                       index_t dim_head)
        : h_(checked_heads(heads, dim_head)),
          dh_(dim_head),
          to_q_(dim_q, heads * dim_head, false),
          to_kv_(dim_kv, 2 * heads * dim_head, false),
          to_out_(heads * dim_head, dim_out, false) {}

    template <class V>
    void visit(V& v) {
        v.child("to_q", to_q_);
        v.child("to_kv", to_kv_);
        v.child("to_out", to_out_);
    }
    void reset_parameters(philox_generator& g) {
        to_q_.reset_parameters(g);
        to_kv_.reset_parameters(g);
        to_out_.reset_parameters(g);
    }

    /// xq (B, Lq, Dq), xkv (B, Lk, Dkv), keep (B, Lk) bool or empty -> (B, Lq, Dout).
    tensor_ref<const T> forward(nn::step_context<T>& cx, std::string_view path,
                                tensor_ref<const T> xq, tensor_ref<const T> xkv,
                                tensor_ref<const bool> keep) {
        const index_t b = xq.extent(0), lq = xq.extent(1), lk = xkv.extent(1), in = h_ * dh_;
        const tensor_ref<const T> q = to_q_.forward(cx, xq);
        const tensor_ref<const T> kv = to_kv_.forward(cx, xkv);
        const tensor_ref<T> o = cx.allocate(extents{b, lq, in});
        const tensor_ref<T> lse = cx.allocate(extents{b, h_, lq});
        const tensor_ref<const bool> keep4 = keep_view(keep);
        const memory_space sp = q.space();
        ops::attention<T>(cx.op(path), heads_of(q.data(), b, lq, h_, dh_, in, sp),
                          heads_of(kv.data(), b, lk, h_, dh_, 2 * in, sp),
                          heads_of(kv.data() + in, b, lk, h_, dh_, 2 * in, sp),
                          heads_of(o.data(), b, lq, h_, dh_, in, sp), lse, desc(), keep4);
        if (cx.training) {
            q_ = q;
            kv_ = kv;
            o_ = o;
            lse_ = lse;
            keep_ = keep4;
            b_ = b;
            lq_ = lq;
            lk_ = lk;
        }
        return to_out_.forward(cx, o);
    }

    /// dy (B, Lq, Dout) -> {dxq, dxkv}; adds into every parameter gradient.
    query_key_grads<T> backward(nn::step_context<T>& cx, std::string_view path,
                                tensor_ref<const T> dy) {
        const index_t in = h_ * dh_;
        const tensor_ref<const T> d_o = to_out_.backward(cx, dy);
        const tensor_ref<T> dq = cx.allocate(extents{b_, lq_, in});
        const tensor_ref<T> dk = cx.allocate(extents{b_, lk_, in});
        const tensor_ref<T> dv = cx.allocate(extents{b_, lk_, in});
        const ops::op_context op = cx.op(path);
        const memory_space sp = q_.space();
        ops::attention_backward<T>(op, heads_of(q_.data(), b_, lq_, h_, dh_, in, sp),
                                   heads_of(kv_.data(), b_, lk_, h_, dh_, 2 * in, sp),
                                   heads_of(kv_.data() + in, b_, lk_, h_, dh_, 2 * in, sp),
                                   heads_of(o_.data(), b_, lq_, h_, dh_, in, sp),
                                   heads_of(d_o.data(), b_, lq_, h_, dh_, in, sp), lse_,
                                   heads_of(dq.data(), b_, lq_, h_, dh_, in, sp),
                                   heads_of(dk.data(), b_, lk_, h_, dh_, in, sp),
                                   heads_of(dv.data(), b_, lk_, h_, dh_, in, sp), desc(), keep_);
        const tensor_ref<T> dkv = cx.allocate(extents{b_, lk_, 2 * in});
        ops::concat<T>(op, -1, {dk, dv}, dkv);
        return {to_q_.backward(cx, dq), to_kv_.backward(cx, dkv)};
    }

    nn::linear<dyn, dyn, T>& to_q() noexcept { return to_q_; }
    nn::linear<dyn, dyn, T>& to_kv() noexcept { return to_kv_; }
    nn::linear<dyn, dyn, T>& to_out() noexcept { return to_out_; }

private:
    /// `heads`, after checking that heads and dim_head are positive (`value_error`).
    static index_t checked_heads(index_t heads, index_t dim_head) {
        if (heads < 1 || dim_head < 1)
            throw value_error("flamingo attention", "heads and dim_head must be positive, got " +
                                                        std::to_string(heads) + " and " +
                                                        std::to_string(dim_head));
        return heads;
    }
    ops::attention_desc desc() const { return {.scale = 1.0 / std::sqrt(double(dh_))}; }
    /// (B, Lk) as the broadcast (B, 1, 1, Lk) keep-mask, or empty.
    static tensor_ref<const bool> keep_view(const tensor_ref<const bool>& keep) {
        if (keep.data() == nullptr) return {};
        const std::array<index_t, 4> st{keep.stride(0), 0, 0, keep.stride(1)};
        return tensor_ref<const bool>(keep.data(), extents{keep.extent(0), 1, 1, keep.extent(1)},
                                      st, keep.space());
    }

    index_t h_;
    index_t dh_;
    nn::linear<dyn, dyn, T> to_q_;
    nn::linear<dyn, dyn, T> to_kv_;
    nn::linear<dyn, dyn, T> to_out_;
    tensor_ref<const T> q_{}, kv_{}, o_{}, lse_{};
    tensor_ref<const bool> keep_{};
    index_t b_ = 0, lq_ = 0, lk_ = 0;
};

/// `tanh(alpha) * w` as a (B or 1, 1, 1) gate for a (B, L, D) branch: alpha (1) a scalar
/// parameter, w the (B, 1, 1) presence weights or empty.
template <compute_type T>
tensor_ref<const T> tanh_gate(const nn::step_context<T>& cx, std::string_view path,
                              const nn::parameter<T>& alpha, tensor_ref<const T> w) {
    const ops::op_context op = cx.op(path);
    const tensor_ref<T> g = cx.allocate(extents{1});
    ops::unary<T>(op, ops::unary_kind::tanh, alpha.value, g);
    const tensor_ref<const T> g3 = tensor_ref<const T>(g).reshape(extents{1, 1, 1});
    if (w.data() == nullptr) return g3;
    const tensor_ref<T> gw = cx.allocate(w.extents());
    ops::binary<T>(op, ops::binary_kind::mul, w, g3, gw);
    return gw;
}

/// y = x + gate * branch (gate broadcast over (B, L, D)).
template <compute_type T>
tensor_ref<const T> gated_residual(const nn::step_context<T>& cx, std::string_view path,
                                   tensor_ref<const T> x, tensor_ref<const T> gate,
                                   tensor_ref<const T> branch) {
    const ops::op_context op = cx.op(path);
    const tensor_ref<T> y = cx.allocate(x.extents());
    ops::binary<T>(op, ops::binary_kind::mul, branch, gate, y);
    ops::add<T>(op, x, y, y);
    return y;
}

/// Backward of a gate on `branch`: alpha.grad += tanh'(alpha) * sum(dy * branch * w) and
/// returns d branch = dy * gate.
template <compute_type T>
tensor_ref<const T> gate_backward(const nn::step_context<T>& cx, std::string_view path,
                                  nn::parameter<T>& alpha, tensor_ref<const T> w,
                                  tensor_ref<const T> gate, tensor_ref<const T> dy,
                                  tensor_ref<const T> branch) {
    const ops::op_context op = cx.op(path);
    const tensor_ref<T> prod = cx.allocate(dy.extents());
    ops::binary<T>(op, ops::binary_kind::mul, dy, branch, prod);
    if (w.data() != nullptr) ops::binary<T>(op, ops::binary_kind::mul, prod, w, prod);
    const tensor_ref<T> s = cx.allocate(extents{1});
    ops::reduce<T>(op, ops::reduce_kind::sum, 0, prod.reshape(extents{prod.numel()}), s);
    ops::unary_backward<T>(op, ops::unary_kind::tanh, alpha.value, s, s);
    ops::add<T>(op, alpha.grad, s, alpha.grad);
    const tensor_ref<T> db = cx.allocate(dy.extents());
    ops::binary<T>(op, ops::binary_kind::mul, dy, gate, db);
    return db;
}

}  // namespace detail

/// Flamingo's feed-forward branch, `Sequential(LayerNorm(D), Linear(D, mult*D, bias=False),
/// GELU(), Linear(mult*D, D, bias=False))` (OpenFlamingo FeedForward): x (..., D) ->
/// (..., D) with exact (erf) GELU. Children `0` (LayerNorm, eps 1e-5), `1`, `3` (the linears),
/// as the Sequential's state_dict; PyTorch's init. A `differentiable_layer`.
template <compute_type T = float>
class flamingo_feed_forward {
public:
    using value_type = T;
    static constexpr bool preserves_width = true;

    explicit flamingo_feed_forward(index_t dim, index_t mult = 4)
        : norm_(dim), fc1_(dim, mult * dim, false), fc2_(mult * dim, dim, false) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("0", norm_);
        v.child("1", fc1_);
        v.child("3", fc2_);
    }
    void reset_parameters(philox_generator& g) {
        norm_.reset_parameters(g);
        fc1_.reset_parameters(g);
        fc2_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        const tensor_ref<const T> h = fc1_.forward(cx, norm_.forward(cx, x));
        const tensor_ref<T> a = cx.allocate(h.extents());
        ops::unary<T>(cx.op(path_), ops::unary_kind::gelu_erf, h, a);
        if (cx.training) hidden_ = h;
        return fc2_.forward(cx, a);
    }
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const tensor_ref<const T> da = fc2_.backward(cx, dy);
        const tensor_ref<T> dh = cx.allocate(da.extents());
        ops::unary_backward<T>(cx.op(path_), ops::unary_kind::gelu_erf, hidden_, da, dh);
        return norm_.backward(cx, fc1_.backward(cx, dh));
    }

    const std::string& path() const noexcept { return path_; }

private:
    nn::layer_norm<dyn, T> norm_;
    nn::linear<dyn, dyn, T> fc1_;
    nn::linear<dyn, dyn, T> fc2_;
    std::string path_;
    tensor_ref<const T> hidden_{};
};

/// Flamingo's MaskedCrossAttention, restricted to one media item per sample: text
/// x (B, T, D) attends to media (B, n, Dv):
///   out = to_out(attention(to_q(LN(x)), to_kv(media)))  (the media is not normalised).
/// Children `norm` (LayerNorm(D)), `to_q`, `to_kv`, `to_out` (bias-free). `forward(cx, x,
/// media, keep)` with keep (B, n) bool (true = real media token) or empty; `backward` ->
/// {dx, dmedia}.
template <compute_type T = float>
class masked_cross_attention {
public:
    using value_type = T;

    masked_cross_attention(index_t dim, index_t dim_media, index_t heads, index_t dim_head)
        : norm_(dim), core_(dim, dim_media, dim, heads, dim_head) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("norm", norm_);
        core_.visit(v);
    }
    void reset_parameters(philox_generator& g) {
        norm_.reset_parameters(g);
        core_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x,
                                tensor_ref<const T> media, tensor_ref<const bool> keep = {}) {
        return core_.forward(cx, path_, norm_.forward(cx, x), media, keep);
    }
    /// dy (B, T, D) -> {dx, dmedia}.
    detail::query_key_grads<T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const detail::query_key_grads<T> g = core_.backward(cx, path_, dy);
        return {norm_.backward(cx, g.dquery), g.dkv};
    }

    const std::string& path() const noexcept { return path_; }

private:
    nn::layer_norm<dyn, T> norm_;
    detail::flamingo_attention<T> core_;
    std::string path_;
};

/// Flamingo's GATED XATTN-DENSE block, a fuser of arity 2: {x (B, T, D) text, media
/// (B, n, Dv)} -> y (B, T, D):
///   x <- x + tanh(alpha_attn) * XAttn(LN(x), media)        (masked_cross_attention)
///   y  = x + tanh(alpha_ff)   * FF(x)                      (flamingo_feed_forward)
/// Parameters (OpenFlamingo GatedCrossAttentionBlock names, state_dict order): `attn_gate`
///   (1) and `ff_gate` (1), both 0 at init, so the block is EXACTLY the identity at init;
///   `attn.norm`, `attn.to_q` (H*dh, D), `attn.to_kv` (2*H*dh, Dv), `attn.to_out` (D, H*dh),
///   `ff.0` (LayerNorm), `ff.1` (D -> mult*D), `ff.3` (mult*D -> D); linears bias-free with
///   PyTorch's init. Defaults heads 8, dim_head 64, ff_mult 4 (Flamingo).
/// Media: one media item per sample; every text token attends to every media token that
///   `media_key_padding` (public; bool (B, n), true = real token, host; empty = none)
///   keeps. Flamingo's media_locations / only_attend_immediate_media (interleaved media) are
///   not modelled: the caller passes the media relevant to the text (docs deviation).
/// Missing modality (presence (B, 2), columns text, media): media absent for sample b =>
///   both gated branches are off for that sample (y_b = x_b exactly; no gradient reaches
///   the media); text absent => y_b = 0 (as `concat`'s zero rule) and dx_b = 0.
template <compute_type T = float>
class gated_cross_attention {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    gated_cross_attention(index_t dim, index_t dim_media, index_t heads = 8, index_t dim_head = 64,
                          index_t ff_mult = 4)
        : d_(dim), dv_(dim_media), attn_(dim, dim_media, heads, dim_head), ff_(dim, ff_mult) {
        attn_gate_.shape = extents{1};
        ff_gate_.shape = extents{1};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("attn_gate", attn_gate_);
        v.parameter("ff_gate", ff_gate_);
        v.child("attn", attn_);
        v.child("ff", ff_);
    }
    /// Gates 0; the rest PyTorch's init.
    void reset_parameters(philox_generator& g) {
        init::zeros{}(attn_gate_.value);
        init::zeros{}(ff_gate_.value);
        attn_.reset_parameters(g);
        ff_.reset_parameters(g);
    }

    /// {x (B, T, D), media (B, n, Dv)}, presence (B, 2) -> y (B, T, D) (workspace).
    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        const tensor_ref<const T>& x = xs[0];
        const tensor_ref<const T>& media = xs[1];
        nn::detail::check_sequence(path_, "gated_cross_attention text x", x, -1, d_);
        const index_t batch = x.extent(0);
        nn::detail::check_sequence(path_, "gated_cross_attention media", media, batch, dv_);
        check_presence(path_, p, batch, 2);
        detail::check_key_padding(path_, "gated_cross_attention media_key_padding",
                                  media_key_padding, batch, media.extent(1));
        w_ = p.data() == nullptr ? tensor_ref<const T>{}
                                 : detail::presence_weights(cx, path_, p, 1, 3);
        gate_attn_ = detail::tanh_gate(cx, path_, attn_gate_, w_);
        gate_ff_ = detail::tanh_gate(cx, path_, ff_gate_, w_);
        const tensor_ref<const T> a = attn_.forward(cx, x, media, media_key_padding);
        const tensor_ref<const T> x1 = detail::gated_residual(cx, path_, x, gate_attn_, a);
        const tensor_ref<const T> f = ff_.forward(cx, x1);
        const tensor_ref<const T> y = detail::gated_residual(cx, path_, x1, gate_ff_, f);
        saved_ = cx.training;
        if (saved_) {
            p_ = p;
            a_ = a;
            f_ = f;
        }
        return detail::zero_absent(cx, path_, p, 0, y);
    }

    /// dy (B, T, D) -> {dx (B, T, D), dmedia (B, n, Dv)}; adds into every parameter gradient.
    views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "gated_cross_attention", saved_, a_.extents(), dy);
        const tensor_ref<const T> d = detail::zero_absent(cx, path_, p_, 0, dy);
        const tensor_ref<const T> df =
            detail::gate_backward(cx, path_, ff_gate_, w_, gate_ff_, d, f_);
        const tensor_ref<const T> dx1 =
            nn::detail::residual_add<T>(cx, path_, d, ff_.backward(cx, df));
        const tensor_ref<const T> da =
            detail::gate_backward(cx, path_, attn_gate_, w_, gate_attn_, dx1, a_);
        const detail::query_key_grads<T> g = attn_.backward(cx, da);
        return {nn::detail::residual_add<T>(cx, path_, dx1, g.dquery), g.dkv};
    }

    nn::parameter<T>& attn_gate() noexcept { return attn_gate_; }
    nn::parameter<T>& ff_gate() noexcept { return ff_gate_; }
    masked_cross_attention<T>& attn() noexcept { return attn_; }
    flamingo_feed_forward<T>& ff() noexcept { return ff_; }
    const std::string& path() const noexcept { return path_; }

    /// Media key-padding mask used by every forward: bool (B, n), true = real media token
    /// (host memory); empty = none. A sample with every media token masked gets no attention
    /// update (its attention branch is 0).
    tensor_ref<const bool> media_key_padding{};

private:
    index_t d_;
    index_t dv_;
    nn::parameter<T> attn_gate_;
    nn::parameter<T> ff_gate_;
    masked_cross_attention<T> attn_;
    flamingo_feed_forward<T> ff_;
    std::string path_;
    // Saved by forward (the gates also serve backward).
    tensor_ref<const T> w_{}, gate_attn_{}, gate_ff_{}, a_{}, f_{};
    presence p_{};
    bool saved_ = false;
};

/// One Perceiver Resampler attention (OpenFlamingo PerceiverAttention): latents L
/// (B, n_lat, D) attend to [LN_media(X); LN_latents(L)] (media tokens, then the latents):
///   q = to_q(LN_latents(L)); [k, v] = to_kv([LN_media(X); LN_latents(L)]); out = to_out(...)
/// Children `norm_media`, `norm_latents`, `to_q`, `to_kv`, `to_out` (bias-free).
/// `forward(cx, x, latents, keep)` with keep (B, n + n_lat) or empty; backward ->
/// {dx, dlatents}.
template <compute_type T = float>
class perceiver_attention {
public:
    using value_type = T;

    perceiver_attention(index_t dim, index_t heads, index_t dim_head)
        : norm_media_(dim), norm_latents_(dim), core_(dim, dim, dim, heads, dim_head) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("norm_media", norm_media_);
        v.child("norm_latents", norm_latents_);
        core_.visit(v);
    }
    void reset_parameters(philox_generator& g) {
        norm_media_.reset_parameters(g);
        norm_latents_.reset_parameters(g);
        core_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x,
                                tensor_ref<const T> latents, tensor_ref<const bool> keep = {}) {
        const tensor_ref<const T> xn = norm_media_.forward(cx, x);
        const tensor_ref<const T> ln = norm_latents_.forward(cx, latents);
        n_ = x.extent(1);
        const tensor_ref<T> kv_in =
            cx.allocate(extents{x.extent(0), n_ + latents.extent(1), x.extent(2)});
        ops::concat<T>(cx.op(path_), 1, {xn, ln}, kv_in);
        return core_.forward(cx, path_, ln, kv_in, keep);
    }
    /// dy (B, n_lat, D) -> {dmedia (B, n, D), dlatents (B, n_lat, D)}.
    detail::media_latent_grads<T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const detail::query_key_grads<T> g = core_.backward(cx, path_, dy);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> dln_kv = g.dkv.narrow(1, n_, g.dkv.extent(1) - n_);
        const tensor_ref<T> dln = cx.allocate(g.dquery.extents());
        ops::add<T>(op, g.dquery, dln_kv, dln);
        const tensor_ref<const T> dxn = nn::contiguous(cx, path_, g.dkv.narrow(1, 0, n_));
        return {norm_media_.backward(cx, dxn), norm_latents_.backward(cx, dln)};
    }

private:
    nn::layer_norm<dyn, T> norm_media_;
    nn::layer_norm<dyn, T> norm_latents_;
    detail::flamingo_attention<T> core_;
    std::string path_;
    index_t n_ = 0;
};

/// Flamingo's Perceiver Resampler (after Jaegle et al., Perceiver, ICML 2021), a
/// `differentiable_layer`: media tokens x (B, n, D) -> (B, n_lat, D):
///   L = latents tiled over the batch; per layer i:
///     L <- L + PerceiverAttention_i(X, L);  L <- L + FF_i(L)
///   y = LN(L).
/// Parameters (OpenFlamingo PerceiverResampler names, state_dict order): `latents`
///   (n_lat, D) ~ N(0, 1); `layers.<i>.0.*` (perceiver_attention), `layers.<i>.1.*`
///   (flamingo_feed_forward); `norm` (final LayerNorm). Defaults: 64 latents, heads 8,
///   dim_head 64, ff_mult 4 (depth is required).
/// Variable lengths: `key_padding` (public; bool (B, n), true = real media token, host;
///   empty = none) masks padded media tokens as keys in every layer (the latents are
///   always kept, so no row is ever fully masked).
/// Deviations: one media item per sample (OpenFlamingo's (B, T, F, n, D) inputs, frame and
///   media-time embeddings are left to the caller: flatten T into the batch and add the
///   embeddings in a stem).
template <compute_type T = float>
class perceiver_resampler {
public:
    using value_type = T;

    perceiver_resampler(index_t dim, index_t depth, index_t num_latents = 64, index_t heads = 8,
                        index_t dim_head = 64, index_t ff_mult = 4)
        : d_(dim), n_lat_(num_latents), norm_(dim) {
        if (depth < 1 || num_latents < 1)
            throw value_error("perceiver_resampler",
                              "depth and num_latents must be positive, got " +
                                  std::to_string(depth) + " and " + std::to_string(num_latents));
        for (index_t i = 0; i < depth; ++i)
            layers_.push_back(block{perceiver_attention<T>(dim, heads, dim_head),
                                    flamingo_feed_forward<T>(dim, ff_mult)});
        latents_.shape = extents{num_latents, dim};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("latents", latents_);
        layer_table table{&layers_};
        v.child("layers", table);
        v.child("norm", norm_);
    }
    /// latents ~ N(0, 1), then the layers and the norm (PyTorch's init).
    void reset_parameters(philox_generator& g) {
        init::normal{}(g, latents_.value);
        for (auto& b : layers_) {
            b.attn.reset_parameters(g);
            b.ff.reset_parameters(g);
        }
        norm_.reset_parameters(g);
    }

    /// x (B, n, D) -> (B, n_lat, D) (workspace). Throws `shape_error` naming the path.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        nn::detail::check_sequence(path_, "perceiver_resampler input", x, -1, d_);
        const index_t batch = x.extent(0);
        detail::check_key_padding(path_, "perceiver_resampler key_padding", key_padding, batch,
                                  x.extent(1));
        const tensor_ref<const bool> keep =
            detail::key_keep(cx, key_padding, {}, 0, batch, x.extent(1), n_lat_);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> l0 = cx.allocate(extents{batch, n_lat_, d_});
        ops::copy(op, tensor_ref<const T>(latents_.value).expand(l0.extents()), l0);
        tensor_ref<const T> l = l0;
        for (auto& b : layers_) {
            l = nn::detail::residual_add<T>(cx, path_, l, b.attn.forward(cx, x, l, keep));
            l = nn::detail::residual_add<T>(cx, path_, l, b.ff.forward(cx, l));
        }
        saved_ = cx.training;
        if (saved_) batch_ = batch;
        return norm_.forward(cx, l);
    }

    /// dy (B, n_lat, D) -> dx (B, n, D); adds into every parameter gradient.
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, "perceiver_resampler backward",
                              "a training-mode forward first", "no saved forward");
        const extents ye{batch_, n_lat_, d_};
        if (dy.extents() != ye)
            throw shape_error(path_, "perceiver_resampler output gradient",
                              "shape " + ye.to_string(), "shape " + dy.extents().to_string());
        tensor_ref<const T> dl = norm_.backward(cx, dy);
        tensor_ref<const T> dx{};
        for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
            dl = nn::detail::residual_add<T>(cx, path_, dl, it->ff.backward(cx, dl));
            const detail::media_latent_grads<T> g = it->attn.backward(cx, dl);
            dl = nn::detail::residual_add<T>(cx, path_, dl, g.dlatents);
            dx = dx.data() == nullptr ? g.dmedia
                                      : nn::detail::residual_add<T>(cx, path_, dx, g.dmedia);
        }
        ops::reduce<T>(cx.op(path_), ops::reduce_kind::sum, 0, dl, latents_.grad, true);
        return dx;
    }

    nn::parameter<T>& latents() noexcept { return latents_; }
    index_t num_latents() const noexcept { return n_lat_; }
    const std::string& path() const noexcept { return path_; }

    /// Media key-padding mask used by every forward: bool (B, n), true = real token (host);
    /// empty = none.
    tensor_ref<const bool> key_padding{};

private:
    struct block {
        perceiver_attention<T> attn;
        flamingo_feed_forward<T> ff;
        template <class V>
        void visit(V& v) {
            v.child("0", attn);
            v.child("1", ff);
        }
    };
    /// Names the blocks `layers.<i>.{0,1}` (ModuleList of ModuleList([attn, ff])).
    struct layer_table {
        std::vector<block>* blocks;
        template <class V>
        void visit(V& v) {
            for (std::size_t i = 0; i < blocks->size(); ++i)
                v.child(std::to_string(i), (*blocks)[i]);
        }
    };

    index_t d_;
    index_t n_lat_;
    nn::parameter<T> latents_;
    std::vector<block> layers_;
    nn::layer_norm<dyn, T> norm_;
    std::string path_;
    index_t batch_ = 0;
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::fusion
