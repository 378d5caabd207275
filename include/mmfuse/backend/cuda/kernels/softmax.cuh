#pragma once
/// \file
/// Row-wise kernels of the CUDA backend, part 2: softmax over the last axis, forward and
/// backward, on the row machinery of norm.cuh (one warp or one block per row, registers or
/// streaming, 16-byte vectors where the layout allows). nvcc only (included by src/norm.cu).
///
/// Semantics are those of `backend/eigen/softmax.hpp`: y = softmax(scale * x) over the
/// entries kept by up to two bool keep-masks (any strides, stride-0 broadcasts included)
/// and the causal rule (row i along axis -2 keeps the columns j <= i + causal_offset); a
/// row with nothing kept (or only -inf scores) is written as zeros, never NaN. Accumulation
/// in float with max subtraction; expf (not the fast intrinsic) for f32 accuracy.

#include <cmath>

#include "mmfuse/backend/cuda/kernels/norm.cuh"

namespace mmfuse::inline v0::backend::cuda::kernels::rows {

/// y = softmax(scale * x) over each row of x (..., N), `rows` = numel / N > 0. `mask0` /
/// `mask1` are bool keep-masks with x's extents (absent when their data is null); with
/// `causal`, row i along axis -2 (extent `x.extents[rank - 2]`) keeps only the columns
/// j <= i + `causal_offset`. `vector_masks`: every present mask has unit last stride and rows
/// aligned to V bytes (Cfg::vec), so its chunks are read as one load each. y may be the same
/// memory as x (same strides).
template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::max_threads, Cfg::min_blocks(1))
    softmax_forward_kernel(const view x, const view mask0, const view mask1, const view y,
                           const index_t rows, const float scale, const bool causal,
                           const index_t causal_offset, const bool vector_masks) {
    constexpr int V = Cfg::vec;
    constexpr float neg_inf = -INFINITY;
    const index_t n = row_length(x);
    const index_t sx = row_stride(x), sy = row_stride(y);
    const index_t s0 = mask0.data ? row_stride(mask0) : 0, s1 = mask1.data ? row_stride(mask1) : 0;
    const index_t queries = causal ? entry(x.extents, x.rank - 2) : 1;
    Cfg::for_each_row(rows, [&](index_t row) {
        const T* xr = element_at<const T>(x, row_offset(x, row));
        T* yr = element_at<T>(y, row_offset(y, row));
        // Bool is one byte; read it as a byte so any non-zero value means "keep".
        const auto* m0 =
            element_at<const unsigned char>(mask0, mask0.data ? row_offset(mask0, row) : 0);
        const auto* m1 =
            element_at<const unsigned char>(mask1, mask1.data ? row_offset(mask1, row) : 0);
        // Columns [0, end) may be kept (compared before adding, so no offset overflows).
        index_t end = n;
        if (causal) {
            const index_t i = row % queries;
            end = causal_offset >= n - i ? n : (causal_offset < -i ? 0 : i + causal_offset + 1);
        }
        // Keep bits of a chunk for one mask (bit t: element j0 + t): one V-byte load when
        // `vector_masks` (unit stride, aligned rows), else V byte loads.
        const auto mask_bits = [&](const unsigned char* m, index_t sm, index_t j0) {
            unsigned bits = 0;
            if constexpr (V > 1) {
                if (vector_masks) {
                    const pack<unsigned char, V> p =
                        *reinterpret_cast<const pack<unsigned char, V>*>(m + j0);
#pragma unroll
                    for (int t = 0; t < V; ++t)
                        bits |= unsigned(p.v[t] != 0) << t;
                    return bits;
                }
            }
#pragma unroll
            for (int t = 0; t < V; ++t)
                bits |= unsigned(m[(j0 + t) * sm] != 0) << t;
            return bits;
        };
        // The score of each element: scale * x where kept, -inf elsewhere.
        const auto scores = [&](index_t j0, float(&s)[V]) {
            load_chunk<T, V>(xr, sx, j0, s);
            unsigned keep = ~0u;
            if (m0) keep &= mask_bits(m0, s0, j0);
            if (m1) keep &= mask_bits(m1, s1, j0);
#pragma unroll
            for (int t = 0; t < V; ++t)
                s[t] = (keep >> t & 1u) && j0 + t < end ? scale * s[t] : neg_inf;
        };
        typename Cfg::held held;
        float mx[1] = {neg_inf};
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float s[V];
            scores(j0, s);
            Cfg::remember(held, k, s);
#pragma unroll
            for (int t = 0; t < V; ++t)
                mx[0] = fmaxf(mx[0], s[t]);
        });
        Cfg::reduce(mx, max_op{});
        if (mx[0] == neg_inf) {  // nothing kept (uniform over the group)
            Cfg::for_each_chunk(n, [&](int, index_t j0) {
                const float zeros[V] = {};
                store_chunk<T, V>(yr, sy, j0, zeros);
            });
            return;
        }
        // exp(-inf - mx) is exactly 0, so excluded entries need no branch.
        const auto exps = [&](index_t j0, float(&e)[V]) {
            scores(j0, e);
#pragma unroll
            for (int t = 0; t < V; ++t)
                e[t] = expf(e[t] - mx[0]);
        };
        float sum[1] = {0.0f};
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float e[V];
            Cfg::recall(held, k, j0, e, scores);
#pragma unroll
            for (int t = 0; t < V; ++t) {
                e[t] = expf(e[t] - mx[0]);
                sum[0] += e[t];
            }
            Cfg::remember(held, k, e);
        });
        Cfg::reduce(sum, sum_op{});
        const float inv = 1.0f / sum[0];
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float e[V];
            Cfg::recall(held, k, j0, e, exps);
