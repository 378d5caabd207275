// Parameter initialisers (core/init.hpp) against torch.nn.init's closed forms: fans, gains,
// exact bounds of the uniform variants, empirical moments against the closed-form std with
// tolerances from the sample size (6 standard errors, the standard error itself estimated
// from the sample's fourth moment), truncated-normal support and moments, determinism and
// errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

using mmfuse_test::moments;
using mmfuse_test::sample_moments;

// Mean within 6 sd of mu, and E(x - mu)^2 within 6 standard errors of var (the standard
// error of a mean of (x - mu)^2 is sqrt(Var((x-mu)^2) / n), estimated from the sample).
void require_moments(const moments& s, double mu, double var) {
    CAPTURE(s.n, s.mean, mu, s.m2, var, s.m4);
    REQUIRE(std::abs(s.mean - mu) <= 6.0 * std::sqrt(var / s.n));
    REQUIRE(std::abs(s.m2 - var) <= 6.0 * std::sqrt(std::max(s.m4 - s.m2 * s.m2, 0.0) / s.n));
}

// Max |w| <= bound (up to a 1e-12 relative difference in how the bound itself is rounded),
// and max |w| >= bound (1 - 1e-3): for n >= 1e5 i.i.d. uniforms the chance of missing that
// is (1 - 1e-3)^n < e^-100.
void require_uniform_bound(const moments& s, double bound) {
    CAPTURE(s.max_abs, bound);
    REQUIRE(s.max_abs <= bound * (1.0 + 1e-12));
    REQUIRE(s.max_abs >= bound * (1.0 - 1e-3));
}

template <class T>
tensor<T> poisoned(const extents& e) {
    tensor<T> t(e);
    mmfuse_test::poison(t);
    return t;
}

double phi(double x) {
    return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi);
}
double Phi(double x) {
    return 0.5 * std::erfc(-x / std::sqrt(2.0));
}

}  // namespace

TEST_CASE("init: fan_in / fan_out as torch.nn.init._calculate_fan_in_and_fan_out", "[init]") {
    auto rng = mmfuse_test::make_rng(11);
    const index_t o = 1 + index_t(rng() % 50), i = 1 + index_t(rng() % 50);
    const index_t k1 = 1 + index_t(rng() % 7), k2 = 1 + index_t(rng() % 7);
    const init::fans f2 = init::calculate_fan_in_and_fan_out(extents{o, i});
    REQUIRE(f2.fan_in == i);
    REQUIRE(f2.fan_out == o);
    const init::fans f4 = init::calculate_fan_in_and_fan_out(extents{o, i, k1, k2});
    REQUIRE(f4.fan_in == i * k1 * k2);
    REQUIRE(f4.fan_out == o * k1 * k2);
    const init::fans f3 = init::calculate_fan_in_and_fan_out(extents{o, i, k1});
    REQUIRE(f3.fan_in == i * k1);
    REQUIRE(f3.fan_out == o * k1);
    REQUIRE_THROWS_AS(init::calculate_fan_in_and_fan_out(extents{o}), shape_error);
    REQUIRE_THROWS_WITH(init::calculate_fan_in_and_fan_out(extents{7}),
                        Catch::Contains("rank >= 2") && Catch::Contains("(7)"));
    REQUIRE_THROWS_AS(init::calculate_fan_in_and_fan_out(extents{}), shape_error);
}

TEST_CASE("init: calculate_gain values", "[init]") {
    using init::nonlinearity;
    auto rng = mmfuse_test::make_rng(12);
    REQUIRE(init::calculate_gain(nonlinearity::linear) == 1.0);
    REQUIRE(init::calculate_gain(nonlinearity::conv) == 1.0);
    REQUIRE(init::calculate_gain(nonlinearity::sigmoid) == 1.0);
    REQUIRE(init::calculate_gain(nonlinearity::tanh) == Approx(5.0 / 3.0).epsilon(1e-15));
    REQUIRE(init::calculate_gain(nonlinearity::relu) == Approx(std::sqrt(2.0)).epsilon(1e-15));
    REQUIRE(init::calculate_gain(nonlinearity::selu) == 0.75);
    // leaky_relu: slope 0.01 when not given; sqrt(2 / (1 + slope^2)).
    REQUIRE(init::calculate_gain(nonlinearity::leaky_relu) ==
            Approx(std::sqrt(2.0 / 1.0001)).epsilon(1e-15));
    const double slope = double(rng() % 1000) / 500.0;
    REQUIRE(init::calculate_gain(nonlinearity::leaky_relu, slope) ==
            Approx(std::sqrt(2.0 / (1.0 + slope * slope))).epsilon(1e-15));
    REQUIRE(init::calculate_gain(nonlinearity::leaky_relu, 0.0) ==
            Approx(std::sqrt(2.0)).epsilon(1e-15));
    REQUIRE(init::calculate_gain(nonlinearity::relu, 3.0) ==
            Approx(std::sqrt(2.0)).epsilon(1e-15));  // param ignored
}

