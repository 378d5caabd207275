// The oneDNN backend's own behaviour (issue 7): registration, the plan cache, the explicit
// fallback, refusals, the bf16 precision mode, a whole transformer layer forward and backward
// against the Eigen backend, and heap allocations of a steady-state step measured against
// oneDNN's own per-execution allocations. Op-by-op numerics are the [parity] test's job
// (tests/ops/test_parity.cpp runs every op case on this device).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mmfuse/backend/onednn/device.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "mmfuse/ops/gather.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/norm.hpp"
#include "support/test_util.hpp"

#include "support/alloc_counter.hpp"

using namespace mmfuse;
namespace onednn = mmfuse::backend::onednn;

namespace {

/// The values of a contiguous view, as doubles.
template <class T>
std::vector<double> to_doubles(tensor_ref<T> t) {
    REQUIRE(t.is_contiguous());
    return std::vector<double>(t.data(), t.data() + t.numel());
}

onednn::onednn_stream& fresh_stream() {
    static std::unique_ptr<backend::stream> s;
    s = backend::registry::global().get("onednn").create_stream();
    return static_cast<onednn::onednn_stream&>(*s);
}

backend::stream& eigen_stream() {
    return backend::registry::global().get("eigen").default_stream();
}

/// C = A B on `s` with fresh operands of the given sizes; returns C's values.
std::vector<double> product(backend::stream& s, const tensor<float>& a, const tensor<float>& b) {
    tensor<float> c({a.extents()[0], b.extents()[1]});
    mmfuse_test::poison(c);
    ops::matmul<float>(s, a.cref(), b.cref(), c.ref());
    return to_doubles(c.cref());
}

/// Double-precision reference of a batched product, row-major over (batch, i, j):
/// finish(batch, i, j, sum_k a(batch, i, k) * b(batch, k, j)).
template <class A, class B, class F>
std::vector<double> product_reference(index_t batch, index_t m, index_t n, index_t k, A a, B b,
                                      F finish) {
    std::vector<double> ref;
    for (index_t bb = 0; bb < batch; ++bb)
        for (index_t i = 0; i < m; ++i)
            for (index_t j = 0; j < n; ++j) {
                double acc = 0;
                for (index_t kk = 0; kk < k; ++kk)
                    acc += a(bb, i, kk) * b(bb, kk, j);
                ref.push_back(finish(bb, i, j, acc));
            }
    return ref;
}

}  // namespace

TEST_CASE("the onednn device registers itself and is preferred over eigen", "[onednn]") {
    auto& reg = backend::registry::global();
    backend::device& d = reg.get("onednn");
    CHECK(d.kind() == backend::device_kind::cpu);
    CHECK(d.memory() == memory_space::host);
    CHECK(d.priority() > reg.get("eigen").priority());
    CHECK(reg.names().find("onednn") != std::string::npos);
    // Native ops: f32 matmul yes; f64 and the ops without a primitive no.
    CHECK(d.supports(ops::matmul_desc{}, dtype::f32));
    CHECK_FALSE(d.supports(ops::matmul_desc{}, dtype::f64));
    CHECK_FALSE(d.supports(ops::gather_rows_desc{}, dtype::f32));
    CHECK_FALSE(d.supports(ops::rms_norm_desc{}, dtype::f32));
    CHECK(d.supports(ops::matmul_desc{}, dtype::bf16) == onednn::cpu_has_bf16());
}

TEST_CASE("plans are built once per signature and reused", "[onednn]") {
    onednn::onednn_stream& s = fresh_stream();
    auto rng = mmfuse_test::make_rng(701);
    const auto a = mmfuse_test::random_tensor<float>({7, 12}, rng);
    const auto b = mmfuse_test::random_tensor<float>({12, 5}, rng);
    const auto a2 = mmfuse_test::random_tensor<float>({9, 12}, rng);
    const std::vector<double> ref = product(eigen_stream(), a, b);

    for (int i = 0; i < 3; ++i)
        CHECK(mmfuse_test::max_rel_error(product(s, a, b), ref) <= 1e-5);
    CHECK(s.stats().plans_built == 1);
    CHECK(s.stats().native_ops == 3);
    CHECK(s.cached_plans() == 1);
    // Another M is another signature; the transposed flag another descriptor.
    product(s, a2, b);
    CHECK(s.stats().plans_built == 2);
    tensor<float> bt({5, 12});
    for (index_t n = 0; n < 5; ++n)
        for (index_t k = 0; k < 12; ++k)
            bt[n * 12 + k] = b[k * 5 + n];
    tensor<float> c({7, 5});
    mmfuse_test::poison(c);
    ops::matmul<float>(s, a.cref(), bt.cref(), c.ref(), {.transpose_b = true});
    CHECK(mmfuse_test::max_rel_error(to_doubles(c.cref()), ref) <= 1e-5);
    CHECK(s.stats().plans_built == 3);
    // Other memory, same signature: no new plan, right numbers.
    const auto a3 = mmfuse_test::random_tensor<float>({7, 12}, rng);
    const std::vector<double> ref3 = product(eigen_stream(), a3, b);
    CHECK(mmfuse_test::max_rel_error(product(s, a3, b), ref3) <= 1e-5);
    CHECK(s.stats().plans_built == 3);
    s.clear_cache();
    CHECK(s.cached_plans() == 0);
    CHECK(mmfuse_test::max_rel_error(product(s, a, b), ref) <= 1e-5);
    CHECK(s.stats().plans_built == 4);
}

