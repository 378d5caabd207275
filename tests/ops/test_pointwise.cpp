// Point-wise ops on the Eigen reference backend: activations and their derivatives against
// formulas evaluated in double in this file and against central finite differences, with
// strided / broadcast / in-place operands, saturation for large |x|, bias add, and the
// front-ends' errors.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/ops/activation_math.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;
using ops::unary_kind;

namespace {

constexpr std::array<unary_kind, 6> all_kinds{unary_kind::relu,      unary_kind::gelu_erf,
                                              unary_kind::gelu_tanh, unary_kind::silu,
                                              unary_kind::sigmoid,   unary_kind::tanh};

const double pi = std::acos(-1.0);

/// f(x), written from the definitions (PyTorch docs), in double.
double ref_value(unary_kind k, double x) {
    switch (k) {
        case unary_kind::relu:
            return x > 0.0 ? x : 0.0;
        case unary_kind::gelu_erf:
            return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
        case unary_kind::gelu_tanh:
            return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
        case unary_kind::silu:
            return x / (1.0 + std::exp(-x));
        case unary_kind::sigmoid:
            return 1.0 / (1.0 + std::exp(-x));
        case unary_kind::tanh:
            return std::tanh(x);
    }
    return 0.0;
}

/// f'(x) differentiated by hand, in double.
double ref_derivative(unary_kind k, double x) {
    switch (k) {
        case unary_kind::relu:
            return x > 0.0 ? 1.0 : 0.0;
        case unary_kind::gelu_erf:
            return 0.5 * std::erfc(-x / std::sqrt(2.0)) +
                   x * std::exp(-x * x / 2.0) / std::sqrt(2.0 * pi);
        case unary_kind::gelu_tanh: {
            const double c = std::sqrt(2.0 / pi);
            const double sech = 1.0 / std::cosh(c * (x + 0.044715 * x * x * x));
            return 0.5 * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x))) +
                   0.5 * x * sech * sech * c * (1.0 + 3.0 * 0.044715 * x * x);
        }
        case unary_kind::silu: {
            const double s = 1.0 / (1.0 + std::exp(-x));
            return s + x * s * (1.0 - s);
        }
        case unary_kind::sigmoid: {
            const double e = std::exp(-x);
            return e / ((1.0 + e) * (1.0 + e));
        }
        case unary_kind::tanh: {
            const double ch = std::cosh(x);
            return 1.0 / (ch * ch);
        }
    }
    return 0.0;
}

const std::array<extents, 7> shapes{extents{},          extents{7},    extents{3, 5},
                                    extents{2, 3, 17},  extents{0, 4}, extents{4, 0, 3},
                                    extents{2, 1, 3, 2}};

}  // namespace

TEMPLATE_TEST_CASE("unary and unary_backward match the formulas for every layout",
                   "[ops][pointwise]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(201);
    auto& s = backend::default_stream();
    int counter = 0;
    for (const unary_kind kind : all_kinds)
        for (const extents& e : shapes)
            for (int rep = 0; rep < 5; ++rep) {
                const int combo = counter++;
                const layout lx = pick(input_layouts, combo);
                const layout ld = pick(input_layouts, combo / 5);
                const layout ly = pick(output_layouts, combo / 3);
                strided_operand<T> x(e, lx), dy(e, ld), y(e, ly), dx(e, ly);
                x.fill_random(rng, -4.0, 4.0);
                dy.fill_random(rng);
                y.poison();
                dx.poison();
                ops::unary(s, kind, x.cref(), y.ref());
                ops::unary_backward(s, kind, x.cref(), dy.cref(), dx.ref());

                const auto xs = x.values(), dys = dy.values();
                std::vector<double> ry(xs.size()), rdx(xs.size());
                for (std::size_t i = 0; i < xs.size(); ++i) {
                    ry[i] = ref_value(kind, xs[i]);
                    rdx[i] = ref_derivative(kind, xs[i]) * dys[i];
                }
                INFO(ops::unary_name(kind) << " x " << x.cref().describe() << " ("
                                           << layout_name(lx) << "), y " << y.cref().describe());
                REQUIRE(max_rel_error(y.values(), ry) <= mmfuse_test::tolerance<T>());
                REQUIRE(max_rel_error(dx.values(), rdx) <= mmfuse_test::tolerance<T>());
                REQUIRE(y.outside_intact());
                REQUIRE(dx.outside_intact());
            }
}

