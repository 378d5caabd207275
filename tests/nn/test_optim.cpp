// optim::sgd / adam / adamw / clip_grad_norm / cosine_with_warmup against hand-written
// double-precision reimplementations of PyTorch's formulas (torch/optim/sgd.py, adam.py,
// adamw.py single-tensor paths; torch.nn.utils.clip_grad_norm_), several steps with fresh
// random gradients, float and double.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "mmfuse/compose/seq.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/clip.hpp"
#include "mmfuse/optim/schedule.hpp"
#include "mmfuse/optim/sgd.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

constexpr int steps = 6;

template <class T>
std::vector<double> values(const tensor<T>& t) {
    return std::vector<double>(t.data(), t.data() + t.numel());
}

/// Worst |got - ref| / max(1, |ref|).
template <class T>
double rel_err(const tensor<T>& got, const std::vector<double>& ref) {
    return mmfuse_test::max_rel_error(std::span<const T>(got.data(), size_t(got.numel())),
                                      std::span<const double>(ref));
}

template <class T>
double tol() {
    return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

/// One problem: initial parameters and one random gradient per step.
struct problem {
    index_t n;
    std::vector<double> p0;
    std::vector<std::vector<double>> grads;
};
problem make_problem(std::mt19937_64& rng) {
    problem pr;
    pr.n = 1 + index_t(rng() % 64);
    pr.p0 = mmfuse_test::uniform_values(rng, pr.n, -1.0, 1.0);
    for (int s = 0; s < steps; ++s) {
        // Gradients over several magnitudes (Adam's normalisation must not care).
        const double scale = std::pow(10.0, double(int(rng() % 5)) - 2.0);
        pr.grads.push_back(mmfuse_test::uniform_values(rng, pr.n, -scale, scale));
    }
    return pr;
}

template <class T>
tensor<T> to_tensor(const std::vector<double>& v) {
    tensor<T> t(extents{index_t(v.size())});
    for (size_t i = 0; i < v.size(); ++i)
        t[index_t(i)] = T(v[i]);
    return t;
}

/// PyTorch SGD, in double, written from the documentation's algorithm.
std::vector<double> ref_sgd(const problem& pr, const optim::sgd_options& o) {
    std::vector<double> p = pr.p0, buf(p.size());
    for (int s = 0; s < steps; ++s)
        for (size_t i = 0; i < p.size(); ++i) {
            double g = pr.grads[size_t(s)][i];
            if (o.weight_decay != 0) g += o.weight_decay * p[i];
            if (o.momentum != 0) {
                buf[i] = s == 0 ? g : o.momentum * buf[i] + (1 - o.dampening) * g;
                g = o.nesterov ? g + o.momentum * buf[i] : buf[i];
            }
            p[i] -= o.lr * g;
        }
    return p;
}

/// PyTorch Adam (decoupled = false) / AdamW (decoupled = true), in double.
std::vector<double> ref_adam(const problem& pr, double lr, double b1, double b2, double eps,
                             double wd, bool amsgrad, bool decoupled) {
    std::vector<double> p = pr.p0, m(p.size()), v(p.size()), vmax(p.size());
    for (int s = 0; s < steps; ++s) {
        const double t = s + 1;
        const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
        for (size_t i = 0; i < p.size(); ++i) {
            double g = pr.grads[size_t(s)][i];
            if (decoupled)
                p[i] *= 1 - lr * wd;
            else
                g += wd * p[i];
            m[i] = b1 * m[i] + (1 - b1) * g;
            v[i] = b2 * v[i] + (1 - b2) * g * g;
            vmax[i] = std::max(vmax[i], v[i]);
            const double vhat = (amsgrad ? vmax[i] : v[i]) / bc2;
            p[i] -= lr * (m[i] / bc1) / (std::sqrt(vhat) + eps);
        }
    }
    return p;
}

}  // namespace

TEMPLATE_TEST_CASE("sgd matches PyTorch's update over several steps", "[optim][sgd]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(401);
    const std::vector<optim::sgd_options> cases = {
        {.lr = 0.1},
        {.lr = 0.05, .weight_decay = 0.01},
        {.lr = 0.1, .momentum = 0.9},
        {.lr = 0.1, .momentum = 0.8, .dampening = 0.3, .weight_decay = 1e-3},
        {.lr = 0.02, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true},
    };
    for (const auto& o : cases) {
        const problem pr = make_problem(rng);
        tensor<T> p = to_tensor<T>(pr.p0);
        optim::sgd<T> opt(pr.n, o);
        for (int s = 0; s < steps; ++s)
            opt.step(p.ref(), to_tensor<T>(pr.grads[size_t(s)]).cref());
        INFO("lr " << o.lr << " momentum " << o.momentum << " dampening " << o.dampening << " wd "
                   << o.weight_decay << " nesterov " << o.nesterov);
        REQUIRE(rel_err(p, ref_sgd(pr, o)) <= tol<T>());
        REQUIRE(opt.step_count() == steps);
    }
}

