#pragma once
/// \file
/// `nn::rms_norm`: root-mean-square normalisation over the last axis (Zhang & Sennrich 2019;
/// PyTorch `nn.RMSNorm`).

#include <limits>
#include <optional>
#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/norm.hpp"

namespace mmfuse::inline v0::nn {

/// `torch.nn.RMSNorm(F, eps=None, elementwise_affine=True)` over the last axis:
///   x (..., F) -> y (..., F);  y = x / sqrt(mean(x^2) + eps) * weight.
///   weight (F) = ones (PyTorch name and default); `elementwise_affine = false` drops it.
///   eps: PyTorch's default `None` means `torch.finfo(x.dtype).eps`; so does an empty
///   `std::optional` here: `std::numeric_limits<T>::epsilon()`, i.e. 1.1920929e-07 for float
///   and 2.220446049250313e-16 for double.
/// `rms_norm<512>` checks the width at compile time; `rms_norm<dyn>{512}` at run time.
/// Training forward saves x and the per-row rstd; backward adds into weight.grad.
template <index_t F = dyn, compute_type T = float>
class rms_norm {
public:
    using value_type = T;
    /// Output width = input width (compose::seq passes the neighbour's static width through).
    static constexpr bool preserves_width = true;
    static constexpr index_t in_features = F;
    static constexpr index_t out_features = F;

    explicit rms_norm(dim<F> features = {}, std::optional<double> eps = std::nullopt,
                      bool elementwise_affine = true)
        : features_(features),
          eps_(eps.value_or(double(std::numeric_limits<T>::epsilon()))),
          affine_(elementwise_affine) {
        if (affine_) weight_.shape = extents{features_.value()};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if (affine_) v.parameter("weight", weight_);
    }

    /// PyTorch's `reset_parameters`: weight = 1 (draws nothing).
    void reset_parameters(philox_generator&) {
        if (affine_) init::ones{}(weight_.value);
    }

    /// x (..., F) -> y (..., F), allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        expect_features(path_, "rms_norm input", x, features_.value());
        const tensor_ref<T> y = cx.allocate(x.extents());
        const tensor_ref<T> rstd = cx.allocate(extents{x.numel() / features_.value()});
        ops::rms_norm(cx.op(path_), x, gamma(), y, rstd, eps_);
        saved_ = cx.training;
        if (saved_) {
            saved_x_ = x;
            rstd_ = rstd;
        }
        return y;
    }

    /// dy (..., F) -> dx (..., F); adds into weight.grad.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, "rms_norm backward", "a training-mode forward first",
                              "no saved input");
        if (dy.extents() != saved_x_.extents())
            throw shape_error(path_, "rms_norm output gradient",
                              "shape " + saved_x_.extents().to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(saved_x_.extents());
        ops::rms_norm_backward(cx.op(path_), saved_x_, dy, rstd_, gamma(), dx,
                               affine_ ? weight_.grad : tensor_ref<T>{}, true);
        return dx;
    }

    parameter<T>& weight() noexcept { return weight_; }
    /// The eps in use (the resolved default when none was given).
    double eps() const noexcept { return eps_; }
    bool elementwise_affine() const noexcept { return affine_; }
    const std::string& path() const noexcept { return path_; }

private:
    tensor_ref<const T> gamma() const noexcept {
        return affine_ ? tensor_ref<const T>(weight_.value) : tensor_ref<const T>{};
    }

    [[no_unique_address]] dim<F> features_;
    double eps_;
    bool affine_;
    parameter<T> weight_;
    std::string path_;
    tensor_ref<const T> saved_x_{};
    tensor_ref<const T> rstd_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::nn
