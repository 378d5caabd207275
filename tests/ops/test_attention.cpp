// Fused attention (ops::attention, ops::attention_backward) on the Eigen reference backend:
// forward against double-precision loops (f32, f64) with no mask, broadcast key-padding
// masks, random masks with fully masked rows, causal offsets 0, Lk - Lq and negative, Lq != Lk,
// D != Dv, in strided layouts and with heads split out of packed projections; backward
// against a double-loop reference in the same settings and against central finite
// differences (f64); both against PyTorch's scaled_dot_product_attention fixtures
// (tests/data/golden/attention, tools/golden/make_attention_fixtures.py); and the front-ends'
// errors.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/ops/attention.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using mmfuse_test::bernoulli_values;
using mmfuse_test::layout;
using mmfuse_test::strided_operand;
using mmfuse_test::uniform_values;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

/// Which keep-mask a case uses.
enum class mask_kind {
    none,
    key_padding,          ///< (B, 1, 1, Lk), each batch keeping a random prefix of >= 1 key
    key_padding_expanded, ///< the same passed as a stride-0 (B, H, Lq, Lk) view
    random_full,          ///< (B, H, Lq, Lk) Bernoulli(0.6), the first query row of every head
                          ///< fully masked
    query_key,            ///< (Lq, Lk) Bernoulli(0.7), shared by every batch and head
};

const char* mask_name(mask_kind m) {
    switch (m) {
        case mask_kind::none:
            return "none";
        case mask_kind::key_padding:
            return "key padding (B, 1, 1, Lk)";
        case mask_kind::key_padding_expanded:
            return "key padding expanded (stride 0)";
        case mask_kind::random_full:
            return "random (B, H, Lq, Lk) with fully masked rows";
        case mask_kind::query_key:
            return "random (Lq, Lk)";
    }
    return "?";
}

/// One attention problem: sizes, descriptor and mask.
struct attn_case {
    index_t b, h, lq, lk, d, dv;
    double scale;
    bool causal;
    index_t offset;
    mask_kind mask;

    extents q_extents() const { return {b, h, lq, d}; }
    extents k_extents() const { return {b, h, lk, d}; }
    extents v_extents() const { return {b, h, lk, dv}; }
    extents o_extents() const { return {b, h, lq, dv}; }
    extents lse_extents() const { return {b, h, lq}; }
    extents score_extents() const { return {b, h, lq, lk}; }
    ops::attention_desc desc() const { return {scale, causal, offset, false}; }
};

std::ostream& operator<<(std::ostream& os, const attn_case& c) {
    return os << "B " << c.b << " H " << c.h << " Lq " << c.lq << " Lk " << c.lk << " D " << c.d
              << " Dv " << c.dv << " scale " << c.scale << " causal " << c.causal << " offset "
              << c.offset << " mask " << mask_name(c.mask);
}

/// The cases of the forward and backward sweeps.
const std::vector<attn_case> sweep = {
    {2, 3, 5, 5, 4, 4, 0.5, false, 0, mask_kind::none},
    {2, 2, 4, 7, 8, 3, 0.35, false, 0, mask_kind::none},  // Lq != Lk, D != Dv
    {2, 2, 6, 5, 3, 5, 1.0, false, 0, mask_kind::key_padding},
    {3, 2, 3, 6, 4, 2, 0.8, false, 0, mask_kind::key_padding_expanded},
    {1, 3, 5, 6, 4, 2, 0.7, false, 0, mask_kind::random_full},
    {2, 1, 4, 7, 5, 3, 0.4, true, 0, mask_kind::none},     // top-left causal
    {2, 2, 4, 7, 5, 3, 0.4, true, 3, mask_kind::none},     // bottom-right: Lk - Lq
    {2, 2, 7, 4, 3, 3, 0.6, true, -2, mask_kind::key_padding},  // rows 0, 1 fully masked
    {1, 2, 6, 6, 4, 4, 0.5, true, 0, mask_kind::random_full},
    {1, 2, 5, 3, 2, 3, 1.3, true, -1, mask_kind::random_full},
    {2, 3, 4, 6, 3, 4, 0.9, false, 0, mask_kind::query_key},
    {2, 2, 5, 5, 3, 2, 0.6, true, 0, mask_kind::query_key},
    {1, 2, 3, 0, 4, 2, 0.5, false, 0, mask_kind::none},  // no keys at all: every row masked
};

