/*
    quickstart: a first tour of mmfuse.

    This program builds the smallest possible multimodal model by hand, from the op
    vocabulary that every mmfuse layer lowers to. Two "modalities" describe the same batch
    of samples: a 64-wide image feature vector and a 40-wide audio feature vector (think of
    a pooled CNN embedding and 40 MFCC coefficients). Each is projected into a shared
    32-wide space by its own linear layer and activation, the two projections are
    concatenated (early fusion, the simplest fusion there is), and a linear head followed by
    a softmax turns the fused vector into probabilities over 10 classes.

    Along the way it shows the four things you need before reading any other example:
      1. which backends are compiled into the program (the registry),
      2. owning tensors (`tensor<T>`) versus the views ops take (`tensor_ref<T>`),
      3. calling an op: validate-then-execute on a backend stream, with a module path,
      4. what happens on a shape mismatch: an exception that names both shapes.

    The weights are random, so the probabilities mean nothing yet; training comes with the
    nn/ and optim/ layers. What matters here is the shape of the computation.
*/

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include <mmfuse/backend/registry.hpp>
#include <mmfuse/core/error.hpp>
#include <mmfuse/core/tensor.hpp>
#include <mmfuse/core/tensor_ref.hpp>
#include <mmfuse/ops/layout.hpp>
#include <mmfuse/ops/matmul.hpp>
#include <mmfuse/ops/pointwise.hpp>
#include <mmfuse/ops/softmax.hpp>

namespace mf = mmfuse;

// ----------------------------------------------------------------------------------------

// A little helper that fills a tensor with values drawn uniformly from [-bound, bound].
// With bound = 1/sqrt(fan_in) this is exactly PyTorch's default initialisation of the
// weight and bias of `nn.Linear(fan_in, fan_out)`. (mmfuse ships proper initialisers and a
// counter-based Philox generator in core/; std::mt19937 keeps this tour self-contained.)
void fill_uniform(mf::tensor<float>& t, float bound, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-bound, bound);
    for (mf::index_t i = 0; i < t.numel(); ++i)
        t[i] = u(rng);
}

// One linear layer with an activation, written with three ops:
//
//     y = act(x W^T + b)        x (B, in), W (out, in), b (out), y (B, out)
//
// W is stored (out, in), as PyTorch stores `nn.Linear.weight`, so the product uses
// `transpose_b`: the op reads W transposed through its strides, nothing is copied.
// The op_context `cx` carries the stream to run on and the module path ("image.proj")
// that any error message will start with.
void linear_act(const mf::ops::op_context& cx, mf::tensor_ref<const float> x,
                mf::tensor_ref<const float> w, mf::tensor_ref<const float> b,
                mf::ops::unary_kind act, mf::tensor_ref<float> y) {
    mf::ops::matmul(cx, x, w, y, {.transpose_b = true});  // y = x W^T
    mf::ops::bias_add(cx, y, b, y);                       // y += b   (in place is allowed)
    mf::ops::unary(cx, act, y, y);                        // y = act(y)
}

// ----------------------------------------------------------------------------------------

