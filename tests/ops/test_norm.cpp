// Layer norm and RMS norm (forward and backward) on the Eigen reference backend: against
// double-precision loops, in non-contiguous layouts, with and without affine parameters,
// overwrite and accumulate, and backward against central finite differences.

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/norm.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor_ref;
using mmfuse_test::layout;
using mmfuse_test::max_rel_error;
using mmfuse_test::strided_operand;
using mmfuse_test::uniform_values;

namespace {

/// Which normalisation a test runs: layer norm (centred) or RMS norm.
enum class norm_kind { layer, rms };
const char* kind_name(norm_kind k) {
    return k == norm_kind::layer ? "layer_norm" : "rms_norm";
}

/// Parameter configurations: (gamma, beta) present or not. RMS norm has no beta.
struct affine_cfg {
    bool gamma, beta;
};
constexpr affine_cfg layer_cfgs[] = {{true, true}, {true, false}, {false, false}};
constexpr affine_cfg rms_cfgs[] = {{true, false}, {false, false}};
std::span<const affine_cfg> cfgs(norm_kind k) {
    if (k == norm_kind::layer) return layer_cfgs;
    return rms_cfgs;
}

/// Reference forward statistics and output, rows of length n of row-major x.
struct ref_forward {
    std::vector<double> y, mean, rstd;
};
ref_forward ref_norm(norm_kind k, const std::vector<double>& x, const std::vector<double>& gamma,
                     const std::vector<double>& beta, index_t n, double eps) {
    ref_forward r{std::vector<double>(x.size()), {}, {}};
    for (std::size_t row = 0; row * std::size_t(n) < x.size(); ++row) {
        const double* xr = x.data() + row * std::size_t(n);
        double mu = 0.0;
        if (k == norm_kind::layer) {
            for (index_t j = 0; j < n; ++j)
                mu += xr[j];
            mu /= double(n);
        }
        double var = 0.0;  // biased (layer) / mean square (rms)
        for (index_t j = 0; j < n; ++j)
            var += (xr[j] - mu) * (xr[j] - mu);
        var /= double(n);
        const double rs = 1.0 / std::sqrt(var + eps);
        for (index_t j = 0; j < n; ++j) {
            double v = (xr[j] - mu) * rs;
            if (!gamma.empty()) v *= gamma[std::size_t(j)];
            if (!beta.empty()) v += beta[std::size_t(j)];
            r.y[row * std::size_t(n) + std::size_t(j)] = v;
        }
        r.mean.push_back(mu);
        r.rstd.push_back(rs);
    }
    return r;
}

/// Reference backward through the full Jacobian of xhat = (x - mu) * rstd given the saved
/// statistics: d xhat_j / d x_i = rstd * (delta_ij - c / n - xhat_i xhat_j / n), c = 1 for
/// layer norm, 0 for RMS norm; dgamma = sum dy * xhat, dbeta = sum dy over rows.
struct ref_backward {
    std::vector<double> dx, dgamma, dbeta;
};
ref_backward ref_norm_backward(norm_kind k, const std::vector<double>& x,
                               const std::vector<double>& dy, const std::vector<double>& mean,
                               const std::vector<double>& rstd, const std::vector<double>& gamma,
                               index_t n) {
    const std::size_t nn = std::size_t(n);
    const double c = k == norm_kind::layer ? 1.0 : 0.0;
    ref_backward r{std::vector<double>(x.size(), 0.0), std::vector<double>(nn, 0.0),
                   std::vector<double>(nn, 0.0)};
    for (std::size_t row = 0; row * nn < x.size(); ++row) {
        const double mu = k == norm_kind::layer ? mean[row] : 0.0, rs = rstd[row];
        std::vector<double> xhat(nn), g(nn);
        for (std::size_t j = 0; j < nn; ++j) {
            xhat[j] = (x[row * nn + j] - mu) * rs;
            g[j] = dy[row * nn + j] * (gamma.empty() ? 1.0 : gamma[j]);
            r.dgamma[j] += dy[row * nn + j] * xhat[j];
            r.dbeta[j] += dy[row * nn + j];
        }
        for (std::size_t i = 0; i < nn; ++i)
            for (std::size_t j = 0; j < nn; ++j)
                r.dx[row * nn + i] +=
                    g[j] * rs *
                    ((i == j ? 1.0 : 0.0) - c / double(n) - xhat[i] * xhat[j] / double(n));
    }
    return r;
}

/// Calls the forward front-end of `k` (beta ignored for RMS norm; mean unused).
template <class T>
void run_forward(norm_kind k, const mmfuse::ops::op_context& cx, tensor_ref<const T> x,
                 tensor_ref<const T> gamma, tensor_ref<const T> beta, tensor_ref<T> y,
                 tensor_ref<T> mean, tensor_ref<T> rstd, double eps) {
    if (k == norm_kind::layer)
        mmfuse::ops::layer_norm(cx, x, gamma, beta, y, mean, rstd, eps);
    else
        mmfuse::ops::rms_norm(cx, x, gamma, y, rstd, eps);
}

/// Calls the backward front-end of `k` (mean and dbeta unused for RMS norm).
template <class T>
void run_backward(norm_kind k, const mmfuse::ops::op_context& cx, tensor_ref<const T> x,
                  tensor_ref<const T> dy, tensor_ref<const T> mean, tensor_ref<const T> rstd,
                  tensor_ref<const T> gamma, tensor_ref<T> dx, tensor_ref<T> dgamma,
                  tensor_ref<T> dbeta, bool accumulate) {
    if (k == norm_kind::layer)
        mmfuse::ops::layer_norm_backward(cx, x, dy, mean, rstd, gamma, dx, dgamma, dbeta,
                                         accumulate);
    else
        mmfuse::ops::rms_norm_backward(cx, x, dy, rstd, gamma, dx, dgamma, accumulate);
}

const std::vector<extents> shapes = {{9}, {4, 7}, {2, 3, 40}, {3, 1, 2, 5}, {5, 1}};

}  // namespace

