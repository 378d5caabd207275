// speech_to_image — say a digit, get a picture of it: an audio encoder pretrained
// contrastively against image embeddings, a diffusion denoiser that attends to the audio
// tokens through cross-attention, sampled with DPM-Solver++ from held-out spoken digits and
// judged by a digit classifier, next to the same with the audio shuffled.
//
// The data (examples/data/avdigits, README there): 2,700 training and 300 test pairs of a
// spoken digit from the Free Spoken Digit Dataset (log-mel, 48 frames x 32 mel bands) and
// an 8x8 handwritten digit of the same label (test images and recordings are disjoint from
// the training ones). The log-mel is standardised per band with the training statistics and
// cut into 16 tokens of 3 frames (96 values); pixels are scaled to [-1, 1].
//
// Stage A, contrastive pretraining (CLIP, Radford et al. 2021; parameter names are PyTorch
// state_dict names):
//   audio   stem       linear 96 -> 64 per token + learned positions    audio.stem / audio.pos
//           encoder    1 transformer encoder layer (4 heads, FF 128, post-LN)
//                                                                        audio.encoder
//                      -> the audio TOKENS (B, 16, 64) the denoiser attends to
//           projection the 16 tokens flattened (1024) -> projection_head 32
//                                                                        audio.projection
//   image   mlp 64 -> 128 -> ReLU -> 64, projection_head 32              image.mlp / .projection
//   loss    contrastive::clip_loss (learnable temperature, clamped after every AdamW step)
// Batches hold one pair of every digit (B = 10) so that CLIP has no false negatives (the
// pairs share nothing but the digit; see contrastive_digits.cpp). Reported: how often a
// held-out recording's embedding is closest to the mean image embedding of its own digit.
//
// Stage B, the denoiser (the audio encoder is FROZEN: its tokens are computed once per
// recording; fine-tuning it through the denoiser's loss is left out to keep the run short):
//   image tokens  the noisy image's 8 rows (8 pixels each) -> linear 8 -> 64 + learned
//                 positions + the timestep embedding (sinusoidal 32 -> linear 64 -> SiLU ->
//                 linear 64), added to every token        in_fc / pos / time_fc1 / time_fc2
//   2 blocks      self-attention over the 8 image tokens (pre-LN transformer encoder layer),
//                 then cross-attention from the image tokens to the 16 audio tokens
//                 (nn::cross_attention_block, pre-LN, 4 heads, FF 128)
//                                                      blocks.i.self / blocks.i.cross
//   output        layer norm, linear 64 -> 8 per row  -> the prediction (B, 64)
// It predicts v (Salimans & Ho 2022) under the cosine schedule (Nichol & Dhariwal 2021, 1000
// steps), with min-SNR-5 weights, AdamW on a cosine learning rate, an EMA of the weights for
// sampling (all as diffusion_digits.cpp). For 10 % of the training images the audio is
// withheld: every audio token is a masked key, so the cross-attention adds nothing (no "null
// token" is needed) and the same network is the unconditional model that classifier-free
// guidance (Ho & Salimans 2022) needs.
//
// Stage C, evaluation on the 300 held-out recordings:
//   judge    an MLP classifier (64 -> 128 -> ReLU -> 10) trained on the training images;
//            its accuracy on the real held-out images is its ceiling
//   samples  one image per held-out recording, from the same start noise for every sampler:
//            DPM-Solver++(2M) (diffusion::dpm_solver_sampler, diffusers' defaults) and DDIM
//            (trailing timesteps, eta 0), each at several step counts, guidance --guidance
//   accuracy the share of samples the judge reads as the SPOKEN digit; and the same with the
//            audio shuffled across the test set (each sample generated from another
//            recording's audio, judged against the original label): the no-information
//            baseline, about 10 %
//   grid     speech_to_image.png: one row per digit 0-9 (one held-out recording each): the
//            digit, the recording's log-mel (time left to right, low bands at the bottom),
//            then 8 samples from different noise (DPM-Solver++, the most steps)
//   results  results.md: the numbers and the settings of the run
// Nothing is written outside --out.
//
// Threads: --threads N trains the judge beside stage A and runs up to N sampling jobs at
// once, each on its own stream (and its own copy of the denoiser); stage B trains on one
// stream (a oneDNN stream uses N OpenMP threads there). The Eigen backend of this build is
// single-threaded per stream.
//
// Usage: speech_to_image [--seed S] [--threads N] [--backend NAME] [--quick]
//                        [--epochs-a N] [--epochs-b N] [--guidance G] [--data DIR] [--out DIR]
// Exit status 1 when (not --quick) DPM-Solver++ at its most steps is not at least 30 points
// above the shuffled-audio baseline, 2 on bad arguments or data.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

#include "common/avdigits.hpp"
#include "common/classification.hpp"
#include "common/flags.hpp"
#include "common/png.hpp"
#include "common/report.hpp"
#include "common/weighted_mse.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/projection.hpp"
#include "mmfuse/diffusion/guidance.hpp"
#include "mmfuse/diffusion/samplers_diffusers.hpp"
#include "mmfuse/diffusion/samplers_multistep.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/diffusion/training.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/positional.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/schedule.hpp"

#if defined(MMFUSE_HAS_ONEDNN)
#include <omp.h>

#include "mmfuse/backend/onednn/device.hpp"  // registers "onednn"
#endif

#include <stb/stb_easy_font.h>

#ifndef MMFUSE_EXAMPLE_DATA_DIR
#define MMFUSE_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace mf = mmfuse;
namespace df = mmfuse::diffusion;
using mf::index_t;

constexpr index_t pixels = 64, side = 8, classes = 10;
constexpr index_t D = 64;                                     // token width
constexpr index_t heads = 4, ff = 128;                        // attention layers
constexpr index_t audio_tokens = 16, audio_token_width = 96;  // 3 frames x 32 bands
constexpr index_t embed_dim = 32;                             // the contrastive space
constexpr index_t time_features = 32;
constexpr int denoiser_blocks = 2;

using examples::fmt;
using examples::seconds_since;

// ---- data ---------------------------------------------------------------------------------
struct dataset {
    index_t n = 0;
    std::vector<float> image;  // (n, 64) in [-1, 1]
    std::vector<float> audio;  // (n, 16, 96): log-mel standardised per band
    std::vector<float> logmel;  // (n, 48, 32) as stored (for the picture)
    std::vector<int> label;
    std::vector<int> speaker;
};

