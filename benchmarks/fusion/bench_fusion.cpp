// Google Benchmark: every fusion method of issue 4 on the Eigen backend, f32, on the same
// inputs — three token sequences per sample, text (B, 64, D), image (B, 196, D) and audio
// (B, 100, D) — at two settings (fusion_bench.hpp): "small" (B 32, D 256, the common
// setting) and "large" (B 64, D 512).
//
//   BM_fusion/<method>/<setting>/fwd      inference forward (cx.training = false)
//   BM_fusion/<method>/<setting>/fwdbwd   training step: forward, zero_grad, backward from a
//                                         fixed Gaussian output gradient
//
// Representation-level methods (concat, mean, tensor / low-rank fusion, gates, bilinear
// pooling, ...) get per-modality encoders mean-pool -> Linear(D, D) -> ReLU (pooling is part
// of the timed step; it costs O(B L D)); token-level methods (early single-stream encoder,
// cross-attention hybrids, MulT, MBT, co-attention, Flamingo, Q-Former) take the tokens.
// Every model ends in a (B, classes) output. Counters (per iteration, see fusion_bench.hpp):
//   params               scalar parameters of the model (nn::model::parameter_count)
//   flops                2 x multiply-adds of the step's matrix products and fused attentions,
//                        counted by a forwarding stream in one step before timing
//   FLOP/s               flops as a rate
//   workspace_bytes      the step's growing_arena high-water mark (alignment padding included)
//   arena_blocks         heap blocks the arena holds after timing (1 = steady state)
//   heap_allocs_per_iter operator new calls inside the timed loop per iteration (0 expected;
//                        Eigen's GEMM packing buffers use malloc and are not counted)
//   eigen_threads        Eigen::nbThreads() (MMFUSE_BENCH_THREADS=N sets it)
//
// Adding a method: one add_method(name, factory) call in main(), the factory returning the
// model for a setting. tools/bench/fusion.sh builds, runs and writes docs/fusion-benchmarks.md.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <cstdlib>
#include <new>

#include "fusion_bench.hpp"
#include "mmfuse/compose/modalities.hpp"
#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/fusion/bilinear.hpp"
#include "mmfuse/fusion/bottleneck.hpp"
#include "mmfuse/fusion/co_attention.hpp"
#include "mmfuse/fusion/combine.hpp"
#include "mmfuse/fusion/film.hpp"
#include "mmfuse/fusion/flamingo.hpp"
#include "mmfuse/fusion/gated.hpp"
#include "mmfuse/fusion/multiplicative.hpp"
#include "mmfuse/fusion/mult.hpp"
#include "mmfuse/fusion/product_of_experts.hpp"
#include "mmfuse/fusion/qformer.hpp"
#include "mmfuse/fusion/templates.hpp"
#include "mmfuse/fusion/tensor_fusion.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/transformer.hpp"

// The heap-allocation counter: replaces the global operator new / delete.
#include "heap_counter_new.hpp"

