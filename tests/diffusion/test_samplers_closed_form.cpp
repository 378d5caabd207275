// Closed-form checks of the diffusion samplers (no fixtures): the exact Gaussian denoiser
// (test_samplers_support.hpp) has a known probability-flow ODE endpoint and a known
// sampling distribution, so every deterministic sampler must converge to the endpoint at its
// order, every stochastic one must land on the data distribution, and Philox noise must
// replay bit for bit.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "support/test_util.hpp"
#include "test_samplers_support.hpp"

namespace {

using namespace mmfuse;
using namespace mmfuse::diffusion;
using mmfuse_test::gaussian_data;

gaussian_data make_gaussian_data(std::mt19937_64& rng, std::size_t n) {
    gaussian_data g;
    const auto mu = mmfuse_test::uniform_values(rng, index_t(n), -1.0, 1.0);
    const auto s = mmfuse_test::uniform_values(rng, index_t(n), 0.4, 1.5);
    g.mu = mu;
    g.s = s;
    return g;
}

struct ve_denoiser_fn {
    const gaussian_data* g;
    int* calls;
    void operator()(tensor_ref<const double> x, double sigma, tensor_ref<double> out) const {
        ++*calls;
        g->ve_denoise(x, sigma, out);
    }
};

/// Karras sigmas (rho = 7) from sigma_max down to sigma_min, then 0.
std::vector<double> karras(int n, double lo, double hi) {
    return edm_sigmas(n, lo, hi);
}

/// max_i |x_i - e_i| / |e_i - mu_i| after sampling from x (at sigmas[0]) with `method`, where
/// e_i is the exact ODE endpoint. mu_i is a fixed point of the Gaussian ODE and every step of
/// these samplers is affine in x - mu, so this relative error depends on the sampler, the
/// step count and s_i alone, not on the drawn start: the bound below cannot be missed by an
/// unlucky draw, only by a wrong update rule.
double endpoint_error(k_method method, int steps, const gaussian_data& g,
                      const std::vector<double>& start, int* calls) {
    auto& s = backend::default_stream();
    const std::vector<double> sig = karras(steps, 0.002, 80.0);
    k_sampler<double> sampler(s, method, sig);
    tensor<double> x(extents{index_t(start.size())});
    std::copy(start.begin(), start.end(), x.data());
    ve_denoiser_fn d{&g, calls};
    sampler.sample(d, x.ref());
    double worst = 0.0;
    for (std::size_t i = 0; i < start.size(); ++i) {
        const double e = g.ode_endpoint(i, start[i], sig[0]);
        worst = std::max(worst, std::abs(x[index_t(i)] - e) / std::abs(e - g.mu[i]));
    }
    return worst;
}

}  // namespace

TEST_CASE("k-diffusion deterministic samplers converge to the exact ODE endpoint at their order",
          "[diffusion][samplers]") {
    auto rng = mmfuse_test::make_rng(1);
    const std::size_t n = 16;
    const gaussian_data g = make_gaussian_data(rng, n);
    std::vector<double> start(n);
    std::normal_distribution<double> normal;
    for (std::size_t i = 0; i < n; ++i) {
        double z = normal(rng);
        while (std::abs(z) < 0.1) z = normal(rng);  // keeps e_i - mu_i clear of rounding
        start[i] = g.mu[i] + std::sqrt(g.s[i] * g.s[i] + 80.0 * 80.0) * z;
    }
    struct expect {
        k_method m;
        double order;  // minimum observed error ratio between N and 2N steps is 2^order / slack
        int calls_per_n;  // calls = calls_per_n * N - extra
        int extra;
    };
    const expect cases[] = {{k_method::euler, 1, 1, 0},  {k_method::heun, 2, 2, 1},
                            {k_method::dpm_2, 2, 2, 1},  {k_method::dpmpp_2m, 2, 1, 0},
                            {k_method::lms, 2, 1, 0}};
    for (const expect& c : cases) {
        int calls = 0;
        const double e1 = endpoint_error(c.m, 24, g, start, &calls);
        CHECK(calls == c.calls_per_n * 24 - c.extra);
        calls = 0;
        const double e2 = endpoint_error(c.m, 48, g, start, &calls);
        INFO("method " << int(c.m) << " error(24) " << e1 << " error(48) " << e2);
        CHECK(std::isfinite(e1));
        CHECK(e2 < e1);
        // Convergence: halving the step size shrinks the error by ~2^order.
        CHECK(e1 / e2 > std::pow(2.0, c.order) * 0.6);
        // Relative endpoint errors at 48 steps over s in [0.4, 1.5] (seeds 1-20): Euler
        // 0.057-0.060, the second-order methods 0.0019-0.0075.
        CHECK(e2 < (c.m == k_method::euler ? 0.075 : 0.01));
    }
}

