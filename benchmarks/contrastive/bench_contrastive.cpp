// Google Benchmark: the contrastive heads of issue 5 on the Eigen backend, f32, in steady
// state (the step's workspace is reset, nothing is allocated by mmfuse per iteration; Eigen's
// GEMM may still allocate its own packing buffers):
//
//   BM_clip_loss/eigen/B<B>_D<D>      clip_loss forward + backward (training step of the head)
//   BM_siglip_loss/eigen/B<B>_D<D>    siglip_loss forward + backward
//   BM_clip_gemms/eigen/B<B>_D<D>     the head's three GEMMs alone: S = I T^T, dI = dS T,
//                                     dT = dS^T I (what the heads cost besides the B x B part)
//   BM_logit_loss/eigen/softmax/B<B>  the B x B part of CLIP alone: two `ops::logit_loss`
//                                     passes (rows, then columns accumulating into dS^T)
//   BM_logit_loss/eigen/sigmoid/B<B>  the B x B part of SigLIP alone: one pass
//   BM_l2_normalize/eigen/B<B>_D<D>   `nn::l2_normalize` forward + backward of one (B, D) batch
//
// Every name ends in /threads:N, the number of threads Eigen may use (Eigen::setNbThreads;
// the binary is built with OpenMP so that it takes effect): the GEMMs, and the Eigen
// `logit_loss` kernel, which splits large problems by rows over Eigen::nbThreads(). The
// thread counts are 1 and 2 unless MMFUSE_BENCH_THREADS lists others ("1,2,4"). The other
// mmfuse ops (l2_normalize, add, copy) are single-threaded. Counters:
//   FLOP/s   6 B^2 D per iteration (the three B x B x D GEMMs) as a rate, on the benchmarks
//            that contain the GEMMs
//   bytes_per_second  the bytes of every operand each op of the iteration reads and writes
//            once (a lower bound on memory traffic), as a rate
//   eigen_threads     Eigen::nbThreads() while the benchmark ran (what Eigen really used)
// benchmarks/contrastive/torch_contrastive.py times the same computations in PyTorch and
// prints the comparison.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/l2_normalize.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/matmul.hpp"

