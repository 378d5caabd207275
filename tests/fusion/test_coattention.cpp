// fusion/co_attention.hpp (ViLBERT Co-TRM) and fusion/qformer.hpp (BLIP-2 Q-Former query path):
// gradient checks in double, golden fixtures from PyTorch twins
// (tools/golden/make_fusion_coattention_fixtures.py), identity 12 of the reference catalogue
// (co-attention = two independent cross-attention blocks on the pre-update inputs), variable
// lengths with padding masks, the presence rule and the errors a wrong input gets.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/co_attention.hpp"
#include "mmfuse/fusion/qformer.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::make_rng;
using mmfuse_test::random_tensor;

template <class T>
using coattn = fusion::co_attention_layer<T>;
template <class T>
using qf = fusion::qformer<T>;

static_assert(fusion::differentiable_interaction<coattn<float>>);
static_assert(fusion::differentiable_interaction<coattn<double>>);
static_assert(nn::differentiable_layer<qf<float>>);
static_assert(nn::differentiable_layer<qf<double>>);

/// The gradcheck shapes: B = 2, Nv = 3, Nt = 4, Dv = 4, Dt = 6, Dbi = 4, 2 heads.
constexpr fusion::co_attention_options small{
    .visual_dim = 4, .text_dim = 6, .bi_dim = 4, .heads = 2, .visual_ff = 5, .text_ff = 4};

/// A (rows, cols) bool tensor from a row-major list.
tensor<bool> bool_mask(index_t rows, index_t cols, std::initializer_list<int> v) {
    tensor<bool> m({rows, cols});
    index_t i = 0;
    for (int x : v)
        m[i++] = x != 0;
    return m;
}

/// Contiguous copy of a view (test code: any strides).
template <class T>
std::vector<double> values(tensor_ref<const T> x) {
    std::vector<double> out;
    out.reserve(std::size_t(x.numel()));
    for_each_row<1>(x.extents(), {x.strides()}, [&](index_t, const std::array<index_t, 1>& off) {
        for (index_t j = 0; j < x.extent(-1); ++j)
            out.push_back(double(x.data()[off[0] + j * x.stride(-1)]));
    });
    return out;
}

/// The Q-Former as an arity-1 fuser for `fusion_gradcheck` (presence unused).
template <class T>
class flat_qformer {
public:
    using value_type = T;
    static constexpr std::size_t arity = 1;
    explicit flat_qformer(qf<T> q) : q_(std::move(q)) {}
    template <class V>
    void visit(V& v) {
        q_.visit(v);
    }
    void reset_parameters(philox_generator& g) { q_.reset_parameters(g); }
    tensor_ref<const T> forward(nn::step_context<T>& cx, const fusion::views<T, 1>& xs,
                                fusion::presence = {}) {
        return q_.forward(cx, xs[0], key_padding);
    }
    fusion::views<T, 1> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        return {q_.backward(cx, dy)};
    }
    tensor_ref<const bool> key_padding{};

private:
    qf<T> q_;
};

/// Random non-trivial parameters: every parameter U[-0.5, 0.5), LayerNorm gains 1 + that
/// (BERT init would give zero biases and unit gains, which test less).
template <class Net>
void randomise(nn::model<Net>& m, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    for (const auto& e : m.parameter_index()) {
        auto* p = m.find(e.name);
        const bool gain = e.name.ends_with("norm1.weight") || e.name.ends_with("norm2.weight") ||
                          e.name.ends_with("norm.weight");
        for (index_t i = 0; i < p->value.numel(); ++i)
            p->value.data()[i] = typename Net::value_type((gain ? 1.0 : 0.0) + u(rng));
    }
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double e = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i)
        e = std::max(e, std::abs(a[i] - b[i]));
    return e;
}

}  // namespace

// ---- co-attention ----------------------------------------------------------------------