TEST_CASE("k-diffusion ancestral and churned samplers land on the data distribution",
          "[diffusion][samplers]") {
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(2);
    const double mu = std::uniform_real_distribution<double>(-1, 1)(rng);
    const double sd = std::uniform_real_distribution<double>(0.5, 1.5)(rng);
    const gaussian_data g{{mu}, {sd}};
    const index_t n = 40000;
    philox_generator gen(rng());
    // Enough steps that the discretisation bias of the variance is below the tolerance.
    const std::vector<double> sig = karras(400, 0.01, 40.0);
    struct stochastic {
        k_method m;
        k_options o;
    };
    const stochastic cases[] = {
        {k_method::euler_ancestral, {}},
        {k_method::dpmpp_2s_ancestral, {}},
        {k_method::heun, {.s_churn = 20.0}},
        {k_method::dpm_2, {.s_churn = 40.0, .s_tmin = 0.05, .s_tmax = 30.0}},
    };
    for (const stochastic& c : cases) {
        tensor<double> x(extents{n});
        fill_normal(gen, x.ref(), mu, std::sqrt(sd * sd + sig[0] * sig[0]));
        k_sampler<double> sampler(s, c.m, sig, c.o);
        int calls = 0;
        ve_denoiser_fn d{&g, &calls};
        philox_noise<double> noise(gen);
        sampler.sample(d, x.ref(), noise);
        const auto m = mmfuse_test::sample_moments(x, mu);
        INFO("method " << int(c.m) << " mean " << m.mean << " var " << m.m2 << " want " << mu
                       << ", " << sd * sd);
        // 40000 draws: the mean's standard error is sd / 200; the variance's ~ sd^2 / 140.
        CHECK(std::abs(m.mean - mu) < 5.0 * sd / 200.0 + 0.01 * sd);
        CHECK(std::abs(m.m2 / (sd * sd) - 1.0) < 0.05);
    }
}

TEST_CASE("Philox noise replays a stochastic trajectory bit for bit", "[diffusion][samplers]") {
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(3);
    const gaussian_data g = make_gaussian_data(rng, 12);
    const std::vector<double> sig = karras(10, 0.02, 20.0);
    const std::uint64_t seed = rng();
    const auto x0 = mmfuse_test::random_tensor<double>(extents{3, 12}, rng, -20.0, 20.0);
    for (k_method m : {k_method::euler_ancestral, k_method::dpmpp_2s_ancestral, k_method::heun}) {
        const k_options o{.s_churn = 5.0};
        // Run 1 and 2: the same Philox state. Run 3: the same numbers supplied explicitly
        // (drawn with fill_normal from the same stream positions the sampler would take).
        tensor<double> a = x0.clone(), b = x0.clone(), c = x0.clone(), d = x0.clone();
        int calls = 0;
        ve_denoiser_fn den{&g, &calls};
        {
            philox_generator gen(seed, 7);
            philox_noise<double> noise(gen);
            k_sampler<double>(s, m, sig, o).sample(den, a.ref(), noise);
        }
        {
            philox_generator gen(seed, 7);
            philox_noise<double> noise(gen);
            k_sampler<double>(s, m, sig, o).sample(den, b.ref(), noise);
        }
        std::vector<tensor<double>> draws;
        {
            philox_generator gen(seed, 7);
            for (int k = 0; k < 10; ++k) {
                draws.emplace_back(x0.extents());
                fill_normal(gen, draws.back().ref(), 0.0, 1.0);
            }
            std::vector<tensor_ref<const double>> views;
            for (auto& t : draws)
                views.push_back(t.cref());
            sequence_noise<double> noise(views);
            k_sampler<double>(s, m, sig, o).sample(den, c.ref(), noise);
            CHECK(noise.used() == (m == k_method::heun ? 10u : 9u));
        }
        {
            philox_generator gen(seed, 8);  // another subsequence: another trajectory
            philox_noise<double> noise(gen);
            k_sampler<double>(s, m, sig, o).sample(den, d.ref(), noise);
        }
        INFO("method " << int(m));
        CHECK(std::equal(a.data(), a.data() + a.numel(), b.data()));
        CHECK(std::equal(a.data(), a.data() + a.numel(), c.data()));
        CHECK(mmfuse_test::max_rel_error(std::span<const double>(a.data(), 36),
                                         std::span<const double>(d.data(), 36)) > 1e-3);
    }
}

