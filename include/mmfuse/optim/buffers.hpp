#pragma once
/// \file
/// Shared checks for optimisers: they work on a model's flat parameter and gradient
/// buffers (`nn::model::parameters()` / `gradients()`) and keep their state in buffers of
/// the same layout, allocated once at construction (DESIGN decision 7).
///
/// The element-wise update loops are plain flat loops over host memory, inside the
/// optimisers (an optimiser is not a layer). A fused backend-side optimiser op (one kernel
/// per step on every backend, CUDA included) is future work.

#include <cmath>
#include <string>
#include <string_view>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::optim::detail {

/// Throws `shape_error` from `who` unless `t` is a contiguous host buffer of `n` elements
/// with memory.
template <class T>
void expect_buffer(std::string_view who, const char* what, const tensor_ref<T>& t, index_t n) {
    if (t.numel() != n || !t.is_contiguous() || (t.data() == nullptr && n > 0) ||
        t.space() != memory_space::host)
        throw shape_error(who, what,
                          "a contiguous host buffer of " + std::to_string(n) +
                              " elements (the layout the optimiser was built for)",
                          "a " + std::string(t.is_contiguous() ? "contiguous" : "strided") +
                              " buffer of shape " + t.extents().to_string() +
                              (t.data() == nullptr ? " without memory" : "") +
                              (t.space() != memory_space::host ? " in device memory" : ""));
}

/// Throws `value_error` from `who` unless `lo <= v` (and `v < hi` when `hi_open`, or
/// `v <= hi`), naming `name`, the range and the value (PyTorch's ValueError checks).
inline void expect_range(std::string_view who, const char* name, double v, double lo, double hi,
                         bool hi_open) {
    const bool ok = v >= lo && (hi_open ? v < hi : v <= hi);  // false for NaN
    if (!ok)
        throw value_error(who, std::string("invalid ") + name + ": expected a value in [" +
                                   std::to_string(lo) + ", " +
                                   (std::isinf(hi) ? std::string("inf") : std::to_string(hi)) +
                                   (hi_open ? ")" : "]") + ", got " + std::to_string(v));
}

}  // namespace mmfuse::inline v0::optim::detail
