// 01_quickstart — train a two-modality model whose task neither modality solves alone.
//
// The task. Every sample has two "modalities", each a short sequence of noisy tokens:
//   * modality A: 4 tokens of 8 features; one random token carries a one-hot digit a in 0..3
//   * modality B: 5 tokens of 6 features; one random token carries a one-hot digit b in 0..3
// The label is (a + b) mod 4. Because a and b are independent and uniform, either modality
// alone predicts the label at chance (25 %); only a model that *combines* them can succeed.
//
// The model (names are PyTorch state_dict names, so the checkpoint this writes loads into
// a PyTorch twin with `load_state_dict`):
//   enc_a:  linear 8 -> 32, relu              (B, 4, 8)  -> (B, 4, 32)
//   enc_b:  linear 6 -> 32, relu              (B, 5, 6)  -> (B, 5, 32)
//   fusion: cross-attention block, A attends to B (pre-LN, 4 heads, FF 64)  -> (B, 4, 32)
//   pool:   mean over A's tokens              -> (B, 32)
//   head:   linear 32 -> 4                    -> logits (B, 4)
// trained with AdamW and softmax cross-entropy. Then the example saves a checkpoint
// (safetensors), loads it into a freshly initialised model and checks that both give
// bit-identical outputs.
//
// Usage: 01_quickstart [--steps N] [--seed S] [--out DIR]

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/classification.hpp"
#include "common/digit_sum_task.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/io/checkpoint.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "mmfuse/optim/adam.hpp"
#include "mmfuse/optim/clip.hpp"
#include "mmfuse/optim/schedule.hpp"

namespace mf = mmfuse;
using mf::dyn;
using mf::index_t;

// ---- the model -------------------------------------------------------------------------
// A multi-input module is an ordinary struct: it names its children in `visit` (that gives
// every parameter its hierarchical name), initialises them in `reset_parameters`, and
// writes forward and backward out of its children's forward and backward.
struct two_modality_classifier {
    using value_type = float;
    static constexpr index_t width = 32, classes = 4;

    mf::nn::linear<8, width> enc_a_proj{};
    mf::nn::relu<float> enc_a_act{};
    mf::nn::linear<6, width> enc_b_proj{};
    mf::nn::relu<float> enc_b_act{};
    mf::nn::cross_attention_block<width, 4, 64> fusion{};
    mf::nn::linear<width, classes> head{};
    std::string path;
    mf::tensor<float> inv_tokens{mf::extents{1}};  // 1 / (tokens of A), for the mean's backward
    index_t tokens_a = 0;

    template <class V>
    void visit(V& v) {
        v.path(path);
        v.child("enc_a", enc_a_proj);  // enc_a.weight, enc_a.bias
        v.child("enc_b", enc_b_proj);
        v.child("fusion", fusion);  // fusion.cross_attn.in_proj_weight, fusion.norm1.weight, ...
        v.child("head", head);
    }
    void reset_parameters(mf::philox_generator& g) {
        enc_a_proj.reset_parameters(g);
        enc_b_proj.reset_parameters(g);
        fusion.reset_parameters(g);
        head.reset_parameters(g);
    }

    // a (B, 4, 8), b (B, 5, 6) -> logits (B, 4), all views into the step's workspace.
    mf::tensor_ref<const float> forward(mf::nn::step_context<float>& cx,
                                        mf::tensor_ref<const float> a,
                                        mf::tensor_ref<const float> b) {
        const auto ha = enc_a_act.forward(cx, enc_a_proj.forward(cx, a));
        const auto hb = enc_b_act.forward(cx, enc_b_proj.forward(cx, b));
        const auto fused = fusion.forward(cx, ha, hb);  // A's tokens attend to B's
        tokens_a = fused.extent(1);
        const auto pooled = cx.allocate({fused.extent(0), width});
        mf::ops::reduce(cx.op(path), mf::ops::reduce_kind::mean, 1, fused, pooled);
        return head.forward(cx, pooled);
    }

    // dlogits (B, 4) -> parameter gradients (the inputs' gradients are not needed).
    void backward(mf::nn::step_context<float>& cx, mf::tensor_ref<const float> dlogits) {
        const auto dpooled = head.backward(cx, dlogits);  // (B, 32)
        // The mean's backward: every token gets dpooled / tokens.
        const index_t batch = dpooled.extent(0);
        const auto dfused = cx.allocate({batch, tokens_a, width});
        inv_tokens[0] = 1.0f / float(tokens_a);
        mf::ops::binary(cx.op(path), mf::ops::binary_kind::mul,
                        dpooled.unsqueeze(1).expand(dfused.extents()), inv_tokens.cref(), dfused);
        const auto g = fusion.backward(cx, dfused);  // {dx for A, dcontext for B}
        enc_a_proj.backward(cx, enc_a_act.backward(cx, g.dx));
        enc_b_proj.backward(cx, enc_b_act.backward(cx, g.dcontext));
    }
};

