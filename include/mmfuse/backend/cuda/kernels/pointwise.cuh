#pragma once
/// \file
/// The element-wise engine of the CUDA backend (nvcc only; included by `src/*.cu`):
/// `launch_map<N, In, Out>(name, f, y, {x_0, ..., x_{N-1}}, cx)` computes
///
///     y[i] = f(i, {x_0[i], ..., x_{N-1}[i]})     for every row-major logical index i of y
///
/// where the inputs (storage type In, all with y's extents, stride-0 broadcasts allowed) are
/// widened to `compute_t<In>` and the result is rounded to y's storage type Out. `f` is a
/// trivially copyable functor with a `__device__` call operator `(index_t i, const C* x)`;
/// each thread works on a private copy of it, over consecutive indices, so a functor may
/// keep per-thread state (the Philox block cache of the random ops). With N = 0 there are no
/// inputs (fills).
///
/// Two kernels, chosen on the host:
/// * dense: y dense row-major, every input dense, a repeated dense row (`broadcast_period`
///   a multiple of the vector width) or a broadcast scalar, and every pointer aligned: each
///   thread moves W = 16 / max(sizeof(In), sizeof(Out)) elements with one 16-byte load per
///   input and one store;
/// * strided: anything else (transposed, narrowed, padded, broadcast views); each thread
///   handles `strided_chunk` consecutive logical elements, locating the first through a
///   `strided_map` and stepping to the others without division.
/// Both are grid-stride loops sized by `grid_blocks`. No allocation, no synchronisation.

#include <array>
#include <cstdint>

#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/element.cuh"
#include "mmfuse/backend/cuda/kernels/strided.cuh"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

/// Consecutive logical elements one thread of the strided kernel handles.
inline constexpr int strided_chunk = 4;

/// The inputs of a map kernel: pointers and (dense kernel only) broadcast periods.
template <class In, int N>
struct map_inputs {
    const In* data[N > 0 ? N : 1] = {};
    index_t period[N > 0 ? N : 1] = {};
};

template <int W, int N, class F, class Out, class In>
__global__ void __launch_bounds__(threads_per_block)
    map_dense_kernel(F fn, index_t n, Out* y, map_inputs<In, N> x) {
    using C = compute_t<In>;
    F f = fn;
    const index_t packs = n / W;
    const index_t stride = grid_threads();
    for (index_t p = grid_thread(); p < packs; p += stride) {
        const index_t i0 = p * W;
        C v[W][N > 0 ? N : 1];
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const index_t period = x.period[k];
            if (period == 1) {
                const C s = to_compute(x.data[k][0]);
#pragma unroll
                for (int j = 0; j < W; ++j)
                    v[j][k] = s;
            } else {
                const pack<In, W> q =
                    *reinterpret_cast<const pack<In, W>*>(x.data[k] + (period ? i0 % period : i0));
#pragma unroll
                for (int j = 0; j < W; ++j)
                    v[j][k] = to_compute(q.v[j]);
            }
        }
        pack<Out, W> out;
#pragma unroll
        for (int j = 0; j < W; ++j)
            out.v[j] = from_compute<Out>(f(i0 + j, v[j]));
        *reinterpret_cast<pack<Out, W>*>(y + i0) = out;
    }
    // The last n % W elements, one per thread of the first threads.
    const index_t i = packs * W + grid_thread();
    if (i < n) {
        C v[N > 0 ? N : 1];
#pragma unroll
        for (int k = 0; k < N; ++k)
            v[k] = to_compute(x.data[k][x.period[k] ? i % x.period[k] : i]);
        y[i] = from_compute<Out>(f(i, v));
    }
}

template <int N, class F, class Out, class In>
__global__ void __launch_bounds__(threads_per_block)
    map_strided_kernel(F fn, index_t n, strided_map<N + 1> map, Out* y, map_inputs<In, N> x) {
    using C = compute_t<In>;
    F f = fn;
    const index_t items = (n + strided_chunk - 1) / strided_chunk;
    const index_t stride = grid_threads();
    for (index_t item = grid_thread(); item < items; item += stride) {
        index_t i = item * strided_chunk;
        index_t idx[max_rank];
        index_t off[N + 1];
        map.locate(i, idx, off);
#pragma unroll
        for (int c = 0; c < strided_chunk; ++c, ++i) {
            if (i >= n) break;
            C v[N > 0 ? N : 1];
#pragma unroll
            for (int k = 0; k < N; ++k)
                v[k] = to_compute(x.data[k][off[k + 1]]);
            y[off[0]] = from_compute<Out>(f(i, v));
            if (c + 1 < strided_chunk) map.advance(idx, off);
        }
    }
}

/// True when the dense kernel with vector width W can run y = f(x...) (see the file comment).
template <int W, int N, class In, class Out>
bool dense_vectorisable(const view& y, const std::array<view, N>& x) {
    if (broadcast_period(y) != 0 || !aligned(y.data, sizeof(Out) * W)) return false;
    for (const view& v : x) {
        const index_t period = broadcast_period(v);
        if (period == 1) continue;  // a broadcast scalar: read once, no alignment needed
        if (period < 0 || period % W != 0 || !aligned(v.data, sizeof(In) * W)) return false;
    }
    return true;
}

/// Enqueues y[i] = f(i, {x_0[i], ...}) on `cx.stream` (see the file comment); `name` is the
/// op named in a launch error. Does nothing for an empty y.
template <int N, class In, class Out, class F>
void launch_map(const char* name, const F& f, const view& y, const std::array<view, N>& x,
                const launch_context& cx) {
    for (int k = 0; k < N; ++k)
        expect_same_extents(name, "input", x[std::size_t(k)], y);
    const index_t n = y.numel();
    if (n == 0) return;
    constexpr int W = vector_width<In, Out>;
    map_inputs<In, N> in;
    for (int k = 0; k < N; ++k)
        in.data[k] = static_cast<const In*>(x[std::size_t(k)].data);
    Out* const out = static_cast<Out*>(y.data);
    if (dense_vectorisable<W, N, In, Out>(y, x)) {
        for (int k = 0; k < N; ++k)
            in.period[k] = broadcast_period(x[std::size_t(k)]);
        map_dense_kernel<W, N>
            <<<grid_blocks(n / W, cx), threads_per_block, 0, cx.stream>>>(f, n, out, in);
    } else {
        std::array<view, N + 1> all{};
        all[0] = y;
        for (int k = 0; k < N; ++k)
            all[std::size_t(k + 1)] = x[std::size_t(k)];
        const index_t items = (n + strided_chunk - 1) / strided_chunk;
        map_strided_kernel<N><<<grid_blocks(items, cx), threads_per_block, 0, cx.stream>>>(
            f, n, make_strided_map<N + 1>(all), out, in);
    }
    check_launch(name);
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
