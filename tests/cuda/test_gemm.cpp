// [cuda] tests: matmul on the CUDA backend (cuBLASLt, backend/cuda/gemm.hpp) against the
// Eigen backend in double precision on the same host values. Covered: odd and large sizes,
// every transpose combination, batched and broadcast operands, alpha/beta (beta == 0 with a
// NaN-poisoned C), every epilogue, strided views read in place (padded rows, misaligned
// starts, column-major storage), K == 0 and alpha == 0 (A, B unread), empty outputs, the
// layouts the engine refuses, the plan cache (nothing allocated in the steady state) and
// capture into a CUDA graph.
#include "support/cuda_util.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/cuda/gemm.hpp"
#include "mmfuse/backend/cuda/graph.hpp"
#include "mmfuse/backend/eigen/device.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/ops/matmul.hpp"

namespace {

namespace mc = mmfuse::backend::cuda;
namespace gpu = mmfuse_test::gpu;
using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::ops::matmul_desc;
using mmfuse::ops::matmul_epilogue;

enum class precision { f32, tf32, bf16, f16 };

const char* precision_name(precision p) {
    switch (p) {
        case precision::f32:
            return "f32";
        case precision::tf32:
            return "f32 with TF32";
        case precision::bf16:
            return "bf16";
        case precision::f16:
            return "f16";
    }
    return "?";
}

/// Relative L2 error allowed against the double reference (inputs are exact in every
/// dtype: the reference reads the very values uploaded). f32: accumulation only. TF32
/// keeps 10 mantissa bits of each input (Hopper's tensor cores may truncate: ~1e-3
/// relative). bf16 / f16: the output is rounded to 8 / 11 bits. cuBLASLt's GELU may use the
/// hardware tanh approximation (relative error ~2^-11), hence the f32 GELU bound.
double tolerance(precision p, matmul_epilogue e) {
    switch (p) {
        case precision::f32:
            return e == matmul_epilogue::bias_gelu_tanh ? 1e-3 : 1e-5;
        case precision::tf32:
            return 3e-3;
        case precision::bf16:
            return 1e-2;
        case precision::f16:
            return 3e-3;
    }
    return 0.0;
}

/// How a test operand lies in its device buffer.
enum class storage {
    dense,         ///< contiguous row-major
    padded,        ///< rows padded by 3 elements and the view starting 1 element in (misaligned)
    column_major,  ///< the last two axes stored swapped (a transposed view)
    gapped,        ///< every other element of the last axis (no unit stride)
};

const char* storage_name(storage s) {
    switch (s) {
        case storage::dense:
            return "dense";
        case storage::padded:
            return "padded";
        case storage::column_major:
            return "column-major";
        case storage::gapped:
            return "gapped";
    }
    return "?";
}

/// Waits for the uploads and memsets of the legacy default stream (`to_device`, `cudaMemset`
/// may return before the data lands) before work is enqueued on a non-blocking stream.
void settle() {
    mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

/// Extents of the buffer that holds a view of logical extents `e` stored as `s`.
extents storage_extents(const extents& e, storage s) {
    extents out = e;
    if (s == storage::padded) out.set(-1, e[-1] + 3);
    if (s == storage::gapped) out.set(-1, 2 * e[-1]);
    if (s == storage::column_major) {
        out.set(-1, e[-2]);
        out.set(-2, e[-1]);
    }
    return out;
}

/// The view of logical extents `e` inside `whole` (a buffer of `storage_extents(e, s)`).
template <class U>
mmfuse::tensor_ref<U> arrange(const mmfuse::tensor_ref<U>& whole, storage s, const extents& e) {
    switch (s) {
        case storage::dense:
            return whole;
        case storage::padded:
            return whole.narrow(-1, 1, e[-1]);
        case storage::column_major:
            return whole.transpose(-1, -2);
        case storage::gapped: {
            std::array<index_t, mmfuse::max_rank> strides{};
            for (int i = 0; i < e.rank(); ++i)
                strides[std::size_t(i)] = whole.stride(i);
            strides[std::size_t(e.rank() - 1)] = 2;
            return {whole.data(), e, std::span<const index_t>(strides.data(), std::size_t(e.rank())),
                    whole.space()};
        }
    }
    return whole;
}

/// A test operand: random storage on the host and its copy on the GPU, viewed through
/// `layout`. With `poison_view`, the view's elements are NaN (an output with beta == 0, or
/// an input that must not be read); the rest of the buffer stays random, so a write outside
/// the view is detected.
template <class T>
struct operand {
    extents logical;
    storage layout = storage::dense;
    mmfuse::tensor<T> host;
    mc::device_tensor<T> device;

    operand(const extents& e, storage s, std::mt19937_64& rng, bool poison_view)
        : logical(e),
          layout(s),
          host(mmfuse_test::random_tensor<T>(storage_extents(e, s), rng)),
          device(storage_extents(e, s)) {
        if (poison_view) {
            const auto v = host_view();
            mmfuse_test::for_each_index(e, [&](const auto& idx) {
                v.data()[mmfuse_test::offset_of(idx, v.strides())] =
                    T(std::numeric_limits<float>::quiet_NaN());
            });
        }
        mc::to_device<T>(host.cref(), device);
    }

    mmfuse::tensor_ref<T> host_view() { return arrange(host.ref(), layout, logical); }
    mmfuse::tensor_ref<T> device_view() const { return arrange(device.ref(), layout, logical); }
    /// The view's logical values as uploaded (row-major, as doubles).
    std::vector<double> values() { return mmfuse_test::to_vector(host_view()); }
};

/// One matmul problem of the tests.
struct gemm_case {
    precision prec = precision::f32;
    index_t batch_a = 0, batch_b = 0;  ///< 0: a rank-2 operand
    index_t m = 1, n = 1, k = 1;
    bool transpose_a = false, transpose_b = false;
    double alpha = 1.0, beta = 0.0;
    matmul_epilogue epilogue = matmul_epilogue::none;
    storage a_layout = storage::dense, b_layout = storage::dense, c_layout = storage::dense;
    storage bias_layout = storage::dense;

    index_t batch() const { return batch_a ? batch_a : batch_b; }
    bool batched() const { return batch_a || batch_b; }
    extents a_extents() const {
        const index_t r = transpose_a ? k : m, c = transpose_a ? m : k;
        return batch_a ? extents{batch_a, r, c} : extents{r, c};
    }
    extents b_extents() const {
        const index_t r = transpose_b ? n : k, c = transpose_b ? k : n;
        return batch_b ? extents{batch_b, r, c} : extents{r, c};
    }
    extents c_extents() const { return batched() ? extents{batch(), m, n} : extents{m, n}; }

    std::string describe() const {
        std::string s = precision_name(prec);
        s += ": a ";
        s += a_extents().to_string();
        s += transpose_a ? "^T " : " ";
        s += storage_name(a_layout);
        s += ", b ";
        s += b_extents().to_string();
        s += transpose_b ? "^T " : " ";
        s += storage_name(b_layout);
        s += ", c ";
        s += c_extents().to_string();
        s += " ";
        s += storage_name(c_layout);
        s += ", alpha ";
        s += std::to_string(alpha);
        s += ", beta ";
        s += std::to_string(beta);
        s += ", epilogue ";
        s += mmfuse::ops::epilogue_name(epilogue);
        if (epilogue != matmul_epilogue::none) {
            s += " (bias ";
            s += storage_name(bias_layout);
            s += ")";
        }
        return s;
    }
};

double gelu_tanh(double x) {
    const double k = std::sqrt(2.0 / 3.14159265358979323846);
    return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

/// act(alpha op(A) op(B) + beta C + bias) in double: the product by the Eigen backend on
/// f64 copies of the values, the rest here.
std::vector<double> reference(const gemm_case& g, const std::vector<double>& a,
                              const std::vector<double>& b, const std::vector<double>& c0,
                              const std::vector<double>& bias) {
    const auto filled = [](const extents& e, const std::vector<double>& v) {
        mmfuse::tensor<double> t(e);
        for (index_t i = 0; i < t.numel(); ++i)
            t[i] = v[std::size_t(i)];
        return t;
    };
    const mmfuse::tensor<double> ah = filled(g.a_extents(), a), bh = filled(g.b_extents(), b);
    mmfuse::tensor<double> product(g.c_extents());
    auto& cpu = mmfuse::backend::eigen::eigen_device::instance().default_stream();
    mmfuse::ops::matmul<double>(cpu, ah.cref(), bh.cref(), product.ref(),
                                {.transpose_a = g.transpose_a, .transpose_b = g.transpose_b,
                                 .alpha = g.alpha, .beta = 0.0});
    std::vector<double> out(std::size_t(product.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) {
        double x = product[index_t(i)];
        if (g.beta != 0.0) x += g.beta * c0[i];
        if (g.epilogue != matmul_epilogue::none) x += bias[i % std::size_t(g.n)];
        if (g.epilogue == matmul_epilogue::bias_relu) x = std::max(x, 0.0);
        if (g.epilogue == matmul_epilogue::bias_gelu_tanh) x = gelu_tanh(x);
        out[i] = x;
    }
    return out;
}

/// The stream a precision runs on: the default stream (TF32 off) or a second stream of GPU 0
/// that allows TF32.
mc::cuda_stream& stream_for(precision p) {
    if (p != precision::tf32) return gpu::stream();
    static const std::unique_ptr<mmfuse::backend::stream> tf32 = [] {
        auto s = mc::cuda_device::instance(0).create_stream();
        static_cast<mc::cuda_stream&>(*s).allow_tf32(true);
        return s;
    }();
    return static_cast<mc::cuda_stream&>(*tf32);
}

/// Submits the matmul: f32 through the typed front-ends `ops::matmul` (with or without a
/// bias), bf16 and f16 (no typed front-end: not compute types on the host) straight to the
/// stream, as the front-end would after validation.
template <class T>
void submit(mc::cuda_stream& s, const matmul_desc& d, mmfuse::tensor_ref<const T> a,
            mmfuse::tensor_ref<const T> b, mmfuse::tensor_ref<const T> bias,
            mmfuse::tensor_ref<T> c) {
    if constexpr (std::is_same_v<T, float>) {
        if (d.epilogue == matmul_epilogue::none)
            mmfuse::ops::matmul<float>(s, a, b, c, d);
        else
            mmfuse::ops::matmul<float>(s, a, b, bias, c, d);
    } else {
        const std::array<mmfuse::any_tensor_ref, 3> in{a, b, bias};
        const std::array<mmfuse::any_tensor_ref, 1> out{c};
        s.execute(d, std::span(in.data(), d.epilogue == matmul_epilogue::none ? 2 : 3), out);
    }
}

/// True when every element of `after` outside the view of `op` has the bits of `op.host`.
template <class T>
bool outside_view_unchanged(operand<T>& op, const mmfuse::tensor<T>& after) {
    std::vector<bool> in_view(std::size_t(op.host.numel()), false);
    const auto v = op.host_view();
    mmfuse_test::for_each_index(op.logical, [&](const auto& idx) {
        in_view[std::size_t(v.data() - op.host.data() +
                            mmfuse_test::offset_of(idx, v.strides()))] = true;
    });
    for (index_t i = 0; i < op.host.numel(); ++i)
        if (!in_view[std::size_t(i)] && std::memcmp(&op.host[i], &after[i], sizeof(T)) != 0)
            return false;
    return true;
}

template <class T>
void check_case_as(const gemm_case& g) {
    INFO(g.describe());
    auto rng = mmfuse_test::make_rng(std::hash<std::string>{}(g.describe()));
    const bool unread_inputs = g.alpha == 0.0;  // BLAS: A and B must not be read
    operand<T> a(g.a_extents(), g.a_layout, rng, unread_inputs);
    operand<T> b(g.b_extents(), g.b_layout, rng, unread_inputs);
    operand<T> c(g.c_extents(), g.c_layout, rng, g.beta == 0.0);
    operand<T> bias(extents{g.n}, g.bias_layout, rng, false);
    const std::vector<double> c0 = c.values();
    settle();

    const matmul_desc d{.transpose_a = g.transpose_a, .transpose_b = g.transpose_b,
                        .alpha = g.alpha, .beta = g.beta, .epilogue = g.epilogue};
    submit<T>(stream_for(g.prec), d, a.device_view(), b.device_view(), bias.device_view(),
              c.device_view());
    const mmfuse::tensor<T> after = gpu::download(c.device);

    const std::vector<double> got = mmfuse_test::to_vector(arrange(after.cref(), c.layout, c.logical));
    const std::vector<double> want = reference(g, a.values(), b.values(), c0, bias.values());
    const double err = gpu::rel_l2_error(std::span<const double>(got), std::span<const double>(want));
    const double tol = tolerance(g.prec, g.epilogue);
    CAPTURE(err, tol);
    CHECK(err <= tol);
    CHECK(outside_view_unchanged(c, after));
}

void check_case(const gemm_case& g) {
    switch (g.prec) {
        case precision::f32:
        case precision::tf32:
            return check_case_as<float>(g);
        case precision::bf16:
            return check_case_as<mmfuse::bf16>(g);
        case precision::f16:
            return check_case_as<mmfuse::half>(g);
    }
}

constexpr std::array<precision, 4> all_precisions{precision::f32, precision::tf32,
                                                  precision::bf16, precision::f16};

}  // namespace

TEST_CASE("cuda matmul matches the Eigen reference for odd and large sizes", "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    const auto [m, n, k] = GENERATE(table<index_t, index_t, index_t>({{1, 1, 1},
                                                                       {7, 1, 33},
                                                                       {1, 7, 257},
                                                                       {33, 257, 7},
                                                                       {257, 33, 1000},
                                                                       {1000, 257, 33},
                                                                       {1000, 1000, 257}}));
    gemm_case g;
    g.prec = prec;
    g.m = m;
    g.n = n;
    g.k = k;
    check_case(g);
}

