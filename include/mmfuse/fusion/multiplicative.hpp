#pragma once
/// \file
/// Multiplicative interactions (Jayakumar, Czarnecki, Menick, Schwarz, Rae, Osindero, Teh,
/// Harley, Pascanu, "Multiplicative Interactions and Where to Find Them", ICLR 2020;
/// pliang279/MultiBench : fusions/common_fusions.py MultiplicativeInteractions2Modal and
/// MultiplicativeInteractions3Modal; fusion.md section 2.7): `multiplicative_interaction`
/// (two modalities; matrix, matrix3D and vector forms) and `multiplicative_interaction3`.
///
/// Missing modality rule (both): an absent modality is zeroed for that sample before the
/// interaction, and its input gradient is zero there. Algebraically, for the 2-modal forms,
///   x2 absent:  y = x1 U + b                (the hypernetwork term x2 · W' drops out)
///   x1 absent:  y = x2 · V + b  (matrix),   y = V ⊙ x2 + b  (vector)
///   both:       y = b.

#include <array>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/fusion/tensor_fusion.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// Output form of a 2-modal multiplicative interaction (MultiBench's `output` argument;
/// 'scalar' is not provided).
enum class mi_output {
    vector,    ///< diagonal / gating form, y (B, m)
    matrix,    ///< hypernetwork form, y (B, d)
    matrix3d,  ///< hypernetwork form with a matrix output, y (B, p, q)
};

namespace detail {

/// y = x P + q for rows: x (B, n), P (n, K), q (K) -> y (B, K).
template <compute_type T>
void affine_rows(const ops::op_context& op, tensor_ref<const T> x, tensor_ref<const T> P,
                 tensor_ref<const T> q, tensor_ref<T> y) {
    ops::matmul<T>(op, x, P, y);
    ops::bias_add<T>(op, tensor_ref<const T>(y), q, y);
}

/// Backward of `affine_rows`: dP += x^T dy, dq += Σ_rows dy, dx = dy P^T (dx += with
/// `accumulate_dx`).
template <compute_type T>
void affine_rows_backward(const ops::op_context& op, tensor_ref<const T> x, tensor_ref<const T> P,
                          tensor_ref<const T> dy, tensor_ref<T> dP, tensor_ref<T> dq,
                          tensor_ref<T> dx, bool accumulate_dx) {
    ops::matmul<T>(op, x, dy, dP, {.transpose_a = true, .beta = 1.0});
    ops::reduce<T>(op, ops::reduce_kind::sum, 0, dy, dq, true);
    ops::matmul<T>(op, dy, P, dx, {.transpose_b = true, .beta = accumulate_dx ? 1.0 : 0.0});
}

}  // namespace detail

/// Two-modal multiplicative interaction: x1 (B, n), x2 (B, m) -> y. With W' = x1 W + V (the
/// hypernetwork output) and b' = x1 U + b:
///   matrix    W (n, m, d), U (n, d), V (m, d), b (d):
///             y = x2 · W' + b' (B, d),  y_k = Σ_ij x1_i W_ijk x2_j + Σ_j x2_j V_jk
///                                             + Σ_i x1_i U_ik + b_k
///   matrix3d  W (n, m, p, q), U (n, p, q), V (m, p, q), b (p, q): the same with the output
///             axis d replaced by (p, q); y (B, p, q)
///   vector    W (n, m), U (n, m), V (m), b (m):  y = (x1 W + V) ⊙ x2 + x1 U + b (B, m)
///   Parameter names W, U, V, b (MultiBench's). Init as the reference: matrix: W, U, V
///   xavier_normal (PyTorch fans of the 3-D/4-D tensors), b ~ N(0, 1); matrix3d: all four
///   xavier_normal; vector: W, U xavier_normal, V, b ~ N(0, 1).
///   Missing modality: zeroed (see the file comment).
/// Make one with `matrix(n, m, d)`, `matrix3d(n, m, p, q)` or `vector(n, m)`.
template <compute_type T = float>
class multiplicative_interaction {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    static multiplicative_interaction matrix(index_t n, index_t m, index_t d) {
        return {mi_output::matrix, n, m, extents{d}};
    }
    static multiplicative_interaction matrix3d(index_t n, index_t m, index_t p, index_t q) {
        return {mi_output::matrix3d, n, m, extents{p, q}};
    }
    static multiplicative_interaction vector(index_t n, index_t m) {
        return {mi_output::vector, n, m, extents{m}};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("W", w_);
        v.parameter("U", u_);
        v.parameter("V", v_);
        v.parameter("b", b_);
    }

