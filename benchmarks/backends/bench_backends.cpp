// Google Benchmark (issue 7): the same library blocks on the Eigen and the oneDNN streams, f32,
// at 1 and 2 threads, forward and forward+backward, and the raw oneDNN matmul that bounds
// them. torch_backends.py times the same blocks in PyTorch; tools/bench/backends.sh runs both
// and writes docs/backends-benchmarks.md (tools/bench/backends_report.py).
//
//   BM_<block>/<eigen|onednn>/<shape>/t<threads>/fwd      inference forward (training = false)
//   BM_<block>/<eigen|onednn>/<shape>/t<threads>/fwdbwd   training step: forward, zero_grad,
//                                                         backward from a fixed Gaussian dy
//   BM_raw_matmul/onednn/M<m>xK<k>xN<n>/t<threads>/fwd    one cached dnnl::matmul, f32,
//                                                         C (M, N) = A (M, K) W^T, W (N, K)
//                                                         stored as nn.Linear does
//   BM_precision_matmul/<f32|bf16>/M<m>xK<k>xN<n>/t<threads>  ops::matmul of that shape on a
//                                                         oneDNN stream at that precision
//                                                         (registered only on CPUs with bf16
//                                                         kernels)
//
// Blocks (the library's own modules; E 512, 8 heads, MLP 2048, L 64 tokens):
//   linear           nn::linear(512, 2048) on (B, 64, 512)
//   self_attention   nn::self_attention(512, 8) on (B, 64, 512)
//   cross_attention  nn::multi_head_attention(512, 8): (B, 64, 512) queries attend to a
//                    (B, 196, 512) context (key = value = context; d context = dk + dv)
//   transformer      nn::transformer_encoder_layer(512, 8, 2048), post-LN, ReLU (PyTorch's
//                    TransformerEncoderLayer defaults, dropout 0) on (B, 64, 512)
//   early_fusion     fusion::early: two pooled 256-d features, concat (512), MLP
//                    512 -> 2048 -> ReLU -> 512 -> ReLU -> 10
//   late_fusion      fusion::late: per modality 256 -> 1024 -> ReLU -> 256 -> ReLU, concat
//                    (512), Linear(512, 10)
//   hybrid_fusion    fusion::hybrid as examples/fusion_hybrid.cpp at width 256: per modality
//                    Linear(256, 256) + ReLU on a (B, 64, 256) and b (B, 196, 256) tokens,
//                    a cross_exchange of two pre-LN cross_attention_blocks (8 heads, FF 1024),
//                    mean over tokens, concat (512), Linear(512, 10)
// Shapes: B1 and B4 (small), B32 (training); B128 for linear only.
//
// Counters (per iteration):
//   flops                 2 x multiply-adds of the step's matrix products (counted by a
//                         forwarding stream in the warm-up step; see fusion_bench.hpp)
//   FLOP/s                flops as a rate
//   native_ops, fallback_ops   ops the oneDNN stream ran as primitives / handed to its Eigen
//                         fallback (onednn_stream::stats(); 0 on the Eigen backend)
//   plans_built           plan-cache misses inside the timed loop (0 expected)
//   heap_allocs_per_iter  operator new calls inside the timed loop (oneDNN 2.6 allocates a
//                         small argument map in every primitive execution; Eigen's GEMM packing
//                         buffers use malloc and are not counted)
//   workspace_bytes       the step's growing_arena high-water mark
//   threads               omp_set_num_threads / Eigen::setNbThreads of the run
//
// MMFUSE_BENCH_THREADS="1,2" (default) lists the thread counts.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <oneapi/dnnl/dnnl.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fusion/fusion_bench.hpp"
#include "mmfuse/backend/onednn/device.hpp"
#include "mmfuse/compose/modalities.hpp"
#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/fusion/combine.hpp"
#include "mmfuse/fusion/exchange.hpp"
#include "mmfuse/fusion/templates.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/matmul.hpp"

// The heap-allocation counter: replaces the global operator new / delete.
#include "fusion/heap_counter_new.hpp"

