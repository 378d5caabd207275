// Google Benchmark: the per-step overhead of every mmfuse diffusion sampler (issue 6) on the
// Eigen backend, f32, at a batch-8 SD latent 8 x 4 x 64 x 64 (131072 floats, 512 KiB),
// EXCLUDING the denoiser: the denoiser / model called by the sampler does nothing (it leaves
// its output buffer as it was; for the diffusers-style samplers the model output is a fixed
// tensor filled once). What remains is the sampler's own work per step: its `ops::combine`
// updates, Philox noise, model-input scaling, and host loops (clipping, thresholding, the
// guidance rescale).
//
//   BM_combine2/eigen/<shape>     THE PASS: one ops::combine y = a x + b z (2 reads + 1 write
//                                 of the latent): the streaming pass every step is measured in
//   BM_triad/host/<shape>         the same traffic as a plain vectorised loop (not an mmfuse
//                                 op): what the machine streams at
//   BM_memcpy/host/<shape>        std::memcpy of one latent (1 read + 1 write)
//   BM_k_<method>/eigen/<shape>   k_sampler(k_method::<method>), 25 Karras sigmas + 0
//   BM_edm/eigen/<shape>          edm_sampler with the paper's ImageNet churn (40/0.05/50/1.003)
//   BM_ddpm, BM_ddim, BM_ddim_eta1, BM_ddim_clip, BM_ddim_threshold, BM_euler,
//   BM_euler_ancestral            the diffusers-style samplers, 25 steps, SD-1.x schedule
//   BM_<multistep>                the samplers of samplers_multistep.hpp
//   BM_cfg, BM_cfg_rescale        classifier_free_guidance around a null batched model (per
//                                 guided evaluation: the [x; x] copies, the guidance combine,
//                                 the rescale's host statistics)
//   BM_vp_model_denoiser          vp_model_denoiser around a null model (input scale + output
//                                 conversion)
//
// One benchmark iteration is one sampler step (k samplers: one `step(i)`, which may call the
// denoiser twice; diffusers-style: one model call = model_input(i) + step(i)), cycling
// i = 0 .. N-1, so the figures are averages over a whole chain (first and last steps
// included). At every i = 0 the latent is restored from its start value with timing paused.
// Steady state: the samplers' state buffers are allocated during one untimed warm-up chain;
// operator new is replaced in this binary to count heap allocations in the timed loop.
//
// Counters (per step; the step time is the benchmark thread's CPU time, latent restores
// excluded):
//   x_pass      step time / time of THE PASS (ops::combine y = a x + b z, re-measured right
//               before each benchmark's timed loop, median of 9 x 16 calls; pass_us): the
//               step in multiples of the one update op every sampler is built from
//   x_triad     step time / time of the triad (the same 2-read-1-write pass as a vectorised
//               loop, measured likewise): the step in multiples of a pass at the speed
//               the machine streams (the working set, 2-4 MiB, sits in L3 on the test machine)
//   op_passes   latent-sized reads + writes of the ops the step submits to the backend
//               (counted by a forwarding stream), divided by 3: the traffic the sampler
//               actually issues, in passes (host loops not included)
//   min_passes  the minimal traffic of the step's update(s) -- k reads + 1 write of the latent
//               per materialised result, as if each were one fused kernel -- divided by 3
//               (a hand count from the update formulas, see the registrations in main())
//   bound_frac  min_passes / x_triad: the fraction of a memory-bandwidth-bound implementation
//               the step reaches (1 = as fast as its minimal traffic streamed at triad speed)
//   noise       standard normals drawn per step, in latents
//   allocs      heap allocations per step in the timed loop (0 in steady state)
//   ops         backend ops per step
// The ops are single-threaded; the Time / CPU columns are Google Benchmark's own.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <functional>
#include <new>
#include <string>
#include <variant>
#include <vector>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/eigen/device.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/guidance.hpp"
#include "mmfuse/diffusion/samplers_common.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "mmfuse/diffusion/samplers_multistep.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/ops/random.hpp"

