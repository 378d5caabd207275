#pragma once
/// \file
/// oneDNN plans of the norm ops, and the row helpers the row-wise plans (norm, softmax)
/// share. Implementation detail of the oneDNN backend.
///
/// * `layer_norm_desc`: one `layer_normalization_forward` (training: it saves mean and
///   variance) with `use_scale` when affine and `use_shift` when biased. oneDNN saves the
///   variance, mmfuse the rstd: the variance is written into rstd's memory (or scratch) and
///   turned into 1 / sqrt(variance + eps) by a loop over the R rows.
/// * `layer_norm_backward_desc`: one `layer_normalization_backward` (prop `backward` when
///   affine, `backward_data` otherwise) fed the saved mean and variance = 1 / rstd^2 (built
///   in scratch) with eps = 0, so that oneDNN's 1 / sqrt(variance + eps) is the saved rstd.
///   Parameter gradients are added to the outputs from scratch under `accumulate`.
/// * `rms_norm_desc` / `rms_norm_backward_desc`: oneDNN 2.6 has no RMS-norm primitive (and
///   layer norm cannot skip the centring), so they stay non-native (Eigen fallback).
///
/// oneDNN reads statistics and parameters as dense f32 vectors: an (R) / (N) operand without
/// unit stride is staged through scratch. The norms are native for f32 only (oneDNN keeps
/// statistics in f32, mmfuse in the tensor's dtype). Declined: empty tensors, x / y / dy /
/// dx not dense row-major (oneDNN 2.6 computes garbage for rows with gaps between them and
/// has only `lnorm_ref` for a last axis without unit stride), y (dx) with a layout other
/// than x's (dy's), since oneDNN 2.6 takes one descriptor for both.
/// Precision: oneDNN sums dgamma / dbeta over the rows in f32 (Eigen: in double); measured
/// against Eigen at 6272 x 512, their relative error is up to ~1e-4 (dx, y, mean, rstd:
/// ~1e-7).

#include <array>
#include <cmath>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <utility>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

/// Descriptor of an operand (..., N) of a row-wise op (reduction over the last axis) as
/// (R, N) when its leading axes merge into one strided axis (a rank-1 operand becomes
/// (1, N)), else its own descriptor (rank >= 2). Nothing for rank 0 or a broadcast operand.
inline std::optional<memory::desc> rows_desc(const any_tensor_ref& t) {
    const int rank = t.extents().rank();
    if (rank == 0 || has_broadcast(t)) return std::nullopt;
    const index_t n = t.extents()[rank - 1], sn = t.strides()[size_t(rank - 1)];
    index_t rows = 1, row_stride = n * sn, next = -1;
    for (int i = rank - 2; i >= 0; --i) {
        const index_t e = t.extents()[i], s = t.strides()[size_t(i)];
        if (e == 1) continue;
        if (next < 0) {
            row_stride = s;
        } else if (s != next) {
            return desc_of(t);  // leading axes do not merge: keep them
        }
        next = s * e;
        rows *= e;
    }
    return memory::desc({rows, n}, *data_type_of(t.type()), memory::dims{row_stride, sn});
}

/// The (R, N) descriptors of `x` and `y` when both exist and are equal (oneDNN 2.6 row-wise
/// primitives take one descriptor for source and destination), else nothing.
inline std::optional<memory::desc> shared_rows_desc(const any_tensor_ref& x,
                                                    const any_tensor_ref& y) {
    auto a = rows_desc(x), b = rows_desc(y);
    if (!a || !b || *a != *b) return std::nullopt;
    return a;
}

/// True when `t` is dense row-major (axes of extent 1 may have any stride).
inline bool is_row_major_dense(const any_tensor_ref& t) noexcept {
    index_t step = 1;
    for (int i = t.extents().rank() - 1; i >= 0; --i) {
        if (t.extents()[i] != 1 && t.strides()[size_t(i)] != step) return false;
        step *= t.extents()[i];
    }
    return true;
}

/// `rows_desc(t)` when `t` is dense row-major, else nothing. oneDNN 2.6's layer
/// normalisation reads rows with gaps between them wrongly (as if they were dense: measured
/// with a row stride of N + 3), so its plans take dense operands only.
inline std::optional<memory::desc> dense_rows_desc(const any_tensor_ref& t) {
    if (!is_row_major_dense(t)) return std::nullopt;
    return rows_desc(t);
}