TEST_CASE("cuda matmul handles every transpose combination batched and broadcast",
          "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    const bool ta = GENERATE(false, true);
    const bool tb = GENERATE(false, true);
    const auto [batch_a, batch_b] =
        GENERATE(table<index_t, index_t>({{0, 0}, {3, 3}, {0, 3}, {3, 0}}));
    gemm_case g;
    g.prec = prec;
    g.transpose_a = ta;
    g.transpose_b = tb;
    g.batch_a = batch_a;
    g.batch_b = batch_b;
    g.m = 33;
    g.n = 7;
    g.k = 65;
    check_case(g);
}

TEST_CASE("cuda matmul scales by alpha and beta and never reads C when beta is 0",
          "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    // alpha == 0: A and B are NaN-poisoned and must not be read; beta == 0: C is.
    const auto [alpha, beta] = GENERATE(table<double, double>(
        {{1.0, 0.0}, {0.5, 0.0}, {1.0, 1.0}, {-1.5, 0.75}, {0.0, 0.5}, {0.0, 0.0}}));
    const index_t batch_a = GENERATE(index_t(0), index_t(2));
    gemm_case g;
    g.prec = prec;
    g.alpha = alpha;
    g.beta = beta;
    g.batch_a = batch_a;
    g.m = 65;
    g.n = 33;
    g.k = 129;
    check_case(g);
}