TEMPLATE_TEST_CASE("layer_norm and rms_norm forward match a double-precision loop", "[ops][norm]",
                   float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(11);
    const double tol = mmfuse_test::tolerance<TestType>();
    for (norm_kind k : {norm_kind::layer, norm_kind::rms})
        for (affine_cfg a : cfgs(k))
            for (const extents& e : shapes)
                for (layout l : mmfuse_test::uniform_layouts) {
                    CAPTURE(kind_name(k), a.gamma, a.beta, e.to_string(),
                            mmfuse_test::layout_name(l));
                    const index_t n = e[-1], rows = e.numel() / n;
                    const double eps = k == norm_kind::layer ? 1e-5 : 1e-6;
                    strided_operand<TestType> x(e, l), y(e, l), g({n}, l), b({n}, l),
                        mean({rows}, l), rstd({rows}, l);
                    x.assign(uniform_values(rng, e.numel(), -2.0, 3.0));
                    g.assign(uniform_values(rng, n, 0.5, 1.5));
                    b.assign(uniform_values(rng, n, -0.5, 0.5));
                    run_forward<TestType>(k, s, x.cref(),
                                          a.gamma ? g.cref() : tensor_ref<const TestType>{},
                                          a.beta ? b.cref() : tensor_ref<const TestType>{}, y.ref(),
                                          mean.ref(), rstd.ref(), eps);
                    const auto r =
                        ref_norm(k, x.values(), a.gamma ? g.values() : std::vector<double>{},
                                 a.beta ? b.values() : std::vector<double>{}, n, eps);
                    CHECK(max_rel_error(y.values(), r.y) <= tol);
                    CHECK(max_rel_error(rstd.values(), r.rstd) <= tol);
                    if (k == norm_kind::layer) CHECK(max_rel_error(mean.values(), r.mean) <= tol);
                    CHECK(y.outside_intact());
                    CHECK(rstd.outside_intact());
                }
}

