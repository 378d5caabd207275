// Diffusion schedules (include/mmfuse/diffusion/schedule.hpp).
//
// [golden]: against tests/data/golden/diffusion/schedule.safetensors, made by
// tools/golden/make_diffusion_fixtures.py (diffusers 0.42.1, k-diffusion 0.1.1.post1; the file
// documents every tensor). Tolerances:
//   * float32 tables (float32_tables = true) vs diffusers' float32 torch tables: relative
//     4 float32 ulps (4 * 2^-23 ~ 4.8e-7) per entry — the rounding steps are reproduced, so
//     only libm / vectorised-linspace ulps remain;
//   * zero-terminal-SNR tables are ill-conditioned in float32 (beta = 1 - ab_t / ab_{t-1}
//     cancels, and torch 2.15's CPU float32 sqrt is not correctly rounded: 177 of the 1000
//     sqrt(alphas_cumprod) of the linear table differ by an ulp from IEEE sqrt, which the
//     rescale then amplifies). There: alphas = 1 - betas and alphas_cumprod to 3e-5
//     relative, and sigmas through ac = 1 / (1 + sigma^2) to 3e-5 relative; the terminal
//     sigma (a near-tie that torch rounds to 4096 and IEEE to 4095.99976) is left out of the
//     sigma_to_t check;
//   * double tables (float32_tables = false) vs the same diffusers code re-run in float64:
//     1e-12 relative (zero-SNR betas: 1e-14 absolute, the same cancellation in double);
//   * timestep grids: exact; sigma schedules (float64 in k-diffusion / numpy / edm): 1e-12
//     relative; thresholding (diffusers in float64): 1e-12.
// Conversions and thresholding are also checked against double loops on fresh random inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/io/safetensors.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
namespace dm = mmfuse::diffusion;

namespace {

const std::filesystem::path golden_dir =
    std::filesystem::path(MMFUSE_TEST_DATA_DIR) / "golden" / "diffusion";

const io::safetensors_file& schedule_file() {
    static const io::safetensors_file f =
        io::safetensors_file::open(golden_dir / "schedule.safetensors");
    return f;
}

std::vector<double> read_vec(const io::safetensors_file& f, const std::string& name) {
    INFO("fixture tensor " << name);
    REQUIRE(f.find(name) != nullptr);
    const tensor<double> t = f.read<double>(name);
    return std::vector<double>(t.data(), t.data() + t.numel());
}

const std::string& meta(const io::safetensors_file& f, const std::string& key) {
    INFO("fixture metadata " << key);
    const auto it = f.metadata().find(key);
    REQUIRE(it != f.metadata().end());
    return it->second;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, sep))
        out.push_back(item);
    return out;
}

dm::beta_schedule parse_beta(const std::string& s) {
    if (s == "linear") return dm::beta_schedule::linear;
    if (s == "scaled_linear") return dm::beta_schedule::scaled_linear;
    REQUIRE(s == "squaredcos_cap_v2");
    return dm::beta_schedule::squaredcos_cap_v2;
}

dm::schedule_config table_config(const std::string& name, bool float32) {
    const auto& f = schedule_file();
    dm::schedule_config c;
    c.num_train_timesteps = std::stoi(meta(f, name + ".num_train_timesteps"));
    c.betas = parse_beta(meta(f, name + ".beta_schedule"));
    c.beta_start = std::stod(meta(f, name + ".beta_start"));
    c.beta_end = std::stod(meta(f, name + ".beta_end"));
    c.rescale_zero_terminal_snr = meta(f, name + ".rescale_zero_terminal_snr") == "1";
    c.float32_tables = float32;
    return c;
}

/// max_i |a_i - b_i| / |b_i| (entries equal in value, including 0 and inf, count as 0).
double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i] == b[i]) continue;
        if (std::isnan(a[i]) || std::isnan(b[i]) || std::isinf(a[i]) || std::isinf(b[i]))
            return std::numeric_limits<double>::infinity();
        worst = std::max(worst, std::abs(a[i] - b[i]) / std::abs(b[i]));
    }
    return worst;
}

std::vector<double> as_vec(std::span<const double> s) { return {s.begin(), s.end()}; }

constexpr double f32_tol = 4.0 / 8388608.0;  // 4 float32 ulps, relative
constexpr double zsnr_tol = 3e-5;              // zero-SNR tables in float32, see the header