/// Logical values of a keep-mask for case `c`: the stored mask (in its own extents) and the
/// same broadcast to (B, H, Lq, Lk).
struct mask_values {
    extents stored;
    std::vector<double> values;  ///< of `stored`
};

mask_values make_mask(const attn_case& c, std::mt19937_64& rng) {
    switch (c.mask) {
        case mask_kind::none:
            return {{}, {}};
        case mask_kind::key_padding:
        case mask_kind::key_padding_expanded: {
            std::vector<double> v(std::size_t(c.b * c.lk), 0.0);
            for (index_t b = 0; b < c.b; ++b) {
                const index_t len = 1 + index_t(rng() % std::uint64_t(std::max<index_t>(c.lk, 1)));
                for (index_t j = 0; j < std::min(len, c.lk); ++j)
                    v[std::size_t(b * c.lk + j)] = 1.0;
            }
            return {{c.b, 1, 1, c.lk}, v};
        }
        case mask_kind::random_full: {
            auto v = bernoulli_values(rng, c.score_extents().numel(), 0.6);
            for (index_t bh = 0; bh < c.b * c.h; ++bh)
                for (index_t j = 0; j < c.lk; ++j)
                    v[std::size_t(bh * c.lq * c.lk + j)] = 0.0;  // query row 0 fully masked
            return {c.score_extents(), v};
        }
        case mask_kind::query_key:
            return {{c.lq, c.lk}, bernoulli_values(rng, c.lq * c.lk, 0.7)};
    }
    return {{}, {}};
}

/// `m` (stored extents) broadcast to (B, H, Lq, Lk), row-major; empty when there is no mask.
std::vector<double> full_mask(const attn_case& c, const mask_values& m) {
    if (m.values.empty()) return {};
    std::vector<double> full(std::size_t(c.score_extents().numel()));
    for (index_t b = 0; b < c.b; ++b)
        for (index_t h = 0; h < c.h; ++h)
            for (index_t i = 0; i < c.lq; ++i)
                for (index_t j = 0; j < c.lk; ++j) {
                    const index_t full_at = ((b * c.h + h) * c.lq + i) * c.lk + j;
                    const index_t stored_at = m.stored.rank() == 2 ? i * c.lk + j
                                              : m.stored[1] == 1  ? b * c.lk + j
                                                                  : full_at;
                    full[std::size_t(full_at)] = m.values[std::size_t(stored_at)];
                }
    return full;
}

/// Reference forward by direct double loops over row-major values: o, lse and the
/// probabilities P (B, H, Lq, Lk) (0 where masked; a fully masked row is all 0, o = 0,
/// lse = -inf).
struct reference_result {
    std::vector<double> o, lse, p;
};

reference_result reference_forward(const attn_case& c, const std::vector<double>& q,
                                   const std::vector<double>& k, const std::vector<double>& v,
                                   const std::vector<double>& keep) {
    reference_result r;
    r.o.assign(std::size_t(c.o_extents().numel()), 0.0);
    r.lse.assign(std::size_t(c.lse_extents().numel()), -inf);
    r.p.assign(std::size_t(c.score_extents().numel()), 0.0);
    const auto at = [](index_t row, index_t width, index_t col) {
        return std::size_t(row * width + col);
    };
    for (index_t bh = 0; bh < c.b * c.h; ++bh)
        for (index_t i = 0; i < c.lq; ++i) {
            const index_t qi = bh * c.lq + i;
            std::vector<double> s(std::size_t(c.lk), -inf);
            for (index_t j = 0; j < c.lk; ++j) {
                const bool kept = (keep.empty() || keep[at(qi, c.lk, j)] != 0.0) &&
                                  (!c.causal || j <= i + c.offset);
                if (!kept) continue;
                double dot = 0.0;
                for (index_t x = 0; x < c.d; ++x)
                    dot += q[at(qi, c.d, x)] * k[at(bh * c.lk + j, c.d, x)];
                s[std::size_t(j)] = c.scale * dot;
            }
            double mx = -inf;
            for (double x : s)
                mx = std::max(mx, x);
            if (mx == -inf) continue;
            double sum = 0.0;
            for (double x : s)
                sum += std::exp(x - mx);
            r.lse[std::size_t(qi)] = mx + std::log(sum);
            for (index_t j = 0; j < c.lk; ++j) {
                const double pj = std::exp(s[std::size_t(j)] - mx) / sum;
                r.p[at(qi, c.lk, j)] = pj;
                for (index_t x = 0; x < c.dv; ++x)
                    r.o[at(qi, c.dv, x)] += pj * v[at(bh * c.lk + j, c.dv, x)];
            }
        }
    return r;
}

