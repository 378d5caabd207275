// compose::seq / parallel / residual / named / modalities: forward against double loops,
// gradcheck, PyTorch-style names, static width traits and run-time shape errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/compose/modalities.hpp"
#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/parallel.hpp"
#include "mmfuse/compose/residual.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using compose::named;
using compose::parallel;
using compose::residual;
using compose::seq;
namespace reduce = compose::reduce;

namespace {

template <class T>
using lin = nn::linear<dyn, dyn, T>;

/// relu declared width-preserving (what nn::activation declares once it carries the member).
template <class T = float>
struct keep_relu : nn::relu<T> {
    static constexpr bool preserves_width = true;
};

/// rows x in -> rows x out in double: x W^T + b, read from the model's parameter `prefix`.
template <class M>
std::vector<double> ref_linear(M& m, const std::string& prefix, const std::vector<double>& x,
                               index_t rows) {
    const auto w = m.find(prefix + "weight")->value;
    const auto* bp = m.find(prefix + "bias");
    const index_t out = w.extent(0), in = w.extent(1);
    REQUIRE(index_t(x.size()) == rows * in);
    std::vector<double> y(size_t(rows * out));
    for (index_t r = 0; r < rows; ++r)
        for (index_t o = 0; o < out; ++o) {
            double acc = bp ? double(bp->value(o)) : 0.0;
            for (index_t i = 0; i < in; ++i)
                acc += x[size_t(r * in + i)] * double(w(o, i));
            y[size_t(r * out + o)] = acc;
        }
    return y;
}

std::vector<double> ref_relu(std::vector<double> x) {
    for (double& v : x)
        v = v > 0 ? v : 0.0;
    return x;
}

template <class T>
std::vector<double> values(const tensor<T>& t) {
    return std::vector<double>(t.data(), t.data() + t.numel());
}
template <class T>
double rel_error(tensor_ref<const T> y, const std::vector<double>& ref) {
    return mmfuse_test::max_rel_error(std::span<const T>(y.data(), size_t(y.numel())),
                                      std::span<const double>(ref));
}

template <class T>
nn::step_context<T> context(growing_arena& ws, bool training) {
    return {&backend::default_stream(), &ws, training};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Static width traits (compile-time; the failing spellings are in tests/compile_fail).

static_assert(seq<nn::linear<8, 16>, nn::linear<16, 4>>::in_features == 8);
static_assert(seq<nn::linear<8, 16>, nn::linear<16, 4>>::out_features == 4);
static_assert(seq<nn::linear<8, 16>, keep_relu<>>::out_features == 16);
static_assert(seq<keep_relu<>, nn::linear<8, 16>>::in_features == 8);
static_assert(seq<nn::linear<8, 16>, keep_relu<>, nn::linear<16, 4>>::out_features == 4);
static_assert(seq<nn::linear<8, 16>, nn::relu<>>::out_features == 16 &&
              compose::width_preserving<nn::relu<>>);  // nn::activation preserves width
static_assert(seq<nn::linear<8, dyn>, nn::linear<dyn, 4>>::out_features == 4);
static_assert(seq<keep_relu<>>::preserves_width && seq<keep_relu<>>::in_features == dyn);
static_assert(parallel<reduce::concat, nn::linear<8, 4>, nn::linear<8, 5>>::out_features == 9);
static_assert(parallel<reduce::concat, nn::linear<8, 4>, keep_relu<>>::out_features == 12);
static_assert(parallel<reduce::concat, nn::linear<8, 4>, lin<float>>::out_features == dyn);
static_assert(parallel<reduce::sum, nn::linear<8, 4>, nn::linear<dyn, 4>>::in_features == 8);
static_assert(parallel<reduce::mean, nn::linear<8, 4>, nn::linear<8, 4>>::out_features == 4);
static_assert(residual<nn::linear<6, 6>>::in_features == 6 &&
              residual<nn::linear<6, 6>>::preserves_width);
static_assert(seq<nn::linear<4, 6>, residual<nn::linear<6, 6>>, nn::linear<6, 2>>::out_features ==
              2);
static_assert(seq<seq<nn::linear<4, 6>, keep_relu<>>, nn::linear<6, 2>>::in_features == 4);
static_assert(nn::differentiable_layer<seq<nn::linear<4, 6>, nn::relu<>, nn::linear<6, 2>>>);
static_assert(nn::differentiable_layer<parallel<reduce::mean, nn::linear<4, 4>, nn::relu<>>>);
static_assert(nn::differentiable_layer<residual<seq<nn::linear<4, 4>, nn::relu<>>>>);
static_assert(compose::modalities<named<"a", nn::linear<2, 3>>>::index_of<"a">() == 0);

// ---------------------------------------------------------------------------------------
// seq

TEMPLATE_TEST_CASE("seq forward matches the chained double loops; names are 0., 2.",
                   "[nn][compose][seq]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(301);
    const index_t in = 1 + index_t(rng() % 7), hid = 1 + index_t(rng() % 7),
                  out = 1 + index_t(rng() % 7);
    using net = seq<lin<T>, nn::relu<T>, lin<T>>;
    nn::model<net> m(net{lin<T>{in, hid}, nn::relu<T>{}, lin<T>{hid, out}}, rng());
    REQUIRE(m.parameter_index().size() == 4);
    REQUIRE(m.parameter_index()[0].name == "0.weight");
    REQUIRE(m.parameter_index()[1].name == "0.bias");
    REQUIRE(m.parameter_index()[2].name == "2.weight");
    REQUIRE(m.parameter_index()[3].name == "2.bias");
    REQUIRE(m.net().template get<2>().path() == "2");

    auto x = mmfuse_test::random_tensor<T>({2, 3, in}, rng);
    growing_arena ws;
    auto cx = context<T>(ws, false);
    const auto y = m.net().forward(cx, x.cref());
    REQUIRE(y.extents() == extents{2, 3, out});
    const auto ref = ref_linear(m, "2.", ref_relu(ref_linear(m, "0.", values(x), 6)), 6);
    REQUIRE(rel_error<T>(y, ref) <= mmfuse_test::tolerance<T>());
}

TEST_CASE("seq gradcheck in double (linear, gelu, linear, nested seq)",
          "[nn][compose][seq][gradcheck]") {
    auto rng = mmfuse_test::make_rng(302);
    using inner = seq<nn::linear<5, 4, double>, nn::tanh<double>>;
    using net = seq<nn::linear<3, 5, double>, nn::gelu<double>, inner, nn::linear<4, 2, double>>;
    nn::model<net> m(net{}, rng());
    REQUIRE(m.find("2.0.weight") != nullptr);
    REQUIRE(m.find("3.bias") != nullptr);
    auto x = mmfuse_test::random_tensor<double>({2, 3, 3}, rng);
    const auto res = mmfuse_test::gradcheck(m, x, rng);
    REQUIRE(res.input_error < 1e-7);
    REQUIRE(res.parameter_error < 1e-7);
}

TEST_CASE("seq: a dynamic width mismatch throws from the stage, naming its path",
          "[nn][compose][seq]") {
    using enc = seq<lin<float>, nn::relu<float>, lin<float>>;
    using net = compose::modalities<named<"text", enc>>;
    // Stage 0 gives 16 features, stage 2 expects 32.
    nn::model<net> m(net{named<"text", enc>{enc{lin<float>{8, 16}, {}, lin<float>{32, 4}}}}, 3);
    REQUIRE(m.parameter_index()[0].name == "text.0.weight");
    growing_arena ws;
    auto cx = context<float>(ws, true);
    tensor<float> good({3, 8}), bad({3, 7});
    REQUIRE_THROWS_AS(m.net().forward(cx, {good.cref()}), shape_error);
    REQUIRE_THROWS_WITH(m.net().forward(cx, {good.cref()}), Catch::Contains("in 'text.2'") &&
                                                                Catch::Contains("(..., 32)") &&
                                                                Catch::Contains("(3, 16)"));
    REQUIRE_THROWS_WITH(m.net().forward(cx, {bad.cref()}), Catch::Contains("in 'text.0'") &&
                                                               Catch::Contains("(..., 8)") &&
                                                               Catch::Contains("(3, 7)"));
}

// ---------------------------------------------------------------------------------------
// parallel

TEMPLATE_TEST_CASE("parallel concat / sum / mean forward match double loops",
                   "[nn][compose][parallel]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(303);
    const index_t in = 1 + index_t(rng() % 6), a = 1 + index_t(rng() % 6),
                  b = 1 + index_t(rng() % 6);
    auto x = mmfuse_test::random_tensor<T>({4, in}, rng);
    growing_arena ws;
    auto cx = context<T>(ws, false);
    {
        using net = parallel<reduce::concat, lin<T>, nn::relu<T>, lin<T>>;
        nn::model<net> m(net{lin<T>{in, a}, {}, lin<T>{in, b}}, rng());
        REQUIRE(m.parameter_index()[0].name == "0.weight");
        REQUIRE(m.parameter_index()[2].name == "2.weight");
        const auto y = m.net().forward(cx, x.cref());
        REQUIRE(y.extents() == extents{4, a + in + b});
        const auto y0 = ref_linear(m, "0.", values(x), 4);
        const auto y1 = ref_relu(values(x));
        const auto y2 = ref_linear(m, "2.", values(x), 4);
        std::vector<double> ref;
        for (index_t r = 0; r < 4; ++r) {
            for (index_t j = 0; j < a; ++j)
                ref.push_back(y0[size_t(r * a + j)]);
            for (index_t j = 0; j < in; ++j)
                ref.push_back(y1[size_t(r * in + j)]);
            for (index_t j = 0; j < b; ++j)
                ref.push_back(y2[size_t(r * b + j)]);
        }
        REQUIRE(rel_error<T>(y, ref) <= mmfuse_test::tolerance<T>());
    }
    for (const bool mean : {false, true}) {
        using sum_net = parallel<reduce::sum, lin<T>, lin<T>, named<"c", lin<T>>>;
        using mean_net = parallel<reduce::mean, lin<T>, lin<T>, named<"c", lin<T>>>;
        const auto run = [&](auto& m) {
            REQUIRE(m.parameter_index()[4].name == "c.weight");
            const auto y = m.net().forward(cx, x.cref());
            REQUIRE(y.extents() == extents{4, a});
            std::vector<double> ref(size_t(4 * a), 0.0);
            for (const char* p : {"0.", "1.", "c."}) {
                const auto yi = ref_linear(m, p, values(x), 4);
                for (size_t k = 0; k < ref.size(); ++k)
                    ref[k] += yi[k] / (mean ? 3.0 : 1.0);
            }
            REQUIRE(rel_error<T>(y, ref) <= mmfuse_test::tolerance<T>());
        };
        if (mean) {
            nn::model<mean_net> m(mean_net{lin<T>{in, a}, lin<T>{in, a}, named<"c", lin<T>>{in, a}},
                                  rng());
            run(m);
        } else {
            nn::model<sum_net> m(sum_net{lin<T>{in, a}, lin<T>{in, a}, named<"c", lin<T>>{in, a}},
                                 rng());
            run(m);
        }
    }
}

TEST_CASE("parallel gradcheck in double for concat, sum and mean",
          "[nn][compose][parallel][gradcheck]") {
    auto rng = mmfuse_test::make_rng(304);
    auto x = mmfuse_test::random_tensor<double>({3, 2, 4}, rng);
    const auto check = [&](auto& m) {
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        REQUIRE(res.input_error < 1e-7);
        REQUIRE(res.parameter_error < 1e-7);
    };
    using L = nn::linear<4, 3, double>;
    {
        using net = parallel<reduce::concat, L, nn::tanh<double>, nn::linear<4, 2, double>>;
        nn::model<net> m(net{}, rng());
        check(m);
    }
    {
        using net = parallel<reduce::sum, L, seq<L, nn::sigmoid<double>>>;
        nn::model<net> m(net{}, rng());
        check(m);
    }
    {
        using net =
            parallel<reduce::mean, L, L,
                     seq<nn::linear<4, 5, double>, nn::silu<double>, nn::linear<5, 3, double>>>;
        nn::model<net> m(net{}, rng());
        check(m);
    }
    {
        using net = parallel<reduce::mean, L>;  // one branch: the identity reduction
        nn::model<net> m(net{}, rng());
        check(m);
    }
}

TEST_CASE("parallel rejects unequal branch shapes and gradients, naming its path",
          "[nn][compose][parallel]") {
    using net = seq<lin<float>, parallel<reduce::sum, lin<float>, lin<float>>>;
    nn::model<net> m(
        net{lin<float>{5, 4},
            parallel<reduce::sum, lin<float>, lin<float>>{lin<float>{4, 3}, lin<float>{4, 2}}},
        1);
    growing_arena ws;
    auto cx = context<float>(ws, true);
    tensor<float> x({6, 5});
    REQUIRE_THROWS_AS(m.net().forward(cx, x.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().forward(cx, x.cref()),
                        Catch::Contains("in '1'") && Catch::Contains("branch 1 output") &&
                            Catch::Contains("(6, 3)") && Catch::Contains("(6, 2)"));

    using cat = parallel<reduce::concat, lin<float>, lin<float>>;
    nn::model<cat> c(cat{lin<float>{5, 3}, lin<float>{5, 2}}, 2);
    ws.reset();
    REQUIRE_THROWS_WITH(c.net().backward(cx, x.cref()),
                        Catch::Contains("a training-mode forward first"));
    REQUIRE(c.net().forward(cx, x.cref()).extents() == extents{6, 5});
    tensor<float> dy({6, 4});
    REQUIRE_THROWS_WITH(c.net().backward(cx, dy.cref()),
                        Catch::Contains("parallel output gradient") && Catch::Contains("(6, 5)") &&
                            Catch::Contains("(6, 4)"));
}

// ---------------------------------------------------------------------------------------
// residual

TEMPLATE_TEST_CASE("residual forward is x + L(x); names are transparent or named",
                   "[nn][compose][residual]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(305);
    const index_t f = 1 + index_t(rng() % 8);
    using net = seq<residual<lin<T>>, residual<named<"fn", lin<T>>>>;
    nn::model<net> m(net{residual<lin<T>>{lin<T>{f, f}},
                         residual<named<"fn", lin<T>>>{named<"fn", lin<T>>{f, f}}},
                     rng());
    REQUIRE(m.parameter_index()[0].name == "0.weight");
    REQUIRE(m.parameter_index()[2].name == "1.fn.weight");
    auto x = mmfuse_test::random_tensor<T>({3, f}, rng);
    growing_arena ws;
    auto cx = context<T>(ws, false);
    const auto y = m.net().forward(cx, x.cref());
    auto h = ref_linear(m, "0.", values(x), 3);
    for (size_t k = 0; k < h.size(); ++k)
        h[k] += double(x[index_t(k)]);
    auto ref = ref_linear(m, "1.fn.", h, 3);
    for (size_t k = 0; k < ref.size(); ++k)
        ref[k] += h[k];
    REQUIRE(rel_error<T>(y, ref) <= mmfuse_test::tolerance<T>());
}

TEST_CASE("residual gradcheck in double and a run-time width error",
          "[nn][compose][residual][gradcheck]") {
    auto rng = mmfuse_test::make_rng(306);
    using block =
        residual<seq<nn::linear<4, 6, double>, nn::gelu<double>, nn::linear<6, 4, double>>>;
    using net = seq<block, block>;
    nn::model<net> m(net{}, rng());
    REQUIRE(m.find("1.2.weight") != nullptr);
    auto x = mmfuse_test::random_tensor<double>({2, 3, 4}, rng);
    const auto res = mmfuse_test::gradcheck(m, x, rng);
    REQUIRE(res.input_error < 1e-7);
    REQUIRE(res.parameter_error < 1e-7);

    using bad = named<"skip", residual<lin<float>>>;
    nn::model<compose::modalities<bad>> mb(compose::modalities<bad>{bad{lin<float>{4, 3}}}, 1);
    growing_arena ws;
    auto cx = context<float>(ws, true);
    tensor<float> xb({2, 4});
    REQUIRE_THROWS_WITH(mb.net().forward(cx, {xb.cref()}),
                        Catch::Contains("in 'skip'") && Catch::Contains("residual branch output") &&
                            Catch::Contains("(2, 4)") && Catch::Contains("(2, 3)"));
}

// ---------------------------------------------------------------------------------------
// modalities

TEST_CASE("modalities: per-modality forward, backward by finite differences, absent inputs",
          "[nn][compose][modalities][gradcheck]") {
    auto rng = mmfuse_test::make_rng(307);
    using text = named<"text", seq<named<"proj", nn::linear<3, 2, double>>, nn::tanh<double>>>;
    using image = named<"image", nn::linear<4, 5, double>>;
    using net = compose::modalities<text, image>;
    static_assert(net::index_of<"image">() == 1 && net::names()[0] == "text");
    nn::model<net> m(net{}, rng());
    REQUIRE(m.parameter_index()[0].name == "text.proj.weight");
    REQUIRE(m.parameter_index()[1].name == "text.proj.bias");
    REQUIRE(m.parameter_index()[2].name == "image.weight");
    REQUIRE(m.net().get<"image">().path() == "image");
    REQUIRE(m.net().get<"text">().get<0>().path() == "text.proj");

    auto xt = mmfuse_test::random_tensor<double>({2, 3}, rng);
    auto xi = mmfuse_test::random_tensor<double>({3, 4}, rng);
    auto rt = mmfuse_test::random_tensor<double>({2, 2}, rng);
    auto ri = mmfuse_test::random_tensor<double>({3, 5}, rng);
    growing_arena ws;
    auto cx = context<double>(ws, true);

    // Forward against double loops.
    auto ys = m.net().forward(cx, {xt.cref(), xi.cref()});
    auto ref_t = ref_linear(m, "text.proj.", values(xt), 2);
    for (double& v : ref_t)
        v = std::tanh(v);
    REQUIRE(rel_error<double>(ys[0], ref_t) < 1e-12);
    REQUIRE(rel_error<double>(ys[1], ref_linear(m, "image.", values(xi), 3)) < 1e-12);

    // loss = sum(rt * y_text) + sum(ri * y_image); analytic against central differences.
    const auto loss = [&] {
        ws.reset();
        const auto y = m.net().forward(cx, {xt.cref(), xi.cref()});
        double s = 0;
        for (index_t k = 0; k < y[0].numel(); ++k)
            s += y[0].data()[k] * rt[k];
        for (index_t k = 0; k < y[1].numel(); ++k)
            s += y[1].data()[k] * ri[k];
        return s;
    };
    m.zero_grad();
    loss();
    const auto dxs = m.net().backward(cx, {rt.cref(), ri.cref()});
    REQUIRE(dxs[0].extents() == xt.extents());
    REQUIRE(dxs[1].extents() == xi.extents());
    const std::vector<double> dt(dxs[0].data(), dxs[0].data() + 6),
        di(dxs[1].data(), dxs[1].data() + 12);
    const std::vector<double> grads(m.gradients().data(),
                                    m.gradients().data() + m.gradients().numel());
    const double h = 1e-6;
    double worst = 0;
    const auto numeric = [&](double& v) { return mmfuse_test::central_difference(v, loss, h); };
    for (index_t k = 0; k < 6; ++k)
        worst = std::max(worst, std::abs(numeric(xt[k]) - dt[size_t(k)]));
    for (index_t k = 0; k < 12; ++k)
        worst = std::max(worst, std::abs(numeric(xi[k]) - di[size_t(k)]));
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k)
            worst = std::max(worst, std::abs(numeric(m.parameters().data()[info.offset + k]) -
                                             grads[size_t(info.offset + k)]));
    REQUIRE(worst < 1e-7);

    // An absent modality is skipped both ways.
    ws.reset();
    m.zero_grad();
    ys = m.net().forward(cx, {tensor_ref<const double>{}, xi.cref()});
    REQUIRE(compose::is_absent(ys[0]));
    REQUIRE(ys[1].extents() == extents{3, 5});
    const auto dx2 = m.net().backward(cx, {tensor_ref<const double>{}, ri.cref()});
    REQUIRE(compose::is_absent(dx2[0]));
    REQUIRE(m.find("text.proj.weight")->grad(0, 0) == 0.0);
    REQUIRE(m.find("image.weight")->grad(0, 0) != 0.0);
}
