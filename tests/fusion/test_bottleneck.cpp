// fusion/bottleneck.hpp and fusion/flamingo.hpp: MBT bottleneck fusion, Flamingo's gated
// cross-attention block and Perceiver Resampler. Gradient checks (double, tiny shapes),
// PyTorch twins (tools/golden/make_fusion_bottleneck_fixtures.py), the identities of
// docs/fusion.md section 7 (gate 0 is the identity bit for bit; MBT with fusion_layer = L is
// M unimodal encoders; n_b = 0 never interacts), padding masks, presence and shape errors.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/bottleneck.hpp"
#include "mmfuse/fusion/flamingo.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/layout.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::as_views;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::golden;
using mmfuse_test::make_rng;
using mmfuse_test::random_tensor;

static_assert(fusion::differentiable_interaction<fusion::bottleneck_fusion<2, double>>);
static_assert(fusion::differentiable_fuser<fusion::gated_cross_attention<double>>);
static_assert(nn::differentiable_layer<fusion::perceiver_resampler<double>>);

template <class T>
using mbt2 = fusion::bottleneck_fusion<2, T>;

/// The tiny MBT of the brief: D 4, 2 heads, FF 8, L 2.
template <class T>
mbt2<T> tiny_mbt(index_t fusion_layer, index_t nb) {
    return mbt2<T>(4, 2, 8, 2, fusion_layer, nb);
}

/// Copies of the values of a (possibly strided) rank-3 view, row-major.
template <class T>
std::vector<double> values(tensor_ref<const T> x) {
    std::vector<double> v;
    for (index_t i = 0; i < x.extent(0); ++i)
        for (index_t j = 0; j < x.extent(1); ++j)
            for (index_t k = 0; k < x.extent(2); ++k)
                v.push_back(double(x.data()[i * x.stride(0) + j * x.stride(1) + k * x.stride(2)]));
    return v;
}

/// Sample `b` of a (B, L, D) view, tokens [0, len).
template <class T>
std::vector<double> sample(tensor_ref<const T> x, index_t b, index_t len = -1) {
    return values(x.narrow(0, b, 1).narrow(1, 0, len < 0 ? x.extent(1) : len));
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double e = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i)
        e = std::max(e, std::abs(a[i] - b[i]));
    return e;
}

/// A (B, L) bool tensor from a row-major list.
tensor<bool> bools(index_t b, index_t l, std::initializer_list<int> v) {
    tensor<bool> t({b, l});
    index_t i = 0;
    for (int x : v)
        t[i++] = x != 0;
    return t;
}

}  // namespace

// ---- MBT ------------------------------------------------------------------------------------

TEST_CASE("bottleneck_fusion gradient check", "[fusion][bottleneck][gradcheck]") {
    std::mt19937_64 rng = make_rng(801);
    const tensor<bool> kp0 = bools(2, 3, {1, 1, 0, 1, 1, 1});
    const tensor<bool> kp1 = bools(2, 2, {1, 1, 1, 0});
    for (index_t fl : {0, 1, 2}) {
        for (bool masked : {false, true}) {
            INFO("fusion_layer " << fl << ", masks " << masked);
            nn::model<mmfuse_test::interaction_as_fuser<mbt2<double>>> m({tiny_mbt<double>(fl, 2)},
                                                                         7);
            if (masked) m.net().inner.key_padding = {kp0.cref(), kp1.cref()};
            const tensor<bool> p = bools(2, 2, {1, 0, 1, 1});
            auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 2, 4}});
            const auto r =
                fusion_gradcheck<2>(m, std::move(xs), rng, masked ? p.cref() : fusion::presence{});
            CHECK(r.input_error < 1e-6);
            CHECK(r.parameter_error < 1e-6);
        }
    }
}