std::pair<dataset, dataset> load(const std::filesystem::path& dir) {
    examples::standardised_avdigits av = examples::load_standardised_avdigits(dir);
    const auto convert = [](const examples::avdigits_split& s, std::vector<float>&& audio) {
        dataset d;
        d.n = index_t(s.size());
        d.image.resize(s.images.size());
        for (std::size_t k = 0; k < s.images.size(); ++k) d.image[k] = 2.0f * s.images[k] - 1.0f;
        d.logmel = s.logmel;
        d.audio = std::move(audio);
        d.label.assign(s.labels.begin(), s.labels.end());
        d.speaker = s.speakers;
        return d;
    };
    return {convert(av.train, std::move(av.train_audio)),
            convert(av.test, std::move(av.test_audio))};
}

void copy_rows(const std::vector<float>& from, index_t width, std::span<const index_t> which,
               mf::tensor<float>& to) {
    for (std::size_t r = 0; r < which.size(); ++r)
        std::copy_n(from.data() + which[r] * width, width, to.data() + index_t(r) * width);
}

// A workspace result copied out before the workspace is reset.
mf::tensor<float> keep(mf::tensor_ref<const float> x) {
    mf::tensor<float> t(x.extents());
    std::copy(x.data(), x.data() + x.numel(), t.data());
    return t;
}

// ---- stage A: the contrastive dual encoder ------------------------------------------------
struct audio_encoder {
    using value_type = float;
    mf::nn::linear<audio_token_width, D> stem{};
    mf::nn::learned_positional_embedding<audio_tokens, D> pos{};
    mf::nn::transformer_encoder_layer<D, heads, ff> encoder{};
    mf::contrastive::projection_head<audio_tokens * D, embed_dim> projection{};
    mf::tensor_ref<const float> tokens_{};

    template <class V>
    void visit(V& v) {
        v.child("stem", stem);
        v.child("pos", pos);
        v.child("encoder", encoder);
        v.child("projection", projection);
    }
    void reset_parameters(mf::philox_generator& g) {
        stem.reset_parameters(g);
        pos.reset_parameters(g);
        encoder.reset_parameters(g);
        projection.reset_parameters(g);
    }
    // audio (B, 16, 96) -> tokens (B, 16, 64); kept for embed().
    mf::tensor_ref<const float> tokens(mf::nn::step_context<float>& cx,
                                       mf::tensor_ref<const float> audio) {
        tokens_ = encoder.forward(cx, pos.forward(cx, stem.forward(cx, audio)));
        return tokens_;
    }
    // The unit embedding (B, 32) of the tokens of the last tokens() call.
    mf::tensor_ref<const float> embed(mf::nn::step_context<float>& cx) {
        return projection.forward(cx, tokens_.reshape({tokens_.extent(0), audio_tokens * D}));
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        const auto dflat = projection.backward(cx, dy);
        const auto dtok = dflat.reshape({dflat.extent(0), audio_tokens, D});
        stem.backward(cx, pos.backward(cx, encoder.backward(cx, dtok)));
    }
};

struct image_encoder {
    using value_type = float;
    mf::nn::mlp<pixels, 128, 64> mlp{};
    mf::contrastive::projection_head<64, embed_dim> projection{};
    template <class V>
    void visit(V& v) {
        v.child("mlp", mlp);
        v.child("projection", projection);
    }
    void reset_parameters(mf::philox_generator& g) {
        mlp.reset_parameters(g);
        projection.reset_parameters(g);
    }
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const float> x) {
        return projection.forward(cx, mlp.forward(cx, x));
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        mlp.backward(cx, projection.backward(cx, dy));
    }
};

struct dual_encoder {
    using value_type = float;
    audio_encoder audio{};
    image_encoder image{};
    mf::contrastive::clip_loss<float> loss{};
    template <class V>
    void visit(V& v) {
        v.child("audio", audio);
        v.child("image", image);
        loss.visit(v);
    }
    void reset_parameters(mf::philox_generator& g) {
        audio.reset_parameters(g);
        image.reset_parameters(g);
        loss.reset_parameters(g);
    }
};

// ---- stage B: the cross-attention denoiser ------------------------------------------------
// Sinusoidal features of timestep t into row r of `out` (R, 32).
void timestep_features(double t, mf::tensor<float>& out, index_t r) {
    constexpr index_t half = time_features / 2;
    for (index_t k = 0; k < half; ++k) {
        const double f = std::exp(-std::log(10000.0) * double(k) / double(half));
        out(r, k) = float(std::sin(t * f));
        out(r, half + k) = float(std::cos(t * f));
    }
}

struct denoiser_block {
    using value_type = float;
    mf::nn::transformer_encoder_layer<D, heads, ff> self{{}, {}, {}, {.norm_first = true}};
    mf::nn::cross_attention_block<D, heads, ff> cross{{}, {}, {}, D};
    template <class V>
    void visit(V& v) {
        v.child("self", self);
        v.child("cross", cross);
    }
    void reset_parameters(mf::philox_generator& g) {
        self.reset_parameters(g);
        cross.reset_parameters(g);
    }
};

struct cross_attention_denoiser {
    using value_type = float;
    mf::nn::linear<side, D> in_fc{};
    mf::nn::learned_positional_embedding<side, D> pos{};
    mf::nn::linear<time_features, D> time_fc1{};
    mf::nn::silu<float> time_act{};
    mf::nn::linear<D, D> time_fc2{};
    std::array<denoiser_block, denoiser_blocks> blocks{};
    mf::nn::layer_norm<D> out_norm{};
    mf::nn::linear<D, side> out_fc{};
    std::string path;

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("in_fc", in_fc);
        v.child("pos", pos);
        v.child("time_fc1", time_fc1);
        v.child("time_fc2", time_fc2);
        for (int i = 0; i < denoiser_blocks; ++i)
            v.child("blocks." + std::to_string(i), blocks[std::size_t(i)]);
        v.child("out_norm", out_norm);
        v.child("out_fc", out_fc);
    }
    void reset_parameters(mf::philox_generator& g) {
        in_fc.reset_parameters(g);
        pos.reset_parameters(g);
        time_fc1.reset_parameters(g);
        time_fc2.reset_parameters(g);
        for (auto& b : blocks) b.reset_parameters(g);
        out_norm.reset_parameters(g);
        out_fc.reset_parameters(g);
    }

    // x_t (B, 64), timestep features (B, 32), audio tokens (B, 16, 64) and which of them a
    // row may see (B, 16; all false = no audio) -> the v prediction (B, 64).
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const float> x,
                                        mf::tensor_ref<const float> t_features,
                                        mf::tensor_ref<const float> audio,
                                        mf::tensor_ref<const bool> audio_keep) {
        const index_t b = x.extent(0);
        const auto rows = pos.forward(cx, in_fc.forward(cx, x.reshape({b, side, side})));
        const auto te = time_fc2.forward(cx, time_act.forward(cx, time_fc1.forward(cx, t_features)));
        const auto h0 = cx.allocate(rows.extents());
        mf::ops::add(cx.op(path), rows, te.unsqueeze(1), h0);
        mf::tensor_ref<const float> h = h0;
        const mf::nn::attention_masks<float> m{.key_padding = audio_keep};
        for (auto& blk : blocks) {
            h = blk.self.forward(cx, h);
            h = blk.cross.forward(cx, h, audio, m);
        }
        const auto y = out_fc.forward(cx, out_norm.forward(cx, h));
        return y.reshape({b, pixels});
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        const index_t b = dy.extent(0);
        auto dh = out_norm.backward(cx, out_fc.backward(cx, dy.reshape({b, side, side})));
        for (auto blk = blocks.rbegin(); blk != blocks.rend(); ++blk) {
            dh = blk->cross.backward(cx, dh).dx;  // the audio tokens are frozen
            dh = blk->self.backward(cx, dh);
        }
        const auto dte = cx.allocate({b, D});
        mf::ops::reduce<float>(cx.op(path), mf::ops::reduce_kind::sum, 1, dh, dte);
        time_fc1.backward(cx, time_act.backward(cx, time_fc2.backward(cx, dte)));
        in_fc.backward(cx, pos.backward(cx, dh));
    }
};

