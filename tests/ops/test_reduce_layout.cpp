// Reduce (sum, mean over one axis), concat, split and copy (with dtype conversion) on the
// Eigen reference backend against double-precision loops, over strided / broadcast layouts
// and zero-size extents, plus the front-ends' errors.

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;

namespace {

using index_array = std::array<index_t, max_rank>;

/// Row-major multi-index of `flat` in `e`.
index_array unravel(index_t flat, const extents& e) {
    index_array idx{};
    for (int a = e.rank() - 1; a >= 0; --a) {
        idx[std::size_t(a)] = flat % e[a];
        flat /= e[a];
    }
    return idx;
}

/// Row-major flat index of `idx` in `e`.
index_t ravel(const index_array& idx, const extents& e) {
    index_t flat = 0;
    for (int a = 0; a < e.rank(); ++a)
        flat = flat * e[a] + idx[std::size_t(a)];
    return flat;
}

/// Sum or mean of `xs` (row-major values of extents `e`) over axis `ax`, keepdim layout.
std::vector<double> ref_reduce(const std::vector<double>& xs, const extents& e, int ax, bool mean) {
    const extents oe = e.with_axis(ax, 1);
    std::vector<double> acc(std::size_t(oe.numel()), 0.0);
    for (index_t i = 0; i < e.numel(); ++i) {
        index_array idx = unravel(i, e);
        idx[std::size_t(ax)] = 0;
        acc[std::size_t(ravel(idx, oe))] += xs[std::size_t(i)];
    }
    if (mean)
        for (double& v : acc)
            v /= double(e[ax]);
    return acc;
}

}  // namespace

TEMPLATE_TEST_CASE("reduce sum and mean match a double loop on every axis and layout",
                   "[ops][reduce]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(301);
    auto& s = backend::default_stream();
    const std::array<extents, 7> shapes{extents{5},         extents{3, 4}, extents{2, 3, 4},
                                        extents{2, 0, 3},   extents{3, 0}, extents{1, 1, 1},
                                        extents{2, 3, 1, 5}};
    int counter = 0;
    for (const extents& e : shapes)
        for (int ax = 0; ax < e.rank(); ++ax)
            for (const ops::reduce_kind kind : {ops::reduce_kind::sum, ops::reduce_kind::mean})
                for (const bool keepdim : {false, true}) {
                    const int combo = counter++;
                    const layout lx = pick(input_layouts, combo);
                    const layout ly = pick(output_layouts, combo / 5);
                    const int axis = combo % 2 ? ax - e.rank() : ax;  // negative half the time
                    strided_operand<T> x(e, lx);
                    strided_operand<T> y(keepdim ? e.with_axis(ax, 1) : e.without_axis(ax), ly);
                    x.fill_random(rng);
                    y.poison();
                    ops::reduce(s, kind, axis, x.cref(), y.ref());
                    const bool mean = kind == ops::reduce_kind::mean;
                    const auto ref = ref_reduce(x.values(), e, ax, mean);
                    const auto got = y.values();
                    INFO("x " << x.cref().describe() << " (" << layout_name(lx) << "), axis "
                              << axis << ", y " << y.cref().describe()
                              << (mean ? " mean" : " sum"));
                    if (mean && e[ax] == 0) {  // mean over nothing: NaN, as in PyTorch
                        for (const double v : got)
                            REQUIRE(std::isnan(v));
                    } else {
                        REQUIRE(max_rel_error(got, ref) <= mmfuse_test::tolerance<T>());
                    }
                    REQUIRE(y.outside_intact());
                }
}

TEMPLATE_TEST_CASE("reduce with accumulate adds to the existing output", "[ops][reduce]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(302);
    auto& s = backend::default_stream();
    const extents e{3, 5, 4};
    for (int ax = 0; ax < 3; ++ax) {
        strided_operand<T> x(e, pick(input_layouts, ax));
        strided_operand<T> y(e.without_axis(ax), pick(output_layouts, ax));
        x.fill_random(rng);
        y.fill_random(rng);
        const auto before = y.values();
        ops::reduce(s, ops::reduce_kind::sum, ax, x.cref(), y.ref(), /*accumulate=*/true);
        auto ref = ref_reduce(x.values(), e, ax, false);
        for (std::size_t i = 0; i < ref.size(); ++i)
            ref[i] += before[i];
        REQUIRE(max_rel_error(y.values(), ref) <= mmfuse_test::tolerance<T>());
        REQUIRE(y.outside_intact());
    }
}

