#pragma once
/// \file
/// Layout op front-ends: concat and split along one axis (`torch.cat`, `torch.split` into
/// given sizes) and copy between any two strided views, converting f32 / f64 / bf16 / f16.
///
///     ops::concat(cx, -1, {a.cref(), b.cref()}, y.ref());     // y = cat([a, b], -1)
///     ops::split(cx, -1, y.cref(), {a.ref(), b.ref()});       // the inverse
///     ops::copy(cx, x_f32, y_bf16);                            // convert
///
/// Concat and split take at most `max_parts` parts; the operand list is built on the stack
/// (no heap).

#include <array>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// Most parts one concat or split takes.
inline constexpr std::size_t max_parts = 16;

/// Element types `copy` converts between: f32, f64, bf16 and f16.
template <class T>
concept float_storage_type = compute_type<T> || std::is_same_v<std::remove_const_t<T>, bf16> ||
    std::is_same_v<std::remove_const_t<T>, half>;

namespace detail {

/// Submits `op` with `whole` and up to `max_parts` parts; the parts are inputs when
/// `parts_are_inputs` (concat) and outputs otherwise (split). Operands travel in a stack
/// array, as with `submit`.
template <class W, class P>
void submit_parts(const op_context& cx, const op_desc& op, const tensor_ref<W>& whole,
                  std::span<const tensor_ref<P>> parts, bool parts_are_inputs) {
    std::array<any_tensor_ref, max_parts> list{};
    for (std::size_t i = 0; i < parts.size(); ++i)
        list[i] = parts[i];
    const any_tensor_ref w = whole;
    const std::span<const any_tensor_ref> p(list.data(), parts.size());
    const std::span<const any_tensor_ref> one(&w, 1);
    if (parts_are_inputs)
        submit(cx, op, p, one);
    else
        submit(cx, op, one, p);
}

/// "(3, ?, 5)": `e` with '?' on `axis`.
inline std::string extents_except(const extents& e, int axis) {
    std::string s = "(";
    for (int i = 0; i < e.rank(); ++i) {
        if (i) s += ", ";
        s += i == axis ? std::string("?") : std::to_string(e[i]);
    }
    return s + ")";
}

/// Checks the parts of a concat or split against the whole along `axis`; `op` is "concat"
/// or "split", `part_name` "input" or "output", `whole_name` "output y" or "input x".
/// Returns the normalised axis. Builds strings only when it throws.
template <class W, class P>
int check_parts(const op_context& cx, const char* op, const char* part_name, const char* whole_name,
                int axis, const tensor_ref<W>& whole, std::span<const tensor_ref<P>> parts) {
    if (parts.empty() || parts.size() > max_parts)
        throw shape_error(cx.module, std::string(op) + " part list",
                          "1 to " + std::to_string(max_parts) + " parts",
                          std::to_string(parts.size()) + " parts");
    const int r = whole.rank();
    if (r < 1 || axis < -r || axis >= r)
        throw shape_error(cx.module, std::string(op) + " axis",
                          "an axis in [" + std::to_string(-r) + ", " + std::to_string(r) +
                              ") for " + whole_name + " " + whole.extents().to_string(),
                          "axis " + std::to_string(axis));
    const int ax = axis < 0 ? axis + r : axis;
    const auto part_what = [&](std::size_t i) {
        return std::string(op) + " " + part_name + " " + std::to_string(i);
    };
    index_t total = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const tensor_ref<P>& p = parts[i];
        if (p.rank() != r || p.extents().with_axis(ax, whole.extent(ax)) != whole.extents())
            throw shape_error(cx.module, part_what(i),
                              "shape " + extents_except(whole.extents(), ax) + " (" + whole_name +
                                  " " + whole.extents().to_string() + " except on axis " +
                                  std::to_string(ax) + ")",
                              "shape " + p.extents().to_string());
        if (p.data() == nullptr && p.numel() > 0)
            throw shape_error(cx.module, part_what(i), "a view with memory",
                              "a null view " + p.extents().to_string());
        total += p.extent(ax);
    }
    if (total != whole.extent(ax))
        throw shape_error(cx.module, std::string(op) + " " + whole_name,
                          "extent " + std::to_string(total) + " on axis " + std::to_string(ax) +
                              " (the sum of the parts)",
                          "shape " + whole.extents().to_string());
    if (whole.data() == nullptr && whole.numel() > 0)
        throw shape_error(cx.module, std::string(op) + " " + whole_name, "a view with memory",
                          "a null view " + whole.extents().to_string());
    return ax;
}

}  // namespace detail

/// y = concatenation of `inputs` along `axis` (negative counts from the end).
///   inputs: 1 to `max_parts` views with y's extents except on `axis`; y: the extents on
///   `axis` sum up. Any strides; y must not overlap an input.
template <compute_type T>
void concat(const op_context& cx, int axis,
            std::span<const tensor_ref<const std::type_identity_t<T>>> inputs, tensor_ref<T> y) {
    const int ax = detail::check_parts(cx, "concat", "input", "output y", axis, y, inputs);
    detail::submit_parts(cx, concat_desc{ax}, y, inputs, true);
}

/// `concat` with a braced list: `ops::concat(cx, 1, {a, b}, y)`.
template <compute_type T>
void concat(const op_context& cx, int axis,
            std::initializer_list<tensor_ref<const std::type_identity_t<T>>> inputs,
            tensor_ref<T> y) {
    concat<T>(cx, axis, std::span(inputs.begin(), inputs.size()), y);
}

/// outputs[i] = the i-th consecutive slice of x along `axis` (the inverse of `concat`).
///   outputs: 1 to `max_parts` views with x's extents except on `axis`, whose extents sum
///   to x's. Any strides; outputs must not overlap x or each other. With a container of
///   views, name the type: `ops::split<float>(cx, axis, x, parts)`.
template <compute_type T>
void split(const op_context& cx, int axis, tensor_ref<const std::type_identity_t<T>> x,
           std::span<const tensor_ref<T>> outputs) {
    const int ax = detail::check_parts(cx, "split", "output", "input x", axis, x, outputs);
    detail::submit_parts(cx, split_desc{ax}, x, outputs, false);
}

/// `split` with a braced list: `ops::split(cx, 1, x, {a, b})`.
template <compute_type T>
void split(const op_context& cx, int axis, tensor_ref<const std::type_identity_t<T>> x,
           std::initializer_list<tensor_ref<T>> outputs) {
    split<T>(cx, axis, x, std::span(outputs.begin(), outputs.size()));
}

/// y = x element by element: same extents, any strides on either side, converting between
/// f32, f64, bf16 and f16 (to bf16 / f16 rounds to nearest even; f64 to bf16 / f16 goes
/// through f32, as PyTorch does), or from bool to any of them (false -> 0, true -> 1, as
/// `mask.to(dtype)`: how a boolean mask becomes weights). y must not overlap x unless it is x.
template <class S, class D>
requires(float_storage_type<S> || std::is_same_v<std::remove_const_t<S>, bool>) &&
    float_storage_type<D> &&
    (!std::is_const_v<D>)void copy(const op_context& cx, tensor_ref<S> x, tensor_ref<D> y) {
    detail::expect_extents(cx, "copy output y", y, x.extents());
    detail::expect_data(cx, "copy input x", x);
    detail::expect_data(cx, "copy output y", y);
    detail::submit<1, 1>(cx, copy_desc{}, {tensor_ref<const S>(x)}, {y});
}

}  // namespace mmfuse::inline v0::ops