namespace {

using namespace mmfuse_bench;
namespace compose = mmfuse::compose;
namespace onednn = mmfuse::backend::onednn;
using mmfuse::dyn;
using linear = nn::linear<dyn, dyn, T>;
using relu = nn::relu<T>;

// ---- sizes --------------------------------------------------------------------------------
constexpr index_t width = 512, heads = 8, mlp = 2048, tokens = 64, context_tokens = 196;
constexpr index_t fusion_width = 256, fusion_mlp = 1024, classes = 10;

/// Batch sizes: small (1, 4) and training (32; 128 for linear only).
const std::vector<index_t> small_and_training{1, 4, 32};
const std::vector<index_t> with_large{1, 4, 32, 128};

/// Thread counts from MMFUSE_BENCH_THREADS ("1,2"), default {1, 2}.
std::vector<int> thread_counts() {
    std::vector<int> counts;
    if (const char* env = std::getenv("MMFUSE_BENCH_THREADS")) {
        std::stringstream in(env);
        std::string item;
        while (std::getline(in, item, ','))
            if (const long n = std::strtol(item.c_str(), nullptr, 10); n > 0)
                counts.push_back(int(n));
    }
    if (counts.empty()) counts = {1, 2};
    return counts;
}

/// Sets the thread count of oneDNN (OpenMP) and of Eigen's GEMMs.
void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

/// Fixed-seed Gaussian tensor.
tensor<T> gaussian(const extents& e, std::uint64_t seed) {
    tensor<T> t(e);
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> normal;
    for (index_t i = 0; i < t.numel(); ++i)
        t.data()[i] = normal(gen);
    return t;
}

// ---- the blocks ---------------------------------------------------------------------------

/// Cross attention as an arity-2 module: query (B, Lq, E) attends to context (B, Lk, E),
/// key = value = context (`nn.MultiheadAttention(q, ctx, ctx)`); backward returns
/// {dquery, dkey + dvalue} (the context is used twice, as autograd accumulates it).
class cross_attention_op {
public:
    using value_type = T;
    static constexpr std::size_t arity = 2;

    cross_attention_op(index_t e, index_t h) : attn_(e, h) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("attn", attn_);
    }
    void reset_parameters(mmfuse::philox_generator& g) { attn_.reset_parameters(g); }

    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, 2>& xs) {
        return attn_.forward(cx, xs[0], xs[1], xs[1]);
    }
    fusion::views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const nn::attention_grads<T> g = attn_.backward(cx, dy);
        const tensor_ref<T> dcontext = cx.allocate(g.dkey.extents());
        ops::combine<T>(cx.op(path_), dcontext, {g.dkey, g.dvalue}, {1.0, 1.0});
        return {g.dquery, dcontext};
    }

private:
    nn::multi_head_attention<dyn, dyn, T> attn_;
    std::string path_;
};

template <class L>
using two_modalities = compose::modalities<compose::named<"a", L>, compose::named<"b", L>>;
template <class L>
two_modalities<L> both(const L& l) {
    return two_modalities<L>(compose::named<"a", L>(l), compose::named<"b", L>(l));
}

using early_mlp = compose::seq<linear, relu, linear, relu, linear>;
using early_net = fusion::early<two_modalities<fusion::identity<T>>, fusion::concat<2, T>, early_mlp>;
early_net make_early() {
    return early_net(both(fusion::identity<T>{}), {},
                     early_mlp(linear(2 * fusion_width, mlp), {}, linear(mlp, width), {},
                               linear(width, classes)));
}

using late_encoder = compose::seq<linear, relu, linear, relu>;
using late_net = fusion::late<two_modalities<late_encoder>, fusion::concat<2, T>, linear>;
late_net make_late() {
    return late_net(both(late_encoder(linear(fusion_width, fusion_mlp), {},
                                      linear(fusion_mlp, fusion_width), {})),
                    {}, linear(2 * fusion_width, classes));
}

using hybrid_encoder = compose::seq<linear, relu>;
using xblock = nn::cross_attention_block<dyn, dyn, dyn, T>;  // pre-LN
using hybrid_net =
    fusion::hybrid<two_modalities<hybrid_encoder>,
                   fusion::stages<fusion::cross_exchange<xblock, xblock>,
                                  two_modalities<fusion::mean_tokens<T>>>,
                   fusion::concat<2, T>, linear>;
