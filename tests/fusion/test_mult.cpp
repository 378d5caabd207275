// fusion/mult.hpp: MulT's crossmodal layer, crossmodal transformer and the mult interaction.
// Gradient checks (double), PyTorch golden fixtures (tools/golden/make_fusion_mult_fixtures.py),
// fusion.md identity 10 (the shifted causal mask), variable lengths, presence and errors.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/mult.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::as_views;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::golden;
using mmfuse_test::make_rng;
using mmfuse_test::random_tensor;

/// A contiguous copy of a view (test code).
template <class T>
tensor<T> copy_of(tensor_ref<const T> v) {
    tensor<T> c(v.extents());
    REQUIRE(v.is_contiguous());
    std::copy(v.data(), v.data() + v.numel(), c.data());
    return c;
}

/// Max |a - b| over two equally shaped views (contiguous).
template <class T>
double max_diff(tensor_ref<const T> a, tensor_ref<const T> b) {
    REQUIRE(a.extents() == b.extents());
    double w = 0.0;
    for (index_t i = 0; i < a.numel(); ++i)
        w = std::max(w, std::abs(double(a.data()[i]) - double(b.data()[i])));
    return w;
}

/// Max |x| over a (t0 .. t1) time slice of sample b of a contiguous (B, T, F) view.
template <class T>
double slice_diff(tensor_ref<const T> a, tensor_ref<const T> b, index_t s, index_t t0, index_t t1) {
    const index_t tt = a.extent(1), f = a.extent(2);
    double w = 0.0;
    for (index_t t = t0; t < t1; ++t)
        for (index_t j = 0; j < f; ++j) {
            const index_t i = (s * tt + t) * f + j;
            w = std::max(w, std::abs(double(a.data()[i]) - double(b.data()[i])));
        }
    return w;
}

/// A (B, T) bool mask from rows of 0/1.
tensor<bool> bool_mask(index_t b, index_t t, std::initializer_list<int> v) {
    tensor<bool> m({b, t});
    index_t i = 0;
    for (int x : v)
        m[i++] = x != 0;
    return m;
}

/// Adapts a two-stream module (crossmodal_layer: masks; crossmodal_transformer: source keep
/// mask) to the arity-2 fuser protocol that `fusion_gradcheck` drives.
template <class Net>
struct pair_adapter {
    using value_type = typename Net::value_type;
    using T = value_type;
    static constexpr std::size_t arity = 2;
    Net net;
    nn::attention_masks<T> masks{};
    tensor_ref<const bool> keep{};

    template <class V>
    void visit(V& v) {
        net.visit(v);
    }
    void reset_parameters(philox_generator& g) { net.reset_parameters(g); }
    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, 2>& xs,
                                fusion::presence = {}) {
        if constexpr (requires { net.forward(cx, xs[0], xs[1], masks); })
            return net.forward(cx, xs[0], xs[1], masks);
        else
            return net.forward(cx, xs[0], xs[1], keep);
    }
    fusion::views<T, 2> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        const nn::cross_attention_grads<T> g = net.backward(cx, dy);
        return {g.dx, g.dcontext};
    }
};

/// The (Tq, Ts) keep table of mult_causal_keep.
tensor<bool> causal_keep_table(index_t tq, index_t ts) {
    tensor<bool> m({tq, ts});
    for (index_t i = 0; i < tq; ++i)
        for (index_t j = 0; j < ts; ++j)
            m[i * ts + j] = fusion::mult_causal_keep(i, j, tq, ts);
    return m;
}

constexpr double grad_tol = 1e-6;

}  // namespace

