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
/// Under `precision::bf16` on a CPU with bf16 kernels, f32 A and B are first reordered into
/// dense bf16 copies in the plan's scratch and the product runs bf16 x bf16 -> f32 (f32
/// accumulation, f32 bias and C): oneDNN 2.6 ignores `fpmath_mode` on CPUs, so the rounding is
/// explicit (it is also what v3's implicit down-conversion computes). On AVX2 CPUs a
/// row-major B of a mid-sized product is copied column-major first, which oneDNN 2.6's
/// `gemm:jit` multiplies up to twice as fast (`copies_b_column_major`).
/// Implementation detail of the oneDNN backend.

#include <algorithm>
#include <memory>
#include <span>
#include <vector>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

/// K, the inner dimension of a matmul under `d` whose first operand is `a` ((M, K), or (K, M)
/// with `transpose_a`, with any leading batch axes).
inline index_t inner_dimension(const ops::matmul_desc& d, const any_tensor_ref& a) noexcept {
    const extents& e = a.extents();
    return e[e.rank() - (d.transpose_a ? 2 : 1)];
}

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

/// A matmul operand copied, before each product, into a dense buffer at a fixed offset of the
/// plan's scratch by a oneDNN reorder: rounded to bf16 (`precision::bf16` on CPUs with bf16
/// kernels) and/or stored with its last two axes swapped (`column_major`: the second-to-last
/// axis has unit stride). Shared by every plan that issues matmuls.
class staged_operand {
public:
    /// True when f32 operands are rounded to bf16 under `bx`: precision::bf16 where oneDNN
    /// has bf16 kernels (elsewhere the product stays f32, as documented).
    static bool rounds_to_bf16(dtype t, const build_context& bx) noexcept {
        return bx.math == precision::bf16 && t == dtype::f32 && cpu_has_bf16();
    }

