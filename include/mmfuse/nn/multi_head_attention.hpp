#pragma once
/// \file
/// `nn::multi_head_attention`: PyTorch's `nn.MultiheadAttention(E, H, bias, kdim, vdim,
/// batch_first=True)` (Vaswani et al., "Attention is all you need", 2017), lowered to
/// `ops::matmul`, `ops::bias_add`, `ops::softmax` (+ backward), `ops::reduce` and `ops::copy`;
/// `nn::self_attention`, its single-input wrapper (a `differentiable_layer`).
///
/// MASK POLARITY IS THE INVERSE OF PYTORCH'S: in mmfuse a boolean mask entry `true` means
/// "this key may be attended to" (KEEP); in `nn.MultiheadAttention` `true` means "ignore".
/// A PyTorch `key_padding_mask` / boolean `attn_mask` m corresponds to mmfuse's `~m`.
///
/// Deviations from PyTorch (documented contract):
///   - a query row whose keys are all masked gets attention weights 0 (PyTorch: NaN), so its
///     pre-projection output is 0, the module output is `out_proj.bias`, and no gradient flows
///     from that row into query, key or value (DESIGN "Masks"); an additive mask of -inf on
///     every kept key of a row behaves the same way;
///   - no attention dropout (PyTorch's `dropout` argument must be 0 here), no `add_bias_kv`,
///     no `add_zero_attn`, batch-first only, no unbatched (L, E) inputs;
///   - need_weights=False semantics: the weights are not averaged over heads; the per-head
///     probabilities (B, H, Lq, Lk) of the last forward are available from
///     `attention_weights()`;
///   - `causal` is a real mask here (PyTorch's `is_causal` is only a hint): query i sees keys
///     j <= i (top-left aligned, as `F.scaled_dot_product_attention(is_causal=True)` when
///     Lq != Lk).

#include <array>
#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/ops/softmax.hpp"

