// fusion/tensor_fusion.hpp and fusion/multiplicative.hpp: TFN, LMF and the multiplicative
// interactions against double loops with random presence masks (float and double), gradient
// checks, the identities of fusion.md section 7 (TFN entry 0 and unimodal blocks, LMF == TFN
// followed by a linear with the CP weight, rank-1 LMF == product of affine maps), PyTorch
// golden fixtures (tools/golden/make_fusion_tensor_fixtures.py) and shape errors.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "fusion/fusion_support.hpp"
#include "mmfuse/fusion/multiplicative.hpp"
#include "mmfuse/fusion/tensor_fusion.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/golden.hpp"

namespace {

using namespace mmfuse;
using Catch::Matchers::Contains;
using mmfuse_test::as_views;
using mmfuse_test::fusion_gradcheck;
using mmfuse_test::fusion_workspace;
using mmfuse_test::make_rng;
using mmfuse_test::random_presence;
using mmfuse_test::random_tensor;
using vec = std::vector<double>;

bool is_on(const fusion::presence& p, index_t b, std::size_t m) {
    return p.data() == nullptr || p.data()[b * p.stride(0) + index_t(m) * p.stride(1)];
}

/// The elements of a contiguous view as doubles.
template <class T>
vec values(tensor_ref<const T> t) {
    REQUIRE(t.is_contiguous());
    return vec(t.data(), t.data() + t.numel());
}
template <class Model>
vec param(Model& m, const std::string& name) {
    auto* p = m.find(name);
    REQUIRE(p != nullptr);
    return values(tensor_ref<const typename Model::value_type>(p->value));
}

/// x (B, d) as doubles, zero in the samples where modality m is absent.
template <class T>
vec masked(const tensor<T>& x, const fusion::presence& p, std::size_t m) {
    vec v = values(x.cref());
    const index_t d = x.extent(1);
    for (index_t b = 0; b < x.extent(0); ++b)
        if (!is_on(p, b, m)) std::fill_n(v.begin() + b * d, d, 0.0);
    return v;
}

/// TFN by loops: y[b, (i0 (d1+1) + i1) ...] = Π_m z̃_m[b, i_m], z̃_m = [1; x_m].
vec ref_tfn(const std::vector<vec>& xs, const std::vector<index_t>& d, index_t batch) {
    if (xs.size() == 1) return xs[0];
    vec out;
    for (index_t b = 0; b < batch; ++b) {
        vec t{1.0};
        for (std::size_t m = 0; m < xs.size(); ++m) {
            vec z{1.0};
            for (index_t i = 0; i < d[m]; ++i)
                z.push_back(xs[m][b * d[m] + i]);
            vec next;
            for (double a : t)
                for (double c : z)
                    next.push_back(a * c);
            t = next;
        }
        out.insert(out.end(), t.begin(), t.end());
    }
    return out;
}

/// LMF by loops: y[b, j] = bias[j] + Σ_k w[k] Π_m (F_m[k, 0, j] + Σ_i x_m[b, i] F_m[k, i+1, j]).
vec ref_lmf(const std::vector<vec>& xs, const std::vector<index_t>& d, const std::vector<vec>& f,
            const vec& w, const vec& bias, index_t r, index_t o, index_t batch) {
    vec y(std::size_t(batch * o));
    for (index_t b = 0; b < batch; ++b)
        for (index_t j = 0; j < o; ++j) {
            double acc = bias[j];
            for (index_t k = 0; k < r; ++k) {
                double prod = 1.0;
                for (std::size_t m = 0; m < xs.size(); ++m) {
                    const index_t a = d[m] + 1;
                    double s = f[m][(k * a) * o + j];
                    for (index_t i = 0; i < d[m]; ++i)
                        s += xs[m][b * d[m] + i] * f[m][(k * a + i + 1) * o + j];
                    prod *= s;
                }
                acc += w[k] * prod;
            }
            y[b * o + j] = acc;
        }
    return y;
}

/// MI2 by loops; D = the output numel per sample (matrix / matrix3d), unused for vector.
vec ref_mi2(bool vector_form, const vec& x1, const vec& x2, index_t n, index_t m, index_t D,
            const vec& W, const vec& U, const vec& V, const vec& bb, index_t batch) {
    const index_t out = vector_form ? m : D;
    vec y(std::size_t(batch * out));
    for (index_t b = 0; b < batch; ++b)
        for (index_t k = 0; k < out; ++k) {
            double acc = bb[k];
            for (index_t i = 0; i < n; ++i)
                acc += x1[b * n + i] * U[i * out + k];
            if (vector_form) {
                double g = V[k];
                for (index_t i = 0; i < n; ++i)
                    g += x1[b * n + i] * W[i * m + k];
                acc += g * x2[b * m + k];
            } else {
                for (index_t j = 0; j < m; ++j) {
                    double g = V[j * D + k];
                    for (index_t i = 0; i < n; ++i)
                        g += x1[b * n + i] * W[(i * m + j) * D + k];
                    acc += x2[b * m + j] * g;
                }
            }
            y[b * out + k] = acc;
        }
    return y;
}

template <class Model>
vec ref_mi2_of(Model& mdl, const std::string& pre, bool vector_form, const vec& x1, const vec& x2,
               index_t n, index_t m, index_t D, index_t batch) {
    return ref_mi2(vector_form, x1, x2, n, m, D, param(mdl, pre + "W"), param(mdl, pre + "U"),
                   param(mdl, pre + "V"), param(mdl, pre + "b"), batch);
}

/// Worst |got - ref| / max(1, |ref|).
template <class T>
double rel_error(tensor_ref<const T> got, const vec& ref) {
    REQUIRE(got.numel() == index_t(ref.size()));
    const vec g = values(got);
    double e = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i)
        e = std::max(e, std::isfinite(g[i])
                            ? std::abs(g[i] - ref[i]) / std::max(1.0, std::abs(ref[i]))
                            : INFINITY);
    return e;
}

