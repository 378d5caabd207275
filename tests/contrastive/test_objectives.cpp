// Contrastive objectives (clip.hpp, objectives.hpp, binding.hpp): every forward against an
// independent double-loop reference written from the equations of contrastive.md, every
// gradient (embeddings, theta, bias) against central differences in double, the identities
// between the objectives, float32 at scale 100, clamp() and shape errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "contrastive/contrastive_support.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/binding.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/objectives.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse::contrastive;
using mmfuse_test::unit_rows;

namespace {

// ---------------------------------------------------------------- inputs and plumbing

/// A head placed under the child name "heads", so parameters are "heads.logit_scale" and
/// errors name the module "heads".
template <class H>
struct under {
    using value_type = typename H::value_type;
    H head;
    template <class V>
    void visit(V& v) {
        v.child("heads", head);
    }
    void reset_parameters(philox_generator& g) { head.reset_parameters(g); }
};

/// A vector of move-only tensors (an initializer list would copy).
template <class... Ts>
std::vector<tensor<double>> list(Ts&&... ts) {
    std::vector<tensor<double>> v;
    (v.push_back(std::move(ts)), ...);
    return v;
}

template <class T>
tensor<T> cast(const tensor<double>& x) {
    tensor<T> y(x.extents());
    for (index_t i = 0; i < x.numel(); ++i)
        y[i] = T(x[i]);
    return y;
}

/// The elements of a rank-2 view (any strides) in row-major order, as doubles.
template <class T>
std::vector<double> values(tensor_ref<const T> v) {
    REQUIRE(v.rank() == 2);
    std::vector<double> out;
    for (index_t i = 0; i < v.extent(0); ++i)
        for (index_t j = 0; j < v.extent(1); ++j)
            out.push_back(double(v(i, j)));
    return out;
}

/// Poisoned (NaN) workspace: every step draws from an arena filled with NaN first, so a
/// head that reads a workspace element it never wrote produces NaN.
struct workspace {
    growing_arena arena;
    void reset() {
        arena.reset();
        // Draw one large block, poison it, give it back: later allocations reuse it.
        const auto mark = arena.mark();
        auto block = arena.allocate<double>(extents{1 << 14});
        for (index_t i = 0; i < block.numel(); ++i)
            block.data()[i] = std::numeric_limits<double>::quiet_NaN();
        arena.release(mark);
    }
};

// ---------------------------------------------------------------- double-loop references

using mat = std::vector<std::vector<double>>;

mat rows_of(const tensor<double>& x) {
    mat m(std::size_t(x.extent(0)), std::vector<double>(std::size_t(x.extent(1))));
    for (index_t i = 0; i < x.extent(0); ++i)
        for (index_t k = 0; k < x.extent(1); ++k)
            m[size_t(i)][size_t(k)] = x[i * x.extent(1) + k];
    return m;
}

/// L_ij = s <a_i, b_j> + bias.
mat logits(const tensor<double>& a, const tensor<double>& b, double s, double bias = 0.0) {
    const mat A = rows_of(a), Bm = rows_of(b);
    mat L(A.size(), std::vector<double>(Bm.size()));
    for (size_t i = 0; i < A.size(); ++i)
        for (size_t j = 0; j < Bm.size(); ++j) {
            double dot = 0.0;
            for (size_t k = 0; k < A[i].size(); ++k)
                dot += A[i][k] * Bm[j][k];
            L[i][j] = s * dot + bias;
        }
    return L;
}

mat transposed(const mat& m) {
    mat t(m[0].size(), std::vector<double>(m.size()));
    for (size_t i = 0; i < m.size(); ++i)
        for (size_t j = 0; j < m[i].size(); ++j)
            t[j][i] = m[i][j];
    return t;
}

/// log sum_j e^{v_j} over the j with keep(j).
template <class Keep>
double lse_if(const std::vector<double>& v, Keep keep) {
    double mx = -std::numeric_limits<double>::infinity(), sum = 0.0;
    for (size_t j = 0; j < v.size(); ++j)
        if (keep(j)) mx = std::max(mx, v[j]);
    for (size_t j = 0; j < v.size(); ++j)
        if (keep(j)) sum += std::exp(v[j] - mx);
    return mx + std::log(sum);
}
double lse(const std::vector<double>& v) {
    return lse_if(v, [](size_t) { return true; });
}

/// (1/R) sum_r [LSE_j M_rj - M_rr]: cross-entropy of each row against its diagonal entry.
double mean_diagonal_ce(const mat& M) {
    double l = 0.0;
    for (size_t r = 0; r < M.size(); ++r)
        l += lse(M[r]) - M[r][r];
    return l / double(M.size());
}

/// CLIP, contrastive.md 1.2.
double clip_reference(const tensor<double>& I, const tensor<double>& T, double s) {
    const mat L = logits(I, T, s);
    return 0.5 * (mean_diagonal_ce(L) + mean_diagonal_ce(transposed(L)));
}

/// SigLIP, contrastive.md 1.4 and 4: (1/B) sum_ij softplus(-z_ij L_ij), z = 2 Pi - 1
/// (Pi = identity without a mask).
double siglip_reference(const tensor<double>& I, const tensor<double>& T, double s, double b,
                        const tensor<double>* pi = nullptr) {
    const mat L = logits(I, T, s, b);
    const size_t B = L.size();
    double l = 0.0;
    for (size_t i = 0; i < B; ++i)
        for (size_t j = 0; j < B; ++j) {
            const bool positive = pi ? (*pi)[index_t(i * B + j)] == 1.0 : i == j;
            const double zl = (positive ? 1.0 : -1.0) * L[i][j];
            l += std::log1p(std::exp(-zl));
        }
    return l / double(B);
}

/// Multi-positive InfoNCE, contrastive.md 4: per query, -sum over its positives of
/// (1/|positives|) log softmax; the text direction uses the column j's positives {i: Pi_ij}.
double multi_positive_reference(const tensor<double>& I, const tensor<double>& T, double s,
                                const tensor<bool>& pi, double w) {
    const mat L = logits(I, T, s);
    const size_t B = L.size();
    double i2t = 0.0, t2i = 0.0;
    for (size_t i = 0; i < B; ++i) {
        double n = 0.0;
        for (size_t j = 0; j < B; ++j)
            n += pi[index_t(i * B + j)] ? 1.0 : 0.0;
        const double row_lse = lse(L[i]);
        for (size_t j = 0; j < B; ++j)
            if (pi[index_t(i * B + j)]) i2t -= (L[i][j] - row_lse) / n;
    }
    const mat Lt = transposed(L);
    for (size_t j = 0; j < B; ++j) {
        double n = 0.0;
        for (size_t i = 0; i < B; ++i)
            n += pi[index_t(i * B + j)] ? 1.0 : 0.0;
        const double col_lse = lse(Lt[j]);
        for (size_t i = 0; i < B; ++i)
            if (pi[index_t(i * B + j)]) t2i -= (L[i][j] - col_lse) / n;
    }
    return w * (i2t + t2i) / double(B);
}

/// NegCLIP, contrastive.md 4: image rows over [T; N], text rows over the images.
double negclip_reference(const tensor<double>& I, const tensor<double>& T, const tensor<double>& N,
                         double s) {
    const index_t B = I.extent(0), D = I.extent(1), n = N.extent(0);
    tensor<double> all(extents{B + n, D});
    for (index_t k = 0; k < B * D; ++k)
        all[k] = T[k];
    for (index_t k = 0; k < n * D; ++k)
        all[B * D + k] = N[k];
    const mat Limg = logits(I, all, s);
    const mat Ltxt = logits(T, I, s);
    return 0.5 * (mean_diagonal_ce(Limg) + mean_diagonal_ce(Ltxt));
}

/// HN-NCE weights of one direction M (rows = queries): w_ij = (B-1) e^{beta M_ij} /
/// sum_{k != i} e^{beta M_ik} (0 on the diagonal).
mat hn_weights_of(const mat& M, double beta) {
    const size_t B = M.size();
    mat w(B, std::vector<double>(B, 0.0));
    for (size_t i = 0; i < B; ++i) {
        double z = 0.0;
        for (size_t k = 0; k < B; ++k)
            if (k != i) z += std::exp(beta * M[i][k]);
        for (size_t j = 0; j < B; ++j)
            if (j != i) w[i][j] = double(B - 1) * std::exp(beta * M[i][j]) / z;
    }
    return w;
}

/// One direction of HN-NCE written directly from the paper's formula (weights given):
/// -(1/B) sum_i log[ e^{M_ii} / (alpha e^{M_ii} + sum_{j != i} w_ij e^{M_ij}) ].
double hn_direction(const mat& M, double alpha, const mat& w) {
    double l = 0.0;
    for (size_t i = 0; i < M.size(); ++i) {
        double denom = alpha * std::exp(M[i][i]);
        for (size_t j = 0; j < M.size(); ++j)
            if (j != i) denom += w[i][j] * std::exp(M[i][j]);
        l -= std::log(std::exp(M[i][i]) / denom);
    }
    return l / double(M.size());
}

/// HN-NCE of both directions; `frozen` (the two weight matrices) replaces the weights
/// computed at the current point, which is what "detached" differentiates.
double hn_nce_reference(const tensor<double>& I, const tensor<double>& T, double s, double alpha,
                        double beta, double w_dir, const std::pair<mat, mat>* frozen = nullptr) {
    const mat L = logits(I, T, s), Lt = transposed(L);
    const mat wr = frozen ? frozen->first : hn_weights_of(L, beta);
    const mat wc = frozen ? frozen->second : hn_weights_of(Lt, beta);
    return w_dir * (hn_direction(L, alpha, wr) + hn_direction(Lt, alpha, wc));
}

/// DCL / InfoLOOB closed form: per direction (1/B) sum_i [-M_ii + LSE_{j != i} M_ij].
double dcl_reference(const tensor<double>& I, const tensor<double>& T, double s, double w_dir) {
    const mat L = logits(I, T, s);
    double l = 0.0;
    for (const mat& M : {L, transposed(L)})
        for (size_t i = 0; i < M.size(); ++i)
            l += -M[i][i] + lse_if(M[i], [&](size_t j) { return j != i; });
    return w_dir * l / double(L.size());
}

/// H(A || C) = -(1/R) sum_i sum_j softmax(A_i)_j log_softmax(C_i)_j.
double soft_cross_entropy(const mat& A, const mat& C) {
    double h = 0.0;
    for (size_t i = 0; i < A.size(); ++i) {
        const double la = lse(A[i]), lc = lse(C[i]);
        for (size_t j = 0; j < A[i].size(); ++j)
            h -= std::exp(A[i][j] - la) * (C[i][j] - lc);
    }
    return h / double(A.size());
}

/// open_clip DistillClipLoss, contrastive.md 1.6.
distill_losses distill_reference(const tensor<double>& I, const tensor<double>& T,
                                 const tensor<double>& It, const tensor<double>& Tt, double s,
                                 double st) {
    const mat L = logits(I, T, s), Lt = logits(It, Tt, st);
    return {clip_reference(I, T, s),
            0.5 * (soft_cross_entropy(Lt, L) + soft_cross_entropy(transposed(Lt), transposed(L)))};
}

// ---------------------------------------------------------------- the gradient check

/// One objective under test: how to run its forward on a list of inputs, and how to read
/// the gradients of its backward (one per differentiable input, in order).
template <class H>
struct objective {
    std::function<double(H&, nn::step_context<typename H::value_type>&,
                         const std::vector<tensor<typename H::value_type>>&)>
        loss;
    std::function<std::vector<std::vector<double>>(H&, nn::step_context<typename H::value_type>&)>
        grads;
};

/// Worst relative error of analytic vs central-difference gradients, over every element of
/// the differentiable inputs and every parameter element.
struct gradcheck_report {
    double inputs = 0.0, parameters = 0.0;
    double largest_gradient = 0.0;  // so a check against an all-zero gradient can be refused
};

/// Runs forward + backward of `head` (double) at `in`, with the parameters set to
/// `settings` (name -> value), then compares with central differences of `fd_loss` (by
/// default the head's own eval-mode forward). `fd_loss` reads the inputs and the model's
/// parameters at the time it is called.
template <class H>
gradcheck_report gradcheck(H head, const std::vector<std::pair<std::string, double>>& settings,
                           std::vector<tensor<double>>& in, const objective<H>& obj,
                           std::function<double(nn::model<under<H>>&)> fd_loss = {},
                           double h = 1e-6) {
    nn::model<under<H>> m(under<H>{std::move(head)}, 7);
    for (const auto& [name, value] : settings) {
        auto* p = m.find(name);
        REQUIRE(p != nullptr);
        p->value.data()[0] = value;
    }
    workspace ws;
    nn::step_context<double> train{&backend::default_stream(), &ws.arena, true};
    nn::step_context<double> eval{&backend::default_stream(), &ws.arena, false};
    m.zero_grad();
    ws.reset();
    obj.loss(m.net().head, train, in);
    const std::vector<std::vector<double>> analytic = obj.grads(m.net().head, train);
    const tensor_ref<double> g = m.gradients();
    const std::vector<double> dparam(g.data(), g.data() + g.numel());
    if (!fd_loss)
        fd_loss = [&](nn::model<under<H>>&) {
            ws.reset();
            return obj.loss(m.net().head, eval, in);
        };
    gradcheck_report r;
    const auto err = [](double a, double n) {
        return std::abs(a - n) / std::max(1.0, std::abs(n));
    };
    for (size_t t = 0; t < analytic.size(); ++t) {
        REQUIRE(analytic[t].size() == size_t(in[t].numel()));
        for (index_t i = 0; i < in[t].numel(); ++i) {
            const double num = mmfuse_test::central_difference(
                in[t][i], [&] { return fd_loss(m); }, h);
            r.inputs = std::max(r.inputs, err(analytic[t][size_t(i)], num));
            r.largest_gradient = std::max(r.largest_gradient, std::abs(analytic[t][size_t(i)]));
        }
    }
    const tensor_ref<double> p = m.parameters();
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k) {
            const double num = mmfuse_test::central_difference(
                p.data()[info.offset + k], [&] { return fd_loss(m); }, h);
            INFO("parameter " << info.name << " analytic " << dparam[size_t(info.offset + k)]
                              << " numeric " << num);
            r.parameters = std::max(r.parameters, err(dparam[size_t(info.offset + k)], num));
        }
    return r;
}

