// nn::multi_head_attention, nn::self_attention, nn::transformer_encoder_layer and
// nn::cross_attention_block: forward against double-precision loops written here (per batch,
// per head, explicit softmax), masks (key padding, boolean and additive attention masks,
// causal, fully masked rows), central-difference gradient checks, names, init, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/transformer.hpp"
#include "support/gradcheck.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

using vec = std::vector<double>;
constexpr index_t E = 8, H = 2;

template <class T>
vec values(tensor_ref<T> t) {
    REQUIRE(t.is_contiguous());
    vec v(size_t(t.numel()));
    for (index_t i = 0; i < t.numel(); ++i)
        v[size_t(i)] = double(t.data()[i]);
    return v;
}
template <class T>
vec values(const tensor<T>& t) {
    return values(t.cref());
}

/// y (rows, out) = x (rows, in) W^T + b (b may be empty).
vec affine(const vec& x, index_t rows, index_t in, const vec& w, index_t out, const vec& b) {
    vec y(size_t(rows * out));
    for (index_t r = 0; r < rows; ++r)
        for (index_t o = 0; o < out; ++o) {
            double acc = b.empty() ? 0.0 : b[size_t(o)];
            for (index_t i = 0; i < in; ++i)
                acc += x[size_t(r * in + i)] * w[size_t(o * in + i)];
            y[size_t(r * out + o)] = acc;
        }
    return y;
}

vec add(const vec& a, const vec& b) {
    vec y(a.size());
    for (size_t i = 0; i < a.size(); ++i)
        y[i] = a[i] + b[i];
    return y;
}

/// The weights of one attention module, read by name from a model.
struct mha_weights {
    index_t e, h, kdim, vdim;
    vec wq, wk, wv, bq, bk, bv, wo, bo;
};

template <class Net>
mha_weights read_mha(nn::model<Net>& m, const std::string& prefix, index_t e, index_t h,
                     index_t kdim, index_t vdim) {
    const auto get = [&](const std::string& name) {
        auto* p = m.find(prefix + name);
        INFO("parameter " << prefix + name);
        REQUIRE(p != nullptr);
        return values(p->value);
    };
    mha_weights w{e, h, kdim, vdim, {}, {}, {}, {}, {}, {}, {}, {}};
    if (kdim == e && vdim == e) {
        const vec p = get("in_proj_weight");
        REQUIRE(p.size() == size_t(3 * e * e));
        w.wq.assign(p.begin(), p.begin() + e * e);
        w.wk.assign(p.begin() + e * e, p.begin() + 2 * e * e);
        w.wv.assign(p.begin() + 2 * e * e, p.end());
    } else {
        w.wq = get("q_proj_weight");
        w.wk = get("k_proj_weight");
        w.wv = get("v_proj_weight");
    }
    const vec b = get("in_proj_bias");
    w.bq.assign(b.begin(), b.begin() + e);
    w.bk.assign(b.begin() + e, b.begin() + 2 * e);
    w.bv.assign(b.begin() + 2 * e, b.end());
    w.wo = get("out_proj.weight");
    w.bo = get("out_proj.bias");
    return w;
}

/// Keep flags and additive terms for every (b, h, i, j).
struct full_masks {
    std::vector<char> keep;
    vec add;
};

/// Reference attention: per batch, per head, explicit softmax over kept keys (none kept or
/// all -inf: zero weights).
vec ref_attention(const mha_weights& w, const vec& query, const vec& key, const vec& value,
                  index_t b, index_t lq, index_t lk, const full_masks& fm, vec* probs = nullptr) {
    const index_t e = w.e, h = w.h, dh = e / h;
    const vec q = affine(query, b * lq, e, w.wq, e, w.bq);
    const vec k = affine(key, b * lk, w.kdim, w.wk, e, w.bk);
    const vec v = affine(value, b * lk, w.vdim, w.wv, e, w.bv);
    const double scale = 1.0 / std::sqrt(double(dh));
    vec o(size_t(b * lq * e), 0.0);
    if (probs) probs->assign(size_t(b * h * lq * lk), 0.0);
    for (index_t bb = 0; bb < b; ++bb)
        for (index_t hh = 0; hh < h; ++hh)
            for (index_t i = 0; i < lq; ++i) {
                vec s(static_cast<size_t>(lk));
                std::vector<char> kept(static_cast<size_t>(lk));
                double mx = -std::numeric_limits<double>::infinity();
                for (index_t j = 0; j < lk; ++j) {
                    const size_t idx = size_t(((bb * h + hh) * lq + i) * lk + j);
                    double acc = 0.0;
                    for (index_t d = 0; d < dh; ++d)
                        acc += q[size_t((bb * lq + i) * e + hh * dh + d)] *
                               k[size_t((bb * lk + j) * e + hh * dh + d)];
                    s[size_t(j)] = scale * acc + fm.add[idx];
                    kept[size_t(j)] = fm.keep[idx] && s[size_t(j)] > -1e300;
                    if (kept[size_t(j)]) mx = std::max(mx, s[size_t(j)]);
                }
                vec p(size_t(lk), 0.0);
                double sum = 0.0;
                for (index_t j = 0; j < lk; ++j)
                    if (kept[size_t(j)]) sum += (p[size_t(j)] = std::exp(s[size_t(j)] - mx));
                for (index_t j = 0; j < lk; ++j) {
                    if (sum > 0) p[size_t(j)] /= sum;
                    if (probs) (*probs)[size_t(((bb * h + hh) * lq + i) * lk + j)] = p[size_t(j)];
                }
                for (index_t d = 0; d < dh; ++d) {
                    double acc = 0.0;
                    for (index_t j = 0; j < lk; ++j)
                        acc += p[size_t(j)] * v[size_t((bb * lk + j) * e + hh * dh + d)];
                    o[size_t((bb * lq + i) * e + hh * dh + d)] = acc;
                }
            }
    return affine(o, b * lq, e, w.wo, e, w.bo);
}

