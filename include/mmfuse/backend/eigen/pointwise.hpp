#pragma once
/// \file
/// Eigen reference kernels: bias add, activations and their backward, plus `map_elements`,
/// the strided element-wise loop they (and the layout kernels) share.
/// Implementation detail of the Eigen backend (no stability promise).

#include <array>
#include <cstddef>
#include <span>
#include <tuple>
#include <utility>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/activation_math.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {
template <class Out, class F, class... In, std::size_t... I>
void map_elements_impl(std::index_sequence<I...>, const tensor_ref<Out>& y, F& f,
                       const tensor_ref<In>&... in) {
    constexpr std::size_t n_ops = 1 + sizeof...(In);
    const extents& e = y.extents();
    if (e.numel() == 0) return;
    const bool scalar = e.rank() == 0;
    const index_t n = scalar ? 1 : e[-1];
    const std::array<index_t, n_ops> step{scalar ? 0 : y.stride(-1),
                                          (scalar ? 0 : in.stride(-1))...};
    bool unit = true;
    for (index_t s : step)
        unit = unit && s == 1;
    Out* const py0 = y.data();
    const std::tuple<In*...> pin0{in.data()...};
    for_each_row<n_ops>(e, {y.strides(), in.strides()...},
                        [&](index_t, const std::array<index_t, n_ops>& off) {
                            Out* const py = py0 + off[0];
                            const std::tuple<In*...> p{(std::get<I>(pin0) + off[I + 1])...};
                            if (unit) {  // the dense case, kept separate so that it vectorises
                                for (index_t j = 0; j < n; ++j)
                                    py[j] = f(std::get<I>(p)[j]...);
                            } else {
                                for (index_t j = 0; j < n; ++j)
                                    py[j * step[0]] = f(std::get<I>(p)[j * step[I + 1]]...);
                            }
                        });
}
}  // namespace detail

/// y[i] = f(in[i]...) for every index i of y's extents. Every input has y's extents
/// (stride-0 broadcast views are fine); each operand is addressed with its own strides.
/// y may be exactly the memory of an input (same data and strides: in place); partially
/// overlapping operands are not supported. Never allocates.
template <class Out, class F, class... In>
void map_elements(const tensor_ref<Out>& y, F&& f, const tensor_ref<In>&... in) {
    detail::map_elements_impl(std::index_sequence_for<In...>{}, y, f, in...);
}

/// bias_add_desc: y = x + bias (bias broadcast over every axis but the last).
inline void run(const ops::bias_add_desc&, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "bias_add", [&]<class T>() {
        const auto x = in[0].as<const T>();
        map_elements(
            out[0].as<T>(), [](T a, T b) { return a + b; }, x,
            in[1].as<const T>().expand(x.extents()));
    });
}

/// unary_desc: y = f(x).
inline void run(const ops::unary_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "unary", [&]<class T>() {
        ops::act::visit(d.kind, [&](auto k) {
            map_elements(
                out[0].as<T>(), [](T x) { return ops::act::value<decltype(k)::value>(x); },
                in[0].as<const T>());
        });
    });
}

/// unary_backward_desc: dx = f'(x) * dy.
inline void run(const ops::unary_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "unary_backward", [&]<class T>() {
        ops::act::visit(d.kind, [&](auto k) {
            map_elements(
                out[0].as<T>(),
                [](T x, T dy) { return ops::act::derivative<decltype(k)::value>(x) * dy; },
                in[0].as<const T>(), in[1].as<const T>());
        });
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