TEST_CASE("co_attention: gradient check with key padding and presence", "[fusion][coattention]") {
    auto rng = make_rng(401);
    nn::model<mmfuse_test::interaction_as_fuser<coattn<double>>> m(
        mmfuse_test::interaction_as_fuser<coattn<double>>{coattn<double>(small)}, 7);
    randomise(m, rng);
    const tensor<bool> kv = bool_mask(2, 3, {1, 0, 1, 1, 1, 0});
    const tensor<bool> kt = bool_mask(2, 4, {1, 1, 1, 0, 0, 1, 1, 1});
    m.net().inner.key_padding = {kv.cref(), kt.cref()};
    auto xs = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 4, 6}});

    SECTION("every modality present") {
        const auto r = fusion_gradcheck<2>(m, std::move(xs), rng);
        INFO("input " << r.input_error << ", parameters " << r.parameter_error);
        CHECK(r.input_error < 1e-7);
        CHECK(r.parameter_error < 1e-7);
    }
    SECTION("visual absent in sample 0, text absent in sample 1") {
        const tensor<bool> p = bool_mask(2, 2, {0, 1, 1, 0});
        const auto r = fusion_gradcheck<2>(m, std::move(xs), rng, p.cref());
        INFO("input " << r.input_error << ", parameters " << r.parameter_error);
        CHECK(r.input_error < 1e-7);
        CHECK(r.parameter_error < 1e-7);
    }
    SECTION("no masks, one sample with both streams absent") {
        m.net().inner.key_padding = {};
        const tensor<bool> p = bool_mask(2, 2, {0, 0, 1, 1});
        const auto r = fusion_gradcheck<2>(m, std::move(xs), rng, p.cref());
        CHECK(r.input_error < 1e-7);
        CHECK(r.parameter_error < 1e-7);
    }
}

TEMPLATE_TEST_CASE("co_attention: golden ViLBERT Co-TRM layer with key padding",
                   "[fusion][coattention][golden]", float, double) {
    using T = TestType;
    mmfuse_test::golden<T> g("fusion_coattention_vilbert");
    nn::model<coattn<T>> m(coattn<T>({.visual_dim = 6,
                                      .text_dim = 5,
                                      .bi_dim = 4,
                                      .heads = 2,
                                      .visual_ff = 7,
                                      .text_ff = 3}),
                           1);
    g.load_parameters(m);
    const tensor<T> v = g.load("visual"), t = g.load("text");
    const tensor<bool> kv = g.load_mask("key_padding_visual"), kt = g.load_mask("key_padding_text");
    const tensor<T> dv = g.load("dy_visual"), dt = g.load("dy_text");
    fusion_workspace<T> w;
    m.zero_grad();
    const fusion::views<T, 2> ys =
        m.net().forward(w.cx, {v.cref(), t.cref()}, {}, {kv.cref(), kt.cref()});
    g.compare("y_visual", ys[0]);
    g.compare("y_text", ys[1]);
    const fusion::views<T, 2> dxs = m.net().backward(w.cx, {dv.cref(), dt.cref()});
    g.compare("grad_visual", dxs[0]);
    g.compare("grad_text", dxs[1]);
    g.compare_parameter_grads(m);
}

namespace {

/// Copies `src` into rows [row, row + src rows) of `dst` (parameters of two models).
template <class T>
void put_rows(nn::parameter<T>* dst, const nn::parameter<T>* src, index_t row) {
    REQUIRE(dst != nullptr);
    REQUIRE(src != nullptr);
    const index_t n = src->value.numel();
    std::copy(src->value.data(), src->value.data() + n,
              dst->value.data() + row * (n / std::max<index_t>(1, src->value.extent(0))));
}

template <class T>
std::vector<double> grad_rows(nn::parameter<T>* p, index_t first, index_t count) {
    const index_t w = p->grad.numel() / p->grad.extent(0);
    return std::vector<double>(p->grad.data() + first * w, p->grad.data() + (first + count) * w);
}

}  // namespace

