// fusion_hybrid — a new hybrid fusion architecture from the fusion templates, in under 30 lines,
// trained on the task of 01_quickstart: modality A (4 tokens x 8 features) and modality B
// (5 tokens x 6 features) each hide a digit in 0..3 in one noisy token; the label is
// (a + b) mod 4, so neither modality alone beats chance (25 %).
//
// The architecture (lines marked "architecture" below; names are PyTorch state_dict names):
//   encoders      per modality: linear -> relu to width 32      "encoders.a.0.weight", ...
//   interaction   stage 0: A and B attend to each other (two cross-attention blocks,
//                          simultaneous update)                  "interaction.0.0.cross_attn..."
//                 stage 1: mean over each stream's tokens
//   fusion        concat of the two pooled streams (B, 64); a sample whose modality is
//                 absent (presence mask) gets zeros there and is masked as keys
//   head          linear 64 -> 4
// Compare with 01_quickstart.cpp, where the same kind of model is written by hand. The data
// (examples/common/digit_sum_task.hpp) and the loss (common/classification.hpp) are shared.
//
// Usage: fusion_hybrid [--steps N] [--seed S]  (prints held-out accuracy with both modalities
// and with modality B marked absent: the latter must fall to chance).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "common/classification.hpp"
#include "common/digit_sum_task.hpp"
#include "common/flags.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/fusion/combine.hpp"
#include "mmfuse/fusion/exchange.hpp"
#include "mmfuse/fusion/templates.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "mmfuse/optim/adam.hpp"

namespace mf = mmfuse;
namespace fu = mmfuse::fusion;
using mf::index_t;
using mf::compose::named;

// ---- architecture (14 lines) ------------------------------------------------------------
constexpr index_t W = 32;
template <index_t In>
using encoder = mf::compose::seq<mf::nn::linear<In, W>, mf::nn::relu<float>>;
using block = mf::nn::cross_attention_block<W, 4, 64>;  // pre-LN, 4 heads, FF 64
using pooled =
    mf::compose::modalities<named<"a", fu::mean_tokens<float>>, named<"b", fu::mean_tokens<float>>>;
using hybrid_net =
    fu::hybrid<mf::compose::modalities<named<"a", encoder<8>>, named<"b", encoder<6>>>,
               fu::stages<fu::cross_exchange<block, block>, pooled>,  // exchange, then pool
               fu::concat<2>,                                         // (B, 64)
               mf::nn::linear<2 * W, 4>>;                             // logits
// Every part default-constructs from its static widths: `hybrid_net{}` is the whole model.
// ---- end of architecture -----------------------------------------------------------------

int main(int argc, char** argv) try {
    std::uint64_t steps = 1200, seed = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf("usage: %s [--steps N] [--seed S]\n", argv[0]);
            return 0;
        }
        if (i + 1 >= argc || (arg != "--steps" && arg != "--seed")) {
            std::fprintf(stderr, "fusion_hybrid: unknown option or missing value: %s\n",
                         arg.c_str());
            return 2;
        }
        (arg == "--steps" ? steps : seed) = examples::whole_number(arg, argv[++i]);
    }

    mf::nn::model<hybrid_net> model(hybrid_net{}, seed);
    std::printf("hybrid model: %lld parameters, first %s\n", (long long)model.parameter_count(),
                model.parameter_index()[0].name.c_str());
    mf::growing_arena ws;
    mf::nn::step_context<float> cx{&mf::backend::default_stream(), &ws, true};
    mf::optim::adamw opt(model, {.lr = 3e-3, .weight_decay = 1e-2});
    std::mt19937 rng{std::uint32_t(seed)};
    mf::tensor<float> dlogits({64, 4});
    for (std::uint64_t s = 0; s < steps; ++s) {
        const examples::digit_sum_batch bt = examples::make_digit_sum_batch(64, rng);
        ws.reset();
        model.zero_grad();
        const auto logits = model.net().forward(cx, {bt.a.cref(), bt.b.cref()});
        int seen_correct = 0;
        examples::cross_entropy(cx, "loss", logits, bt.label, dlogits.ref(), seen_correct);
        model.net().backward(cx, dlogits.cref());
        opt.step(model);
    }

    cx.training = false;
    std::mt19937 test_rng{std::uint32_t(seed) + 1000u};
    const examples::digit_sum_batch test = examples::make_digit_sum_batch(2000, test_rng);
    mf::tensor<bool> only_a({2000, 2});
    for (index_t i = 0; i < 2000; ++i) {
        only_a(i, 0) = true;
        only_a(i, 1) = false;  // modality B absent in every sample
    }
    ws.reset();
    int both = 0, without_b = 0;
    examples::cross_entropy(cx, "loss", model.net().forward(cx, {test.a.cref(), test.b.cref()}),
                            test.label, {}, both);
    ws.reset();
    examples::cross_entropy(cx, "loss",
                            model.net().forward(cx, {test.a.cref(), test.b.cref()}, only_a.cref()),
                            test.label, {}, without_b);
    std::printf("held-out accuracy: both modalities %.1f%%, B absent %.1f%% (chance 25%%)\n",
                100.0 * both / 2000.0, 100.0 * without_b / 2000.0);
    return both > 2000 * 0.9 ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "fusion_hybrid: %s\n", e.what());
    return 2;
}
