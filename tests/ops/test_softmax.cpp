// Softmax and softmax_backward on the Eigen reference backend: against double-precision
// loops, with masks (random, broadcast, fully masked rows), in non-contiguous layouts, and
// backward against central finite differences.

#include <catch2/catch.hpp>

#include <array>
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
                const double fd = mmfuse_test::central_difference(x[i], loss, h);
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
    REQUIRE_THROWS_AS(
        s.execute(mmfuse::ops::softmax_desc{1.0, 1}, in, std::span<const mmfuse::any_tensor_ref>{}),
        mmfuse::backend_error);
}

// ---- two masks and the causal rule -------------------------------------------------------

namespace {

/// Row-major multi-index of flat position `i` in extents `e` (test-local, independent of the
/// library's walkers).
std::vector<index_t> unravel(const extents& e, index_t i) {
    std::vector<index_t> idx(std::size_t(e.rank()));
    for (int k = e.rank() - 1; k >= 0; --k) {
        idx[std::size_t(k)] = i % e[k];
        i /= e[k];
    }
    return idx;
}

/// Row-major flat position in `me` of the element of a mask of extents `me` that broadcasts
/// (NumPy rules) to index `idx` of the full extents: extent-1 axes read entry 0.
std::size_t broadcast_pos(const extents& me, const std::vector<index_t>& idx) {
    const std::size_t lead = idx.size() - std::size_t(me.rank());
    std::size_t pos = 0;
    for (int k = 0; k < me.rank(); ++k)
        pos = pos * std::size_t(me[k]) + std::size_t(me[k] == 1 ? 0 : idx[lead + std::size_t(k)]);
    return pos;
}

/// The dense keep-mask (1 = keep) over extents `e`: the AND of the given masks (`values` in
/// row-major order over their own extents, broadcast to e) and, when `causal`, of
/// j <= i + offset for i, j the indices along axes -2, -1.
std::vector<double> dense_keep(const extents& e, const std::vector<extents>& mask_extents,
                               const std::vector<std::vector<double>>& mask_values, bool causal,
                               index_t offset) {
    std::vector<double> keep(std::size_t(e.numel()), 1.0);
    for (index_t i = 0; i < e.numel(); ++i) {
        const auto idx = unravel(e, i);
        for (std::size_t m = 0; m < mask_extents.size(); ++m)
            if (mask_values[m][broadcast_pos(mask_extents[m], idx)] == 0.0)
                keep[std::size_t(i)] = 0.0;
        if (causal) {
            const double q = double(idx[idx.size() - 2]), k = double(idx.back());
            if (k > q + double(offset)) keep[std::size_t(i)] = 0.0;
        }
    }
    return keep;
}

}  // namespace

