// ops::gather_rows and ops::scatter_add_rows: random indices with repeats against double
// loops, every operand in several layouts, zero sizes, bad shapes and bad indices (front-end
// and the kernel's own check through a direct stream::execute).
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/gather.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;

namespace {

/// Layouts of the rank-1 index vector (reversed is contiguous for rank 1).
constexpr std::array<layout, 4> index_layouts{layout::contiguous, layout::strided, layout::gapped,
                                              layout::padded};

/// `r` indices uniform in [0, n), with a repeat forced in when r >= 2 (n >= 1).
std::vector<double> random_indices(std::mt19937_64& rng, index_t r, index_t n) {
    std::uniform_int_distribution<index_t> u(0, n - 1);
    std::vector<double> v(std::size_t(r), 0.0);
    for (double& x : v)
        x = double(u(rng));
    if (r >= 2) v[std::size_t(r - 1)] = v[0];
    return v;
}

/// (N, F, R) cases: R > N (many repeats), R < N, a single row, a single feature, R = 0.
const std::array<std::tuple<index_t, index_t, index_t>, 6> sizes{
    std::tuple<index_t, index_t, index_t>{5, 7, 13},
    {11, 4, 6},
    {1, 3, 4},
    {6, 1, 9},
    {4, 5, 0},
    {9, 16, 2}};

}  // namespace

TEMPLATE_TEST_CASE("gather_rows copies table rows for random indices in every layout",
                   "[ops][gather]", float, double) {
    using T = TestType;
    auto rng = make_rng(1201);
    auto& s = backend::default_stream();
    int combo = 0;
    for (const auto& [n, f, r] : sizes)
        for (int rep = 0; rep < 4; ++rep, ++combo) {
            const layout lt = pick(input_layouts, combo), li = pick(index_layouts, combo + 1),
                         ly = pick(output_layouts, combo + 2);
            INFO("N " << n << " F " << f << " R " << r << " table " << layout_name(lt)
                      << " indices " << layout_name(li) << " y " << layout_name(ly));
            strided_operand<T> table({n, f}, lt);
            strided_operand<std::int64_t> idx({r}, li);
            strided_operand<T> y({r, f}, ly);
            table.fill_random(rng);
            const std::vector<double> iv = random_indices(rng, r, n);
            idx.assign(iv);
            y.poison();
            const auto tv0 = table.values();
            ops::gather_rows(s, table.cref(), idx.cref(), y.ref());
            std::vector<double> ref;
            for (index_t i = 0; i < r; ++i)
                for (index_t j = 0; j < f; ++j)
                    ref.push_back(tv0[std::size_t(index_t(iv[std::size_t(i)]) * f + j)]);
            REQUIRE(y.values() == ref);  // a copy: exact
            REQUIRE(y.outside_intact());
            REQUIRE(table.values() == tv0);
            REQUIRE(table.outside_intact());
            REQUIRE(idx.values() == iv);
        }
}

TEMPLATE_TEST_CASE("scatter_add_rows accumulates rows, repeated indices adding up", "[ops][gather]",
                   float, double) {
    using T = TestType;
    auto rng = make_rng(1202);
    auto& s = backend::default_stream();
    int combo = 0;
    for (const auto& [n, f, r] : sizes)
        for (int rep = 0; rep < 4; ++rep, ++combo) {
            const layout ld = pick(input_layouts, combo), li = pick(index_layouts, combo + 1),
                         lg = pick(output_layouts, combo + 2);
            INFO("N " << n << " F " << f << " R " << r << " dy " << layout_name(ld) << " indices "
                      << layout_name(li) << " grad " << layout_name(lg));
            strided_operand<T> dy({r, f}, ld);
            strided_operand<std::int64_t> idx({r}, li);
            strided_operand<T> grad({n, f}, lg);
            dy.fill_random(rng);
            const std::vector<double> iv = random_indices(rng, r, n);
            idx.assign(iv);
            grad.sentinel_then_random(rng);  // accumulated into: starts from random values
            const auto g0 = grad.values(), dv = dy.values();
            ops::scatter_add_rows(s, dy.cref(), idx.cref(), grad.ref());
            std::vector<double> ref = g0;
            for (index_t i = 0; i < r; ++i)
                for (index_t j = 0; j < f; ++j)
                    ref[std::size_t(index_t(iv[std::size_t(i)]) * f + j)] +=
                        dv[std::size_t(i * f + j)];
            REQUIRE(max_rel_error(grad.values(), ref) <= tolerance<T>());
            REQUIRE(grad.outside_intact());
            REQUIRE(dy.values() == dv);
            REQUIRE(dy.outside_intact());
        }
}

