#pragma once
// Double-precision finite-difference gradient check for single-input layers (DESIGN
// decision 5): loss = sum(r * layer(x)) for a fixed random r; the analytic dx and every
// parameter gradient from `backward(r)` are compared with central differences of the loss
// in every input element and every parameter element.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/module.hpp"
#include "support/test_util.hpp"

namespace mmfuse_test {

/// Result of a gradient check: worst relative errors of dx and of the parameter grads.
struct gradcheck_result {
    double input_error = 0.0;
    double parameter_error = 0.0;
};

/// Checks `m.net()` (a differentiable layer with value_type double) at input `x`.
/// `training` selects the mode of every forward (dropout needs a replayable mask).
/// Error measure per element: |analytic - numeric| / max(1, |numeric|).
template <class Net>
gradcheck_result gradcheck(mmfuse::nn::model<Net>& m, const mmfuse::tensor<double>& x,
                           std::mt19937_64& rng, double h = 1e-6, bool training = true) {
    using namespace mmfuse;
    static_assert(std::is_same_v<typename Net::value_type, double>, "gradcheck runs in double");
    growing_arena ws;
    nn::step_context<double> cx{&backend::default_stream(), &ws, training};
    // Fixed random cotangent r with y's shape.
    ws.reset();
    const extents ye = m.net().forward(cx, x.cref()).extents();
    tensor<double> r = random_tensor<double>(ye, rng);
    const auto loss = [&](const tensor<double>& input) {
        ws.reset();
        const tensor_ref<const double> y = m.net().forward(cx, input.cref());
        double acc = 0.0;
        for (index_t i = 0; i < y.numel(); ++i)
            acc += y.data()[i] * r[i];
        return acc;
    };
    // Analytic gradients.
    m.zero_grad();
    ws.reset();
    m.net().forward(cx, x.cref());
    const tensor_ref<const double> dx = m.net().backward(cx, r.cref());
    REQUIRE(dx.extents() == x.extents());
    std::vector<double> dx_v(dx.data(), dx.data() + dx.numel());
    const tensor_ref<double> g = m.gradients();
    std::vector<double> dp(g.data(), g.data() + g.numel());

    gradcheck_result res;
    tensor<double> xp = x.clone();
    for (index_t i = 0; i < x.numel(); ++i) {
        const double num = central_difference(
            xp[i], [&] { return loss(xp); }, h);
        res.input_error = std::max(res.input_error,
                                   std::abs(dx_v[size_t(i)] - num) / std::max(1.0, std::abs(num)));
    }
    const tensor_ref<double> p = m.parameters();
    for (const auto& info : m.parameter_index()) {
        for (index_t k = 0; k < info.shape.numel(); ++k) {
            const double num = central_difference(
                p.data()[info.offset + k], [&] { return loss(x); }, h);
            INFO("parameter " << info.name << "[" << k << "]");
            res.parameter_error =
                std::max(res.parameter_error, std::abs(dp[size_t(info.offset + k)] - num) /
                                                  std::max(1.0, std::abs(num)));
        }
    }
    return res;
}

}  // namespace mmfuse_test