/// A rank-1 f32 operand (statistics (R), parameters (N)) that oneDNN reads or writes as a
/// dense vector: the operand's own memory when it has unit stride, else (or when forced) a
/// buffer in the plan's scratch, copied in by `load` and out by `store`.
class dense_vector {
public:
    /// Decides where the vector lives for operand `t`; a staged vector takes its buffer at
    /// `scratch_end`, which advances (64-byte aligned).
    void place(const any_tensor_ref& t, bool force_staged, std::size_t& scratch_end) {
        n_ = t.extents().numel();
        stride_ = t.strides()[0];
        staged_ = force_staged || stride_ != 1;
        if (staged_) {
            offset_ = scratch_end;
            scratch_end += align64(std::size_t(n_) * sizeof(float));
        }
    }
    /// The dense memory oneDNN uses (scratch or the operand's).
    float* data(const run_context& cx, const any_tensor_ref& t) const {
        return staged_ ? reinterpret_cast<float*>(cx.scratch + offset_)
                       : static_cast<float*>(t.data());
    }
    /// Copies `t` into the staging buffer (nothing when unstaged).
    void load(const run_context& cx, const any_tensor_ref& t) const {
        if (!staged_) return;
        const float* src = static_cast<const float*>(t.data());
        float* dst = data(cx, t);
        for (index_t i = 0; i < n_; ++i)
            dst[i] = src[i * stride_];
    }
    /// Writes the staging buffer to `t`, or adds it when `add` (nothing when unstaged).
    void store(const run_context& cx, const any_tensor_ref& t, bool add) const {
        if (!staged_) return;
        const float* src = data(cx, t);
        float* dst = static_cast<float*>(t.data());
        for (index_t i = 0; i < n_; ++i)
            dst[i * stride_] = add ? dst[i * stride_] + src[i] : src[i];
    }
    /// Element `i` of operand `t` in its own layout.
    float& at(const any_tensor_ref& t, index_t i) const {
        return static_cast<float*>(t.data())[i * stride_];
    }
    index_t size() const noexcept { return n_; }

private:
    index_t n_ = 0;
    index_t stride_ = 1;
    bool staged_ = false;
    std::size_t offset_ = 0;
};

/// oneDNN's scale / shift flags for an affine (gamma) and biased (beta) layer norm.
inline dnnl::normalization_flags norm_flags(bool affine, bool bias) {
    using f = dnnl::normalization_flags;
    return (affine ? f::use_scale : f::none) | (affine && bias ? f::use_shift : f::none);
}

/// Dense f32 descriptor of a parameter vector (N).
inline memory::desc parameter_desc(index_t n) {
    return memory::desc({n}, memory::data_type::f32, memory::dims{1});
}

/// layer_norm: x [, gamma [, beta]] -> y, mean, rstd (see the file comment).
class layer_norm_plan final : public plan {
public:
    layer_norm_plan(const ops::layer_norm_desc& d, std::span<const any_tensor_ref> in,
                    std::span<const any_tensor_ref> out, const build_context& bx)
        : eps_(d.eps), affine_(d.affine), bias_(d.affine && d.bias) {
        const auto data_md = shared_rows_desc(in[0], out[0]);
        if (!data_md || !is_row_major_dense(in[0])) return;
        const auto pd = compat::layer_norm_forward_pd(*bx.engine, *data_md, *data_md,
                                                      float(d.eps), norm_flags(affine_, bias_),
                                                      base_attr(bx));
        if (is_reference_impl(pd)) return;

        std::size_t end = align64(scratchpad_bytes(pd));
        mean_.place(out[1], false, end);
        var_.place(out[2], false, end);  // unstaged: written into rstd, converted in place
        if (affine_) gamma_.place(in[1], false, end);
        if (bias_) beta_.place(in[2], false, end);
        scratch_bytes = end;

        const dnnl::engine& eng = *bx.engine;
        prim_ = bound_primitive(dnnl::layer_normalization_forward(pd));
        prim_.bind(DNNL_ARG_SRC, *data_md, eng);
        prim_.bind(DNNL_ARG_DST, *data_md, eng);
        prim_.bind(DNNL_ARG_MEAN, pd.mean_desc(), eng);
        prim_.bind(DNNL_ARG_VARIANCE, pd.variance_desc(), eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
        const index_t n = in[0].extents()[in[0].extents().rank() - 1];
        if (affine_) prim_.bind(DNNL_ARG_SCALE, parameter_desc(n), eng);
        if (bias_) prim_.bind(DNNL_ARG_SHIFT, parameter_desc(n), eng);
    }

    bool usable() const noexcept { return bool(prim_); }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        if (affine_) gamma_.load(cx, in[1]);
        if (bias_) beta_.load(cx, in[2]);
        float* var = var_.data(cx, out[2]);
        const std::array<void*, 7> handles{in[0].data(),
                                           out[0].data(),
                                           mean_.data(cx, out[1]),
                                           var,
                                           cx.scratch,
                                           affine_ ? gamma_.data(cx, in[1]) : nullptr,
                                           bias_ ? beta_.data(cx, in[2]) : nullptr};
        prim_.execute(*cx.stream, handles);
        mean_.store(cx, out[1], false);
        for (index_t i = 0; i < var_.size(); ++i)  // in place when rstd is dense
            var_.at(out[2], i) = float(1.0 / std::sqrt(double(var[i]) + eps_));
    }

private:
    bound_primitive prim_;
    double eps_;
    bool affine_, bias_;
    dense_vector mean_, var_, gamma_, beta_;
};