TEST_CASE("ops without a primitive take the explicit, counted fallback", "[onednn]") {
    onednn::onednn_stream& s = fresh_stream();
    REQUIRE(s.fallback() == &eigen_stream());
    auto rng = mmfuse_test::make_rng(702);
    // f64 matmul: no oneDNN f64 — runs on the fallback, with the Eigen numbers.
    const auto a = mmfuse_test::random_tensor<double>({4, 6}, rng);
    const auto b = mmfuse_test::random_tensor<double>({6, 3}, rng);
    tensor<double> c({4, 3}), c_ref({4, 3});
    mmfuse_test::poison(c);
    ops::matmul<double>(s, a.cref(), b.cref(), c.ref());
    ops::matmul<double>(eigen_stream(), a.cref(), b.cref(), c_ref.ref());
    CHECK(to_doubles(c.cref()) == to_doubles(c_ref.cref()));
    CHECK(s.stats().fallback_ops == 1);
    CHECK(s.stats().native_ops == 0);
    // RMS norm f32: no primitive in oneDNN 2.6.
    const auto x = mmfuse_test::random_tensor<float>({3, 8}, rng);
    const auto g = mmfuse_test::random_tensor<float>({8}, rng);
    tensor<float> y({3, 8}), rstd({3});
    ops::rms_norm(s, x.cref(), g.cref(), y.ref(), rstd.ref());
    CHECK(s.stats().fallback_ops == 2);

    // Without a fallback the same op is refused, naming the backend and the op, and the
    // output is left as it was.
    s.set_fallback(nullptr);
    mmfuse_test::poison(c);
    REQUIRE_THROWS_AS(ops::matmul<double>(s, a.cref(), b.cref(), c.ref()), backend_error);
    REQUIRE_THROWS_WITH(ops::matmul<double>(s, a.cref(), b.cref(), c.ref()),
                        Catch::Contains("onednn") && Catch::Contains("matmul") &&
                            Catch::Contains("set_fallback"));
    for (index_t i = 0; i < c.numel(); ++i)
        CHECK(std::isnan(c[i]));
    s.set_fallback(&eigen_stream());
}

TEST_CASE("operands in device memory are refused", "[onednn]") {
    onednn::onednn_stream& s = fresh_stream();
    tensor<float> a({2, 2}), b({2, 2}), c({2, 2});
    const tensor_ref<const float> dev_a(a.data(), a.extents(), memory_space::device);
    REQUIRE_THROWS_WITH(ops::matmul<float>(s, dev_a, b.cref(), c.ref()),
                        Catch::Contains("onednn") && Catch::Contains("device memory"));
    CHECK(s.stats().native_ops == 0);
}

TEST_CASE("bf16 precision: matmuls within the bf16 tolerance, separate plans",
          "[onednn][bf16]") {
    onednn::onednn_stream& s = fresh_stream();
    auto rng = mmfuse_test::make_rng(703);
    const index_t k = 256;
    const auto a = mmfuse_test::random_tensor<float>({16, k}, rng);
    const auto b = mmfuse_test::random_tensor<float>({k, 24}, rng);
    const std::vector<double> ref = product(eigen_stream(), a, b);
    const std::vector<double> f32 = product(s, a, b);
    s.set_precision(onednn::precision::bf16);
    const std::vector<double> bf = product(s, a, b);
    CHECK(s.stats().plans_built == 2);  // the precision is part of the plan key
    // bf16 rounds each operand to 8 significant bits (relative 2^-9); a K-term dot product of
    // values in [-1, 1] then errs by at most about 2 * 2^-9 * K in absolute terms, and in
    // practice (random signs) by ~2^-8 sqrt(K). The stated tolerance: 2^-8 * sqrt(K) * 4.
    const double bf16_tol = std::ldexp(1.0, -8) * std::sqrt(double(k)) * 4;
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i)
        worst = std::max(worst, std::abs(bf[i] - ref[i]));
    INFO("bf16 worst absolute error " << worst << " (tolerance " << bf16_tol
                                      << "); CPU has bf16 kernels: " << onednn::cpu_has_bf16());
    CHECK(worst <= bf16_tol);
    CHECK(mmfuse_test::max_rel_error(f32, ref) <= 1e-5);
    if (onednn::cpu_has_bf16())  // the operands were really rounded: bf16 differs from f32
        CHECK(mmfuse_test::max_rel_error(bf, ref) > 1e-4);
    else  // oneDNN computes f32 where it has no bf16 kernels
        CHECK(mmfuse_test::max_rel_error(bf, ref) <= 1e-5);
}