TEST_CASE("reduce rejects bad axes and outputs, naming the module and shapes", "[ops][reduce]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "head.pool");
    using Catch::Contains;
    tensor<float> x({2, 3, 4}), y({2, 4}), ybad({3, 4}), scalar(extents{});
    REQUIRE_THROWS_AS(ops::reduce(cx, ops::reduce_kind::mean, 1, x.cref(), ybad.ref()),
                      shape_error);
    REQUIRE_THROWS_WITH(ops::reduce(cx, ops::reduce_kind::mean, 1, x.cref(), ybad.ref()),
                        Contains("head.pool") && Contains("(2, 4) or (2, 1, 4)") &&
                            Contains("(2, 3, 4)") && Contains("(3, 4)"));
    REQUIRE_THROWS_WITH(ops::reduce(cx, ops::reduce_kind::sum, 3, x.cref(), y.ref()),
                        Contains("reduce axis") && Contains("[-3, 3)") && Contains("axis 3"));
    REQUIRE_THROWS_WITH(ops::reduce(cx, ops::reduce_kind::sum, -4, x.cref(), y.ref()),
                        Contains("axis -4"));
    REQUIRE_THROWS_WITH(ops::reduce(cx, ops::reduce_kind::sum, 0, scalar.cref(), scalar.ref()),
                        Contains("rank 1 to 6") && Contains("()"));
    const tensor_ref<const float> null_x(nullptr, {2, 3, 4});
    REQUIRE_THROWS_WITH(ops::reduce(cx, ops::reduce_kind::sum, 1, null_x, y.ref()),
                        Contains("null"));
}

TEMPLATE_TEST_CASE("concat and split match double loops on every axis and layout", "[ops][layout]",
                   float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(302);
    auto& s = backend::default_stream();
    struct split_case {
        extents base;
        std::vector<index_t> sizes;
    };
    const std::vector<split_case> cases{
        {extents{2, 3, 4}, {2, 0, 3}}, {extents{2, 3, 4}, {1, 2, 1, 1, 3}},
        {extents{2, 3, 4}, {4}},       {extents{5}, {3, 0, 4}},
        {extents{0, 3}, {1, 2}},       {extents{2, 1, 3, 2}, {2, 2}}};
    int counter = 0;
    for (const split_case& c : cases)
        for (int ax = 0; ax < c.base.rank(); ++ax)
            for (int rep = 0; rep < 3; ++rep) {
                const int combo = counter++;
                const int axis = rep == 1 ? ax - c.base.rank() : ax;
                index_t total = 0;
                for (index_t n : c.sizes)
                    total += n;
                const extents we = c.base.with_axis(ax, total);
                std::vector<strided_operand<T>> parts, outs;
                std::vector<tensor_ref<const T>> part_views;
                std::vector<tensor_ref<T>> out_views;
                for (std::size_t i = 0; i < c.sizes.size(); ++i) {
                    const extents pe = c.base.with_axis(ax, c.sizes[i]);
                    parts.emplace_back(pe, pick(input_layouts, combo + int(i)));
                    parts.back().fill_random(rng);
                    part_views.push_back(parts.back().cref());
                    outs.emplace_back(pe, pick(output_layouts, combo + 2 * int(i)));
                    outs.back().poison();
                    out_views.push_back(outs.back().ref());
                }
                strided_operand<T> y(we, pick(output_layouts, combo));
                y.poison();
                ops::concat(s, axis, std::span<const tensor_ref<const T>>(part_views), y.ref());

                // Reference: every part element lands at its index shifted along the axis.
                std::vector<double> ref(std::size_t(we.numel()),
                                        std::numeric_limits<double>::quiet_NaN());
                index_t offset = 0;
                for (const auto& p : parts) {
                    const auto pv = p.values();
                    const tensor_ref<const T> pr = p.cref();
                    for (index_t j = 0; j < pr.numel(); ++j) {
                        index_array idx = unravel(j, pr.extents());
                        idx[std::size_t(ax)] += offset;
                        ref[std::size_t(ravel(idx, we))] = pv[std::size_t(j)];
                    }
                    offset += pr.extent(ax);
                }
                INFO("whole " << y.cref().describe() << ", axis " << axis << ", " << c.sizes.size()
                              << " parts");
                REQUIRE(max_rel_error(y.values(), ref) == 0.0);
                REQUIRE(y.outside_intact());

                // Split the result back: each output equals its input part exactly.
                ops::split<T>(s, axis, y.cref(), std::span<const tensor_ref<T>>(out_views));
                for (std::size_t i = 0; i < parts.size(); ++i) {
                    REQUIRE(outs[i].values() == parts[i].values());
                    REQUIRE(outs[i].outside_intact());
                }
            }
}

