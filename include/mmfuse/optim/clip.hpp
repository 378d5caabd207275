#pragma once
/// \file
/// `optim::clip_grad_norm`: rescales gradients so that their global norm is at most
/// `max_norm` (`torch.nn.utils.clip_grad_norm_`).

#include <algorithm>
#include <cmath>
#include <limits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/optim/buffers.hpp"

namespace mmfuse::inline v0::optim {

/// Clips the gradient buffer `grads` (flat, contiguous, e.g. `model.gradients()`; the zero
/// padding between parameters does not change any norm) in place and returns the total
/// norm *before* clipping, as PyTorch:
///
///     total = (sum_i |g_i|^norm_type)^(1 / norm_type)   (max_i |g_i| for norm_type = inf)
///     coef  = max_norm / (total + 1e-6);   if coef < 1:  g_i = g_i * coef
///
/// (PyTorch multiplies by min(coef, 1) always; multiplying by 1 changes nothing.) The sum
/// is accumulated in double. A NaN or infinite total propagates into the gradients, as with
/// PyTorch's default `error_if_nonfinite=False`. Throws `value_error` for norm_type <= 0.
template <compute_type T>
double clip_grad_norm(tensor_ref<T> grads, double max_norm, double norm_type = 2.0) {
    detail::expect_buffer("optim::clip_grad_norm", "gradient buffer", grads, grads.numel());
    if (!(norm_type > 0.0))
        throw value_error("optim::clip_grad_norm", "invalid norm_type: expected a value > 0, got " +
                                                       std::to_string(norm_type));
    T* g = grads.data();
    const index_t n = grads.numel();
    double total = 0.0;
    if (std::isinf(norm_type)) {
        for (index_t i = 0; i < n; ++i)
            total = std::max(total, double(std::abs(g[i])));
    } else if (norm_type == 2.0) {
        for (index_t i = 0; i < n; ++i)
            total += double(g[i]) * double(g[i]);
        total = std::sqrt(total);
    } else {
        for (index_t i = 0; i < n; ++i)
            total += std::pow(std::abs(double(g[i])), norm_type);
        total = std::pow(total, 1.0 / norm_type);
    }
    const double coef = max_norm / (total + 1e-6);
    if (coef < 1.0 || std::isnan(coef)) {
        const T c = T(coef);
        for (index_t i = 0; i < n; ++i)
            g[i] = g[i] * c;
    }
    return total;
}

}  // namespace mmfuse::inline v0::optim
