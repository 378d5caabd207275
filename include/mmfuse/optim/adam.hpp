#pragma once
/// \file
/// `optim::adam` and `optim::adamw`: Adam (Kingma & Ba 2015) with L2 weight decay, and
/// AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, with the exact update of
/// `torch.optim.Adam` / `torch.optim.AdamW` (single-tensor path), AMSGrad included.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/optim/buffers.hpp"

namespace mmfuse::inline v0::optim {

/// (beta1, beta2) of Adam.
struct adam_betas {
    double beta1 = 0.9;
    double beta2 = 0.999;
};

/// Hyper-parameters of `adam` (`torch.optim.Adam`'s arguments and defaults).
struct adam_options {
    double lr = 1e-3;
    adam_betas betas{};
    double eps = 1e-8;
    double weight_decay = 0.0;
    bool amsgrad = false;
};

/// Hyper-parameters of `adamw` (`torch.optim.AdamW`'s: weight_decay defaults to 1e-2).
struct adamw_options {
    double lr = 1e-3;
    adam_betas betas{};
    double eps = 1e-8;
    double weight_decay = 1e-2;
    bool amsgrad = false;
};

/// The Adam family over a flat parameter buffer; `Decoupled` selects AdamW. Per element,
/// step t = 1, 2, ... does (PyTorch's order; scalars in double, element math in T):
///
///     AdamW:  p = p * (1 - lr * weight_decay)          Adam:  g = g + weight_decay * p
///     m = lerp(m, g, 1 - beta1)                        (= beta1 m + (1 - beta1) g)
///     v = beta2 * v + (1 - beta2) * g * g
///     v_max = max(v_max, v)                            (amsgrad; then v_max replaces v)
///     bias_correction1 = 1 - beta1^t,  bias_correction2 = 1 - beta2^t
///     step_size = lr / bias_correction1
///     denom = sqrt(v) / sqrt(bias_correction2) + eps
///     p = p - step_size * (m / denom)
///
/// `lerp(a, b, w)` is PyTorch's: a + w (b - a) when |w| < 0.5, else b - (b - a)(1 - w).
/// State: m and v (and v_max with amsgrad) in the parameters' layout, allocated (zeroed) at
/// construction. Invalid options throw `value_error` (lr, eps, weight_decay < 0; a beta
/// outside [0, 1)).
template <compute_type T, bool Decoupled>
class adam_family {
public:
    using value_type = T;
    using options_type = std::conditional_t<Decoupled, adamw_options, adam_options>;

    /// An optimiser for buffers of `numel` elements.
    explicit adam_family(index_t numel, options_type o = {})
        : opt_(o), numel_(numel), m_(extents{numel}), v_(extents{numel}) {
        constexpr double inf = std::numeric_limits<double>::infinity();
        detail::expect_range(who, "lr", o.lr, 0.0, inf, false);
        detail::expect_range(who, "eps", o.eps, 0.0, inf, false);
        detail::expect_range(who, "beta1", o.betas.beta1, 0.0, 1.0, true);
        detail::expect_range(who, "beta2", o.betas.beta2, 0.0, 1.0, true);
        detail::expect_range(who, "weight_decay", o.weight_decay, 0.0, inf, false);
        if (o.amsgrad) v_max_ = tensor<T>(extents{numel});
    }
    /// An optimiser for the parameters of `m`.
    template <class Net>
    explicit adam_family(nn::model<Net>& m, options_type o = {})
        : adam_family(m.parameters().numel(), o) {}

    /// One update of `params` from `grads` (both flat, `numel` elements; no allocation).
    void step(tensor_ref<T> params, tensor_ref<const T> grads) {
        detail::expect_buffer(who, "parameter buffer", params, numel_);
        detail::expect_buffer(who, "gradient buffer", grads, numel_);
        ++steps_;
        const double t = double(steps_);
        const double bias_correction1 = 1.0 - std::pow(opt_.betas.beta1, t);
        const double bias_correction2 = 1.0 - std::pow(opt_.betas.beta2, t);
        const T step_size = T(opt_.lr / bias_correction1);
        const T bc2_sqrt = T(std::sqrt(bias_correction2));
        const T w1 = T(1.0 - opt_.betas.beta1), beta2 = T(opt_.betas.beta2),
                w2 = T(1.0 - opt_.betas.beta2), eps = T(opt_.eps), wd = T(opt_.weight_decay),
                decay = T(1.0 - opt_.lr * opt_.weight_decay);
        const bool lerp_low = std::abs(1.0 - opt_.betas.beta1) < 0.5;
        const bool has_wd = opt_.weight_decay != 0.0;
        T* p = params.data();
        const T* gr = grads.data();
        T* m = m_.data();
        T* v = v_.data();
        T* vmax = v_max_.data();
        for (index_t i = 0; i < numel_; ++i) {
            T g = gr[i];
            if constexpr (Decoupled) {
                if (has_wd) p[i] = p[i] * decay;
            } else {
                if (has_wd) g = g + wd * p[i];
            }
            m[i] = lerp_low ? m[i] + w1 * (g - m[i]) : g - (g - m[i]) * (T(1) - w1);
            v[i] = v[i] * beta2 + w2 * g * g;
            T second = v[i];
            if (opt_.amsgrad) {
                vmax[i] = std::max(vmax[i], v[i]);
                second = vmax[i];
            }
            const T denom = std::sqrt(second) / bc2_sqrt + eps;
            p[i] = p[i] - step_size * (m[i] / denom);
        }
    }
    /// `step(m.parameters(), m.gradients())`.
    template <class Net>
    void step(nn::model<Net>& model) {
        step(model.parameters(), model.gradients());
    }

    double lr() const noexcept { return opt_.lr; }
    /// Sets the learning rate for the next steps (e.g. from a schedule).
    void set_lr(double lr) {
        detail::expect_range(who, "lr", lr, 0.0, std::numeric_limits<double>::infinity(), false);
        opt_.lr = lr;
    }
    const options_type& options() const noexcept { return opt_; }
    /// Steps taken so far (PyTorch's `state['step']`).
    index_t step_count() const noexcept { return steps_; }
    /// First moment m (`exp_avg`), second moment v (`exp_avg_sq`), running max of v
    /// (`max_exp_avg_sq`, empty without amsgrad).
    tensor_ref<const T> exp_avg() const noexcept { return m_.cref(); }
    tensor_ref<const T> exp_avg_sq() const noexcept { return v_.cref(); }
    tensor_ref<const T> max_exp_avg_sq() const noexcept { return v_max_.cref(); }

private:
    static constexpr const char* who = Decoupled ? "optim::adamw" : "optim::adam";
    options_type opt_;
    index_t numel_;
    tensor<T> m_;
    tensor<T> v_;
    tensor<T> v_max_;
    index_t steps_ = 0;
};

/// `torch.optim.Adam` (L2 weight decay added to the gradient): `adam<float> opt(n, {...})`
/// or `optim::adam opt(model, {.lr = 1e-3})`.
template <compute_type T>
class adam : public adam_family<T, false> {
public:
    using adam_family<T, false>::adam_family;
};
/// `torch.optim.AdamW` (decoupled weight decay, default 1e-2).
template <compute_type T>
class adamw : public adam_family<T, true> {
public:
    using adam_family<T, true>::adam_family;
};

template <class Net>
adam(nn::model<Net>&, adam_options = {}) -> adam<typename Net::value_type>;
template <class Net>
adamw(nn::model<Net>&, adamw_options = {}) -> adamw<typename Net::value_type>;

}  // namespace mmfuse::inline v0::optim
