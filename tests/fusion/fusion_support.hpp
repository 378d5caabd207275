#pragma once
// Helpers shared by the fusion tests: a step context over a poisoned workspace, random
// inputs and presence masks, and the finite-difference gradient check of a multi-input
// module (fuser, early/late/hybrid model) in double precision.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <random>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/test_util.hpp"

namespace mmfuse_test {

/// A step context over a workspace whose first 4 MiB are 0xFF bytes (NaN as float and as
/// double), so an output element that is never written shows up as NaN.
template <class T>
struct fusion_workspace {
    static constexpr std::size_t bytes = std::size_t(4) << 20;
    mmfuse::growing_arena ws{bytes};
    mmfuse::nn::step_context<T> cx;

    explicit fusion_workspace(bool training = true)
        : cx{&mmfuse::backend::default_stream(), &ws, training} {
        const auto all = ws.allocate<float>(mmfuse::extents{mmfuse::index_t(bytes / 4)});
        std::memset(all.data(), 0xFF, bytes);
        ws.reset();
    }
};

/// A (B, M) presence mask with each entry true with probability `p` (fresh random draws).
inline mmfuse::tensor<bool> random_presence(std::mt19937_64& rng, mmfuse::index_t batch,
                                            mmfuse::index_t m, double p = 0.6) {
    mmfuse::tensor<bool> mask({batch, m});
    std::bernoulli_distribution d(p);
    for (mmfuse::index_t i = 0; i < mask.numel(); ++i)
        mask[i] = d(rng);
    return mask;
}

/// Fresh random inputs U[-1, 1) of the given extents (one tensor per modality).
template <class T = double>
std::vector<mmfuse::tensor<T>> random_inputs(std::mt19937_64& rng,
                                             std::initializer_list<mmfuse::extents> shapes) {
    std::vector<mmfuse::tensor<T>> xs;
    for (const mmfuse::extents& e : shapes)
        xs.push_back(random_tensor<T>(e, rng));
    return xs;
}

/// Views of a list of tensors as the fixed-size input array of an arity-M module.
template <class T, std::size_t M>
mmfuse::fusion::views<T, M> as_views(const std::vector<mmfuse::tensor<T>>& xs) {
    mmfuse::fusion::views<T, M> v{};
    for (std::size_t m = 0; m < M; ++m)
        v[m] = xs[m].cref();
    return v;
}

/// Worst relative errors of a multi-input gradient check.
struct fusion_gradcheck_result {
    double input_error = 0.0;
    double parameter_error = 0.0;
};

/// Central-difference check of `m.net()` (arity M, value_type double, forward(cx, views, p)
/// and backward(cx, dy) -> views) at inputs `xs` with presence `p`: loss = sum(r * y) for a
/// fixed random r; every input element and every parameter element.
/// Error per element: |analytic - numeric| / max(1, |numeric|).
template <std::size_t M, class Net>
fusion_gradcheck_result fusion_gradcheck(mmfuse::nn::model<Net>& m,
                                         std::vector<mmfuse::tensor<double>> xs,
                                         std::mt19937_64& rng, mmfuse::fusion::presence p = {},
                                         double h = 1e-6) {
    using namespace mmfuse;
    growing_arena ws;
    nn::step_context<double> cx{&backend::default_stream(), &ws, true};
    ws.reset();
    const extents ye = m.net().forward(cx, as_views<double, M>(xs), p).extents();
    tensor<double> r = random_tensor<double>(ye, rng);
    const auto loss = [&] {
        ws.reset();
        const tensor_ref<const double> y = m.net().forward(cx, as_views<double, M>(xs), p);
        double acc = 0.0;
        for (index_t i = 0; i < y.numel(); ++i)
            acc += y.data()[i] * r[i];
        return acc;
    };
    m.zero_grad();
    ws.reset();
    m.net().forward(cx, as_views<double, M>(xs), p);
    const fusion::views<double, M> dxs = m.net().backward(cx, r.cref());
    std::vector<std::vector<double>> dx_v(M);
    for (std::size_t k = 0; k < M; ++k) {
        REQUIRE(dxs[k].extents() == xs[k].extents());
        tensor<double> c(dxs[k].extents());
        for_each_row<1>(dxs[k].extents(), {dxs[k].strides()},
                        [&](index_t row, const std::array<index_t, 1>& off) {
                            const index_t n = dxs[k].extent(-1);
                            for (index_t j = 0; j < n; ++j)
                                c[row * n + j] = dxs[k].data()[off[0] + j * dxs[k].stride(-1)];
                        });
        dx_v[k].assign(c.data(), c.data() + c.numel());
    }
    const tensor_ref<double> g = m.gradients();
    const std::vector<double> dp(g.data(), g.data() + g.numel());

    fusion_gradcheck_result res;
    for (std::size_t k = 0; k < M; ++k)
        for (index_t i = 0; i < xs[k].numel(); ++i) {
            const double num = central_difference(xs[k][i], loss, h);
            res.input_error = std::max(res.input_error, std::abs(dx_v[k][std::size_t(i)] - num) /
                                                            std::max(1.0, std::abs(num)));
        }
    const tensor_ref<double> pv = m.parameters();
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k) {
            const double num = central_difference(pv.data()[info.offset + k], loss, h);
            res.parameter_error =
                std::max(res.parameter_error, std::abs(dp[std::size_t(info.offset + k)] - num) /
                                                  std::max(1.0, std::abs(num)));
        }
    return res;
}

}  // namespace mmfuse_test