    void reset_parameters(philox_generator& g) {
        init::xavier_normal{}(g, w_.value);
        init::xavier_normal{}(g, u_.value);
        if (form_ == mi_output::vector)
            init::normal{}(g, v_.value);
        else
            init::xavier_normal{}(g, v_.value);
        if (form_ == mi_output::matrix3d)
            init::xavier_normal{}(g, b_.value);
        else
            init::normal{}(g, b_.value);
    }

    /// x1 (B, n), x2 (B, m) -> y (B, d), (B, p, q) or (B, m).
    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 2>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, 2);
        detail::expect_rows(path_, {"multiplicative_interaction input", 0}, xs[0], batch, n_);
        detail::expect_rows(path_, {"multiplicative_interaction input", 1}, xs[1], batch, m_);
        const ops::op_context op = cx.op(path_);
        const tensor_ref<const T> x1 = detail::zero_absent(cx, path_, p, 0, xs[0]);
        const tensor_ref<const T> x2 = detail::zero_absent(cx, path_, p, 1, xs[1]);
        const tensor_ref<T> wp = cx.allocate(extents{batch, hyper_width()});
        detail::affine_rows<T>(op, x1, flat(w_.value, n_), flat(v_.value), wp);
        const tensor_ref<T> y = cx.allocate(extents{batch, out_width()});
        detail::affine_rows<T>(op, x1, flat(u_.value, n_), flat(b_.value), y);
        if (form_ == mi_output::vector) {
            const tensor_ref<T> t = cx.allocate(y.extents());
            ops::binary<T>(op, ops::binary_kind::mul, wp, x2, t);
            ops::add<T>(op, y, t, y);
        } else {  // y (B, 1, D) += x2 (B, 1, m) W' (B, m, D)
            const index_t d = out_width();
            ops::matmul<T>(op, x2.unsqueeze(1), tensor_ref<const T>(wp).reshape({batch, m_, d}),
                           y.reshape({batch, 1, d}), {.beta = 1.0});
        }
        const extents ye = output_extents(batch);
        if (cx.training) {
            x1_ = x1;
            x2_ = x2;
            wp_ = wp;
            p_ = p;
            y_extents_ = ye;
            saved_ = true;
        }
        return tensor_ref<const T>(y).reshape(ye);
    }

    views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "multiplicative_interaction", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        const index_t batch = dy.extent(0), d = out_width();
        const tensor_ref<const T> g = nn::contiguous(cx, path_, dy).reshape({batch, d});
        const tensor_ref<T> dwp = cx.allocate(extents{batch, hyper_width()});
        const tensor_ref<T> dx2 = cx.allocate(extents{batch, m_});
        if (form_ == mi_output::vector) {
            ops::binary<T>(op, ops::binary_kind::mul, g, x2_, dwp);
            ops::binary<T>(op, ops::binary_kind::mul, g, wp_, dx2);
        } else {  // dW' = x2 ⊗ dy,  dx2 = dy W'^T
            const tensor_ref<const T> g3 = g.reshape({batch, 1, d});
            ops::matmul<T>(op, x2_.unsqueeze(2), g3, dwp.reshape({batch, m_, d}));
            ops::matmul<T>(op, g3, wp_.reshape({batch, m_, d}), dx2.reshape({batch, 1, m_}),
                           {.transpose_b = true});
        }
        const tensor_ref<T> dx1 = cx.allocate(extents{batch, n_});
        detail::affine_rows_backward<T>(op, x1_, flat(u_.value, n_), g, flat(u_.grad, n_),
                                        flat(b_.grad), dx1, false);
        detail::affine_rows_backward<T>(op, x1_, flat(w_.value, n_), dwp, flat(w_.grad, n_),
                                        flat(v_.grad), dx1, true);
        return {detail::zero_absent(cx, path_, p_, 0, tensor_ref<const T>(dx1)),
                detail::zero_absent(cx, path_, p_, 1, tensor_ref<const T>(dx2))};
    }

    mi_output form() const noexcept { return form_; }
    nn::parameter<T>& W() noexcept { return w_; }
    nn::parameter<T>& U() noexcept { return u_; }
    nn::parameter<T>& V() noexcept { return v_; }
    nn::parameter<T>& b() noexcept { return b_; }
    const std::string& path() const noexcept { return path_; }

