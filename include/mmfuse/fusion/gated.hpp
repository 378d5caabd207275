#pragma once
/// \file
/// `gated_multimodal_unit`: the Gated Multimodal Unit (GMU) of Arevalo, Solorio,
/// Montes-y-Gómez and González, "Gated Multimodal Units for Information Fusion", ICLR 2017
/// workshop (fusion.md section 2.14; reference johnarevalo/gmu-mmimdb : model.py,
/// GatedBimodal).

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::fusion {

/// Gated Multimodal Unit: each modality is projected to a common width, squashed with tanh,
/// and the results are mixed by sigmoid gates computed from all the projections.
///
///   x_m (B, ..., d_m), equal on every axis but the last  ->  y (B, ..., dim).
///   u_m = x_m W_m^T          W_m = proj<m>.weight (dim, d_m), no bias
///   u   = [u_0; ...; u_{M-1}]                                   (B, ..., M dim)
///   h_m = tanh(u_m)
///   Bimodal (M = 2), as implemented in gmu-mmimdb (GatedBimodal):
///     z = sigmoid(u W_z^T)   W_z = gate.weight (dim, 2 dim), no bias  (reads the PRE-tanh
///     y = z h_0 + (1 - z) h_1                                          projections)
///   M > 2, the paper's generalisation with separate gates:
///     [z_0; ...; z_{M-1}] = sigmoid(u W_z^T)   W_z = gate.weight (M dim, M dim), no bias
///     y = sum_m z_m h_m
///   The gate reads the projected features u (as the reference's bimodal code does) for
///   every M; the paper's M-modal equations read the raw inputs.
/// Parameters (PyTorch twin names): proj0.weight ... proj<M-1>.weight, gate.weight.
/// Init: PyTorch's `nn.Linear` default U(±1/√fan_in) (the reference draws every weight from
///   U(-0.005, 0.005); load those if the reference init matters).
/// Deviation: the reference applies BatchNorm to each input before its projection; mmfuse
///   leaves normalisation to the encoders (put a norm layer at the end of each encoder).
/// Missing modality: its projection u_m is zero for that sample (so h_m = 0 and the gates
///   read zeros in its place) and its input gradient is zero there. Bimodal: the gate is
///   forced to the present modality, y = h_present exactly (y = a_0 h_0 + a_1 h_1 with
///   a_0 = p_1 z + (1 - p_1), a_1 = p_0 (1 - z) + (1 - p_0), p_m = 1 when m is present),
///   and y = 0 when both are absent.
///   M > 2: the absent modality's term z_m h_m is dropped; the other gates see zeros in
///   place of its projection (no renormalisation: the gates are independent sigmoids).
/// `last_gate()` returns the gate values z of the last forward (interpretability, as the
/// reference returns z).
template <std::size_t M, compute_type T = float>
class gated_multimodal_unit {
    static_assert(M >= 2 && M <= ops::max_parts,
                  "mmfuse::fusion::gated_multimodal_unit: 2 to 16 modalities");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// `in_features[m]` = d_m, `dim` = the common width; throws `value_error` unless all > 0.
    gated_multimodal_unit(const std::array<index_t, M>& in_features, index_t dim)
        : in_(in_features),
          dim_(checked(in_features, dim)),
          proj_(projections(in_features, dim_, std::make_index_sequence<M>{})),
          gate_(index_t(M) * dim_, gate_width(dim_), false) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t m = 0; m < M; ++m)
            v.child("proj" + std::to_string(m), proj_[m]);
        v.child("gate", gate_);
    }
    void reset_parameters(philox_generator& g) {
        for (auto& p : proj_)
            p.reset_parameters(g);
        gate_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        check_inputs(xs);
        const extents out = xs[0].extents().with_axis(-1, dim_);
        views<T, M> parts{};
        for (std::size_t m = 0; m < M; ++m)
            parts[m] = detail::zero_absent(cx, path_, p, m, proj_[m].forward(cx, xs[m]));
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> u = cx.allocate(out.with_axis(-1, index_t(M) * dim_));
        ops::concat<T>(op, -1, std::span<const tensor_ref<const T>>(parts), u);
        const tensor_ref<T> h = cx.allocate(u.extents());
        ops::unary<T>(op, ops::unary_kind::tanh, u, h);
        const tensor_ref<const T> g = gate_.forward(cx, u);
        const tensor_ref<T> z = cx.allocate(g.extents());
        ops::unary<T>(op, ops::unary_kind::sigmoid, g, z);
        const tensor_ref<const T> a =
            M == 2 ? bimodal_coefficients(cx, z, p) : tensor_ref<const T>(z);
        // y = sum_m a_m h_m: the product viewed (..., M, dim), summed over the M axis.
        const tensor_ref<T> prod = cx.allocate(u.extents());
        ops::binary<T>(op, ops::binary_kind::mul, a, h, prod);
        const tensor_ref<T> y = cx.allocate(out);
        ops::reduce<T>(op, ops::reduce_kind::sum, -2, by_modality(prod), y);
        last_gate_ = z;
        if (cx.training) {
            u_ = u;
            h_ = h;
            g_ = g;
            a_ = a;
            p_ = p;
            y_extents_ = out;
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "gated_multimodal_unit", saved_, y_extents_, dy);
        const ops::op_context op = cx.op(path_);
        // d(a_m h_m) = dy for every m: da = dy h, dh = dy a (in the (..., M, dim) view).
        const tensor_ref<const T> dy_m = dy.unsqueeze(-2);
        const tensor_ref<T> da = cx.allocate(u_.extents());
        ops::binary<T>(op, ops::binary_kind::mul, dy_m, by_modality(h_), by_modality(da));
        const tensor_ref<T> dh = cx.allocate(u_.extents());
        ops::binary<T>(op, ops::binary_kind::mul, dy_m, by_modality(a_), by_modality(dh));
        const tensor_ref<T> du = cx.allocate(u_.extents());
        ops::unary_backward<T>(op, ops::unary_kind::tanh, u_, dh, du);
        const tensor_ref<const T> dz =
            M == 2 ? bimodal_gate_gradient(cx, da) : tensor_ref<const T>(da);
        const tensor_ref<T> dg = cx.allocate(g_.extents());
        ops::unary_backward<T>(op, ops::unary_kind::sigmoid, g_, dz, dg);
        ops::add<T>(op, du, gate_.backward(cx, dg), du);
        views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<const T> du_m =
                tensor_ref<const T>(du).narrow(-1, index_t(m) * dim_, dim_);
            dxs[m] = proj_[m].backward(cx, detail::zero_absent(cx, path_, p_, m, du_m));
        }
        return dxs;
    }

    /// The gate values z (B, ..., dim) for M = 2, (B, ..., M dim) otherwise, of the last
    /// forward (a workspace view: valid until the workspace is reset).
    tensor_ref<const T> last_gate() const noexcept { return last_gate_; }
    index_t dim() const noexcept { return dim_; }
    nn::linear<dyn, dyn, T>& projection(std::size_t m) noexcept { return proj_[m]; }
    nn::linear<dyn, dyn, T>& gate() noexcept { return gate_; }
    const std::string& path() const noexcept { return path_; }