hybrid_net make_hybrid() {
    const xblock block(fusion_width, heads, fusion_mlp);
    using interaction = fusion::stages<fusion::cross_exchange<xblock, xblock>,
                                       two_modalities<fusion::mean_tokens<T>>>;
    return hybrid_net(both(hybrid_encoder(linear(fusion_width, fusion_width), {})),
                      interaction(fusion::cross_exchange<xblock, xblock>(block, block),
                                  both(fusion::mean_tokens<T>{})),
                      {}, linear(2 * fusion_width, classes));
}

// ---- one benchmark ------------------------------------------------------------------------

/// One prepared block: the model, its inputs, the output gradient, the arena, the counted
/// FLOPs. N inputs; a single-input `nn::layer` takes xs[0].
struct prepared_base {
    virtual ~prepared_base() = default;
};
template <class Net, std::size_t N>
struct prepared_block final : prepared_base {
    prepared_block(Net net, const std::vector<extents>& in) : model(std::move(net), 17) {
        for (std::size_t i = 0; i < N; ++i) {
            inputs.push_back(gaussian(in[i], 1000 + i));
            xs[i] = inputs[i].cref();
        }
    }
    tensor_ref<const T> forward(nn::step_context<T>& cx) {
        if constexpr (nn::layer<Net>)
            return model.net().forward(cx, xs[0]);
        else
            return model.net().forward(cx, xs);
    }
    const void* backward(nn::step_context<T>& cx) {
        model.zero_grad();
        if constexpr (nn::layer<Net>)
            return model.net().backward(cx, dy.cref()).data();
        else
            return model.net().backward(cx, dy.cref())[0].data();
    }
    /// forward, and with `train` zero_grad + backward from dy.
    void step(nn::step_context<T>& cx, bool train) {
        const tensor_ref<const T> y = forward(cx);
        benchmark::DoNotOptimize(y.data());
        if (train) benchmark::DoNotOptimize(backward(cx));
    }

    nn::model<Net> model;
    std::vector<tensor<T>> inputs;
    fusion::views<T, N> xs{};
    tensor<T> dy;
    mmfuse::growing_arena ws;
    double flops = 0.0;
};

/// One-slot cache: the repetitions of a benchmark (run back to back) reuse its warmed-up
/// model and arena.
std::pair<std::string, std::unique_ptr<prepared_base>>& cache_slot() {
    static std::pair<std::string, std::unique_ptr<prepared_base>> slot;
    return slot;
}

/// Builds the block, runs one step through `counting_stream` (FLOPs, dy's shape, the plans
/// of the oneDNN stream and the arena size) and one more step directly on `s`.
template <class Net, std::size_t N, class Factory>
prepared_block<Net, N>& prepare(const std::string& key, Factory& factory,
                                const std::vector<extents>& in, mmfuse::backend::stream& s,
                                bool train) {
    auto& [slot_key, slot] = cache_slot();
    if (slot_key == key && slot) return static_cast<prepared_block<Net, N>&>(*slot);
    slot.reset();
    slot_key.clear();
    auto p = std::make_unique<prepared_block<Net, N>>(factory(), in);
    counting_stream counter(s);
    {
        nn::step_context<T> cx{&counter, &p->ws, train};
        const tensor_ref<const T> y = p->forward(cx);
        if (train) {
            p->dy = gaussian(y.extents(), 7);
            p->backward(cx);
        }
    }
    p->flops = counter.flops();
    p->ws.reset();
    nn::step_context<T> cx{&s, &p->ws, train};
    p->step(cx, train);
    p->ws.reset();
    prepared_block<Net, N>& ref = *p;
    slot = std::move(p);
    slot_key = key;
    return ref;
}

/// The oneDNN stream behind `s`, or nullptr (Eigen).
onednn::onednn_stream* as_onednn(mmfuse::backend::stream& s) {
    return dynamic_cast<onednn::onednn_stream*>(&s);
}