/// max_i |a_i - b_i| (entries equal in value count as 0).
double max_abs(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i] != b[i]) worst = std::max(worst, std::abs(a[i] - b[i]));
    return std::isnan(worst) ? std::numeric_limits<double>::infinity() : worst;
}

/// 1 / (1 + sigma^2) of every entry (sigma = inf gives 0).
std::vector<double> sigma_to_ac(std::vector<double> v) {
    for (double& x : v)
        x = 1.0 / (1.0 + x * x);
    return v;
}
constexpr double f64_tol = 1e-12;

std::vector<std::string> table_names() { return split(meta(schedule_file(), "cases"), ','); }

}  // namespace

TEST_CASE("diffusion tables match diffusers float32 tables", "[diffusion][golden]") {
    const auto& f = schedule_file();
    for (const std::string& name : table_names()) {
        INFO("table " << name);
        const dm::noise_schedule s(table_config(name, true));
        const auto betas = read_vec(f, "table/" + name + "/betas");
        const auto ac = read_vec(f, "table/" + name + "/alphas_cumprod");
        if (s.config().rescale_zero_terminal_snr) {
            // alpha = 1 - beta = ab_t / ab_{t-1}: relative, like the table
            std::vector<double> alpha_got, alpha_want;
            for (std::size_t i = 0; i < betas.size(); ++i) {
                alpha_got.push_back(1.0 - s.betas()[i]);
                alpha_want.push_back(1.0 - betas[i]);
            }
            CHECK(max_rel(alpha_got, alpha_want) <= zsnr_tol);
            CHECK(max_rel(as_vec(s.alphas_cumprod()), ac) <= zsnr_tol);
            CHECK(s.alphas_cumprod().back() == 0.0);
            CHECK(s.betas().back() == 1.0);
        } else {
            CHECK(max_rel(as_vec(s.betas()), betas) <= f32_tol);
            CHECK(max_rel(as_vec(s.alphas_cumprod()), ac) <= f32_tol);
        }
    }
}

TEST_CASE("diffusion tables in double match the float64 re-derivation", "[diffusion][golden]") {
    const auto& f = schedule_file();
    for (const std::string& name : table_names()) {
        INFO("table " << name);
        const dm::noise_schedule s(table_config(name, false));
        if (s.config().rescale_zero_terminal_snr)
            CHECK(max_abs(as_vec(s.betas()), read_vec(f, "table/" + name + "/betas64")) <= 1e-14);
        else
            CHECK(max_rel(as_vec(s.betas()), read_vec(f, "table/" + name + "/betas64")) <= f64_tol);
        CHECK(max_rel(as_vec(s.alphas_cumprod()), read_vec(f, "table/" + name + "/alphas_cumprod64")) <=
              f64_tol);
        // float32 and double tables differ (the float32 rounding is really applied).
        const dm::noise_schedule s32(table_config(name, true));
        CHECK(max_rel(as_vec(s32.alphas_cumprod()), as_vec(s.alphas_cumprod())) > 1e-9);
    }
}

TEST_CASE("diffusion sigma table, sigma_at and sigma_to_t match diffusers Euler", "[diffusion][golden]") {
    const auto& f = schedule_file();
    for (const std::string& name : table_names()) {
        INFO("table " << name);
        dm::schedule_config c = table_config(name, true);
        if (c.rescale_zero_terminal_snr) c.terminal_alpha_cumprod = std::ldexp(1.0, -24);
        const dm::noise_schedule s(c);
        const bool zsnr = c.rescale_zero_terminal_snr;
        const auto sig = read_vec(f, "table/" + name + "/sigmas");
        const auto ts = read_vec(f, "interp/" + name + "/t");
        const auto want = read_vec(f, "interp/" + name + "/sigma_at_t");
        std::vector<double> got;
        for (const double t : ts)
            got.push_back(s.sigma_at(t));
        if (zsnr) {
            CHECK(max_rel(sigma_to_ac(as_vec(s.sigmas())), sigma_to_ac(sig)) <= zsnr_tol);
            CHECK(max_rel(sigma_to_ac(got), sigma_to_ac(want)) <= zsnr_tol);
        } else {
            CHECK(max_rel(as_vec(s.sigmas()), sig) <= f32_tol);
            CHECK(max_rel(got, want) <= f32_tol);
        }
        const auto qs = read_vec(f, "interp/" + name + "/sigma");
        const auto want_t = read_vec(f, "interp/" + name + "/t_of_sigma");
        for (std::size_t i = 0; i < qs.size(); ++i) {
            if (zsnr && qs[i] == sig.back()) continue;  // the near-tie terminal entry
            INFO("sigma " << qs[i]);
            // float32 log-sigma table: t is fixed to ~1e-7 / (log-sigma gap between entries)
            CHECK(std::abs(s.sigma_to_t(qs[i]) - want_t[i]) <= 2e-3);
        }
    }
}