template <class T>
std::vector<tensor<T>> make_inputs(std::mt19937_64& rng, index_t batch,
                                   const std::vector<index_t>& d) {
    std::vector<tensor<T>> xs;
    for (index_t w : d)
        xs.push_back(random_tensor<T>({batch, w}, rng));
    return xs;
}

}  // namespace

TEMPLATE_TEST_CASE("tensor_fusion is the flattened outer product of (1, x_m), absent blocks (1, 0)",
                   "[fusion][tensor]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(601);
    const index_t batch = 6;
    const std::vector<index_t> d{2, 3, 4};
    const std::vector<tensor<T>> xs = make_inputs<T>(rng, batch, d);
    const tensor<bool> pm = random_presence(rng, batch, 3);
    for (bool use_mask : {false, true}) {
        const fusion::presence p = use_mask ? pm.cref() : fusion::presence{};
        fusion_workspace<T> w;
        fusion::tensor_fusion<3, T> f({2, 3, 4});
        const tensor_ref<const T> y = f.forward(w.cx, as_views<T, 3>(xs), p);
        REQUIRE(y.extents() == extents{batch, 60});
        REQUIRE(fusion::tensor_fusion<3, T>::output_width({2, 3, 4}) == 60);
        std::vector<vec> xm;
        for (std::size_t m = 0; m < 3; ++m)
            xm.push_back(masked(xs[m], p, m));
        CHECK(rel_error(y, ref_tfn(xm, d, batch)) <= mmfuse_test::tolerance<T>());
        // Two modalities, and one (returned as is, zeroed where absent).
        const fusion::presence p12 = use_mask ? pm.cref().narrow(1, 1, 2) : fusion::presence{};
        const fusion::presence p0 = use_mask ? pm.cref().narrow(1, 0, 1) : fusion::presence{};
        fusion::tensor_fusion<2, T> f2;
        const tensor_ref<const T> y2 =
            f2.forward(w.cx, fusion::views<T, 2>{xs[1].cref(), xs[2].cref()}, p12);
        CHECK(rel_error(y2, ref_tfn({masked(xs[1], p12, 0), masked(xs[2], p12, 1)}, {3, 4},
                                    batch)) <= mmfuse_test::tolerance<T>());
        fusion::tensor_fusion<1, T> f1;
        const tensor_ref<const T> y1 = f1.forward(w.cx, fusion::views<T, 1>{xs[0].cref()}, p0);
        CHECK(rel_error(y1, masked(xs[0], p0, 0)) == 0.0);
    }
}

