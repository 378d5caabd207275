// Batched matmul on the Eigen reference backend against double-precision loops: every
// combination of transposes, batch broadcasting, alpha/beta and strided operand layouts,
// zero-size extents, BLAS beta == 0 / alpha == 0 semantics, and the front-end's errors.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <span>
#include <sstream>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "matmul_cases.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;

namespace {

/// alpha * op(A) op(B) + beta * C0 in double (C0 ignored when beta == 0).
template <class T>
std::vector<double> reference(const gemm_case& g, const tensor_ref<const T>& a,
                              const tensor_ref<const T>& b, const std::vector<double>& c0) {
    const bool batched = g.a_rank == 3 || g.b_rank == 3;
    const index_t nb = batched ? g.batch : 1;
    std::vector<double> r(std::size_t(nb * g.m * g.n));
    for (index_t bi = 0; bi < nb; ++bi)
        for (index_t i = 0; i < g.m; ++i)
            for (index_t j = 0; j < g.n; ++j) {
                double acc = 0.0;
                for (index_t q = 0; q < g.k; ++q)
                    acc += op_elem(a, g.ta, bi, i, q) * op_elem(b, g.tb, bi, q, j);
                const std::size_t o = std::size_t((bi * g.m + i) * g.n + j);
                r[o] = g.alpha * acc + (g.beta == 0.0 ? 0.0 : g.beta * c0[o]);
            }
    return r;
}

}  // namespace

TEMPLATE_TEST_CASE("matmul matches a double loop for transposes, batching, alpha/beta, layouts",
                   "[ops][matmul]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(101);
    auto& s = backend::default_stream();
    const std::array<std::array<index_t, 3>, 8> shapes{{{1, 1, 1},
                                                        {3, 5, 4},
                                                        {2, 7, 1},
                                                        {17, 33, 9},
                                                        {24, 40, 31},
                                                        {0, 3, 4},
                                                        {3, 0, 4},
                                                        {3, 4, 0}}};
    struct batching {
        int a_rank, b_rank;
        index_t batch;
    };
    const std::array<batching, 5> batchings{
        {{2, 2, 1}, {3, 3, 3}, {2, 3, 2}, {3, 2, 3}, {3, 3, 0}}};
    const std::array<std::array<double, 2>, 5> alpha_beta{
        {{1.0, 0.0}, {0.5, 0.0}, {-1.5, 0.25}, {2.0, 1.0}, {0.0, 0.5}}};
    int counter = 0;
    double worst = 0.0;
    for (const auto& sh : shapes)
        for (const batching& bt : batchings)
            for (int t = 0; t < 4; ++t)
                for (const auto& ab : alpha_beta) {
                    const gemm_case g{bt.a_rank, bt.b_rank,    bt.batch,     sh[0], sh[1],
                                      sh[2],     (t & 1) != 0, (t & 2) != 0, ab[0], ab[1]};
                    // Cycle through all 5 x 5 x 4 operand layouts.
                    const int combo = counter++ % 100;
                    const layout la = pick(input_layouts, combo);
                    const layout lb = pick(input_layouts, combo / 5);
                    const layout lc = pick(output_layouts, combo / 25);
                    strided_operand<T> a(operand_extents(g.a_rank, g.batch, g.m, g.k, g.ta), la);
                    strided_operand<T> b(operand_extents(g.b_rank, g.batch, g.k, g.n, g.tb), lb);
                    const bool batched = g.a_rank == 3 || g.b_rank == 3;
                    strided_operand<T> c(batched ? extents{g.batch, g.m, g.n} : extents{g.m, g.n},
                                         lc);
                    a.fill_random(rng);
                    b.fill_random(rng);
                    if (g.beta == 0.0)
                        c.poison();
                    else
                        c.sentinel_then_random(rng);
                    const std::vector<double> c0 = c.values();

                    ops::matmul(s, a.cref(), b.cref(), c.ref(),
                                ops::matmul_desc{g.ta, g.tb, g.alpha, g.beta});

                    const std::vector<double> ref = reference(g, a.cref(), b.cref(), c0);
                    const double err = mmfuse_test::max_rel_error(c.values(), ref);
                    worst = std::max(worst, err);
                    INFO("a " << a.cref().describe() << " (" << layout_name(la) << "), b "
                              << b.cref().describe() << " (" << layout_name(lb) << "), c "
                              << c.cref().describe() << " (" << layout_name(lc) << "), transpose "
                              << g.ta << g.tb << ", alpha " << g.alpha << ", beta " << g.beta);
                    REQUIRE(err <= mmfuse_test::tolerance<T>());
                    REQUIRE(c.outside_intact());
                }
    INFO("worst relative error " << worst);
    CHECK(worst <= mmfuse_test::tolerance<T>());
}