namespace mmfuse::inline v0::nn {

/// The masks of one attention call; every member is optional (an empty view is absent).
/// Boolean entries are `true` = KEEP (the inverse of PyTorch). Shapes for query length Lq,
/// key length Lk, batch B and H heads:
///   key_padding  (B, Lk) bool: false marks a padded key of that sample
///   attn         (Lq, Lk) or (B*H, Lq, Lk) bool: false forbids that query/key pair
///                (the (B*H) axis is batch-major, head-minor, as in PyTorch)
///   attn_bias    (Lq, Lk) or (B*H, Lq, Lk) additive float mask added to the scaled scores
///                (PyTorch's float `attn_mask`; -inf forbids a pair)
///   causal       query i may only attend to keys j <= i
/// Any strides.
template <compute_type T>
struct attention_masks {
    tensor_ref<const bool> key_padding{};
    tensor_ref<const bool> attn{};
    tensor_ref<const T> attn_bias{};
    bool causal = false;
};

/// Input gradients of a multi-input attention backward: dquery (B, Lq, E), dkey (B, Lk, kdim),
/// dvalue (B, Lk, vdim), in the workspace.
template <compute_type T>
struct attention_grads {
    tensor_ref<const T> dquery;
    tensor_ref<const T> dkey;
    tensor_ref<const T> dvalue;
};

namespace detail {

/// y (N, O) = x (N, I) W^T (+ b): one input projection. y may have any row stride.
template <compute_type T>
void project(const ops::op_context& op, tensor_ref<const std::type_identity_t<T>> x,
             tensor_ref<const std::type_identity_t<T>> w,
             tensor_ref<const std::type_identity_t<T>> b, tensor_ref<T> y) {
    ops::matmul(op, x, w, y, {.transpose_b = true});
    if (b.data() != nullptr) ops::bias_add(op, tensor_ref<const T>(y), b, y);
}

/// Backward of `project`: dx = dy W (overwritten), dW += dy^T x, db += sum over rows of dy.
template <compute_type T>
void project_backward(const ops::op_context& op, tensor_ref<const std::type_identity_t<T>> dy,
                      tensor_ref<const std::type_identity_t<T>> x,
                      tensor_ref<const std::type_identity_t<T>> w, tensor_ref<T> dw,
                      tensor_ref<T> db, tensor_ref<T> dx) {
    ops::matmul(op, dy, w, dx);
    ops::matmul(op, dy, x, dw, {.transpose_a = true, .beta = 1.0});
    if (db.data() != nullptr) ops::reduce(op, ops::reduce_kind::sum, 0, dy, db, true);
}

/// Head `h` of a (B*L, E) row view (unit column stride, any row stride) as a (B, L, Dh)
/// view: features [h*Dh, (h+1)*Dh) of every token.
template <class T>
tensor_ref<T> head_view(const tensor_ref<T>& rows, index_t b, index_t l, index_t h, index_t dh) {
    const index_t rs = rows.stride(0), cs = rows.stride(1);
    const std::array<index_t, 3> st{l * rs, rs, cs};
    return tensor_ref<T>(rows.data() + h * dh * cs, extents{b, l, dh}, st, rows.space());
}

/// Throws `shape_error` (module `path`, operand `what_prefix` + `what`) unless x is
/// (B, L, f), with batch `b` when b >= 0. Builds no string unless it throws.
template <class T>
void check_sequence(std::string_view path, std::string_view what, const tensor_ref<T>& x, index_t b,
                    index_t f, std::string_view what_prefix = {}) {
    if (x.rank() == 3 && (b < 0 || x.extent(0) == b) && x.extent(2) == f) return;
    throw shape_error(path, std::string(what_prefix) + std::string(what),
                      "shape (" + (b < 0 ? std::string("B") : std::to_string(b)) + ", L, " +
                          std::to_string(f) + ")",
                      "shape " + x.extents().to_string());
}

/// A (B*H, Lq, Lk) view as (B, H, Lq, Lk) (any strides), or an (Lq, Lk) view as is.
template <class T>
tensor_ref<T> split_batch_heads(const tensor_ref<T>& m, index_t h) {
    if (m.rank() != 3) return m;
    const std::array<index_t, 4> st{h * m.stride(0), m.stride(0), m.stride(1), m.stride(2)};
    return tensor_ref<T>(m.data(),
                         extents{h == 0 ? 0 : m.extent(0) / h, h, m.extent(1), m.extent(2)}, st,
                         m.space());
}

}  // namespace detail

/// Multi-head scaled dot-product attention, `torch.nn.MultiheadAttention(embed_dim=E,
/// num_heads=H, dropout=0, bias, kdim, vdim, batch_first=True)`.
///   query (B, Lq, E), key (B, Lk, kdim), value (B, Lk, vdim) -> output (B, Lq, E)
///   q = query W_q^T + b_q, k = key W_k^T + b_k, v = value W_v^T + b_v; per head h (features
///   [h*Dh, (h+1)*Dh), Dh = E/H): P_h = softmax(q_h k_h^T / sqrt(Dh) + attn_bias, masks),
///   o_h = P_h v_h; output = concat_h(o_h) W_o^T + b_o.
/// Parameters (PyTorch names and layout; visit order as PyTorch's state_dict):
///   kdim == vdim == E: `in_proj_weight` (3E, E) = [W_q; W_k; W_v], xavier_uniform on the
///                      packed matrix as one tensor (bound sqrt(6 / 4E));
///   else:              `q_proj_weight` (E, E), `k_proj_weight` (E, kdim), `v_proj_weight`
///                      (E, vdim), each xavier_uniform;
///   `in_proj_bias` (3E) = 0 and `out_proj.bias` (E) = 0 (when bias); `out_proj.weight` (E, E)
///   keeps nn.Linear's default init (PyTorch's `_reset_parameters` does not touch it).
/// See the file comment for the mask polarity (true = KEEP) and the deviations from PyTorch.
/// A multi-input module: `forward`/`backward` (cross attention) and `forward_self`/
/// `backward_self` (query = key = value = x, one packed projection, dx summed).
template <index_t E = dyn, index_t H = dyn, compute_type T = float>
class multi_head_attention {
    static_assert(E == dyn || H == dyn || (H > 0 && E % H == 0),
                  "multi_head_attention: embed_dim must be divisible by num_heads");

public:
    using value_type = T;
    static constexpr index_t embed_features = E;