TEST_CASE("tensor_fusion: entry 0 is 1 and the unimodal blocks reproduce each present x_m",
          "[fusion][tensor][identity]") {
    std::mt19937_64 rng = make_rng(602);
    const index_t batch = 5;
    const std::array<index_t, 3> d{3, 2, 4};
    const std::vector<tensor<float>> xs = make_inputs<float>(rng, batch, {3, 2, 4});
    const tensor<bool> p = random_presence(rng, batch, 3);
    fusion_workspace<float> w;
    fusion::tensor_fusion<3, float> f;
    const tensor_ref<const float> y = f.forward(w.cx, as_views<float, 3>(xs), p.cref());
    const index_t width = 4 * 3 * 5;
    // Strides of the flattened index (modality 0 most significant).
    const std::array<index_t, 3> stride{3 * 5, 5, 1};
    for (index_t b = 0; b < batch; ++b) {
        REQUIRE(y.data()[b * width] == 1.0f);
        for (std::size_t m = 0; m < 3; ++m)
            for (index_t i = 0; i < d[m]; ++i) {
                const float want = is_on(p.cref(), b, m) ? xs[m][b * d[m] + i] : 0.0f;
                REQUIRE(y.data()[b * width + (i + 1) * stride[m]] == want);
            }
    }
}

TEMPLATE_TEST_CASE("low_rank_fusion matches its double-loop definition with presence masks",
                   "[fusion][lmf]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(603);
    const index_t batch = 5, o = 4, r = 3;
    const std::vector<index_t> d{3, 2, 4};
    const std::vector<tensor<T>> xs = make_inputs<T>(rng, batch, d);
    const tensor<bool> pm = random_presence(rng, batch, 3);
    nn::model<fusion::low_rank_fusion<3, T>> mdl(fusion::low_rank_fusion<3, T>({3, 2, 4}, o, r),
                                                 rng());
    // A non-zero bias (the init sets it to 0), so the bias path is tested too.
    auto* bias = mdl.find("fusion_bias");
    REQUIRE(bias != nullptr);
    REQUIRE(param(mdl, "fusion_bias") == vec(std::size_t(o), 0.0));
    for (index_t j = 0; j < o; ++j)
        bias->value.data()[j] = T(0.1 * double(j + 1));
    std::vector<vec> f;
    for (int m = 0; m < 3; ++m)
        f.push_back(param(mdl, "factor" + std::to_string(m)));
    for (bool use_mask : {false, true}) {
        const fusion::presence p = use_mask ? pm.cref() : fusion::presence{};
        fusion_workspace<T> w;
        const tensor_ref<const T> y = mdl.net().forward(w.cx, as_views<T, 3>(xs), p);
        REQUIRE(y.extents() == extents{batch, o});
        std::vector<vec> xm;
        for (std::size_t m = 0; m < 3; ++m)
            xm.push_back(masked(xs[m], p, m));
        CHECK(rel_error(y, ref_lmf(xm, d, f, param(mdl, "fusion_weights"),
                                   param(mdl, "fusion_bias"), r, o, batch)) <=
              mmfuse_test::tolerance<T>());
    }
}

