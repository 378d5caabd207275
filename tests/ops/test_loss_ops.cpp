// ops::logit_loss and ops::l2_normalize / l2_normalize_backward on the Eigen reference
// backend.
//
// logit_loss: every kind x target source (diagonal with offsets that leave rows without a
// target, dense soft targets, none) x scale/bias x grad_scale x accumulate x gradient on/off;
// HN-NCE with detached and in-graph weights, and its two special cases (alpha = 1, beta = 0
// is cross-entropy; alpha = 0, beta = 0 is DCL); strided and transposed views (the column
// pass of a symmetric loss accumulating into the transposed gradient); float32 at CLIP's
// largest scale; errors. The reference is the loss written from the equations
// (../shared/reference/contrastive.md sections 0, 1.2, 1.4, 4) in long double with naive
// exponentials, its gradient a five-point stencil of that loss in long double (so no
// gradient formula is shared with the kernel); [gradcheck] cases also differentiate the
// op's own row_loss by central differences.
//
// l2_normalize: against double loops (the Jacobian of x / max(||x||, eps) written entry by
// entry for the backward), zero rows and rows shorter than eps, every layout, in place, and
// central differences.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/norm.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor_ref;
using mmfuse_test::layout;
using mmfuse_test::strided_operand;
using mmfuse_test::uniform_values;
namespace ops = mmfuse::ops;

namespace {

using ld = long double;
using ops::logit_loss_kind;
using ops::loss_targets;

// ---- logit_loss reference -----------------------------------------------------------------

/// HN-NCE weights of one row with positive column t, from the definition:
/// w_j = (C - 1) e^{beta z_j} / sum_{k != t} e^{beta z_k} for j != t (w_t unused, 0).
std::vector<ld> ref_hn_weights(double beta, const std::vector<ld>& z, std::size_t t) {
    ld sum = 0;
    for (std::size_t k = 0; k < z.size(); ++k)
        if (k != t) sum += std::exp(ld(beta) * z[k]);
    std::vector<ld> w(z.size(), 0);
    for (std::size_t j = 0; j < z.size(); ++j)
        if (j != t) w[j] = ld(z.size() - 1) * std::exp(ld(beta) * z[j]) / sum;
    return w;
}

/// The loss of one row of logits z with targets y, written from the equations with naive
/// exponentials (long double holds e^z for |z| < 11000):
///   sigmoid:        sum_j log(1 + e^{z_j}) - y_j z_j
///   softmax, diagonal targets (positive column t; HN-NCE, alpha = 1 and beta = 0 being
///                   plain cross-entropy): log(alpha e^{z_t} + sum_{j != t} w_j e^{z_j}) - z_t,
///                   0 when t is outside the row
///   softmax, dense / no targets: (sum_j y_j) log sum_j e^{z_j} - sum_j y_j z_j
/// `frozen` (detached HN-NCE weights): the weights to use instead of recomputing them.
ld ref_row_loss(const ops::logit_loss_desc& d, const std::vector<ld>& z, const std::vector<ld>& y,
                index_t t, const std::vector<ld>* frozen) {
    const std::size_t cols = z.size();
    if (d.kind == logit_loss_kind::sigmoid_binary) {
        ld l = 0;
        for (std::size_t j = 0; j < cols; ++j)
            l += std::log1p(std::exp(z[j])) - y[j] * z[j];
        return l;
    }
    if (d.targets == loss_targets::diagonal) {
        if (t < 0 || t >= index_t(cols)) return 0;
        const std::size_t p = std::size_t(t);
        const std::vector<ld> w = frozen ? *frozen : ref_hn_weights(d.hn_beta, z, p);
        ld denominator = ld(d.hn_alpha) * std::exp(z[p]);
        for (std::size_t j = 0; j < cols; ++j)
            if (j != p) denominator += w[j] * std::exp(z[j]);
        return std::log(denominator) - z[p];
    }
    ld ysum = 0, ydot = 0, sum = 0;
    for (std::size_t j = 0; j < cols; ++j) {
        ysum += y[j];
        ydot += y[j] * z[j];
        sum += std::exp(z[j]);
    }
    return ysum * std::log(sum) - ydot;
}

/// d loss / d z_j by the five-point stencil (error O(h^4)), in long double.
template <class Loss>
ld stencil(std::vector<ld>& z, std::size_t j, Loss&& loss) {
    const ld h = 5e-4L, z0 = z[j];
    const auto at = [&](int k) {
        z[j] = z0 + ld(k) * h;
        return loss(z);
    };
    const ld g = (8 * (at(1) - at(-1)) - (at(2) - at(-2))) / (12 * h);
    z[j] = z0;
    return g;
}

/// What `logit_loss` writes, computed from the reference loss.
struct loss_outputs {
    std::vector<double> row_loss, dx, row_stats;
    std::vector<bool> inert;  ///< rows whose loss is identically 0 (softmax, no target mass)
};

/// The op's outputs for x (R, C) row-major, dense targets (R, C) (else empty) and the dx
/// that `accumulate` adds to (else ignored):
///   row_loss[r] = l_r,  g_rj = grad_scale * dl_r/dz_rj,
///   dx[r][j] = [dx_before[r][j]] + scale * g_rj,  row_stats[r] = {sum_j g_rj x_rj, sum_j g_rj}.
loss_outputs reference(const ops::logit_loss_desc& d, index_t rows, index_t cols,
                       const std::vector<double>& x, const std::vector<double>& targets,
                       const std::vector<double>& dx_before) {
    loss_outputs out;
    out.row_loss.resize(std::size_t(rows));
    out.inert.resize(std::size_t(rows));
    if (d.gradient) {
        out.dx.resize(std::size_t(rows * cols));
        out.row_stats.resize(std::size_t(rows * 2));
    }
    std::vector<ld> z(static_cast<std::size_t>(cols)), y(static_cast<std::size_t>(cols));
    for (index_t r = 0; r < rows; ++r) {
        const index_t t = d.targets == loss_targets::diagonal ? r + d.target_offset : -1;
        ld mass = 0;
        for (index_t j = 0; j < cols; ++j) {
            const std::size_t i = std::size_t(r * cols + j);
            z[std::size_t(j)] = ld(d.scale) * ld(x[i]) + ld(d.bias);
            y[std::size_t(j)] =
                d.targets == loss_targets::dense ? ld(targets[i]) : ld(j == t ? 1 : 0);
            mass += y[std::size_t(j)];
        }
        const bool softmax = d.kind == logit_loss_kind::softmax_cross_entropy;
        out.inert[std::size_t(r)] = softmax && mass == 0;
        std::vector<ld> frozen;
        const bool detached = softmax && d.targets == loss_targets::diagonal &&
                              !d.hn_weights_in_graph && t >= 0 && t < cols;
        if (detached) frozen = ref_hn_weights(d.hn_beta, z, std::size_t(t));
        const auto loss = [&](const std::vector<ld>& zz) {
            return ref_row_loss(d, zz, y, t, detached ? &frozen : nullptr);
        };
        out.row_loss[std::size_t(r)] = double(loss(z));
        if (!d.gradient) continue;
        ld gx = 0, gsum = 0;
        for (index_t j = 0; j < cols; ++j) {
            const std::size_t i = std::size_t(r * cols + j);
            const ld g = ld(d.grad_scale) * stencil(z, std::size_t(j), loss);
            out.dx[i] = double((d.accumulate ? ld(dx_before[i]) : 0) + ld(d.scale) * g);
            gx += g * ld(x[i]);
            gsum += g;
        }
        out.row_stats[std::size_t(2 * r)] = double(gx);
        out.row_stats[std::size_t(2 * r + 1)] = double(gsum);
    }
    return out;
}

/// The transpose of a row-major (rows, cols) matrix.
std::vector<double> transposed(const std::vector<double>& a, index_t rows, index_t cols) {
    std::vector<double> t(a.size());
    for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c)
            t[std::size_t(c * rows + r)] = a[std::size_t(r * cols + c)];
    return t;
}

