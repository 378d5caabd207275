// diffusion_digits — a class-conditional diffusion model on 8x8 handwritten digits, sampled
// with classifier-free guidance by three samplers, and judged by a digit classifier.
//
// The data. 1,797 images of digits (examples/data/digits, 8x8 pixels 0..16), scaled to
// [-1, 1] and flattened to 64 values, split 80/20 per class with a fixed seed (the split of
// contrastive_digits; the same for every --seed).
//
// The denoiser: an MLP whose hidden layers are modulated by the condition (FiLM, Perez et
// al. 2018; the "scale-shift norm" of Dhariwal & Nichol 2021 without the norm). Parameter
// names are PyTorch state_dict names:
//   condition  c = SiLU(time_fc(sinusoidal(t)) + class_embedding[y])   (B, 128)
//              sinusoidal(t): 16 sines and 16 cosines of t * 10000^(-k/16) (Vaswani et al.
//              2017, as DDPM's timestep embedding); y in 0..9, or 10 = "no class"
//   input      h = in_fc(x_t)                                          64 -> 256
//   3 blocks   a = fc1(h);  (s, b) = film(c);  h = h + fc2(SiLU(a * (1 + s) + b))
//                                                                      blocks.i.fc1 / film / fc2
//   output     v = out_fc(SiLU(h))                                     256 -> 64
// It predicts v = sqrt(ac) eps - sqrt(1 - ac) x0 (Salimans & Ho 2022) under the cosine
// schedule of Nichol & Dhariwal 2021 (1000 steps), trained with diffusion::add_noise,
// velocity_target, sample_timesteps and min-SNR-5 weights (Hang et al. 2023), AdamW with a
// cosine learning rate, and an exponential moving average of the weights for sampling.
// The class is replaced by "no class" for 10 % of the training images, so that one network
// is both the conditional and the unconditional model classifier-free guidance needs (Ho &
// Salimans 2022): out = out_u + g (out_c - out_u), both halves in ONE batched call
// (diffusion::classifier_free_guidance).
//
// Sampling: 10 classes x --samples images from the same starting noise, with
//   DDIM                (diffusion::ddim_sampler, trailing timesteps, eta 0, no x0 clipping)
//   DPM-Solver++(2M)    (diffusion::dpm_solver_sampler, order 2, diffusers' defaults; Lu et
//                        al. 2022), and the same method in k-diffusion form
//                        (diffusion::k_sampler, k_method::dpmpp_2m) as a cross-check
//   Euler ancestral     (diffusion::k_sampler, k_method::euler_ancestral, eta 1)
// the k-diffusion samplers on the network through diffusion::vp_model_denoiser, over the
// sigmas of the timesteps linspace(999, 0, N) (diffusers' Euler grid) and a final 0 (the
// diffusers DPM-Solver uses its own N+1 grid, so the two forms differ slightly).
// DDIM runs without diffusers' default clip_sample: that clips x0 but keeps the unclipped
// eps, so every step whose x0 estimate leaves [-1, 1] adds an error; with 50 steps the
// samples came out visibly grainy (and scored lower) while 10 steps looked clean. All samples
// are clamped to [-1, 1] at the end instead.
//
// The judge: a small MLP classifier (64 -> 128 -> ReLU -> 10) trained on the real training
// images. A generated image counts as correct when the classifier reads the digit it was
// asked for. Reported: that accuracy per sampler and step count, the classifier's accuracy
// on the real held-out images (its ceiling), and chance (10 %); and, as the accuracy is near
// its ceiling for every sampler, the RMS pixel distance of each sampler's images to DDIM's
// at the most steps (same start noise: the deterministic samplers solve the same ODE, so
// this says how close each is to converged), and the accuracy without guidance. One PNG per sampler
// and step count (rows: digits 0..9, columns: samples) goes into --out, with real.png, held-out
// images in the same layout.
//
// Usage: diffusion_digits [--epochs N] [--seed S] [--threads N] [--steps-list 10,20,50]
//                         [--guidance G] [--samples N] [--data DIR] [--out DIR]
// Exit status 1 when DDIM at its largest step count scores below 50 %, 2 on bad arguments or
// data.

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/classification.hpp"
#include "common/digits.hpp"
#include "common/flags.hpp"
#include "common/png.hpp"
#include "common/report.hpp"
#include "common/weighted_mse.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/diffusion/denoiser.hpp"
#include "mmfuse/diffusion/guidance.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/samplers_k.hpp"
#include "mmfuse/diffusion/samplers_multistep.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/diffusion/training.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/embedding.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/schedule.hpp"