TEST_CASE(
    "co_attention: identity 12, two independent cross-attention blocks on the pre-update "
    "inputs",
    "[fusion][coattention][identity]") {
    // Dv = Dt = Dbi = 4: stream s's update equals a post-LN cross_attention_block whose
    // in_proj = [query_s; key_o; value_o], out_proj = dense_s, with stream s's FFN and norms,
    // applied to the ORIGINAL other stream (simultaneous update).
    auto rng = make_rng(402);
    const index_t d = 4;
    nn::model<coattn<double>> m(coattn<double>({.visual_dim = d,
                                                .text_dim = d,
                                                .bi_dim = d,
                                                .heads = 2,
                                                .visual_ff = 6,
                                                .text_ff = 5}),
                                3);
    randomise(m, rng);
    using block = nn::cross_attention_block<dyn, dyn, dyn, double>;
    const nn::transformer_options post{
        .activation = ops::unary_kind::gelu_erf, .layer_norm_eps = 1e-12, .norm_first = false};
    const std::array<std::string, 2> name{"visual.", "text."};
    std::vector<std::unique_ptr<nn::model<block>>> blocks;
    blocks.push_back(std::make_unique<nn::model<block>>(block(d, 2, 6, d, post), 1));
    blocks.push_back(std::make_unique<nn::model<block>>(block(d, 2, 5, d, post), 1));
    for (std::size_t s = 0; s < 2; ++s) {
        auto& b = *blocks[s];
        const std::string me = name[s], other = name[1 - s];
        put_rows(b.find("cross_attn.in_proj_weight"), m.find(me + "query.weight"), 0);
        put_rows(b.find("cross_attn.in_proj_weight"), m.find(other + "key.weight"), d);
        put_rows(b.find("cross_attn.in_proj_weight"), m.find(other + "value.weight"), 2 * d);
        put_rows(b.find("cross_attn.in_proj_bias"), m.find(me + "query.bias"), 0);
        put_rows(b.find("cross_attn.in_proj_bias"), m.find(other + "key.bias"), d);
        put_rows(b.find("cross_attn.in_proj_bias"), m.find(other + "value.bias"), 2 * d);
        for (const char* p : {"weight", "bias"}) {
            put_rows(b.find(std::string("cross_attn.out_proj.") + p), m.find(me + "dense." + p), 0);
            for (const char* c : {"linear1.", "linear2.", "norm1.", "norm2."})
                put_rows(b.find(std::string(c) + p), m.find(me + c + p), 0);
        }
    }
    const auto xs = mmfuse_test::random_inputs(rng, {extents{2, 3, d}, extents{2, 4, d}});
    const tensor<bool> kv = bool_mask(2, 3, {1, 1, 0, 0, 1, 1});
    const tensor<bool> kt = bool_mask(2, 4, {1, 0, 1, 1, 1, 1, 1, 0});
    const std::array<tensor<double>, 2> dys{random_tensor<double>(xs[0].extents(), rng),
                                            random_tensor<double>(xs[1].extents(), rng)};

    fusion_workspace<double> w;
    m.zero_grad();
    const auto ys = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, {}, {kv.cref(), kt.cref()});
    const auto dxs = m.net().backward(w.cx, {dys[0].cref(), dys[1].cref()});
    const std::array<tensor_ref<const bool>, 2> kp{kv.cref(), kt.cref()};
    std::array<nn::cross_attention_grads<double>, 2> g{};
    for (std::size_t s = 0; s < 2; ++s) {
        blocks[s]->zero_grad();
        const auto y = blocks[s]->net().forward(w.cx, xs[s].cref(), xs[1 - s].cref(),
                                                {.key_padding = kp[1 - s]});
        CHECK(max_abs_diff(values<double>(ys[s]), values<double>(y)) < 1e-12);
        g[s] = blocks[s]->net().backward(w.cx, dys[s].cref());
    }
    for (std::size_t s = 0; s < 2; ++s) {
        std::vector<double> want = values<double>(g[s].dx);
        const std::vector<double> via_other = values<double>(g[1 - s].dcontext);
        for (std::size_t i = 0; i < want.size(); ++i)
            want[i] += via_other[i];
        CHECK(max_abs_diff(values<double>(dxs[s]), want) < 1e-12);
        // The projections the other block used: key and value of stream s.
        auto* w_in = blocks[1 - s]->find("cross_attn.in_proj_weight");
        CHECK(max_abs_diff(grad_rows(m.find(name[s] + "key.weight"), 0, d), grad_rows(w_in, d, d)) <
              1e-12);
        CHECK(max_abs_diff(grad_rows(m.find(name[s] + "value.weight"), 0, d),
                           grad_rows(w_in, 2 * d, d)) < 1e-12);
        CHECK(max_abs_diff(grad_rows(m.find(name[s] + "query.weight"), 0, d),
                           grad_rows(blocks[s]->find("cross_attn.in_proj_weight"), 0, d)) < 1e-12);
        CHECK(max_abs_diff(grad_rows(m.find(name[s] + "dense.weight"), 0, d),
                           grad_rows(blocks[s]->find("cross_attn.out_proj.weight"), 0, d)) < 1e-12);
    }

    SECTION("swapping the streams swaps the outputs (simultaneous, symmetric update)") {
        nn::model<coattn<double>> sw(coattn<double>({.visual_dim = d,
                                                     .text_dim = d,
                                                     .bi_dim = d,
                                                     .heads = 2,
                                                     .visual_ff = 5,
                                                     .text_ff = 6}),
                                     3);
        for (const auto& e : sw.parameter_index()) {
            std::string src = e.name.starts_with("visual.") ? "text." + e.name.substr(7)
                                                            : "visual." + e.name.substr(5);
            put_rows(sw.find(e.name), m.find(src), 0);
        }
        const auto ys2 =
            sw.net().forward(w.cx, {xs[1].cref(), xs[0].cref()}, {}, {kt.cref(), kv.cref()});
        CHECK(max_abs_diff(values<double>(ys2[0]), values<double>(ys[1])) < 1e-12);
        CHECK(max_abs_diff(values<double>(ys2[1]), values<double>(ys[0])) < 1e-12);
    }
}

