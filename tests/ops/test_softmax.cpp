// Softmax and softmax_backward on the Eigen reference backend: against double-precision
// loops, with masks (random, broadcast, fully masked rows), in non-contiguous layouts, and
// backward against central finite differences.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor_ref;
using mmfuse_test::bernoulli_values;
using mmfuse_test::layout;
using mmfuse_test::strided_operand;
using mmfuse_test::uniform_values;

namespace {

/// Reference softmax(scale * x) over rows of length n of row-major `x`; entries with
/// mask == 0 excluded (`mask` empty: none); a row with nothing kept is all zeros.
std::vector<double> ref_softmax(const std::vector<double>& x, const std::vector<double>& mask,
                                index_t n, double scale) {
    std::vector<double> y(x.size(), 0.0);
    for (std::size_t r = 0; r < x.size(); r += std::size_t(n)) {
        const auto kept = [&](std::size_t j) { return mask.empty() || mask[r + j] != 0.0; };
        double mx = -std::numeric_limits<double>::infinity();
        bool any = false;
        for (std::size_t j = 0; j < std::size_t(n); ++j)
            if (kept(j)) {
                any = true;
                mx = std::max(mx, scale * x[r + j]);
            }
        if (!any) continue;
        double sum = 0.0;
        for (std::size_t j = 0; j < std::size_t(n); ++j)
            if (kept(j)) sum += (y[r + j] = std::exp(scale * x[r + j] - mx));
        for (std::size_t j = 0; j < std::size_t(n); ++j)
            y[r + j] /= sum;
    }
    return y;
}

/// Reference backward by the full Jacobian of softmax(scale * x):
/// dx_i = sum_j dy_j * scale * y_j * (delta_ij - y_i).
std::vector<double> ref_softmax_backward(const std::vector<double>& y,
                                         const std::vector<double>& dy, index_t n, double scale) {
    std::vector<double> dx(y.size(), 0.0);
    for (std::size_t r = 0; r < y.size(); r += std::size_t(n))
        for (std::size_t i = 0; i < std::size_t(n); ++i)
            for (std::size_t j = 0; j < std::size_t(n); ++j)
                dx[r + i] += dy[r + j] * scale * y[r + j] * ((i == j ? 1.0 : 0.0) - y[r + i]);
    return dx;
}

const std::vector<extents> shapes = {{7}, {3, 5}, {2, 3, 17}, {2, 1, 4, 33}, {4, 1}};

}  // namespace

TEMPLATE_TEST_CASE("softmax matches a double-precision loop in every layout", "[ops][softmax]",
                   float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(1);
    for (const extents& e : shapes)
        for (layout l : mmfuse_test::uniform_layouts)
            for (double scale : {1.0, 0.125, -0.7}) {
                CAPTURE(e.to_string(), mmfuse_test::layout_name(l), scale);
                strided_operand<TestType> x(e, l), y(e, l);
                x.assign(uniform_values(rng, e.numel(), -4.0, 4.0));
                mmfuse::ops::softmax(s, x.cref(), y.ref(), scale);
                const auto ref = ref_softmax(x.values(), {}, e[-1], scale);
                CHECK(mmfuse_test::max_rel_error(y.values(), ref) <=
                      mmfuse_test::tolerance<TestType>());
                CHECK(y.outside_intact());
            }
}

TEMPLATE_TEST_CASE("softmax is stable for large logits and works in place", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(2);
    mmfuse::tensor<TestType> x({3, 9});
    const auto v =
        uniform_values(rng, 27, 500.0, 900.0);  // exp() would overflow without max-subtraction
    for (index_t i = 0; i < 27; ++i)
        x[i] = TestType(v[std::size_t(i)]);
    std::vector<double> xv(x.data(), x.data() + 27);
    const auto ref = ref_softmax(xv, {}, 9, 1.0);
    mmfuse::ops::softmax(s, x.cref(), x.ref());  // y is the same memory as x
    CHECK(mmfuse_test::max_rel_error(x, ref) <= mmfuse_test::tolerance<TestType>());
}

