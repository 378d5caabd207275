#pragma once
/// \file
/// The bilinear-pooling fusers of two modalities (fusion.md sections 2.8, 2.9, 2.11, 7):
/// `mfb` (factorised bilinear pooling), `mlb` (MFB with factor 1: low-rank bilinear pooling
/// with a Hadamard product) and `mutan` (multimodal Tucker fusion). Reference implementation:
/// facebookresearch/mmf : mmf/modules/fusions.py (classes MFB, MLB, Mutan); parameter names
/// are MMF's attribute names, so an MMF state_dict loads by name.
///
/// All three compute  y = head( pool( f_0 ⊙ f_1 ) )  where f_m is a per-modality projection
/// of x_m of width mm·g, the Hadamard product is sum-pooled over groups of g entries to z of
/// width mm, z optionally goes through power + L2 normalisation, and a linear head maps z to
/// the output. The shared part (masked product, pooling, normalisation) is
/// `detail::bilinear_pool`.
///
/// Missing modality (all three): the product of a present and an absent modality carries no
/// information, so for a sample whose modality m is absent the factor f_m (the projection
/// that enters the product, biases and activations included) is zeroed. The product, the
/// pooled z and the normalised z are then 0 for that sample and its output is the head's
/// response to z = 0 (act_out(b_out) for MFB/MLB, b_out for MUTAN); neither input of that
/// sample gets a gradient, nor do the projections from that sample.
///
/// Power normalisation ("signed sqrt"): s = sqrt(relu(z)) - sqrt(relu(-z)), with derivative
/// 1 / (2 sqrt|z|) for z != 0 and 0 at exactly z = 0 (PyTorch's autograd gives the same 0:
/// relu's backward selects 0 there and discards sqrt's infinite slope). The op vocabulary
/// has no square root, so this step is a HOST LOOP over contiguous workspace tensors (host
/// backends only; `normalize = true` on a device backend throws `value_error`). The L2 step
/// is `ops::l2_normalize` (eps 1e-12, `F.normalize`).

#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/norm.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// A point-wise activation or none (`std::nullopt`: MMF's activ_* = None).
using optional_activation = std::optional<ops::unary_kind>;

/// Options of `mfb` (MMF MFB defaults; the paper's choices in brackets).
struct mfb_options {
    index_t mm_dim = 1200;  ///< pooled width mm (> 0)
    index_t factor = 2;     ///< k: product entries summed per pooled entry (> 0) [5]
    optional_activation activ_input = ops::unary_kind::relu;   ///< on both projections [none]
    optional_activation activ_output = ops::unary_kind::relu;  ///< on the output [none]
    bool normalize = false;  ///< signed sqrt + L2 on z [always on]
};

/// Options of `mlb`: `mfb_options` without the factor (MMF MLB defaults; paper: tanh, tanh).
struct mlb_options {
    index_t mm_dim = 1200;
    optional_activation activ_input = ops::unary_kind::relu;
    optional_activation activ_output = ops::unary_kind::relu;
    bool normalize = false;
    /// The equivalent `mfb_options` (factor 1).
    mfb_options as_mfb() const {
        return {.mm_dim = mm_dim,
                .factor = 1,
                .activ_input = activ_input,
                .activ_output = activ_output,
                .normalize = normalize};
    }
};

/// Options of `mutan` (MMF Mutan defaults; the paper's choices in brackets).
struct mutan_options {
    index_t mm_dim = 1600;  ///< projected and pooled width mm (> 0) [510]
    index_t rank = 15;      ///< Tucker core rank r (> 0) [10]
    /// On the first projections x_m' before the merge; MMF: none [tanh].
    optional_activation activ_input = std::nullopt;
    bool normalize = false;  ///< signed sqrt + L2 on z [off]
};

