#pragma once
/// \file
/// FlashAttention-2 forward on tensor cores (Dao, "FlashAttention-2: Faster Attention with
/// Better Parallelism and Work Partitioning", 2023, Algorithm 1) for bf16 and f16 with
/// D = Dv in {64, 128}, unit-stride rows, 16-byte aligned rows.
///
/// One block of 4 warps per (128-query tile, head, batch); each warp owns 32 query rows (two
/// 16-row mma tiles, so every K and V fragment read from shared memory feeds two mmas). The
/// block streams 64-key tiles of K and V through shared memory with 16-byte `cp.async`,
/// double buffered (tile t + 1 loads while tile t is used), in an XOR-swizzled layout
/// (`swizzled`) so that `ldmatrix` reads are free of bank conflicts. Per key tile a warp
///   1. computes S = Q K^T with mma.sync m16n8k16 (for D = 64 the Q fragments stay in
///      registers for the whole kernel; for D = 128 they are re-read from shared memory to
///      leave registers to the accumulators), K fragments from `ldmatrix`,
///   2. applies the boundary / causal / keep mask only on tiles that need it (the keep mask,
///      a strided bool view, is staged per tile in shared memory only when the problem is
///      masked),
///   3. updates the online softmax in base 2 (m = scale log2(e) max_j S, one FFMA per score
///      for P = 2^(scale log2(e) S - m); needs scale > 0, other scales take the general
///      kernel): row max over the quad of lanes that share a row, O rescaled only when the
///      max moved, the row sum kept per lane and reduced once at the end,
///   4. accumulates O += P V with P re-packed from the S accumulators straight into A
///      fragments (no shared-memory round trip) and V fragments from `ldmatrix.trans`.
/// Causal problems skip the key tiles above the diagonal, and blocks are launched from the
/// last query tile down so the longest ones start first. The epilogue normalises O, stages
/// it through shared memory for 16-byte coalesced stores and writes lse = (m + log2 l) ln 2
/// (fully masked rows: O = 0, lse = -inf).

#include <cmath>

#include "mmfuse/backend/cuda/kernels/attention.cuh"

namespace mmfuse::inline v0::backend::cuda::kernels::attention {

inline constexpr int forward_tc_threads = 128;  ///< 4 warps

/// Tile shape of `forward_tc<T, D>`: 2 16-row mma tiles per warp (Br = 128 query rows) and
/// Bc keys per step (64 for D = 64; 32 for D = 128, where the O accumulators take half of
/// the registers). `mask_ld` is the row pitch (bytes) of the keep-mask tile in shared
/// memory: Bc + 4, so the 8 rows a warp reads at once fall in different banks.
template <int D>
struct forward_tc_shape {
    static constexpr int m_tiles = 2;
    static constexpr int rows = 4 * 16 * m_tiles;
    static constexpr int keys = D == 64 ? 64 : 32;
    static constexpr int mask_ld = keys + 4;
    /// Dynamic shared memory: the Q tile, two K and two V tiles, one keep-mask tile.
    static constexpr int smem = (rows + 4 * keys) * D * 2 + rows * mask_ld;
};

/// Asynchronously copies rows [row0, row0 + ROWS) of a (rows_total, D) unit-stride matrix at
/// `g` (row stride `ld` elements) into the swizzled tile at shared address `dst`; rows past
/// `rows_total` are zero filled. Every thread of the block takes part.
template <int ROWS, int D, class T>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const T* g, int64_t ld,
                                                int64_t row0, int64_t rows_total) {
    constexpr int chunks = D / 8;
    constexpr int per_thread = ROWS * chunks / forward_tc_threads;
    static_assert(per_thread * forward_tc_threads == ROWS * chunks);
#pragma unroll
    for (int it = 0; it < per_thread; ++it) {
        const int idx = int(threadIdx.x) + it * forward_tc_threads;
        const int r = idx / chunks, c = idx % chunks;
        const int64_t row = row0 + r;
        const bool valid = row < rows_total;
        cp_async_16(dst + swizzled<chunks>(r, c), g + (valid ? row : 0) * ld + c * 8, valid);
    }
}

/// Copies the keep-mask tile (rows [m0, m0 + Br), keys [n0, n0 + Bc)) into shared memory
/// (one byte per position, 0 outside the problem); every thread of the block takes part.
/// Ordinary loads: the mask is a strided bool view, often broadcast (stride 0).
template <int Br, int Bc, int ld>
__device__ __forceinline__ void stage_mask(const attention_params& p, unsigned char* s_mask,
                                           int b, int h, int64_t m0, int64_t n0) {
    const int c = int(threadIdx.x) % Bc;
    const int64_t j = n0 + c;
#pragma unroll 8
    for (int r = int(threadIdx.x) / Bc; r < Br; r += forward_tc_threads / Bc) {
        const int64_t i = m0 + r;
        s_mask[r * ld + c] = i < p.lq && j < p.lk && p.keep[p.keep_st.at(b, h, i, j)];
    }
}

