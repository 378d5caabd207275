// nn::linear: forward against a double loop, gradcheck, static/dynamic widths, errors.
#include <catch2/catch.hpp>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

TEMPLATE_TEST_CASE("linear forward matches x W^T + b", "[nn][linear]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(11);
    const index_t in = 1 + index_t(rng() % 9), out = 1 + index_t(rng() % 9);
    nn::model<nn::linear<dyn, dyn, T>> m(nn::linear<dyn, dyn, T>{in, out}, rng());
    auto x = mmfuse_test::random_tensor<T>({2, 3, in}, rng);
    growing_arena ws;
    nn::step_context<T> cx{&backend::default_stream(), &ws, false};
    const auto y = m.net().forward(cx, x.cref());
    REQUIRE(y.extents() == extents{2, 3, out});
    const auto w = m.find("weight")->value;
    const auto b = m.find("bias")->value;
    std::vector<double> ref;
    for (index_t r = 0; r < 6; ++r)
        for (index_t o = 0; o < out; ++o) {
            double acc = double(b(o));
            for (index_t i = 0; i < in; ++i)
                acc += double(x[r * in + i]) * double(w(o, i));
            ref.push_back(acc);
        }
    REQUIRE(mmfuse_test::max_rel_error(std::span<const T>(y.data(), size_t(y.numel())),
                                       std::span<const double>(ref)) <=
            mmfuse_test::tolerance<T>());
    // PyTorch's default init: |w| <= 1/sqrt(in).
    for (index_t k = 0; k < w.numel(); ++k)
        REQUIRE(std::abs(double(w.data()[k])) <= 1.0 / std::sqrt(double(in)) + 1e-7);
}

TEST_CASE("linear gradcheck in double, with and without bias", "[nn][linear][gradcheck]") {
    auto rng = mmfuse_test::make_rng(12);
    for (const bool bias : {true, false}) {
        nn::model<nn::linear<4, 3, double>> m(nn::linear<4, 3, double>{{}, {}, bias}, rng());
        REQUIRE(m.parameter_count() == (bias ? 15 : 12));
        auto x = mmfuse_test::random_tensor<double>({2, 5, 4}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        REQUIRE(res.input_error < 1e-7);
        REQUIRE(res.parameter_error < 1e-7);
    }
}

TEST_CASE("linear rejects a wrong input width naming the module path", "[nn][linear]") {
    nn::model<nn::linear<8, 2>> m(nn::linear<8, 2>{}, 1);
    tensor<float> x({3, 7});
    growing_arena ws;
    nn::step_context<float> cx{&backend::default_stream(), &ws, true};
    REQUIRE_THROWS_WITH(m.net().forward(cx, x.cref()), Catch::Contains("linear input") &&
                                                           Catch::Contains("(..., 8)") &&
                                                           Catch::Contains("(3, 7)"));
    REQUIRE(m.parameter_index()[0].name == "weight");
    REQUIRE(m.parameter_index()[1].name == "bias");
}