TEST_CASE("mult: crossmodal_layer gradient check (shifted causal mask, key padding)",
          "[fusion][mult]") {
    auto rng = make_rng(401);
    using net_t = pair_adapter<fusion::crossmodal_layer<double>>;
    for (const auto& [tq, ts] : {std::pair<index_t, index_t>{3, 4}, {4, 3}}) {
        nn::model<net_t> m(net_t{fusion::crossmodal_layer<double>(4, 2)}, 11);
        const tensor<bool> kp =
            bool_mask(2, ts,
                      ts == 4 ? std::initializer_list<int>{1, 1, 0, 1, 1, 1, 1, 0}
                              : std::initializer_list<int>{1, 0, 1, 1, 1, 0});
        const tensor<bool> causal = causal_keep_table(tq, ts);
        m.net().masks.key_padding = kp.cref();
        m.net().masks.attn = causal.cref();
        const auto r = fusion_gradcheck<2>(
            m, mmfuse_test::random_inputs(rng, {extents{2, tq, 4}, extents{2, ts, 4}}), rng);
        INFO("tq " << tq << " ts " << ts);
        CHECK(r.input_error < grad_tol);
        CHECK(r.parameter_error < grad_tol);
    }
}

TEST_CASE("mult: 2-layer crossmodal_transformer gradient check", "[fusion][mult]") {
    auto rng = make_rng(402);
    using net_t = pair_adapter<fusion::crossmodal_transformer<double>>;
    for (const bool causal : {true, false}) {
        nn::model<net_t> m(
            net_t{fusion::crossmodal_transformer<double>(4, 2, {.layers = 2, .causal = causal})},
            12);
        const tensor<bool> keep = bool_mask(2, 4, {1, 1, 1, 0, 1, 1, 0, 0});
        m.net().keep = keep.cref();
        const auto r = fusion_gradcheck<2>(
            m, mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 4, 4}}), rng);
        INFO("causal " << causal);
        CHECK(r.input_error < grad_tol);
        CHECK(r.parameter_error < grad_tol);
    }
}

TEST_CASE("mult: interaction gradient check (3 modalities, padding, presence, include_self)",
          "[fusion][mult]") {
    auto rng = make_rng(403);
    using inner = fusion::mult<3, double>;
    using net_t = mmfuse_test::interaction_as_fuser<inner>;
    for (const bool self : {false, true}) {
        nn::model<net_t> m(net_t{inner(4, 2, {.layers = 1}, self)}, 13);
        const tensor<bool> kp1 = bool_mask(2, 4, {1, 1, 1, 0, 1, 1, 0, 0});
        m.net().inner.key_padding[1] = kp1.cref();
        tensor<bool> p({2, 3});
        for (index_t i = 0; i < 6; ++i)
            p[i] = true;
        p[1 * 3 + 2] = false;  // sample 1 misses modality 2
        const auto r = fusion_gradcheck<3>(
            m,
            mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 4, 4}, extents{2, 2, 4}}),
            rng, p.cref());
        INFO("include_self " << self);
        CHECK(r.input_error < grad_tol);
        CHECK(r.parameter_error < grad_tol);
    }
}

namespace {

template <class T>
void check_golden_transformer(const std::string& name, index_t layers) {
    golden<T> g(name);
    using net_t = fusion::crossmodal_transformer<T>;
    nn::model<net_t> m(net_t(4, 2, {.layers = layers}), 1);
    g.load_parameters(m);
    const tensor<T> zq = g.load("zq"), zs = g.load("zs"), dy = g.load("dy");
    tensor<bool> keep;
    if (g.has("source_keep")) keep = g.load_mask("source_keep");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, zq.cref(), zs.cref(), keep.cref()));
    const nn::cross_attention_grads<T> d = m.net().backward(w.cx, dy.cref());
    g.compare("grad_zq", d.dx);
    g.compare("grad_zs", d.dcontext);
    g.compare_parameter_grads(m);
}

}  // namespace

TEMPLATE_TEST_CASE("mult golden: crossmodal transformer, causal, T_q != T_src",
                   "[fusion][mult][golden]", float, double) {
    check_golden_transformer<TestType>("fusion_mult_cm_causal", 2);
}

TEMPLATE_TEST_CASE("mult golden: crossmodal transformer with source key padding",
                   "[fusion][mult][golden]", float, double) {
    check_golden_transformer<TestType>("fusion_mult_cm_padding", 2);
}

