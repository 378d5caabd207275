#pragma once
/// \file
/// `nn::mlp`: linear -> activation -> linear, the position-wise feed-forward block of a
/// transformer (Vaswani et al. 2017, eq. 2) and torchvision's two-layer `MLP`.

#include <string>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::nn {

/// y = fc2(act(fc1(x))) on the last axis:
///   x (..., In) -> h (..., Hidden) -> y (..., Out).
///   children: fc1 = linear<In, Hidden>, act = activation<Act> (no parameters), fc2 =
///   linear<Hidden, Out>; parameters fc1.weight (Hidden, In), fc1.bias (Hidden), fc2.weight
///   (Out, Hidden), fc2.bias (Out), each with `nn.Linear`'s default init (fc1 drawn first).
/// PyTorch twin (state_dict keys match 1:1):
///
///     class MLP(nn.Module):
///         def __init__(self, i, h, o, bias=True):
///             super().__init__()
///             self.fc1 = nn.Linear(i, h, bias); self.act = nn.ReLU(); self.fc2 = nn.Linear(h, o,
///             bias)
///         def forward(self, x): return self.fc2(self.act(self.fc1(x)))
///
/// The default activation is ReLU, PyTorch's default in `nn.TransformerEncoderLayer` and
/// torchvision's `MLP`; pass `ops::unary_kind::gelu_erf` for the ViT / BERT feed-forward.
/// `mlp<512, 2048, 512>` checks widths at compile time; `mlp<dyn, dyn, dyn>{512, 2048, 512}`
/// at run time. Backward runs the children in reverse and adds into their parameter grads.
template <index_t In = dyn, index_t Hidden = dyn, index_t Out = dyn,
          ops::unary_kind Act = ops::unary_kind::relu, compute_type T = float>
class mlp {
public:
    using value_type = T;
    static constexpr index_t in_features = In;
    static constexpr index_t hidden_features = Hidden;
    static constexpr index_t out_features = Out;
    static constexpr ops::unary_kind activation_kind = Act;

    explicit mlp(dim<In> in = {}, dim<Hidden> hidden = {}, dim<Out> out = {}, bool bias = true)
        : fc1_(in, hidden, bias), fc2_(hidden, out, bias) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("fc1", fc1_);
        v.child("act", act_);
        v.child("fc2", fc2_);
    }

    /// fc1 then fc2, each with `nn.Linear`'s default init.
    void reset_parameters(philox_generator& g) {
        fc1_.reset_parameters(g);
        act_.reset_parameters(g);
        fc2_.reset_parameters(g);
    }

    /// x (..., In) -> y (..., Out), allocated from the workspace. Errors name the child
    /// ("ffn.fc1") that rejected the input.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        return fc2_.forward(cx, act_.forward(cx, fc1_.forward(cx, x)));
    }

    /// dy (..., Out) -> dx (..., In); adds into every parameter grad.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        return fc1_.backward(cx, act_.backward(cx, fc2_.backward(cx, dy)));
    }

    linear<In, Hidden, T>& fc1() noexcept { return fc1_; }
    activation<Act, T>& act() noexcept { return act_; }
    linear<Hidden, Out, T>& fc2() noexcept { return fc2_; }
    const std::string& path() const noexcept { return path_; }

private:
    linear<In, Hidden, T> fc1_;
    activation<Act, T> act_;
    linear<Hidden, Out, T> fc2_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::nn
