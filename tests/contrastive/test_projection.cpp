// nn::l2_normalize and contrastive::projection_head: double-precision gradchecks (dx and
// "proj.weight"), unit-norm outputs against a double loop written here, the parameter's
// name, shape and open_clip init, gradient accumulation, and shape errors naming the path.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "mmfuse/contrastive/projection.hpp"
#include "mmfuse/nn/l2_normalize.hpp"
#include "mmfuse/nn/model.hpp"
#include "nn/test_layers_util.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using mmfuse_test::workspace;

namespace {

/// normalize(x W^T) per row in double: x (R, In) row-major, W (Out, In) row-major.
std::vector<double> projection_ref(const std::vector<double>& x, const std::vector<double>& w,
                                   index_t in, index_t out) {
    const std::size_t rows = x.size() / std::size_t(in);
    std::vector<double> y(rows * std::size_t(out));
    for (std::size_t r = 0; r < rows; ++r) {
        double ss = 0.0;
        for (index_t o = 0; o < out; ++o) {
            double h = 0.0;
            for (index_t i = 0; i < in; ++i)
                h += x[r * std::size_t(in) + std::size_t(i)] * w[std::size_t(o * in + i)];
            y[r * std::size_t(out) + std::size_t(o)] = h;
            ss += h * h;
        }
        const double n = std::max(std::sqrt(ss), 1e-12);
        for (index_t o = 0; o < out; ++o)
            y[r * std::size_t(out) + std::size_t(o)] /= n;
    }
    return y;
}

/// Largest | ||row|| - 1 | over the rows (last axis) of a contiguous view.
template <class T>
double worst_unit_norm_error(tensor_ref<const T> y) {
    const index_t n = y.extent(-1);
    double worst = 0.0;
    for (index_t r = 0; r < y.numel() / n; ++r) {
        double ss = 0.0;
        for (index_t j = 0; j < n; ++j)
            ss += double(y.data()[r * n + j]) * double(y.data()[r * n + j]);
        worst = std::max(worst, std::abs(std::sqrt(ss) - 1.0));
    }
    return worst;
}

}  // namespace

static_assert(nn::differentiable_layer<contrastive::projection_head<8, 4>>);
static_assert(nn::differentiable_layer<contrastive::projection_head<dyn, dyn, double>>);
static_assert(nn::static_in_features<contrastive::projection_head<8, 4>>() == 8);
static_assert(nn::static_out_features<contrastive::projection_head<8, 4>>() == 4);
static_assert(nn::differentiable_layer<nn::l2_normalize<dyn, double>>);

TEST_CASE("l2_normalize layer gradcheck in double, above and below eps",
          "[contrastive][l2_normalize][gradcheck]") {
    auto rng = mmfuse_test::make_rng(401);
    for (const extents& e : {extents{4, 5}, extents{2, 3, 5}, extents{3, 1}}) {
        CAPTURE(e.to_string());
        {  // rows of norm ~1: the projection branch
            nn::model<nn::l2_normalize<dyn, double>> m(nn::l2_normalize<dyn, double>{}, rng());
            REQUIRE(m.parameter_count() == 0);
            const auto x = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
            CHECK(mmfuse_test::gradcheck(m, x, rng).input_error < 1e-7);
        }
        {  // eps = 0.5 with rows of norm < 0.25: y = x / eps, the clamped branch
            nn::model<nn::l2_normalize<dyn, double>> m(
                nn::l2_normalize<dyn, double>{dim<dyn>{e[-1]}, 0.5}, rng());
            const double bound = 0.2 / std::sqrt(double(e[-1]));
            const auto x = mmfuse_test::random_tensor<double>(e, rng, -bound, bound);
            CHECK(mmfuse_test::gradcheck(m, x, rng).input_error < 1e-7);
        }
    }
    nn::model<nn::l2_normalize<5, double>> fixed(nn::l2_normalize<5, double>{}, rng());
    const auto x = mmfuse_test::random_tensor<double>({3, 5}, rng, -2.0, 2.0);
    CHECK(mmfuse_test::gradcheck(fixed, x, rng).input_error < 1e-7);
}