TEST_CASE("scatter_add_rows of one index many times sums every row into it", "[ops][gather]") {
    auto rng = make_rng(1203);
    const index_t r = 50, f = 3;
    auto dy = random_tensor<double>({r, f}, rng);
    tensor<std::int64_t> idx({r});
    const auto target = std::int64_t(rng() % 4);
    for (index_t i = 0; i < r; ++i)
        idx[i] = target;
    tensor<double> grad({4, f});
    grad.fill(0.0);
    ops::scatter_add_rows(backend::default_stream(), dy.cref(), idx.cref(), grad.ref());
    for (index_t row = 0; row < 4; ++row)
        for (index_t j = 0; j < f; ++j) {
            double sum = 0.0;
            if (row == target)
                for (index_t i = 0; i < r; ++i)
                    sum += dy[i * f + j];
            REQUIRE(grad[row * f + j] == Approx(sum).margin(1e-12));
        }
}

TEMPLATE_TEST_CASE("gather_rows and scatter_add_rows reject bad shapes and indices before running",
                   "[ops][gather]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    const ops::op_context cx{s, "enc.tok"};
    tensor<T> table({6, 4}), y({3, 4}), grad({6, 4}), dy({3, 4});
    table.fill(T(1));
    tensor<std::int64_t> idx({3});
    idx[0] = 0;
    idx[1] = 5;
    idx[2] = 2;

    // ranks and extents
    tensor<T> table1({24});
    REQUIRE_THROWS_WITH(ops::gather_rows(cx, table1.cref(), idx.cref(), y.ref()),
                        Catch::Contains("in 'enc.tok'") &&
                            Catch::Contains("gather_rows table: expected rank 2") &&
                            Catch::Contains("(24)"));
    tensor<std::int64_t> idx2({1, 3});
    REQUIRE_THROWS_AS(ops::gather_rows(cx, table.cref(), idx2.cref(), y.ref()), shape_error);
    REQUIRE_THROWS_WITH(ops::gather_rows(cx, table.cref(), idx2.cref(), y.ref()),
                        Catch::Contains("gather_rows indices") && Catch::Contains("rank 1") &&
                            Catch::Contains("(1, 3)"));
    tensor<T> y_bad({3, 5});
    REQUIRE_THROWS_WITH(ops::gather_rows(cx, table.cref(), idx.cref(), y_bad.ref()),
                        Catch::Contains("gather_rows output y") && Catch::Contains("(3, 4)") &&
                            Catch::Contains("(3, 5)"));
    tensor<T> dy_bad({2, 4});
    REQUIRE_THROWS_WITH(ops::scatter_add_rows(cx, dy_bad.cref(), idx.cref(), grad.ref()),
                        Catch::Contains("scatter_add_rows gradient dy") &&
                            Catch::Contains("(3, 4)") && Catch::Contains("(2, 4)"));
    tensor<T> grad_bad({6, 3});
    REQUIRE_THROWS_WITH(ops::scatter_add_rows(cx, dy.cref(), idx.cref(), grad_bad.ref()),
                        Catch::Contains("scatter_add_rows gradient dy") &&
                            Catch::Contains("expected shape (3, 3)") && Catch::Contains("(3, 4)"));
    // a broadcast output is refused by submit
    tensor<T> row({1, 4});
    REQUIRE_THROWS_AS(
        ops::scatter_add_rows(cx, dy.cref(), idx.cref(), row.ref().expand(extents{6, 4})),
        shape_error);

    // out-of-range indices: nothing is written (outputs keep their poison / values)
    for (const std::int64_t bad :
         {std::int64_t(6), std::int64_t(-1), std::numeric_limits<std::int64_t>::min(),
          std::int64_t(1) << 40}) {
        idx[1] = bad;
        poison(y);
        REQUIRE_THROWS_AS(ops::gather_rows(cx, table.cref(), idx.cref(), y.ref()), shape_error);
        REQUIRE_THROWS_WITH(
            ops::gather_rows(cx, table.cref(), idx.cref(), y.ref()),
            Catch::Contains("in 'enc.tok'") && Catch::Contains("gather_rows index") &&
                Catch::Contains("[0, 6)") && Catch::Contains("(6, 4)") &&
                Catch::Contains("index " + std::to_string(bad) + " at position 1 of indices (3)"));
        for (index_t i = 0; i < y.numel(); ++i)
            REQUIRE(std::isnan(double(y[i])));
        grad.fill(T(0.5));
        REQUIRE_THROWS_WITH(ops::scatter_add_rows(cx, dy.cref(), idx.cref(), grad.ref()),
                            Catch::Contains("scatter_add_rows index") &&
                                Catch::Contains("(6, 4)") &&
                                Catch::Contains("index " + std::to_string(bad) + " at position 1"));
        for (index_t i = 0; i < grad.numel(); ++i)
            REQUIRE(grad[i] == T(0.5));
    }
    // a strided index view: the position is logical, not the memory offset
    tensor<std::int64_t> wide({6});
    for (index_t i = 0; i < 6; ++i)
        wide[i] = i % 3;
    wide[4] = 99;  // logical position 2 of the stride-2 view
    const tensor_ref<const std::int64_t> every_other(wide.data(), extents{3},
                                                     std::array<index_t, 1>{2});
    REQUIRE_THROWS_WITH(ops::gather_rows(cx, table.cref(), every_other, y.ref()),
                        Catch::Contains("index 99 at position 2 of indices (3)"));
}