TEMPLATE_TEST_CASE("mult golden: 3-modality interaction (MulT names l, a, v)",
                   "[fusion][mult][golden]", float, double) {
    using T = TestType;
    golden<T> g("fusion_mult_3mod");
    using net_t = fusion::mult<3, T>;
    nn::model<net_t> m(net_t(4, 2, {.layers = 1}, false, {"l", "a", "v"}), 1);
    g.load_parameters(m);
    const std::array<std::string, 3> n{"l", "a", "v"};
    std::vector<tensor<T>> xs, dys;
    for (const auto& s : n) {
        xs.push_back(g.load("x_" + s));
        dys.push_back(g.load("dy_" + s));
    }
    const tensor<bool> keep_a = g.load_mask("keep_a");
    m.net().key_padding[1] = keep_a.cref();
    fusion_workspace<T> w;
    m.zero_grad();
    const fusion::views<T, 3> ys = m.net().forward(w.cx, as_views<T, 3>(xs));
    for (std::size_t k = 0; k < 3; ++k)
        g.compare("y_" + n[k], ys[k]);
    const fusion::views<T, 3> dxs = m.net().backward(w.cx, as_views<T, 3>(dys));
    for (std::size_t k = 0; k < 3; ++k)
        g.compare("grad_x_" + n[k], dxs[k]);
    g.compare_parameter_grads(m);
}

TEST_CASE(
    "mult: identity 10, the causal mask (standard when lengths are equal, shifted by "
    "|T_src - T_q| otherwise)",
    "[fusion][mult]") {
    for (index_t t = 1; t <= 6; ++t)
        for (index_t i = 0; i < t; ++i)
            for (index_t j = 0; j < t; ++j)
                CHECK(fusion::mult_causal_keep(i, j, t, t) == (j <= i));
    // Behaviour: output row i depends on source row j exactly when j <= i + |Ts - Tq|.
    auto rng = make_rng(404);
    for (const auto& [tq, ts] : {std::pair<index_t, index_t>{4, 4}, {3, 5}, {5, 3}}) {
        fusion::crossmodal_transformer<double> net(4, 2, {.layers = 2});
        nn::model<fusion::crossmodal_transformer<double>> m(std::move(net), 21);
        const tensor<double> zq = random_tensor<double>({1, tq, 4}, rng);
        tensor<double> zs = random_tensor<double>({1, ts, 4}, rng);
        fusion_workspace<double> w(false);
        const tensor<double> y0 = copy_of(m.net().forward(w.cx, zq.cref(), zs.cref()));
        const index_t k = std::abs(ts - tq);
        for (index_t j = 0; j < ts; ++j) {
            const double saved = zs[j * 4];
            zs[j * 4] += 0.5;
            w.ws.reset();
            const tensor<double> y1 = copy_of(m.net().forward(w.cx, zq.cref(), zs.cref()));
            zs[j * 4] = saved;
            for (index_t i = 0; i < tq; ++i) {
                INFO("tq " << tq << " ts " << ts << " query " << i << " source " << j);
                const double diff = slice_diff<double>(y0.cref(), y1.cref(), 0, i, i + 1);
                if (j <= i + k)
                    CHECK(diff > 1e-8);
                else
                    CHECK(diff == 0.0);
            }
        }
    }
}

TEST_CASE("mult: fairseq positional table (sin block, cos block, positions from 1)",
          "[fusion][mult]") {
    const std::vector<double> t = fusion::mult_position_table<double>(3, 6);
    const double f1 = std::exp(-std::log(10000.0) / 2.0),
                 f2 = std::exp(-2 * std::log(10000.0) / 2.0);
    for (int p = 1; p <= 3; ++p) {
        const double* r = t.data() + (p - 1) * 6;
        CHECK(r[0] == Approx(std::sin(p)).margin(1e-15));
        CHECK(r[1] == Approx(std::sin(p * f1)).margin(1e-15));
        CHECK(r[2] == Approx(std::sin(p * f2)).margin(1e-15));
        CHECK(r[3] == Approx(std::cos(p)).margin(1e-15));
        CHECK(r[5] == Approx(std::cos(p * f2)).margin(1e-15));
    }
    const std::vector<double> odd = fusion::mult_position_table<double>(2, 5);
    CHECK(odd[4] == 0.0);
    CHECK(odd[9] == 0.0);
    CHECK_THROWS_AS(fusion::mult_position_table<double>(4, 3), value_error);
}

