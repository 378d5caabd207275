// fusion/gated.hpp, film.hpp and product_of_experts.hpp: the Gated Multimodal Unit, FiLM and
// the MVAE product of experts against double loops with random presence masks (float and
// double), finite-difference gradient checks, the identities of fusion.md section 7, golden
// fixtures from PyTorch twins (tools/golden/make_fusion_gated_fixtures.py) and shape errors.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/film.hpp"
#include "mmfuse/fusion/gated.hpp"
#include "mmfuse/fusion/product_of_experts.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::as_views;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::make_rng;
using mmfuse_test::random_presence;
using mmfuse_test::random_tensor;

/// Fresh random inputs U[lo, hi) of the given extents.
template <class T>
std::vector<tensor<T>> inputs(std::mt19937_64& rng, std::initializer_list<extents> shapes,
                              double lo = -1.0, double hi = 1.0) {
    std::vector<tensor<T>> xs;
    for (const extents& e : shapes)
        xs.push_back(random_tensor<T>(e, rng, lo, hi));
    return xs;
}

/// Presence of modality m in sample b (an empty mask: everything present).
bool present(const tensor<bool>* p, index_t b, index_t m) {
    return p == nullptr || (*p)[b * p->extent(1) + m];
}

/// Element i of a parameter of `m` (contiguous) as double.
template <class Model>
double param(Model& m, const std::string& name, index_t i) {
    return double(m.find(name)->value.data()[i]);
}

/// Worst |got - want| / max(1, |want|) over contiguous `got`.
template <class T>
double worst(tensor_ref<const T> got, const std::vector<double>& want) {
    REQUIRE(got.numel() == index_t(want.size()));
    REQUIRE(got.is_contiguous());
    double e = 0.0;
    for (index_t i = 0; i < got.numel(); ++i) {
        const double a = double(got.data()[i]), b = want[std::size_t(i)];
        e = std::isfinite(a) ? std::max(e, std::abs(a - b) / std::max(1.0, std::abs(b))) : 1e300;
    }
    return e;
}

/// The GMU in double loops: inputs (B, R, d_m) flattened by rows (R rows per sample).
template <std::size_t M, class Model, class T>
std::vector<double> gmu_reference(Model& m, const std::vector<tensor<T>>& xs,
                                  const std::array<index_t, M>& d, index_t dim, index_t batch,
                                  const tensor<bool>* p) {
    const index_t rows = xs[0].numel() / d[0], per = rows / batch;
    const index_t gw = M == 2 ? dim : index_t(M) * dim, uw = index_t(M) * dim;
    std::vector<double> y(std::size_t(rows * dim));
    for (index_t r = 0; r < rows; ++r) {
        const index_t b = r / per;
        std::vector<double> u(std::size_t(uw), 0.0);
        std::vector<double> z(std::size_t(gw), 0.0);
        for (std::size_t k = 0; k < M; ++k)
            for (index_t o = 0; o < dim; ++o) {
                double acc = 0.0;
                for (index_t i = 0; i < d[k]; ++i)
                    acc += param(m, "proj" + std::to_string(k) + ".weight", o * d[k] + i) *
                           double(xs[k][r * d[k] + i]);
                u[std::size_t(index_t(k) * dim + o)] = present(p, b, index_t(k)) ? acc : 0.0;
            }
        for (index_t j = 0; j < gw; ++j) {
            double acc = 0.0;
            for (index_t k = 0; k < uw; ++k)
                acc += param(m, "gate.weight", j * uw + k) * u[std::size_t(k)];
            z[std::size_t(j)] = 1.0 / (1.0 + std::exp(-acc));
        }
        for (index_t o = 0; o < dim; ++o) {
            double acc = 0.0;
            if (M == 2) {
                const double zz = z[std::size_t(o)];
                const double a0 = present(p, b, 1) ? zz : 1.0, a1 = present(p, b, 0) ? 1 - zz : 1.0;
                acc = a0 * std::tanh(u[std::size_t(o)]) + a1 * std::tanh(u[std::size_t(dim + o)]);
            } else {
                for (std::size_t k = 0; k < M; ++k)
                    acc += z[std::size_t(index_t(k) * dim + o)] *
                           std::tanh(u[std::size_t(index_t(k) * dim + o)]);
            }
            y[std::size_t(r * dim + o)] = acc;
        }
    }
    return y;
}