#ifndef MMFUSE_EXAMPLE_DATA_DIR
#define MMFUSE_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace mf = mmfuse;
namespace df = mmfuse::diffusion;
using mf::index_t;

constexpr index_t pixels = examples::digits_dataset::pixels_per_image;  // 64
constexpr index_t classes = examples::digits_dataset::classes;          // 10
// The "unconditional" label.
constexpr std::int64_t no_class = classes;
constexpr index_t time_features = 32;  // sinusoidal timestep features
constexpr index_t cond_width = 128;    // the condition vector c
constexpr index_t hidden = 256;        // the denoiser's width
constexpr int film_blocks = 3;

// The DDPM / Transformer timestep features of t (may be fractional) into row r of `out`
// (R, 32): out[r, k] = sin(t f_k), out[r, 16 + k] = cos(t f_k), f_k = 10000^(-k/16).
void timestep_features(double t, mf::tensor<float>& out, index_t r) {
    constexpr index_t half = time_features / 2;
    for (index_t k = 0; k < half; ++k) {
        const double f = std::exp(-std::log(10000.0) * double(k) / double(half));
        out(r, k) = float(std::sin(t * f));
        out(r, half + k) = float(std::cos(t * f));
    }
}

// ---- the denoiser ----------------------------------------------------------------------
// One residual FiLM block: h (B, H), c (B, C) -> h + fc2(SiLU(fc1(h) * (1 + s) + b)) with
// (s, b) = film(c) split in halves. Backward returns dh and writes its dc into `dcond`
// (adds it when `accumulate`).
struct film_block {
    using value_type = float;
    mf::nn::linear<hidden, hidden> fc1{};
    mf::nn::linear<cond_width, 2 * hidden> film{};
    mf::nn::silu<float> act{};
    mf::nn::linear<hidden, hidden> fc2{};
    std::string path;
    mf::tensor_ref<const float> a_{}, scale_{};  // saved for backward (workspace views)

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("fc1", fc1);
        v.child("film", film);
        v.child("fc2", fc2);
    }
    void reset_parameters(mf::philox_generator& g) {
        fc1.reset_parameters(g);
        film.reset_parameters(g);
        fc2.reset_parameters(g);
    }
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const float> h,
                                        mf::tensor_ref<const float> c) {
        const auto op = cx.op(path);
        const auto a = fc1.forward(cx, h);
        const auto f = film.forward(cx, c);
        const auto s = f.narrow(1, 0, hidden), b = f.narrow(1, hidden, hidden);
        const auto m = cx.allocate(a.extents());
        mf::ops::binary(op, mf::ops::binary_kind::mul, a, s, m);  // a * s
        mf::ops::combine<float>(op, m, {a, m, b}, {1.0, 1.0, 1.0});
        const auto r = fc2.forward(cx, act.forward(cx, m));
        const auto out = cx.allocate(h.extents());
        mf::ops::add(op, h, r, out);
        a_ = a;
        scale_ = s;
        return out;
    }
    mf::tensor_ref<const float> backward(mf::nn::step_context<float>& cx,
                                         mf::tensor_ref<const float> dh,
                                         mf::tensor_ref<float> dcond, bool accumulate) {
        const auto op = cx.op(path);
        const auto dm = act.backward(cx, fc2.backward(cx, dh));
        const auto da = cx.allocate(dm.extents());  // dm * (1 + s)
        mf::ops::binary(op, mf::ops::binary_kind::mul, dm, scale_, da);
        mf::ops::combine<float>(op, da, {da, dm}, {1.0, 1.0});
        const auto dfilm = cx.allocate({dm.extent(0), 2 * hidden});  // [dm * a, dm]
        mf::ops::binary(op, mf::ops::binary_kind::mul, dm, a_, dfilm.narrow(1, 0, hidden));
        mf::ops::copy(op, dm, dfilm.narrow(1, hidden, hidden));
        const auto dc = film.backward(cx, dfilm);
        if (accumulate)
            mf::ops::combine<float>(op, dcond, {dcond, dc}, {1.0, 1.0});
        else
            mf::ops::copy(op, dc, dcond);
        const auto dx = fc1.backward(cx, da);
        const auto dh_in = cx.allocate(dh.extents());
        mf::ops::add(op, dh, dx, dh_in);
        return dh_in;
    }
};

