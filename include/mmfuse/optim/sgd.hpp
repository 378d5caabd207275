#pragma once
/// \file
/// `optim::sgd`: stochastic gradient descent with momentum, dampening, Nesterov and L2
/// weight decay, with the exact update of `torch.optim.SGD` (single-tensor path).

#include <limits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/optim/buffers.hpp"

namespace mmfuse::inline v0::optim {

/// Hyper-parameters of `sgd`, named and defaulted as `torch.optim.SGD`'s arguments
/// (PyTorch requires lr; here it defaults to 1e-3).
struct sgd_options {
    double lr = 1e-3;
    double momentum = 0.0;
    double dampening = 0.0;
    double weight_decay = 0.0;
    bool nesterov = false;
};

/// `torch.optim.SGD` over a flat parameter buffer. Per element, each `step`:
///
///     g = grad + weight_decay * p                        (if weight_decay != 0)
///     if momentum != 0:
///         buf = g                                        (first step: a copy, no dampening)
///         buf = momentum * buf + (1 - dampening) * g     (later steps)
///         g = g + momentum * buf   if nesterov,  else  g = buf
///     p = p - lr * g
///
/// State: the momentum buffer (same layout as the parameters), allocated at construction
/// when momentum != 0. Invalid options throw `value_error` (as PyTorch's ValueError):
/// lr, momentum, weight_decay < 0; nesterov without momentum or with dampening.
template <compute_type T>
class sgd {
public:
    using value_type = T;

    /// An optimiser for buffers of `numel` elements.
    explicit sgd(index_t numel, sgd_options o = {}) : opt_(o), numel_(numel) {
        detail::expect_range("optim::sgd", "lr", o.lr, 0.0, inf, false);
        detail::expect_range("optim::sgd", "momentum", o.momentum, 0.0, inf, false);
        detail::expect_range("optim::sgd", "weight_decay", o.weight_decay, 0.0, inf, false);
        if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0))
            throw value_error("optim::sgd",
                              "Nesterov momentum requires a momentum > 0 and zero dampening");
        if (o.momentum != 0.0) buf_ = tensor<T>(extents{numel});
    }
    /// An optimiser for the parameters of `m`.
    template <class Net>
    explicit sgd(nn::model<Net>& m, sgd_options o = {}) : sgd(m.parameters().numel(), o) {}

    /// One update of `params` from `grads` (both flat, `numel` elements; no allocation).
    void step(tensor_ref<T> params, tensor_ref<const T> grads) {
        detail::expect_buffer("optim::sgd", "parameter buffer", params, numel_);
        detail::expect_buffer("optim::sgd", "gradient buffer", grads, numel_);
        T* p = params.data();
        const T* gr = grads.data();
        T* buf = buf_.data();
        const T wd = T(opt_.weight_decay), mom = T(opt_.momentum), damp = T(1.0 - opt_.dampening),
                neg_lr = T(-opt_.lr);
        const bool first = !started_;
        for (index_t i = 0; i < numel_; ++i) {
            T g = gr[i];
            if (opt_.weight_decay != 0.0) g = g + wd * p[i];
            if (opt_.momentum != 0.0) {
                buf[i] = first ? g : buf[i] * mom + damp * g;
                g = opt_.nesterov ? g + mom * buf[i] : buf[i];
            }
            p[i] = p[i] + neg_lr * g;
        }
        started_ = true;
        ++steps_;
    }
    /// `step(m.parameters(), m.gradients())`.
    template <class Net>
    void step(nn::model<Net>& m) {
        step(m.parameters(), m.gradients());
    }

    double lr() const noexcept { return opt_.lr; }
    /// Sets the learning rate for the next steps (e.g. from a schedule).
    void set_lr(double lr) {
        detail::expect_range("optim::sgd", "lr", lr, 0.0, inf, false);
        opt_.lr = lr;
    }
    const sgd_options& options() const noexcept { return opt_; }
    /// Steps taken so far.
    index_t step_count() const noexcept { return steps_; }
    /// The momentum buffer (empty without momentum; meaningful after the first step).
    tensor_ref<const T> momentum_buffer() const noexcept { return buf_.cref(); }

private:
    static constexpr double inf = std::numeric_limits<double>::infinity();
    sgd_options opt_;
    index_t numel_;
    tensor<T> buf_;
    bool started_ = false;
    index_t steps_ = 0;
};

template <class Net>
sgd(nn::model<Net>&, sgd_options = {}) -> sgd<typename Net::value_type>;

}  // namespace mmfuse::inline v0::optim