/// The forward kernel (see the file comment). Grid (ceil(Lq / 128), H, B), 128 threads,
/// `forward_tc_shape<D>::smem` bytes of dynamic shared memory.
template <class T, int D>
__global__ void __launch_bounds__(forward_tc_threads, 2) forward_tc(attention_params p) {
    using shape = forward_tc_shape<D>;
    constexpr int MT = shape::m_tiles, Br = shape::rows, Bc = shape::keys, mask_ld = shape::mask_ld;
    constexpr int chunks = D / 8;
    constexpr bool q_in_registers = D == 64;  // D = 128: registers go to the accumulators
    constexpr uint32_t q_bytes = Br * D * 2, tile_bytes = Bc * D * 2;
    extern __shared__ __align__(128) unsigned char smem_tc[];
    const uint32_t s_q = smem_address(smem_tc);
    const auto s_k = [&](int buf) { return s_q + q_bytes + uint32_t(buf) * tile_bytes; };
    const auto s_v = [&](int buf) { return s_q + q_bytes + uint32_t(2 + buf) * tile_bytes; };
    unsigned char* s_mask = smem_tc + q_bytes + 4 * tile_bytes;

    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    const int b = int(blockIdx.z), h = int(blockIdx.y);
    const int64_t m0 = int64_t(gridDim.x - 1 - blockIdx.x) * Br;  // longest (causal) first
    const int warp_row = warp * 16 * MT;                          // first row of the warp in the tile
    const T* q = static_cast<const T*>(p.q) + p.q_st.at(b, h, 0, 0);
    const T* k = static_cast<const T*>(p.k) + p.k_st.at(b, h, 0, 0);
    const T* v = static_cast<const T*>(p.v) + p.v_st.at(b, h, 0, 0);

    const int64_t n_end = key_end(p, m0, Br);
    const int n_tiles = int((n_end + Bc - 1) / Bc);

    float acc[MT][D / 8][4];
    float row_max[MT][2], row_sum[MT][2];  // row sums: this lane's columns only
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            acc[mt][dt][0] = acc[mt][dt][1] = acc[mt][dt][2] = acc[mt][dt][3] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    if (n_tiles > 0) {
        load_tile_async<Br, D>(s_q, q, p.q_st.l, m0, p.lq);
        load_tile_async<Bc, D>(s_k(0), k, p.k_st.l, 0, p.lk);
        load_tile_async<Bc, D>(s_v(0), v, p.v_st.l, 0, p.lk);
        cp_async_commit();

        // Per-lane ldmatrix offsets within a 16-row slab: Q (A operand), K (non-transposed,
        // B operand of Q K^T), V (transposed, B operand of P V). A logical chunk 2 kk (+1)
        // XORed into the swizzled chunk field equals `swizzled(row, 2 kk + ...)`, since
        // 2 kk < chunks.
        constexpr uint32_t slab_bytes = 16 * chunks * 16;
        const uint32_t q_lane = swizzled<chunks>(lane % 16, lane / 16);
        const uint32_t k_lane = swizzled<chunks>((lane / 16) * 8 + lane % 8, (lane / 8) % 2);
        const uint32_t v_lane = swizzled<chunks>(((lane / 8) % 2) * 8 + lane % 8, lane / 16);
        const auto load_q = [&](int mt, int kk, uint32_t(&a)[4]) {
            ldmatrix_x4(s_q + uint32_t(warp_row / 16 + mt) * slab_bytes + (q_lane ^ (kk * 32)), a);
        };

        uint32_t q_frag[q_in_registers ? MT : 1][q_in_registers ? D / 16 : 1][4];
        if constexpr (q_in_registers) {
            cp_async_wait<0>();
            __syncthreads();
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk)
                    load_q(mt, kk, q_frag[mt][kk]);
        }

        for (int t = 0; t < n_tiles; ++t) {
            const int buf = t & 1;
            if (p.masked) stage_mask<Br, Bc, mask_ld>(p, s_mask, b, h, m0, int64_t(t) * Bc);
            if (t + 1 < n_tiles) {
                load_tile_async<Bc, D>(s_k(buf ^ 1), k, p.k_st.l, int64_t(t + 1) * Bc, p.lk);
                load_tile_async<Bc, D>(s_v(buf ^ 1), v, p.v_st.l, int64_t(t + 1) * Bc, p.lk);
            }
            cp_async_commit();
            cp_async_wait<1>();  // tile t (and Q) landed; tile t + 1 may still be in flight
            __syncthreads();

            // 1. S = Q K^T (16 MT x Bc per warp).
            float s[MT][Bc / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < Bc / 8; ++nt)
                    s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (q_in_registers) {
#pragma unroll
                        for (int x = 0; x < 4; ++x)
                            a[mt][x] = q_frag[mt][kk][x];
                    } else {
                        load_q(mt, kk, a[mt]);
                    }
                }
#pragma unroll
                for (int np = 0; np < Bc / 16; ++np) {
                    uint32_t kf[4];
                    ldmatrix_x4(s_k(buf) + np * slab_bytes + (k_lane ^ (kk * 32)), kf);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<T>(s[mt][2 * np], a[mt], kf[0], kf[1]);
                        mma_16816<T>(s[mt][2 * np + 1], a[mt], kf[2], kf[3]);
                    }
                }
            }

            // 2. Mask where needed (scores stay unscaled: scale > 0 is folded into the
            // exponent below, max(scale s) = scale max(s)).
            const int64_t n0 = int64_t(t) * Bc;
            const bool need_mask = p.masked || n0 + Bc > p.lk ||
                                   (p.causal && n0 + Bc - 1 > m0 + warp_row + p.causal_offset);
            if (need_mask) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int row = warp_row + mt * 16 + lane / 4 + 8 * r;
                        const int64_t limit = key_limit(p, m0 + row) - n0;  // keys [0, limit) pass