/// Reference backward from the reference probabilities, with full matrices:
/// dP = dO V^T, dS = P * (dP - sum_j P dP), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
struct reference_grads {
    std::vector<double> dq, dk, dv;
};

reference_grads reference_backward(const attn_case& c, const std::vector<double>& q,
                                   const std::vector<double>& k, const std::vector<double>& v,
                                   const std::vector<double>& p, const std::vector<double>& dout) {
    reference_grads g{std::vector<double>(q.size(), 0.0), std::vector<double>(k.size(), 0.0),
                      std::vector<double>(v.size(), 0.0)};
    const auto at = [](index_t row, index_t width, index_t col) {
        return std::size_t(row * width + col);
    };
    for (index_t bh = 0; bh < c.b * c.h; ++bh)
        for (index_t i = 0; i < c.lq; ++i) {
            const index_t qi = bh * c.lq + i;
            std::vector<double> dp(std::size_t(c.lk), 0.0);
            double row = 0.0;
            for (index_t j = 0; j < c.lk; ++j) {
                for (index_t x = 0; x < c.dv; ++x)
                    dp[std::size_t(j)] += dout[at(qi, c.dv, x)] * v[at(bh * c.lk + j, c.dv, x)];
                row += p[at(qi, c.lk, j)] * dp[std::size_t(j)];
            }
            for (index_t j = 0; j < c.lk; ++j) {
                const index_t kj = bh * c.lk + j;
                const double pij = p[at(qi, c.lk, j)];
                const double ds = pij * (dp[std::size_t(j)] - row);
                for (index_t x = 0; x < c.d; ++x) {
                    g.dq[at(qi, c.d, x)] += c.scale * ds * k[at(kj, c.d, x)];
                    g.dk[at(kj, c.d, x)] += c.scale * ds * q[at(qi, c.d, x)];
                }
                for (index_t x = 0; x < c.dv; ++x)
                    g.dv[at(kj, c.dv, x)] += pij * dout[at(qi, c.dv, x)];
            }
        }
    return g;
}

/// max |got - ref| / max(1, |ref|) over lse values, where -inf must match -inf exactly
/// (anything else, NaN included, gives inf).
double lse_error(const std::vector<double>& got, const std::vector<double>& ref) {
    REQUIRE(got.size() == ref.size());
    double worst = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (ref[i] == -inf || got[i] == -inf) {
            if (got[i] != ref[i]) return inf;
            continue;
        }
        if (!std::isfinite(got[i])) return inf;
        worst = std::max(worst, std::abs(got[i] - ref[i]) / std::max(1.0, std::abs(ref[i])));
    }
    return worst;
}

/// The keep-mask operand of case `c` as the front-end gets it: empty, the stored mask, or the
/// stored mask expanded to (B, H, Lq, Lk) with stride 0.
tensor_ref<const bool> keep_arg(const attn_case& c, const strided_operand<bool>* m) {
    if (m == nullptr) return {};
    if (c.mask == mask_kind::key_padding_expanded) return m->cref().expand(c.score_extents());
    return m->cref();
}

}  // namespace