TEMPLATE_TEST_CASE("multiplicative interactions match their double-loop definitions",
                   "[fusion][mi]", float, double) {
    using T = TestType;
    std::mt19937_64 rng = make_rng(604);
    const index_t batch = 6, n = 3, m = 4;
    const std::vector<tensor<T>> xs = make_inputs<T>(rng, batch, {n, m, 2});
    const tensor<bool> pm = random_presence(rng, batch, 3);
    using mi = fusion::multiplicative_interaction<T>;
    const bool use_mask = GENERATE(false, true);  // (a loop around SECTIONs would skip some)
    {
        const fusion::presence p = use_mask ? pm.cref() : fusion::presence{};
        const fusion::presence p12 = use_mask ? pm.cref().narrow(1, 0, 2) : fusion::presence{};
        const vec x1 = masked(xs[0], p, 0), x2 = masked(xs[1], p, 1), x3 = masked(xs[2], p, 2);
        const fusion::views<T, 2> v12{xs[0].cref(), xs[1].cref()};
        fusion_workspace<T> w;
        SECTION("matrix") {
            nn::model<mi> mdl(mi::matrix(n, m, 5), rng());
            const tensor_ref<const T> y = mdl.net().forward(w.cx, v12, p12);
            REQUIRE(y.extents() == extents{batch, 5});
            CHECK(rel_error(y, ref_mi2_of(mdl, "", false, x1, x2, n, m, 5, batch)) <=
                  mmfuse_test::tolerance<T>());
        }
        SECTION("matrix3d") {
            nn::model<mi> mdl(mi::matrix3d(n, m, 2, 3), rng());
            const tensor_ref<const T> y = mdl.net().forward(w.cx, v12, p12);
            REQUIRE(y.extents() == extents{batch, 2, 3});
            CHECK(rel_error(y, ref_mi2_of(mdl, "", false, x1, x2, n, m, 6, batch)) <=
                  mmfuse_test::tolerance<T>());
        }
        SECTION("vector") {
            nn::model<mi> mdl(mi::vector(n, m), rng());
            const tensor_ref<const T> y = mdl.net().forward(w.cx, v12, p12);
            REQUIRE(y.extents() == extents{batch, m});
            CHECK(rel_error(y, ref_mi2_of(mdl, "", true, x1, x2, n, m, 0, batch)) <=
                  mmfuse_test::tolerance<T>());
        }
        SECTION("three modalities") {
            const index_t k = 2, dd = 3;
            nn::model<fusion::multiplicative_interaction3<T>> mdl(
                fusion::multiplicative_interaction3<T>(n, m, k, dd), rng());
            const tensor_ref<const T> y = mdl.net().forward(w.cx, as_views<T, 3>(xs), p);
            REQUIRE(y.extents() == extents{batch, dd});
            const vec a = ref_mi2_of(mdl, "a.", false, x1, x2, n, m, k * dd, batch);
            vec ref = ref_mi2_of(mdl, "b.", false, x1, x2, n, m, dd, batch);
            for (index_t b = 0; b < batch; ++b)
                for (index_t j = 0; j < dd; ++j)
                    for (index_t l = 0; l < k; ++l)
                        ref[b * dd + j] += x3[b * k + l] * a[(b * k + l) * dd + j];
            CHECK(rel_error(y, ref) <= mmfuse_test::tolerance<T>());
        }
    }
}

TEST_CASE("multiplicative_interaction: an absent x2 leaves x1 U + b, an absent x1 x2 V + b",
          "[fusion][mi][identity]") {
    std::mt19937_64 rng = make_rng(605);
    const index_t batch = 4, n = 3, m = 2, d = 3;
    const std::vector<tensor<double>> xs = make_inputs<double>(rng, batch, {n, m});
    using mi = fusion::multiplicative_interaction<double>;
    nn::model<mi> mdl(mi::matrix(n, m, d), rng());
    const vec W = param(mdl, "W"), U = param(mdl, "U"), V = param(mdl, "V"), bb = param(mdl, "b");
    tensor<bool> p({batch, 2});
    for (index_t b = 0; b < batch; ++b) {  // even rows: x2 absent; odd rows: x1 absent
        p[b * 2] = b % 2 == 0;
        p[b * 2 + 1] = b % 2 == 1;
    }
    fusion_workspace<double> w;
    const tensor_ref<const double> y =
        mdl.net().forward(w.cx, fusion::views<double, 2>{xs[0].cref(), xs[1].cref()}, p.cref());
    for (index_t b = 0; b < batch; ++b)
        for (index_t k = 0; k < d; ++k) {
            double want = bb[k];
            if (b % 2 == 0)
                for (index_t i = 0; i < n; ++i)
                    want += xs[0][b * n + i] * U[i * d + k];
            else
                for (index_t j = 0; j < m; ++j)
                    want += xs[1][b * m + j] * V[j * d + k];
            CHECK(y.data()[b * d + k] == Approx(want).margin(1e-14));
        }
}