    /// `kdim` / `vdim` default (dyn) to E; `bias` adds in_proj_bias and out_proj.bias.
    /// Throws `shape_error` unless H >= 1 divides E and kdim, vdim >= 1.
    explicit multi_head_attention(dim<E> embed_dim = {}, dim<H> num_heads = {}, index_t kdim = dyn,
                                  index_t vdim = dyn, bool bias = true)
        : e_(embed_dim),
          h_(num_heads),
          kdim_(kdim == dyn ? embed_dim.value() : kdim),
          vdim_(vdim == dyn ? embed_dim.value() : vdim),
          bias_(bias),
          packed_(kdim_ == e_.value() && vdim_ == e_.value()),
          out_proj_(embed_dim, embed_dim, bias) {
        const index_t e = e_.value(), h = h_.value();
        if (h < 1 || e % h != 0)
            throw shape_error("multi_head_attention", "num_heads",
                              "a positive divisor of embed_dim " + std::to_string(e),
                              std::to_string(h) + " heads");
        if (kdim_ < 1 || vdim_ < 1)
            throw shape_error("multi_head_attention", "kdim / vdim", "positive widths",
                              "kdim " + std::to_string(kdim_) + ", vdim " + std::to_string(vdim_));
        if (packed_) {
            in_proj_weight_.shape = extents{3 * e, e};
        } else {
            q_proj_weight_.shape = extents{e, e};
            k_proj_weight_.shape = extents{e, kdim_};
            v_proj_weight_.shape = extents{e, vdim_};
        }
        if (bias_) in_proj_bias_.shape = extents{3 * e};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if (packed_) {
            v.parameter("in_proj_weight", in_proj_weight_);
        } else {
            v.parameter("q_proj_weight", q_proj_weight_);
            v.parameter("k_proj_weight", k_proj_weight_);
            v.parameter("v_proj_weight", v_proj_weight_);
        }
        if (bias_) v.parameter("in_proj_bias", in_proj_bias_);
        v.child("out_proj", out_proj_);
    }

    /// PyTorch's order: out_proj is built (default Linear init) before `_reset_parameters`
    /// draws the xavier input projections and zeroes both biases.
    void reset_parameters(philox_generator& g) {
        out_proj_.reset_parameters(g);
        if (packed_) {
            init::xavier_uniform{}(g, in_proj_weight_.value);
        } else {
            init::xavier_uniform{}(g, q_proj_weight_.value);
            init::xavier_uniform{}(g, k_proj_weight_.value);
            init::xavier_uniform{}(g, v_proj_weight_.value);
        }
        if (bias_) {
            init::zeros{}(in_proj_bias_.value);
            init::zeros{}(out_proj_.bias().value);
        }
    }