TEMPLATE_TEST_CASE("golden: bottleneck_fusion against its PyTorch twin",
                   "[fusion][bottleneck][golden]", float, double) {
    using T = TestType;
    golden<T> g("fusion_bottleneck_mbt");
    // 3 layers, fusion from layer 1: two fusion layers, so the bottleneck mean reaches the
    // outputs (the last layer's mean is discarded)
    nn::model<mbt2<T>> m(mbt2<T>(4, 2, 8, 3, 1, 2), 1);
    g.load_parameters(m);
    const tensor<bool> kp0 = g.load_mask("key_padding0"), kp1 = g.load_mask("key_padding1");
    const tensor<bool> p = g.load_mask("presence");
    m.net().key_padding = {kp0.cref(), kp1.cref()};
    const tensor<T> x0 = g.load("x0"), x1 = g.load("x1"), dy0 = g.load("dy0"), dy1 = g.load("dy1");
    fusion_workspace<T> w;
    m.zero_grad();
    const fusion::views<T, 2> ys = m.net().forward(w.cx, {x0.cref(), x1.cref()}, p.cref());
    g.compare("y0", ys[0]);
    g.compare("y1", ys[1]);
    const fusion::views<T, 2> dxs = m.net().backward(w.cx, {dy0.cref(), dy1.cref()});
    g.compare("grad_x0", dxs[0]);
    g.compare("grad_x1", dxs[1]);
    g.compare_parameter_grads(m);
}

TEST_CASE("bottleneck_fusion with fusion_layer = L is M unimodal encoders",
          "[fusion][bottleneck][identity]") {
    std::mt19937_64 rng = make_rng(802);
    nn::model<mbt2<double>> m(tiny_mbt<double>(2, 2), 3);
    const tensor<bool> kp0 = bools(2, 3, {1, 1, 0, 1, 1, 1});
    m.net().key_padding[0] = kp0.cref();
    auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 2, 4}});
    fusion_workspace<double> w;
    const fusion::views<double, 2> ys = m.net().forward(w.cx, as_views<double, 2>(xs));
    for (std::size_t k = 0; k < 2; ++k) {
        tensor_ref<const double> h = xs[k].cref();
        for (index_t l = 0; l < 2; ++l)
            h = m.net().layer(k, l).forward(w.cx, h, {.key_padding = m.net().key_padding[k]});
        CHECK(values(ys[k]) == values(h));
    }
    // and the other modality's content does not matter
    const std::vector<double> y0 = values(ys[0]);
    xs[1] = random_tensor<double>({2, 2, 4}, rng);
    CHECK(values(m.net().forward(w.cx, as_views<double, 2>(xs))[0]) == y0);
}

TEST_CASE("bottleneck_fusion with no bottleneck tokens never interacts",
          "[fusion][bottleneck][identity]") {
    std::mt19937_64 rng = make_rng(803);
    for (index_t fl : {0, 1}) {
        nn::model<mbt2<double>> none(tiny_mbt<double>(fl, 0), 3);
        nn::model<mbt2<double>> some(tiny_mbt<double>(fl, 2), 3);
        CHECK(none.parameter_count() + 2 * 4 == some.parameter_count());
        auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 2, 4}});
        fusion_workspace<double> w;
        const std::vector<double> a0 = values(none.net().forward(w.cx, as_views<double, 2>(xs))[0]);
        const std::vector<double> b0 = values(some.net().forward(w.cx, as_views<double, 2>(xs))[0]);
        xs[1] = random_tensor<double>({2, 2, 4}, rng);
        CHECK(values(none.net().forward(w.cx, as_views<double, 2>(xs))[0]) == a0);
        // with bottleneck tokens the streams exchange information from the second fusion
        // layer on: the last layer's bottleneck mean is discarded, so fusion_layer = L - 1
        // does not interact either (as in the reference)
        const double change =
            max_abs_diff(values(some.net().forward(w.cx, as_views<double, 2>(xs))[0]), b0);
        if (fl == 0)
            CHECK(change > 1e-6);
        else
            CHECK(change == 0.0);
    }
}