/// Comparison tolerance of an op in T against the long-double reference. The kernel
/// accumulates in double, so float results are off by their final rounding only.
template <class T>
constexpr double loss_tolerance() {
    return std::is_same_v<T, float> ? 1e-6 : 1e-11;
}

/// The operands of one `logit_loss` call, laid out as `variant` picks, with poisoned outputs
/// (dx random instead when the call accumulates into it).
template <class T>
struct loss_operands {
    extents shape;  ///< (R, C)
    strided_operand<T> x, targets, row_loss, dx, row_stats;
    std::vector<double> dx_before;

    loss_operands(const extents& e, int variant)
        : shape(e),
          x(e, mmfuse_test::pick(mmfuse_test::input_layouts, variant)),
          targets(e, mmfuse_test::pick(mmfuse_test::input_layouts, variant + 2)),
          row_loss(extents{e[0]}, mmfuse_test::pick(mmfuse_test::output_layouts, variant + 1)),
          dx(e, mmfuse_test::pick(mmfuse_test::output_layouts, variant + 3)),
          row_stats(extents{e[0], 2}, mmfuse_test::pick(mmfuse_test::output_layouts, variant)) {}

    /// Fresh inputs: x uniform in [lo, hi); dense targets uniform in [0, 1) with row 0 all 0.
    void fill(std::mt19937_64& rng, double lo, double hi, bool accumulate) {
        const extents& e = shape;
        x.fill_random(rng, lo, hi);
        targets.fill_random(rng, 0.0, 1.0);
        auto t = uniform_values(rng, e.numel(), 0.0, 1.0);
        for (index_t j = 0; j < e[1]; ++j)
            t[std::size_t(j)] = 0.0;
        targets.assign(t);
        row_loss.poison();
        row_stats.poison();
        if (accumulate)
            dx.sentinel_then_random(rng);
        else
            dx.poison();
        dx_before = dx.values();
    }

    void run(const ops::op_context& cx, const ops::logit_loss_desc& d) {
        const bool dense = d.targets == loss_targets::dense;
        ops::logit_loss<T>(cx, d, x.cref(), dense ? targets.cref() : tensor_ref<const T>{},
                           row_loss.ref(), d.gradient ? dx.ref() : tensor_ref<T>{},
                           d.gradient ? row_stats.ref() : tensor_ref<T>{});
    }

    loss_outputs expected(const ops::logit_loss_desc& d) const {
        return reference(
            d, shape[0], shape[1], x.values(),
            d.targets == loss_targets::dense ? targets.values() : std::vector<double>{}, dx_before);
    }

    /// Checks every output against the reference; rows with no target mass must have a loss
    /// of exactly 0 and leave dx exactly as it was (0 when overwriting).
    void check(const ops::logit_loss_desc& d) const {
        const loss_outputs ref = expected(d);
        const double tol = loss_tolerance<T>();
        const auto got_loss = row_loss.values();
        CHECK(mmfuse_test::max_rel_error(got_loss, ref.row_loss) <= tol);
        CHECK(row_loss.outside_intact());
        const index_t cols = shape[1];
        for (std::size_t r = 0; r < ref.inert.size(); ++r)
            if (ref.inert[r]) REQUIRE(got_loss[r] == 0.0);
        if (!d.gradient) return;
        const auto got_dx = dx.values();
        CHECK(mmfuse_test::max_rel_error(got_dx, ref.dx) <= tol);
        CHECK(mmfuse_test::max_rel_error(row_stats.values(), ref.row_stats) <= tol);
        CHECK(dx.outside_intact());
        CHECK(row_stats.outside_intact());
        for (std::size_t r = 0; r < ref.inert.size(); ++r)
            if (ref.inert[r])
                for (std::size_t j = 0; j < std::size_t(cols); ++j) {
                    const std::size_t i = r * std::size_t(cols) + j;
                    REQUIRE(got_dx[i] == (d.accumulate ? dx_before[i] : 0.0));
                }
    }
};

/// A short description of a descriptor for CAPTURE.
std::string describe(const ops::logit_loss_desc& d) {
    std::string s = d.kind == logit_loss_kind::sigmoid_binary ? "sigmoid" : "softmax";
    s += d.targets == loss_targets::diagonal ? " diagonal(" + std::to_string(d.target_offset) + ")"
         : d.targets == loss_targets::dense  ? " dense"
                                             : " none";
    s += " scale " + std::to_string(d.scale);
    s += " bias " + std::to_string(d.bias);
    s += " grad_scale " + std::to_string(d.grad_scale);
    s += d.gradient ? " gradient" : " loss-only";
    if (d.accumulate) s += " accumulate";
    s += " alpha " + std::to_string(d.hn_alpha);
    s += " beta " + std::to_string(d.hn_beta);
    if (d.hn_weights_in_graph) s += " in-graph";
    return s;
}

/// Target sources: (source, offset).
struct target_case {
    loss_targets source;
    index_t offset;
};

/// Diagonal offsets 0, 2, -1, C - 1 (most rows without a target), C + 1 (none has one),
/// dense soft targets and no targets.
std::vector<target_case> target_cases(index_t cols) {
    return {{loss_targets::diagonal, 0},
            {loss_targets::diagonal, 2},
            {loss_targets::diagonal, -1},
            {loss_targets::diagonal, cols - 1},
            {loss_targets::diagonal, cols + 1},
            {loss_targets::dense, 0},
            {loss_targets::none, 0}};
}

}  // namespace

// ---- logit_loss ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("logit_loss matches the equations for every kind, target source and option",
                   "[ops][loss]", float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(11);
    struct affine {
        double scale, bias;
    };
    int variant = 0;
    for (const extents& e : {extents{5, 7}, extents{6, 3}, extents{1, 1}})
        for (logit_loss_kind kind :
             {logit_loss_kind::softmax_cross_entropy, logit_loss_kind::sigmoid_binary})
            for (const target_case& tc : target_cases(e[1]))
                for (affine a : {affine{1.0, 0.0}, affine{2.5, -0.7}, affine{14.285714, 0.3},
                                 affine{10.0, -10.0}})
                    for (double grad_scale : {1.0, 0.125})
                        for (bool gradient : {false, true})
                            for (bool accumulate : {false, true}) {
                                if (accumulate && !gradient) continue;
                                ops::logit_loss_desc d;
                                d.kind = kind;
                                d.targets = tc.source;
                                d.target_offset = tc.offset;
                                d.scale = a.scale;
                                d.bias = a.bias;
                                d.grad_scale = grad_scale;
                                d.gradient = gradient;
                                d.accumulate = accumulate;
                                CAPTURE(e.to_string(), describe(d), variant);
                                loss_operands<TestType> op(e, variant++);
                                op.fill(rng, -1.0, 1.0, accumulate);
                                op.run(s, d);
                                op.check(d);
                            }
}

