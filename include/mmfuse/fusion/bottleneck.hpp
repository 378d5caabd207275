#pragma once
/// \file
/// `fusion::bottleneck_fusion`: Attention Bottlenecks for Multimodal Fusion (MBT; Nagrani,
/// Yang, Arnab, Jansen, Schmid, Sun, NeurIPS 2021; reference: google-research/scenic,
/// scenic/projects/mbt/model.py; docs/fusion.md section 4.3, identity 9). An interaction
/// over M token streams that exchange information only through a few shared bottleneck
/// tokens, built from `nn::transformer_encoder_layer` and `fusion::mean`.

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/fusion/combine.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// MBT's encoder-layer options (Flax defaults of the reference): pre-LN, tanh-approximate
/// GELU, LayerNorm eps 1e-6, biases on.
inline constexpr nn::transformer_options mbt_options{.activation = ops::unary_kind::gelu_tanh,
                                                     .layer_norm_eps = 1e-6,
                                                     .norm_first = true,
                                                     .bias = true};

namespace detail {

/// `x` as a contiguous tensor with the samples where modality `m` is absent set to zero
/// (`zero_absent`, plus a contiguous copy when `p` is empty and x is a strided view).
template <compute_type T>
tensor_ref<const T> dense_present(const nn::step_context<T>& cx, std::string_view path,
                                  const presence& p, std::size_t m, tensor_ref<const T> x) {
    if (p.data() == nullptr) return nn::contiguous(cx, path, x);
    return zero_absent(cx, path, p, m, x);
}

}  // namespace detail

/// Attention bottleneck fusion (MBT) over M token streams of width D:
///   x_m (B, T_m, D) -> y_m (B, T_m, D), L pre-LN encoder layers per modality
///   (`nn::transformer_encoder_layer`, own weights per modality and layer), n_b learned
///   bottleneck tokens b (1, n_b, D) tiled over the batch, and a `fusion_layer` index:
///     l <  fusion_layer:  x_m <- Layer_m^l(x_m)                       (unimodal)
///     l >= fusion_layer:  [x_m'; b_m'] = Layer_m^l([x_m; b]) for each m (tokens first, then
///                         the bottleneck, on the token axis); x_m <- x_m'; b <- mean_m(b_m')
///   The bottleneck after the last layer is discarded; the outputs are the M streams.
///   fusion_layer = L gives independent unimodal encoders; n_b = 0 means no interaction at
///   any depth; fusion_layer = 0 is MBT's bottleneck fusion from the first layer. Streams
///   exchange information from the SECOND fusion layer on (the first sees the learned
///   bottleneck itself), so fusion_layer = L - 1 does not make the outputs interact either
///   (as in the reference).
/// Parameters (PyTorch twin names, state_dict order): `bottleneck` (1, n_b, D) ~ N(0, 0.02)
///   (absent when n_b = 0), then `encoders.<m>.<l>.*` (nn.TransformerEncoderLayer names:
///   self_attn.in_proj_weight, ..., linear1, linear2, norm1, norm2; PyTorch's init).
///   Layer options default to `mbt_options` (pre-LN, tanh GELU, eps 1e-6: the Flax reference).
/// Variable lengths: `key_padding[m]` (public; bool (B, T_m), true = real token, host memory;
///   empty = none) masks modality m's padded tokens as keys in every layer of its stream,
///   including from the bottleneck queries; bottleneck keys are never masked. Outputs at
///   padded positions are computed (from the real tokens) but carry no information from
///   padded content.
/// Missing modality (presence (B, M), true = present): an absent modality of sample b is
///   left out of the bottleneck mean of that sample (the present ones are renormalised; with
///   none present the bottleneck becomes 0), so its tokens never reach another stream; its
///   output y_m is 0 for that sample and its input gradient is 0. Its stream's layers still
///   run on the caller's placeholder (finite) values.
/// Not included (do them in stems / heads): positional embeddings, CLS tokens, the final
///   encoder_norm, stochastic depth, dropout; MBT's "vanilla" cross-attention variant
///   (no bottleneck) and share_encoder. Every input must be a tensor (no empty views).
template <std::size_t M, compute_type T = float>
class bottleneck_fusion {
    static_assert(M >= 1 && M <= ops::max_parts,
                  "mmfuse::fusion::bottleneck_fusion: 1 to 16 modalities");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;
    using layer_type = nn::transformer_encoder_layer<dyn, dyn, dyn, T>;

