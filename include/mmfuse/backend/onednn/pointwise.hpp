#pragma once
/// \file
/// oneDNN plans of the point-wise ops and of the reduction, one primitive each:
///   * unary_desc          -> eltwise forward (relu, gelu_erf, gelu_tanh, silu = swish with
///                            alpha 1, sigmoid = logistic, tanh); y may be x's memory;
///   * unary_backward_desc -> eltwise backward from the source x (dx = f'(x) dy);
///   * binary_desc         -> binary add / sub / mul; a broadcast (stride-0) operand becomes
///                            src1 with extent-1 axes, swapped into that place for add and mul;
///   * bias_add_desc       -> binary add with the bias as src1 of extents (1, ..., 1, N);
///   * reduce_desc         -> reduction sum / mean over one axis, y viewed with the axis of
///                            extent 1; `accumulate` is a sum post-op.
/// Declined (the op falls back): empty operands; a broadcast first operand of sub, or two
/// broadcast operands; y (dx) laid out differently from x (dy); and every layout oneDNN
/// serves only with its reference implementation — on this oneDNN that is any operand that
/// is not dense in some axis order (gapped views), binary operands in different axis
/// orders, and reductions over an axis that is not innermost in memory.
/// Implementation detail of the oneDNN backend.

#include <array>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/backend/onednn/layout.hpp"
#include "mmfuse/backend/onednn/matmul.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

/// oneDNN's eltwise algorithm and alpha for activation `k`.
inline std::pair<dnnl::algorithm, float> eltwise_of(ops::unary_kind k) noexcept {
    switch (k) {
        case ops::unary_kind::relu:
            return {dnnl::algorithm::eltwise_relu, 0.0f};
        case ops::unary_kind::gelu_erf:
            return {dnnl::algorithm::eltwise_gelu_erf, 0.0f};
        case ops::unary_kind::gelu_tanh:
            return {dnnl::algorithm::eltwise_gelu_tanh, 0.0f};
        case ops::unary_kind::silu:
            return {dnnl::algorithm::eltwise_swish, 1.0f};
        case ops::unary_kind::sigmoid:
            return {dnnl::algorithm::eltwise_logistic, 0.0f};
        case ops::unary_kind::tanh:
            break;
    }
    return {dnnl::algorithm::eltwise_tanh, 0.0f};
}

/// Binary add of `a` (src0, never broadcast) and `b` (src1, stride-0 axes as extent 1) into
/// `y`, or src0 - src1 / src0 * src1; `a_index` / `b_index` are their input positions.
inline std::unique_ptr<plan> binary_plan(dnnl::algorithm alg, const any_tensor_ref& a,
                                         int a_index, const memory::desc& b_md, int b_index,
                                         const any_tensor_ref& y, const build_context& bx) {
    if (has_broadcast(a)) return nullptr;
    const std::vector<int> order = axis_order_of(y);
    const memory::desc a_md = canonical_desc_of(a, order);
    const memory::desc y_md = canonical_desc_of(y, order);
    const auto pd = compat::binary_pd(*bx.engine, alg, a_md, b_md, y_md, base_attr(bx));
    return single_step_plan<dnnl::binary>(pd, *bx.engine, [&](primitive_step& s) {
        s.input(DNNL_ARG_SRC_0, a_md, a_index, *bx.engine)
            .input(DNNL_ARG_SRC_1, b_md, b_index, *bx.engine)
            .output(DNNL_ARG_DST, y_md, 0, *bx.engine);
    });
}

}  // namespace detail

// ---- unary --------------------------------------------------------------------------------

