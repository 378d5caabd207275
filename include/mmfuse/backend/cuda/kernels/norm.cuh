#pragma once
/// \file
/// Row-wise kernels of the CUDA backend, part 1: the row machinery every "reduce a row, then
/// rewrite it" kernel shares (also used by softmax.cuh), and the layer-norm / RMS-norm
/// kernels. nvcc only (included by src/norm.cu).
///
/// A *row* is the last axis of an operand; rows are numbered row-major over all the other
/// axes, and every axis may have any stride (`row_offset`). A row is handled by a *group*
/// of threads, chosen by the launcher (src/norm.cu) from the row length N (`row_config`):
///
/// * part of a warp per row (N <= 1024): blockDim (L, 128 / L), L lanes per row, L a power
///   of two <= 32 (fewer than 32 for short rows, so that no lane idles);
/// * one block per row (N > 1024): blockDim (T, 1), T a multiple of 32, at most 512.
///
/// Thread `lane` (threadIdx.x) of a group of G threads owns the chunks c = lane, lane + G,
/// ... of V consecutive elements (elements cV ... cV + V - 1). With V > 1 a chunk is one
/// 16-byte vector load / store; the launcher picks it only when every row operand has unit
/// last stride, 16-byte aligned rows and N % V == 0. A config with `Slots` > 0 keeps its
/// chunks in registers, so the row is read from memory once (vector rows up to 1024
/// elements per warp and 16384 per block, and scalar rows up to 128); `Slots` == 0 streams
/// a row of any length from memory on every pass (the re-reads mostly hit L1/L2). Group
/// reductions are butterfly shuffles, then (block mode) a fixed-order sum over the warps'
/// partials in shared memory, so every thread of the group gets the bitwise-identical
/// result and a run is deterministic.
///
/// Norm kernels (semantics of `backend/eigen/norm.hpp`, accumulation in float, two-pass
/// variance):
/// * `norm_forward_kernel` — y = (x - mu) rstd [* gamma] [+ beta], saving mean (layer norm
///   only) and rstd in the input dtype;
/// * `norm_backward_kernel` — dx = rstd (g - [centred] mean(g) - xhat mean(g xhat)),
///   g = dy [* gamma], from the saved statistics;
/// * `norm_param_partials_kernel` + `norm_param_finish_kernel` — dgamma = sum dy xhat and
///   dbeta = sum dy over all rows, deterministic: fixed chunks of rows summed into scratch
///   (in double: these sums run over every row of the batch), then summed per column in a
///   fixed order and written (or added, with `accumulate`).

#include <cmath>
#include <cstdint>

#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/element.cuh"

namespace mmfuse::inline v0::backend::cuda::kernels::rows {

// ---- row machinery ----------------------------------------------------------------------

/// Entry `i` (0 <= i < max_rank) of a view's extents or strides, read with constant indices
/// only, so the kernel's view parameters are never copied to local memory.
__host__ __device__ __forceinline__ index_t entry(const index_t (&a)[max_rank], int i) {
    index_t r = 0;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int k = 0; k < max_rank; ++k)
        if (k == i) r = a[k];
    return r;
}

/// Length of the rows of `v` (its last extent).
__host__ __device__ __forceinline__ index_t row_length(const view& v) {
    return entry(v.extents, v.rank - 1);
}

/// Element stride along the rows of `v` (its last stride).
__host__ __device__ __forceinline__ index_t row_stride(const view& v) {
    return entry(v.strides, v.rank - 1);
}

/// Element offset of row `row` of `v`: `row` is a row-major flat index over every axis but
/// the last (rank 1: the only row, 0).
__device__ __forceinline__ index_t row_offset(const view& v, index_t row) {
    index_t off = 0;
#pragma unroll
    for (int a = max_rank - 2; a > 0; --a)
        if (a <= v.rank - 2) {
            off += (row % v.extents[a]) * v.strides[a];
            row /= v.extents[a];
        }
    if (v.rank >= 2) off += row * v.strides[0];
    return off;
}

