#pragma once
// Helpers shared by the contrastive tests: random unit-norm embedding batches and a wrapper
// that places a head under the child name "head" (so its path, in parameters and errors, is
// "head").

#include <cmath>
#include <random>
#include <utility>

#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"

namespace mmfuse_test {

/// (rows, d) Gaussian rows normalised to unit length, computed in double and stored as T.
template <class T>
mmfuse::tensor<T> unit_rows(std::mt19937_64& rng, mmfuse::index_t rows, mmfuse::index_t d) {
    std::normal_distribution<double> n(0.0, 1.0);
    mmfuse::tensor<double> x(mmfuse::extents{rows, d});
    for (mmfuse::index_t r = 0; r < rows; ++r) {
        double norm = 0.0;
        for (mmfuse::index_t k = 0; k < d; ++k) {
            x[r * d + k] = n(rng);
            norm += x[r * d + k] * x[r * d + k];
        }
        for (mmfuse::index_t k = 0; k < d; ++k)
            x[r * d + k] /= std::sqrt(norm);
    }
    if constexpr (std::is_same_v<T, double>) {
        return x;
    } else {
        mmfuse::tensor<T> y(x.extents());
        for (mmfuse::index_t i = 0; i < x.numel(); ++i)
            y[i] = T(x[i]);
        return y;
    }
}

/// A head as the child "head" of the root (parameters "head.logit_scale", ...).
template <class H>
struct named_head {
    using value_type = typename H::value_type;
    H inner;

    template <class... A>
    explicit named_head(A&&... a) : inner(std::forward<A>(a)...) {}
    template <class V>
    void visit(V& v) {
        v.child("head", inner);
    }
    void reset_parameters(mmfuse::philox_generator& g) { inner.reset_parameters(g); }
};

}  // namespace mmfuse_test
