// Diffusion training helpers (include/mmfuse/diffusion/training.hpp): add_noise, the velocity
// target, Philox timestep sampling and min-SNR weights, against double loops on fresh random
// inputs and against diffusers (tests/data/golden/diffusion/schedule.safetensors: add_noise /
// get_velocity in float32 and compute_snr, float32-precision bounds).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/training.hpp"
#include "mmfuse/io/safetensors.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
namespace dm = mmfuse::diffusion;

namespace {

const io::safetensors_file& fixture() {
    static const io::safetensors_file f = io::safetensors_file::open(
        std::filesystem::path(MMFUSE_TEST_DATA_DIR) / "golden" / "diffusion" / "schedule.safetensors");
    return f;
}

dm::schedule_config sd_config(bool float32) {
    dm::schedule_config c;
    c.betas = dm::beta_schedule::scaled_linear;
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.float32_tables = float32;
    return c;
}

std::vector<int> random_timesteps(std::mt19937_64& rng, std::size_t n, int T) {
    std::uniform_int_distribution<int> d(0, T - 1);
    std::vector<int> t(n);
    for (int& v : t)
        v = d(rng);
    return t;
}

}  // namespace

TEMPLATE_TEST_CASE("diffusion add_noise and velocity_target match double loops", "[diffusion]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(51);
    auto& st = backend::default_stream();
    const dm::noise_schedule s(sd_config(false));
    const extents e{5, 2, 3};
    const tensor<T> x0 = mmfuse_test::random_tensor<T>(e, rng, -1.0, 1.0);
    const tensor<T> eps = mmfuse_test::random_tensor<T>(e, rng, -2.0, 2.0);
    const std::vector<int> t = random_timesteps(rng, 5, 1000);
    tensor<T> xt(e), v(e);
    mmfuse_test::poison(xt);
    mmfuse_test::poison(v);
    dm::add_noise<T>(st, s, xt.ref(), x0, eps, t);
    dm::velocity_target<T>(st, s, v.ref(), x0, eps, t);
    double worst_x = 0, worst_v = 0;
    for (index_t b = 0; b < 5; ++b) {
        const double ac = s.alphas_cumprod()[std::size_t(t[std::size_t(b)])];
        for (index_t i = 0; i < 6; ++i) {
            const index_t k = b * 6 + i;
            const double want_x = std::sqrt(ac) * double(x0[k]) + std::sqrt(1 - ac) * double(eps[k]);
            const double want_v = std::sqrt(ac) * double(eps[k]) - std::sqrt(1 - ac) * double(x0[k]);
            worst_x = std::max(worst_x, std::abs(double(xt[k]) - want_x));
            worst_v = std::max(worst_v, std::abs(double(v[k]) - want_v));
        }
    }
    CHECK(worst_x <= mmfuse_test::tolerance<T>());
    CHECK(worst_v <= mmfuse_test::tolerance<T>());
    // In place on x0's memory (x_t aliases x0).
    tensor<T> inplace = x0.clone();
    dm::add_noise<T>(st, s, inplace.ref(), inplace.cref(), eps, t);
    for (index_t k = 0; k < inplace.numel(); ++k)
        CHECK(inplace[k] == xt[k]);
}

TEST_CASE("diffusion add_noise and velocity_target match diffusers", "[diffusion][golden]") {
    const auto& f = fixture();
    auto& st = backend::default_stream();
    const dm::noise_schedule s(sd_config(true));
    const tensor<float> x0 = f.read<float>("add_noise/x0");
    const tensor<float> noise = f.read<float>("add_noise/noise");
    const tensor<double> tt = f.read<double>("add_noise/t");
    std::vector<int> t;
    for (index_t i = 0; i < tt.numel(); ++i)
        t.push_back(int(tt[i]));
    const tensor<double> want_x = f.read<double>("add_noise/noisy");
    const tensor<double> want_v = f.read<double>("add_noise/velocity");
    tensor<float> xt(x0.extents()), v(x0.extents());
    mmfuse_test::poison(xt);
    mmfuse_test::poison(v);
    dm::add_noise<float>(st, s, xt.ref(), x0, noise, t);
    dm::velocity_target<float>(st, s, v.ref(), x0, noise, t);
    for (index_t k = 0; k < xt.numel(); ++k) {
        CHECK(std::abs(double(xt[k]) - want_x[k]) <= 1e-6 * std::max(1.0, std::abs(want_x[k])));
        CHECK(std::abs(double(v[k]) - want_v[k]) <= 1e-6 * std::max(1.0, std::abs(want_v[k])));
    }
}

