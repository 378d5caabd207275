#pragma once
/// \file
/// oneDNN plans of the softmax ops. Implementation detail of the oneDNN backend.
///
/// * `softmax_desc` without masks and without the causal rule: one `softmax_forward`
///   (accurate: max-subtracted) over the last axis. A scale != 1 (oneDNN 2.6 softmax has no
///   input scale) is an `eltwise_linear` y = scale * x first, then the softmax in place on y.
/// * `softmax_backward_desc`: one `softmax_backward` from y and dy; a scale != 1 is an
///   `eltwise_linear` dx *= scale in place afterwards. Native only where oneDNN has a fast
///   softmax backward: oneDNN 2.6 has none for AVX2 (its `ref:any` is 4x slower than the
///   Eigen kernel at 50176 x 196), so there the op falls back.
///
/// Masked and causal softmax have no oneDNN 2.6 form (the masks are boolean keep-masks with
/// broadcasting, the causal rule needs the row index) and stay non-native. Unlike the Eigen
/// kernel, oneDNN turns a row of x that is entirely -inf into NaN rather than zeros (only
/// masks make such rows in mmfuse's own layers). Declined: empty tensors, a broadcast
/// operand, y (dx) with a layout other than x's (dy's) — oneDNN 2.6 takes one descriptor for
/// both — and layouts oneDNN serves only with its reference implementation (e.g. a last axis
/// without unit stride).

#include <algorithm>
#include <array>
#include <memory>
#include <span>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/backend/onednn/norm.hpp"  // rows_desc, shared_rows_desc
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

