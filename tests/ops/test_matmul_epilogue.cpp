// Matmul with a fused epilogue (bias, bias + relu, bias + gelu_tanh) on the Eigen reference
// backend, against the unfused composition matmul -> bias_add -> unary and against double
// loops, for transposes, batching, alpha/beta and strided layouts; and the front-ends'
// refusals (an epilogue without a bias, a bias without an epilogue, bias shapes).

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "matmul_cases.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using mmfuse_test::layout;
using mmfuse_test::operand_extents;
using mmfuse_test::strided_operand;

namespace {

/// The activation an epilogue applies after the bias (none for `bias`).
bool epilogue_activation(ops::matmul_epilogue e, ops::unary_kind& kind) {
    if (e == ops::matmul_epilogue::bias_relu) kind = ops::unary_kind::relu;
    if (e == ops::matmul_epilogue::bias_gelu_tanh) kind = ops::unary_kind::gelu_tanh;
    return e == ops::matmul_epilogue::bias_relu || e == ops::matmul_epilogue::bias_gelu_tanh;
}

/// The same activation written out in double, independently of activation_math.hpp.
double activation_in_double(ops::matmul_epilogue e, double x) {
    switch (e) {
        case ops::matmul_epilogue::bias_relu:
            return x > 0.0 ? x : 0.0;
        case ops::matmul_epilogue::bias_gelu_tanh:
            return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
        default:
            return x;
    }
}


}  // namespace

TEMPLATE_TEST_CASE("matmul epilogues equal matmul then bias_add then the activation",
                   "[ops][matmul][epilogue]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(501);
    const std::vector<mmfuse_test::gemm_case> cases = {
        {2, 2, 1, 5, 7, 6, false, false, 1.0, 0.0},
        {2, 2, 1, 4, 3, 9, true, true, 0.5, 0.0},
        {3, 3, 3, 4, 6, 5, false, true, 1.0, 0.7},  // beta != 0: C is read
        {3, 2, 2, 6, 5, 4, true, false, -1.2, 0.0}, // nn.Linear: x (B, M, K) @ W^T
        {2, 3, 2, 3, 4, 8, false, false, 1.0, 1.0},
        {2, 2, 1, 3, 0, 4, false, false, 1.0, 0.5},  // K == 0: act(beta C + bias)
    };
    int counter = 0;
    for (const mmfuse_test::gemm_case& g : cases)
        for (ops::matmul_epilogue e :
             {ops::matmul_epilogue::bias, ops::matmul_epilogue::bias_relu,
              ops::matmul_epilogue::bias_gelu_tanh}) {
            const int combo = counter++;
            const layout la = mmfuse_test::pick(mmfuse_test::input_layouts, combo);
            const layout lb = mmfuse_test::pick(mmfuse_test::input_layouts, combo / 5);
            const layout lc = mmfuse_test::pick(mmfuse_test::output_layouts, combo / 2);
            const layout lbias = combo % 3 == 0 ? layout::padded : layout::contiguous;
            CAPTURE(g.m, g.k, g.n, g.batch, g.ta, g.tb, g.alpha, g.beta, int(e),
                    mmfuse_test::layout_name(la), mmfuse_test::layout_name(lb),
                    mmfuse_test::layout_name(lc));
            const bool batched = g.a_rank == 3 || g.b_rank == 3;
            const extents ce = batched ? extents{g.batch, g.m, g.n} : extents{g.m, g.n};
            strided_operand<T> a(operand_extents(g.a_rank, g.batch, g.m, g.k, g.ta), la);
            strided_operand<T> b(operand_extents(g.b_rank, g.batch, g.k, g.n, g.tb), lb);
            strided_operand<T> bias(extents{g.n}, lbias);
            strided_operand<T> fused(ce, lc);
            a.fill_random(rng);
            b.fill_random(rng);
            bias.fill_random(rng, -1.5, 1.5);
            if (g.beta == 0.0)
                fused.poison();
            else
                fused.sentinel_then_random(rng);
            const std::vector<double> c0 = fused.values();
            tensor<T> plain(ce);
            for (index_t i = 0; i < plain.numel(); ++i)
                plain[i] = T(c0[std::size_t(i)]);

            const ops::matmul_desc d{g.ta, g.tb, g.alpha, g.beta, e};
            ops::matmul(s, a.cref(), b.cref(), bias.cref(), fused.ref(), d);

            ops::matmul(s, a.cref(), b.cref(), plain.ref(),
                        ops::matmul_desc{g.ta, g.tb, g.alpha, g.beta});
            ops::bias_add(s, plain.cref(), bias.cref(), plain.ref());
            ops::unary_kind kind{};
            if (epilogue_activation(e, kind)) ops::unary(s, kind, plain.cref(), plain.ref());

            const std::vector<double> got = fused.values();
            const std::vector<double> composed(plain.data(), plain.data() + plain.numel());
            CHECK(mmfuse_test::max_rel_error(got, composed) <= mmfuse_test::tolerance<T>());
            CHECK(fused.outside_intact());

            // And against double loops, so that a shared mistake cannot hide.
            std::vector<double> ref(got.size());
            const auto av = a.cref(), bv = b.cref();
            const std::vector<double> bias_v = bias.values();
            for (index_t bi = 0; bi < (batched ? g.batch : 1); ++bi)
                for (index_t i = 0; i < g.m; ++i)
                    for (index_t j = 0; j < g.n; ++j) {
                        double acc = 0.0;
                        for (index_t q = 0; q < g.k; ++q)
                            acc += mmfuse_test::op_elem(av, g.ta, bi, i, q) * mmfuse_test::op_elem(bv, g.tb, bi, q, j);
                        const std::size_t o = std::size_t((bi * g.m + i) * g.n + j);
                        const double pre = g.alpha * acc + (g.beta == 0.0 ? 0.0 : g.beta * c0[o]) +
                                           bias_v[std::size_t(j)];
                        ref[o] = activation_in_double(e, pre);
                    }
            CHECK(mmfuse_test::max_rel_error(got, ref) <= 10 * mmfuse_test::tolerance<T>());
        }
}

