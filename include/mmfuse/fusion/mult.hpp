#pragma once
/// \file
/// The Multimodal Transformer's crossmodal attention (MulT: Tsai, Bai, Liang, Kolter,
/// Morency, Salakhutdinov, "Multimodal Transformer for Unaligned Multimodal Language
/// Sequences", ACL 2019; reference yaohungt/Multimodal-Transformer : modules/transformer.py,
/// modules/position_embedding.py, src/models.py; fusion.md section 4.1, quirks section 8,
/// identity 10):
///
///   `crossmodal_layer`        one pre-LN layer in which a query stream attends to a source
///                             stream, both normalised by the SAME LayerNorm;
///   `crossmodal_transformer`  CM_{beta->alpha}: sqrt(d) scaling + fairseq sinusoidal
///                             positions, D layers, a final LayerNorm, MulT's shifted causal
///                             mask and key padding for variable lengths;
///   `mult<M>`                 the interaction (views -> views): each target modality gets
///                             the concatenation of CM_{beta->alpha} over the sources beta.
///
/// Built from `nn::multi_head_attention` (PyTorch's nn.MultiheadAttention contract, packed
/// `in_proj_weight`), `nn::layer_norm`, `nn::mlp` and the transformer sub-layer helpers of
/// nn/transformer.hpp; the attention itself is not re-implemented here.
///
/// Parameter names are MulT's own (`layers.<i>.self_attn.in_proj_weight`, `.fc1`, `.fc2`,
/// `.layer_norms.0/1`, `layer_norm`; `trans_<a>_with_<b>` in `mult`), so a state_dict of the
/// reference's TransformerEncoder / MULTModel crossmodal parts loads by name.
/// Dropouts (embed, attention, relu, residual) are not implemented: every rate is 0.
///
/// Host-side tables: the positional table (per transformer, built at construction) and the
/// per-step boolean keep masks (the shifted causal mask, source key padding AND presence) are
/// written on the host (into the module / the workspace), as `fusion::mean`'s coefficients:
/// host backends, and host memory for the caller's `key_padding` masks.

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/random.hpp"

namespace mmfuse::inline v0::fusion {

/// MulT's causal rule (modules/transformer.py, buffered_future_mask): query i of a stream of
/// length tq may attend to source position j of a stream of length ts iff
/// j <= i + |ts - tq| (the reference's triu(-inf, 1 + |ts - tq|)). With tq == ts this is the
/// standard causal mask (fusion.md identity 10).
constexpr bool mult_causal_keep(index_t i, index_t j, index_t tq, index_t ts) noexcept {
    return j <= i + (ts > tq ? ts - tq : tq - ts);
}

/// MulT's sinusoidal positional table (fairseq / tensor2tensor layout, NOT Vaswani's
/// interleaved one), rows for positions p = 1 .. max_len, row-major (max_len, d):
///   half = floor(d / 2), f_k = exp(-k ln(10000) / (half - 1)), k = 0 .. half - 1,
///   PE(p) = [sin(p f_0) .. sin(p f_{half-1}), cos(p f_0) .. cos(p f_{half-1}) (, 0 if d odd)].
/// Computed in double and rounded to T once (the reference computes in float32).
/// Throws `value_error` for d < 4 (the formula divides by half - 1) or max_len < 1.
template <compute_type T>
std::vector<T> mult_position_table(index_t max_len, index_t d) {
    if (d < 4 || max_len < 1)
        throw value_error("fusion::mult_position_table",
                          "expected d >= 4 (fairseq's frequencies divide by d/2 - 1) and "
                          "max_len >= 1, got d = " +
                              std::to_string(d) + ", max_len = " + std::to_string(max_len));
    const index_t half = d / 2;
    const double step = std::log(10000.0) / double(half - 1);
    std::vector<T> table(std::size_t(max_len * d), T(0));
    for (index_t r = 0; r < max_len; ++r)
        for (index_t k = 0; k < half; ++k) {
            const double angle = double(r + 1) * std::exp(-double(k) * step);
            table[std::size_t(r * d + k)] = T(std::sin(angle));
            table[std::size_t(r * d + half + k)] = T(std::cos(angle));
        }
    return table;
}

/// Options of a crossmodal transformer (reference defaults in parentheses; fusion.md 4.1).
///   layers          D, the number of crossmodal layers (nlevels = 5)
///   causal          MulT's shifted causal mask `mult_causal_keep` (attn_mask: ON by default,
///                   main.py declares it with store_false)
///   max_len         rows of the positional table: the longest stream it accepts
///   layer_norm_eps  eps of every LayerNorm (1e-5)
struct crossmodal_options {
    index_t layers = 5;
    bool causal = true;
    index_t max_len = 1024;
    double layer_norm_eps = 1e-5;
};

/// One MulT crossmodal layer (modules/transformer.py, TransformerEncoderLayer with x_k, x_v):
///   h (B, Tq, d) attends to s (B, Ts, d):
///     h1 = h  + MHA(LN0(h), LN0(s), LN0(s); masks)          (the SAME LN0 for both streams)
///     y  = h1 + fc2(relu(fc1(LN1(h1))))                      (fc1: d -> 4d, fc2: 4d -> d)
/// Children (MulT names): `self_attn` (nn::multi_head_attention, packed in_proj_weight (3d, d),
/// in_proj_bias, out_proj), `fc1`, `fc2`, `layer_norms.0` (LN0), `layer_norms.1` (LN1).
/// Init (the reference's): in_proj_weight and out_proj.weight xavier_uniform (packed matrix as
/// one tensor), fc1/fc2 weights xavier_uniform, every bias 0, LayerNorms 1 / 0.
/// LN0 runs once over the time-concatenation [h; s] (B, Tq + Ts, d), so backward accumulates
/// its parameter gradient from the query and the source path together.
/// Masks (true = KEEP): `key_padding` (B, Ts) marks source padding, `attn` (Tq, Ts) pairs; a
/// query row with every source key masked gets the attention update out_proj.bias and no
/// gradient through the attention (nn::multi_head_attention's rule).
template <compute_type T = float>
class crossmodal_layer {
public:
    using value_type = T;

