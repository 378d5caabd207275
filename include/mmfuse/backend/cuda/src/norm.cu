// Launchers of the CUDA backend's row-wise ops: softmax (forward, backward), layer norm and
// RMS norm (forward, backward). The kernels are in kernels/norm.cuh and kernels/softmax.cuh;
// this file checks the operands a direct `stream::execute` call could get wrong (dtypes and
// extents, so that no kernel reads out of bounds), picks a row configuration from the row
// length and the layout, and enqueues on the op's stream: no allocation (the parameter
// gradients' partial sums use the stream's scratch), no synchronisation, every launch
// checked.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/element.cuh"
#include "mmfuse/backend/cuda/kernels/norm.cuh"
#include "mmfuse/backend/cuda/kernels/softmax.cuh"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

namespace {

using rows::row_config;

/// Longest row one warp handles, and longest row one block holds in registers (vectors).
constexpr index_t warp_row_limit = 1024;
constexpr index_t block_row_limit = 16384;
/// Threads of a block-per-row launch (the kernels' launch bound).
constexpr int block_threads = row_config<false, 0, 1>::max_threads;

/// A grid dimension for `blocks` blocks (at least 1; the kernels loop when clamped).
unsigned grid_size(index_t blocks) {
    return unsigned(std::clamp<index_t>(blocks, 1, 0x7fffffff));
}

/// `v` must have the dtype and extents of `like`.
void expect_like(std::string_view op, std::string_view name, const view& v, const view& like) {
    expect_operand(op, name, v, like.type, like.rank, like.extents);
}

/// `v`, when present (data not null), must be a vector of `length` elements of dtype `type`.
void expect_vector(std::string_view op, std::string_view name, const view& v, dtype type,
                   index_t length) {
    if (v.data) expect_operand(op, name, v, type, 1, &length);
}

/// Throws `backend_error` unless the row operand `x` of `op` has rank >= `min_rank`.
void expect_rows(std::string_view op, const view& x, int min_rank) {
    if (x.rank >= min_rank) return;
    std::string msg(op);
    msg += ": input of shape ";
    msg += describe(x);
    msg += " (rank >= ";
    msg += std::to_string(min_rank);
    msg += " expected)";
    throw backend_error("cuda", msg);
}

/// True when `v` (absent: data null) can be read and written in vectors of `width`
/// elements along its rows: data aligned to the vector's size, unit last stride, and every
/// other stride (of an axis longer than 1) a multiple of `width`, so every row starts
/// aligned.
bool vector_ready(const view& v, int width) {
    if (v.data == nullptr) return true;
    const std::size_t bytes = std::size_t(width) * dtype_size(v.type);
    if (reinterpret_cast<std::uintptr_t>(v.data) % bytes != 0) return false;
    if (v.strides[v.rank - 1] != 1) return false;
    for (int a = 0; a + 1 < v.rank; ++a)
        if (v.extents[a] > 1 && v.strides[a] % width != 0) return false;
    return true;
}

/// Picks the row configuration for rows of `n` elements (`rows` of them; `vector_ok` when
/// every row operand is `vector_ready`) and calls `launch.template operator()<Cfg>(grid,
/// block)` once. Up to `warp_row_limit` elements a row takes L lanes of a warp, L the
/// smallest power of two with one chunk per lane, at most 32 (blockDim (L, 128 / L)); beyond,
/// a block. Rows are held in registers when they are read in 16-byte vectors (up to
/// `block_row_limit` elements) or are at most 128 elements long; otherwise each pass
/// streams the row from memory again (a strided row makes every held element cost
/// registers of addressing, which would spill).
template <class T, class Launch>
void launch_rows(index_t n, index_t rows, bool vector_ok, Launch&& launch) {
    constexpr int width = vector_width<T>;
    const bool vec = vector_ok && n % width == 0;
    if (n <= warp_row_limit) {
        // Rows longer than 32 chunks take whole warps (lanes known at compile time).
        using small_vec = row_config<true, 1, width>;
        using held_vec = row_config<true, int(warp_row_limit) / (32 * width), width, 32>;
        using small = row_config<true, 4, 1>;
        using streamed = row_config<true, 0, 1, 32>;
        static_assert(held_vec::capacity(32) == warp_row_limit);
        const index_t chunks = vec ? n / width : n;
        unsigned lanes = 1;
        while (lanes < 32 && index_t(lanes) < chunks)
            lanes *= 2;
        const dim3 block(lanes, unsigned(streamed::max_threads) / lanes);
        const dim3 grid(grid_size(ceil_div(rows, block.y)));
        if (vec && n <= small_vec::capacity(int(lanes)))
            launch.template operator()<small_vec>(grid, block);
        else if (vec)
            launch.template operator()<held_vec>(grid, block);
        else if (n <= small::capacity(int(lanes)))
            launch.template operator()<small>(grid, block);
        else
            launch.template operator()<streamed>(grid, block);
        return;
    }
    const dim3 grid(grid_size(rows));
    if (vec && n <= block_row_limit) {
        using held_vec = row_config<false, int(block_row_limit) / (block_threads * width), width>;
        static_assert(held_vec::capacity(block_threads) == block_row_limit);
        // Enough threads (a multiple of 32) to hold the row.
        const index_t threads = ceil_div(ceil_div(n, held_vec::slots * width), 32) * 32;
        launch.template operator()<held_vec>(grid, dim3(unsigned(threads)));
    } else if (vec) {
        launch.template operator()<row_config<false, 0, width>>(grid, dim3(block_threads));
    } else {
        launch.template operator()<row_config<false, 0, 1>>(grid, dim3(block_threads));
    }
}

/// Layer norm (`centered`) or RMS norm forward; absent operands have null data.
void norm_forward(std::string_view op, bool centered, double eps, const view& x, const view& gamma,
                  const view& beta, const view& y, const view& mean, const view& rstd,
                  const launch_context& cx) {
    expect_rows(op, x, 1);
    const index_t n = rows::row_length(x);
    const index_t rows = n > 0 ? x.numel() / n : 0;
    expect_like(op, "y", y, x);
    expect_vector(op, "gamma", gamma, x.type, n);
    expect_vector(op, "beta", beta, x.type, n);
    if (centered) expect_operand(op, "mean", mean, x.type, 1, &rows);
    expect_operand(op, "rstd", rstd, x.type, 1, &rows);
    if (rows == 0) return;
    dispatch_float(x.type, op, [&]<class T>() {
        constexpr int width = vector_width<T>;
        const bool vec = vector_ready(x, width) && vector_ready(y, width) &&
                         vector_ready(gamma, width) && vector_ready(beta, width);
        launch_rows<T>(n, rows, vec, [&]<class Cfg>(dim3 grid, dim3 block) {
            rows::norm_forward_kernel<T, Cfg><<<grid, block, 0, cx.stream>>>(
                x, gamma, beta, y, mean, rstd, rows, float(eps), centered);
        });
    });
    check_launch(op);
}

/// Layer norm (`centered`) or RMS norm backward; absent operands have null data.
void norm_backward(std::string_view op, bool centered, bool accumulate, const view& x,
                   const view& dy, const view& mean, const view& rstd, const view& gamma,
                   const view& dx, const view& dgamma, const view& dbeta,
                   const launch_context& cx) {
    expect_rows(op, x, 1);
    const index_t n = rows::row_length(x);
    const index_t rows = n > 0 ? x.numel() / n : 0;
    expect_like(op, "dy", dy, x);
    expect_like(op, "dx", dx, x);
    if (centered) expect_operand(op, "mean", mean, x.type, 1, &rows);
    expect_operand(op, "rstd", rstd, x.type, 1, &rows);
    expect_vector(op, "gamma", gamma, x.type, n);
    expect_vector(op, "dgamma", dgamma, x.type, n);
    expect_vector(op, "dbeta", dbeta, x.type, n);
    if (n == 0) return;
    dispatch_float(x.type, op, [&]<class T>() {
        // Parameter gradients first: they read dy, which dx may overwrite.
        if (dgamma.data || dbeta.data) {
            constexpr int width = vector_width<T>;
            const bool vec = vector_ready(x, width) && vector_ready(dy, width) && n % width == 0;
            const index_t column_blocks = ceil_div(n, rows::param_columns * (vec ? width : 1));
            // About eight blocks per multiprocessor, each chunk of rows at least 64 long,
            // at most 65535 chunks (grid.y).
            const index_t target = 8 * index_t(std::max(cx.multiprocessors, 1));
            index_t chunks = std::clamp<index_t>(ceil_div(target, column_blocks), 1,
                                                 std::max<index_t>(1, ceil_div(rows, 64)));
            chunks = std::min<index_t>(chunks, 65535);
            const index_t rows_per_chunk = std::max<index_t>(1, ceil_div(rows, chunks));
            chunks = std::max<index_t>(1, ceil_div(rows, rows_per_chunk));
            const std::size_t bytes = std::size_t(chunks) * 2 * std::size_t(n) * sizeof(double);
            auto* partial = static_cast<double*>(cx.scratch->acquire(bytes, cx.stream));
            const dim3 grid(grid_size(column_blocks), unsigned(chunks));
            const dim3 block(rows::param_columns, rows::param_row_threads);
            if (vec)
                rows::norm_param_partials_kernel<T, width><<<grid, block, 0, cx.stream>>>(
                    x, dy, mean, rstd, rows, rows_per_chunk, centered, partial);
            else
                rows::norm_param_partials_kernel<T, 1><<<grid, block, 0, cx.stream>>>(
                    x, dy, mean, rstd, rows, rows_per_chunk, centered, partial);
            check_launch(op);
            constexpr int finish_threads = 256;
            rows::norm_param_finish_kernel<T>
                <<<grid_size(ceil_div(n, finish_threads)), finish_threads, 0, cx.stream>>>(
                    partial, chunks, n, dgamma, dbeta, accumulate);
            check_launch(op);
        }
        if (rows == 0) return;
        constexpr int width = vector_width<T>;
        const bool vec = vector_ready(x, width) && vector_ready(dy, width) &&
                         vector_ready(dx, width) && vector_ready(gamma, width);
        launch_rows<T>(n, rows, vec, [&]<class Cfg>(dim3 grid, dim3 block) {
            rows::norm_backward_kernel<T, Cfg>
                <<<grid, block, 0, cx.stream>>>(x, dy, mean, rstd, gamma, dx, rows, centered);
        });
        check_launch(op);
    });
}

}  // namespace

