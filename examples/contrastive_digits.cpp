// contrastive_digits — a CLIP-style dual encoder on 8x8 handwritten digits, then zero-shot
// classification with prompts it never saw.
//
// The task. 1,797 images of digits (examples/data/digits, 8x8 pixels 0..16) are split 80/20
// per class with a fixed seed (the same split for every --seed). Every training image is
// paired with a caption built from a tiny vocabulary, "a handwritten seven", "the digit
// seven", ... The model learns, from the pairs alone, to put an image and a caption that
// describes it close together on the unit sphere (CLIP, Radford et al. 2021). Nothing ever
// tells it "this is class 7": the class exists only as the word "seven" in the captions.
//
// The model (parameter names are PyTorch state_dict names):
//   image:  mlp 64 -> 128 -> ReLU -> 64            image.mlp.fc1 / image.mlp.fc2
//           projection_head 64 -> 32 (no bias, then L2 norm)
//                                                   image.projection  -> (B, 32) unit rows
//   text:   token embedding (V, 64), mean over the caption's tokens (padding masked out)
//                                                   text.token_embedding
//           linear 64 -> 64, ReLU                   text.fc
//           projection_head 64 -> 32              text.projection   -> (B, 32) unit rows
//   loss:   contrastive::clip_loss, symmetric InfoNCE over S = s I T^T with a learnable
//           s = e^theta                             logit_scale (theta, open_clip's name)
// trained with AdamW; after every step theta is clamped to [0, ln 100] (open_clip).
//
// Batches. Every batch holds one image of each digit (B = 10), each with a caption drawn
// from the training templates. CLIP's loss treats every other caption of the batch as a
// negative; in a random batch, two images of the same digit would make a correct caption a
// "negative" (a false negative: here the captions carry nothing but the class, so with
// B = 64 a row would have about six equally right captions and the loss could never fall
// below about ln 6). Batches of distinct digits have no false negatives, so the loss can
// reach 0 and says exactly how well the classes are separated.
//
// Unseen words. The vocabulary is the training captions' words plus <pad> and <unk>; a
// prompt's unknown words ("photo", "image") become <unk>. So that <unk> means "no class
// information" rather than a random vector, training replaces each non-number word by <unk>
// with probability 0.1 (word dropout).
//
// What it reports, on the held-out images:
//   * zero-shot accuracy with UNSEEN prompt templates ("a photo of the number seven", ...):
//     each class embedding is the average of its prompts' unit embeddings, renormalised,
//     logits = 100 * image . class, prediction = arg max (open_clip's rule, here
//     contrastive::zero_shot_classifier / zero_shot_logits / top_k_accuracy). Also shown:
//     the same with the training templates.
//   * image-to-text retrieval on the test set: every test image gets one caption from the
//     unseen templates (template i mod 3 for the i-th test image), S = I T^T (N x N).
//     Class R@1: the image's best caption describes its digit. Strict R@1 (open_clip's
//     get_clip_metrics via contrastive::retrieval_metrics): the best caption is the image's
//     own one. Captions are only "template + number", so about 12 test images share each
//     caption string and no model can tell those apart: strict R@1 is at most (distinct
//     caption strings) / N, and as an image says nothing about which of the 3 templates its
//     caption used, a perfect model scores about a third of that; both are printed.
//   * two heat maps of cosine similarity (blue -1, white 0, red +1), 10 test images per
//     digit sorted by digit: similarity.png (100 images x their 100 captions) and
//     zero_shot.png (100 images x the 10 class embeddings), written into --out.
//
// Usage: contrastive_digits [--epochs N] [--seed S] [--threads N] [--data DIR] [--out DIR]
// Exit status 1 when the zero-shot accuracy is below 80 %, 2 on bad arguments or data.

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/digits.hpp"
#include "common/flags.hpp"
#include "common/png.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/evaluation.hpp"
#include "mmfuse/contrastive/projection.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/embedding.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/schedule.hpp"

#ifndef MMFUSE_EXAMPLE_DATA_DIR
#define MMFUSE_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace mf = mmfuse;
using mf::dyn;
using mf::index_t;

constexpr index_t embed_dim = 32;  // the shared embedding space
constexpr index_t max_tokens = 8;  // captions are padded (or cut) to this many tokens

// ---- captions --------------------------------------------------------------------------
const std::vector<std::string> number_words = {"zero", "one", "two",   "three", "four",
                                               "five", "six", "seven", "eight", "nine"};