#pragma unroll
            for (int t = 0; t < V; ++t)
                e[t] *= inv;
            store_chunk<T, V>(yr, sy, j0, e);
        });
    });
}

/// dx = scale * y * (dy - sum(dy * y)) over each row of y (..., N), `rows` = numel / N > 0.
/// dx may be the same memory as dy (same strides): each element is read and written by the
/// same thread, and all reads of a row precede its writes.
template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::max_threads, Cfg::min_blocks(2))
    softmax_backward_kernel(const view y, const view dy, const view dx, const index_t rows,
                            const float scale) {
    constexpr int V = Cfg::vec;
    const index_t n = row_length(y);
    const index_t sy = row_stride(y), sdy = row_stride(dy), sdx = row_stride(dx);
    Cfg::for_each_row(rows, [&](index_t row) {
        const T* yr = element_at<const T>(y, row_offset(y, row));
        const T* dyr = element_at<const T>(dy, row_offset(dy, row));
        T* dxr = element_at<T>(dx, row_offset(dx, row));
        const auto load_y = [&](index_t j0, float(&v)[V]) { load_chunk<T, V>(yr, sy, j0, v); };
        const auto load_dy = [&](index_t j0, float(&v)[V]) { load_chunk<T, V>(dyr, sdy, j0, v); };
        typename Cfg::held held_y, held_dy;
        float dot[1] = {0.0f};
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float yv[V], dv[V];
            load_y(j0, yv);
            load_dy(j0, dv);
            Cfg::remember(held_y, k, yv);
            Cfg::remember(held_dy, k, dv);
#pragma unroll
            for (int t = 0; t < V; ++t)
                dot[0] += yv[t] * dv[t];
        });
        Cfg::reduce(dot, sum_op{});
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float yv[V], dv[V], out[V];
            Cfg::recall(held_y, k, j0, yv, load_y);
            Cfg::recall(held_dy, k, j0, dv, load_dy);
#pragma unroll
            for (int t = 0; t < V; ++t)
                out[t] = scale * yv[t] * (dv[t] - dot[0]);
            store_chunk<T, V>(dxr, sdx, j0, out);
        });
    });
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::rows