TEMPLATE_TEST_CASE("layer_norm and rms_norm backward match the Jacobian, overwrite and accumulate",
                   "[ops][norm]", float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(12);
    const double tol = mmfuse_test::tolerance<TestType>();
    for (norm_kind k : {norm_kind::layer, norm_kind::rms})
        for (affine_cfg a : cfgs(k))
            for (const extents& e : shapes)
                for (layout l : mmfuse_test::uniform_layouts)
                    for (bool accumulate : {false, true}) {
                        CAPTURE(kind_name(k), a.gamma, a.beta, e.to_string(),
                                mmfuse_test::layout_name(l), accumulate);
                        const index_t n = e[-1], rows = e.numel() / n;
                        strided_operand<TestType> x(e, l), dy(e, l), dx(e, l), g({n}, l),
                            mean({rows}, l), rstd({rows}, l), dg({n}, l), db({n}, l);
                        x.assign(uniform_values(rng, e.numel(), -2.0, 3.0));
                        dy.assign(uniform_values(rng, e.numel(), -1.0, 1.0));
                        g.assign(uniform_values(rng, n, 0.5, 1.5));
                        // Saved statistics as forward would store them (rounded to T).
                        const auto f = ref_norm(k, x.values(), {}, {}, n, 1e-5);
                        mean.assign(f.mean);
                        rstd.assign(f.rstd);
                        const auto dg0 = uniform_values(rng, n, -1.0, 1.0),
                                   db0 = uniform_values(rng, n, -1.0, 1.0);
                        if (accumulate) {
                            dg.assign(dg0);
                            db.assign(db0);
                        }
                        const tensor_ref<TestType> none{};
                        run_backward<TestType>(k, s, x.cref(), dy.cref(), mean.cref(), rstd.cref(),
                                               a.gamma ? g.cref() : tensor_ref<const TestType>{},
                                               dx.ref(), a.gamma ? dg.ref() : none,
                                               a.beta ? db.ref() : none, accumulate);
                        auto r = ref_norm_backward(k, x.values(), dy.values(), mean.values(),
                                                   rstd.values(),
                                                   a.gamma ? g.values() : std::vector<double>{}, n);
                        if (accumulate)
                            for (std::size_t j = 0; j < std::size_t(n); ++j) {
                                r.dgamma[j] += double(TestType(dg0[j]));
                                r.dbeta[j] += double(TestType(db0[j]));
                            }
                        CHECK(max_rel_error(dx.values(), r.dx) <= tol);
                        if (a.gamma) CHECK(max_rel_error(dg.values(), r.dgamma) <= tol);
                        if (a.beta) CHECK(max_rel_error(db.values(), r.dbeta) <= tol);
                        if (!a.beta) CHECK(db.outside_intact());  // untouched when absent
                        CHECK(dx.outside_intact());
                        CHECK(dg.outside_intact());
                    }
}

TEST_CASE("layer_norm and rms_norm backward agree with central differences",
          "[ops][norm][gradcheck]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(13);
    for (norm_kind k : {norm_kind::layer, norm_kind::rms})
        for (affine_cfg a : cfgs(k))
            for (const extents& e : {extents{3, 6}, extents{2, 2, 5}}) {
                CAPTURE(kind_name(k), a.gamma, a.beta, e.to_string());
                const index_t n = e[-1], rows = e.numel() / n;
                const double eps = 1e-5;
                auto x = mmfuse_test::random_tensor<double>(e, rng, -2.0, 2.0);
                auto w = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
                auto g = mmfuse_test::random_tensor<double>({n}, rng, 0.5, 1.5);
                auto b = mmfuse_test::random_tensor<double>({n}, rng, -0.5, 0.5);
                mmfuse::tensor<double> y(e), mean({rows}), rstd({rows}), dx(e), dg({n}), db({n});
                const tensor_ref<const double> gv = a.gamma ? g.cref() : tensor_ref<const double>{};
                const tensor_ref<const double> bv = a.beta ? b.cref() : tensor_ref<const double>{};
                const auto loss = [&] {  // a random linear functional of the output
                    run_forward<double>(k, s, x.cref(), gv, bv, y.ref(), mean.ref(), rstd.ref(),
                                        eps);
                    double l = 0.0;
                    for (index_t i = 0; i < y.numel(); ++i)
                        l += w[i] * y[i];
                    return l;
                };
                loss();
                mmfuse_test::poison(dx);
                mmfuse_test::poison(dg);
                mmfuse_test::poison(db);
                const tensor_ref<double> none{};
                run_backward<double>(k, s, x.cref(), w.cref(), mean.cref(), rstd.cref(), gv,
                                     dx.ref(), a.gamma ? dg.ref() : none, a.beta ? db.ref() : none,
                                     false);
                const auto fd_error = [&](mmfuse::tensor<double>& p,
                                          const mmfuse::tensor<double>& grad) {
                    const double h = 1e-6;
                    double worst = 0.0;
                    for (index_t i = 0; i < p.numel(); ++i) {
                        const double fd = mmfuse_test::central_difference(p[i], loss, h);
                        worst =
                            std::max(worst, std::abs(fd - grad[i]) / std::max(1.0, std::abs(fd)));
                    }
                    return worst;
                };
                CHECK(fd_error(x, dx) <= 1e-7);
                if (a.gamma) CHECK(fd_error(g, dg) <= 1e-7);
                if (a.beta) CHECK(fd_error(b, db) <= 1e-7);
            }
}