TEMPLATE_TEST_CASE("softmax with two broadcast masks ANDed, in every layout", "[ops][softmax]",
                   float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(7);
    const index_t B = 2, H = 3, Lq = 4, Lk = 7;
    const extents e{B, H, Lq, Lk};
    // Key padding (B, 1, 1, Lk), an attention mask (Lq, Lk) and a full-shape mask.
    const std::vector<extents> kinds{{B, 1, 1, Lk}, {Lq, Lk}, e};
    for (std::size_t a = 0; a < kinds.size(); ++a)
        for (std::size_t b = 0; b < kinds.size(); ++b)
            for (layout l : mmfuse_test::uniform_layouts) {
                CAPTURE(kinds[a].to_string(), kinds[b].to_string(), mmfuse_test::layout_name(l));
                strided_operand<TestType> x(e, l), y(e, l);
                strided_operand<bool> m1(kinds[a], l), m2(kinds[b], l);
                x.assign(uniform_values(rng, e.numel(), -3.0, 3.0));
                auto v1 = bernoulli_values(rng, kinds[a].numel(), 0.7);
                auto v2 = bernoulli_values(rng, kinds[b].numel(), 0.7);
                v1[0] = 1.0;
                v2[0] = 1.0;
                if (b == 1)  // query row 2 forbidden everywhere: fully masked rows
                    for (index_t k = 0; k < Lk; ++k)
                        v2[std::size_t(2 * Lk + k)] = 0.0;
                m1.assign(v1);
                m2.assign(v2);
                mmfuse::ops::softmax(s, x.cref(), m1.cref(), m2.cref(), y.ref(), {.scale = 0.6});
                const auto keep = dense_keep(e, {kinds[a], kinds[b]}, {v1, v2}, false, 0);
                const auto ref = ref_softmax(x.values(), keep, Lk, 0.6);
                const auto got = y.values();
                CHECK(mmfuse_test::max_rel_error(got, ref) <= mmfuse_test::tolerance<TestType>());
                for (std::size_t i = 0; i < got.size(); ++i)
                    if (keep[i] == 0.0) REQUIRE(got[i] == 0.0);  // exact zeros, never NaN
                CHECK(y.outside_intact());

                // Either mask alone through the general form (the other absent: `{}`).
                y.poison();
                mmfuse::ops::softmax<TestType>(s, x.cref(), {}, m2.cref(), y.ref(), {.scale = 0.6});
                const auto ref2 =
                    ref_softmax(x.values(), dense_keep(e, {kinds[b]}, {v2}, false, 0), Lk, 0.6);
                CHECK(mmfuse_test::max_rel_error(y.values(), ref2) <=
                      mmfuse_test::tolerance<TestType>());
                y.poison();
                mmfuse::ops::softmax<TestType>(s, x.cref(), m1.cref(), {}, y.ref());
                const auto ref1 =
                    ref_softmax(x.values(), dense_keep(e, {kinds[a]}, {v1}, false, 0), Lk, 1.0);
                CHECK(mmfuse_test::max_rel_error(y.values(), ref1) <=
                      mmfuse_test::tolerance<TestType>());
            }
}

TEMPLATE_TEST_CASE("causal softmax: offsets, Lq != N, every layout", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(8);
    constexpr index_t big = std::numeric_limits<index_t>::max();
    for (const extents& e : {extents{5, 8}, extents{2, 7, 4}, extents{2, 3, 6, 6}, extents{1, 9}})
        for (index_t offset : {index_t(-1), index_t(0), index_t(2), big, -big})
            for (layout l : mmfuse_test::uniform_layouts) {
                CAPTURE(e.to_string(), offset, mmfuse_test::layout_name(l));
                strided_operand<TestType> x(e, l), y(e, l);
                x.assign(uniform_values(rng, e.numel(), -3.0, 3.0));
                mmfuse::ops::softmax(s, x.cref(), y.ref(),
                                     {.scale = 0.9, .causal = true, .causal_offset = offset});
                const auto keep = dense_keep(e, {}, {}, true, offset);
                const auto ref = ref_softmax(x.values(), keep, e[-1], 0.9);
                const auto got = y.values();
                CHECK(mmfuse_test::max_rel_error(got, ref) <= mmfuse_test::tolerance<TestType>());
                for (std::size_t i = 0; i < got.size(); ++i)
                    if (keep[i] == 0.0) REQUIRE(got[i] == 0.0);
                CHECK(y.outside_intact());
            }
}