    /// Embedding width d and heads (d % heads == 0, else `shape_error`).
    explicit crossmodal_layer(index_t d, index_t heads, double layer_norm_eps = 1e-5)
        : attn_(d, heads), ffn_(d, 4 * d, d), ln0_(d, layer_norm_eps), ln1_(d, layer_norm_eps) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("self_attn", attn_);
        ffn_.visit(v);  // transparent: fc1 and fc2 are this layer's children (MulT's names)
        v.child("layer_norms.0", ln0_);
        v.child("layer_norms.1", ln1_);
    }

    void reset_parameters(philox_generator& g) {
        attn_.reset_parameters(g);
        init::xavier_uniform{}(g, attn_.out_proj().weight().value);
        for (nn::linear<dyn, dyn, T>* l : {&ffn_.fc1(), &ffn_.fc2()}) {
            init::xavier_uniform{}(g, l->weight().value);
            init::zeros{}(l->bias().value);
        }
        ln0_.reset_parameters(g);
        ln1_.reset_parameters(g);
    }

    /// h (B, Tq, d), s (B, Ts, d) -> (B, Tq, d) in the workspace. Throws `shape_error`
    /// naming the layer path and both shapes.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> h,
                                tensor_ref<const T> s, const nn::attention_masks<T>& masks = {}) {
        const index_t d = attn_.embed_dim();
        nn::detail::check_sequence(path_, "crossmodal_layer query stream", h, -1, d);
        nn::detail::check_sequence(path_, "crossmodal_layer source stream", s, h.extent(0), d);
        const index_t b = h.extent(0), tq = h.extent(1), ts = s.extent(1);
        const tensor_ref<T> both = cx.allocate(extents{b, tq + ts, d});
        ops::concat<T>(cx.op(path_), 1, {h, s}, both);
        const tensor_ref<const T> n = ln0_.forward(cx, both);
        const tensor_ref<const T> ns = n.narrow(1, tq, ts);
        const tensor_ref<const T> h1 = nn::detail::residual_add<T>(
            cx, path_, h, attn_.forward(cx, n.narrow(1, 0, tq), ns, ns, masks));
        const tensor_ref<const T> y = nn::detail::sublayer_forward<T>(
            cx, path_, true, ln1_, h1, [&](tensor_ref<const T> x) { return ffn_.forward(cx, x); });
        saved_ = cx.training;
        tq_ = tq;
        ts_ = ts;
        y_extents_ = y.extents();
        return y;
    }

    /// dy (B, Tq, d) -> {dx = dh (B, Tq, d), dcontext = ds (B, Ts, d)} (contiguous); adds into
    /// every parameter gradient.
    nn::cross_attention_grads<T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "crossmodal_layer", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> dh1 = nn::detail::sublayer_backward<T>(
            cx, path_, true, ln1_, dy, [&](tensor_ref<const T> d) { return ffn_.backward(cx, d); });
        const nn::attention_grads<T> g = attn_.backward(cx, dh1);
        const tensor_ref<T> dboth = cx.allocate(extents{dy.extent(0), tq_ + ts_, dy.extent(2)});
        ops::copy(op, g.dquery, dboth.narrow(1, 0, tq_));
        ops::add<T>(op, g.dkey, g.dvalue, dboth.narrow(1, tq_, ts_));
        const tensor_ref<const T> dn = ln0_.backward(cx, dboth);
        const tensor_ref<const T> dh =
            nn::detail::residual_add<T>(cx, path_, dh1, dn.narrow(1, 0, tq_));
        return {dh, nn::contiguous(cx, path_, dn.narrow(1, tq_, ts_))};
    }

    nn::multi_head_attention<dyn, dyn, T>& self_attn() noexcept { return attn_; }
    nn::linear<dyn, dyn, T>& fc1() noexcept { return ffn_.fc1(); }
    nn::linear<dyn, dyn, T>& fc2() noexcept { return ffn_.fc2(); }
    nn::layer_norm<dyn, T>& layer_norm0() noexcept { return ln0_; }
    nn::layer_norm<dyn, T>& layer_norm1() noexcept { return ln1_; }
    index_t embed_dim() const noexcept { return attn_.embed_dim(); }
    const std::string& path() const noexcept { return path_; }