TEMPLATE_TEST_CASE("logit_loss HN-NCE matches the equations, weights detached or in the graph",
                   "[ops][loss]", float, double) {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(12);
    int variant = 0;
    for (const extents& e : {extents{5, 7}, extents{4, 4}, extents{3, 2}})
        for (double alpha : {0.0, 0.3, 1.0, 2.5})
            for (double beta : {0.0, 0.5, 2.0, -0.7})
                for (bool in_graph : {false, true})
                    for (index_t offset : {index_t(0), index_t(1), index_t(-2)})
                        for (bool accumulate : {false, true}) {
                            ops::logit_loss_desc d;
                            d.target_offset = offset;
                            d.hn_alpha = alpha;
                            d.hn_beta = beta;
                            d.hn_weights_in_graph = in_graph;
                            d.accumulate = accumulate;
                            d.gradient = variant % 7 != 0;
                            if (!d.gradient) d.accumulate = false;
                            d.scale = variant % 2 ? 3.0 : 1.0;
                            d.bias = variant % 2 ? -0.4 : 0.0;
                            d.grad_scale = variant % 3 ? 1.0 : 0.25;
                            CAPTURE(e.to_string(), describe(d), variant);
                            loss_operands<TestType> op(e, variant++);
                            op.fill(rng, -1.0, 1.0, d.accumulate);
                            op.run(s, d);
                            op.check(d);
                        }
}

TEMPLATE_TEST_CASE(
    "logit_loss HN-NCE special cases: alpha 1 beta 0 is cross-entropy, alpha 0 "
    "beta 0 is DCL",
    "[ops][loss]", float, double) {
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(13);
    const index_t rows = 5, cols = 6;
    const extents e{rows, cols};
    const double tol = loss_tolerance<T>();
    for (index_t offset : {index_t(0), index_t(2), index_t(-1)}) {
        CAPTURE(offset);
        const auto xv = uniform_values(rng, e.numel(), -1.0, 1.0);
        mmfuse::tensor<T> x(e);
        for (index_t i = 0; i < e.numel(); ++i)
            x[i] = T(xv[std::size_t(i)]);
        const auto run = [&](const ops::logit_loss_desc& d) {
            mmfuse::tensor<T> loss({rows}), dx(e), stats({rows, 2});
            mmfuse_test::poison(loss);
            mmfuse_test::poison(dx);
            mmfuse_test::poison(stats);
            ops::logit_loss<T>(s, d, x.cref(), {}, loss.ref(), dx.ref(), stats.ref());
            return std::array<std::vector<double>, 3>{mmfuse_test::to_vector(loss.cref()),
                                                      mmfuse_test::to_vector(dx.cref()),
                                                      mmfuse_test::to_vector(stats.cref())};
        };
        ops::logit_loss_desc plain;
        plain.target_offset = offset;
        plain.scale = 4.0;
        plain.bias = 0.25;
        plain.grad_scale = 0.5;

        // alpha = 1, beta = 0 through the HN-NCE path (in_graph forces it) is cross-entropy.
        ops::logit_loss_desc hn_ce = plain;
        hn_ce.hn_weights_in_graph = true;
        const auto a = run(plain), b = run(hn_ce);
        for (std::size_t k = 0; k < 3; ++k)
            CHECK(mmfuse_test::max_rel_error(b[k], a[k]) <= tol);

        // alpha = 0, beta = 0 is DCL: l = -z_t + log sum_{j != t} e^{z_j}, the positive
        // removed from the denominator; dl/dz_j = softmax over the negatives, -1 at t.
        for (bool in_graph : {false, true}) {
            ops::logit_loss_desc dcl = plain;
            dcl.hn_alpha = 0.0;
            dcl.hn_weights_in_graph = in_graph;
            const auto got = run(dcl);
            std::vector<double> loss(std::size_t(rows), 0.0), dx(std::size_t(e.numel()), 0.0);
            for (index_t r = 0; r < rows; ++r) {
                const index_t t = r + offset;
                if (t < 0 || t >= cols) continue;
                const auto z = [&](index_t j) {
                    return ld(plain.scale) * ld(x[r * cols + j]) + ld(plain.bias);
                };
                ld negatives = 0;
                for (index_t j = 0; j < cols; ++j)
                    if (j != t) negatives += std::exp(z(j));
                loss[std::size_t(r)] = double(std::log(negatives) - z(t));
                for (index_t j = 0; j < cols; ++j) {
                    const ld g = j == t ? ld(-1) : std::exp(z(j)) / negatives;
                    dx[std::size_t(r * cols + j)] = double(ld(plain.grad_scale * plain.scale) * g);
                }
            }
            CAPTURE(in_graph);
            CHECK(mmfuse_test::max_rel_error(got[0], loss) <= tol);
            CHECK(mmfuse_test::max_rel_error(got[1], dx) <= tol);
        }
    }
}

TEST_CASE("logit_loss DCL: the positive's logit enters only as -z_t", "[ops][loss]") {
    // With alpha = 0 the positive is not in the denominator, so raising x_rt by delta lowers
    // l_r by exactly scale * delta and leaves every other row alone.
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(14);
    const extents e{4, 5};
    auto x = mmfuse_test::random_tensor<double>(e, rng);
    ops::logit_loss_desc d;
    d.hn_alpha = 0.0;
    d.hn_beta = 0.0;
    d.scale = 3.0;
    d.gradient = false;
    mmfuse::tensor<double> before({4}), after({4});
    ops::logit_loss<double>(s, d, x.cref(), {}, before.ref(), {}, {});
    const double delta = 0.375;
    x(2, 2) += delta;
    ops::logit_loss<double>(s, d, x.cref(), {}, after.ref(), {}, {});
    for (index_t r = 0; r < 4; ++r)
        CHECK(after[r] - before[r] == Approx(r == 2 ? -d.scale * delta : 0.0).margin(1e-12));
}

