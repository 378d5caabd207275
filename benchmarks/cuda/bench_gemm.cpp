// Google Benchmark: mmfuse's CUDA matmul (ops front-end -> cuda_stream -> gemm_engine ->
// cuBLASLt) against cuBLASLt called directly with its heuristic's best algorithm and
// nothing in between — "cuBLAS's own" number — on shapes of the fusion models' linear
// layers, in bf16, f16 and f32 with TF32:
//
//   BM_matmul/cublaslt/<dtype>/<shape>   raw cuBLASLt
//   BM_matmul/cuda/<dtype>/<shape>       mmfuse; counter vs_cublaslt = its TFLOP/s over the
//                                        raw run's (registered just before it)
//
// Every shape is nn.Linear's y = x W^T (+ b): x (M, K), W (N, K), y (M, N), row-major, with
// M = batch * tokens. Time is GPU time from CUDA events around a burst of products
// (UseManualTime); each product reads the next of several buffer sets, together at least
// twice the L2 cache, so that no operand stays cached between products. TFLOP/s counts
// 2 M N K per product. The whole binary runs in well under a minute; without a GPU it says
// so and exits 0.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "mmfuse/backend/cuda/device.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/ops/matmul.hpp"

namespace {

namespace mc = mmfuse::backend::cuda;
using mmfuse::index_t;
using mmfuse::ops::matmul_desc;
using mmfuse::ops::matmul_epilogue;

/// One benchmarked problem: y (M, N) = x (M, K) W^T (+ bias, activation).
struct shape_case {
    const char* name;
    index_t m, n, k;
    matmul_epilogue epilogue;
};

constexpr std::array<shape_case, 3> shapes{{
    {"linear_8192x1024x1024", 8192, 1024, 1024, matmul_epilogue::none},  // 8 x 1024 tokens
    {"square_4096x4096x4096", 4096, 4096, 4096, matmul_epilogue::none},
    {"linear_gelu_8192x4096x1024", 8192, 4096, 1024, matmul_epilogue::bias_gelu_tanh},  // MLP up
}};

/// Products per timed burst (between two CUDA events).
constexpr int burst = 20;

template <class T>
const char* dtype_label() {
    if constexpr (std::is_same_v<T, float>)
        return "tf32";
    else if constexpr (std::is_same_v<T, mmfuse::bf16>)
        return "bf16";
    else
        return "f16";
}

template <class T>
cudaDataType_t cuda_type() {
    if constexpr (std::is_same_v<T, float>)
        return CUDA_R_32F;
    else if constexpr (std::is_same_v<T, mmfuse::bf16>)
        return CUDA_R_16BF;
    else
        return CUDA_R_16F;
}

/// Device buffers for `sets` independent problems of one shape, filled with values uniform
/// in [-1, 1) (a fixed pseudo-random sequence: the numbers do not matter, only that they are
/// not zeros, which would flatter the tensor cores' power draw).
template <class T>
struct workload {
    shape_case shape;
    int sets = 0;
    std::vector<mc::device_tensor<T>> x, w, y, bias;

    explicit workload(const shape_case& s) : shape(s) {
        const std::size_t set_bytes =
            std::size_t(s.m * s.k + s.n * s.k + s.m * s.n + s.n) * sizeof(T);
        int l2_bytes = 0;
        mc::check(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, 0),
                  "cudaDeviceGetAttribute(L2)");
        sets = int(std::clamp<std::size_t>((2 * std::size_t(l2_bytes) + set_bytes - 1) / set_bytes,
                                           2, 8));
        std::uint64_t state = 0x9E3779B97F4A7C15ull;
        for (int i = 0; i < sets; ++i) {
            x.push_back(filled({s.m, s.k}, state));
            w.push_back(filled({s.n, s.k}, state));
            y.push_back(filled({s.m, s.n}, state));
            bias.push_back(filled({s.n}, state));
        }
    }

    static mc::device_tensor<T> filled(const mmfuse::extents& e, std::uint64_t& state) {
        std::vector<T> host(std::size_t(e.numel()));
        for (T& v : host) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;  // LCG (Knuth)
            v = T(float(double(state >> 11) * 0x1.0p-52 - 1.0));
        }
        mc::device_tensor<T> d(e);
        mc::check(cudaMemcpy(d.data(), host.data(), d.bytes(), cudaMemcpyHostToDevice),
                  "cudaMemcpy");
        return d;
    }
};

