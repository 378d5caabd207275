// Philox fills (ops::fill_random) and the fused linear combination (ops::combine) on the
// Eigen reference backend: fills bit-identical to core fill_uniform / fill_normal from a
// generator at the same (seed, subsequence, offset), in strided outputs; combine against
// double loops with 1 to 4 inputs, broadcast inputs, in place (y == x0), with noise equal to
// fill_random's; and the front-ends' errors.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/random.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using mmfuse_test::layout;
using mmfuse_test::strided_operand;
using mmfuse_test::uniform_values;

namespace {

/// A random draw position: any seed and subsequence, an offset anywhere (also unaligned to
/// Philox's 4-word blocks).
ops::philox_draw random_draw(std::mt19937_64& rng) {
    return {rng(), rng() % 1000, rng() % 100000};
}

const std::vector<extents> fill_shapes = {{1}, {7}, {3, 5}, {2, 3, 9}, {4, 1, 3, 2}, {0, 3}};

}  // namespace

TEMPLATE_TEST_CASE("fill_random is bit-identical to the core fills at the same draw",
                   "[ops][random]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(401);
    int counter = 0;
    for (const extents& e : fill_shapes)
        for (ops::random_kind kind : {ops::random_kind::uniform, ops::random_kind::normal}) {
            const layout l = mmfuse_test::pick(mmfuse_test::output_layouts, counter++);
            const ops::philox_draw draw = random_draw(rng);
            const bool uniform = kind == ops::random_kind::uniform;
            const double a = uniform ? -2.5 : 0.75, b = uniform ? 4.0 : 1.5;
            CAPTURE(e.to_string(), mmfuse_test::layout_name(l), uniform, draw.seed,
                    draw.subsequence, draw.offset);
            strided_operand<T> y(e, l);
            y.poison();
            ops::fill_random(s, y.ref(), {kind, a, b, draw});

            tensor<T> ref(e);
            philox_generator gen(draw.seed, draw.subsequence, draw.offset);
            if (uniform)
                fill_uniform(gen, ref.ref(), a, b);
            else
                fill_normal(gen, ref.ref(), a, b);
            const std::vector<double> got = y.values();
            REQUIRE(got.size() == std::size_t(ref.numel()));
            for (std::size_t i = 0; i < got.size(); ++i) {
                INFO("element " << i);
                REQUIRE(got[i] == double(ref[index_t(i)]));  // bit-identical (no NaN either)
            }
            CHECK(y.outside_intact());
            // random_words states how far the core fill advanced.
            CHECK(gen.offset() ==
                  draw.offset + ops::random_words<T>(kind, std::uint64_t(e.numel())));
        }
}

TEMPLATE_TEST_CASE("fill_random depends on every part of the draw", "[ops][random]", float,
                   double) {
    // Plumbing: seed, subsequence and offset each change the numbers, and consecutive draws
    // taken with take_draw continue the generator's stream.
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(402);
    const extents e{6, 5};
    const ops::philox_draw base = random_draw(rng);
    const auto fill = [&](ops::philox_draw d) {
        tensor<T> y(e);
        mmfuse_test::poison(y);
        ops::fill_random(s, y.ref(), {ops::random_kind::uniform, 0.0, 1.0, d});
        return std::vector<double>(y.data(), y.data() + y.numel());
    };
    const auto ref = fill(base);
    CHECK(fill({base.seed + 1, base.subsequence, base.offset}) != ref);
    CHECK(fill({base.seed, base.subsequence + 1, base.offset}) != ref);
    CHECK(fill({base.seed, base.subsequence, base.offset + 1}) != ref);
    CHECK(fill(base) == ref);

    // Two fills with take_draw == one core fill of both, in sequence.
    philox_generator gen(base.seed, base.subsequence, base.offset);
    tensor<T> a(e), b(e), ra(e), rb(e);
    const auto words = ops::random_words<T>(ops::random_kind::normal, std::uint64_t(e.numel()));
    ops::fill_random(s, a.ref(), {ops::random_kind::normal, 0.0, 1.0, ops::take_draw(gen, words)});
    ops::fill_random(s, b.ref(), {ops::random_kind::normal, 0.0, 1.0, ops::take_draw(gen, words)});
    philox_generator core(base.seed, base.subsequence, base.offset);
    fill_normal(core, ra.ref(), 0.0, 1.0);
    fill_normal(core, rb.ref(), 0.0, 1.0);
    CHECK(gen.offset() == core.offset());
    for (index_t i = 0; i < a.numel(); ++i) {
        REQUIRE(a[i] == ra[i]);
        REQUIRE(b[i] == rb[i]);
    }
}