using digit_classifier = mf::nn::mlp<pixels, 128, classes>;

// ---- sampling -----------------------------------------------------------------------------
// The batched model classifier-free guidance calls on 2B rows: rows [0, B) see no audio,
// rows [B, 2B) the audio tokens of their recording.
struct batched_denoiser {
    mf::nn::model<cross_attention_denoiser>* model;
    mf::nn::step_context<float>* cx;
    mf::tensor<float> audio;     // (2B, 16, 64)
    mf::tensor<bool> keep;       // (2B, 16)
    mf::tensor<float> features;  // (2B, 32)
    void operator()(mf::tensor_ref<const float> x, double t, mf::tensor_ref<float> out) {
        for (index_t r = 0; r < features.extent(0); ++r) timestep_features(t, features, r);
        cx->workspace->reset();
        const auto y = model->net().forward(*cx, x, features.cref(), audio.cref(), keep.cref());
        mf::ops::copy(cx->op("sampler"), y, out);
    }
};

enum class sampler_kind { dpmpp_2m, ddim };
const char* sampler_name(sampler_kind k) {
    return k == sampler_kind::dpmpp_2m ? "DPM-Solver++(2M)" : "DDIM";
}

// Samples one image per row of `tokens` (B, 16, 64) from the start noise z (B, 64);
// returns them clamped to [-1, 1].
mf::tensor<float> generate(sampler_kind kind, int steps, const mf::tensor<float>& tokens,
                           const mf::tensor<float>& z, double g, const df::noise_schedule& sched,
                           mf::nn::model<cross_attention_denoiser>& model,
                           mf::nn::step_context<float>& cx) {
    const index_t b = z.extent(0), per = audio_tokens * D;
    batched_denoiser batched{&model, &cx, mf::tensor<float>({2 * b, audio_tokens, D}),
                             mf::tensor<bool>({2 * b, audio_tokens}),
                             mf::tensor<float>({2 * b, time_features})};
    std::copy_n(tokens.data(), b * per, batched.audio.data());
    std::copy_n(tokens.data(), b * per, batched.audio.data() + b * per);
    for (index_t r = 0; r < 2 * b; ++r)
        for (index_t k = 0; k < audio_tokens; ++k) batched.keep(r, k) = r >= b;
    const mf::ops::op_context op = cx.op("sampler");
    df::classifier_free_guidance<float, batched_denoiser> guided(op, std::move(batched), g);
    mf::tensor<float> x(z.extents());
    if (kind == sampler_kind::dpmpp_2m) {
        auto s = df::dpm_solver_sampler<float>(op, sched, {.prediction = sched.config().prediction});
        s.set_timesteps(steps);
        df::lincomb<float>(op, x.ref(), {z.cref()}, {s.init_noise_sigma()});
        s.sample(guided, x.ref());
    } else {
        auto s = df::ddim_sampler<float>(op, sched,
                                         {.spacing = df::timestep_spacing::trailing,
                                          .prediction = sched.config().prediction,
                                          .x0 = {.clip_sample = false}});
        s.set_timesteps(steps);
        df::lincomb<float>(op, x.ref(), {z.cref()}, {s.init_noise_sigma()});
        s.sample(guided, x.ref());
    }
    for (index_t i = 0; i < x.numel(); ++i) x[i] = std::clamp(x[i], -1.0f, 1.0f);
    return x;
}

