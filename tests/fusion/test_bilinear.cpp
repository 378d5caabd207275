// fusion/bilinear.hpp: mfb, mlb and mutan against double-loop references with random
// presence masks (float and double), finite-difference gradient checks, the identities of
// fusion.md section 7 (MFB k = 1 is MLB; the pooled layouts; MUTAN rank 1 is MLB on the
// composed affine maps), PyTorch goldens (tools/golden/make_fusion_bilinear_fixtures.py) and
// the errors a wrong input or option gets.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/bilinear.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using mmfuse_test::as_views;
using mmfuse_test::fuse_root;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::make_rng;
using mmfuse_test::random_presence;
using mmfuse_test::random_tensor;
constexpr fusion::optional_activation relu = ops::unary_kind::relu;
constexpr fusion::optional_activation tanh_act = ops::unary_kind::tanh;
constexpr fusion::optional_activation none = std::nullopt;

// ---- double-loop reference -------------------------------------------------------------

using vec = std::vector<double>;

/// A parameter of `m` as doubles.
template <class Model>
vec param(Model& m, const std::string& name) {
    const auto* p = m.find(name);
    REQUIRE(p != nullptr);
    return vec(p->value.data(), p->value.data() + p->value.numel());
}

/// W (out, in) x + b for one sample.
vec affine(const vec& w, const vec& b, const double* x, index_t in) {
    const index_t out = index_t(b.size());
    vec y(b);
    for (index_t o = 0; o < out; ++o)
        for (index_t i = 0; i < in; ++i)
            y[std::size_t(o)] += w[std::size_t(o * in + i)] * x[i];
    return y;
}

double apply(const fusion::optional_activation& a, double v) {
    if (!a) return v;
    return *a == ops::unary_kind::relu ? std::max(v, 0.0) : std::tanh(v);
}

/// sum-pool of e (mm·g) into mm entries, factor inner (MFB) or rank outer (MUTAN).
vec pool(const vec& e, index_t mm, index_t g, bool factor_inner) {
    vec z(static_cast<std::size_t>(mm), 0.0);
    for (index_t j = 0; j < mm; ++j)
        for (index_t t = 0; t < g; ++t)
            z[std::size_t(j)] += e[std::size_t(factor_inner ? j * g + t : t * mm + j)];
    return z;
}

void power_l2(vec& z) {
    double n = 0.0;
    for (double& v : z) {
        v = v >= 0 ? std::sqrt(v) : -std::sqrt(-v);
        n += v * v;
    }
    n = std::max(std::sqrt(n), 1e-12);
    for (double& v : z)
        v /= n;
}

void track_min(double* min_abs_z, const vec& z, bool both_present) {
    if (min_abs_z == nullptr || !both_present) return;
    for (double v : z)
        *min_abs_z = std::min(*min_abs_z, std::abs(v));
}

template <class T>
double at(const tensor<T>& x, index_t i) {
    return double(x[i]);
}

/// Presence of modality m in sample b (p null: all present).
bool present(const tensor<bool>* p, index_t b, index_t m) {
    return p == nullptr || (*p)[b * 2 + m];
}