TEST_CASE("fill_random rejects bad parameters and outputs", "[ops][random]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "sampler.noise");
    tensor<float> y({3, 4});
    using Catch::Contains;
    using ops::random_kind;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    REQUIRE_NOTHROW(ops::fill_random(cx, y.ref(), {random_kind::uniform, 1.0, 1.0, {}}));
    REQUIRE_NOTHROW(ops::fill_random(cx, y.ref(), {random_kind::normal, 0.0, 0.0, {}}));
    REQUIRE_THROWS_AS(ops::fill_random(cx, y.ref(), {random_kind::uniform, 2.0, 1.0, {}}),
                      value_error);
    REQUIRE_THROWS_WITH(ops::fill_random(cx, y.ref(), {random_kind::uniform, 2.0, 1.0, {}}),
                        Contains("sampler.noise") && Contains("a <= b"));
    REQUIRE_THROWS_AS(ops::fill_random(cx, y.ref(), {random_kind::uniform, 0.0, inf, {}}),
                      value_error);
    REQUIRE_THROWS_AS(ops::fill_random(cx, y.ref(), {random_kind::uniform, nan, 1.0, {}}),
                      value_error);
    REQUIRE_THROWS_WITH(ops::fill_random(cx, y.ref(), {random_kind::normal, 0.0, -1.0, {}}),
                        Contains("sampler.noise") && Contains("std b >= 0"));
    REQUIRE_THROWS_AS(ops::fill_random(cx, y.ref(), {random_kind::normal, nan, 1.0, {}}),
                      value_error);
    tensor<float> row({1, 4});
    REQUIRE_THROWS_AS(ops::fill_random(cx, row.ref().expand({3, 4}), {}), shape_error);
    REQUIRE_THROWS_WITH(ops::fill_random(cx, tensor_ref<float>(nullptr, {3, 4}), {}),
                        Contains("fill_random output y") && Contains("null"));
}

namespace {

/// One combine problem: output extents, the stored extents of each input (broadcastable to
/// the output) and whether noise is added.
struct combine_case {
    extents y;
    std::vector<extents> inputs;
    double noise_scale;
};

std::ostream& operator<<(std::ostream& os, const combine_case& c) {
    os << "y " << c.y.to_string() << ", inputs";
    for (const extents& e : c.inputs)
        os << " " << e.to_string();
    return os << ", noise_scale " << c.noise_scale;
}

/// Row-major values of `x` (extents `stored`) broadcast to `target` (NumPy rules).
std::vector<double> broadcast_values(const std::vector<double>& x, const extents& stored,
                                     const extents& target) {
    std::vector<double> out;
    out.reserve(std::size_t(target.numel()));
    const auto st = contiguous_strides(stored);
    const int lead = target.rank() - stored.rank();
    mmfuse_test::for_each_index(target, [&](const auto& idx) {
        index_t off = 0;
        for (int a = 0; a < stored.rank(); ++a)
            if (stored[a] != 1) off += idx[std::size_t(a + lead)] * st[std::size_t(a)];
        out.push_back(x[std::size_t(off)]);
    });
    return out;
}

}  // namespace