private:
    nn::multi_head_attention<dyn, dyn, T> attn_;
    nn::mlp<dyn, dyn, dyn, ops::unary_kind::relu, T> ffn_;
    nn::layer_norm<dyn, T> ln0_;
    nn::layer_norm<dyn, T> ln1_;
    std::string path_;
    bool saved_ = false;
    index_t tq_ = 0, ts_ = 0;
    extents y_extents_{};
};

/// MulT's crossmodal transformer CM_{beta->alpha} (modules/transformer.py, TransformerEncoder
/// called with x_in_k = x_in_v): query stream z_q = Z_alpha (B, Tq, d), source z_s = Z_beta
/// (B, Ts, d) -> (B, Tq, d):
///     H = sqrt(d) z_q + PE[1 .. Tq],  S = sqrt(d) z_s + PE[1 .. Ts]   (`mult_position_table`)
///     H <- crossmodal_layer_i(H, S) for i = 0 .. D-1   (S is the same for every layer)
///     y = LayerNorm(H)
/// Masks: with `options.causal`, query i sees source j iff `mult_causal_keep(i, j, Tq, Ts)`;
/// `source_keep` (B, Ts) bool (true = a real step, false = padding) masks padded source
/// steps as keys. Padded QUERY steps need no mask (a query row only reads the source); their
/// outputs are computed and are the caller's to ignore.
/// DEVIATION (documented): the reference gives PE = 0 to a step whose first feature channel is
/// exactly 0 ("padding") and numbers positions by a cumulative sum of the non-padding steps.
/// Here positions are always 1 .. T and padding is the explicit `source_keep` mask; for
/// right-padded data without exact zeros in channel 0 every real step matches the reference.
/// Children: `layers.<i>` (crossmodal_layer), `layer_norm` (final). No dropout.
template <compute_type T = float>
class crossmodal_transformer {
public:
    using value_type = T;