/// y (B, out) of `mfb` from its parameters (prefix "" or "fuse."); `min_abs_z` (if given)
/// gets min |z_j| before normalisation over the samples with both modalities present.
template <class Model, class Xs>
vec ref_mfb(Model& m, const std::string& pre, const Xs& xs, const tensor<bool>* p,
            const fusion::mfb_options& o, double* min_abs_z = nullptr) {
    const vec w0 = param(m, pre + "linear0.weight"), b0 = param(m, pre + "linear0.bias");
    const vec w1 = param(m, pre + "linear1.weight"), b1 = param(m, pre + "linear1.bias");
    const vec wo = param(m, pre + "linear_out.weight"), bo = param(m, pre + "linear_out.bias");
    const index_t batch = xs[0].extent(0), d0 = xs[0].extent(1), d1 = xs[1].extent(1);
    vec y;
    for (index_t s = 0; s < batch; ++s) {
        vec x0(static_cast<std::size_t>(d0)), x1(static_cast<std::size_t>(d1));
        for (index_t i = 0; i < d0; ++i)
            x0[std::size_t(i)] = at(xs[0], s * d0 + i);
        for (index_t i = 0; i < d1; ++i)
            x1[std::size_t(i)] = at(xs[1], s * d1 + i);
        vec f0 = affine(w0, b0, x0.data(), d0), f1 = affine(w1, b1, x1.data(), d1);
        vec e(f0.size());
        for (std::size_t i = 0; i < e.size(); ++i)
            e[i] = (present(p, s, 0) ? apply(o.activ_input, f0[i]) : 0.0) *
                   (present(p, s, 1) ? apply(o.activ_input, f1[i]) : 0.0);
        vec z = pool(e, o.mm_dim, o.factor, true);
        track_min(min_abs_z, z, present(p, s, 0) && present(p, s, 1));
        if (o.normalize) power_l2(z);
        for (double v : affine(wo, bo, z.data(), o.mm_dim))
            y.push_back(apply(o.activ_output, v));
    }
    return y;
}

/// y (B, out) of `mutan` from its parameters; `min_abs_z` as for `ref_mfb`.
template <class Model, class Xs>
vec ref_mutan(Model& m, const std::string& pre, const Xs& xs, const tensor<bool>* p,
              const fusion::mutan_options& o, double* min_abs_z = nullptr) {
    std::array<vec, 2> w, b, mw, mb;
    for (int k = 0; k < 2; ++k) {
        const std::string i = std::to_string(k);
        w[k] = param(m, pre + "linear" + i + ".weight");
        b[k] = param(m, pre + "linear" + i + ".bias");
        mw[k] = param(m, pre + "merge_linear" + i + ".weight");
        mb[k] = param(m, pre + "merge_linear" + i + ".bias");
    }
    const vec wo = param(m, pre + "linear_out.weight"), bo = param(m, pre + "linear_out.bias");
    const index_t batch = xs[0].extent(0);
    vec y;
    for (index_t s = 0; s < batch; ++s) {
        std::array<vec, 2> f;
        for (int k = 0; k < 2; ++k) {
            const index_t d = xs[k].extent(1);
            vec x(static_cast<std::size_t>(d));
            for (index_t i = 0; i < d; ++i)
                x[std::size_t(i)] = at(xs[k], s * d + i);
            vec h = affine(w[k], b[k], x.data(), d);
            for (double& v : h)
                v = apply(o.activ_input, v);
            f[k] = affine(mw[k], mb[k], h.data(), o.mm_dim);
            if (!present(p, s, k)) std::fill(f[k].begin(), f[k].end(), 0.0);
        }
        vec e(f[0].size());
        for (std::size_t i = 0; i < e.size(); ++i)
            e[i] = f[0][i] * f[1][i];
        vec z = pool(e, o.mm_dim, o.rank, false);
        track_min(min_abs_z, z, present(p, s, 0) && present(p, s, 1));
        if (o.normalize) power_l2(z);
        for (double v : affine(wo, bo, z.data(), o.mm_dim))
            y.push_back(v);
    }
    return y;
}

/// Every parameter of `m` drawn U[-1, 1) (PyTorch's default init is small enough that a
/// relu-relu MFB on tiny shapes can have no live product at all).
template <class Model>
void randomise(Model& m, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const auto v = m.parameters();
    for (index_t i = 0; i < v.numel(); ++i)
        v.data()[i] = typename Model::value_type(u(rng));
}

template <class T>
void expect_close(tensor_ref<const T> y, const vec& want) {
    REQUIRE(y.numel() == index_t(want.size()));
    for (index_t i = 0; i < y.numel(); ++i)
        REQUIRE(double(y.data()[i]) ==
                Approx(want[std::size_t(i)]).margin(10 * mmfuse_test::tolerance<T>()));
}