TEMPLATE_TEST_CASE("attention forward matches double loops for masks, causal offsets, layouts",
                   "[ops][attention]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(301);
    double worst_o = 0.0, worst_lse = 0.0;
    for (const attn_case& c : sweep)
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(c, mmfuse_test::layout_name(l));
            strided_operand<T> q(c.q_extents(), l), k(c.k_extents(), l), v(c.v_extents(), l);
            strided_operand<T> o(c.o_extents(), l), lse(c.lse_extents(), l);
            q.assign(uniform_values(rng, c.q_extents().numel(), -1.5, 1.5));
            k.assign(uniform_values(rng, c.k_extents().numel(), -1.5, 1.5));
            v.assign(uniform_values(rng, c.v_extents().numel(), -1.0, 1.0));
            o.poison();
            lse.poison();
            const mask_values mv = make_mask(c, rng);
            std::unique_ptr<strided_operand<bool>> m;
            if (!mv.values.empty()) {
                m = std::make_unique<strided_operand<bool>>(mv.stored, l);
                m->assign(mv.values);
            }
            ops::attention(s, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), c.desc(),
                           keep_arg(c, m.get()));
            const reference_result ref =
                reference_forward(c, q.values(), k.values(), v.values(), full_mask(c, mv));
            const auto got_o = o.values();
            const double eo = mmfuse_test::max_rel_error(got_o, ref.o);
            const double el = lse_error(lse.values(), ref.lse);
            worst_o = std::max(worst_o, eo);
            worst_lse = std::max(worst_lse, el);
            CHECK(eo <= mmfuse_test::tolerance<T>());
            CHECK(el <= mmfuse_test::tolerance<T>());
            // Fully masked rows: exact zeros (never NaN) and lse = -inf.
            const auto got_lse = lse.values();
            for (std::size_t r = 0; r < ref.lse.size(); ++r)
                if (ref.lse[r] == -inf)
                    for (index_t x = 0; x < c.dv; ++x)
                        REQUIRE(got_o[r * std::size_t(c.dv) + std::size_t(x)] == 0.0);
            CHECK(o.outside_intact());
            CHECK(lse.outside_intact());
        }
    INFO("worst relative error: o " << worst_o << ", lse " << worst_lse);
    CHECK(worst_o <= mmfuse_test::tolerance<T>());
}

TEMPLATE_TEST_CASE("attention backward matches double loops for masks, causal offsets, layouts",
                   "[ops][attention]", float, double) {
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(302);
    for (const attn_case& c : sweep)
        for (layout l : mmfuse_test::uniform_layouts) {
            CAPTURE(c, mmfuse_test::layout_name(l));
            strided_operand<T> q(c.q_extents(), l), k(c.k_extents(), l), v(c.v_extents(), l);
            strided_operand<T> o(c.o_extents(), l), lse(c.lse_extents(), l);
            strided_operand<T> dout(c.o_extents(), l);
            strided_operand<T> dq(c.q_extents(), l), dk(c.k_extents(), l), dv(c.v_extents(), l);
            q.assign(uniform_values(rng, c.q_extents().numel(), -1.5, 1.5));
            k.assign(uniform_values(rng, c.k_extents().numel(), -1.5, 1.5));
            v.assign(uniform_values(rng, c.v_extents().numel(), -1.0, 1.0));
            dout.assign(uniform_values(rng, c.o_extents().numel(), -1.0, 1.0));
            o.poison();
            lse.poison();
            dq.poison();
            dk.poison();
            dv.poison();
            const mask_values mv = make_mask(c, rng);
            std::unique_ptr<strided_operand<bool>> m;
            if (!mv.values.empty()) {
                m = std::make_unique<strided_operand<bool>>(mv.stored, l);
                m->assign(mv.values);
            }
            const tensor_ref<const bool> keep = keep_arg(c, m.get());
            ops::attention(s, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), c.desc(), keep);
            ops::attention_backward(s, q.cref(), k.cref(), v.cref(), o.cref(), dout.cref(),
                                    lse.cref(), dq.ref(), dk.ref(), dv.ref(), c.desc(), keep);
            const reference_result fwd =
                reference_forward(c, q.values(), k.values(), v.values(), full_mask(c, mv));
            const reference_grads ref =
                reference_backward(c, q.values(), k.values(), v.values(), fwd.p, dout.values());
            // Gradients are sums of up to Lk (Lq) products of O(1) terms: a few float ulps.
            const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
            CHECK(mmfuse_test::max_rel_error(dq.values(), ref.dq) <= tol);
            CHECK(mmfuse_test::max_rel_error(dk.values(), ref.dk) <= tol);
            CHECK(mmfuse_test::max_rel_error(dv.values(), ref.dv) <= tol);
            // Fully masked query rows get exactly zero dq.
            const auto got_dq = dq.values();
            for (std::size_t r = 0; r < fwd.lse.size(); ++r)
                if (fwd.lse[r] == -inf)
                    for (index_t x = 0; x < c.d; ++x)
                        REQUIRE(got_dq[r * std::size_t(c.d) + std::size_t(x)] == 0.0);
            CHECK(dq.outside_intact());
            CHECK(dk.outside_intact());
            CHECK(dv.outside_intact());
        }
}

