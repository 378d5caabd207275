#pragma once
/// \file
/// Helpers of the fusion microbenchmarks (bench_fusion.cpp, docs/fusion-benchmarks.md):
///
///   - the two settings and their shared token inputs;
///   - small adaptor modules that let every fusion method run on the same three token
///     sequences (text, image, audio): `pooled<F>` (a fuser that mean-pools each stream
///     before F), `token_concat<M>` (single-stream early fusion: tokens of every modality
///     side by side on the sequence axis), `one_vs_rest<F, Cat, K>` (a bimodal method on
///     modality K against the other two, joined), `then<I, F>` (an interaction then a fuser,
///     as one fuser) and `cross_ring<M>` (an interaction of `nn::cross_attention_block`s:
///     stream m attends to stream m+1);
///   - `counting_stream`, a stream that forwards every op to the real one and adds up the
///     FLOPs of the matrix products and fused attentions it sees;
///   - `add_method(name, factory)`, which registers BM_fusion/<name>/<setting>/{fwd,fwdbwd}
///     for a factory `(const setting&) -> Net` (Net a differentiable arity-3 fuser module).
///
/// These adaptors are benchmark scaffolding, not library API: they handle no missing
/// modalities (a non-empty presence mask throws `value_error`).

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/fusion/exchange.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse_bench {

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor;
using mmfuse::tensor_ref;
namespace nn = mmfuse::nn;
namespace ops = mmfuse::ops;
namespace fusion = mmfuse::fusion;
using T = float;

/// Modalities, in model order: text, image, audio.
inline constexpr std::size_t modalities = 3;
using inputs = fusion::views<T, modalities>;

/// One benchmark setting: batch, token counts per modality, model width, attention heads,
/// feed-forward width of the attention blocks and output classes of the heads.
struct setting {
    const char* name;
    index_t batch;
    std::array<index_t, modalities> tokens;  ///< text, image, audio
    index_t width;
    index_t heads;
    index_t ff;
    index_t classes;

    std::string label() const {
        std::string s = "B";
        s += std::to_string(batch);
        s += " T";
        s += std::to_string(tokens[0]);
        s += " I";
        s += std::to_string(tokens[1]);
        s += " A";
        s += std::to_string(tokens[2]);
        s += " D";
        s += std::to_string(width);
        return s;
    }
};

/// The common setting and a larger one (twice the batch, twice the width).
inline const std::array<setting, 2> settings{{
    {"small", 32, {64, 196, 100}, 256, 8, 1024, 10},
    {"large", 64, {64, 196, 100}, 512, 8, 2048, 10},
}};

// --------------------------------------------------------------------------------------
// Adaptor modules
// --------------------------------------------------------------------------------------

inline void require_all_present(std::string_view path, const fusion::presence& p) {
    if (!fusion::all_present(p))
        throw mmfuse::value_error(path, "benchmark adaptors take no missing modalities");
}

/// Mean over the token axis, (B, L, D) -> (B, D) (the library's `fusion::mean_tokens`).
using mean_pool = fusion::mean_tokens<T>;

/// A representation-level fuser F run on token streams: each (B, L_m, D_m) input is
/// mean-pooled to (B, D_m) first. Child "fusion" is F (so its parameters keep F's names).
template <class F>
class pooled {
    static_assert(F::arity <= 4);

public:
    using value_type = T;
    static constexpr std::size_t arity = F::arity;

    pooled() = default;
    explicit pooled(F f) : fusion_(std::move(f)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        static constexpr std::array<const char*, 4> names{"pool0", "pool1", "pool2", "pool3"};
        v.child("fusion", fusion_);
        for (std::size_t m = 0; m < arity; ++m)
            v.child(names[m], pools_[m]);
    }
    void reset_parameters(mmfuse::philox_generator& g) { fusion_.reset_parameters(g); }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, arity>& xs,
                                fusion::presence p = {}) {
        fusion::views<T, arity> ps{};
        for (std::size_t m = 0; m < arity; ++m)
            ps[m] = pools_[m].forward(cx, xs[m]);
        return fusion_.forward(cx, ps, p);
    }
    fusion::views<T, arity> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        fusion::views<T, arity> d = fusion_.backward(cx, dy);
        for (std::size_t m = 0; m < arity; ++m)
            d[m] = pools_[m].backward(cx, d[m]);
        return d;
    }