// "{}" stands for the number word.
const std::vector<std::string> train_templates = {
    "a handwritten {}", "the digit {}",   "a drawing of the number {}",
    "number {}",        "a scribbled {}", "the handwritten number {}"};
const std::vector<std::string> unseen_templates = {
    "a photo of the number {}", "an image of the digit {}", "a picture showing {}"};

std::string caption(const std::string& templ, int digit) {
    std::string s = templ;
    s.replace(s.find("{}"), 2, number_words[std::size_t(digit)]);
    return s;
}

std::vector<std::string> words(const std::string& s) {
    std::istringstream in(s);
    std::vector<std::string> w;
    for (std::string t; in >> t;)
        w.push_back(t);
    return w;
}

// Word -> id: 0 is <pad>, 1 is <unk>, then every word of the training captions.
struct vocabulary {
    static constexpr std::int64_t pad = 0, unk = 1;
    std::map<std::string, std::int64_t> ids;
    vocabulary() {
        for (const auto& t : train_templates)
            for (int d = 0; d < 10; ++d)
                for (const auto& w : words(caption(t, d)))
                    ids.emplace(w, std::int64_t(ids.size()) + 2);
    }
    index_t size() const { return index_t(ids.size()) + 2; }
    std::int64_t id(const std::string& w) const {
        const auto it = ids.find(w);
        return it == ids.end() ? unk : it->second;
    }
};

// A batch of tokenised captions: ids (B, L) padded with <pad>, and the masked-mean weights
// (B, L, 1): 1 / (caption length) on real tokens, 0 on padding.
struct token_batch {
    mf::tensor<std::int64_t> ids;
    mf::tensor<float> weights;
    explicit token_batch(index_t b) : ids({b, max_tokens}), weights({b, max_tokens, 1}) {}
    // Writes caption `text` into row r; with `dropout` > 0 every non-number word becomes
    // <unk> with that probability.
    void set(index_t r, const std::string& text, const vocabulary& v, double dropout = 0.0,
             std::mt19937* rng = nullptr) {
        const auto w = words(text);
        const index_t n = std::min(index_t(w.size()), max_tokens);
        std::bernoulli_distribution drop(dropout);
        for (index_t k = 0; k < max_tokens; ++k) {
            std::int64_t id = vocabulary::pad;
            if (k < n) {
                const std::string& word = w[std::size_t(k)];
                const bool is_number =
                    std::find(number_words.begin(), number_words.end(), word) != number_words.end();
                id = !is_number && dropout > 0.0 && drop(*rng) ? vocabulary::unk : v.id(word);
            }
            ids(r, k) = id;
            weights(r, k, 0) = k < n ? 1.0f / float(n) : 0.0f;
        }
    }
};

// ---- the model -------------------------------------------------------------------------
// Image tower: pixels (B, 64) in [0, 1] -> unit embeddings (B, 32).
struct image_encoder {
    using value_type = float;
    mf::nn::mlp<64, 128, 64> mlp{};
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
                                        mf::tensor_ref<const float> pixels) {
        return projection.forward(cx, mlp.forward(cx, pixels));
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        mlp.backward(cx, projection.backward(cx, dy));
    }
};

// Text tower: token ids (B, L) and masked-mean weights (B, L, 1) -> unit embeddings (B, 32).
struct text_encoder {
    using value_type = float;
    static constexpr index_t width = 64;
    mf::nn::embedding<dyn, width> token_embedding;
    mf::nn::linear<width, width> fc{};
    mf::nn::relu<float> act{};
    mf::contrastive::projection_head<width, embed_dim> projection{};
    std::string path;
    mf::tensor_ref<const float> weights_{};  // the caller's (B, L, 1), kept for backward