/// Redraws `xs = draw()` until min |z| (before normalisation, `min_z(xs)`) is at least
/// `bound`: the signed sqrt's slope 1 / (2 sqrt|z|) makes float round-off and central
/// differences inaccurate next to z = 0, which the reference and gradient checks avoid.
template <class Draw, class MinZ>
auto away_from_zero(Draw draw, MinZ min_z, double bound) {
    auto xs = draw();
    for (int t = 0; t < 1000 && min_z(xs) < bound; ++t)
        xs = draw();
    REQUIRE(min_z(xs) >= bound);
    return xs;
}

template <class T>
std::array<tensor<T>, 2> two_inputs(std::mt19937_64& rng, index_t b, index_t d0, index_t d1) {
    return {random_tensor<T>({b, d0}, rng), random_tensor<T>({b, d1}, rng)};
}

template <class T>
fusion::views<T, 2> views_of(const std::array<tensor<T>, 2>& xs) {
    return {xs[0].cref(), xs[1].cref()};
}

}  // namespace

TEMPLATE_TEST_CASE("mfb and mlb match a double-loop reference with random presence",
                   "[fusion][bilinear][mfb]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(601);
    const index_t b = 6, d0 = 5, d1 = 7, out = 4;
    const std::array<fusion::mfb_options, 4> configs{{
        {.mm_dim = 6, .factor = 2},  // MMF defaults but small
        {.mm_dim = 5,
         .factor = 3,
         .activ_input = tanh_act,
         .activ_output = none,
         .normalize = true},
        {.mm_dim = 4,
         .factor = 1,
         .activ_input = none,
         .activ_output = tanh_act,
         .normalize = true},
        {.mm_dim = 3, .factor = 4, .activ_input = relu, .activ_output = none},
    }};
    int seed = 0;
    for (const auto& o : configs) {
        INFO("config mm " << o.mm_dim << " k " << o.factor << " normalize " << o.normalize);
        const tensor<bool> p = random_presence(rng, b, 2, 0.7);
        nn::model<fusion::mfb<T>> m(fusion::mfb<T>(d0, d1, out, o), std::uint64_t(++seed));
        randomise(m, rng);
        const auto xs = away_from_zero([&] { return two_inputs<T>(rng, b, d0, d1); },
                                       [&](const auto& x) {
                                           double mz = 1e300;
                                           ref_mfb(m, "", x, nullptr, o, &mz);
                                           return o.normalize ? mz : 1.0;
                                       },
                                       1e-3);
        for (bool masked : {false, true}) {
            fusion_workspace<T> w;
            const tensor_ref<const T> y =
                m.net().forward(w.cx, views_of(xs), masked ? p.cref() : fusion::presence{});
            REQUIRE(y.extents() == extents{b, out});
            expect_close<T>(y, ref_mfb(m, "", xs, masked ? &p : nullptr, o));
            // Inference gives the same numbers.
            fusion_workspace<T> wi(false);
            const tensor_ref<const T> yi =
                m.net().forward(wi.cx, views_of(xs), masked ? p.cref() : fusion::presence{});
            for (index_t i = 0; i < y.numel(); ++i)
                REQUIRE(yi.data()[i] == y.data()[i]);
        }
    }
    // mlb is mfb with k = 1 under MMF's defaults.
    const auto xs = two_inputs<T>(rng, b, d0, d1);
    const tensor<bool> p = random_presence(rng, b, 2, 0.7);
    nn::model<fusion::mlb<T>> mlb(fusion::mlb<T>(d0, d1, out, {.mm_dim = 5}), 77);
    REQUIRE(mlb.net().options().factor == 1);
    fusion_workspace<T> w;
    expect_close<T>(mlb.net().forward(w.cx, views_of(xs), p.cref()),
                    ref_mfb(mlb, "", xs, &p, mlb.net().options()));
}