private:
    F fusion_;
    std::array<mean_pool, arity> pools_{};
    std::string path_;
};

/// Single-stream early fusion: (B, L_m, D) token sequences -> (B, sum L_m, D), the tokens of
/// every modality side by side on the sequence axis (VisualBERT / ViLT style input; the
/// feature-axis `fusion::concat` needs aligned sequences, which these are not). No
/// parameters; backward returns views of dy.
template <std::size_t M>
class token_concat {
public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(mmfuse::philox_generator&) {}

    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, M>& xs,
                                fusion::presence p = {}) {
        require_all_present(path_, p);
        index_t total = 0;
        for (std::size_t m = 0; m < M; ++m) {
            lengths_[m] = xs[m].extent(1);
            total += lengths_[m];
        }
        const tensor_ref<T> y = cx.allocate(xs[0].extents().with_axis(1, total));
        ops::concat<T>(cx.op(path_), 1, std::span<const tensor_ref<const T>>(xs), y);
        return y;
    }
    fusion::views<T, M> backward(nn::step_context<T>&, tensor_ref<const T> dy) {
        fusion::views<T, M> dxs{};
        index_t at = 0;
        for (std::size_t m = 0; m < M; ++m) {
            dxs[m] = dy.narrow(1, at, lengths_[m]);
            at += lengths_[m];
        }
        return dxs;
    }

private:
    std::array<index_t, M> lengths_{};
    std::string path_;
};

/// A bimodal fuser F (arity 2) on the three modalities: modality K against the other two
/// joined by the arity-2 fuser Cat (`fusion::concat<2>` on features, `token_concat<2>` on
/// tokens): F({x_K, Cat(rest)}) with KeyFirst, F({Cat(rest), x_K}) without. Children
/// "join" (Cat) and "fusion" (F).
template <class F, class Cat, std::size_t K, bool KeyFirst = true>
class one_vs_rest {
    static_assert(F::arity == 2 && Cat::arity == 2 && K < 3);
    static constexpr std::size_t r0 = K == 0 ? 1 : 0, r1 = K == 2 ? 1 : 2;
    static constexpr std::size_t key = KeyFirst ? 0 : 1;

public:
    using value_type = T;
    static constexpr std::size_t arity = 3;

    one_vs_rest() = default;
    explicit one_vs_rest(F f, Cat cat = {}) : fusion_(std::move(f)), join_(std::move(cat)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("join", join_);
        v.child("fusion", fusion_);
    }
    void reset_parameters(mmfuse::philox_generator& g) {
        join_.reset_parameters(g);
        fusion_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, 3>& xs,
                                fusion::presence p = {}) {
        require_all_present(path_, p);
        const tensor_ref<const T> rest = join_.forward(cx, {xs[r0], xs[r1]});
        fusion::views<T, 2> pair{};
        pair[key] = xs[K];
        pair[1 - key] = rest;
        return fusion_.forward(cx, pair);
    }
    fusion::views<T, 3> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const fusion::views<T, 2> d = fusion_.backward(cx, dy);
        const fusion::views<T, 2> dr = join_.backward(cx, d[1 - key]);
        fusion::views<T, 3> dxs{};
        dxs[K] = d[key];
        dxs[r0] = dr[0];
        dxs[r1] = dr[1];
        return dxs;
    }

private:
    F fusion_;
    Cat join_;
    std::string path_;
};

/// An interaction I followed by a fuser F, as one fuser: y = F(I(xs)). Children
/// "interaction", "fusion".
template <class I, class F>
class then {
    static_assert(I::arity == F::arity);

public:
    using value_type = T;
    static constexpr std::size_t arity = I::arity;

