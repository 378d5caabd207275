// ops::binary (add, sub, mul) with NumPy broadcasting, every layout, in place, bad input.
#include <catch2/catch.hpp>

#include <array>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/ops/binary.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;

namespace {
double apply(ops::binary_kind k, double a, double b) {
    switch (k) {
        case ops::binary_kind::add:
            return a + b;
        case ops::binary_kind::sub:
            return a - b;
        case ops::binary_kind::mul:
            return a * b;
    }
    return 0.0;
}
// Row-major index of the broadcast source element for output multi-index `idx`.
std::size_t source_index(const extents& src, const extents& out,
                         const std::array<index_t, max_rank>& idx) {
    const int lead = out.rank() - src.rank();
    std::size_t flat = 0;
    for (int a = 0; a < src.rank(); ++a) {
        const index_t i = src[a] == 1 ? 0 : idx[size_t(a + lead)];
        flat = flat * std::size_t(src[a]) + std::size_t(i);
    }
    return flat;
}
}  // namespace

TEMPLATE_TEST_CASE("binary add, sub, mul broadcast like NumPy for every layout", "[ops][binary]",
                   float, double) {
    using T = TestType;
    auto rng = make_rng(401);
    auto& s = backend::default_stream();
    const extents ye{2, 3, 4};
    const std::array<std::pair<extents, extents>, 5> cases{
        std::pair{extents{2, 3, 4}, extents{2, 3, 4}}, std::pair{extents{2, 3, 4}, extents{3, 4}},
        std::pair{extents{4}, extents{2, 3, 4}}, std::pair{extents{2, 1, 4}, extents{1, 3, 1}},
        std::pair{extents{2, 3, 1}, extents{}}};
    int combo = 0;
    for (const auto& [ae, be] : cases)
        for (const ops::binary_kind k :
             {ops::binary_kind::add, ops::binary_kind::sub, ops::binary_kind::mul}) {
            strided_operand<T> a(ae, pick(uniform_layouts, combo));
            strided_operand<T> b(be, pick(uniform_layouts, combo + 1));
            strided_operand<T> y(ye, pick(output_layouts, combo));
            ++combo;
            a.fill_random(rng);
            b.fill_random(rng);
            y.poison();
            ops::binary(s, k, a.cref(), b.cref(), y.ref());
            const auto av = a.values(), bv = b.values();
            std::vector<double> ref;
            for_each_index(ye, [&](const auto& idx) {
                ref.push_back(
                    apply(k, av[source_index(ae, ye, idx)], bv[source_index(be, ye, idx)]));
            });
            INFO("a " << ae.to_string() << " b " << be.to_string() << " kind " << int(k));
            REQUIRE(max_rel_error(y.values(), ref) <= tolerance<T>());
            REQUIRE(y.outside_intact());
        }
}

TEST_CASE("binary works in place (residual add)", "[ops][binary]") {
    auto rng = make_rng(402);
    auto x = random_tensor<double>({3, 5}, rng);
    auto f = random_tensor<double>({3, 5}, rng);
    const auto x0 = x.clone();
    ops::add(backend::default_stream(), x.cref(), f.cref(), x.ref());
    for (index_t i = 0; i < x.numel(); ++i)
        REQUIRE(x[i] == x0[i] + f[i]);
}

TEST_CASE("binary rejects non-broadcastable operands and broadcast outputs", "[ops][binary]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "fusion.gate");
    tensor<float> a({2, 3}), b({4}), y({2, 3}), row({3});
    REQUIRE_THROWS_WITH(ops::binary(cx, ops::binary_kind::add, a.cref(), b.cref(), y.ref()),
                        Catch::Contains("fusion.gate") && Catch::Contains("binary operand b") &&
                            Catch::Contains("(2, 3)") && Catch::Contains("(4)"));
    const auto wide = row.ref().expand({2, 3});  // a stride-0 output must be refused
    REQUIRE_THROWS_WITH(ops::binary(cx, ops::binary_kind::mul, a.cref(), a.cref(), wide),
                        Catch::Contains("broadcast view"));
}
