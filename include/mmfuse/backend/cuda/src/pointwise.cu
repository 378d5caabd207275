// Kernel launchers of the CUDA backend's memory-bound ops: bias_add, unary, unary_backward,
// binary, copy, concat, split (element-wise, through kernels/pointwise.cuh), reduce
// (kernels/reduce.cuh), gather_rows, scatter_add_rows, fill_random and combine.
//
// Semantics are those of the Eigen reference backend (backend/eigen/*.hpp), computed in f32
// for f32, bf16 and f16 (copy also converts to and from f64; reduce accumulates in double,
// as Eigen does). Two departures, both inherent to a parallel GPU and documented on the
// launchers below:
// * scatter_add_rows adds with atomicAdd, so rows that receive several contributions sum
//   them in an unspecified order (bf16 / f16 round after every addition);
// * the random ops evaluate core/philox.hpp's own functions per element: uniforms are
//   bit-identical to the CPU's, normals agree up to the ulps of the device's log, sqrt, sin
//   and cos. (One caveat: nvcc, contracting by default, may fuse `lo + (hi - lo) * u` in
//   `uniform_in` into one multiply-add; that changes nothing when (hi - lo) * u is exact in
//   double, e.g. for U[0, 1) or bounds that are small integers, and otherwise changes the
//   f32 result with a probability of order 2^-29 per element.)
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/element.cuh"
#include "mmfuse/backend/cuda/kernels/pointwise.cuh"
#include "mmfuse/backend/cuda/kernels/reduce.cuh"
#include "mmfuse/backend/cuda/kernels/strided.cuh"
#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/ops/activation_math.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

namespace {

// ---- checks of what a direct `stream::execute` call could get wrong -------------------

[[noreturn]] void refuse(std::string_view op, const std::string& what) {
    std::string msg(op);
    msg += ": ";
    msg += what;
    throw backend_error("cuda", msg);
}

/// Every view in `views` must have dtype `type`.
void expect_dtype(std::string_view op, std::span<const view> views, dtype type) {
    for (const view& v : views)
        if (v.type != type) {
            std::string what = "operands must all be ";
            what += dtype_name(type);
            what += ", got one of dtype ";
            what += dtype_name(v.type);
            refuse(op, what);
        }
}

/// True when `a` and `b` have the same extents.
bool same_extents(const view& a, const view& b) {
    if (a.rank != b.rank) return false;
    for (int i = 0; i < a.rank; ++i)
        if (a.extents[i] != b.extents[i]) return false;
    return true;
}

// ---- element-wise functors: (logical index, inputs in the compute type) -> value ------

template <ops::binary_kind K>
struct binary_fn {
    template <class C>
    __device__ C operator()(index_t, const C* x) const {
        if constexpr (K == ops::binary_kind::add)
            return x[0] + x[1];
        else if constexpr (K == ops::binary_kind::sub)
            return x[0] - x[1];
        else
            return x[0] * x[1];
    }
};

template <ops::unary_kind K>
struct activation_fn {
    template <class C>
    __device__ C operator()(index_t, const C* x) const {
        return ops::act::value<K>(x[0]);
    }
};

template <ops::unary_kind K>
struct activation_backward_fn {
    template <class C>
    __device__ C operator()(index_t, const C* x) const {
        return ops::act::derivative<K>(x[0]) * x[1];
    }
};

struct identity_fn {
    template <class C>
    __device__ C operator()(index_t, const C* x) const {
        return x[0];
    }
};

/// Element i of a Philox fill: U[lo, hi) through `uniform_in`, or mean + std * z, exactly
/// as core's `fill_uniform` / `fill_normal` compute element i. `src` caches the last Philox
/// block, so a thread's consecutive elements share it.
template <ops::random_kind K>
struct random_fn {
    philox_cursor src;
    std::uint64_t base = 0;
    double a = 0.0, b = 1.0;