int main() try {
    /*
        Step 1: what can this program run on?

        The registry lists every backend compiled into this executable. The Eigen
        reference backend is always there; oneDNN and CUDA register themselves when their
        headers are included (through the mmfuse::onednn / mmfuse::cuda CMake components).
        Nothing is ever picked silently: you name the device you want, or ask for best().
    */
    auto& registry = mf::backend::registry::global();
    std::printf("backends compiled in: %s\n", registry.names().c_str());
    for (mf::backend::device* d : registry.devices()) {
        std::printf("  %-8s %s, priority %d\n", std::string(d->name()).c_str(),
                    d->kind() == mf::backend::device_kind::cpu ? "cpu" : "gpu", d->priority());
    }
    // Every op below runs on the default stream of the Eigen device. Host backends run an
    // op synchronously, so results are ready as soon as the call returns.
    mf::backend::stream& stream = registry.get("eigen").default_stream();

    /*
        Step 2: data.

        `tensor<float>` owns 64-byte aligned, zero-initialised, row-major memory. Tensors
        are batch-first: a batch of B pooled feature vectors is (B, features). Here we make
        up a batch of 4 samples, each seen through two modalities.
    */
    constexpr mf::index_t batch = 4, image_dim = 64, audio_dim = 40, hidden = 32, classes = 10;
    std::mt19937 rng(2024);

    mf::tensor<float> image({batch, image_dim});  // e.g. pooled CNN features
    mf::tensor<float> audio({batch, audio_dim});  // e.g. 40 MFCCs averaged over time
    fill_uniform(image, 1.0f, rng);
    fill_uniform(audio, 1.0f, rng);

    // Parameters of the three linear layers, initialised like nn.Linear.
    mf::tensor<float> w_image({hidden, image_dim}), b_image({hidden});
    mf::tensor<float> w_audio({hidden, audio_dim}), b_audio({hidden});
    mf::tensor<float> w_head({classes, 2 * hidden}), b_head({classes});
    fill_uniform(w_image, 1.0f / std::sqrt(float(image_dim)), rng);
    fill_uniform(b_image, 1.0f / std::sqrt(float(image_dim)), rng);
    fill_uniform(w_audio, 1.0f / std::sqrt(float(audio_dim)), rng);
    fill_uniform(b_audio, 1.0f / std::sqrt(float(audio_dim)), rng);
    fill_uniform(w_head, 1.0f / std::sqrt(float(2 * hidden)), rng);
    fill_uniform(b_head, 1.0f / std::sqrt(float(2 * hidden)), rng);

    /*
        Step 3: one projection per modality.

        Ops never allocate their outputs: the caller passes views of memory it owns. In a
        real model that memory comes from an arena planned once per shape; here we simply
        allocate tensors. `cref()` and `ref()` turn an owning tensor into the read-only and
        writable views that ops take.
    */
    mf::tensor<float> h_image({batch, hidden}), h_audio({batch, hidden});
    linear_act({stream, "image.proj"}, image.cref(), w_image.cref(), b_image.cref(),
               mf::ops::unary_kind::gelu_erf, h_image.ref());
    linear_act({stream, "audio.proj"}, audio.cref(), w_audio.cref(), b_audio.cref(),
               mf::ops::unary_kind::silu, h_audio.ref());
    std::printf("\nimage %s -> image.proj (gelu) -> %s\n", image.extents().to_string().c_str(),
                h_image.extents().to_string().c_str());
    std::printf("audio %s -> audio.proj (silu) -> %s\n", audio.extents().to_string().c_str(),
                h_audio.extents().to_string().c_str());

    /*
        Step 4: fuse and classify.

        Early fusion concatenates the modality vectors along the feature axis, (B, 32) and
        (B, 32) into (B, 64); the braced list is a list of read-only views, any number of
        them (a std::span of views works too). The head maps that to 10 logits per sample and
       softmax turns each row of logits into a probability distribution.
    */
    mf::tensor<float> fused({batch, 2 * hidden});
    mf::ops::concat({stream, "fusion"}, /*axis=*/-1, {h_image.cref(), h_audio.cref()}, fused.ref());

    mf::tensor<float> logits({batch, classes}), probs({batch, classes});
    mf::ops::matmul({stream, "head"}, fused.cref(), w_head.cref(), logits.ref(),
                    {.transpose_b = true});
    mf::ops::bias_add({stream, "head"}, logits.cref(), b_head.cref(), logits.ref());
    mf::ops::softmax({stream, "head"}, logits.cref(), probs.ref());  // scale = 1
    std::printf("concat -> fused %s -> head -> logits %s -> softmax -> %s\n\n",
                fused.extents().to_string().c_str(), logits.extents().to_string().c_str(),
                probs.extents().to_string().c_str());

    // Print, per sample, the most likely class, its probability, and the row sum (which
    // must be 1 up to rounding: a quick sanity check you can always make on a softmax).
    for (mf::index_t i = 0; i < batch; ++i) {
        mf::index_t best = 0;
        double sum = 0.0;
        for (mf::index_t k = 0; k < classes; ++k) {
            sum += probs(i, k);
            if (probs(i, k) > probs(i, best)) best = k;
        }
        std::printf("sample %lld: p = [", static_cast<long long>(i));
        for (mf::index_t k = 0; k < 4; ++k)
            std::printf("%.3f, ", double(probs(i, k)));
        std::printf("...]  argmax %lld (p = %.3f), row sum %.6f\n", static_cast<long long>(best),
                    double(probs(i, best)), sum);
    }

    /*
        Step 5: mistakes are exceptions, not crashes.

        Every op checks its operands before a backend sees them. Feeding the audio batch to
        the image projection is a width mismatch (40 features where 64 are expected). The
        op throws `mmfuse::shape_error`, a subclass of `mmfuse::error`, whose message
        starts with the module path and names the expected and the actual shapes. Nothing
        has been written to the output when it throws.
    */
    try {
        mf::tensor<float> wrong({batch, hidden});
        linear_act({stream, "image.proj"}, audio.cref(), w_image.cref(), b_image.cref(),
                   mf::ops::unary_kind::gelu_erf, wrong.ref());
        std::printf("\nno error?! this should not happen\n");
        return 1;
    } catch (const mf::shape_error& e) {
        std::printf("\ncaught mmfuse::shape_error as expected:\n  %s\n", e.what());
    }
    return 0;
} catch (const mf::error& e) {
    // Any other mmfuse error (e.g. a backend that cannot run an op) ends up here.
    std::fprintf(stderr, "quickstart failed: %s\n", e.what());
    return 1;
}