TEST_CASE("projection_head gradcheck in double: dx and proj.weight",
          "[contrastive][projection][gradcheck]") {
    auto rng = mmfuse_test::make_rng(402);
    {
        nn::model<contrastive::projection_head<6, 4, double>> m(
            contrastive::projection_head<6, 4, double>{}, rng());
        const auto x = mmfuse_test::random_tensor<double>({3, 6}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
    }
    {
        nn::model<contrastive::projection_head<dyn, dyn, double>> m(
            contrastive::projection_head<dyn, dyn, double>{5, 7}, rng());
        mmfuse_test::randomize(m, rng);
        const auto x = mmfuse_test::random_tensor<double>({2, 3, 5}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
        // Backward adds into proj.weight.grad (twice after one forward = twice the gradient).
        CHECK(mmfuse_test::accumulation_error(m, x, rng) < 1e-12);
    }
}

TEMPLATE_TEST_CASE("projection_head: unit-norm rows equal to normalize(x W^T)",
                   "[contrastive][projection]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(403);
    nn::model<contrastive::projection_head<dyn, dyn, T>> m(
        contrastive::projection_head<dyn, dyn, T>{9, 4}, rng());
    REQUIRE(m.parameter_index().size() == 1);
    REQUIRE(m.parameter_index()[0].name == "proj.weight");
    REQUIRE(m.parameter_index()[0].shape == extents{4, 9});
    REQUIRE(m.parameter_count() == 36);
    const auto x = mmfuse_test::random_tensor<T>({2, 5, 9}, rng, -3.0, 3.0);
    for (const bool training : {false, true}) {
        workspace<T> w(training);
        const tensor_ref<const T> y = m.net().forward(w.cx, x.cref());
        REQUIRE(y.extents() == extents{2, 5, 4});
        CHECK(worst_unit_norm_error(y) <= 10 * mmfuse_test::tolerance<T>());
        const auto ref = projection_ref(mmfuse_test::values(x.cref()),
                                        mmfuse_test::values(m.find("proj.weight")->value), 9, 4);
        CHECK(mmfuse_test::max_rel_error(mmfuse_test::values(y), ref) <=
              10 * mmfuse_test::tolerance<T>());
    }
}

TEST_CASE("projection_head init is open_clip's N(0, 1 / In) and uses no bias",
          "[contrastive][projection]") {
    const index_t in = 256, out = 64;
    nn::model<contrastive::projection_head<256, 64, double>> m(
        contrastive::projection_head<256, 64, double>{}, std::uint64_t(Catch::rngSeed()));
    REQUIRE(m.find("proj.bias") == nullptr);
    REQUIRE(!m.net().proj().has_bias());
    tensor<double> w({out, in});
    const auto v = m.find("proj.weight")->value;
    for (index_t i = 0; i < w.numel(); ++i)
        w[i] = v.data()[i];
    const auto mom = mmfuse_test::sample_moments(w, 0.0);
    const double var = 1.0 / double(in);
    // 16384 draws: the sample mean has sd sqrt(var / n) and the variance sd ~ var sqrt(2 / n).
    CHECK(std::abs(mom.mean) < 5.0 * std::sqrt(var / mom.n));
    CHECK(std::abs(mom.m2 / var - 1.0) < 5.0 * std::sqrt(2.0 / mom.n));
    // A normal, not nn.Linear's U(+-1/sqrt(In)): values beyond the uniform bound occur.
    CHECK(mom.max_abs > 1.0 / std::sqrt(double(in)));
}

TEST_CASE("projection_head and l2_normalize reject bad shapes, naming the path",
          "[contrastive][projection]") {
    using Catch::Contains;
    nn::model<contrastive::projection_head<dyn, dyn, double>> m(
        contrastive::projection_head<dyn, dyn, double>{6, 3}, 1);
    workspace<double> w(true);
    const auto bad = mmfuse_test::random_tensor<double>({2, 5}, w.rng);
    REQUIRE_THROWS_AS(m.net().forward(w.cx, bad.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().forward(w.cx, bad.cref()),
                        Contains("proj") && Contains("(..., 6)") && Contains("(2, 5)"));

    const auto x = mmfuse_test::random_tensor<double>({2, 6}, w.rng);
    m.net().forward(w.cx, x.cref());
    const auto bad_dy = mmfuse_test::random_tensor<double>({2, 4}, w.rng);
    REQUIRE_THROWS_AS(m.net().backward(w.cx, bad_dy.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, bad_dy.cref()),
                        Contains("normalize") && Contains("(2, 3)") && Contains("(2, 4)"));

    // Backward without a training-mode forward.
    nn::model<contrastive::projection_head<dyn, dyn, double>> fresh(
        contrastive::projection_head<dyn, dyn, double>{6, 3}, 2);
    const auto dy = mmfuse_test::random_tensor<double>({2, 3}, w.rng);
    REQUIRE_THROWS_AS(fresh.net().backward(w.cx, dy.cref()), shape_error);

    // The normalisation on its own: a fixed width is checked at run time too.
    nn::model<nn::l2_normalize<dyn, double>> norm(nn::l2_normalize<dyn, double>{dim<dyn>{4}}, 3);
    REQUIRE_THROWS_WITH(norm.net().forward(w.cx, bad.cref()), Contains("l2_normalize input") &&
                                                                  Contains("(..., 4)") &&
                                                                  Contains("(2, 5)"));
}
