#pragma once
/// \file
/// `nn::linear`: y = x W^T + b over the last axis (PyTorch `nn.Linear`).

#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::nn {

/// Affine map on the last axis, `torch.nn.Linear(In, Out, bias)`.
///   x (..., In) -> y (..., Out);  y = x W^T + b
///   weight (Out, In), bias (Out) — PyTorch names and layout, so state dicts load as is.
///   init: PyTorch's default (`init::linear_default`: U(±1/√In) for both).
/// `linear<512, 256>` checks widths at compile time; `linear<dyn, dyn>{512, 256}` at run time.
/// Backward: dx = dy W; dW += dy^T x; db += sum over rows of dy.
template <index_t In = dyn, index_t Out = dyn, compute_type T = float>
class linear {
public:
    using value_type = T;
    static constexpr index_t in_features = In;
    static constexpr index_t out_features = Out;

    explicit linear(dim<In> in = {}, dim<Out> out = {}, bool bias = true)
        : in_(in), out_(out), has_bias_(bias) {
        weight_.shape = extents{out_.value(), in_.value()};
        if (has_bias_) bias_.shape = extents{out_.value()};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("weight", weight_);
        if (has_bias_) v.parameter("bias", bias_);
    }

    void reset_parameters(philox_generator& g) {
        if (has_bias_)
            init::linear_default{}(g, weight_.value, bias_.value);
        else
            init::linear_default{}(g, weight_.value);
    }

    /// x (..., In) -> y (..., Out), allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        expect_features(path_, "linear input", x, in_.value());
        const tensor_ref<const T> x2 = as_rows(contiguous(cx, path_, x));
        const tensor_ref<T> y = cx.allocate(x.extents().with_axis(-1, out_.value()));
        const tensor_ref<T> y2 = as_rows(y);
        const ops::op_context op = cx.op(path_);
        ops::matmul(op, x2, tensor_ref<const T>(weight_.value), y2, {.transpose_b = true});
        if (has_bias_) ops::bias_add(op, tensor_ref<const T>(y2), bias_.value, y2);
        if (cx.training) {
            saved_x_ = x2;
            x_extents_ = x.extents();
        }
        return y;
    }

    /// dy (..., Out) -> dx (..., In); adds into weight.grad and bias.grad.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        const extents expected = x_extents_.with_axis(-1, out_.value());
        if (saved_x_.data() == nullptr && saved_x_.numel() > 0)
            throw shape_error(path_, "linear backward", "a training-mode forward first",
                              "no saved input");
        if (dy.extents() != expected)
            throw shape_error(path_, "linear output gradient", "shape " + expected.to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<const T> dy2 = as_rows(contiguous(cx, path_, dy));
        const tensor_ref<T> dx = cx.allocate(x_extents_);
        const ops::op_context op = cx.op(path_);
        ops::matmul(op, dy2, tensor_ref<const T>(weight_.value), as_rows(dx));
        ops::matmul(op, dy2, saved_x_, weight_.grad, {.transpose_a = true, .beta = 1.0});
        if (has_bias_) ops::reduce(op, ops::reduce_kind::sum, 0, dy2, bias_.grad, true);
        return dx;
    }

    parameter<T>& weight() noexcept { return weight_; }
    parameter<T>& bias() noexcept { return bias_; }
    bool has_bias() const noexcept { return has_bias_; }
    const std::string& path() const noexcept { return path_; }

private:
    [[no_unique_address]] dim<In> in_;
    [[no_unique_address]] dim<Out> out_;
    bool has_bias_;
    parameter<T> weight_;
    parameter<T> bias_;
    std::string path_;
    tensor_ref<const T> saved_x_{};
    extents x_extents_{};
};

}  // namespace mmfuse::inline v0::nn