private:
    multiplicative_interaction(mi_output form, index_t n, index_t m, extents out)
        : form_(form), n_(n), m_(m), out_(out) {
        if (n < 1 || m < 1 || out.numel() < 1)
            throw value_error("fusion::multiplicative_interaction",
                              "input and output widths must be >= 1");
        const auto with = [&](std::initializer_list<index_t> lead) {
            std::array<index_t, max_rank> e{};
            std::size_t r = 0;
            for (index_t x : lead)
                e[r++] = x;
            if (form_ != mi_output::vector)
                for (index_t x : out_.values())
                    e[r++] = x;
            return extents::from(std::span<const index_t>(e.data(), r));
        };
        if (form_ == mi_output::vector) {
            w_.shape = extents{n, m};
            u_.shape = extents{n, m};
            v_.shape = extents{m};
            b_.shape = extents{m};
        } else {
            w_.shape = with({n, m});
            u_.shape = with({n});
            v_.shape = with({m});
            b_.shape = out_;
        }
    }

    /// Width of y per sample: d, p·q or m.
    index_t out_width() const noexcept { return out_.numel(); }
    /// Width of W' per sample: m·d, m·p·q or m.
    index_t hyper_width() const noexcept {
        return form_ == mi_output::vector ? m_ : m_ * out_width();
    }
    /// (B, d), (B, p, q) or (B, m).
    extents output_extents(index_t batch) const {
        std::array<index_t, max_rank> e{};
        e[0] = batch;
        for (int a = 0; a < out_.rank(); ++a)
            e[std::size_t(a) + 1] = out_[a];
        return extents::from(std::span<const index_t>(e.data(), std::size_t(out_.rank()) + 1));
    }
    /// A parameter as (rows, numel / rows).
    static tensor_ref<T> flat(const tensor_ref<T>& t, index_t rows) {
        return t.reshape({rows, t.numel() / rows});
    }
    /// A parameter as a vector (numel).
    static tensor_ref<T> flat(const tensor_ref<T>& t) { return t.reshape({t.numel()}); }

    mi_output form_;
    index_t n_, m_;
    extents out_;
    nn::parameter<T> w_, u_, v_, b_;
    tensor_ref<const T> x1_{}, x2_{}, wp_{};
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