    /// Cross attention: query (B, Lq, E), key (B, Lk, kdim), value (B, Lk, vdim) ->
    /// (B, Lq, E) in the workspace. Throws `shape_error` naming the module path, the operand
    /// and both shapes.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> query,
                                tensor_ref<const T> key, tensor_ref<const T> value,
                                const attention_masks<T>& masks = {}) {
        const index_t e = e_.value();
        check_input("query", query, -1, e);
        const index_t b = query.extent(0), lq = query.extent(1);
        check_input("key", key, b, kdim_);
        const index_t lk = key.extent(1);
        if (value.rank() != 3 || value.extent(0) != b || value.extent(1) != lk ||
            value.extent(2) != vdim_)
            throw shape_error(path_, "multi_head_attention value",
                              "shape " + extents{b, lk, vdim_}.to_string() +
                                  " (batch and length of key " + key.extents().to_string() + ")",
                              "shape " + value.extents().to_string());
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> q_in = as_rows(contiguous(cx, path_, query));
        const tensor_ref<const T> k_in = as_rows(contiguous(cx, path_, key));
        const tensor_ref<const T> v_in = as_rows(contiguous(cx, path_, value));
        const tensor_ref<T> q = cx.allocate(extents{b * lq, e});
        const tensor_ref<T> k = cx.allocate(extents{b * lk, e});
        const tensor_ref<T> v = cx.allocate(extents{b * lk, e});
        for (int i = 0; i < 3; ++i)
            detail::project(op, i == 0 ? q_in : (i == 1 ? k_in : v_in), weight(i).value, bias(i),
                            i == 0 ? q : (i == 1 ? k : v));
        const tensor_ref<const T> y = attend(cx, b, lq, lk, q, k, v, masks);
        if (cx.training) {
            mode_ = saved_mode::cross;
            q_in_ = q_in;
            k_in_ = k_in;
            v_in_ = v_in;
            key_extents_ = key.extents();
            value_extents_ = value.extents();
        }
        return y;
    }

    /// Backward of `forward`: dout (B, Lq, E) -> {dquery, dkey, dvalue}; adds into every
    /// parameter gradient.
    attention_grads<T> backward(step_context<T>& cx, tensor_ref<const T> dout) {
        check_saved(saved_mode::cross, "backward (after forward)");
        const index_t e = e_.value();
        const tensor_ref<T> dq = cx.allocate(extents{b_ * lq_, e});
        const tensor_ref<T> dk = cx.allocate(extents{b_ * lk_, e});
        const tensor_ref<T> dv = cx.allocate(extents{b_ * lk_, e});
        attend_backward(cx, dout, dq, dk, dv);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> dquery = cx.allocate(extents{b_, lq_, e});
        const tensor_ref<T> dkey = cx.allocate(key_extents_);
        const tensor_ref<T> dvalue = cx.allocate(value_extents_);
        for (int i = 0; i < 3; ++i)
            detail::project_backward<T>(op, i == 0 ? dq : (i == 1 ? dk : dv),
                                        i == 0 ? q_in_ : (i == 1 ? k_in_ : v_in_), weight(i).value,
                                        weight(i).grad, bias_grad(i),
                                        as_rows(i == 0 ? dquery : (i == 1 ? dkey : dvalue)));
        return {dquery, dkey, dvalue};
    }

    /// Self attention: query = key = value = x (B, L, E) -> (B, L, E), with one packed
    /// (B*L, E) x (E, 3E) projection. Needs kdim == vdim == E (else `shape_error`).
    tensor_ref<const T> forward_self(step_context<T>& cx, tensor_ref<const T> x,
                                     const attention_masks<T>& masks = {}) {
        const index_t e = e_.value();
        if (!packed_)
            throw shape_error(path_, "multi_head_attention self attention",
                              "kdim == vdim == embed_dim " + std::to_string(e),
                              "kdim " + std::to_string(kdim_) + ", vdim " + std::to_string(vdim_));
        check_input("input", x, -1, e);
        const index_t b = x.extent(0), l = x.extent(1);
        const tensor_ref<const T> x_in = as_rows(contiguous(cx, path_, x));
        const tensor_ref<T> qkv = cx.allocate(extents{b * l, 3 * e});
        detail::project(cx.op(path_), x_in, tensor_ref<const T>(in_proj_weight_.value),
                        bias_ ? tensor_ref<const T>(in_proj_bias_.value) : tensor_ref<const T>{},
                        qkv);
        const tensor_ref<const T> y = attend(cx, b, l, l, qkv.narrow(1, 0, e), qkv.narrow(1, e, e),
                                             qkv.narrow(1, 2 * e, e), masks);
        if (cx.training) {
            mode_ = saved_mode::self;
            q_in_ = x_in;
        }
        return y;
    }

