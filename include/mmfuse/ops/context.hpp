#pragma once
/// \file
/// `op_context`: where an op runs (a backend stream) and who asked for it (the module
/// path used in error messages). Every typed op front-end takes one as first argument; a
/// plain `backend::stream&` converts to it implicitly:
///
///     ops::matmul(stream, a, b, c);                         // module path empty
///     ops::matmul({stream, "text.proj"}, a, b, c);          // errors name "text.proj"

#include <array>
#include <span>
#include <string_view>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::ops {

/// Stream + module path for one op call. Cheap to copy; holds references only.
struct op_context {
    op_context(backend::stream& s, std::string_view m = {}) noexcept  // NOLINT
        : stream(&s), module(m) {}

    backend::stream* stream;
    /// Hierarchical path of the calling module ("text.proj"); empty for direct op calls.
    std::string_view module;
};

namespace detail {
/// Hands a validated op to the context's stream. Spans point at stack arrays: no heap.
template <std::size_t NI, std::size_t NO>
void submit(const op_context& cx, const op_desc& op, const std::array<any_tensor_ref, NI>& in,
            const std::array<any_tensor_ref, NO>& out) {
    cx.stream->execute(op, std::span<const any_tensor_ref>(in), std::span<const any_tensor_ref>(out));
}
}  // namespace detail

}  // namespace mmfuse::inline v0::ops