TEMPLATE_TEST_CASE("sgd: the first momentum step copies the gradient (no dampening)",
                   "[optim][sgd]", float, double) {
    using T = TestType;
    tensor<T> p = to_tensor<T>({1.0, -2.0}), g = to_tensor<T>({0.5, 0.25});
    optim::sgd<T> opt(2, {.lr = 1.0, .momentum = 0.9, .dampening = 0.5});
    opt.step(p.ref(), g.cref());
    REQUIRE(opt.momentum_buffer().data()[0] == T(0.5));
    REQUIRE(p[0] == T(0.5));
    opt.step(p.ref(), g.cref());  // buf = 0.9 * 0.5 + 0.5 * 0.5 = 0.7
    REQUIRE(std::abs(double(opt.momentum_buffer().data()[0]) - 0.7) < 1e-6);
}

TEMPLATE_TEST_CASE("adam and adamw match PyTorch's update over several steps", "[optim][adam]",
                   float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(402);
    struct adam_case {
        double lr, b1, b2, eps, wd;
        bool amsgrad;
    };
    const std::vector<adam_case> cases = {
        {1e-3, 0.9, 0.999, 1e-8, 0.0, false}, {1e-2, 0.8, 0.99, 1e-6, 0.05, false},
        {5e-3, 0.9, 0.999, 1e-8, 0.0, true},  {1e-2, 0.5, 0.9, 1e-8, 0.1, true},
        {1e-2, 0.3, 0.95, 1e-8, 0.0, false},  // 1 - beta1 >= 0.5: PyTorch's other lerp form
    };
    for (const auto& c : cases) {
        const problem pr = make_problem(rng);
        tensor<T> pa = to_tensor<T>(pr.p0), pw = to_tensor<T>(pr.p0);
        optim::adam<T> adam(pr.n, {.lr = c.lr,
                                   .betas = {c.b1, c.b2},
                                   .eps = c.eps,
                                   .weight_decay = c.wd,
                                   .amsgrad = c.amsgrad});
        optim::adamw<T> adamw(pr.n, {.lr = c.lr,
                                     .betas = {c.b1, c.b2},
                                     .eps = c.eps,
                                     .weight_decay = c.wd,
                                     .amsgrad = c.amsgrad});
        for (int s = 0; s < steps; ++s) {
            const tensor<T> g = to_tensor<T>(pr.grads[size_t(s)]);
            adam.step(pa.ref(), g.cref());
            adamw.step(pw.ref(), g.cref());
        }
        INFO("lr " << c.lr << " betas " << c.b1 << ", " << c.b2 << " wd " << c.wd << " amsgrad "
                   << c.amsgrad);
        REQUIRE(rel_err(pa, ref_adam(pr, c.lr, c.b1, c.b2, c.eps, c.wd, c.amsgrad, false)) <=
                tol<T>());
        REQUIRE(rel_err(pw, ref_adam(pr, c.lr, c.b1, c.b2, c.eps, c.wd, c.amsgrad, true)) <=
                tol<T>());
        if (c.wd != 0) REQUIRE(rel_err(pa, values(pw)) > 0);  // L2 and decoupled decay differ
        REQUIRE(adam.step_count() == steps);
    }
    // Defaults are PyTorch's: AdamW decays by 1e-2, Adam not at all.
    REQUIRE(optim::adamw<T>(1).options().weight_decay == 1e-2);
    REQUIRE(optim::adam<T>(1).options().weight_decay == 0.0);
    REQUIRE(optim::adam<T>(1).options().betas.beta2 == 0.999);
}

TEST_CASE("optimisers step a model's flat buffers; padding stays zero", "[optim]") {
    using net = compose::seq<nn::linear<3, 5>, nn::relu<>, nn::linear<5, 2>>;
    nn::model<net> m(net{}, 7);
    optim::adamw opt(m, {.lr = 1e-2});
    static_assert(std::is_same_v<decltype(opt), optim::adamw<float>>);
    optim::sgd sgd_opt(m, {.lr = 0.1, .momentum = 0.9});
    const auto before =
        std::vector<float>(m.parameters().data(), m.parameters().data() + m.parameters().numel());
    auto rng = mmfuse_test::make_rng(403);
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k)
            m.gradients().data()[info.offset + k] = float(rng() % 100) / 50.0f - 1.0f;
    opt.step(m);
    sgd_opt.step(m);
    index_t changed = 0, padding = 0;
    std::vector<bool> is_param(size_t(m.parameters().numel()), false);
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k)
            is_param[size_t(info.offset + k)] = true;
    for (index_t i = 0; i < m.parameters().numel(); ++i) {
        if (is_param[size_t(i)])
            changed += m.parameters().data()[i] != before[size_t(i)];
        else {
            ++padding;
            REQUIRE(m.parameters().data()[i] == 0.0f);
        }
    }
    REQUIRE(padding > 0);
    REQUIRE(changed == m.parameter_count());
}

