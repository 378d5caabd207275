// nn::dropout, embedding and the positional encodings: forward against loops written here
// (the dropout mask re-derived from the documented Philox mapping), double-precision
// gradcheck, train / eval modes, replay, and bad input naming the path and shapes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/dropout.hpp"
#include "mmfuse/nn/embedding.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/positional.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"
#include "test_layers_util.hpp"

using namespace mmfuse;
using mmfuse_test::named;
using mmfuse_test::values;
using mmfuse_test::workspace;

namespace {

/// Uniform number i of training step k, straight from the Philox words (the mapping that
/// `nn::dropout` documents: words from position k * 2^32, 24 / 53 top bits).
template <class T>
double dropout_uniform(std::uint64_t seed, std::uint64_t subsequence, std::uint64_t k,
                       std::uint64_t i) {
    const philox_stream s = philox_stream::from_seed(seed, subsequence);
    const std::uint64_t base = k << 32;
    if constexpr (std::is_same_v<T, float>) {
        return double(s.word(base + i) >> 8) / 16777216.0;
    } else {
        const std::uint64_t w =
            (std::uint64_t(s.word(base + 2 * i)) << 32) | s.word(base + 2 * i + 1);
        return double(w >> 11) / 9007199254740992.0;
    }
}

/// Expected dropout output of step k: x_i / (1 - p) when u_i >= p, else 0.
template <class T>
std::vector<double> dropout_ref(const std::vector<double>& x, double p, std::uint64_t seed,
                                std::uint64_t sub, std::uint64_t k) {
    std::vector<double> y;
    for (size_t i = 0; i < x.size(); ++i)
        y.push_back(dropout_uniform<T>(seed, sub, k, i) >= p
                        ? double(T(T(x[i]) * T(1.0 / (1.0 - p))))
                        : 0.0);
    return y;
}

/// Test adapter that makes an embedding gradcheckable: y = embedding(indices) + x, with
/// fixed indices (dx = dy; the harness then checks weight.grad).
struct embedding_probe {
    using value_type = double;
    nn::embedding<dyn, dyn, double> emb;
    tensor<std::int64_t> indices;

    template <class V>
    void visit(V& v) {
        v.child("emb", emb);
    }
    void reset_parameters(philox_generator& g) { emb.reset_parameters(g); }
    tensor_ref<const double> forward(nn::step_context<double>& cx, tensor_ref<const double> x) {
        const tensor_ref<const double> e = emb.forward(cx, indices.cref());
        const tensor_ref<double> y = cx.allocate(x.extents());
        for (index_t i = 0; i < y.numel(); ++i)
            y.data()[i] = e.data()[i] + x.data()[i];
        return y;
    }
    tensor_ref<const double> backward(nn::step_context<double>& cx, tensor_ref<const double> dy) {
        emb.backward(cx, dy);
        return dy;
    }
};

/// Sinusoidal table entry (Vaswani et al. 2017), in double.
double pe_ref(index_t pos, index_t c, index_t f) {
    const double angle = double(pos) / std::pow(10000.0, double(2 * (c / 2)) / double(f));
    return c % 2 == 0 ? std::sin(angle) : std::cos(angle);
}

}  // namespace

// ------------------------------------------------------------------------------------- dropout