TEST_CASE("cuda matmul applies every epilogue", "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    const matmul_epilogue epilogue = GENERATE(matmul_epilogue::bias, matmul_epilogue::bias_relu,
                                              matmul_epilogue::bias_gelu_tanh);
    const double beta = GENERATE(0.0, 0.5);
    const auto [batch_a, batch_b] = GENERATE(table<index_t, index_t>({{0, 0}, {2, 0}, {2, 2}}));
    // A bias read in place, one starting 1 element in (misaligned) and one with stride 2.
    const storage bias_layout = GENERATE(storage::dense, storage::padded, storage::gapped);
    gemm_case g;
    g.prec = prec;
    g.epilogue = epilogue;
    g.beta = beta;
    g.batch_a = batch_a;
    g.batch_b = batch_b;
    g.bias_layout = bias_layout;
    g.transpose_b = true;  // nn.Linear: y = x W^T + b
    g.m = 33;
    g.n = 257;
    g.k = 65;
    check_case(g);
}

TEST_CASE("cuda matmul reads padded misaligned and column-major views in place", "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    const storage a_layout = GENERATE(storage::dense, storage::padded, storage::column_major);
    const storage b_layout = GENERATE(storage::dense, storage::padded, storage::column_major);
    const storage c_layout = GENERATE(storage::dense, storage::padded, storage::column_major);
    gemm_case g;
    g.prec = prec;
    g.a_layout = a_layout;
    g.b_layout = b_layout;
    g.c_layout = c_layout;
    g.batch_a = 2;
    g.batch_b = 2;
    g.beta = 0.5;
    g.m = 33;
    g.n = 17;
    g.k = 65;
    check_case(g);
    if (c_layout != storage::column_major) {  // an epilogue needs a unit column stride in C
        g.epilogue = matmul_epilogue::bias_relu;
        check_case(g);
    }
}