TEMPLATE_TEST_CASE("mutan matches a double-loop reference with random presence",
                   "[fusion][bilinear][mutan]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(602);
    const index_t b = 6, d0 = 4, d1 = 6, out = 3;
    const std::array<fusion::mutan_options, 3> configs{{
        {.mm_dim = 5, .rank = 3},
        {.mm_dim = 4, .rank = 2, .activ_input = tanh_act, .normalize = true},
        {.mm_dim = 3, .rank = 1, .normalize = true},
    }};
    int seed = 10;
    for (const auto& o : configs) {
        INFO("config mm " << o.mm_dim << " rank " << o.rank << " normalize " << o.normalize);
        const tensor<bool> p = random_presence(rng, b, 2, 0.7);
        nn::model<fuse_root<fusion::mutan<T>>> m(
            fuse_root<fusion::mutan<T>>{fusion::mutan<T>(d0, d1, out, o)}, std::uint64_t(++seed));
        randomise(m, rng);
        const auto xs = away_from_zero([&] { return two_inputs<T>(rng, b, d0, d1); },
                                       [&](const auto& x) {
                                           double mz = 1e300;
                                           ref_mutan(m, "fuse.", x, nullptr, o, &mz);
                                           return o.normalize ? mz : 1.0;
                                       },
                                       1e-3);
        for (bool masked : {false, true}) {
            fusion_workspace<T> w;
            const tensor_ref<const T> y =
                m.net().forward(w.cx, views_of(xs), masked ? p.cref() : fusion::presence{});
            REQUIRE(y.extents() == extents{b, out});
            expect_close<T>(y, ref_mutan(m, "fuse.", xs, masked ? &p : nullptr, o));
        }
    }
}

TEST_CASE("bilinear fusers: absent modality leaves the head's response to z = 0",
          "[fusion][bilinear][presence]") {
    using T = double;
    std::mt19937_64 rng = make_rng(603);
    const auto xs = two_inputs<T>(rng, 3, 4, 5);
    tensor<bool> p({3, 2});
    p[0] = true, p[1] = true;    // sample 0: both
    p[2] = true, p[3] = false;   // sample 1: modality 1 absent
    p[4] = false, p[5] = false;  // sample 2: none
    const fusion::mfb_options mo{.mm_dim = 3, .factor = 2, .normalize = true};
    nn::model<fusion::mfb<T>> mf(fusion::mfb<T>(4, 5, 2, mo), 3);
    nn::model<fusion::mutan<T>> mu(
        fusion::mutan<T>(4, 5, 2, {.mm_dim = 3, .rank = 2, .normalize = true}), 4);
    fusion_workspace<T> w;
    const vec bo_f = param(mf, "linear_out.bias"), bo_u = param(mu, "linear_out.bias");
    mf.zero_grad();
    mu.zero_grad();
    const tensor_ref<const T> yf = mf.net().forward(w.cx, views_of(xs), p.cref());
    const tensor_ref<const T> yu = mu.net().forward(w.cx, views_of(xs), p.cref());
    for (index_t s : {1, 2})
        for (index_t j = 0; j < 2; ++j) {
            CHECK(yf.data()[s * 2 + j] == std::max(bo_f[std::size_t(j)], 0.0));
            CHECK(yu.data()[s * 2 + j] == bo_u[std::size_t(j)]);
        }
    // Gradients: finite and zero for both inputs of samples 1 and 2 (z = 0 exactly there,
    // where the signed sqrt's derivative is defined as 0).
    const tensor<T> dy = random_tensor<T>({3, 2}, rng);
    for (const auto& dxs : {mf.net().backward(w.cx, dy.cref()), mu.net().backward(w.cx, dy.cref())})
        for (std::size_t m = 0; m < 2; ++m) {
            const index_t d = dxs[m].extent(1);
            for (index_t i = 0; i < dxs[m].numel(); ++i) {
                REQUIRE(std::isfinite(dxs[m].data()[i]));
                if (i / d >= 1) CHECK(dxs[m].data()[i] == 0.0);
            }
        }
    const tensor_ref<T> gf = mf.gradients(), gu = mu.gradients();
    for (index_t i = 0; i < gf.numel(); ++i)
        REQUIRE(std::isfinite(gf.data()[i]));
    for (index_t i = 0; i < gu.numel(); ++i)
        REQUIRE(std::isfinite(gu.data()[i]));
}

