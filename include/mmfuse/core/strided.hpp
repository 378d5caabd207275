#pragma once
/// \file
/// `for_each_row`: the one strided walker every host loop in mmfuse is built on (Eigen
/// kernels, Philox fills, the .npy writer). It visits the rows of a tensor — every index of
/// all axes but the last — and hands the caller one element offset per operand, so the
/// inner loop over the last axis stays a plain (vectorisable) loop.

#include <array>
#include <cstddef>
#include <span>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/shape.hpp"

namespace mmfuse::inline v0 {

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
            for (std::size_t k = 0; k < N; ++k)
                off[k] += strides[k][size_t(a)];
            if (idx[size_t(a)] < e[a]) break;
            for (std::size_t k = 0; k < N; ++k)
                off[k] -= idx[size_t(a)] * strides[k][size_t(a)];
            idx[size_t(a)] = 0;
        }
        if (a < 0) return;
    }
}

}  // namespace mmfuse::inline v0