/// Which masks a test uses: key padding, boolean attn mask (0: none, 2: (Lq, Lk), 3:
/// (B*H, Lq, Lk)), additive mask (same codes), causal.
struct mask_config {
    bool kp = false;
    int am = 0;
    int ab = 0;
    bool causal = false;
};

/// Random masks and their views. The key-padding mask is stored (Lk, B) and passed
/// transposed, so strided masks are exercised.
template <class T>
struct mask_set {
    mask_config cfg;
    index_t b = 0, h = 0, lq = 0, lk = 0;
    tensor<bool> kp, am;
    tensor<T> ab;

    nn::attention_masks<T> views() const {
        nn::attention_masks<T> m;
        if (cfg.kp) m.key_padding = kp.cref().transpose(0, 1);
        if (cfg.am) m.attn = am.cref();
        if (cfg.ab) m.attn_bias = ab.cref();
        m.causal = cfg.causal;
        return m;
    }
    full_masks expand() const {
        full_masks f{std::vector<char>(size_t(b * h * lq * lk)), vec(size_t(b * h * lq * lk))};
        for (index_t bb = 0; bb < b; ++bb)
            for (index_t hh = 0; hh < h; ++hh)
                for (index_t i = 0; i < lq; ++i)
                    for (index_t j = 0; j < lk; ++j) {
                        const index_t idx = ((bb * h + hh) * lq + i) * lk + j;
                        const index_t m2 = i * lk + j;
                        bool keep = !cfg.causal || j <= i;
                        if (cfg.kp) keep = keep && kp[j * b + bb];
                        if (cfg.am) keep = keep && am[cfg.am == 2 ? m2 : idx];
                        f.keep[size_t(idx)] = keep;
                        f.add[size_t(idx)] = cfg.ab ? double(ab[cfg.ab == 2 ? m2 : idx]) : 0.0;
                    }
        return f;
    }
};

template <class T>
mask_set<T> make_masks(std::mt19937_64& rng, mask_config cfg, index_t b, index_t h, index_t lq,
                       index_t lk) {
    mask_set<T> s;
    s.cfg = cfg;
    s.b = b, s.h = h, s.lq = lq, s.lk = lk;
    std::bernoulli_distribution keep(0.7);
    if (cfg.kp) {
        s.kp = tensor<bool>({lk, b});
        for (index_t i = 0; i < s.kp.numel(); ++i)
            s.kp[i] = keep(rng);
    }
    const auto ext = [&](int code) { return code == 2 ? extents{lq, lk} : extents{b * h, lq, lk}; };
    if (cfg.am) {
        s.am = tensor<bool>(ext(cfg.am));
        for (index_t i = 0; i < s.am.numel(); ++i)
            s.am[i] = keep(rng);
    }
    if (cfg.ab) s.ab = mmfuse_test::random_tensor<T>(ext(cfg.ab), rng, -2.0, 2.0);
    return s;
}

const std::vector<mask_config> all_mask_configs = {
    {},
    {.kp = true},
    {.am = 2},
    {.am = 3},
    {.ab = 2},
    {.ab = 3},
    {.causal = true},
    {.kp = true, .causal = true},
    {.kp = true, .am = 2, .ab = 3},
    {.kp = true, .am = 3, .ab = 2, .causal = true},
};

/// Every parameter of `m` uniform in [-0.5, 0.5) (biases and LayerNorm affines are 0 / 1
/// at init, which would hide mistakes).
template <class Net>
void randomize(nn::model<Net>& m, std::mt19937_64& rng) {
    using T = typename Net::value_type;
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    const tensor_ref<T> p = m.parameters();
    for (index_t i = 0; i < p.numel(); ++i)
        p.data()[i] = T(u(rng));
}

/// Central differences of loss = sum(r * y) in every element of `inputs` and every
/// parameter, against the analytic gradients `bwd(cx, r)` (one per input, same order).
struct multi_result {
    double input_error = 0.0;
    double parameter_error = 0.0;
};