TEST_CASE("diffusion add_noise rejects bad input", "[diffusion]") {
    auto& st = backend::default_stream();
    const dm::noise_schedule s(dm::schedule_config{});
    tensor<double> a(extents{2, 3}), b(extents{2, 3}), c(extents{3, 3}), y(extents{2, 3});
    const std::vector<int> ok{0, 999}, bad{0, 1000}, short_t{5};
    CHECK_THROWS_AS(dm::add_noise<double>(st, s, y.ref(), a.cref(), b.cref(), bad), value_error);
    CHECK_THROWS_AS(dm::add_noise<double>(st, s, y.ref(), a.cref(), b.cref(), short_t), shape_error);
    CHECK_THROWS_AS(dm::add_noise<double>(st, s, y.ref(), a.cref(), c.cref(), ok), shape_error);
    CHECK_NOTHROW(dm::add_noise<double>(st, s, y.ref(), a.cref(), b.cref(), ok));
}

TEST_CASE("diffusion timestep sampling from Philox is reproducible and uniform", "[diffusion]") {
    auto rng = mmfuse_test::make_rng(61);
    const std::uint64_t seed = rng();
    philox_generator g1(seed), g2(seed), g3(seed + 1);
    std::vector<int> a(4000), b(4000), c(4000);
    dm::sample_timesteps(g1, a, 1000);
    dm::sample_timesteps(g2, b, 1000);
    dm::sample_timesteps(g3, c, 1000);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(g1.offset() == dm::timestep_words(4000));
    CHECK(*std::min_element(a.begin(), a.end()) >= 0);
    CHECK(*std::max_element(a.begin(), a.end()) <= 999);
    // each value is floor(u * T) of the documented uniform
    philox_generator g4(seed);
    for (std::size_t i = 0; i < 20; ++i)
        CHECK(a[i] == int(std::floor(uniform_at<double>(g4.stream(), 0, i) * 1000)));
    // the next call continues the stream (disjoint draws)
    std::vector<int> next(4000);
    dm::sample_timesteps(g1, next, 1000);
    CHECK(next != a);
    // coarse uniformity: 10 bins of 100 timesteps, 4000 draws, expect 400 each (sd 19)
    std::vector<int> bins(10, 0);
    for (const int v : a)
        ++bins[std::size_t(v / 100)];
    for (const int n : bins) {
        CHECK(n > 300);
        CHECK(n < 500);
    }
    CHECK_THROWS_AS(dm::sample_timesteps(g1, a, 0), value_error);
}