TEMPLATE_TEST_CASE(
    "logit_loss column pass: a transposed view accumulates into the transposed "
    "gradient",
    "[ops][loss]", float, double) {
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(15);
    const index_t rows = 4, cols = 6;  // a (b x N) block: rows of A against all rows of B
    const extents e{rows, cols};
    int variant = 0;
    ops::logit_loss_desc softmax, sigmoid, hn;
    sigmoid.kind = logit_loss_kind::sigmoid_binary;
    sigmoid.bias = -2.0;
    hn.hn_alpha = 0.5;
    hn.hn_beta = 1.0;
    hn.hn_weights_in_graph = true;
    for (ops::logit_loss_desc d : {softmax, sigmoid, hn})
        for (index_t offset : {index_t(0), index_t(2)})
            for (layout l : mmfuse_test::uniform_layouts) {
                d.scale = 7.0;
                d.grad_scale = 0.5 / double(rows);
                strided_operand<T> sim(e, l),
                    dsim(e, mmfuse_test::pick(mmfuse_test::uniform_layouts, variant + 1));
                strided_operand<T> loss_rows(extents{rows}, layout::contiguous),
                    loss_cols(extents{cols}, layout::contiguous),
                    stats_rows(extents{rows, 2}, layout::contiguous),
                    stats_cols(extents{cols, 2}, layout::contiguous);
                ++variant;
                sim.fill_random(rng);
                for (auto* o : {&dsim, &loss_rows, &loss_cols, &stats_rows, &stats_cols})
                    o->poison();
                // Rows: query r's positive is column r + offset. Columns: the same pairs seen
                // from B, so column c's positive is row c - offset.
                ops::logit_loss_desc d_rows = d, d_cols = d;
                d_rows.target_offset = offset;
                d_cols.target_offset = -offset;
                d_cols.accumulate = true;
                CAPTURE(describe(d), mmfuse_test::layout_name(l));
                ops::logit_loss<T>(s, d_rows, sim.cref(), {}, loss_rows.ref(), dsim.ref(),
                                   stats_rows.ref());
                ops::logit_loss<T>(s, d_cols, sim.cref().transpose(0, 1), {}, loss_cols.ref(),
                                   dsim.ref().transpose(0, 1), stats_cols.ref());

                const auto sv = sim.values();
                const auto ref_rows = reference(d_rows, rows, cols, sv, {}, {});
                const auto ref_cols = reference(d_cols, cols, rows, transposed(sv, rows, cols), {},
                                                transposed(ref_rows.dx, rows, cols));
                const double tol = loss_tolerance<T>();
                CHECK(mmfuse_test::max_rel_error(loss_rows.values(), ref_rows.row_loss) <= tol);
                CHECK(mmfuse_test::max_rel_error(loss_cols.values(), ref_cols.row_loss) <= tol);
                CHECK(mmfuse_test::max_rel_error(stats_rows.values(), ref_rows.row_stats) <= tol);
                CHECK(mmfuse_test::max_rel_error(stats_cols.values(), ref_cols.row_stats) <= tol);
                CHECK(mmfuse_test::max_rel_error(dsim.values(),
                                                 transposed(ref_cols.dx, cols, rows)) <= tol);
                CHECK(dsim.outside_intact());
            }
}

TEMPLATE_TEST_CASE("logit_loss on a large transposed matrix: many row tiles, a partial last one",
                   "[ops][loss]", float, double) {
    // 300 x 257 logits read through a transposed view (the column pass) and accumulated into
    // a transposed gradient: strided rows, many tiles of rows and a partial last tile, and
    // more elements than the kernel's threshold for running threads (when built with OpenMP).
    // Every row's loss is checked; dx and row_stats on a sample of rows (tile edges included).
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(20);
    const index_t rows = 300, cols = 257;
    const extents e{rows, cols};
    ops::logit_loss_desc ce, sigmoid, hn;
    ce.target_offset = 3;
    sigmoid.kind = logit_loss_kind::sigmoid_binary;
    sigmoid.targets = loss_targets::dense;
    sigmoid.bias = -5.0;
    hn.target_offset = -2;
    hn.hn_alpha = 0.5;
    hn.hn_beta = 1.0;
    hn.hn_weights_in_graph = true;
    const std::vector<index_t> sample = {0, 15, 16, 17, 150, 287, 288, 299};
    for (ops::logit_loss_desc d : {ce, sigmoid, hn}) {
        d.scale = 20.0;
        d.grad_scale = 1.0 / double(rows);
        d.accumulate = true;
        CAPTURE(describe(d));
        // Storage (cols, rows): the op sees its transpose, so x and dx rows have stride rows.
        mmfuse::tensor<T> xs = mmfuse_test::random_tensor<T>({cols, rows}, rng);
        mmfuse::tensor<T> ts = mmfuse_test::random_tensor<T>({cols, rows}, rng, 0.0, 1.0);
        mmfuse::tensor<T> dxs = mmfuse_test::random_tensor<T>({cols, rows}, rng);
        mmfuse::tensor<T> loss({rows}), stats({rows, 2});
        mmfuse_test::poison(loss);
        mmfuse_test::poison(stats);
        const tensor_ref<const T> x = xs.cref().transpose(0, 1), y = ts.cref().transpose(0, 1);
        const auto xv = mmfuse_test::to_vector(x), yv = mmfuse_test::to_vector(y);
        const auto before = mmfuse_test::to_vector(dxs.cref().transpose(0, 1));
        const bool dense = d.targets == loss_targets::dense;
        ops::logit_loss<T>(s, d, x, dense ? y : tensor_ref<const T>{}, loss.ref(),
                           dxs.ref().transpose(0, 1), stats.ref());
        const auto dx = mmfuse_test::to_vector(dxs.cref().transpose(0, 1));

        ops::logit_loss_desc value_only = d;
        value_only.gradient = false;
        const auto ref_loss =
            reference(value_only, rows, cols, xv, dense ? yv : std::vector<double>{}, {});
        CHECK(mmfuse_test::max_rel_error(loss, ref_loss.row_loss) <= loss_tolerance<T>());
        for (index_t r : sample) {
            // Row r alone: a (1, C) problem whose diagonal target is r + offset.
            CAPTURE(r);
            const auto row = [&](const std::vector<double>& m) {
                return std::vector<double>(m.begin() + r * cols, m.begin() + (r + 1) * cols);
            };
            ops::logit_loss_desc one = d;
            one.target_offset = r + d.target_offset;
            const auto ref = reference(one, 1, cols, row(xv),
                                       dense ? row(yv) : std::vector<double>{}, row(before));
            CHECK(mmfuse_test::max_rel_error(row(dx), ref.dx) <= loss_tolerance<T>());
            CHECK(mmfuse_test::max_rel_error(
                      std::vector<double>{double(stats(r, 0)), double(stats(r, 1))},
                      ref.row_stats) <= loss_tolerance<T>());
        }
    }
}