/// Activations run on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::unary_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = f(x) (in: x; out: y, which may be x's memory), one eltwise forward primitive.
/// Declined unless x and y have the same layout (oneDNN 2's eltwise writes the source's).
/// Differs from the reference on non-finite input only: oneDNN's relu maps NaN to 0
/// (PyTorch and Eigen keep NaN), and gelu_tanh's derivative is NaN for |x| >~ 1e13.
inline std::unique_ptr<plan> make_plan(const ops::unary_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(out)) return nullptr;
    const std::vector<int> order = detail::axis_order_of(out[0]);
    const memory::desc x_md = detail::canonical_desc_of(in[0], order);
    const memory::desc y_md = detail::canonical_desc_of(out[0], order);
    if (x_md != y_md) return nullptr;
    const auto [alg, alpha] = detail::eltwise_of(d.kind);
    const auto pd =
        compat::eltwise_forward_pd(*bx.engine, alg, x_md, y_md, alpha, 0.0f, base_attr(bx));
    return detail::single_step_plan<dnnl::eltwise_forward>(
        pd, *bx.engine, [&](detail::primitive_step& s) {
            s.input(DNNL_ARG_SRC, x_md, 0, *bx.engine).output(DNNL_ARG_DST, y_md, 0, *bx.engine);
        });
}

/// Activation derivatives run on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::unary_backward_desc&, dtype t) noexcept {
    return native_float(t);
}

/// dx = f'(x) dy (in: x, dy; out: dx), one eltwise backward primitive from the source
/// (relu's derivative is 0 at x = 0, as PyTorch's). Declined unless dx and dy have the same
/// layout (oneDNN 2 writes diff_dst's); an x in another layout gets the reference
/// implementation, so is declined too.
inline std::unique_ptr<plan> make_plan(const ops::unary_backward_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(out)) return nullptr;
    const std::vector<int> order = detail::axis_order_of(out[0]);
    const memory::desc x_md = detail::canonical_desc_of(in[0], order);
    const memory::desc dy_md = detail::canonical_desc_of(in[1], order);
    const memory::desc dx_md = detail::canonical_desc_of(out[0], order);
    if (dy_md != dx_md) return nullptr;
    const auto [alg, alpha] = detail::eltwise_of(d.kind);
    const dnnl::primitive_attr attr = base_attr(bx);
    const auto hint = compat::eltwise_forward_pd(*bx.engine, alg, x_md, x_md, alpha, 0.0f, attr);
    const auto pd =
        compat::eltwise_backward_pd(*bx.engine, alg, dx_md, dy_md, x_md, alpha, 0.0f, attr, hint);
    return detail::single_step_plan<dnnl::eltwise_backward>(
        pd, *bx.engine, [&](detail::primitive_step& s) {
            s.input(DNNL_ARG_SRC, x_md, 0, *bx.engine)
                .input(DNNL_ARG_DIFF_DST, dy_md, 1, *bx.engine)
                .output(DNNL_ARG_DIFF_SRC, dx_md, 0, *bx.engine);
        });
}

// ---- binary and bias_add ------------------------------------------------------------------

/// add / sub / mul run on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::binary_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = a (op) b (in: a, b, both with y's extents, stride 0 on broadcast axes; out: y, which
/// may be a's or b's memory), one binary primitive. oneDNN broadcasts only its second
/// source, so a broadcast `a` trades places with `b` for add and mul; declined for sub, or
/// when both are broadcast.
inline std::unique_ptr<plan> make_plan(const ops::binary_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(out)) return nullptr;
    const dnnl::algorithm alg = d.kind == ops::binary_kind::add   ? dnnl::algorithm::binary_add
                                : d.kind == ops::binary_kind::sub ? dnnl::algorithm::binary_sub
                                                                  : dnnl::algorithm::binary_mul;
    const bool swap = has_broadcast(in[0]) && d.kind != ops::binary_kind::sub;
    const int a = swap ? 1 : 0, b = 1 - a;
    const std::vector<int> order = detail::axis_order_of(out[0]);
    return detail::binary_plan(alg, in[size_t(a)], a,
                               detail::canonical_desc_of(in[size_t(b)], order, true), b, out[0],
                               bx);
}