TEST_CASE("low_rank_fusion equals tensor_fusion followed by a linear with the CP weight",
          "[fusion][lmf][identity]") {
    std::mt19937_64 rng = make_rng(606);
    const index_t batch = 4, o = 3, r = 4;
    const std::array<index_t, 3> d{2, 3, 2};
    const std::vector<tensor<double>> xs = make_inputs<double>(rng, batch, {2, 3, 2});
    const tensor<bool> pm = random_presence(rng, batch, 3);
    nn::model<fusion::low_rank_fusion<3, double>> lmf(fusion::low_rank_fusion<3, double>(d, o, r),
                                                      rng());
    for (index_t j = 0; j < o; ++j)
        lmf.find("fusion_bias")->value.data()[j] = 0.25 - 0.5 * double(j);
    const vec f0 = param(lmf, "factor0"), f1 = param(lmf, "factor1"), f2 = param(lmf, "factor2");
    const vec wk = param(lmf, "fusion_weights"), bias = param(lmf, "fusion_bias");
    // W[(i0, i1, i2), j] = Σ_k w_k F0[k, i0, j] F1[k, i1, j] F2[k, i2, j], stored as the
    // linear's weight (o, P).
    const index_t a0 = 3, a1 = 4, a2 = 3, P = a0 * a1 * a2;
    nn::model<nn::linear<dyn, dyn, double>> lin(nn::linear<dyn, dyn, double>(P, o), 1);
    double* wt = lin.find("weight")->value.data();
    for (index_t i0 = 0; i0 < a0; ++i0)
        for (index_t i1 = 0; i1 < a1; ++i1)
            for (index_t i2 = 0; i2 < a2; ++i2)
                for (index_t j = 0; j < o; ++j) {
                    double s = 0.0;
                    for (index_t k = 0; k < r; ++k)
                        s += wk[k] * f0[(k * a0 + i0) * o + j] * f1[(k * a1 + i1) * o + j] *
                             f2[(k * a2 + i2) * o + j];
                    wt[j * P + (i0 * a1 + i1) * a2 + i2] = s;
                }
    std::copy(bias.begin(), bias.end(), lin.find("bias")->value.data());
    for (bool use_mask : {false, true}) {
        const fusion::presence p = use_mask ? pm.cref() : fusion::presence{};
        fusion_workspace<double> w;
        fusion::tensor_fusion<3, double> tfn;
        const tensor_ref<const double> t = tfn.forward(w.cx, as_views<double, 3>(xs), p);
        const vec want = values(lin.net().forward(w.cx, t));
        CHECK(rel_error(lmf.net().forward(w.cx, as_views<double, 3>(xs), p), want) <= 1e-12);
    }
}

TEST_CASE("rank-1 low_rank_fusion with w = 1 is the product of per-modality affine maps",
          "[fusion][lmf][identity]") {
    std::mt19937_64 rng = make_rng(607);
    const index_t batch = 5, o = 4;
    const std::array<index_t, 2> d{3, 2};
    const std::vector<tensor<double>> xs = make_inputs<double>(rng, batch, {3, 2});
    nn::model<fusion::low_rank_fusion<2, double>> lmf(fusion::low_rank_fusion<2, double>(d, o, 1),
                                                      rng());
    lmf.find("fusion_weights")->value.data()[0] = 1.0;
    fusion_workspace<double> w;
    // Affine map m: x_m A_m + c_m with A_m = F_m[0][1:, :] (as the linear weight (o, d_m),
    // transposed) and c_m = F_m[0][0, :].
    vec want(std::size_t(batch * o), 1.0);
    for (std::size_t m = 0; m < 2; ++m) {
        const vec f = param(lmf, "factor" + std::to_string(m));
        nn::model<nn::linear<dyn, dyn, double>> lin(nn::linear<dyn, dyn, double>(d[m], o), 1);
        for (index_t i = 0; i < d[m]; ++i)
            for (index_t j = 0; j < o; ++j)
                lin.find("weight")->value.data()[j * d[m] + i] = f[(i + 1) * o + j];
        std::copy_n(f.begin(), o, lin.find("bias")->value.data());
        const vec a = values(lin.net().forward(w.cx, xs[m].cref()));
        for (std::size_t i = 0; i < want.size(); ++i)
            want[i] *= a[i];
    }
    CHECK(rel_error(lmf.net().forward(w.cx, as_views<double, 2>(xs)), want) <= 1e-12);
}

namespace {
/// Sample standard deviation about 0 and mean of a parameter.
template <class Model>
std::pair<double, double> std_and_mean(Model& m, const std::string& name) {
    const vec v = param(m, name);
    double s = 0.0, s2 = 0.0;
    for (double x : v) {
        s += x;
        s2 += x * x;
    }
    return {std::sqrt(s2 / double(v.size())), s / double(v.size())};
}
}  // namespace