TEST_CASE("bf16 precision rounds each operand once, whatever its layout",
          "[onednn][bf16]") {
    // A transposed, batched A and a rank-2 weight shared by the batch (nn.Linear's layout),
    // alpha, a fused bias + ReLU: on a CPU with bf16 kernels the result must equal the double
    // product of the bf16-rounded operands (f32 accumulation error only) and differ from the
    // f32 product; elsewhere it must be the f32 product.
    onednn::onednn_stream& s = fresh_stream();
    s.set_precision(onednn::precision::bf16);
    auto rng = mmfuse_test::make_rng(706);
    const index_t batch = 3, m = 20, k = 96, n = 40;
    const auto a = mmfuse_test::random_tensor<float>({batch, k, m}, rng);  // read as A^T
    const auto w = mmfuse_test::random_tensor<float>({n, k}, rng);         // read as W^T
    const auto bias = mmfuse_test::random_tensor<float>({n}, rng);
    tensor<float> c({batch, m, n});
    mmfuse_test::poison(c);
    ops::matmul<float>(s, a.cref(), w.cref(), bias.cref(), c.ref(),
                       {.transpose_a = true, .transpose_b = true, .alpha = 0.5,
                        .epilogue = ops::matmul_epilogue::bias_relu});
    const auto reference = [&](bool round) {
        const auto v = [round](float x) { return round ? double(float(bf16(x))) : double(x); };
        return product_reference(
            batch, m, n, k,
            [&](index_t bb, index_t i, index_t kk) { return v(a[(bb * k + kk) * m + i]); },
            [&](index_t, index_t kk, index_t j) { return v(w[j * k + kk]); },
            [&](index_t, index_t, index_t j, double acc) {
                return std::max(0.0, 0.5 * acc + double(bias[j]));
            });
    };
    CHECK(s.stats().fallback_ops == 0);
    INFO("CPU has bf16 kernels: " << onednn::cpu_has_bf16());
    if (onednn::cpu_has_bf16()) {
        CHECK(mmfuse_test::max_rel_error(c, reference(true)) <= 1e-5);
        CHECK(mmfuse_test::max_rel_error(c, reference(false)) > 1e-4);
    } else {
        CHECK(mmfuse_test::max_rel_error(c, reference(false)) <= 1e-5);
    }
}

TEST_CASE("a row-major B copied column-major gives the same product", "[onednn]") {
    // Mid-sized products with a row-major B (a linear layer's input gradient dY W) run on a
    // column-major copy of B where oneDNN uses its AVX2 GEMM: one extra primitive (the copy),
    // the same numbers (f32, batched A, broadcast B, alpha, beta and a fused bias).
    onednn::onednn_stream& s = fresh_stream();
    auto rng = mmfuse_test::make_rng(707);
    const index_t batch = 2, m = 128, k = 256, n = 320;
    for (const bool batched_b : {false, true}) {
        INFO("B " << (batched_b ? "(batch, K, N)" : "(K, N), broadcast over the batch"));
        const auto a = mmfuse_test::random_tensor<float>({batch, m, k}, rng);
        const auto b = batched_b ? mmfuse_test::random_tensor<float>({batch, k, n}, rng)
                                 : mmfuse_test::random_tensor<float>({k, n}, rng);
        const auto bias = mmfuse_test::random_tensor<float>({n}, rng);
        const auto c0 = mmfuse_test::random_tensor<float>({batch, m, n}, rng);
        tensor<float> c({batch, m, n});
        std::copy(c0.data(), c0.data() + c0.numel(), c.data());
        const auto before = s.stats();
        ops::matmul<float>(s, a.cref(), b.cref(), bias.cref(), c.ref(),
                           {.alpha = 0.5, .beta = 2.0, .epilogue = ops::matmul_epilogue::bias});
        const auto after = s.stats();
        CHECK(after.native_ops - before.native_ops == 1);
        CHECK(after.primitive_executions - before.primitive_executions ==
              (onednn::f32_matmul_is_gemm_jit() ? 2u : 1u));
        const index_t b_batch_stride = batched_b ? k * n : 0;
        const std::vector<double> ref = product_reference(
            batch, m, n, k,
            [&](index_t bb, index_t i, index_t kk) { return double(a[(bb * m + i) * k + kk]); },
            [&](index_t bb, index_t kk, index_t j) {
                return double(b[bb * b_batch_stride + kk * n + j]);
            },
            [&](index_t bb, index_t i, index_t j, double acc) {
                return 0.5 * acc + 2.0 * double(c0[(bb * m + i) * n + j]) + double(bias[j]);
            });
        CHECK(mmfuse_test::max_rel_error(c, ref) <= 1e-5);
    }
}

