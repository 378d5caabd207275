// Bad input and failure behaviour of the diffusion samplers: a rejected set_timesteps leaves
// the sampler as it was (strong guarantee), eta = 0 ancestral k-samplers run without a noise
// source, out-of-range arguments and unsupported settings are refused with value_error.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "mmfuse/diffusion/samplers_multistep.hpp"
#include "support/test_util.hpp"

namespace {

using namespace mmfuse;
using namespace mmfuse::diffusion;

tensor<double> random_tensor(std::mt19937_64& rng, index_t n) {
    tensor<double> t(extents{n});
    const std::vector<double> v = mmfuse_test::uniform_values(rng, n, -1.0, 1.0);
    for (index_t i = 0; i < n; ++i) t[i] = v[std::size_t(i)];
    return t;
}

/// Sets 10 steps, tries `bad` (which must throw value_error) and checks that the grid stayed.
template <class S>
void check_rejected_keeps_grid(S& s, int bad) {
    s.set_timesteps(10);
    const std::vector<double> before(s.timesteps().begin(), s.timesteps().end());
    const int calls = s.calls();
    CHECK_THROWS_AS(s.set_timesteps(bad), value_error);
    CHECK(s.calls() == calls);
    CHECK(std::vector<double>(s.timesteps().begin(), s.timesteps().end()) == before);
}

/// Runs every call of `s` with model output `out` from x, returns the final x.
template <class S>
tensor<double> run_all(S& s, const tensor<double>& out, const tensor<double>& x0) {
    tensor<double> x(x0.extents());
    for (index_t i = 0; i < x.numel(); ++i) x[i] = x0[i];
    for (int i = 0; i < s.calls(); ++i) s.step(i, out.cref(), x.ref());
    return x;
}

void check_same(const tensor<double>& a, const tensor<double>& b) {
    for (index_t i = 0; i < a.numel(); ++i) {
        REQUIRE(std::isfinite(a[i]));
        CHECK(a[i] == b[i]);
    }
}

}  // namespace

TEST_CASE("diffusion samplers keep their grid when set_timesteps throws", "[diffusion]") {
    auto& st = backend::default_stream();
    schedule_config c;
    c.float32_tables = false;
    const noise_schedule sch(c);
    {
        auto s = ddpm_sampler<double>(st, sch);
        check_rejected_keeps_grid(s, 0);
    }
    {
        auto s = ddim_sampler<double>(st, sch);
        check_rejected_keeps_grid(s, 0);
    }
    {
        euler_sampler<double> s(st, sch);
        check_rejected_keeps_grid(s, 0);
    }
    {
        lms_sampler<double> s(st, sch);
        check_rejected_keeps_grid(s, 0);
    }
    {
        heun_sampler<double> s(st, sch);
        check_rejected_keeps_grid(s, 0);
    }
    {
        auto s = dpm_solver_sampler<double>(st, sch);
        check_rejected_keeps_grid(s, 0);
        check_rejected_keeps_grid(s, 1000);  // N+1 grid: at most T - 1 steps
    }
    {
        auto s = unipc_sampler<double>(st, sch);
        check_rejected_keeps_grid(s, 1000);
    }
    {
        pndm_sampler<double> s(st, sch);
        check_rejected_keeps_grid(s, 3);  // the PRK warm-up needs 4 steps
        check_rejected_keeps_grid(s, 0);
    }
}

TEST_CASE("diffusion DDIM and PNDM step correctly after a rejected set_timesteps",
          "[diffusion]") {
    auto rng = mmfuse_test::make_rng();
    auto& st = backend::default_stream();
    schedule_config c;
    c.float32_tables = false;
    const noise_schedule sch(c);
    const tensor<double> x = random_tensor(rng, 6), out = random_tensor(rng, 6);
    {
        auto fresh = ddim_sampler<double>(st, sch);
        fresh.set_timesteps(20);
        auto s = ddim_sampler<double>(st, sch);
        s.set_timesteps(20);
        CHECK_THROWS_AS(s.set_timesteps(0), value_error);  // used to divide by 0 in step
        check_same(run_all(s, out, x), run_all(fresh, out, x));
    }
    {
        pndm_sampler<double> fresh(st, sch);
        fresh.set_timesteps(20);
        pndm_sampler<double> s(st, sch);
        s.set_timesteps(20);
        CHECK_THROWS_AS(s.set_timesteps(3), value_error);  // used to leave ratio = T / 3
        REQUIRE(s.calls() == fresh.calls());
        check_same(run_all(s, out, x), run_all(fresh, out, x));
    }
}