private:
    static index_t gate_width(index_t dim) noexcept { return M == 2 ? dim : index_t(M) * dim; }
    template <std::size_t... I>
    static std::array<nn::linear<dyn, dyn, T>, M> projections(const std::array<index_t, M>& in,
                                                              index_t dim,
                                                              std::index_sequence<I...>) {
        return {nn::linear<dyn, dyn, T>(in[I], dim, false)...};
    }
    static index_t checked(const std::array<index_t, M>& in, index_t dim) {
        for (index_t d : in)
            if (d < 1)
                throw value_error("fusion::gated_multimodal_unit", "in_features must be >= 1");
        if (dim < 1) throw value_error("fusion::gated_multimodal_unit", "dim must be >= 1");
        return dim;
    }

    void check_inputs(const views<T, M>& xs) const {
        for (std::size_t m = 0; m < M; ++m) {
            const detail::indexed_name what{"gated_multimodal_unit input", int(m)};
            if (xs[m].data() == nullptr && xs[m].rank() == 0)
                throw shape_error(path_, what.str(),
                                  "a tensor (a missing modality is marked in the presence mask)",
                                  "an empty view");
            if (xs[m].rank() < 1 || xs[m].extent(-1) != in_[m] || xs[m].rank() != xs[0].rank() ||
                xs[m].extents().with_axis(-1, 1) != xs[0].extents().with_axis(-1, 1))
                throw shape_error(path_, what.str(),
                                  "shape " + xs[0].extents().with_axis(-1, in_[m]).to_string() +
                                      " (input 0's leading axes, " + std::to_string(in_[m]) +
                                      " features)",
                                  "shape " + xs[m].extents().to_string());
        }
    }

    /// A contiguous (..., M dim) tensor viewed as (..., M, dim).
    template <class U>
    tensor_ref<U> by_modality(tensor_ref<U> t) const {
        std::array<index_t, max_rank + 1> e{};
        const int r = t.rank();
        for (int k = 0; k + 1 < r; ++k)
            e[std::size_t(k)] = t.extent(k);
        e[std::size_t(r - 1)] = index_t(M);
        e[std::size_t(r)] = dim_;
        return t.reshape(extents::from(std::span<const index_t>(e.data(), std::size_t(r + 1))));
    }

    /// Bimodal mixing coefficients a = [a_0; a_1] (..., 2 dim) from the gate z (..., dim):
    /// a_0 = p_1 z + q_1, a_1 = p_0 (1 - z) + q_0 with p_m = 1 where modality m is present and
    /// q_m = 1 - p_m (a = [z; 1 - z] without a mask); exact: a_0 = 1 where x_1 is absent.
    tensor_ref<const T> bimodal_coefficients(const nn::step_context<T>& cx, tensor_ref<const T> z,
                                             const presence& p) const {
        const ops::op_context op = cx.op(path_);
        const tensor_ref<T> a = cx.allocate(z.extents().with_axis(-1, 2 * dim_));
        const tensor_ref<T> a0 = a.narrow(-1, 0, dim_), a1 = a.narrow(-1, dim_, dim_);
        ops::copy(op, z, a0);
        detail::fill_constant(op, a1, 1.0);
        ops::binary<T>(op, ops::binary_kind::sub, a1, z, a1);
        if (p.data() == nullptr) return a;
        const int rank = z.rank();
        for (std::size_t m = 0; m < 2; ++m) {
            const tensor_ref<T> am = m == 0 ? a0 : a1;
            const tensor_ref<const T> w = detail::presence_weights(cx, path_, p, 1 - m, rank);
            const tensor_ref<T> q = cx.allocate(w.extents());
            detail::fill_constant(op, q, 1.0);
            ops::binary<T>(op, ops::binary_kind::sub, q, w, q);
            ops::binary<T>(op, ops::binary_kind::mul, am, w, am);
            ops::add<T>(op, am, q, am);
        }
        return a;
    }

    /// dz from da = [da_0; da_1] for the bimodal coefficients: dz = p_1 da_0 - p_0 da_1.
    tensor_ref<const T> bimodal_gate_gradient(const nn::step_context<T>& cx,
                                              tensor_ref<const T> da) const {
        const ops::op_context op = cx.op(path_);
        tensor_ref<const T> da0 = da.narrow(-1, 0, dim_), da1 = da.narrow(-1, dim_, dim_);
        if (p_.data() != nullptr) {
            da0 = detail::zero_absent(cx, path_, p_, 1, da0);
            da1 = detail::zero_absent(cx, path_, p_, 0, da1);
        }
        const tensor_ref<T> dz = cx.allocate(da0.extents());
        ops::binary<T>(op, ops::binary_kind::sub, da0, da1, dz);
        return dz;
    }

    std::array<index_t, M> in_{};
    index_t dim_;
    std::array<nn::linear<dyn, dyn, T>, M> proj_;
    nn::linear<dyn, dyn, T> gate_;
    tensor_ref<const T> u_{}, h_{}, g_{}, a_{}, last_gate_{};
    presence p_{};
    extents y_extents_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