TEST_CASE("bottleneck_fusion padding: real tokens ignore padded content and equal the unpadded run",
          "[fusion][bottleneck][masks]") {
    std::mt19937_64 rng = make_rng(804);
    nn::model<mbt2<double>> m(tiny_mbt<double>(1, 2), 5);
    // sample 0 of modality 0 has 2 real tokens of 3; sample 1 of modality 1 has 1 of 2
    const tensor<bool> kp0 = bools(2, 3, {1, 1, 0, 1, 1, 1});
    const tensor<bool> kp1 = bools(2, 2, {1, 1, 1, 0});
    m.net().key_padding = {kp0.cref(), kp1.cref()};
    auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 2, 4}});
    fusion_workspace<double> w;
    fusion::views<double, 2> ys = m.net().forward(w.cx, as_views<double, 2>(xs));
    const std::vector<double> s0m0 = sample(ys[0], 0, 2), s0m1 = sample(ys[1], 0);
    const std::vector<double> s1m0 = sample(ys[0], 1), s1m1 = sample(ys[1], 1, 1);
    for (index_t k = 0; k < 4; ++k) {
        xs[0][(0 * 3 + 2) * 4 + k] = 100.0 + double(k);  // padded content
        xs[1][(1 * 2 + 1) * 4 + k] = -50.0 * double(k);
    }
    ys = m.net().forward(w.cx, as_views<double, 2>(xs));
    CHECK(sample(ys[0], 0, 2) == s0m0);
    CHECK(sample(ys[1], 0) == s0m1);
    CHECK(sample(ys[0], 1) == s1m0);
    CHECK(sample(ys[1], 1, 1) == s1m1);
    // sample 0 alone, with its padding cut off, gives the same real-token outputs
    tensor<double> a({1, 2, 4}), b({1, 2, 4});
    for (index_t i = 0; i < 8; ++i) {
        a[i] = xs[0][i];
        b[i] = xs[1][i];
    }
    m.net().key_padding = {};
    const fusion::views<double, 2> one = m.net().forward(w.cx, {a.cref(), b.cref()});
    CHECK(max_abs_diff(values(one[0]), s0m0) < 1e-12);
    CHECK(max_abs_diff(values(one[1]), s0m1) < 1e-12);
}

TEST_CASE("bottleneck_fusion presence: an absent modality leaves the bottleneck mean",
          "[fusion][bottleneck][presence]") {
    std::mt19937_64 rng = make_rng(805);
    nn::model<mbt2<double>> m(tiny_mbt<double>(0, 2), 9);
    // the same weights for modality 0 alone
    nn::model<fusion::bottleneck_fusion<1, double>> solo(
        fusion::bottleneck_fusion<1, double>(4, 2, 8, 2, 0, 2), 1);
    for (const auto& e : solo.parameter_index()) {
        auto* src = m.find(e.name);
        REQUIRE(src != nullptr);
        std::copy(src->value.data(), src->value.data() + e.shape.numel(),
                  solo.find(e.name)->value.data());
    }
    const tensor<bool> p = bools(2, 2, {1, 0, 1, 1});  // modality 1 absent in sample 0
    auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 2, 4}});
    fusion_workspace<double> w;
    m.zero_grad();
    const fusion::views<double, 2> ys = m.net().forward(w.cx, as_views<double, 2>(xs), p.cref());
    CHECK(sample(ys[1], 0) == std::vector<double>(8, 0.0));
    const std::vector<double> y0 = sample(ys[0], 0);
    const tensor<double> dy0 = random_tensor<double>({2, 3, 4}, rng);
    const tensor<double> dy1 = random_tensor<double>({2, 2, 4}, rng);
    const fusion::views<double, 2> dxs = m.net().backward(w.cx, {dy0.cref(), dy1.cref()});
    CHECK(sample(dxs[1], 0) == std::vector<double>(8, 0.0));
    CHECK(max_abs_diff(sample(dxs[1], 1), std::vector<double>(8, 0.0)) > 1e-6);

    tensor<double> a({1, 3, 4});
    for (index_t i = 0; i < 12; ++i)
        a[i] = xs[0][i];
    const fusion::views<double, 1> one = solo.net().forward(w.cx, {a.cref()});
    CHECK(max_abs_diff(values(one[0]), y0) < 1e-12);
    // the absent modality's content does not matter
    for (index_t i = 0; i < 8; ++i)
        xs[1][i] = 1e3 * double(i);
    CHECK(sample(m.net().forward(w.cx, as_views<double, 2>(xs), p.cref())[0], 0) == y0);
    // nothing present: zero outputs, finite
    const tensor<bool> none = bools(2, 2, {0, 0, 1, 1});
    const fusion::views<double, 2> z = m.net().forward(w.cx, as_views<double, 2>(xs), none.cref());
    CHECK(sample(z[0], 0) == std::vector<double>(12, 0.0));
    for (double v : sample(z[0], 1))
        CHECK(std::isfinite(v));
}