TEMPLATE_TEST_CASE("dropout: the training mask is the documented Philox draw, eval is identity",
                   "[nn][dropout]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(401);
    const double p = 0.3;
    nn::model<nn::dropout<T>> m(nn::dropout<T>{p}, rng());
    REQUIRE(m.parameter_count() == 0);
    auto& d = m.net();
    const std::uint64_t seed = rng(), sub = rng() % 5;
    d.set_seed(seed, sub);
    d.set_step(7);
    auto x = mmfuse_test::random_tensor<T>({40, 50}, rng, 0.5, 1.5);  // never 0
    const auto xv = values(x.cref());
    workspace<T> w(true);
    const auto y0 = values(d.forward(w.cx, x.cref()));
    REQUIRE(d.step() == 8);
    REQUIRE(mmfuse_test::max_rel_error(y0, dropout_ref<T>(xv, p, seed, sub, 7)) == 0.0);
    index_t kept = 0;
    for (double v : y0)
        kept += v != 0.0;
    REQUIRE(std::abs(double(kept) / 2000.0 - (1 - p)) < 0.05);  // 5 sigma ~ 0.05
    // the next step draws a different mask; set_step replays step 7 exactly
    const auto y1 = values(d.forward(w.cx, x.cref()));
    REQUIRE(y1 != y0);
    REQUIRE(mmfuse_test::max_rel_error(y1, dropout_ref<T>(xv, p, seed, sub, 8)) == 0.0);
    d.set_step(7);
    REQUIRE(values(d.forward(w.cx, x.cref())) == y0);
    // held step: the same mask on every forward
    d.set_auto_advance(false);
    REQUIRE(values(d.forward(w.cx, x.cref())) == values(d.forward(w.cx, x.cref())));
    REQUIRE(d.step() == 8);
    // strided input: mask element i follows the logical order
    d.set_step(3);
    const auto xt = x.cref().transpose(0, 1);
    REQUIRE(mmfuse_test::max_rel_error(values(d.forward(w.cx, xt)),
                                       dropout_ref<T>(values(xt), p, seed, sub, 3)) == 0.0);
    // evaluation: the input itself, no step consumed
    w.cx.training = false;
    const auto ye = d.forward(w.cx, x.cref());
    REQUIRE(ye.data() == x.data());
    REQUIRE(d.step() == 3);
    // p = 0 is the identity, p = 1 gives zeros (PyTorch)
    w.cx.training = true;
    nn::dropout<T> d0(0.0), d1(1.0);
    REQUIRE(values(d0.forward(w.cx, x.cref())) == xv);
    REQUIRE(values(d1.forward(w.cx, x.cref())) == std::vector<double>(xv.size(), 0.0));
}

TEST_CASE("dropout seeds come from the model seed; backward multiplies by the same mask",
          "[nn][dropout]") {
    auto rng = mmfuse_test::make_rng(402);
    const std::uint64_t s = rng();
    nn::model<nn::dropout<float>> a(nn::dropout<float>{0.5}, s), b(nn::dropout<float>{0.5}, s),
        c(nn::dropout<float>{0.5}, s + 1);
    REQUIRE(a.net().seed() == b.net().seed());
    REQUIRE(a.net().seed() != c.net().seed());
    auto x = mmfuse_test::random_tensor<float>({3, 64}, rng, 1.0, 2.0);
    workspace<float> w(true);
    const auto ya = values(a.net().forward(w.cx, x.cref()));
    REQUIRE(ya == values(b.net().forward(w.cx, x.cref())));
    REQUIRE(ya != values(c.net().forward(w.cx, x.cref())));
    // dx = dy * m with m read off the forward (y / x)
    auto dy = mmfuse_test::random_tensor<float>({3, 64}, rng);
    const auto dx = values(a.net().backward(w.cx, dy.cref()));
    for (size_t i = 0; i < dx.size(); ++i)
        REQUIRE(dx[i] == double(float(float(ya[i] / x[index_t(i)]) * dy[index_t(i)])));
}

TEST_CASE("dropout gradcheck in double with the mask held fixed", "[nn][dropout][gradcheck]") {
    auto rng = mmfuse_test::make_rng(403);
    nn::model<nn::dropout<double>> m(nn::dropout<double>{0.4}, rng());
    m.net().set_auto_advance(false);
    auto x = mmfuse_test::random_tensor<double>({4, 6}, rng);
    CHECK(mmfuse_test::gradcheck(m, x, rng).input_error < 1e-7);
}

TEST_CASE("dropout rejects a bad p and a backward without a training forward", "[nn][dropout]") {
    REQUIRE_THROWS_AS(nn::dropout<float>(1.5), value_error);
    REQUIRE_THROWS_WITH(nn::dropout<float>(-0.1), Catch::Contains("[0, 1]"));
    nn::model<named<nn::dropout<float>>> m(named<nn::dropout<float>>{0.2}, 3);
    workspace<float> w(false);
    tensor<float> x = mmfuse_test::random_tensor<float>({2, 3}, w.rng), dy({3, 2});
    m.net().forward(w.cx, x.cref());
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, x.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("training-mode forward"));
    w.cx.training = true;
    m.net().forward(w.cx, x.cref());
    REQUIRE_THROWS_AS(m.net().backward(w.cx, dy.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("dropout output gradient") &&
                            Catch::Contains("(2, 3)") && Catch::Contains("(3, 2)"));
}

// ----------------------------------------------------------------------------------- embedding

