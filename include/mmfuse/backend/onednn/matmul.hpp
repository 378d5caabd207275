#pragma once
/// \file
/// oneDNN plan of `matmul_desc`: one `dnnl::matmul` primitive per operand signature.
///   C = act(alpha op(A) op(B) + beta C + bias)
/// maps to: product scale alpha (v2 output scale, v3 source scale), then post-ops in order
/// sum(beta) (when beta != 0), binary add of the bias row (1, ..., 1, N), eltwise relu or
/// gelu_tanh. Transposes are stride swaps of the memory descriptors; a rank-2 operand gets
/// leading batch axes of extent 1 (oneDNN broadcasts them), as does a stride-0 batch axis.
/// Declined (the op falls back) when oneDNN would pick its reference implementation (e.g. no
/// unit stride in either of an operand's last two axes) or cannot build the primitive.
/// Implementation detail of the oneDNN backend.

#include <memory>
#include <span>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

/// `t` viewed as a rank-`rank` operand of a matmul: leading axes of extent 1 prepended, the
/// last two axes swapped when `transpose`, stride-0 batch axes turned into extent 1.
inline memory::desc matmul_operand_desc(const any_tensor_ref& t, int rank, bool transpose) {
    const int r = t.extents().rank();
    memory::dims dims(size_t(rank), 1), strides(size_t(rank), 0);
    for (int i = 0; i < r; ++i) {
        const size_t at = size_t(rank - r + i);
        dims[at] = t.extents()[i];
        strides[at] = t.strides()[size_t(i)];
    }
    if (transpose) {
        std::swap(dims[size_t(rank - 1)], dims[size_t(rank - 2)]);
        std::swap(strides[size_t(rank - 1)], strides[size_t(rank - 2)]);
    }
    // Prepended and broadcast batch axes: extent 1, with a stride that keeps the descriptor
    // valid (the size of one matrix).
    const memory::dim matrix = dims[size_t(rank - 2)] * strides[size_t(rank - 2)] +
                               dims[size_t(rank - 1)] * strides[size_t(rank - 1)];
    for (int i = 0; i < rank - 2; ++i)
        if (i < rank - r || (strides[size_t(i)] == 0 && dims[size_t(i)] > 1)) {
            dims[size_t(i)] = 1;
            strides[size_t(i)] = matrix;
        }
    return memory::desc(dims, *data_type_of(t.type()), strides);
}

class matmul_plan final : public plan {
public:
    matmul_plan(const ops::matmul_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out, const build_context& bx) {
        const any_tensor_ref& c = out[0];
        const int rank = c.extents().rank();
        const memory::desc a_md = matmul_operand_desc(in[0], rank, d.transpose_a);
        const memory::desc b_md = matmul_operand_desc(in[1], rank, d.transpose_b);
        const memory::desc c_md = desc_of(c);

        dnnl::primitive_attr attr = base_attr(bx);
        alpha_ = float(d.alpha);
        if (d.alpha != 1.0) compat::set_product_scale(attr, alpha_);
        dnnl::post_ops po;
        if (d.beta != 0.0) po.append_sum(float(d.beta));
        const bool biased = d.epilogue != ops::matmul_epilogue::none;
        memory::desc bias_md;
        if (biased) {
            memory::dims dims(size_t(rank), 1), strides(size_t(rank), 0);
            dims[size_t(rank - 1)] = in[2].extents()[0];
            strides[size_t(rank - 1)] = in[2].strides()[0];
            for (int i = 0; i < rank - 1; ++i)
                strides[size_t(i)] = dims[size_t(rank - 1)] * strides[size_t(rank - 1)];
            bias_md = memory::desc(dims, *data_type_of(in[2].type()), strides);
            po.append_binary(dnnl::algorithm::binary_add, bias_md);
        }
        if (d.epilogue == ops::matmul_epilogue::bias_relu)
            compat::append_eltwise(po, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        if (d.epilogue == ops::matmul_epilogue::bias_gelu_tanh)
            compat::append_eltwise(po, dnnl::algorithm::eltwise_gelu_tanh, 0.0f, 0.0f);
        attr.set_post_ops(po);

        const auto pd = compat::matmul_pd(*bx.engine, a_md, b_md, c_md, attr);
        if (is_reference_impl(pd)) return;  // declined: Eigen is faster
        scratch_bytes = scratchpad_bytes(pd);
        prim_ = bound_primitive(dnnl::matmul(pd));
        prim_.bind(DNNL_ARG_SRC, a_md, *bx.engine);
        prim_.bind(DNNL_ARG_WEIGHTS, b_md, *bx.engine);
        prim_.bind(DNNL_ARG_DST, c_md, *bx.engine);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), *bx.engine);
        if (biased)
            bias_slot_ = prim_.bind(DNNL_ARG_ATTR_MULTIPLE_POST_OP(d.beta != 0.0 ? 1 : 0) | DNNL_ARG_SRC_1,
                       bias_md, *bx.engine);
        if (compat::runtime_scales && d.alpha != 1.0)
            scale_slot_ = prim_.bind(compat::product_scale_arg,
                       memory::desc({1}, memory::data_type::f32, memory::dims{1}), *bx.engine);
    }

    /// False when the build declined (reference implementation only).
    bool usable() const noexcept { return bool(prim_); }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        std::array<void*, 6> handles{in[0].data(), in[1].data(), out[0].data(), cx.scratch};
        if (bias_slot_ >= 0) handles[size_t(bias_slot_)] = in[2].data();
        if (scale_slot_ >= 0) handles[size_t(scale_slot_)] = &alpha_;
        prim_.execute(*cx.stream, handles);
    }

private:
    bound_primitive prim_;
    float alpha_ = 1.0f;
    int bias_slot_ = -1;
    int scale_slot_ = -1;
};

}  // namespace detail

/// matmul runs on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::matmul_desc&, dtype t) noexcept {
    return native_float(t);
}

inline std::unique_ptr<plan> make_plan(const ops::matmul_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (out[0].extents().numel() == 0 || in[0].extents()[in[0].extents().rank() - 1] == 0 ||
        in[0].extents()[in[0].extents().rank() - 2] == 0 || d.alpha == 0.0)
        return nullptr;  // empty products (K = 0 still scales C by beta) and alpha = 0 (BLAS:
                         // A and B are not read, so NaN in them must not reach C): the
                         // fallback's rules
    return usable_or_null<detail::matmul_plan>(d, in, out, bx);
}

}  // namespace mmfuse::inline v0::backend::onednn
