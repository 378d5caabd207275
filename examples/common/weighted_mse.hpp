#pragma once
// The loss of the diffusion examples: a per-row weighted mean squared error and its gradient,
// written by hand (the examples' denoisers regress a target such as v or the noise, with
// min-SNR weights per row).

#include <cstddef>
#include <vector>

#include "mmfuse/core/tensor.hpp"

namespace examples {

/// loss = sum_{r,k} w_r (pred_rk - target_rk)^2 / (R K) over pred, target (R, K), and
/// dpred = d loss / d pred = 2 w_r (pred_rk - target_rk) / (R K); returns the loss.
/// Accumulates in double. w holds one weight per row (R).
template <class Pred>
double weighted_mse(const Pred& pred, const mmfuse::tensor<float>& target,
                    const std::vector<double>& w, mmfuse::tensor<float>& dpred) {
    const mmfuse::index_t rows = target.extents()[0], cols = target.extents()[1];
    double loss = 0.0;
    const double norm = 1.0 / double(rows * cols);
    for (mmfuse::index_t r = 0; r < rows; ++r)
        for (mmfuse::index_t k = 0; k < cols; ++k) {
            const double e = double(pred(r, k)) - double(target(r, k));
            loss += w[std::size_t(r)] * e * e * norm;
            dpred(r, k) = float(2.0 * w[std::size_t(r)] * e * norm);
        }
    return loss;
}

}  // namespace examples