TEMPLATE_TEST_CASE("embedding gathers weight rows; backward scatter-adds", "[nn][embedding]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(411);
    const index_t num = 3 + index_t(rng() % 8), f = 1 + index_t(rng() % 6);
    nn::model<nn::embedding<dyn, dyn, T>> m(nn::embedding<dyn, dyn, T>{num, f}, rng());
    REQUIRE(m.parameter_index()[0].name == "weight");
    REQUIRE(m.parameter_index()[0].shape == extents{num, f});
    tensor<std::int64_t> idx({2, 3, 4});
    for (index_t i = 0; i < idx.numel(); ++i)
        idx[i] = std::int64_t(rng() % std::uint64_t(num));
    idx[0] = idx[5];  // a repeated index
    workspace<T> w(true);
    const auto y = m.net().forward(w.cx, idx.cref());
    REQUIRE(y.extents() == extents{2, 3, 4, f});
    const auto wv = values(m.find("weight")->value);
    std::vector<double> ref;
    for (index_t i = 0; i < idx.numel(); ++i)
        for (index_t j = 0; j < f; ++j)
            ref.push_back(wv[size_t(idx[i] * f + j)]);
    REQUIRE(values(y) == ref);
    // strided indices: (3, 2, 4) transposed view
    const auto idx_t = idx.cref().transpose(0, 1);
    const auto yt = values(m.net().forward(w.cx, idx_t));
    const auto iv = values(idx_t);
    for (size_t i = 0; i < iv.size(); ++i)
        for (index_t j = 0; j < f; ++j)
            REQUIRE(yt[i * size_t(f) + size_t(j)] == wv[size_t(index_t(iv[i]) * f + j)]);
    // backward against the strided forward: grad[idx] += dy rows, twice -> accumulates
    auto dy = mmfuse_test::random_tensor<T>({3, 2, 4, f}, rng);
    m.zero_grad();
    m.net().backward(w.cx, dy.cref());
    m.net().backward(w.cx, dy.cref());
    std::vector<double> gref(size_t(num * f), 0.0);
    for (size_t i = 0; i < iv.size(); ++i)
        for (index_t j = 0; j < f; ++j)
            gref[size_t(index_t(iv[i]) * f + j)] += 2.0 * double(dy[index_t(i) * f + j]);
    REQUIRE(mmfuse_test::max_rel_error(values(m.find("weight")->grad), gref) <=
            mmfuse_test::tolerance<T>());
}

TEST_CASE("embedding init is N(0, 1) and static widths work", "[nn][embedding]") {
    nn::model<nn::embedding<500, 8, double>> m(nn::embedding<500, 8, double>{}, 5);
    tensor<double> wt({500, 8});
    const auto wv = values(m.find("weight")->value);
    double mean = 0, var = 0;
    for (double v : wv)
        mean += v;
    mean /= double(wv.size());
    for (double v : wv)
        var += (v - mean) * (v - mean);
    var /= double(wv.size());
    REQUIRE(std::abs(mean) < 0.1);  // 4000 draws: sd of the mean ~ 0.016
    REQUIRE(std::abs(var - 1.0) < 0.15);
    static_assert(nn::module<nn::embedding<500, 8>>);
    static_assert(!nn::layer<nn::embedding<500, 8>>);  // integer input: not a layer
}

TEST_CASE("embedding gradcheck in double (weight, through an adapter)",
          "[nn][embedding][gradcheck]") {
    auto rng = mmfuse_test::make_rng(412);
    tensor<std::int64_t> idx({2, 3});
    for (index_t i = 0; i < 6; ++i)
        idx[i] = std::int64_t(rng() % 4);
    idx[1] = idx[4];
    nn::model<embedding_probe> m(
        embedding_probe{nn::embedding<dyn, dyn, double>{5, 3}, std::move(idx)}, rng());
    REQUIRE(m.parameter_index()[0].name == "emb.weight");
    auto x = mmfuse_test::random_tensor<double>({2, 3, 3}, rng);
    const auto res = mmfuse_test::gradcheck(m, x, rng);
    CHECK(res.input_error < 1e-7);
    CHECK(res.parameter_error < 1e-7);
}