/// layer_norm_backward: x, dy, mean, rstd [, gamma] -> dx [, dgamma [, dbeta]] (see the
/// file comment).
class layer_norm_backward_plan final : public plan {
public:
    layer_norm_backward_plan(const ops::layer_norm_backward_desc& d,
                             std::span<const any_tensor_ref> in,
                             std::span<const any_tensor_ref> out, const build_context& bx)
        : affine_(d.affine), bias_(d.affine && d.bias), accumulate_(d.accumulate) {
        const auto x_md = dense_rows_desc(in[0]);
        const auto diff_md = shared_rows_desc(in[1], out[0]);
        if (!x_md || !diff_md || !is_row_major_dense(in[1])) return;
        const dnnl::engine& eng = *bx.engine;
        const dnnl::normalization_flags flags = norm_flags(affine_, bias_);
        const dnnl::primitive_attr attr = base_attr(bx);
        const auto hint = compat::layer_norm_forward_pd(eng, *x_md, *x_md, 0.0f, flags, attr);
        const auto pd =
            compat::layer_norm_backward_pd(eng, *diff_md, *diff_md, *x_md, 0.0f, flags, attr, hint);
        if (is_reference_impl(pd)) return;

        std::size_t end = align64(scratchpad_bytes(pd));
        mean_.place(in[2], false, end);
        var_.place(in[3], true, end);  // 1 / rstd^2, always built in scratch
        if (affine_) {
            gamma_.place(in[4], false, end);
            dgamma_.place(out[1], accumulate_, end);
        }
        if (bias_) dbeta_.place(out[2], accumulate_, end);
        scratch_bytes = end;

        prim_ = bound_primitive(dnnl::layer_normalization_backward(pd));
        prim_.bind(DNNL_ARG_SRC, *x_md, eng);
        prim_.bind(DNNL_ARG_DIFF_DST, *diff_md, eng);
        prim_.bind(DNNL_ARG_MEAN, pd.mean_desc(), eng);
        prim_.bind(DNNL_ARG_VARIANCE, pd.variance_desc(), eng);
        prim_.bind(DNNL_ARG_DIFF_SRC, *diff_md, eng);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng);
        const index_t n = in[0].extents()[in[0].extents().rank() - 1];
        if (affine_) {
            prim_.bind(DNNL_ARG_SCALE, parameter_desc(n), eng);
            prim_.bind(DNNL_ARG_DIFF_SCALE, parameter_desc(n), eng);
        }
        if (bias_) {
            prim_.bind(DNNL_ARG_DIFF_SHIFT, parameter_desc(n), eng);
            // oneDNN requires beta as an argument of a `use_shift` backward although no
            // gradient depends on it: it is pointed at gamma's (dense, N-entry) memory.
            prim_.bind(DNNL_ARG_SHIFT, parameter_desc(n), eng);
        }
    }

    bool usable() const noexcept { return bool(prim_); }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        mean_.load(cx, in[2]);
        float* var = var_.data(cx, in[3]);
        for (index_t i = 0; i < var_.size(); ++i) {
            const double r = var_.at(in[3], i);
            var[i] = float(1.0 / (r * r));
        }
        if (affine_) gamma_.load(cx, in[4]);
        float* gamma = affine_ ? gamma_.data(cx, in[4]) : nullptr;
        const std::array<void*, 10> handles{in[0].data(),
                                           in[1].data(),
                                           mean_.data(cx, in[2]),
                                           var,
                                           out[0].data(),
                                           cx.scratch,
                                           gamma,
                                           affine_ ? dgamma_.data(cx, out[1]) : nullptr,
                                           bias_ ? dbeta_.data(cx, out[2]) : nullptr,
                                           bias_ ? gamma : nullptr};
        prim_.execute(*cx.stream, handles);
        if (affine_) dgamma_.store(cx, out[1], accumulate_);
        if (bias_) dbeta_.store(cx, out[2], accumulate_);
    }

private:
    bound_primitive prim_;
    bool affine_, bias_, accumulate_;
    dense_vector mean_, var_, gamma_, dgamma_, dbeta_;
};

}  // namespace detail

/// layer_norm runs on oneDNN for f32.
inline bool is_native(const ops::layer_norm_desc&, dtype t) noexcept {
    return t == dtype::f32;
}

inline std::unique_ptr<plan> make_plan(const ops::layer_norm_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in)) return nullptr;
    return usable_or_null<detail::layer_norm_plan>(d, in, out, bx);
}

/// layer_norm_backward runs on oneDNN for f32.
inline bool is_native(const ops::layer_norm_backward_desc&, dtype t) noexcept {
    return t == dtype::f32;
}

inline std::unique_ptr<plan> make_plan(const ops::layer_norm_backward_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in)) return nullptr;
    return usable_or_null<detail::layer_norm_backward_plan>(d, in, out, bx);
}

// rms_norm_desc / rms_norm_backward_desc: no oneDNN 2.6 primitive; the generic templates of
// device.hpp keep them non-native.

}  // namespace mmfuse::inline v0::backend::onednn