struct film_denoiser {
    using value_type = float;
    mf::nn::linear<time_features, cond_width> time_fc{};
    mf::nn::embedding<classes + 1, cond_width> class_embedding{};
    mf::nn::silu<float> cond_act{};
    mf::nn::linear<pixels, hidden> in_fc{};
    std::array<film_block, film_blocks> blocks{};
    mf::nn::silu<float> out_act{};
    mf::nn::linear<hidden, pixels> out_fc{};
    std::string path;

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("time_fc", time_fc);
        v.child("class_embedding", class_embedding);
        v.child("in_fc", in_fc);
        for (int i = 0; i < film_blocks; ++i) {
            std::string name = "blocks.";
            name += std::to_string(i);
            v.child(name, blocks[std::size_t(i)]);
        }
        v.child("out_fc", out_fc);
    }
    void reset_parameters(mf::philox_generator& g) {
        time_fc.reset_parameters(g);
        class_embedding.reset_parameters(g);
        in_fc.reset_parameters(g);
        for (auto& b : blocks)
            b.reset_parameters(g);
        out_fc.reset_parameters(g);
    }

    // x_t (B, 64), timestep features (B, 32), labels (B) in 0..10 -> prediction (B, 64).
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const float> x,
                                        mf::tensor_ref<const float> t_features,
                                        mf::tensor_ref<const std::int64_t> labels) {
        const auto te = time_fc.forward(cx, t_features);
        const auto ce = class_embedding.forward(cx, labels);
        const auto sum = cx.allocate(te.extents());
        mf::ops::add(cx.op(path), te, ce, sum);
        const auto c = cond_act.forward(cx, sum);
        auto h = in_fc.forward(cx, x);
        for (auto& b : blocks)
            h = b.forward(cx, h, c);
        return out_fc.forward(cx, out_act.forward(cx, h));
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        auto dh = out_act.backward(cx, out_fc.backward(cx, dy));
        const auto dcond = cx.allocate({dy.extent(0), cond_width});
        for (auto b = blocks.rbegin(); b != blocks.rend(); ++b)
            dh = b->backward(cx, dh, dcond, b != blocks.rbegin());
        in_fc.backward(cx, dh);
        const auto dsum = cond_act.backward(cx, dcond);
        time_fc.backward(cx, dsum);
        class_embedding.backward(cx, dsum);
    }
};

// ---- the judge -------------------------------------------------------------------------
using digit_classifier = mf::nn::mlp<pixels, 128, classes>;

// ---- sampling --------------------------------------------------------------------------
// The batched model classifier-free guidance calls: rows [0, B) carry "no class", rows
// [B, 2B) the requested classes; every row sees the same timestep.
struct batched_denoiser {
    mf::nn::model<film_denoiser>* model;
    mf::nn::step_context<float>* cx;
    mf::tensor<std::int64_t> labels;  // (2B)
    mf::tensor<float> features;       // (2B, 32)

    void operator()(mf::tensor_ref<const float> x, double t, mf::tensor_ref<float> out) {
        for (index_t r = 0; r < features.extent(0); ++r)
            timestep_features(t, features, r);
        cx->workspace->reset();
        const auto y = model->net().forward(*cx, x, features.cref(), labels.cref());
        mf::ops::copy(cx->op("sampler"), y, out);
    }
};

enum class sampler_kind { ddim, dpmpp_2m, dpmpp_2m_k, euler_ancestral };
constexpr std::array<sampler_kind, 4> all_samplers = {sampler_kind::ddim, sampler_kind::dpmpp_2m,
                                                      sampler_kind::dpmpp_2m_k,
                                                      sampler_kind::euler_ancestral};