TEST_CASE("embedding rejects out-of-range indices before reading, and bad gradients",
          "[nn][embedding]") {
    nn::model<named<nn::embedding<10, 4>>> m(named<nn::embedding<10, 4>>{}, 1);
    workspace<float> w(true);
    for (const std::int64_t bad : {std::int64_t(10), std::int64_t(-1), std::int64_t(1) << 40}) {
        tensor<std::int64_t> idx({2, 3});
        for (index_t i = 0; i < 6; ++i)
            idx[i] = i;
        idx[4] = bad;
        REQUIRE_THROWS_AS(m.net().forward(w.cx, idx.cref()), shape_error);
        REQUIRE_THROWS_WITH(m.net().forward(w.cx, idx.cref()),
                            Catch::Contains("in 'enc'") && Catch::Contains("embedding index") &&
                                Catch::Contains("[0, 10)") && Catch::Contains("(10, 4)") &&
                                Catch::Contains("index " + std::to_string(bad)) &&
                                Catch::Contains("position 4 of indices (2, 3)"));
    }
    tensor<std::int64_t> idx({2, 3});
    for (index_t i = 0; i < 6; ++i)
        idx[i] = i;
    tensor<float> dy({2, 3, 5});
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()),
                        Catch::Contains("in 'enc'") && Catch::Contains("training-mode forward"));
    m.net().forward(w.cx, idx.cref());
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, dy.cref()),
                        Catch::Contains("embedding output gradient") &&
                            Catch::Contains("(2, 3, 4)") && Catch::Contains("(2, 3, 5)"));
}

// ---------------------------------------------------------------------------------- positional

TEMPLATE_TEST_CASE("sinusoidal positional encoding adds Vaswani's table", "[nn][positional]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(421);
    for (const index_t f : {index_t(6), index_t(5)}) {  // even and odd widths
        nn::sinusoidal_positional_encoding<dyn, T> pe(9, f);
        REQUIRE(pe.table().extents() == extents{9, f});
        std::vector<double> tref;
        for (index_t pos = 0; pos < 9; ++pos)
            for (index_t c = 0; c < f; ++c)
                tref.push_back(pe_ref(pos, c, f));
        REQUIRE(mmfuse_test::max_rel_error(values(pe.table()), tref) <=
                mmfuse_test::tolerance<T>());
        auto x = mmfuse_test::random_tensor<T>({2, 7, f}, rng);
        workspace<T> w(false);
        const auto y = pe.forward(w.cx, x.cref());
        std::vector<double> ref;
        for (index_t b = 0; b < 2; ++b)
            for (index_t l = 0; l < 7; ++l)
                for (index_t c = 0; c < f; ++c)
                    ref.push_back(double(x[(b * 7 + l) * f + c]) + pe_ref(l, c, f));
        REQUIRE(mmfuse_test::max_rel_error(values(y), ref) <= 2 * mmfuse_test::tolerance<T>());
        // rank 2 (L, F) and a strided (L, B, F) -> (B, L, F) view
        auto x2 = mmfuse_test::random_tensor<T>({3, f}, rng);
        std::vector<double> ref2;
        for (index_t l = 0; l < 3; ++l)
            for (index_t c = 0; c < f; ++c)
                ref2.push_back(double(x2(l, c)) + pe_ref(l, c, f));
        REQUIRE(mmfuse_test::max_rel_error(values(pe.forward(w.cx, x2.cref())), ref2) <=
                2 * mmfuse_test::tolerance<T>());
        auto xs = mmfuse_test::random_tensor<T>({4, 2, f}, rng);
        const auto xv = xs.cref().transpose(0, 1);
        std::vector<double> ref3;
        for (index_t b = 0; b < 2; ++b)
            for (index_t l = 0; l < 4; ++l)
                for (index_t c = 0; c < f; ++c)
                    ref3.push_back(double(xv(b, l, c)) + pe_ref(l, c, f));
        REQUIRE(mmfuse_test::max_rel_error(values(pe.forward(w.cx, xv)), ref3) <=
                2 * mmfuse_test::tolerance<T>());
    }
}