TEST_CASE("bilinear fusers' gradients match finite differences", "[fusion][bilinear][gradcheck]") {
    std::mt19937_64 rng = make_rng(604);
    const tensor<bool> p = random_presence(rng, 4, 2, 0.6);
    const std::array<fusion::mfb_options, 3> mfb_configs{{
        {.mm_dim = 3, .factor = 2},
        {.mm_dim = 3,
         .factor = 2,
         .activ_input = tanh_act,
         .activ_output = tanh_act,
         .normalize = true},
        {.mm_dim = 2,
         .factor = 1,
         .activ_input = tanh_act,
         .activ_output = none,
         .normalize = true},
    }};
    const std::array<fusion::mutan_options, 2> mutan_configs{{
        {.mm_dim = 3, .rank = 2},
        {.mm_dim = 2, .rank = 3, .activ_input = tanh_act, .normalize = true},
    }};
    // MMFUSE_GRADCHECK_VERBOSE=1 prints the worst errors.
    const char* verbose = std::getenv("MMFUSE_GRADCHECK_VERBOSE");
    const auto report = [&](const char* what, const mmfuse_test::fusion_gradcheck_result& r) {
        if (verbose != nullptr && *verbose == '1')
            std::printf("gradcheck %-6s input %.3g parameter %.3g\n", what, r.input_error,
                        r.parameter_error);
    };
    const auto draw = [&] {
        return mmfuse_test::random_inputs(rng, {extents{4, 3}, extents{4, 4}});
    };
    for (bool masked : {false, true}) {
        const fusion::presence pm = masked ? p.cref() : fusion::presence{};
        for (const auto& o : mfb_configs) {
            INFO("mfb k " << o.factor << " normalize " << o.normalize << " masked " << masked);
            nn::model<fuse_root<fusion::mfb<double>>> m(
                fuse_root<fusion::mfb<double>>{{3, 4, 2, o}}, 5);
            randomise(m, rng);
            auto xs = away_from_zero(
                draw,
                [&](const auto& x) {
                    double mz = 1e300;
                    ref_mfb(m, "fuse.", x, masked ? &p : nullptr, o, &mz);
                    return o.normalize ? mz : 1.0;
                },
                0.05);
            const auto r = fusion_gradcheck<2>(m, std::move(xs), rng, pm);
            report("mfb", r);
            CHECK(r.input_error < 1e-7);
            CHECK(r.parameter_error < 1e-7);
        }
        for (const auto& o : mutan_configs) {
            INFO("mutan rank " << o.rank << " normalize " << o.normalize << " masked " << masked);
            nn::model<fuse_root<fusion::mutan<double>>> m(
                fuse_root<fusion::mutan<double>>{{3, 4, 2, o}}, 6);
            randomise(m, rng);
            auto xs = away_from_zero(
                draw,
                [&](const auto& x) {
                    double mz = 1e300;
                    ref_mutan(m, "fuse.", x, masked ? &p : nullptr, o, &mz);
                    return o.normalize ? mz : 1.0;
                },
                0.05);
            const auto r = fusion_gradcheck<2>(m, std::move(xs), rng, pm);
            report("mutan", r);
            CHECK(r.input_error < 1e-7);
            CHECK(r.parameter_error < 1e-7);
        }
    }
}