TEST_CASE("bottleneck_fusion shape and value errors", "[fusion][bottleneck][errors]") {
    CHECK_THROWS_AS(mbt2<float>(4, 2, 8, 2, 3, 2), value_error);
    CHECK_THROWS_AS(mbt2<float>(4, 2, 8, 0, 0, 2), value_error);
    CHECK_THROWS_AS(mbt2<float>(4, 2, 8, 2, 1, -1), value_error);
    CHECK_THROWS_AS(mbt2<float>(4, 3, 8, 2, 1, 2), shape_error);
    nn::model<mbt2<float>> m(tiny_mbt<float>(1, 2), 1);
    fusion_workspace<float> w;
    tensor<float> a({2, 3, 4}), b({2, 2, 4}), wide({2, 2, 5}), other({3, 2, 4});
    CHECK_THROWS_AS(m.net().backward(w.cx, {a.cref(), b.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {a.cref(), wide.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {a.cref(), other.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {a.cref(), tensor_ref<const float>{}}), shape_error);
    const tensor<bool> bad_p({2, 3});
    CHECK_THROWS_AS(m.net().forward(w.cx, {a.cref(), b.cref()}, bad_p.cref()), shape_error);
    const tensor<bool> bad_kp({2, 2});
    m.net().key_padding[0] = bad_kp.cref();
    CHECK_THROWS_AS(m.net().forward(w.cx, {a.cref(), b.cref()}), shape_error);
    m.net().key_padding[0] = {};
    m.net().forward(w.cx, {a.cref(), b.cref()});
    CHECK_THROWS_AS(m.net().backward(w.cx, {b.cref(), b.cref()}), shape_error);
}

// ---- Flamingo gated cross-attention ---------------------------------------------------------

TEST_CASE("gated_cross_attention gradient check", "[fusion][flamingo][gradcheck]") {
    std::mt19937_64 rng = make_rng(811);
    const tensor<bool> kp = bools(2, 4, {1, 1, 0, 1, 1, 0, 0, 0});
    const tensor<bool> p = bools(2, 2, {1, 1, 1, 0});
    for (bool masked : {false, true}) {
        INFO("masks " << masked);
        nn::model<fusion::gated_cross_attention<double>> m({4, 3, 2, 3}, 5);
        m.net().attn_gate().value.data()[0] = 0.7;
        m.net().ff_gate().value.data()[0] = -0.4;
        if (masked) m.net().media_key_padding = kp.cref();
        auto xs = mmfuse_test::random_inputs(rng, {{2, 3, 4}, {2, 4, 3}});
        const auto r =
            fusion_gradcheck<2>(m, std::move(xs), rng, masked ? p.cref() : fusion::presence{});
        CHECK(r.input_error < 1e-6);
        CHECK(r.parameter_error < 1e-6);
    }
}

TEMPLATE_TEST_CASE("golden: gated_cross_attention against its PyTorch twin",
                   "[fusion][flamingo][golden]", float, double) {
    using T = TestType;
    golden<T> g("fusion_bottleneck_gated_xattn");
    nn::model<fusion::gated_cross_attention<T>> m({4, 3, 2, 3, 4}, 1);
    g.load_parameters(m);
    const tensor<bool> kp = g.load_mask("key_padding1"), p = g.load_mask("presence");
    m.net().media_key_padding = kp.cref();
    const tensor<T> x = g.load("x"), media = g.load("media"), dy = g.load("dy");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, {x.cref(), media.cref()}, p.cref()));
    const fusion::views<T, 2> d = m.net().backward(w.cx, dy.cref());
    g.compare("grad_x", d[0]);
    g.compare("grad_media", d[1]);
    g.compare_parameter_grads(m);
}

TEMPLATE_TEST_CASE("gated_cross_attention is the identity at init, bit for bit",
                   "[fusion][flamingo][identity]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(812);
    nn::model<fusion::gated_cross_attention<T>> m({8, 6, 2, 5}, 3);  // inner 10 != D 8
    const tensor<T> x = random_tensor<T>({3, 5, 8}, rng, -3.0, 3.0);
    const tensor<T> media = random_tensor<T>({3, 7, 6}, rng, -3.0, 3.0);
    fusion_workspace<T> w;
    m.zero_grad();
    const tensor_ref<const T> y = m.net().forward(w.cx, {x.cref(), media.cref()});
    REQUIRE(y.extents() == x.extents());
    for (index_t i = 0; i < x.numel(); ++i)
        REQUIRE(y.data()[i] == x[i]);
    const tensor<T> dy = random_tensor<T>(x.extents(), rng);
    const fusion::views<T, 2> d = m.net().backward(w.cx, dy.cref());
    for (index_t i = 0; i < x.numel(); ++i)
        REQUIRE(d[0].data()[i] == dy[i]);
    for (index_t i = 0; i < media.numel(); ++i)
        REQUIRE(d[1].data()[i] == T(0));
    // the gates still learn: d alpha = sum(dy * branch) != 0
    CHECK(m.net().attn_gate().grad.data()[0] != T(0));
    CHECK(m.net().ff_gate().grad.data()[0] != T(0));
}

TEST_CASE("gated_cross_attention presence and media padding", "[fusion][flamingo][presence]") {
    std::mt19937_64 rng = make_rng(813);
    nn::model<fusion::gated_cross_attention<double>> m({4, 3, 2, 3}, 3);
    m.net().attn_gate().value.data()[0] = 0.9;
    m.net().ff_gate().value.data()[0] = 0.5;
    auto xs = mmfuse_test::random_inputs(rng, {{3, 3, 4}, {3, 4, 3}});
    const tensor<bool> p = bools(3, 2, {1, 0, 0, 1, 1, 1});  // media absent / text absent / both
    const tensor<bool> kp = bools(3, 4, {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0});
    m.net().media_key_padding = kp.cref();
    fusion_workspace<double> w;
    m.zero_grad();
    const tensor_ref<const double> y = m.net().forward(w.cx, as_views<double, 2>(xs), p.cref());
    CHECK(sample(y, 0) == sample(xs[0].cref(), 0));       // media absent: x unchanged, exactly
    CHECK(sample(y, 1) == std::vector<double>(12, 0.0));  // text absent: zeros
    const std::vector<double> y2 = sample(y, 2);
    CHECK(max_abs_diff(y2, sample(xs[0].cref(), 2)) > 1e-6);
    const tensor<double> dy = random_tensor<double>({3, 3, 4}, rng);
    const fusion::views<double, 2> d = m.net().backward(w.cx, dy.cref());
    CHECK(sample(d[0], 0) == sample(dy.cref(), 0));
    CHECK(sample(d[1], 0) == std::vector<double>(12, 0.0));
    CHECK(sample(d[0], 1) == std::vector<double>(12, 0.0));
    // padded media tokens of sample 2 do not matter
    for (index_t k = 0; k < 3; ++k) {
        xs[1][(2 * 4 + 1) * 3 + k] = 40.0;
        xs[1][(2 * 4 + 3) * 3 + k] = -40.0;
    }
    CHECK(sample(m.net().forward(w.cx, as_views<double, 2>(xs), p.cref()), 2) == y2);
}

TEST_CASE("gated_cross_attention shape errors", "[fusion][flamingo][errors]") {
    nn::model<fusion::gated_cross_attention<float>> m({4, 3, 2, 3}, 1);
    fusion_workspace<float> w;
    tensor<float> x({2, 3, 4}), media({2, 5, 3}), wide({2, 5, 4}), other({3, 5, 3});
    CHECK_THROWS_AS(m.net().backward(w.cx, x.cref()), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {x.cref(), wide.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {x.cref(), other.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {media.cref(), media.cref()}), shape_error);
    const tensor<bool> bad_kp({2, 4});
    m.net().media_key_padding = bad_kp.cref();
    CHECK_THROWS_AS(m.net().forward(w.cx, {x.cref(), media.cref()}), shape_error);
    m.net().media_key_padding = {};
    const tensor<bool> bad_p({2, 1});
    CHECK_THROWS_AS(m.net().forward(w.cx, {x.cref(), media.cref()}, bad_p.cref()), shape_error);
    m.net().forward(w.cx, {x.cref(), media.cref()});
    CHECK_THROWS_AS(m.net().backward(w.cx, media.cref()), shape_error);
    CHECK_THROWS_AS((fusion::gated_cross_attention<float>{4, 3, 0, 3}), value_error);
}

// ---- Perceiver Resampler ----------------------------------------------------------------------

TEST_CASE("perceiver_resampler gradient check", "[fusion][flamingo][resampler][gradcheck]") {
    std::mt19937_64 rng = make_rng(821);
    const tensor<bool> kp = bools(2, 4, {1, 1, 0, 0, 1, 1, 1, 1});
    for (bool masked : {false, true}) {
        INFO("masks " << masked);
        nn::model<mmfuse_test::layer_as_fuser<fusion::perceiver_resampler<double>>> m(
            {fusion::perceiver_resampler<double>(4, 2, 3, 2, 3, 2)}, 5);
        if (masked) m.net().inner.key_padding = kp.cref();
        auto xs = mmfuse_test::random_inputs(rng, {{2, 4, 4}});
        const auto r = fusion_gradcheck<1>(m, std::move(xs), rng);
        CHECK(r.input_error < 1e-6);
        CHECK(r.parameter_error < 1e-6);
    }
}

TEMPLATE_TEST_CASE("golden: perceiver_resampler against its PyTorch twin",
                   "[fusion][flamingo][resampler][golden]", float, double) {
    using T = TestType;
    golden<T> g("fusion_bottleneck_resampler");
    nn::model<fusion::perceiver_resampler<T>> m({4, 2, 3, 2, 3, 2}, 1);
    g.load_parameters(m);
    const tensor<bool> kp = g.load_mask("key_padding0");
    m.net().key_padding = kp.cref();
    const tensor<T> x = g.load("x"), dy = g.load("dy");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, x.cref()));
    g.compare("grad_x", m.net().backward(w.cx, dy.cref()));
    g.compare_parameter_grads(m);
}

