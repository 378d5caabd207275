#pragma once
/// \file
/// `product_of_experts`: the Gaussian product-of-experts fusion of MVAE, Wu and Goodman,
/// "Multimodal Generative Models for Scalable Weakly-Supervised Learning", NeurIPS 2018
/// (fusion.md section 2.15; reference pliang279/MultiBench : fusions/MVAE.py,
/// ProductOfExperts).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <string>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::fusion {

/// Product of M diagonal Gaussian experts (and, by default, the prior expert N(0, I)).
///
///   x_m (B, ..., 2d) = [mu_m | logvar_m], all of one shape  ->  y (B, ..., 2d) = [mu | logvar]
///   var_m = exp(logvar_m) + eps,  T_m = 1 / var_m          (eps = 1e-8 as in MVAE)
///   S = sum_m T_m  (+ 1 / (1 + eps) for the prior: mu 0, logvar 0)
///   mu = sum_m mu_m T_m / S,  var = 1 / S,  logvar = log(var)
/// No parameters. The reparameterised sample z = mu + exp(logvar / 2) eps is left to the
/// caller (it is not part of the fusion).
/// Missing modality: an absent expert is left out of the product for that sample (MVAE's
/// rule: the posterior of the observed subset); its input gradient is zero there. A sample
/// with no expert and no prior (with_prior = false) gets mu = 0, logvar = 0 and no gradient.
/// Implementation: the op vocabulary has no exp / log / reciprocal, so the product is a
/// plain loop over contiguous host tensors (accumulated in double): host backends only; an
/// input or gradient in device memory throws `shape_error`.
template <std::size_t M, compute_type T = float>
class product_of_experts {
    static_assert(M >= 1, "mmfuse::fusion::product_of_experts: at least one expert");

public:
    using value_type = T;
    static constexpr std::size_t arity = M;

    /// `with_prior`: include the N(0, I) prior expert; `eps` >= 0 is added to every variance
    /// (throws `value_error` unless finite and >= 0).
    explicit product_of_experts(bool with_prior = true, double eps = 1e-8)
        : with_prior_(with_prior), eps_(eps) {
        if (!(eps >= 0.0) || !std::isfinite(eps))
            throw value_error("fusion::product_of_experts", "eps must be finite and >= 0");
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}

    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, M>& xs, presence p = {}) {
        const index_t batch = batch_of(path_, xs);
        check_presence(path_, p, batch, M);
        check_inputs(xs);
        views<T, M> xc{};
        for (std::size_t m = 0; m < M; ++m)
            xc[m] = nn::contiguous(cx, path_, xs[m]);
        const tensor_ref<T> y = cx.allocate(xs[0].extents());
        cx.stream->synchronize();  // the loop below reads what ops wrote
        const index_t d = y.extent(-1) / 2, rows = y.numel() / std::max<index_t>(1, 2 * d);
        const index_t per_sample = batch == 0 ? 0 : rows / batch;
        // ---- host loop (no exp / log in the op vocabulary) --------------------------------
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d; ++j) {
                const stats s = product(xc, p, r / per_sample, r * 2 * d, j, d);
                T* out = y.data() + r * 2 * d;
                out[j] = T(s.total > 0.0 ? s.weighted / s.total : 0.0);
                out[d + j] = T(s.total > 0.0 ? std::log(1.0 / s.total) : 0.0);
            }
        if (cx.training) {
            xs_ = xc;
            y_ = y;
            p_ = p;
            saved_ = true;
        }
        return y;
    }

    views<T, M> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) {
        detail::expect_saved_grad(path_, "product_of_experts", saved_, y_.extents(), dy);
        expect_host("output gradient", dy);
        const tensor_ref<const T> g = nn::contiguous(cx, path_, dy);
        std::array<tensor_ref<T>, M> dx{};
        for (auto& t : dx)
            t = cx.allocate(y_.extents());
        cx.stream->synchronize();
        const index_t batch = y_.extent(0), d = y_.extent(-1) / 2;
        const index_t rows = y_.numel() / std::max<index_t>(1, 2 * d);
        const index_t per_sample = batch == 0 ? 0 : rows / batch;
        // ---- host loop: dmu_m = dmu T_m / S,
        //      dlogvar_m = (dmu (mu_m - mu) - dlogvar) / S * dT_m/dlogvar_m,
        //      dT_m/dlogvar_m = -exp(logvar_m) T_m^2 ------------------------------------
        for (index_t r = 0; r < rows; ++r)
            for (index_t j = 0; j < d; ++j) {
                const index_t at = r * 2 * d;
                const stats s = product(xs_, p_, r / per_sample, at, j, d);
                const double gmu = double(g.data()[at + j]), glv = double(g.data()[at + d + j]);
                const double mu = s.total > 0.0 ? s.weighted / s.total : 0.0;
                for (std::size_t m = 0; m < M; ++m) {
                    double dmu = 0.0, dlv = 0.0;
                    if (s.total > 0.0 && present(p_, r / per_sample, m)) {
                        const double mu_m = double(xs_[m].data()[at + j]);
                        const double e = std::exp(double(xs_[m].data()[at + d + j]));
                        const double t = 1.0 / (e + eps_);
                        dmu = gmu * t / s.total;
                        dlv = (gmu * (mu_m - mu) - glv) / s.total * (-e * t * t);
                    }
                    dx[m].data()[at + j] = T(dmu);
                    dx[m].data()[at + d + j] = T(dlv);
                }
            }
        views<T, M> dxs{};
        for (std::size_t m = 0; m < M; ++m)
            dxs[m] = dx[m];
        return dxs;
    }

    bool with_prior() const noexcept { return with_prior_; }
    double eps() const noexcept { return eps_; }
    const std::string& path() const noexcept { return path_; }

