#pragma once
/// \file
/// The general attention kernels: any element type (float, bf16, f16 storage; float
/// arithmetic), any head sizes D, Dv <= `general_max_dim`, any strides (the last axis too).
/// They implement the FlashAttention-2 algorithms (Dao, 2023) on CUDA cores, and also serve
/// as the fallback of the tensor-core kernels for shapes or layouts those do not take.
///
/// * `forward_general` — online softmax over key tiles of `general_keys`, one warp per query
///   row at a time (each lane owns one key of the tile for the scores and Dv/32 output
///   columns for the accumulator). Grid (ceil(Lq / general_rows), H, B).
/// * `backward_general` — one block per key tile: recomputes P = exp(S - lse) and dS = P o
///   (dO V^T - Delta) for each query tile in shared memory, accumulates dK and dV in shared
///   memory and adds its share of dQ to the f32 scratch with atomicAdd. Grid (ceil(Lk /
///   tile), H, B); the tile (16 or 32) is chosen on the host to fit shared memory.
/// * `backward_delta` — Delta_i = sum_d dO_id O_id (float), the backward's preprocess.
/// * `backward_store_dq` — dq = scale * dq_accum, converted to dq's dtype and strides.

#include <cmath>

#include "mmfuse/backend/cuda/kernels/attention.cuh"

namespace mmfuse::inline v0::backend::cuda::kernels::attention {

/// Largest D and Dv the general kernels take (Dv / 32 accumulator registers per row).
inline constexpr int general_max_dim = 256;
inline constexpr int general_warps = 4;          ///< warps of a forward block
inline constexpr int general_rows_per_warp = 4;  ///< query rows each forward warp owns
inline constexpr int general_rows = general_warps * general_rows_per_warp;
inline constexpr int general_keys = 32;          ///< keys per forward tile (one per lane)
inline constexpr int backward_general_threads = 256;

/// Dynamic shared memory of `forward_general` for head sizes d, dv.
inline constexpr int forward_general_smem(int d, int dv) {
    return int(sizeof(float)) * (general_rows * d + general_keys * (d + 1) + general_keys * dv);
}

/// Dynamic shared memory of `backward_general` with `tile` keys and `tile` queries.
inline constexpr int backward_general_smem(int d, int dv, int tile) {
    return int(sizeof(float)) * (tile * (d + 1) + tile * (dv + 1)  // K, V
                                 + tile * d + tile * dv             // dK, dV accumulators
                                 + tile * (d + 1) + tile * (dv + 1) // Q, dO
                                 + 2 * tile * (tile + 1)            // P, dS
                                 + 2 * tile);                       // lse, Delta
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int s = 16; s > 0; s /= 2)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, s));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int s = 16; s > 0; s /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, s);
    return x;
}

/// General forward; block of general_warps * 32 threads, shared memory
/// `forward_general_smem(d, dv)`.
template <class T>
__global__ void __launch_bounds__(general_warps * 32) forward_general(attention_params p) {
    extern __shared__ float smem_general[];
    constexpr int R = general_rows_per_warp, Bc = general_keys;
    constexpr int max_cols = general_max_dim / 32;
    const int d_dim = p.d, dv_dim = p.dv_dim, ldk = d_dim + 1;
    float* s_q = smem_general;                 // general_rows x D, pre-scaled by scale_log2
    float* s_k = s_q + general_rows * d_dim;   // Bc x (D + 1)
    float* s_v = s_k + Bc * ldk;               // Bc x Dv
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t m0 = int64_t(blockIdx.x) * general_rows;
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);

    for (int e = int(threadIdx.x); e < general_rows * d_dim; e += int(blockDim.x)) {
        const int64_t i = m0 + e / d_dim;
        s_q[e] = i < p.lq ? to_float(q[p.q_st.at(b, h, i, e % d_dim)]) * p.scale_log2 : 0.f;
    }

    float acc[R][max_cols];
    float row_max[R], row_sum[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.f;
#pragma unroll
        for (int t = 0; t < max_cols; ++t)
            acc[r][t] = 0.f;
    }

    const int64_t n_end = key_end(p, m0, general_rows);
    for (int64_t n0 = 0; n0 < n_end; n0 += Bc) {
        __syncthreads();  // the previous tile is consumed (and s_q written, first time)
        for (int e = int(threadIdx.x); e < Bc * d_dim; e += int(blockDim.x)) {
            const int64_t j = n0 + e / d_dim;
            s_k[(e / d_dim) * ldk + e % d_dim] =
                j < p.lk ? to_float(k[p.k_st.at(b, h, j, e % d_dim)]) : 0.f;
        }
        for (int e = int(threadIdx.x); e < Bc * dv_dim; e += int(blockDim.x)) {
            const int64_t j = n0 + e / dv_dim;
            s_v[e] = j < p.lk ? to_float(v[p.v_st.at(b, h, j, e % dv_dim)]) : 0.f;
        }
        __syncthreads();
        const int tile_keys = int(n_end - n0 < Bc ? n_end - n0 : Bc);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int row = warp * R + r;
            const int64_t i = m0 + row;
            if (i >= p.lq) continue;  // warp-uniform
            float s = -INFINITY;
            if (is_kept(p, b, h, i, n0 + lane)) {
                float dot = 0.f;
                for (int c = 0; c < d_dim; ++c)
                    dot = fmaf(s_q[row * d_dim + c], s_k[lane * ldk + c], dot);
                s = dot;
            }
            const float mx = fmaxf(row_max[r], warp_max(s));
            const float base = mx == -INFINITY ? 0.f : mx;  // no (-inf) - (-inf)
            const float alpha = exp2f(row_max[r] - base);
            const float pj = exp2f(s - base);
            row_sum[r] = row_sum[r] * alpha + warp_sum(pj);
            row_max[r] = mx;
#pragma unroll
            for (int t = 0; t < max_cols; ++t)
                acc[r][t] *= alpha;
            for (int jj = 0; jj < tile_keys; ++jj) {
                const float pjj = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
                for (int t = 0; t < max_cols; ++t)
                    if (lane + 32 * t < dv_dim) acc[r][t] = fmaf(pjj, s_v[jj * dv_dim + lane + 32 * t], acc[r][t]);
            }
        }
    }

    T* o = static_cast<T*>(p.o);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int64_t i = m0 + warp * R + r;
        if (i >= p.lq) continue;
        const float inv = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;