TEST_CASE("MFB with k = 1 is MLB: same names, outputs and gradients",
          "[fusion][bilinear][identity]") {
    using T = double;
    std::mt19937_64 rng = make_rng(605);
    const auto xs = two_inputs<T>(rng, 5, 3, 4);
    const tensor<bool> p = random_presence(rng, 5, 2, 0.7);
    const fusion::mlb_options lo{.mm_dim = 4, .activ_input = tanh_act, .normalize = true};
    nn::model<fusion::mlb<T>> a(fusion::mlb<T>(3, 4, 2, lo), 9);
    nn::model<fusion::mfb<T>> b(fusion::mfb<T>(3, 4, 2, lo.as_mfb()), 9);
    REQUIRE(a.parameter_index().size() == b.parameter_index().size());
    for (std::size_t i = 0; i < a.parameter_index().size(); ++i)
        REQUIRE(a.parameter_index()[i].name == b.parameter_index()[i].name);
    fusion_workspace<T> w;
    a.zero_grad();
    b.zero_grad();
    const tensor_ref<const T> ya = a.net().forward(w.cx, views_of(xs), p.cref());
    const tensor_ref<const T> yb = b.net().forward(w.cx, views_of(xs), p.cref());
    for (index_t i = 0; i < ya.numel(); ++i)
        REQUIRE(ya.data()[i] == yb.data()[i]);
    const tensor<T> dy = random_tensor<T>(ya.extents(), rng);
    const auto da = a.net().backward(w.cx, dy.cref());
    const auto db = b.net().backward(w.cx, dy.cref());
    for (std::size_t m = 0; m < 2; ++m)
        for (index_t i = 0; i < da[m].numel(); ++i)
            REQUIRE(da[m].data()[i] == db[m].data()[i]);
    for (index_t i = 0; i < a.gradients().numel(); ++i)
        REQUIRE(a.gradients().data()[i] == b.gradients().data()[i]);
}

namespace {
/// Sets a parameter of `m` element by element.
template <class Model, class F>
void set_param(Model& m, const std::string& name, F&& f) {
    auto* p = m.find(name);
    REQUIRE(p != nullptr);
    for (index_t i = 0; i < p->value.numel(); ++i)
        p->value.data()[i] = f(i);
}
}  // namespace

TEST_CASE("pooled layouts: MFB sums consecutive entries, MUTAN sums mm apart",
          "[fusion][bilinear][identity]") {
    using T = double;
    const index_t mm = 3, g = 4, b = 2;
    // Factor 0 = bias arange(mm·g) (weights 0), factor 1 = 1, head = identity: y = z.
    const tensor<T> x0({b, 2}), x1({b, 2});
    const auto identity = [&](index_t i) { return i / mm == i % mm ? 1.0 : 0.0; };
    const auto zero = [](index_t) { return 0.0; };
    const auto one = [](index_t) { return 1.0; };
    const auto arange = [](index_t i) { return double(i); };
    fusion_workspace<T> w;

    nn::model<fusion::mfb<T>> f(fusion::mfb<T>(
        2, 2, mm, {.mm_dim = mm, .factor = g, .activ_input = none, .activ_output = none}));
    set_param(f, "linear0.weight", zero);
    set_param(f, "linear0.bias", arange);
    set_param(f, "linear1.weight", zero);
    set_param(f, "linear1.bias", one);
    set_param(f, "linear_out.weight", identity);
    set_param(f, "linear_out.bias", zero);
    const tensor_ref<const T> yf = f.net().forward(w.cx, {x0.cref(), x1.cref()});
    for (index_t s = 0; s < b; ++s)
        for (index_t j = 0; j < mm; ++j)  // sum_t (j g + t)
            CHECK(yf.data()[s * mm + j] == double(j * g * g + g * (g - 1) / 2));

    nn::model<fusion::mutan<T>> u(fusion::mutan<T>(2, 2, mm, {.mm_dim = mm, .rank = g}));
    set_param(u, "merge_linear0.weight", zero);
    set_param(u, "merge_linear0.bias", arange);
    set_param(u, "merge_linear1.weight", zero);
    set_param(u, "merge_linear1.bias", one);
    set_param(u, "linear_out.weight", identity);
    set_param(u, "linear_out.bias", zero);
    const tensor_ref<const T> yu = u.net().forward(w.cx, {x0.cref(), x1.cref()});
    for (index_t s = 0; s < b; ++s)
        for (index_t j = 0; j < mm; ++j)  // sum_q (q mm + j)
            CHECK(yu.data()[s * mm + j] == double(mm * g * (g - 1) / 2 + g * j));
}