TEMPLATE_TEST_CASE("combine matches double loops for 1 to 4 inputs, layouts, broadcasting, noise",
                   "[ops][random][combine]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(403);
    const std::vector<combine_case> cases = {
        {{7}, {{7}}, 0.0},
        {{3, 5}, {{3, 5}, {3, 5}}, 0.0},
        {{2, 3, 4}, {{2, 3, 4}, {4}, {3, 1}}, 0.0},            // broadcast through the front-end
        {{4, 6}, {{4, 6}, {4, 6}, {1, 6}, {4, 6}}, 0.0},        // four inputs
        {{3, 5}, {{3, 5}, {3, 5}}, 0.8},                        // with noise
        {{2, 2, 3}, {{2, 2, 3}, {3}, {2, 2, 3}, {1}}, -1.3},    // four inputs and noise
        {{5}, {{5}}, 1.0},
        {{0, 4}, {{0, 4}, {4}}, 0.5},
    };
    int counter = 0;
    for (const combine_case& c : cases)
        for (int rep = 0; rep < 4; ++rep) {
            const layout ly = mmfuse_test::pick(mmfuse_test::output_layouts, counter++);
            CAPTURE(c, mmfuse_test::layout_name(ly));
            std::vector<std::unique_ptr<strided_operand<T>>> xs;
            std::vector<tensor_ref<const T>> views;
            std::vector<double> coeffs;
            std::vector<std::vector<double>> full;  // each input broadcast to y, row-major
            for (std::size_t i = 0; i < c.inputs.size(); ++i) {
                const extents& e = c.inputs[i];
                const layout lx = e.rank() > 0 && e.numel() > 0
                                      ? mmfuse_test::pick(mmfuse_test::input_layouts,
                                                          counter + int(i))
                                      : layout::contiguous;
                xs.push_back(std::make_unique<strided_operand<T>>(e, lx));
                xs.back()->fill_random(rng, -1.0, 1.0);
                views.push_back(xs.back()->cref());
                coeffs.push_back(uniform_values(rng, 1, -2.0, 2.0)[0]);
                full.push_back(broadcast_values(xs.back()->values(), e, c.y));
            }
            strided_operand<T> y(c.y, ly);
            y.poison();
            const ops::philox_draw draw = random_draw(rng);
            ops::combine<T>(s, y.ref(), views, coeffs, c.noise_scale, draw);

            // Reference: the noise through fill_random (standard normal at the same draw).
            std::vector<double> z(std::size_t(c.y.numel()), 0.0);
            if (c.noise_scale != 0.0) {
                tensor<T> zt(c.y);
                ops::fill_random(s, zt.ref(), {ops::random_kind::normal, 0.0, 1.0, draw});
                for (index_t i = 0; i < zt.numel(); ++i)
                    z[std::size_t(i)] = double(zt[i]);
            }
            std::vector<double> ref(std::size_t(c.y.numel()), 0.0);
            for (std::size_t e = 0; e < ref.size(); ++e) {
                for (std::size_t i = 0; i < full.size(); ++i)
                    ref[e] += double(T(coeffs[i])) * full[i][e];
                ref[e] += double(T(c.noise_scale)) * z[e];
            }
            CHECK(mmfuse_test::max_rel_error(y.values(), ref) <= mmfuse_test::tolerance<T>());
            CHECK(y.outside_intact());
        }
}

TEMPLATE_TEST_CASE("combine noise is fill_random's standard normal, bit for bit",
                   "[ops][random][combine]", float, double) {
    // y = 0 * x + 1 * z is z exactly; and noise_scale 0 draws nothing (the draw is ignored).
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(404);
    const extents e{5, 7};
    const ops::philox_draw draw = random_draw(rng);
    const tensor<T> zeros(e);
    strided_operand<T> y(e, layout::strided);
    y.poison();
    ops::combine(s, y.ref(), {zeros.cref()}, {0.0}, 1.0, draw);
    tensor<T> z(e);
    ops::fill_random(s, z.ref(), {ops::random_kind::normal, 0.0, 1.0, draw});
    const std::vector<double> got = y.values();
    for (index_t i = 0; i < z.numel(); ++i)
        REQUIRE(got[std::size_t(i)] == double(z[i]));

    const tensor<T> x = mmfuse_test::random_tensor<T>(e, rng);
    tensor<T> y1(e), y2(e);
    ops::combine(s, y1.ref(), {x.cref()}, {0.5}, 0.0, draw);
    ops::combine(s, y2.ref(), {x.cref()}, {0.5}, 0.0, random_draw(rng));
    for (index_t i = 0; i < x.numel(); ++i) {
        REQUIRE(y1[i] == T(0.5) * x[i]);
        REQUIRE(y2[i] == y1[i]);
    }
}

