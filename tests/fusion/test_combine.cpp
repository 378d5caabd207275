// fusion/fuser.hpp, combine.hpp and templates.hpp: concat and mean against double loops with
// random presence masks, gradient checks of the fusers and of early / late / hybrid models
// built from them, and the errors a wrong input gets.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/compose/modalities.hpp"
#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/fusion/combine.hpp"
#include "mmfuse/fusion/exchange.hpp"
#include "mmfuse/fusion/templates.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::as_views;
using mmfuse_test::fuse_root;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::make_rng;
using mmfuse_test::random_presence;
using mmfuse_test::random_tensor;

/// An interaction that swaps nothing: y_m = x_m * s_m with a learned scalar per stream, so
/// that `hybrid` and `stages` have something differentiable to chain.
template <std::size_t M, compute_type T>
class scale_streams {
public:
    using value_type = T;
    static constexpr std::size_t arity = M;
    scale_streams() {
        for (auto& s : scale_)
            s.shape = extents{1};
    }
    template <class V>
    void visit(V& v) {
        v.path(path_);
        for (std::size_t m = 0; m < M; ++m)
            v.parameter(names_[m], scale_[m]);
    }
    void reset_parameters(philox_generator&) {
        for (std::size_t m = 0; m < M; ++m)
            scale_[m].value.data()[0] = T(0.5 + double(m));
    }
    fusion::views<T, M> forward(nn::step_context<T>& cx, const fusion::views<T, M>& xs,
                                fusion::presence = {}) {
        fusion::views<T, M> ys{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<T> y = cx.allocate(xs[m].extents());
            ops::binary<T>(cx.op(path_), ops::binary_kind::mul, xs[m],
                           tensor_ref<const T>(scale_[m].value), y);
            ys[m] = y;
        }
        xs_ = xs;
        return ys;
    }
    fusion::views<T, M> backward(nn::step_context<T>& cx, const fusion::views<T, M>& dys) {
        fusion::views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m) {
            const tensor_ref<T> d = cx.allocate(dys[m].extents());
            ops::binary<T>(cx.op(path_), ops::binary_kind::mul, dys[m],
                           tensor_ref<const T>(scale_[m].value), d);
            dxs[m] = d;
            double acc = 0.0;  // d scale = sum(dy * x)  (test code: contiguous views)
            for (index_t i = 0; i < dys[m].numel(); ++i)
                acc += double(dys[m].data()[i]) * double(xs_[m].data()[i]);
            scale_[m].grad.data()[0] += T(acc);
        }
        return dxs;
    }

private:
    std::array<nn::parameter<T>, M> scale_{};
    std::array<const char*, 4> names_{"s0", "s1", "s2", "s3"};
    fusion::views<T, M> xs_{};
    std::string path_;
};

bool present(const tensor<bool>& p, index_t b, index_t m) {
    return p[b * p.extent(1) + m];
}

}  // namespace

TEMPLATE_TEST_CASE("concat puts the present modalities side by side and zeroes the absent",
                   "[fusion][concat]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(501);
    const index_t b = 5, t = 3;
    const std::array<index_t, 3> d{4, 2, 7};
    for (int rank : {2, 3}) {
        std::vector<tensor<T>> xs;
        for (index_t w : d)
            xs.push_back(rank == 2 ? random_tensor<T>({b, w}, rng)
                                   : random_tensor<T>({b, t, w}, rng));
        const tensor<bool> p = random_presence(rng, b, 3);
        fusion_workspace<T> w;
        fusion::concat<3, T> f;
        const tensor_ref<const T> y = f.forward(w.cx, as_views<T, 3>(xs), p.cref());
        const index_t rows = rank == 2 ? 1 : t, total = 13;
        REQUIRE(y.extent(-1) == total);
        for (index_t s = 0; s < b; ++s)
            for (index_t r = 0; r < rows; ++r) {
                index_t at = 0;
                for (index_t m = 0; m < 3; ++m) {
                    for (index_t j = 0; j < d[m]; ++j) {
                        const T want = present(p, s, m) ? xs[m][(s * rows + r) * d[m] + j] : T(0);
                        REQUIRE(y.data()[(s * rows + r) * total + at + j] == want);
                    }
                    at += d[m];
                }
            }
    }
}