#pragma unroll
                        for (int nt = 0; nt < Bc / 8; ++nt)
#pragma unroll
                            for (int e = 0; e < 2; ++e) {
                                const int jl = nt * 8 + (lane % 4) * 2 + e;
                                const bool kept =
                                    jl < limit && (!p.masked || s_mask[row * mask_ld + jl] != 0);
                                if (!kept) s[mt][nt][2 * r + e] = -INFINITY;
                            }
                    }
            }

            // 3. Online softmax (rows lane/4 and lane/4 + 8 of each 16-row tile).
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float raw = -INFINITY;
#pragma unroll
                    for (int nt = 0; nt < Bc / 8; ++nt)
                        raw = fmaxf(raw, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
                    raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 1));
                    raw = fmaxf(raw, __shfl_xor_sync(0xffffffffu, raw, 2));
                    const float mx = fmaxf(row_max[mt][r], raw * p.scale_log2);  // base-2 units
                    const float base = mx == -INFINITY ? 0.f : mx;  // no (-inf) - (-inf)
                    const float alpha = fast_exp2(row_max[mt][r] - base);
                    row_max[mt][r] = mx;
                    float sum = 0.f;
#pragma unroll
                    for (int nt = 0; nt < Bc / 8; ++nt) {
                        s[mt][nt][2 * r] = fast_exp2(fmaf(s[mt][nt][2 * r], p.scale_log2, -base));
                        s[mt][nt][2 * r + 1] = fast_exp2(fmaf(s[mt][nt][2 * r + 1], p.scale_log2, -base));
                        sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
                    }
                    row_sum[mt][r] = row_sum[mt][r] * alpha + sum;
                    if (alpha != 1.f) {
#pragma unroll
                        for (int dt = 0; dt < D / 8; ++dt) {
                            acc[mt][dt][2 * r] *= alpha;
                            acc[mt][dt][2 * r + 1] *= alpha;
                        }
                    }
                }

            // 4. O += P V, P straight from the S accumulators into A fragments.
#pragma unroll
            for (int kk = 0; kk < Bc / 16; ++kk) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    uint32_t vf[4];
                    ldmatrix_x4_trans(s_v(buf) + kk * slab_bytes + (v_lane ^ (dp * 32)), vf);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816<T>(acc[mt][2 * dp], a[mt], vf[0], vf[1]);
                        mma_16816<T>(acc[mt][2 * dp + 1], a[mt], vf[2], vf[3]);
                    }
                }
            }
            __syncthreads();  // buffer `buf` (and the mask tile) are refilled next iteration
        }
    }

    // Epilogue: normalise, stage the warp's rows in shared memory (the Q tile, unused now),
    // write them with 16-byte stores; lse from the lane of each quad holding column 0.
    T* o = static_cast<T*>(p.o) + p.o_st.at(b, h, 0, 0);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float sum = row_sum[mt][r];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int row = warp_row + mt * 16 + lane / 4 + 8 * r;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt)
                *reinterpret_cast<uint32_t*>(smem_tc + swizzled<chunks>(row, dt) + (lane % 4) * 4) =
                    pack2<T>(acc[mt][dt][2 * r] * inv, acc[mt][dt][2 * r + 1] * inv);
            const int64_t i = m0 + row;
            if (lane % 4 == 0 && i < p.lq)
                p.lse[b * p.lse_b + h * p.lse_h + i * p.lse_l] =
                    sum > 0.f ? (row_max[mt][r] + log2f(sum)) * float(M_LN2) : -INFINITY;
        }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < 16 * MT * chunks / 32; ++it) {
        const int idx = lane + 32 * it;
        const int row = warp_row + idx / chunks, c = idx % chunks;
        const int64_t i = m0 + row;
        if (i < p.lq)
            *reinterpret_cast<uint4*>(o + i * p.o_st.l + c * 8) =
                *reinterpret_cast<const uint4*>(smem_tc + swizzled<chunks>(row, c));
    }
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::attention
