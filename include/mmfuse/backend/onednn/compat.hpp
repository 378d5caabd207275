#pragma once
/// \file
/// The oneDNN API differences between the v2 series (the machine's 2.6: op descriptor ->
/// primitive descriptor, output scales, `append_eltwise(scale, ...)`) and v3 (primitive
/// descriptors built directly from the engine, runtime argument scales, no post-op scale),
/// gathered in one place: every other file of the oneDNN backend calls these functions and
/// never tests `DNNL_VERSION_MAJOR` itself. Implementation detail of the oneDNN backend.

#include <vector>

#include <oneapi/dnnl/dnnl.hpp>
#include <oneapi/dnnl/dnnl_version.h>

namespace mmfuse::inline v0::backend::onednn::compat {

using dnnl::algorithm;
using dnnl::engine;
using dnnl::memory;
using dnnl::primitive_attr;
using dnnl::prop_kind;

/// True when this oneDNN takes scales as runtime arguments (v3) rather than attributes (v2).
inline constexpr bool runtime_scales = DNNL_VERSION_MAJOR >= 3;

/// The execution argument carrying the product scale of `set_product_scale` (v3 only).
#if DNNL_VERSION_MAJOR >= 3
inline constexpr int product_scale_arg = DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC;
#else
inline constexpr int product_scale_arg = 0;
#endif

/// Appends an element-wise post-op `alg(x; alpha, beta)`.
inline void append_eltwise(dnnl::post_ops& po, algorithm alg, float alpha, float beta) {
#if DNNL_VERSION_MAJOR >= 3
    po.append_eltwise(alg, alpha, beta);
#else
    po.append_eltwise(1.0f, alg, alpha, beta);
#endif
}

/// Multiplies the product of a matmul by the constant `alpha` (v2: output scale; v3: a
/// common scale on the source, supplied at execution as `DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC`).
inline void set_product_scale(primitive_attr& attr, float alpha) {
#if DNNL_VERSION_MAJOR >= 3
    (void)alpha;
    attr.set_scales_mask(DNNL_ARG_SRC, 0);
#else
    attr.set_output_scales(0, {alpha});
#endif
}

/// Number of dimensions of `md`.
inline int ndims(const memory::desc& md) {
#if DNNL_VERSION_MAJOR >= 3
    return md.get_ndims();
#else
    return md.data.ndims;
#endif
}

/// Extents of `md`.
inline memory::dims dims(const memory::desc& md) {
#if DNNL_VERSION_MAJOR >= 3
    return md.get_dims();
#else
    return md.dims();
#endif
}

inline dnnl::matmul::primitive_desc matmul_pd(const engine& eng, const memory::desc& a,
                                              const memory::desc& b, const memory::desc& c,
                                              const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, a, b, c, attr};
#else
    return {dnnl::matmul::desc(a, b, c), attr, eng};
#endif
}

inline dnnl::eltwise_forward::primitive_desc eltwise_forward_pd(const engine& eng, algorithm alg,
                                                                const memory::desc& src,
                                                                const memory::desc& dst,
                                                                float alpha, float beta,
                                                                const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, prop_kind::forward_training, alg, src, dst, alpha, beta, attr};
#else
    (void)dst;  // v2 eltwise writes the source's layout
    return {dnnl::eltwise_forward::desc(prop_kind::forward_training, alg, src, alpha, beta), attr,
            eng};
#endif
}

inline dnnl::eltwise_backward::primitive_desc eltwise_backward_pd(
    const engine& eng, algorithm alg, const memory::desc& diff_src, const memory::desc& diff_dst,
    const memory::desc& src, float alpha, float beta, const primitive_attr& attr,
    const dnnl::eltwise_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, alg, diff_src, diff_dst, src, alpha, beta, hint, attr};
#else
    (void)diff_src;
    return {dnnl::eltwise_backward::desc(alg, diff_dst, src, alpha, beta), attr, eng, hint};
