#pragma once
/// \file
/// Eigen reference kernels: concat, split and copy (with conversion between f32, f64, bf16
/// and f16). All three are strided element copies (`map_elements`); concat and split copy
/// each part to or from its slice of the whole. Implementation detail of the Eigen
/// backend; never allocates.

#include <span>
#include <string_view>
#include <type_traits>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// `dispatch_compute` extended to the storage types bf16 (T = bf16) and f16 (T = half).
template <class F>
decltype(auto) dispatch_float_storage(dtype type, std::string_view op, F&& f) {
    if (type == dtype::bf16) return f.template operator()<bf16>();
    if (type == dtype::f16) return f.template operator()<half>();
    return dispatch_compute(type, op, f);
}

/// Converts one element; bf16 and half go through float (as PyTorch's c10 types do).
template <class To, class From>
To convert_element(From v) noexcept {
    if constexpr (std::is_same_v<To, From>) {
        return v;
    } else if constexpr (std::is_same_v<To, bf16> || std::is_same_v<To, half>) {
        return To(float(v));
    } else {
        return To(v);
    }
}

/// y = x element by element (same extents, any strides), converting the element type.
template <class To, class From>
void copy_elements(const tensor_ref<To>& y, const tensor_ref<const From>& x) {
    map_elements(
        y, [](From v) { return convert_element<To>(v); }, x);
}

/// Calls `f(part, slice)` for each part in order, where `slice` is the range of `whole`
/// along `axis` that the part covers (parts are laid end to end).
template <class T, class F>
void for_each_part(const tensor_ref<T>& whole, int axis, std::span<const any_tensor_ref> parts,
                   F&& f) {
    const int ax = whole.extents().normalize_axis(axis);
    index_t start = 0;
    for (const any_tensor_ref& part : parts) {
        const index_t len = part.extents()[ax];
        f(part, whole.narrow(ax, start, len));
        start += len;
    }
}

}  // namespace detail

/// concat_desc: in x0 ... xn-1; out y.
inline void run(const ops::concat_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(out[0].type(), "concat", [&]<class T>() {
        detail::for_each_part(out[0].as<T>(), d.axis, in,
                              [](const any_tensor_ref& part, const tensor_ref<T>& slice) {
                                  detail::copy_elements(slice, part.as<const T>());
                              });
    });
}

/// split_desc: in x; out y0 ... yn-1.
inline void run(const ops::split_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "split", [&]<class T>() {
        detail::for_each_part(in[0].as<const T>(), d.axis, out,
                              [](const any_tensor_ref& part, const tensor_ref<const T>& slice) {
                                  detail::copy_elements(part.as<T>(), slice);
                              });
    });
}

/// copy_desc: in x; out y (same extents; f32, f64, bf16 and f16 in any combination, or bool
/// to any of them).
inline void run(const ops::copy_desc&, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    if (in[0].type() == dtype::boolean) {
        detail::dispatch_float_storage(out[0].type(), "copy", [&]<class To>() {
            map_elements(
                out[0].as<To>(), [](bool v) { return To(v ? 1.0f : 0.0f); },
                in[0].as<const bool>());
        });
        return;
    }
    detail::dispatch_float_storage(in[0].type(), "copy", [&]<class From>() {
        detail::dispatch_float_storage(out[0].type(), "copy", [&]<class To>() {
            detail::copy_elements(out[0].as<To>(), in[0].as<const From>());
        });
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