    then() = default;
    explicit then(I i, F f = {}) : interaction_(std::move(i)), fusion_(std::move(f)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("interaction", interaction_);
        v.child("fusion", fusion_);
    }
    void reset_parameters(mmfuse::philox_generator& g) {
        interaction_.reset_parameters(g);
        fusion_.reset_parameters(g);
    }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, arity>& xs,
                                fusion::presence p = {}) {
        return fusion_.forward(cx, interaction_.forward(cx, xs, p), p);
    }
    fusion::views<T, arity> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        return interaction_.backward(cx, fusion_.backward(cx, dy));
    }

private:
    I interaction_;
    F fusion_;
    std::string path_;
};

/// One hybrid interaction stage of `nn::cross_attention_block`s (pre-LN): stream m attends
/// to stream (m + 1) mod M, y_m = block_m(x_m, context = x_{m+1}); every stream keeps its
/// length. Children "block0", "block1", ...
template <std::size_t M>
class cross_ring {
    static_assert(M >= 2 && M <= 4);

public:
    using value_type = T;
    static constexpr std::size_t arity = M;
    using block = nn::cross_attention_block<mmfuse::dyn, mmfuse::dyn, mmfuse::dyn, T>;

    cross_ring(index_t width, index_t heads, index_t ff)
        : blocks_(make_blocks(width, heads, ff, std::make_index_sequence<M>{})) {}

    template <class V>
    void visit(V& v) {
        static constexpr std::array<const char*, 4> names{"block0", "block1", "block2",
                                                          "block3"};
        v.path(path_);
        for (std::size_t m = 0; m < M; ++m)
            v.child(names[m], blocks_[m]);
    }
    void reset_parameters(mmfuse::philox_generator& g) {
        for (auto& b : blocks_)
            b.reset_parameters(g);
    }

    fusion::views<T, M> forward(nn::step_context<T>& cx, const fusion::views<T, M>& xs,
                                fusion::presence p = {}) {
        require_all_present(path_, p);
        fusion::views<T, M> ys{};
        for (std::size_t m = 0; m < M; ++m)
            ys[m] = blocks_[m].forward(cx, xs[m], xs[(m + 1) % M]);
        return ys;
    }
    /// dx_m = d block_m / d x_m + d block_{m-1} / d context.
    fusion::views<T, M> backward(nn::step_context<T>& cx, const fusion::views<T, M>& dys) {
        std::array<nn::cross_attention_grads<T>, M> g{};
        for (std::size_t m = 0; m < M; ++m)
            g[m] = blocks_[m].backward(cx, dys[m]);
        fusion::views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<T> d = cx.allocate(g[m].dx.extents());
            ops::combine<T>(cx.op(path_), d, {g[m].dx, g[(m + M - 1) % M].dcontext}, {1.0, 1.0});
            dxs[m] = d;
        }
        return dxs;
    }

private:
    template <std::size_t... I>
    static std::array<block, M> make_blocks(index_t width, index_t heads, index_t ff,
                                            std::index_sequence<I...>) {
        return {((void)I, block(width, heads, ff))...};
    }

    std::array<block, M> blocks_;
    std::string path_;
};

// --------------------------------------------------------------------------------------
// FLOP counting
// --------------------------------------------------------------------------------------

/// Forwards every op to `inner` and adds up 2 x the multiply-adds of the matrix products
/// (`matmul`) and of the fused attentions (`attention`, `attention_backward`: QK^T and PV,
/// and in backward the recomputed QK^T plus dV, dP, dQ, dK). Point-wise ops, norms, softmax
/// and reductions are not counted (they are O(size) next to the products' O(size x width)).
class counting_stream final : public mmfuse::backend::stream {
public:
    explicit counting_stream(mmfuse::backend::stream& inner) : inner_(&inner) {}