TEST_CASE("low_rank_fusion and multiplicative_interaction initialise as the reference",
          "[fusion][lmf][mi][init]") {
    std::mt19937_64 rng = make_rng(609);
    // LMF factors (r, d+1, o): xavier_normal with fan_in (d+1) o, fan_out r o; weights (1, r)
    // xavier_normal (fan_in r, fan_out 1); bias 0.
    nn::model<fusion::low_rank_fusion<2, double>> lmf(
        fusion::low_rank_fusion<2, double>({31, 15}, 32, 16), rng());
    const auto [s0, m0] = std_and_mean(lmf, "factor0");
    CHECK(s0 == Approx(std::sqrt(2.0 / (32 * 32 + 16 * 32))).epsilon(0.05));
    CHECK(std::abs(m0) < 0.01);
    const auto [s1, m1] = std_and_mean(lmf, "factor1");
    CHECK(s1 == Approx(std::sqrt(2.0 / (16 * 32 + 16 * 32))).epsilon(0.05));
    CHECK(std::abs(m1) < 0.01);
    CHECK(param(lmf, "fusion_bias") == vec(32, 0.0));
    // MI matrix: W (n, m, d), U (n, d), V (m, d) xavier_normal, b ~ N(0, 1).
    using mi = fusion::multiplicative_interaction<double>;
    nn::model<mi> mat(mi::matrix(24, 20, 400), rng());
    CHECK(std_and_mean(mat, "W").first ==
          Approx(std::sqrt(2.0 / (20 * 400 + 24 * 400))).epsilon(0.05));
    CHECK(std_and_mean(mat, "U").first == Approx(std::sqrt(2.0 / (400 + 24))).epsilon(0.05));
    CHECK(std_and_mean(mat, "V").first == Approx(std::sqrt(2.0 / (400 + 20))).epsilon(0.05));
    CHECK(std_and_mean(mat, "b").first == Approx(1.0).epsilon(0.15));
    // MI vector: W, U (n, m) xavier_normal; V, b (m) ~ N(0, 1).
    nn::model<mi> vecm(mi::vector(300, 400), rng());
    CHECK(std_and_mean(vecm, "W").first == Approx(std::sqrt(2.0 / 700)).epsilon(0.05));
    CHECK(std_and_mean(vecm, "U").first == Approx(std::sqrt(2.0 / 700)).epsilon(0.05));
    CHECK(std_and_mean(vecm, "V").first == Approx(1.0).epsilon(0.15));
    CHECK(std_and_mean(vecm, "b").first == Approx(1.0).epsilon(0.15));
    // MI matrix3D: all four xavier_normal; b (p, q) with fan_in q, fan_out p.
    nn::model<mi> m3(mi::matrix3d(4, 5, 30, 40), rng());
    CHECK(std_and_mean(m3, "b").first == Approx(std::sqrt(2.0 / 70)).epsilon(0.1));
    // V (m, p, q): fan_in p q, fan_out m q (PyTorch's fans of a 3-D tensor).
    CHECK(std_and_mean(m3, "V").first == Approx(std::sqrt(2.0 / (30 * 40 + 5 * 40))).epsilon(0.05));
}