    /// Backward of `forward_self`: dy (B, L, E) -> dx (B, L, E) (the sum of the query, key
    /// and value gradients, from one packed matmul); adds into every parameter gradient.
    tensor_ref<const T> backward_self(step_context<T>& cx, tensor_ref<const T> dy) {
        check_saved(saved_mode::self, "backward_self (after forward_self)");
        const index_t e = e_.value();
        const tensor_ref<T> dqkv = cx.allocate(extents{b_ * lq_, 3 * e});
        attend_backward(cx, dy, dqkv.narrow(1, 0, e), dqkv.narrow(1, e, e),
                        dqkv.narrow(1, 2 * e, e));
        const tensor_ref<T> dx = cx.allocate(extents{b_, lq_, e});
        detail::project_backward<T>(cx.op(path_), dqkv, q_in_, in_proj_weight_.value,
                                    in_proj_weight_.grad,
                                    bias_ ? in_proj_bias_.grad : tensor_ref<T>{}, as_rows(dx));
        return dx;
    }

    /// Per-head attention probabilities (B, H, Lq, Lk) of the last forward (valid until the
    /// workspace is reset); not averaged over heads.
    tensor_ref<const T> attention_weights() const noexcept { return probs_; }

    index_t embed_dim() const noexcept { return e_.value(); }
    index_t num_heads() const noexcept { return h_.value(); }
    index_t head_dim() const noexcept { return e_.value() / h_.value(); }
    index_t kdim() const noexcept { return kdim_; }
    index_t vdim() const noexcept { return vdim_; }
    /// True when the input projections are one packed `in_proj_weight` (kdim == vdim == E).
    bool packed() const noexcept { return packed_; }
    linear<E, E, T>& out_proj() noexcept { return out_proj_; }
    const std::string& path() const noexcept { return path_; }

private:
    enum class saved_mode { none, cross, self };

    /// W_q, W_k or W_v (i = 0, 1, 2): a row block of in_proj_weight or its own parameter.
    parameter<T> weight(int i) {
        if (!packed_) return i == 0 ? q_proj_weight_ : (i == 1 ? k_proj_weight_ : v_proj_weight_);
        const index_t e = e_.value();
        return {extents{e, e}, in_proj_weight_.value.narrow(0, i * e, e),
                in_proj_weight_.grad.narrow(0, i * e, e)};
    }
    tensor_ref<const T> bias(int i) const {
        if (!bias_) return {};
        return in_proj_bias_.value.narrow(0, i * e_.value(), e_.value());
    }
    tensor_ref<T> bias_grad(int i) const {
        if (!bias_) return {};
        return in_proj_bias_.grad.narrow(0, i * e_.value(), e_.value());
    }

    /// Checks a (B, L, F) input (B = -1: any batch).
    void check_input(std::string_view name, const tensor_ref<const T>& x, index_t b,
                     index_t f) const {
        detail::check_sequence(path_, name, x, b, f, "multi_head_attention ");
    }

    void check_saved(saved_mode want, std::string_view what) const {
        if (mode_ != want)
            throw shape_error(path_, "multi_head_attention " + std::string(what),
                              "a training-mode forward of the same kind first",
                              "no matching saved forward");
    }

    /// Checks a boolean or additive attention mask: (Lq, Lk) or (B*H, Lq, Lk).
    template <class M>
    void check_attn_mask(std::string_view name, const tensor_ref<M>& m, index_t b, index_t lq,
                         index_t lk) const {
        const extents two{lq, lk}, three{b * h_.value(), lq, lk};
        if (m.extents() == two || m.extents() == three) return;
        throw shape_error(path_, "multi_head_attention " + std::string(name),
                          "shape " + two.to_string() + " or " + three.to_string(),
                          "shape " + m.extents().to_string());
    }