TEST_CASE("diffusion sigma_to_t inverts sigma_at on the double table", "[diffusion]") {
    auto rng = mmfuse_test::make_rng(11);
    dm::schedule_config c;
    c.betas = dm::beta_schedule::scaled_linear;
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.float32_tables = false;
    const dm::noise_schedule s(c);
    for (const double t : mmfuse_test::uniform_values(rng, 50, 0.0, 999.0)) {
        // integer t: exact inverse; between integers log-linear vs linear interpolation differ
        const double ti = std::floor(t);
        CHECK(std::abs(s.sigma_to_t(s.sigma_at(ti)) - ti) <= 1e-9);
        const double back = s.sigma_to_t(s.sigma_at(t));
        CHECK(back >= ti - 1e-9);
        CHECK(back <= ti + 1.0 + 1e-9);
    }
    CHECK(s.sigma_to_t(1e-6) == 0.0);   // below the table: clamped
    CHECK(s.sigma_to_t(1e6) == 999.0);  // above the table: clamped
    CHECK(s.sigma_at(-5.0) == s.sigmas().front());
    CHECK(s.sigma_at(2000.0) == s.sigmas().back());
}

TEST_CASE("diffusion timesteps match diffusers for every spacing, size and offset", "[diffusion][golden]") {
    const auto& f = schedule_file();
    const dm::noise_schedule s(dm::schedule_config{});
    const std::pair<const char*, dm::timestep_spacing> spacings[] = {
        {"leading", dm::timestep_spacing::leading},
        {"trailing", dm::timestep_spacing::trailing},
        {"linspace", dm::timestep_spacing::linspace}};
    int checked = 0;
    for (const int steps : {10, 25, 50})
        for (const auto& [sp_name, sp] : spacings)
            for (const int offset : {0, 1}) {
                const std::string tail =
                    std::string(sp_name) + "/" + std::to_string(steps) + "/" + std::to_string(offset);
                INFO(tail);
                CHECK(dm::timesteps(s, steps, sp, offset) == read_vec(f, "timesteps/n/" + tail));
                CHECK(dm::timesteps(s, steps, sp, offset, false, false) ==
                      read_vec(f, "timesteps/n_float/" + tail));
                CHECK(dm::timesteps(s, steps, sp, offset, true) ==
                      read_vec(f, "timesteps/n_plus_one/" + tail));
                checked += 3;
            }
    CHECK(checked == 54);
    // Known values (reference section 3): trailing 999 .. 99, N+1 linspace ends at 100.
    CHECK(dm::timesteps(s, 10, dm::timestep_spacing::trailing).front() == 999.0);
    CHECK(dm::timesteps(s, 10, dm::timestep_spacing::trailing).back() == 99.0);
    CHECK(dm::timesteps(s, 10, dm::timestep_spacing::linspace, 0, true).back() == 100.0);
    CHECK(dm::timesteps(s, 10, dm::timestep_spacing::leading, 1).front() == 901.0);
}