TEST_CASE("tensor fusion and multiplicative interaction gradients match finite differences",
          "[fusion][tensor][lmf][mi][gradcheck]") {
    std::mt19937_64 rng = make_rng(608);
    const index_t batch = 3;
    const tensor<bool> pm = random_presence(rng, batch, 3);
    const auto in = [&](std::initializer_list<extents> e) {
        return mmfuse_test::random_inputs(rng, e);
    };
    for (bool use_mask : {false, true}) {
        const fusion::presence p3 = use_mask ? pm.cref() : fusion::presence{};
        const fusion::presence p2 = use_mask ? pm.cref().narrow(1, 0, 2) : fusion::presence{};
        const fusion::presence p1 = use_mask ? pm.cref().narrow(1, 0, 1) : fusion::presence{};
        INFO("mask " << use_mask);
        {
            nn::model<fusion::tensor_fusion<3, double>> m{{}};
            const auto r = fusion_gradcheck<3>(
                m, in({extents{batch, 2}, extents{batch, 3}, extents{batch, 2}}), rng, p3);
            CHECK(r.input_error < 1e-8);
        }
        {
            nn::model<fusion::tensor_fusion<1, double>> m{{}};
            CHECK(fusion_gradcheck<1>(m, in({extents{batch, 3}}), rng, p1).input_error < 1e-8);
        }
        {
            nn::model<fusion::low_rank_fusion<3, double>> m(
                fusion::low_rank_fusion<3, double>({2, 3, 2}, 3, 2), rng());
            const auto r = fusion_gradcheck<3>(
                m, in({extents{batch, 2}, extents{batch, 3}, extents{batch, 2}}), rng, p3);
            CHECK(r.input_error < 1e-8);
            CHECK(r.parameter_error < 1e-8);
        }
        {
            nn::model<fusion::low_rank_fusion<1, double>> m(
                fusion::low_rank_fusion<1, double>({3}, 2, 2), rng());
            const auto r = fusion_gradcheck<1>(m, in({extents{batch, 3}}), rng, p1);
            CHECK(r.input_error < 1e-8);
            CHECK(r.parameter_error < 1e-8);
        }
        using mi = fusion::multiplicative_interaction<double>;
        for (mi net : {mi::matrix(3, 2, 4), mi::matrix3d(2, 3, 2, 2), mi::vector(3, 4)}) {
            const index_t m2 = net.form() == fusion::mi_output::vector   ? 4
                               : net.form() == fusion::mi_output::matrix ? 2
                                                                         : 3;
            const index_t n1 = net.form() == fusion::mi_output::matrix3d ? 2 : 3;
            nn::model<mi> m(std::move(net), rng());
            const auto r =
                fusion_gradcheck<2>(m, in({extents{batch, n1}, extents{batch, m2}}), rng, p2);
            INFO("form " << int(m.net().form()));
            CHECK(r.input_error < 1e-8);
            CHECK(r.parameter_error < 1e-8);
        }
        {
            nn::model<fusion::multiplicative_interaction3<double>> m(
                fusion::multiplicative_interaction3<double>(2, 3, 2, 3), rng());
            const auto r = fusion_gradcheck<3>(
                m, in({extents{batch, 2}, extents{batch, 3}, extents{batch, 2}}), rng, p3);
            CHECK(r.input_error < 1e-8);
            CHECK(r.parameter_error < 1e-8);
        }
    }
}

namespace {

/// Golden case `name` with M inputs x0.. against the twin: y, grad_x<m> and every parameter
/// gradient after a training-mode forward and a backward with the fixture's dy.
template <std::size_t M, class Net>
void check_golden(const std::string& name, Net net) {
    using T = typename Net::value_type;
    mmfuse_test::golden<T> g(name);
    nn::model<Net> m(std::move(net), 1);
    g.load_parameters(m);
    std::vector<tensor<T>> xs;
    for (std::size_t i = 0; i < M; ++i)
        xs.push_back(g.load("x" + std::to_string(i)));
    const tensor<T> dy = g.load("dy");
    growing_arena ws;
    nn::step_context<T> cx{&backend::default_stream(), &ws, true};
    m.zero_grad();
    g.compare("y", m.net().forward(cx, as_views<T, M>(xs)));
    const fusion::views<T, M> dxs = m.net().backward(cx, dy.cref());
    for (std::size_t i = 0; i < M; ++i)
        g.compare("grad_x" + std::to_string(i), dxs[i]);
    g.compare_parameter_grads(m);
}

}  // namespace

TEMPLATE_TEST_CASE("tensor fusion family against PyTorch twins", "[fusion][golden]", float,
                   double) {
    using T = TestType;
    using mi = fusion::multiplicative_interaction<T>;
    check_golden<3>("fusion_tensor_tfn3", fusion::tensor_fusion<3, T>({2, 3, 2}));
    check_golden<2>("fusion_tensor_lmf2", fusion::low_rank_fusion<2, T>({3, 2}, 4, 3));
    check_golden<3>("fusion_tensor_lmf3", fusion::low_rank_fusion<3, T>({2, 3, 2}, 3, 2));
    check_golden<2>("fusion_tensor_mi2_matrix", mi::matrix(3, 4, 5));
    check_golden<2>("fusion_tensor_mi2_vector", mi::vector(3, 4));
    check_golden<3>("fusion_tensor_mi3", fusion::multiplicative_interaction3<T>(2, 3, 3, 4));
}