    /// Width d (>= 4, even or odd), heads (dividing d), options. Throws `value_error` for
    /// d < 4, layers < 1 or max_len < 1; `shape_error` when heads does not divide d.
    crossmodal_transformer(index_t d, index_t heads, crossmodal_options o = {})
        : opt_(o), table_(mult_position_table<T>(o.max_len, d)), final_(d, o.layer_norm_eps) {
        if (o.layers < 1)
            throw value_error("fusion::crossmodal_transformer",
                              "expected layers >= 1, got " + std::to_string(o.layers));
        layers_.reserve(std::size_t(o.layers));
        for (index_t i = 0; i < o.layers; ++i)
            layers_.emplace_back(d, heads, o.layer_norm_eps);
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t i = 0; i < layers_.size(); ++i)
            v.child("layers." + std::to_string(i), layers_[i]);
        v.child("layer_norm", final_);
    }

    void reset_parameters(philox_generator& g) {
        for (auto& l : layers_)
            l.reset_parameters(g);
        final_.reset_parameters(g);
    }

    /// z_q (B, Tq, d), z_s (B, Ts, d), source_keep (B, Ts) bool in host memory or empty ->
    /// (B, Tq, d) in the workspace. Throws `shape_error` naming the path and both shapes.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> zq,
                                tensor_ref<const T> zs, tensor_ref<const bool> source_keep = {}) {
        const index_t d = embed_dim();
        nn::detail::check_sequence(path_, "crossmodal_transformer query stream", zq, -1, d);
        nn::detail::check_sequence(path_, "crossmodal_transformer source stream", zs, zq.extent(0),
                                   d);
        const index_t b = zq.extent(0), tq = zq.extent(1), ts = zs.extent(1);
        if (std::max(tq, ts) > opt_.max_len)
            throw shape_error(
                path_, "crossmodal_transformer stream length",
                "lengths <= max_len = " + std::to_string(opt_.max_len),
                "query " + zq.extents().to_string() + ", source " + zs.extents().to_string());
        if (source_keep.data() != nullptr && source_keep.extents() != extents{b, ts})
            throw shape_error(path_, "crossmodal_transformer source_keep mask",
                              "bool " + extents{b, ts}.to_string() + " (batch, source steps)",
                              "shape " + source_keep.extents().to_string());
        nn::attention_masks<T> masks;
        masks.key_padding = source_keep;
        if (opt_.causal) masks.attn = causal_table(cx, tq, ts);
        tensor_ref<const T> h = embed(cx, zq);
        const tensor_ref<const T> s = embed(cx, zs);
        for (auto& l : layers_)
            h = l.forward(cx, h, s, masks);
        const tensor_ref<const T> y = final_.forward(cx, h);
        saved_ = cx.training;
        y_extents_ = y.extents();
        return y;
    }

    /// dy (B, Tq, d) (any strides) -> {dx = dz_q (B, Tq, d), dcontext = dz_s (B, Ts, d)}; the
    /// source gradient is the sum over the layers. Adds into every parameter gradient.
    nn::cross_attention_grads<T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "crossmodal_transformer", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        tensor_ref<const T> dh = final_.backward(cx, nn::contiguous(cx, path_, dy));
        tensor_ref<T> ds{};
        for (std::size_t i = layers_.size(); i-- > 0;) {
            const nn::cross_attention_grads<T> g = layers_[i].backward(cx, dh);
            dh = g.dx;
            if (ds.data() == nullptr) {
                ds = cx.allocate(g.dcontext.extents());
                ops::copy(op, g.dcontext, ds);
            } else {
                ops::add<T>(op, ds, g.dcontext, ds);
            }
        }
        const double scale = std::sqrt(double(embed_dim()));
        const tensor_ref<T> dzq = cx.allocate(dh.extents());
        ops::combine<T>(op, dzq, {dh}, {scale});
        ops::combine<T>(op, ds, {tensor_ref<const T>(ds)}, {scale});
        return {dzq, ds};
    }

    /// The (max_len, d) positional table (row r = position r + 1).
    tensor_ref<const T> position_table() const noexcept {
        return tensor_ref<const T>(table_.data(), extents{opt_.max_len, embed_dim()});
    }
    crossmodal_layer<T>& layer(std::size_t i) { return layers_.at(i); }
    nn::layer_norm<dyn, T>& layer_norm() noexcept { return final_; }
    index_t embed_dim() const noexcept { return layers_.front().embed_dim(); }
    const crossmodal_options& options() const noexcept { return opt_; }
    const std::string& path() const noexcept { return path_; }