/// Typed pointer to element `offset` of `v` (null when `v` is absent).
template <class T>
__device__ __forceinline__ T* element_at(const view& v, index_t offset) {
    return v.data ? static_cast<T*>(v.data) + offset : nullptr;
}

/// Loads the chunk of V elements starting at `j0` of a row (element stride `stride`) as
/// floats: one 16-byte vector load when V > 1 (unit stride and alignment guaranteed by the
/// launcher), else one strided scalar load.
template <class T, int V>
__device__ __forceinline__ void load_chunk(const T* row, index_t stride, index_t j0,
                                           float (&v)[V]) {
    if constexpr (V == 1) {
        v[0] = to_compute(row[j0 * stride]);
    } else {
        const pack<T, V> p = *reinterpret_cast<const pack<T, V>*>(row + j0);
#pragma unroll
        for (int t = 0; t < V; ++t)
            v[t] = to_compute(p.v[t]);
    }
}

/// Stores a chunk (see `load_chunk`), rounding each float to T (nearest even).
template <class T, int V>
__device__ __forceinline__ void store_chunk(T* row, index_t stride, index_t j0,
                                            const float (&v)[V]) {
    if constexpr (V == 1) {
        row[j0 * stride] = from_compute<T>(v[0]);
    } else {
        pack<T, V> p;
#pragma unroll
        for (int t = 0; t < V; ++t)
            p.v[t] = from_compute<T>(v[t]);
        *reinterpret_cast<pack<T, V>*>(row + j0) = p;
    }
}

/// Copies one chunk of floats.
template <int V>
__device__ __forceinline__ void copy_chunk(float (&dst)[V], const float (&src)[V]) {
#pragma unroll
    for (int t = 0; t < V; ++t)
        dst[t] = src[t];
}

/// Addition, the reduction of sums.
struct sum_op {
    __device__ float operator()(float a, float b) const { return a + b; }
};
/// fmaxf, the reduction of maxima (ignores NaN operands, like std::max in the reference).
struct max_op {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// Reduces each of `a[0..K)` over the group of `lanes` (a power of two <= 32) consecutive
/// lanes of the calling warp that this thread belongs to (the block's threads numbered
/// x-fastest, blockDim.x = `lanes` or a multiple of 32). Every lane of the group must call;
/// other groups of the warp need not (the shuffles name this group only). Every lane ends
/// with the same bits (the butterfly combines commutatively at every level).
template <int K, class Op>
__device__ __forceinline__ void lanes_reduce(float (&a)[K], Op op, unsigned lanes) {
    const unsigned lane_in_warp = (threadIdx.y * blockDim.x + threadIdx.x) & 31u;
    const unsigned mask =
        lanes >= 32 ? 0xffffffffu : ((1u << lanes) - 1u) << (lane_in_warp & ~(lanes - 1u));
#pragma unroll
    for (unsigned offset = 16; offset > 0; offset >>= 1) {
        if (offset >= lanes) continue;
#pragma unroll
        for (int i = 0; i < K; ++i)
            a[i] = op(a[i], __shfl_xor_sync(mask, a[i], int(offset)));
    }
}

/// Reduces each of `a[0..K)` over the whole block (blockDim.x a multiple of 32, blockDim.y
/// 1, called by every thread): warp butterflies, then every thread combines the warps'
/// partials in warp order, so all threads get the same bits. Ends with a barrier, so the
/// shared buffer may be reused by the next call at once.
template <int K, class Op>
__device__ __forceinline__ void block_reduce(float (&a)[K], Op op) {
    __shared__ float partials[32 * K];
    lanes_reduce(a, op, 32u);
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int warps = int(blockDim.x) >> 5;
    if (lane == 0)
#pragma unroll
        for (int i = 0; i < K; ++i)
            partials[warp * K + i] = a[i];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < K; ++i)
        a[i] = partials[i];
    for (int w = 1; w < warps; ++w)
#pragma unroll
        for (int i = 0; i < K; ++i)
            a[i] = op(a[i], partials[w * K + i]);
    __syncthreads();
}

