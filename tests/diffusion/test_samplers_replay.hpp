#pragma once
// Golden replay of diffusers-style samplers (shared by the [golden] diffusers tests): reads a
// case of tools/golden/make_diffusion_fixtures.py, builds its float64 schedule and closed-form
// model, runs a sampler call by call with the stored noise, and measures the chain against the
// recorded float64 re-run (x64) and float32 run (x), state by state; the model timesteps are
// checked too.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/guidance.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "support/test_util.hpp"
#include "test_samplers_support.hpp"

namespace mmfuse_test::replay {

using namespace mmfuse;
using namespace mmfuse::diffusion;
using mmfuse_test::sampler_fixture;

inline constexpr double f64_tolerance = 1e-10;

inline prediction_type prediction_of(const std::string& s) {
    if (s == "epsilon") return prediction_type::epsilon;
    if (s == "v_prediction") return prediction_type::v_prediction;
    REQUIRE(s == "sample");
    return prediction_type::sample;
}
inline timestep_spacing spacing_of(const std::string& s) {
    if (s == "leading") return timestep_spacing::leading;
    if (s == "trailing") return timestep_spacing::trailing;
    REQUIRE(s == "linspace");
    return timestep_spacing::linspace;
}
inline beta_schedule betas_of(const std::string& s) {
    if (s == "linear") return beta_schedule::linear;
    if (s == "scaled_linear") return beta_schedule::scaled_linear;
    REQUIRE(s == "squaredcos_cap_v2");
    return beta_schedule::squaredcos_cap_v2;
}

/// The fixture's model: the VP Gaussian posterior at level ac(t) = 1 / (1 + sigma64(t)^2).
struct vp_model {
    mmfuse_test::gaussian_data data;
    const noise_schedule* exact;  // float64 tables
    prediction_type prediction;
    std::vector<double> seen_t;
    void operator()(tensor_ref<const double> x, double t, tensor_ref<double> out) {
        seen_t.push_back(t);
        const double sigma = exact->sigma_at(t);
        data.vp_predict(x, 1.0 / (1.0 + sigma * sigma), prediction, out);
    }
};

struct case_setup {
    std::string p;  // "<case>."
    prediction_type prediction;
    schedule_config config;
};

inline case_setup setup_of(const sampler_fixture& f, const std::string& c, bool terminal_override) {
    case_setup s;
    s.p = c + ".";
    s.prediction = prediction_of(f.meta_or(s.p + "prediction_type", std::string("epsilon")));
    s.config.beta_start = f.meta(s.p + "beta_start");
    s.config.beta_end = f.meta(s.p + "beta_end");
    s.config.betas = betas_of(f.meta_string(s.p + "beta_schedule"));
    s.config.rescale_zero_terminal_snr = f.meta_or(s.p + "rescale_betas_zero_snr", 0.0) != 0.0;
    s.config.float32_tables = false;
    if (s.config.rescale_zero_terminal_snr && terminal_override)
        s.config.terminal_alpha_cumprod = std::ldexp(1.0, -24);
    s.config.prediction = s.prediction;
    return s;
}

inline x0_processing processing_of(const sampler_fixture& f, const std::string& p) {
    x0_processing x;
    x.clip_sample = f.meta_or(p + "clip_sample", 1.0) != 0.0;
    x.clip_sample_range = f.meta_or(p + "clip_sample_range", 1.0);
    x.thresholding = f.meta_or(p + "thresholding", 0.0) != 0.0;
    x.dynamic_thresholding_ratio = f.meta_or(p + "dynamic_thresholding_ratio", 0.995);
    x.sample_max_value = f.meta_or(p + "sample_max_value", 1.0);
    return x;
}

struct gaps {
    double f64 = 0.0;
    double f32_excess = 0.0;  // our gap to the float32 run / the run's own f32-f64 gap
};

/// The CFG fixtures' batched model: rows [0, B) the unconditional Gaussian (mu_uncond), rows
/// [B, 2B) the conditional one (mu), at the same level rule as `vp_model`.
struct batched_vp_model {
    vp_model uncond, cond;
    std::vector<double> seen_t;
    void operator()(tensor_ref<const double> x, double t, tensor_ref<double> out) {
        seen_t.push_back(t);
        const index_t b = x.extent(0) / 2;
        uncond(x.narrow(0, 0, b), t, out.narrow(0, 0, b));
        cond(x.narrow(0, b, b), t, out.narrow(0, b, b));
    }
};

/// Replays one case with `sampler` (set_timesteps already called) and `model`, whose calls
/// append their timestep to `seen_t`.
template <class Sampler, class Model>
gaps replay_with(const sampler_fixture& f, const std::string& c, Sampler& sampler, Model& model,
                 const std::vector<double>& seen_t) {
    const std::string p = c + ".";
    const tensor<double> latent = f.read(c + "/latent");
    const tensor<double> x64 = f.read(c + "/x64");
    const tensor<double> x32 = f.read(c + "/x");
    const std::vector<double> model_t =
        f.values(f.has(c + "/model_t64") ? c + "/model_t64" : c + "/model_t");
    tensor<double> noise;
    std::vector<tensor_ref<const double>> views;
    if (f.has(c + "/noise")) {
        noise = f.read(c + "/noise");
        views = mmfuse_test::slices(noise);
    }
    sequence_noise<double> source(views);
    const int calls = sampler.calls();
    REQUIRE(calls == int(f.meta(p + "n_calls")));
    REQUIRE(x64.extent(0) == calls + 1);
    tensor<double> x(latent.extents());
    for (index_t i = 0; i < x.numel(); ++i)
        x[i] = latent[i] * sampler.init_noise_sigma();
    gaps g;
    const double f32_gap = std::max(f.meta(p + "max_rel_gap_f32_vs_f64"), 1e-7);
    const auto compare = [&](int k) {
        g.f64 = std::max(g.f64, mmfuse_test::rel_gap(x.cref(), mmfuse_test::slice(x64, k)));
        g.f32_excess = std::max(
            g.f32_excess, mmfuse_test::rel_gap(x.cref(), mmfuse_test::slice(x32, k)) / f32_gap);
    };
    compare(0);
    tensor<double> out(latent.extents());
    for (int i = 0; i < calls; ++i) {
        const tensor_ref<const double> in = sampler.model_input(i, x.cref());
        mmfuse_test::poison(out);
        model(in, sampler.timesteps()[std::size_t(i)], out.ref());
        sampler.step(i, out.cref(), x.ref(), source);
        compare(i + 1);
    }
    REQUIRE(seen_t.size() == model_t.size());
    for (std::size_t i = 0; i < model_t.size(); ++i)
        CHECK(std::abs(seen_t[i] - model_t[i]) <= 1e-9 * std::max(1.0, model_t[i]));
    CHECK(source.used() == views.size());
    return g;
}

/// Replays one case with `sampler` (set_timesteps already called).
template <class Sampler>
gaps replay(const sampler_fixture& f, const std::string& c, Sampler& sampler,
            const noise_schedule& exact, prediction_type prediction) {
    const std::string p = c + ".";
    if (f.has(c + "/mu_uncond")) {
        auto& s = backend::default_stream();
        batched_vp_model batched{
            {{f.values(c + "/mu_uncond"), {f.meta(p + "s")}}, &exact, prediction, {}},
            {{f.values(c + "/mu"), {f.meta(p + "s")}}, &exact, prediction, {}},
            {}};
        classifier_free_guidance<double, std::reference_wrapper<batched_vp_model>> guided(
            s, std::ref(batched), f.meta(p + "guidance_scale"), f.meta(p + "guidance_rescale"));
        return replay_with(f, c, sampler, guided, batched.seen_t);
    }
    vp_model model{{f.values(c + "/mu"), {f.meta(p + "s")}}, &exact, prediction, {}};
    return replay_with(f, c, sampler, model, model.seen_t);
}

/// The float64 tolerance of every case (see `replay_file`).
inline double default_f64_tolerance(const std::string&) { return f64_tolerance; }

/// Runs every case of `file` whose sampler class is one `make` knows; returns cases run.
/// `f64_tolerance_of(case)` is the tolerance against the float64 re-run (1e-10 unless a
/// caller documents why a case is ill-conditioned).
template <class Make, class Tolerance = double (*)(const std::string&)>
int replay_file(const std::string& file, bool terminal_override, Make make,
                Tolerance f64_tolerance_of = &default_f64_tolerance) {
    const sampler_fixture f(file);
    std::map<std::string, gaps> worst;
    int n = 0;
    for (const std::string& c : f.cases()) {
        INFO("case " << c);
        const case_setup s = setup_of(f, c, terminal_override);
        const noise_schedule exact(s.config);
        const gaps g = make(f, c, s, exact);
        CHECK(g.f64 <= f64_tolerance_of(c));
        // Against the float32 library: within 2x the library's own float32 gap.
        CHECK(g.f32_excess <= 2.0);
        const std::string tag = c.substr(0, c.find('/'));
        worst[tag].f64 = std::max(worst[tag].f64, g.f64);
        worst[tag].f32_excess = std::max(worst[tag].f32_excess, g.f32_excess);
        ++n;
    }
    for (const auto& [tag, g] : worst)
        WARN(tag << ": worst gap to float64 diffusers " << g.f64
                 << ", to float32 diffusers / its own f32 gap " << g.f32_excess);
    return n;
}

/// Checks a sampler's sigmas() against the case's float64 sigma array (`<c>/sigmas64`).
template <class Sampler>
void check_sigmas(const sampler_fixture& f, const std::string& c, const Sampler& sampler) {
    const std::vector<double> sig64 = f.values(c + "/sigmas64");
    REQUIRE(sig64.size() == sampler.sigmas().size());
    for (std::size_t i = 0; i < sig64.size(); ++i)
        CHECK(std::abs(sampler.sigmas()[i] - sig64[i]) <= 1e-12 * std::max(1.0, sig64[i]));
}

}  // namespace mmfuse_test::replay