namespace detail {

/// act(x) (x itself for no activation), allocated from the workspace.
template <compute_type T>
tensor_ref<const T> activate(const nn::step_context<T>& cx, std::string_view path,
                             const optional_activation& a, tensor_ref<const T> x) {
    if (!a) return x;
    const tensor_ref<T> y = cx.allocate(x.extents());
    ops::unary(cx.op(path), *a, x, y);
    return y;
}

/// act'(x) * dy (dy itself for no activation).
template <compute_type T>
tensor_ref<const T> activate_backward(const nn::step_context<T>& cx, std::string_view path,
                                      const optional_activation& a, tensor_ref<const T> x,
                                      tensor_ref<const T> dy) {
    if (!a) return dy;
    const tensor_ref<T> dx = cx.allocate(x.extents());
    ops::unary_backward(cx.op(path), *a, x, dy, dx);
    return dx;
}

/// Throws `value_error` naming `path` unless the workspace tensors of the host loops below
/// are in host memory (and waits for the ops that wrote them).
template <compute_type T>
void expect_host(const nn::step_context<T>& cx, std::string_view path, const tensor_ref<T>& t) {
    if (t.space() != memory_space::host)
        throw value_error(path, "bilinear normalize (signed sqrt) runs on host backends only");
    cx.stream->synchronize();
}

/// HOST LOOP (no sqrt op in the vocabulary): s = sqrt(relu(z)) - sqrt(relu(-z)).
/// z, s contiguous workspace tensors of equal extents in host memory.
template <compute_type T>
void signed_sqrt(const nn::step_context<T>& cx, std::string_view path, tensor_ref<const T> z,
                 tensor_ref<T> s) {
    expect_host(cx, path, s);
    for (index_t i = 0; i < z.numel(); ++i) {
        const T v = z.data()[i];
        s.data()[i] = v > T(0) ? std::sqrt(v) : v < T(0) ? -std::sqrt(-v) : T(0);
    }
}

/// HOST LOOP: dz = ds / (2 sqrt|z|) for z != 0, and 0 at exactly z = 0 (documented choice,
/// equal to PyTorch autograd's value for sqrt(relu(z)) - sqrt(relu(-z))).
template <compute_type T>
void signed_sqrt_backward(const nn::step_context<T>& cx, std::string_view path,
                          tensor_ref<const T> z, tensor_ref<const T> ds, tensor_ref<T> dz) {
    expect_host(cx, path, dz);
    for (index_t i = 0; i < z.numel(); ++i) {
        const T v = z.data()[i];
        dz.data()[i] = v == T(0) ? T(0) : ds.data()[i] / (T(2) * std::sqrt(std::abs(v)));
    }
}

/// Where the pooled group index sits in a product of width mm·g.
enum class pool_layout {
    factor_inner,  ///< e viewed as (mm, g): z_j = sum_t e[j·g + t]   (MFB, MLB)
    rank_outer,    ///< e viewed as (g, mm): z_j = sum_q e[q·mm + j]  (MUTAN, BLOCK)
};

/// The shared core of the bilinear family, no parameters:
///   a_0, a_1 (B, mm·g) -> f_m = a_m with absent samples zeroed, e = f_0 ⊙ f_1,
///   z = sum over the g groups of e (layout above) (B, mm), optionally
///   z <- l2_normalize(signed_sqrt(z)).
/// Backward: dz (B, mm) -> (da_0, da_1) (B, mm·g); zero for samples with an absent modality.
template <compute_type T>
class bilinear_pool {
public:
    bilinear_pool(index_t mm, index_t groups, pool_layout layout, bool normalize)
        : mm_(mm), groups_(groups), layout_(layout), normalize_(normalize) {}

    tensor_ref<const T> forward(const nn::step_context<T>& cx, std::string_view path,
                                tensor_ref<const T> a0, tensor_ref<const T> a1, presence p) {
        const index_t b = a0.extent(0);
        const tensor_ref<const T> f0 = zero_absent(cx, path, p, 0, a0);
        const tensor_ref<const T> f1 = zero_absent(cx, path, p, 1, a1);
        const ops::op_context op = cx.op(path);
        const tensor_ref<T> e = cx.allocate(a0.extents());
        ops::binary<T>(op, ops::binary_kind::mul, f0, f1, e);
        const tensor_ref<T> z = cx.allocate(extents{b, mm_});
        ops::reduce<T>(op, ops::reduce_kind::sum, pool_axis(), grouped(e), z);
        tensor_ref<const T> out = z;
        tensor_ref<T> zn{}, norm{};
        if (normalize_) {
            const tensor_ref<T> s = cx.allocate(z.extents());
            signed_sqrt<T>(cx, path, z, s);
            zn = cx.allocate(z.extents());
            norm = cx.allocate(extents{b});
            ops::l2_normalize<T>(op, s, zn, norm, eps);
            out = zn;
        }
        if (cx.training) {
            p_ = p;
            f0_ = f0;
            f1_ = f1;
            z_ = z;
            zn_ = zn;
            norm_ = norm;
        }
        return out;
    }