TEMPLATE_TEST_CASE("mean averages the present modalities with renormalised weights",
                   "[fusion][mean]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(502);
    const index_t b = 7, k = 3;
    std::vector<tensor<T>> xs;
    for (int m = 0; m < 3; ++m)
        xs.push_back(random_tensor<T>({b, k}, rng));
    tensor<bool> p = random_presence(rng, b, 3, 0.5);
    p[0] = p[1] = p[2] = false;  // sample 0: nothing present -> 0
    const std::array<double, 3> wts{0.5, 2.0, 1.25};
    fusion_workspace<T> w;
    fusion::mean<3, T> f(wts);
    const tensor_ref<const T> y = f.forward(w.cx, as_views<T, 3>(xs), p.cref());
    for (index_t s = 0; s < b; ++s) {
        double total = 0.0;
        for (index_t m = 0; m < 3; ++m)
            total += present(p, s, m) ? wts[m] : 0.0;
        for (index_t j = 0; j < k; ++j) {
            double want = 0.0;
            for (index_t m = 0; m < 3; ++m)
                if (present(p, s, m)) want += wts[m] / total * double(xs[m][s * k + j]);
            REQUIRE(double(y.data()[s * k + j]) ==
                    Approx(want).margin(mmfuse_test::tolerance<T>()));
        }
    }
    // No mask: the plain mean (MMF late_fusion with two modalities is (a + b) / 2).
    fusion::mean<2, T> two;
    const tensor_ref<const T> y2 =
        two.forward(w.cx, fusion::views<T, 2>{xs[0].cref(), xs[1].cref()});
    for (index_t i = 0; i < b * k; ++i)
        REQUIRE(double(y2.data()[i]) ==
                Approx((double(xs[0][i]) + double(xs[1][i])) / 2).margin(1e-6));
}

TEST_CASE("concat and mean gradients match finite differences, with and without a mask",
          "[fusion][gradcheck]") {
    std::mt19937_64 rng = make_rng(503);
    const tensor<bool> p = random_presence(rng, 4, 2);
    for (bool masked : {false, true}) {
        const fusion::presence pm = masked ? p.cref() : fusion::presence{};
        nn::model<fuse_root<fusion::concat<2, double>>> c{{}};
        auto rc = fusion_gradcheck<2>(
            c, mmfuse_test::random_inputs(rng, {extents{4, 3}, extents{4, 5}}), rng, pm);
        CHECK(rc.input_error < 1e-8);
        nn::model<fuse_root<fusion::mean<2, double>>> mn{{}};
        auto rm = fusion_gradcheck<2>(
            mn, mmfuse_test::random_inputs(rng, {extents{4, 2, 3}, extents{4, 2, 3}}), rng, pm);
        CHECK(rm.input_error < 1e-8);
    }
}

namespace {
template <class T>
using enc = compose::seq<nn::linear<dyn, dyn, T>, nn::tanh<T>>;
template <class T>
using two_encoders =
    compose::modalities<compose::named<"text", enc<T>>, compose::named<"audio", enc<T>>>;
template <class T>
two_encoders<T> make_encoders() {
    return two_encoders<T>(
        compose::named<"text", enc<T>>(enc<T>(nn::linear<dyn, dyn, T>(3, 4), {})),
        compose::named<"audio", enc<T>>(enc<T>(nn::linear<dyn, dyn, T>(5, 2), {})));
}
}  // namespace

TEST_CASE("late, early and hybrid models train end to end: names and gradients",
          "[fusion][templates][gradcheck]") {
    std::mt19937_64 rng = make_rng(504);
    using T = double;
    const tensor<bool> p = random_presence(rng, 3, 2);

    // late: encoders -> concat -> linear head (MultiBench "simple late fusion").
    using late_t = fusion::late<two_encoders<T>, fusion::concat<2, T>, nn::linear<dyn, dyn, T>>;
    nn::model<late_t> lm(late_t(make_encoders<T>(), {}, nn::linear<dyn, dyn, T>(6, 2)), 7);
    REQUIRE(lm.find("encoders.text.0.weight") != nullptr);
    REQUIRE(lm.find("encoders.audio.0.bias") != nullptr);
    REQUIRE(lm.find("head.weight") != nullptr);
    const auto rl = fusion_gradcheck<2>(
        lm, mmfuse_test::random_inputs(rng, {extents{3, 3}, extents{3, 5}}), rng, p.cref());
    CHECK(rl.input_error < 1e-7);
    CHECK(rl.parameter_error < 1e-7);

    // early: identity stems -> concat of aligned tokens -> one shared encoder (ConcatEarly).
    using stems_t = compose::modalities<compose::named<"text", fusion::identity<T>>,
                                        compose::named<"audio", fusion::identity<T>>>;
    using early_t = fusion::early<stems_t, fusion::concat<2, T>, enc<T>>;
    nn::model<early_t> em(early_t({}, {}, enc<T>(nn::linear<dyn, dyn, T>(5, 3), {})), 8);
    REQUIRE(em.find("encoder.0.weight") != nullptr);
    const auto re = fusion_gradcheck<2>(
        em, mmfuse_test::random_inputs(rng, {extents{3, 4, 2}, extents{3, 4, 3}}), rng, p.cref());
    CHECK(re.input_error < 1e-7);
    CHECK(re.parameter_error < 1e-7);

    // hybrid: encoders -> two interaction stages -> mean -> head.
    using inter_t = fusion::stages<scale_streams<2, T>, scale_streams<2, T>>;
    using enc_same =
        compose::modalities<compose::named<"text", enc<T>>, compose::named<"audio", enc<T>>>;
    using hybrid_t = fusion::hybrid<enc_same, inter_t, fusion::mean<2, T>, nn::linear<dyn, dyn, T>>;
    nn::model<hybrid_t> hm(
        hybrid_t(
            enc_same(compose::named<"text", enc<T>>(enc<T>(nn::linear<dyn, dyn, T>(3, 4), {})),
                     compose::named<"audio", enc<T>>(enc<T>(nn::linear<dyn, dyn, T>(5, 4), {}))),
            {}, {}, nn::linear<dyn, dyn, T>(4, 1)),
        9);
    REQUIRE(hm.find("interaction.1.s1") != nullptr);
    const auto rh = fusion_gradcheck<2>(
        hm, mmfuse_test::random_inputs(rng, {extents{3, 3}, extents{3, 5}}), rng, p.cref());
    CHECK(rh.input_error < 1e-7);
    CHECK(rh.parameter_error < 1e-7);
}

