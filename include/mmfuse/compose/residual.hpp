#pragma once
/// \file
/// `compose::residual<L>`: y = x + L(x) (the skip connection of ResNets and transformers).

#include <string>
#include <utility>

#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/widths.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"

namespace mmfuse::inline v0::compose {

/// Skip connection around one layer: y = x + L(x).
///   x (..., F) -> y (..., F); L must map (..., F) to (..., F): checked at compile time
///   when both widths are static (`residual_check`), at run time otherwise (`shape_error`
///   naming the path).
///   Names: transparent — L's parameters appear under the residual's own path, as if L
///   stood there; `residual<named<"fn", L>>` puts them under "fn." instead.
/// Backward: dx = dy + dL/dx (dy), L's parameter gradients added by L.
template <nn::layer L>
class residual {
    static_assert(residual_check<
                  L, widths<nn::static_in_features<L>(), nn::static_out_features<L>()>>::value);

public:
    using value_type = typename L::value_type;
    using T = value_type;
    static constexpr index_t in_features = nn::static_in_features<L>() != dyn
                                               ? nn::static_in_features<L>()
                                               : nn::static_out_features<L>();
    static constexpr index_t out_features = in_features;
    static constexpr bool preserves_width = true;

    residual() = default;
    explicit residual(L inner) : inner_(std::move(inner)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        if constexpr (is_named_v<L>)
            v.child(L::name.view(), inner_);
        else
            inner_.visit(v);
    }

    void reset_parameters(philox_generator& g) { inner_.reset_parameters(g); }

    /// x -> x + L(x), allocated from the workspace.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        const tensor_ref<const T> f = inner_.forward(cx, x);
        if (f.extents() != x.extents())
            throw shape_error(path_, "residual branch output",
                              "shape " + x.extents().to_string() + " (that of the input x)",
                              "shape " + f.extents().to_string());
        const tensor_ref<T> y = cx.allocate(x.extents());
        ops::add<T>(cx.op(path_), x, f, y);
        return y;
    }

    /// dy -> dx = dy + L.backward(dy).
    tensor_ref<const T> backward(nn::step_context<T>& cx,
                                 tensor_ref<const T> dy) requires nn::differentiable_layer<L> {
        const tensor_ref<const T> dl = inner_.backward(cx, dy);
        if (dl.extents() != dy.extents())
            throw shape_error(path_, "residual branch input gradient",
                              "shape " + dy.extents().to_string(),
                              "shape " + dl.extents().to_string());
        const tensor_ref<T> dx = cx.allocate(dy.extents());
        ops::add<T>(cx.op(path_), dy, dl, dx);
        return dx;
    }

    L& inner() noexcept { return inner_; }
    const std::string& path() const noexcept { return path_; }

private:
    L inner_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::compose