TEST_CASE("cuda matmul with K = 0 computes beta C plus the epilogue", "[cuda][gemm]") {
    const precision prec = GENERATE(from_range(all_precisions));
    const double beta = GENERATE(0.0, 0.5);
    const matmul_epilogue epilogue =
        GENERATE(matmul_epilogue::none, matmul_epilogue::bias_gelu_tanh);
    gemm_case g;
    g.prec = prec;
    g.beta = beta;
    g.epilogue = epilogue;
    g.batch_b = 3;
    g.m = 7;
    g.n = 33;
    g.k = 0;
    check_case(g);
}

TEST_CASE("cuda matmul with an empty output enqueues nothing", "[cuda][gemm]") {
    const auto [batch, m, n] =
        GENERATE(table<index_t, index_t, index_t>({{0, 4, 5}, {2, 0, 5}, {2, 4, 0}}));
    CAPTURE(batch, m, n);
    mc::device_tensor<float> a({batch, m, 3}), b({batch, 3, n}), c({batch, m, n});
    auto& s = gpu::stream();
    const std::uint64_t before = mc::allocation_count();
    CHECK_NOTHROW(mmfuse::ops::matmul<float>(s, a.cref(), b.cref(), c.ref()));
    s.synchronize();
    CHECK(mc::allocation_count() == before);
}