const char* sampler_name(sampler_kind k) {
    switch (k) {
        case sampler_kind::ddim:
            return "DDIM";
        case sampler_kind::dpmpp_2m:
            return "DPM-Solver++ 2M";
        case sampler_kind::dpmpp_2m_k:
            return "  k-diffusion form";
        case sampler_kind::euler_ancestral:
            return "Euler ancestral";
    }
    return "?";
}
const char* sampler_file(sampler_kind k) {
    switch (k) {
        case sampler_kind::ddim:
            return "ddim";
        case sampler_kind::dpmpp_2m:
            return "dpmpp_2m";
        case sampler_kind::dpmpp_2m_k:
            return "dpmpp_2m_k";
        case sampler_kind::euler_ancestral:
            return "euler_ancestral";
    }
    return "?";
}

// Samples with `kind` in `steps` steps for the classes `wanted` (B), from the start noise
// `z` (B, 64) ~ N(0, I); guidance scale `g`; ancestral noise from `noise_gen`. Returns the
// samples clamped to [-1, 1].
mf::tensor<float> generate(sampler_kind kind, int steps, const std::vector<int>& wanted,
                           const mf::tensor<float>& z, double g, const df::noise_schedule& sched,
                           mf::nn::model<film_denoiser>& model, mf::nn::step_context<float>& cx,
                           mf::philox_generator& noise_gen) {
    const index_t b = index_t(wanted.size());
    batched_denoiser batched{&model, &cx, mf::tensor<std::int64_t>({2 * b}),
                             mf::tensor<float>({2 * b, time_features})};
    for (index_t r = 0; r < b; ++r) {
        batched.labels[r] = no_class;
        batched.labels[b + r] = wanted[std::size_t(r)];
    }
    const mf::ops::op_context op = cx.op("sampler");
    df::classifier_free_guidance<float, batched_denoiser> guided(op, std::move(batched), g);
    mf::tensor<float> x(z.extents());
    if (kind == sampler_kind::ddim) {
        auto s = df::ddim_sampler<float>(op, sched,
                                         {.spacing = df::timestep_spacing::trailing,
                                          .prediction = sched.config().prediction,
                                          .x0 = {.clip_sample = false}});
        s.set_timesteps(steps);
        df::lincomb<float>(op, x.ref(), {z.cref()}, {s.init_noise_sigma()});
        s.sample(guided, x.ref());
    } else if (kind == sampler_kind::dpmpp_2m) {
        auto s =
            df::dpm_solver_sampler<float>(op, sched, {.prediction = sched.config().prediction});
        s.set_timesteps(steps);
        df::lincomb<float>(op, x.ref(), {z.cref()}, {s.init_noise_sigma()});
        s.sample(guided, x.ref());
    } else {
        // diffusers' Euler grid: sigma at the timesteps linspace(T-1, 0, N), then 0.
        std::vector<double> sigmas;
        for (const double t :
             df::timesteps(sched, steps, df::timestep_spacing::linspace, 0, false, false))
            sigmas.push_back(sched.sigma_at(t));
        sigmas.push_back(0.0);
        const auto method = kind == sampler_kind::dpmpp_2m_k ? df::k_method::dpmpp_2m
                                                             : df::k_method::euler_ancestral;
        df::k_sampler<float> s(op, method, sigmas);
        df::vp_model_denoiser<float, decltype(guided)> d(op, std::move(guided), sched,
                                                         sched.config().prediction);
        df::lincomb<float>(op, x.ref(), {z.cref()}, {s.init_noise_sigma()});
        s.sample(d, x.ref(), df::philox_noise<float>(noise_gen));
    }
    for (index_t i = 0; i < x.numel(); ++i)
        x[i] = std::clamp(x[i], -1.0f, 1.0f);
    return x;
}

// A grid of 8x8 images in [-1, 1] (rows of `images`, class-major: `per_class` per digit):
// row d shows the first `shown` images of digit d, each pixel a `zoom` x `zoom` grey block,
// 2 px of dark blue between images.
examples::rgb_image image_grid(const mf::tensor<float>& images, int rows, int per_class, int shown,
                               int zoom) {
    const int per_row = std::min(per_class, shown);
    constexpr int side = examples::digits_dataset::side, gap = 2;
    const int cell = side * zoom + gap;
    examples::rgb_image img(per_row * cell + gap, rows * cell + gap);
    const std::uint8_t border[3] = {20, 30, 60};
    for (int y = 0; y < img.height; ++y)
        for (int x = 0; x < img.width; ++x)
            img.set(x, y, border);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < per_row; ++c) {
            const index_t row = index_t(r) * per_class + c;
            for (int py = 0; py < side * zoom; ++py)
                for (int px = 0; px < side * zoom; ++px) {
                    const float v = images(row, index_t(py / zoom) * side + px / zoom);
                    const auto grey = std::uint8_t(std::lround(127.5 * (double(v) + 1.0)));
                    const std::uint8_t colour[3] = {grey, grey, grey};
                    img.set(gap + c * cell + px, gap + r * cell + py, colour);
                }
        }
    return img;
}