template <class Net>
multi_result multi_gradcheck(
    nn::model<Net>& m, const std::vector<tensor<double>*>& inputs,
    const std::function<tensor_ref<const double>(nn::step_context<double>&)>& fwd,
    const std::function<std::vector<tensor_ref<const double>>(nn::step_context<double>&,
                                                              tensor_ref<const double>)>& bwd,
    std::mt19937_64& rng, double h = 1e-6) {
    growing_arena ws;
    nn::step_context<double> cx{&backend::default_stream(), &ws, true};
    ws.reset();
    const tensor<double> r = mmfuse_test::random_tensor<double>(fwd(cx).extents(), rng);
    const auto loss = [&] {
        ws.reset();
        const tensor_ref<const double> y = fwd(cx);
        double acc = 0.0;
        for (index_t i = 0; i < y.numel(); ++i)
            acc += y.data()[i] * r[i];
        return acc;
    };
    m.zero_grad();
    ws.reset();
    fwd(cx);
    const std::vector<tensor_ref<const double>> g = bwd(cx, r.cref());
    REQUIRE(g.size() == inputs.size());
    std::vector<vec> dx;
    for (size_t k = 0; k < g.size(); ++k) {
        REQUIRE(g[k].extents() == inputs[k]->extents());
        dx.push_back(values(g[k]));
    }
    const vec dp = values(m.gradients());
    multi_result res;
    for (size_t k = 0; k < inputs.size(); ++k)
        for (index_t i = 0; i < inputs[k]->numel(); ++i) {
            const double num = mmfuse_test::central_difference((*inputs[k])[i], loss, h);
            res.input_error = std::max(
                res.input_error, std::abs(dx[k][size_t(i)] - num) / std::max(1.0, std::abs(num)));
        }
    const tensor_ref<double> p = m.parameters();
    for (const auto& info : m.parameter_index())
        for (index_t k = 0; k < info.shape.numel(); ++k) {
            const double num = mmfuse_test::central_difference(p.data()[info.offset + k], loss, h);
            res.parameter_error =
                std::max(res.parameter_error, std::abs(dp[size_t(info.offset + k)] - num) /
                                                  std::max(1.0, std::abs(num)));
        }
    return res;
}

/// A parent that names its child "fusion" (so errors carry a non-empty path).
template <class M>
struct holder {
    using value_type = typename M::value_type;
    M inner;
    template <class V>
    void visit(V& v) {
        v.child("fusion", inner);
    }
    void reset_parameters(philox_generator& g) { inner.reset_parameters(g); }
};

template <class T>
nn::step_context<T> context(growing_arena& ws, bool training = true) {
    return {&backend::default_stream(), &ws, training};
}

vec layer_norm_ref(const vec& x, index_t f, const vec& g, const vec& b, double eps = 1e-5) {
    vec y(x.size());
    for (size_t r = 0; r < x.size() / size_t(f); ++r) {
        double mean = 0.0, var = 0.0;
        for (index_t i = 0; i < f; ++i)
            mean += x[r * size_t(f) + size_t(i)];
        mean /= double(f);
        for (index_t i = 0; i < f; ++i) {
            const double d = x[r * size_t(f) + size_t(i)] - mean;
            var += d * d;
        }
        var /= double(f);
        for (index_t i = 0; i < f; ++i)
            y[r * size_t(f) + size_t(i)] =
                (x[r * size_t(f) + size_t(i)] - mean) / std::sqrt(var + eps) * g[size_t(i)] +
                b[size_t(i)];
    }
    return y;
}

vec activation_ref(vec x, ops::unary_kind k) {
    for (double& v : x)
        v = k == ops::unary_kind::relu ? std::max(v, 0.0)
                                       : 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    return x;
}

/// Reference of the two residual sub-layers shared by both blocks.
template <class Net>
vec block_ref(nn::model<Net>& m, const vec& x, index_t rows, index_t ff, bool pre,
              ops::unary_kind act, const std::function<vec(const vec&)>& attn) {
    const auto get = [&](const std::string& n) { return values(m.find(n)->value); };
    const auto ln1 = [&](const vec& v) {
        return layer_norm_ref(v, E, get("norm1.weight"), get("norm1.bias"));
    };
    const auto ln2 = [&](const vec& v) {
        return layer_norm_ref(v, E, get("norm2.weight"), get("norm2.bias"));
    };
    const auto ffn = [&](const vec& v) {
        const vec hdn =
            activation_ref(affine(v, rows, E, get("linear1.weight"), ff, get("linear1.bias")), act);
        return affine(hdn, rows, ff, get("linear2.weight"), E, get("linear2.bias"));
    };
    if (pre) {
        const vec x1 = add(x, attn(ln1(x)));
        return add(x1, ffn(ln2(x1)));
    }
    const vec x1 = ln1(add(x, attn(x)));
    return ln2(add(x1, ffn(x1)));
}

}  // namespace