TEST_CASE("cuda matmul refuses layouts cuBLASLt cannot read", "[cuda][gemm]") {
    using Catch::Matchers::Contains;
    auto& s = gpu::stream();
    auto rng = mmfuse_test::make_rng();
    const index_t m = 8, n = 6, k = 4;
    operand<float> a_gapped(extents{m, k}, storage::gapped, rng, false);
    operand<float> a(extents{m, k}, storage::dense, rng, false);
    operand<float> b(extents{k, n}, storage::dense, rng, false);
    operand<float> c(extents{m, n}, storage::dense, rng, false);
    operand<float> c_colmajor(extents{m, n}, storage::column_major, rng, false);
    operand<float> bias(extents{n}, storage::dense, rng, false);
    const auto cref = [](const operand<float>& o) {
        return mmfuse::tensor_ref<const float>(o.device_view());
    };
    settle();

    // No unit stride on either axis (every other column).
    CHECK_THROWS_WITH(mmfuse::ops::matmul<float>(s, cref(a_gapped), cref(b), c.device_view()),
                      Contains("operand a") && Contains("unit stride"));
    // A broadcast matrix: leading stride 0.
    const auto row = cref(a).narrow(0, 0, 1).expand(extents{m, k});
    CHECK_THROWS_WITH(mmfuse::ops::matmul<float>(s, row, cref(b), c.device_view()),
                      Contains("operand a") && Contains("leading stride"));
    // A bias epilogue into a column-major C.
    const matmul_desc with_bias{.epilogue = matmul_epilogue::bias};
    CHECK_THROWS_WITH(submit<float>(s, with_bias, cref(a), cref(b), cref(bias),
                                    c_colmajor.device_view()),
                      Contains("bias epilogue"));
    // A broadcast bias.
    const auto bias0 = cref(bias).narrow(0, 0, 1).expand(extents{n});
    CHECK_THROWS_WITH(submit<float>(s, with_bias, cref(a), cref(b), bias0, c.device_view()),
                      Contains("broadcast"));
    s.synchronize();  // nothing was enqueued, nothing failed
}

