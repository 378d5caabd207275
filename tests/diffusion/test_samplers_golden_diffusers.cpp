// [golden] diffusers-style samplers against the recorded chains of
// tools/golden/make_diffusion_fixtures.py (diffusers 0.42.1). Each case is replayed with the
// stored noise on a float64 schedule and compared, state by state, with the library's float64
// re-run (x64) to 1e-10, and with its ordinary float32 run (x) to that run's own float32 gap
// (max_rel_gap_f32_vs_f64, recorded per case). The model timesteps are checked too.

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
#include "support/test_util.hpp"
#include "test_samplers_replay.hpp"
#include "test_samplers_support.hpp"

namespace {

using namespace mmfuse;
using namespace mmfuse::diffusion;
using namespace mmfuse_test::replay;
using mmfuse_test::sampler_fixture;

}  // namespace

TEST_CASE("DDPM and DDIM replay the golden diffusers chains", "[diffusion][samplers][golden]") {
    auto& s = backend::default_stream();
    const auto ddpm = [&](const sampler_fixture& f, const std::string& c, const case_setup& cs,
                          const noise_schedule& exact) {
        REQUIRE(f.meta_string(cs.p + "sampler") == "DDPMScheduler");
        auto sampler = ddpm_sampler<double>(
            s, exact,
            {.spacing = spacing_of(f.meta_or(cs.p + "timestep_spacing", std::string("leading"))),
             .steps_offset = int(f.meta_or(cs.p + "steps_offset", 0.0)),
             .prediction = cs.prediction,
             .x0 = processing_of(f, cs.p)});
        sampler.set_timesteps(int(f.meta(cs.p + "steps")));
        return replay(f, c, sampler, exact, cs.prediction);
    };
    CHECK(replay_file("samplers_ddpm.safetensors", false, ddpm) == 30);
    const auto ddim = [&](const sampler_fixture& f, const std::string& c, const case_setup& cs,
                          const noise_schedule& exact) {
        REQUIRE(f.meta_string(cs.p + "sampler") == "DDIMScheduler");
        auto sampler = ddim_sampler<double>(
            s, exact,
            {.spacing = spacing_of(f.meta_or(cs.p + "timestep_spacing", std::string("leading"))),
             .steps_offset = int(f.meta_or(cs.p + "steps_offset", 0.0)),
             .prediction = cs.prediction,
             .x0 = processing_of(f, cs.p),
             .set_alpha_to_one = f.meta_or(cs.p + "set_alpha_to_one", 1.0) != 0.0,
             .eta = f.meta_or(cs.p + "step.eta", 0.0),
             .use_clipped_model_output =
                 f.meta_or(cs.p + "step.use_clipped_model_output", 0.0) != 0.0});
        sampler.set_timesteps(int(f.meta(cs.p + "steps")));
        return replay(f, c, sampler, exact, cs.prediction);
    };
    CHECK(replay_file("samplers_ddim.safetensors", false, ddim) == 64);
}

TEST_CASE("Euler and Euler-ancestral replay the golden diffusers chains",
          "[diffusion][samplers][golden]") {
    auto& s = backend::default_stream();
    const auto euler = [&](const sampler_fixture& f, const std::string& c, const case_setup& cs,
                           const noise_schedule& exact) {
        const std::string cls = f.meta_string(cs.p + "sampler");
        REQUIRE((cls == "EulerDiscreteScheduler" || cls == "EulerAncestralDiscreteScheduler"));
        euler_options o{
            .spacing = spacing_of(f.meta_or(cs.p + "timestep_spacing", std::string("linspace"))),
            .steps_offset = int(f.meta_or(cs.p + "steps_offset", 0.0)),
            .prediction = cs.prediction,
            .use_karras_sigmas = f.meta_or(cs.p + "use_karras_sigmas", 0.0) != 0.0,
            .ancestral = cls == "EulerAncestralDiscreteScheduler"};
        o.s_churn = f.meta_or(cs.p + "step.s_churn", 0.0);
        o.s_tmin = f.meta_or(cs.p + "step.s_tmin", 0.0);
        o.s_tmax = f.meta_or(cs.p + "step.s_tmax", o.s_tmax);
        o.s_noise = f.meta_or(cs.p + "step.s_noise", 1.0);
        euler_sampler<double> sampler(s, exact, o);
        sampler.set_timesteps(int(f.meta(cs.p + "steps")));
        check_sigmas(f, c, sampler);
        return replay(f, c, sampler, exact, cs.prediction);
    };
    CHECK(replay_file("samplers_euler.safetensors", true, euler) == 31);
    CHECK(replay_file("samplers_euler_ancestral.safetensors", true, euler) == 19);
}

TEST_CASE("Classifier-free guidance with rescale replays the golden diffusers CFG loop",
          "[diffusion][samplers][golden]") {
    auto& s = backend::default_stream();
    const sampler_fixture f("samplers_cfg.safetensors");
    int n = 0;
    double worst = 0.0;
    for (const std::string& c : f.cases()) {
        const std::string tag = c.substr(0, c.find('/'));
        if (tag != "ddim" && tag != "euler") continue;  // DPM-Solver++ / UniPC: golden_multistep
        INFO("case " << c);
        const bool euler = tag == "euler";
        const case_setup cs = setup_of(f, c, euler);
        const noise_schedule exact(cs.config);
        const auto spacing = spacing_of(f.meta_or(cs.p + "timestep_spacing",
                                                  std::string(euler ? "linspace" : "leading")));
        gaps g;
        if (euler) {
            euler_sampler<double> sampler(s, exact, {.spacing = spacing, .prediction = cs.prediction});
            sampler.set_timesteps(int(f.meta(cs.p + "steps")));
            g = replay(f, c, sampler, exact, cs.prediction);
        } else {
            auto sampler = ddim_sampler<double>(
                s, exact, {.spacing = spacing, .prediction = cs.prediction,
                           .x0 = processing_of(f, cs.p), .eta = f.meta_or(cs.p + "step.eta", 0.0)});
            sampler.set_timesteps(int(f.meta(cs.p + "steps")));
            g = replay(f, c, sampler, exact, cs.prediction);
        }
        CHECK(g.f64 <= f64_tolerance);
        CHECK(g.f32_excess <= 2.0);
        worst = std::max(worst, g.f64);
        ++n;
    }
    CHECK(n == 10);
    WARN("cfg (ddim, euler): worst gap to float64 diffusers " << worst);
}

TEST_CASE("Classifier-free guidance rejects bad settings", "[diffusion][samplers]") {
    auto& s = backend::default_stream();
    const auto model = [](tensor_ref<const double>, double, tensor_ref<double>) {};
    using guided = classifier_free_guidance<double, decltype(model)>;
    CHECK_THROWS_AS(guided(s, model, std::nan(""), 0.0), value_error);
    CHECK_THROWS_AS(guided(s, model, 7.5, 1.5), value_error);
    guided g(s, model, 7.5);
    tensor<double> x(extents{3}), out(extents{3});
    CHECK_THROWS_AS(g(x.cref().reshape({}), 1.0, out.ref().reshape({})), shape_error);
}