TEST_CASE("co_attention: variable lengths, outputs independent of padded content",
          "[fusion][coattention][padding]") {
    auto rng = make_rng(403);
    nn::model<coattn<double>> m(coattn<double>(small), 5);
    randomise(m, rng);
    auto xs = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 4, 6}});
    const std::array<index_t, 2> nv{2, 3}, nt{4, 1};
    const tensor<bool> kv = bool_mask(2, 3, {1, 1, 0, 1, 1, 1});
    const tensor<bool> kt = bool_mask(2, 4, {1, 1, 1, 1, 1, 0, 0, 0});
    fusion_workspace<double> w(false);
    const auto ys = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, {}, {kv.cref(), kt.cref()});
    const std::array<std::vector<double>, 2> y0{values<double>(ys[0]), values<double>(ys[1])};

    SECTION("new padded content changes no valid output") {
        for (index_t b = 0; b < 2; ++b) {
            for (index_t i = nv[std::size_t(b)]; i < 3; ++i)
                for (index_t j = 0; j < 4; ++j)
                    xs[0][(b * 3 + i) * 4 + j] = 100.0 * double(j + 1);
            for (index_t i = nt[std::size_t(b)]; i < 4; ++i)
                for (index_t j = 0; j < 6; ++j)
                    xs[1][(b * 4 + i) * 6 + j] = -50.0;
        }
        const auto y2 =
            m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, {}, {kv.cref(), kt.cref()});
        const std::array<std::vector<double>, 2> y1{values<double>(y2[0]), values<double>(y2[1])};
        const std::array<index_t, 2> len{3, 4}, width{4, 6};
        for (std::size_t s = 0; s < 2; ++s)
            for (index_t b = 0; b < 2; ++b)
                for (index_t i = 0; i < (s == 0 ? nv : nt)[std::size_t(b)]; ++i)
                    for (index_t j = 0; j < width[s]; ++j) {
                        const std::size_t at = std::size_t((b * len[s] + i) * width[s] + j);
                        CHECK(y1[s][at] == y0[s][at]);
                    }
    }
    SECTION("each sample alone, truncated to its length, gives the same valid outputs") {
        for (index_t b = 0; b < 2; ++b) {
            const auto vb = xs[0].cref().narrow(0, b, 1).narrow(1, 0, nv[std::size_t(b)]);
            const auto tb = xs[1].cref().narrow(0, b, 1).narrow(1, 0, nt[std::size_t(b)]);
            const auto yb = m.net().forward(w.cx, {vb, tb});
            const std::array<index_t, 2> len{3, 4}, width{4, 6};
            for (std::size_t s = 0; s < 2; ++s) {
                const std::vector<double> got = values<double>(yb[s]);
                for (std::size_t k = 0; k < got.size(); ++k)
                    CHECK(std::abs(got[k] - y0[s][std::size_t(b * len[s] * width[s]) + k]) < 1e-12);
            }
        }
    }
}