TEST_CASE("accumulating products with K <= 8 go to the fallback", "[onednn]") {
    // dW += dY^T X at batch <= 8: oneDNN 2.6's sum post-op is slower than Eigen there, so the
    // plan declines (counted as a fallback); from K = 9 on the product runs natively.
    onednn::onednn_stream& s = fresh_stream();
    auto rng = mmfuse_test::make_rng(708);
    const index_t m = 48, n = 40;
    for (const index_t k : {index_t(1), index_t(8), index_t(9)})
        for (const bool transpose_a : {false, true}) {
            INFO("K " << k << ", transpose_a " << transpose_a);
            const auto a = transpose_a ? mmfuse_test::random_tensor<float>({k, m}, rng)
                                       : mmfuse_test::random_tensor<float>({m, k}, rng);
            const auto b = mmfuse_test::random_tensor<float>({k, n}, rng);
            const auto c0 = mmfuse_test::random_tensor<float>({m, n}, rng);
            tensor<float> c({m, n});
            std::copy(c0.data(), c0.data() + c0.numel(), c.data());
            const auto before = s.stats();
            ops::matmul<float>(s, a.cref(), b.cref(), c.ref(),
                               {.transpose_a = transpose_a, .beta = 1.0});
            const auto after = s.stats();
            CHECK(after.fallback_ops - before.fallback_ops == (k <= 8 ? 1u : 0u));
            CHECK(after.native_ops - before.native_ops == (k <= 8 ? 0u : 1u));
            const std::vector<double> ref = product_reference(
                1, m, n, k,
                [&](index_t, index_t i, index_t kk) {
                    return double(transpose_a ? a[kk * m + i] : a[i * k + kk]);
                },
                [&](index_t, index_t kk, index_t j) { return double(b[kk * n + j]); },
                [&](index_t, index_t i, index_t j, double acc) {
                    return acc + double(c0[i * n + j]);
                });
            CHECK(mmfuse_test::max_rel_error(c, ref) <= 1e-5);
        }
}

TEST_CASE("small ops run on fewer OpenMP threads, large ones on all", "[onednn][threads]") {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(4);  // the cap is about the request, not the cores present
    onednn::onednn_stream& s = fresh_stream();
    auto rng = mmfuse_test::make_rng(709);
    // 2 x 48 elements: one thread's worth. Result as on Eigen; the count restored after.
    const auto x = mmfuse_test::random_tensor<float>({48}, rng);
    tensor<float> y({48}), y_ref({48});
    mmfuse_test::poison(y);
    ops::unary<float>(s, ops::unary_kind::relu, x.cref(), y.ref());
    ops::unary<float>(eigen_stream(), ops::unary_kind::relu, x.cref(), y_ref.ref());
    CHECK(s.stats().thread_capped_ops == 1);
    CHECK(omp_get_max_threads() == 4);
    CHECK(mmfuse_test::max_rel_error(to_doubles(y.cref()), to_doubles(y_ref.cref())) == 0.0);
    // 256^3 multiply-adds: 64 threads' worth, so all 4.
    const auto a = mmfuse_test::random_tensor<float>({256, 256}, rng);
    const auto b = mmfuse_test::random_tensor<float>({256, 256}, rng);
    const std::vector<double> ref = product(eigen_stream(), a, b);
    CHECK(mmfuse_test::max_rel_error(product(s, a, b), ref) <= 1e-5);
    CHECK(s.stats().thread_capped_ops == 1);
    // A 16 x 16 x 16 product: 4096 multiply-adds, capped again (and still right).
    const auto a2 = mmfuse_test::random_tensor<float>({16, 16}, rng);
    const auto b2 = mmfuse_test::random_tensor<float>({16, 16}, rng);
    CHECK(mmfuse_test::max_rel_error(product(s, a2, b2), product(eigen_stream(), a2, b2)) <= 1e-5);
    CHECK(s.stats().thread_capped_ops == 2);
    CHECK(omp_get_max_threads() == 4);
    omp_set_num_threads(saved);
#else
    WARN("test_onednn built without OpenMP: oneDNN's thread count cannot be capped per op");
#endif
}