TEST_CASE("mult: padded steps do not change the outputs of real steps", "[fusion][mult]") {
    auto rng = make_rng(405);
    using net_t = fusion::mult<3, double>;
    nn::model<net_t> m(net_t(4, 2, {.layers = 2}), 31);
    const std::array<index_t, 3> len{5, 4, 3};  // padded to T = 5, 4, 3
    const std::array<index_t, 3> real{3, 2, 3};
    std::array<tensor<bool>, 3> kp;
    for (std::size_t k = 0; k < 3; ++k) {
        kp[k] = tensor<bool>({2, len[k]});
        for (index_t b = 0; b < 2; ++b)
            for (index_t t = 0; t < len[k]; ++t)
                kp[k][b * len[k] + t] = t < real[k] - b % 2 || k == 2;
        m.net().key_padding[k] = kp[k].cref();
    }
    std::vector<tensor<double>> xs;
    for (std::size_t k = 0; k < 3; ++k)
        xs.push_back(random_tensor<double>({2, len[k], 4}, rng));
    fusion_workspace<double> w(false);
    std::vector<tensor<double>> y0;
    for (const auto& y : m.net().forward(w.cx, as_views<double, 3>(xs)))
        y0.push_back(copy_of(y));
    for (std::size_t k = 0; k < 3; ++k)  // new content in every padded step
        for (index_t b = 0; b < 2; ++b)
            for (index_t t = 0; t < len[k]; ++t)
                if (!kp[k][b * len[k] + t])
                    for (index_t j = 0; j < 4; ++j)
                        xs[k][(b * len[k] + t) * 4 + j] = 100.0 * (j + 1);
    w.ws.reset();
    const fusion::views<double, 3> y1 = m.net().forward(w.cx, as_views<double, 3>(xs));
    bool changed = false;
    for (std::size_t k = 0; k < 3; ++k)
        for (index_t b = 0; b < 2; ++b) {
            const index_t r = k == 2 ? len[k] : real[k] - b % 2;
            CHECK(slice_diff<double>(y0[k].cref(), y1[k], b, 0, r) < 1e-12);
            changed = changed || slice_diff<double>(y0[k].cref(), y1[k], b, r, len[k]) > 0.0;
        }
    CHECK(changed);  // the padded query steps themselves did change (they are not masked)
}

