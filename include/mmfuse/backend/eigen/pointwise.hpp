#pragma once
/// \file
/// Eigen reference kernels: bias add, activations and their backward.
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

/// binary_desc: y = a (op) b; a and b already have y's extents (broadcast views).
inline void run(const ops::binary_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(out[0].type(), "binary", [&]<class T>() {
        const auto a = in[0].as<const T>();
        const auto b = in[1].as<const T>();
        const auto y = out[0].as<T>();
        switch (d.kind) {
            case ops::binary_kind::add:
                map_elements(
                    y, [](T u, T v) { return u + v; }, a, b);
                break;
            case ops::binary_kind::sub:
                map_elements(
                    y, [](T u, T v) { return u - v; }, a, b);
                break;
            case ops::binary_kind::mul:
                map_elements(
                    y, [](T u, T v) { return u * v; }, a, b);
                break;
        }
    });
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
