#pragma once
/// \file
/// `nn::l2_normalize`: unit-length rows, `F.normalize(x, dim=-1, eps=1e-12)` as a layer.

#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/norm.hpp"

namespace mmfuse::inline v0::nn {

/// L2 normalisation over the last axis, no parameters:
///   x (..., F) -> y (..., F);  y = x / max(||x||_2, eps)   (PyTorch `F.normalize`, eps 1e-12).
/// Backward: dx = (dy - (dy . y) y) / ||x|| (dy / eps for rows shorter than eps).
/// `l2_normalize<512>` checks the width at compile time, `l2_normalize<dyn>{512}` at run
/// time, and `l2_normalize<dyn>{}` (width 0) accepts any width.
template <index_t F = dyn, compute_type T = float>
class l2_normalize {
public:
    using value_type = T;
    static constexpr bool preserves_width = true;
    static constexpr index_t in_features = F;
    static constexpr index_t out_features = F;

    explicit l2_normalize(dim<F> features = {}, double eps = 1e-12)
        : features_(features), eps_(eps) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}

    /// x (..., F) -> y (..., F), allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        if (features_.value() != 0) expect_features(path_, "l2_normalize input", x, features_.value());
        const tensor_ref<T> y = cx.allocate(x.extents());
        const index_t width = x.rank() == 0 ? 1 : x.extent(-1);
        const tensor_ref<T> norm = cx.allocate(extents{width == 0 ? 0 : x.numel() / width});
        ops::l2_normalize(cx.op(path_), x, y, norm, eps_);
        saved_ = cx.training;
        if (saved_) {
            y_ = y;
            norm_ = norm;
        }
        return y;
    }

    /// dy (..., F) -> dx (..., F).
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, "l2_normalize backward", "a training-mode forward first",
                              "no saved output");
        if (dy.extents() != y_.extents())
            throw shape_error(path_, "l2_normalize output gradient",
                              "shape " + y_.extents().to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(y_.extents());
        ops::l2_normalize_backward(cx.op(path_), y_, dy, norm_, dx, eps_);
        return dx;
    }

    /// This layer's module path, as set by the visitor ("" before `nn::model` visits it).
    const std::string& path() const noexcept { return path_; }

private:
    [[no_unique_address]] dim<F> features_;
    double eps_;
    bool saved_ = false;
    tensor_ref<const T> y_{}, norm_{};
    std::string path_;
};

}  // namespace mmfuse::inline v0::nn