void launch(const ops::softmax_desc& d, inputs in, outputs out, const launch_context& cx) {
    constexpr std::string_view op = "softmax";
    if (d.masks > 2) {
        std::string msg(op);
        msg += ": ";
        msg += std::to_string(int(d.masks));
        msg += " masks (at most 2 are supported)";
        throw backend_error("cuda", msg);
    }
    const view& x = in[0];
    const view& y = out[0];
    expect_rows(op, x, d.causal ? 2 : 1);
    expect_like(op, "y", y, x);
    const view none{};
    const view& mask0 = d.masks > 0 ? in[1] : none;
    const view& mask1 = d.masks > 1 ? in[2] : none;
    if (d.masks > 0) expect_operand(op, "mask", mask0, dtype::boolean, x.rank, x.extents);
    if (d.masks > 1) expect_operand(op, "mask2", mask1, dtype::boolean, x.rank, x.extents);
    const index_t n = rows::row_length(x);
    if (x.numel() == 0) return;
    const index_t rows = x.numel() / n;
    dispatch_float(x.type, op, [&]<class T>() {
        constexpr int width = vector_width<T>;
        const bool vec = vector_ready(x, width) && vector_ready(y, width);
        const bool vector_masks = vector_ready(mask0, width) && vector_ready(mask1, width);
        launch_rows<T>(n, rows, vec, [&]<class Cfg>(dim3 grid, dim3 block) {
            rows::softmax_forward_kernel<T, Cfg><<<grid, block, 0, cx.stream>>>(
                x, mask0, mask1, y, rows, float(d.scale), d.causal, d.causal_offset, vector_masks);
        });
    });
    check_launch(op);
}