TEMPLATE_TEST_CASE("init: xavier_uniform / xavier_normal", "[init]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(13);
    const double gain = 0.5 + double(rng() % 100) / 50.0;
    SECTION("2-D uniform: |w| <= gain sqrt(6 / (fan_in + fan_out)), std = bound / sqrt 3") {
        const index_t o = 300 + index_t(rng() % 100), i = 400 + index_t(rng() % 100);
        auto w = poisoned<T>({o, i});
        philox_generator g(rng());
        init::xavier_uniform{.gain = gain}(g, w.ref());
        const double bound = gain * std::sqrt(6.0 / double(o + i));
        const moments s = sample_moments(w, 0.0);
        require_uniform_bound(s, bound);
        require_moments(s, 0.0, bound * bound / 3.0);
    }
    SECTION("4-D normal: std = gain sqrt(2 / (fan_in + fan_out)), fans include receptive") {
        const index_t o = 64, i = 32 + index_t(rng() % 16), kh = 3, kw = 5;
        auto w = poisoned<T>({o, i, kh, kw});
        philox_generator g(rng());
        init::xavier_normal{.gain = gain}(g, w.ref());
        const double sd = gain * std::sqrt(2.0 / double((o + i) * kh * kw));
        require_moments(sample_moments(w, 0.0), 0.0, sd * sd);
    }
    SECTION("rank 1 throws shape_error naming the shape") {
        auto b = poisoned<T>({10});
        philox_generator g(1);
        REQUIRE_THROWS_AS(init::xavier_uniform{}(g, b.ref()), shape_error);
        REQUIRE_THROWS_WITH(init::xavier_normal{}(g, b.ref()), Catch::Contains("xavier_normal") &&
                                                                   Catch::Contains("rank >= 2") &&
                                                                   Catch::Contains("(10)"));
        REQUIRE(g.offset() == 0);
    }
}

TEMPLATE_TEST_CASE("init: kaiming_uniform / kaiming_normal", "[init]", float, double) {
    using T = TestType;
    using init::fan_mode, init::nonlinearity;
    auto rng = mmfuse_test::make_rng(14);
    const index_t o = 200 + index_t(rng() % 50), i = 30 + index_t(rng() % 20), k = 3;
    const double fan_in = double(i * k * k), fan_out = double(o * k * k);
    SECTION("defaults: a = 0, fan_in, leaky_relu -> bound sqrt(6 / fan_in)") {
        auto w = poisoned<T>({o, i, k, k});
        philox_generator g(rng());
        init::kaiming_uniform{}(g, w.ref());
        const double bound = std::sqrt(6.0 / fan_in);
        const moments s = sample_moments(w, 0.0);
        require_uniform_bound(s, bound);
        require_moments(s, 0.0, bound * bound / 3.0);
    }
    SECTION("leaky_relu slope a, fan_out: bound sqrt(3) sqrt(2/(1+a^2)) / sqrt(fan_out)") {
        const double a = double(rng() % 100) / 20.0;
        auto w = poisoned<T>({o, i, k, k});
        philox_generator g(rng());
        init::kaiming_uniform{.a = a, .mode = fan_mode::fan_out}(g, w.ref());
        const double bound = std::sqrt(3.0) * std::sqrt(2.0 / (1.0 + a * a)) / std::sqrt(fan_out);
        require_uniform_bound(sample_moments(w, 0.0), bound);
    }
    SECTION("normal, relu, fan_out: std sqrt(2 / fan_out); tanh, fan_in: (5/3)/sqrt(fan_in)") {
        auto w = poisoned<T>({o, i, k, k});
        philox_generator g(rng());
        init::kaiming_normal{.mode = fan_mode::fan_out, .nonlinearity = nonlinearity::relu}(
            g, w.ref());
        require_moments(sample_moments(w, 0.0), 0.0, 2.0 / fan_out);
        init::kaiming_normal{.nonlinearity = nonlinearity::tanh}(g, w.ref());
        const double sd = (5.0 / 3.0) / std::sqrt(fan_in);
        require_moments(sample_moments(w, 0.0), 0.0, sd * sd);
    }
    SECTION("rank 1 throws; zero-element weights are a no-op that draws nothing") {
        auto b = poisoned<T>({5});
        philox_generator g(2);
        REQUIRE_THROWS_WITH(init::kaiming_uniform{}(g, b.ref()),
                            Catch::Contains("kaiming_uniform") && Catch::Contains("(5)"));
        tensor<T> z({0, 4});
        init::kaiming_normal{}(g, z.ref());
        init::xavier_uniform{}(g, z.ref());
        REQUIRE(g.offset() == 0);
    }
}