TEST_CASE("norm front-ends reject bad operands, naming module and shapes", "[ops][norm]") {
    auto& s = mmfuse::backend::default_stream();
    const mmfuse::ops::op_context cx{s, "text.ln1"};
    using Catch::Contains;
    using mmfuse::shape_error;
    mmfuse::tensor<float> x({2, 3, 4}), y({2, 3, 4}), g({4}), g5({5}), st({6}), st5({5});
    mmfuse::tensor<float> bad_y({2, 4, 3}), empty_x({3, 0}), empty_y({3, 0}), st3({3});
    const tensor_ref<const float> none{};
    const tensor_ref<float> out_none{};

    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm(cx, x.cref(), g5.cref(), none, y.ref(), st.ref(), st.ref()),
        Contains("text.ln1") && Contains("layer_norm gamma") && Contains("(4)") && Contains("(5)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm(cx, x.cref(), g.cref(), g.cref(), bad_y.ref(), st.ref(), st.ref()),
        Contains("layer_norm output y") && Contains("(2, 3, 4)") && Contains("(2, 4, 3)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm(cx, x.cref(), g.cref(), none, y.ref(), st5.ref(), st.ref()),
        Contains("layer_norm output mean") && Contains("(6)") && Contains("(5)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm(cx, x.cref(), none, g.cref(), y.ref(), st.ref(), st.ref()),
        Contains("layer_norm beta") && Contains("beta needs gamma"));
    REQUIRE_THROWS_WITH(mmfuse::ops::layer_norm(cx, empty_x.cref(), none, none, empty_y.ref(),
                                                st3.ref(), st3.ref()),
                        Contains("last axis of extent >= 1") && Contains("(3, 0)"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm_backward(cx, x.cref(), y.cref(), st.cref(), st.cref(), g.cref(),
                                         y.ref(), out_none, out_none),
        Contains("layer_norm_backward output dgamma") && Contains("(4)") && Contains("none"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm_backward(cx, x.cref(), y.cref(), st.cref(), st.cref(), none,
                                         y.ref(), g.ref(), out_none),
        Contains("layer_norm_backward output dgamma") && Contains("no gamma"));
    REQUIRE_THROWS_WITH(
        mmfuse::ops::layer_norm_backward(cx, x.cref(), bad_y.cref(), st.cref(), st.cref(), none,
                                         y.ref(), out_none, out_none),
        Contains("layer_norm_backward input dy") && Contains("(2, 4, 3)"));
    REQUIRE_THROWS_WITH(mmfuse::ops::rms_norm(cx, x.cref(), g.cref(), y.ref(), st5.ref()),
                        Contains("rms_norm output rstd") && Contains("(6)") && Contains("(5)"));
    REQUIRE_THROWS_WITH(mmfuse::ops::rms_norm_backward(cx, x.cref(), y.cref(), st.cref(), g5.cref(),
                                                       y.ref(), g5.ref()),
                        Contains("rms_norm_backward gamma") && Contains("(4)") && Contains("(5)"));
    REQUIRE_THROWS_AS(
        mmfuse::ops::rms_norm(cx, tensor_ref<const float>(nullptr, {2, 4}), none,
                              y.ref().reshape({6, 4}).narrow(0, 0, 2), st.ref().narrow(0, 0, 2)),
        shape_error);

    // The kernels refuse a wrong operand count from a direct stream call.
    const std::array<mmfuse::any_tensor_ref, 1> in{x.cref()};
    const std::array<mmfuse::any_tensor_ref, 3> out{y.ref(), st.ref(), st.ref()};
    REQUIRE_THROWS_AS(s.execute(mmfuse::ops::layer_norm_desc{}, in, out), mmfuse::backend_error);
}