TEST_CASE("k_sampler rejects bad sigma sequences and out-of-order steps", "[diffusion][samplers]") {
    auto& s = backend::default_stream();
    const std::vector<double> rising{1.0, 2.0, 0.0};
    CHECK_THROWS_AS(k_sampler<double>(s, k_method::euler, rising), value_error);
    const std::vector<double> one{1.0};
    CHECK_THROWS_AS(k_sampler<double>(s, k_method::euler, one), value_error);
    const std::vector<double> ok{2.0, 1.0, 0.0};
    CHECK_THROWS_AS(k_sampler<double>(s, k_method::lms, ok, {.lms_order = 5}), value_error);
    k_sampler<double> sampler(s, k_method::euler_ancestral, ok);
    const gaussian_data g{{0.0}, {1.0}};
    int calls = 0;
    ve_denoiser_fn d{&g, &calls};
    tensor<double> x(extents{4});
    x.fill(1.0);
    CHECK_THROWS_AS(sampler.step(d, 1, x.ref()), value_error);   // out of order
    CHECK_THROWS_AS(sampler.step(d, 0, x.ref()), value_error);   // needs noise (sigma' > 0)
}

TEST_CASE("vp_model_denoiser turns an exact VP model into the exact sigma-space denoiser",
          "[diffusion][samplers]") {
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(4);
    const gaussian_data g = make_gaussian_data(rng, 6);
    const noise_schedule sched({.beta_start = 0.00085, .beta_end = 0.012,
                                .betas = beta_schedule::scaled_linear, .float32_tables = false});
    for (prediction_type p :
         {prediction_type::epsilon, prediction_type::v_prediction, prediction_type::sample}) {
        // The VP model at timestep t (integer: the table's own level).
        std::vector<double> seen;
        auto model = [&](tensor_ref<const double> x, double t, tensor_ref<double> out) {
            seen.push_back(t);
            g.vp_predict(x, sched.alphas_cumprod()[std::size_t(std::lround(t))], p, out);
        };
        vp_model_denoiser<double, decltype(model)> den(s, model, sched, p);
        for (int t : {0, 17, 500, 999}) {
            const double sigma = sched.sigmas()[std::size_t(t)];
            const auto x = mmfuse_test::random_tensor<double>(extents{2, 6}, rng, -3.0, 3.0);
            tensor<double> got(x.extents()), want(x.extents());
            mmfuse_test::poison(got);
            den(x.cref(), sigma, got.ref());
            g.ve_denoise(x.cref(), sigma, want.ref());
            INFO("prediction " << int(p) << " t " << t);
            CHECK(std::abs(seen.back() - t) < 1e-9);
            CHECK(mmfuse_test::max_rel_error(std::span<const double>(got.data(), 12),
                                             std::span<const double>(want.data(), 12)) < 1e-10);
        }
    }
}