    explicit text_encoder(index_t vocabulary_size) : token_embedding(vocabulary_size) {}

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("token_embedding", token_embedding);
        v.child("fc", fc);
        v.child("projection", projection);
    }
    void reset_parameters(mf::philox_generator& g) {
        token_embedding.reset_parameters(g);
        fc.reset_parameters(g);
        projection.reset_parameters(g);
    }
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const std::int64_t> ids,
                                        mf::tensor_ref<const float> weights) {
        const auto tokens = token_embedding.forward(cx, ids);  // (B, L, 64)
        // Masked mean over the tokens: sum_l w[b, l] * tokens[b, l, :].
        const auto weighted = cx.allocate(tokens.extents());
        mf::ops::binary(cx.op(path), mf::ops::binary_kind::mul, tokens, weights, weighted);
        const auto pooled = cx.allocate({tokens.extent(0), width});
        mf::ops::reduce(cx.op(path), mf::ops::reduce_kind::sum, 1, weighted, pooled);
        weights_ = weights;
        return projection.forward(cx, act.forward(cx, fc.forward(cx, pooled)));
    }
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dy) {
        const auto dpooled = fc.backward(cx, act.backward(cx, projection.backward(cx, dy)));
        // The masked mean's backward: token l of caption b gets w[b, l] * dpooled[b, :].
        const auto dtokens = cx.allocate({dpooled.extent(0), max_tokens, width});
        mf::ops::binary(cx.op(path), mf::ops::binary_kind::mul, dpooled.unsqueeze(1), weights_,
                        dtokens);
        token_embedding.backward(cx, dtokens);
    }
};

struct dual_encoder {
    using value_type = float;
    image_encoder image;
    text_encoder text;
    mf::contrastive::clip_loss<float> loss{};

    explicit dual_encoder(index_t vocabulary_size) : text(vocabulary_size) {}

    template <class V>
    void visit(V& v) {
        v.child("image", image);
        v.child("text", text);
        loss.visit(v);  // "logit_scale" at the top level, as in open_clip's CLIP
    }
    void reset_parameters(mf::philox_generator& g) {
        image.reset_parameters(g);
        text.reset_parameters(g);
        loss.reset_parameters(g);
    }
};

// A workspace result copied out before the workspace is reset.
mf::tensor<float> keep(mf::tensor_ref<const float> x) {
    mf::tensor<float> t(x.extents());
    std::copy(x.data(), x.data() + x.numel(), t.data());
    return t;
}

