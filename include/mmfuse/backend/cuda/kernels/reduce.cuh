#pragma once
/// \file
/// Deterministic sum / mean over one axis on the GPU (nvcc only; included by `src/*.cu`).
///
/// No atomics: every output element is reduced by one *group* of G threads — one thread
/// (G = 1), one warp (32) or one block (`threads_per_block`) — whose lanes each sum a fixed
/// subset of the axis and then combine in a fixed tree. When there are too few outputs to
/// fill the GPU, the axis is also cut into `splits` chunks: the chunk sums go to the stream's
/// scratch and a second kernel adds them in order. Every choice depends on the shape, the
/// strides and the multiprocessor count only, so a repeated call gives the same bits.
///
/// Sums are accumulated in double for f32, bf16 and f16 alike, as the Eigen reference does,
/// and rounded once: y = T([y +] (mean ? sum / n : sum)). A reduction reads each element once,
/// so memory bandwidth, not the double adds, bounds its time (also on GPUs with slow FP64);
/// an f32 sum of thousands of terms that cancel keeps its last bits, which an f32
/// accumulator would lose.
///
/// The strategy (`plan_reduce`):
/// * G = 1 when the reduced axis is not the fastest-varying one in memory (bias gradients:
///   neighbouring outputs are neighbouring columns, so a warp's loads coalesce) or when it is
///   short (<= 16); G = 32 for axes up to 4096 elements; G = one block beyond;
/// * splits = as many chunks as it takes to give every multiprocessor a full wave of groups,
///   but no chunk shorter than 16 elements per lane.

#include <algorithm>
#include <cstddef>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/element.cuh"
#include "mmfuse/backend/cuda/kernels/strided.cuh"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

/// How a reduction's result is written: y = [y +] (mean ? sum / n : sum).
struct reduce_store {
    bool mean = false;
    bool accumulate = false;
    index_t n = 0;  ///< length of the reduced axis (the mean of an empty axis is NaN)

    template <class T>
    __device__ __forceinline__ void operator()(T* y, double sum) const {
        const double r = mean ? sum / double(n) : sum;
        *y = from_compute<T>((accumulate ? double(to_compute(*y)) : 0.0) + r);
    }
};

/// The sum of `v` over the G lanes of a group, the same value in every lane for G <= 32 and
/// in lane 0 for a block (`shared` holds one double per warp). Fixed order: deterministic.
template <int G>
__device__ __forceinline__ double group_sum(double v, double* shared) {
    if constexpr (G == 1) {
        return v;
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if constexpr (G == 32) {
            return v;
        } else {
            static_assert(G == threads_per_block,
                          "mmfuse: a reduce group is a thread, a warp or a block");
            const int warp = int(threadIdx.x) / 32;
            if (threadIdx.x % 32 == 0) shared[warp] = v;
            __syncthreads();
            double total = 0.0;
            if (threadIdx.x == 0)
                for (int w = 0; w < G / 32; ++w)
                    total += shared[w];
            __syncthreads();  // `shared` is reused by the next output
            return total;
        }
    }
}

/// Work item w = (output o, chunk s), o fastest: chunk s of the reduced axis for output o
/// (its x and y offsets from `outer`). With one chunk the result goes to y, otherwise to
/// `partial[s * outputs + o]`.
template <int G, class T>
__global__ void __launch_bounds__(threads_per_block)
    reduce_kernel(strided_map<2> outer, index_t outputs, const T* x, index_t n, index_t step,
                  index_t splits, index_t chunk, double* partial, T* y, reduce_store store) {
    __shared__ double shared[threads_per_block / 32];
    const int lane = G == 1 ? 0 : int(threadIdx.x % G);
    const index_t group = grid_thread() / G;
    const index_t groups = grid_threads() / G;
    const index_t items = outputs * splits;
    // The trip count is uniform over a group, as `group_sum` needs.
    for (index_t w = group; w < items; w += groups) {
        const index_t o = w % outputs, s = w / outputs;
        index_t idx[max_rank];
        index_t off[2];
        outer.locate(o, idx, off);
        const index_t begin = s * chunk;
        const index_t end = begin + chunk < n ? begin + chunk : n;
        double acc = 0.0;
        for (index_t j = begin + lane; j < end; j += G)
            acc += double(to_compute(x[off[0] + j * step]));
        const double total = group_sum<G>(acc, shared);
        if (lane == 0) {
            if (splits == 1)
                store(y + off[1], total);
            else
                partial[s * outputs + o] = total;
        }
    }
}

