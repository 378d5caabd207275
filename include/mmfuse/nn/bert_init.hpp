#pragma once
/// \file
/// `nn::bert_init`: BERT's weight initialisation rule for any module tree (used by the
/// ViLBERT co-attention layer and the BLIP-2 Q-Former in `mmfuse/fusion/`).

#include <string>
#include <string_view>

#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::nn {

namespace detail {

/// Visitor behind `bert_init`: every parameter of rank >= 2 ~ N(0, std^2), every rank-1
/// parameter named "weight" (a LayerNorm gain) = 1, every other parameter (biases) = 0.
class bert_init_visitor {
public:
    bert_init_visitor(philox_generator& g, double std) : g_(&g), std_(std) {}
    template <compute_type T>
    void parameter(std::string_view name, nn::parameter<T>& p) {
        if (p.value.rank() >= 2)
            init::normal{.mean = 0.0, .std = std_}(*g_, p.value);
        else if (name == "weight")
            init::ones{}(p.value);
        else
            init::zeros{}(p.value);
    }
    template <class C>
    void child(std::string_view, C& c) {
        c.visit(*this);
    }
    void path(const std::string&) const noexcept {}

private:
    philox_generator* g_;
    double std_;
};

}  // namespace detail

/// BERT's `_init_weights` rule (Devlin et al. 2019; used by ViLBERT and the BLIP-2 Q-Former):
/// every weight matrix (Linear, attention projections, embeddings / query tokens: every
/// parameter of rank >= 2) ~ N(0, std^2) with std = initializer_range (0.02), LayerNorm gains
/// 1, biases 0. Draws in visit order. Applies to any module; parameters must be bound.
template <class Module>
void bert_init(Module& m, philox_generator& g, double std = 0.02) {
    detail::bert_init_visitor v(g, std);
    m.visit(v);
}

}  // namespace mmfuse::inline v0::nn
