#pragma once
/// \file
/// Element-wise binary front-end with NumPy broadcasting: y = a + b, a - b or a * b
/// (`torch.add` / `torch.sub` / `torch.mul`).

#include <string>
#include <type_traits>

#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// y = a (kind) b element-wise. a and b broadcast to y's extents under NumPy's rules
/// (leading axes added, extent-1 axes stretched) — e.g. a residual add x + f(x), a (L, F)
/// table added to (B, L, F), a (B, 1) gate times (B, F). y may be exactly a or b (in
/// place). Throws `shape_error` naming `cx.module` and the shapes when an operand does not
/// broadcast to y.
template <compute_type T>
void binary(const op_context& cx, binary_kind kind, tensor_ref<const std::type_identity_t<T>> a,
            tensor_ref<const std::type_identity_t<T>> b, tensor_ref<T> y) {
    detail::expect_data(cx, "binary operand a", a);
    detail::expect_data(cx, "binary operand b", b);
    detail::expect_data(cx, "binary output y", y);
    const auto broadcast = [&](const tensor_ref<const T>& t, const char* name) {
        try {
            return t.expand(y.extents());
        } catch (const shape_error&) {
            throw shape_error(cx.module, std::string("binary operand ") + name,
                              "a shape broadcastable to y " + y.extents().to_string(),
                              "shape " + t.extents().to_string());
        }
    };
    const tensor_ref<const T> ab = broadcast(a, "a");
    const tensor_ref<const T> bb = broadcast(b, "b");
    detail::submit<2, 1>(cx, binary_desc{kind}, {ab, bb}, {y});
}

/// y = a + b (broadcasting); see `binary`.
template <compute_type T>
void add(const op_context& cx, tensor_ref<const std::type_identity_t<T>> a,
         tensor_ref<const std::type_identity_t<T>> b, tensor_ref<T> y) {
    binary<T>(cx, binary_kind::add, a, b, y);
}

}  // namespace mmfuse::inline v0::ops