/// How a row kernel maps rows onto threads (see the file comment): `Warp` (a group of
/// blockDim.x <= 32 lanes of one warp per row, blockDim.y rows per block) or one block per
/// row; `Slots` chunks held in registers per thread (0: streamed); `Vec` elements per chunk;
/// `Lanes` the group size when known at compile time (warp mode: 32), else 0 (blockDim.x).
template <bool Warp, int Slots, int Vec, int Lanes = 0>
struct row_config {
    static constexpr bool warp = Warp;
    static constexpr int slots = Slots;
    static constexpr int vec = Vec;
    static constexpr bool cached = Slots > 0;
    /// The launch bound: the threads of one block.
    static constexpr int max_threads = Warp ? 128 : 512;
    /// Blocks per multiprocessor the compiler must make room for (second launch bound), for
    /// a kernel holding `held_values` values per element: whole-warp and block-per-row
    /// kernels holding one get at most 80 or 64 registers a thread (more warps in flight;
    /// they fit, bf16 softmax but for a few spilled bytes); the others are unconstrained.
    static constexpr int min_blocks(int held_values) {
        if (held_values > 1) return 1;
        return Warp ? (Lanes == 32 ? 6 : 1) : 2;
    }
    /// Longest row a cached config holds with `threads` threads per group.
    static constexpr index_t capacity(int threads) { return index_t(threads) * Slots * Vec; }

    /// Per-thread register storage for one cached value per owned element.
    using held = float[cached ? Slots : 1][Vec];

    /// This thread's index in its group, and the group's size.
    __device__ static int lane() { return int(threadIdx.x); }
    __device__ static int group_size() { return Lanes > 0 ? Lanes : int(blockDim.x); }
    /// True for the one thread of the group that writes per-row results.
    __device__ static bool leader() { return threadIdx.x == 0; }

