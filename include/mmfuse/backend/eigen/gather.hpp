#pragma once
/// \file
/// Eigen reference kernels: gather_rows (embedding lookup) and scatter_add_rows (its
/// backward). Both walk the index vector and move one row per index between the R-row side
/// (y or dy) and the N-row table side (table or grad) with `map_elements`, so every operand
/// may have any strides. Indices are range-checked here as well as in the front-end: a
/// direct `stream::execute` call with an index outside [0, N) throws `backend_error` before
/// anything is read or written. Implementation detail of the Eigen backend; never allocates.

#include <cstdint>
#include <span>
#include <string>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// The shared body of both ops: `rows` (R, F) is y or dy, `table` (N, F) is table or grad,
/// `indices` (R) of int64. Checks the operand structure and every index (throwing
/// `backend_error` naming `op` before touching memory), then calls `f(row_of_rows,
/// row_of_table)` with the rank-1 views of row r and of row indices[r], for r = 0 .. R-1.
template <class R, class Tb, class F>
void for_each_indexed_row(const char* op, const tensor_ref<R>& rows, const tensor_ref<Tb>& table,
                          const any_tensor_ref& index_operand, F&& f) {
    if (index_operand.type() != dtype::i64)
        throw backend_error("eigen", std::string(op) + ": indices must be i64, got " +
                                         std::string(dtype_name(index_operand.type())));
    const tensor_ref<const std::int64_t> indices = index_operand.as<const std::int64_t>();
    if (rows.rank() != 2 || table.rank() != 2 || indices.rank() != 1 ||
        rows.extent(0) != indices.extent(0) || rows.extent(1) != table.extent(1))
        throw backend_error("eigen", std::string(op) + ": operand shapes " +
                                         rows.extents().to_string() + ", " +
                                         table.extents().to_string() + " and indices " +
                                         indices.extents().to_string() + " do not fit together");
    const index_t n = table.extent(0), r_count = indices.extent(0), step = indices.stride(0);
    const std::int64_t* const ix = indices.data();
    for (index_t r = 0; r < r_count; ++r)
        if (ix[r * step] < 0 || ix[r * step] >= n)
            throw backend_error("eigen", std::string(op) + ": index " +
                                             std::to_string(ix[r * step]) + " at position " +
                                             std::to_string(r) + " is outside [0, " +
                                             std::to_string(n) + ")");
    for (index_t r = 0; r < r_count; ++r)
        f(rows.select(0, r), table.select(0, index_t(ix[r * step])));
}

}  // namespace detail

/// gather_rows_desc: y[r, :] = table[indices[r], :].  in: table (N, F), indices (R).
/// out: y (R, F), which must not overlap table.
inline void run(const ops::gather_rows_desc&, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "gather_rows", [&]<class T>() {
        detail::for_each_indexed_row(
            "gather_rows", out[0].as<T>(), in[0].as<const T>(), in[1],
            [](const tensor_ref<T>& y_row, const tensor_ref<const T>& table_row) {
                map_elements(
                    y_row, [](T v) { return v; }, table_row);
            });
    });
}

/// scatter_add_rows_desc: grad[indices[r], :] += dy[r, :] in order r = 0 .. R-1 (repeated
/// indices add up).  in: dy (R, F), indices (R).  out: grad (N, F), read and written; it
/// must not overlap dy.
inline void run(const ops::scatter_add_rows_desc&, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "scatter_add_rows", [&]<class T>() {
        detail::for_each_indexed_row(
            "scatter_add_rows", in[0].as<const T>(), out[0].as<T>(), in[1],
            [](const tensor_ref<const T>& dy_row, const tensor_ref<T>& grad_row) {
                map_elements(
                    grad_row, [](T g, T d) { return g + d; }, tensor_ref<const T>(grad_row),
                    dy_row);
            });
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