namespace {

using mmfuse::index_t;
using mmfuse::tensor;
using mmfuse::tensor_ref;
namespace nn = mmfuse::nn;
namespace ops = mmfuse::ops;
namespace contrastive = mmfuse::contrastive;

/// One benchmarked batch: B pairs of D-dimensional embeddings.
struct shape_case {
    index_t batch, dim;
    std::string name() const {
        std::string n = "B";  // built with += (GCC 12 -Wrestrict false positive on "lit" + s)
        n += std::to_string(batch);
        n += "_D";
        n += std::to_string(dim);
        return n;
    }
};

/// 1024 x 512 is the required setting; 256 x 512 a small batch; 4096 x 256 a large
/// batch where the B x B part weighs most relative to the GEMMs (B^2 vs B^2 D).
const std::vector<shape_case> shapes{{256, 512}, {1024, 512}, {4096, 256}};

constexpr std::size_t f32 = sizeof(float);

/// (B, D) embeddings with unit rows: Gaussian directions from a fixed seed.
tensor<float> unit_rows(index_t rows, index_t cols, std::uint64_t seed) {
    tensor<float> t(mmfuse::extents{rows, cols});
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> normal;
    std::vector<double> row(static_cast<std::size_t>(cols));
    for (index_t r = 0; r < rows; ++r) {
        double norm = 0.0;
        for (double& v : row) {
            v = normal(gen);
            norm += v * v;
        }
        norm = std::sqrt(norm);
        for (index_t c = 0; c < cols; ++c)
            t.data()[r * cols + c] = float(row[std::size_t(c)] / norm);
    }
    return t;
}

/// Sets Eigen's thread count from the benchmark's argument and reports what Eigen uses.
void use_threads(benchmark::State& state) { Eigen::setNbThreads(int(state.range(0))); }
void report(benchmark::State& state, double flops, double bytes) {
    if (flops > 0.0)
        state.counters["FLOP/s"] =
            benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
    state.counters["eigen_threads"] = Eigen::nbThreads();
}

/// Runs `step(cx)` once to size the workspace, then times it with the workspace reset
/// before every iteration (the steady state of a training loop).
template <class Step>
void time_steps(benchmark::State& state, Step&& step) {
    mmfuse::growing_arena ws;
    nn::step_context<float> cx{&mmfuse::backend::default_stream(), &ws, true};
    step(cx);
    for (auto _ : state) {
        ws.reset();
        step(cx);
        benchmark::ClobberMemory();
    }
}

/// Bytes touched by the three GEMMs: S = I T^T reads 2 B D, writes B^2; dI = dS T and
/// dT = dS^T I each read B^2 + B D and write B D.
double gemm_bytes(const shape_case& s) {
    const double b = double(s.batch), d = double(s.dim);
    return f32 * (2 * b * d + b * b + 2 * (b * b + 2 * b * d));
}

/// Bytes touched by `passes` logit_loss passes over a B x B matrix: each reads S and writes
/// dS (the second also reads dS to accumulate) and writes 3 B scalars.
double loss_bytes(const shape_case& s, int passes) {
    const double b = double(s.batch);
    return f32 * (passes * (2 * b * b + 3 * b) + (passes - 1) * b * b);
}

/// The training step of a contrastive head (`clip_loss` or `siglip_loss`).
template <class Head>
void bm_head(benchmark::State& state, shape_case s, int passes) {
    try {
        use_threads(state);
        nn::model<Head> model(Head{}, 1);
        const tensor<float> image = unit_rows(s.batch, s.dim, 11);
        const tensor<float> text = unit_rows(s.batch, s.dim, 12);
        double loss = 0.0;
        time_steps(state, [&](nn::step_context<float>& cx) {
            model.zero_grad();
            loss = model.net().forward(cx, image.ref(), text.ref());
            const contrastive::pair_gradients<float> g = model.net().backward(cx);
            benchmark::DoNotOptimize(g.da.data());
            benchmark::DoNotOptimize(g.db.data());
        });
        benchmark::DoNotOptimize(loss);
        const double b = double(s.batch), d = double(s.dim);
        report(state, 6.0 * b * b * d, gemm_bytes(s) + loss_bytes(s, passes));
        state.counters["loss"] = loss;
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// The three GEMMs of a head's step alone, with the same operands and layouts as
/// `contrastive::pairwise_logits` (dS stands in as a copy of S: the values do not matter).
void bm_gemms(benchmark::State& state, shape_case s) {
    try {
        use_threads(state);
        const tensor<float> image = unit_rows(s.batch, s.dim, 11);
        const tensor<float> text = unit_rows(s.batch, s.dim, 12);
        time_steps(state, [&](nn::step_context<float>& cx) {
            const ops::op_context op = cx.op("bench");
            const tensor_ref<float> sim = cx.allocate({s.batch, s.batch});
            ops::matmul(op, image.ref(), text.ref(), sim, {.transpose_b = true});
            const tensor_ref<float> di = cx.allocate({s.batch, s.dim});
            const tensor_ref<float> dt = cx.allocate({s.batch, s.dim});
            ops::matmul(op, tensor_ref<const float>(sim), text.ref(), di);
            ops::matmul(op, tensor_ref<const float>(sim), image.ref(), dt, {.transpose_a = true});
            benchmark::DoNotOptimize(di.data());
            benchmark::DoNotOptimize(dt.data());
        });
        const double b = double(s.batch), d = double(s.dim);
        report(state, 6.0 * b * b * d, gemm_bytes(s));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// The B x B part alone, called exactly as `clip_loss` / `siglip_loss` call it (their
/// default scale and bias) on S of two random unit batches.
void bm_logit_loss(benchmark::State& state, shape_case s, ops::logit_loss_kind kind) {
    try {
        use_threads(state);
        const bool softmax = kind == ops::logit_loss_kind::softmax_cross_entropy;
        const index_t b = s.batch;
        const tensor<float> image = unit_rows(b, s.dim, 11);
        const tensor<float> text = unit_rows(b, s.dim, 12);
        tensor<float> sim(mmfuse::extents{b, b});
        ops::matmul(mmfuse::backend::default_stream(), image.ref(), text.ref(), sim.ref(),
                    {.transpose_b = true});
        ops::logit_loss_desc d;
        d.kind = kind;
        d.scale = std::exp(softmax ? contrastive::clip_init_log_scale
                                   : contrastive::siglip_init_log_scale);
        d.bias = softmax ? 0.0 : contrastive::siglip_init_bias;
        d.grad_scale = (softmax ? 0.5 : 1.0) / double(b);
        time_steps(state, [&](nn::step_context<float>& cx) {
            const ops::op_context op = cx.op("bench");
            const tensor_ref<float> ds = cx.allocate({b, b});
            const tensor_ref<float> loss = cx.allocate({b});
            const tensor_ref<float> stats = cx.allocate({b, 2});
            d.accumulate = false;
            ops::logit_loss<float>(op, d, sim.ref(), {}, loss, ds, stats);
            if (softmax) {
                d.accumulate = true;
                ops::logit_loss<float>(op, d, sim.ref().transpose(0, 1), {}, loss,
                                       ds.transpose(0, 1), stats);
            }
            benchmark::DoNotOptimize(ds.data());
            benchmark::DoNotOptimize(stats.data());
        });
        report(state, 0.0, loss_bytes(s, softmax ? 2 : 1));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// `nn::l2_normalize` forward + backward of one (B, D) batch (dy: a second random batch).
void bm_l2_normalize(benchmark::State& state, shape_case s) {
    try {
        use_threads(state);
        const tensor<float> x = unit_rows(s.batch, s.dim, 13);
        const tensor<float> dy = unit_rows(s.batch, s.dim, 14);
        nn::l2_normalize<> layer;
        time_steps(state, [&](nn::step_context<float>& cx) {
            const tensor_ref<const float> y = layer.forward(cx, x.ref());
            const tensor_ref<const float> dx = layer.backward(cx, dy.ref());
            benchmark::DoNotOptimize(y.data());
            benchmark::DoNotOptimize(dx.data());
        });
        // forward reads x, writes y and the norms; backward reads y, dy, norms, writes dx
        const double b = double(s.batch), d = double(s.dim);
        report(state, 0.0, f32 * (5 * b * d + 2 * b));
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// Thread counts from MMFUSE_BENCH_THREADS ("1,2,4"), default {1, 2}.
std::vector<std::int64_t> thread_counts() {
    std::vector<std::int64_t> counts;
    if (const char* env = std::getenv("MMFUSE_BENCH_THREADS")) {
        std::stringstream in(env);
        std::string item;
        while (std::getline(in, item, ','))
            if (const long n = std::strtol(item.c_str(), nullptr, 10); n > 0) counts.push_back(n);
    }
    if (counts.empty()) counts = {1, 2};
    return counts;
}

/// Registers `name` with one run per thread count.
template <class F, class... Args>
void add(const std::string& name, F f, Args... args) {
    benchmark::internal::Benchmark* b = benchmark::RegisterBenchmark(name.c_str(), f, args...);
    b->ArgName("threads")->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime()->UseRealTime();
    for (const std::int64_t n : thread_counts())
        b->Arg(n);
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    for (const shape_case& s : shapes) {
        const auto name = [&](const char* op, const std::string& shape) {
            std::string n = op;
            n += "/eigen/";
            n += shape;
            return n;
        };
        const auto per_kind = [&](const char* kind) {
            std::string n = kind;
            n += "/B";
            n += std::to_string(s.batch);
            return n;
        };
        add(name("BM_clip_loss", s.name()), bm_head<contrastive::clip_loss<float>>, s, 2);
        add(name("BM_siglip_loss", s.name()), bm_head<contrastive::siglip_loss<float>>, s, 1);
        add(name("BM_clip_gemms", s.name()), bm_gemms, s);
        add(name("BM_logit_loss", per_kind("softmax")), bm_logit_loss, s,
            ops::logit_loss_kind::softmax_cross_entropy);
        add(name("BM_logit_loss", per_kind("sigmoid")), bm_logit_loss, s,
            ops::logit_loss_kind::sigmoid_binary);
        add(name("BM_l2_normalize", s.name()), bm_l2_normalize, s);
    }
#ifdef _OPENMP
    benchmark::AddCustomContext("eigen_openmp", "yes");
#else
    benchmark::AddCustomContext("eigen_openmp", "no (Eigen runs single-threaded)");
#endif
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