TEST_CASE("diffusion sigma schedules match k-diffusion, diffusers and edm", "[diffusion][golden]") {
    const auto& f = schedule_file();
    const double smin = std::stod(meta(f, "sigmas.sigma_min"));
    const double smax = std::stod(meta(f, "sigmas.sigma_max"));
    const double poly_rho = std::stod(meta(f, "sigmas.poly_rho"));
    const auto without_final = [](std::vector<double> v) {
        REQUIRE(v.back() == 0.0);
        v.pop_back();
        return v;
    };
    for (const int n : {10, 25, 50}) {
        INFO("n " << n);
        const std::string k = std::to_string(n);
        CHECK(max_rel(dm::karras_sigmas(smin, smax, n), without_final(read_vec(f, "sigmas/karras/" + k))) <=
              f64_tol);
        CHECK(max_rel(dm::exponential_sigmas(smin, smax, n),
                      without_final(read_vec(f, "sigmas/exponential/" + k))) <= f64_tol);
        CHECK(max_rel(dm::polyexponential_sigmas(smin, smax, n, poly_rho),
                      without_final(read_vec(f, "sigmas/polyexponential/" + k))) <= f64_tol);
        for (const char* table : {"linear", "scaled_linear", "squaredcos_cap_v2"}) {
            INFO(table);
            const std::string name = std::string("sigmas/karras_diffusers/") + table + "/" + k;
            const double lo = std::stod(meta(f, name + ".sigma_min"));
            const double hi = std::stod(meta(f, name + ".sigma_max"));
            CHECK(max_rel(dm::karras_sigmas(lo, hi, n), read_vec(f, name)) <= f64_tol);
        }
    }
    for (const int n : {10, 18, 25, 50}) {
        INFO("edm n " << n);
        CHECK(max_rel(dm::edm_sigmas(n), read_vec(f, "sigmas/edm/" + std::to_string(n))) <= f64_tol);
    }
    // polyexponential with rho = 1 is the exponential schedule
    CHECK(max_rel(dm::polyexponential_sigmas(smin, smax, 17), dm::exponential_sigmas(smin, smax, 17)) <=
          1e-14);
}

TEST_CASE("diffusion dynamic thresholding matches diffusers", "[diffusion][golden]") {
    const auto& f = schedule_file();
    const tensor<double> in = f.read<double>("threshold/input");
    const tensor<double> want = f.read<double>("threshold/output");
    tensor<double> x = in.clone();
    dm::dynamic_threshold(x.ref(), std::stod(meta(f, "threshold.ratio")),
                          std::stod(meta(f, "threshold.sample_max_value")));
    std::vector<double> got(x.data(), x.data() + x.numel());
    CHECK(max_rel(got, std::vector<double>(want.data(), want.data() + want.numel())) <= f64_tol);
    // the fixture is not the identity (both the quantile clamp and the max_value clamp bite)
    CHECK(max_rel(std::vector<double>(in.data(), in.data() + in.numel()), got) > 0.1);
}

TEST_CASE("diffusion dynamic thresholding and clipping match double loops", "[diffusion]") {
    auto rng = mmfuse_test::make_rng(21);
    const extents e{3, 5, 7};
    tensor<float> x = mmfuse_test::random_tensor<float>(e, rng, -3.0, 3.0);
    const tensor<float> orig = x.clone();
    const double ratio = 0.9, max_value = 2.0;
    dm::dynamic_threshold(x.ref(), ratio, max_value);
    for (index_t b = 0; b < 3; ++b) {
        std::vector<double> a;
        for (index_t i = 0; i < 35; ++i)
            a.push_back(std::abs(double(orig[b * 35 + i])));
        std::sort(a.begin(), a.end());
        const double pos = ratio * 34.0;
        const auto lo = std::size_t(pos);
        const double q = a[lo] + (pos - double(lo)) * (a[lo + 1] - a[lo]);
        const double s = std::clamp(q, 1.0, max_value);
        for (index_t i = 0; i < 35; ++i) {
            const double want = std::clamp(double(orig[b * 35 + i]), -s, s) / s;
            CHECK(std::abs(double(x[b * 35 + i]) - want) <= 1e-6);
        }
    }
    tensor<double> y = mmfuse_test::random_tensor<double>(extents{4, 6}, rng, -2.0, 2.0);
    const tensor<double> y0 = y.clone();
    // a transposed (strided) view: every element is still visited once
    dm::clip_sample(y.ref().transpose(0, 1), 0.75);
    for (index_t i = 0; i < y.numel(); ++i)
        CHECK(y[i] == std::clamp(y0[i], -0.75, 0.75));
    CHECK_THROWS_AS(dm::clip_sample(y.ref(), 0.0), value_error);
    CHECK_THROWS_AS(dm::dynamic_threshold(y.ref(), 1.5), value_error);
    CHECK_THROWS_AS(dm::dynamic_threshold(y.ref(), 0.9, 0.5), value_error);
    std::vector<double> short_scratch(3);
    CHECK_THROWS_AS(dm::dynamic_threshold(y.ref(), std::span<double>(short_scratch)), shape_error);
}