TEMPLATE_TEST_CASE("causal softmax combined with one and two masks", "[ops][softmax]", float,
                   double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(9);
    const index_t B = 2, H = 2, Lq = 5, Lk = 6;
    const extents e{B, H, Lq, Lk}, kpe{B, 1, 1, Lk}, ame{Lq, Lk};
    for (index_t offset : {index_t(-1), index_t(0), index_t(2)})
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(offset, mmfuse_test::layout_name(l));
            const mmfuse::ops::softmax_options o{
                .scale = 1.3, .causal = true, .causal_offset = offset};
            strided_operand<TestType> x(e, l), y(e, l);
            strided_operand<bool> kp(kpe, l), am(ame, l);
            x.assign(uniform_values(rng, e.numel(), -3.0, 3.0));
            auto kv = bernoulli_values(rng, kpe.numel(), 0.7);
            const auto av = bernoulli_values(rng, ame.numel(), 0.7);
            for (index_t k = 0; k < Lk; ++k)
                kv[std::size_t(Lk + k)] = k == Lk - 1 ? 1.0 : 0.0;  // batch 1: only the last key
            kp.assign(kv);
            am.assign(av);

            mmfuse::ops::softmax(s, x.cref(), kp.cref(), am.cref(), y.ref(), o);
            const auto keep2 = dense_keep(e, {kpe, ame}, {kv, av}, true, offset);
            const auto got2 = y.values();
            CHECK(mmfuse_test::max_rel_error(got2, ref_softmax(x.values(), keep2, Lk, 1.3)) <=
                  mmfuse_test::tolerance<TestType>());
            for (std::size_t i = 0; i < got2.size(); ++i)
                if (keep2[i] == 0.0) REQUIRE(got2[i] == 0.0);

            y.poison();
            mmfuse::ops::softmax(s, x.cref(), kp.cref(), y.ref(), o);  // one mask + options
            const auto keep1 = dense_keep(e, {kpe}, {kv}, true, offset);
            const auto got1 = y.values();
            CHECK(mmfuse_test::max_rel_error(got1, ref_softmax(x.values(), keep1, Lk, 1.3)) <=
                  mmfuse_test::tolerance<TestType>());
            // Batch 1 keeps only key Lk-1, which the causal rule forbids to queries
            // i < Lk - 1 - offset: those rows are entirely zero.
            for (index_t q = 0; q < Lq; ++q)
                if (Lk - 1 > q + offset)
                    for (index_t k = 0; k < Lk; ++k)
                        REQUIRE(got1[std::size_t(((1 * H + 1) * Lq + q) * Lk + k)] == 0.0);
            CHECK(y.outside_intact());
        }
}

TEST_CASE(
    "causal two-mask softmax: backward agrees with central differences, zero gradient "
    "on fully masked rows",
    "[ops][softmax][gradcheck]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(10);
    const index_t B = 2, Lq = 4, Lk = 5;
    const extents e{B, Lq, Lk}, kpe{B, 1, Lk}, ame{Lq, Lk};
    for (index_t offset : {index_t(-1), index_t(0), index_t(2)}) {
        CAPTURE(offset);
        const mmfuse::ops::softmax_options o{.scale = 0.8, .causal = true, .causal_offset = offset};
        const index_t total = e.numel();
        mmfuse::tensor<double> x = mmfuse_test::random_tensor<double>(e, rng, -2.0, 2.0);
        mmfuse::tensor<double> w = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
        mmfuse::tensor<bool> kp(kpe), am(ame);
        std::vector<double> kv(std::size_t(kpe.numel())), av(std::size_t(ame.numel()));
        for (index_t i = 0; i < kpe.numel(); ++i)
            kp[i] = (kv[std::size_t(i)] = (i == 0 || rng() % 4 != 0) ? 1.0 : 0.0) != 0.0;
        for (index_t i = 0; i < ame.numel(); ++i)  // query row 1 fully forbidden
            am[i] = (av[std::size_t(i)] = (i / Lk != 1 && rng() % 5 != 0) ? 1.0 : 0.0) != 0.0;
        const auto keep = dense_keep(e, {kpe, ame}, {kv, av}, true, offset);
        mmfuse::tensor<double> y(e), dx(e);
        const auto loss = [&] {
            mmfuse::ops::softmax(s, x.cref(), kp.cref(), am.cref(), y.ref(), o);
            double l = 0.0;
            for (index_t i = 0; i < total; ++i)
                l += w[i] * y[i];
            return l;
        };
        loss();
        mmfuse_test::poison(dx);
        mmfuse::ops::softmax_backward(s, y.cref(), w.cref(), dx.ref(), o.scale);
        const double h = 1e-6;
        double worst = 0.0;
        for (index_t i = 0; i < total; ++i) {
            const double fd = mmfuse_test::central_difference(x[i], loss, h);
            worst = std::max(worst, std::abs(fd - dx[i]) / std::max(1.0, std::abs(fd)));
            if (keep[std::size_t(i)] == 0.0) REQUIRE(dx[i] == 0.0);  // masked: zero gradient
        }
        CHECK(worst <= 1e-7);
        for (index_t b = 0; b < B; ++b)  // query row 1 is fully masked: zeros, zero gradient
            for (index_t k = 0; k < Lk; ++k) {
                REQUIRE(y(b, 1, k) == 0.0);
                REQUIRE(dx(b, 1, k) == 0.0);
            }
    }
}