/// Forwards every op to `inner` and remembers the name of the last one (to say which op
/// failed when a step throws).
class tracing_stream final : public mmfuse::backend::stream {
public:
    explicit tracing_stream(mmfuse::backend::stream& inner) : inner_(&inner) {}
    mmfuse::backend::device& device() noexcept override { return inner_->device(); }
    void synchronize() override { inner_->synchronize(); }
    void execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                 std::span<const mmfuse::any_tensor_ref> out) override {
        last_ = ops::op_name(op);
        inner_->execute(op, in, out);
    }
    std::string_view last() const noexcept { return last_; }

private:
    mmfuse::backend::stream* inner_;
    std::string_view last_ = "(none)";
};

/// Forwards every op to the oneDNN stream `inner` and counts, by op name, the ops it handed
/// to its fallback (one untimed step after timing: which ops a block still runs on Eigen).
class fallback_tracer final : public mmfuse::backend::stream {
public:
    explicit fallback_tracer(onednn::onednn_stream& inner) : inner_(&inner) {}
    mmfuse::backend::device& device() noexcept override { return inner_->device(); }
    void synchronize() override { inner_->synchronize(); }
    void execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                 std::span<const mmfuse::any_tensor_ref> out) override {
        const std::uint64_t before = inner_->stats().fallback_ops;
        inner_->execute(op, in, out);
        if (inner_->stats().fallback_ops != before) ++counts_[std::string(ops::op_name(op))];
    }
    /// "op xN, op xM" (empty when nothing fell back).
    std::string summary() const {
        std::string s;
        for (const auto& [name, n] : counts_)
            s += (s.empty() ? "" : ", ") + name + " x" + std::to_string(n);
        return s;
    }

private:
    onednn::onednn_stream* inner_;
    std::map<std::string, int> counts_;
};

/// `what` of a failed step, with the op it failed in: the step is re-run on a fresh model
/// through `tracing_stream`.
template <class Net, std::size_t N, class Factory>
std::string explain_failure(const std::exception& e, Factory& factory,
                            const std::vector<extents>& in, mmfuse::backend::stream& s, bool train) {
    std::string what = e.what();
    try {
        prepared_block<Net, N> p(factory(), in);
        tracing_stream tracer(s);
        nn::step_context<T> cx{&tracer, &p.ws, train};
        try {
            const tensor_ref<const T> y = p.forward(cx);
            if (train) {
                p.dy = gaussian(y.extents(), 7);
                p.backward(cx);
            }
        } catch (const std::exception&) {
            what += " [in op '" + std::string(tracer.last()) + "']";
        }
    } catch (const std::exception&) {
    }
    return what;
}