TEST_CASE("cuda matmul steady state allocates nothing and reuses its plans", "[cuda][gemm]") {
    auto rng = mmfuse_test::make_rng();
    auto& s = gpu::stream();
    const index_t m = 96, n = 80, k = 64;
    operand<float> a(extents{2, m, k}, storage::dense, rng, false);
    operand<float> b(extents{n, k}, storage::dense, rng, false);
    operand<float> bias(extents{n}, storage::padded, rng, false);  // staged through scratch
    operand<float> c(extents{2, m, n}, storage::dense, rng, false);
    const auto cref = [](const operand<float>& o) {
        return mmfuse::tensor_ref<const float>(o.device_view());
    };
    const matmul_desc plain{.transpose_b = true};
    const matmul_desc fused{.transpose_b = true, .epilogue = matmul_epilogue::bias_gelu_tanh};
    const matmul_desc unread{.transpose_b = true, .alpha = 0.0, .beta = 0.5};  // zero product
    settle();
    const auto step = [&] {
        for (const matmul_desc& d : {plain, fused, unread})
            submit<float>(s, d, cref(a), cref(b), cref(bias), c.device_view());
    };

    SECTION("through the stream: 100 repeated steps allocate no device memory") {
        step();  // warm-up: plans and scratch
        s.synchronize();
        const std::uint64_t before = mc::allocation_count();
        for (int i = 0; i < 100; ++i)
            step();
        s.synchronize();
        CHECK(mc::allocation_count() == before);
    }

    SECTION("an engine builds one plan per problem and evicts the least recently used") {
        mc::scratch_space scratch;
        mc::gemm_engine engine;
        const mc::kernels::launch_context cx{s.native(), &scratch, &engine, false,
                                             mc::cuda_device::instance(0).multiprocessors()};
        // b is (N, K) (transpose_b): a narrower output takes the first rows of b.
        const auto run = [&](const matmul_desc& d, const mmfuse::tensor_ref<float>& out) {
            const index_t width = out.extent(-1);
            const std::array<mc::kernels::view, 3> in{
                mc::kernels::make_view(cref(a)), mc::kernels::make_view(cref(b).narrow(0, 0, width)),
                mc::kernels::make_view(cref(bias).narrow(0, 0, width))};
            const std::array<mc::kernels::view, 1> o{mc::kernels::make_view(out)};
            engine.run(d, mc::kernels::inputs(in.data(), d.epilogue == matmul_epilogue::none ? 2 : 3),
                       o, cx);
        };
        for (int i = 0; i < 100; ++i)
            run(plain, c.device_view());
        CHECK(engine.plans_built() == 1);
        run(fused, c.device_view());
        run(plain, c.device_view());
        CHECK(engine.plans_built() == 2);
        CHECK(engine.cached_plans() == 2);

        // More distinct problems than the table holds: narrower and narrower outputs.
        const index_t extra = index_t(mc::gemm_engine::plan_capacity) + 6;
        REQUIRE(extra < n);
        for (index_t w = 1; w <= extra; ++w)
            run(matmul_desc{.transpose_b = true}, c.device_view().narrow(-1, 0, n - w));
        CHECK(engine.cached_plans() == mc::gemm_engine::plan_capacity);
        CHECK(engine.plans_built() == std::uint64_t(2 + extra));
        const std::uint64_t built = engine.plans_built();
        run(matmul_desc{.transpose_b = true}, c.device_view().narrow(-1, 0, n - extra));
        CHECK(engine.plans_built() == built);  // the most recent one is still cached
        c = operand<float>(extents{2, m, n}, storage::dense, rng, true);  // NaN-poisoned
        settle();
        run(plain, c.device_view());  // evicted: rebuilt
        CHECK(engine.plans_built() == built + 1);
        const mmfuse::tensor<float> after = gpu::download(c.device);
        gemm_case g;
        g.batch_a = 2;
        g.m = m;
        g.n = n;
        g.k = k;
        g.transpose_b = true;
        const std::vector<double> want = reference(g, a.values(), b.values(), {}, {});
        const std::vector<double> got = mmfuse_test::to_vector(after.cref());
        const double err =
            gpu::rel_l2_error(std::span<const double>(got), std::span<const double>(want));
        CAPTURE(err);
        CHECK(err <= tolerance(precision::f32, matmul_epilogue::none));
    }
}

TEST_CASE("cuda matmul can be captured into a CUDA graph after a warm-up call", "[cuda][gemm]") {
    auto rng = mmfuse_test::make_rng();
    auto& s = gpu::stream();
    gemm_case g;
    g.batch_a = 3;
    g.m = 64;
    g.n = 48;
    g.k = 40;
    g.transpose_b = true;
    g.epilogue = matmul_epilogue::bias_relu;
    operand<float> a(g.a_extents(), storage::dense, rng, false);
    operand<float> b(g.b_extents(), storage::dense, rng, false);
    operand<float> bias(extents{g.n}, storage::dense, rng, false);
    mc::device_tensor<float> c(g.c_extents());
    const matmul_desc d{.transpose_b = true, .epilogue = g.epilogue};
    settle();
    const auto enqueue = [&] {
        submit<float>(s, d, a.device_view(), b.device_view(), bias.device_view(), c.ref());
    };
    enqueue();  // warm-up: the plan and the scratch exist before capture
    s.synchronize();
    const std::uint64_t before = mc::allocation_count();
    const mc::graph step = mc::graph::capture(s, enqueue);
    mc::check(cudaMemsetAsync(c.data(), 0xFF, c.bytes(), s.native()),  // NaN before the replay
              "cudaMemsetAsync");
    step.launch(s);
    s.synchronize();
    CHECK(mc::allocation_count() == before);
    const mmfuse::tensor<float> after = gpu::download(c);
    const std::vector<double> got = mmfuse_test::to_vector(after.cref());
    const std::vector<double> want = reference(g, a.values(), b.values(), {}, bias.values());
    const double err = gpu::rel_l2_error(std::span<const double>(got), std::span<const double>(want));
    CAPTURE(err);
    CHECK(err <= tolerance(precision::f32, g.epilogue));
}