/// FiLM in double loops: x (B, R, C) flattened, c (B, Dc).
template <class Model, class T>
std::vector<double> film_reference(Model& m, const tensor<T>& x, const tensor<T>& c, index_t ch,
                                   const tensor<bool>* p) {
    const index_t batch = x.extent(0), dc = c.extent(1), per = x.numel() / (batch * ch);
    std::vector<double> y(std::size_t(x.numel()));
    for (index_t b = 0; b < batch; ++b) {
        std::vector<double> gb(std::size_t(2 * ch), 0.0);
        if (present(p, b, 1))
            for (index_t o = 0; o < 2 * ch; ++o) {
                double acc = param(m, "proj.bias", o);
                for (index_t i = 0; i < dc; ++i)
                    acc += param(m, "proj.weight", o * dc + i) * double(c[b * dc + i]);
                gb[std::size_t(o)] = acc;
            }
        for (index_t r = 0; r < per; ++r)
            for (index_t k = 0; k < ch; ++k) {
                const index_t at = (b * per + r) * ch + k;
                const double xv = present(p, b, 0) ? double(x[at]) : 0.0;
                y[std::size_t(at)] = (1.0 + gb[std::size_t(k)]) * xv + gb[std::size_t(ch + k)];
            }
    }
    return y;
}

/// The product of experts in double loops: x_m (B, 2d).
template <class T>
std::vector<double> poe_reference(const std::vector<tensor<T>>& xs, const tensor<bool>* p,
                                  bool prior, double eps) {
    const index_t batch = xs[0].extent(0), d = xs[0].extent(1) / 2;
    std::vector<double> y(std::size_t(batch * 2 * d));
    for (index_t b = 0; b < batch; ++b)
        for (index_t j = 0; j < d; ++j) {
            double s = prior ? 1.0 / (1.0 + eps) : 0.0, w = 0.0;
            for (std::size_t m = 0; m < xs.size(); ++m)
                if (present(p, b, index_t(m))) {
                    const double t = 1.0 / (std::exp(double(xs[m][b * 2 * d + d + j])) + eps);
                    s += t;
                    w += double(xs[m][b * 2 * d + j]) * t;
                }
            y[std::size_t(b * 2 * d + j)] = s > 0 ? w / s : 0.0;
            y[std::size_t(b * 2 * d + d + j)] = s > 0 ? std::log(1.0 / s) : 0.0;
        }
    return y;
}

template <class T>
using gmu2 = fusion::gated_multimodal_unit<2, T>;
template <class T>
using gmu3 = fusion::gated_multimodal_unit<3, T>;

}  // namespace

TEMPLATE_TEST_CASE("GMU matches a double loop, bimodal and three-modal, with random masks",
                   "[fusion][gmu]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(601);
    const index_t b = 6, dim = 3;
    for (bool masked : {false, true}) {
        const tensor<bool> p = random_presence(rng, b, 3);
        const tensor<bool>* pp = masked ? &p : nullptr;
        {  // bimodal, (B, d) inputs
            const std::array<index_t, 2> d{5, 4};
            nn::model<gmu2<T>> m(gmu2<T>(d, dim), 11);
            const auto xs = inputs<T>(rng, {extents{b, 5}, extents{b, 4}});
            const tensor<bool> p2 = random_presence(rng, b, 2);
            fusion_workspace<T> w;
            const tensor_ref<const T> y = m.net().forward(
                w.cx, as_views<T, 2>(xs), masked ? p2.cref() : fusion::presence{});
            REQUIRE(y.extents() == extents{b, dim});
            CHECK(worst(y, gmu_reference<2>(m, xs, d, dim, b, masked ? &p2 : nullptr)) <=
                  mmfuse_test::tolerance<T>());
            REQUIRE(m.net().last_gate().extents() == extents{b, dim});
        }
        {  // three modalities, (B, L, d) inputs
            const std::array<index_t, 3> d{2, 4, 3};
            nn::model<gmu3<T>> m(gmu3<T>(d, dim), 12);
            const auto xs = inputs<T>(rng, {extents{b, 2, 2}, extents{b, 2, 4}, extents{b, 2, 3}});
            fusion_workspace<T> w;
            const tensor_ref<const T> y =
                m.net().forward(w.cx, as_views<T, 3>(xs), masked ? p.cref() : fusion::presence{});
            REQUIRE(y.extents() == extents{b, 2, dim});
            CHECK(worst(y, gmu_reference<3>(m, xs, d, dim, b, pp)) <= mmfuse_test::tolerance<T>());
            REQUIRE(m.net().last_gate().extents() == extents{b, 2, 3 * dim});
        }
    }
}