TEMPLATE_TEST_CASE("attention reads heads split out of packed projections without a copy",
                   "[ops][attention]", float, double) {
    // q from a (B, Lq, H*D) projection, k and v from one packed (B, Lk, H*D + H*Dv) projection
    // (a fused kv linear), o written into a (B, Lq, H*Dv) buffer: all (B, H, L, W) views with
    // the head axis strided inside the row — what multi-head attention hands over.
    using T = TestType;
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(303);
    for (const attn_case& c : {attn_case{2, 3, 4, 6, 5, 2, 0.45, false, 0, mask_kind::key_padding},
                               attn_case{2, 2, 5, 5, 4, 3, 0.5, true, 0, mask_kind::none}}) {
        CAPTURE(c);
        const index_t kv_width = c.h * c.d + c.h * c.dv;
        tensor<T> xq = mmfuse_test::random_tensor<T>({c.b, c.lq, c.h * c.d}, rng, -1.5, 1.5);
        tensor<T> xkv = mmfuse_test::random_tensor<T>({c.b, c.lk, kv_width}, rng, -1.5, 1.5);
        tensor<T> obuf({c.b, c.lq, c.h * c.dv}), lse(c.lse_extents());
        mmfuse_test::poison(obuf);
        mmfuse_test::poison(lse);
        const tensor_ref<const T> q = xq.cref().reshape({c.b, c.lq, c.h, c.d}).transpose(1, 2);
        const std::array<index_t, 4> kst{c.lk * kv_width, c.d, kv_width, 1};
        const std::array<index_t, 4> vst{c.lk * kv_width, c.dv, kv_width, 1};
        const tensor_ref<const T> k(xkv.data(), c.k_extents(), kst);
        const tensor_ref<const T> v(xkv.data() + c.h * c.d, c.v_extents(), vst);
        const tensor_ref<T> o = obuf.ref().reshape({c.b, c.lq, c.h, c.dv}).transpose(1, 2);
        const mask_values mv = make_mask(c, rng);
        tensor<bool> keep(mv.values.empty() ? extents{0} : mv.stored);
        for (std::size_t i = 0; i < mv.values.size(); ++i)
            keep[index_t(i)] = mv.values[i] != 0.0;
        ops::attention(s, q, k, v, o, lse.ref(), c.desc(),
                       mv.values.empty() ? tensor_ref<const bool>{} : keep.cref());
        const reference_result ref =
            reference_forward(c, mmfuse_test::to_vector(q), mmfuse_test::to_vector(k),
                              mmfuse_test::to_vector(v), full_mask(c, mv));
        CHECK(mmfuse_test::max_rel_error(mmfuse_test::to_vector(o), ref.o) <=
              mmfuse_test::tolerance<T>());
        CHECK(lse_error(mmfuse_test::to_vector(lse.cref()), ref.lse) <=
              mmfuse_test::tolerance<T>());
    }
}

