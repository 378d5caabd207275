// nn::layer_norm, rms_norm, activations and mlp: forward against double loops written here,
// double-precision gradcheck (dx and every parameter), static and dynamic widths, PyTorch
// parameter names and default init, and bad input naming the module path and both shapes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/rms_norm.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"
#include "test_layers_util.hpp"

using namespace mmfuse;
using mmfuse_test::named;
using mmfuse_test::workspace;

namespace {

/// Reference activations in double (PyTorch formulas).
double act_ref(ops::unary_kind k, double x) {
    switch (k) {
        case ops::unary_kind::relu:
            return x > 0 ? x : 0.0;
        case ops::unary_kind::gelu_erf:
            return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
        case ops::unary_kind::gelu_tanh:
            return 0.5 * x *
                   (1.0 +
                    std::tanh(std::sqrt(2.0 / 3.141592653589793) * (x + 0.044715 * x * x * x)));
        case ops::unary_kind::silu:
            return x / (1.0 + std::exp(-x));
        case ops::unary_kind::sigmoid:
            return 1.0 / (1.0 + std::exp(-x));
        case ops::unary_kind::tanh:
            return std::tanh(x);
    }
    return 0.0;
}

/// Row-wise layer norm (affine) reference: y = (x - mean) / sqrt(var + eps) * w + b.
std::vector<double> layer_norm_ref(const std::vector<double>& x, index_t f,
                                   const std::vector<double>& w, const std::vector<double>& b,
                                   double eps) {
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / size_t(f); ++r) {
        double mean = 0, var = 0;
        for (index_t j = 0; j < f; ++j)
            mean += x[r * size_t(f) + size_t(j)];
        mean /= double(f);
        for (index_t j = 0; j < f; ++j) {
            const double d = x[r * size_t(f) + size_t(j)] - mean;
            var += d * d;
        }
        var /= double(f);
        for (index_t j = 0; j < f; ++j) {
            const size_t i = r * size_t(f) + size_t(j);
            y[i] = (x[i] - mean) / std::sqrt(var + eps) * (w.empty() ? 1.0 : w[size_t(j)]) +
                   (b.empty() ? 0.0 : b[size_t(j)]);
        }
    }
    return y;
}

/// Row-wise RMS norm reference: y = x / sqrt(mean(x^2) + eps) * w.
std::vector<double> rms_norm_ref(const std::vector<double>& x, index_t f,
                                 const std::vector<double>& w, double eps) {
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / size_t(f); ++r) {
        double ms = 0;
        for (index_t j = 0; j < f; ++j)
            ms += x[r * size_t(f) + size_t(j)] * x[r * size_t(f) + size_t(j)];
        ms /= double(f);
        for (index_t j = 0; j < f; ++j) {
            const size_t i = r * size_t(f) + size_t(j);
            y[i] = x[i] / std::sqrt(ms + eps) * (w.empty() ? 1.0 : w[size_t(j)]);
        }
    }
    return y;
}

/// Linear reference on rows: y[r, o] = sum_i x[r, i] w[o, i] + b[o].
std::vector<double> linear_ref(const std::vector<double>& x, index_t in, index_t out,
                               const std::vector<double>& w, const std::vector<double>& b) {
    const size_t rows = x.size() / size_t(in);
    std::vector<double> y(rows * size_t(out));
    for (size_t r = 0; r < rows; ++r)
        for (index_t o = 0; o < out; ++o) {
            double acc = b.empty() ? 0.0 : b[size_t(o)];
            for (index_t i = 0; i < in; ++i)
                acc += x[r * size_t(in) + size_t(i)] * w[size_t(o * in + i)];
            y[r * size_t(out) + size_t(o)] = acc;
        }
    return y;
}

constexpr ops::unary_kind all_kinds[] = {ops::unary_kind::relu,      ops::unary_kind::gelu_erf,
                                         ops::unary_kind::gelu_tanh, ops::unary_kind::silu,
                                         ops::unary_kind::sigmoid,   ops::unary_kind::tanh};

}  // namespace

// ---------------------------------------------------------------------------------- layer_norm