    /// d_model D, nhead, dim_feedforward (MBT's mlp_dim), num_layers L >= 1,
    /// 0 <= fusion_layer <= L, n_bottleneck >= 0. Throws `value_error` otherwise (and
    /// `shape_error` when nhead does not divide d_model).
    bottleneck_fusion(index_t d_model, index_t nhead, index_t dim_feedforward, index_t num_layers,
                      index_t fusion_layer, index_t n_bottleneck,
                      nn::transformer_options options = mbt_options)
        : d_(d_model), nb_(n_bottleneck), layers_n_(num_layers), fusion_layer_(fusion_layer) {
        if (num_layers < 1 || fusion_layer < 0 || fusion_layer > num_layers || n_bottleneck < 0)
            throw value_error("bottleneck_fusion",
                              "need num_layers >= 1, 0 <= fusion_layer <= num_layers and "
                              "n_bottleneck >= 0; got num_layers " +
                                  std::to_string(num_layers) + ", fusion_layer " +
                                  std::to_string(fusion_layer) + ", n_bottleneck " +
                                  std::to_string(n_bottleneck));
        for (auto& stream : layers_)
            for (index_t l = 0; l < num_layers; ++l)
                stream.emplace_back(d_model, nhead, dim_feedforward, options);
        if (nb_ > 0) bottleneck_.shape = extents{1, nb_, d_};
        means_.resize(std::size_t(num_layers - fusion_layer));
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if (nb_ > 0) v.parameter("bottleneck", bottleneck_);
        encoder_table table{this};
        v.child("encoders", table);
    }

    /// bottleneck ~ N(0, 0.02), then every layer (modality-major) with PyTorch's init.
    void reset_parameters(philox_generator& g) {
        if (nb_ > 0) init::normal{.mean = 0.0, .std = 0.02}(g, bottleneck_.value);
        for (auto& stream : layers_)
            for (auto& layer : stream)
                layer.reset_parameters(g);
    }