TEST_CASE("fusers name the module and both shapes on bad input", "[fusion][errors]") {
    using Catch::Contains;
    fusion_workspace<float> w;
    tensor<float> a({2, 3}), b({3, 4}), c({2, 3});
    nn::model<fuse_root<fusion::concat<2, float>>> m{{}};
    REQUIRE_THROWS_WITH(m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b.cref()}),
                        Contains("fuse") && Contains("concat input 1") && Contains("(3, 4)"));
    tensor<bool> bad({2, 3});
    REQUIRE_THROWS_WITH(
        m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), c.cref()}, bad.cref()),
        Contains("presence mask") && Contains("(2, 2)") && Contains("(2, 3)"));
    nn::model<fuse_root<fusion::mean<2, float>>> mm{{}};
    REQUIRE_THROWS_WITH(mm.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b.cref()}),
                        Contains("mean input 1") && Contains("(2, 3)") && Contains("(3, 4)"));
    const std::array<double, 2> zero_weight{1.0, 0.0};
    REQUIRE_THROWS_AS((fusion::mean<2, float>(zero_weight)), value_error);
}

TEST_CASE(
    "cross_exchange and mean_tokens: a two-stream hybrid has exact gradients, and an "
    "absent stream is masked as keys",
    "[fusion][exchange][gradcheck]") {
    using T = double;
    std::mt19937_64 rng = make_rng(505);
    using block = nn::cross_attention_block<dyn, dyn, dyn, T>;
    using pooled = compose::modalities<compose::named<"a", fusion::mean_tokens<T>>,
                                       compose::named<"b", fusion::mean_tokens<T>>>;
    using ids = compose::modalities<compose::named<"a", fusion::identity<T>>,
                                    compose::named<"b", fusion::identity<T>>>;
    using net_t = fusion::hybrid<ids, fusion::stages<fusion::cross_exchange<block, block>, pooled>,
                                 fusion::concat<2, T>>;
    const auto make = [] {
        return net_t({},
                     fusion::stages<fusion::cross_exchange<block, block>, pooled>(
                         fusion::cross_exchange<block, block>(block(4, 2, 6, 3), block(3, 1, 5, 4)),
                         pooled{}),
                     {});
    };
    nn::model<net_t> m(make(), 3);
    REQUIRE(m.find("interaction.0.0.cross_attn.q_proj_weight") != nullptr);
    tensor<bool> p({2, 2});
    p[0] = p[1] = true;         // sample 0: both present
    p[2] = true, p[3] = false;  // sample 1: b absent
    for (bool masked : {false, true}) {
        const auto r = fusion_gradcheck<2>(
            m, mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 2, 3}}), rng,
            masked ? p.cref() : fusion::presence{});
        CHECK(r.input_error < 1e-7);
        CHECK(r.parameter_error < 1e-7);
    }
    // With b absent in sample 1, stream a's output for sample 1 does not depend on b's values.
    fusion_workspace<T> w(false);
    std::vector<tensor<T>> xs =
        mmfuse_test::random_inputs(rng, {extents{2, 3, 4}, extents{2, 2, 3}});
    const tensor_ref<const T> y1 = m.net().forward(w.cx, as_views<T, 2>(xs), p.cref());
    std::vector<T> first(y1.data(), y1.data() + y1.numel());
    for (index_t i = 6; i < 12; ++i)
        xs[1][i] += T(3);  // change b's tokens of sample 1
    w.ws.reset();
    const tensor_ref<const T> y2 = m.net().forward(w.cx, as_views<T, 2>(xs), p.cref());
    for (index_t j = 0; j < 4; ++j)  // stream a's pooled block of sample 1 (columns 0..3)
        REQUIRE(y2.data()[7 + j] == first[std::size_t(7 + j)]);
    for (index_t j = 4; j < 7; ++j)  // b's own block of sample 1 is zeroed by concat
        REQUIRE(y2.data()[7 + j] == 0.0);
}