    /// The boolean keep-masks for scores (B, H, Lq, Lk), as broadcast views of the caller's
    /// memory (no copy): key_padding (B, Lk) as (B, 1, 1, Lk) and the attention mask (Lq, Lk)
    /// or (B*H, Lq, Lk) as (B, H, Lq, Lk); an absent mask is an empty view. `ops::softmax`
    /// ANDs them with each other and with the causal rule.
    std::array<tensor_ref<const bool>, 2> keep_masks(const attention_masks<T>& m, index_t b,
                                                     index_t lq, index_t lk) const {
        const index_t h = h_.value();
        const extents full{b, h, lq, lk};
        std::array<tensor_ref<const bool>, 2> keep{};
        if (m.key_padding.data() != nullptr) {
            if (m.key_padding.extents() != extents{b, lk})
                throw shape_error(path_, "multi_head_attention key_padding mask",
                                  "shape " + extents{b, lk}.to_string() + " (batch, keys)",
                                  "shape " + m.key_padding.extents().to_string());
            const std::array<index_t, 4> st{m.key_padding.stride(0), 0, 0, m.key_padding.stride(1)};
            keep[0] = tensor_ref<const bool>(m.key_padding.data(), extents{b, 1, 1, lk}, st,
                                             m.key_padding.space())
                          .expand(full);
        }
        if (m.attn.data() != nullptr) {
            check_attn_mask("attn mask", m.attn, b, lq, lk);
            keep[1] = detail::split_batch_heads(m.attn, h).expand(full);
        }
        return keep;
    }

    /// Scores, masked softmax and the weighted sum of values for projected q (B*Lq, E),
    /// k, v (B*Lk, E) (row views, any row stride), then out_proj. Saves what backward needs.
    tensor_ref<const T> attend(step_context<T>& cx, index_t b, index_t lq, index_t lk,
                               tensor_ref<const T> q, tensor_ref<const T> k, tensor_ref<const T> v,
                               const attention_masks<T>& masks) {
        const index_t e = e_.value(), h = h_.value(), dh = e / h;
        const ops::op_context op = cx.op(path_);
        const extents full{b, h, lq, lk};
        const tensor_ref<T> s = cx.allocate(full);
        const bool additive = masks.attn_bias.data() != nullptr;
        if (additive) {
            check_attn_mask("attn_bias mask", masks.attn_bias, b, lq, lk);
            ops::copy(op, detail::split_batch_heads(masks.attn_bias, h).expand(full), s);
        }
        const double scale = 1.0 / std::sqrt(double(dh));
        for (index_t hh = 0; hh < h; ++hh)
            ops::matmul(op, detail::head_view(q, b, lq, hh, dh),
                        detail::head_view(k, b, lk, hh, dh), s.select(1, hh),
                        {.transpose_b = true, .alpha = scale, .beta = additive ? 1.0 : 0.0});
        const std::array<tensor_ref<const bool>, 2> keep = keep_masks(masks, b, lq, lk);
        ops::softmax(op, tensor_ref<const T>(s), keep[0], keep[1], s, {.causal = masks.causal});
        const tensor_ref<T> o = cx.allocate(extents{b, lq, e});
        const tensor_ref<T> o2 = as_rows(o);
        for (index_t hh = 0; hh < h; ++hh)
            ops::matmul(op, tensor_ref<const T>(s.select(1, hh)),
                        detail::head_view(v, b, lk, hh, dh), detail::head_view(o2, b, lq, hh, dh));
        probs_ = s;
        mode_ = saved_mode::none;
        if (cx.training) {
            q_ = q;
            k_ = k;
            v_ = v;
            b_ = b;
            lq_ = lq;
            lk_ = lk;
        }
        return out_proj_.forward(cx, o);
    }