TEST_CASE("attention backward agrees with central differences", "[ops][attention][gradcheck]") {
    // loss = sum(O * W) for a fixed random W; the analytic gradients are attention_backward
    // with dout = W, compared with central differences in every element of q, k and v.
    auto& s = backend::default_stream();
    auto rng = mmfuse_test::make_rng(304);
    const std::vector<attn_case> cases = {
        {1, 2, 3, 4, 3, 2, 0.7, false, 0, mask_kind::none},
        {2, 1, 4, 3, 2, 3, 0.9, true, 0, mask_kind::key_padding},
        {1, 2, 4, 5, 3, 2, 0.5, true, 1, mask_kind::random_full},
        {1, 1, 5, 3, 2, 2, 1.1, true, -1, mask_kind::none},
    };
    for (const attn_case& c : cases) {
        CAPTURE(c);
        tensor<double> q = mmfuse_test::random_tensor<double>(c.q_extents(), rng, -1.5, 1.5);
        tensor<double> k = mmfuse_test::random_tensor<double>(c.k_extents(), rng, -1.5, 1.5);
        tensor<double> v = mmfuse_test::random_tensor<double>(c.v_extents(), rng, -1.0, 1.0);
        tensor<double> w = mmfuse_test::random_tensor<double>(c.o_extents(), rng, -1.0, 1.0);
        const mask_values mv = make_mask(c, rng);
        tensor<bool> keep(mv.values.empty() ? extents{0} : mv.stored);
        for (std::size_t i = 0; i < mv.values.size(); ++i)
            keep[index_t(i)] = mv.values[i] != 0.0;
        const tensor_ref<const bool> keep_ref =
            mv.values.empty() ? tensor_ref<const bool>{} : keep.cref();
        tensor<double> o(c.o_extents()), lse(c.lse_extents());
        const auto loss = [&] {
            ops::attention(s, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), c.desc(),
                           keep_ref);
            double acc = 0.0;
            for (index_t i = 0; i < o.numel(); ++i)
                acc += o[i] * w[i];
            return acc;
        };
        loss();
        tensor<double> dq(c.q_extents()), dk(c.k_extents()), dv(c.v_extents());
        mmfuse_test::poison(dq);
        mmfuse_test::poison(dk);
        mmfuse_test::poison(dv);
        ops::attention_backward(s, q.cref(), k.cref(), v.cref(), o.cref(), w.cref(), lse.cref(),
                                dq.ref(), dk.ref(), dv.ref(), c.desc(), keep_ref);
        const double h = 1e-6;
        const auto check = [&](tensor<double>& x, const tensor<double>& grad, const char* name) {
            double worst = 0.0;
            for (index_t i = 0; i < x.numel(); ++i) {
                const double fd = mmfuse_test::central_difference(x[i], loss, h);
                worst = std::max(worst, std::abs(fd - grad[i]) / std::max(1.0, std::abs(fd)));
            }
            INFO("d loss / d " << name << ": worst relative error " << worst);
            CHECK(worst <= 1e-7);
        };
        check(q, dq, "q");
        check(k, dk, "k");
        check(v, dv, "v");
    }
}

namespace {

namespace fs = std::filesystem;

/// One PyTorch fixture case (see tools/golden/make_attention_fixtures.py).
struct golden_case {
    explicit golden_case(const std::string& name)
        : dir(fs::path(MMFUSE_TEST_DATA_DIR) / "golden" / "attention" / name) {
        REQUIRE(fs::is_directory(dir));
        std::ifstream in(dir / "params.txt");
        REQUIRE(in.good());
        std::string key;
        int causal = 0;
        long long offset = 0;
        in >> key >> desc.scale;
        REQUIRE(key == "scale");
        in >> key >> causal;
        REQUIRE(key == "causal");
        in >> key >> offset;
        REQUIRE(key == "causal_offset");
        desc.causal = causal != 0;
        desc.causal_offset = index_t(offset);
    }
    tensor<double> load(const std::string& n) const {
        return io::npy_load<double>(dir / (n + ".npy"));
    }
    bool has(const std::string& n) const { return fs::exists(dir / (n + ".npy")); }

    fs::path dir;
    ops::attention_desc desc;
};

/// max_i |got_i - ref_i| / max(1, |ref_i|) over two tensors of equal extents (NaN -> inf);
/// REQUIREs a non-trivial reference.
double golden_error(const tensor<double>& got, const tensor<double>& ref) {
    REQUIRE(got.extents() == ref.extents());
    double ref_max = 0.0;
    for (index_t i = 0; i < ref.numel(); ++i)
        ref_max = std::max(ref_max, std::abs(ref[i]));
    REQUIRE(ref_max > 0.0);
    return mmfuse_test::max_rel_error(got, std::vector<double>(ref.data(), ref.data() + ref.numel()));
}

}  // namespace