#pragma unroll
        for (int t = 0; t < max_cols; ++t)
            if (lane + 32 * t < dv_dim)
                o[p.o_st.at(b, h, i, lane + 32 * t)] = from_float<T>(acc[r][t] * inv);
        if (lane == 0)
            p.lse[b * p.lse_b + h * p.lse_h + i * p.lse_l] =
                row_sum[r] > 0.f ? (row_max[r] + log2f(row_sum[r])) * float(M_LN2) : -INFINITY;
    }
}

/// Delta_i = sum_d dO_id O_id into p.delta[(b H + h) Lq + i]; one warp per row, grid
/// (ceil(Lq / 4), H, B) of 128 threads.
template <class T>
__global__ void __launch_bounds__(128) backward_delta(attention_params p) {
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t i = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
    const int lane = int(threadIdx.x) % 32;
    if (i >= p.lq) return;
    const T* o = static_cast<const T*>(p.o);
    const T* d_o = static_cast<const T*>(p.dout);
    float sum = 0.f;
    for (int c = lane; c < p.dv_dim; c += 32)
        sum = fmaf(to_float(d_o[p.do_st.at(b, h, i, c)]), to_float(o[p.o_st.at(b, h, i, c)]), sum);
    sum = warp_sum(sum);
    if (lane == 0) p.delta[(int64_t(b) * p.heads + h) * p.lq + i] = sum;
}

/// dq = scale * dq_accum in dq's dtype and strides; one thread per element, grid
/// (ceil(Lq D / 256), H, B).
template <class T>
__global__ void __launch_bounds__(256) backward_store_dq(attention_params p) {
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (e >= int64_t(p.lq) * p.d) return;
    const int64_t i = e / p.d, c = e % p.d;
    const float g = p.dq_accum[(int64_t(b) * p.heads + h) * p.lq * p.d + e];
    static_cast<T*>(p.dq)[p.dq_st.at(b, h, i, c)] = from_float<T>(g * p.scale);
}