TEMPLATE_TEST_CASE("unary and unary_backward work in place", "[ops][pointwise]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(202);
    auto& s = backend::default_stream();
    for (const unary_kind kind : all_kinds)
        for (const layout l : output_layouts) {
            // y = f(x) into x's own memory.
            strided_operand<T> x({3, 4, 5}, l);
            x.fill_random(rng, -3.0, 3.0);
            const auto xs = x.values();
            ops::unary(s, kind, x.cref(), x.ref());
            std::vector<double> ry(xs.size());
            for (std::size_t i = 0; i < xs.size(); ++i)
                ry[i] = ref_value(kind, xs[i]);
            INFO(ops::unary_name(kind) << " " << layout_name(l));
            REQUIRE(max_rel_error(x.values(), ry) <= mmfuse_test::tolerance<T>());
            // dx = f'(x) dy into dy's memory, then into x's memory.
            strided_operand<T> x2({3, 4, 5}, l), g({3, 4, 5}, l);
            x2.fill_random(rng, -3.0, 3.0);
            g.fill_random(rng);
            const auto x2s = x2.values(), gs = g.values();
            std::vector<double> rdx(gs.size());
            for (std::size_t i = 0; i < gs.size(); ++i)
                rdx[i] = ref_derivative(kind, x2s[i]) * gs[i];
            ops::unary_backward(s, kind, x2.cref(), g.cref(), g.ref());
            REQUIRE(max_rel_error(g.values(), rdx) <= mmfuse_test::tolerance<T>());
            ops::unary_backward(s, kind, x2.cref(), g.cref(), x2.ref());
            for (std::size_t i = 0; i < gs.size(); ++i)
                rdx[i] = ref_derivative(kind, x2s[i]) * rdx[i];
            REQUIRE(max_rel_error(x2.values(), rdx) <= 10 * mmfuse_test::tolerance<T>());
        }
}

TEST_CASE("unary_backward matches central finite differences of unary in double",
          "[ops][pointwise][gradcheck]") {
    auto rng = mmfuse_test::make_rng(203);
    auto& s = backend::default_stream();
    const double h = 1e-6;
    for (const unary_kind kind : all_kinds) {
        auto x = mmfuse_test::random_tensor<double>({4, 25}, rng, -3.0, 3.0);
        // Keep away from relu's kink, where the derivative is a convention.
        for (index_t i = 0; i < x.numel(); ++i)
            if (std::abs(x[i]) < 1e-2) x[i] = 0.5;
        auto dy = mmfuse_test::random_tensor<double>({4, 25}, rng);
        tensor<double> xp({4, 25}), xm({4, 25}), yp({4, 25}), ym({4, 25}), dx({4, 25});
        for (index_t i = 0; i < x.numel(); ++i) {
            xp[i] = x[i] + h;
            xm[i] = x[i] - h;
        }
        mmfuse_test::poison(dx);
        ops::unary(s, kind, xp.cref(), yp.ref());
        ops::unary(s, kind, xm.cref(), ym.ref());
        ops::unary_backward(s, kind, x.cref(), dy.cref(), dx.ref());
        std::vector<double> fd(std::size_t(x.numel()));
        for (index_t i = 0; i < x.numel(); ++i)
            fd[std::size_t(i)] = (yp[i] - ym[i]) / (2 * h) * dy[i];
        INFO(ops::unary_name(kind));
        REQUIRE(max_rel_error(dx, fd) <= 1e-8);
    }
}