    mmfuse::backend::device& device() noexcept override { return inner_->device(); }
    void synchronize() override { inner_->synchronize(); }
    void execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                 std::span<const mmfuse::any_tensor_ref> out) override {
        if (const auto* mm = std::get_if<ops::matmul_desc>(&op)) {
            const extents& a = in[0].extents();
            const extents& c = out[0].extents();
            const double m = double(c[c.rank() - 2]), n = double(c[c.rank() - 1]);
            const double k = double(mm->transpose_a ? a[a.rank() - 2] : a[a.rank() - 1]);
            flops_ += 2.0 * (double(c.numel()) / (m * n)) * m * n * k;
        } else if (std::get_if<ops::attention_desc>(&op) != nullptr) {
            flops_ += attention_flops(in, 2.0, 2.0);
        } else if (std::get_if<ops::attention_backward_desc>(&op) != nullptr) {
            flops_ += attention_flops(in, 6.0, 4.0);
        }
        inner_->execute(op, in, out);
    }
    double flops() const noexcept { return flops_; }

private:
    /// q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv): B H Lq Lk (cd D + cv Dv).
    static double attention_flops(std::span<const mmfuse::any_tensor_ref> in, double cd,
                                  double cv) {
        const extents& q = in[0].extents();
        const extents& v = in[2].extents();
        const double rows = double(q.numel()) / double(q[3]);  // B H Lq
        const double lk = double(v[2]);
        return rows * lk * (cd * double(q[3]) + cv * double(v[3]));
    }

    mmfuse::backend::stream* inner_;
    double flops_ = 0.0;
};

// --------------------------------------------------------------------------------------
// Heap-allocation counter (operator new is replaced in bench_fusion.cpp)
// --------------------------------------------------------------------------------------

/// operator new calls while `counting` is set (bench_fusion.cpp's replacement increments it).
struct heap_counter {
    std::atomic<bool> counting{false};
    std::atomic<std::int64_t> calls{0};
};
heap_counter& heap();

// --------------------------------------------------------------------------------------
// Registration
// --------------------------------------------------------------------------------------

/// Gaussian (B, L, D) token sequences of setting `s`, fixed seed per modality.
inline std::vector<tensor<T>> make_tokens(const setting& s) {
    std::vector<tensor<T>> xs;
    for (std::size_t m = 0; m < modalities; ++m) {
        tensor<T> t(extents{s.batch, s.tokens[m], s.width});
        std::mt19937_64 gen(1000 + m);
        std::normal_distribution<float> normal;
        for (index_t i = 0; i < t.numel(); ++i)
            t.data()[i] = normal(gen);
        xs.push_back(std::move(t));
    }
    return xs;
}

/// One training or inference step of `model` on `xs`: forward, and with `backward` the
/// parameter gradients zeroed, then backward from `dy`.
template <class Net>
void run_step(nn::model<Net>& model, nn::step_context<T>& cx, const inputs& xs, bool backward,
              tensor_ref<const T> dy) {
    const tensor_ref<const T> y = model.net().forward(cx, xs);
    benchmark::DoNotOptimize(y.data());
    if (backward) {
        model.zero_grad();
        const inputs dxs = model.net().backward(cx, dy);
        benchmark::DoNotOptimize(dxs[0].data());
    }
}

/// What a benchmark prepares before timing: the model, its inputs, the output gradient, the
/// warmed-up arena and the counted FLOPs.
struct prepared_base {
    virtual ~prepared_base() = default;
};
template <class Net>
struct prepared final : prepared_base {
    prepared(Net net, const setting& s) : model(std::move(net), 17), tokens(make_tokens(s)) {
        xs = {tokens[0].cref(), tokens[1].cref(), tokens[2].cref()};
    }
    nn::model<Net> model;
    std::vector<tensor<T>> tokens;
    inputs xs{};
    tensor<T> dy;
    mmfuse::growing_arena ws;
    double flops = 0.0;
};