TEST_CASE("logit_loss in float32 at scale 100 on unit-vector cosines is finite and accurate",
          "[ops][loss]") {
    // |z| <= 100: e^100 overflows float (and e^z - max would not), so this fails unless the
    // op works in log-sum-exp form.
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(16);
    const index_t batch = 12, width = 24;
    std::normal_distribution<double> normal(0.0, 1.0);
    const auto unit_rows = [&](const std::vector<double>& base, double noise) {
        std::vector<double> v(std::size_t(batch * width));
        for (index_t r = 0; r < batch; ++r) {
            double ss = 0.0;
            for (index_t k = 0; k < width; ++k) {
                const std::size_t i = std::size_t(r * width + k);
                v[i] = (base.empty() ? 0.0 : base[i]) + noise * normal(rng);
                ss += v[i] * v[i];
            }
            for (index_t k = 0; k < width; ++k)
                v[std::size_t(r * width + k)] /= std::sqrt(ss);
        }
        return v;
    };
    const auto image = unit_rows({}, 1.0);
    const auto text = unit_rows(image, 0.3);  // positives correlated, as after training
    // Cosine matrices: a realistic one, and one of exact +-1 (the extremes of |z|).
    const extents e{batch, batch};
    std::vector<mmfuse::tensor<float>> sims;
    sims.emplace_back(e);
    sims.emplace_back(e);
    for (index_t i = 0; i < batch; ++i)
        for (index_t j = 0; j < batch; ++j) {
            double c = 0.0;
            for (index_t k = 0; k < width; ++k)
                c += image[std::size_t(i * width + k)] * text[std::size_t(j * width + k)];
            sims[0](i, j) = float(c);
            sims[1](i, j) = (i + j) % 3 == 0 ? 1.0f : -1.0f;
        }
    ops::logit_loss_desc clip, siglip, hn, dcl, soft;
    clip.scale = siglip.scale = hn.scale = dcl.scale = soft.scale = 100.0;
    siglip.kind = logit_loss_kind::sigmoid_binary;
    siglip.bias = -10.0;
    hn.hn_alpha = 0.5;
    hn.hn_beta = 1.0;
    hn.hn_weights_in_graph = true;
    dcl.hn_alpha = 0.0;
    soft.targets = loss_targets::dense;
    mmfuse::tensor<float> targets(e);
    for (index_t i = 0; i < e.numel(); ++i)
        targets[i] = float(std::uniform_real_distribution<double>(0.0, 1.0)(rng));
    for (std::size_t m = 0; m < sims.size(); ++m)
        for (ops::logit_loss_desc d : {clip, siglip, hn, dcl, soft})
            for (bool columns : {false, true}) {
                CAPTURE(m, describe(d), columns);
                d.grad_scale = 1.0 / double(batch);
                const tensor_ref<const float> x =
                    columns ? sims[m].cref().transpose(0, 1) : sims[m].cref();
                const tensor_ref<const float> y =
                    columns ? targets.cref().transpose(0, 1) : targets.cref();
                mmfuse::tensor<float> loss({batch}), dx(e), stats({batch, 2});
                mmfuse_test::poison(loss);
                mmfuse_test::poison(dx);
                mmfuse_test::poison(stats);
                ops::logit_loss<float>(
                    s, d, x, d.targets == loss_targets::dense ? y : tensor_ref<const float>{},
                    loss.ref(), dx.ref(), stats.ref());
                const std::array<const mmfuse::tensor<float>*, 3> outputs{&loss, &dx, &stats};
                for (const auto* t : outputs)
                    for (index_t i = 0; i < t->numel(); ++i)
                        REQUIRE(std::isfinite((*t)[i]));
                const auto ref = reference(d, batch, batch, mmfuse_test::to_vector(x),
                                           mmfuse_test::to_vector(y), {});
                CHECK(mmfuse_test::max_rel_error(loss, ref.row_loss) <= 1e-6);
                CHECK(mmfuse_test::max_rel_error(dx, ref.dx) <= 1e-6);
                CHECK(mmfuse_test::max_rel_error(stats, ref.row_stats) <= 1e-6);
            }
}

TEST_CASE("logit_loss in double stays finite and accurate for |z| up to 1000", "[ops][loss]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(17);
    const extents e{6, 8};
    int variant = 0;
    ops::logit_loss_desc ce, dense, sigmoid, hn;
    dense.targets = loss_targets::dense;
    sigmoid.kind = logit_loss_kind::sigmoid_binary;
    sigmoid.bias = -10.0;
    hn.hn_alpha = 0.7;
    hn.hn_beta = 1.0;
    hn.hn_weights_in_graph = true;
    for (ops::logit_loss_desc d : {ce, dense, sigmoid, hn}) {
        d.scale = 1000.0;
        CAPTURE(describe(d));
        loss_operands<double> op(e, variant++);
        op.fill(rng, -1.0, 1.0, false);
        op.run(s, d);
        for (double v : op.row_loss.values())
            REQUIRE(std::isfinite(v));
        for (double v : op.dx.values())
            REQUIRE(std::isfinite(v));
        const auto ref = op.expected(d);
        // The loss is a difference of numbers near 1000: allow their rounding.
        CHECK(mmfuse_test::max_rel_error(op.row_loss.values(), ref.row_loss) <= 1e-11 * 1000);
        CHECK(mmfuse_test::max_rel_error(op.dx.values(), ref.dx) <= 1e-11 * 1000);
        CHECK(mmfuse_test::max_rel_error(op.row_stats.values(), ref.row_stats) <= 1e-11 * 1000);
    }
}

TEST_CASE("logit_loss dx and row_stats agree with central differences of its row_loss",
          "[ops][loss][gradcheck]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(18);
    const index_t rows = 4, cols = 5;
    const extents e{rows, cols};
    std::vector<ops::logit_loss_desc> descs;
    for (logit_loss_kind kind :
         {logit_loss_kind::softmax_cross_entropy, logit_loss_kind::sigmoid_binary})
        for (const target_case& tc : target_cases(cols)) {
            ops::logit_loss_desc d;
            d.kind = kind;
            d.targets = tc.source;
            d.target_offset = tc.offset;
            descs.push_back(d);
        }
    for (auto [alpha, beta] : std::vector<std::array<double, 2>>{
             {0.4, 0.8}, {0.0, 0.0}, {2.0, -0.5}, {1.0, 1.5}, {0.0, 1.0}}) {
        ops::logit_loss_desc d;
        d.target_offset = 1;
        d.hn_alpha = alpha;
        d.hn_beta = beta;
        d.hn_weights_in_graph = true;
        descs.push_back(d);
    }
    for (ops::logit_loss_desc d : descs) {
        d.scale = 1.7;
        d.bias = -0.3;
        d.grad_scale = 0.75;
        CAPTURE(describe(d));
        auto x = mmfuse_test::random_tensor<double>(e, rng, -1.5, 1.5);
        mmfuse::tensor<double> targets = mmfuse_test::random_tensor<double>(e, rng, 0.0, 1.0);
        const bool dense = d.targets == loss_targets::dense;
        const tensor_ref<const double> y = dense ? targets.cref() : tensor_ref<const double>{};
        mmfuse::tensor<double> loss({rows}), dx(e), stats({rows, 2});
        mmfuse_test::poison(dx);
        mmfuse_test::poison(stats);
        ops::logit_loss<double>(s, d, x.cref(), y, loss.ref(), dx.ref(), stats.ref());

        ops::logit_loss_desc value_only = d;
        value_only.gradient = false;
        const auto row_losses = [&] {
            ops::logit_loss<double>(s, value_only, x.cref(), y, loss.ref(), {}, {});
            return mmfuse_test::to_vector(loss.cref());
        };
        const auto total = [&] {
            double l = 0.0;
            for (double v : row_losses())
                l += v;
            return l;
        };
        const double h = 1e-6;
        double worst_dx = 0.0;
        for (index_t i = 0; i < e.numel(); ++i) {
            // dx = grad_scale * dl/dx, and row r's loss depends on row r of x only.
            const double fd = d.grad_scale * mmfuse_test::central_difference(x[i], total, h);
            worst_dx = std::max(worst_dx, std::abs(fd - dx[i]) / std::max(1.0, std::abs(fd)));
        }
        CHECK(worst_dx <= 1e-7);
        // row_stats[r] = grad_scale * {dl_r/dscale, dl_r/dbias}, row by row.
        for (int k = 0; k < 2; ++k) {
            double& parameter = k == 0 ? value_only.scale : value_only.bias;
            const double p0 = parameter;
            parameter = p0 + h;
            const auto plus = row_losses();
            parameter = p0 - h;
            const auto minus = row_losses();
            parameter = p0;
            for (index_t r = 0; r < rows; ++r) {
                const double fd =
                    d.grad_scale * (plus[std::size_t(r)] - minus[std::size_t(r)]) / (2 * h);
                CAPTURE(k, r);
                CHECK(std::abs(fd - stats(r, k)) <= 1e-7 * std::max(1.0, std::abs(fd)));
            }
        }
    }
}