namespace {

using namespace mmfuse_bench;
namespace compose = mmfuse::compose;
using mmfuse::dyn;
using linear = nn::linear<dyn, dyn, T>;
using relu = nn::relu<T>;

/// The same layer for each modality, named "text", "image", "audio".
template <class L>
using per_modality = compose::modalities<compose::named<"text", L>, compose::named<"image", L>,
                                         compose::named<"audio", L>>;
template <class L>
per_modality<L> three(const L& l) {
    return per_modality<L>(compose::named<"text", L>(l), compose::named<"image", L>(l),
                           compose::named<"audio", L>(l));
}

/// Representation-level encoder: mean over tokens, Linear(D, width), ReLU.
using pool_encoder = compose::seq<mean_pool, linear, relu>;
pool_encoder pool_mlp(const setting& s, index_t width) {
    return pool_encoder({}, linear(s.width, width), {});
}
/// Token-level stems: the tokens as they are.
using token_stems = per_modality<fusion::identity<T>>;
/// A classifier head on a (B, in) vector.
linear head(const setting& s, index_t in) { return linear(in, s.classes); }

/// Width of the per-modality encoders of the methods whose size grows with a product of
/// the input widths (tensor fusion: prod (d_m + 1); the 3-modal multiplicative interaction:
/// d^3 x out weights), as TFN's own small unimodal subnetworks.
constexpr index_t narrow = 32;

/// Late fusion: late(encoders `enc` per modality, F, head = Linear(fused, C)).
template <class Enc, class F>
auto late_with(const setting& s, const Enc& enc, F f, index_t fused) {
    return fusion::late<per_modality<Enc>, F, linear>(three(enc), std::move(f), head(s, fused));
}
/// Late fusion of pooled representations (encoders mean-pool -> Linear(D, w) -> ReLU).
template <class F>
auto pooled_late(const setting& s, F f, index_t fused, index_t w = 0) {
    return late_with(s, pool_mlp(s, w > 0 ? w : s.width), std::move(f), fused);
}
/// A bimodal representation-level fuser F on image (B, D) vs [text; audio] (B, 2D).
template <class F>
using image_vs_rest = one_vs_rest<F, fusion::concat<2, T>, 1>;

/// Token-level interaction I, then mean-pool + concat of the streams (`fused` wide), then
/// Linear(fused, C).
template <class I>
auto token_hybrid(const setting& s, I interaction, index_t fused) {
    using F = pooled<fusion::concat<3, T>>;
    return fusion::hybrid<token_stems, I, F, linear>({}, std::move(interaction), F{},
                                                     head(s, fused));
}
/// Early fusion: the tokens of the three modalities concatenated on the token axis, then
/// `encoder` (which ends in a (B, C) output).
template <class Enc>
auto token_early(Enc encoder) {
    return fusion::early<token_stems, token_concat<3>, Enc>({}, {}, std::move(encoder));
}

using encoder_layer = nn::transformer_encoder_layer<dyn, dyn, dyn, T>;

// Every method: a name and a factory from the setting to the model (fusion_bench.hpp's
// add_method registers .../small/fwd, .../small/fwdbwd, .../large/...). Token-level models
// use two attention layers each (the early encoder, the hybrid, MulT, MBT, co-attention,
// the Perceiver Resampler, the Q-Former).
void register_methods() {
    // ---- representation level: pooled features of the three modalities ----------------
    // MultiBench "simple late fusion": concat of pooled representations, linear head.
    add_method("late_concat", [](const setting& s) {
        return pooled_late(s, fusion::concat<3, T>{}, 3 * s.width);
    });
    // Decision-level late fusion: per-modality classifiers, logits averaged (MMF late_fusion).
    add_method("late_mean", [](const setting& s) {
        using enc = compose::seq<mean_pool, linear, relu, linear>;
        return fusion::late<per_modality<enc>, fusion::mean<3, T>>(
            three(enc({}, linear(s.width, s.width), {}, linear(s.width, s.classes))), {});
    });
    // TFN on 32-wide encoders: (33^3)-wide outer product, linear head.
    add_method("tensor_fusion", [](const setting& s) {
        using F = fusion::tensor_fusion<3, T>;
        return pooled_late(s, F({narrow, narrow, narrow}),
                           F::output_width({narrow, narrow, narrow}), narrow);
    });
    // LMF, rank 4 (the paper's range), output D.
    add_method("low_rank_fusion", [](const setting& s) {
        return pooled_late(s, fusion::low_rank_fusion<3, T>({s.width, s.width, s.width}, s.width, 4),
                           s.width);
    });
    // 3-modal multiplicative interaction on 32-wide encoders, output 64.
    add_method("multiplicative3", [](const setting& s) {
        return pooled_late(s, fusion::multiplicative_interaction3<T>(narrow, narrow, narrow, 64),
                           64, narrow);
    });
    add_method("gmu", [](const setting& s) {
        return pooled_late(
            s, fusion::gated_multimodal_unit<3, T>({s.width, s.width, s.width}, s.width), s.width);
    });
    // FiLM: the image features modulated by [text; audio].
    add_method("film", [](const setting& s) {
        return pooled_late(s, image_vs_rest<fusion::film<T>>(fusion::film<T>(s.width, 2 * s.width)),
                           s.width);
    });
    // Product of experts: encoders give [mu | logvar] (2D, no activation), output [mu | logvar].
    add_method("product_of_experts", [](const setting& s) {
        using enc = compose::seq<mean_pool, linear>;
        return late_with(s, enc({}, linear(s.width, 2 * s.width)),
                         fusion::product_of_experts<3, T>(), 2 * s.width);
    });
    // Bilinear pooling, image vs [text; audio], output D; MMF defaults for MFB / MLB
    // (mm 1200, k 2 / 1), the paper's mm 510, rank 10 for MUTAN (MMF's 1600 x 15 would
    // give it 77 M parameters).
    add_method("mfb", [](const setting& s) {
        return pooled_late(s, image_vs_rest<fusion::mfb<T>>(fusion::mfb<T>(s.width, 2 * s.width, s.width)),
                           s.width);
    });
    add_method("mlb", [](const setting& s) {
        return pooled_late(s, image_vs_rest<fusion::mlb<T>>(fusion::mlb<T>(s.width, 2 * s.width, s.width)),
                           s.width);
    });
    add_method("mutan", [](const setting& s) {
        using F = fusion::mutan<T>;
        return pooled_late(
            s, image_vs_rest<F>(F(s.width, 2 * s.width, s.width, {.mm_dim = 510, .rank = 10})),
            s.width);
    });

    // ---- token level ----------------------------------------------------------------------
    // Single stream: all 360 tokens, two transformer encoder layers, mean-pool, linear head.
    add_method("early_concat", [](const setting& s) {
        using enc = compose::seq<encoder_layer, encoder_layer, mean_pool, linear>;
        return token_early(enc(encoder_layer(s.width, s.heads, s.ff),
                               encoder_layer(s.width, s.heads, s.ff), {}, head(s, s.width)));
    });
    // Hybrid: two stages of cross-attention blocks (stream m attends to stream m + 1).
    add_method("hybrid_xattn", [](const setting& s) {
        using I = fusion::stages<cross_ring<3>, cross_ring<3>>;
        return token_hybrid(s,
                            I(cross_ring<3>(s.width, s.heads, s.ff),
                              cross_ring<3>(s.width, s.heads, s.ff)),
                            3 * s.width);
    });
    // MulT: 6 crossmodal transformers of 2 layers (causal mask on, as the reference); each
    // target stream is 2D wide.
    add_method("mult", [](const setting& s) {
        return token_hybrid(s, fusion::mult<3, T>(s.width, s.heads, {.layers = 2}), 6 * s.width);
    });
    // MBT: 2 layers per modality, bottleneck fusion from layer 1, 4 bottleneck tokens.
    add_method("mbt", [](const setting& s) {
        return token_hybrid(s, fusion::bottleneck_fusion<3, T>(s.width, s.heads, s.ff, 2, 1, 4),
                            3 * s.width);
    });
    // ViLBERT co-attention, 2 layers: [image; audio] tokens (visual stream) and text.
    add_method("co_attention", [](const setting& s) {
        using L = fusion::co_attention_layer<T>;
        using I = then<fusion::stages<L, L>, pooled<fusion::concat<2, T>>>;
        using F = one_vs_rest<I, token_concat<2>, 0, false>;
        const fusion::co_attention_options o{.visual_dim = s.width, .text_dim = s.width,
                                             .bi_dim = s.width, .heads = s.heads,
                                             .visual_ff = s.ff, .text_ff = s.ff};
        return fusion::late<token_stems, F, linear>({}, F(I(fusion::stages<L, L>(L(o), L(o)))),
                                                    head(s, 2 * s.width));
    });
    // Flamingo: a 2-layer Perceiver Resampler (64 latents) per media modality, the text
    // attends to [image latents; audio latents] through one GATED XATTN-DENSE block.
    add_method("flamingo", [](const setting& s) {
        using R = fusion::perceiver_resampler<T>;
        using stems = compose::modalities<compose::named<"text", fusion::identity<T>>,
                                          compose::named<"image", R>, compose::named<"audio", R>>;
        using F = one_vs_rest<fusion::gated_cross_attention<T>, token_concat<2>, 0>;
        using H = compose::seq<mean_pool, linear>;
        return fusion::late<stems, F, H>(
            stems({}, compose::named<"image", R>(R(s.width, 2)),
                  compose::named<"audio", R>(R(s.width, 2))),
            F(fusion::gated_cross_attention<T>(s.width, s.width)), H({}, head(s, s.width)));
    });
    // BLIP-2 Q-Former: 32 queries, 2 layers, both cross-attending to all 360 tokens.
    add_method("qformer", [](const setting& s) {
        using enc = compose::seq<fusion::qformer<T>, mean_pool, linear>;
        const fusion::qformer_options o{.hidden = s.width, .heads = s.heads, .ff = s.ff,
                                        .image_dim = s.width, .num_queries = 32,
                                        .num_layers = 2, .cross_attention_freq = 1};
        return token_early(enc(fusion::qformer<T>(o), {}, head(s, s.width)));
    });
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    if (const char* env = std::getenv("MMFUSE_BENCH_THREADS"))
        if (const long n = std::strtol(env, nullptr, 10); n > 0) Eigen::setNbThreads(int(n));
    register_methods();
#ifdef _OPENMP
    benchmark::AddCustomContext("eigen_openmp", "yes");
#else
    benchmark::AddCustomContext("eigen_openmp", "no (Eigen runs single-threaded)");
#endif
    benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
    for (const setting& s : settings)
        benchmark::AddCustomContext(std::string("setting_") + s.name, s.label());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