TEST_CASE(
    "MUTAN with rank 1 is the product of the two merged projections (MLB on the "
    "composed affine maps)",
    "[fusion][bilinear][identity]") {
    using T = double;
    std::mt19937_64 rng = make_rng(606);
    const index_t d0 = 3, d1 = 4, mm = 5, out = 2;
    const auto xs = two_inputs<T>(rng, 4, d0, d1);
    const tensor<bool> p = random_presence(rng, 4, 2, 0.7);
    nn::model<fusion::mutan<T>> u(fusion::mutan<T>(d0, d1, out, {.mm_dim = mm, .rank = 1}), 21);
    nn::model<fusion::mlb<T>> l(
        fusion::mlb<T>(d0, d1, out, {.mm_dim = mm, .activ_input = none, .activ_output = none}), 0);
    // mlb.linear_m = merge_linear_m ∘ linear_m: W = M W_m, b = M b_m + c_m.
    for (int k = 0; k < 2; ++k) {
        const std::string i = std::to_string(k);
        const index_t d = k == 0 ? d0 : d1;
        const vec w = param(u, "linear" + i + ".weight"), bb = param(u, "linear" + i + ".bias");
        const vec mw = param(u, "merge_linear" + i + ".weight");
        const vec mb = param(u, "merge_linear" + i + ".bias");
        set_param(l, "linear" + i + ".weight", [&](index_t e) {
            double acc = 0.0;
            for (index_t q = 0; q < mm; ++q)
                acc += mw[std::size_t((e / d) * mm + q)] * w[std::size_t(q * d + e % d)];
            return acc;
        });
        set_param(l, "linear" + i + ".bias", [&](index_t e) {
            double acc = mb[std::size_t(e)];
            for (index_t q = 0; q < mm; ++q)
                acc += mw[std::size_t(e * mm + q)] * bb[std::size_t(q)];
            return acc;
        });
    }
    const vec wo = param(u, "linear_out.weight"), bo = param(u, "linear_out.bias");
    set_param(l, "linear_out.weight", [&](index_t e) { return wo[std::size_t(e)]; });
    set_param(l, "linear_out.bias", [&](index_t e) { return bo[std::size_t(e)]; });
    fusion_workspace<T> w;
    const tensor_ref<const T> yu = u.net().forward(w.cx, views_of(xs), p.cref());
    const tensor_ref<const T> yl = l.net().forward(w.cx, views_of(xs), p.cref());
    for (index_t i = 0; i < yu.numel(); ++i)
        REQUIRE(yu.data()[i] == Approx(yl.data()[i]).margin(1e-12));
}

namespace {
template <class Net>
void check_golden(const std::string& name, Net net) {
    using T = typename Net::value_type;
    mmfuse_test::golden<T> g(name);
    nn::model<Net> m(std::move(net), 1);
    g.load_parameters(m);
    const tensor<T> x0 = g.load("x0"), x1 = g.load("x1"), dy = g.load("dy");
    const tensor<bool> p = g.load_mask("presence");
    fusion_workspace<T> w;
    m.zero_grad();
    g.compare("y", m.net().forward(w.cx, {x0.cref(), x1.cref()}, p.cref()));
    const fusion::views<T, 2> dxs = m.net().backward(w.cx, dy.cref());
    g.compare("grad_x0", dxs[0]);
    g.compare("grad_x1", dxs[1]);
    g.compare_parameter_grads(m);
}
}  // namespace

TEMPLATE_TEST_CASE("bilinear fusers match their PyTorch twins", "[fusion][bilinear][golden]", float,
                   double) {
    using T = TestType;
    // Shapes and options of tools/golden/make_fusion_bilinear_fixtures.py.
    check_golden("fusion_bilinear_mfb", fusion::mfb<T>(5, 3, 3, {.mm_dim = 4, .factor = 2}));
    check_golden("fusion_bilinear_mfb_norm", fusion::mfb<T>(5, 3, 3,
                                                            {.mm_dim = 4,
                                                             .factor = 3,
                                                             .activ_input = tanh_act,
                                                             .activ_output = none,
                                                             .normalize = true}));
    check_golden("fusion_bilinear_mutan", fusion::mutan<T>(5, 3, 3, {.mm_dim = 4, .rank = 3}));
    check_golden(
        "fusion_bilinear_mutan_norm",
        fusion::mutan<T>(5, 3, 3,
                         {.mm_dim = 3, .rank = 2, .activ_input = tanh_act, .normalize = true}));
}