    /// Calls `f(row)` for every row this group handles (grid-stride; `row` is uniform over
    /// the group, so group reductions inside `f` are safe).
    template <class F>
    __device__ static void for_each_row(index_t rows, F&& f) {
        if constexpr (Warp) {
            const index_t step = index_t(gridDim.x) * blockDim.y;
            for (index_t r = index_t(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += step)
                f(r);
        } else {
            for (index_t r = blockIdx.x; r < rows; r += gridDim.x)
                f(r);
        }
    }

    /// Calls `f(k, j0)` for every chunk this thread owns in a row of `n` elements: `k` is
    /// the register slot (a compile-time constant once unrolled; 0 when streaming) and `j0`
    /// the chunk's first element.
    template <class F>
    __device__ static void for_each_chunk(index_t n, F&& f) {
        const index_t g = group_size();
        if constexpr (cached) {
#pragma unroll
            for (int k = 0; k < Slots; ++k) {
                const index_t j0 = (index_t(k) * g + lane()) * Vec;
                if (j0 < n) f(k, j0);
            }
        } else {
            for (index_t j0 = index_t(lane()) * Vec; j0 < n; j0 += g * Vec)
                f(0, j0);
        }
    }

    /// Reduces `a` over the group (all its threads must call).
    template <int K, class Op>
    __device__ static void reduce(float (&a)[K], Op op) {
        if constexpr (Warp)
            lanes_reduce(a, op, unsigned(group_size()));
        else
            block_reduce(a, op);
    }

    /// Keeps chunk `v` in slot `k` (cached configs; nothing when streaming).
    __device__ static void remember(held& h, [[maybe_unused]] int k,
                                    [[maybe_unused]] const float (&v)[Vec]) {
        if constexpr (cached)
            copy_chunk(h[k], v);
        else
            (void)h;
    }

    /// Chunk `k` (first element `j0`) into `v`: from its slot when cached, else recomputed
    /// by `compute(j0, v)` from memory.
    template <class Compute>
    __device__ static void recall(const held& h, [[maybe_unused]] int k, index_t j0,
                                  float (&v)[Vec], Compute&& compute) {
        if constexpr (cached) {
            (void)j0;
            (void)compute;
#pragma unroll
            for (int t = 0; t < Vec; ++t)
                v[t] = h[k][t];
        } else {
            (void)h;
            compute(j0, v);
        }
    }
};

// ---- layer norm / RMS norm --------------------------------------------------------------

/// Forward of layer norm (`centered`) or RMS norm for every row of x (..., N):
/// mu = centered ? mean(x) : 0, rstd = 1 / sqrt(mean((x - mu)^2) + eps),
/// y = (x - mu) rstd [* gamma] [+ beta]; writes mean[row] (when centred) and rstd[row].
/// `gamma` / `beta` are absent when their data is null; `mean` is absent for RMS norm.
/// `rows` = numel(x) / N > 0. y may be the same memory as x (same strides).
template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::max_threads, Cfg::min_blocks(1))
    norm_forward_kernel(const view x, const view gamma, const view beta, const view y,
                        const view mean, const view rstd, const index_t rows, const float eps,
                        const bool centered) {
    constexpr int V = Cfg::vec;
    const index_t n = row_length(x);
    const index_t sx = row_stride(x), sy = row_stride(y);
    const T* g = element_at<const T>(gamma, 0);
    const T* b = element_at<const T>(beta, 0);
    const index_t sg = g ? gamma.strides[0] : 0, sb = b ? beta.strides[0] : 0;
    Cfg::for_each_row(rows, [&](index_t row) {
        const T* xr = element_at<const T>(x, row_offset(x, row));
        T* yr = element_at<T>(y, row_offset(y, row));
        const auto load_x = [&](index_t j0, float(&v)[V]) { load_chunk<T, V>(xr, sx, j0, v); };
        typename Cfg::held held;
        // Pass 1: sum (layer norm) or sum of squares (RMS norm, mu = 0).
        float acc[1] = {0.0f};
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float v[V];
            load_x(j0, v);
            Cfg::remember(held, k, v);
#pragma unroll
            for (int t = 0; t < V; ++t)
                acc[0] += centered ? v[t] : v[t] * v[t];
        });
        Cfg::reduce(acc, sum_op{});
        float mu = 0.0f, ss = acc[0];
        if (centered) {
            // Pass 2: centred sum of squares (two-pass variance).
            mu = acc[0] / float(n);
            float sq[1] = {0.0f};
            Cfg::for_each_chunk(n, [&](int k, index_t j0) {
                float v[V];
                Cfg::recall(held, k, j0, v, load_x);
#pragma unroll
                for (int t = 0; t < V; ++t) {
                    const float c = v[t] - mu;
                    sq[0] += c * c;
                }
            });
            Cfg::reduce(sq, sum_op{});
            ss = sq[0];
        }
        const float r = 1.0f / sqrtf(ss / float(n) + eps);
        // Pass 3: normalise, scale, shift.
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float v[V];
            Cfg::recall(held, k, j0, v, load_x);
#pragma unroll
            for (int t = 0; t < V; ++t)
                v[t] = (v[t] - mu) * r;
            if (g) {
                float gv[V];
                load_chunk<T, V>(g, sg, j0, gv);
#pragma unroll
                for (int t = 0; t < V; ++t)
                    v[t] *= gv[t];
            }
            if (b) {
                float bv[V];
                load_chunk<T, V>(b, sb, j0, bv);
#pragma unroll
                for (int t = 0; t < V; ++t)
                    v[t] += bv[t];
            }
            store_chunk<T, V>(yr, sy, j0, v);
        });
        if (Cfg::leader()) {
            if (centered) element_at<T>(mean, row * mean.strides[0])[0] = from_compute<T>(mu);
            element_at<T>(rstd, row * rstd.strides[0])[0] = from_compute<T>(r);
        }
    });
}