    /// Backward through out_proj, the weighted sum, the softmax and the scores: writes the
    /// gradients of the projected q, k, v into dq (B*Lq, E), dk, dv (B*Lk, E) (row views).
    void attend_backward(step_context<T>& cx, tensor_ref<const T> dout, tensor_ref<T> dq,
                         tensor_ref<T> dk, tensor_ref<T> dv) {
        const index_t e = e_.value(), h = h_.value(), dh = e / h;
        if (dout.extents() != extents{b_, lq_, e})
            throw shape_error(path_, "multi_head_attention output gradient",
                              "shape " + extents{b_, lq_, e}.to_string(),
                              "shape " + dout.extents().to_string());
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> d_o = as_rows(out_proj_.backward(cx, dout));
        const tensor_ref<T> dp = cx.allocate(extents{b_, h, lq_, lk_});
        for (index_t hh = 0; hh < h; ++hh) {
            const tensor_ref<const T> doh = detail::head_view(d_o, b_, lq_, hh, dh);
            ops::matmul(op, doh, detail::head_view(v_, b_, lk_, hh, dh), dp.select(1, hh),
                        {.transpose_b = true});
            ops::matmul(op, probs_.select(1, hh), doh, detail::head_view(dv, b_, lk_, hh, dh),
                        {.transpose_a = true});
        }
        ops::softmax_backward(op, probs_, tensor_ref<const T>(dp), dp);
        const double scale = 1.0 / std::sqrt(double(dh));
        for (index_t hh = 0; hh < h; ++hh) {
            const tensor_ref<const T> dsh = dp.select(1, hh);
            ops::matmul(op, dsh, detail::head_view(k_, b_, lk_, hh, dh),
                        detail::head_view(dq, b_, lq_, hh, dh), {.alpha = scale});
            ops::matmul(op, dsh, detail::head_view(q_, b_, lq_, hh, dh),
                        detail::head_view(dk, b_, lk_, hh, dh),
                        {.transpose_a = true, .alpha = scale});
        }
    }

    [[no_unique_address]] dim<E> e_;
    [[no_unique_address]] dim<H> h_;
    index_t kdim_;
    index_t vdim_;
    bool bias_;
    bool packed_;
    parameter<T> in_proj_weight_;
    parameter<T> q_proj_weight_;
    parameter<T> k_proj_weight_;
    parameter<T> v_proj_weight_;
    parameter<T> in_proj_bias_;
    linear<E, E, T> out_proj_;
    std::string path_;
    // Saved by a training-mode forward.
    saved_mode mode_ = saved_mode::none;
    tensor_ref<const T> q_in_{}, k_in_{}, v_in_{};
    tensor_ref<const T> q_{}, k_{}, v_{};
    tensor_ref<const T> probs_{};
    extents key_extents_{}, value_extents_{};
    index_t b_ = 0, lq_ = 0, lk_ = 0;
};

/// Self attention as a single-input `differentiable_layer` (for `compose::seq`):
/// x (B, L, E) -> (B, L, E) = multi_head_attention.forward_self(x, masks). Its parameters
/// carry the attention's own names (`in_proj_weight`, `in_proj_bias`, `out_proj.*`), so it
/// loads a PyTorch `nn.MultiheadAttention(E, H, batch_first=True)` state_dict as is.
/// `masks` (public) is applied by every forward (true = KEEP, see the file comment).
template <index_t E = dyn, index_t H = dyn, compute_type T = float>
class self_attention {
public:
    using value_type = T;
    static constexpr index_t in_features = E;
    static constexpr index_t out_features = E;

    explicit self_attention(dim<E> embed_dim = {}, dim<H> num_heads = {}, bool bias = true)
        : attn_(embed_dim, num_heads, dyn, dyn, bias) {}

    template <class V>
    void visit(V& v) {
        attn_.visit(v);
    }
    void reset_parameters(philox_generator& g) { attn_.reset_parameters(g); }

    /// x (B, L, E) -> (B, L, E).
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        return attn_.forward_self(cx, x, masks);
    }
    /// dy (B, L, E) -> dx (B, L, E).
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        return attn_.backward_self(cx, dy);
    }

    multi_head_attention<E, H, T>& attention() noexcept { return attn_; }

    attention_masks<T> masks{};

private:
    multi_head_attention<E, H, T> attn_;
};

}  // namespace mmfuse::inline v0::nn