TEMPLATE_TEST_CASE("activations saturate without NaN for large |x|", "[ops][pointwise]", float,
                   double) {
    using T = TestType;
    auto& s = backend::default_stream();
    const T big = std::is_same_v<T, float> ? T(100) : T(1000);     // exp(big) overflows
    const T huge = std::is_same_v<T, float> ? T(1e20) : T(1e200);  // x^2 overflows
    tensor<T> x({4}), y({4}), dy({4}), dx({4});
    x[0] = big;
    x[1] = -big;
    x[2] = huge;
    x[3] = -huge;
    dy.fill(T(1));
    for (const unary_kind kind : all_kinds) {
        mmfuse_test::poison(y);
        mmfuse_test::poison(dx);
        ops::unary(s, kind, x.cref(), y.ref());
        ops::unary_backward(s, kind, x.cref(), dy.cref(), dx.ref());
        INFO(ops::unary_name(kind));
        for (index_t i = 0; i < 4; ++i) {
            REQUIRE(std::isfinite(double(y[i])));
            REQUIRE(std::isfinite(double(dx[i])));
        }
        const bool odd = kind == unary_kind::tanh || kind == unary_kind::sigmoid;
        // For x -> +inf: f(x) ~ x (relu, gelu, silu) or 1, f'(x) -> 1 or 0; x -> -inf: 0 or -1.
        for (const index_t i : {index_t(0), index_t(2)}) {
            REQUIRE(double(y[i]) == (odd ? 1.0 : double(x[i])));
            REQUIRE(double(dx[i]) == (odd ? 0.0 : 1.0));
        }
        // (silu(-100) in float is a subnormal -3.7e-42, not 0.)
        for (const index_t i : {index_t(1), index_t(3)}) {
            REQUIRE(std::abs(double(y[i]) - (kind == unary_kind::tanh ? -1.0 : 0.0)) <= 1e-30);
            REQUIRE(std::abs(double(dx[i])) <= 1e-30);
        }
    }
}

TEST_CASE("activation scalar formulas: PyTorch conventions at 0 and NaN", "[ops][pointwise]") {
    using namespace ops::act;
    REQUIRE(derivative<unary_kind::relu>(0.0) == 0.0);
    REQUIRE(derivative<unary_kind::relu>(1e-300) == 1.0);
    REQUIRE(std::isnan(value<unary_kind::relu>(std::numeric_limits<double>::quiet_NaN())));
    REQUIRE(value<unary_kind::gelu_erf>(0.0) == 0.0);
    REQUIRE(derivative<unary_kind::gelu_erf>(0.0) == 0.5);
    REQUIRE(derivative<unary_kind::gelu_tanh>(0.0) == 0.5);
    REQUIRE(derivative<unary_kind::silu>(0.0) == 0.5);
    REQUIRE(derivative<unary_kind::sigmoid>(0.0) == 0.25);
    REQUIRE(derivative<unary_kind::tanh>(0.0) == 1.0);
    // Run-time-kind forms agree with the compile-time ones.
    for (const unary_kind k : all_kinds)
        for (const double x : {-2.5, -0.1, 0.3, 4.0}) {
            REQUIRE(value(k, x) == Approx(ref_value(k, x)).epsilon(1e-14).margin(1e-300));
            REQUIRE(derivative(k, x) == Approx(ref_derivative(k, x)).epsilon(1e-13));
        }
}