TEST_CASE("attention forward and backward match PyTorch scaled_dot_product_attention",
          "[ops][attention][golden]") {
    auto& s = backend::default_stream();
    for (const char* name : {"cross_no_mask", "key_padding", "full_mask", "causal_top_left",
                             "causal_top_left_more_queries", "causal_bottom_right_masked"}) {
        CAPTURE(name);
        const golden_case g(name);
        const tensor<double> q = g.load("q"), k = g.load("k"), v = g.load("v");
        const tensor<double> dout = g.load("dout");
        tensor<bool> keep = g.has("keep") ? io::npy_load<bool>(g.dir / "keep.npy")
                                          : tensor<bool>(extents{0});
        const tensor_ref<const bool> keep_ref =
            g.has("keep") ? keep.cref() : tensor_ref<const bool>{};
        tensor<double> o(dout.extents()), lse(g.load("lse").extents());
        tensor<double> dq(q.extents()), dk(k.extents()), dv(v.extents());
        for (tensor<double>* t : {&o, &lse, &dq, &dk, &dv})
            mmfuse_test::poison(*t);
        ops::attention(s, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), g.desc, keep_ref);
        ops::attention_backward(s, q.cref(), k.cref(), v.cref(), o.cref(), dout.cref(),
                                lse.cref(), dq.ref(), dk.ref(), dv.ref(), g.desc, keep_ref);
        const double tol = 1e-10;
        CHECK(golden_error(o, g.load("o")) <= tol);
        CHECK(golden_error(lse, g.load("lse")) <= tol);
        CHECK(golden_error(dq, g.load("dq")) <= tol);
        CHECK(golden_error(dk, g.load("dk")) <= tol);
        CHECK(golden_error(dv, g.load("dv")) <= tol);
    }
}