TEST_CASE("the eigen kernels check indices themselves on a direct stream call", "[ops][gather]") {
    auto& s = backend::default_stream();
    tensor<double> table({4, 3}), y({2, 3}), grad({4, 3}), dy({2, 3});
    table.fill(1.0);
    dy.fill(1.0);
    tensor<std::int64_t> idx({2});
    idx[0] = 1;
    for (const std::int64_t bad : {std::int64_t(4), std::int64_t(-2)}) {
        idx[1] = bad;
        poison(y);
        const std::array<any_tensor_ref, 2> gin{table.cref(), idx.cref()};
        const std::array<any_tensor_ref, 1> gout{y.ref()};
        REQUIRE_THROWS_AS(s.execute(ops::gather_rows_desc{}, gin, gout), backend_error);
        REQUIRE_THROWS_WITH(s.execute(ops::gather_rows_desc{}, gin, gout),
                            Catch::Contains("gather_rows") &&
                                Catch::Contains("index " + std::to_string(bad)) &&
                                Catch::Contains("[0, 4)"));
        for (index_t i = 0; i < y.numel(); ++i)
            REQUIRE(std::isnan(y[i]));  // checked before anything is written
        grad.fill(0.0);
        const std::array<any_tensor_ref, 2> sin{dy.cref(), idx.cref()};
        const std::array<any_tensor_ref, 1> sout{grad.ref()};
        REQUIRE_THROWS_AS(s.execute(ops::scatter_add_rows_desc{}, sin, sout), backend_error);
        for (index_t i = 0; i < grad.numel(); ++i)
            REQUIRE(grad[i] == 0.0);
    }
    // indices of the wrong dtype, and operands that do not fit together
    tensor<std::int32_t> idx32({2});
    idx32[0] = 0;
    idx32[1] = 1;
    const std::array<any_tensor_ref, 2> in32{table.cref(), idx32.cref()};
    const std::array<any_tensor_ref, 1> out{y.ref()};
    REQUIRE_THROWS_WITH(s.execute(ops::gather_rows_desc{}, in32, out),
                        Catch::Contains("indices must be i64"));
    idx[1] = 0;
    tensor<double> y_wide({2, 5});
    const std::array<any_tensor_ref, 2> in{table.cref(), idx.cref()};
    const std::array<any_tensor_ref, 1> out_wide{y_wide.ref()};
    REQUIRE_THROWS_AS(s.execute(ops::gather_rows_desc{}, in, out_wide), backend_error);
}