#endif
}

inline dnnl::binary::primitive_desc binary_pd(const engine& eng, algorithm alg,
                                              const memory::desc& a, const memory::desc& b,
                                              const memory::desc& y,
                                              const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, alg, a, b, y, attr};
#else
    return {dnnl::binary::desc(alg, a, b, y), attr, eng};
#endif
}

inline dnnl::reduction::primitive_desc reduction_pd(const engine& eng, algorithm alg,
                                                    const memory::desc& src,
                                                    const memory::desc& dst,
                                                    const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, alg, src, dst, 0.0f, 0.0f, attr};
#else
    return {dnnl::reduction::desc(alg, src, dst, 0.0f, 0.0f), attr, eng};
#endif
}

/// Softmax over `axis` (accurate: max-subtracted), forward training.
inline dnnl::softmax_forward::primitive_desc softmax_forward_pd(const engine& eng,
                                                                const memory::desc& src,
                                                                const memory::desc& dst, int axis,
                                                                const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, prop_kind::forward_training, algorithm::softmax_accurate, src, dst, axis, attr};
#else
    (void)dst;
    return {dnnl::softmax_forward::desc(prop_kind::forward_training, src, axis), attr, eng};
#endif
}

inline dnnl::softmax_backward::primitive_desc softmax_backward_pd(
    const engine& eng, const memory::desc& diff_src, const memory::desc& diff_dst,
    const memory::desc& dst, int axis, const primitive_attr& attr,
    const dnnl::softmax_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, algorithm::softmax_accurate, diff_src, diff_dst, dst, axis, hint, attr};
#else
    (void)diff_src;
    return {dnnl::softmax_backward::desc(diff_dst, dst, axis), attr, eng, hint};
#endif
}

/// Layer normalisation with `flags` (use_scale / use_shift), forward training (saves mean
/// and variance).
inline dnnl::layer_normalization_forward::primitive_desc layer_norm_forward_pd(
    const engine& eng, const memory::desc& src, const memory::desc& dst, float eps,
    dnnl::normalization_flags flags, const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, prop_kind::forward_training, src, dst, eps, flags, attr};
#else
    (void)dst;
    return {dnnl::layer_normalization_forward::desc(prop_kind::forward_training, src, eps, flags),
            attr, eng};
#endif
}

inline dnnl::layer_normalization_backward::primitive_desc layer_norm_backward_pd(
    const engine& eng, const memory::desc& diff_src, const memory::desc& diff_dst,
    const memory::desc& src, float eps, dnnl::normalization_flags flags,
    const primitive_attr& attr, const dnnl::layer_normalization_forward::primitive_desc& hint) {
    const prop_kind prop = (flags & (dnnl::normalization_flags::use_scale |
                                     dnnl::normalization_flags::use_shift)) !=
                                   dnnl::normalization_flags::none
                               ? prop_kind::backward
                               : prop_kind::backward_data;
#if DNNL_VERSION_MAJOR >= 3
    return {eng, prop, diff_src, diff_dst, src, eps, flags, hint, attr};
#else
    (void)diff_src;
    return {dnnl::layer_normalization_backward::desc(prop, diff_dst, src, eps, flags), attr, eng,
            hint};
#endif
}

inline dnnl::concat::primitive_desc concat_pd(const engine& eng, const memory::desc& dst,
                                              int axis, const std::vector<memory::desc>& srcs,
                                              const primitive_attr& attr) {
#if DNNL_VERSION_MAJOR >= 3
    return {eng, dst, axis, srcs, attr};
#else
    return {dst, axis, srcs, eng, attr};
#endif
}

inline dnnl::reorder::primitive_desc reorder_pd(const engine& eng, const memory::desc& src,
                                                const memory::desc& dst,
                                                const primitive_attr& attr) {
    return {eng, src, eng, dst, attr};
}

}  // namespace mmfuse::inline v0::backend::onednn::compat