TEST_CASE("a transformer layer trains the same on onednn as on eigen", "[onednn][nn]") {
    using layer = nn::transformer_encoder_layer<32, 4, 64, float>;
    const index_t batch = 3, len = 10;
    auto rng = mmfuse_test::make_rng(704);
    const auto x = mmfuse_test::random_tensor<float>({batch, len, 32}, rng);
    const auto dy = mmfuse_test::random_tensor<float>({batch, len, 32}, rng);
    tensor<bool> keep({batch, len});
    for (index_t i = 0; i < keep.numel(); ++i)
        keep[i] = (i % len) < len - 1 - (i / len);  // 9, 8, 7 valid keys

    struct run {
        std::vector<double> y, dx, grads;
    };
    const auto train = [&](backend::stream& s, bool norm_first) {
        nn::model<layer> m(layer{{}, {}, {}, {.activation = ops::unary_kind::gelu_erf,
                                              .norm_first = norm_first}},
                           705);
        m.net().masks.key_padding = keep.cref();
        growing_arena ws;
        nn::step_context<float> cx{&s, &ws, true};
        m.zero_grad();
        const auto y = m.net().forward(cx, x.cref());
        const auto dx = m.net().backward(cx, dy.cref());
        return run{to_doubles(y), to_doubles(dx),
                   to_doubles(m.gradients())};
    };
    onednn::onednn_stream& s = fresh_stream();
    for (const bool pre : {false, true}) {
        const run ref = train(eigen_stream(), pre);
        const run got = train(s, pre);
        INFO("norm_first " << pre);
        CHECK(mmfuse_test::max_rel_error(got.y, ref.y) <= 1e-4);
        CHECK(mmfuse_test::max_rel_error(got.dx, ref.dx) <= 1e-4);
        CHECK(mmfuse_test::max_rel_error(got.grads, ref.grads) <= 1e-4);
    }
    INFO("native " << s.stats().native_ops << ", fallback " << s.stats().fallback_ops);
    CHECK(s.stats().native_ops > 0);
}

TEST_CASE("a steady-state step allocates nothing outside oneDNN's own executions",
          "[onednn][no_alloc]") {
#ifdef MMFUSE_TEST_ASAN
    std::fprintf(stderr, "test_onednn no_alloc: skipped under AddressSanitizer\n");
    std::exit(4);
#else
    // The same transformer training step as above, steady state, on onednn.
    using layer = nn::transformer_encoder_layer<32, 4, 64, float>;
    auto rng = mmfuse_test::make_rng(706);
    const auto x = mmfuse_test::random_tensor<float>({2, 6, 32}, rng);
    const auto dy = mmfuse_test::random_tensor<float>({2, 6, 32}, rng);
    nn::model<layer> m(layer{}, 707);
    onednn::onednn_stream& s = fresh_stream();
    growing_arena ws;
    nn::step_context<float> cx{&s, &ws, true};
    const auto step = [&] {
        m.zero_grad();
        m.net().forward(cx, x.cref());
        m.net().backward(cx, dy.cref());
        ws.reset();
    };
    step();
    step();
    // Allocations made while a oneDNN primitive executes are oneDNN's own (2.6 builds an
    // argument map per execution); they are counted apart. Everything else in the step —
    // plan lookup, scratch, the host loops of the plans, the fallback ops — must allocate
    // nothing.
    exclude_allocation = []() noexcept { return onednn::primitives_running().load() > 0; };
    s.reset_stats();
    allocations = 0;
    excluded_allocations = 0;
    counting = true;
    step();
    counting = false;
    exclude_allocation = nullptr;
    const auto& st = s.stats();
    INFO("mmfuse-side allocations in the step: " << allocations.load() << "; inside oneDNN: "
                                                 << excluded_allocations.load() << " over "
                                                 << st.primitive_executions << " primitive runs ("
                                                 << st.native_ops << " native ops, "
                                                 << st.fallback_ops << " fallback ops)");
    CHECK(st.plans_built == 0);
    CHECK(st.native_ops > 0);
    CHECK(allocations.load() == 0);
    // The attribution works: oneDNN 2.6 does allocate inside its executions.
    CHECK(excluded_allocations.load() > 0);
#endif
}
