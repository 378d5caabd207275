#pragma once
/// \file
/// Strided addressing and launch geometry shared by the CUDA kernels (nvcc only; included by
/// `src/*.cu`).
///
/// * `strided_map<N>` — N operands of equal logical extents, each with its own element
///   strides (0 broadcasts). On the device `locate(i, idx, off)` gives every operand's
///   element offset of row-major logical index i, and `advance(idx, off)` steps to i + 1
///   without a division. Built on the host by `make_strided_map`, which drops extent-1 axes
///   and merges neighbouring axes that are contiguous with each other in every operand, so a
///   dense tensor costs one axis and a transposed one two.
/// * `broadcast_period(v)` — recognises the layouts the vectorised fast paths accept: dense
///   row-major (0), or dense trailing axes repeated over stride-0 leading ones (element i at
///   offset i % period: a bias row, a (L, F) table added to (B, L, F), a broadcast scalar).
/// * `grid_blocks(items, cx)` — blocks of `threads_per_block` for a grid-stride loop over
///   `items`: at most one resident wave (2048 threads per multiprocessor), so large tensors
///   loop and small ones launch only what they need.
/// * `narrowed(v, axis, start, length)` — the `tensor_ref::narrow` of a kernel view.

#include <algorithm>
#include <array>
#include <cstdint>

#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

/// Threads per block of every grid-stride kernel.
inline constexpr int threads_per_block = 256;

/// Row-major addressing of N operands that share logical extents (see the file comment).
/// Operand k's element offset of multi-index idx is sum_a idx[a] * strides[k][a].
template <int N>
struct strided_map {
    int rank = 0;                       ///< merged axes (0: a single element)
    index_t extents[max_rank] = {};     ///< merged extents, outermost first
    index_t strides[N][max_rank] = {};  ///< per operand, per merged axis

    /// Sets `idx` to the multi-index of logical element `i` and `off[k]` to operand k's
    /// element offset of it.
    __device__ __forceinline__ void locate(index_t i, index_t (&idx)[max_rank],
                                           index_t (&off)[N]) const {
#pragma unroll
        for (int k = 0; k < N; ++k)
            off[k] = 0;
#pragma unroll
        for (int a = max_rank - 1; a >= 0; --a) {
            idx[a] = 0;
            if (a < rank) {
                index_t here = i;
                if (a > 0) {
                    const index_t q = i / extents[a];
                    here = i - q * extents[a];
                    i = q;
                }
                idx[a] = here;
#pragma unroll
                for (int k = 0; k < N; ++k)
                    off[k] += here * strides[k][a];
            }
        }
    }

    /// Steps `idx` / `off` from logical element i to i + 1 (carrying into outer axes; past
    /// the last element the outermost index simply keeps counting).
    __device__ __forceinline__ void advance(index_t (&idx)[max_rank], index_t (&off)[N]) const {
#pragma unroll
        for (int a = max_rank - 1; a >= 0; --a) {
            if (a < rank) {
                ++idx[a];
#pragma unroll
                for (int k = 0; k < N; ++k)
                    off[k] += strides[k][a];
                if (a == 0 || idx[a] < extents[a]) return;
#pragma unroll
                for (int k = 0; k < N; ++k)
                    off[k] -= extents[a] * strides[k][a];
                idx[a] = 0;
            }
        }
    }
};

/// The `strided_map` of `rank` axes of extents `ext` for N operands with strides
/// `strides[k]` (one per axis), with extent-1 axes dropped and mergeable neighbours merged.
template <int N>
strided_map<N> make_strided_map(int rank, const index_t* ext,
                                const std::array<const index_t*, N>& strides) {
    // Built innermost first, then reversed.
    index_t e_rev[max_rank] = {};
    index_t s_rev[N][max_rank] = {};
    int r = 0;
    for (int a = rank - 1; a >= 0; --a) {
        if (ext[a] == 1) continue;
        bool merge = r > 0;
        for (int k = 0; k < N && merge; ++k)
            merge = strides[k][a] == s_rev[k][r - 1] * e_rev[r - 1];
        if (merge) {
            e_rev[r - 1] *= ext[a];
        } else {
            e_rev[r] = ext[a];
            for (int k = 0; k < N; ++k)
                s_rev[k][r] = strides[k][a];
            ++r;
        }
    }
    strided_map<N> m;
    m.rank = r;
    for (int j = 0; j < r; ++j) {
        m.extents[j] = e_rev[r - 1 - j];
        for (int k = 0; k < N; ++k)
            m.strides[k][j] = s_rev[k][r - 1 - j];
    }
    return m;
}

/// The `strided_map` of N views of equal extents (those of `views[0]`).
template <int N>
strided_map<N> make_strided_map(const std::array<view, N>& views) {
    std::array<const index_t*, N> strides{};
    for (int k = 0; k < N; ++k)
        strides[std::size_t(k)] = views[std::size_t(k)].strides;
    return make_strided_map<N>(views[0].rank, views[0].extents, strides);
}

/// 0 when `v` is dense row-major; p > 0 when its logical element i lives at element offset
/// i % p (dense trailing axes of p elements, stride 0 on every other axis of extent > 1;
/// p = 1: a broadcast scalar); -1 for any other layout.
inline index_t broadcast_period(const view& v) {
    index_t step = 1;
    int a = v.rank - 1;
    for (; a >= 0; --a) {
        if (v.extents[a] == 1) continue;
        if (v.strides[a] != step) break;
        step *= v.extents[a];
    }
    for (; a >= 0; --a)
        if (v.extents[a] != 1 && v.strides[a] != 0) return -1;
    return step == v.numel() ? 0 : step;
}

/// True when `p` is a multiple of `bytes`.
inline bool aligned(const void* p, std::size_t bytes) {
    return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

/// Blocks of `threads_per_block` threads for a grid-stride loop over `items` work items
/// (at least 1, at most one resident wave on `cx.multiprocessors` multiprocessors).
inline unsigned grid_blocks(index_t items, const launch_context& cx) {
    const index_t sms = cx.multiprocessors > 0 ? cx.multiprocessors : 1;
    const index_t wave = sms * (2048 / threads_per_block);
    const index_t wanted = (items + threads_per_block - 1) / threads_per_block;
    return unsigned(std::clamp<index_t>(wanted, 1, wave));
}

/// Index of this thread in the grid, and the number of threads in the grid.
__device__ __forceinline__ index_t grid_thread() {
    return index_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_threads() {
    return index_t(gridDim.x) * blockDim.x;
}

/// `v` restricted to [start, start + length) along `axis` (no copy).
inline view narrowed(view v, int axis, index_t start, index_t length) {
    v.data = static_cast<char*>(v.data) +
             start * v.strides[axis] * static_cast<index_t>(dtype_size(v.type));
    v.extents[axis] = length;
    return v;
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
