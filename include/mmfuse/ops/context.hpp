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
#include <string>
#include <string_view>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

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
/// Hands a validated op to the context's stream. Every output is checked here, once for
/// all ops, not to be a broadcast view (stride 0 on an axis of extent > 1: writing it
/// would be a race between logical elements); a violation throws `shape_error`.
inline void submit(const op_context& cx, const op_desc& op, std::span<const any_tensor_ref> in,
                   std::span<const any_tensor_ref> out) {
    for (std::size_t i = 0; i < out.size(); ++i)
        if (has_broadcast_axis(out[i].extents(), out[i].strides()))
            throw shape_error(cx.module, std::string(op_name(op)) + " output " + std::to_string(i),
                              "a writable view (no stride-0 axis of extent > 1)",
                              "a broadcast view of shape " + out[i].extents().to_string() +
                                  " with strides " + extents::from(out[i].strides()).to_string());
    cx.stream->execute(op, in, out);
}

/// Fixed-arity form: operands in stack arrays, so a call never touches the heap.
template <std::size_t NI, std::size_t NO>
void submit(const op_context& cx, const op_desc& op, const std::array<any_tensor_ref, NI>& in,
            const std::array<any_tensor_ref, NO>& out) {
    submit(cx, op, std::span<const any_tensor_ref>(in), std::span<const any_tensor_ref>(out));
}
}  // namespace detail

}  // namespace mmfuse::inline v0::ops