TEST_CASE("perceiver_resampler padding and shapes", "[fusion][flamingo][resampler][masks]") {
    std::mt19937_64 rng = make_rng(822);
    nn::model<fusion::perceiver_resampler<double>> m({4, 2, 3, 2, 3, 2}, 2);
    tensor<double> x = random_tensor<double>({2, 5, 4}, rng);
    const tensor<bool> kp = bools(2, 5, {1, 1, 1, 0, 0, 1, 1, 1, 1, 1});
    m.net().key_padding = kp.cref();
    fusion_workspace<double> w;
    const tensor_ref<const double> y = m.net().forward(w.cx, x.cref());
    REQUIRE(y.extents() == extents{2, 3, 4});
    const std::vector<double> y0 = sample(y, 0), y1 = sample(y, 1);
    for (index_t k = 0; k < 8; ++k)
        x[3 * 4 + k] = 30.0 * double(k % 3) - 20.0;
    const tensor_ref<const double> y2 = m.net().forward(w.cx, x.cref());
    CHECK(sample(y2, 0) == y0);
    CHECK(sample(y2, 1) == y1);
    // sample 0 with its padding cut off
    tensor<double> a({1, 3, 4});
    for (index_t i = 0; i < 12; ++i)
        a[i] = x[i];
    m.net().key_padding = {};
    CHECK(max_abs_diff(values(m.net().forward(w.cx, a.cref())), y0) < 1e-12);
    // errors
    tensor<double> wide({2, 5, 3});
    CHECK_THROWS_AS(m.net().forward(w.cx, wide.cref()), shape_error);
    const tensor<bool> bad_kp({2, 4});
    m.net().key_padding = bad_kp.cref();
    CHECK_THROWS_AS(m.net().forward(w.cx, x.cref()), shape_error);
    m.net().key_padding = {};
    nn::model<fusion::perceiver_resampler<double>> fresh({4, 1, 2, 2, 3, 2}, 2);
    CHECK_THROWS_AS(fresh.net().backward(w.cx, y), shape_error);
    m.net().forward(w.cx, x.cref());
    CHECK_THROWS_AS(m.net().backward(w.cx, x.cref()), shape_error);
    CHECK_THROWS_AS((fusion::perceiver_resampler<double>{4, 0}), value_error);
}