TEMPLATE_TEST_CASE("matmul follows BLAS: beta == 0 ignores C, alpha == 0 reads neither A nor B",
                   "[ops][matmul]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(102);
    auto& s = backend::default_stream();
    const T nan = std::numeric_limits<T>::quiet_NaN();
    for (const index_t k : {index_t(0), index_t(5), index_t(40)}) {
        auto a = mmfuse_test::random_tensor<T>({2, 6, k}, rng);
        auto b = mmfuse_test::random_tensor<T>({k, 7}, rng);
        tensor<T> c({2, 6, 7});
        // beta == 0: NaN in C must not leak into the result.
        mmfuse_test::poison(c);
        ops::matmul(s, a.cref(), b.cref(), c.ref(), ops::matmul_desc{false, false, 1.0, 0.0});
        for (index_t i = 0; i < c.numel(); ++i)
            REQUIRE(!std::isnan(c[i]));
        if (k == 0)
            for (index_t i = 0; i < c.numel(); ++i)
                REQUIRE(c[i] == T(0));
        // alpha == 0: NaN in A and B are not read; C = beta * C.
        a.fill(nan);
        b.fill(nan);
        auto c_before = mmfuse_test::random_tensor<T>({2, 6, 7}, rng);
        auto c2 = c_before.clone();
        ops::matmul(s, a.cref(), b.cref(), c2.ref(), ops::matmul_desc{false, false, 0.0, -0.5});
        for (index_t i = 0; i < c2.numel(); ++i)
            REQUIRE(double(c2[i]) == -0.5 * double(c_before[i]));
        ops::matmul(s, a.cref(), b.cref(), c2.ref(), ops::matmul_desc{false, false, 0.0, 0.0});
        for (index_t i = 0; i < c2.numel(); ++i)
            REQUIRE(c2[i] == T(0));
    }
}

TEST_CASE("matmul rejects mismatched operands, naming the module and both shapes",
          "[ops][matmul]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "text.proj");
    tensor<float> a({3, 4}), b({5, 6}), c({3, 6}), b3({2, 4, 6}), a3({3, 3, 4}), c3({3, 3, 6});
    tensor<float> v({4});
    using Catch::Contains;
    REQUIRE_THROWS_AS(ops::matmul(cx, a.cref(), b.cref(), c.ref()), shape_error);
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), b.cref(), c.ref()),
                        Contains("text.proj") && Contains("(3, 4)") && Contains("(5, 6)"));
    // transpose_b makes b (5, 6) read as (6, 5): still 6 != 4 columns.
    REQUIRE_THROWS_AS(ops::matmul(cx, a.cref(), b.cref(), c.ref(), {false, true}), shape_error);
    // Batch mismatch (3 vs 2).
    REQUIRE_THROWS_WITH(ops::matmul(cx, a3.cref(), b3.cref(), c3.ref()),
                        Contains("batch") && Contains("(3, 3, 4)") && Contains("(2, 4, 6)"));
    // Output of the wrong shape: expected (3, 3, 6) for a batched product.
    tensor<float> b4({4, 6});
    REQUIRE_THROWS_WITH(ops::matmul(cx, a3.cref(), b4.cref(), c.ref()),
                        Contains("matmul output c") && Contains("(3, 3, 6)") && Contains("(3, 6)"));
    // Rank 1 operand.
    REQUIRE_THROWS_WITH(ops::matmul(cx, v.cref(), b4.cref(), c.ref()),
                        Contains("rank 2 to 3") && Contains("(4)"));
    // Null data (a planner view passed by mistake).
    const tensor_ref<const float> null_a(nullptr, {3, 4});
    REQUIRE_THROWS_WITH(ops::matmul(cx, null_a, b4.cref(), c.ref()), Contains("null"));
}

TEST_CASE("the eigen backend refuses matmul in bf16 with a backend_error", "[ops][matmul]") {
    auto& s = backend::default_stream();
    tensor<bf16> a({2, 2}), b({2, 2}), c({2, 2});
    const std::array<any_tensor_ref, 2> in{a.cref(), b.cref()};
    const std::array<any_tensor_ref, 1> out{c.ref()};
    REQUIRE_FALSE(s.device().supports(ops::matmul_desc{}, dtype::bf16));
    REQUIRE_THROWS_AS(s.execute(ops::matmul_desc{}, in, out), backend_error);
    REQUIRE_THROWS_WITH(s.execute(ops::matmul_desc{}, in, out), Catch::Contains("bf16"));
}