TEMPLATE_TEST_CASE("diffusion prediction conversions match double formulas", "[diffusion]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(31);
    auto& st = backend::default_stream();
    const extents e{2, 3, 4};
    const tensor<T> x = mmfuse_test::random_tensor<T>(e, rng, -2.0, 2.0);
    const tensor<T> out = mmfuse_test::random_tensor<T>(e, rng, -2.0, 2.0);
    const double ac = mmfuse_test::uniform_values(rng, 1, 0.05, 0.95)[0];
    const double sigma = mmfuse_test::uniform_values(rng, 1, 0.1, 10.0)[0];
    const double a = std::sqrt(ac), s = std::sqrt(1 - ac);
    const double tol = mmfuse_test::tolerance<T>() * 10;
    const auto check = [&](const char* what, auto&& fn, auto&& ref) {
        INFO(what);
        tensor<T> y(e);
        mmfuse_test::poison(y);
        fn(y.ref());
        double worst = 0;
        for (index_t i = 0; i < y.numel(); ++i) {
            const double r = ref(double(x[i]), double(out[i]));
            worst = std::max(worst, std::abs(double(y[i]) - r) / std::max(1.0, std::abs(r)));
        }
        CHECK(worst <= tol);
    };
    using P = dm::prediction_type;
    check("x0 vp eps", [&](tensor_ref<T> y) { dm::predict_x0_vp<T>(st, y, x, out, P::epsilon, ac); },
          [&](double xv, double o) { return (xv - s * o) / a; });
    check("x0 vp v", [&](tensor_ref<T> y) { dm::predict_x0_vp<T>(st, y, x, out, P::v_prediction, ac); },
          [&](double xv, double o) { return a * xv - s * o; });
    check("x0 vp sample", [&](tensor_ref<T> y) { dm::predict_x0_vp<T>(st, y, x, out, P::sample, ac); },
          [&](double, double o) { return o; });
    check("eps vp eps", [&](tensor_ref<T> y) { dm::predict_eps_vp<T>(st, y, x, out, P::epsilon, ac); },
          [&](double, double o) { return o; });
    check("eps vp v", [&](tensor_ref<T> y) { dm::predict_eps_vp<T>(st, y, x, out, P::v_prediction, ac); },
          [&](double xv, double o) { return a * o + s * xv; });
    check("eps vp sample", [&](tensor_ref<T> y) { dm::predict_eps_vp<T>(st, y, x, out, P::sample, ac); },
          [&](double xv, double o) { return (xv - a * o) / s; });
    check("eps from x0", [&](tensor_ref<T> y) { dm::eps_from_x0_vp<T>(st, y, x, out, ac); },
          [&](double xv, double o) { return (xv - a * o) / s; });
    const double q = sigma * sigma + 1;
    check("x0 ve eps", [&](tensor_ref<T> y) { dm::predict_x0_ve<T>(st, y, x, out, P::epsilon, sigma); },
          [&](double xv, double o) { return xv - sigma * o; });
    check("x0 ve v", [&](tensor_ref<T> y) { dm::predict_x0_ve<T>(st, y, x, out, P::v_prediction, sigma); },
          [&](double xv, double o) { return xv / q - sigma / std::sqrt(q) * o; });
    check("x0 ve sample", [&](tensor_ref<T> y) { dm::predict_x0_ve<T>(st, y, x, out, P::sample, sigma); },
          [&](double, double o) { return o; });
    check("karras derivative", [&](tensor_ref<T> y) { dm::karras_derivative<T>(st, y, x, out, sigma); },
          [&](double xv, double o) { return (xv - o) / sigma; });
}

TEST_CASE("diffusion conversions are consistent with the Gaussian posterior", "[diffusion]") {
    // Closed-form denoiser (reference section 10): for x0 ~ N(mu, s^2), the posterior means of
    // eps, x0 and v are linked by the conversions exactly, in VP and VE form.
    auto rng = mmfuse_test::make_rng(41);
    auto& st = backend::default_stream();
    const auto v = mmfuse_test::uniform_values(rng, 4, 0.05, 0.95);
    const double ac = v[0], mu = v[1] - 0.5, sd = v[2], xt = 3 * (v[3] - 0.5);
    const double a = std::sqrt(ac), s = std::sqrt(1 - ac), D = ac * sd * sd + 1 - ac;
    const double eps = s * (xt - a * mu) / D, x0 = mu + a * sd * sd * (xt - a * mu) / D;
    const double vel = a * eps - s * x0;
    tensor<double> x(extents{1}), o(extents{1}), y(extents{1});
    x[0] = xt;
    using P = dm::prediction_type;
    for (const auto& [p, pred] : {std::pair{P::epsilon, eps}, {P::v_prediction, vel}, {P::sample, x0}}) {
        o[0] = pred;
        dm::predict_x0_vp<double>(st, y.ref(), x.cref(), o.cref(), p, ac);
        CHECK(y[0] == Approx(x0).epsilon(1e-12));
        dm::predict_eps_vp<double>(st, y.ref(), x.cref(), o.cref(), p, ac);
        CHECK(y[0] == Approx(eps).epsilon(1e-12));
        // VE: the sample is x_VP * sqrt(1 + sigma^2) and the model saw x_VP
        const double sigma = s / a;
        tensor<double> xve(extents{1});
        xve[0] = xt * std::sqrt(1 + sigma * sigma);
        dm::predict_x0_ve<double>(st, y.ref(), xve.cref(), o.cref(), p, sigma);
        CHECK(y[0] == Approx(x0).epsilon(1e-12));
    }
}