TEMPLATE_TEST_CASE("init: linear_default = nn.Linear.reset_parameters", "[init]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(15);
    const index_t o = 300 + index_t(rng() % 50), i = 50 + index_t(rng() % 500);
    auto w = poisoned<T>({o, i});
    auto b = poisoned<T>({o});
    const std::uint64_t seed = rng();
    philox_generator g(seed);
    init::linear_default{}(g, w.ref(), b.ref());
    const double bound = 1.0 / std::sqrt(double(i));
    const moments sw = sample_moments(w, 0.0);
    require_uniform_bound(sw, bound);
    require_moments(sw, 0.0, bound * bound / 3.0);
    const moments sb = sample_moments(b, 0.0);
    REQUIRE(sb.max_abs <= bound * (1.0 + 1e-12));
    REQUIRE(sb.max_abs > 0.0);
    // PyTorch order: weight first, then bias, from one stream.
    REQUIRE(g.offset() == uniform_words<T>(std::uint64_t(o * i + o)));
    philox_generator g2(seed);
    auto w2 = poisoned<T>({o, i});
    init::linear_default{}(g2, w2.ref());
    for (index_t k = 0; k < w.numel(); ++k)
        REQUIRE(w2[k] == w[k]);
    // Bias must be (out,): checked before anything is drawn.
    auto bad = poisoned<T>({o + 1});
    philox_generator g3(seed);
    REQUIRE_THROWS_AS(init::linear_default{}(g3, w.ref(), bad.ref()), shape_error);
    REQUIRE_THROWS_WITH(init::linear_default{}(g3, w.ref(), bad.ref()),
                        Catch::Contains("(" + std::to_string(o) + ")") &&
                            Catch::Contains("(" + std::to_string(o + 1) + ")"));
    REQUIRE(g3.offset() == 0);
}

TEST_CASE("init: erfinv inverts erf to double precision", "[init]") {
    auto rng = mmfuse_test::make_rng(16);
    REQUIRE(init::detail::erfinv(0.5) == Approx(0.4769362762044699).epsilon(1e-15));
    REQUIRE(init::detail::erfinv(-0.9) == Approx(-1.1630871536766743).epsilon(1e-15));
    REQUIRE(init::detail::erfinv(0.0) == 0.0);
    REQUIRE(std::isinf(init::detail::erfinv(1.0)));
    REQUIRE(init::detail::erfinv(-1.0) < 0.0);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (int k = 0; k < 20000; ++k) {
        const double y =
            k < 10000 ? u(rng) : std::copysign(1.0 - std::ldexp(u(rng) + 1.0, -(k % 50)), u(rng));
        if (!(std::abs(y) < 1.0)) continue;
        const double x = init::detail::erfinv(y);
        CAPTURE(y, x);
        // Compare in the better-conditioned of erf / erfc.
        // Rounding x itself moves erfc(x) by a relative 2 x^2 eps, so allow (8 + 4 x^2) eps.
        const double eps = std::numeric_limits<double>::epsilon();
        if (std::abs(y) < 0.5)
            REQUIRE(std::abs(std::erf(x) - y) <= 8 * eps * std::abs(y));
        else
            REQUIRE(std::abs(std::erfc(std::abs(x)) - (1.0 - std::abs(y))) <=
                    (8.0 + 4.0 * x * x) * eps * (1.0 - std::abs(y)));
    }
}

TEMPLATE_TEST_CASE("init: trunc_normal stays within a..b with the truncated-normal moments",
                   "[init]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(17);
    struct cfg {
        double mean, std, a, b;
    };
    const cfg cases[] = {
        {0.0, 1.0, -2.0, 2.0},   // PyTorch defaults
        {0.0, 0.02, -2.0, 2.0},  // ViT: effectively N(0, 0.02^2)
        {0.5, 0.3, 0.0, 1.0},    // lopsided
        {double(rng() % 100) / 50.0 - 1.0, 0.2 + double(rng() % 100) / 100.0, -0.5, 1.5},
        {0.0, 1.0, 1.0, 3.0},  // one tail
    };
    for (const cfg& c : cases) {
        CAPTURE(c.mean, c.std, c.a, c.b);
        auto w = poisoned<T>({300, 400});
        philox_generator g(rng());
        init::trunc_normal{.mean = c.mean, .std = c.std, .a = c.a, .b = c.b}(g, w.ref());
        REQUIRE(g.offset() == uniform_words<T>(std::uint64_t(w.numel())));
        const moments s0 = sample_moments(w, 0.0);
        REQUIRE(s0.min >= c.a);
        REQUIRE(s0.max <= c.b);
        // Truncated-normal mean and variance (alpha, beta standardised bounds, Z = Phi(b)-Phi(a)).
        const double al = (c.a - c.mean) / c.std, be = (c.b - c.mean) / c.std;
        const double Z = Phi(be) - Phi(al);
        const double mt = c.mean + c.std * (phi(al) - phi(be)) / Z;
        const double vt = c.std * c.std *
                          (1.0 + (al * phi(al) - be * phi(be)) / Z -
                           ((phi(al) - phi(be)) / Z) * ((phi(al) - phi(be)) / Z));
        require_moments(sample_moments(w, mt), mt, vt);
    }
}

