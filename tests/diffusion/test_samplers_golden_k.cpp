// [golden] k-diffusion samplers and the EDM sampler against the recorded chains of
// tools/golden/make_diffusion_fixtures.py (k-diffusion 0.1.1.post1 in float64; NVlabs/edm's
// edm_sampler re-written there in float64): every case replays the stored noise and checks
// every intermediate state, the number of denoiser calls and of noise draws.

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "support/test_util.hpp"
#include "test_samplers_support.hpp"

namespace {

using namespace mmfuse;
using namespace mmfuse::diffusion;
using mmfuse_test::sampler_fixture;

constexpr double k_tolerance = 1e-10;

/// The VE Gaussian denoiser that also records its input at the first call of each step
/// (k-diffusion's callback sees exactly that x: after the churn noise, before the update).
struct recording_denoiser {
    mmfuse_test::gaussian_data data;
    tensor<double> first_input;
    bool want_first = false;
    int calls = 0;
    void operator()(tensor_ref<const double> x, double sigma, tensor_ref<double> out) {
        ++calls;
        if (want_first) {
            std::copy(x.data(), x.data() + x.numel(), first_input.data());
            want_first = false;
        }
        data.ve_denoise(x, sigma, out);
    }
};

k_method method_of(const std::string& sampler) {
    static const std::map<std::string, k_method> names{
        {"k_diffusion.sample_euler", k_method::euler},
        {"k_diffusion.sample_euler_ancestral", k_method::euler_ancestral},
        {"k_diffusion.sample_heun", k_method::heun},
        {"k_diffusion.sample_dpm_2", k_method::dpm_2},
        {"k_diffusion.sample_dpmpp_2m", k_method::dpmpp_2m},
        {"k_diffusion.sample_dpmpp_2s_ancestral", k_method::dpmpp_2s_ancestral},
        {"k_diffusion.sample_lms", k_method::lms},
        {"edm_sampler", k_method::heun}};
    const auto it = names.find(sampler);
    REQUIRE(it != names.end());
    return it->second;
}

struct replay_result {
    double worst = 0.0;
};

/// Replays case `c` of `f`; `edm` selects the EDM layout (x[k] = state after step k-1) and
/// option names (S_churn, ...), otherwise k-diffusion's (x[k] = callback x of step k).
double replay_case(const sampler_fixture& f, const std::string& c, bool edm) {
    auto& s = backend::default_stream();
    const std::string p = c + ".";
    const k_method m = method_of(f.meta_string(p + "sampler"));
    const std::vector<double> sigmas = f.values(c + "/sigmas");
    const tensor<double> latent = f.read(c + "/latent");
    const tensor<double> states = f.read(c + "/x");
    const int steps = int(sigmas.size()) - 1;
    REQUIRE(states.extent(0) == steps + 1);
    k_options o;
    if (edm) {
        o.s_churn = f.meta_or(p + "step.S_churn", 0.0);
        o.s_tmin = f.meta_or(p + "step.S_min", 0.0);
        o.s_tmax = f.meta_or(p + "step.S_max", o.s_tmax);
        o.s_noise = f.meta_or(p + "step.S_noise", 1.0);
    } else {
        o.s_churn = f.meta_or(p + "step.s_churn", 0.0);
        o.s_tmin = f.meta_or(p + "step.s_tmin", 0.0);
        o.s_tmax = f.meta_or(p + "step.s_tmax", o.s_tmax);
        o.s_noise = f.meta_or(p + "step.s_noise", 1.0);
    }
    std::vector<tensor_ref<const double>> noise_views;
    tensor<double> noise;
    if (f.has(c + "/noise")) {
        noise = f.read(c + "/noise");
        noise_views = mmfuse_test::slices(noise);
    }
    sequence_noise<double> source(noise_views);

    recording_denoiser den{{f.values(c + "/mu"), {f.meta(p + "s")}},
                           tensor<double>(latent.extents())};
    k_sampler<double> sampler =
        edm ? edm_sampler<double>(s, {.num_steps = steps,
                                      .sigma_min = f.meta(p + "sigma_min"),
                                      .sigma_max = f.meta(p + "sigma_max"),
                                      .rho = f.meta(p + "rho"),
                                      .s_churn = o.s_churn,
                                      .s_min = o.s_tmin,
                                      .s_max = o.s_tmax,
                                      .s_noise = o.s_noise})
            : k_sampler<double>(s, m, sigmas, o);
    if (edm) {  // our EDM schedule against edm's t_steps
        const auto ours = sampler.sigmas();
        for (std::size_t i = 0; i < sigmas.size(); ++i)
            CHECK(std::abs(ours[i] - sigmas[i]) <= 1e-13 * std::max(1.0, sigmas[i]));
    }
    tensor<double> x(latent.extents());
    for (index_t i = 0; i < x.numel(); ++i)
        x[i] = latent[i] * sampler.init_noise_sigma();
    double worst = mmfuse_test::rel_gap(x.cref(), mmfuse_test::slice(states, 0));
    for (int i = 0; i < steps; ++i) {
        den.want_first = true;
        sampler.step(den, i, x.ref(), source);
        if (edm)
            worst = std::max(worst, mmfuse_test::rel_gap(x.cref(), mmfuse_test::slice(states, i + 1)));
        else
            worst = std::max(worst, mmfuse_test::rel_gap(den.first_input.cref(),
                                                         mmfuse_test::slice(states, i)));
    }
    worst = std::max(worst, mmfuse_test::rel_gap(x.cref(), mmfuse_test::slice(states, steps)));
    CHECK(den.calls == int(f.meta(p + "n_calls")));
    CHECK(source.used() == noise_views.size());
    return worst;
}

}  // namespace

TEST_CASE("k-diffusion samplers replay the golden chains to 1e-10", "[diffusion][samplers][golden]") {
    const sampler_fixture f("samplers_kdiffusion.safetensors");
    std::map<std::string, double> worst_per_method;
    int n = 0;
    for (const std::string& c : f.cases()) {
        INFO("case " << c);
        const double gap = replay_case(f, c, false);
        CHECK(gap <= k_tolerance);
        const std::string method = c.substr(0, c.find('/'));
        worst_per_method[method] = std::max(worst_per_method[method], gap);
        ++n;
    }
    CHECK(n >= 45);
    for (const auto& [m, w] : worst_per_method)
        WARN("k-diffusion " << m << ": worst relative gap " << w);
}

TEST_CASE("The EDM sampler replays NVlabs edm_sampler chains to 1e-10", "[diffusion][samplers][golden]") {
    const sampler_fixture f("samplers_edm.safetensors");
    double worst = 0.0;
    int n = 0;
    for (const std::string& c : f.cases()) {
        INFO("case " << c);
        const double gap = replay_case(f, c, true);
        CHECK(gap <= k_tolerance);
        worst = std::max(worst, gap);
        ++n;
    }
    CHECK(n == 6);
    WARN("edm: worst relative gap " << worst);
}