TEMPLATE_TEST_CASE("layer_norm forward matches the normalised affine rows", "[nn][layer_norm]",
                   float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(301);
    const index_t f = 2 + index_t(rng() % 9);
    nn::model<nn::layer_norm<dyn, T>> m(nn::layer_norm<dyn, T>{f}, rng());
    REQUIRE(m.parameter_index().size() == 2);
    REQUIRE(m.parameter_index()[0].name == "weight");
    REQUIRE(m.parameter_index()[1].name == "bias");
    // PyTorch's init: ones and zeros.
    REQUIRE(mmfuse_test::values(m.find("weight")->value) == std::vector<double>(size_t(f), 1.0));
    REQUIRE(mmfuse_test::values(m.find("bias")->value) == std::vector<double>(size_t(f), 0.0));
    mmfuse_test::randomize(m, rng);
    auto x = mmfuse_test::random_tensor<T>({3, 2, f}, rng, -2.0, 3.0);
    workspace<T> w(false);
    const auto y = m.net().forward(w.cx, x.cref());
    REQUIRE(y.extents() == x.extents());
    const auto ref = layer_norm_ref(mmfuse_test::values(x.cref()), f,
                                    mmfuse_test::values(m.find("weight")->value),
                                    mmfuse_test::values(m.find("bias")->value), 1e-5);
    REQUIRE(mmfuse_test::max_rel_error(mmfuse_test::values(y), ref) <=
            10 * mmfuse_test::tolerance<T>());
}

TEST_CASE("layer_norm without affine / without bias, and a strided input", "[nn][layer_norm]") {
    auto rng = mmfuse_test::make_rng(302);
    nn::model<nn::layer_norm<5, double>> plain(nn::layer_norm<5, double>{{}, 1e-3, false}, 1);
    REQUIRE(plain.parameter_count() == 0);
    nn::model<nn::layer_norm<5, double>> nobias(nn::layer_norm<5, double>{{}, 1e-5, true, false},
                                                1);
    REQUIRE(nobias.parameter_index().size() == 1);
    mmfuse_test::randomize(nobias, rng);
    auto xt = mmfuse_test::random_tensor<double>({5, 4}, rng);
    const auto x = xt.cref().transpose(0, 1);  // (4, 5), not contiguous
    std::vector<double> xv;
    for (index_t r = 0; r < 4; ++r)
        for (index_t c = 0; c < 5; ++c)
            xv.push_back(x(r, c));
    workspace<double> w(false);
    REQUIRE(mmfuse_test::max_rel_error(mmfuse_test::values(plain.net().forward(w.cx, x)),
                                       layer_norm_ref(xv, 5, {}, {}, 1e-3)) < 1e-12);
    REQUIRE(mmfuse_test::max_rel_error(
                mmfuse_test::values(nobias.net().forward(w.cx, x)),
                layer_norm_ref(xv, 5, mmfuse_test::values(nobias.find("weight")->value), {},
                               1e-5)) < 1e-12);
}