// ---- the data and the loss --------------------------------------------------------------
// examples/common/digit_sum_task.hpp draws the batches described at the top;
// examples/common/classification.hpp has the softmax cross-entropy (plain loops on the
// example's side: the logits are host memory).

int main(int argc, char** argv) {
    index_t steps = 1500;
    std::uint64_t seed = 1;
    std::filesystem::path out = "quickstart-out";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::printf("usage: %s [--steps N] [--seed S] [--out DIR]\n", argv[0]);
            return 0;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value (see --help)\n", arg.c_str());
            return 2;
        }
        if (arg == "--steps")
            steps = std::stoll(argv[++i]);
        else if (arg == "--seed")
            seed = std::stoull(argv[++i]);
        else if (arg == "--out")
            out = argv[++i];
        else {
            std::fprintf(stderr, "unknown option %s (see --help)\n", arg.c_str());
            return 2;
        }
    }

    // One model = the module tree + one flat parameter buffer + a gradient buffer.
    mf::nn::model<two_modality_classifier> model(two_modality_classifier{}, seed);
    std::printf("model: %lld parameters in %zu named tensors (first: %s)\n",
                (long long)model.parameter_count(), model.parameter_index().size(),
                model.parameter_index()[0].name.c_str());

    // A step runs on a backend stream with a workspace that sizes itself on the first step.
    mf::growing_arena workspace;
    mf::nn::step_context<float> cx{&mf::backend::default_stream(), &workspace, true};
    mf::optim::adamw opt(model, {.lr = 3e-3, .weight_decay = 1e-2});
    const mf::optim::cosine_with_warmup schedule(3e-3, 50, steps, 1e-4);

    std::mt19937 rng{std::uint32_t(seed)};
    const index_t batch_size = 64;
    mf::tensor<float> dlogits({batch_size, two_modality_classifier::classes});
    const auto t0 = std::chrono::steady_clock::now();
    double running = 0.0;
    int correct = 0, seen = 0, since = 0;
    for (index_t s = 0; s < steps; ++s) {
        const examples::digit_sum_batch bt = examples::make_digit_sum_batch(batch_size, rng);
        workspace.reset();
        model.zero_grad();
        const auto logits = model.net().forward(cx, bt.a.cref(), bt.b.cref());
        running += examples::cross_entropy(cx, "loss", logits, bt.label, dlogits.ref(), correct);
        ++since;
        seen += int(batch_size);
        model.net().backward(cx, dlogits.cref());
        mf::optim::clip_grad_norm(model.gradients(), 1.0);
        opt.set_lr(schedule(s + 1));
        opt.step(model);
        if ((s + 1) % 250 == 0 || s + 1 == steps) {
            const double secs =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("step %5lld  loss %.4f  train acc %5.1f%%  %.1fs (%.1fs left)\n",
                        (long long)(s + 1), running / since, 100.0 * correct / seen, secs,
                        secs / double(s + 1) * double(steps - s - 1));
            running = 0.0;
            correct = seen = since = 0;
        }
    }

    // Held-out accuracy, in inference mode (nothing saved for backward).
    cx.training = false;
    std::mt19937 test_rng{std::uint32_t(seed) + 1000u};
    const examples::digit_sum_batch test = examples::make_digit_sum_batch(2000, test_rng);
    workspace.reset();
    const auto test_logits = model.net().forward(cx, test.a.cref(), test.b.cref());
    int test_correct = 0;
    mf::tensor<float> unused(test_logits.extents());
    examples::cross_entropy(cx, "loss", test_logits, test.label, unused.ref(), test_correct);
    std::printf("held-out accuracy: %.1f%% (chance 25%%; either modality alone: 25%%)\n",
                100.0 * test_correct / 2000.0);

    // Checkpoint round trip: save, load into a model initialised with another seed, compare.
    std::filesystem::create_directories(out);
    const auto ckpt = out / "quickstart.safetensors";
    mf::io::save(model, ckpt);
    mf::nn::model<two_modality_classifier> reloaded(two_modality_classifier{}, seed + 7);
    mf::io::load(reloaded, ckpt);
    mf::tensor<float> before(test_logits.extents());
    std::memcpy(before.data(), test_logits.data(), size_t(before.numel()) * sizeof(float));
    workspace.reset();
    const auto again = reloaded.net().forward(cx, test.a.cref(), test.b.cref());
    const bool identical =
        std::memcmp(before.data(), again.data(), size_t(before.numel()) * sizeof(float)) == 0;
    std::printf("checkpoint %s: reloaded outputs %s\n", ckpt.string().c_str(),
                identical ? "identical (bit for bit)" : "DIFFER");
    return identical && test_correct > 2000 * 0.9 ? 0 : 1;
}