/// The workload of the benchmark running now, shared by the raw and the mmfuse variant of
/// one shape and dtype (registered one after the other), freed when the next one starts.
template <class T>
workload<T>& workload_for(const shape_case& s) {
    static std::unique_ptr<workload<T>> current;
    if (!current || current->shape.name != s.name) {
        current.reset();  // free first: two large workloads need not fit at once
        current = std::make_unique<workload<T>>(s);
        mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    }
    return *current;
}

/// TFLOP/s of the raw cuBLASLt run per "dtype/shape", for the mmfuse run's ratio.
std::map<std::string, double>& raw_tflops() {
    static std::map<std::string, double> m;
    return m;
}

/// Times bursts of `enqueue(i)` (i = 0, 1, ... across the whole run) on `stream` with CUDA
/// events, reports each burst's GPU time as the iteration time and sets the TFLOP/s
/// counter. Returns the TFLOP/s.
template <class F>
double time_bursts(benchmark::State& state, cudaStream_t stream, const shape_case& s, int sets,
                   F&& enqueue) {
    cudaEvent_t start = nullptr, stop = nullptr;
    mc::check(cudaEventCreate(&start), "cudaEventCreate");
    mc::check(cudaEventCreate(&stop), "cudaEventCreate");
    std::size_t i = 0;
    for (int r = 0; r < 2 * sets; ++r)  // warm-up: plans, scratch, clocks
        enqueue(i++);
    mc::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    double seconds = 0.0;
    std::int64_t products = 0;
    for (auto _ : state) {
        mc::check(cudaEventRecord(start, stream), "cudaEventRecord");
        for (int r = 0; r < burst; ++r)
            enqueue(i++);
        mc::check(cudaEventRecord(stop, stream), "cudaEventRecord");
        mc::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
        float ms = 0.0f;
        mc::check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
        state.SetIterationTime(double(ms) * 1e-3);
        seconds += double(ms) * 1e-3;
        products += burst;
    }
    (void)cudaEventDestroy(start);
    (void)cudaEventDestroy(stop);
    const double tflops = 2.0 * double(s.m) * double(s.n) * double(s.k) * double(products) /
                          seconds * 1e-12;
    state.counters["TFLOP/s"] = tflops;
    state.counters["buffer_sets"] = sets;
    return tflops;
}

