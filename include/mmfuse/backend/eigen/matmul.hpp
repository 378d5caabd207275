#pragma once
/// \file
/// Eigen reference kernel: batched matmul, C = alpha * op(A) op(B) + beta * C (BLAS GEMM
/// semantics: with beta == 0, C is write-only; with alpha == 0 or K == 0, A and B are not
/// read). Each batch entry is one Eigen matrix product on `Eigen::Map`s of the caller's
/// memory; a transposed operand is the same memory with its two strides swapped. An
/// epilogue (`ops::matmul_epilogue`) runs after the product as one more pass over C:
/// C = act(C + bias) in the compute type, with the activation formulas of
/// `ops/activation_math.hpp` — the same arithmetic as `bias_add` then `unary`.
///
/// Map choice: when every operand has a unit stride along one of its two axes (row-major,
/// column-major or transposed views — the usual case) the maps carry only an outer stride
/// and Eigen's GEMM reads them in place. Otherwise (inner strides != 1 on both axes, e.g.
/// every other column) all three are mapped with `Eigen::Stride<Dynamic, Dynamic>`, and
/// Eigen packs the operands into temporaries. Eigen's GEMM also allocates its packing
/// buffers on the heap for large products: this kernel may allocate.
/// C must not overlap A or B. Implementation detail of the Eigen backend.

#include <span>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/activation_math.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// A rows x cols matrix at `data`; element (i, j) is data[i * row_stride + j * col_stride].
template <class T>
struct strided_matrix {
    T* data;
    index_t rows, cols, row_stride, col_stride;
};

/// op(X) of the last two axes of `t` (transposed by swapping extents and strides).
template <class T>
strided_matrix<T> op_matrix(const tensor_ref<T>& t, bool transpose) {
    strided_matrix<T> m{t.data(), t.extent(-2), t.extent(-1), t.stride(-2), t.stride(-1)};
    if (transpose) {
        std::swap(m.rows, m.cols);
        std::swap(m.row_stride, m.col_stride);
    }
    return m;
}

/// Row-major (unit column stride), column-major (unit row stride) or neither. An axis of
/// extent <= 1 never needs its stride, so it counts as unit.
enum class matrix_layout { row_major, col_major, strided };

template <class T>
matrix_layout layout_of(const strided_matrix<T>& m) noexcept {
    if (m.col_stride == 1 || m.cols <= 1) return matrix_layout::row_major;
    if (m.row_stride == 1 || m.rows <= 1) return matrix_layout::col_major;
    return matrix_layout::strided;
}

template <class T, int Order>
using eigen_matrix = std::conditional_t<
    std::is_const_v<T>,
    const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic, Order>,
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>>;

/// Map with a unit inner stride (what Eigen's GEMM reads in place).
template <class T, int Order>
using outer_stride_map = Eigen::Map<eigen_matrix<T, Order>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Map with arbitrary row and column strides.
template <class T>
using strided_map = Eigen::Map<eigen_matrix<T, Eigen::RowMajor>, Eigen::Unaligned,
                               Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

template <class T>
outer_stride_map<T, Eigen::RowMajor> row_major_map(const strided_matrix<T>& m) {
    return {m.data, m.rows, m.cols, Eigen::OuterStride<>(m.rows <= 1 ? m.cols : m.row_stride)};
}

template <class T>
outer_stride_map<T, Eigen::ColMajor> col_major_map(const strided_matrix<T>& m) {
    return {m.data, m.rows, m.cols, Eigen::OuterStride<>(m.cols <= 1 ? m.rows : m.col_stride)};
}

template <class T>
strided_map<T> any_strided_map(const strided_matrix<T>& m) {
    return {m.data, m.rows, m.cols,
            Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(m.row_stride, m.col_stride)};
}

/// Calls `f(map)` with the row- or column-major map of `m` (layout_of(m) != strided).
template <class T, class F>
void with_unit_stride_map(const strided_matrix<T>& m, F&& f) {
    if (layout_of(m) == matrix_layout::row_major)
        f(row_major_map(m));
    else
        f(col_major_map(m));
}