TEST_CASE("layer_norm gradcheck in double", "[nn][layer_norm][gradcheck]") {
    auto rng = mmfuse_test::make_rng(303);
    for (const bool affine : {true, false}) {
        nn::model<nn::layer_norm<6, double>> m(nn::layer_norm<6, double>{{}, 1e-5, affine}, rng());
        mmfuse_test::randomize(m, rng);
        auto x = mmfuse_test::random_tensor<double>({2, 3, 6}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
        CHECK(mmfuse_test::accumulation_error(m, x, rng) < 1e-12);
    }
}

// ------------------------------------------------------------------------------------ rms_norm

TEMPLATE_TEST_CASE("rms_norm forward, PyTorch's eps default and init", "[nn][rms_norm]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(311);
    const index_t f = 2 + index_t(rng() % 9);
    nn::model<nn::rms_norm<dyn, T>> m(nn::rms_norm<dyn, T>{f}, rng());
    // eps=None -> torch.finfo(dtype).eps
    REQUIRE(m.net().eps() ==
            (std::is_same_v<T, float> ? 1.1920928955078125e-07 : 2.220446049250313e-16));
    REQUIRE(nn::rms_norm<4, T>{{}, 1e-6}.eps() == 1e-6);
    REQUIRE(m.parameter_index().size() == 1);
    REQUIRE(m.parameter_index()[0].name == "weight");
    REQUIRE(mmfuse_test::values(m.find("weight")->value) == std::vector<double>(size_t(f), 1.0));
    mmfuse_test::randomize(m, rng);
    auto x = mmfuse_test::random_tensor<T>({4, f}, rng, -2.0, 2.0);
    workspace<T> w(false);
    const auto y = m.net().forward(w.cx, x.cref());
    const auto ref = rms_norm_ref(mmfuse_test::values(x.cref()), f,
                                  mmfuse_test::values(m.find("weight")->value), m.net().eps());
    REQUIRE(mmfuse_test::max_rel_error(mmfuse_test::values(y), ref) <=
            10 * mmfuse_test::tolerance<T>());
}

TEST_CASE("rms_norm gradcheck in double", "[nn][rms_norm][gradcheck]") {
    auto rng = mmfuse_test::make_rng(312);
    for (const bool affine : {true, false}) {
        nn::model<nn::rms_norm<5, double>> m(nn::rms_norm<5, double>{{}, 1e-6, affine}, rng());
        mmfuse_test::randomize(m, rng);
        auto x = mmfuse_test::random_tensor<double>({3, 2, 5}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
        CHECK(mmfuse_test::accumulation_error(m, x, rng) < 1e-12);
    }
}

TEMPLATE_TEST_CASE("norm layers reject a wrong width or rank naming the path and shapes",
                   "[nn][layer_norm][rms_norm]", float, double) {
    using T = TestType;
    nn::model<named<nn::layer_norm<8, T>>> ln(named<nn::layer_norm<8, T>>{}, 1);
    nn::model<named<nn::rms_norm<dyn, T>>> rn(named<nn::rms_norm<dyn, T>>{index_t(8)}, 1);
    REQUIRE(ln.parameter_index()[0].name == "enc.weight");
    tensor<T> x7({3, 7}), x0{extents{}};
    workspace<T> w(true);
    REQUIRE_THROWS_AS(ln.net().forward(w.cx, x7.cref()), shape_error);
    REQUIRE_THROWS_WITH(ln.net().forward(w.cx, x7.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("layer_norm input") &&
                            Catch::Contains("(..., 8)") && Catch::Contains("(3, 7)"));
    REQUIRE_THROWS_WITH(ln.net().forward(w.cx, x0.cref()), Catch::Contains("in 'enc'") &&
                                                               Catch::Contains("(..., 8)") &&
                                                               Catch::Contains("got shape ()"));
    REQUIRE_THROWS_WITH(rn.net().forward(w.cx, x7.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("rms_norm input") &&
                            Catch::Contains("(..., 8)") && Catch::Contains("(3, 7)"));
    // backward: before any training forward, then with a wrong dy shape
    tensor<T> x8 = mmfuse_test::random_tensor<T>({2, 8}, w.rng), dy({3, 8});
    REQUIRE_THROWS_WITH(ln.net().backward(w.cx, dy.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("training-mode forward"));
    ln.net().forward(w.cx, x8.cref());
    rn.net().forward(w.cx, x8.cref());
    REQUIRE_THROWS_WITH(ln.net().backward(w.cx, dy.cref()),
                        Catch::Contains("layer_norm output gradient") &&
                            Catch::Contains("(2, 8)") && Catch::Contains("(3, 8)"));
    REQUIRE_THROWS_WITH(rn.net().backward(w.cx, dy.cref()),
                        Catch::Contains("rms_norm output gradient") && Catch::Contains("(2, 8)") &&
                            Catch::Contains("(3, 8)"));
    // an evaluation forward drops what was saved
    w.cx.training = false;
    ln.net().forward(w.cx, x8.cref());
    tensor<T> dy8({2, 8});
    REQUIRE_THROWS_WITH(ln.net().backward(w.cx, dy8.cref()),
                        Catch::Contains("training-mode forward"));
}

// --------------------------------------------------------------------------------- activations

TEMPLATE_TEST_CASE("activation layers match the PyTorch formulas", "[nn][activation]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(321);
    auto x = mmfuse_test::random_tensor<T>({2, 3, 7}, rng, -4.0, 4.0);
    const auto xv = mmfuse_test::values(x.cref());
    workspace<T> w(false);
    const auto check = [&]<ops::unary_kind K>(nn::activation<K, T> layer) {
        INFO(ops::unary_name(K));
        static_assert(nn::differentiable_layer<nn::activation<K, T>>);
        static_assert(nn::static_in_features<nn::activation<K, T>>() == dyn);
        const auto y = layer.forward(w.cx, x.cref());
        REQUIRE(y.extents() == x.extents());
        std::vector<double> ref;
        for (double v : xv)
            ref.push_back(act_ref(K, v));
        REQUIRE(mmfuse_test::max_rel_error(mmfuse_test::values(y), ref) <=
                10 * mmfuse_test::tolerance<T>());
    };
    check(nn::relu<T>{});
    check(nn::gelu<T>{});
    check(nn::gelu_tanh<T>{});
    check(nn::silu<T>{});
    check(nn::sigmoid<T>{});
    check(nn::tanh<T>{});
}

TEST_CASE("activation gradcheck in double, every kind", "[nn][activation][gradcheck]") {
    auto rng = mmfuse_test::make_rng(322);
    const auto run = [&]<ops::unary_kind K>(nn::activation<K, double> layer) {
        INFO(ops::unary_name(K));
        nn::model<nn::activation<K, double>> m(layer, rng());
        REQUIRE(m.parameter_count() == 0);
        auto x = mmfuse_test::random_tensor<double>({3, 4}, rng, -3.0, 3.0);
        CHECK(mmfuse_test::gradcheck(m, x, rng).input_error < 1e-7);
    };
    run(nn::relu<double>{});
    run(nn::gelu<double>{});
    run(nn::gelu_tanh<double>{});
    run(nn::silu<double>{});
    run(nn::sigmoid<double>{});
    run(nn::tanh<double>{});
}

TEST_CASE("activation backward rejects a wrong gradient shape", "[nn][activation]") {
    nn::model<named<nn::gelu<float>>> m(named<nn::gelu<float>>{}, 1);
    workspace<float> w(true);
    tensor<float> x = mmfuse_test::random_tensor<float>({2, 5}, w.rng), dy({5, 2});
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("training-mode forward"));
    m.net().forward(w.cx, x.cref());
    REQUIRE_THROWS_AS(m.net().backward(w.cx, dy.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()),
                        Catch::Contains("in 'enc'") &&
                            Catch::Contains("gelu_erf output gradient") &&
                            Catch::Contains("(2, 5)") && Catch::Contains("(5, 2)"));
}

// ----------------------------------------------------------------------------------------- mlp

TEMPLATE_TEST_CASE("mlp forward is fc2(act(fc1(x))) with PyTorch names", "[nn][mlp]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(331);
    const index_t in = 1 + index_t(rng() % 7), hid = 1 + index_t(rng() % 9),
                  out = 1 + index_t(rng() % 5);
    using net = nn::mlp<dyn, dyn, dyn, ops::unary_kind::gelu_erf, T>;
    nn::model<net> m(net{in, hid, out}, rng());
    const auto idx = m.parameter_index();
    REQUIRE(idx.size() == 4);
    REQUIRE(idx[0].name == "fc1.weight");
    REQUIRE(idx[0].shape == extents{hid, in});
    REQUIRE(idx[1].name == "fc1.bias");
    REQUIRE(idx[2].name == "fc2.weight");
    REQUIRE(idx[2].shape == extents{out, hid});
    REQUIRE(idx[3].name == "fc2.bias");
    REQUIRE(m.parameter_count() == hid * in + hid + out * hid + out);
    // nn.Linear's default init: |w| <= 1/sqrt(fan_in)
    for (double v : mmfuse_test::values(m.find("fc2.weight")->value))
        REQUIRE(std::abs(v) <= 1.0 / std::sqrt(double(hid)) + 1e-7);
    auto x = mmfuse_test::random_tensor<T>({2, 3, in}, rng);
    workspace<T> w(false);
    const auto y = m.net().forward(w.cx, x.cref());
    REQUIRE(y.extents() == extents{2, 3, out});
    auto h = linear_ref(mmfuse_test::values(x.cref()), in, hid,
                        mmfuse_test::values(m.find("fc1.weight")->value),
                        mmfuse_test::values(m.find("fc1.bias")->value));
    for (double& v : h)
        v = act_ref(ops::unary_kind::gelu_erf, v);
    const auto ref = linear_ref(h, hid, out, mmfuse_test::values(m.find("fc2.weight")->value),
                                mmfuse_test::values(m.find("fc2.bias")->value));
    REQUIRE(mmfuse_test::max_rel_error(mmfuse_test::values(y), ref) <=
            10 * mmfuse_test::tolerance<T>());
    static_assert(nn::differentiable_layer<nn::mlp<4, 8, 2>>);
    static_assert(nn::static_in_features<nn::mlp<4, 8, 2>>() == 4);
    static_assert(nn::static_out_features<nn::mlp<4, 8, 2>>() == 2);
}

TEST_CASE("mlp gradcheck in double, with and without bias", "[nn][mlp][gradcheck]") {
    auto rng = mmfuse_test::make_rng(332);
    for (const bool bias : {true, false}) {
        using net = nn::mlp<4, 6, 3, ops::unary_kind::silu, double>;
        nn::model<net> m(net{{}, {}, {}, bias}, rng());
        REQUIRE(m.parameter_count() == (bias ? 24 + 6 + 18 + 3 : 42));
        auto x = mmfuse_test::random_tensor<double>({2, 2, 4}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
        CHECK(mmfuse_test::accumulation_error(m, x, rng) < 1e-12);
    }
}

TEST_CASE("mlp errors name the child that rejected the input", "[nn][mlp]") {
    using net = nn::mlp<dyn, dyn, dyn>;
    nn::model<named<net>> m(named<net>{index_t(8), index_t(16), index_t(4)}, 1);
    workspace<float> w(true);
    tensor<float> x({2, 7});
    REQUIRE_THROWS_WITH(m.net().forward(w.cx, x.cref()), Catch::Contains("in 'enc.fc1'") &&
                                                             Catch::Contains("(..., 8)") &&
                                                             Catch::Contains("(2, 7)"));
    tensor<float> x8 = mmfuse_test::random_tensor<float>({2, 8}, w.rng), dy({2, 5});
    m.net().forward(w.cx, x8.cref());
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()), Catch::Contains("in 'enc.fc2'") &&
                                                               Catch::Contains("(2, 4)") &&
                                                               Catch::Contains("(2, 5)"));
}