TEST_CASE("bilinear fusers name the module and both shapes on bad input",
          "[fusion][bilinear][errors]") {
    using Catch::Contains;
    fusion_workspace<float> w;
    tensor<float> a({2, 3}), b({2, 4}), b_wide({2, 5}), b_batch({3, 4}), a3({2, 1, 3});
    nn::model<fuse_root<fusion::mfb<float>>> m(
        fuse_root<fusion::mfb<float>>{{3, 4, 2, {.mm_dim = 2}}});
    REQUIRE_THROWS_WITH(
        m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b_wide.cref()}),
        Contains("fuse") && Contains("mfb input 1") && Contains("(2, 4)") && Contains("(2, 5)"));
    REQUIRE_THROWS_WITH(m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b_batch.cref()}),
                        Contains("mfb input 1") && Contains("(2, 4)") && Contains("(3, 4)"));
    REQUIRE_THROWS_WITH(m.net().forward(w.cx, fusion::views<float, 2>{a3.cref(), b.cref()}),
                        Contains("mfb input 0") && Contains("(B, 3)") && Contains("(2, 1, 3)"));
    REQUIRE_THROWS_WITH(
        m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), tensor_ref<const float>{}}),
        Contains("mfb input 1") && Contains("presence mask") && Contains("empty view"));
    tensor<bool> bad({2, 3});
    REQUIRE_THROWS_WITH(
        m.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b.cref()}, bad.cref()),
        Contains("presence mask") && Contains("(2, 2)") && Contains("(2, 3)"));

    nn::model<fuse_root<fusion::mlb<float>>> l(
        fuse_root<fusion::mlb<float>>{{3, 4, 2, {.mm_dim = 2}}});
    REQUIRE_THROWS_WITH(l.net().forward(w.cx, fusion::views<float, 2>{b.cref(), b.cref()}),
                        Contains("mlb input 0") && Contains("(B, 3)"));

    nn::model<fuse_root<fusion::mutan<float>>> u(
        fuse_root<fusion::mutan<float>>{{3, 4, 2, {.mm_dim = 2, .rank = 2}}});
    REQUIRE_THROWS_WITH(u.net().backward(w.cx, tensor<float>({2, 2}).cref()),
                        Contains("fuse") && Contains("training-mode forward first"));
    u.net().forward(w.cx, fusion::views<float, 2>{a.cref(), b.cref()});
    REQUIRE_THROWS_WITH(
        u.net().backward(w.cx, tensor<float>({2, 3}).cref()),
        Contains("mutan output gradient") && Contains("(2, 2)") && Contains("(2, 3)"));
    REQUIRE_THROWS_WITH(m.net().backward(w.cx, tensor<float>({2, 2}).cref()),
                        Contains("mfb backward") && Contains("training-mode forward first"));

    REQUIRE_THROWS_AS(fusion::mfb<float>(3, 4, 2, {.mm_dim = 0}), value_error);
    REQUIRE_THROWS_WITH(fusion::mfb<float>(3, 4, 2, {.mm_dim = 2, .factor = 0}),
                        Contains("fusion::mfb") && Contains("factor"));
    REQUIRE_THROWS_WITH(fusion::mutan<float>(3, 4, 2, {.mm_dim = 2, .rank = -1}),
                        Contains("fusion::mutan") && Contains("rank"));
    REQUIRE_THROWS_AS(fusion::mutan<float>(0, 4, 2), value_error);
    REQUIRE_THROWS_AS(fusion::mlb<float>(3, 4, 0), value_error);
}