/// y = alpha * x on one layout `md` as an `eltwise_linear` primitive (x may be y); absent
/// (and a no-op) when alpha == 1.
class scale_step {
public:
    /// Builds the step; false when oneDNN has only its reference implementation for `md`.
    bool build(const dnnl::engine& eng, const memory::desc& md, double alpha,
               const dnnl::primitive_attr& attr) {
        if (alpha == 1.0) return true;
        const auto pd = compat::eltwise_forward_pd(eng, dnnl::algorithm::eltwise_linear, md, md,
                                                   float(alpha), 0.0f, attr);
        if (is_reference_impl(pd)) return false;
        scratch_bytes_ = scratchpad_bytes(pd);
        prim_ = bound_primitive(dnnl::eltwise_forward(pd));
        prim_.bind(DNNL_ARG_SRC, md, eng);
        prim_.bind(DNNL_ARG_DST, md, eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
        return true;
    }
    /// Runs y = alpha * x (nothing when alpha == 1).
    void operator()(const run_context& cx, const void* x, void* y) {
        if (prim_) prim_(*cx.stream, x, y, cx.scratch);
    }
    /// Bytes of oneDNN scratchpad the step needs.
    std::size_t scratch_bytes() const noexcept { return scratch_bytes_; }

private:
    bound_primitive prim_;
    std::size_t scratch_bytes_ = 0;
};

/// softmax (no masks, not causal): x -> y, y = softmax(scale * x) (see the file comment).
class softmax_plan final : public plan {
public:
    softmax_plan(const ops::softmax_desc& d, std::span<const any_tensor_ref> in,
                 std::span<const any_tensor_ref> out, const build_context& bx) {
        const auto md = shared_rows_desc(in[0], out[0]);
        if (!md) return;
        const dnnl::engine& eng = *bx.engine;
        const dnnl::primitive_attr attr = base_attr(bx);
        if (!scale_.build(eng, *md, d.scale, attr)) return;
        scaled_ = d.scale != 1.0;
        const auto pd = compat::softmax_forward_pd(eng, *md, *md, compat::ndims(*md) - 1, attr);
        if (is_reference_impl(pd)) return;
        scratch_bytes = std::max(scratchpad_bytes(pd), scale_.scratch_bytes());
        prim_ = bound_primitive(dnnl::softmax_forward(pd));
        prim_.bind(DNNL_ARG_SRC, *md, eng);
        prim_.bind(DNNL_ARG_DST, *md, eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
    }

    bool usable() const noexcept { return bool(prim_); }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        void* y = out[0].data();
        scale_(cx, in[0].data(), y);
        prim_(*cx.stream, scaled_ ? y : in[0].data(), y, cx.scratch);
    }

private:
    bound_primitive prim_;
    scale_step scale_;
    bool scaled_ = false;
};

/// softmax_backward: y, dy -> dx = scale * y * (dy - sum(dy * y)) (see the file comment).
class softmax_backward_plan final : public plan {
public:
    softmax_backward_plan(const ops::softmax_backward_desc& d, std::span<const any_tensor_ref> in,
                          std::span<const any_tensor_ref> out, const build_context& bx) {
        const auto y_md = rows_desc(in[0]);
        const auto diff_md = shared_rows_desc(in[1], out[0]);
        if (!y_md || !diff_md) return;
        const dnnl::engine& eng = *bx.engine;
        const dnnl::primitive_attr attr = base_attr(bx);
        const int axis = compat::ndims(*y_md) - 1;
        const auto hint = compat::softmax_forward_pd(eng, *y_md, *y_md, axis, attr);
        const auto pd = compat::softmax_backward_pd(eng, *diff_md, *diff_md, *y_md, axis, attr,
                                                    hint);
        if (is_reference_impl(pd)) return;
        if (!scale_.build(eng, *diff_md, d.scale, attr)) return;
        scratch_bytes = std::max(scratchpad_bytes(pd), scale_.scratch_bytes());
        prim_ = bound_primitive(dnnl::softmax_backward(pd));
        prim_.bind(DNNL_ARG_DST, *y_md, eng);
        prim_.bind(DNNL_ARG_DIFF_DST, *diff_md, eng);
        prim_.bind(DNNL_ARG_DIFF_SRC, *diff_md, eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
    }

    bool usable() const noexcept { return bool(prim_); }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        void* dx = out[0].data();
        prim_(*cx.stream, in[0].data(), in[1].data(), dx, cx.scratch);
        scale_(cx, dx, dx);
    }

private:
    bound_primitive prim_;
    scale_step scale_;
};

/// True when oneDNN has a non-reference softmax backward on this CPU (probed once on a small
/// dense f32 problem). oneDNN 2.6 has one for AVX512 only: on AVX2 the op is not native.
inline bool softmax_backward_is_fast() noexcept {
    static const bool fast = [] {
        try {
            const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
            const memory::desc md({16, 64}, memory::data_type::f32, memory::dims{64, 1});
            const dnnl::primitive_attr attr;
            const auto hint = compat::softmax_forward_pd(eng, md, md, 1, attr);
            return !is_reference_impl(compat::softmax_backward_pd(eng, md, md, md, 1, attr, hint));
        } catch (...) {
            return false;
        }
    }();
    return fast;
}

}  // namespace detail

/// softmax runs on oneDNN for f32 (bf16 where the CPU has bf16 kernels) when it has no
/// mask and no causal rule.
inline bool is_native(const ops::softmax_desc& d, dtype t) noexcept {
    return d.masks == 0 && !d.causal && native_float(t);
}

inline std::unique_ptr<plan> make_plan(const ops::softmax_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (!is_native(d, in[0].type()) || any_empty(in)) return nullptr;
    return usable_or_null<detail::softmax_plan>(d, in, out, bx);
}

/// softmax_backward runs on oneDNN for f32 (bf16 where the CPU has bf16 kernels) on CPUs
/// where oneDNN has a fast softmax backward (not AVX2 with oneDNN 2.6).
inline bool is_native(const ops::softmax_backward_desc&, dtype t) noexcept {
    return native_float(t) && detail::softmax_backward_is_fast();
}

inline std::unique_ptr<plan> make_plan(const ops::softmax_backward_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in)) return nullptr;
    return usable_or_null<detail::softmax_backward_plan>(d, in, out, bx);
}

}  // namespace mmfuse::inline v0::backend::onednn