template <class Net, std::size_t N, class Factory>
void bm_block(benchmark::State& state, Factory factory, std::vector<extents> in,
              std::string backend, int threads, bool train, std::string key) {
    try {
        set_threads(threads);
        mmfuse::backend::stream& s = mmfuse::backend::registry::global().get(backend).default_stream();
        prepared_block<Net, N>& p = prepare<Net, N>(key, factory, in, s, train);
        nn::step_context<T> cx{&s, &p.ws, train};
        onednn::onednn_stream* dn = as_onednn(s);
        if (dn) dn->reset_stats();
        heap().calls = 0;
        heap().counting = true;
        for (auto _ : state) {
            p.ws.reset();
            p.step(cx, train);
            benchmark::ClobberMemory();
        }
        heap().counting = false;
        const double iters = double(std::max<benchmark::IterationCount>(state.iterations(), 1));
        state.counters["flops"] = p.flops;
        state.counters["FLOP/s"] =
            benchmark::Counter(p.flops, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["native_ops"] = dn ? double(dn->stats().native_ops) / iters : 0.0;
        state.counters["fallback_ops"] = dn ? double(dn->stats().fallback_ops) / iters : 0.0;
        state.counters["plans_built"] = dn ? double(dn->stats().plans_built) : 0.0;
        state.counters["heap_allocs_per_iter"] = double(heap().calls.load()) / iters;
        state.counters["workspace_bytes"] = double(p.ws.high_water_bytes());
        state.counters["params"] = double(p.model.parameter_count());
        state.counters["threads"] = threads;
        if (dn) {
            fallback_tracer tracer(*dn);
            nn::step_context<T> tcx{&tracer, &p.ws, train};
            p.ws.reset();
            p.step(tcx, train);
            const std::string fell = tracer.summary();
            if (!fell.empty()) state.SetLabel("fallback: " + fell);
        }
    } catch (const std::exception& e) {
        heap().counting = false;
        cache_slot().second.reset();
        cache_slot().first.clear();
        mmfuse::backend::stream& s = mmfuse::backend::registry::global().get(backend).default_stream();
        state.SkipWithError(explain_failure<Net, N>(e, factory, in, s, train).c_str());
    }
}

/// Registers BM_<block>/<backend>/B<batch>/t<threads>/{fwd,fwdbwd} for every batch, backend
/// and pass at `threads`. `factory()` returns the module, `inputs(batch)` the input extents.
template <std::size_t N, class Factory>
void add_block(const std::string& block, Factory factory,
               std::function<std::vector<extents>(index_t)> inputs,
               const std::vector<index_t>& batches, int threads) {
    using Net = decltype(factory());
    for (const index_t b : batches)
        for (const char* backend : {"eigen", "onednn"})
            for (const bool train : {false, true}) {
                std::string name = "BM_" + block + "/" + backend + "/B" + std::to_string(b) +
                                   "/t" + std::to_string(threads) + (train ? "/fwdbwd" : "/fwd");
                benchmark::RegisterBenchmark(name.c_str(), bm_block<Net, N, Factory>, factory,
                                             inputs(b), std::string(backend), threads, train,
                                             name)
                    ->Unit(benchmark::kMillisecond)
                    ->MeasureProcessCPUTime()
                    ->UseRealTime();
            }
}

// ---- raw oneDNN matmul ----------------------------------------------------------------------

/// C (M, N) = A (M, K) W^T with W (N, K) row-major (nn.Linear's weight), f32, one cached
/// primitive with its memories bound once; the implementation name is the label.
void bm_raw_matmul(benchmark::State& state, index_t m, index_t k, index_t n, int threads) {
    try {
        set_threads(threads);
        using dnnl::memory;
        const dnnl::engine& eng = onednn::onednn_device::instance().engine();
        dnnl::stream strm(eng);
        const memory::desc a({m, k}, memory::data_type::f32, memory::format_tag::ab);
        const memory::desc w({k, n}, memory::data_type::f32, memory::format_tag::ba);
        const memory::desc c({m, n}, memory::data_type::f32, memory::format_tag::ab);
        const dnnl::matmul::primitive_desc pd =
            onednn::compat::matmul_pd(eng, a, w, c, dnnl::primitive_attr{});
        const dnnl::matmul prim(pd);
        tensor<T> ta = gaussian(extents{m, k}, 1), tw = gaussian(extents{n, k}, 2);
        tensor<T> tc(extents{m, n});
        memory ma(a, eng, ta.data()), mw(w, eng, tw.data()), mc(c, eng, tc.data());
        const std::unordered_map<int, memory> args{
            {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, mc}};
        prim.execute(strm, args);  // warm-up
        strm.wait();
        for (auto _ : state) {
            prim.execute(strm, args);
            strm.wait();
            benchmark::DoNotOptimize(tc.data());
        }
        const double flops = 2.0 * double(m) * double(k) * double(n);
        state.counters["flops"] = flops;
        state.counters["FLOP/s"] =
            benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["threads"] = threads;
        state.SetLabel(pd.impl_info_str());
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void add_raw_matmul(index_t m, index_t k, index_t n, int threads) {
    const std::string name = "BM_raw_matmul/onednn/M" + std::to_string(m) + "xK" +
                             std::to_string(k) + "xN" + std::to_string(n) + "/t" +
                             std::to_string(threads) + "/fwd";
    benchmark::RegisterBenchmark(name.c_str(), bm_raw_matmul, m, k, n, threads)
        ->Unit(benchmark::kMillisecond)
        ->MeasureProcessCPUTime()
        ->UseRealTime();
}

// ---- f32 vs bf16 precision (CPUs with bf16 kernels only) -----------------------------------

/// ops::matmul on a fresh oneDNN stream at `math` precision, nn.Linear's layout (C = A W^T):
/// under bf16 each step includes rounding A and W into bf16 copies (the plan's reorders).
void bm_precision_matmul(benchmark::State& state, index_t m, index_t k, index_t n, int threads,
                         onednn::precision math) {
    try {
        set_threads(threads);
        const auto s = mmfuse::backend::registry::global().get("onednn").create_stream();
        auto& os = static_cast<onednn::onednn_stream&>(*s);
        os.set_precision(math);
        const tensor<T> a = gaussian(extents{m, k}, 1), w = gaussian(extents{n, k}, 2);
        tensor<T> c(extents{m, n});
        const auto step = [&] {
            ops::matmul<T>(os, a.cref(), w.cref(), c.ref(), {.transpose_b = true});
            os.synchronize();
        };
        step();  // builds the plan
        for (auto _ : state) {
            step();
            benchmark::DoNotOptimize(c.data());
        }
        const double flops = 2.0 * double(m) * double(k) * double(n);
        state.counters["FLOP/s"] =
            benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["fallback_ops"] = double(os.stats().fallback_ops);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

void add_precision_matmul(index_t m, index_t k, index_t n, int threads) {
    for (const auto math : {onednn::precision::f32, onednn::precision::bf16}) {
        const std::string name = std::string("BM_precision_matmul/") +
                                 (math == onednn::precision::f32 ? "f32" : "bf16") + "/M" +
                                 std::to_string(m) + "xK" + std::to_string(k) + "xN" +
                                 std::to_string(n) + "/t" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), bm_precision_matmul, m, k, n, threads, math)
            ->Unit(benchmark::kMillisecond)
            ->MeasureProcessCPUTime()
            ->UseRealTime();
    }
}

void register_all() {
    for (const int t : thread_counts()) {
        // The ceilings: the blocks' big GEMM (rows x 512 x 2048) at every row count they
        // use, and a large square product.
        for (const index_t rows : {index_t(1), index_t(4), index_t(32), tokens, 4 * tokens,
                                   32 * tokens, 128 * tokens})
            add_raw_matmul(rows, width, mlp, t);
        add_raw_matmul(1024, 1024, 1024, t);
        if (onednn::cpu_has_bf16())  // elsewhere bf16 precision computes f32: nothing to compare
            for (const index_t rows : {tokens, 32 * tokens})
                add_precision_matmul(rows, width, mlp, t);

        const auto seq = [](index_t b) { return std::vector<extents>{extents{b, tokens, width}}; };
        add_block<1>("linear", [] { return linear(width, mlp); }, seq, with_large, t);
        add_block<1>("self_attention", [] { return nn::self_attention<dyn, dyn, T>(width, heads); },
                     seq, small_and_training, t);
        add_block<2>("cross_attention", [] { return cross_attention_op(width, heads); },
                     [](index_t b) {
                         return std::vector<extents>{extents{b, tokens, width},
                                                     extents{b, context_tokens, width}};
                     },
                     small_and_training, t);
        add_block<1>("transformer",
                     [] { return nn::transformer_encoder_layer<dyn, dyn, dyn, T>(width, heads, mlp); },
                     seq, small_and_training, t);
        const auto pooled = [](index_t b) {
            return std::vector<extents>{extents{b, fusion_width}, extents{b, fusion_width}};
        };
        add_block<2>("early_fusion", make_early, pooled, small_and_training, t);
        add_block<2>("late_fusion", make_late, pooled, small_and_training, t);
        add_block<2>("hybrid_fusion", make_hybrid,
                     [](index_t b) {
                         return std::vector<extents>{extents{b, tokens, fusion_width},
                                                     extents{b, context_tokens, fusion_width}};
                     },
                     small_and_training, t);
    }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    register_all();
    const dnnl_version_t* v = dnnl_version();
    benchmark::AddCustomContext("onednn_version", std::to_string(v->major) + "." +
                                                      std::to_string(v->minor) + "." +
                                                      std::to_string(v->patch));
    benchmark::AddCustomContext("onednn_cpu_runtime",
                                v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
#ifdef _OPENMP
    benchmark::AddCustomContext("openmp", "yes");
#else
    benchmark::AddCustomContext("openmp", "no (Eigen runs single-threaded)");
#endif
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