/// General backward (see the file comment); block of backward_general_threads, shared
/// memory `backward_general_smem(d, dv, tile)`. Needs p.delta (backward_delta) and a zeroed
/// p.dq_accum; writes dK and dV of its key tile (zeros for keys no query attends to).
template <class T>
__global__ void __launch_bounds__(backward_general_threads) backward_general(attention_params p,
                                                                             int tile) {
    extern __shared__ float smem_general[];
    const int d_dim = p.d, dv_dim = p.dv_dim, nt = int(blockDim.x);
    const int ldk = d_dim + 1, ldv = dv_dim + 1, ldp = tile + 1;
    float* s_k = smem_general;         // tile x (D + 1)
    float* s_v = s_k + tile * ldk;     // tile x (Dv + 1)
    float* s_dk = s_v + tile * ldv;    // tile x D
    float* s_dv = s_dk + tile * d_dim; // tile x Dv
    float* s_q = s_dv + tile * dv_dim; // tile x (D + 1)
    float* s_do = s_q + tile * ldk;    // tile x (Dv + 1)
    float* s_p = s_do + tile * ldv;    // tile x (tile + 1), [query][key]
    float* s_ds = s_p + tile * ldp;    // tile x (tile + 1)
    float* s_lse = s_ds + tile * ldp;  // tile
    float* s_delta = s_lse + tile;     // tile
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t n0 = int64_t(blockIdx.x) * tile;
    const int64_t bh = int64_t(b) * p.heads + h;
    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    const T* d_o = static_cast<const T*>(p.dout);

    for (int e = int(threadIdx.x); e < tile * d_dim; e += nt) {
        const int64_t j = n0 + e / d_dim;
        s_k[(e / d_dim) * ldk + e % d_dim] = j < p.lk ? to_float(k[p.k_st.at(b, h, j, e % d_dim)]) : 0.f;
        s_dk[e] = 0.f;
    }
    for (int e = int(threadIdx.x); e < tile * dv_dim; e += nt) {
        const int64_t j = n0 + e / dv_dim;
        s_v[(e / dv_dim) * ldv + e % dv_dim] = j < p.lk ? to_float(v[p.v_st.at(b, h, j, e % dv_dim)]) : 0.f;
        s_dv[e] = 0.f;
    }

    // Causal: rows i < n0 - offset see none of this tile's keys.
    int64_t first = p.causal ? n0 - p.causal_offset : 0;
    first = first < 0 ? 0 : first / tile * tile;
    for (int64_t m0 = first; m0 < p.lq; m0 += tile) {
        __syncthreads();  // previous query tile consumed (and K, V written, first time)
        for (int e = int(threadIdx.x); e < tile * d_dim; e += nt) {
            const int64_t i = m0 + e / d_dim;
            s_q[(e / d_dim) * ldk + e % d_dim] = i < p.lq ? to_float(q[p.q_st.at(b, h, i, e % d_dim)]) : 0.f;
        }
        for (int e = int(threadIdx.x); e < tile * dv_dim; e += nt) {
            const int64_t i = m0 + e / dv_dim;
            s_do[(e / dv_dim) * ldv + e % dv_dim] =
                i < p.lq ? to_float(d_o[p.do_st.at(b, h, i, e % dv_dim)]) : 0.f;
        }
        for (int e = int(threadIdx.x); e < tile; e += nt) {
            const int64_t i = m0 + e;
            s_lse[e] = i < p.lq ? p.lse[b * p.lse_b + h * p.lse_h + i * p.lse_l] : 0.f;
            s_delta[e] = i < p.lq ? p.delta[bh * p.lq + i] : 0.f;
        }
        __syncthreads();
        // P and dS of this (query tile, key tile) pair.
        for (int e = int(threadIdx.x); e < tile * tile; e += nt) {
            const int r = e / tile, c = e % tile;
            float prob = 0.f, ds = 0.f;
            if (is_kept(p, b, h, m0 + r, n0 + c)) {
                float s = 0.f, dp = 0.f;
                for (int x = 0; x < d_dim; ++x)
                    s = fmaf(s_q[r * ldk + x], s_k[c * ldk + x], s);
                for (int x = 0; x < dv_dim; ++x)
                    dp = fmaf(s_do[r * ldv + x], s_v[c * ldv + x], dp);
                prob = expf(s * p.scale - s_lse[r]);
                ds = prob * (dp - s_delta[r]);
            }
            s_p[r * ldp + c] = prob;
            s_ds[r * ldp + c] = ds;
        }
        __syncthreads();
        // dV += P^T dO, dK += dS^T Q (scaled at the end), dQ += dS K (scaled in store_dq).
        for (int e = int(threadIdx.x); e < tile * dv_dim; e += nt) {
            const int c = e / dv_dim, x = e % dv_dim;
            float sum = 0.f;
            for (int r = 0; r < tile; ++r)
                sum = fmaf(s_p[r * ldp + c], s_do[r * ldv + x], sum);
            s_dv[e] += sum;
        }
        for (int e = int(threadIdx.x); e < tile * d_dim; e += nt) {
            const int c = e / d_dim, x = e % d_dim;
            float sum = 0.f;
            for (int r = 0; r < tile; ++r)
                sum = fmaf(s_ds[r * ldp + c], s_q[r * ldk + x], sum);
            s_dk[e] += sum;
        }
        for (int e = int(threadIdx.x); e < tile * d_dim; e += nt) {
            const int r = e / d_dim, x = e % d_dim;
            if (m0 + r >= p.lq) continue;
            float sum = 0.f;
            for (int c = 0; c < tile; ++c)
                sum = fmaf(s_ds[r * ldp + c], s_k[c * ldk + x], sum);
            atomicAdd(p.dq_accum + (bh * p.lq + m0 + r) * d_dim + x, sum);
        }
    }
    __syncthreads();
    T* dk = static_cast<T*>(p.dk);
    T* dv = static_cast<T*>(p.dv);
    for (int e = int(threadIdx.x); e < tile * d_dim; e += nt) {
        const int64_t j = n0 + e / d_dim;
        if (j < p.lk) dk[p.dk_st.at(b, h, j, e % d_dim)] = from_float<T>(s_dk[e] * p.scale);
    }
    for (int e = int(threadIdx.x); e < tile * dv_dim; e += nt) {
        const int64_t j = n0 + e / dv_dim;
        if (j < p.lk) dv[p.dv_st.at(b, h, j, e % dv_dim)] = from_float<T>(s_dv[e]);
    }
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::attention