TEST_CASE("logit_loss HN-NCE: detached and in-graph gradients differ exactly when beta is not 0",
          "[ops][loss]") {
    // The in-graph gradient is the true derivative of the loss (checked above); the detached
    // one must differ from it when beta != 0 and equal it when beta == 0.
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(19);
    const extents e{4, 6};
    const auto x = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
    for (double beta : {0.0, 1.5}) {
        ops::logit_loss_desc d;
        d.hn_alpha = 0.5;
        d.hn_beta = beta;
        d.scale = 2.0;
        std::array<std::vector<double>, 2> grads;
        for (int in_graph = 0; in_graph < 2; ++in_graph) {
            d.hn_weights_in_graph = in_graph == 1;
            mmfuse::tensor<double> loss({4}), dx(e), stats({4, 2});
            ops::logit_loss<double>(s, d, x.cref(), {}, loss.ref(), dx.ref(), stats.ref());
            grads[std::size_t(in_graph)] = mmfuse_test::to_vector(dx.cref());
        }
        CAPTURE(beta);
        const double gap = mmfuse_test::max_rel_error(grads[0], grads[1]);
        if (beta == 0.0)
            CHECK(gap <= 1e-14);
        else
            CHECK(gap > 1e-3);
    }
}

TEST_CASE("logit_loss rejects bad operands and HN-NCE settings, naming module and operand",
          "[ops][loss]") {
    using Catch::Contains;
    auto& s = mmfuse::backend::default_stream();
    const ops::op_context cx{s, "clip.head"};
    mmfuse::tensor<float> x({3, 4}), targets({3, 4}), wide({3, 5}), loss({3}), loss4({4}),
        dx({3, 4}), dx_t({4, 3}), stats({3, 2}), stats1({3, 1}), column({3, 1});
    const tensor_ref<const float> none{};
    ops::logit_loss_desc d;  // softmax, diagonal, gradient
    ops::logit_loss_desc dense = d;
    dense.targets = loss_targets::dense;
    ops::logit_loss_desc loss_only = d;
    loss_only.gradient = false;
    const auto call = [&](const ops::logit_loss_desc& desc, tensor_ref<const float> xx,
                          tensor_ref<const float> yy, tensor_ref<float> ll, tensor_ref<float> gg,
                          tensor_ref<float> ss) {
        ops::logit_loss<float>(cx, desc, xx, yy, ll, gg, ss);
    };

    // shape_error: operands.
    REQUIRE_THROWS_AS(call(d, loss.cref(), none, loss.ref(), dx.ref(), stats.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(call(d, loss.cref(), none, loss.ref(), dx.ref(), stats.ref()),
                        Contains("clip.head") && Contains("logit_loss input x"));
    REQUIRE_THROWS_WITH(
        call(d, tensor_ref<const float>(nullptr, {3, 4}), none, loss.ref(), dx.ref(), stats.ref()),
        Contains("logit_loss input x"));
    REQUIRE_THROWS_WITH(call(dense, x.cref(), none, loss.ref(), dx.ref(), stats.ref()),
                        Contains("logit_loss targets") && Contains("(3, 4)") && Contains("none"));
    REQUIRE_THROWS_AS(call(d, x.cref(), targets.cref(), loss.ref(), dx.ref(), stats.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(call(dense, x.cref(), wide.cref(), loss.ref(), dx.ref(), stats.ref()),
                        Contains("logit_loss targets") && Contains("(3, 4)") && Contains("(3, 5)"));
    REQUIRE_THROWS_WITH(
        call(d, x.cref(), none, loss4.ref(), dx.ref(), stats.ref()),
        Contains("logit_loss output row_loss") && Contains("(3)") && Contains("(4)"));
    REQUIRE_THROWS_WITH(call(d, x.cref(), none, loss.ref(), {}, stats.ref()),
                        Contains("logit_loss output dx") && Contains("gradient requested"));
    REQUIRE_THROWS_WITH(call(d, x.cref(), none, loss.ref(), dx.ref(), {}),
                        Contains("logit_loss output row_stats"));
    REQUIRE_THROWS_AS(call(loss_only, x.cref(), none, loss.ref(), dx.ref(), {}),
                      mmfuse::shape_error);
    REQUIRE_THROWS_AS(call(loss_only, x.cref(), none, loss.ref(), {}, stats.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(
        call(d, x.cref(), none, loss.ref(), dx_t.ref(), stats.ref()),
        Contains("logit_loss output dx") && Contains("(3, 4)") && Contains("(4, 3)"));
    REQUIRE_THROWS_WITH(
        call(d, x.cref(), none, loss.ref(), dx.ref(), stats1.ref()),
        Contains("logit_loss output row_stats") && Contains("(3, 2)") && Contains("(3, 1)"));
    REQUIRE_NOTHROW(call(loss_only, x.cref(), none, loss.ref(), {}, {}));

    // value_error: HN-NCE settings outside their domain.
    const auto hn_refused = [&](ops::logit_loss_desc h, tensor_ref<const float> xx,
                                tensor_ref<const float> yy, const char* why) {
        CAPTURE(why);
        REQUIRE_THROWS_AS(call(h, xx, yy, loss.ref(), {}, {}), mmfuse::value_error);
        REQUIRE_THROWS_WITH(call(h, xx, yy, loss.ref(), {}, {}),
                            Contains("clip.head") && Contains("HN-NCE") && Contains(why));
    };
    ops::logit_loss_desc h = loss_only;
    h.hn_alpha = -0.1;
    hn_refused(h, x.cref(), none, "hn_alpha");
    h.hn_alpha = std::numeric_limits<double>::quiet_NaN();
    hn_refused(h, x.cref(), none, "hn_alpha");
    h.hn_alpha = std::numeric_limits<double>::infinity();
    hn_refused(h, x.cref(), none, "hn_alpha");
    h = loss_only;
    h.hn_beta = std::numeric_limits<double>::infinity();
    hn_refused(h, x.cref(), none, "hn_beta");
    h = loss_only;
    h.hn_beta = 0.5;
    h.kind = logit_loss_kind::sigmoid_binary;
    hn_refused(h, x.cref(), none, "softmax_cross_entropy");
    h.kind = logit_loss_kind::softmax_cross_entropy;
    h.targets = loss_targets::dense;
    hn_refused(h, x.cref(), targets.cref(), "diagonal");
    h.targets = loss_targets::none;
    hn_refused(h, x.cref(), none, "diagonal");
    h.targets = loss_targets::diagonal;
    h.hn_weights_in_graph = true;
    h.hn_beta = 0.0;
    hn_refused(h, column.cref(), none, "2 columns");

    // backend_error: a direct stream call with operands the front-end would have refused.
    CHECK(ops::operand_count(d).inputs == 1);
    CHECK(ops::operand_count(d).outputs == 3);
    CHECK(ops::operand_count(dense).inputs == 2);
    CHECK(ops::operand_count(loss_only).outputs == 1);
    using span = std::span<const mmfuse::any_tensor_ref>;
    const std::array<mmfuse::any_tensor_ref, 1> in_x{x.cref()}, in_bad{loss.cref()},
        out_loss{loss.ref()}, out_loss4{loss4.ref()};
    const std::array<mmfuse::any_tensor_ref, 2> in_dense_bad{x.cref(), wide.cref()};
    const std::array<mmfuse::any_tensor_ref, 3> out_all{loss.ref(), dx.ref(), stats.ref()},
        out_bad_dx{loss.ref(), dx_t.ref(), stats.ref()},
        out_bad_stats{loss.ref(), dx.ref(), stats1.ref()};
    REQUIRE_THROWS_AS(s.execute(d, span(in_x), span(out_loss)), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(dense, span(in_x), span(out_all)), mmfuse::backend_error);
    REQUIRE_THROWS_WITH(s.execute(d, span(in_bad), span(out_all)), Contains("logit_loss"));
    REQUIRE_THROWS_AS(s.execute(d, span(in_bad), span(out_all)), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(loss_only, span(in_x), span(out_loss4)), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(d, span(in_x), span(out_bad_dx)), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(d, span(in_x), span(out_bad_stats)), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(dense, span(in_dense_bad), span(out_all)), mmfuse::backend_error);
}

// ---- l2_normalize ---------------------------------------------------------------------------

namespace {

/// Inputs for the l2 tests: uniform in [-2, 2); with two rows or more, row 0 is all zeros,
/// and with three or more, row 1 has norm <= eps / 10, so both the plain and the clamped
/// branch are exercised.
std::vector<double> l2_inputs(std::mt19937_64& rng, const extents& e, double eps) {
    const index_t n = e[-1], rows = e.numel() / n;
    auto v = uniform_values(rng, e.numel(), -2.0, 2.0);
    if (rows >= 2)
        for (index_t j = 0; j < n; ++j)
            v[std::size_t(j)] = 0.0;
    if (rows >= 3)
        for (index_t j = 0; j < n; ++j)
            v[std::size_t(n + j)] *= 0.05 * eps / std::sqrt(double(n));
    return v;
}

/// ||x_r||_2 of every row (last axis) of row-major x.
std::vector<double> ref_norms(const std::vector<double>& x, index_t n) {
    std::vector<double> norms(x.size() / std::size_t(n));
    for (std::size_t r = 0; r < norms.size(); ++r) {
        double ss = 0.0;
        for (index_t j = 0; j < n; ++j)
            ss += x[r * std::size_t(n) + std::size_t(j)] * x[r * std::size_t(n) + std::size_t(j)];
        norms[r] = std::sqrt(ss);
    }
    return norms;
}

/// y = x / max(||x||, eps) per row.
std::vector<double> ref_l2_normalize(const std::vector<double>& x, index_t n, double eps) {
    const auto norms = ref_norms(x, n);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        y[i] = x[i] / std::max(norms[i / std::size_t(n)], eps);
    return y;
}

/// dx = J^T dy with J the Jacobian of x / max(||x||, eps), written entry by entry from the
/// quotient rule: J_ij = delta_ij / ||x|| - x_i x_j / ||x||^3 where ||x|| > eps, else
/// delta_ij / eps (the clamp is constant there).
std::vector<double> ref_l2_backward(const std::vector<double>& x, const std::vector<double>& dy,
                                    index_t n, double eps) {
    const auto norms = ref_norms(x, n);
    std::vector<double> dx(x.size(), 0.0);
    for (std::size_t r = 0; r < norms.size(); ++r) {
        const double nr = norms[r];
        const std::size_t o = r * std::size_t(n);
        for (std::size_t j = 0; j < std::size_t(n); ++j)
            for (std::size_t i = 0; i < std::size_t(n); ++i) {
                const double delta = i == j ? 1.0 : 0.0;
                const double jac =
                    nr > eps ? delta / nr - x[o + i] * x[o + j] / (nr * nr * nr) : delta / eps;
                dx[o + j] += jac * dy[o + i];
            }
    }
    return dx;
}

/// |got_r - ref_r| <= tol * ref_r for every row norm (exactly 0 for a zero row).
bool norms_match(const std::vector<double>& got, const std::vector<double>& ref, double tol) {
    for (std::size_t r = 0; r < ref.size(); ++r)
        if (!(std::abs(got[r] - ref[r]) <= tol * ref[r])) return false;
    return true;
}

const std::vector<extents> l2_shapes = {{7}, {3, 5}, {2, 3, 17}, {4, 1}};

}  // namespace

TEMPLATE_TEST_CASE(
    "l2_normalize matches a double loop in every layout, zero and short rows "
    "included",
    "[ops][l2_normalize]", float, double) {
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(21);
    for (const extents& e : l2_shapes)
        for (layout l : mmfuse_test::uniform_layouts)
            for (double eps : {1e-12, 0.5}) {
                CAPTURE(e.to_string(), mmfuse_test::layout_name(l), eps);
                const index_t n = e[-1], rows = e.numel() / n;
                strided_operand<T> x(e, l), y(e, l), norm(extents{rows}, l);
                x.fill_random(rng);
                x.assign(l2_inputs(rng, e, eps));
                y.poison();
                norm.poison();
                ops::l2_normalize<T>(s, x.cref(), y.ref(), norm.ref(), eps);
                const auto xv = x.values();
                const auto got = y.values();
                CHECK(mmfuse_test::max_rel_error(got, ref_l2_normalize(xv, n, eps)) <=
                      mmfuse_test::tolerance<T>());
                CHECK(norms_match(norm.values(), ref_norms(xv, n), mmfuse_test::tolerance<T>()));
                if (rows >= 2)
                    for (index_t j = 0; j < n; ++j)
                        REQUIRE(got[std::size_t(j)] == 0.0);  // zero row: zeros, never NaN
                CHECK(y.outside_intact());
                CHECK(norm.outside_intact());
            }
}

TEMPLATE_TEST_CASE("l2_normalize in place (y is x) on strided views", "[ops][l2_normalize]", float,
                   double) {
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(22);
    for (const extents& e : l2_shapes)
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(e.to_string(), mmfuse_test::layout_name(l));
            const index_t n = e[-1], rows = e.numel() / n;
            strided_operand<T> x(e, l), norm(extents{rows}, layout::contiguous);
            x.fill_random(rng);
            x.assign(l2_inputs(rng, e, 1e-12));
            norm.poison();
            const auto xv = x.values();
            ops::l2_normalize<T>(s, x.cref(), x.ref(), norm.ref());
            CHECK(mmfuse_test::max_rel_error(x.values(), ref_l2_normalize(xv, n, 1e-12)) <=
                  mmfuse_test::tolerance<T>());
            CHECK(norms_match(norm.values(), ref_norms(xv, n), mmfuse_test::tolerance<T>()));
            CHECK(x.outside_intact());
        }
}

TEMPLATE_TEST_CASE("l2_normalize_backward matches the Jacobian in every layout and in place",
                   "[ops][l2_normalize]", float, double) {
    using T = TestType;
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(23);
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    for (const extents& e : l2_shapes)
        for (layout l : mmfuse_test::uniform_layouts)
            for (double eps : {1e-12, 0.5})
                for (bool in_place : {false, true}) {
                    CAPTURE(e.to_string(), mmfuse_test::layout_name(l), eps, in_place);
                    const index_t n = e[-1], rows = e.numel() / n;
                    const auto xv = l2_inputs(rng, e, eps);
                    strided_operand<T> y(e, l), norm(extents{rows}, l), dy(e, l), dx(e, l);
                    y.fill_random(rng);
                    y.assign(ref_l2_normalize(xv, n, eps));
                    norm.fill_random(rng);
                    norm.assign(ref_norms(xv, n));
                    dy.sentinel_then_random(rng);
                    dx.poison();
                    const auto dyv = dy.values();
                    strided_operand<T>& out = in_place ? dy : dx;
                    ops::l2_normalize_backward<T>(s, y.cref(), dy.cref(), norm.cref(), out.ref(),
                                                  eps);
                    const auto got = out.values();
                    const auto ref = ref_l2_backward(xv, dyv, n, eps);
                    const auto norms = ref_norms(xv, n);
                    // Rows shorter than eps have dx = dy / eps (1e12 dy for the default eps):
                    // errors are measured relative to 1 / max(||x||, eps) where that exceeds 1.
                    double worst = 0.0;
                    for (std::size_t i = 0; i < ref.size(); ++i) {
                        const double row_scale =
                            1.0 / std::min(1.0, std::max(norms[i / std::size_t(n)], eps));
                        worst = std::max(worst, std::abs(got[i] - ref[i]) / row_scale);
                    }
                    CHECK(worst <= tol);
                    if (rows >= 2)
                        for (index_t j = 0; j < n; ++j)  // zero row: dy / eps, finite
                            REQUIRE(got[std::size_t(j)] ==
                                    Approx(dyv[std::size_t(j)] / eps).epsilon(1e-6));
                    CHECK(out.outside_intact());
                }
}

TEST_CASE("l2_normalize_backward agrees with central differences, above and below eps",
          "[ops][l2_normalize][gradcheck]") {
    auto& s = mmfuse::backend::default_stream();
    auto rng = mmfuse_test::make_rng(24);
    for (const extents& e : {extents{3, 6}, extents{2, 2, 5}})
        for (double eps : {1e-12, 0.5}) {
            CAPTURE(e.to_string(), eps);
            const index_t n = e[-1], rows = e.numel() / n;
            auto x = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
            for (index_t j = 0; j < n; ++j)  // row 0 well below eps = 0.5 (norm <= 0.1)
                x[j] *= 0.1 / std::sqrt(double(n));
            const auto w = mmfuse_test::random_tensor<double>(e, rng, -1.0, 1.0);
            mmfuse::tensor<double> y(e), norm({rows}), dx(e);
            const auto loss = [&] {  // a random linear functional of the output
                ops::l2_normalize<double>(s, x.cref(), y.ref(), norm.ref(), eps);
                double l = 0.0;
                for (index_t i = 0; i < e.numel(); ++i)
                    l += w[i] * y[i];
                return l;
            };
            loss();
            mmfuse_test::poison(dx);
            ops::l2_normalize_backward<double>(s, y.cref(), w.cref(), norm.cref(), dx.ref(), eps);
            double worst = 0.0;
            for (index_t i = 0; i < e.numel(); ++i) {
                const double fd = mmfuse_test::central_difference(x[i], loss, 1e-6);
                worst = std::max(worst, std::abs(fd - dx[i]) / std::max(1.0, std::abs(fd)));
            }
            CHECK(worst <= 1e-7);
        }
}

TEST_CASE("l2_normalize front-ends reject bad operands, naming module and shapes",
          "[ops][l2_normalize]") {
    using Catch::Contains;
    auto& s = mmfuse::backend::default_stream();
    const ops::op_context cx{s, "text.norm"};
    mmfuse::tensor<float> x({2, 5}), y({2, 5}), y_bad({2, 4}), norm({2}), norm_bad({3});
    REQUIRE_THROWS_AS(ops::l2_normalize<float>(cx, x.cref(), y_bad.ref(), norm.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(ops::l2_normalize<float>(cx, x.cref(), y_bad.ref(), norm.ref()),
                        Contains("text.norm") && Contains("l2_normalize output y") &&
                            Contains("(2, 5)") && Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(ops::l2_normalize<float>(cx, x.cref(), y.ref(), norm_bad.ref()),
                        Contains("l2_normalize output norm") && Contains("(2)") && Contains("(3)"));
    float scalar = 0.0f;
    REQUIRE_THROWS_AS(ops::l2_normalize<float>(cx, tensor_ref<const float>(&scalar, extents{}),
                                               tensor_ref<float>(&scalar, extents{}), norm.ref()),
                      mmfuse::shape_error);
    REQUIRE_THROWS_WITH(
        ops::l2_normalize<float>(cx, tensor_ref<const float>(nullptr, {2, 5}), y.ref(), norm.ref()),
        Contains("l2_normalize input x"));
    REQUIRE_THROWS_WITH(
        ops::l2_normalize_backward<float>(cx, y.cref(), y_bad.cref(), norm.cref(), x.ref()),
        Contains("l2_normalize_backward input dy") && Contains("(2, 5)") && Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(
        ops::l2_normalize_backward<float>(cx, y.cref(), x.cref(), norm_bad.cref(), x.ref()),
        Contains("l2_normalize_backward input norm"));
    REQUIRE_THROWS_WITH(
        ops::l2_normalize_backward<float>(cx, y.cref(), x.cref(), norm.cref(), y_bad.ref()),
        Contains("l2_normalize_backward output dx"));
    // A direct stream call with the wrong operand count is refused.
    const std::array<mmfuse::any_tensor_ref, 1> in{x.cref()}, out{y.ref()};
    REQUIRE_THROWS_AS(s.execute(ops::l2_normalize_desc{}, in, out), mmfuse::backend_error);
    REQUIRE_THROWS_AS(s.execute(ops::l2_normalize_backward_desc{}, in, out), mmfuse::backend_error);
}