TEMPLATE_TEST_CASE("multi_head_attention forward matches a per-head loop with every mask",
                   "[nn][attention]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(301);
    const index_t b = 2, lq = 3, lk = 5;
    struct variant {
        index_t kdim, vdim;
    };
    for (const variant var : {variant{6, 4}, variant{E, E}}) {
        using mha = nn::multi_head_attention<E, H, T>;
        nn::model<mha> m(mha{{}, {}, var.kdim, var.vdim}, rng());
        REQUIRE(m.net().packed() == (var.kdim == E && var.vdim == E));
        randomize(m, rng);
        const mha_weights w = read_mha(m, "", E, H, var.kdim, var.vdim);
        const auto q = mmfuse_test::random_tensor<T>({b, lq, E}, rng);
        const auto k = mmfuse_test::random_tensor<T>({b, lk, var.kdim}, rng);
        const auto v = mmfuse_test::random_tensor<T>({b, lk, var.vdim}, rng);
        for (const mask_config& cfg : all_mask_configs) {
            INFO("kdim " << var.kdim << " kp " << cfg.kp << " am " << cfg.am << " ab " << cfg.ab
                         << " causal " << cfg.causal);
            const mask_set<T> ms = make_masks<T>(rng, cfg, b, H, lq, lk);
            growing_arena ws;
            auto cx = context<T>(ws, false);
            const auto y = m.net().forward(cx, q.cref(), k.cref(), v.cref(), ms.views());
            REQUIRE(y.extents() == extents{b, lq, E});
            vec probs;
            const vec ref =
                ref_attention(w, values(q), values(k), values(v), b, lq, lk, ms.expand(), &probs);
            CHECK(mmfuse_test::max_rel_error(values(y), ref) <= mmfuse_test::tolerance<T>());
            REQUIRE(m.net().attention_weights().extents() == extents{b, H, lq, lk});
            CHECK(mmfuse_test::max_rel_error(values(m.net().attention_weights()), probs) <=
                  mmfuse_test::tolerance<T>());
        }
    }
}

TEMPLATE_TEST_CASE("self attention (forward_self and nn::self_attention) matches the loop",
                   "[nn][attention]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(302);
    const index_t b = 2, l = 4;
    nn::model<nn::self_attention<E, H, T>> m(nn::self_attention<E, H, T>{}, rng());
    randomize(m, rng);
    const mha_weights w = read_mha(m, "", E, H, E, E);
    const auto x = mmfuse_test::random_tensor<T>({b, l, E}, rng);
    for (const mask_config& cfg : all_mask_configs) {
        const mask_set<T> ms = make_masks<T>(rng, cfg, b, H, l, l);
        m.net().masks = ms.views();
        growing_arena ws;
        auto cx = context<T>(ws, true);
        const auto y = m.net().forward(cx, x.cref());
        const vec xv = values(x);
        const vec ref = ref_attention(w, xv, xv, xv, b, l, l, ms.expand());
        CHECK(mmfuse_test::max_rel_error(values(y), ref) <= mmfuse_test::tolerance<T>());
    }
}

TEMPLATE_TEST_CASE("fully masked query rows give zero weights, out_proj.bias and zero grads",
                   "[nn][attention]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(303);
    const index_t b = 2, lq = 3, lk = 4;
    using mha = nn::multi_head_attention<E, H, T>;
    nn::model<mha> m(mha{{}, {}, 6, 5}, rng());
    randomize(m, rng);
    const auto q = mmfuse_test::random_tensor<T>({b, lq, E}, rng);
    const auto k = mmfuse_test::random_tensor<T>({b, lk, 6}, rng);
    const auto v = mmfuse_test::random_tensor<T>({b, lk, 5}, rng);
    // Sample 1: every key padded. Sample 0: query row 0 forbidden everything (attn mask).
    tensor<bool> kp({b, lk}), am({lq, lk});
    for (index_t j = 0; j < lk; ++j)
        kp(0, j) = true, kp(1, j) = false;
    for (index_t i = 0; i < lq; ++i)
        for (index_t j = 0; j < lk; ++j)
            am(i, j) = i != 0;
    nn::attention_masks<T> masks{kp.cref(), am.cref(), {}, false};
    growing_arena ws;
    auto cx = context<T>(ws, true);
    const auto y = m.net().forward(cx, q.cref(), k.cref(), v.cref(), masks);
    const auto bo = m.find("out_proj.bias")->value;
    const auto p = m.net().attention_weights();
    const auto fully_masked = [](index_t bb, index_t i) { return bb == 1 || i == 0; };
    for (index_t bb = 0; bb < b; ++bb)
        for (index_t i = 0; i < lq; ++i) {
            for (index_t hh = 0; hh < H; ++hh)
                for (index_t j = 0; j < lk; ++j) {
                    REQUIRE(std::isfinite(double(p(bb, hh, i, j))));
                    if (fully_masked(bb, i)) REQUIRE(p(bb, hh, i, j) == T(0));
                }
            for (index_t c = 0; c < E; ++c) {
                REQUIRE(std::isfinite(double(y(bb, i, c))));
                if (fully_masked(bb, i)) REQUIRE(y(bb, i, c) == bo(c));
            }
        }
    const auto dy = mmfuse_test::random_tensor<T>({b, lq, E}, rng);
    m.zero_grad();
    const nn::attention_grads<T> g = m.net().backward(cx, dy.cref());
    for (index_t bb = 0; bb < b; ++bb)
        for (index_t i = 0; i < lq; ++i)
            for (index_t c = 0; c < E; ++c) {
                REQUIRE(std::isfinite(double(g.dquery(bb, i, c))));
                if (fully_masked(bb, i)) REQUIRE(g.dquery(bb, i, c) == T(0));
            }
    // No key or value of sample 1 is attended to: no gradient reaches them.
    for (index_t j = 0; j < lk; ++j) {
        for (index_t c = 0; c < 6; ++c)
            REQUIRE(g.dkey(1, j, c) == T(0));
        for (index_t c = 0; c < 5; ++c)
            REQUIRE(g.dvalue(1, j, c) == T(0));
    }
    for (index_t i = 0; i < m.gradients().numel(); ++i)
        REQUIRE(std::isfinite(double(m.gradients().data()[i])));
}