/// Bias addition runs on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::bias_add_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = x + bias (in: x (..., N), bias (N); out: y, which may be x's memory), one binary add
/// with the bias as src1 of extents (1, ..., 1, N).
inline std::unique_ptr<plan> make_plan(const ops::bias_add_desc&,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(out)) return nullptr;
    const any_tensor_ref& x = in[0];
    const size_t rank = size_t(std::max(x.extents().rank(), 1));
    detail::strided_dims bias{memory::dims(rank, 1), memory::dims(rank, 0)};
    bias.dims.back() = in[1].extents()[0];
    bias.strides.back() = in[1].strides()[0];
    const std::vector<int> order = detail::axis_order_of(out[0]);
    return detail::binary_plan(dnnl::algorithm::binary_add, x, 0,
                               detail::canonical_desc(bias, *data_type_of(in[1].type()), order),
                               1, out[0], bx);
}

// ---- reduce -------------------------------------------------------------------------------

namespace detail {

/// A reduction over an axis that is not innermost, as a matrix product with a row of ones:
/// x viewed as (P, A, Q) (P: the axes before the reduced one merged, A: the reduced axis,
/// Q: the axes after it merged), y as (P, 1, Q), y = alpha * ones(1, A) x + beta * y with
/// alpha = 1 (sum) or 1/A (mean) and beta = 1 when accumulating. This is how bias gradients
/// (a sum over rows) reach oneDNN's GEMM, where oneDNN 2.6's reduction primitive has only its
/// reference implementation. Declined when the axes around the reduced one cannot be merged
/// into single strides.
class ones_product_plan final : public plan {
public:
    ones_product_plan(const ops::reduce_desc& d, std::span<const any_tensor_ref> in,
                      std::span<const any_tensor_ref> out, const build_context& bx) {
        const any_tensor_ref& x = in[0];
        const int ax = x.extents().normalize_axis(d.axis);
        if (!merge(x, 0, ax, p_, p_stride_) || !merge(x, ax + 1, x.extents().rank(), q_, q_stride_))
            return;
        a_ = x.extents()[ax];
        a_stride_ = x.strides()[size_t(ax)];
        // y holds x's axes but the reduced one (or it with extent 1): the same merges.
        const any_tensor_ref& y = out[0];
        const int kept = y.extents().rank() == x.extents().rank() ? 1 : 0;
        index_t yp = 0, yq = 0;
        if (!merge(y, 0, ax, yp, yp_stride_) ||
            !merge(y, ax + kept, y.extents().rank(), yq, yq_stride_) || yp != p_ || yq != q_)
            return;
        // Extent-1 axes get the strides a dense layout would give them (oneDNN checks them).
        if (p_ == 1) p_stride_ = a_ * a_stride_ + q_ * q_stride_;
        if (yp == 1) yp_stride_ = q_ * yq_stride_;
        ones_.assign(size_t(a_), 1.0f);
        const ops::matmul_desc md{false, false,
                                  d.kind == ops::reduce_kind::mean ? 1.0 / double(a_) : 1.0,
                                  d.accumulate ? 1.0 : 0.0};
        const auto views = operands(in, out);
        product_ = std::make_unique<matmul_plan>(md, std::span<const any_tensor_ref>(views.data(), 2),
                                                 std::span<const any_tensor_ref>(views.data() + 2, 1), bx);
        if (!product_->usable()) {
            product_.reset();
            return;
        }
        scratch_bytes = product_->scratch_bytes;
    }

    bool usable() const noexcept { return product_ != nullptr; }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        const auto views = operands(in, out);
        product_->run(cx, std::span<const any_tensor_ref>(views.data(), 2),
                      std::span<const any_tensor_ref>(views.data() + 2, 1));
    }

private:
    /// Merges axes [from, to) of `t` into one of extent `n` and stride `stride` (n = 1 for
    /// an empty range); false when their strides do not nest.
    static bool merge(const any_tensor_ref& t, int from, int to, index_t& n, index_t& stride) {
        n = 1;
        stride = 1;
        for (int k = to - 1; k >= from; --k) {
            const index_t e = t.extents()[k];
            if (e == 1) continue;
            if (n > 1 && t.strides()[size_t(k)] != n * stride) return false;
            if (n == 1) stride = t.strides()[size_t(k)];
            n *= e;
        }
        return true;
    }

