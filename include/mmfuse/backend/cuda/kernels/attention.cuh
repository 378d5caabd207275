#pragma once
/// \file
/// Fused attention kernels of the CUDA backend: what every attention kernel shares.
///
/// * `attention_params` — one problem (FlashAttention semantics, `ops::attention_desc`) as
///   the kernels see it: base pointers, (batch, head, row, column) strides in elements,
///   sizes, scale, causal offset and the optional strided bool keep mask.
/// * `is_kept` — the one statement of which (i, j) positions take part.
/// * Element conversion (`to_float`, `from_float`) for float, bf16 and f16.
/// * The Ampere/Hopper warp-level primitives the tensor-core kernels use, as inline PTX:
///   16-byte `cp.async` with zero fill, `ldmatrix` (plain and transposed), `mma.sync
///   m16n8k16` (row.col, f32 accumulators) for bf16 and f16, and `ex2.approx`.
///
/// The kernels themselves: `attention_general.cuh` (any dtype and head size, CUDA cores),
/// `attention_forward.cuh` (FlashAttention-2 forward on tensor cores, bf16/f16, D = 64/128),
/// `attention_backward.cuh` (FlashAttention-2 backward on tensor cores plus the pre- and
/// post-processing kernels every backward uses). Compiled by nvcc only (src/attention.cu).

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mmfuse::inline v0::backend::cuda::kernels::attention {

using std::int64_t;
using std::uint32_t;

/// Element strides of a rank-4 operand (batch, head, row, column).
struct strides4 {
    int64_t b = 0, h = 0, l = 0, d = 0;
    __host__ __device__ int64_t at(int64_t bi, int64_t hi, int64_t li, int64_t di) const {
        return bi * b + hi * h + li * l + di * d;
    }
};

/// One attention problem, forward and backward (see the file comment). Pointers that an
/// operation does not use are null. Queries i in [0, lq), keys j in [0, lk).
struct attention_params {
    // forward operands
    const void* q = nullptr;
    const void* k = nullptr;
    const void* v = nullptr;
    const bool* keep = nullptr;  ///< (B, H, Lq, Lk) when `masked`
    void* o = nullptr;           ///< output of the forward, input of the backward
    float* lse = nullptr;        ///< (B, H, Lq), natural log
    // backward operands
    const void* dout = nullptr;  ///< dO, (B, H, Lq, Dv)
    void* dq = nullptr;
    void* dk = nullptr;
    void* dv = nullptr;
    float* dq_accum = nullptr;   ///< scratch (B*H, Lq, D) f32, contiguous
    float* delta = nullptr;      ///< scratch (B*H, Lq) f32: rowsum(dO * O)

    strides4 q_st, k_st, v_st, o_st, keep_st, do_st, dq_st, dk_st, dv_st;
    int64_t lse_b = 0, lse_h = 0, lse_l = 0;  ///< lse strides (batch, head, row)

    int batch = 0, heads = 0, lq = 0, lk = 0, d = 0, dv_dim = 0;
    float scale = 1.f;       ///< softmax scale (natural units)
    float scale_log2 = 1.f;  ///< scale * log2(e): scores in base-2 units
    bool causal = false;
    int64_t causal_offset = 0;  ///< keep j <= i + causal_offset
    bool masked = false;
};

/// True when query i and key j take part (inside the problem, causal rule, keep mask).
__device__ __forceinline__ bool is_kept(const attention_params& p, int b, int h, int64_t i,
                                        int64_t j) {
    if (i >= p.lq || j >= p.lk) return false;
    if (p.causal && j > i + p.causal_offset) return false;
    if (p.masked && !p.keep[p.keep_st.at(b, h, i, j)]) return false;
    return true;
}

/// Last key (exclusive) that rows [m0, m0 + rows) may attend to.
__device__ __forceinline__ int64_t key_end(const attention_params& p, int64_t m0, int rows) {
    if (!p.causal) return p.lk;
    const int64_t end = m0 + rows + p.causal_offset;  // (last row + offset) + 1
    return end < 0 ? 0 : (end < p.lk ? end : p.lk);
}

/// Keys j < key_limit(p, i) pass the bounds and causal rules for query i (0 for i >= Lq);
/// the keep mask, if any, is applied on top.
__device__ __forceinline__ int64_t key_limit(const attention_params& p, int64_t i) {
    if (i >= p.lq) return 0;
    int64_t end = p.lk;
    if (p.causal && i + p.causal_offset + 1 < end) end = i + p.causal_offset + 1;
    return end < 0 ? 0 : end;
}

// ---- element conversion ----------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>)
        return __float2bfloat16_rn(x);
    else if constexpr (std::is_same_v<T, __half>)
        return __float2half_rn(x);
    else
        return x;
}

/// Two floats rounded to T and packed into one 32-bit register, `lo` in the low half (the
/// element with the lower column index in an mma fragment).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    }
}

// ---- warp-level primitives (sm_80+) ------------------------------------------------------

/// Shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// Asynchronous 16-byte global -> shared copy; with `valid` false the 16 bytes are zero
/// filled and nothing is read (`src` must still be a valid address expression).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
/// Waits until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

/// Four 8x8 b16 matrices from shared memory; lane l gives the address of row l % 8 of
/// matrix l / 8, and receives row l / 4, columns 2 (l % 4) .. +1 of each matrix.
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
/// As `ldmatrix_x4`, transposed: lane l receives rows 2 (l % 4) .. +1 of column l / 4.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/// c += a b for one m16n8k16 tile: a row-major 16x16 (4 registers), b column-major 16x8
/// (2 registers), c 16x8 f32 (c0, c1: row lane/4, columns 2 (lane%4) .. +1; c2, c3: row
/// lane/4 + 8). T is __nv_bfloat16 or __half.
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

/// 2^x (MUFU.EX2, flushing denormals); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/// Byte offset of 16-byte chunk `chunk` of row `row` in a shared tile whose rows hold
/// `chunks` (>= 8) chunks, XOR-swizzled so that the 8 rows an ldmatrix reads at one logical
/// chunk fall in 8 different bank groups (no bank conflicts, no padding).
template <int chunks>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
    static_assert(chunks >= 8 && chunks % 8 == 0);
    return uint32_t(row * chunks * 16 + ((chunk ^ (row & 7)) * 16));
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels::attention