/// Three-modal multiplicative interaction (MultiBench MultiplicativeInteractions3Modal with
/// the per-sample contraction of issue pliang279/MultiBench#15): x1 (B, n), x2 (B, m),
/// x3 (B, k) -> y (B, d),
///   A = a(x1, x2) (B, k, d)  with a = multiplicative_interaction::matrix3d(n, m, k, d)
///   C = b(x1, x2) (B, d)     with b = multiplicative_interaction::matrix(n, m, d)
///   y_b = x3_b A_b + C_b     (y_bd = Σ_j x3_bj A_bjd + C_bd)
///   Parameters a.W, a.U, a.V, a.b, b.W, b.U, b.V, b.b (the children's, initialised as theirs).
///   Missing modality: zeroed in that sample (x3 absent: y = C; x1 or x2 absent: their terms
///   in A and C vanish as in the 2-modal rule); its input gradient is zero there.
/// Deviation: MultiBench's non-affect branch uses a plain matmul, which broadcasts x3 (B, k)
/// against every sample's A (a (B, B, d) result); this is the batched contraction.
template <compute_type T = float>
class multiplicative_interaction3 {
public:
    using value_type = T;
    static constexpr std::size_t arity = 3;

    multiplicative_interaction3(index_t n, index_t m, index_t k, index_t d)
        : n_(n),
          m_(m),
          k_(k),
          d_(d),
          a_(multiplicative_interaction<T>::matrix3d(n, m, k, d)),
          b_(multiplicative_interaction<T>::matrix(n, m, d)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("a", a_);
        v.child("b", b_);
    }
    void reset_parameters(philox_generator& g) {
        a_.reset_parameters(g);
        b_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, 3>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, 3);
        const std::array<index_t, 3> widths{n_, m_, k_};
        for (std::size_t i = 0; i < 3; ++i)
            detail::expect_rows(path_, {"multiplicative_interaction3 input", int(i)}, xs[i], batch,
                                widths[i]);
        const views<T, 2> x12{detail::zero_absent(cx, path_, p, 0, xs[0]),
                              detail::zero_absent(cx, path_, p, 1, xs[1])};
        const tensor_ref<const T> x3 = detail::zero_absent(cx, path_, p, 2, xs[2]);
        const tensor_ref<const T> a = a_.forward(cx, x12);
        const tensor_ref<const T> c = b_.forward(cx, x12);
        const tensor_ref<T> y = cx.allocate(extents{batch, d_});
        const ops::op_context op = cx.op(path_);
        ops::matmul<T>(op, x3.unsqueeze(1), a, y.reshape({batch, 1, d_}));
        ops::add<T>(op, y, c, y);
        if (cx.training) {
            x3_ = x3;
            a_out_ = a;
            p_ = p;
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    views<T, 3> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "multiplicative_interaction3", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        const index_t batch = dy.extent(0);
        const tensor_ref<const T> g = nn::contiguous(cx, path_, dy);
        const tensor_ref<const T> g3 = g.reshape({batch, 1, d_});
        const tensor_ref<T> da = cx.allocate(extents{batch, k_, d_});
        ops::matmul<T>(op, x3_.unsqueeze(2), g3, da);  // dA = x3 ⊗ dy
        const tensor_ref<T> dx3 = cx.allocate(extents{batch, k_});
        ops::matmul<T>(op, g3, a_out_, dx3.reshape({batch, 1, k_}), {.transpose_b = true});
        const views<T, 2> ga = a_.backward(cx, da);
        const views<T, 2> gb = b_.backward(cx, g);
        views<T, 3> dxs{};
        for (std::size_t i = 0; i < 2; ++i) {
            const tensor_ref<T> s = cx.allocate(ga[i].extents());
            ops::add<T>(op, ga[i], gb[i], s);
            dxs[i] = detail::zero_absent(cx, path_, p_, i, tensor_ref<const T>(s));
        }
        dxs[2] = detail::zero_absent(cx, path_, p_, 2, tensor_ref<const T>(dx3));
        return dxs;
    }

    multiplicative_interaction<T>& a() noexcept { return a_; }
    multiplicative_interaction<T>& b() noexcept { return b_; }
    const std::string& path() const noexcept { return path_; }

private:
    index_t n_, m_, k_, d_;
    multiplicative_interaction<T> a_;
    multiplicative_interaction<T> b_;
    tensor_ref<const T> x3_{}, a_out_{};
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