    __device__ float operator()(index_t i, const float*) {
        if constexpr (K == ops::random_kind::uniform)
            return uniform_in<float>(uniform_at<float>(src, base, std::uint64_t(i)), a, b);
        else
            return float(a + b * double(normal_at<float>(src, base, std::uint64_t(i))));
    }
};

/// y = c_0 x_0 + ... + c_{N-1} x_{N-1} [+ s z], left to right in f32 as the Eigen backend
/// evaluates it, z = `normal_at<float>(noise stream, offset, i)`.
template <int N>
struct combine_fn {
    float coeff[N] = {};
    float noise_scale = 0.0f;
    bool noisy = false;
    philox_cursor src;
    std::uint64_t base = 0;

    __device__ float operator()(index_t i, const float* x) {
        float acc = coeff[0] * x[0];
#pragma unroll
        for (int k = 1; k < N; ++k)
            acc += coeff[k] * x[k];
        if (noisy) acc += noise_scale * normal_at<float>(src, base, std::uint64_t(i));
        return acc;
    }
};

// ---- gather / scatter ----------------------------------------------------------------

/// A rank-2 operand of the row ops: element (r, c) at r * row + c * col.
template <class T>
struct matrix {
    T* data;
    index_t row, col;
};

template <class T>
matrix<T> as_matrix(const view& v) {
    return {static_cast<T*>(v.data), v.strides[0], v.strides[1]};
}

/// y[r, c .. c+W) = table[indices[r], c .. c+W) for every pack of W columns (W > 1: unit
/// column strides, aligned rows). An index outside [0, table_rows) yields a NaN row: the
/// front-end cannot check device-memory indices and the kernel must not read out of bounds.
template <int W, class T>
__global__ void __launch_bounds__(threads_per_block)
    gather_rows_kernel(matrix<const T> table, index_t table_rows, const std::int64_t* indices,
                       index_t index_step, matrix<T> y, index_t rows, index_t cols) {
    const index_t packs_per_row = cols / W;
    const index_t items = rows * packs_per_row;
    for (index_t item = grid_thread(); item < items; item += grid_threads()) {
        const index_t r = item / packs_per_row;
        const index_t c = (item - r * packs_per_row) * W;
        const std::int64_t ix = indices[r * index_step];
        const bool valid = ix >= 0 && ix < table_rows;
        if constexpr (W > 1) {
            pack<T, W> v;
            if (valid) {
                v = *reinterpret_cast<const pack<T, W>*>(table.data + ix * table.row + c);
            } else {
#pragma unroll
                for (int j = 0; j < W; ++j)
                    v.v[j] = from_compute<T>(__int_as_float(0x7fc00000));
            }
            *reinterpret_cast<pack<T, W>*>(y.data + r * y.row + c) = v;
        } else {
            y.data[r * y.row + c * y.col] = valid ? table.data[ix * table.row + c * table.col]
                                                  : from_compute<T>(__int_as_float(0x7fc00000));
        }
    }
}

/// Device-wide atomic add of one element (f32; bf16 and f16 through their native atomics,
/// sm_80+, rounding after every addition).
__device__ __forceinline__ void atomic_add(float* p, float v) {
    atomicAdd(p, v);
}
__device__ __forceinline__ void atomic_add(bf16* p, bf16 v) {
    atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __ushort_as_bfloat16(v.bits));
}
__device__ __forceinline__ void atomic_add(half* p, half v) {
    atomicAdd(reinterpret_cast<__half*>(p), __ushort_as_half(v.bits));
}

/// grad[indices[r], c] += dy[r, c] (atomically); an index outside [0, grad_rows) is skipped.
template <class T>
__global__ void __launch_bounds__(threads_per_block)
    scatter_add_rows_kernel(matrix<const T> dy, const std::int64_t* indices, index_t index_step,
                            matrix<T> grad, index_t grad_rows, index_t rows, index_t cols) {
    const index_t items = rows * cols;
    for (index_t item = grid_thread(); item < items; item += grid_threads()) {
        const index_t r = item / cols;
        const index_t c = item - r * cols;
        const std::int64_t ix = indices[r * index_step];
        if (ix < 0 || ix >= grad_rows) continue;
        atomic_add(grad.data + ix * grad.row + c * grad.col, dy.data[r * dy.row + c * dy.col]);
    }
}