/// mmfuse: the typed front-end for f32 (TF32 allowed on the stream), the stream directly for
/// bf16 and f16 (no host compute type, so no typed front-end; this is the call the
/// front-end makes after validating).
template <class T>
void bm_mmfuse(benchmark::State& state, shape_case s) {
    try {
        auto& stream = static_cast<mc::cuda_stream&>(mc::cuda_device::instance(0).default_stream());
        workload<T>& wl = workload_for<T>(s);
        stream.allow_tf32(std::is_same_v<T, float>);
        const matmul_desc d{.transpose_b = true, .epilogue = s.epilogue};
        const bool fused = s.epilogue != matmul_epilogue::none;
        const double tflops = time_bursts(state, stream.native(), s, wl.sets, [&](std::size_t i) {
            const std::size_t k = i % std::size_t(wl.sets);
            if constexpr (std::is_same_v<T, float>) {
                if (fused)
                    mmfuse::ops::matmul<float>(stream, wl.x[k].cref(), wl.w[k].cref(),
                                               wl.bias[k].cref(), wl.y[k].ref(), d);
                else
                    mmfuse::ops::matmul<float>(stream, wl.x[k].cref(), wl.w[k].cref(),
                                               wl.y[k].ref(), d);
            } else {
                const std::array<mmfuse::any_tensor_ref, 3> in{wl.x[k].cref(), wl.w[k].cref(),
                                                               wl.bias[k].cref()};
                const std::array<mmfuse::any_tensor_ref, 1> out{wl.y[k].ref()};
                stream.execute(d, std::span(in.data(), fused ? 3 : 2), out);
            }
        });
        stream.allow_tf32(false);
        const std::string key = std::string(dtype_label<T>()) + "/" + s.name;
        if (const auto it = raw_tflops().find(key); it != raw_tflops().end())
            state.counters["vs_cublaslt"] = tflops / it->second;
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
}

/// Raw cuBLASLt, set up once the way its documentation shows: y^T (N x M, ld N) =
/// W (op T of the K x N column-major W^T, ld K) * x^T (K x M, ld K), the epilogue's bias
/// along the rows of y^T, the heuristic's first algorithm, a 32 MiB workspace.
template <class T>
void bm_cublaslt(benchmark::State& state, shape_case s) {
    cublasLtHandle_t handle = nullptr;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    try {
        auto& stream = static_cast<mc::cuda_stream&>(mc::cuda_device::instance(0).default_stream());
        workload<T>& wl = workload_for<T>(s);
        const cudaDataType_t type = cuda_type<T>();
        const cublasComputeType_t compute =
            std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        mc::check(cublasLtCreate(&handle), "cublasLtCreate");
        mc::check(cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
        const std::int32_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
        mc::check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                                 sizeof(trans_a)),
                  "TRANSA");
        mc::check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                                 sizeof(trans_b)),
                  "TRANSB");
        const bool fused = s.epilogue != matmul_epilogue::none;
        if (fused) {
            const std::uint32_t epilogue =
                s.epilogue == matmul_epilogue::bias           ? CUBLASLT_EPILOGUE_BIAS
                : s.epilogue == matmul_epilogue::bias_relu    ? CUBLASLT_EPILOGUE_RELU_BIAS
                                                              : CUBLASLT_EPILOGUE_GELU_BIAS;
            const void* bias = wl.bias[0].data();
            mc::check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                     sizeof(epilogue)),
                      "EPILOGUE");
            mc::check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                     sizeof(bias)),
                      "BIAS_POINTER");
        }
        const auto u = [](index_t v) { return std::uint64_t(v); };
        mc::check(cublasLtMatrixLayoutCreate(&a, type, u(s.k), u(s.n), s.k), "layout A");
        mc::check(cublasLtMatrixLayoutCreate(&b, type, u(s.k), u(s.m), s.k), "layout B");
        mc::check(cublasLtMatrixLayoutCreate(&d, type, u(s.n), u(s.m), s.n), "layout D");
        const std::uint64_t workspace_bytes = std::uint64_t(32) << 20;
        mc::device_buffer workspace(workspace_bytes);
        mc::check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
        mc::check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &workspace_bytes, sizeof(workspace_bytes)),
                  "MAX_WORKSPACE_BYTES");
        cublasLtMatmulHeuristicResult_t best{};
        int found = 0;
        mc::check(cublasLtMatmulAlgoGetHeuristic(handle, op, a, b, d, d, pref, 1, &best, &found),
                  "cublasLtMatmulAlgoGetHeuristic");
        if (found == 0) throw mmfuse::backend_error("bench", "cuBLASLt found no algorithm");
        const float alpha = 1.0f, beta = 0.0f;
        const double tflops = time_bursts(state, stream.native(), s, wl.sets, [&](std::size_t i) {
            const std::size_t k = i % std::size_t(wl.sets);
            if (fused) {
                const void* bias = wl.bias[k].data();
                mc::check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                         &bias, sizeof(bias)),
                          "BIAS_POINTER");
            }
            mc::check(cublasLtMatmul(handle, op, &alpha, wl.w[k].data(), a, wl.x[k].data(), b,
                                     &beta, wl.y[k].data(), d, wl.y[k].data(), d, &best.algo,
                                     workspace.data(), workspace_bytes, stream.native()),
                      "cublasLtMatmul");
        });
        raw_tflops()[std::string(dtype_label<T>()) + "/" + s.name] = tflops;
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (op) (void)cublasLtMatmulDescDestroy(op);
    if (handle) (void)cublasLtDestroy(handle);
}

template <class T>
void register_dtype() {
    for (const shape_case& s : shapes) {
        const std::string tail = std::string(dtype_label<T>()) + "/" + s.name;
        for (const bool raw : {true, false}) {  // raw first: the mmfuse run reads its number
            const std::string name = std::string("BM_matmul/") + (raw ? "cublaslt/" : "cuda/") + tail;
            benchmark::RegisterBenchmark(name.c_str(), raw ? bm_cublaslt<T> : bm_mmfuse<T>, s)
                ->UseManualTime()
                ->Unit(benchmark::kMicrosecond)
                ->MinTime(0.25);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (mc::device_count() == 0) {
        std::puts("bench_cuda_gemm: no CUDA GPU on this machine; nothing to measure (run it on "
                  "a GPU machine, e.g. via tools/cuda/device_run.sh)");
        return 0;
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    register_dtype<mmfuse::bf16>();
    register_dtype<mmfuse::half>();
    register_dtype<float>();
    benchmark::AddCustomContext("gpu", mc::cuda_device::instance(0).gpu_name());
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