private:
    /// sqrt(d) z + PE[1 .. T] (the table broadcast over the batch).
    tensor_ref<const T> embed(const nn::step_context<T>& cx, tensor_ref<const T> z) const {
        const tensor_ref<T> y = cx.allocate(z.extents());
        ops::combine<T>(cx.op(path_), y, {z, position_table().narrow(0, 0, z.extent(1))},
                        {std::sqrt(double(embed_dim())), 1.0});
        return y;
    }

    /// The (Tq, Ts) keep table of `mult_causal_keep`, written on the host into the workspace.
    static tensor_ref<const bool> causal_table(const nn::step_context<T>& cx, index_t tq,
                                               index_t ts) {
        const tensor_ref<bool> m = cx.workspace->template allocate<bool>(extents{tq, ts});
        if (m.data() != nullptr)
            for (index_t i = 0; i < tq; ++i)
                for (index_t j = 0; j < ts; ++j)
                    m.data()[i * ts + j] = mult_causal_keep(i, j, tq, ts);
        return m;
    }

    crossmodal_options opt_;
    std::vector<T> table_;
    std::vector<crossmodal_layer<T>> layers_;
    nn::layer_norm<dyn, T> final_;
    std::string path_;
    bool saved_ = false;
    extents y_extents_{};
};

/// The MulT interaction (src/models.py, MULTModel steps 3-4, generalised to M modalities):
///   x_m (B, T_m, d) (already projected to the common width d; lengths may differ) ->
///   y_alpha = [CM_{beta_1->alpha}(x_alpha, x_beta_1); ...] (B, T_alpha, S d)
/// over the sources beta != alpha in modality order (S = M - 1), or over every beta including
/// alpha itself with `include_self` (MultiBench fusions/mult.py; S = M).
/// Children: `trans_<a>_with_<b>` (crossmodal_transformer, target a, source b; MulT's names
/// with modality names {"l", "a", "v"}), target-major.
/// Variable lengths: `key_padding[m]` (B, T_m) bool in host memory (true = a real step), or
/// empty; padded steps of a source are masked keys for every target.
/// Missing modality (presence p (B, M)): an absent modality's steps are masked keys for every
/// target (so it contributes no attention, only out_proj.bias), and its own output y_m is zero
/// for that sample; its input gets zero gradient there (inputs must still be finite).
/// Not included: the per-target self-attention transformer (width S d, max(D, 3) layers) and
/// the last-step readout of MULTModel: put them in the head.
template <std::size_t M, compute_type T = float>
class mult {
    static_assert(M >= 1 && M <= ops::max_parts, "mmfuse::fusion::mult: 1 to 16 modalities");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// Width d, heads, crossmodal options; `include_self` adds the alpha -> alpha pairs;
    /// `names` name the modalities in the children's names (default "0", "1", ...).
    /// Throws `value_error` when no pair would remain (M = 1 without include_self).
    explicit mult(index_t d, index_t heads, crossmodal_options o = {}, bool include_self = false,
                  std::array<std::string, M> names = default_names())
        : d_(d), include_self_(include_self), names_(std::move(names)) {
        if (sources() == 0)
            throw value_error("fusion::mult",
                              "one modality needs include_self = true (no crossmodal pair)");
        trans_.reserve(M * sources());
        for (std::size_t i = 0; i < M * sources(); ++i)
            trans_.emplace_back(d, heads, o);
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t a = 0; a < M; ++a)
            for (std::size_t k = 0; k < sources(); ++k)
                v.child("trans_" + names_[a] + "_with_" + names_[source(a, k)],
                        trans_[a * sources() + k]);
    }

    void reset_parameters(philox_generator& g) {
        for (auto& t : trans_)
            t.reset_parameters(g);
    }

    /// xs[m] (B, T_m, d) -> ys[m] (B, T_m, S d). Throws `shape_error` naming the path for a
    /// wrong input, padding mask or presence mask.
    views<T, M> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        std::array<tensor_ref<const bool>, M> keep{};
        for (std::size_t m = 0; m < M; ++m) {
            nn::detail::check_sequence(path_, "input " + std::to_string(m), xs[m], batch, d_,
                                       "mult ");
            keep[m] = source_keep(cx, p, m, batch, xs[m].extent(1));
        }
        views<T, M> ys{};
        const std::size_t n = sources();
        for (std::size_t a = 0; a < M; ++a) {
            std::array<tensor_ref<const T>, M> parts{};
            for (std::size_t k = 0; k < n; ++k) {
                const std::size_t b = source(a, k);
                parts[k] = trans_[a * n + k].forward(cx, xs[a], xs[b], keep[b]);
            }
            const tensor_ref<T> y = cx.allocate(xs[a].extents().with_axis(-1, index_t(n) * d_));
            ops::concat<T>(cx.op(path_), -1, std::span<const tensor_ref<const T>>(parts.data(), n),
                           y);
            ys[a] = detail::zero_absent(cx, path_, p, a, tensor_ref<const T>(y));
            y_extents_[a] = y.extents();
            x_extents_[a] = xs[a].extents();
        }
        saved_ = cx.training;
        p_ = p;
        return ys;
    }

    /// dys[m] (B, T_m, S d) -> dxs[m] (B, T_m, d); adds into every parameter gradient.
    views<T, M> backward(nn::step_context<T>& cx, const views<T, M>& dys) {
        if (!saved_)
            throw shape_error(path_, "mult backward", "a training-mode forward first",
                              "no saved forward");
        const ops::op_context op = cx.op(path_);
        std::array<tensor_ref<T>, M> acc{};
        for (std::size_t m = 0; m < M; ++m) {
            if (dys[m].extents() != y_extents_[m])
                throw shape_error(path_, "mult output gradient " + std::to_string(m),
                                  "shape " + y_extents_[m].to_string(),
                                  "shape " + dys[m].extents().to_string());
            acc[m] = cx.allocate(x_extents_[m]);
            detail::fill_constant(op, acc[m], 0.0);
        }
        const std::size_t n = sources();
        for (std::size_t a = 0; a < M; ++a) {
            const tensor_ref<const T> dy = detail::zero_absent(cx, path_, p_, a, dys[a]);
            for (std::size_t k = 0; k < n; ++k) {
                const nn::cross_attention_grads<T> g =
                    trans_[a * n + k].backward(cx, dy.narrow(-1, index_t(k) * d_, d_));
                ops::add<T>(op, acc[a], g.dx, acc[a]);
                ops::add<T>(op, acc[source(a, k)], g.dcontext, acc[source(a, k)]);
            }
        }
        views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m)
            dxs[m] = acc[m];
        return dxs;
    }

    /// Padding masks (B, T_m) per modality, true = a real step (host memory; empty = none).
    std::array<tensor_ref<const bool>, M> key_padding{};

    /// CM_{source -> target}; throws `value_error` for a pair the model does not have.
    crossmodal_transformer<T>& transformer(std::size_t target, std::size_t src) {
        for (std::size_t k = 0; k < sources(); ++k)
            if (target < M && source(target, k) == src) return trans_[target * sources() + k];
        throw value_error("fusion::mult", "no crossmodal transformer " + std::to_string(src) +
                                              " -> " + std::to_string(target));
    }
    /// Sources per target: M - 1, or M with include_self.
    std::size_t sources() const noexcept { return include_self_ ? M : M - 1; }
    index_t embed_dim() const noexcept { return d_; }
    const std::string& path() const noexcept { return path_; }

