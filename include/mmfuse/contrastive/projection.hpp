#pragma once
/// \file
/// `contrastive::projection_head`: the last step of each tower in a CLIP-style model, a
/// bias-free linear map into the shared embedding space followed by L2 normalisation
/// (open_clip: `x @ proj` in the vision tower, `x @ text_projection` in the text tower, then
/// `F.normalize(features, dim=-1)` before the loss; reference contrastive.md section 0).

#include <cmath>
#include <utility>

#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/nn/l2_normalize.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::contrastive {

/// Projection into the contrastive embedding space:
///   x (..., In) -> y (..., Out);  y = normalize(x W^T) = x W^T / max(||x W^T||_2, eps)
/// so every output row has unit length (rows shorter than eps are divided by eps).
/// Children: "proj", a `nn::linear<In, Out, T>` without bias, and "normalize", a
/// `nn::l2_normalize<Out, T>`. Parameter: "proj.weight", shape (Out, In) (`nn.Linear`'s
/// layout; open_clip stores its `proj` / `text_projection` as (In, Out) = W^T, so a checkpoint
/// from there loads transposed).
/// reset_parameters: W ~ N(0, 1 / In), open_clip's init of both projections (std In^-1/2);
/// the draws come from mmfuse's Philox stream, not PyTorch's.
/// Backward: dh = (dy - (dy . y) y) / ||h|| through the normalisation (h = x W^T), then
/// dx = dh W, and dW = dh^T x is added into "proj.weight".grad. `projection_head<768, 512>` checks
/// widths at compile time, `projection_head<dyn, dyn>{768, 512}` at run time.
template <index_t In = dyn, index_t Out = dyn, compute_type T = float>
class projection_head : public compose::seq<compose::named<"proj", nn::linear<In, Out, T>>,
                                            compose::named<"normalize", nn::l2_normalize<Out, T>>> {
    using proj_layer = compose::named<"proj", nn::linear<In, Out, T>>;
    using normalize_layer = compose::named<"normalize", nn::l2_normalize<Out, T>>;
    using base = compose::seq<proj_layer, normalize_layer>;

public:
    /// Widths In -> Out; `eps` is the normalisation's floor on the norm (PyTorch's 1e-12).
    explicit projection_head(dim<In> in = {}, dim<Out> out = {}, double eps = 1e-12)
        : base(proj_layer(in, out, false), normalize_layer(out, eps)) {}

    /// W ~ N(0, 1 / In) (open_clip).
    void reset_parameters(philox_generator& g) {
        nn::linear<In, Out, T>& p = proj();
        const double fan_in = double(p.weight().shape[1]);
        init::normal{.mean = 0.0, .std = fan_in > 0 ? 1.0 / std::sqrt(fan_in) : 0.0}(
            g, p.weight().value);
    }

    /// The bias-free linear map ("proj").
    nn::linear<In, Out, T>& proj() noexcept { return this->template get<0>(); }
    const nn::linear<In, Out, T>& proj() const noexcept { return this->template get<0>(); }
};

}  // namespace mmfuse::inline v0::contrastive
