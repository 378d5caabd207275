#pragma once
// Helpers shared by the nn layer tests (test_layers*.cpp): a poisoned workspace, a wrapper
// that gives a layer the path "enc", logical-order values of a view, random parameters.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/module.hpp"
#include "support/test_util.hpp"

namespace mmfuse_test {

/// A step context over a 1 MiB workspace whose bytes are all 0xFF (NaN as float and as
/// double), so a layer output element that is never written shows up as NaN.
template <class T>
struct workspace {
    static constexpr std::size_t bytes = std::size_t(1) << 20;
    mmfuse::growing_arena ws{bytes};
    mmfuse::nn::step_context<T> cx;
    std::mt19937_64 rng = make_rng(977);

    explicit workspace(bool training) : cx{&mmfuse::backend::default_stream(), &ws, training} {
        const auto all = ws.allocate<float>(mmfuse::extents{mmfuse::index_t(bytes / 4)});
        std::memset(all.data(), 0xFF, bytes);
        ws.reset();
    }
};

/// Wraps layer L as the child "enc" of a root module, so its path (in errors) is "enc".
template <class L>
struct named {
    using value_type = typename L::value_type;
    L inner;

    template <class... A>
    explicit named(A&&... a) : inner(std::forward<A>(a)...) {}
    template <class V>
    void visit(V& v) {
        v.child("enc", inner);
    }
    void reset_parameters(mmfuse::philox_generator& g) { inner.reset_parameters(g); }
    template <class C, class X>
    auto forward(C& cx, X x) {
        return inner.forward(cx, x);
    }
    template <class C, class X>
    auto backward(C& cx, X dy) {
        return inner.backward(cx, dy);
    }
};

/// The elements of `t` in row-major logical order (any strides), as doubles.
template <class T>
std::vector<double> values(mmfuse::tensor_ref<T> t) {
    std::vector<double> v;
    v.reserve(std::size_t(t.numel()));
    mmfuse::for_each_row<1>(t.extents(), {t.strides()},
                            [&](mmfuse::index_t, const std::array<mmfuse::index_t, 1>& off) {
                                const mmfuse::index_t n = t.rank() == 0 ? 1 : t.extent(-1);
                                const mmfuse::index_t s = t.rank() == 0 ? 0 : t.stride(-1);
                                for (mmfuse::index_t k = 0; k < n; ++k)
                                    v.push_back(double(t.data()[off[0] + k * s]));
                            });
    if (t.numel() == 0) v.clear();
    return v;
}

/// Overwrites every parameter of `m` with U[-1, 1) draws (so that tests do not depend on
/// the identity-like default init of norms).
template <class Net>
void randomize(mmfuse::nn::model<Net>& m, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const auto p = m.parameters();
    for (mmfuse::index_t i = 0; i < p.numel(); ++i)
        p.data()[i] = typename Net::value_type(u(rng));
}

/// Backward twice after one training forward must add the parameter gradients twice
/// (layers add into `parameter::grad`, never overwrite). Returns max |g2 - 2 g1|.
template <class Net>
double accumulation_error(mmfuse::nn::model<Net>& m, const mmfuse::tensor<double>& x,
                          std::mt19937_64& rng) {
    workspace<double> w(true);
    const auto y = m.net().forward(w.cx, x.cref());
    const auto dy = random_tensor<double>(y.extents(), rng);
    m.zero_grad();
    m.net().backward(w.cx, dy.cref());
    const std::vector<double> g1 = values(m.gradients());
    m.net().backward(w.cx, dy.cref());
    const std::vector<double> g2 = values(m.gradients());
    double worst = 0.0;
    for (std::size_t i = 0; i < g1.size(); ++i)
        worst = std::max(worst, std::abs(g2[i] - 2.0 * g1[i]));
    return worst;
}

}  // namespace mmfuse_test
