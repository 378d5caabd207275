#pragma once
/// \file
/// Example-side softmax cross-entropy for classifiers whose logits live in host memory (the
/// examples run on the Eigen backend). Not part of the library.

#include <algorithm>
#include <cmath>
#include <span>
#include <string_view>

#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/softmax.hpp"

namespace examples {

/// Softmax cross-entropy, mean over the N rows of `logits` (N, K) against `labels` (N values
/// in [0, K)): returns the loss, writes dlogits = (softmax - one_hot) / N when `dlogits` is
/// not empty, and adds the number of rows whose arg-max is the label to `correct`.
/// `module` names the softmax in errors.
inline double cross_entropy(mmfuse::nn::step_context<float>& cx, std::string_view module,
                            mmfuse::tensor_ref<const float> logits, std::span<const int> labels,
                            mmfuse::tensor_ref<float> dlogits, int& correct) {
    const mmfuse::index_t n = logits.extent(0), k = logits.extent(1);
    const auto p = cx.allocate(logits.extents());
    mmfuse::ops::softmax(cx.op(module), logits, p);
    double loss = 0.0;
    for (mmfuse::index_t i = 0; i < n; ++i) {
        const int want = labels[std::size_t(i)];
        mmfuse::index_t best = 0;
        for (mmfuse::index_t j = 0; j < k; ++j) {
            if (p(i, j) > p(i, best)) best = j;
            if (dlogits.data() != nullptr)
                dlogits(i, j) = (p(i, j) - (j == want ? 1.0f : 0.0f)) / float(n);
        }
        loss -= std::log(std::max(double(p(i, want)), 1e-30));
        correct += best == want;
    }
    return loss / double(n);
}

}  // namespace examples