TEST_CASE("attention mask identities: -inf additive == boolean false, padding == attn mask",
          "[nn][attention]") {
    auto rng = mmfuse_test::make_rng(304);
    const index_t b = 2, lq = 3, lk = 5;
    using mha = nn::multi_head_attention<E, H, double>;
    nn::model<mha> m(mha{}, rng());
    randomize(m, rng);
    const auto q = mmfuse_test::random_tensor<double>({b, lq, E}, rng);
    const auto kv = mmfuse_test::random_tensor<double>({b, lk, E}, rng);
    tensor<bool> kp({b, lk}), am3({b * H, lq, lk});
    tensor<double> inf3({b * H, lq, lk});
    for (index_t bb = 0; bb < b; ++bb)
        for (index_t j = 0; j < lk; ++j)
            kp(bb, j) = (j + bb) % 3 != 0;
    for (index_t bh = 0; bh < b * H; ++bh)
        for (index_t i = 0; i < lq; ++i)
            for (index_t j = 0; j < lk; ++j) {
                am3(bh, i, j) = kp(bh / H, j);
                inf3(bh, i, j) = kp(bh / H, j) ? 0.0 : -std::numeric_limits<double>::infinity();
            }
    growing_arena ws;
    auto cx = context<double>(ws, false);
    const vec a = values(m.net().forward(cx, q.cref(), kv.cref(), kv.cref(), {kp.cref()}));
    const vec c = values(m.net().forward(cx, q.cref(), kv.cref(), kv.cref(), {{}, am3.cref()}));
    const vec d =
        values(m.net().forward(cx, q.cref(), kv.cref(), kv.cref(), {{}, {}, inf3.cref()}));
    CHECK(mmfuse_test::max_rel_error(a, c) < 1e-15);
    CHECK(mmfuse_test::max_rel_error(a, d) < 1e-15);
    // An all -inf row behaves like a fully masked one: zero weights, no NaN.
    inf3.fill(-std::numeric_limits<double>::infinity());
    const vec z =
        values(m.net().forward(cx, q.cref(), kv.cref(), kv.cref(), {{}, {}, inf3.cref()}));
    const vec bo = values(m.find("out_proj.bias")->value);
    for (size_t i = 0; i < z.size(); ++i)
        REQUIRE(z[i] == bo[i % size_t(E)]);
}

TEST_CASE("multi_head_attention gradcheck: dquery, dkey, dvalue and every parameter",
          "[nn][attention][gradcheck]") {
    auto rng = mmfuse_test::make_rng(305);
    const index_t b = 2, lq = 3, lk = 4;
    struct variant {
        index_t kdim, vdim;
        mask_config cfg;
    };
    for (const variant var : {variant{6, 4, {.kp = true, .ab = 2, .causal = true}},
                              variant{E, E, {.am = 3}}, variant{5, E, {}}}) {
        using mha = nn::multi_head_attention<dyn, dyn, double>;
        nn::model<mha> m(mha{E, H, var.kdim, var.vdim}, rng());
        randomize(m, rng);
        auto q = mmfuse_test::random_tensor<double>({b, lq, E}, rng);
        auto k = mmfuse_test::random_tensor<double>({b, lk, var.kdim}, rng);
        auto v = mmfuse_test::random_tensor<double>({b, lk, var.vdim}, rng);
        const mask_set<double> ms = make_masks<double>(rng, var.cfg, b, H, lq, lk);
        const nn::attention_masks<double> masks = ms.views();
        const auto res = multi_gradcheck(
            m, {&q, &k, &v},
            [&](nn::step_context<double>& cx) {
                return m.net().forward(cx, q.cref(), k.cref(), v.cref(), masks);
            },
            [&](nn::step_context<double>& cx, tensor_ref<const double> r) {
                const auto g = m.net().backward(cx, r);
                return std::vector<tensor_ref<const double>>{g.dquery, g.dkey, g.dvalue};
            },
            rng);
        INFO("kdim " << var.kdim << " vdim " << var.vdim);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
    }
}