    std::array<tensor_ref<const T>, 2> backward(const nn::step_context<T>& cx,
                                                std::string_view path, tensor_ref<const T> dz) {
        const ops::op_context op = cx.op(path);
        if (normalize_) {
            const tensor_ref<T> ds = cx.allocate(z_.extents());
            ops::l2_normalize_backward<T>(op, zn_, dz, norm_, ds, eps);
            const tensor_ref<T> dzs = cx.allocate(z_.extents());
            signed_sqrt_backward<T>(cx, path, z_, ds, dzs);
            dz = dzs;
        }
        // de = dz broadcast over the groups; da_0 = mask_0 (de ⊙ f_1), da_1 = mask_1 (de ⊙ f_0).
        const tensor_ref<const T> de =
            layout_ == pool_layout::factor_inner ? dz.unsqueeze(2) : dz.unsqueeze(1);
        std::array<tensor_ref<const T>, 2> da{};
        const std::array<tensor_ref<const T>, 2> other{f1_, f0_};
        for (std::size_t m = 0; m < 2; ++m) {
            const tensor_ref<T> d = cx.allocate(f0_.extents());
            ops::binary<T>(op, ops::binary_kind::mul, de, grouped(other[m]), grouped(d));
            da[m] = zero_absent(cx, path, p_, m, tensor_ref<const T>(d));
        }
        return da;
    }

    static constexpr double eps = 1e-12;  ///< of the L2 step (`F.normalize`'s default)

private:
    template <class U>
    tensor_ref<U> grouped(tensor_ref<U> e) const {
        const index_t b = e.extent(0);
        return layout_ == pool_layout::factor_inner ? e.reshape(extents{b, mm_, groups_})
                                                    : e.reshape(extents{b, groups_, mm_});
    }
    int pool_axis() const { return layout_ == pool_layout::factor_inner ? 2 : 1; }

    index_t mm_, groups_;
    pool_layout layout_;
    bool normalize_;
    presence p_{};
    tensor_ref<const T> f0_{}, f1_{}, z_{}, zn_{}, norm_{};
};

/// Checks the two (B, d_m) inputs and the presence mask of a bilinear fuser; returns B.
template <compute_type T>
index_t check_bilinear_inputs(std::string_view path, std::string_view kind, const views<T, 2>& xs,
                              const std::array<index_t, 2>& widths, presence p) {
    const index_t b = xs[0].rank() >= 1 ? xs[0].extent(0) : 0;
    for (std::size_t m = 0; m < 2; ++m) {
        const std::string expected = "shape (" + (m == 0 ? std::string("B") : std::to_string(b)) +
                                     ", " + std::to_string(widths[m]) + ")";
        const std::string what = std::string(kind) + " input " + std::to_string(m);
        if (xs[m].data() == nullptr && xs[m].rank() == 0)
            throw shape_error(path, what,
                              expected + " (a missing modality is marked in the presence mask)",
                              "an empty view");
        if (xs[m].rank() != 2 || xs[m].extent(1) != widths[m] || (m == 1 && xs[1].extent(0) != b))
            throw shape_error(path, what, expected, "shape " + xs[m].extents().to_string());
    }
    check_presence(path, p, b, 2);
    return b;
}

/// Throws `value_error` naming `module` unless every value is positive.
inline void expect_positive(std::string_view module,
                            std::initializer_list<std::pair<const char*, index_t>> values) {
    for (const auto& [name, v] : values)
        if (v <= 0)
            throw value_error(module,
                              std::string(name) + " must be positive, got " + std::to_string(v));
}

}  // namespace detail