/// Input gradient of `norm_forward_kernel` from the saved statistics (mean ignored unless
/// `centered`): with xhat = (x - mu) rstd and g = dy [* gamma],
/// dx = rstd (g - [centered] mean(g) - xhat mean(g xhat)). `gamma` absent when its data is
/// null. dx may be the same memory as dy (same strides): each element is read and written
/// by the same thread, and all reads of a row precede its writes.
template <class T, class Cfg>
__global__ void __launch_bounds__(Cfg::max_threads, Cfg::min_blocks(2))
    norm_backward_kernel(const view x, const view dy, const view mean, const view rstd,
                         const view gamma, const view dx, const index_t rows, const bool centered) {
    constexpr int V = Cfg::vec;
    const index_t n = row_length(x);
    const index_t sx = row_stride(x), sdy = row_stride(dy), sdx = row_stride(dx);
    const T* gm = element_at<const T>(gamma, 0);
    const index_t sg = gm ? gamma.strides[0] : 0;
    Cfg::for_each_row(rows, [&](index_t row) {
        const T* xr = element_at<const T>(x, row_offset(x, row));
        const T* dyr = element_at<const T>(dy, row_offset(dy, row));
        T* dxr = element_at<T>(dx, row_offset(dx, row));
        const float mu =
            centered ? to_compute(element_at<const T>(mean, row * mean.strides[0])[0]) : 0.0f;
        const float r = to_compute(element_at<const T>(rstd, row * rstd.strides[0])[0]);
        // The two per-element terms: g = dy [* gamma] and xhat.
        const auto grad = [&](index_t j0, float(&gv)[V]) {
            load_chunk<T, V>(dyr, sdy, j0, gv);
            if (gm) {
                float w[V];
                load_chunk<T, V>(gm, sg, j0, w);
#pragma unroll
                for (int t = 0; t < V; ++t)
                    gv[t] *= w[t];
            }
        };
        const auto xhat = [&](index_t j0, float(&xh)[V]) {
            load_chunk<T, V>(xr, sx, j0, xh);
#pragma unroll
            for (int t = 0; t < V; ++t)
                xh[t] = (xh[t] - mu) * r;
        };
        typename Cfg::held held_g, held_xh;
        float acc[2] = {0.0f, 0.0f};  // sum g, sum g xhat
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float gv[V], xh[V];
            grad(j0, gv);
            xhat(j0, xh);
            Cfg::remember(held_g, k, gv);
            Cfg::remember(held_xh, k, xh);
#pragma unroll
            for (int t = 0; t < V; ++t) {
                acc[0] += gv[t];
                acc[1] += gv[t] * xh[t];
            }
        });
        Cfg::reduce(acc, sum_op{});
        const float mean_g = centered ? acc[0] / float(n) : 0.0f;
        const float mean_gx = acc[1] / float(n);
        Cfg::for_each_chunk(n, [&](int k, index_t j0) {
            float gv[V], xh[V], out[V];
            Cfg::recall(held_g, k, j0, gv, grad);
            Cfg::recall(held_xh, k, j0, xh, xhat);
#pragma unroll
            for (int t = 0; t < V; ++t)
                out[t] = r * (gv[t] - mean_g - xh[t] * mean_gx);
            store_chunk<T, V>(dxr, sdx, j0, out);
        });
    });
}

/// Thread columns and row threads of a `norm_param_partials_kernel` block (blockDim
/// (param_columns, param_row_threads)); each thread column covers V adjacent columns.
inline constexpr int param_columns = 32;
inline constexpr int param_row_threads = 8;
inline constexpr int param_threads = param_columns * param_row_threads;