TEMPLATE_TEST_CASE("FiLM matches a double loop for rank 2, 3 and 4 features, random masks",
                   "[fusion][film]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(602);
    const index_t b = 5, ch = 4, dc = 3;
    for (bool masked : {false, true})
        for (int rank : {2, 3, 4}) {
            nn::model<fusion::film<T>> m(fusion::film<T>(ch, dc), 13);
            const extents xe = rank == 2   ? extents{b, ch}
                               : rank == 3 ? extents{b, 3, ch}
                                           : extents{b, 2, 3, ch};
            const tensor<T> x = random_tensor<T>(xe, rng), c = random_tensor<T>({b, dc}, rng);
            const tensor<bool> p = random_presence(rng, b, 2);
            fusion_workspace<T> w;
            const tensor_ref<const T> y = m.net().forward(
                w.cx, fusion::views<T, 2>{x.cref(), c.cref()}, masked ? p.cref() : fusion::presence{});
            REQUIRE(y.extents() == xe);
            CHECK(worst(y, film_reference(m, x, c, ch, masked ? &p : nullptr)) <=
                  mmfuse_test::tolerance<T>());
        }
}

TEMPLATE_TEST_CASE("product of experts matches a double loop, with and without the prior",
                   "[fusion][poe]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(603);
    const index_t b = 7, d = 3;
    for (bool prior : {true, false}) {
        std::vector<tensor<T>> xs;
        for (int m = 0; m < 3; ++m)
            xs.push_back(random_tensor<T>({b, 2 * d}, rng, -2.0, 2.0));
        tensor<bool> p = random_presence(rng, b, 3, 0.5);
        p[0] = p[1] = p[2] = false;  // sample 0: no expert (the prior alone, or mu 0, logvar 0)
        nn::model<fusion::product_of_experts<3, T>> m(fusion::product_of_experts<3, T>(prior), 1);
        fusion_workspace<T> w;
        const tensor_ref<const T> y = m.net().forward(w.cx, as_views<T, 3>(xs), p.cref());
        CHECK(worst(y, poe_reference(xs, &p, prior, 1e-8)) <= mmfuse_test::tolerance<T>());
        const tensor_ref<const T> y_all = m.net().forward(w.cx, as_views<T, 3>(xs));
        CHECK(worst(y_all, poe_reference<T>(xs, nullptr, prior, 1e-8)) <=
              mmfuse_test::tolerance<T>());
    }
}

TEST_CASE("GMU, FiLM and product-of-experts gradients match finite differences",
          "[fusion][gradcheck]") {
    std::mt19937_64 rng = make_rng(604);
    const index_t b = 4;
    for (bool masked : {false, true}) {
        const tensor<bool> p2 = random_presence(rng, b, 2), p3 = random_presence(rng, b, 3);
        const fusion::presence pm2 = masked ? p2.cref() : fusion::presence{};
        const fusion::presence pm3 = masked ? p3.cref() : fusion::presence{};
        INFO("masked " << masked);
        nn::model<gmu2<double>> g2(gmu2<double>({3, 2}, 3), 21);
        const auto r2 = fusion_gradcheck<2>(
            g2, mmfuse_test::random_inputs(rng, {extents{b, 3}, extents{b, 2}}), rng, pm2);
        CHECK(r2.input_error < 1e-8);
        CHECK(r2.parameter_error < 1e-8);
        nn::model<gmu3<double>> g3(gmu3<double>({3, 2, 4}, 2), 22);
        const auto r3 = fusion_gradcheck<3>(
            g3, mmfuse_test::random_inputs(rng, {extents{b, 2, 3}, extents{b, 2, 2}, extents{b, 2, 4}}),
            rng, pm3);
        CHECK(r3.input_error < 1e-8);
        CHECK(r3.parameter_error < 1e-8);
        for (int rank : {2, 3}) {
            nn::model<fusion::film<double>> f(fusion::film<double>(3, 2), 23);
            const extents xe = rank == 2 ? extents{b, 3} : extents{b, 2, 3};
            const auto rf =
                fusion_gradcheck<2>(f, mmfuse_test::random_inputs(rng, {xe, extents{b, 2}}), rng, pm2);
            CHECK(rf.input_error < 1e-8);
            CHECK(rf.parameter_error < 1e-8);
        }
        for (bool prior : {true, false}) {
            nn::model<fusion::product_of_experts<3, double>> pe(
                fusion::product_of_experts<3, double>(prior), 1);
            const auto rp = fusion_gradcheck<3>(
                pe, mmfuse_test::random_inputs(rng, {extents{b, 4}, extents{b, 4}, extents{b, 4}}),
                rng, pm3);
            CHECK(rp.input_error < 1e-8);
        }
    }
}