TEST_CASE("co_attention: presence, an absent stream passes through and gives no update",
          "[fusion][coattention][presence]") {
    auto rng = make_rng(404);
    nn::model<coattn<double>> m(coattn<double>(small), 5);
    randomise(m, rng);
    auto xs = mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 4, 6}});
    const tensor<bool> p = bool_mask(2, 2, {0, 1, 1, 1});  // visual absent in sample 0
    const std::array<tensor<double>, 2> dys{random_tensor<double>(xs[0].extents(), rng),
                                            random_tensor<double>(xs[1].extents(), rng)};
    fusion_workspace<double> w;
    const auto ys = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, p.cref());
    const std::array<std::vector<double>, 2> y0{values<double>(ys[0]), values<double>(ys[1])};
    const auto dxs = m.net().backward(w.cx, {dys[0].cref(), dys[1].cref()});
    const std::vector<double> dv = values<double>(dxs[0]);
    for (index_t i = 0; i < 12; ++i) {  // sample 0 of the visual stream: y = x, dx = dy
        CHECK(y0[0][std::size_t(i)] == xs[0][i]);
        CHECK(dv[std::size_t(i)] == dys[0][i]);
    }

    SECTION("the text update of sample 0 is exactly zero: LN(T + 0), then the FFN") {
        // Reference: the same layer with every visual key of sample 0 masked (C_t = 0) and
        // text.dense.bias zeroed, so the cross update is dense(0) = 0 there.
        nn::model<coattn<double>> r(coattn<double>(small), 5);
        for (const auto& e : r.parameter_index())
            put_rows(r.find(e.name), m.find(e.name), 0);
        auto* bias = r.find("text.dense.bias");
        std::fill(bias->value.data(), bias->value.data() + bias->value.numel(), 0.0);
        const tensor<bool> kv = bool_mask(2, 3, {0, 0, 0, 1, 1, 1});
        const auto yr = r.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, {}, {kv.cref(), {}});
        const std::vector<double> t = values<double>(yr[1]);
        for (std::size_t i = 0; i < 24; ++i)
            CHECK(std::abs(t[i] - y0[1][i]) < 1e-12);
    }
    SECTION("the absent stream's content changes nothing else") {
        for (index_t i = 0; i < 12; ++i)
            xs[0][i] = 1000.0 * double(i % 5) - 2000.0;
        const auto y2 = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, p.cref());
        CHECK(values<double>(y2[1]) == y0[1]);
        const std::vector<double> v2 = values<double>(y2[0]);
        for (std::size_t i = 12; i < 24; ++i)
            CHECK(v2[i] == y0[0][i]);
    }
    SECTION("all-true presence equals no presence") {
        const tensor<bool> all = bool_mask(2, 2, {1, 1, 1, 1});
        const auto ya = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()}, all.cref());
        const auto yn = m.net().forward(w.cx, {xs[0].cref(), xs[1].cref()});
        CHECK(values<double>(ya[0]) == values<double>(yn[0]));
        CHECK(values<double>(ya[1]) == values<double>(yn[1]));
    }
}