TEST_CASE("optimisers reject wrong buffers and invalid options", "[optim]") {
    optim::adamw<float> opt(37);
    tensor<float> p({36}), g({37}), big({4, 10});
    REQUIRE_THROWS_AS(opt.step(p.ref(), g.cref()), shape_error);
    REQUIRE_THROWS_WITH(opt.step(p.ref(), g.cref()),
                        Catch::Contains("optim::adamw") && Catch::Contains("parameter buffer") &&
                            Catch::Contains("37 elements") && Catch::Contains("(36)"));
    tensor<float> p37({37});
    REQUIRE_THROWS_WITH(opt.step(p37.ref(), g.cref().narrow(0, 0, 36)),
                        Catch::Contains("gradient buffer"));
    REQUIRE_THROWS_WITH(opt.step(p37.ref(), big.cref().narrow(0, 0, 4).narrow(1, 0, 9)),
                        Catch::Contains("strided") && Catch::Contains("(4, 9)"));
    REQUIRE_THROWS_AS(optim::adam<float>(3, {.betas = {1.0, 0.999}}), value_error);
    REQUIRE_THROWS_WITH(optim::adam<float>(3, {.betas = {0.9, 1.5}}),
                        Catch::Contains("beta2") && Catch::Contains("1.5"));
    REQUIRE_THROWS_WITH(optim::adamw<double>(3, {.lr = -1.0}), Catch::Contains("lr"));
    REQUIRE_THROWS_AS(optim::sgd<float>(3, {.nesterov = true}), value_error);
    REQUIRE_THROWS_AS(optim::sgd<float>(3, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                      value_error);
    REQUIRE_THROWS_AS(optim::sgd<float>(3, {.weight_decay = -0.1}), value_error);
    optim::sgd<float> s(3);
    REQUIRE_THROWS_AS(s.set_lr(std::numeric_limits<double>::quiet_NaN()), value_error);
}

TEMPLATE_TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[optim][clip]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(404);
    const index_t n = 1 + index_t(rng() % 100);
    const auto g0 = mmfuse_test::uniform_values(rng, n, -3.0, 3.0);
    for (const double norm_type : {2.0, 1.0, 3.0, std::numeric_limits<double>::infinity()}) {
        double total = 0;
        for (double v : g0)
            total = std::isinf(norm_type) ? std::max(total, std::abs(v))
                                          : total + std::pow(std::abs(v), norm_type);
        if (!std::isinf(norm_type)) total = std::pow(total, 1.0 / norm_type);
        for (const double max_norm : {total / 4, total * 2}) {
            tensor<T> g = to_tensor<T>(g0);
            const double got = optim::clip_grad_norm(g.ref(), max_norm, norm_type);
            REQUIRE(std::abs(got - total) <= tol<T>() * total);
            const double coef = std::min(1.0, max_norm / (total + 1e-6));
            std::vector<double> ref = g0;
            for (double& v : ref)
                v *= coef;
            INFO("norm_type " << norm_type << " max_norm " << max_norm);
            REQUIRE(rel_err(g, ref) <= tol<T>());
        }
    }
    tensor<T> g({3});
    REQUIRE_THROWS_AS(optim::clip_grad_norm(g.ref(), 1.0, 0.0), value_error);
}

TEST_CASE("cosine_with_warmup: linear warm-up, half cosine, floor", "[optim][schedule]") {
    auto rng = mmfuse_test::make_rng(405);
    const double base = 1e-3 * (1 + double(rng() % 9)), min = base / 100;
    const index_t w = 1 + index_t(rng() % 20), total = w + 10 + index_t(rng() % 200);
    const optim::cosine_with_warmup sched(base, w, total, min);
    REQUIRE(sched(0) == 0.0);
    REQUIRE(std::abs(sched(w / 2) - base * double(w / 2) / double(w)) < 1e-15);
    REQUIRE(std::abs(sched(w) - base) < 1e-15);
    for (index_t s = w; s < total; ++s) {
        const double pi = std::numbers::pi;
        const double ref =
            min + (base - min) * 0.5 * (1 + std::cos(pi * double(s - w) / double(total - w)));
        REQUIRE(std::abs(sched(s) - ref) < 1e-15);
        REQUIRE(sched(s + 1) <= sched(s));
    }
    REQUIRE(sched(total) == min);
    REQUIRE(sched(10 * total) == min);
    REQUIRE(optim::cosine_with_warmup(1.0, 0, 10)(0) == 1.0);
    REQUIRE_THROWS_AS(optim::cosine_with_warmup(1.0, 11, 10), value_error);
    REQUIRE_THROWS_WITH(optim::cosine_with_warmup(1.0, 1, 10, 2.0),
                        Catch::Contains("min_lr") && Catch::Contains("2.0"));
}