TEST_CASE("fusion.md identities: saturated GMU gates, PoE shrinkage and omission, zero FiLM",
          "[fusion][identities]") {
    using T = double;
    std::mt19937_64 rng = make_rng(605);
    const index_t b = 5, dim = 3;
    SECTION("GMU: gate logits -> +inf gives tanh(u_0), -inf gives tanh(u_1)") {
        nn::model<gmu2<T>> m(gmu2<T>({4, 3}, dim), 31);
        for (const char* n : {"proj0.weight", "proj1.weight"}) {
            auto& w = m.find(n)->value;
            for (index_t i = 0; i < w.numel(); ++i)
                w.data()[i] = std::abs(w.data()[i]) + 0.05;  // u > 0 for inputs > 0
        }
        const auto xs = inputs<T>(rng, {extents{b, 4}, extents{b, 3}}, 0.1, 1.0);
        for (double sign : {1.0, -1.0}) {
            auto& g = m.find("gate.weight")->value;
            for (index_t i = 0; i < g.numel(); ++i)
                g.data()[i] = T(sign * 1e3);
            fusion_workspace<T> w;
            const tensor_ref<const T> y = m.net().forward(w.cx, as_views<T, 2>(xs));
            const std::size_t k = sign > 0 ? 0 : 1;
            const index_t dk = k == 0 ? 4 : 3;
            for (index_t s = 0; s < b; ++s)
                for (index_t o = 0; o < dim; ++o) {
                    double u = 0.0;
                    for (index_t i = 0; i < dk; ++i)
                        u += param(m, "proj" + std::to_string(k) + ".weight", o * dk + i) *
                             xs[k][s * dk + i];
                    REQUIRE(y.data()[s * dim + o] == Approx(std::tanh(u)).epsilon(1e-14));
                }
        }
    }
    SECTION("GMU: an absent modality forces the gate to the present one exactly") {
        nn::model<gmu2<T>> m(gmu2<T>({4, 3}, dim), 32);
        const auto xs = inputs<T>(rng, {extents{b, 4}, extents{b, 3}});
        tensor<bool> p({b, 2});
        for (index_t s = 0; s < b; ++s) {
            p[s * 2] = s % 2 == 0;
            p[s * 2 + 1] = s % 2 == 1;
        }
        fusion_workspace<T> w;
        const tensor_ref<const T> y = m.net().forward(w.cx, as_views<T, 2>(xs), p.cref());
        for (index_t s = 0; s < b; ++s) {
            const std::size_t k = s % 2 == 0 ? 0 : 1;
            const index_t dk = k == 0 ? 4 : 3;
            for (index_t o = 0; o < dim; ++o) {
                double u = 0.0;
                for (index_t i = 0; i < dk; ++i)
                    u += param(m, "proj" + std::to_string(k) + ".weight", o * dk + i) *
                         xs[k][s * dk + i];
                REQUIRE(y.data()[s * dim + o] == Approx(std::tanh(u)).epsilon(1e-14));
            }
        }
    }
    SECTION("PoE: one expert with the prior shrinks, mu_1 T_1 / (1 + T_1), var 1 / (1 + T_1)") {
        const tensor<T> x = random_tensor<T>({b, 6}, rng, -2.0, 2.0);
        for (double eps : {0.0, 1e-8}) {
            fusion::product_of_experts<1, T> poe(true, eps);
            fusion_workspace<T> w;
            const tensor_ref<const T> y = poe.forward(w.cx, fusion::views<T, 1>{x.cref()});
            for (index_t s = 0; s < b; ++s)
                for (index_t j = 0; j < 3; ++j) {
                    const double t1 = std::exp(-x[s * 6 + 3 + j]);
                    const double tol = eps == 0.0 ? 1e-15 : 1e-7;
                    REQUIRE(y.data()[s * 6 + j] ==
                            Approx(x[s * 6 + j] * t1 / (1 + t1)).epsilon(tol).margin(tol));
                    REQUIRE(std::exp(y.data()[s * 6 + 3 + j]) ==
                            Approx(1 / (1 + t1)).epsilon(tol).margin(tol));
                }
        }
    }
    SECTION("PoE: an expert absent everywhere equals a product without that modality") {
        std::vector<tensor<T>> xs;
        for (int k = 0; k < 3; ++k)
            xs.push_back(random_tensor<T>({b, 4}, rng, -2.0, 2.0));
        tensor<bool> p3({b, 3}), p2({b, 2});
        for (index_t s = 0; s < b; ++s) {
            p3[s * 3] = p2[s * 2] = s != 1;
            p3[s * 3 + 1] = p2[s * 2 + 1] = s != 2;
            p3[s * 3 + 2] = false;
        }
        fusion::product_of_experts<3, T> three;
        fusion::product_of_experts<2, T> two;
        fusion_workspace<T> w;
        const tensor_ref<const T> y3 = three.forward(w.cx, as_views<T, 3>(xs), p3.cref());
        const tensor_ref<const T> y2 = two.forward(w.cx, as_views<T, 2>(xs), p2.cref());
        for (index_t i = 0; i < y3.numel(); ++i)
            REQUIRE(y3.data()[i] == y2.data()[i]);
        // Gradients too: the absent expert gets none, the others the same.
        const tensor<T> dy = random_tensor<T>({b, 4}, rng);
        const auto d2 = two.backward(w.cx, dy.cref());
        three.forward(w.cx, as_views<T, 3>(xs), p3.cref());
        const auto d3 = three.backward(w.cx, dy.cref());
        for (index_t i = 0; i < dy.numel(); ++i) {
            REQUIRE(d3[0].data()[i] == d2[0].data()[i]);
            REQUIRE(d3[1].data()[i] == d2[1].data()[i]);
            REQUIRE(d3[2].data()[i] == 0.0);
        }
    }
    SECTION("FiLM with a zero generator is the identity; absent conditioning too") {
        nn::model<fusion::film<T>> m(fusion::film<T>(4, 3), 33);
        const tensor<T> x = random_tensor<T>({b, 2, 4}, rng), c = random_tensor<T>({b, 3}, rng);
        tensor<bool> p({b, 2});
        for (index_t s = 0; s < b; ++s) {
            p[s * 2] = true;
            p[s * 2 + 1] = false;
        }
        fusion_workspace<T> w;
        const tensor_ref<const T> ya =
            m.net().forward(w.cx, fusion::views<T, 2>{x.cref(), c.cref()}, p.cref());
        for (index_t i = 0; i < x.numel(); ++i)
            REQUIRE(ya.data()[i] == x[i]);
        for (const char* n : {"proj.weight", "proj.bias"}) {
            auto& v = m.find(n)->value;
            std::fill(v.data(), v.data() + v.numel(), T(0));
        }
        const tensor_ref<const T> y = m.net().forward(w.cx, fusion::views<T, 2>{x.cref(), c.cref()});
        for (index_t i = 0; i < x.numel(); ++i)
            REQUIRE(y.data()[i] == x[i]);
    }
}