/// Second pass of a split reduction: y[o] = store(sum over s of partial[s * outputs + o]).
template <class T>
__global__ void __launch_bounds__(threads_per_block)
    reduce_finish_kernel(strided_map<2> outer, index_t outputs, const double* partial,
                         index_t splits, T* y, reduce_store store) {
    for (index_t o = grid_thread(); o < outputs; o += grid_threads()) {
        index_t idx[max_rank];
        index_t off[2];
        outer.locate(o, idx, off);
        double acc = 0.0;
        for (index_t s = 0; s < splits; ++s)
            acc += partial[s * outputs + o];
        store(y + off[1], acc);
    }
}

/// The launch plan of one reduction (see the file comment).
struct reduce_plan {
    strided_map<2> outer;  ///< outputs: x offset of the axis start, y offset
    index_t outputs = 0;
    index_t n = 0;     ///< reduced extent
    index_t step = 0;  ///< x stride of the reduced axis
    int group = 1;     ///< G
    index_t splits = 1;
    index_t chunk = 0;
};

/// Plans y = reduce(x) over `axis` (y: x's extents with `axis` removed or kept as 1).
inline reduce_plan plan_reduce(const view& x, const view& y, int axis, const launch_context& cx) {
    reduce_plan p;
    index_t ext[max_rank] = {}, xs[max_rank] = {}, ys[max_rank] = {};
    const bool kept = y.rank == x.rank;
    int r = 0;
    for (int a = 0, j = 0; a < x.rank; ++a) {
        if (a == axis) {
            if (kept) ++j;
            continue;
        }
        ext[r] = x.extents[a];
        xs[r] = x.strides[a];
        ys[r] = y.strides[j++];
        ++r;
    }
    p.outer = make_strided_map<2>(r, ext, {xs, ys});
    p.outputs = 1;
    for (int a = 0; a < r; ++a)
        p.outputs *= ext[a];
    p.n = x.extents[axis];
    p.step = x.strides[axis];
    const int orank = p.outer.rank;
    const bool columns = orank > 0 && p.outer.strides[0][orank - 1] < p.step;
    p.group = columns || p.n <= 16 ? 1 : (p.n <= 4096 ? 32 : threads_per_block);
    const index_t sms = cx.multiprocessors > 0 ? cx.multiprocessors : 1;
    const index_t wave_groups = sms * 2048 / p.group;
    const index_t min_chunk = index_t(p.group) * 16;
    p.splits = std::max<index_t>(1, std::min(wave_groups / std::max<index_t>(p.outputs, 1),
                                             (p.n + min_chunk - 1) / min_chunk));
    p.chunk = p.n == 0 ? 0 : (p.n + p.splits - 1) / p.splits;
    if (p.chunk > 0) p.splits = (p.n + p.chunk - 1) / p.chunk;  // no empty chunk
    return p;
}

/// Enqueues y = [y +] sum or mean of x over `axis` for storage type T; chunk sums of a
/// split reduction live in `cx.scratch` (which grows on the first such call, see arena.hpp).
template <class T>
void launch_reduce(const view& x, const view& y, int axis, bool mean, bool accumulate,
                   const launch_context& cx) {
    const reduce_plan p = plan_reduce(x, y, axis, cx);
    if (p.outputs == 0) return;
    const reduce_store store{mean, accumulate, p.n};
    double* partial = nullptr;
    if (p.splits > 1)
        partial = static_cast<double*>(
            cx.scratch->acquire(std::size_t(p.splits * p.outputs) * sizeof(double), cx.stream));
    const T* const xp = static_cast<const T*>(x.data);
    T* const yp = static_cast<T*>(y.data);
    const unsigned blocks = grid_blocks(p.outputs * p.splits * p.group, cx);
    const auto run = [&]<int G>() {
        reduce_kernel<G, T><<<blocks, threads_per_block, 0, cx.stream>>>(
            p.outer, p.outputs, xp, p.n, p.step, p.splits, p.chunk, partial, yp, store);
    };
    if (p.group == 1)
        run.template operator()<1>();
    else if (p.group == 32)
        run.template operator()<32>();
    else
        run.template operator()<threads_per_block>();
    check_launch("reduce");
    if (p.splits > 1) {
        reduce_finish_kernel<T><<<grid_blocks(p.outputs, cx), threads_per_block, 0, cx.stream>>>(
            p.outer, p.outputs, partial, p.splits, yp, store);
        check_launch("reduce (finish)");
    }
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