/// c = alpha * a b + beta * c on Eigen expressions (beta == 0: c is not read).
/// alpha == 1 is spelled without the scalar factor: Eigen's matrix-vector path (an output
/// extent of 1) would otherwise evaluate `alpha * a` into a heap temporary.
template <class MA, class MB, class MC, class T>
void gemm(const MA& a, const MB& b, MC c, T alpha, T beta, bool beta_zero) {
    if (!beta_zero && beta != T(1)) c *= beta;
    if (alpha == T(1)) {
        if (beta_zero)
            c.noalias() = a * b;
        else
            c.noalias() += a * b;
    } else {
        if (beta_zero)
            c.noalias() = alpha * a * b;
        else
            c.noalias() += alpha * a * b;
    }
}

template <class T>
void matmul_kernel(const ops::matmul_desc& d, const tensor_ref<const T>& a,
                   const tensor_ref<const T>& b, const tensor_ref<T>& c) {
    const index_t batch = c.rank() == 3 ? c.extent(0) : 1;
    const strided_matrix<const T> am0 = op_matrix(a, d.transpose_a);
    const strided_matrix<const T> bm0 = op_matrix(b, d.transpose_b);
    const strided_matrix<T> cm0 = op_matrix(c, false);
    if (cm0.rows == 0 || cm0.cols == 0) return;
    const index_t a_step = a.rank() == 3 ? a.stride(0) : 0;  // rank 2: shared by the batch
    const index_t b_step = b.rank() == 3 ? b.stride(0) : 0;
    const index_t c_step = c.rank() == 3 ? c.stride(0) : 0;
    const T alpha = T(d.alpha), beta = T(d.beta);
    const bool beta_zero = d.beta == 0.0;
    const bool skip_product = d.alpha == 0.0 || am0.cols == 0;  // BLAS: A, B not read
    const bool unit_strides = layout_of(am0) != matrix_layout::strided &&
                              layout_of(bm0) != matrix_layout::strided &&
                              layout_of(cm0) == matrix_layout::row_major;
    for (index_t i = 0; i < batch; ++i) {
        strided_matrix<const T> am = am0;
        strided_matrix<const T> bm = bm0;
        strided_matrix<T> cm = cm0;
        am.data += i * a_step;
        bm.data += i * b_step;
        cm.data += i * c_step;
        if (skip_product) {
            auto cmap = any_strided_map(cm);
            if (beta_zero)
                cmap.setZero();
            else
                cmap *= beta;
        } else if (unit_strides) {
            with_unit_stride_map(am, [&](const auto& amap) {
                with_unit_stride_map(bm, [&](const auto& bmap) {
                    gemm(amap, bmap, row_major_map(cm), alpha, beta, beta_zero);
                });
            });
        } else {
            gemm(any_strided_map(am), any_strided_map(bm), any_strided_map(cm), alpha, beta,
                 beta_zero);
        }
    }
}

/// c = act(c + bias) in place, bias (N) broadcast over every axis of c but the last; act
/// is the identity (`bias`), relu or gelu_tanh. Nothing happens for `none`.
template <class T>
void apply_epilogue(ops::matmul_epilogue e, const tensor_ref<const T>& bias,
                     const tensor_ref<T>& c) {
    if (e == ops::matmul_epilogue::none) return;
    const tensor_ref<const T> row_bias = bias.expand(c.extents());
    const tensor_ref<const T> c_in = c;
    const auto add_bias_then = [&](auto act) {
        map_elements(
            c, [act](T x, T b) { return act(x + b); }, c_in, row_bias);
    };
    switch (e) {
        case ops::matmul_epilogue::bias:
            add_bias_then([](T x) { return x; });
            break;
        case ops::matmul_epilogue::bias_relu:
            add_bias_then([](T x) { return ops::act::value<ops::unary_kind::relu>(x); });
            break;
        case ops::matmul_epilogue::bias_gelu_tanh:
            add_bias_then([](T x) { return ops::act::value<ops::unary_kind::gelu_tanh>(x); });
            break;
        case ops::matmul_epilogue::none:
            break;
    }
}

}  // namespace detail

/// matmul_desc: in a, b [, bias (N) with an epilogue]; out c (shapes on `ops::matmul_desc`).
/// Any non-negative strides.
inline void run(const ops::matmul_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(out[0].type(), "matmul", [&]<class T>() {
        const tensor_ref<T> c = out[0].as<T>();
        detail::matmul_kernel<T>(d, in[0].as<const T>(), in[1].as<const T>(), c);
        if (d.epilogue != ops::matmul_epilogue::none)
            detail::apply_epilogue<T>(d.epilogue, in[2].as<const T>(), c);
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