    /// Builds the reorder of an operand described by `md` (any strides) into a dense copy of
    /// element type `type`; returns the copy's descriptor. `place` then fixes where it sits.
    memory::desc build(const memory::desc& md, memory::data_type type, bool column_major,
                       const dnnl::engine& eng) {
        const memory::dims dims = compat::dims(md);
        const std::size_t r = dims.size();
        std::vector<std::size_t> order(r);  // axes from the fastest-varying one outwards
        for (std::size_t i = 0; i < r; ++i)
            order[i] = r - 1 - i;
        if (column_major && r >= 2) std::swap(order[0], order[1]);
        memory::dims strides(r);
        memory::dim step = 1;
        for (const std::size_t axis : order) {
            strides[axis] = step;
            step *= dims[axis];
        }
        const memory::desc dense(dims, type, strides);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        const auto pd = compat::reorder_pd(eng, md, dense, attr);
        reorder_pad_ = scratchpad_bytes(pd);
        bytes = align64(dense.get_size());
        prim_ = bound_primitive(dnnl::reorder(pd));
        prim_.bind(DNNL_ARG_FROM, md, eng);
        prim_.bind(DNNL_ARG_TO, dense, eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
        return dense;
    }

    /// Puts the copy `offset` bytes into the plan's scratch.
    void place(std::size_t offset) noexcept { offset_ = offset; }

    /// True once built.
    explicit operator bool() const noexcept { return bool(prim_); }

    /// Copies `src` (or returns it unchanged when nothing was built) and returns the copy;
    /// the first bytes of `cx.scratch` are the reorder's own scratchpad.
    const void* operator()(const run_context& cx, const void* src) {
        if (!prim_) return src;
        std::byte* copy = cx.scratch + offset_;
        prim_(*cx.stream, src, copy, cx.scratch);
        return copy;
    }

    /// Bytes of the copy (64-aligned; 0 when nothing was built) and of the reorder's own
    /// scratchpad.
    std::size_t bytes = 0;
    std::size_t scratchpad() const noexcept { return reorder_pad_; }

private:
    bound_primitive prim_;
    std::size_t offset_ = 0;
    std::size_t reorder_pad_ = 0;
};

/// True when oneDNN 2.6's AVX2 GEMM (`gemm:jit`) is about 1.3-2x faster with B (K, N) stored
/// column-major than row-major, enough to pay for copying it: 64 <= M <= 512 and K, N >= 256
/// (measured at 1 and 2 threads for (K, N) in {512, 2048}^2: C = A B with row-major B ran at
/// 45 GFLOP/s against 85 column-major at M = 64-256; from M = 1024 on both run alike). B is
/// row-major when it is not transposed and its last axis has unit stride: a linear layer's
/// input gradient dX = dY W, and its weight gradient dW = dY^T X.
inline bool copies_b_column_major(const ops::matmul_desc& d, const any_tensor_ref& b,
                                  index_t m, index_t k, index_t n) noexcept {
    const int r = b.extents().rank();
    return !d.transpose_b && b.strides()[size_t(r - 1)] == 1 && m >= 64 && m <= 512 && k >= 256 &&
           n >= 256;
}

class matmul_plan final : public plan {
public:
    matmul_plan(const ops::matmul_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out, const build_context& bx) {
        const any_tensor_ref& c = out[0];
        const int rank = c.extents().rank();
        memory::desc a_md = matmul_operand_desc(in[0], rank, d.transpose_a);
        memory::desc b_md = matmul_operand_desc(in[1], rank, d.transpose_b);
        const memory::desc c_md = desc_of(c);
        const index_t m = c.extents()[rank - 2], n = c.extents()[rank - 1];
        const index_t k = inner_dimension(d, in[0]);
        // Staged copies (scratch layout: [oneDNN scratchpad (shared) | copy of A | copy of B]).
        const bool bf16 = staged_operand::rounds_to_bf16(in[0].type(), bx) &&
                          staged_operand::rounds_to_bf16(in[1].type(), bx);
        const bool column_b = copies_b_column_major(d, in[1], m, k, n) && f32_matmul_is_gemm_jit();
        if (bf16) a_md = a_copy_.build(a_md, memory::data_type::bf16, false, *bx.engine);
        if (bf16 || column_b)
            b_md = b_copy_.build(b_md, bf16 ? memory::data_type::bf16 : memory::data_type::f32,
                                 column_b, *bx.engine);
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
        const std::size_t pad =
            align64(std::max({scratchpad_bytes(pd), a_copy_.scratchpad(), b_copy_.scratchpad()}));
        scratch_bytes = pad + a_copy_.bytes + b_copy_.bytes;
        a_copy_.place(pad);
        b_copy_.place(pad + a_copy_.bytes);
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
        const void* a = a_copy_(cx, in[0].data());
        const void* b = b_copy_(cx, in[1].data());
        std::array<void*, 6> handles{const_cast<void*>(a), const_cast<void*>(b), out[0].data(),
                                     cx.scratch};
        if (bias_slot_ >= 0) handles[size_t(bias_slot_)] = in[2].data();
        if (scale_slot_ >= 0) handles[size_t(scale_slot_)] = &alpha_;
        prim_.execute(*cx.stream, handles);
    }

private:
    bound_primitive prim_;
    staged_operand a_copy_, b_copy_;
    float alpha_ = 1.0f;
    int bias_slot_ = -1;
    int scale_slot_ = -1;
};

}  // namespace detail

/// matmul runs on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::matmul_desc&, dtype t) noexcept {
    return native_float(t);
}

/// Inner dimension up to which an accumulating matmul (beta != 0) runs on the fallback.
inline constexpr index_t max_fallback_accumulate_k = 8;

inline std::unique_ptr<plan> make_plan(const ops::matmul_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (out[0].extents().numel() == 0 || in[0].extents()[in[0].extents().rank() - 1] == 0 ||
        in[0].extents()[in[0].extents().rank() - 2] == 0 || d.alpha == 0.0)
        return nullptr;  // empty products (K = 0 still scales C by beta) and alpha = 0 (BLAS:
                         // A and B are not read, so NaN in them must not reach C): the
                         // fallback's rules
    // Accumulating products (beta != 0) with a short inner dimension, such as the weight
    // gradient dW += dy^T x of a linear layer at batch 1-8, are left to the fallback: oneDNN
    // 2.6 applies beta as a sum post-op, which at K <= 8 costs 1.3-6.7x Eigen's GEMM
    // (512 x K x 2048, 1 thread: 0.85 ms vs 0.13 ms at K = 1, 0.43 vs 0.32 at K = 8; from
    // K = 32 on, oneDNN is faster).
    if (d.beta != 0.0 && inner_dimension(d, in[0]) <= max_fallback_accumulate_k) return nullptr;
    return usable_or_null<detail::matmul_plan>(d, in, out, bx);
}

}  // namespace mmfuse::inline v0::backend::onednn