/// Partial parameter gradients: block (bx, by) sums, for the 32 V columns from bx * 32 V on
/// and the rows [by * rows_per_chunk, (by + 1) * rows_per_chunk) ∩ [0, rows), the terms
/// dy xhat (into partial[(2 by) N + col]) and dy (partial[(2 by + 1) N + col]), accumulated
/// in double in a fixed order. xhat = (x - mu) rstd from the saved statistics (mu = 0
/// unless `centered`). V > 1 (vector loads) needs `vector_ready` x and dy and N % V == 0.
template <class T, int V>
__global__ void __launch_bounds__(param_threads)
    norm_param_partials_kernel(const view x, const view dy, const view mean, const view rstd,
                               const index_t rows, const index_t rows_per_chunk,
                               const bool centered, double* partial) {
    const index_t n = row_length(x);
    const index_t sx = row_stride(x), sdy = row_stride(dy);
    const index_t col0 = (index_t(blockIdx.x) * param_columns + threadIdx.x) * V;
    const index_t begin = index_t(blockIdx.y) * rows_per_chunk;
    const index_t end = rows < begin + rows_per_chunk ? rows : begin + rows_per_chunk;
    double acc_g[V] = {}, acc_b[V] = {};
    if (col0 < n) {
#pragma unroll 4
        for (index_t row = begin + threadIdx.y; row < end; row += param_row_threads) {
            const float mu =
                centered ? to_compute(element_at<const T>(mean, row * mean.strides[0])[0]) : 0.0f;
            const float r = to_compute(element_at<const T>(rstd, row * rstd.strides[0])[0]);
            float d[V], xv[V];
            load_chunk<T, V>(element_at<const T>(dy, row_offset(dy, row)), sdy, col0, d);
            load_chunk<T, V>(element_at<const T>(x, row_offset(x, row)), sx, col0, xv);
#pragma unroll
            for (int t = 0; t < V; ++t) {
                acc_g[t] += double(d[t] * ((xv[t] - mu) * r));
                acc_b[t] += double(d[t]);
            }
        }
    }
    __shared__ double sum_g[param_row_threads][param_columns * V];
    __shared__ double sum_b[param_row_threads][param_columns * V];
#pragma unroll
    for (int t = 0; t < V; ++t) {
        sum_g[threadIdx.y][threadIdx.x * V + t] = acc_g[t];
        sum_b[threadIdx.y][threadIdx.x * V + t] = acc_b[t];
    }
    __syncthreads();
    // Thread (c, y) finishes columns c + 32 y', so that every column of the block is
    // summed over the row threads, in row-thread order.
    for (int c = threadIdx.y * param_columns + threadIdx.x; c < param_columns * V;
         c += param_columns * param_row_threads) {
        const index_t col = index_t(blockIdx.x) * param_columns * V + c;
        if (col >= n) continue;
        double g = sum_g[0][c], b = sum_b[0][c];
        for (int i = 1; i < param_row_threads; ++i) {
            g += sum_g[i][c];
            b += sum_b[i][c];
        }
        partial[(2 * index_t(blockIdx.y)) * n + col] = g;
        partial[(2 * index_t(blockIdx.y) + 1) * n + col] = b;
    }
}

/// Finishes the parameter gradients: for every column, the `chunks` partials of
/// `norm_param_partials_kernel` summed in chunk order (double), then written to dgamma /
/// dbeta (each absent when its data is null), or added to what they hold when `accumulate`.
template <class T>
__global__ void norm_param_finish_kernel(const double* partial, const index_t chunks,
                                         const index_t n, const view dgamma, const view dbeta,
                                         const bool accumulate) {
    const index_t step = index_t(gridDim.x) * blockDim.x;
    for (index_t col = index_t(blockIdx.x) * blockDim.x + threadIdx.x; col < n; col += step) {
        double sum_g = 0.0, sum_b = 0.0;
        for (index_t c = 0; c < chunks; ++c) {
            sum_g += partial[(2 * c) * n + col];
            sum_b += partial[(2 * c + 1) * n + col];
        }
        const auto store = [&](const view& out, double sum) {
            T* p = element_at<T>(out, col * out.strides[0]);
            if (!p) return;
            *p = from_compute<T>(accumulate ? double(to_compute(*p)) + sum : sum);
        };
        store(dgamma, sum_g);
        store(dbeta, sum_b);
    }
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::rows