TEST_CASE("co_attention: init and shape errors", "[fusion][coattention][errors]") {
    nn::model<coattn<float>> m(coattn<float>(small), 9);
    CHECK(m.find("visual.norm1.weight")->value.data()[0] == 1.0f);
    CHECK(m.find("text.dense.bias")->value.data()[0] == 0.0f);
    double ss = 0.0;
    const auto& wq = m.find("text.linear1.weight")->value;
    for (index_t i = 0; i < wq.numel(); ++i)
        ss += double(wq.data()[i]) * wq.data()[i];
    CHECK(std::sqrt(ss / double(wq.numel())) < 0.06);  // N(0, 0.02): rms ~ 0.02

    CHECK_THROWS_AS(coattn<float>({.visual_dim = 4,
                                   .text_dim = 6,
                                   .bi_dim = 5,
                                   .heads = 2,
                                   .visual_ff = 5,
                                   .text_ff = 4}),
                    shape_error);
    CHECK_THROWS_AS(coattn<float>({.visual_dim = 0,
                                   .text_dim = 6,
                                   .bi_dim = 4,
                                   .heads = 2,
                                   .visual_ff = 5,
                                   .text_ff = 4}),
                    shape_error);
    auto rng = make_rng(405);
    fusion_workspace<float> w;
    const auto v = random_tensor<float>({2, 3, 4}, rng), t = random_tensor<float>({2, 4, 6}, rng);
    const auto bad_w = random_tensor<float>({2, 3, 5}, rng),
               bad_b = random_tensor<float>({3, 4, 6}, rng);
    CHECK_THROWS_AS(m.net().backward(w.cx, {v.cref(), t.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {bad_w.cref(), t.cref()}), shape_error);
    CHECK_THROWS_AS(m.net().forward(w.cx, {v.cref(), bad_b.cref()}), shape_error);
    const tensor<bool> p3 = bool_mask(2, 3, {1, 1, 1, 1, 1, 1});
    CHECK_THROWS_AS(m.net().forward(w.cx, {v.cref(), t.cref()}, p3.cref()), shape_error);
    const tensor<bool> kbad = bool_mask(2, 4, {1, 1, 1, 1, 1, 1, 1, 1});
    CHECK_THROWS_AS(m.net().forward(w.cx, {v.cref(), t.cref()}, {}, {kbad.cref(), {}}),
                    shape_error);
    try {
        m.net().forward(w.cx, {bad_w.cref(), t.cref()});
    } catch (const shape_error& e) {
        CHECK_THAT(std::string(e.what()), Catch::Contains("visual input"));
    }
    m.net().forward(w.cx, {v.cref(), t.cref()});
    CHECK_THROWS_AS(m.net().backward(w.cx, {t.cref(), v.cref()}), shape_error);
}

// ---- Q-Former --------------------------------------------------------------------------

TEST_CASE("qformer: gradient check (3 layers, cross-attention in 0 and 2, padded image)",
          "[fusion][qformer]") {
    auto rng = make_rng(406);
    const index_t dimg = GENERATE(6, 4);  // 4 = hidden: packed cross-attention projections
    nn::model<flat_qformer<double>> m(flat_qformer<double>(qf<double>({.hidden = 4,
                                                                       .heads = 2,
                                                                       .ff = 5,
                                                                       .image_dim = dimg,
                                                                       .num_queries = 2,
                                                                       .num_layers = 3,
                                                                       .cross_attention_freq = 2})),
                                      4);
    randomise(m, rng);
    CHECK(m.find("layers.0.cross_attn.out_proj.weight") != nullptr);
    CHECK(m.find("layers.1.cross_attn.out_proj.weight") == nullptr);
    CHECK(m.find("layers.2.cross_norm.weight") != nullptr);
    const tensor<bool> kp = bool_mask(2, 3, {1, 1, 0, 1, 0, 1});
    m.net().key_padding = kp.cref();
    auto xs = mmfuse_test::random_inputs(rng, {extents{2, 3, dimg}});
    const auto r = fusion_gradcheck<1>(m, std::move(xs), rng);
    INFO("image width " << dimg << ": input " << r.input_error << ", parameters "
                        << r.parameter_error);
    CHECK(r.input_error < 1e-7);
    CHECK(r.parameter_error < 1e-7);
}

TEMPLATE_TEST_CASE("qformer: golden BLIP-2 Q-Former (2 layers, freq 2, padded image tokens)",
                   "[fusion][qformer][golden]", float, double) {
    using T = TestType;
    mmfuse_test::golden<T> g("fusion_coattention_qformer");
    nn::model<qf<T>> m(qf<T>({.hidden = 4,
                              .heads = 2,
                              .ff = 6,
                              .image_dim = 6,
                              .num_queries = 2,
                              .num_layers = 2,
                              .cross_attention_freq = 2}),
                       1);
    g.load_parameters(m);
    const tensor<T> image = g.load("image"), dy = g.load("dy");
    const tensor<bool> kp = g.load_mask("key_padding");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, image.cref(), kp.cref()));
    g.compare("grad_image", m.net().backward(w.cx, dy.cref()));
    g.compare_parameter_grads(m);
}

