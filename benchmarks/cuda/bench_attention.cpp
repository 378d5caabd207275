// Fused attention on the CUDA backend (ops::attention_desc / attention_backward_desc):
// forward and forward+backward, bf16, B = 8, H = 16, D in {64, 128}, L = Lq = Lk in
// {1024, 2048, 4096}, non-causal and causal. Timed with CUDA events around each iteration
// (UseManualTime); counter TFLOP/s with forward flops 4 B H Lq Lk D (halved when causal) and
// backward 2.5 times the forward (FlashAttention-2's convention). Names:
//   BM_attention/cuda/<fwd|fwd_bwd>/B8_H16_L<L>_D<D>[_causal]
// benchmarks/cuda/sdpa_compare.py runs this binary next to PyTorch's SDPA and prints both.
// Without a GPU the program says so and exits 0.
#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "mmfuse/backend/cuda/device.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace {

using namespace mmfuse;
namespace mc = mmfuse::backend::cuda;

constexpr index_t batch = 8, heads = 16, max_len = 4096, max_dim = 128;

mc::cuda_stream& gpu_stream() {
    return static_cast<mc::cuda_stream&>(mc::cuda_device::instance(0).default_stream());
}

/// Device buffers for the largest shape, filled once with uniform [-1, 1) bf16 values (a
/// fixed-seed LCG; never zeros, which can time faster than real data).
struct buffers {
    mc::device_tensor<bf16> q, k, v, o, dout, dq, dk, dv;
    mc::device_tensor<float> lse;

    static mc::device_tensor<bf16> random(std::uint64_t seed) {
        const index_t n = batch * heads * max_len * max_dim;
        tensor<bf16> host({n});
        std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
        for (index_t i = 0; i < n; ++i) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            host[i] = bf16(float(double(state >> 11) * 0x1p-53 * 2.0 - 1.0));
        }
        mc::device_tensor<bf16> d(host.extents());
        mc::to_device<bf16>(host.cref(), d);
        return d;
    }
    static mc::device_tensor<bf16> empty() {
        return mc::device_tensor<bf16>({batch * heads * max_len * max_dim});
    }
    static buffers& get() {
        static buffers b{random(1), random(2), random(3), empty(), random(4),
                         empty(),   empty(),   empty(),   mc::device_tensor<float>({batch * heads * max_len})};
        return b;
    }
};

template <class T>
tensor_ref<T> view(const mc::device_tensor<std::remove_const_t<T>>& t, index_t len, index_t dim) {
    return tensor_ref<T>(t.data(), {batch, heads, len, dim}, memory_space::device);
}

/// One benchmark: forward (and backward when `with_backward`) at length `len`, head size
/// `dim`.
void bm_attention(benchmark::State& state, index_t len, index_t dim, bool causal, bool with_backward) {
    buffers& b = buffers::get();
    mc::cuda_stream& s = gpu_stream();
    ops::attention_desc desc;
    desc.scale = 1.0 / std::sqrt(double(dim));
    desc.causal = causal;
    const std::array<any_tensor_ref, 3> fwd_in = {view<const bf16>(b.q, len, dim), view<const bf16>(b.k, len, dim),
                                                  view<const bf16>(b.v, len, dim)};
    const tensor_ref<float> lse(b.lse.data(), {batch, heads, len}, memory_space::device);
    const std::array<any_tensor_ref, 2> fwd_out = {view<bf16>(b.o, len, dim), lse};
    const std::array<any_tensor_ref, 6> bwd_in = {
        view<const bf16>(b.q, len, dim), view<const bf16>(b.k, len, dim), view<const bf16>(b.v, len, dim),
        view<const bf16>(b.o, len, dim), view<const bf16>(b.dout, len, dim), lse};
    const std::array<any_tensor_ref, 3> bwd_out = {view<bf16>(b.dq, len, dim), view<bf16>(b.dk, len, dim),
                                                   view<bf16>(b.dv, len, dim)};
    const ops::op_desc forward{desc};
    const ops::op_desc backward{ops::attention_backward_desc{desc}};
    const auto step = [&] {
        s.execute(forward, fwd_in, fwd_out);
        if (with_backward) s.execute(backward, bwd_in, bwd_out);
    };
    for (int i = 0; i < 3; ++i)  // warm-up: module load, scratch growth
        step();
    s.synchronize();

    cudaEvent_t start, stop;
    mc::check(cudaEventCreate(&start), "cudaEventCreate");
    mc::check(cudaEventCreate(&stop), "cudaEventCreate");
    for (auto _ : state) {
        mc::check(cudaEventRecord(start, s.native()), "cudaEventRecord");
        step();
        mc::check(cudaEventRecord(stop, s.native()), "cudaEventRecord");
        mc::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0.f;
        mc::check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        state.SetIterationTime(double(ms) * 1e-3);
    }
    mc::check(cudaEventDestroy(start), "cudaEventDestroy");
    mc::check(cudaEventDestroy(stop), "cudaEventDestroy");

    double flops = 4.0 * double(batch * heads) * double(len) * double(len) * double(dim);
    if (causal) flops *= 0.5;
    if (with_backward) flops *= 3.5;  // forward + 2.5x forward
    state.counters["TFLOP/s"] =
        benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
    for (const bool with_backward : {false, true})
        for (const index_t dim : {64, 128})
            for (const bool causal : {false, true})
                for (const index_t len : {1024, 2048, 4096}) {
                    std::string name = "BM_attention/cuda/";
                    name += with_backward ? "fwd_bwd" : "fwd";
                    name += "/B" + std::to_string(batch);
                    name += "_H" + std::to_string(heads);
                    name += "_L" + std::to_string(len);
                    name += "_D" + std::to_string(dim);
                    if (causal) name += "_causal";
                    benchmark::RegisterBenchmark(name.c_str(), bm_attention, len, dim, causal, with_backward)
                        ->UseManualTime()
                        ->Unit(benchmark::kMillisecond);
                }
}

}  // namespace

int main(int argc, char** argv) {
    if (mc::device_count() == 0) {
        std::puts("bench_cuda_attention: no CUDA GPU on this machine; nothing to measure");
        return 0;
    }
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
