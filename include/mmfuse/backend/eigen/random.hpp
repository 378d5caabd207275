#pragma once
/// \file
/// Eigen reference kernels: Philox fills (`ops::fill_random_desc`) and the fused linear
/// combination with optional Gaussian noise (`ops::combine_desc`). Every random number comes
/// from core/philox.hpp — the fill *is* `fill_uniform` / `fill_normal` on a generator placed
/// at the draw's (seed, subsequence, offset), and combine's noise is `normal_at` at the
/// element's row-major logical index — so these kernels, the core fills and a GPU kernel
/// following the same contract produce the same numbers. No heap allocation.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// y = c_0 x_0 + ... + c_{n-1} x_{n-1} [+ noise_scale z], left to right in T, with z the
/// standard normal `normal_at<T>(stream, noise.offset, i)` of y's logical element i. Every
/// x_k has y's extents (broadcast views allowed); y may be exactly the memory of an input.
template <class T>
void combine_kernel(const ops::combine_desc& d, std::span<const any_tensor_ref> in,
                    const tensor_ref<T>& y) {
    constexpr std::size_t max_in = std::size_t(ops::max_combine_inputs);
    const std::size_t n = in.size();
    std::array<tensor_ref<const T>, max_in> x{};
    std::array<T, max_in> coeff{};
    // Absent inputs borrow y's strides for the walk (their pointers are never read).
    std::array<std::span<const index_t>, 1 + max_in> strides{};
    strides.fill(y.strides());
    for (std::size_t k = 0; k < n; ++k) {
        x[k] = in[k].as<const T>();
        coeff[k] = T(d.coeff[k]);
        strides[1 + k] = x[k].strides();
    }
    const extents& e = y.extents();
    if (e.numel() == 0) return;
    const bool scalar = e.rank() == 0;
    const index_t inner = scalar ? 1 : e[-1];
    std::array<index_t, 1 + max_in> step{};
    step[0] = scalar ? 0 : y.stride(-1);
    for (std::size_t k = 0; k < n; ++k)
        step[1 + k] = scalar ? 0 : x[k].stride(-1);
    const bool noisy = d.noise_scale != 0.0;
    const T noise_scale = T(d.noise_scale);
    philox_cursor src{philox_stream::from_seed(d.noise.seed, d.noise.subsequence)};
    for_each_row<1 + max_in>(
        e, strides, [&](index_t row, const std::array<index_t, 1 + max_in>& off) {
            T* const yr = y.data() + off[0];
            for (index_t j = 0; j < inner; ++j) {
                T acc = coeff[0] * x[0].data()[off[1] + j * step[1]];
                for (std::size_t k = 1; k < n; ++k)
                    acc += coeff[k] * x[k].data()[off[1 + k] + j * step[1 + k]];
                if (noisy)
                    acc += noise_scale *
                           normal_at<T>(src, d.noise.offset, std::uint64_t(row * inner + j));
                yr[j * step[0]] = acc;
            }
        });
}

}  // namespace detail

/// fill_random_desc: no input; out y (any strides). Runs the core fill on a generator at
/// (draw.seed, draw.subsequence, draw.offset): U[a, b) through `fill_uniform`, N(a, b^2)
/// through `fill_normal` (which also refuse bad parameters and broadcast outputs).
inline void run(const ops::fill_random_desc& d, std::span<const any_tensor_ref>,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(out[0].type(), "fill_random", [&]<class T>() {
        philox_generator gen(d.draw.seed, d.draw.subsequence, d.draw.offset);
        if (d.kind == ops::random_kind::uniform)
            fill_uniform(gen, out[0].as<T>(), d.a, d.b);
        else
            fill_normal(gen, out[0].as<T>(), d.a, d.b);
    });
}

/// combine_desc: in x_0 .. x_{n-1} (1 <= n <= max_combine_inputs, y's extents); out y.
/// Operands a direct `stream::execute` call could get wrong (too many inputs, other extents)
/// are refused with `backend_error` before anything is read.
inline void run(const ops::combine_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    const extents& e = out[0].extents();
    if (in.size() > std::size_t(ops::max_combine_inputs))
        throw backend_error("eigen", "combine: " + std::to_string(in.size()) +
                                         " inputs (at most " +
                                         std::to_string(ops::max_combine_inputs) + ")");
    for (const any_tensor_ref& x : in)
        if (x.extents() != e)
            throw backend_error("eigen", "combine: input shape " + x.extents().to_string() +
                                             " differs from output " + e.to_string() +
                                             " (broadcast it with expand)");
    dispatch_compute(out[0].type(), "combine",
                     [&]<class T>() { detail::combine_kernel<T>(d, in, out[0].as<T>()); });
}

}  // namespace mmfuse::inline v0::backend::eigen