/// Loss and gradients of one training step of `head` in its own model.
template <class H>
std::pair<double, std::vector<std::vector<double>>> step(
    H head, const std::vector<std::pair<std::string, double>>& settings,
    const std::vector<tensor<typename H::value_type>>& in, const objective<H>& obj,
    std::vector<double>* parameter_grads = nullptr) {
    using T = typename H::value_type;
    nn::model<under<H>> m(under<H>{std::move(head)}, 7);
    for (const auto& [name, value] : settings) {
        auto* p = m.find(name);
        REQUIRE(p != nullptr);
        p->value.data()[0] = T(value);
    }
    workspace ws;
    ws.reset();
    nn::step_context<T> cx{&backend::default_stream(), &ws.arena, true};
    m.zero_grad();
    const double l = obj.loss(m.net().head, cx, in);
    auto g = obj.grads(m.net().head, cx);
    if (parameter_grads) {
        parameter_grads->clear();
        for (const auto& info : m.parameter_index())
            parameter_grads->push_back(double(m.gradients().data()[info.offset]));
    }
    return {l, std::move(g)};
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double d = 0.0;
    for (size_t i = 0; i < a.size(); ++i)
        d = std::max(d, std::abs(a[i] - b[i]));
    return d;
}

// ---------------------------------------------------------------- objectives as test drivers

