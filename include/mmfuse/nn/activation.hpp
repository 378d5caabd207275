#pragma once
/// \file
/// `nn::activation<K>`: a parameter-free point-wise activation layer (`nn.ReLU`, `nn.GELU`,
/// `nn.GELU(approximate='tanh')`, `nn.SiLU`, `nn.Sigmoid`, `nn.Tanh`), and one alias per kind.

#include <string>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/pointwise.hpp"

namespace mmfuse::inline v0::nn {

/// y = f(x) element-wise for the activation `K` (formulas on `ops::unary_kind`).
///   x any shape -> y the same shape. No parameters (a PyTorch twin's state_dict has no
///   entry for it). Width-preserving: it declares no `in_features` / `out_features`, so
///   composition treats both as `dyn` and passes the neighbours' widths through.
/// Training forward saves x; backward: dx = f'(x) * dy.
template <ops::unary_kind K, compute_type T = float>
class activation {
public:
    using value_type = T;
    /// Output width = input width (compose::seq passes the neighbour's static width through).
    static constexpr bool preserves_width = true;
    static constexpr ops::unary_kind kind = K;

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }

    /// Nothing to initialise.
    void reset_parameters(philox_generator&) noexcept {}

    /// x (any shape) -> f(x), allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        const tensor_ref<T> y = cx.allocate(x.extents());
        ops::unary(cx.op(path_), K, x, y);
        saved_ = cx.training;
        if (saved_) saved_x_ = x;
        return y;
    }

    /// dy (x's shape) -> dx = f'(x) * dy. Throws `shape_error` without a training-mode
    /// forward or when dy's shape is not x's.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, std::string(ops::unary_name(K)) + " backward",
                              "a training-mode forward first", "no saved input");
        if (dy.extents() != saved_x_.extents())
            throw shape_error(path_, std::string(ops::unary_name(K)) + " output gradient",
                              "shape " + saved_x_.extents().to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(saved_x_.extents());
        ops::unary_backward(cx.op(path_), K, saved_x_, dy, dx);
        return dx;
    }

    const std::string& path() const noexcept { return path_; }

private:
    std::string path_;
    tensor_ref<const T> saved_x_{};
    bool saved_ = false;
};

/// `nn.ReLU()`: max(x, 0).
template <compute_type T = float>
using relu = activation<ops::unary_kind::relu, T>;
/// `nn.GELU()`: x Φ(x) with the exact erf.
template <compute_type T = float>
using gelu = activation<ops::unary_kind::gelu_erf, T>;
/// `nn.GELU(approximate='tanh')`.
template <compute_type T = float>
using gelu_tanh = activation<ops::unary_kind::gelu_tanh, T>;
/// `nn.SiLU()`: x sigmoid(x).
template <compute_type T = float>
using silu = activation<ops::unary_kind::silu, T>;
/// `nn.Sigmoid()`.
template <compute_type T = float>
using sigmoid = activation<ops::unary_kind::sigmoid, T>;
/// `nn.Tanh()`.
template <compute_type T = float>
using tanh = activation<ops::unary_kind::tanh, T>;

}  // namespace mmfuse::inline v0::nn