TEST_CASE("diffusion schedule rejects bad input", "[diffusion]") {
    dm::schedule_config c;
    c.num_train_timesteps = 1;
    CHECK_THROWS_AS(dm::noise_schedule(c), value_error);
    c = {};
    c.beta_end = 1.5;
    CHECK_THROWS_AS(dm::noise_schedule(c), value_error);
    c = {};
    c.terminal_alpha_cumprod = 1.0;
    CHECK_THROWS_AS(dm::noise_schedule(c), value_error);
    const dm::noise_schedule s(dm::schedule_config{});
    CHECK_THROWS_AS(dm::timesteps(s, 0, dm::timestep_spacing::leading), value_error);
    CHECK_THROWS_AS(dm::timesteps(s, 1001, dm::timestep_spacing::leading), value_error);
    CHECK_THROWS_AS(dm::timesteps(s, 10, dm::timestep_spacing::leading, -1), value_error);
    // leading: 999 * 1 + 1 = 1000 is past the last training timestep 999
    CHECK_THROWS_AS(dm::timesteps(s, 1000, dm::timestep_spacing::leading, 1), value_error);
    CHECK_NOTHROW(dm::timesteps(s, 1000, dm::timestep_spacing::leading, 0));
    // the N+1 grid (DPM-Solver / UniPC) with N = T would repeat a timestep (h = 0)
    for (const auto sp : {dm::timestep_spacing::linspace, dm::timestep_spacing::leading,
                          dm::timestep_spacing::trailing}) {
        CHECK_THROWS_AS(dm::timesteps(s, 1000, sp, 0, true), value_error);
        const std::vector<double> g = dm::timesteps(s, 999, sp, 0, true);
        REQUIRE(g.size() == 999);
        for (std::size_t i = 1; i < g.size(); ++i) CHECK(g[i] < g[i - 1]);
    }
    CHECK_THROWS_AS(s.sigma_to_t(std::nan("")), value_error);
    CHECK_THROWS_AS(s.sigma_at(std::nan("")), value_error);
    CHECK_THROWS_AS(dm::karras_sigmas(0.0, 10.0, 5), value_error);
    CHECK_THROWS_AS(dm::karras_sigmas(1.0, 10.0, 0), value_error);
    CHECK_THROWS_AS(dm::karras_sigmas(1.0, 10.0, 5, -1.0), value_error);
    CHECK_THROWS_AS(dm::exponential_sigmas(2.0, 1.0, 5), value_error);
    CHECK_THROWS_AS(dm::edm_sigmas(0), value_error);
    using P = dm::prediction_type;
    CHECK_THROWS_AS(dm::vp_x0_coefficients(P::epsilon, 0.0), value_error);  // zero terminal SNR
    CHECK_THROWS_AS(dm::vp_x0_coefficients(P::v_prediction, 1.5), value_error);
    CHECK_THROWS_AS(dm::vp_eps_coefficients(P::sample, 1.0), value_error);
    CHECK_THROWS_AS(dm::ve_x0_coefficients(P::epsilon, -1.0), value_error);
    CHECK(dm::vp_x0_coefficients(P::v_prediction, 0.0).output == -1.0);  // v works at ac = 0
    auto& st = backend::default_stream();
    tensor<double> a(extents{2, 3}), b(extents{2, 4}), y(extents{2, 3});
    CHECK_THROWS_AS(dm::predict_x0_vp<double>(st, y.ref(), a.cref(), b.cref(), P::epsilon, 0.5),
                    shape_error);
    CHECK_THROWS_AS(dm::karras_derivative<double>(st, y.ref(), a.cref(), a.cref(), 0.0), value_error);
}