template <class T>
objective<clip_loss<T>> clip_objective() {
    return {[](clip_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref());
            },
            [](clip_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

template <class T>
objective<siglip_loss<T>> siglip_objective() {
    return {[](siglip_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref());
            },
            [](siglip_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

/// Multi-positive SigLIP: in = {image, text}, positives mask `pi` (any strides).
template <class T>
objective<siglip_loss<T>> siglip_positives_objective(tensor_ref<const bool> pi) {
    return {[pi](siglip_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref(), pi);
            },
            [](siglip_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

template <class T>
objective<multi_positive_loss<T>> multi_positive_objective(const tensor<bool>& pi) {
    return {[&pi](multi_positive_loss<T>& h, nn::step_context<T>& cx,
                  const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref(), pi.cref());
            },
            [](multi_positive_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

template <class T>
objective<negclip_loss<T>> negclip_objective() {
    // in = {image, text, hard negatives}, or {image, text}: hard negatives `{}` (N = 0)
    return {[](negclip_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref(),
                                 in.size() > 2 ? in[2].cref() : tensor_ref<const T>{});
            },
            [](negclip_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                std::vector<std::vector<double>> r{values(g.da), values(g.db)};
                if (g.d_negatives.extent(0) > 0) r.push_back(values(g.d_negatives));
                return r;
            }};
}

template <class T>
objective<hn_nce_loss<T>> hn_nce_objective() {
    return {[](hn_nce_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                return h.forward(cx, in[0].cref(), in[1].cref());
            },
            [](hn_nce_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

/// in = {image, text, teacher image, teacher text}; the teacher's scale is captured.
template <class T>
objective<distill_clip_loss<T>> distill_objective(double teacher_scale) {
    return {[teacher_scale](distill_clip_loss<T>& h, nn::step_context<T>& cx,
                            const std::vector<tensor<T>>& in) {
                return h
                    .forward(cx, in[0].cref(), in[1].cref(), in[2].cref(), in[3].cref(),
                             teacher_scale)
                    .total();
            },
            [](distill_clip_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                return std::vector<std::vector<double>>{values(g.da), values(g.db)};
            }};
}

/// in = {anchor, M_1, ..., M_K}.
template <class T>
objective<binding_loss<T>> binding_objective() {
    return {[](binding_loss<T>& h, nn::step_context<T>& cx, const std::vector<tensor<T>>& in) {
                std::vector<tensor_ref<const T>> mods;
                for (size_t k = 1; k < in.size(); ++k)
                    mods.push_back(in[k].cref());
                return h.forward(cx, in[0].cref(), mods);
            },
            [](binding_loss<T>& h, nn::step_context<T>& cx) {
                const auto g = h.backward(cx);
                std::vector<std::vector<double>> r{values(g.anchor)};
                for (const auto& m : g.modalities)
                    r.push_back(values(m));
                return r;
            }};
}

/// Random batch geometry for the gradient checks: B in [3, 6], D in [3, 5].
std::pair<index_t, index_t> batch_shape(std::mt19937_64& rng) {
    return {3 + index_t(rng() % 4), 3 + index_t(rng() % 3)};
}

double uniform(std::mt19937_64& rng, double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
}

/// Random class ids in [0, classes) -> same-class positives mask (B, B).
tensor<bool> class_mask(std::mt19937_64& rng, index_t B, int classes) {
    std::vector<int> labels(static_cast<size_t>(B));
    for (int& l : labels)
        l = int(rng() % unsigned(classes));
    return same_label_mask<int>(labels, labels);
}

/// The loss at the inputs, through `obj`, in eval mode (no backward state).
template <class H>
double loss_at(H head, const std::vector<std::pair<std::string, double>>& settings,
               const std::vector<tensor<double>>& in, const objective<H>& obj) {
    return step(std::move(head), settings, in, obj).first;
}

constexpr double fd_tol = 1e-6;  // central differences, h = 1e-6, |s| <= 20

}  // namespace

// ======================================================================= CLIP and SigLIP

TEST_CASE("clip_loss matches the double-loop reference and central differences",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(1);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double theta = uniform(rng, 1.0, 3.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    const double l = loss_at(clip_loss<double>{}, set, in, clip_objective<double>());
    CHECK(std::abs(l - clip_reference(in[0], in[1], std::exp(theta))) <= 1e-12);
    const auto r = gradcheck(clip_loss<double>{}, set, in, clip_objective<double>());
    CHECK(r.inputs <= fd_tol);
    CHECK(r.parameters <= fd_tol);
    CHECK(r.largest_gradient > 1e-3);
}

TEST_CASE("siglip_loss matches the double-loop reference and central differences",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(2);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double theta = uniform(rng, 1.0, 3.0), bias = uniform(rng, -3.0, 1.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta},
                                                          {"heads.logit_bias", bias}};
    const double l = loss_at(siglip_loss<double>{}, set, in, siglip_objective<double>());
    CHECK(std::abs(l - siglip_reference(in[0], in[1], std::exp(theta), bias)) <= 1e-12);
    const auto r = gradcheck(siglip_loss<double>{}, set, in, siglip_objective<double>());
    CHECK(r.inputs <= fd_tol);
    CHECK(r.parameters <= fd_tol);
    CHECK(r.largest_gradient > 1e-3);
}

TEST_CASE("siglip_loss with a positives mask matches the reference, the identity mask is plain",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(20);
    const auto [B, D] = batch_shape(rng);
    // Random, and not symmetric, so that reading the transposed view differs.
    tensor<bool> mask(extents{B, B});
    for (index_t k = 0; k < B * B; ++k)
        mask[k] = rng() % 3 == 0;
    mask[1] = true;
    mask[B] = false;
    tensor<double> pi(extents{B, B}), pi_t(extents{B, B});
    tensor<bool> eye(extents{B, B});
    for (index_t i = 0; i < B; ++i)
        for (index_t j = 0; j < B; ++j) {
            pi[i * B + j] = mask[i * B + j] ? 1.0 : 0.0;
            pi_t[j * B + i] = pi[i * B + j];
            eye[i * B + j] = i == j;
        }
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double theta = uniform(rng, 1.0, 3.0), bias = uniform(rng, -3.0, 1.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta},
                                                          {"heads.logit_bias", bias}};
    const double l =
        loss_at(siglip_loss<double>{}, set, in, siglip_positives_objective<double>(mask.cref()));
    CHECK(std::abs(l - siglip_reference(in[0], in[1], std::exp(theta), bias, &pi)) <= 1e-12);
    // A strided mask (the transposed view) is read through its strides.
    const double lt = loss_at(siglip_loss<double>{}, set, in,
                              siglip_positives_objective<double>(mask.cref().transpose(0, 1)));
    CHECK(std::abs(lt - siglip_reference(in[0], in[1], std::exp(theta), bias, &pi_t)) <= 1e-12);
    const auto r =
        gradcheck(siglip_loss<double>{}, set, in, siglip_positives_objective<double>(mask.cref()));
    CHECK(r.inputs <= fd_tol);
    CHECK(r.parameters <= fd_tol);
    std::vector<double> pa, pb;
    const auto a =
        step(siglip_loss<double>{}, set, in, siglip_positives_objective<double>(eye.cref()), &pa);
    const auto b = step(siglip_loss<double>{}, set, list(in[0].clone(), in[1].clone()),
                        siglip_objective<double>(), &pb);
    CHECK(std::abs(a.first - b.first) <= 1e-13);
    for (size_t t = 0; t < 2; ++t)
        CHECK(max_abs_diff(a.second[t], b.second[t]) <= 1e-13);
    CHECK(max_abs_diff(pa, pb) <= 1e-13);
}

TEST_CASE("a scale clipped in the forward has zero theta gradient when saturated",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(3);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const logit_scale_options clipped{.clamp = scale_clamp::in_forward};
    SECTION("saturated: s = 100, dl/dtheta = 0 analytically and numerically") {
        const double theta = std::log(100.0) + uniform(rng, 0.05, 1.0);
        const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
        std::vector<double> dtheta;
        const auto [l, g] =
            step(clip_loss<double>{clipped}, set, in, clip_objective<double>(), &dtheta);
        CHECK(std::abs(l - clip_reference(in[0], in[1], 100.0)) <= 1e-11);
        REQUIRE(dtheta.size() == 1);
        CHECK(dtheta[0] == 0.0);
        const auto r =
            gradcheck(clip_loss<double>{clipped}, set, in, clip_objective<double>(), {}, 1e-7);
        CHECK(r.inputs <= 1e-5);  // s = 100: curvature is large, h smaller, tolerance wider
        CHECK(r.parameters == 0.0);
    }
    SECTION("below the clip: the gradient flows") {
        const double theta = std::log(100.0) - uniform(rng, 0.5, 1.5);
        const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
        std::vector<double> dtheta;
        step(clip_loss<double>{clipped}, set, in, clip_objective<double>(), &dtheta);
        CHECK(dtheta.at(0) != 0.0);
        const auto r =
            gradcheck(clip_loss<double>{clipped}, set, in, clip_objective<double>(), {}, 1e-7);
        CHECK(r.parameters <= 1e-5);
    }
}

// ======================================================================= multi-positive

TEST_CASE("multi_positive_loss matches the reference and central differences",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(4);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const tensor<bool> pi = class_mask(rng, B, 2);
    const double theta = uniform(rng, 1.0, 3.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    for (const auto red : {symmetric_reduction::mean, symmetric_reduction::sum}) {
        INFO("reduction " << int(red));
        const multi_positive_loss<double> head({}, red);
        const double l = loss_at(head, set, in, multi_positive_objective<double>(pi));
        CHECK(std::abs(l - multi_positive_reference(in[0], in[1], std::exp(theta), pi,
                                                    direction_weight(red))) <= 1e-12);
        const auto r = gradcheck(head, set, in, multi_positive_objective<double>(pi));
        CHECK(r.inputs <= fd_tol);
        CHECK(r.parameters <= fd_tol);
        CHECK(r.largest_gradient > 1e-3);
    }
}

TEST_CASE("multi_positive_loss with an asymmetric mask and an empty row",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(5);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    tensor<bool> pi(extents{B, B});
    for (index_t k = 0; k < B * B; ++k)
        pi[k] = rng() % 3 == 0;
    for (index_t j = 0; j < B; ++j)
        pi[j] = false;  // image 0 has no positive: its row contributes 0
    pi[B + 0] = true;   // text 0 still has one (image 1)
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", 2.0}};
    const double l =
        loss_at(multi_positive_loss<double>{}, set, in, multi_positive_objective<double>(pi));
    CHECK(std::abs(l - multi_positive_reference(in[0], in[1], std::exp(2.0), pi, 0.5)) <= 1e-12);
    const auto r =
        gradcheck(multi_positive_loss<double>{}, set, in, multi_positive_objective<double>(pi));
    CHECK(r.inputs <= fd_tol);
    CHECK(r.parameters <= fd_tol);
}

TEST_CASE("multi_positive_loss with the identity mask is clip_loss", "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(6);
    const auto [B, D] = batch_shape(rng);
    const std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    tensor<bool> eye(extents{B, B});
    for (index_t i = 0; i < B; ++i)
        eye[i * B + i] = true;
    const std::vector<std::pair<std::string, double>> set{
        {"heads.logit_scale", uniform(rng, 1, 4)}};
    std::vector<double> pa, pb;
    const auto a =
        step(multi_positive_loss<double>{}, set, in, multi_positive_objective<double>(eye), &pa);
    const auto b = step(clip_loss<double>{}, set, in, clip_objective<double>(), &pb);
    CHECK(std::abs(a.first - b.first) <= 1e-13);
    for (size_t t = 0; t < 2; ++t)
        CHECK(max_abs_diff(a.second[t], b.second[t]) <= 1e-13);
    CHECK(std::abs(pa.at(0) - pb.at(0)) <= 1e-13);
}

// ======================================================================= NegCLIP

TEST_CASE("negclip_loss matches the reference and central differences, hard negatives included",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(7);
    const auto [B, D] = batch_shape(rng);
    const double theta = uniform(rng, 1.0, 3.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    for (const index_t n : {B, 1 + index_t(rng() % 5)}) {
        INFO("hard negatives " << n);
        std::vector<tensor<double>> in =
            list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D),
                 unit_rows<double>(rng, n, D));
        const double l = loss_at(negclip_loss<double>{}, set, in, negclip_objective<double>());
        CHECK(std::abs(l - negclip_reference(in[0], in[1], in[2], std::exp(theta))) <= 1e-12);
        const auto r = gradcheck(negclip_loss<double>{}, set, in, negclip_objective<double>());
        CHECK(r.inputs <= fd_tol);
        CHECK(r.parameters <= fd_tol);
        CHECK(r.largest_gradient > 1e-3);
    }
}

TEST_CASE("negclip_loss without hard negatives is clip_loss", "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(8);
    const auto [B, D] = batch_shape(rng);
    const std::vector<tensor<double>> in = list(
        unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D), tensor<double>(extents{0, D}));
    const std::vector<std::pair<std::string, double>> set{
        {"heads.logit_scale", uniform(rng, 1, 4)}};
    std::vector<double> pa, pb;
    const auto a = step(negclip_loss<double>{}, set, in, negclip_objective<double>(), &pa);
    const auto b = step(clip_loss<double>{}, set, list(in[0].clone(), in[1].clone()),
                        clip_objective<double>(), &pb);
    REQUIRE(a.second.size() == 2);
    CHECK(std::abs(a.first - b.first) <= 1e-13);
    for (size_t t = 0; t < 2; ++t)
        CHECK(max_abs_diff(a.second[t], b.second[t]) <= 1e-13);
    CHECK(std::abs(pa.at(0) - pb.at(0)) <= 1e-13);
    // An empty view `{}` is N = 0 as well.
    std::vector<double> pc;
    const auto c = step(negclip_loss<double>{}, set, list(in[0].clone(), in[1].clone()),
                        negclip_objective<double>(), &pc);
    REQUIRE(c.second.size() == 2);
    CHECK(std::abs(c.first - b.first) <= 1e-13);
    for (size_t t = 0; t < 2; ++t)
        CHECK(max_abs_diff(c.second[t], b.second[t]) <= 1e-13);
    CHECK(std::abs(pc.at(0) - pb.at(0)) <= 1e-13);
}

TEST_CASE("a fixed scale is exactly the given s and has no parameter",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(23);
    for (const double s : {5.0, 10.0, 20.0, 100.0, uniform(rng, 1.0, 200.0)}) {
        CAPTURE(s);
        const contrastive::logit_scale<float> fixed(bound_modality::fixed("audio", s).scale);
        CHECK(fixed.scale() == s);
        CHECK(fixed.log_scale() == std::log(s));
    }
    binding_loss<double> head({bound_modality::fixed("audio", 20.0)});
    nn::model<under<binding_loss<double>>> m(under<binding_loss<double>>{std::move(head)}, 1);
    CHECK(m.find("heads.audio.logit_scale") == nullptr);
    CHECK(m.net().head.logit_scale(0).scale() == 20.0);
}

// ======================================================================= HN-NCE and DCL

TEST_CASE("hn_nce_loss matches the reference and central differences in both conventions",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(9);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double theta = uniform(rng, 1.0, 2.5);
    const double alpha = uniform(rng, 0.0, 1.5), beta = uniform(rng, 0.1, 1.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    for (const auto red : {symmetric_reduction::mean, symmetric_reduction::sum})
        for (const auto weights : {hn_weights::in_graph, hn_weights::detached}) {
            INFO("reduction " << int(red) << " weights " << int(weights) << " alpha " << alpha
                              << " beta " << beta);
            const hn_nce_loss<double> head({alpha, beta, weights, red});
            const double wdir = direction_weight(red);
            const double l = loss_at(head, set, in, hn_nce_objective<double>());
            CHECK(std::abs(l - hn_nce_reference(in[0], in[1], std::exp(theta), alpha, beta,
                                                wdir)) <= 1e-12);
            std::function<double(nn::model<under<hn_nce_loss<double>>>&)> fd{};
            std::pair<mat, mat> frozen;
            if (weights == hn_weights::detached) {
                // Differentiate the reference with the weights frozen at the current point.
                const mat L = logits(in[0], in[1], std::exp(theta));
                frozen = {hn_weights_of(L, beta), hn_weights_of(transposed(L), beta)};
                fd = [&](nn::model<under<hn_nce_loss<double>>>& m) {
                    const double s = std::exp(m.find("heads.logit_scale")->value.data()[0]);
                    return hn_nce_reference(in[0], in[1], s, alpha, beta, wdir, &frozen);
                };
            }
            const auto r = gradcheck(head, set, in, hn_nce_objective<double>(), fd);
            CHECK(r.inputs <= fd_tol);
            CHECK(r.parameters <= fd_tol);
            CHECK(r.largest_gradient > 1e-3);
        }
}

TEST_CASE("the two hn_nce weight conventions give different gradients for beta != 0",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(10);
    const auto [B, D] = batch_shape(rng);
    const std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", 2.5}};
    const auto a = step(hn_nce_loss<double>({1.0, 0.5, hn_weights::in_graph}), set, in,
                        hn_nce_objective<double>());
    const auto b = step(hn_nce_loss<double>({1.0, 0.5, hn_weights::detached}), set, in,
                        hn_nce_objective<double>());
    CHECK(std::abs(a.first - b.first) <= 1e-14);  // same value
    CHECK(max_abs_diff(a.second[0], b.second[0]) > 1e-6);
}

TEST_CASE("hn_nce_loss with alpha 1 and beta 0 is clip_loss, sum is twice mean",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(11);
    const auto [B, D] = batch_shape(rng);
    const std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const std::vector<std::pair<std::string, double>> set{
        {"heads.logit_scale", uniform(rng, 1, 4)}};
    std::vector<double> pc;
    const auto c = step(clip_loss<double>{}, set, in, clip_objective<double>(), &pc);
    for (const auto weights : {hn_weights::in_graph, hn_weights::detached}) {
        std::vector<double> ph, ps;
        const auto h = step(hn_nce_loss<double>({1.0, 0.0, weights}), set, in,
                            hn_nce_objective<double>(), &ph);
        CHECK(std::abs(h.first - c.first) <= 1e-13);
        for (size_t t = 0; t < 2; ++t)
            CHECK(max_abs_diff(h.second[t], c.second[t]) <= 1e-13);
        CHECK(std::abs(ph.at(0) - pc.at(0)) <= 1e-13);
        const auto s = step(hn_nce_loss<double>({1.0, 0.0, weights, symmetric_reduction::sum}), set,
                            in, hn_nce_objective<double>(), &ps);
        CHECK(std::abs(s.first - 2 * c.first) <= 1e-13);
        CHECK(max_abs_diff(s.second[0], h.second[0]) > 0.0);
        CHECK(std::abs(ps.at(0) - 2 * pc.at(0)) <= 1e-13);
    }
}

TEST_CASE("dcl_options give the decoupled loss with the positive out of the denominator",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(12);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double theta = uniform(rng, 1.0, 3.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    for (const auto red : {symmetric_reduction::mean, symmetric_reduction::sum}) {
        const hn_nce_loss<double> head(dcl_options(red));
        const double l = loss_at(head, set, in, hn_nce_objective<double>());
        CHECK(std::abs(l - dcl_reference(in[0], in[1], std::exp(theta), direction_weight(red))) <=
              1e-12);
        const auto r = gradcheck(head, set, in, hn_nce_objective<double>());
        CHECK(r.inputs <= fd_tol);
        CHECK(r.parameters <= fd_tol);
    }
}

// ======================================================================= distillation

TEST_CASE("distill_clip_loss matches open_clip's equations and central differences",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(13);
    const auto [B, D] = batch_shape(rng);
    const index_t Dt = 2 + index_t(rng() % 6);  // the teacher's own width
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D),
             unit_rows<double>(rng, B, Dt), unit_rows<double>(rng, B, Dt));
    const double theta = uniform(rng, 1.0, 3.0), st = uniform(rng, 5.0, 50.0);
    nn::model<under<distill_clip_loss<double>>> m(
        under<distill_clip_loss<double>>{distill_clip_loss<double>{}}, 1);
    m.find("heads.logit_scale")->value.data()[0] = theta;
    workspace ws;
    ws.reset();
    nn::step_context<double> cx{&backend::default_stream(), &ws.arena, false};
    const distill_losses got =
        m.net().head.forward(cx, in[0].cref(), in[1].cref(), in[2].cref(), in[3].cref(), st);
    const distill_losses ref = distill_reference(in[0], in[1], in[2], in[3], std::exp(theta), st);
    CHECK(std::abs(got.contrastive - ref.contrastive) <= 1e-12);
    CHECK(std::abs(got.distill - ref.distill) <= 1e-12);
    CHECK(std::abs(got.total() - (ref.contrastive + ref.distill)) <= 2e-12);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", theta}};
    const auto r = gradcheck(distill_clip_loss<double>{}, set, in, distill_objective<double>(st));
    CHECK(r.inputs <= fd_tol);
    CHECK(r.parameters <= fd_tol);
    CHECK(r.largest_gradient > 1e-3);
}

TEST_CASE("distill_clip_loss with the student as its own teacher gives clip_loss plus the entropy",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(14);
    const auto [B, D] = batch_shape(rng);
    const tensor<double> I = unit_rows<double>(rng, B, D), T = unit_rows<double>(rng, B, D);
    const double theta = uniform(rng, 1.0, 4.0), s = std::exp(theta);
    nn::model<under<distill_clip_loss<double>>> m(
        under<distill_clip_loss<double>>{distill_clip_loss<double>{}}, 1);
    m.find("heads.logit_scale")->value.data()[0] = theta;
    workspace ws;
    ws.reset();
    nn::step_context<double> cx{&backend::default_stream(), &ws.arena, true};
    const distill_losses got = m.net().head.forward(cx, I.cref(), T.cref(), I.cref(), T.cref(), s);
    // Entropy of P (rows) and Q (columns), written out.
    const mat L = logits(I, T, s);
    double entropy = 0.0;
    for (const mat& M : {L, transposed(L)})
        for (const auto& row : M) {
            const double z = lse(row);
            for (const double v : row)
                entropy -= std::exp(v - z) * (v - z);
        }
    entropy /= 2.0 * double(B);
    CHECK(std::abs(got.contrastive - clip_reference(I, T, s)) <= 1e-12);
    CHECK(std::abs(got.distill - entropy) <= 1e-12);
    // The distillation gradient at teacher == student is 0: the gradient is CLIP's.
    const auto g = m.net().head.backward(cx);
    const auto c = step(clip_loss<double>{}, {{"heads.logit_scale", theta}},
                        list(I.clone(), T.clone()), clip_objective<double>());
    CHECK(max_abs_diff(values(g.da), c.second[0]) <= 1e-13);
    CHECK(max_abs_diff(values(g.db), c.second[1]) <= 1e-13);
}

// ======================================================================= ImageBind binding

namespace {
std::vector<bound_modality> imagebind_like() {
    return {bound_modality::clipped("text"), bound_modality::fixed("audio", 20.0),
            bound_modality::fixed("depth", 5.0),
            bound_modality{"tactile", {.init = std::log(8.0)}}};  // learnable, open_clip clamp
}
}  // namespace

TEST_CASE("binding_loss sums per-modality CLIP losses with their own scales",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(15);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in;
    for (int k = 0; k < 5; ++k)
        in.push_back(unit_rows<double>(rng, B, D));
    const double text_theta = uniform(rng, 1.5, 3.0), tactile_theta = uniform(rng, 1.0, 2.5);
    const std::vector<std::pair<std::string, double>> set{
        {"heads.text.logit_scale", text_theta}, {"heads.tactile.logit_scale", tactile_theta}};
    {
        nn::model<under<binding_loss<double>>> m(
            under<binding_loss<double>>{binding_loss<double>(imagebind_like())}, 1);
        std::vector<std::string> names;
        for (const auto& p : m.parameter_index())
            names.push_back(p.name);
        CHECK(names ==
              std::vector<std::string>{"heads.text.logit_scale", "heads.tactile.logit_scale"});
    }
    const double scales[] = {std::exp(text_theta), 20.0, 5.0, std::exp(tactile_theta)};
    for (const auto red : {symmetric_reduction::sum, symmetric_reduction::mean}) {
        INFO("reduction " << int(red));
        const binding_loss<double> head(imagebind_like(), red);
        double ref = 0.0;
        for (int k = 0; k < 4; ++k)
            ref +=
                2.0 * direction_weight(red) * clip_reference(in[0], in[size_t(k + 1)], scales[k]);
        const double l = loss_at(head, set, in, binding_objective<double>());
        CHECK(std::abs(l - ref) <= 1e-11);
        const auto r = gradcheck(head, set, in, binding_objective<double>(), {}, 1e-7);
        CHECK(r.inputs <= 1e-5);  // audio at s = 20
        CHECK(r.parameters <= 1e-5);
        CHECK(r.largest_gradient > 1e-3);
    }
}

TEST_CASE("binding_loss: a saturated clipped scale gets zero gradient, one modality is CLIP",
          "[contrastive][objectives][gradcheck]") {
    auto rng = mmfuse_test::make_rng(16);
    const auto [B, D] = batch_shape(rng);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    SECTION("text at theta > ln 100") {
        const binding_loss<double> head({bound_modality::clipped("text")});
        const std::vector<std::pair<std::string, double>> set{
            {"heads.text.logit_scale", std::log(100.0) + uniform(rng, 0.1, 1.0)}};
        std::vector<double> dtheta;
        const auto [l, g] = step(head, set, in, binding_objective<double>(), &dtheta);
        CHECK(std::abs(l - 2.0 * clip_reference(in[0], in[1], 100.0)) <= 1e-11);
        CHECK(dtheta.at(0) == 0.0);
        const auto r = gradcheck(head, set, in, binding_objective<double>(), {}, 1e-7);
        CHECK(r.inputs <= 1e-5);
        CHECK(r.parameters == 0.0);
    }
    SECTION("one modality, mean: clip_loss; sum: twice clip_loss") {
        const double theta = uniform(rng, 1, 4);
        std::vector<double> pc, pm, ps;
        const auto c = step(clip_loss<double>{}, {{"heads.logit_scale", theta}}, in,
                            clip_objective<double>(), &pc);
        const auto mean =
            step(binding_loss<double>({{"text", {}}}, symmetric_reduction::mean),
                 {{"heads.text.logit_scale", theta}}, in, binding_objective<double>(), &pm);
        const auto sum =
            step(binding_loss<double>({{"text", {}}}, symmetric_reduction::sum),
                 {{"heads.text.logit_scale", theta}}, in, binding_objective<double>(), &ps);
        CHECK(std::abs(mean.first - c.first) <= 1e-13);
        CHECK(std::abs(sum.first - 2 * c.first) <= 1e-13);
        for (size_t t = 0; t < 2; ++t)
            CHECK(max_abs_diff(mean.second[t], c.second[t]) <= 1e-13);
        CHECK(std::abs(pm.at(0) - pc.at(0)) <= 1e-13);
        CHECK(std::abs(ps.at(0) - 2 * pc.at(0)) <= 1e-13);
    }
}

// ======================================================================= float32, clamp, errors

namespace {
/// Loss and gradients of a float head and its double twin at the same inputs and theta,
/// compared: the float loss within 1e-4 relative, every gradient finite and within 1e-3 of
/// the largest double gradient.
template <template <compute_type> class Head, class MakeObjective, class... Args>
void float_close_to_double(const std::vector<tensor<double>>& in,
                           const std::vector<std::pair<std::string, double>>& set,
                           MakeObjective make, Args... args) {
    std::vector<tensor<float>> inf;
    for (const auto& t : in)
        inf.push_back(cast<float>(t));
    std::vector<double> pf, pd;
    const auto f = step(Head<float>(args...), set, inf, make.template operator()<float>(), &pf);
    const auto d = step(Head<double>(args...), set, in, make.template operator()<double>(), &pd);
    REQUIRE(std::isfinite(f.first));
    CHECK(std::abs(f.first - d.first) <= 1e-4 * std::max(1.0, std::abs(d.first)));
    REQUIRE(f.second.size() == d.second.size());
    for (size_t t = 0; t < f.second.size(); ++t) {
        double largest = 0.0;
        for (const double v : d.second[t])
            largest = std::max(largest, std::abs(v));
        for (const double v : f.second[t])
            REQUIRE(std::isfinite(v));
        CHECK(max_abs_diff(f.second[t], d.second[t]) <= 1e-3 * std::max(largest, 1e-3));
    }
    REQUIRE(pf.size() == pd.size());
    for (size_t k = 0; k < pf.size(); ++k) {
        REQUIRE(std::isfinite(pf[k]));
        CHECK(std::abs(pf[k] - pd[k]) <= 1e-3 * std::max(1.0, std::abs(pd[k])));
    }
}
}  // namespace

TEST_CASE("float32 at scale 100 stays finite and close to double for every objective",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(17);
    const index_t B = 8 + index_t(rng() % 9), D = 16 + index_t(rng() % 17);
    std::vector<tensor<double>> in =
        list(unit_rows<double>(rng, B, D), unit_rows<double>(rng, B, D));
    const double ln100 = std::log(100.0);
    const std::vector<std::pair<std::string, double>> set{{"heads.logit_scale", ln100}};
    SECTION("clip") {
        float_close_to_double<clip_loss>(in, set, []<class T>() { return clip_objective<T>(); });
    }
    SECTION("siglip") {
        float_close_to_double<siglip_loss>(
            in, {{"heads.logit_scale", ln100}, {"heads.logit_bias", -10.0}},
            []<class T>() { return siglip_objective<T>(); });
    }
    SECTION("multi-positive") {
        const tensor<bool> pi = class_mask(rng, B, 3);
        float_close_to_double<multi_positive_loss>(
            in, set, [&pi]<class T>() { return multi_positive_objective<T>(pi); });
    }
    SECTION("negclip") {
        in.push_back(unit_rows<double>(rng, B, D));
        float_close_to_double<negclip_loss>(in, set,
                                            []<class T>() { return negclip_objective<T>(); });
    }
    SECTION("hn-nce") {
        for (const auto w : {hn_weights::in_graph, hn_weights::detached})
            float_close_to_double<hn_nce_loss>(
                in, set, []<class T>() { return hn_nce_objective<T>(); },
                hn_nce_options{0.5, 0.5, w});
    }
    SECTION("distill") {
        in.push_back(unit_rows<double>(rng, B, 12));
        in.push_back(unit_rows<double>(rng, B, 12));
        float_close_to_double<distill_clip_loss>(
            in, set, []<class T>() { return distill_objective<T>(100.0); });
    }
    SECTION("binding") {
        in.push_back(unit_rows<double>(rng, B, D));
        float_close_to_double<binding_loss>(
            in, {{"heads.text.logit_scale", ln100}},
            []<class T>() { return binding_objective<T>(); },
            std::vector<bound_modality>{bound_modality::clipped("text"),
                                        bound_modality::fixed("audio", 100.0)},
            symmetric_reduction::sum);
    }
}

namespace {
/// clamp() of a head whose theta is parameter `name`: above ln 100 -> ln 100, below 0 -> 0,
/// inside unchanged.
template <class H>
void check_clamp(H head, const std::string& name, std::mt19937_64& rng) {
    nn::model<under<H>> m(under<H>{std::move(head)}, 1);
    double& theta = m.find(name)->value.data()[0];
    theta = std::log(100.0) + uniform(rng, 0.01, 3.0);
    m.net().head.clamp();
    CHECK(theta == std::log(100.0));
    theta = -uniform(rng, 0.01, 3.0);
    m.net().head.clamp();
    CHECK(theta == 0.0);
    const double inside = uniform(rng, 0.1, 4.5);
    theta = inside;
    m.net().head.clamp();
    CHECK(theta == inside);
}
}  // namespace

TEST_CASE("clamp projects theta onto the interval from 0 to ln 100 for every objective",
          "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(18);
    check_clamp(clip_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(siglip_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(multi_positive_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(negclip_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(hn_nce_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(distill_clip_loss<double>{}, "heads.logit_scale", rng);
    check_clamp(binding_loss<double>(std::vector<bound_modality>{{"text", {}}}),
                "heads.text.logit_scale", rng);
    // A scale clipped in the forward is never projected.
    nn::model<under<binding_loss<double>>> m(
        under<binding_loss<double>>{
            binding_loss<double>(std::vector<bound_modality>{bound_modality::clipped("text")})},
        1);
    double& theta = m.find("heads.text.logit_scale")->value.data()[0];
    theta = 7.0;
    m.net().head.clamp();
    CHECK(theta == 7.0);
}

namespace {
/// Runs `call` and requires an error of type E whose message names the module "heads" and
/// contains `fragment`.
template <class E, class F>
void expect_error(F call, const std::string& fragment) {
    try {
        call();
        FAIL("no error thrown");
    } catch (const E& e) {
        const std::string what = e.what();
        INFO(what);
        CHECK(what.find("'heads'") != std::string::npos);
        CHECK(what.find(fragment) != std::string::npos);
    }
}
}  // namespace

TEST_CASE("shape errors of the objectives name the module", "[contrastive][objectives]") {
    auto rng = mmfuse_test::make_rng(19);
    const tensor<double> a = unit_rows<double>(rng, 4, 3), b3 = unit_rows<double>(rng, 3, 3),
                         w5 = unit_rows<double>(rng, 4, 5);
    workspace ws;
    ws.reset();
    nn::step_context<double> cx{&backend::default_stream(), &ws.arena, true};
    SECTION("siglip positives") {
        nn::model<under<siglip_loss<double>>> m(under<siglip_loss<double>>{siglip_loss<double>{}},
                                                1);
        const tensor<bool> pi(extents{3, 4});
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), a.cref(), pi.cref()); },
                                  "siglip_loss positives");
    }
    SECTION("multi-positive") {
        nn::model<under<multi_positive_loss<double>>> m(
            under<multi_positive_loss<double>>{multi_positive_loss<double>{}}, 1);
        const tensor<bool> pi(extents{4, 3});
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), a.cref(), pi.cref()); },
                                  "multi_positive_loss positives");
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), b3.cref(), pi.cref()); },
                                  "multi_positive_loss embeddings");
    }
    SECTION("negclip") {
        nn::model<under<negclip_loss<double>>> m(
            under<negclip_loss<double>>{negclip_loss<double>{}}, 1);
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), a.cref(), w5.cref()); },
                                  "negclip_loss hard_negatives");
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), w5.cref(), a.cref()); },
                                  "negclip_loss embeddings");
    }
    SECTION("hn-nce") {
        nn::model<under<hn_nce_loss<double>>> m(under<hn_nce_loss<double>>{hn_nce_loss<double>{}},
                                                1);
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), b3.cref()); },
                                  "hn_nce_loss");
        const tensor<double> one = unit_rows<double>(rng, 1, 3);
        expect_error<shape_error>([&] { m.net().head.forward(cx, one.cref(), one.cref()); },
                                  "B >= 2");
        CHECK_THROWS_AS(hn_nce_loss<double>({-0.5, 0.0}), value_error);
        CHECK_THROWS_AS(hn_nce_loss<double>({1.0, std::nan("")}), value_error);
    }
    SECTION("distill") {
        nn::model<under<distill_clip_loss<double>>> m(
            under<distill_clip_loss<double>>{distill_clip_loss<double>{}}, 1);
        expect_error<shape_error>(
            [&] { m.net().head.forward(cx, a.cref(), a.cref(), b3.cref(), b3.cref(), 10.0); },
            "distill_clip_loss teacher embeddings");
        expect_error<shape_error>(
            [&] { m.net().head.forward(cx, a.cref(), a.cref(), w5.cref(), a.cref(), 10.0); },
            "distill_clip_loss teacher");
        expect_error<value_error>(
            [&] { m.net().head.forward(cx, a.cref(), a.cref(), a.cref(), a.cref(), -1.0); },
            "teacher_scale");
    }
    SECTION("binding") {
        nn::model<under<binding_loss<double>>> m(
            under<binding_loss<double>>{binding_loss<double>({{"text", {}}, {"audio", {}}})}, 1);
        expect_error<shape_error>([&] { m.net().head.forward(cx, a.cref(), {a.cref()}); },
                                  "binding_loss modalities");
        expect_error<shape_error>(
            [&] {
                m.net().head.forward(cx, a.cref(), {a.cref(), b3.cref()});
            },
            "(anchor, audio)");
        CHECK_THROWS_AS(binding_loss<double>({{"text", {}}, {"text", {}}}), value_error);
        CHECK_THROWS_AS(binding_loss<double>(std::vector<bound_modality>{{"a.b", {}}}),
                        value_error);
        CHECK_THROWS_AS(binding_loss<double>(std::vector<bound_modality>{}), value_error);
    }
    SECTION("backward before a training forward") {
        nn::model<under<hn_nce_loss<double>>> m(under<hn_nce_loss<double>>{hn_nce_loss<double>{}},
                                                1);
        expect_error<shape_error>([&] { m.net().head.backward(cx); }, "backward");
    }
}