    /// ones (1, A), x as (P, A, Q), y as (P, 1, Q), over this call's memory.
    std::array<any_tensor_ref, 3> operands(std::span<const any_tensor_ref> in,
                                           std::span<const any_tensor_ref> out) const {
        const std::array<index_t, 2> ones_strides{a_, 1};
        const std::array<index_t, 3> x_strides{p_stride_, a_stride_, q_stride_};
        const std::array<index_t, 3> y_strides{yp_stride_, q_ * yq_stride_, yq_stride_};
        return {any_tensor_ref(tensor_ref<const float>(ones_.data(), extents{1, a_}, ones_strides)),
                any_tensor_ref(tensor_ref<const float>(static_cast<const float*>(in[0].data()),
                                                       extents{p_, a_, q_}, x_strides)),
                any_tensor_ref(tensor_ref<float>(static_cast<float*>(out[0].data()),
                                                 extents{p_, 1, q_}, y_strides))};
    }

    std::vector<float> ones_;
    std::unique_ptr<matmul_plan> product_;
    index_t p_ = 1, a_ = 1, q_ = 1;
    index_t p_stride_ = 1, a_stride_ = 1, q_stride_ = 1, yp_stride_ = 1, yq_stride_ = 1;
};

}  // namespace detail

/// Sums and means run on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::reduce_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = sum or mean of x over `axis` (in: x; out: y with the axis removed or of extent 1),
/// added to y with `accumulate` (a sum post-op), one reduction primitive accumulating in
/// f32. Where oneDNN has only its reference reduction (on oneDNN 2.6, an axis that is not
/// innermost in memory, e.g. a bias gradient summed over rows) it is a product with a row of
/// ones on oneDNN's GEMM instead (`ones_product_plan`); declined when neither fits.
inline std::unique_ptr<plan> make_plan(const ops::reduce_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in)) return nullptr;  // includes the NaN mean over an empty axis
    const any_tensor_ref& x = in[0];
    const any_tensor_ref& y = out[0];
    const int ax = x.extents().normalize_axis(d.axis);
    // y on x's axes: extent 1 on the reduced one (its stride is canonicalised away).
    detail::strided_dims y_dims = detail::strided_dims_of(x);
    for (int k = 0, j = 0; k < x.extents().rank(); ++k) {
        if (k == ax) {
            y_dims.dims[size_t(k)] = 1;
            if (y.extents().rank() == x.extents().rank()) ++j;
            continue;
        }
        y_dims.strides[size_t(k)] = y.strides()[size_t(j++)];
    }
    const std::vector<int> order = detail::axis_order_of(x);
    const memory::desc x_md = detail::canonical_desc_of(x, order);
    const memory::desc y_md = detail::canonical_desc(y_dims, *data_type_of(y.type()), order);
    dnnl::primitive_attr attr = base_attr(bx);
    if (d.accumulate) {
        dnnl::post_ops po;
        po.append_sum(1.0f);
        attr.set_post_ops(po);
    }
    const auto pd = compat::reduction_pd(*bx.engine,
                                         d.kind == ops::reduce_kind::sum
                                             ? dnnl::algorithm::reduction_sum
                                             : dnnl::algorithm::reduction_mean,
                                         x_md, y_md, attr);
    if (auto p = detail::single_step_plan<dnnl::reduction>(
            pd, *bx.engine, [&](detail::primitive_step& s) {
                s.input(DNNL_ARG_SRC, x_md, 0, *bx.engine)
                    .output(DNNL_ARG_DST, y_md, 0, *bx.engine);
            }))
        return p;
    return usable_or_null<detail::ones_product_plan>(d, in, out, bx);
}

}  // namespace mmfuse::inline v0::backend::onednn