TEST_CASE("matmul refuses an epilogue without a bias and a bias without an epilogue",
          "[ops][matmul][epilogue]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "vision.mlp.fc1");
    using Catch::Contains;
    tensor<float> a({3, 4}), b({4, 5}), c({3, 5}), bias({5}), bias_bad({4}), bias_2d({1, 5});
    const ops::matmul_desc relu{.epilogue = ops::matmul_epilogue::bias_relu};
    REQUIRE_NOTHROW(ops::matmul(cx, a.cref(), b.cref(), bias.cref(), c.ref(), relu));
    REQUIRE_THROWS_AS(ops::matmul(cx, a.cref(), b.cref(), c.ref(), relu), value_error);
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), b.cref(), c.ref(), relu),
                        Contains("vision.mlp.fc1") && Contains("bias_relu") &&
                            Contains("needs a bias"));
    REQUIRE_THROWS_AS(ops::matmul(cx, a.cref(), b.cref(), bias.cref(), c.ref(), {}), value_error);
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), b.cref(), bias.cref(), c.ref(), {}),
                        Contains("epilogue none takes no bias"));
    REQUIRE_THROWS_AS(ops::matmul(cx, a.cref(), b.cref(), bias_bad.cref(), c.ref(), relu),
                      shape_error);
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), b.cref(), bias_bad.cref(), c.ref(), relu),
                        Contains("matmul bias") && Contains("(5)") && Contains("(4)"));
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), b.cref(), bias_2d.cref(), c.ref(), relu),
                        Contains("matmul bias") && Contains("(1, 5)"));
    REQUIRE_THROWS_WITH(
        ops::matmul(cx, a.cref(), b.cref(), tensor_ref<const float>(nullptr, {5}), c.ref(), relu),
        Contains("matmul bias") && Contains("null"));
    // The product's own checks still run first.
    REQUIRE_THROWS_WITH(ops::matmul(cx, a.cref(), a.cref(), bias.cref(), c.ref(), relu),
                        Contains("inner dimension"));
}

TEST_CASE("the eigen device supports matmul epilogues in f32 and f64",
          "[ops][matmul][epilogue]") {
    auto& s = backend::default_stream();
    for (ops::matmul_epilogue e :
         {ops::matmul_epilogue::bias, ops::matmul_epilogue::bias_relu,
          ops::matmul_epilogue::bias_gelu_tanh}) {
        const ops::matmul_desc d{.epilogue = e};
        CHECK(s.device().supports(d, dtype::f32));
        CHECK(s.device().supports(d, dtype::f64));
        CHECK_FALSE(s.device().supports(d, dtype::bf16));
    }
}