/// MFB: multi-modal factorised bilinear pooling (Yu, Yu, Fan, Tao, ICCV 2017;
/// facebookresearch/mmf : mmf/modules/fusions.py, class MFB).
///   x_0 (B, d_0), x_1 (B, d_1) -> y (B, out):
///     f_m = act_in(W_m x_m + b_m)                       (B, mm·k)
///     e = f_0 ⊙ f_1;  z_j = sum_{t<k} e[j·k + t]         (B, mm)  (factor index FAST)
///     [normalize: z <- signed_sqrt(z) / max(||signed_sqrt(z)||_2, 1e-12)]
///     y = act_out(W_out z + b_out)
///   Parameters (MMF names): linear0.{weight (mm·k, d_0), bias}, linear1.{weight (mm·k, d_1),
///   bias}, linear_out.{weight (out, mm), bias}; init: PyTorch's Linear default (MMF keeps it).
///   Defaults are MMF's (`mfb_options`): mm 1200, k 2, relu in and out, normalize off (the
///   paper always normalises). MMF's dropouts are not included (compose `nn::dropout`).
///   Missing modality: its factor f_m is zeroed for that sample (file comment), so
///   y = act_out(b_out) there. Errors name the fuser "mlb" when k = 1.
template <compute_type T = float>
class mfb {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    /// Input widths d_0, d_1 and output width `out`; throws `value_error` on a width, mm or
    /// factor <= 0.
    mfb(index_t d0, index_t d1, index_t out, mfb_options o = {})
        : opt_(checked(d0, d1, out, o)),
          widths_{d0, d1},
          linear0_(d0, o.mm_dim * o.factor),
          linear1_(d1, o.mm_dim * o.factor),
          linear_out_(o.mm_dim, out),
          pool_(o.mm_dim, o.factor, detail::pool_layout::factor_inner, o.normalize) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("linear0", linear0_);
        v.child("linear1", linear1_);
        v.child("linear_out", linear_out_);
    }
    void reset_parameters(philox_generator& g) {
        linear0_.reset_parameters(g);
        linear1_.reset_parameters(g);
        linear_out_.reset_parameters(g);
    }

    /// xs = {x_0 (B, d_0), x_1 (B, d_1)}, p bool (B, 2) or empty -> y (B, out).
    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        detail::check_bilinear_inputs<T>(path_, name(), xs, widths_, p);
        const tensor_ref<const T> h0 = linear0_.forward(cx, xs[0]);
        const tensor_ref<const T> h1 = linear1_.forward(cx, xs[1]);
        const tensor_ref<const T> z =
            pool_.forward(cx, path_, detail::activate(cx, path_, opt_.activ_input, h0),
                          detail::activate(cx, path_, opt_.activ_input, h1), p);
        const tensor_ref<const T> o = linear_out_.forward(cx, z);
        const tensor_ref<const T> y = detail::activate(cx, path_, opt_.activ_output, o);
        if (cx.training) {
            h0_ = h0;
            h1_ = h1;
            o_ = o;
            saved_ = true;
        }
        return y;
    }

    /// dy (B, out) -> {dx_0, dx_1}; adds into every parameter's grad.
    views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, name(), saved_, o_.extents(), dy);
        const tensor_ref<const T> dz = linear_out_.backward(
            cx, detail::activate_backward(cx, path_, opt_.activ_output, o_, dy));
        const auto da = pool_.backward(cx, path_, dz);
        return {linear0_.backward(
                    cx, detail::activate_backward(cx, path_, opt_.activ_input, h0_, da[0])),
                linear1_.backward(
                    cx, detail::activate_backward(cx, path_, opt_.activ_input, h1_, da[1]))};
    }

    const mfb_options& options() const noexcept { return opt_; }
    const std::string& path() const noexcept { return path_; }

private:
    std::string_view name() const noexcept { return opt_.factor == 1 ? "mlb" : "mfb"; }
    static const mfb_options& checked(index_t d0, index_t d1, index_t out, const mfb_options& o) {
        detail::expect_positive(
            "fusion::mfb",
            {{"d0", d0}, {"d1", d1}, {"out", out}, {"mm_dim", o.mm_dim}, {"factor", o.factor}});
        return o;
    }

    mfb_options opt_;
    std::array<index_t, 2> widths_;
    nn::linear<dyn, dyn, T> linear0_, linear1_, linear_out_;
    detail::bilinear_pool<T> pool_;
    tensor_ref<const T> h0_{}, h1_{}, o_{};
    bool saved_ = false;
    std::string path_;
};

/// MLB: low-rank bilinear pooling with a Hadamard product (Kim, On, Lim, Kim, Ha, Zhang,
/// ICLR 2017; facebookresearch/mmf : mmf/modules/fusions.py, class MLB): exactly `mfb` with
/// factor k = 1 (fusion.md section 7, identity 3):
///   y = act_out(W_out (act_in(W_0 x_0 + b_0) ⊙ act_in(W_1 x_1 + b_1)) + b_out)
///   with linear0 (mm, d_0), linear1 (mm, d_1), linear_out (out, mm). Defaults (MMF): mm 1200,
///   relu in and out, normalize off; the paper uses tanh (set `activ_input`). Missing
///   modality: as `mfb`.
template <compute_type T = float>
class mlb : public mfb<T> {
public:
    mlb(index_t d0, index_t d1, index_t out, mlb_options o = {})
        : mfb<T>(d0, d1, out, o.as_mfb()) {}
};