TEST_CASE("diffusion k ancestral samplers with eta 0 need no noise source", "[diffusion]") {
    auto rng = mmfuse_test::make_rng();
    auto& st = backend::default_stream();
    const std::vector<double> sig{3.0, 1.5, 0.6, 0.0};
    const tensor<double> x0 = random_tensor(rng, 5);
    const double scale = mmfuse_test::uniform_values(rng, 1, 0.2, 0.8)[0];
    auto d = [scale](tensor_ref<const double> x, double, tensor_ref<double> o) {
        for (index_t i = 0; i < x.numel(); ++i) o.data()[i] = scale * x.data()[i];
    };
    const auto run = [&](k_method m, double eta, auto&& noise) {
        tensor<double> x(x0.extents());
        for (index_t i = 0; i < x.numel(); ++i) x[i] = x0[i];
        k_sampler<double> k(st, m, sig, {.eta = eta});
        k.sample(d, x.ref(), noise);
        return x;
    };
    // eta = 0: sigma_down = sigma', so Euler-ancestral is plain Euler.
    const tensor<double> euler = run(k_method::euler, 0.0, no_noise<double>{});
    const tensor<double> ea = run(k_method::euler_ancestral, 0.0, no_noise<double>{});
    for (index_t i = 0; i < ea.numel(); ++i) CHECK(ea[i] == Approx(euler[i]).epsilon(1e-14));
    const tensor<double> a2s = run(k_method::dpmpp_2s_ancestral, 0.0, no_noise<double>{});
    for (index_t i = 0; i < a2s.numel(); ++i) CHECK(std::isfinite(a2s[i]));

    // A real source is still drawn once per step with sigma' > 0 (as k-diffusion), with no
    // effect on the result at eta = 0.
    std::vector<tensor<double>> z;
    std::vector<tensor_ref<const double>> views;
    for (int k = 0; k < 4; ++k) z.push_back(random_tensor(rng, 5));
    for (const auto& t : z) views.push_back(t.cref());
    for (const k_method m : {k_method::euler_ancestral, k_method::dpmpp_2s_ancestral}) {
        sequence_noise<double> seq(views);
        const tensor<double> quiet = run(m, 0.0, no_noise<double>{});
        const tensor<double> drawn = run(m, 0.0, seq);
        CHECK(seq.used() == 2);
        for (index_t i = 0; i < quiet.numel(); ++i)
            CHECK(drawn[i] == Approx(quiet[i]).epsilon(1e-14));
        // eta > 0 still needs a real source
        CHECK_THROWS_AS(run(m, 1.0, no_noise<double>{}), value_error);
    }
}

TEST_CASE("diffusion linear_multistep_weight rejects out-of-range arguments", "[diffusion]") {
    const std::vector<double> t{3.0, 2.0, 1.0, 0.0};
    CHECK_THROWS_AS(linear_multistep_weight(4, t, 0, 0), value_error);  // i < order - 1
    CHECK_THROWS_AS(linear_multistep_weight(0, t, 1, 0), value_error);  // order < 1
    CHECK_THROWS_AS(linear_multistep_weight(2, t, 1, 2), value_error);  // j >= order
    CHECK_THROWS_AS(linear_multistep_weight(2, t, 1, -1), value_error);
    CHECK_THROWS_AS(linear_multistep_weight(1, t, 3, 0), value_error);  // no t[i + 1]
    // order 1: the integral of 1 over [t_i, t_{i+1}]
    CHECK(linear_multistep_weight(1, t, 2, 0) == Approx(-1.0).epsilon(1e-14));
    // order 2 at i = 3 - 1 on [1, 0], nodes 1 (j = 0) and 2 (j = 1): the basis of node 2 is
    // (tau - 1) / (2 - 1); its integral from 1 to 0 is 1/2.
    CHECK(linear_multistep_weight(2, t, 2, 1) == Approx(0.5).epsilon(1e-14));
}

TEST_CASE("diffusion sigma-space samplers refuse an infinite zero-SNR sigma", "[diffusion]") {
    auto& st = backend::default_stream();
    schedule_config c;
    c.float32_tables = false;
    c.rescale_zero_terminal_snr = true;
    const noise_schedule zero(c);
    const auto names_fix = [](auto&& f) {
        try {
            f();
            FAIL("no throw");
        } catch (const value_error& e) {
            CHECK(std::string(e.what()).find("terminal_alpha_cumprod = 2^-24") !=
                  std::string::npos);
        }
    };
    names_fix([&] { euler_sampler<double>(st, zero).set_timesteps(10); });
    names_fix([&] { lms_sampler<double>(st, zero).set_timesteps(10); });
    names_fix([&] { heun_sampler<double>(st, zero).set_timesteps(10); });
    names_fix([&] {
        dpm_solver_sampler<double>(st, zero, {.prediction = prediction_type::v_prediction})
            .set_timesteps(10);
    });
    names_fix([&] {
        unipc_sampler<double>(st, zero,
                              {.spacing = timestep_spacing::trailing,
                               .prediction = prediction_type::v_prediction})
            .set_timesteps(10);
    });
    // VP samplers stay in alpha space: fine with ac = 0.
    CHECK_NOTHROW(ddim_sampler<double>(st, zero, {.spacing = timestep_spacing::trailing,
                                                  .prediction = prediction_type::v_prediction})
                      .set_timesteps(10));
    // diffusers' override makes the first sigma finite.
    c.terminal_alpha_cumprod = std::ldexp(1.0, -24);
    const noise_schedule clamped(c);
    euler_sampler<double> e(st, clamped);
    e.set_timesteps(10);
    CHECK(std::isfinite(e.sigmas()[0]));
    auto dp = dpm_solver_sampler<double>(st, clamped, {.prediction = prediction_type::v_prediction});
    dp.set_timesteps(10);
    CHECK(std::isfinite(dp.sigmas()[0]));
}

TEST_CASE("diffusion heun_sampler refuses thresholding", "[diffusion]") {
    auto& st = backend::default_stream();
    const noise_schedule sch(schedule_config{});
    CHECK_THROWS_AS(heun_sampler<double>(st, sch, {.x0 = {.thresholding = true}}), value_error);
    CHECK_NOTHROW(heun_sampler<double>(st, sch, {.x0 = {.clip_sample = true}}));
}