// ---- the picture --------------------------------------------------------------------------
// Rows: digits; per row the digit as text, the recording's log-mel (48 x 32 px, low bands at
// the bottom) and `cols` samples (8x8, each pixel zoom x zoom).
examples::rgb_image grid_picture(const std::vector<std::vector<float>>& logmels,
                                 const mf::tensor<float>& samples, int cols, int zoom) {
    const int rows = int(logmels.size()), cell = side * zoom, gap = 4, label_w = 24;
    const int mel_w = 48, mel_h = 32;
    const int row_h = std::max(cell, mel_h) + gap;
    const int width = gap + label_w + mel_w + 3 * gap + cols * (cell + gap);
    const int header = 18;
    examples::rgb_image img(width, header + rows * row_h + gap);
    std::fill(img.rgb.begin(), img.rgb.end(), std::uint8_t(255));
    const auto text = [&](int x, int y, const std::string& s, int scale) {
        static char vbuf[60000];
        std::string copy = s;
        const int quads = stb_easy_font_print(0, 0, copy.data(), nullptr, vbuf, sizeof vbuf);
        const std::uint8_t black[3] = {20, 20, 20};
        for (int q = 0; q < quads; ++q) {
            const float* v = reinterpret_cast<const float*>(vbuf + q * 64);
            for (int yy = y + int(v[1] * scale); yy < y + int(v[9] * scale); ++yy)
                for (int xx = x + int(v[0] * scale); xx < x + int(v[8] * scale); ++xx)
                    if (xx >= 0 && yy >= 0 && xx < img.width && yy < img.height)
                        img.set(xx, yy, black);
        }
    };
    text(gap, 4, "said", 1);
    text(gap + label_w, 4, "log-mel", 1);
    text(gap + label_w + mel_w + 3 * gap, 4, "generated (DPM-Solver++, different noise)", 1);
    // log-mel range over the rows shown
    float lo = 1e30f, hi = -1e30f;
    for (const auto& m : logmels)
        for (float v : m) lo = std::min(lo, v), hi = std::max(hi, v);
    for (int r = 0; r < rows; ++r) {
        const int y0 = header + r * row_h;
        text(gap + 4, y0 + 8, std::to_string(r), 2);
        const int mx = gap + label_w, my = y0 + (row_h - gap - mel_h) / 2;
        for (int t = 0; t < mel_w; ++t)
            for (int m = 0; m < mel_h; ++m) {
                const float v = logmels[std::size_t(r)][std::size_t(t * 32 + m)];
                const double u = std::clamp((double(v) - lo) / std::max(1e-6, double(hi - lo)), 0.0, 1.0);
                // dark blue -> yellow
                const std::uint8_t c[3] = {std::uint8_t(std::lround(255 * u)),
                                           std::uint8_t(std::lround(40 + 200 * u)),
                                           std::uint8_t(std::lround(110 * (1 - u)))};
                img.set(mx + t, my + (mel_h - 1 - m), c);
            }
        for (int c = 0; c < cols; ++c) {
            const int x0 = gap + label_w + mel_w + 3 * gap + c * (cell + gap);
            const index_t row = index_t(r) * cols + c;
            for (int py = 0; py < cell; ++py)
                for (int px = 0; px < cell; ++px) {
                    const float v = samples(row, index_t(py / zoom) * side + px / zoom);
                    // ink dark on white, as the digits are usually shown
                    const auto grey = std::uint8_t(std::lround(127.5 * (1.0 - double(v))));
                    const std::uint8_t col[3] = {grey, grey, grey};
                    img.set(x0 + px, y0 + (row_h - gap - cell) / 2 + py, col);
                }
        }
    }
    return img;
}

// ---- progress -----------------------------------------------------------------------------
struct progress {
    bool tty = isatty(fileno(stdout)) != 0;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last = start - std::chrono::seconds(60);
    bool open = false;
    // One line: `what`, then elapsed and the time left; on a terminal rewritten in place
    // (at most every 0.2 s), otherwise printed every 10 s and when `force`.
    void show(const std::string& what, double left, bool force = false) {
        const auto now = std::chrono::steady_clock::now();
        if (!force && now - last < std::chrono::milliseconds(tty ? 200 : 10000)) return;
        last = now;
        const std::string line = fmt("%s | %.0fs elapsed, about %dm%02ds left", what.c_str(),
                                     seconds_since(start), int(left) / 60, int(left) % 60);
        if (tty) {
            std::printf("\r%-110s", line.c_str());
            open = true;
        } else {
            std::printf("%s\n", line.c_str());
        }
        std::fflush(stdout);
    }
    void done() {
        if (open) std::printf("\n");
        open = false;
        std::fflush(stdout);
    }
};

// ---- main ---------------------------------------------------------------------------------
int run(int argc, char** argv) {
    std::uint64_t seed = 1;
    int threads = 1;
    bool quick = false;
    index_t epochs_a = 6, epochs_b = 120;
    bool epochs_a_given = false, epochs_b_given = false;
    double guidance = 3.0;
    std::string backend = "eigen";
    std::filesystem::path out = "out/speech_to_image";
    std::filesystem::path data = std::filesystem::path(MMFUSE_EXAMPLE_DATA_DIR) / "avdigits";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf(
                "usage: %s [--seed S] [--threads N] [--backend NAME] [--quick]\n"
                "          [--epochs-a N] [--epochs-b N] [--guidance G] [--data DIR] [--out DIR]\n"
                "Spoken digit -> image: a contrastively pretrained audio encoder, a denoiser that\n"
                "attends to its tokens, DPM-Solver++ on held-out recordings, judged by a classifier.\n"
                "  --seed S        initialisation, batches, noise (default 1)\n"
                "  --threads N     judge beside stage A, N sampling jobs at once, N OpenMP\n"
                "                  threads for a oneDNN stage B (default 1)\n"
                "  --backend NAME  the backend by registry name (default eigen; compiled in: %s)\n"
                "  --quick         a smoke run (1 + 3 epochs, fewer samplers; numbers mean little)\n"
                "  --epochs-a N    contrastive epochs (default 6)\n"
                "  --epochs-b N    denoiser epochs (default 120)\n"
                "  --guidance G    classifier-free guidance scale (default 3; 1 = none)\n"
                "  --data DIR      folder with train.bin.gz and test.bin.gz (default %s)\n"
                "  --out DIR       where speech_to_image.png and results.md go (default\n"
                "                  out/speech_to_image); nothing is written elsewhere\n",
                argv[0], mf::backend::registry::global().names().c_str(), data.string().c_str());
            return 0;
        }
        if (arg == "--quick") {
            quick = true;
            continue;
        }
        static const std::array<std::string_view, 8> with_value = {
            "--seed", "--threads", "--backend", "--epochs-a", "--epochs-b", "--guidance", "--data", "--out"};
        if (std::find(with_value.begin(), with_value.end(), arg) == with_value.end()) {
            std::fprintf(stderr, "unknown option %s (see --help)\n", arg.c_str());
            return 2;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value (see --help)\n", arg.c_str());
            return 2;
        }
        const std::string value = argv[++i];
        if (arg == "--seed")
            seed = examples::whole_number(arg, value);
        else if (arg == "--threads")
            threads = int(std::min<std::uint64_t>(examples::whole_number(arg, value), 64));
        else if (arg == "--backend")
            backend = value;
        else if (arg == "--epochs-a")
            epochs_a = index_t(examples::whole_number(arg, value)), epochs_a_given = true;
        else if (arg == "--epochs-b")
            epochs_b = index_t(examples::whole_number(arg, value)), epochs_b_given = true;
        else if (arg == "--guidance")
            guidance = examples::real_number(arg, value);
        else if (arg == "--data")
            data = value;
        else if (arg == "--out")
            out = value;
        else {
            std::fprintf(stderr, "unknown option %s (see --help)\n", arg.c_str());
            return 2;
        }
    }
    if (quick) {
        if (!epochs_a_given) epochs_a = 1;
        if (!epochs_b_given) epochs_b = 3;
    }
    if (epochs_a < 1 || epochs_b < 1 || threads < 1) {
        std::fprintf(stderr, "--epochs-a, --epochs-b and --threads must be >= 1\n");
        return 2;
    }
    mf::backend::device& device = mf::backend::registry::global().get(backend);
#if defined(MMFUSE_HAS_ONEDNN)
    omp_set_num_threads(threads);