TEST_CASE("attention front-ends reject bad operands, naming the module and the operand",
          "[ops][attention]") {
    auto& s = backend::default_stream();
    const ops::op_context cx(s, "fusion.xattn");
    using Catch::Contains;
    // B 2, H 3, Lq 4, Lk 5, D 6, Dv 7.
    tensor<float> q({2, 3, 4, 6}), k({2, 3, 5, 6}), v({2, 3, 5, 7}), o({2, 3, 4, 7}),
        lse({2, 3, 4});
    tensor<float> dq({2, 3, 4, 6}), dk({2, 3, 5, 6}), dv({2, 3, 5, 7});
    tensor<bool> kp({2, 1, 1, 5});
    const auto fwd = [&](tensor_ref<const float> q_, tensor_ref<const float> k_,
                         tensor_ref<const float> v_, tensor_ref<float> o_,
                         tensor_ref<float> lse_, ops::attention_desc d = {},
                         tensor_ref<const bool> keep = {}) {
        ops::attention(cx, q_, k_, v_, o_, lse_, d, keep);
    };
    // A valid call passes (with and without the mask).
    REQUIRE_NOTHROW(fwd(q, k, v, o, lse));
    REQUIRE_NOTHROW(fwd(q, k, v, o, lse, {}, kp.cref()));

    tensor<float> k_bad_d({2, 3, 5, 4}), k_bad_b({1, 3, 5, 6}), v_bad_l({2, 3, 4, 7});
    REQUIRE_THROWS_AS(fwd(q, k_bad_d, v, o, lse), shape_error);
    REQUIRE_THROWS_WITH(fwd(q, k_bad_d, v, o, lse),
                        Contains("fusion.xattn") && Contains("attention key k") &&
                            Contains("(2, 3, ?, 6)") && Contains("(2, 3, 5, 4)"));
    REQUIRE_THROWS_WITH(fwd(q, k_bad_b, v, o, lse),
                        Contains("attention key k") && Contains("(1, 3, 5, 6)"));
    REQUIRE_THROWS_WITH(fwd(q, k, v_bad_l, o, lse),
                        Contains("attention value v") && Contains("(2, 3, 5, ?)") &&
                            Contains("(2, 3, 4, 7)"));
    tensor<float> q3({2, 4, 6});
    REQUIRE_THROWS_WITH(fwd(q3, k, v, o, lse), Contains("attention query q") && Contains("rank 4"));
    tensor<float> o_bad({2, 3, 4, 6}), lse_bad({2, 3, 5});
    REQUIRE_THROWS_WITH(fwd(q, k, v, o_bad, lse),
                        Contains("attention output o") && Contains("(2, 3, 4, 7)") &&
                            Contains("(2, 3, 4, 6)"));
    REQUIRE_THROWS_WITH(fwd(q, k, v, o, lse_bad),
                        Contains("attention output lse") && Contains("(2, 3, 4)") &&
                            Contains("(2, 3, 5)"));
    tensor<bool> kp_bad({2, 1, 1, 4});
    REQUIRE_THROWS_AS(fwd(q, k, v, o, lse, {}, kp_bad.cref()), shape_error);
    REQUIRE_THROWS_WITH(fwd(q, k, v, o, lse, {}, kp_bad.cref()),
                        Contains("attention keep-mask") && Contains("(2, 1, 1, 4)"));
    // masked without a mask, non-finite scale: value_error.
    REQUIRE_THROWS_AS(fwd(q, k, v, o, lse, {.masked = true}), value_error);
    REQUIRE_THROWS_WITH(fwd(q, k, v, o, lse, {.masked = true}), Contains("masked"));
    REQUIRE_THROWS_AS(fwd(q, k, v, o, lse, {.scale = std::numeric_limits<double>::infinity()}),
                      value_error);
    REQUIRE_THROWS_AS(fwd(q, k, v, o, lse, {.scale = std::nan("")}), value_error);
    // A broadcast output is refused.
    tensor<float> lse_row({1, 1, 4});
    REQUIRE_THROWS_AS(fwd(q, k, v, o, lse_row.ref().expand({2, 3, 4})), shape_error);
    // Null data.
    REQUIRE_THROWS_WITH(fwd(tensor_ref<const float>(nullptr, {2, 3, 4, 6}), k, v, o, lse),
                        Contains("null"));

    const auto bwd = [&](tensor_ref<const float> dout, tensor_ref<float> dq_,
                         tensor_ref<float> dk_, tensor_ref<float> dv_,
                         tensor_ref<const float> lse_) {
        ops::attention_backward(cx, q.cref(), k.cref(), v.cref(), o.cref(), dout, lse_, dq_, dk_,
                                dv_);
    };
    REQUIRE_NOTHROW(bwd(o.cref(), dq, dk, dv, lse.cref()));
    REQUIRE_THROWS_WITH(bwd(q.cref(), dq, dk, dv, lse.cref()),
                        Contains("attention_backward gradient dout") && Contains("(2, 3, 4, 7)"));
    REQUIRE_THROWS_WITH(bwd(o.cref(), dk, dk, dv, lse.cref()),
                        Contains("attention_backward output dq") && Contains("(2, 3, 4, 6)"));
    REQUIRE_THROWS_WITH(bwd(o.cref(), dq, dq, dv, lse.cref()),
                        Contains("attention_backward output dk") && Contains("(2, 3, 5, 6)"));
    REQUIRE_THROWS_WITH(bwd(o.cref(), dq, dk, dk, lse.cref()),
                        Contains("attention_backward output dv") && Contains("(2, 3, 5, 7)"));
    REQUIRE_THROWS_WITH(bwd(o.cref(), dq, dk, dv, lse_bad.cref()),
                        Contains("attention_backward input lse"));
    REQUIRE_THROWS_WITH(ops::attention_backward(cx, q.cref(), k_bad_d.cref(), v.cref(), o.cref(),
                                                o.cref(), lse.cref(), dq.ref(), dk.ref(),
                                                dv.ref()),
                        Contains("attention_backward key k"));
}

TEST_CASE("the eigen backend refuses attention operands that do not fit together",
          "[ops][attention]") {
    auto& s = backend::default_stream();
    tensor<float> q({1, 2, 3, 4}), k({1, 2, 5, 4}), v({1, 2, 6, 4}), o({1, 2, 3, 4}),
        lse({1, 2, 3});
    const std::array<any_tensor_ref, 3> in{q.cref(), k.cref(), v.cref()};
    const std::array<any_tensor_ref, 2> out{o.ref(), lse.ref()};
    REQUIRE(s.device().supports(ops::attention_desc{}, dtype::f32));
    REQUIRE(s.device().supports(ops::attention_backward_desc{}, dtype::f64));
    REQUIRE_THROWS_AS(s.execute(ops::attention_desc{}, in, out), backend_error);
    // A masked descriptor needs a fourth input.
    REQUIRE_THROWS_AS(s.execute(ops::attention_desc{.masked = true}, in, out), backend_error);
}