TEMPLATE_TEST_CASE("masked softmax: random masks and fully masked rows", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(3);
    for (const extents& e : {extents{4, 9}, extents{2, 3, 17}, extents{5, 2}})
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(e.to_string(), mmfuse_test::layout_name(l));
            const index_t n = e[-1];
            strided_operand<TestType> x(e, l), y(e, l);
            strided_operand<bool> m(e, l);
            x.assign(uniform_values(rng, e.numel(), -3.0, 3.0));
            auto mv = bernoulli_values(rng, e.numel(), 0.6);
            for (index_t j = 0; j < n; ++j)
                mv[std::size_t(j)] = 0.0;  // row 0 fully masked
            m.assign(mv);
            mmfuse::ops::softmax(s, x.cref(), m.cref(), y.ref(), 0.5);
            const auto ref = ref_softmax(x.values(), mv, n, 0.5);
            const auto got = y.values();
            CHECK(mmfuse_test::max_rel_error(got, ref) <= mmfuse_test::tolerance<TestType>());
            for (std::size_t i = 0; i < got.size(); ++i)
                if (mv[i] == 0.0) REQUIRE(got[i] == 0.0);  // exact zeros, never NaN
        }
}

TEMPLATE_TEST_CASE("masked softmax: a broadcast key-padding mask", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(4);
    const index_t B = 3, Lq = 5, Lk = 7;
    const extents e{B, Lq, Lk};
    mmfuse::tensor<TestType> x = mmfuse_test::random_tensor<TestType>(e, rng, -2.0, 2.0);
    // Key-padding mask (B, 1, Lk): batch 0 keeps 4 keys, batch 1 none, batch 2 all.
    mmfuse::tensor<bool> kp({B, 1, Lk});
    for (index_t k = 0; k < Lk; ++k) {
        kp(0, 0, k) = k < 4;
        kp(1, 0, k) = false;
        kp(2, 0, k) = true;
    }
    std::vector<double> dense(std::size_t(e.numel()));
    for (index_t b = 0; b < B; ++b)
        for (index_t q = 0; q < Lq; ++q)
            for (index_t k = 0; k < Lk; ++k)
                dense[std::size_t((b * Lq + q) * Lk + k)] = kp(b, 0, k) ? 1.0 : 0.0;
    const auto ref =
        ref_softmax(std::vector<double>(x.data(), x.data() + e.numel()), dense, Lk, 0.8);

    mmfuse::tensor<TestType> y1(e), y2(e);
    mmfuse_test::poison(y1);
    mmfuse_test::poison(y2);
    mmfuse::ops::softmax(s, x.cref(), kp.cref(), y1.ref(), 0.8);            // broadcast by op
    mmfuse::ops::softmax(s, x.cref(), kp.cref().expand(e), y2.ref(), 0.8);  // stride-0 view
    CHECK(mmfuse_test::max_rel_error(y1, ref) <= mmfuse_test::tolerance<TestType>());
    CHECK(mmfuse_test::max_rel_error(y2, ref) <= mmfuse_test::tolerance<TestType>());
    for (index_t q = 0; q < Lq; ++q)
        for (index_t k = 0; k < Lk; ++k)
            REQUIRE(y1(1, q, k) == TestType(0));
}

TEMPLATE_TEST_CASE("softmax_backward matches the Jacobian in every layout", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(5);
    for (const extents& e : shapes)
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(e.to_string(), mmfuse_test::layout_name(l));
            const index_t n = e[-1];
            auto mv = bernoulli_values(rng, e.numel(), 0.7);
            for (index_t j = 0; j < n; ++j)
                mv[std::size_t(j)] = 0.0;  // a fully masked row
            strided_operand<TestType> y(e, l), dy(e, l), dx(e, l);
            y.assign(ref_softmax(uniform_values(rng, e.numel(), -2.0, 2.0), mv, n, 1.0));
            dy.assign(uniform_values(rng, e.numel(), -1.0, 1.0));
            mmfuse::ops::softmax_backward(s, y.cref(), dy.cref(), dx.ref(), 1.5);
            const auto ref = ref_softmax_backward(y.values(), dy.values(), n, 1.5);
            const auto got = dx.values();
            CHECK(mmfuse_test::max_rel_error(got, ref) <= mmfuse_test::tolerance<TestType>());
            for (std::size_t i = 0; i < got.size(); ++i)
                if (mv[i] == 0.0) REQUIRE(got[i] == 0.0);  // masked / fully masked: zero gradient
            CHECK(dx.outside_intact());
        }
}

