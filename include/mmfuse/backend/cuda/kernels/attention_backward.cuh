#pragma once
/// \file
/// FlashAttention-2 backward on tensor cores (Dao, 2023, Algorithm 2) for bf16 and f16 with
/// D = Dv in {64, 128} and the tensor-core layout (unit-stride, 16-byte aligned rows).
///
/// One block of 4 warps per (64-key tile, head, batch); warp w owns keys 16 w .. 16 w + 15
/// of the tile and keeps their dK and dV accumulators (f32) in registers for the whole
/// kernel. The block walks the query tiles (64 rows; causal problems start at the first
/// tile that sees any of its keys), Q and dO double buffered through shared memory with
/// 16-byte `cp.async` (the XOR-swizzled layout of the forward). Per query tile a warp
///   1. recomputes S^T = K Q^T (16 keys x 64 queries) with mma.sync m16n8k16,
///   2. P^T = 2^(S^T scale log2 e - lse log2 e), zero where masked (the lse of a row with
///      nothing kept is treated as +inf, so its P is 0 whatever the mask says),
///   3. dV += P^T dO, with P^T re-packed from the accumulators into A fragments,
///   4. dP^T = V dO^T and dS^T = P^T o (dP^T - Delta),
///   5. dK += dS^T Q,
///   6. writes dS^T (16-bit) to shared memory; after a barrier each warp computes
///      dQ = dS K for all 64 queries and a quarter of the columns and adds it to the f32
///      dQ scratch with atomicAdd (`backward_store_dq` scales and converts it afterwards).
/// dK is scaled once at the end. Delta (`backward_delta`) and a zeroed dQ scratch must be
/// ready before the launch.

#include <cmath>

#include "mmfuse/backend/cuda/kernels/attention.cuh"
#include "mmfuse/backend/cuda/kernels/attention_forward.cuh"