namespace {

/// Case `name` of a fuser of arity M with inputs `inputs` (file names) and an optional
/// presence mask (presence.npy): y, every input gradient and every parameter gradient.
template <std::size_t M, class Net>
void check_golden(const std::string& name, Net net, const std::array<const char*, M>& inputs) {
    using T = typename Net::value_type;
    mmfuse_test::golden<T> g(name);
    nn::model<Net> m(std::move(net), 1);
    g.load_parameters(m);
    std::vector<tensor<T>> xs;
    for (const char* in : inputs)
        xs.push_back(g.load(in));
    tensor<bool> p;
    const bool masked = g.has("presence");
    if (masked) p = g.load_mask("presence");
    const tensor<T> dy = g.load("dy");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, as_views<T, M>(xs),
                                   masked ? p.cref() : fusion::presence{}));
    const fusion::views<T, M> dxs = m.net().backward(w.cx, dy.cref());
    for (std::size_t k = 0; k < M; ++k) {
        REQUIRE(dxs[k].is_contiguous());
        g.compare(std::string("grad_") + inputs[k], dxs[k]);
    }
    g.compare_parameter_grads(m);
}

}  // namespace

TEMPLATE_TEST_CASE("GMU, FiLM and PoE match their PyTorch twins", "[fusion][golden]", float,
                   double) {
    using T = TestType;
    check_golden<2>("fusion_gated_gmu2", gmu2<T>({5, 4}, 3), {"x0", "x1"});
    check_golden<3>("fusion_gated_gmu3", gmu3<T>({4, 3, 5}, 3), {"x0", "x1", "x2"});
    check_golden<2>("fusion_gated_film2d", fusion::film<T>(4, 5), {"x", "c"});
    check_golden<2>("fusion_gated_film3d", fusion::film<T>(4, 3), {"x", "c"});
    check_golden<3>("fusion_gated_poe3", fusion::product_of_experts<3, T>(), {"x0", "x1", "x2"});
}