#endif
    const auto t_start = std::chrono::steady_clock::now();
    const auto [train, test] = load(data);
    std::printf("avdigits: %lld training, %lld held-out pairs; backend %s, %d thread(s), seed %llu%s\n",
                (long long)train.n, (long long)test.n, backend.c_str(), threads,
                (unsigned long long)seed, quick ? " (--quick)" : "");
    const std::unique_ptr<mf::backend::stream> main_stream = device.create_stream();
    progress bar;

    // ---- the judge, beside stage A when there is a second thread ---------------------------
    mf::nn::model<digit_classifier> judge(digit_classifier{}, seed + 100);
    double judge_secs = 0;
    const auto train_judge = [&](mf::backend::stream& st) {
        const auto t0 = std::chrono::steady_clock::now();
        mf::growing_arena ws;
        mf::nn::step_context<float> cx{&st, &ws, true};
        std::mt19937 rng{std::uint32_t(seed + 100)};
        const index_t batch = 64, epochs = quick ? 5 : 20;
        std::vector<index_t> order(std::size_t(train.n));
        std::iota(order.begin(), order.end(), index_t(0));
        mf::optim::adamw opt(judge, {.lr = 2e-3, .weight_decay = 1e-2});
        mf::tensor<float> xb({batch, pixels}), dlogits({batch, classes});
        std::vector<int> yb(static_cast<std::size_t>(batch));
        for (index_t e = 0; e < epochs; ++e) {
            std::shuffle(order.begin(), order.end(), rng);
            for (index_t s = 0; s + batch <= train.n; s += batch) {
                copy_rows(train.image, pixels, std::span(order).subspan(std::size_t(s), std::size_t(batch)), xb);
                for (index_t r = 0; r < batch; ++r) yb[std::size_t(r)] = train.label[std::size_t(order[std::size_t(s + r)])];
                ws.reset();
                judge.zero_grad();
                int unused = 0;
                examples::cross_entropy(cx, "judge.loss", judge.net().forward(cx, xb.cref()), yb,
                                        dlogits.ref(), unused);
                judge.net().backward(cx, dlogits.cref());
                opt.step(judge);
            }
        }
        judge_secs = seconds_since(t0);
    };
    std::exception_ptr judge_failure;
    std::thread judge_thread;
    std::unique_ptr<mf::backend::stream> judge_stream;
    if (threads >= 2) {
        judge_stream = device.create_stream();
        judge_thread = std::thread([&] {
#if defined(MMFUSE_HAS_ONEDNN)
            omp_set_num_threads(1);
#endif
            try {
                train_judge(*judge_stream);
            } catch (...) {
                judge_failure = std::current_exception();
            }
        });
    }

    // ---- stage A: contrastive pretraining of the audio encoder ----------------------------
    mf::nn::model<dual_encoder> clip(dual_encoder{}, seed);
    mf::growing_arena workspace;
    mf::nn::step_context<float> cx{main_stream.get(), &workspace, true};
    std::mt19937 rng{std::uint32_t(seed)};
    double secs_a = 0, audio_to_digit = 0;
    {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::vector<index_t>> by_class(classes);
        for (index_t i = 0; i < train.n; ++i) by_class[std::size_t(train.label[std::size_t(i)])].push_back(i);
        std::size_t smallest = train.n;
        for (auto& c : by_class) smallest = std::min(smallest, c.size());
        const index_t batch = classes, steps = index_t(smallest);  // one epoch: every pair once
        const index_t total = epochs_a * steps;
        mf::optim::adamw opt(clip, {.lr = 2e-3, .weight_decay = 1e-2});
        const mf::optim::cosine_with_warmup schedule(2e-3, std::min<index_t>(100, total / 5), total, 1e-5);
        mf::tensor<float> xi({batch, pixels}), xa({batch, audio_tokens, audio_token_width});
        std::vector<index_t> rows(static_cast<std::size_t>(batch));
        auto& net = clip.net();
        index_t step = 0;
        for (index_t epoch = 1; epoch <= epochs_a; ++epoch) {
            for (auto& c : by_class) std::shuffle(c.begin(), c.end(), rng);
            double loss_sum = 0;
            for (index_t s = 0; s < steps; ++s, ++step) {
                for (index_t d = 0; d < classes; ++d) rows[std::size_t(d)] = by_class[std::size_t(d)][std::size_t(s)];
                copy_rows(train.image, pixels, rows, xi);
                copy_rows(train.audio, audio_tokens * audio_token_width, rows, xa);
                workspace.reset();
                clip.zero_grad();
                net.audio.tokens(cx, xa.cref());
                const auto za = net.audio.embed(cx);
                const auto zi = net.image.forward(cx, xi.cref());
                loss_sum += net.loss.forward(cx, za, zi);
                const auto g = net.loss.backward(cx);
                net.audio.backward(cx, g.da);
                net.image.backward(cx, g.db);
                opt.set_lr(schedule(step + 1));
                opt.step(clip);
                net.loss.clamp();
                const double per_step = seconds_since(t0) / double(step + 1);
                bar.show(fmt("stage A (contrastive) epoch %lld/%lld  loss %.3f", (long long)epoch,
                             (long long)epochs_a, loss_sum / double(s + 1)),
                         per_step * double(total - step - 1), s + 1 == steps);
            }
        }
        bar.done();
        secs_a = seconds_since(t0);
        // Held-out audio -> digit through the image space: nearest mean training-image
        // embedding (a zero-shot classifier whose "prompts" are images).
        cx.training = false;
        mf::tensor<float> xi_all({train.n, pixels});
        std::copy(train.image.begin(), train.image.end(), xi_all.data());
        workspace.reset();
        const mf::tensor<float> zi = keep(net.image.forward(cx, xi_all.cref()));
        std::vector<double> centroid(std::size_t(classes * embed_dim), 0.0);
        for (index_t i = 0; i < train.n; ++i)
            for (index_t k = 0; k < embed_dim; ++k)
                centroid[std::size_t(train.label[std::size_t(i)] * embed_dim + k)] += zi(i, k);
        mf::tensor<float> xa_test({test.n, audio_tokens, audio_token_width});
        std::copy(test.audio.begin(), test.audio.end(), xa_test.data());
        workspace.reset();
        net.audio.tokens(cx, xa_test.cref());
        const mf::tensor<float> za = keep(net.audio.embed(cx));
        int correct = 0;
        for (index_t i = 0; i < test.n; ++i) {
            int best = 0;
            double best_s = -1e30;
            for (int c = 0; c < classes; ++c) {
                double s = 0, nn = 0;
                for (index_t k = 0; k < embed_dim; ++k) {
                    s += za(i, k) * centroid[std::size_t(c * embed_dim + k)];
                    nn += centroid[std::size_t(c * embed_dim + k)] * centroid[std::size_t(c * embed_dim + k)];
                }
                s /= std::sqrt(nn);
                if (s > best_s) best_s = s, best = c;
            }
            correct += best == test.label[std::size_t(i)];
        }
        audio_to_digit = 100.0 * correct / double(test.n);
        std::printf("stage A: %.1fs; held-out audio -> nearest digit in the image space: %.1f%% "
                    "(logit scale %.1f)\n",
                    secs_a, audio_to_digit, net.loss.logit_scale().scale());
    }
    // The frozen audio tokens of every recording.
    const auto audio_tokens_of = [&](const dataset& d) {
        mf::tensor<float> all({d.n, audio_tokens, D});
        const index_t chunk = 300;
        mf::tensor<float> xa({chunk, audio_tokens, audio_token_width});
        for (index_t s = 0; s < d.n; s += chunk) {
            const index_t n = std::min(chunk, d.n - s);
            std::copy_n(d.audio.data() + s * audio_tokens * audio_token_width,
                        n * audio_tokens * audio_token_width, xa.data());
            workspace.reset();
            const auto tok = clip.net().audio.tokens(cx, xa.cref());
            std::copy_n(tok.data(), n * audio_tokens * D, all.data() + s * audio_tokens * D);
        }
        return all;
    };
    const mf::tensor<float> train_tokens = audio_tokens_of(train), test_tokens = audio_tokens_of(test);
    cx.training = true;

    // ---- stage B: the denoiser ------------------------------------------------------------
    const df::noise_schedule sched({.num_train_timesteps = 1000,
                                    .betas = df::beta_schedule::squaredcos_cap_v2,
                                    .prediction = df::prediction_type::v_prediction});
    mf::nn::model<cross_attention_denoiser> model(cross_attention_denoiser{}, seed);
    std::printf("denoiser: %lld parameters (%d blocks of self- and cross-attention, width %lld); "
                "audio encoder frozen\n",
                (long long)model.parameter_count(), denoiser_blocks, (long long)D);
    double secs_b = 0, last_loss_b = 0;
    {
        const auto t0 = std::chrono::steady_clock::now();
        const index_t batch = 64, steps = train.n / batch, total = epochs_b * steps;
        const double lr = 2e-3, ema_decay = 0.999, snr_gamma = 5.0, drop_audio = 0.1;
        mf::optim::adamw opt(model, {.lr = lr, .weight_decay = 1e-4});
        const mf::optim::cosine_with_warmup lr_schedule(lr, std::min<index_t>(200, total / 5), total,
                                                        lr * 0.05);
        mf::tensor<float> ema(model.parameters().extents());
        mf::ops::copy(cx.op("ema"), model.parameters(), ema.ref());
        mf::philox_generator gen(seed, /*subsequence=*/1);
        mf::tensor<float> x0({batch, pixels}), noise({batch, pixels}), x_t({batch, pixels}),
            target({batch, pixels}), dpred({batch, pixels}), features({batch, time_features}),
            ctx({batch, audio_tokens, D});
        mf::tensor<bool> keep_mask({batch, audio_tokens});
        std::vector<int> t(static_cast<std::size_t>(batch));
        std::vector<double> w(static_cast<std::size_t>(batch));
        std::vector<index_t> order(std::size_t(train.n));
        std::iota(order.begin(), order.end(), index_t(0));
        std::bernoulli_distribution drop(drop_audio);
        const mf::ops::op_context op = cx.op("training");
        auto& net = model.net();
        index_t step = 0;
        for (index_t epoch = 1; epoch <= epochs_b; ++epoch) {
            std::shuffle(order.begin(), order.end(), rng);
            double loss_sum = 0;
            for (index_t s = 0; s < steps; ++s, ++step) {
                const auto rows = std::span(order).subspan(std::size_t(s * batch), std::size_t(batch));
                copy_rows(train.image, pixels, rows, x0);
                for (index_t r = 0; r < batch; ++r) {
                    std::copy_n(train_tokens.data() + rows[std::size_t(r)] * audio_tokens * D,
                                audio_tokens * D, ctx.data() + r * audio_tokens * D);
                    const bool sees = !drop(rng);
                    for (index_t k = 0; k < audio_tokens; ++k) keep_mask(r, k) = sees;
                }
                df::sample_timesteps(gen, t, sched.num_train_timesteps());
                for (index_t r = 0; r < batch; ++r) timestep_features(double(t[std::size_t(r)]), features, r);
                mf::ops::fill_random(
                    op, noise.ref(),
                    {mf::ops::random_kind::normal, 0.0, 1.0,
                     mf::ops::take_draw(gen, mf::normal_words<float>(std::uint64_t(noise.numel())))});
                df::add_noise<float>(op, sched, x_t.ref(), x0.cref(), noise.cref(), t);
                df::velocity_target<float>(op, sched, target.ref(), x0.cref(), noise.cref(), t);
                df::min_snr_weights(sched, t, snr_gamma, df::prediction_type::v_prediction, w);
                workspace.reset();
                model.zero_grad();
                const auto pred = net.forward(cx, x_t.cref(), features.cref(), ctx.cref(), keep_mask.cref());
                loss_sum += examples::weighted_mse(pred, target, w, dpred);
                net.backward(cx, dpred.cref());
                opt.set_lr(lr_schedule(step + 1));
                opt.step(model);
                const double d = std::min(ema_decay, double(step + 1) / double(step + 10));
                mf::ops::combine<float>(op, ema.ref(), {ema.cref(), model.parameters()}, {d, 1.0 - d});
                const double per_step = seconds_since(t0) / double(step + 1);
                last_loss_b = loss_sum / double(s + 1);
                bar.show(fmt("stage B (denoiser) epoch %lld/%lld  loss %.4f", (long long)epoch,
                             (long long)epochs_b, last_loss_b),
                         per_step * double(total - step - 1), false);
            }
        }
        bar.done();
        secs_b = seconds_since(t0);
        mf::ops::copy(cx.op("ema"), ema.cref(), model.parameters());  // sample with the EMA
        std::printf("stage B: %.1fs for %lld epochs (%lld steps of %lld), final loss %.4f\n", secs_b,
                    (long long)epochs_b, (long long)total, (long long)batch, last_loss_b);
    }
    if (judge_thread.joinable()) judge_thread.join();
    if (judge_failure) std::rethrow_exception(judge_failure);
    if (threads < 2) train_judge(*main_stream);
    cx.training = false;
    const auto judge_accuracy = [&](mf::nn::step_context<float>& c, const mf::tensor<float>& images,
                                    const std::vector<int>& want) {
        c.workspace->reset();
        int correct = 0;
        examples::cross_entropy(c, "judge.loss", judge.net().forward(c, images.cref()), want, {}, correct);
        return 100.0 * double(correct) / double(want.size());
    };
    mf::tensor<float> test_images({test.n, pixels});
    std::copy(test.image.begin(), test.image.end(), test_images.data());
    const double judge_real = judge_accuracy(cx, test_images, test.label);
    std::printf("judge: MLP classifier trained on the training images in %.1fs, %.1f%% on the "
                "held-out real images\n", judge_secs, judge_real);

    // ---- stage C: sampling jobs -------------------------------------------------------------
    struct job {
        sampler_kind kind;
        int steps;
        bool shuffled;
        double accuracy = 0, secs = 0;
    };
    std::vector<job> jobs;
    const std::vector<int> dpm_steps = quick ? std::vector<int>{10} : std::vector<int>{5, 10, 20};
    const std::vector<int> ddim_steps = quick ? std::vector<int>{} : std::vector<int>{10, 20};
    for (int n : dpm_steps) jobs.push_back({sampler_kind::dpmpp_2m, n, false});
    for (int n : ddim_steps) jobs.push_back({sampler_kind::ddim, n, false});
    for (int n : dpm_steps) jobs.push_back({sampler_kind::dpmpp_2m, n, true});
    for (int n : ddim_steps) jobs.push_back({sampler_kind::ddim, n, true});
    const int grid_steps = dpm_steps.back(), grid_cols = 8;

    // Start noise shared by every job; the shuffled jobs see the recordings' audio under one
    // random permutation (a recording may keep its own audio, or get the same digit, as
    // chance allows: that is the baseline's 10 %).
    mf::tensor<float> z({test.n, pixels});
    {
        mf::philox_generator g(seed, /*subsequence=*/2);
        mf::ops::fill_random(cx.op("sampler"), z.ref(),
                             {mf::ops::random_kind::normal, 0.0, 1.0,
                              mf::ops::take_draw(g, mf::normal_words<float>(std::uint64_t(z.numel())))});
    }
    std::vector<index_t> perm(std::size_t(test.n));
    std::iota(perm.begin(), perm.end(), index_t(0));
    {
        std::mt19937 prng{std::uint32_t(seed + 7)};
        std::shuffle(perm.begin(), perm.end(), prng);
    }
    mf::tensor<float> shuffled_tokens(test_tokens.extents());
    for (index_t i = 0; i < test.n; ++i)
        std::copy_n(test_tokens.data() + perm[std::size_t(i)] * audio_tokens * D, audio_tokens * D,
                    shuffled_tokens.data() + i * audio_tokens * D);
    int same_label_after_shuffle = 0;
    for (index_t i = 0; i < test.n; ++i)
        same_label_after_shuffle += test.label[std::size_t(perm[std::size_t(i)])] == test.label[std::size_t(i)];

    // The grid: one held-out recording per digit (speaker d mod 6), grid_cols noises each.
    std::vector<index_t> grid_rec(classes, -1);
    for (index_t i = 0; i < test.n; ++i) {
        const int d = test.label[std::size_t(i)];
        if (grid_rec[std::size_t(d)] < 0 && test.speaker[std::size_t(i)] == d % 6) grid_rec[std::size_t(d)] = i;
    }
    for (index_t i = 0; i < test.n; ++i)
        if (grid_rec[std::size_t(test.label[std::size_t(i)])] < 0) grid_rec[std::size_t(test.label[std::size_t(i)])] = i;
    mf::tensor<float> grid_tokens({classes * grid_cols, audio_tokens, D}), grid_z({classes * grid_cols, pixels});
    {
        mf::philox_generator g(seed, /*subsequence=*/3);
        mf::ops::fill_random(cx.op("sampler"), grid_z.ref(),
                             {mf::ops::random_kind::normal, 0.0, 1.0,
                              mf::ops::take_draw(g, mf::normal_words<float>(std::uint64_t(grid_z.numel())))});
        for (index_t d = 0; d < classes; ++d)
            for (index_t c = 0; c < grid_cols; ++c)
                std::copy_n(test_tokens.data() + grid_rec[std::size_t(d)] * audio_tokens * D,
                            audio_tokens * D, grid_tokens.data() + (d * grid_cols + c) * audio_tokens * D);
    }
    mf::tensor<float> grid_samples({classes * grid_cols, pixels});
    double grid_accuracy = 0;

    // Workers: each its own stream, workspace and copy of the denoiser and judge.
    const std::size_t n_tasks = jobs.size() + 1;  // + the grid
    std::atomic<std::size_t> next{0}, finished{0};
    std::mutex lock;
    std::exception_ptr failure;
    const auto t_sampling = std::chrono::steady_clock::now();
    const int workers = int(std::min<std::size_t>(std::size_t(threads), n_tasks));
    const auto worker = [&](int) {
#if defined(MMFUSE_HAS_ONEDNN)
        omp_set_num_threads(1);
#endif
        try {
            const std::unique_ptr<mf::backend::stream> st = device.create_stream();
            mf::growing_arena ws;
            mf::nn::step_context<float> wcx{st.get(), &ws, false};
            mf::nn::model<cross_attention_denoiser> replica(cross_attention_denoiser{}, seed);
            mf::nn::model<digit_classifier> judge_copy(digit_classifier{}, seed + 100);
            mf::ops::copy(wcx.op("replica"), model.parameters(), replica.parameters());
            mf::ops::copy(wcx.op("replica"), judge.parameters(), judge_copy.parameters());
            const auto judged = [&](const mf::tensor<float>& images, const std::vector<int>& want) {
                ws.reset();
                int correct = 0;
                examples::cross_entropy(wcx, "judge.loss", judge_copy.net().forward(wcx, images.cref()),
                                        want, {}, correct);
                return 100.0 * double(correct) / double(want.size());
            };
            for (std::size_t k; (k = next.fetch_add(1)) < n_tasks;) {
                {
                    std::lock_guard g(lock);
                    if (failure) return;
                }
                const auto t0 = std::chrono::steady_clock::now();
                if (k < jobs.size()) {
                    job& j = jobs[k];
                    const mf::tensor<float> images =
                        generate(j.kind, j.steps, j.shuffled ? shuffled_tokens : test_tokens, z,
                                 guidance, sched, replica, wcx);
                    j.accuracy = judged(images, test.label);
                    j.secs = seconds_since(t0);
                } else {
                    grid_samples = generate(sampler_kind::dpmpp_2m, grid_steps, grid_tokens, grid_z,
                                            guidance, sched, replica, wcx);
                    std::vector<int> want(std::size_t(classes * grid_cols));
                    for (index_t r = 0; r < classes * grid_cols; ++r) want[std::size_t(r)] = int(r / grid_cols);
                    grid_accuracy = judged(grid_samples, want);
                }
                const std::size_t done = finished.fetch_add(1) + 1;
                std::lock_guard g(lock);
                const double el = seconds_since(t_sampling);
                bar.show(fmt("stage C (sampling) %zu/%zu jobs", done, n_tasks),
                         el / double(done) * double(n_tasks - done), true);
            }
        } catch (...) {
            std::lock_guard g(lock);
            if (!failure) failure = std::current_exception();
        }
    };
    {
        std::vector<std::thread> pool;
        for (int w = 1; w < workers; ++w) pool.emplace_back(worker, w);
        worker(0);
        for (auto& th : pool) th.join();
    }
    bar.done();
    if (failure) std::rethrow_exception(failure);
    const double secs_c = seconds_since(t_sampling);