TEST_CASE("init: uniform, normal, constant, zeros, ones on strided views", "[init]") {
    auto rng = mmfuse_test::make_rng(18);
    const std::uint64_t seed = rng();
    tensor<double> buf({200, 1002});
    auto v = buf.ref().narrow(1, 1, 1000).transpose(0, 1);  // (1000, 200), strided
    mmfuse_test::poison(buf);
    philox_generator g(seed);
    const double lo = -0.3 - double(rng() % 10), hi = 0.7 + double(rng() % 10);
    init::uniform{.lo = lo, .hi = hi}(g, v);
    moments s;
    {
        tensor<double> copy({1000, 200});
        for (index_t i = 0; i < 1000; ++i)
            for (index_t j = 0; j < 200; ++j)
                copy(i, j) = v(i, j);
        s = sample_moments(copy, 0.5 * (lo + hi));
    }
    REQUIRE(s.min >= lo);
    REQUIRE(s.max < hi);
    require_moments(s, 0.5 * (lo + hi), (hi - lo) * (hi - lo) / 12.0);
    for (index_t r = 0; r < 200; ++r) {  // columns 0 and 1001 untouched
        REQUIRE(std::isnan(buf(r, 0)));
        REQUIRE(std::isnan(buf(r, 1001)));
    }

    tensor<float> w({400, 500});
    mmfuse_test::poison(w);
    init::normal{.mean = 2.0, .std = 0.5}(g, w.ref());
    require_moments(sample_moments(w, 2.0), 2.0, 0.25);

    const std::uint64_t before = g.offset();
    mmfuse_test::poison(buf);
    init::constant{.value = 0.125}(g, v);
    for (index_t i = 0; i < 1000; ++i)
        for (index_t j = 0; j < 200; ++j)
            REQUIRE(v(i, j) == 0.125);
    REQUIRE(std::isnan(buf(0, 0)));
    init::zeros{}(g, v);
    for (index_t i = 0; i < 1000; ++i)
        REQUIRE(v(i, 7) == 0.0);
    init::ones{}(g, w.ref());
    for (index_t i = 0; i < w.numel(); ++i)
        REQUIRE(w[i] == 1.0f);
    REQUIRE(g.offset() == before);  // constants draw nothing

    REQUIRE_THROWS_AS((init::uniform{.lo = 1.0, .hi = 0.0}(g, w.ref())), value_error);
    REQUIRE_THROWS_AS(init::normal{.std = -1.0}(g, w.ref()), value_error);
    REQUIRE_THROWS_AS((init::trunc_normal{.a = 1.0, .b = -1.0}(g, w.ref())), value_error);
    REQUIRE_THROWS_WITH((init::trunc_normal{.std = 0.0}(g, w.ref())), Catch::Contains("std > 0"));
}

TEST_CASE("init: same seed gives the same parameters, another seed others", "[init]") {
    auto rng = mmfuse_test::make_rng(19);
    const std::uint64_t seed = rng();
    auto run = [&](std::uint64_t s) {
        tensor<float> w1({64, 32}), w2({16, 8, 3, 3}), w3({1000});
        philox_generator g(s);
        init::xavier_uniform{}(g, w1.ref());
        init::kaiming_normal{}(g, w2.ref());
        init::trunc_normal{.std = 0.02}(g, w3.ref());
        REQUIRE(g.offset() == uniform_words<float>(64 * 32) + normal_words<float>(16 * 8 * 9) +
                                  uniform_words<float>(1000));
        struct out {
            tensor<float> a, b, c;
        };
        return out{std::move(w1), std::move(w2), std::move(w3)};
    };
    const auto x = run(seed), y = run(seed), z = run(seed + 1);
    auto count_equal = [](const tensor<float>& p, const tensor<float>& q) {
        index_t n = 0;
        for (index_t i = 0; i < p.numel(); ++i)
            n += p[i] == q[i] ? 1 : 0;
        return n;
    };
    REQUIRE(count_equal(x.a, y.a) == x.a.numel());
    REQUIRE(count_equal(x.b, y.b) == x.b.numel());
    REQUIRE(count_equal(x.c, y.c) == x.c.numel());
    REQUIRE(count_equal(x.a, z.a) < 8);  // float grid collisions only
    REQUIRE(count_equal(x.b, z.b) < 8);
    REQUIRE(count_equal(x.c, z.c) < 8);
}