TEMPLATE_TEST_CASE("bias_add matches a double loop for every layout and in place",
                   "[ops][pointwise]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(204);
    auto& s = backend::default_stream();
    const std::array<extents, 6> xshapes{extents{5},       extents{3, 4}, extents{2, 3, 6},
                                         extents{2, 0, 3}, extents{0},    extents{2, 2, 1, 3}};
    int counter = 0;
    for (const extents& e : xshapes)
        for (int rep = 0; rep < 8; ++rep) {
            const int combo = counter++;
            const layout lx = pick(input_layouts, combo);
            const layout lb = pick(input_layouts, combo / 2);
            const layout ly = pick(output_layouts, combo / 3);
            const bool in_place = rep == 7;
            strided_operand<T> x(e, in_place ? ly : lx), bias({e[-1]}, lb), y(e, ly);
            x.fill_random(rng);
            bias.fill_random(rng);
            y.poison();
            const auto xs = x.values(), bs = bias.values();
            const tensor_ref<T> out = in_place ? x.ref() : y.ref();
            ops::bias_add(s, x.cref(), bias.cref(), out);
            std::vector<double> ref(xs.size());
            const std::size_t n = std::size_t(e[-1]);
            for (std::size_t i = 0; i < xs.size(); ++i)
                ref[i] = xs[i] + bs[i % n];
            INFO("x " << x.cref().describe() << " bias " << bias.cref().describe() << " y "
                      << out.describe() << (in_place ? " in place" : ""));
            REQUIRE(max_rel_error(mmfuse_test::to_vector(out), ref) <= mmfuse_test::tolerance<T>());
            REQUIRE((in_place ? x : y).outside_intact());
        }
}

TEST_CASE("point-wise front-ends reject bad operands, naming the module and both shapes",
          "[ops][pointwise]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "fusion.gate");
    using Catch::Contains;
    tensor<double> x({2, 3, 4}), b4({4}), b5({5}), y({2, 3, 4}), ybad({2, 4, 3}), scalar(extents{});
    REQUIRE_THROWS_AS(ops::bias_add(cx, x.cref(), b5.cref(), y.ref()), shape_error);
    REQUIRE_THROWS_WITH(ops::bias_add(cx, x.cref(), b5.cref(), y.ref()),
                        Contains("fusion.gate") && Contains("bias_add bias") && Contains("(4)") &&
                            Contains("(5)") && Contains("(2, 3, 4)"));
    REQUIRE_THROWS_WITH(
        ops::bias_add(cx, x.cref(), b4.cref(), ybad.ref()),
        Contains("bias_add output y") && Contains("(2, 3, 4)") && Contains("(2, 4, 3)"));
    REQUIRE_THROWS_WITH(ops::bias_add(cx, x.cref(), x.cref(), y.ref()),
                        Contains("bias_add bias") && Contains("rank 1"));
    REQUIRE_THROWS_WITH(ops::bias_add(cx, scalar.cref(), b4.cref(), scalar.ref()),
                        Contains("bias_add input x") && Contains("rank 1 to 6"));
    const tensor_ref<const double> null_x(nullptr, {2, 3, 4});
    REQUIRE_THROWS_WITH(ops::bias_add(cx, null_x, b4.cref(), y.ref()), Contains("null"));

    REQUIRE_THROWS_WITH(ops::unary(cx, unary_kind::gelu_erf, x.cref(), ybad.ref()),
                        Contains("fusion.gate") && Contains("unary output y") &&
                            Contains("(2, 3, 4)") && Contains("(2, 4, 3)"));
    REQUIRE_THROWS_WITH(ops::unary(cx, unary_kind::relu, null_x, y.ref()), Contains("null"));
    REQUIRE_THROWS_WITH(ops::unary_backward(cx, unary_kind::silu, x.cref(), ybad.cref(), y.ref()),
                        Contains("unary_backward gradient dy") && Contains("(2, 4, 3)"));
    REQUIRE_THROWS_WITH(
        ops::unary_backward(cx, unary_kind::silu, x.cref(), y.cref(), ybad.ref()),
        Contains("unary_backward output dx") && Contains("(2, 3, 4)") && Contains("(2, 4, 3)"));
    // Nothing was written by a rejected call.
    for (index_t i = 0; i < y.numel(); ++i)
        REQUIRE(y[i] == 0.0);
}
