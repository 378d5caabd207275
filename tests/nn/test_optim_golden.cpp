// Optimisers against torch.optim itself (fixtures: tools/golden/make_optim_fixtures.py):
// 5 steps of SGD (momentum + dampening, Nesterov), Adam, Adam with AMSGrad and AdamW on a
// 37-element parameter vector, float64 and float32, compared after every step.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "mmfuse/io/npy.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/sgd.hpp"

using namespace mmfuse;

namespace {
template <class T>
struct fixture {
    tensor<T> p0, grads, expected;
};

template <class T>
fixture<T> load_case(const std::string& name) {
    const std::string dir = std::string(MMFUSE_TEST_DATA_DIR) + "/optim/" + name + "/" +
                            (std::is_same_v<T, double> ? "f64" : "f32") + "/";
    return {io::npy_load<T>(dir + "p0.npy"), io::npy_load<T>(dir + "grads.npy"),
            io::npy_load<T>(dir + "expected.npy")};
}

// Runs `opt` over the fixture's gradients and returns the worst relative error over all
// steps: |mmfuse - torch| / max(1, |torch|).
template <class T, class Opt>
double run(Opt& opt, const fixture<T>& f) {
    tensor<T> p = f.p0.clone();
    const index_t steps = f.grads.extent(0), n = f.grads.extent(1);
    tensor<T> g({n});
    double worst = 0.0;
    for (index_t t = 0; t < steps; ++t) {
        std::copy_n(f.grads.data() + t * n, n, g.data());
        opt.step(p.ref(), g.cref());
        for (index_t i = 0; i < n; ++i) {
            const double ref = double(f.expected[t * n + i]);
            worst = std::max(worst, std::abs(double(p[i]) - ref) / std::max(1.0, std::abs(ref)));
        }
    }
    return worst;
}

template <class T>
double tolerance() {
    return std::is_same_v<T, double> ? 1e-12 : 2e-6;
}
}  // namespace

TEMPLATE_TEST_CASE("optimisers match torch.optim step for step", "[optim][golden]", float,
                   double) {
    using T = TestType;
    {
        const auto f = load_case<T>("sgd_momentum");
        optim::sgd<T> opt(f.p0.numel(), {.lr = 0.1, .momentum = 0.9, .dampening = 0.1,
                                         .weight_decay = 0.01});
        REQUIRE(run(opt, f) <= tolerance<T>());
    }
    {
        const auto f = load_case<T>("sgd_nesterov");
        optim::sgd<T> opt(f.p0.numel(),
                          {.lr = 0.05, .momentum = 0.8, .weight_decay = 0.02, .nesterov = true});
        REQUIRE(run(opt, f) <= tolerance<T>());
    }
    {
        const auto f = load_case<T>("adam");
        optim::adam<T> opt(f.p0.numel(), {.lr = 1e-2, .betas = {0.8, 0.99}, .eps = 1e-6,
                                          .weight_decay = 0.1});
        REQUIRE(run(opt, f) <= tolerance<T>());
    }
    {
        const auto f = load_case<T>("adam_amsgrad");
        optim::adam<T> opt(f.p0.numel(), {.lr = 3e-2, .amsgrad = true});
        REQUIRE(run(opt, f) <= tolerance<T>());
    }
    {
        const auto f = load_case<T>("adamw");
        optim::adamw<T> opt(f.p0.numel(), {.lr = 1e-2, .betas = {0.85, 0.995}, .eps = 1e-7,
                                           .weight_decay = 0.05});
        REQUIRE(run(opt, f) <= tolerance<T>());
    }
}