    /// {x_m (B, T_m, D)}, presence (B, M) -> {y_m (B, T_m, D)} (contiguous, workspace).
    /// Throws `shape_error` naming the module path, the input and both shapes.
    views<T, M> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        std::array<tensor_ref<const bool>, M> keep_fused{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<const T>& x = xs[m];
            if (x.rank() != 3 || x.extent(0) != batch || x.extent(2) != d_)
                throw shape_error(
                    path_, "bottleneck_fusion input " + std::to_string(m),
                    "shape (" + std::to_string(batch) + ", T, " + std::to_string(d_) + ")",
                    "shape " + x.extents().to_string());
            tokens_[m] = x.extent(1);
            detail::check_key_padding(path_, {"bottleneck_fusion key_padding", int(m)},
                                      key_padding[m], batch, tokens_[m]);
            keep_fused[m] = detail::key_keep(cx, key_padding[m], {}, m, batch, tokens_[m], nb_);
        }
        const ops::op_context op = cx.op(path_);
        views<T, M> cur = xs;
        tensor_ref<const T> b{};
        if (nb_ > 0) b = tensor_ref<const T>(bottleneck_.value).expand(extents{batch, nb_, d_});
        for (index_t l = 0; l < layers_n_; ++l) {
            if (l < fusion_layer_ || nb_ == 0) {
                for (std::size_t m = 0; m < M; ++m)
                    cur[m] = layer(m, l).forward(cx, cur[m], {.key_padding = key_padding[m]});
                continue;
            }
            views<T, M> bs{};
            for (std::size_t m = 0; m < M; ++m) {
                const tensor_ref<T> xb = cx.allocate(extents{batch, tokens_[m] + nb_, d_});
                ops::concat<T>(op, 1, {cur[m], b}, xb);
                const tensor_ref<const T> out =
                    layer(m, l).forward(cx, xb, {.key_padding = keep_fused[m]});
                cur[m] = out.narrow(1, 0, tokens_[m]);
                bs[m] = out.narrow(1, tokens_[m], nb_);
            }
            b = means_[std::size_t(l - fusion_layer_)].forward(cx, bs, p);
        }
        views<T, M> ys{};
        for (std::size_t m = 0; m < M; ++m)
            ys[m] = detail::dense_present(cx, path_, p, m, cur[m]);
        saved_ = cx.training;
        if (saved_) {
            p_ = p;
            batch_ = batch;
        }
        return ys;
    }

    /// {dy_m (B, T_m, D)} -> {dx_m (B, T_m, D)}; adds into every parameter gradient.
    views<T, M> backward(nn::step_context<T>& cx, const views<T, M>& dys) {
        if (!saved_)
            throw shape_error(path_, "bottleneck_fusion backward", "a training-mode forward first",
                              "no saved forward");
        for (std::size_t m = 0; m < M; ++m)
            if (dys[m].extents() != extents{batch_, tokens_[m], d_})
                throw shape_error(path_, "bottleneck_fusion output gradient " + std::to_string(m),
                                  "shape " + extents{batch_, tokens_[m], d_}.to_string(),
                                  "shape " + dys[m].extents().to_string());
        const ops::op_context op = cx.op(path_);
        views<T, M> dx{};
        for (std::size_t m = 0; m < M; ++m)
            dx[m] = detail::zero_absent(cx, path_, p_, m, dys[m]);
        tensor_ref<const T> db{};
        if (nb_ > 0 && fusion_layer_ < layers_n_) {
            const tensor_ref<T> z = cx.allocate(extents{batch_, nb_, d_});
            detail::fill_constant(op, z, 0.0);  // the last bottleneck is not an output
            db = z;
        }
        for (index_t l = layers_n_ - 1; l >= 0; --l) {
            if (l < fusion_layer_ || nb_ == 0) {
                for (std::size_t m = 0; m < M; ++m)
                    dx[m] = layer(m, l).backward(cx, dx[m]);
                continue;
            }
            const views<T, M> dbs = means_[std::size_t(l - fusion_layer_)].backward(cx, db);
            const tensor_ref<T> db_in = cx.allocate(extents{batch_, nb_, d_});
            for (std::size_t m = 0; m < M; ++m) {
                const tensor_ref<T> dout = cx.allocate(extents{batch_, tokens_[m] + nb_, d_});
                ops::concat<T>(op, 1, {dx[m], dbs[m]}, dout);
                const tensor_ref<const T> din = layer(m, l).backward(cx, dout);
                dx[m] = din.narrow(1, 0, tokens_[m]);
                if (m == 0)
                    ops::copy(op, din.narrow(1, tokens_[m], nb_), db_in);
                else
                    ops::add<T>(op, db_in, din.narrow(1, tokens_[m], nb_), db_in);
            }
            db = db_in;
        }
        if (db.data() != nullptr)
            ops::reduce<T>(op, ops::reduce_kind::sum, 0, db, bottleneck_.grad, true);
        for (std::size_t m = 0; m < M; ++m)
            dx[m] = nn::contiguous(cx, path_, dx[m]);
        return dx;
    }

    /// Encoder layer `l` of modality `m`.
    layer_type& layer(std::size_t m, index_t l) { return layers_[m][std::size_t(l)]; }
    nn::parameter<T>& bottleneck() noexcept { return bottleneck_; }
    index_t d_model() const noexcept { return d_; }
    index_t num_layers() const noexcept { return layers_n_; }
    index_t fusion_layer() const noexcept { return fusion_layer_; }
    index_t num_bottlenecks() const noexcept { return nb_; }
    const std::string& path() const noexcept { return path_; }

    /// Per-modality key-padding masks used by every forward: bool (B, T_m), true = real
    /// token (mmfuse polarity; PyTorch's src_key_padding_mask negated), host memory; an
    /// empty view = no padding.
    std::array<tensor_ref<const bool>, M> key_padding{};

private:
    /// Names the layers `encoders.<m>.<l>` (a ModuleList of ModuleLists in the twin).
    struct encoder_table {
        bottleneck_fusion* self;
        struct stream {
            std::vector<layer_type>* layers;
            template <class V>
            void visit(V& v) {
                for (std::size_t l = 0; l < layers->size(); ++l)
                    v.child(std::to_string(l), (*layers)[l]);
            }
        };
        template <class V>
        void visit(V& v) {
            for (std::size_t m = 0; m < M; ++m) {
                stream s{&self->layers_[m]};
                v.child(std::to_string(m), s);
            }
        }
    };

    index_t d_;
    index_t nb_;
    index_t layers_n_;
    index_t fusion_layer_;
    std::array<std::vector<layer_type>, M> layers_{};
    std::vector<mean<M, T>> means_;
    nn::parameter<T> bottleneck_;
    std::string path_;
    // Saved by a training-mode forward.
    std::array<index_t, M> tokens_{};
    presence p_{};
    index_t batch_ = 0;
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::fusion
