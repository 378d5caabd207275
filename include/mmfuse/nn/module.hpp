#pragma once
/// \file
/// The layer protocol (DESIGN decisions 1, 3, 5, 7, 8): what every module in `mmfuse::nn`,
/// `mmfuse::compose` and `mmfuse::fusion` provides, and the context a step runs in.
///
/// A module is a plain value type templated on its compute type `T` (float or double):
///
///     template <class V> void visit(V& v);          // names its parameters and children:
///                                                   //   v.parameter("weight", weight_);
///                                                   //   v.child("proj", proj_);
///                                                   //   v.path(path_);  (its own path)
///     void reset_parameters(philox_generator& g);   // PyTorch's reset_parameters()
///
/// A single-input *layer* adds
///
///     tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x);
///     tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy);   // -> dx
///
/// `forward` allocates its output (and, when `cx.training`, whatever backward needs) from
/// `cx.workspace` and keeps views of the saved tensors; `backward` consumes them, returns
/// dx from the workspace and *adds* the parameter gradients into each `parameter::grad`
/// (zeroed by the model before a step). Layers contain no backend code: they call `ops::`.
/// Parameters live in the model's flat buffers (`nn::model`); a layer only holds views.

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/layout.hpp"

namespace mmfuse::inline v0::nn {

/// One named parameter: its shape (fixed when the module is constructed) and views of its
/// value and gradient inside the model's flat buffers (bound by `nn::model`; empty before).
template <compute_type T>
struct parameter {
    extents shape;
    tensor_ref<T> value{};
    tensor_ref<T> grad{};
};

/// Where and how one forward/backward step runs.
///   stream     backend stream every op goes to
///   workspace  activations, saved tensors and scratch; reset by the caller between steps
///   training   true: save what backward needs and apply dropout; false: inference
template <compute_type T>
struct step_context {
    backend::stream* stream;
    growing_arena* workspace;
    bool training = true;

    /// Op context for a call made on behalf of the module at `path` (used in errors).
    ops::op_context op(std::string_view path) const noexcept { return {*stream, path}; }
    /// Uninitialised workspace tensor of extents `e`.
    tensor_ref<T> allocate(const extents& e) const { return workspace->allocate<T>(e); }
};

/// A composable module: names its parameters and children, and initialises itself.
template <class M>
concept module = requires(M& m, philox_generator& g) {
    typename M::value_type;
    requires compute_type<typename M::value_type>;
    m.reset_parameters(g);
};

/// A module with one input and one output (the unit of `compose::seq`).
template <class L>
concept layer = module<L> && requires(L& l, step_context<typename L::value_type>& cx,
                                      tensor_ref<const typename L::value_type> x) {
    { l.forward(cx, x) } -> std::same_as<tensor_ref<const typename L::value_type>>;
};

/// A layer with an analytic backward.
template <class L>
concept differentiable_layer = layer<L> && requires(L& l, step_context<typename L::value_type>& cx,
                                                    tensor_ref<const typename L::value_type> dy) {
    { l.backward(cx, dy) } -> std::same_as<tensor_ref<const typename L::value_type>>;
};

/// Static feature widths of a layer, `dyn` when only known at run time or not declared.
/// Layers declare `static constexpr index_t in_features` / `out_features` (DESIGN 2).
template <class L>
constexpr index_t static_in_features() {
    if constexpr (requires { L::in_features; })
        return L::in_features;
    else
        return dyn;
}
template <class L>
constexpr index_t static_out_features() {
    if constexpr (requires { L::out_features; })
        return L::out_features;
    else
        return dyn;
}

/// Throws `shape_error` naming `path` and `what` (e.g. "linear input") unless x has rank
/// >= 1 and last extent `features`: the input check of every feature-wise layer.
template <class T>
void expect_features(std::string_view path, std::string_view what, const tensor_ref<T>& x,
                     index_t features) {
    if (x.rank() < 1 || x.extent(-1) != features)
        throw shape_error(path, what, "shape (..., " + std::to_string(features) + ")",
                          "shape " + x.extents().to_string());
}

/// `x` itself when it is contiguous, else a contiguous copy in the workspace (so that it
/// can be reshaped, e.g. (B, T, F) -> (B*T, F) for a GEMM).
template <compute_type T>
tensor_ref<const T> contiguous(const step_context<T>& cx, std::string_view path,
                               tensor_ref<const T> x) {
    if (x.is_contiguous()) return x;
    tensor_ref<T> c = cx.allocate(x.extents());
    ops::copy(cx.op(path), x, c);
    return c;
}

/// (R, F) view of a contiguous tensor of rank >= 1 with last extent F (R = numel / F).
template <class T>
tensor_ref<T> as_rows(tensor_ref<T> x) {
    const index_t f = x.rank() == 0 ? 1 : x.extent(-1);
    return x.reshape({f == 0 ? 0 : x.numel() / f, f});
}

/// Joins a parent path and a child name with '.' ("text" + "proj" -> "text.proj").
inline std::string join_path(std::string_view parent, std::string_view child) {
    std::string s(parent);
    if (!s.empty() && !child.empty()) s += '.';
    s += child;
    return s;
}

}  // namespace mmfuse::inline v0::nn