private:
    static std::array<std::string, M> default_names() {
        std::array<std::string, M> n;
        for (std::size_t m = 0; m < M; ++m)
            n[m] = std::to_string(m);
        return n;
    }

    /// The k-th source of target a (modality order, a itself skipped unless include_self).
    std::size_t source(std::size_t a, std::size_t k) const noexcept {
        return include_self_ || k < a ? k : k + 1;
    }

    /// Source keep mask of modality m: key_padding[m] AND presence[:, m], (B, T) bool written
    /// on the host into the workspace; key_padding[m] itself (possibly empty) when every
    /// modality is present.
    tensor_ref<const bool> source_keep(const nn::step_context<T>& cx, const presence& p,
                                       std::size_t m, index_t batch, index_t t) const {
        const tensor_ref<const bool>& kp = key_padding[m];
        if (kp.data() != nullptr) {
            if (kp.extents() != extents{batch, t})
                throw shape_error(path_, "mult key_padding " + std::to_string(m),
                                  "bool " + extents{batch, t}.to_string() +
                                      " (batch, steps of input " + std::to_string(m) + ")",
                                  "shape " + kp.extents().to_string());
            if (kp.space() != memory_space::host)
                throw shape_error(path_, "mult key_padding " + std::to_string(m),
                                  "a view of host memory", "device memory");
        }
        return detail::key_keep(cx, kp, p, m, batch, t);
    }

    index_t d_;
    bool include_self_;
    std::array<std::string, M> names_;
    std::vector<crossmodal_transformer<T>> trans_;
    std::array<extents, M> x_extents_{}, y_extents_{};
    presence p_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