int run(int argc, char** argv) {
    index_t epochs = 20;
    std::uint64_t seed = 1;
    int threads = 1;
    std::filesystem::path out = "out/contrastive_digits";
    std::filesystem::path data = MMFUSE_EXAMPLE_DATA_DIR;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf(
                "usage: %s [--epochs N] [--seed S] [--threads N] [--data DIR] [--out DIR]\n"
                "  --epochs N   passes over the training images (default 20)\n"
                "  --seed S     initialisation, batch order and captions (default 1); the\n"
                "               train/test split is fixed\n"
                "  --threads N  Eigen's thread count (Eigen::setNbThreads; only effective in\n"
                "               a build with OpenMP, default 1)\n"
                "  --data DIR   folder with digits/digits.csv.gz (default %s)\n"
                "  --out DIR    where the heat maps go (default out/contrastive_digits)\n",
                argv[0], MMFUSE_EXAMPLE_DATA_DIR);
            return 0;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value (see --help)\n", arg.c_str());
            return 2;
        }
        if (arg == "--epochs")
            epochs = index_t(examples::whole_number(arg, argv[++i]));
        else if (arg == "--seed")
            seed = examples::whole_number(arg, argv[++i]);
        else if (arg == "--threads")
            threads = int(std::min<std::uint64_t>(examples::whole_number(arg, argv[++i]), 1024));
        else if (arg == "--data")
            data = argv[++i];
        else if (arg == "--out")
            out = argv[++i];
        else {
            std::fprintf(stderr, "unknown option %s (see --help)\n", arg.c_str());
            return 2;
        }
    }
    if (epochs < 1 || threads < 1) {
        std::fprintf(stderr, "--epochs and --threads must be >= 1\n");
        return 2;
    }
    Eigen::setNbThreads(threads);

    // ---- data: images in [0, 1], a fixed stratified 80/20 split --------------------------
    const examples::digits_dataset digits =
        examples::load_digits(data / "digits" / "digits.csv.gz");
    const examples::digits_split split = examples::split_digits(digits, 0.2, /*seed=*/2024);
    constexpr index_t pixels = examples::digits_dataset::pixels_per_image;
    const auto image_rows = [&](const std::vector<std::size_t>& which) {
        mf::tensor<float> x({index_t(which.size()), pixels});
        for (std::size_t r = 0; r < which.size(); ++r)
            for (index_t k = 0; k < pixels; ++k)
                x(index_t(r), k) =
                    digits.pixels[which[r] * std::size_t(pixels) + std::size_t(k)] / 16.0f;
        return x;
    };
    std::vector<std::vector<std::size_t>> train_by_class(10);
    for (const std::size_t i : split.train)
        train_by_class[std::size_t(digits.labels[i])].push_back(i);
    std::printf("digits: %zu images, %zu for training, %zu held out\n", digits.size(),
                split.train.size(), split.test.size());

    const vocabulary vocab;
    mf::nn::model<dual_encoder> model(dual_encoder(vocab.size()), seed);
    std::printf("model: %lld parameters, vocabulary of %lld words\n",
                (long long)model.parameter_count(), (long long)vocab.size());

    mf::growing_arena workspace;
    mf::nn::step_context<float> cx{&mf::backend::default_stream(), &workspace, true};
    auto& net = model.net();

    // ---- training: batches of one image per digit ----------------------------------------
    const index_t batch = 10;
    const index_t steps_per_epoch = index_t(split.train.size()) / batch;
    const index_t total_steps = epochs * steps_per_epoch;
    mf::optim::adamw opt(model, {.lr = 2e-3, .weight_decay = 1e-2});
    const mf::optim::cosine_with_warmup schedule(2e-3, 100, total_steps, 1e-5);
    std::mt19937 rng{std::uint32_t(seed)};
    std::vector<std::size_t> cursor(10, 0);
    for (auto& members : train_by_class)
        std::shuffle(members.begin(), members.end(), rng);
    mf::tensor<float> x_batch({batch, pixels});
    token_batch t_batch(batch);
    std::uniform_int_distribution<std::size_t> pick_template(0, train_templates.size() - 1);

    const auto t0 = std::chrono::steady_clock::now();
    index_t step = 0;
    for (index_t epoch = 1; epoch <= epochs; ++epoch) {
        double loss_sum = 0.0;
        for (index_t s = 0; s < steps_per_epoch; ++s, ++step) {
            for (int d = 0; d < 10; ++d) {  // row d: the next image of digit d
                auto& members = train_by_class[std::size_t(d)];
                if (cursor[std::size_t(d)] == members.size()) {
                    std::shuffle(members.begin(), members.end(), rng);
                    cursor[std::size_t(d)] = 0;
                }
                const std::size_t img = members[cursor[std::size_t(d)]++];
                for (index_t k = 0; k < pixels; ++k)
                    x_batch(index_t(d), k) =
                        digits.pixels[img * std::size_t(pixels) + std::size_t(k)] / 16.0f;
                t_batch.set(index_t(d), caption(train_templates[pick_template(rng)], d), vocab, 0.1,
                            &rng);
            }
            workspace.reset();
            model.zero_grad();
            const auto zi = net.image.forward(cx, x_batch.cref());
            const auto zt = net.text.forward(cx, t_batch.ids.cref(), t_batch.weights.cref());
            loss_sum += net.loss.forward(cx, zi, zt);
            const auto g = net.loss.backward(cx);
            net.image.backward(cx, g.da);
            net.text.backward(cx, g.db);
            opt.set_lr(schedule(step + 1));
            opt.step(model);
            net.loss.clamp();
        }
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("epoch %3lld/%lld  loss %.4f  logit scale %6.2f  %.1fs\n", (long long)epoch,
                    (long long)epochs, loss_sum / double(steps_per_epoch),
                    net.loss.logit_scale().scale(), secs);
        std::fflush(stdout);
    }
    const double train_secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // ---- evaluation on the held-out images (inference mode) ------------------------------
    cx.training = false;
    const std::size_t n_test = split.test.size();
    const mf::tensor<float> x_test = image_rows(split.test);
    workspace.reset();
    const mf::tensor<float> img = keep(net.image.forward(cx, x_test.cref()));  // (N, 32)
    const auto encode = [&](const std::vector<std::string>& texts) {
        token_batch tb(index_t(texts.size()));
        for (std::size_t r = 0; r < texts.size(); ++r)
            tb.set(index_t(r), texts[r], vocab);
        workspace.reset();
        return keep(net.text.forward(cx, tb.ids.cref(), tb.weights.cref()));
    };
    std::vector<index_t> labels(n_test);
    for (std::size_t r = 0; r < n_test; ++r)
        labels[r] = digits.labels[split.test[r]];

    // Zero-shot: class embedding = renormalised mean of its prompts' unit embeddings.
    const auto classifier = [&](const std::vector<std::string>& templates) {
        std::vector<std::string> prompts;  // class-major: (10, K)
        for (int d = 0; d < 10; ++d)
            for (const auto& t : templates)
                prompts.push_back(caption(t, d));
        const mf::tensor<float> e = encode(prompts);
        return mf::contrastive::zero_shot_classifier(
            e.cref().reshape({10, index_t(templates.size()), embed_dim}));
    };
    const auto zero_shot_accuracy = [&](const mf::tensor<float>& cls) {
        const mf::tensor<float> logits = mf::contrastive::zero_shot_logits(img.cref(), cls.cref());
        return 100.0 *
               mf::contrastive::top_k_accuracy(logits.cref(), std::span<const index_t>(labels), 1);
    };
    const mf::tensor<float> cls_unseen = classifier(unseen_templates);
    const double zs_unseen = zero_shot_accuracy(cls_unseen);
    const double zs_seen = zero_shot_accuracy(classifier(train_templates));

    // Retrieval: the i-th test image's caption uses unseen template i mod 3; S = I T^T.
    std::vector<std::string> test_captions(n_test);
    for (std::size_t r = 0; r < n_test; ++r)
        test_captions[r] = caption(unseen_templates[r % unseen_templates.size()], int(labels[r]));
    const mf::tensor<float> txt = encode(test_captions);
    mf::tensor<float> sim({index_t(n_test), index_t(n_test)});
    mf::ops::matmul(cx.op("eval"), img.cref(), txt.cref(), sim.ref(), {.transpose_b = true});
    std::size_t class_hits = 0;
    for (std::size_t r = 0; r < n_test; ++r) {
        index_t best = 0;
        for (index_t c = 1; c < index_t(n_test); ++c)
            if (sim(index_t(r), c) > sim(index_t(r), best)) best = c;
        class_hits += labels[std::size_t(best)] == labels[r];
    }
    const auto strict = mf::contrastive::retrieval_metrics(sim.cref());
    const std::size_t distinct =
        std::set<std::string>(test_captions.begin(), test_captions.end()).size();

    std::printf("\ntraining: %.1fs for %lld epochs (%lld steps of %lld pairs)\n", train_secs,
                (long long)epochs, (long long)total_steps, (long long)batch);
    std::printf(
        "zero-shot accuracy on %zu held-out images: %.1f%% with unseen prompts "
        "(%.1f%% with the training templates; chance 10%%)\n",
        n_test, zs_unseen, zs_seen);
    std::printf(
        "image-to-text R@1 over %zu held-out captions: class %.1f%%, strict %.1f%% "
        "(at most %.1f%%: %zu distinct captions;\n"
        "  a perfect model, blind to the template, gets about %.1f%%)\n",
        n_test, 100.0 * double(class_hits) / double(n_test),
        100.0 * strict.image_to_text.recall_at_1, 100.0 * double(distinct) / double(n_test),
        distinct, 100.0 * double(distinct) / double(n_test) / double(unseen_templates.size()));

    // ---- heat maps: 10 test images per digit, sorted by digit -----------------------------
    std::vector<std::size_t> shown;
    for (int d = 0; d < 10; ++d) {
        int taken = 0;
        for (std::size_t r = 0; r < n_test && taken < 10; ++r)
            if (labels[r] == d) shown.push_back(r), ++taken;
    }
    const int n_shown = int(shown.size());
    std::vector<float> pair_sim, class_sim;
    for (const std::size_t r : shown) {
        for (const std::size_t c : shown)
            pair_sim.push_back(sim(index_t(r), index_t(c)));
        const mf::tensor<float> row = mf::contrastive::zero_shot_logits(
            img.cref().narrow(0, index_t(r), 1), cls_unseen.cref());
        for (int d = 0; d < 10; ++d)
            class_sim.push_back(row(0, d) / float(mf::contrastive::zero_shot_logit_factor));
    }
    std::filesystem::create_directories(out);
    examples::write_png(out / "similarity.png",
                        examples::heat_map(pair_sim, n_shown, n_shown, 4, 4, 10, 10));
    examples::write_png(out / "zero_shot.png",
                        examples::heat_map(class_sim, n_shown, 10, 24, 4, 10, 1));
    std::printf("heat maps: %s, %s (rows: test images by digit; blue -1, white 0, red +1)\n",
                (out / "similarity.png").string().c_str(),
                (out / "zero_shot.png").string().c_str());
    return zs_unseen >= 80.0 ? 0 : 1;
}

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {  // a missing data file, a malformed number, ...
        std::fprintf(stderr, "contrastive_digits: %s\n", e.what());
        return 2;
    }
}