TEST_CASE("GMU, FiLM and PoE name the module and both shapes on bad input", "[fusion][errors]") {
    using Catch::Contains;
    fusion_workspace<float> w;
    tensor<float> a({2, 3}), b4({2, 4}), b3({3, 4}), c({2, 5}), odd({2, 3}), ev({2, 4});
    tensor<bool> bad({2, 3});
    nn::model<gmu2<float>> g(gmu2<float>({3, 4}, 2), 1);
    REQUIRE_THROWS_WITH(g.net().forward(w.cx, fusion::views<float, 2>{a.cref(), c.cref()}),
                        Contains("gated_multimodal_unit input 1") && Contains("(2, 4)") &&
                            Contains("(2, 5)"));
    REQUIRE_THROWS_WITH(g.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b3.cref()}),
                        Contains("input 1") && Contains("(3, 4)"));
    REQUIRE_THROWS_WITH(
        g.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b4.cref()}, bad.cref()),
        Contains("presence mask") && Contains("(2, 2)"));
    REQUIRE_THROWS_WITH(g.net().forward(w.cx, fusion::views<float, 2>{a.cref(), {}}),
                        Contains("empty view"));
    REQUIRE_THROWS_AS((gmu2<float>({3, 0}, 2)), value_error);
    REQUIRE_THROWS_AS((gmu2<float>({3, 4}, 0)), value_error);
    {
        gmu2<float> fresh({3, 4}, 2);
        REQUIRE_THROWS_WITH(fresh.backward(w.cx, a.cref()), Contains("training-mode forward"));
    }
    w.cx.training = true;
    g.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b4.cref()});
    REQUIRE_THROWS_WITH(g.net().backward(w.cx, a.cref()),
                        Contains("output gradient") && Contains("(2, 2)") && Contains("(2, 3)"));

    nn::model<fusion::film<float>> f(fusion::film<float>(4, 5), 1);
    REQUIRE_THROWS_WITH(f.net().forward(w.cx, fusion::views<float, 2>{a.cref(), c.cref()}),
                        Contains("film input 0") && Contains("(2, ..., 4)") && Contains("(2, 3)"));
    REQUIRE_THROWS_WITH(f.net().forward(w.cx, fusion::views<float, 2>{b4.cref(), b4.cref()}),
                        Contains("film input 1") && Contains("(2, 5)") && Contains("(2, 4)"));
    tensor<float> one({4});
    REQUIRE_THROWS_WITH(f.net().forward(w.cx, fusion::views<float, 2>{one.cref(), c.cref()}),
                        Contains("film input 0"));
    REQUIRE_THROWS_AS((fusion::film<float>(0, 3)), value_error);

    fusion::product_of_experts<2, float> poe;
    REQUIRE_THROWS_WITH(poe.forward(w.cx, fusion::views<float, 2>{odd.cref(), odd.cref()}),
                        Contains("product_of_experts input 0") && Contains("even"));
    REQUIRE_THROWS_WITH(poe.forward(w.cx, fusion::views<float, 2>{ev.cref(), b3.cref()}),
                        Contains("product_of_experts input 1") && Contains("(2, 4)") &&
                            Contains("(3, 4)"));
    REQUIRE_THROWS_AS((fusion::product_of_experts<2, float>(true, -1.0)), value_error);
    fusion::product_of_experts<2, float> fresh_poe;
    REQUIRE_THROWS_WITH(fresh_poe.backward(w.cx, ev.cref()), Contains("training-mode forward"));
}
