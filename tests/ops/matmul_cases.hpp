#pragma once
// A matmul test problem shared by the plain and the epilogue matmul tests: operand ranks,
// sizes, transposes and BLAS scalars, and the extents each operand is stored with.

#include "mmfuse/core/shape.hpp"

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

}  // namespace mmfuse_test
