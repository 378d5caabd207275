#pragma once
/// \file
/// Row gather / scatter-add front-ends: the forward and backward of an embedding lookup
/// (`torch.nn.functional.embedding` and its dense weight gradient, i.e.
/// `weight.grad.index_add_(0, indices, dy)`).
///
///     ops::gather_rows(cx, table, indices, y);        // y[r, :] = table[indices[r], :]
///     ops::scatter_add_rows(cx, dy, indices, grad);   // grad[indices[r], :] += dy[r, :]
///
/// Indices are `std::int64_t` (PyTorch's `LongTensor`). Every index is checked to lie in
/// [0, N) before the op is submitted.

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

namespace detail {

/// The first index of `indices` (any rank, any strides, host memory) outside [0, n), in
/// row-major logical order: `position` is its flat logical position, or -1 when all lie
/// in range.
struct bad_index {
    index_t position = -1;
    std::int64_t value = 0;
};

/// Scans host-memory `indices` for the first entry outside [0, n) (see `bad_index`).
inline bad_index find_bad_index(const tensor_ref<const std::int64_t>& indices, index_t n) {
    bad_index b;
    mmfuse::detail::for_each_logical(indices, [&](const std::int64_t& ix, index_t i) {
        if (b.position < 0 && (ix < 0 || ix >= n)) b = {i, ix};
    });
    return b;
}

/// Operand names of one indexed-rows op, as they appear in errors (literals: the checks
/// build strings only when they throw).
struct indexed_rows_names {
    std::string_view table;    ///< the (N, F) operand: "gather_rows table"
    std::string_view rows;     ///< the (R, F) operand: "gather_rows output y"
    std::string_view indices;  ///< "gather_rows indices"
    std::string_view index;    ///< one entry: "gather_rows index"
};

/// Validates one gather / scatter-add call: `table` (N, F) is the table or grad, `rows`
/// (R, F) is y or dy, `indices` (R) with every (host-memory) entry in [0, N).
template <class Tb, class R>
void check_indexed_rows(const op_context& cx, const indexed_rows_names& names,
                        const tensor_ref<Tb>& table, const tensor_ref<R>& rows,
                        const tensor_ref<const std::int64_t>& indices) {
    expect_rank(cx, names.table, table, 2, 2);
    expect_rank(cx, names.indices, indices, 1, 1);
    expect_extents(cx, names.rows, rows, extents{indices.extent(0), table.extent(1)});
    expect_data(cx, names.table, table);
    expect_data(cx, names.indices, indices);
    expect_data(cx, names.rows, rows);
    // Device-memory indices cannot be read here; a backend taking them checks them itself.
    if (indices.space() != memory_space::host) return;
    const index_t n = table.extent(0);
    const bad_index b = find_bad_index(indices, n);
    if (b.position >= 0)
        throw shape_error(cx.module, names.index,
                          "indices in [0, " + std::to_string(n) + ") for " +
                              std::string(names.table) + " " + table.extents().to_string(),
                          "index " + std::to_string(b.value) + " at position " +
                              std::to_string(b.position) + " of indices " +
                              indices.extents().to_string());
}

}  // namespace detail

/// y[r, :] = table[indices[r], :] for r in [0, R) (embedding lookup, `F.embedding`).
///   table (N, F), indices (R) with every entry in [0, N), y (R, F). Any strides on every
///   operand; y must not overlap table. Throws `shape_error` naming `cx.module` on a rank or
///   extent mismatch, and for an out-of-range index with its position, its value and the
///   table shape — before the op is submitted.
template <compute_type T>
void gather_rows(const op_context& cx, tensor_ref<const std::type_identity_t<T>> table,
                 tensor_ref<const std::int64_t> indices, tensor_ref<T> y) {
    detail::check_indexed_rows(
        cx,
        {"gather_rows table", "gather_rows output y", "gather_rows indices", "gather_rows index"},
        table, y, indices);
    detail::submit<2, 1>(cx, gather_rows_desc{}, {table, indices}, {y});
}

/// grad[indices[r], :] += dy[r, :] for r in [0, R): repeated indices add up (the dense
/// embedding weight gradient, `grad.index_add_(0, indices, dy)`).
///   dy (R, F), indices (R) with every entry in [0, N), grad (N, F), accumulated into (zero
///   it first for a plain scatter). Any strides; grad must not overlap dy. Throws
///   `shape_error` as `gather_rows` does, before the op is submitted.
template <compute_type T>
void scatter_add_rows(const op_context& cx, tensor_ref<const std::type_identity_t<T>> dy,
                      tensor_ref<const std::int64_t> indices, tensor_ref<T> grad) {
    detail::check_indexed_rows(cx,
                               {"scatter_add_rows output grad", "scatter_add_rows gradient dy",
                                "scatter_add_rows indices", "scatter_add_rows index"},
                               grad, dy, indices);
    detail::submit<2, 1>(cx, scatter_add_rows_desc{}, {dy, indices}, {grad});
}

}  // namespace mmfuse::inline v0::ops
