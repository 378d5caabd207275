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
#include <span>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/layout.hpp"
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

/// Puts a module under the child name "fuse" of a root (paths in errors are "fuse", names
/// "fuse.linear0.weight"); forwards forward/backward unchanged.
template <class Net>
struct fuse_root {
    using value_type = typename Net::value_type;
    static constexpr std::size_t arity = Net::arity;
    Net inner;
    template <class V>
    void visit(V& v) {
        v.child("fuse", inner);
    }
    void reset_parameters(mmfuse::philox_generator& g) { inner.reset_parameters(g); }
    template <class C, class X>
    auto forward(C& cx, const X& xs, mmfuse::fusion::presence p = {}) {
        return inner.forward(cx, xs, p);
    }
    template <class C, class D>
    auto backward(C& cx, const D& dy) {
        return inner.backward(cx, dy);
    }
};

/// An interaction seen as a fuser, so that `fusion_gradcheck` checks it: its outputs
/// flattened per sample and concatenated, (B, sum_m numel(y_m) / B). Visit is transparent
/// (the interaction's own parameter names).
template <class Net>
struct interaction_as_fuser {
    using value_type = typename Net::value_type;
    using T = value_type;
    static constexpr std::size_t arity = Net::arity;
    Net inner;
    std::array<mmfuse::extents, arity> ye{};

    template <class V>
    void visit(V& v) {
        inner.visit(v);
    }
    void reset_parameters(mmfuse::philox_generator& g) { inner.reset_parameters(g); }
    mmfuse::tensor_ref<const T> forward(mmfuse::nn::step_context<T>& cx,
                                        const mmfuse::fusion::views<T, arity>& xs,
                                        mmfuse::fusion::presence p = {}) {
        using namespace mmfuse;
        const fusion::views<T, arity> ys = inner.forward(cx, xs, p);
        std::array<tensor_ref<const T>, arity> flat{};
        index_t total = 0;
        const index_t b = ys[0].extent(0);
        for (std::size_t m = 0; m < arity; ++m) {
            ye[m] = ys[m].extents();
            flat[m] = nn::contiguous(cx, "", ys[m]).reshape({b, ys[m].numel() / b});
            total += flat[m].extent(1);
        }
        const tensor_ref<T> y = cx.allocate(extents{b, total});
        ops::concat<T>(cx.op(""), 1, std::span<const tensor_ref<const T>>(flat), y);
        return y;
    }
    mmfuse::fusion::views<T, arity> backward(mmfuse::nn::step_context<T>& cx,
                                             mmfuse::tensor_ref<const T> dy) {
        using namespace mmfuse;
        fusion::views<T, arity> dys{};
        index_t at = 0;
        for (std::size_t m = 0; m < arity; ++m) {
            const index_t n = ye[m].numel() / ye[m][0];
            const tensor_ref<T> d = cx.allocate(ye[m]);
            ops::copy(cx.op(""), dy.narrow(1, at, n), d.reshape({ye[m][0], n}));
            dys[m] = d;
            at += n;
        }
        return inner.backward(cx, dys);
    }
};

/// A layer (forward(cx, x), backward(cx, dy)) seen as a fuser of arity 1 (presence unused).
template <class Net>
struct layer_as_fuser {
    using value_type = typename Net::value_type;
    using T = value_type;
    static constexpr std::size_t arity = 1;
    Net inner;
    template <class V>
    void visit(V& v) {
        inner.visit(v);
    }
    void reset_parameters(mmfuse::philox_generator& g) { inner.reset_parameters(g); }
    mmfuse::tensor_ref<const T> forward(mmfuse::nn::step_context<T>& cx,
                                        const mmfuse::fusion::views<T, 1>& xs,
                                        mmfuse::fusion::presence = {}) {
        return inner.forward(cx, xs[0]);
    }
    mmfuse::fusion::views<T, 1> backward(mmfuse::nn::step_context<T>& cx,
                                         mmfuse::tensor_ref<const T> dy) {
        return {inner.backward(cx, dy)};
    }
};

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
