#pragma once
// A matmul test problem shared by the plain and the epilogue matmul tests: operand ranks,
// sizes, transposes and BLAS scalars, and the extents each operand is stored with.

#include <array>
#include <cstddef>

#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse_test {

/// One C = alpha op(A) op(B) + beta C problem; a rank-2 operand broadcasts over the batch.
struct gemm_case {
    int a_rank, b_rank;
    mmfuse::index_t batch, m, k, n;
    bool ta, tb;
    double alpha, beta;
};

/// Extents of an operand: (rows, cols) stored transposed when `t`, with a batch prefix.
inline mmfuse::extents operand_extents(int rank, mmfuse::index_t batch, mmfuse::index_t rows,
                                       mmfuse::index_t cols, bool t) {
    const mmfuse::index_t r = t ? cols : rows, c = t ? rows : cols;
    return rank == 3 ? mmfuse::extents{batch, r, c} : mmfuse::extents{r, c};
}

/// op(X)[bi](i, j) read straight from the view, in double.
template <class T>
double op_elem(const mmfuse::tensor_ref<const T>& x, bool t, mmfuse::index_t bi, mmfuse::index_t i,
               mmfuse::index_t j) {
    std::array<mmfuse::index_t, 3> idx{};
    std::size_t r = 0;
    if (x.rank() == 3) idx[r++] = bi;
    idx[r++] = t ? j : i;
    idx[r++] = t ? i : j;
    return double(x.at({idx.data(), r}));
}

}  // namespace mmfuse_test