private:
    /// S = sum of the precisions and sum of mu_m T_m at element (row offset `at`, column j).
    struct stats {
        double total = 0.0;
        double weighted = 0.0;
    };
    stats product(const views<T, M>& xs, const presence& p, index_t sample, index_t at, index_t j,
                  index_t d) const {
        stats s;
        if (with_prior_) s.total = 1.0 / (1.0 + eps_);  // mu 0, logvar 0
        for (std::size_t m = 0; m < M; ++m) {
            if (!present(p, sample, m)) continue;
            const double t = 1.0 / (std::exp(double(xs[m].data()[at + d + j])) + eps_);
            s.total += t;
            s.weighted += double(xs[m].data()[at + j]) * t;
        }
        return s;
    }
    static bool present(const presence& p, index_t b, std::size_t m) noexcept {
        return p.data() == nullptr || p.data()[b * p.stride(0) + index_t(m) * p.stride(1)];
    }

    void expect_host(detail::indexed_name what, const tensor_ref<const T>& t) const {
        if (t.space() != memory_space::host)
            throw shape_error(path_, "product_of_experts " + what.str(),
                              "a view of host memory (the product runs on the host)",
                              "device memory");
    }

    void check_inputs(const views<T, M>& xs) const {
        for (std::size_t m = 0; m < M; ++m) {
            const detail::indexed_name what{"product_of_experts input", int(m)};
            if (xs[m].data() == nullptr && xs[m].rank() == 0)
                throw shape_error(path_, what.str(),
                                  "a tensor (a missing modality is marked in the presence mask)",
                                  "an empty view");
            if (xs[m].rank() < 1 || xs[m].extent(-1) % 2 != 0 || xs[m].extents() != xs[0].extents())
                throw shape_error(path_, what.str(),
                                  "shape " + xs[0].extents().to_string() +
                                      " (input 0's; last axis [mu | logvar], even)",
                                  "shape " + xs[m].extents().to_string());
            expect_host({"input", int(m)}, xs[m]);
        }
    }

    bool with_prior_;
    double eps_;
    views<T, M> xs_{};
    tensor_ref<const T> y_{};
    presence p_{};
    bool saved_ = false;
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