TEST_CASE("softmax with two masks / causal rejects bad operands", "[ops][softmax]") {
    auto& s = mmfuse::backend::default_stream();
    const mmfuse::ops::op_context cx{s, "fusion.attn"};
    mmfuse::tensor<float> x({2, 5}), y({2, 5}), x1({5}), y1({5});
    mmfuse::tensor<bool> ok_mask({1, 5}), bad_mask({3, 5});
    using Catch::Contains;

    REQUIRE_THROWS_AS(mmfuse::ops::softmax(cx, x1.cref(), y1.ref(), {.causal = true}),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(mmfuse::ops::softmax(cx, x1.cref(), y1.ref(), {.causal = true}),
                        Contains("fusion.attn") && Contains("causal") && Contains("rank 2 to") &&
                            Contains("rank 1, shape (5)"));
    REQUIRE_NOTHROW(mmfuse::ops::softmax(cx, x1.cref(), y1.ref(), {.causal = false}));
    REQUIRE_THROWS_AS(mmfuse::ops::softmax(cx, x.cref(), ok_mask.cref(), bad_mask.cref(), y.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(
        mmfuse::ops::softmax(cx, x.cref(), ok_mask.cref(), bad_mask.cref(), y.ref()),
        Contains("softmax mask2") && Contains("broadcastable to (2, 5)") && Contains("(3, 5)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::softmax(cx, x.cref(), bad_mask.cref(), ok_mask.cref(), y.ref()),
        Contains("softmax mask") && Contains("broadcastable to (2, 5)") && Contains("(3, 5)"));
    // A null mask with extents is a mistake, not "absent" (only `{}` is).
    REQUIRE_THROWS_WITH(mmfuse::ops::softmax(cx, x.cref(), ok_mask.cref(),
                                             tensor_ref<const bool>(nullptr, {2, 5}), y.ref()),
                        Contains("softmax mask2") && Contains("null view (2, 5)"));
    REQUIRE_THROWS_WITH(mmfuse::ops::softmax(cx, x.cref(), tensor_ref<const bool>{}, y.ref(),
                                             mmfuse::ops::softmax_options{}),
                        Contains("softmax mask") && Contains("null view"));

    // Direct stream calls the kernel must refuse before reading anything.
    const std::array<mmfuse::any_tensor_ref, 1> out{y.ref()};
    const std::array<mmfuse::any_tensor_ref, 4> three{x.cref(), ok_mask.cref().expand({2, 5}),
                                                      ok_mask.cref().expand({2, 5}),
                                                      ok_mask.cref().expand({2, 5})};
    mmfuse::ops::softmax_desc d3{};
    d3.masks = 3;
    REQUIRE_THROWS_AS(s.execute(d3, three, out), mmfuse::backend_error);
    const std::array<mmfuse::any_tensor_ref, 2> unexpanded{x.cref(), ok_mask.cref()};
    mmfuse::ops::softmax_desc d1{};
    d1.masks = 1;
    REQUIRE_THROWS_AS(s.execute(d1, unexpanded, out), mmfuse::backend_error);
    const std::array<mmfuse::any_tensor_ref, 1> rank1{x1.cref()};
    const std::array<mmfuse::any_tensor_ref, 1> out1{y1.ref()};
    mmfuse::ops::softmax_desc dc{};
    dc.causal = true;
    REQUIRE_THROWS_AS(s.execute(dc, rank1, out1), mmfuse::backend_error);
    const std::array<mmfuse::any_tensor_ref, 1> two_by_five{x.cref()};
    REQUIRE_THROWS_AS(s.execute(mmfuse::ops::softmax_desc{}, two_by_five, out1),
                      mmfuse::backend_error);  // output extents differ from the input's
}