/// One-slot cache: the repetitions of a benchmark (run back to back) reuse its prepared
/// state, so the warm-up step runs once per benchmark, not once per repetition (a step of
/// the token-level models takes seconds on a small CPU). A new benchmark replaces it.
inline std::pair<std::string, std::unique_ptr<prepared_base>>& cache_slot() {
    static std::pair<std::string, std::unique_ptr<prepared_base>> slot;
    return slot;
}

/// Builds the model from `factory(s)` and runs one step through `counting_stream`: the FLOP
/// count, the output shape (for dy: a fixed Gaussian tensor) and the warm-up that sizes the
/// arena (the reset after it leaves one block of the step's high-water size).
template <class Net, class Factory>
prepared<Net>& prepare(const std::string& key, Factory& factory, const setting& s,
                       bool backward) {
    auto& [slot_key, slot] = cache_slot();
    if (slot_key == key && slot) return static_cast<prepared<Net>&>(*slot);
    slot.reset();
    slot_key.clear();
    auto p = std::make_unique<prepared<Net>>(factory(s), s);
    counting_stream counter(mmfuse::backend::default_stream());
    nn::step_context<T> cx{&counter, &p->ws, backward};
    const tensor_ref<const T> y = p->model.net().forward(cx, p->xs);
    if (backward) {
        p->dy = tensor<T>(y.extents());
        std::mt19937_64 gen(7);
        std::normal_distribution<float> normal;
        for (index_t i = 0; i < p->dy.numel(); ++i)
            p->dy.data()[i] = normal(gen);
        p->model.zero_grad();
        p->model.net().backward(cx, p->dy.cref());
    }
    p->ws.reset();
    p->flops = counter.flops();
    prepared<Net>& ref = *p;
    slot = std::move(p);
    slot_key = key;
    return ref;
}

/// The benchmark body: prepare (or reuse) the model, then time steps with the arena reset
/// before each one.
template <class Factory>
void bm_fusion(benchmark::State& state, Factory factory, setting s, bool backward,
               std::string key) {
    try {
        using Net = decltype(factory(s));
        prepared<Net>& p = prepare<Net>(key, factory, s, backward);
        nn::step_context<T> cx{&mmfuse::backend::default_stream(), &p.ws, backward};
        heap().calls = 0;
        heap().counting = true;
        for (auto _ : state) {
            p.ws.reset();
            run_step(p.model, cx, p.xs, backward, p.dy.cref());
            benchmark::ClobberMemory();
        }
        heap().counting = false;

        state.counters["params"] = double(p.model.parameter_count());
        state.counters["flops"] = p.flops;
        state.counters["FLOP/s"] =
            benchmark::Counter(p.flops, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["workspace_bytes"] = double(p.ws.high_water_bytes());
        state.counters["arena_blocks"] = double(p.ws.block_count());
        state.counters["heap_allocs_per_iter"] =
            double(heap().calls.load()) / double(std::max<std::int64_t>(state.iterations(), 1));
        state.counters["eigen_threads"] = Eigen::nbThreads();
        state.SetLabel(s.label());
    } catch (const std::exception& e) {
        heap().counting = false;
        cache_slot().second.reset();
        cache_slot().first.clear();
        state.SkipWithError(e.what());
    }
}

/// Registers BM_fusion/<method>/<setting>/fwd and .../fwdbwd for every setting.
/// `factory(const setting&)` returns the model (a differentiable fuser of arity 3 whose
/// inputs are the text, image and audio token sequences).
template <class Factory>
void add_method(const std::string& method, Factory factory) {
    for (const setting& s : settings)
        for (const bool backward : {false, true}) {
            std::string name = "BM_fusion/";
            name += method;
            name += '/';
            name += s.name;
            name += backward ? "/fwdbwd" : "/fwd";
            benchmark::RegisterBenchmark(name.c_str(), bm_fusion<Factory>, factory, s, backward,
                                         name)
                ->Unit(benchmark::kMillisecond)
                ->MeasureProcessCPUTime()
                ->UseRealTime();
        }
}

}  // namespace mmfuse_bench