TEST_CASE("mult: presence, an absent modality is masked as keys and its output is zero",
          "[fusion][mult]") {
    auto rng = make_rng(406);
    using net_t = fusion::mult<3, double>;
    nn::model<net_t> m(net_t(4, 2, {.layers = 1}), 41);
    std::vector<tensor<double>> xs =
        mmfuse_test::random_inputs(rng, {extents{3, 3, 4}, extents{3, 4, 4}, extents{3, 2, 4}});
    tensor<bool> p({3, 3});
    for (index_t i = 0; i < 9; ++i)
        p[i] = true;
    p[1 * 3 + 1] = false;  // sample 1 misses modality 1
    p[2 * 3 + 0] = false;  // sample 2 misses modality 0
    p[2 * 3 + 2] = false;  // ... and modality 2
    fusion_workspace<double> w(true);
    m.zero_grad();
    std::vector<tensor<double>> y0;
    for (const auto& y : m.net().forward(w.cx, as_views<double, 3>(xs), p.cref()))
        y0.push_back(copy_of(y));
    // An absent modality's own outputs are zero; its input gradient is zero for that sample.
    std::vector<tensor<double>> dys;
    for (const auto& y : y0)
        dys.push_back(random_tensor<double>(y.extents(), rng));
    const fusion::views<double, 3> dxs = m.net().backward(w.cx, as_views<double, 3>(dys));
    for (const auto& [b, k] : {std::pair<index_t, std::size_t>{1, 1}, {2, 0}, {2, 2}}) {
        const index_t t = y0[k].extent(1), f = y0[k].extent(2);
        double ymax = 0.0, gmax = 0.0;
        for (index_t i = 0; i < t * f; ++i)
            ymax = std::max(ymax, std::abs(y0[k][b * t * f + i]));
        for (index_t i = 0; i < t * 4; ++i)
            gmax = std::max(gmax, std::abs(dxs[k].data()[b * t * 4 + i]));
        CHECK(ymax == 0.0);
        CHECK(gmax == 0.0);
    }
    // Absent content does not matter; the other samples' results are unchanged.
    for (index_t i = 0; i < 4 * 4; ++i)
        xs[1][1 * 16 + i] = -50.0;
    for (index_t i = 0; i < 3 * 4; ++i)
        xs[0][2 * 12 + i] = 70.0;
    w.ws.reset();
    const fusion::views<double, 3> y1 = m.net().forward(w.cx, as_views<double, 3>(xs), p.cref());
    for (std::size_t k = 0; k < 3; ++k)
        CHECK(max_diff<double>(y0[k].cref(), y1[k]) < 1e-12);
    // Equivalence: absent source == all its steps padded, for the targets that are present.
    nn::model<net_t> m2(net_t(4, 2, {.layers = 1}), 41);
    tensor<bool> kp({3, 4});
    for (index_t i = 0; i < 12; ++i)
        kp[i] = i / 4 != 1;
    m2.net().key_padding[1] = kp.cref();
    w.ws.reset();
    const fusion::views<double, 3> y2 = m2.net().forward(w.cx, as_views<double, 3>(xs));
    for (const std::size_t k : {std::size_t(0), std::size_t(2)}) {
        const index_t t = y0[k].extent(1);
        CHECK(slice_diff<double>(y0[k].cref(), y2[k], 1, 0, t) < 1e-12);
    }
}

TEST_CASE("mult: parameter names follow MulT", "[fusion][mult]") {
    using net_t = fusion::mult<3, float>;
    nn::model<net_t> m(net_t(6, 3, {.layers = 2}, false, {"l", "a", "v"}), 1);
    const auto& idx = m.parameter_index();
    CHECK(idx.size() == 6 * (2 * 12 + 2));
    CHECK(idx.front().name == "trans_l_with_a.layers.0.self_attn.in_proj_weight");
    CHECK(idx.front().shape == extents{18, 6});
    CHECK(m.find("trans_v_with_a.layers.1.fc1.weight")->shape == extents{24, 6});
    CHECK(m.find("trans_a_with_v.layers.1.layer_norms.0.bias") != nullptr);
    CHECK(m.find("trans_a_with_l.layer_norm.weight") != nullptr);
    CHECK(m.find("trans_a_with_a.layer_norm.weight") == nullptr);
    CHECK(idx.back().name == "trans_v_with_a.layer_norm.bias");
    // MulT's init: biases 0, LayerNorms 1 / 0.
    CHECK(m.find("trans_l_with_a.layers.0.fc1.bias")->value.data()[0] == 0.0f);
    CHECK(m.find("trans_l_with_a.layers.0.self_attn.out_proj.bias")->value.data()[3] == 0.0f);
    CHECK(m.find("trans_l_with_a.layers.0.layer_norms.1.weight")->value.data()[2] == 1.0f);
    // include_self: M sources per target, outputs (B, T, M d).
    nn::model<net_t> s(net_t(4, 2, {.layers = 1}, true), 1);
    CHECK(s.net().sources() == 3);
    CHECK(s.find("trans_1_with_1.layer_norm.bias") != nullptr);
    auto rng = make_rng(407);
    const auto xs = mmfuse_test::random_inputs<float>(
        rng, {extents{2, 3, 4}, extents{2, 5, 4}, extents{2, 2, 4}});
    fusion_workspace<float> w(false);
    const fusion::views<float, 3> ys = s.net().forward(w.cx, as_views<float, 3>(xs));
    CHECK(ys[1].extents() == extents{2, 5, 12});
    for (std::size_t k = 0; k < 3; ++k)
        for (index_t i = 0; i < ys[k].numel(); ++i)
            REQUIRE(std::isfinite(ys[k].data()[i]));
}