/// MUTAN: multimodal Tucker fusion (Ben-younes, Cadene, Cord, Thome, ICCV 2017;
/// facebookresearch/mmf : mmf/modules/fusions.py, class Mutan).
///   x_0 (B, d_0), x_1 (B, d_1) -> y (B, out):
///     x_m' = act_in(W_m x_m + b_m)                      (B, mm)   (MMF: no activation)
///     f_m = M_m x_m' + c_m                              (B, r·mm)
///     e = f_0 ⊙ f_1;  z_j = sum_{q<r} e[q·mm + j]        (B, mm)   (rank index SLOW)
///     [normalize: signed sqrt + L2, as `mfb`]
///     y = W_out z + b_out                               (no output activation)
///   Parameters (MMF names, MMF order): linear0.{weight (mm, d_0), bias},
///   merge_linear0.{weight (mm·r, mm), bias}, linear1.*, merge_linear1.*,
///   linear_out.{weight (out, mm), bias}; init: PyTorch's Linear default.
///   Defaults are MMF's (`mutan_options`): mm 1600, rank 15, no input activation, normalize
///   off. MMF's `shared` flag (tied branches) and dropouts are not provided.
///   Missing modality: its merged factor f_m is zeroed for that sample, so y = b_out there.
template <compute_type T = float>
class mutan {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    /// Input widths d_0, d_1 and output width `out`; throws `value_error` on a width, mm or
    /// rank <= 0.
    mutan(index_t d0, index_t d1, index_t out, mutan_options o = {})
        : opt_(checked(d0, d1, out, o)),
          widths_{d0, d1},
          linear0_(d0, o.mm_dim),
          linear1_(d1, o.mm_dim),
          merge_linear0_(o.mm_dim, o.mm_dim * o.rank),
          merge_linear1_(o.mm_dim, o.mm_dim * o.rank),
          linear_out_(o.mm_dim, out),
          pool_(o.mm_dim, o.rank, detail::pool_layout::rank_outer, o.normalize) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("linear0", linear0_);
        v.child("merge_linear0", merge_linear0_);
        v.child("linear1", linear1_);
        v.child("merge_linear1", merge_linear1_);
        v.child("linear_out", linear_out_);
    }
    void reset_parameters(philox_generator& g) {
        linear0_.reset_parameters(g);
        merge_linear0_.reset_parameters(g);
        linear1_.reset_parameters(g);
        merge_linear1_.reset_parameters(g);
        linear_out_.reset_parameters(g);
    }

    /// xs = {x_0 (B, d_0), x_1 (B, d_1)}, p bool (B, 2) or empty -> y (B, out).
    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        detail::check_bilinear_inputs<T>(path_, "mutan", xs, widths_, p);
        const tensor_ref<const T> h0 = linear0_.forward(cx, xs[0]);
        const tensor_ref<const T> h1 = linear1_.forward(cx, xs[1]);
        const tensor_ref<const T> f0 =
            merge_linear0_.forward(cx, detail::activate(cx, path_, opt_.activ_input, h0));
        const tensor_ref<const T> f1 =
            merge_linear1_.forward(cx, detail::activate(cx, path_, opt_.activ_input, h1));
        const tensor_ref<const T> y = linear_out_.forward(cx, pool_.forward(cx, path_, f0, f1, p));
        if (cx.training) {
            h0_ = h0;
            h1_ = h1;
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    /// dy (B, out) -> {dx_0, dx_1}; adds into every parameter's grad.
    views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "mutan", saved_, y_extents_, dy);
        const auto df = pool_.backward(cx, path_, linear_out_.backward(cx, dy));
        const tensor_ref<const T> dh0 = detail::activate_backward(
            cx, path_, opt_.activ_input, h0_, merge_linear0_.backward(cx, df[0]));
        const tensor_ref<const T> dh1 = detail::activate_backward(
            cx, path_, opt_.activ_input, h1_, merge_linear1_.backward(cx, df[1]));
        return {linear0_.backward(cx, dh0), linear1_.backward(cx, dh1)};
    }

    const mutan_options& options() const noexcept { return opt_; }
    const std::string& path() const noexcept { return path_; }

private:
    static const mutan_options& checked(index_t d0, index_t d1, index_t out,
                                        const mutan_options& o) {
        detail::expect_positive(
            "fusion::mutan",
            {{"d0", d0}, {"d1", d1}, {"out", out}, {"mm_dim", o.mm_dim}, {"rank", o.rank}});
        return o;
    }

    mutan_options opt_;
    std::array<index_t, 2> widths_;
    nn::linear<dyn, dyn, T> linear0_, linear1_, merge_linear0_, merge_linear1_, linear_out_;
    detail::bilinear_pool<T> pool_;
    tensor_ref<const T> h0_{}, h1_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