TEST_CASE("self_attention gradcheck through the harness, with and without masks",
          "[nn][attention][gradcheck]") {
    auto rng = mmfuse_test::make_rng(306);
    const index_t b = 2, l = 4;
    for (const mask_config cfg :
         {mask_config{}, mask_config{.kp = true, .am = 3, .causal = true}, mask_config{.ab = 3}}) {
        nn::model<nn::self_attention<E, H, double>> m(nn::self_attention<E, H, double>{}, rng());
        randomize(m, rng);
        const mask_set<double> ms = make_masks<double>(rng, cfg, b, H, l, l);
        m.net().masks = ms.views();
        const auto x = mmfuse_test::random_tensor<double>({b, l, E}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
    }
}

TEST_CASE("multi_head_attention parameter names, shapes and PyTorch's init", "[nn][attention]") {
    auto rng = mmfuse_test::make_rng(307);
    using mha = nn::multi_head_attention<E, H, float>;
    nn::model<mha> packed(mha{}, rng());
    const auto idx = packed.parameter_index();
    REQUIRE(idx.size() == 4);
    CHECK(idx[0].name == "in_proj_weight");
    CHECK(idx[0].shape == extents{3 * E, E});
    CHECK(idx[1].name == "in_proj_bias");
    CHECK(idx[1].shape == extents{3 * E});
    CHECK(idx[2].name == "out_proj.weight");
    CHECK(idx[3].name == "out_proj.bias");
    const auto within = [](tensor_ref<float> t, double bound) {
        double mx = 0.0;
        for (index_t i = 0; i < t.numel(); ++i)
            mx = std::max(mx, std::abs(double(t.data()[i])));
        return mx <= bound + 1e-7 && mx > 0.5 * bound;
    };
    CHECK(within(packed.find("in_proj_weight")->value, std::sqrt(6.0 / (4 * E))));
    CHECK(within(packed.find("out_proj.weight")->value, 1.0 / std::sqrt(double(E))));
    for (const char* z : {"in_proj_bias", "out_proj.bias"}) {
        const auto t = packed.find(z)->value;
        for (index_t i = 0; i < t.numel(); ++i)
            CHECK(t.data()[i] == 0.0f);
    }
    nn::model<mha> separate(mha{{}, {}, 6, 4}, rng());
    const auto sidx = separate.parameter_index();
    REQUIRE(sidx.size() == 6);
    CHECK(sidx[0].name == "q_proj_weight");
    CHECK(sidx[1].name == "k_proj_weight");
    CHECK(sidx[1].shape == extents{E, 6});
    CHECK(sidx[2].name == "v_proj_weight");
    CHECK(sidx[2].shape == extents{E, 4});
    CHECK(sidx[3].name == "in_proj_bias");
    CHECK(within(separate.find("q_proj_weight")->value, std::sqrt(6.0 / (2 * E))));
    CHECK(within(separate.find("k_proj_weight")->value, std::sqrt(6.0 / (E + 6))));
    CHECK(within(separate.find("v_proj_weight")->value, std::sqrt(6.0 / (E + 4))));
    nn::model<nn::multi_head_attention<E, H, float>> nobias(
        nn::multi_head_attention<E, H, float>{{}, {}, dyn, dyn, false}, 1);
    CHECK(nobias.parameter_index().size() == 2);
    CHECK(nobias.parameter_count() == 4 * E * E);
}

TEST_CASE("multi_head_attention rejects bad inputs naming the path and both shapes",
          "[nn][attention]") {
    using mha = nn::multi_head_attention<E, H, float>;
    nn::model<holder<mha>> m(holder<mha>{mha{{}, {}, 6, 4}}, 1);
    mha& a = m.net().inner;
    growing_arena ws;
    auto cx = context<float>(ws);
    tensor<float> q({2, 3, E}), k({2, 5, 6}), v({2, 5, 4}), bad_q({2, 3, 7}), bad_k({3, 5, 6}),
        bad_v({2, 4, 4});
    REQUIRE_THROWS_AS(a.forward(cx, bad_q.cref(), k.cref(), v.cref()), shape_error);
    REQUIRE_THROWS_WITH(a.forward(cx, bad_q.cref(), k.cref(), v.cref()),
                        Catch::Contains("'fusion'") &&
                            Catch::Contains("multi_head_attention query") &&
                            Catch::Contains("(B, L, 8)") && Catch::Contains("(2, 3, 7)"));
    REQUIRE_THROWS_WITH(a.forward(cx, q.cref(), bad_k.cref(), v.cref()),
                        Catch::Contains("multi_head_attention key") &&
                            Catch::Contains("(2, L, 6)") && Catch::Contains("(3, 5, 6)"));
    REQUIRE_THROWS_WITH(a.forward(cx, q.cref(), k.cref(), bad_v.cref()),
                        Catch::Contains("multi_head_attention value") &&
                            Catch::Contains("(2, 5, 4)") && Catch::Contains("(2, 4, 4)"));
    tensor<bool> kp({2, 4}), am({3, 4});
    REQUIRE_THROWS_WITH(a.forward(cx, q.cref(), k.cref(), v.cref(), {kp.cref()}),
                        Catch::Contains("'fusion'") && Catch::Contains("key_padding") &&
                            Catch::Contains("(2, 5)") && Catch::Contains("(2, 4)"));
    REQUIRE_THROWS_WITH(a.forward(cx, q.cref(), k.cref(), v.cref(), {{}, am.cref()}),
                        Catch::Contains("attn mask") && Catch::Contains("(3, 5) or (4, 3, 5)") &&
                            Catch::Contains("(3, 4)"));
    tensor<float> ab({4, 3, 4});
    REQUIRE_THROWS_WITH(a.forward(cx, q.cref(), k.cref(), v.cref(), {{}, {}, ab.cref()}),
                        Catch::Contains("attn_bias") && Catch::Contains("(4, 3, 4)"));
    REQUIRE_THROWS_WITH(a.forward_self(cx, q.cref()), Catch::Contains("kdim == vdim"));
    // Backward needs a training-mode forward of the same kind, and dout of the output shape.
    auto eval = context<float>(ws, false);
    a.forward(eval, q.cref(), k.cref(), v.cref());
    REQUIRE_THROWS_AS(a.backward(cx, q.cref()), shape_error);
    a.forward(cx, q.cref(), k.cref(), v.cref());
    REQUIRE_THROWS_AS(a.backward_self(cx, q.cref()), shape_error);
    REQUIRE_THROWS_WITH(a.backward(cx, bad_q.cref()), Catch::Contains("output gradient") &&
                                                          Catch::Contains("(2, 3, 8)") &&
                                                          Catch::Contains("(2, 3, 7)"));
    REQUIRE_THROWS_AS((nn::multi_head_attention<dyn, dyn, float>{8, 3}), shape_error);
}

TEMPLATE_TEST_CASE("transformer_encoder_layer forward matches the loop (post-LN and pre-LN)",
                   "[nn][transformer]", float, double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(308);
    const index_t b = 2, l = 4, ff = 12;
    for (const bool pre : {false, true})
        for (const auto act : {ops::unary_kind::relu, ops::unary_kind::gelu_erf}) {
            using layer = nn::transformer_encoder_layer<E, H, dyn, T>;
            nn::model<layer> m(layer{{}, {}, ff, {.activation = act, .norm_first = pre}}, rng());
            randomize(m, rng);
            const mask_set<T> ms = make_masks<T>(rng, {.kp = true}, b, H, l, l);
            m.net().masks = ms.views();
            const auto x = mmfuse_test::random_tensor<T>({b, l, E}, rng);
            growing_arena ws;
            auto cx = context<T>(ws, false);
            const auto y = m.net().forward(cx, x.cref());
            REQUIRE(y.extents() == extents{b, l, E});
            const mha_weights w = read_mha(m, "self_attn.", E, H, E, E);
            const full_masks fm = ms.expand();
            const vec ref = block_ref(m, values(x), b * l, ff, pre, act, [&](const vec& in) {
                return ref_attention(w, in, in, in, b, l, l, fm);
            });
            INFO("norm_first " << pre);
            CHECK(mmfuse_test::max_rel_error(values(y), ref) <= 4 * mmfuse_test::tolerance<T>());
        }
}

TEST_CASE("transformer_encoder_layer gradcheck, names and errors", "[nn][transformer][gradcheck]") {
    auto rng = mmfuse_test::make_rng(309);
    const index_t b = 2, l = 3;
    for (const bool pre : {false, true}) {
        using layer = nn::transformer_encoder_layer<E, H, 6, double>;
        nn::model<layer> m(
            layer{{}, {}, {}, {.activation = ops::unary_kind::gelu_erf, .norm_first = pre}}, rng());
        randomize(m, rng);
        const mask_set<double> ms =
            make_masks<double>(rng, {.kp = true, .causal = true}, b, H, l, l);
        m.net().masks = ms.views();
        const auto x = mmfuse_test::random_tensor<double>({b, l, E}, rng);
        const auto res = mmfuse_test::gradcheck(m, x, rng);
        INFO("norm_first " << pre);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
    }
    using layer = nn::transformer_encoder_layer<E, H, 6, float>;
    nn::model<layer> m(layer{}, 1);
    const std::vector<std::string> names = {"self_attn.in_proj_weight",
                                            "self_attn.in_proj_bias",
                                            "self_attn.out_proj.weight",
                                            "self_attn.out_proj.bias",
                                            "linear1.weight",
                                            "linear1.bias",
                                            "linear2.weight",
                                            "linear2.bias",
                                            "norm1.weight",
                                            "norm1.bias",
                                            "norm2.weight",
                                            "norm2.bias"};
    REQUIRE(m.parameter_index().size() == names.size());
    for (size_t i = 0; i < names.size(); ++i)
        CHECK(m.parameter_index()[i].name == names[i]);
    CHECK(m.find("linear1.weight")->shape == extents{6, E});
    nn::model<holder<layer>> hm(holder<layer>{layer{}}, 1);
    growing_arena ws;
    auto cx = context<float>(ws);
    tensor<float> bad({2, 3, 7});
    REQUIRE_THROWS_AS(hm.net().inner.forward(cx, bad.cref()), shape_error);
    REQUIRE_THROWS_WITH(hm.net().inner.forward(cx, bad.cref()), Catch::Contains("'fusion'") &&
                                                                    Catch::Contains("(B, L, 8)") &&
                                                                    Catch::Contains("(2, 3, 7)"));
}

TEMPLATE_TEST_CASE("cross_attention_block forward matches the loop", "[nn][transformer]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(310);
    const index_t b = 2, lq = 3, lk = 5, ff = 10;
    for (const index_t ec : {index_t(6), E})
        for (const bool pre : {true, false}) {
            using block = nn::cross_attention_block<E, H, dyn, T>;
            nn::model<block> m(block{{}, {}, ff, ec, {.norm_first = pre}}, rng());
            randomize(m, rng);
            const mask_set<T> ms = make_masks<T>(rng, {.kp = true}, b, H, lq, lk);
            const auto x = mmfuse_test::random_tensor<T>({b, lq, E}, rng);
            const auto c = mmfuse_test::random_tensor<T>({b, lk, ec}, rng);
            growing_arena ws;
            auto cx = context<T>(ws, false);
            const auto y = m.net().forward(cx, x.cref(), c.cref(), ms.views());
            const mha_weights w = read_mha(m, "cross_attn.", E, H, ec, ec);
            const full_masks fm = ms.expand();
            const vec cv = values(c);
            const vec ref = block_ref(
                m, values(x), b * lq, ff, pre, ops::unary_kind::relu,
                [&](const vec& in) { return ref_attention(w, in, cv, cv, b, lq, lk, fm); });
            INFO("Ec " << ec << " norm_first " << pre);
            CHECK(mmfuse_test::max_rel_error(values(y), ref) <= 4 * mmfuse_test::tolerance<T>());
        }
}

TEST_CASE("cross_attention_block gradcheck (dx, dcontext, parameters), names and errors",
          "[nn][transformer][gradcheck]") {
    auto rng = mmfuse_test::make_rng(311);
    const index_t b = 2, lq = 3, lk = 4;
    for (const index_t ec : {index_t(5), E}) {
        using block = nn::cross_attention_block<E, H, 6, double>;
        nn::model<block> m(block{{}, {}, {}, ec}, rng());
        randomize(m, rng);
        auto x = mmfuse_test::random_tensor<double>({b, lq, E}, rng);
        auto c = mmfuse_test::random_tensor<double>({b, lk, ec}, rng);
        const mask_set<double> ms = make_masks<double>(rng, {.kp = true}, b, H, lq, lk);
        const nn::attention_masks<double> masks = ms.views();
        const auto res = multi_gradcheck(
            m, {&x, &c},
            [&](nn::step_context<double>& cx) {
                return m.net().forward(cx, x.cref(), c.cref(), masks);
            },
            [&](nn::step_context<double>& cx, tensor_ref<const double> r) {
                const auto g = m.net().backward(cx, r);
                return std::vector<tensor_ref<const double>>{g.dx, g.dcontext};
            },
            rng);
        INFO("Ec " << ec);
        CHECK(res.input_error < 1e-7);
        CHECK(res.parameter_error < 1e-7);
    }
    using block = nn::cross_attention_block<E, H, 6, float>;
    nn::model<holder<block>> m(holder<block>{block{{}, {}, {}, 5}}, 1);
    const std::vector<std::string> names = {"fusion.cross_attn.q_proj_weight",
                                            "fusion.cross_attn.k_proj_weight",
                                            "fusion.cross_attn.v_proj_weight",
                                            "fusion.cross_attn.in_proj_bias",
                                            "fusion.cross_attn.out_proj.weight",
                                            "fusion.cross_attn.out_proj.bias",
                                            "fusion.linear1.weight",
                                            "fusion.linear1.bias",
                                            "fusion.linear2.weight",
                                            "fusion.linear2.bias",
                                            "fusion.norm1.weight",
                                            "fusion.norm1.bias",
                                            "fusion.norm2.weight",
                                            "fusion.norm2.bias"};
    REQUIRE(m.parameter_index().size() == names.size());
    for (size_t i = 0; i < names.size(); ++i)
        CHECK(m.parameter_index()[i].name == names[i]);
    CHECK(m.find("fusion.cross_attn.k_proj_weight")->shape == extents{E, 5});
    growing_arena ws;
    auto cx = context<float>(ws);
    tensor<float> x({2, 3, E}), bad_c({2, 4, 6});
    REQUIRE_THROWS_AS(m.net().inner.forward(cx, x.cref(), bad_c.cref()), shape_error);
    REQUIRE_THROWS_WITH(m.net().inner.forward(cx, x.cref(), bad_c.cref()),
                        Catch::Contains("'fusion'") && Catch::Contains("context") &&
                            Catch::Contains("(2, L, 5)") && Catch::Contains("(2, 4, 6)"));
}