TEMPLATE_TEST_CASE("learned positional embedding adds weight rows and sums the batch gradient",
                   "[nn][positional]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(422);
    nn::model<nn::learned_positional_embedding<dyn, dyn, T>> m(
        nn::learned_positional_embedding<dyn, dyn, T>{10, 4}, rng());
    REQUIRE(m.parameter_index()[0].name == "weight");
    REQUIRE(m.parameter_index()[0].shape == extents{10, 4});
    auto x = mmfuse_test::random_tensor<T>({3, 6, 4}, rng);
    workspace<T> w(true);
    const auto y = m.net().forward(w.cx, x.cref());
    const auto wv = values(m.find("weight")->value);
    std::vector<double> ref;
    for (index_t b = 0; b < 3; ++b)
        for (index_t i = 0; i < 24; ++i)
            ref.push_back(double(x[b * 24 + i]) + wv[size_t(i)]);
    REQUIRE(mmfuse_test::max_rel_error(values(y), ref) <= 2 * mmfuse_test::tolerance<T>());
    auto dy = mmfuse_test::random_tensor<T>({3, 6, 4}, rng);
    m.zero_grad();
    const auto dx = m.net().backward(w.cx, dy.cref());
    REQUIRE(values(dx) == values(dy.cref()));
    std::vector<double> gref(40, 0.0);
    for (index_t b = 0; b < 3; ++b)
        for (index_t i = 0; i < 24; ++i)
            gref[size_t(i)] += double(dy[b * 24 + i]);
    REQUIRE(mmfuse_test::max_rel_error(values(m.find("weight")->grad), gref) <=
            mmfuse_test::tolerance<T>());
}

TEST_CASE("positional encodings gradcheck in double", "[nn][positional][gradcheck]") {
    auto rng = mmfuse_test::make_rng(423);
    nn::model<nn::sinusoidal_positional_encoding<4, double>> s(
        nn::sinusoidal_positional_encoding<4, double>{8}, 1);
    auto x = mmfuse_test::random_tensor<double>({2, 5, 4}, rng);
    CHECK(mmfuse_test::gradcheck(s, x, rng).input_error < 1e-7);
    nn::model<nn::learned_positional_embedding<7, 4, double>> l(
        nn::learned_positional_embedding<7, 4, double>{}, rng());
    const auto res = mmfuse_test::gradcheck(l, x, rng);  // rows 5, 6 get zero gradient
    CHECK(res.input_error < 1e-7);
    CHECK(res.parameter_error < 1e-7);
    CHECK(mmfuse_test::accumulation_error(l, x, rng) < 1e-12);
}

TEMPLATE_TEST_CASE("positional encodings reject a wrong width, rank or length", "[nn][positional]",
                   float, double) {
    using T = TestType;
    nn::model<named<nn::sinusoidal_positional_encoding<8, T>>> s(
        named<nn::sinusoidal_positional_encoding<8, T>>{index_t(16)}, 1);
    nn::model<named<nn::learned_positional_embedding<16, 8, T>>> l(
        named<nn::learned_positional_embedding<16, 8, T>>{}, 1);
    REQUIRE(l.parameter_index()[0].name == "enc.weight");
    workspace<T> w(true);
    tensor<T> wide({2, 4, 9}), flat({8}), longer({2, 17, 8}), ok({2, 4, 8}), dy({2, 5, 8});
    REQUIRE_THROWS_AS(s.net().forward(w.cx, wide.cref()), shape_error);
    REQUIRE_THROWS_WITH(s.net().forward(w.cx, wide.cref()), Catch::Contains("in 'enc'") &&
                                                                Catch::Contains("(..., L, 8)") &&
                                                                Catch::Contains("(2, 4, 9)"));
    REQUIRE_THROWS_WITH(l.net().forward(w.cx, flat.cref()), Catch::Contains("in 'enc'") &&
                                                                Catch::Contains("(..., L, 8)") &&
                                                                Catch::Contains("got shape (8)"));
    REQUIRE_THROWS_WITH(s.net().forward(w.cx, longer.cref()),
                        Catch::Contains("max_len = 16") && Catch::Contains("(2, 17, 8)"));
    REQUIRE_THROWS_WITH(l.net().forward(w.cx, longer.cref()), Catch::Contains("in 'enc'") &&
                                                                  Catch::Contains("max_len = 16") &&
                                                                  Catch::Contains("(2, 17, 8)"));
    REQUIRE_THROWS_WITH(l.net().backward(w.cx, dy.cref()),
                        Catch::Contains("training-mode forward"));
    l.net().forward(w.cx, ok.cref());
    REQUIRE_THROWS_WITH(l.net().backward(w.cx, dy.cref()),
                        Catch::Contains("learned_positional_embedding output gradient") &&
                            Catch::Contains("(2, 4, 8)") && Catch::Contains("(2, 5, 8)"));
    REQUIRE_THROWS_AS(nn::sinusoidal_positional_encoding<8>(-1), value_error);
}