// ---------------------------------------------------------------------------------------
// Heap allocation counting: every form of operator new goes through here.

namespace {
std::atomic<std::uint64_t> heap_allocations{0};

void* counted_alloc(std::size_t n, std::size_t align) {
    heap_allocations.fetch_add(1, std::memory_order_relaxed);
    if (n == 0) n = 1;
    void* p = align <= alignof(std::max_align_t)
                  ? std::malloc(n)
                  : std::aligned_alloc(align, (n + align - 1) / align * align);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, std::size_t(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor;
using mmfuse::tensor_ref;
namespace dm = mmfuse::diffusion;
namespace ops = mmfuse::ops;
namespace backend = mmfuse::backend;

const extents latent_shape{8, 4, 64, 64};
constexpr const char* shape_name = "8x4x64x64";
constexpr int chain_steps = 25;

// ---------------------------------------------------------------------------------------
// A stream that counts what the samplers submit, then forwards to the Eigen stream.

class counting_stream final : public backend::stream {
public:
    explicit counting_stream(backend::stream& inner) noexcept : inner_(&inner) {}
    backend::device& device() noexcept override { return inner_->device(); }
    void execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                 std::span<const mmfuse::any_tensor_ref> out) override {
        ++ops_;
        for (const auto& t : in)
            elements_ += std::uint64_t(t.extents().numel());
        for (const auto& t : out)
            elements_ += std::uint64_t(t.extents().numel());
        if (const auto* c = std::get_if<ops::combine_desc>(&op); c && c->noise_scale != 0.0)
            normals_ += std::uint64_t(out[0].extents().numel());
        inner_->execute(op, in, out);
    }
    void synchronize() override { inner_->synchronize(); }

    void reset() noexcept { ops_ = elements_ = normals_ = 0; }
    std::uint64_t ops() const noexcept { return ops_; }
    std::uint64_t elements() const noexcept { return elements_; }
    std::uint64_t normals() const noexcept { return normals_; }

private:
    backend::stream* inner_;
    std::uint64_t ops_ = 0, elements_ = 0, normals_ = 0;
};

backend::stream& eigen_stream() {
    return backend::eigen::eigen_device::instance().default_stream();
}
counting_stream& counted() {
    static counting_stream s(eigen_stream());
    return s;
}

/// Seconds of THE PASS (ops::combine y = a x + b z over one latent) and of the same
/// arithmetic as a plain vectorised loop (the triad), measured by `measure_passes` right
/// before each benchmark's timed loop (so that both sides of a ratio see the same machine
/// load on a shared host).
double pass_seconds = 0.0;
double triad_seconds = 0.0;
void measure_passes();

double thread_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

tensor<float> normal_latent(std::uint64_t seed, double std = 1.0) {
    tensor<float> t(latent_shape);
    mmfuse::philox_generator gen(seed);
    mmfuse::fill_normal(gen, t.ref(), 0.0, std);
    return t;
}

/// Brackets a timed loop: resets the counters and starts a thread-CPU clock before, reports
/// the per-step counters after. `pause()` / `resume()` wrap untimed work (both clocks).
struct step_counters {
    benchmark::State& state;
    double min_latents;
    std::uint64_t allocs_first = 0, allocs_last = 0;
    std::int64_t ticks = 0;
    double t0 = 0.0, paused = 0.0, pause_start = 0.0;

    step_counters(benchmark::State& s, double min_lat) : state(s), min_latents(min_lat) {
        measure_passes();
        counted().reset();
        t0 = thread_seconds();
    }
    /// Called at the end of every iteration: allocations are counted between the end of the
    /// first iteration and the end of the last, so Google Benchmark's own bookkeeping at the
    /// loop's start and end is not charged to the sampler.
    void tick() noexcept {
        allocs_last = heap_allocations.load(std::memory_order_relaxed);
        if (ticks++ == 0) allocs_first = allocs_last;
    }
    void pause() {
        state.PauseTiming();
        pause_start = thread_seconds();
    }
    void resume() {
        paused += thread_seconds() - pause_start;
        state.ResumeTiming();
    }
    void report() {
        const double it = double(state.iterations());
        const double step = (thread_seconds() - t0 - paused) / it;
        const double latent = double(latent_shape.numel());
        const double op_latents = double(counted().elements()) / latent / it;
        const double x_triad = step / triad_seconds;
        state.counters["x_pass"] = step / pass_seconds;
        state.counters["x_triad"] = x_triad;
        state.counters["op_passes"] = op_latents / 3.0;
        state.counters["min_passes"] = min_latents / 3.0;
        state.counters["bound_frac"] = min_latents / 3.0 / x_triad;
        state.counters["noise"] = double(counted().normals()) / latent / it;
        state.counters["ops"] = double(counted().ops()) / it;
        state.counters["pass_us"] = pass_seconds * 1e6;
        state.counters["allocs"] =
            ticks > 1 ? double(allocs_last - allocs_first) / double(ticks - 1) : 0.0;
    }
};

bool all_finite(const tensor<float>& x) {
    return std::all_of(x.data(), x.data() + x.numel(), [](float v) { return std::isfinite(v); });
}

// ---------------------------------------------------------------------------------------
// Reference passes.

void bm_combine2(benchmark::State& state) {
    const tensor<float> a = normal_latent(1), b = normal_latent(2);
    tensor<float> y(latent_shape);
    const ops::op_context cx(counted(), "bench");
    ops::combine<float>(cx, y.ref(), {a.cref(), b.cref()}, {0.5, -1.25});
    step_counters c(state, 3.0);
    for (auto _ : state) {
        ops::combine<float>(cx, y.ref(), {a.cref(), b.cref()}, {0.5, -1.25});
        benchmark::ClobberMemory();
        c.tick();
    }
    c.report();
    state.SetBytesProcessed(std::int64_t(state.iterations()) * 3 * latent_shape.numel() * 4);
}

/// y = 0.5 a - 1.25 b as a plain loop (vectorised by the compiler).
void triad(const tensor<float>& a, const tensor<float>& b, tensor<float>& y) {
    const std::size_t n = std::size_t(y.numel());
    const float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    float* __restrict py = y.data();
    for (std::size_t i = 0; i < n; ++i)
        py[i] = 0.5f * pa[i] - 1.25f * pb[i];
}

void bm_triad(benchmark::State& state) {
    const tensor<float> a = normal_latent(1), b = normal_latent(2);
    tensor<float> y(latent_shape);
    step_counters c(state, 3.0);
    for (auto _ : state) {
        triad(a, b, y);
        benchmark::ClobberMemory();
        c.tick();
    }
    c.report();
    state.SetBytesProcessed(std::int64_t(state.iterations()) * 3 * latent_shape.numel() * 4);
}

void bm_memcpy(benchmark::State& state) {
    const tensor<float> a = normal_latent(1);
    tensor<float> y(latent_shape);
    step_counters c(state, 2.0);
    for (auto _ : state) {
        std::memcpy(y.data(), a.data(), std::size_t(a.numel()) * sizeof(float));
        benchmark::ClobberMemory();
        c.tick();
    }
    c.report();
    state.SetBytesProcessed(std::int64_t(state.iterations()) * 2 * latent_shape.numel() * 4);
}

/// Median time of `pass()` over 9 blocks of 16 calls (thread CPU time; block 0 warms up).
template <class Pass>
double median_time(Pass&& pass) {
    std::vector<double> blocks;
    for (int blk = 0; blk < 10; ++blk) {
        const double t0 = thread_seconds();
        for (int k = 0; k < 16; ++k)
            pass();
        if (blk > 0) blocks.push_back((thread_seconds() - t0) / 16.0);
    }
    std::nth_element(blocks.begin(), blocks.begin() + 4, blocks.end());
    return blocks[4];
}

/// Measures THE PASS and the triad.
void measure_passes() {
    const tensor<float> a = normal_latent(1), b = normal_latent(2);
    tensor<float> y(latent_shape);
    const ops::op_context cx(eigen_stream(), "bench");
    pass_seconds = median_time(
        [&] { ops::combine<float>(cx, y.ref(), {a.cref(), b.cref()}, {0.5, -1.25}); });
    triad_seconds = median_time([&] {
        triad(a, b, y);
        benchmark::DoNotOptimize(y.data());
    });
}

// ---------------------------------------------------------------------------------------
// Null denoisers.

/// A sigma-space denoiser that does nothing, except (when `fill`) write 0.5 x, used in the
/// untimed warm-up so that the sampler's buffers hold ordinary numbers.
struct null_denoiser {
    bool fill = true;
    void operator()(tensor_ref<const float> x, double, tensor_ref<float> out) const {
        if (!fill) return;
        std::transform(x.data(), x.data() + x.numel(), out.data(), [](float v) { return 0.5f * v; });
    }
};

/// Runs `f(noise)` with a Philox noise source, or with `no_noise` for a deterministic
/// configuration (so that the sampler is timed as a user would run it).
template <class F>
void with_noise(bool noisy, mmfuse::philox_generator& gen, F&& f) {
    if (noisy) {
        dm::philox_noise<float> n(gen);
        f(n);
    } else {
        dm::no_noise<float> n;
        f(n);
    }
}

// ---------------------------------------------------------------------------------------
// k-diffusion samplers.

std::vector<double> k_sigmas() {
    std::vector<double> s = dm::karras_sigmas(0.0292, 14.6146, chain_steps);  // SD's range
    s.push_back(0.0);
    return s;
}

/// Times k_sampler steps; `make(cx)` builds the sampler.
template <class Make>
void bm_k(benchmark::State& state, Make make, bool noisy, double min_latents) {
    try {
        const ops::op_context cx(counted(), "bench");
        dm::k_sampler<float> sampler = make(cx);
        const int n = sampler.steps();
        const tensor<float> start = normal_latent(7, sampler.init_noise_sigma());
        tensor<float> x = start.clone();
        mmfuse::philox_generator gen(11);
        null_denoiser den;
        with_noise(noisy, gen, [&](auto& noise) {
            for (int i = 0; i < n; ++i)  // warm-up chain: buffers allocated and filled
                sampler.step(den, i, x.ref(), noise);
            den.fill = false;
            int i = 0;
            step_counters c(state, min_latents);
            for (auto _ : state) {
                if (i == 0) {
                    c.pause();
                    std::copy(start.data(), start.data() + start.numel(), x.data());
                    c.resume();
                }
                sampler.step(den, i, x.ref(), noise);
                benchmark::ClobberMemory();
                c.tick();
                i = i + 1 == n ? 0 : i + 1;
            }
            c.report();
        });
        if (!all_finite(x)) state.SkipWithError("non-finite latent after the timed loop");
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bm_k_method(benchmark::State& state, dm::k_method m, dm::k_options o, bool noisy,
                 double min_latents) {
    bm_k(
        state,
        [&](const ops::op_context& cx) { return dm::k_sampler<float>(cx, m, k_sigmas(), o); },
        noisy, min_latents);
}

void bm_edm(benchmark::State& state) {
    // The paper's ImageNet-64 churn (Karras et al. 2022, Table 5): S_churn 40, S_min 0.05,
    // S_max 50, S_noise 1.003; one draw per step (edm's randn_like).
    // min: Heun 7 (see bm_k registrations) + churn x += s z (1 read + 1 write).
    bm_k(
        state,
        [](const ops::op_context& cx) {
            return dm::edm_sampler<float>(cx, {.num_steps = chain_steps, .s_churn = 40.0,
                                               .s_min = 0.05, .s_max = 50.0, .s_noise = 1.003});
        },
        true, 9.0);
}

// ---------------------------------------------------------------------------------------
// diffusers-style samplers: the per-call loop model_input(i) -> (null model) -> step(i).

const dm::noise_schedule& sd_schedule() {
    static const dm::noise_schedule s({.beta_start = 0.00085,
                                       .beta_end = 0.012,
                                       .betas = dm::beta_schedule::scaled_linear});
    return s;
}

template <class Sampler>
void run_diffusers(benchmark::State& state, Sampler& sampler, bool noisy, double min_latents) {
    sampler.set_timesteps(chain_steps);
    const int n = sampler.calls();
    const tensor<float> start = normal_latent(7, sampler.init_noise_sigma());
    const tensor<float> out = normal_latent(8);  // the fixed "model output"
    tensor<float> x = start.clone();
    mmfuse::philox_generator gen(11);
    with_noise(noisy, gen, [&](auto& noise) {
        for (int i = 0; i < n; ++i) {  // warm-up chain
            benchmark::DoNotOptimize(sampler.model_input(i, x.cref()).data());
            sampler.step(i, out.cref(), x.ref(), noise);
        }
        int i = 0;
        step_counters c(state, min_latents);
        for (auto _ : state) {
            if (i == 0) {
                c.pause();
                std::copy(start.data(), start.data() + start.numel(), x.data());
                c.resume();
            }
            benchmark::DoNotOptimize(sampler.model_input(i, x.cref()).data());
            sampler.step(i, out.cref(), x.ref(), noise);
            benchmark::ClobberMemory();
            c.tick();
            i = i + 1 == n ? 0 : i + 1;
        }
        c.report();
    });
    if (!all_finite(x)) state.SkipWithError("non-finite latent after the timed loop");
}

void bm_ddim(benchmark::State& state, dm::ddim_options o, double min_latents) {
    try {
        auto s = dm::ddim_sampler<float>(ops::op_context(counted(), "bench"), sd_schedule(), o);
        run_diffusers(state, s, o.eta > 0.0, min_latents);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bm_ddpm(benchmark::State& state) {
    try {
        auto s = dm::ddpm_sampler<float>(ops::op_context(counted(), "bench"), sd_schedule(),
                                         {.x0 = {.clip_sample = false}});
        // min: x' = a x + b out + std z (2 reads + 1 write)
        run_diffusers(state, s, true, 3.0);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bm_euler(benchmark::State& state, bool ancestral) {
    try {
        dm::euler_sampler<float> s(ops::op_context(counted(), "bench"), sd_schedule(),
                                   {.ancestral = ancestral});
        // min: model input x / sqrt(s^2 + 1) (1 read + 1 write) + x' = a x + b out [+ s z]
        run_diffusers(state, s, ancestral, 5.0);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// A samplers_multistep.hpp sampler built by `make(cx)` (all deterministic).
template <class Make>
void bm_multistep(benchmark::State& state, Make make, double min_latents) {
    try {
        auto s = make(ops::op_context(counted(), "bench"));
        run_diffusers(state, s, false, min_latents);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

// ---------------------------------------------------------------------------------------
// Guidance and the VP-model adaptor.

/// A batched model that does nothing (except fill 0.5 x while `fill`).
struct null_batched_model {
    bool* fill;
    void operator()(tensor_ref<const float> x, double, tensor_ref<float> out) const {
        if (!*fill) return;
        std::transform(x.data(), x.data() + x.numel(), out.data(), [](float v) { return 0.5f * v; });
    }
};

void bm_cfg(benchmark::State& state, double rescale) {
    try {
        bool fill = true;
        dm::classifier_free_guidance<float, null_batched_model> guided(
            ops::op_context(counted(), "bench"), null_batched_model{&fill}, 7.5, rescale);
        const tensor<float> x = normal_latent(7);
        tensor<float> out(latent_shape);
        guided(x.cref(), 500.0, out.ref());  // warm-up: buffers allocated and filled
        fill = false;
        // min: [x; x] (1 read + 2 writes), out = u + g (c - u) (2 reads + 1 write);
        // rescale: std of c and of out (2 reads), out *= f (1 read + 1 write)
        step_counters c(state, rescale > 0.0 ? 10.0 : 6.0);
        for (auto _ : state) {
            guided(x.cref(), 500.0, out.ref());
            benchmark::ClobberMemory();
            c.tick();
        }
        c.report();
        if (!all_finite(out)) state.SkipWithError("non-finite output");
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void bm_vp_model_denoiser(benchmark::State& state) {
    try {
        bool fill = true;
        dm::vp_model_denoiser<float, null_batched_model> den(
            ops::op_context(counted(), "bench"), null_batched_model{&fill}, sd_schedule(),
            dm::prediction_type::v_prediction);
        const tensor<float> x = normal_latent(7, 14.6);
        tensor<float> out(latent_shape);
        const std::vector<double> sig = k_sigmas();
        den(x.cref(), sig[0], out.ref());
        fill = false;
        // min: x / sqrt(s^2 + 1) (1 read + 1 write), D = a x + b out (2 reads + 1 write)
        step_counters c(state, 5.0);
        std::size_t i = 0;
        for (auto _ : state) {
            den(x.cref(), sig[i], out.ref());
            benchmark::ClobberMemory();
            c.tick();
            i = i + 2 == sig.size() ? 0 : i + 1;  // the positive sigmas
        }
        c.report();
        if (!all_finite(out)) state.SkipWithError("non-finite output");
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

std::string bm_name(const char* sampler, const char* backend_name = "eigen") {
    std::string n = "BM_";  // built with += (GCC 12 -Wrestrict false positive on "lit" + s)
    n += sampler;
    n += "/";
    n += backend_name;
    n += "/";
    n += shape_name;
    return n;
}

template <class F, class... Args>
void add(const char* sampler, F f, Args... args) {
    benchmark::RegisterBenchmark(bm_name(sampler).c_str(), f, args...)
        ->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    measure_passes();
    benchmark::AddCustomContext("the_pass_combine2_us_at_start", std::to_string(pass_seconds * 1e6));
    benchmark::AddCustomContext("triad_us_at_start", std::to_string(triad_seconds * 1e6));
    benchmark::AddCustomContext("latent", "8x4x64x64 f32 (131072 elements, 512 KiB)");

    benchmark::RegisterBenchmark(bm_name("combine2").c_str(), bm_combine2)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(bm_name("triad", "host").c_str(), bm_triad)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(bm_name("memcpy", "host").c_str(), bm_memcpy)
        ->Unit(benchmark::kMicrosecond);

    using km = dm::k_method;
    // Minimal traffic per step in latents (k reads + 1 write per materialised result; steps
    // averaged where the first / last step differ, N = 25):
    //   euler, euler_ancestral: x' = a x + b D (+ s z)                              3
    //   heun, dpm_2: x2 = a x + b D (3), x' from x, D, D2 (x2 is affine in x, D) (4)    7
    //   dpmpp_2m: x' = a x + b D + c D_old                                          4
    //   dpmpp_2s_ancestral: x2 (3), x' = a x + b D2 + s z (3)                       6
    //   lms (order 4): d = (x - D)/s stored (3), x' = x + sum c_j d_j (5 reads + 1 write)  9
    const auto avg = [](double first, double middle, double last) {
        return (first + middle * (chain_steps - 2) + last) / chain_steps;
    };
    add("k_euler", bm_k_method, km::euler, dm::k_options{}, false, 3.0);
    add("k_euler_ancestral", bm_k_method, km::euler_ancestral, dm::k_options{}, true, 3.0);
    add("k_heun", bm_k_method, km::heun, dm::k_options{}, false, avg(7, 7, 3));
    add("k_dpm_2", bm_k_method, km::dpm_2, dm::k_options{}, false, avg(7, 7, 3));
    add("k_dpmpp_2m", bm_k_method, km::dpmpp_2m, dm::k_options{}, false, avg(3, 4, 3));
    add("k_dpmpp_2s_ancestral", bm_k_method, km::dpmpp_2s_ancestral, dm::k_options{}, true,
        avg(6, 6, 3));
    // lms: first steps have a shorter history (q = 1, 2, 3: 3 + q + 2 latents)
    add("k_lms", bm_k_method, km::lms, dm::k_options{}, false,
        (6.0 + 7.0 + 8.0 + 9.0 * (chain_steps - 3)) / chain_steps);
    add("edm", bm_edm);

    // diffusers-style (SD-1.x schedule, clip off as in SD's config unless named):
    //   ddim: x' = a x + b out (the x0 / eps conversions are affine)                3
    //   ddim_clip / ddim_threshold: x0 materialised and processed (3 + 2), then
    //   x' = a x0 + b x + c out (4)                                                 9
    add("ddpm", bm_ddpm);
    add("ddim", bm_ddim, dm::ddim_options{.x0 = {.clip_sample = false}}, 3.0);
    add("ddim_eta1", bm_ddim, dm::ddim_options{.x0 = {.clip_sample = false}, .eta = 1.0}, 3.0);
    add("ddim_clip", bm_ddim, dm::ddim_options{.x0 = {.clip_sample = true}}, 9.0);
    add("ddim_threshold", bm_ddim,
        dm::ddim_options{.x0 = {.thresholding = true, .sample_max_value = 1.5}}, 9.0);
    add("euler", bm_euler, false);
    add("euler_ancestral", bm_euler, true);
    // samplers_multistep.hpp (per model call; hand counts, N = 25):
    //   lms (order 4): input scale (2), d_i = a x + b out stored (3), x' = x + sum c_j d_j
    //     (q + 1 reads + 1 write; q = 1, 2, 3, then 4)
    //   heun: first-order call: input (2), x saved (2), d1 stored (3), x' (3); second-order
    //     call: input (2), x' from x_saved, d1, x, out (5); 25 + 24 calls
    //   dpm_solver (2M): m_i = a x + b out stored (3), x' from x, m_i, m_{i-1} (4; 3 on the
    //     first and last step)
    //   unipc (bh2, order 2): m_i stored (3), corrector from last, m_{i-1}, m_i (4; not at
    //     step 0), predictor from x, m_i, m_{i-1} (4; 3 on the first and last step)
    //   pndm (PLMS): e_i kept (2), x' from x and up to 4 e's (6 at 4th order)
    const auto make_lms = [](ops::op_context cx) {
        return dm::lms_sampler<float>(cx, sd_schedule(), {});
    };
    add("lms", bm_multistep<decltype(make_lms)>, make_lms,
        (2 * 25.0 + 3 * 25.0 + 3 + 4 + 5 + 6 * 22.0) / 25.0);
    const auto make_heun = [](ops::op_context cx) {
        return dm::heun_sampler<float>(cx, sd_schedule(), {});
    };
    add("heun", bm_multistep<decltype(make_heun)>, make_heun,
        (25 * 10.0 + 24 * 7.0) / 49.0);
    const auto make_dpm_solver = [](ops::op_context cx) {
        return dm::dpm_solver_sampler<float>(cx, sd_schedule(), {});
    };
    add("dpm_solver", bm_multistep<decltype(make_dpm_solver)>, make_dpm_solver,
        avg(6, 7, 6));
    const auto make_dpm_solver_3 = [](ops::op_context cx) {
        return dm::dpm_solver_sampler<float>(cx, sd_schedule(), {.solver_order = 3});
    };
    add("dpm_solver_3", bm_multistep<decltype(make_dpm_solver_3)>, make_dpm_solver_3,
        (6 + 7 + 8 * 22.0 + 6) / 25.0);
    const auto make_unipc = [](ops::op_context cx) {
        return dm::unipc_sampler<float>(cx, sd_schedule(), {});
    };
    add("unipc", bm_multistep<decltype(make_unipc)>, make_unipc,
        (6 + 11 * 23.0 + 10) / 25.0);
    const auto make_pndm = [](ops::op_context cx) {
        return dm::pndm_sampler<float>(cx, sd_schedule(),
                                       {.steps_offset = 1, .skip_prk_steps = true});
    };
    add("pndm", bm_multistep<decltype(make_pndm)>, make_pndm,
        (5 + 5 + 6 + 7 + 8 * 22.0) / 26.0);
    add("cfg", bm_cfg, 0.0);
    add("cfg_rescale", bm_cfg, 0.7);
    add("vp_model_denoiser", bm_vp_model_denoiser);

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