using examples::seconds_since;

int run(int argc, char** argv) {
    index_t epochs = 60;
    std::uint64_t seed = 1;
    int threads = 1;
    std::vector<std::uint64_t> steps_list = {10, 20, 50};
    double guidance = 2.0;
    index_t per_class = 40;
    std::filesystem::path out = "out/diffusion_digits";
    std::filesystem::path data = MMFUSE_EXAMPLE_DATA_DIR;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf(
                "usage: %s [--epochs N] [--seed S] [--threads N] [--steps-list A,B,..]\n"
                "          [--guidance G] [--samples N] [--data DIR] [--out DIR]\n"
                "  --epochs N         passes over the training images (default 60)\n"
                "  --seed S           initialisation, batches, noise (default 1); the\n"
                "                     train/test split is fixed\n"
                "  --threads N        Eigen's thread count (only effective in a build with\n"
                "                     OpenMP, default 1)\n"
                "  --steps-list L     sampler step counts to compare (default 10,20,50)\n"
                "  --guidance G       classifier-free guidance scale (default 2; 1 = none)\n"
                "  --samples N        images generated per digit and sampler (default 40)\n"
                "  --data DIR         folder with digits/digits.csv.gz (default %s)\n"
                "  --out DIR          where the PNG grids go (default out/diffusion_digits)\n",
                argv[0], MMFUSE_EXAMPLE_DATA_DIR);
            return 0;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value (see --help)\n", arg.c_str());
            return 2;
        }
        const std::string value = argv[++i];
        if (arg == "--epochs")
            epochs = index_t(examples::whole_number(arg, value));
        else if (arg == "--seed")
            seed = examples::whole_number(arg, value);
        else if (arg == "--threads")
            threads = int(std::min<std::uint64_t>(examples::whole_number(arg, value), 1024));
        else if (arg == "--steps-list")
            steps_list = examples::whole_number_list(arg, value);
        else if (arg == "--guidance")
            guidance = examples::real_number(arg, value);
        else if (arg == "--samples")
            per_class = index_t(std::min<std::uint64_t>(examples::whole_number(arg, value), 1000));
        else if (arg == "--data")
            data = value;
        else if (arg == "--out")
            out = value;
        else {
            std::fprintf(stderr, "unknown option %s (see --help)\n", arg.c_str());
            return 2;
        }
    }
    if (epochs < 1 || threads < 1 || per_class < 1) {
        std::fprintf(stderr, "--epochs, --threads and --samples must be >= 1\n");
        return 2;
    }
    for (const auto n : steps_list)
        if (n < 1 || n > 1000) {
            std::fprintf(stderr, "--steps-list: every step count must lie in [1, 1000]\n");
            return 2;
        }
    Eigen::setNbThreads(threads);
    const auto t_start = std::chrono::steady_clock::now();

    // ---- data: pixels in [-1, 1], a fixed stratified 80/20 split -------------------------
    const examples::digits_dataset digits =
        examples::load_digits(data / "digits" / "digits.csv.gz");
    const examples::digits_split split = examples::split_digits(digits, 0.2, /*seed=*/2024);
    const auto copy_image = [&](std::size_t img, mf::tensor<float>& x, index_t row) {
        for (index_t k = 0; k < pixels; ++k)
            x(row, k) = digits.pixels[img * std::size_t(pixels) + std::size_t(k)] / 8.0f - 1.0f;
    };
    const auto image_rows = [&](const std::vector<std::size_t>& which) {
        mf::tensor<float> x({index_t(which.size()), pixels});
        for (std::size_t r = 0; r < which.size(); ++r)
            copy_image(which[r], x, index_t(r));
        return x;
    };
    const auto labels_of = [&](const std::vector<std::size_t>& which) {
        std::vector<int> l;
        for (const std::size_t i : which)
            l.push_back(digits.labels[i]);
        return l;
    };
    std::printf("digits: %zu images, %zu for training, %zu held out\n", digits.size(),
                split.train.size(), split.test.size());

    mf::growing_arena workspace;
    mf::nn::step_context<float> cx{&mf::backend::default_stream(), &workspace, true};
    std::mt19937 rng{std::uint32_t(seed)};

    // ---- the judge: a classifier on the real training images -----------------------------
    mf::nn::model<digit_classifier> judge(digit_classifier{}, seed + 100);
    {
        const index_t batch = 32, judge_epochs = 30;
        std::vector<std::size_t> order = split.train;
        const index_t steps_per_epoch = index_t(order.size()) / batch;
        mf::optim::adamw opt(judge, {.lr = 2e-3, .weight_decay = 1e-2});
        mf::tensor<float> xb({batch, pixels}), dlogits({batch, classes});
        std::vector<int> yb(std::size_t(batch), 0);
        for (index_t e = 0; e < judge_epochs; ++e) {
            std::shuffle(order.begin(), order.end(), rng);
            for (index_t s = 0; s < steps_per_epoch; ++s) {
                for (index_t r = 0; r < batch; ++r) {
                    const std::size_t img = order[std::size_t(s * batch + r)];
                    copy_image(img, xb, r);
                    yb[std::size_t(r)] = digits.labels[img];
                }
                workspace.reset();
                judge.zero_grad();
                int unused = 0;
                examples::cross_entropy(cx, "judge.loss", judge.net().forward(cx, xb.cref()), yb,
                                        dlogits.ref(), unused);
                judge.net().backward(cx, dlogits.cref());
                opt.step(judge);
            }
        }
    }
    cx.training = false;
    const auto judge_accuracy = [&](const mf::tensor<float>& images, const std::vector<int>& want) {
        workspace.reset();
        int correct = 0;
        examples::cross_entropy(cx, "judge.loss", judge.net().forward(cx, images.cref()), want, {},
                                correct);
        return 100.0 * double(correct) / double(want.size());
    };
    const mf::tensor<float> x_test = image_rows(split.test);
    const double judge_real = judge_accuracy(x_test, labels_of(split.test));
    std::printf("judge: a %lld-parameter MLP classifier, %.1f%% on the held-out real images\n",
                (long long)judge.parameter_count(), judge_real);
    cx.training = true;

    // ---- the denoiser: v-prediction on the cosine schedule -------------------------------
    const df::noise_schedule sched({.num_train_timesteps = 1000,
                                    .betas = df::beta_schedule::squaredcos_cap_v2,
                                    .prediction = df::prediction_type::v_prediction});
    mf::nn::model<film_denoiser> model(film_denoiser{}, seed);
    std::printf("denoiser: %lld parameters (FiLM MLP, width %lld, %d blocks)\n",
                (long long)model.parameter_count(), (long long)hidden, film_blocks);
    auto& net = model.net();

    const index_t batch = 64;
    const index_t steps_per_epoch = index_t(split.train.size()) / batch;
    const index_t total_steps = epochs * steps_per_epoch;
    const double lr = 2e-3, ema_decay = 0.999, snr_gamma = 5.0, class_dropout = 0.1;
    mf::optim::adamw opt(model, {.lr = lr, .weight_decay = 1e-4});
    const mf::optim::cosine_with_warmup lr_schedule(lr, std::min<index_t>(200, total_steps / 5),
                                                    total_steps, lr * 0.05);
    mf::tensor<float> ema(model.parameters().extents());
    mf::ops::copy(cx.op("ema"), model.parameters(), ema.ref());

    mf::philox_generator gen(seed, /*subsequence=*/1);
    mf::tensor<float> x0({batch, pixels}), noise({batch, pixels}), x_t({batch, pixels}),
        target({batch, pixels}), dpred({batch, pixels}), features({batch, time_features});
    mf::tensor<std::int64_t> labels({batch});
    std::vector<int> t(static_cast<std::size_t>(batch));
    std::vector<double> w(static_cast<std::size_t>(batch));
    std::vector<std::size_t> order = split.train;
    std::bernoulli_distribution drop(class_dropout);
    const mf::ops::op_context op = cx.op("training");

    const auto t_train = std::chrono::steady_clock::now();
    index_t step = 0;
    for (index_t epoch = 1; epoch <= epochs; ++epoch) {
        std::shuffle(order.begin(), order.end(), rng);
        double loss_sum = 0.0;
        for (index_t s = 0; s < steps_per_epoch; ++s, ++step) {
            for (index_t r = 0; r < batch; ++r) {
                const std::size_t img = order[std::size_t(s * batch + r)];
                copy_image(img, x0, r);
                labels[r] = drop(rng) ? no_class : digits.labels[img];
            }
            df::sample_timesteps(gen, t, sched.num_train_timesteps());
            for (index_t r = 0; r < batch; ++r)
                timestep_features(double(t[std::size_t(r)]), features, r);
            mf::ops::fill_random(
                op, noise.ref(),
                {mf::ops::random_kind::normal, 0.0, 1.0,
                 mf::ops::take_draw(gen, mf::normal_words<float>(std::uint64_t(noise.numel())))});
            df::add_noise<float>(op, sched, x_t.ref(), x0.cref(), noise.cref(), t);
            df::velocity_target<float>(op, sched, target.ref(), x0.cref(), noise.cref(), t);
            df::min_snr_weights(sched, t, snr_gamma, df::prediction_type::v_prediction, w);

            workspace.reset();
            model.zero_grad();
            const auto pred = net.forward(cx, x_t.cref(), features.cref(), labels.cref());
            // loss = mean over rows and pixels of w_r (pred - target)^2
            loss_sum += examples::weighted_mse(pred, target, w, dpred);
            net.backward(cx, dpred.cref());
            opt.set_lr(lr_schedule(step + 1));
            opt.step(model);
            // EMA with the usual warm-up: decay min(0.999, (1 + n) / (10 + n)).
            const double d = std::min(ema_decay, double(step + 1) / double(step + 10));
            mf::ops::combine<float>(op, ema.ref(), {ema.cref(), model.parameters()}, {d, 1.0 - d});
        }
        const double secs = seconds_since(t_train);
        std::printf("epoch %3lld/%lld  loss %.4f  %.1fs (%.1fs left)\n", (long long)epoch,
                    (long long)epochs, loss_sum / double(steps_per_epoch), secs,
                    secs / double(epoch) * double(epochs - epoch));
        std::fflush(stdout);
    }
    const double train_secs = seconds_since(t_train);
    mf::ops::copy(cx.op("ema"), ema.cref(), model.parameters());  // sample with the EMA weights
    cx.training = false;

    // ---- sampling: every sampler and step count from the same start noise ----------------
    const index_t n_gen = classes * per_class;
    std::vector<int> wanted(static_cast<std::size_t>(n_gen));
    for (index_t r = 0; r < n_gen; ++r)
        wanted[std::size_t(r)] = int(r / per_class);
    mf::tensor<float> z({n_gen, pixels});
    mf::philox_generator noise_gen(seed, /*subsequence=*/2);
    mf::ops::fill_random(
        cx.op("sampler"), z.ref(),
        {mf::ops::random_kind::normal, 0.0, 1.0,
         mf::ops::take_draw(noise_gen, mf::normal_words<float>(std::uint64_t(z.numel())))});
    std::filesystem::create_directories(out);
    std::vector<std::vector<double>> accuracy(all_samplers.size());
    std::vector<std::vector<double>> sample_secs(all_samplers.size());
    std::vector<std::vector<mf::tensor<float>>> samples(all_samplers.size());
    for (std::size_t k = 0; k < all_samplers.size(); ++k)
        for (const auto n : steps_list) {
            const auto t0 = std::chrono::steady_clock::now();
            mf::philox_generator ancestral(seed, /*subsequence=*/3);
            samples[k].push_back(generate(all_samplers[k], int(n), wanted, z, guidance, sched,
                                          model, cx, ancestral));
            const mf::tensor<float>& images = samples[k].back();
            sample_secs[k].push_back(seconds_since(t0));
            accuracy[k].push_back(judge_accuracy(images, wanted));
            std::string file = sampler_file(all_samplers[k]);
            file += "_";
            file += std::to_string(n);
            file += ".png";
            examples::write_png(out / file,
                                image_grid(images, int(classes), int(per_class), 16, 4));
        }
    // Reference: the conditional model alone (guidance 1), DDIM at the largest step count.
    const std::uint64_t most_steps = *std::max_element(steps_list.begin(), steps_list.end());
    double unguided = 0.0;
    {
        mf::philox_generator ancestral(seed, /*subsequence=*/3);
        unguided = judge_accuracy(generate(sampler_kind::ddim, int(most_steps), wanted, z, 1.0,
                                           sched, model, cx, ancestral),
                                  wanted);
    }
    // The real held-out images in the same layout, for comparison.
    {
        const index_t shown = std::min<index_t>(per_class, 16);
        mf::tensor<float> real({classes * shown, pixels});
        for (index_t d = 0; d < classes; ++d) {
            index_t taken = 0;
            for (const std::size_t i : split.test)
                if (digits.labels[i] == d && taken < shown)
                    copy_image(i, real, d * shown + taken++);
            for (; taken < shown; ++taken)  // (never: every digit has > 16 test images)
                for (index_t k = 0; k < pixels; ++k)
                    real(d * shown + taken, k) = -1.0f;
        }
        examples::write_png(out / "real.png",
                            image_grid(real, int(classes), int(shown), int(shown), 4));
    }

    // ---- the table -----------------------------------------------------------------------
    std::printf("\ntraining: %.1fs for %lld epochs (%lld steps of %lld images)\n", train_secs,
                (long long)epochs, (long long)total_steps, (long long)batch);
    std::printf(
        "samples judged correct (%lld per sampler and step count, guidance %.2f; the judge "
        "reads %.1f%% of real held-out images right, chance 10%%):\n",
        (long long)n_gen, guidance, judge_real);
    // The deterministic samplers solve the same ODE from the same noise, so their samples
    // should converge to DDIM's at the most steps: the RMS pixel distance (pixels in
    // [-1, 1]) to those says how far each is from there (Euler ancestral adds fresh noise and
    // goes elsewhere by design).
    const std::size_t largest =
        std::size_t(std::max_element(steps_list.begin(), steps_list.end()) - steps_list.begin());
    const mf::tensor<float>& reference = samples[0][largest];
    const auto rms_to_reference = [&](const mf::tensor<float>& images) {
        double ss = 0.0;
        for (index_t i = 0; i < images.numel(); ++i)
            ss += (double(images[i]) - double(reference[i])) *
                  (double(images[i]) - double(reference[i]));
        return std::sqrt(ss / double(images.numel()));
    };
    std::printf("  %-18s", "steps");
    for (const auto n : steps_list)
        std::printf("  %20llu", (unsigned long long)n);
    std::printf("\n  %-18s", "");
    for (std::size_t j = 0; j < steps_list.size(); ++j)
        std::printf("  %20s", "correct  RMS   time");
    std::printf("\n");
    for (std::size_t k = 0; k < all_samplers.size(); ++k) {
        std::printf("  %-18s", sampler_name(all_samplers[k]));
        for (std::size_t j = 0; j < steps_list.size(); ++j)
            std::printf("  %6.1f%%  %.3f %4.1fs", accuracy[k][j], rms_to_reference(samples[k][j]),
                        sample_secs[k][j]);
        std::printf("\n");
    }
    std::printf("  (RMS: distance to the DDIM %llu-step samples, pixels in [-1, 1])\n",
                (unsigned long long)steps_list[largest]);
    std::printf("  without guidance (g = 1), DDIM %llu steps: %.1f%%\n",
                (unsigned long long)most_steps, unguided);
    std::printf(
        "grids (rows: digits 0-9): %s/{ddim,dpmpp_2m,dpmpp_2m_k,euler_ancestral}_<steps>.png, "
        "real.png\ntotal %.1fs\n",
        out.string().c_str(), seconds_since(t_start));
    // DDIM at its largest step count must be far above chance.
    return accuracy[0][largest] >= 50.0 ? 0 : 1;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {  // a missing data file, a malformed number, ...
        std::fprintf(stderr, "diffusion_digits: %s\n", e.what());
        return 2;
    }
}