#if defined(MMFUSE_HAS_ONEDNN)
    omp_set_num_threads(threads);
#endif

    // ---- report -------------------------------------------------------------------------------
    std::filesystem::create_directories(out);
    std::vector<std::vector<float>> grid_logmel;
    for (index_t d = 0; d < classes; ++d) {
        const auto r = std::size_t(grid_rec[std::size_t(d)]);
        grid_logmel.emplace_back(test.logmel.begin() + std::ptrdiff_t(r * 48 * 32),
                                 test.logmel.begin() + std::ptrdiff_t((r + 1) * 48 * 32));
    }
    examples::write_png(out / "speech_to_image.png", grid_picture(grid_logmel, grid_samples, grid_cols, 4));

    const auto find = [&](sampler_kind k, int n, bool sh) -> const job* {
        for (const job& j : jobs)
            if (j.kind == k && j.steps == n && j.shuffled == sh) return &j;
        return nullptr;
    };
    std::string tab =
        "| sampler | steps | spoken digit read back (audio → image) | shuffled audio (baseline) | "
        "seconds (300 samples) |\n| --- | ---: | ---: | ---: | ---: |\n";
    for (sampler_kind k : {sampler_kind::dpmpp_2m, sampler_kind::ddim})
        for (int n : k == sampler_kind::dpmpp_2m ? dpm_steps : ddim_steps) {
            const job* a = find(k, n, false);
            const job* b = find(k, n, true);
            tab += fmt("| %s | %d | %.1f %% | %.1f %% | %.1f |\n", sampler_name(k), n, a->accuracy,
                       b->accuracy, a->secs);
        }
    const double total = seconds_since(t_start);
    const job* headline = find(sampler_kind::dpmpp_2m, grid_steps, false);
    const job* headline_sh = find(sampler_kind::dpmpp_2m, grid_steps, true);
    std::printf("\nGenerated images classified as the spoken digit (%lld held-out recordings, "
                "guidance %.1f; judge on real held-out images %.1f%%, chance 10%%):\n\n%s\n",
                (long long)test.n, guidance, judge_real, tab.c_str());
    std::printf("grid (%d samples per digit, DPM-Solver++ %d steps): %.1f%% read as the spoken digit\n",
                grid_cols, grid_steps, grid_accuracy);
    std::printf("for comparison: the audio encoder alone puts %.1f%% of the held-out recordings "
                "nearest their own digit's images\n",
                audio_to_digit);
    std::printf("time: stage A %.0fs, stage B %.0fs, sampling %.0fs; total %.0fs\n", secs_a,
                secs_b, secs_c, total);
    std::printf("wrote %s and %s\n", (out / "speech_to_image.png").string().c_str(),
                (out / "results.md").string().c_str());

    std::ofstream md(out / "results.md");
    md << "# Speech to image on the audio-visual digits\n\n"
       << "Made by `examples/speech_to_image.cpp` (`speech_to_image " << (quick ? "--quick " : "")
       << "--seed " << seed << " --threads " << threads << " --backend " << backend
       << " --epochs-a " << epochs_a << " --epochs-b " << epochs_b << " --guidance "
       << fmt("%g", guidance) << "`); the models are described at the top of that file.\n\n"
       << "A spoken digit (a held-out FSDD recording, 48 x 32 log-mel) goes through an audio "
       << "encoder pretrained with a CLIP loss against image embeddings, then a diffusion "
       << "denoiser attends to its 16 audio tokens through cross-attention and draws an 8x8 "
       << "digit. A classifier trained on real images (" << fmt("%.1f", judge_real)
       << " % on the real held-out images) reads each generated image; the table gives how "
       << "often it reads the digit that was spoken. Baseline: the same with the audio "
       << "shuffled across the test set (each image generated from another recording's audio, "
       << "judged against the original label; " << same_label_after_shuffle << " of the "
       << test.n << " shuffled recordings happen to say the same digit), i.e. what a model "
       << "that ignores the audio scores.\n\n"
       << tab << "\n"
       << "Classifier-free guidance " << fmt("%g", guidance) << "; every sampler starts from "
       << "the same noise. Stage A (contrastive, " << epochs_a << " epochs of batches of one "
       << "pair per digit): held-out audio → nearest mean image embedding "
       << fmt("%.1f", audio_to_digit) << " %. Stage B (denoiser, " << epochs_b
       << " epochs of 64, audio encoder frozen): final training loss "
       << fmt("%.4f", last_loss_b) << ".\n\n"
       << "![spoken digit -> generated images](speech_to_image.png)\n\n"
       << "Rows: one held-out recording per digit (its log-mel, time left to right, low bands "
       << "at the bottom), then " << grid_cols << " samples from different noise (DPM-Solver++, "
       << grid_steps << " steps); " << fmt("%.1f", grid_accuracy) << " % of them are read as "
       << "the spoken digit.\n\n"
       << "Wall time: stage A " << fmt("%.0f", secs_a) << " s, stage B " << fmt("%.0f", secs_b)
       << " s, sampling " << fmt("%.0f", secs_c) << " s, total " << fmt("%.0f", total)
       << " s (" << threads << " thread(s), backend " << backend << ").\n";
    md.close();
    if (quick) return 0;
    return headline->accuracy >= headline_sh->accuracy + 30.0 ? 0 : 1;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "speech_to_image: %s\n", e.what());
        return 2;
    }
}
