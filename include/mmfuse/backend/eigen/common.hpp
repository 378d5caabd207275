#pragma once
/// \file
/// Helpers shared by the Eigen reference kernels: dtype dispatch and `map_elements`, the strided
/// element-wise loop (built on core/strided.hpp's `for_each_row`). Implementation detail of the
/// Eigen backend (no stability promise).

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::backend::eigen {

/// Calls `f.template operator()<T>()` with T = float for f32 and T = double for f64;
/// throws `backend_error` naming `op` for any other dtype.
template <class F>
decltype(auto) dispatch_compute(dtype type, std::string_view op, F&& f) {
    switch (type) {
        case dtype::f32:
            return f.template operator()<float>();
        case dtype::f64:
            return f.template operator()<double>();
        default:
            break;
    }
    throw backend_error("eigen", std::string(op) + ": dtype " + std::string(dtype_name(type)) +
                                     " is not supported (f32 and f64 are)");
}

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

}  // namespace mmfuse::inline v0::backend::eigen