TEMPLATE_TEST_CASE("split reads strided and broadcast inputs", "[ops][layout]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(303);
    auto& s = backend::default_stream();
    for (const layout lx : input_layouts) {
        strided_operand<T> x({3, 7, 2}, lx);
        x.fill_random(rng);
        tensor<T> a({3, 3, 2}), b({3, 4, 2});
        mmfuse_test::poison(a);
        mmfuse_test::poison(b);
        ops::split(s, 1, x.cref(), {a.ref(), b.ref()});
        for (index_t i = 0; i < 3; ++i)
            for (index_t j = 0; j < 7; ++j)
                for (index_t k = 0; k < 2; ++k) {
                    const double want = double(x.cref()(i, j, k));
                    REQUIRE(double(j < 3 ? a(i, j, k) : b(i, j - 3, k)) == want);
                }
        // And the braced-list concat puts them back.
        tensor<T> y({3, 7, 2});
        mmfuse_test::poison(y);
        ops::concat(s, -2, {a.cref(), b.cref()}, y.ref());
        REQUIRE(mmfuse_test::to_vector(y.cref()) == x.values());
    }
}

TEST_CASE("concat and split accept up to 16 parts and reject bad part lists", "[ops][layout]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "fusion.cat");
    using Catch::Contains;
    std::vector<tensor<float>> store;
    for (int i = 0; i < 17; ++i) {
        store.emplace_back(extents{1, 2});
        store.back().fill(float(i));
    }
    std::vector<tensor_ref<const float>> views;
    for (const auto& t : store)
        views.push_back(t.cref());
    tensor<float> y16({16, 2}), y17({17, 2});
    ops::concat<float>(cx, 0, std::span(views).first(16), y16.ref());
    for (index_t i = 0; i < 16; ++i)
        REQUIRE(y16(i, 1) == float(i));
    REQUIRE_THROWS_AS(ops::concat<float>(cx, 0, std::span(views), y17.ref()), shape_error);
    REQUIRE_THROWS_WITH(
        ops::concat<float>(cx, 0, std::span(views), y17.ref()),
        Contains("fusion.cat") && Contains("1 to 16 parts") && Contains("17 parts"));
    REQUIRE_THROWS_WITH(ops::concat<float>(cx, 0, std::span(views).first(0), y17.ref()),
                        Contains("0 parts"));

    tensor<float> a({2, 3}), b({2, 4}), c({2, 3}), y({4, 3}), y5({5, 3}), y1(extents{6});
    REQUIRE_THROWS_WITH(ops::concat(cx, 0, {a.cref(), b.cref()}, y.ref()),
                        Contains("concat input 1") && Contains("(?, 3)") && Contains("(4, 3)") &&
                            Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(
        ops::concat(cx, 0, {a.cref(), c.cref()}, y5.ref()),
        Contains("concat output y") && Contains("extent 4 on axis 0") && Contains("(5, 3)"));
    REQUIRE_THROWS_WITH(ops::concat(cx, 2, {a.cref(), c.cref()}, y.ref()),
                        Contains("concat axis") && Contains("[-2, 2)") && Contains("axis 2"));
    REQUIRE_THROWS_WITH(ops::concat(cx, 0, {a.cref(), c.cref()}, y1.ref()),
                        Contains("concat input 0") && Contains("(2, 3)"));
    const tensor_ref<const float> null_part(nullptr, {2, 3});
    REQUIRE_THROWS_WITH(ops::concat(cx, 0, {a.cref(), null_part}, y.ref()),
                        Contains("concat input 1") && Contains("null"));
    REQUIRE_THROWS_WITH(
        ops::split(cx, 0, y5.cref(), {a.ref(), c.ref()}),
        Contains("split input x") && Contains("extent 4 on axis 0") && Contains("(5, 3)"));
    REQUIRE_THROWS_WITH(ops::split(cx, 1, y.cref(), {a.ref(), b.ref()}),
                        Contains("split output 0") && Contains("(4, ?)") && Contains("(2, 3)"));
}

namespace {

/// copy S -> D over several shapes and layouts with values exact in every type (k / 64,
/// |k| <= 256), so that the result must equal the input exactly.
template <class S, class D>
void check_exact_copy(backend::stream& s, std::mt19937_64& rng) {
    const std::array<extents, 5> shapes{extents{}, extents{5}, extents{3, 4}, extents{2, 3, 5},
                                        extents{0, 3}};
    std::uniform_int_distribution<int> k(-256, 256);
    int counter = 0;
    for (const extents& e : shapes)
        for (int rep = 0; rep < 4; ++rep) {
            const int combo = counter++;
            strided_operand<S> x(e, pick(input_layouts, combo));
            strided_operand<D> y(e, pick(output_layouts, combo / 2));
            x.fill_each([&] { return k(rng) / 64.0; });
            y.poison();
            ops::copy(s, x.cref(), y.ref());
            INFO(dtype_name(dtype_of<S>) << " -> " << dtype_name(dtype_of<D>) << ": x "
                                         << x.cref().describe() << ", y " << y.cref().describe());
            REQUIRE(y.values() == x.values());
            REQUIRE(y.outside_intact());
        }
}

template <class S, class... D>
void check_exact_copies_from(backend::stream& s, std::mt19937_64& rng) {
    (check_exact_copy<S, D>(s, rng), ...);
}

}  // namespace

TEST_CASE("copy converts between f32, f64, bf16 and f16 in every direction, any strides",
          "[ops][layout]") {
    auto rng = mmfuse_test::make_rng(304);
    auto& s = backend::default_stream();
    check_exact_copies_from<float, float, double, bf16, half>(s, rng);
    check_exact_copies_from<double, float, double, bf16, half>(s, rng);
    check_exact_copies_from<bf16, float, double, bf16, half>(s, rng);
    check_exact_copies_from<half, float, double, bf16, half>(s, rng);
}

TEST_CASE("copy rounds like the storage types and keeps NaN and infinity", "[ops][layout]") {
    auto rng = mmfuse_test::make_rng(305);
    auto& s = backend::default_stream();
    auto x = mmfuse_test::random_tensor<double>({64}, rng, -1000.0, 1000.0);
    x[0] = std::numeric_limits<double>::quiet_NaN();
    x[1] = std::numeric_limits<double>::infinity();
    x[2] = 1e6;  // beyond f16's range: infinity
    x[3] = 1e-9;
    tensor<float> xf({64}), yf({64});
    tensor<bf16> yb({64});
    tensor<half> yh({64});
    ops::copy(s, x.cref(), xf.ref());  // f64 -> f32
    for (index_t i = 3; i < 64; ++i)
        REQUIRE(xf[i] == float(x[i]));
    ops::copy(s, xf.cref(), yb.ref());
    ops::copy(s, xf.cref(), yh.ref());
    ops::copy(s, yh.cref(), yf.ref());
    for (index_t i = 1; i < 64; ++i) {
        REQUIRE(yb[i].bits == bf16(xf[i]).bits);
        REQUIRE(yh[i].bits == half(xf[i]).bits);
        REQUIRE(yf[i] == float(half(xf[i])));
    }
    REQUIRE(std::isnan(float(yb[0])));
    REQUIRE(std::isnan(float(yh[0])));
    REQUIRE(std::isnan(yf[0]));
    REQUIRE(std::isinf(float(yh[2])));
}

TEST_CASE("copy turns a bool mask into 0 / 1 weights of every float type, any strides",
          "[ops][layout]") {
    auto& s = backend::default_stream();
    std::mt19937_64 rng = make_rng(4101);
    const std::vector<double> bits = bernoulli_values(rng, 4 * 5, 0.5);
    tensor<bool> m({4, 5});
    for (index_t i = 0; i < m.numel(); ++i)
        m[i] = bits[std::size_t(i)] != 0.0;
    REQUIRE(s.device().supports(ops::copy_desc{}, dtype::boolean));
    const auto check = [&]<class D>() {
        // A transposed (strided) source into a contiguous (5, 4) output.
        tensor<D> y({5, 4});
        if constexpr (std::is_floating_point_v<D>) poison(y);
        ops::copy(s, m.cref().transpose(0, 1), y.ref());
        for (index_t r = 0; r < 5; ++r)
            for (index_t c = 0; c < 4; ++c)
                REQUIRE(double(float(y[r * 4 + c])) == (m[c * 5 + r] ? 1.0 : 0.0));
    };
    check.operator()<float>();
    check.operator()<double>();
    check.operator()<bf16>();
    check.operator()<half>();
}

TEST_CASE("copy rejects bad operands and the backend refuses other dtypes", "[ops][layout]") {
    auto& s = backend::default_stream();
    using Catch::Contains;
    tensor<float> x({2, 3});
    tensor<bf16> ybad({3, 2});
    REQUIRE_THROWS_AS(ops::copy(ops::op_context(s, "io.cast"), x.cref(), ybad.ref()), shape_error);
    REQUIRE_THROWS_WITH(ops::copy(ops::op_context(s, "io.cast"), x.cref(), ybad.ref()),
                        Contains("io.cast") && Contains("copy output y") && Contains("(2, 3)") &&
                            Contains("(3, 2)"));
    // Below the front-ends: dtypes outside the eigen device's `supports()`.
    tensor<std::int32_t> xi({2, 3});
    tensor<float> yf({2, 3});
    const std::array<any_tensor_ref, 1> in_i{xi.cref()};
    const std::array<any_tensor_ref, 1> out_f{yf.ref()};
    REQUIRE_FALSE(s.device().supports(ops::copy_desc{}, dtype::i32));
    REQUIRE_THROWS_AS(s.execute(ops::copy_desc{}, in_i, out_f), backend_error);
    tensor<bf16> b1({2, 3}), b2({4, 3});
    const std::array<any_tensor_ref, 1> in_b{b1.cref()};
    const std::array<any_tensor_ref, 1> out_b{b2.ref()};
    REQUIRE(s.device().supports(ops::copy_desc{}, dtype::bf16));
    REQUIRE_FALSE(s.device().supports(ops::concat_desc{}, dtype::bf16));
    REQUIRE_THROWS_AS(s.execute(ops::concat_desc{0}, in_b, out_b), backend_error);
}

// Counts global operator new calls (this test executable only) to check that the op
// front-ends and the non-GEMM Eigen kernels do not touch the heap in a steady state.
// Left out under AddressSanitizer, which owns operator new itself.
#if !defined(__SANITIZE_ADDRESS__)
namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// GCC cannot see that this operator new is malloc-based and warns about free() below.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
    ++g_allocations;
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
#pragma GCC diagnostic pop

TEST_CASE("op front-ends and Eigen kernels do not allocate in a steady state", "[ops]") {
    auto rng = mmfuse_test::make_rng(306);
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "a.module.path.longer.than.the.small.string.buffer");
    auto x = mmfuse_test::random_tensor<float>({4, 6, 8}, rng);
    auto w = mmfuse_test::random_tensor<float>({5, 8}, rng);
    auto bias = mmfuse_test::random_tensor<float>({8}, rng);
    tensor<float> y({4, 6, 8}), y2({4, 6, 8}), m({4, 8}), xy({4, 12, 8}), p({4, 6, 5});
    tensor<bf16> yb({4, 6, 8});
    const auto step = [&] {
        ops::bias_add(cx, x.cref(), bias.cref(), y.ref());
        ops::unary(cx, ops::unary_kind::gelu_tanh, y.cref(), y.ref());
        ops::unary_backward(cx, ops::unary_kind::silu, x.cref(), y.cref(), y.ref());
        ops::reduce(cx, ops::reduce_kind::mean, 1, y.cref(), m.ref());
        ops::concat(cx, 1, {x.cref(), y.cref()}, xy.ref());
        ops::split(cx, 1, xy.cref(), {y.ref(), y2.ref()});
        ops::copy(cx, y.cref(), yb.ref());
        // Small enough for Eigen's coefficient-based product (its GEMM path uses malloc).
        ops::matmul(cx, x.cref(), w.cref(), p.ref(), ops::matmul_desc{false, true});
    };
    step();  // first use may initialise statics
    const long before = g_allocations.load();
    step();
    REQUIRE(g_allocations.load() - before == 0);
}
#endif  // !defined(__SANITIZE_ADDRESS__)