TEMPLATE_TEST_CASE("combine works in place with y the memory of x0", "[ops][random][combine]",
                   float, double) {
    // The sampler update x = a x + b eps + sigma z, written over x (same strides).
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(405);
    for (layout l : mmfuse_test::output_layouts) {
        CAPTURE(mmfuse_test::layout_name(l));
        const extents e{3, 4, 5};
        strided_operand<T> x(e, l), eps(e, layout::contiguous);
        x.fill_random(rng);
        eps.fill_random(rng);
        const std::vector<double> x0 = x.values(), e0 = eps.values();
        const ops::philox_draw draw = random_draw(rng);
        const double a = 0.9, b = -0.3, sigma = 0.2;
        ops::combine(s, x.ref(), {x.cref(), eps.cref()}, {a, b}, sigma, draw);
        tensor<T> z(e);
        ops::fill_random(s, z.ref(), {ops::random_kind::normal, 0.0, 1.0, draw});
        std::vector<double> ref(x0.size());
        for (std::size_t i = 0; i < ref.size(); ++i)
            ref[i] = double(T(a)) * x0[i] + double(T(b)) * e0[i] +
                     double(T(sigma)) * double(z[index_t(i)]);
        CHECK(mmfuse_test::max_rel_error(x.values(), ref) <= mmfuse_test::tolerance<T>());
        CHECK(x.outside_intact());
    }
}

TEST_CASE("combine rejects bad input lists, shapes and coefficients", "[ops][random][combine]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "sampler.step");
    using Catch::Contains;
    tensor<float> y({3, 4}), a({3, 4}), b({4}), bad({3, 3});
    const tensor_ref<const float> ar = a.cref(), br = b.cref();
    REQUIRE_NOTHROW(ops::combine(cx, y.ref(), {ar, br}, {1.0, 2.0}));
    // Input count: 0 and 5.
    REQUIRE_THROWS_WITH(ops::combine<float>(cx, y.ref(), std::span<const tensor_ref<const float>>{},
                                            std::span<const double>{}),
                        Contains("sampler.step") && Contains("combine input list") &&
                            Contains("1 to 4"));
    REQUIRE_THROWS_AS(ops::combine(cx, y.ref(), {ar, ar, ar, ar, ar}, {1, 1, 1, 1, 1}),
                      shape_error);
    // Coefficient count.
    REQUIRE_THROWS_WITH(ops::combine(cx, y.ref(), {ar, br}, {1.0}),
                        Contains("combine coefficient list") && Contains("2 coefficients") &&
                            Contains("1 coefficients"));
    // A shape that does not broadcast to y names the input.
    REQUIRE_THROWS_AS(ops::combine(cx, y.ref(), {ar, bad.cref()}, {1.0, 1.0}), shape_error);
    REQUIRE_THROWS_WITH(ops::combine(cx, y.ref(), {ar, bad.cref()}, {1.0, 1.0}),
                        Contains("combine input 1") && Contains("(3, 4)") && Contains("(3, 3)"));
    // Non-finite coefficient or noise scale.
    REQUIRE_THROWS_AS(ops::combine(cx, y.ref(), {ar}, {std::nan("")}), value_error);
    REQUIRE_THROWS_AS(
        ops::combine(cx, y.ref(), {ar}, {1.0}, std::numeric_limits<double>::infinity()),
        value_error);
    // Null views and a broadcast output.
    REQUIRE_THROWS_WITH(ops::combine(cx, y.ref(), {tensor_ref<const float>(nullptr, {3, 4})}, {1.0}),
                        Contains("combine input 0") && Contains("null"));
    REQUIRE_THROWS_WITH(ops::combine(cx, tensor_ref<float>(nullptr, {3, 4}), {ar}, {1.0}),
                        Contains("combine output y"));
    REQUIRE_THROWS_AS(ops::combine(cx, b.ref().expand({3, 4}), {ar}, {1.0}), shape_error);
}

TEST_CASE("the eigen backend refuses combine inputs that do not fit", "[ops][random][combine]") {
    auto& s = backend::default_stream();
    tensor<float> y({2, 3}), x({3});
    const std::array<any_tensor_ref, 1> in{x.cref()};
    const std::array<any_tensor_ref, 1> out{y.ref()};
    REQUIRE(s.device().supports(ops::combine_desc{}, dtype::f32));
    REQUIRE(s.device().supports(ops::fill_random_desc{}, dtype::f64));
    REQUIRE_THROWS_AS(s.execute(ops::combine_desc{}, in, out), backend_error);
    const std::array<any_tensor_ref, 5> five{y.cref(), y.cref(), y.cref(), y.cref(), y.cref()};
    REQUIRE_THROWS_AS(s.execute(ops::combine_desc{}, five, out), backend_error);
}