TEST_CASE("mult: errors name the module and the shapes", "[fusion][mult]") {
    using net_t = fusion::mult<2, double>;
    CHECK_THROWS_AS((fusion::mult<1, double>(4, 2)), value_error);
    CHECK_NOTHROW((fusion::mult<1, double>(4, 2, {}, true)));
    CHECK_THROWS_AS(net_t(6, 4), shape_error);  // heads do not divide d
    CHECK_THROWS_AS(net_t(3, 1), value_error);  // d < 4
    CHECK_THROWS_AS(net_t(4, 2, {.layers = 0}), value_error);
    nn::model<net_t> m(net_t(4, 2, {.layers = 1, .max_len = 6}), 1);
    fusion_workspace<double> w;
    auto rng = make_rng(408);
    const auto ok = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 5, 4}});
    CHECK_THROWS_AS(m.net().backward(w.cx, {}), shape_error);  // before a forward
    const auto wide = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 5, 6}});
    CHECK_THROWS_WITH(m.net().forward(w.cx, as_views<double, 2>(wide)),
                      Catch::Contains("mult input 1") && Catch::Contains("(2, 5, 6)"));
    const auto batch = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{3, 5, 4}});
    CHECK_THROWS_AS(m.net().forward(w.cx, as_views<double, 2>(batch)), shape_error);
    const auto flat = mmfuse_test::random_inputs(rng, {extents{2, 4}, extents{2, 5, 4}});
    CHECK_THROWS_AS(m.net().forward(w.cx, as_views<double, 2>(flat)), shape_error);
    const auto longer = mmfuse_test::random_inputs(rng, {extents{2, 7, 4}, extents{2, 5, 4}});
    CHECK_THROWS_WITH(m.net().forward(w.cx, as_views<double, 2>(longer)),
                      Catch::Contains("max_len = 6"));
    tensor<bool> p({2, 3});
    CHECK_THROWS_AS(m.net().forward(w.cx, as_views<double, 2>(ok), p.cref()), shape_error);
    tensor<bool> kp({2, 4});
    m.net().key_padding[1] = kp.cref();
    CHECK_THROWS_WITH(m.net().forward(w.cx, as_views<double, 2>(ok)),
                      Catch::Contains("mult key_padding 1") && Catch::Contains("(2, 5)"));
    m.net().key_padding[1] = {};
    const fusion::views<double, 2> ys = m.net().forward(w.cx, as_views<double, 2>(ok));
    CHECK(ys[0].extents() == extents{2, 3, 4});
    tensor<double> bad({2, 3, 5});
    CHECK_THROWS_AS(m.net().backward(w.cx, {bad.cref(), ys[1]}), shape_error);
    // The layer and the transformer check their own inputs.
    fusion::crossmodal_layer<double> layer(4, 2);
    nn::model<fusion::crossmodal_layer<double>> lm(std::move(layer), 1);
    const tensor<double> h({2, 3, 4}), s({1, 3, 4});
    CHECK_THROWS_WITH(lm.net().forward(w.cx, h.cref(), s.cref()),
                      Catch::Contains("source stream") && Catch::Contains("(1, 3, 4)"));
    nn::model<fusion::crossmodal_transformer<double>> tm(
        fusion::crossmodal_transformer<double>(4, 2, {.layers = 1}), 1);
    const tensor<double> s2({2, 3, 4});
    tensor<bool> keep({2, 4});
    CHECK_THROWS_WITH(tm.net().forward(w.cx, h.cref(), s2.cref(), keep.cref()),
                      Catch::Contains("source_keep"));
}