void launch(const ops::softmax_backward_desc& d, inputs in, outputs out, const launch_context& cx) {
    constexpr std::string_view op = "softmax_backward";
    const view& y = in[0];
    const view& dy = in[1];
    const view& dx = out[0];
    expect_rows(op, y, 1);
    expect_like(op, "dy", dy, y);
    expect_like(op, "dx", dx, y);
    const index_t n = rows::row_length(y);
    if (y.numel() == 0) return;
    const index_t rows = y.numel() / n;
    dispatch_float(y.type, op, [&]<class T>() {
        constexpr int width = vector_width<T>;
        const bool vec =
            vector_ready(y, width) && vector_ready(dy, width) && vector_ready(dx, width);
        launch_rows<T>(n, rows, vec, [&]<class Cfg>(dim3 grid, dim3 block) {
            rows::softmax_backward_kernel<T, Cfg>
                <<<grid, block, 0, cx.stream>>>(y, dy, dx, rows, float(d.scale));
        });
    });
    check_launch(op);
}

void launch(const ops::layer_norm_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view none{};
    norm_forward("layer_norm", true, d.eps, in[0], d.affine ? in[1] : none,
                 d.affine && d.bias ? in[2] : none, out[0], out[1], out[2], cx);
}

void launch(const ops::layer_norm_backward_desc& d, inputs in, outputs out,
            const launch_context& cx) {
    const view none{};
    norm_backward("layer_norm_backward", true, d.accumulate, in[0], in[1], in[2], in[3],
                  d.affine ? in[4] : none, out[0], d.affine ? out[1] : none,
                  d.affine && d.bias ? out[2] : none, cx);
}

void launch(const ops::rms_norm_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view none{};
    norm_forward("rms_norm", false, d.eps, in[0], d.affine ? in[1] : none, none, out[0], none,
                 out[1], cx);
}

void launch(const ops::rms_norm_backward_desc& d, inputs in, outputs out,
            const launch_context& cx) {
    const view none{};
    norm_backward("rms_norm_backward", false, d.accumulate, in[0], in[1], none, in[2],
                  d.affine ? in[3] : none, out[0], d.affine ? out[1] : none, none, cx);
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