TEST_CASE("tensor fusion family: wrong inputs and misuse name the module and both shapes",
          "[fusion][tensor][errors]") {
    fusion_workspace<float> w;
    tensor<float> a({2, 3}), b({2, 4}), c({3, 4}), r3({2, 2, 3});
    a.fill(0.5f);
    b.fill(0.5f);
    c.fill(0.5f);
    r3.fill(0.5f);
    using v2 = fusion::views<float, 2>;

    nn::model<fusion::tensor_fusion<2, float>> tfn(fusion::tensor_fusion<2, float>({3, 4}));
    REQUIRE_THROWS_WITH(
        tfn.net().forward(w.cx, v2{a.cref(), c.cref()}),
        Contains("tensor_fusion input 1") && Contains("(2, 4)") && Contains("(3, 4)"));
    REQUIRE_THROWS_WITH(tfn.net().forward(w.cx, v2{r3.cref(), b.cref()}),
                        Contains("tensor_fusion input 0") && Contains("(2, 2, 3)"));
    REQUIRE_THROWS_WITH(tfn.net().forward(w.cx, v2{b.cref(), b.cref()}),
                        Contains("(2, 3)") && Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(tfn.net().forward(w.cx, v2{a.cref(), tensor_ref<const float>{}}),
                        Contains("empty view"));
    tensor<bool> bad({2, 3});
    REQUIRE_THROWS_WITH(tfn.net().forward(w.cx, v2{a.cref(), b.cref()}, bad.cref()),
                        Contains("presence mask") && Contains("(2, 2)"));
    REQUIRE_THROWS_WITH(tfn.net().backward(w.cx, a.cref()),
                        Contains("a training-mode forward first"));
    tfn.net().forward(w.cx, v2{a.cref(), b.cref()});
    REQUIRE_THROWS_WITH(tfn.net().backward(w.cx, a.cref()),
                        Contains("tensor_fusion output gradient") && Contains("(2, 20)"));
    REQUIRE_THROWS_AS((fusion::tensor_fusion<2, float>({3, -1})), value_error);

    nn::model<fusion::low_rank_fusion<2, float>> lmf(
        fusion::low_rank_fusion<2, float>({3, 4}, 2, 2));
    REQUIRE_THROWS_WITH(
        lmf.net().forward(w.cx, v2{b.cref(), b.cref()}),
        Contains("low_rank_fusion input 0") && Contains("(2, 3)") && Contains("(2, 4)"));
    lmf.net().forward(w.cx, v2{a.cref(), b.cref()});
    REQUIRE_THROWS_WITH(lmf.net().backward(w.cx, a.cref()),
                        Contains("low_rank_fusion output gradient") && Contains("(2, 2)"));
    REQUIRE_THROWS_AS((fusion::low_rank_fusion<2, float>({3, 4}, 2, 0)), value_error);
    REQUIRE_THROWS_AS((fusion::low_rank_fusion<2, float>({3, 4}, 0, 2)), value_error);

    using mi = fusion::multiplicative_interaction<float>;
    nn::model<mi> m2(mi::matrix(3, 4, 5));
    REQUIRE_THROWS_WITH(
        m2.net().forward(w.cx, v2{b.cref(), b.cref()}),
        Contains("multiplicative_interaction input 0") && Contains("(2, 3)") && Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(m2.net().forward(w.cx, v2{a.cref(), a.cref()}),
                        Contains("multiplicative_interaction input 1"));
    REQUIRE_THROWS_WITH(m2.net().backward(w.cx, a.cref()),
                        Contains("a training-mode forward first"));
    REQUIRE_THROWS_AS(mi::vector(0, 3), value_error);
    nn::model<fusion::multiplicative_interaction3<float>> m3(
        fusion::multiplicative_interaction3<float>(3, 4, 2, 5));
    REQUIRE_THROWS_WITH(
        m3.net().forward(w.cx, fusion::views<float, 3>{a.cref(), b.cref(), a.cref()}),
        Contains("multiplicative_interaction3 input 2") && Contains("(2, 2)") &&
            Contains("(2, 3)"));
    REQUIRE_THROWS_WITH(
        m3.net().forward(w.cx, fusion::views<float, 3>{b.cref(), b.cref(), c.cref()}),
        Contains("multiplicative_interaction3 input 0") && Contains("(2, 3)") &&
            Contains("(2, 4)"));
}
