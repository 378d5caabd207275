#pragma once
/// \file
/// Helpers shared by the Eigen reference kernels: dtype dispatch and strided row iteration.
/// Implementation detail of the Eigen backend (no stability promise).

#include <array>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::backend::eigen {

/// Calls `f.template operator()<T>()` with T = float for f32 and T = double for f64;
/// throws `backend_error` naming `op` for any other dtype.
template <class F>
decltype(auto) dispatch_compute(dtype type, std::string_view op, F&& f) {
    switch (type) {
        case dtype::f32: return f.template operator()<float>();
        case dtype::f64: return f.template operator()<double>();
        default: break;
    }
    throw backend_error("eigen", std::string(op) + ": dtype " + std::string(dtype_name(type)) +
                                     " is not supported (f32 and f64 are)");
}

/// Visits every "row" of `e` — every index of all axes but the last — in row-major order.
/// For each row calls `f(row, offsets)` where `row` is the flat row number and
/// `offsets[k]` is the element offset of the row's first entry in tensor k, computed from
/// `strides[k]` (one stride per axis of `e`; stride 0 broadcasts). Rank 0 and 1 give a
/// single row. Never allocates.
template <std::size_t N, class F>
void for_each_row(const extents& e, const std::array<std::span<const index_t>, N>& strides, F&& f) {
    const int outer = e.rank() > 0 ? e.rank() - 1 : 0;
    for (int a = 0; a < outer; ++a)
        if (e[a] == 0) return;
    std::array<index_t, max_rank> idx{};
    std::array<index_t, N> off{};
    index_t row = 0;
    while (true) {
        f(row, off);
        ++row;
        int a = outer - 1;
        for (; a >= 0; --a) {
            ++idx[size_t(a)];
            for (std::size_t k = 0; k < N; ++k) off[k] += strides[k][size_t(a)];
            if (idx[size_t(a)] < e[a]) break;
            for (std::size_t k = 0; k < N; ++k) off[k] -= idx[size_t(a)] * strides[k][size_t(a)];
            idx[size_t(a)] = 0;
        }
        if (a < 0) return;
    }
}

}  // namespace mmfuse::inline v0::backend::eigen