/// Checks the operands of gather_rows / scatter_add_rows: `rows` (R, F), `table` (N, F),
/// `indices` (R) of i64.
void expect_indexed_rows(std::string_view op, const view& rows, const view& table,
                         const view& indices) {
    if (indices.type != dtype::i64)
        refuse(op,
               std::string("indices must be i64, got ") + std::string(dtype_name(indices.type)));
    if (rows.rank != 2 || table.rank != 2 || indices.rank != 1 ||
        rows.extents[0] != indices.extents[0] || rows.extents[1] != table.extents[1])
        refuse(op, "operands must be (R, F), (N, F) and indices (R)");
    expect_dtype(op, std::array<view, 1>{table}, rows.type);
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------

/// bias_add: y = x + bias, bias read through a stride-0 view of x's extents.
void launch(const ops::bias_add_desc&, inputs in, outputs out, const launch_context& cx) {
    const view& x = in[0];
    if (x.rank < 1 || in[1].rank != 1 || in[1].extents[0] != x.extents[x.rank - 1] ||
        !same_extents(x, out[0]))
        refuse("bias_add", "expected x (..., N), bias (N) and y like x");
    expect_dtype("bias_add", std::array<view, 2>{in[1], out[0]}, x.type);
    view bias = x;
    bias.data = in[1].data;
    for (int a = 0; a < x.rank - 1; ++a)
        bias.strides[a] = 0;
    bias.strides[x.rank - 1] = in[1].strides[0];
    dispatch_float(x.type, "bias_add", [&]<class T>() {
        launch_map<2, T, T>("bias_add", binary_fn<ops::binary_kind::add>{}, out[0], {x, bias}, cx);
    });
}

/// unary: y = f(x) with the formulas of ops/activation_math.hpp.
void launch(const ops::unary_desc& d, inputs in, outputs out, const launch_context& cx) {
    expect_dtype("unary", out, in[0].type);
    dispatch_float(in[0].type, "unary", [&]<class T>() {
        ops::act::visit(d.kind, [&](auto k) {
            launch_map<1, T, T>("unary", activation_fn<decltype(k)::value>{}, out[0], {in[0]}, cx);
        });
    });
}

/// unary_backward: dx = f'(x) * dy.
void launch(const ops::unary_backward_desc& d, inputs in, outputs out, const launch_context& cx) {
    expect_dtype("unary_backward", std::array<view, 2>{in[1], out[0]}, in[0].type);
    dispatch_float(in[0].type, "unary_backward", [&]<class T>() {
        ops::act::visit(d.kind, [&](auto k) {
            launch_map<2, T, T>("unary_backward", activation_backward_fn<decltype(k)::value>{},
                                out[0], {in[0], in[1]}, cx);
        });
    });
}

/// binary: y = a (op) b; a and b arrive broadcast to y's extents.
void launch(const ops::binary_desc& d, inputs in, outputs out, const launch_context& cx) {
    expect_dtype("binary", std::array<view, 2>{in[1], out[0]}, in[0].type);
    dispatch_float(in[0].type, "binary", [&]<class T>() {
        const auto run = [&](auto fn) {
            launch_map<2, T, T>("binary", fn, out[0], {in[0], in[1]}, cx);
        };
        switch (d.kind) {
            case ops::binary_kind::add:
                return run(binary_fn<ops::binary_kind::add>{});
            case ops::binary_kind::sub:
                return run(binary_fn<ops::binary_kind::sub>{});
            case ops::binary_kind::mul:
                return run(binary_fn<ops::binary_kind::mul>{});
        }
    });
}

/// copy: y = x converting between f32, f64, bf16 and f16 (to bf16 / f16 rounds to nearest
/// even; from f64 through f32).
void launch(const ops::copy_desc&, inputs in, outputs out, const launch_context& cx) {
    dispatch_float_or_f64(in[0].type, "copy", [&]<class From>() {
        dispatch_float_or_f64(out[0].type, "copy", [&]<class To>() {
            launch_map<1, From, To>("copy", identity_fn{}, out[0], {in[0]}, cx);
        });
    });
}

/// Throws `backend_error` unless `parts` tile `whole` along `axis` exactly: each part has
/// whole's extents except on `axis`, and their extents there add up to whole's.
void expect_parts_fill(const char* op, std::span<const view> parts, const view& whole, int axis) {
    bool ok = axis >= 0 && axis < whole.rank;
    index_t total = 0;
    for (const view& part : parts) {
        ok = ok && part.rank == whole.rank;
        for (int a = 0; ok && a < whole.rank; ++a)
            ok = a == axis || part.extents[a] == whole.extents[a];
        if (ok) total += part.extents[axis];
    }
    if (ok && total == whole.extents[axis]) return;
    std::string msg = op;
    msg += ": the parts do not tile the whole tensor ";
    msg += extents_string(whole);
    msg += " along axis ";
    msg += std::to_string(axis);
    msg += "; parts:";
    for (const view& part : parts) {
        msg += " ";
        msg += extents_string(part);
    }
    throw backend_error("cuda", msg);
}

/// concat: each input is copied into its slice of y along `axis` (one launch per part).
void launch(const ops::concat_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view& y = out[0];
    const int axis = d.axis < 0 ? d.axis + y.rank : d.axis;
    expect_dtype("concat", in, y.type);
    expect_parts_fill("concat", in, y, axis);
    dispatch_float(y.type, "concat", [&]<class T>() {
        index_t start = 0;
        for (const view& part : in) {
            const index_t length = part.extents[axis];
            launch_map<1, T, T>("concat", identity_fn{}, narrowed(y, axis, start, length), {part},
                                cx);
            start += length;
        }
    });
}

/// split: each output is copied from its slice of x along `axis` (one launch per part).
void launch(const ops::split_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view& x = in[0];
    const int axis = d.axis < 0 ? d.axis + x.rank : d.axis;
    expect_dtype("split", out, x.type);
    expect_parts_fill("split", out, x, axis);
    dispatch_float(x.type, "split", [&]<class T>() {
        index_t start = 0;
        for (const view& part : out) {
            const index_t length = part.extents[axis];
            launch_map<1, T, T>("split", identity_fn{}, part, {narrowed(x, axis, start, length)},
                                cx);
            start += length;
        }
    });
}

/// reduce: y = [y +] sum or mean of x over `axis`, deterministic (kernels/reduce.cuh); may
/// take the stream's scratch for chunk sums.
void launch(const ops::reduce_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view &x = in[0], &y = out[0];
    const int axis = d.axis < 0 ? d.axis + x.rank : d.axis;
    if (axis < 0 || axis >= x.rank || (y.rank != x.rank && y.rank != x.rank - 1)) {
        std::string what = "axis ";
        what += std::to_string(d.axis);
        what += " does not fit x of rank ";
        what += std::to_string(x.rank);
        what += " and y of rank ";
        what += std::to_string(y.rank);
        refuse("reduce", what);
    }
    expect_dtype("reduce", out, x.type);
    dispatch_float(x.type, "reduce", [&]<class T>() {
        launch_reduce<T>(x, y, axis, d.kind == ops::reduce_kind::mean, d.accumulate, cx);
    });
}

/// gather_rows: y[r, :] = table[indices[r], :] (indices in device memory, i64). An index
/// outside [0, N) — which the front-end cannot see in device memory — gives a NaN row.
void launch(const ops::gather_rows_desc&, inputs in, outputs out, const launch_context& cx) {
    const view &table = in[0], &indices = in[1], &y = out[0];
    expect_indexed_rows("gather_rows", y, table, indices);
    const index_t rows = y.extents[0], cols = y.extents[1];
    if (rows * cols == 0) return;
    dispatch_float(y.type, "gather_rows", [&]<class T>() {
        constexpr int W = vector_width<T>;
        const bool vectorised = table.strides[1] == 1 && y.strides[1] == 1 && cols % W == 0 &&
                                table.strides[0] % W == 0 && y.strides[0] % W == 0 &&
                                aligned(table.data, 16) && aligned(y.data, 16);
        const auto run = [&]<int V>() {
            gather_rows_kernel<V, T>
                <<<grid_blocks(rows * cols / V, cx), threads_per_block, 0, cx.stream>>>(
                    as_matrix<const T>(table), table.extents[0],
                    static_cast<const std::int64_t*>(indices.data), indices.strides[0],
                    as_matrix<T>(y), rows, cols);
        };
        if (vectorised)
            run.template operator()<W>();
        else
            run.template operator()<1>();
        check_launch("gather_rows");
    });
}

/// scatter_add_rows: grad[indices[r], :] += dy[r, :] with atomicAdd. Repeated indices are
/// summed in an unspecified order (not bitwise reproducible for f32; bf16 and f16 round
/// after every addition). An index outside [0, N) is skipped.
void launch(const ops::scatter_add_rows_desc&, inputs in, outputs out, const launch_context& cx) {
    const view &dy = in[0], &indices = in[1], &grad = out[0];
    expect_indexed_rows("scatter_add_rows", dy, grad, indices);
    const index_t rows = dy.extents[0], cols = dy.extents[1];
    if (rows * cols == 0) return;
    dispatch_float(dy.type, "scatter_add_rows", [&]<class T>() {
        scatter_add_rows_kernel<T>
            <<<grid_blocks(rows * cols, cx), threads_per_block, 0, cx.stream>>>(
                as_matrix<const T>(dy), static_cast<const std::int64_t*>(indices.data),
                indices.strides[0], as_matrix<T>(grad), grad.extents[0], rows, cols);
        check_launch("scatter_add_rows");
    });
}

/// fill_random: element i (row-major logical order, any strides) gets exactly what core's
/// `fill_uniform` / `fill_normal` give it (computed in f32, then rounded for bf16 / f16):
/// uniforms bit-identical to the CPU, normals within the device's log/sin/cos ulps. Refuses
/// the parameters core refuses, with `value_error`.
void launch(const ops::fill_random_desc& d, inputs, outputs out, const launch_context& cx) {
    ops::check_parameters(d, "cuda");
    const bool uniform = d.kind == ops::random_kind::uniform;
    const philox_cursor src{philox_stream::from_seed(d.draw.seed, d.draw.subsequence)};
    dispatch_float(out[0].type, "fill_random", [&]<class T>() {
        const auto run = [&]<ops::random_kind K>() {
            random_fn<K> fn;
            fn.src = src;
            fn.base = d.draw.offset;
            fn.a = d.a;
            fn.b = d.b;
            launch_map<0, T, T>("fill_random", fn, out[0], {}, cx);
        };
        if (uniform)
            run.template operator()<ops::random_kind::uniform>();
        else
            run.template operator()<ops::random_kind::normal>();
    });
}

/// combine: y = sum_k c_k x_k [+ noise_scale z] in one pass (see `combine_fn`); the inputs
/// may be broadcast views and y may be one of them.
void launch(const ops::combine_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view& y = out[0];
    if (in.size() > std::size_t(ops::max_combine_inputs))
        refuse("combine", std::to_string(in.size()) + " inputs (at most " +
                              std::to_string(ops::max_combine_inputs) + ")");
    for (const view& x : in)
        if (!same_extents(x, y))
            refuse("combine", "every input must have the output's extents (broadcast with expand)");
    expect_dtype("combine", in, y.type);
    const philox_cursor src{philox_stream::from_seed(d.noise.seed, d.noise.subsequence)};
    dispatch_float(y.type, "combine", [&]<class T>() {
        const auto run = [&]<int N>() {
            combine_fn<N> fn;
            for (int k = 0; k < N; ++k)
                fn.coeff[k] = float(d.coeff[std::size_t(k)]);
            fn.noise_scale = float(d.noise_scale);
            fn.noisy = d.noise_scale != 0.0;
            fn.src = src;
            fn.base = d.noise.offset;
            std::array<view, N> x{};
            for (int k = 0; k < N; ++k)
                x[std::size_t(k)] = in[std::size_t(k)];
            launch_map<N, T, T>("combine", fn, y, x, cx);
        };
        switch (in.size()) {
            case 1:
                return run.template operator()<1>();
            case 2:
                return run.template operator()<2>();
            case 3:
                return run.template operator()<3>();
            default:
                return run.template operator()<4>();
        }
    });
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