namespace mmfuse::inline v0::backend::cuda::kernels::attention {

inline constexpr int backward_tc_threads = 128;  ///< 4 warps
inline constexpr int backward_tc_keys = 64;      ///< Bc: keys per block (16 per warp)
inline constexpr int backward_tc_rows = 64;      ///< Br: queries per step
inline constexpr int backward_tc_mask_ld = backward_tc_keys + 4;

/// Dynamic shared memory of `backward_tc<T, D>`: K, V; Q and dO twice; dS^T; lse and Delta
/// twice; one keep-mask tile.
inline constexpr int backward_tc_smem(int d) {
    return 2 * backward_tc_keys * d * 2 + 4 * backward_tc_rows * d * 2 +
           backward_tc_keys * backward_tc_rows * 2 + 4 * backward_tc_rows * 4 +
           backward_tc_rows * backward_tc_mask_ld;
}

/// The backward kernel (see the file comment). Grid (ceil(Lk / 64), H, B), 128 threads,
/// `backward_tc_smem(D)` bytes of dynamic shared memory.
template <class T, int D>
__global__ void __launch_bounds__(backward_tc_threads, 2) backward_tc(attention_params p) {
    constexpr int Bc = backward_tc_keys, Br = backward_tc_rows, chunks = D / 8;
    constexpr bool kv_in_registers = D == 64;
    constexpr uint32_t kv_bytes = Bc * D * 2, qo_bytes = Br * D * 2;
    constexpr uint32_t slab = 16 * chunks * 16;      // 16 rows of a D-wide tile
    constexpr uint32_t ds_slab = 16 * (Br / 8) * 16;  // 16 rows of the dS^T tile
    extern __shared__ __align__(128) unsigned char smem_bwd[];
    const uint32_t s_k = smem_address(smem_bwd);
    const uint32_t s_v = s_k + kv_bytes;
    const auto s_q = [&](int buf) { return s_k + 2 * kv_bytes + uint32_t(buf) * qo_bytes; };
    const auto s_do = [&](int buf) { return s_k + 2 * kv_bytes + uint32_t(2 + buf) * qo_bytes; };
    const uint32_t s_ds = s_k + 2 * kv_bytes + 4 * qo_bytes;
    unsigned char* s_ds_ptr = smem_bwd + 2 * kv_bytes + 4 * qo_bytes;
    float* s_lse = reinterpret_cast<float*>(s_ds_ptr + Bc * Br * 2);  // [2][Br], log2 units
    float* s_delta = s_lse + 2 * Br;                                   // [2][Br]
    unsigned char* s_mask = reinterpret_cast<unsigned char*>(s_delta + 2 * Br);

    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t n0 = int64_t(blockIdx.x) * Bc;
    const int64_t bh = int64_t(b) * p.heads + h;
    const T* q = static_cast<const T*>(p.q) + p.q_st.at(b, h, 0, 0);
    const T* k = static_cast<const T*>(p.k) + p.k_st.at(b, h, 0, 0);
    const T* v = static_cast<const T*>(p.v) + p.v_st.at(b, h, 0, 0);
    const T* d_o = static_cast<const T*>(p.dout) + p.do_st.at(b, h, 0, 0);
    constexpr float log2e = 1.4426950408889634f;

    // Query tiles that see any key of this block: causal rows i >= n0 - offset.
    int64_t first = p.causal ? n0 - p.causal_offset : 0;
    first = first < 0 ? 0 : first / Br * Br;
    const int n_blocks = first < p.lq ? int((p.lq - first + Br - 1) / Br) : 0;

    float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            dk_acc[dt][e] = dv_acc[dt][e] = 0.f;

    // Fills lse (log2 units; +inf for rows past Lq or with nothing kept, so that P = 0)
    // and Delta of query tile m into buffer `buf`.
    const auto stage_rows = [&](int64_t m, int buf) {
        for (int r = int(threadIdx.x); r < Br; r += backward_tc_threads) {
            const int64_t i = m + r;
            float lse2 = INFINITY, delta = 0.f;
            if (i < p.lq) {
                const float l = p.lse[b * p.lse_b + h * p.lse_h + i * p.lse_l];
                lse2 = l == -INFINITY ? INFINITY : l * log2e;
                delta = p.delta[bh * p.lq + i];
            }
            s_lse[buf * Br + r] = lse2;
            s_delta[buf * Br + r] = delta;
        }
    };

    if (n_blocks > 0) {
        load_tile_async<Bc, D>(s_k, k, p.k_st.l, n0, p.lk);
        load_tile_async<Bc, D>(s_v, v, p.v_st.l, n0, p.lk);
        load_tile_async<Br, D>(s_q(0), q, p.q_st.l, first, p.lq);
        load_tile_async<Br, D>(s_do(0), d_o, p.do_st.l, first, p.lq);
        cp_async_commit();
        stage_rows(first, 0);

        // Per-lane ldmatrix offsets (see forward_tc): A operand rows (a_lane), B operand
        // non-transposed (b_lane), B operand transposed (bt_lane).
        const uint32_t a_lane = swizzled<chunks>(lane % 16, lane / 16);
        const uint32_t b_lane = swizzled<chunks>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);
        const uint32_t bt_lane = swizzled<chunks>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);
        const uint32_t ds_b_lane = swizzled<Br / 8>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);

        uint32_t k_frag[kv_in_registers ? D / 16 : 1][4], v_frag[kv_in_registers ? D / 16 : 1][4];
        if constexpr (kv_in_registers) {
            cp_async_wait<0>();
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                ldmatrix_x4(s_k + warp * slab + (a_lane ^ (kk * 32)), k_frag[kk]);
                ldmatrix_x4(s_v + warp * slab + (a_lane ^ (kk * 32)), v_frag[kk]);
            }
        }
        const auto k_a = [&](int kk, uint32_t(&a)[4]) {
            if constexpr (kv_in_registers) {
#pragma unroll
                for (int x = 0; x < 4; ++x)
                    a[x] = k_frag[kk][x];
            } else {
                ldmatrix_x4(s_k + warp * slab + (a_lane ^ (kk * 32)), a);
            }
        };
        const auto v_a = [&](int kk, uint32_t(&a)[4]) {
            if constexpr (kv_in_registers) {
#pragma unroll
                for (int x = 0; x < 4; ++x)
                    a[x] = v_frag[kk][x];
            } else {
                ldmatrix_x4(s_v + warp * slab + (a_lane ^ (kk * 32)), a);
            }
        };

        const int64_t key0 = n0 + warp * 16;  // first key of this warp
        for (int it = 0; it < n_blocks; ++it) {
            const int buf = it & 1;
            const int64_t m0 = first + int64_t(it) * Br;
            if (p.masked) stage_mask<Br, Bc, backward_tc_mask_ld>(p, s_mask, b, h, m0, n0);
            if (it + 1 < n_blocks) {
                load_tile_async<Br, D>(s_q(buf ^ 1), q, p.q_st.l, m0 + Br, p.lq);
                load_tile_async<Br, D>(s_do(buf ^ 1), d_o, p.do_st.l, m0 + Br, p.lq);
                stage_rows(m0 + Br, buf ^ 1);
            }
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const float* lse2 = s_lse + buf * Br;
            const float* delta = s_delta + buf * Br;

            // Steps 1-6 in sub-tiles of Bs queries (Bs = Br for D = 64; Br / 2 for D = 128,
            // whose dK and dV accumulators already take half of the registers).
            constexpr int Bs = D == 64 ? Br : Br / 2;
#pragma unroll 1
            for (int sub = 0; sub < Br / Bs; ++sub) {
                const int q_slab = sub * Bs / 16;  // first 16-query slab of the sub-tile

                // 1. S^T = K Q^T and dP^T = V dO^T (16 keys x Bs queries per warp).
                float s[Bs / 8][4], dp[Bs / 8][4];
#pragma unroll
                for (int nt = 0; nt < Bs / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    uint32_t ka[4], va[4];
                    k_a(kk, ka);
                    v_a(kk, va);
#pragma unroll
                    for (int np = 0; np < Bs / 16; ++np) {
                        uint32_t qf[4], of[4];
                        ldmatrix_x4(s_q(buf) + (q_slab + np) * slab + (b_lane ^ (kk * 32)), qf);
                        ldmatrix_x4(s_do(buf) + (q_slab + np) * slab + (b_lane ^ (kk * 32)), of);
                        mma_16816<T>(s[2 * np], ka, qf[0], qf[1]);
                        mma_16816<T>(s[2 * np + 1], ka, qf[2], qf[3]);
                        mma_16816<T>(dp[2 * np], va, of[0], of[1]);
                        mma_16816<T>(dp[2 * np + 1], va, of[2], of[3]);
                    }
                }

                // 2. P^T, masked where needed; 4. dS^T = P^T o (dP^T - Delta).
                const int64_t sub_m0 = m0 + sub * Bs;
                const bool need_mask = p.masked || sub_m0 + Bs > p.lq || key0 + 16 > p.lk ||
                                       (p.causal && key0 + 15 > sub_m0 + p.causal_offset);
#pragma unroll
                for (int nt = 0; nt < Bs / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int col = sub * Bs + nt * 8 + (lane % 4) * 2 + e % 2;  // query in the tile
                        float prob = fast_exp2(s[nt][e] * p.scale_log2 - lse2[col]);
                        if (need_mask) {
                            const int key = warp * 16 + lane / 4 + (e / 2) * 8;  // key in the block
                            const bool kept =
                                key < key_limit(p, m0 + col) - n0 &&
                                (!p.masked || s_mask[col * backward_tc_mask_ld + key] != 0);
                            if (!kept) prob = 0.f;
                        }
                        s[nt][e] = prob;
                        dp[nt][e] = prob * (dp[nt][e] - delta[col]);
                    }

                // 3. dV += P^T dO; 5. dK += dS^T Q; 6. dS^T to shared memory.
#pragma unroll
                for (int kk = 0; kk < Bs / 16; ++kk) {
                    const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                                            pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                            pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                            pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                    const uint32_t da[4] = {pack2<T>(dp[2 * kk][0], dp[2 * kk][1]),
                                            pack2<T>(dp[2 * kk][2], dp[2 * kk][3]),
                                            pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                            pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                    const int qs = q_slab + kk;  // 16-query slab of this k-step
#pragma unroll
                    for (int dq2 = 0; dq2 < D / 16; ++dq2) {
                        uint32_t of[4], qf[4];
                        ldmatrix_x4_trans(s_do(buf) + qs * slab + (bt_lane ^ (dq2 * 32)), of);
                        ldmatrix_x4_trans(s_q(buf) + qs * slab + (bt_lane ^ (dq2 * 32)), qf);
                        mma_16816<T>(dv_acc[2 * dq2], pa, of[0], of[1]);
                        mma_16816<T>(dv_acc[2 * dq2 + 1], pa, of[2], of[3]);
                        mma_16816<T>(dk_acc[2 * dq2], da, qf[0], qf[1]);
                        mma_16816<T>(dk_acc[2 * dq2 + 1], da, qf[2], qf[3]);
                    }
                    // dS^T rows (keys) lane/4 and lane/4 + 8 of the warp, queries 16 qs + ...
                    const int key = warp * 16 + lane / 4;
                    const auto ds_at = [&](int row, int chunk) {
                        return reinterpret_cast<uint32_t*>(s_ds_ptr + swizzled<Br / 8>(row, chunk) +
                                                           (lane % 4) * 4);
                    };
                    *ds_at(key, 2 * qs) = da[0];
                    *ds_at(key + 8, 2 * qs) = da[1];
                    *ds_at(key, 2 * qs + 1) = da[2];
                    *ds_at(key + 8, 2 * qs + 1) = da[3];
                }
            }
            __syncthreads();  // dS^T complete

            // dQ (Br queries x D/4 columns of this warp) = dS K, 16 columns at a time, added
            // to the scratch.
            constexpr int cols = D / 4;
#pragma unroll
            for (int np = 0; np < cols / 16; ++np) {
                float dq[Br / 16][2][4];
#pragma unroll
                for (int mt = 0; mt < Br / 16; ++mt)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        dq[mt][0][e] = dq[mt][1][e] = 0.f;
#pragma unroll
                for (int kk = 0; kk < Bc / 16; ++kk) {
                    uint32_t kf[4];
                    ldmatrix_x4_trans(s_k + kk * slab + (bt_lane ^ ((warp * cols / 16 + np) * 32)), kf);
#pragma unroll
                    for (int mt = 0; mt < Br / 16; ++mt) {
                        uint32_t a[4];
                        ldmatrix_x4_trans(s_ds + kk * ds_slab + (ds_b_lane ^ (mt * 32)), a);
                        mma_16816<T>(dq[mt][0], a, kf[0], kf[1]);
                        mma_16816<T>(dq[mt][1], a, kf[2], kf[3]);
                    }
                }
#pragma unroll
                for (int mt = 0; mt < Br / 16; ++mt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int64_t i = m0 + mt * 16 + lane / 4 + 8 * r;
                        if (i >= p.lq) continue;
                        float* row = p.dq_accum + (bh * p.lq + i) * D + warp * cols + np * 16 +
                                     (lane % 4) * 2;
#pragma unroll
                        for (int nt = 0; nt < 2; ++nt) {
                            atomicAdd(row + nt * 8, dq[mt][nt][2 * r]);
                            atomicAdd(row + nt * 8 + 1, dq[mt][nt][2 * r + 1]);
                        }
                    }
            }
            // The next iteration's writes to dS^T, the mask tile and this iteration's Q/dO
            // buffer all come after its first barrier, which every warp reaches only after
            // finishing the reads above.
        }
    }

    // dK (scaled) and dV of the warp's 16 keys: rows lane/4, lane/4 + 8, two columns each.
    T* dk = static_cast<T*>(p.dk) + p.dk_st.at(b, h, 0, 0);
    T* dv = static_cast<T*>(p.dv) + p.dv_st.at(b, h, 0, 0);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t j = n0 + warp * 16 + lane / 4 + 8 * r;
        if (j >= p.lk) continue;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            const int c = dt * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t*>(dk + j * p.dk_st.l + c) =
                pack2<T>(dk_acc[dt][2 * r] * p.scale, dk_acc[dt][2 * r + 1] * p.scale);
            *reinterpret_cast<uint32_t*>(dv + j * p.dv_st.l + c) =
                pack2<T>(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
        }
    }
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::attention