TEST_CASE("diffusion min-SNR weights follow Hang et al. and diffusers", "[diffusion][golden]") {
    const auto& f = fixture();
    for (const char* name : {"linear", "scaled_linear", "squaredcos_cap_v2", "linear_zsnr",
                             "scaled_linear_zsnr", "squaredcos_cap_v2_zsnr"}) {
        INFO(name);
        const std::string n = name;
        dm::schedule_config c;
        const std::string kind = n.substr(0, n.find("_zsnr"));
        c.betas = kind == "linear"          ? dm::beta_schedule::linear
                  : kind == "scaled_linear" ? dm::beta_schedule::scaled_linear
                                            : dm::beta_schedule::squaredcos_cap_v2;
        c.beta_start = std::stod(f.metadata().at(n + ".beta_start"));
        c.beta_end = std::stod(f.metadata().at(n + ".beta_end"));
        c.rescale_zero_terminal_snr = n.find("_zsnr") != std::string::npos;
        const dm::noise_schedule s(c);
        const tensor<double> tt = f.read<double>("snr/" + n + "/t");
        const tensor<double> want = f.read<double>("snr/" + n + "/snr");
        std::vector<int> t;
        for (index_t i = 0; i < tt.numel(); ++i)
            t.push_back(int(tt[i]));
        for (std::size_t i = 0; i < t.size(); ++i) {
            const double got = dm::snr(s, t[i]);
            const double w = want[index_t(i)];
            const double ac = s.alphas_cumprod()[std::size_t(t[i])];
            // diffusers squares float32 square roots (a few float32 ulps), and SNR =
            // ac / (1 - ac) amplifies an error in ac by (1 + SNR)^2: a 4-ulp ac error is
            // allowed on top (3e-5 relative for the ill-conditioned zero-SNR float32 tables, see
            // test_schedule.cpp).
            const double ac_rel = c.rescale_zero_terminal_snr ? 3e-5 : 4.0 / 16777216.0;
            const double tol = 2e-6 * w + ac_rel * ac * (1 + w) * (1 + w);
            INFO("t " << t[i] << " got " << got << " want " << w);
            CHECK(std::abs(got - w) <= tol);
        }
        const double gamma = 5.0;
        std::vector<double> w_eps(t.size()), w_v(t.size()), w_x0(t.size());
        dm::min_snr_weights(s, t, gamma, dm::prediction_type::epsilon, w_eps);
        dm::min_snr_weights(s, t, gamma, dm::prediction_type::v_prediction, w_v);
        dm::min_snr_weights(s, t, gamma, dm::prediction_type::sample, w_x0);
        for (std::size_t i = 0; i < t.size(); ++i) {
            const double r = dm::snr(s, t[i]);
            INFO("t " << t[i] << " snr " << r);
            const double m = std::min(r, gamma);
            if (r > 0) CHECK(w_eps[i] == Approx(m / r).epsilon(1e-14));
            else CHECK(w_eps[i] == 1.0);  // limit at SNR = 0
            CHECK(w_v[i] == Approx(m / (r + 1)).epsilon(1e-14));
            CHECK(w_x0[i] == Approx(m).epsilon(1e-14));
            CHECK(w_eps[i] <= 1.0);
            CHECK(w_v[i] < 1.0);
        }
        // Hand-derived values (diffusers train_text_to_image: eps min(SNR, g) / SNR, v
        // min(SNR, g) / (SNR + 1), x0 min(SNR, g)), written without the formula: with
        // g = 2 SNR the eps weight is 1 and the v weight SNR / (SNR + 1) = alphas_cumprod;
        // with g = SNR / 2 the eps weight is 1/2 and the v weight alphas_cumprod / 2.
        for (const int tt : {100, 500}) {
            const double r = dm::snr(s, tt), ac = s.alphas_cumprod()[std::size_t(tt)];
            const std::vector<int> one{tt};
            std::vector<double> w1(1);
            INFO("t " << tt << " snr " << r);
            dm::min_snr_weights(s, one, 2 * r, dm::prediction_type::epsilon, w1);
            CHECK(w1[0] == Approx(1.0).epsilon(1e-12));
            dm::min_snr_weights(s, one, 2 * r, dm::prediction_type::v_prediction, w1);
            CHECK(w1[0] == Approx(ac).epsilon(1e-6));
            dm::min_snr_weights(s, one, 0.5 * r, dm::prediction_type::epsilon, w1);
            CHECK(w1[0] == Approx(0.5).epsilon(1e-12));
            dm::min_snr_weights(s, one, 0.5 * r, dm::prediction_type::v_prediction, w1);
            CHECK(w1[0] == Approx(0.5 * ac).epsilon(1e-6));
            dm::min_snr_weights(s, one, 0.5 * r, dm::prediction_type::sample, w1);
            CHECK(w1[0] == Approx(0.5 * r).epsilon(1e-12));
        }
    }
    const dm::noise_schedule s(dm::schedule_config{});
    std::vector<double> w(2);
    const std::vector<int> t{0, 1};
    CHECK_THROWS_AS(dm::min_snr_weights(s, t, 0.0, dm::prediction_type::epsilon, w), value_error);
    std::vector<double> w1(1);
    CHECK_THROWS_AS(dm::min_snr_weights(s, t, 5.0, dm::prediction_type::epsilon, w1), shape_error);
    CHECK_THROWS_AS(dm::snr(s, -1), value_error);
}