TEST_CASE("softmax_backward agrees with central differences", "[ops][softmax][gradcheck]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(6);
    for (const extents& e : {extents{3, 6}, extents{2, 2, 5}})
        for (bool masked : {false, true}) {
            CAPTURE(e.to_string(), masked);
            const index_t n = e[-1], total = e.numel();
            const double scale = 0.9;
            mmfuse::tensor<double> x = mmfuse_test::random_tensor<double>(e, rng, -2.0, 2.0);
            mmfuse::tensor<double> w = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
            mmfuse::tensor<bool> m(e);
            for (index_t i = 0; i < total; ++i)
                m[i] = !masked || (i >= n && rng() % 4 != 0);
            mmfuse::tensor<double> y(e), dx(e);
            const auto forward = [&] {
                if (masked)
                    mmfuse::ops::softmax(s, x.cref(), m.cref(), y.ref(), scale);
                else
                    mmfuse::ops::softmax(s, x.cref(), y.ref(), scale);
            };
            const auto loss = [&] {  // a random linear functional of the output
                forward();
                double l = 0.0;
                for (index_t i = 0; i < total; ++i)
                    l += w[i] * y[i];
                return l;
            };
            forward();
            mmfuse_test::poison(dx);
            mmfuse::ops::softmax_backward(s, y.cref(), w.cref(), dx.ref(), scale);
            const double h = 1e-6;
            double worst = 0.0;
            for (index_t i = 0; i < total; ++i) {
                const double x0 = x[i];
                x[i] = x0 + h;
                const double lp = loss();
                x[i] = x0 - h;
                const double lm = loss();
                x[i] = x0;
                const double fd = (lp - lm) / (2 * h);
                worst = std::max(worst, std::abs(fd - dx[i]) / std::max(1.0, std::abs(fd)));
                if (masked && i < n) REQUIRE(dx[i] == 0.0);  // fully masked row
            }
            CHECK(worst <= 1e-7);
        }
}

TEST_CASE("softmax rejects bad operands, naming module and shapes", "[ops][softmax]") {
    auto& s = mmfuse::backend::default_stream();
    const mmfuse::ops::op_context cx{s, "fusion.attn"};
    mmfuse::tensor<float> x({2, 5}), y({2, 4}), y_ok({2, 5});
    mmfuse::tensor<bool> bad_mask({3, 5});
    using Catch::Contains;

    REQUIRE_THROWS_AS(mmfuse::ops::softmax(cx, x.cref(), y.ref()), mmfuse::shape_error);
    REQUIRE_THROWS_WITH(mmfuse::ops::softmax(cx, x.cref(), y.ref()),
                        Contains("fusion.attn") && Contains("softmax output y") &&
                            Contains("(2, 5)") && Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::softmax(cx, x.cref(), bad_mask.cref(), y_ok.ref(), 1.0),
        Contains("softmax mask") && Contains("broadcastable to (2, 5)") && Contains("(3, 5)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::softmax_backward(cx, y_ok.cref(), y.cref(), y_ok.ref()),
        Contains("softmax_backward input dy") && Contains("(2, 5)") && Contains("(2, 4)"));
    float scalar = 0.0f;
    REQUIRE_THROWS_AS(mmfuse::ops::softmax(cx, tensor_ref<const float>(&scalar, extents{}),
                                           tensor_ref<float>(&scalar, extents{})),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(
        mmfuse::ops::softmax(cx, tensor_ref<const float>(nullptr, {2, 5}), y_ok.ref()),
        Contains("softmax input x") && Contains("null view (2, 5)"));

    // A direct stream call with the wrong operand count is refused, never read past the end.
    const std::array<mmfuse::any_tensor_ref, 1> in{x.cref()};
    REQUIRE_THROWS_AS(s.execute(mmfuse::ops::softmax_desc{1.0, true}, in,
                                std::span<const mmfuse::any_tensor_ref>{}),
                      mmfuse::backend_error);
}
