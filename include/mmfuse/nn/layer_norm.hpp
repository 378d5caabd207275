#pragma once
/// \file
/// `nn::layer_norm`: layer normalisation over the last axis (Ba, Kiros & Hinton 2016;
/// PyTorch `nn.LayerNorm`).

#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/norm.hpp"

namespace mmfuse::inline v0::nn {

/// `torch.nn.LayerNorm(F, eps=1e-5, elementwise_affine=True, bias=True)` over the last axis:
///   x (..., F) -> y (..., F);  y = (x - mean) / sqrt(var + eps) * weight + bias,
///   mean and the biased variance taken over the last axis of each row.
///   weight (F) = ones, bias (F) = zeros (PyTorch names and defaults); `elementwise_affine =
///   false` drops both, `bias = false` drops the bias (as in PyTorch).
/// `layer_norm<512>` checks the width at compile time; `layer_norm<dyn>{512}` at run time.
/// Training forward saves x and the per-row mean and rstd (workspace); backward adds into
/// weight.grad and bias.grad (`ops::layer_norm_backward` with accumulate = true).
template <index_t F = dyn, compute_type T = float>
class layer_norm {
public:
    using value_type = T;
    /// Output width = input width (compose::seq passes the neighbour's static width through).
    static constexpr bool preserves_width = true;
    static constexpr index_t in_features = F;
    static constexpr index_t out_features = F;

    explicit layer_norm(dim<F> features = {}, double eps = 1e-5, bool elementwise_affine = true,
                        bool bias = true)
        : features_(features),
          eps_(eps),
          affine_(elementwise_affine),
          has_bias_(elementwise_affine && bias) {
        if (affine_) weight_.shape = extents{features_.value()};
        if (has_bias_) bias_.shape = extents{features_.value()};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if (affine_) v.parameter("weight", weight_);
        if (has_bias_) v.parameter("bias", bias_);
    }

    /// PyTorch's `reset_parameters`: weight = 1, bias = 0 (draws nothing).
    void reset_parameters(philox_generator&) {
        if (affine_) init::ones{}(weight_.value);
        if (has_bias_) init::zeros{}(bias_.value);
    }

    /// x (..., F) -> y (..., F), allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        expect_features(path_, "layer_norm input", x, features_.value());
        const extents stats{x.numel() / features_.value()};
        const tensor_ref<T> y = cx.allocate(x.extents());
        const tensor_ref<T> mean = cx.allocate(stats);
        const tensor_ref<T> rstd = cx.allocate(stats);
        ops::layer_norm(cx.op(path_), x, gamma(), beta(), y, mean, rstd, eps_);
        saved_ = cx.training;
        if (saved_) {
            saved_x_ = x;
            mean_ = mean;
            rstd_ = rstd;
        }
        return y;
    }

    /// dy (..., F) -> dx (..., F); adds into weight.grad and bias.grad.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, "layer_norm backward", "a training-mode forward first",
                              "no saved input");
        if (dy.extents() != saved_x_.extents())
            throw shape_error(path_, "layer_norm output gradient",
                              "shape " + saved_x_.extents().to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(saved_x_.extents());
        ops::layer_norm_backward(cx.op(path_), saved_x_, dy, mean_, rstd_, gamma(), dx,
                                 affine_ ? weight_.grad : tensor_ref<T>{},
                                 has_bias_ ? bias_.grad : tensor_ref<T>{}, true);
        return dx;
    }

    parameter<T>& weight() noexcept { return weight_; }
    parameter<T>& bias() noexcept { return bias_; }
    double eps() const noexcept { return eps_; }
    bool elementwise_affine() const noexcept { return affine_; }
    bool has_bias() const noexcept { return has_bias_; }
    const std::string& path() const noexcept { return path_; }

private:
    tensor_ref<const T> gamma() const noexcept {
        return affine_ ? tensor_ref<const T>(weight_.value) : tensor_ref<const T>{};
    }
    tensor_ref<const T> beta() const noexcept {
        return has_bias_ ? tensor_ref<const T>(bias_.value) : tensor_ref<const T>{};
    }

    [[no_unique_address]] dim<F> features_;
    double eps_;
    bool affine_;
    bool has_bias_;
    parameter<T> weight_;
    parameter<T> bias_;
    std::string path_;
    tensor_ref<const T> saved_x_{};
    tensor_ref<const T> mean_{};
    tensor_ref<const T> rstd_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::nn