TEST_CASE("qformer: any number of image tokens, padding and errors", "[fusion][qformer]") {
    auto rng = make_rng(407);
    const fusion::qformer_options o{.hidden = 4,
                                    .heads = 2,
                                    .ff = 5,
                                    .image_dim = 6,
                                    .num_queries = 3,
                                    .num_layers = 2,
                                    .cross_attention_freq = 1};
    nn::model<qf<double>> m(qf<double>(o), 8);
    randomise(m, rng);
    auto image = random_tensor<double>({2, 5, 6}, rng);
    const tensor<bool> kp = bool_mask(2, 5, {1, 1, 1, 0, 0, 1, 1, 1, 1, 1});
    const tensor<double> dy = random_tensor<double>({2, 3, 4}, rng);
    fusion_workspace<double> w;
    const std::vector<double> y0 = values<double>(m.net().forward(w.cx, image.cref(), kp.cref()));
    REQUIRE(y0.size() == 24);
    const std::vector<double> dimg = values<double>(m.net().backward(w.cx, dy.cref()));
    for (index_t i = 3; i < 5; ++i)
        for (index_t j = 0; j < 6; ++j)
            CHECK(dimg[std::size_t(i * 6 + j)] == 0.0);  // padded tokens get no gradient

    SECTION("sample 0 alone with its 3 tokens and no mask gives the same queries") {
        const auto y =
            values<double>(m.net().forward(w.cx, image.cref().narrow(0, 0, 1).narrow(1, 0, 3)));
        for (std::size_t k = 0; k < y.size(); ++k)
            CHECK(std::abs(y[k] - y0[k]) < 1e-12);
    }
    SECTION("new padded content changes nothing") {
        for (index_t k = 18; k < 30; ++k)
            image[k] = 77.0;
        CHECK(values<double>(m.net().forward(w.cx, image.cref(), kp.cref())) == y0);
    }
    SECTION("errors") {
        const auto bad = random_tensor<double>({2, 5, 4}, rng);
        nn::model<qf<double>> fresh(qf<double>(o), 8);
        CHECK_THROWS_AS(fresh.net().backward(w.cx, dy.cref()), shape_error);
        CHECK_THROWS_AS(m.net().forward(w.cx, bad.cref()), shape_error);
        const tensor<bool> kbad = bool_mask(2, 4, {1, 1, 1, 1, 1, 1, 1, 1});
        CHECK_THROWS_AS(m.net().forward(w.cx, image.cref(), kbad.cref()), shape_error);
        m.net().forward(w.cx, image.cref());
        CHECK_THROWS_AS(m.net().backward(w.cx, image.cref()), shape_error);
        fusion::qformer_options b = o;
        b.cross_attention_freq = 0;
        CHECK_THROWS_AS(qf<double>(b), shape_error);
        b = o;
        b.heads = 3;
        CHECK_THROWS_AS(qf<double>(b), shape_error);
    }
    SECTION("BERT init: query tokens N(0, 0.02), LayerNorm 1 / 0") {
        nn::model<qf<float>> f(qf<float>(o), 11);
        CHECK(f.find("norm.weight")->value.data()[0] == 1.0f);
        CHECK(f.find("layers.0.cross_attn.in_proj_bias")->value.data()[0] == 0.0f);
        const auto& q = f.find("query_tokens")->value;
        double ss = 0.0;
        for (index_t i = 0; i < q.numel(); ++i)
            ss += double(q.data()[i]) * q.data()[i];
        CHECK(ss > 0.0);
        CHECK(std::sqrt(ss / double(q.numel())) < 0.06);
    }
}
