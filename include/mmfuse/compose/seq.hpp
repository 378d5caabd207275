#pragma once
/// \file
/// `compose::seq<Ls...>`: layers applied one after the other (`torch.nn.Sequential`).

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/widths.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::compose {

/// A flat chain of layers: y = L_{n-1}( ... L_1(L_0(x))), `torch.nn.Sequential`.
///   x: whatever stage 0 accepts -> y: whatever the last stage returns.
///   Children are named "0", "1", ... (so PyTorch's `0.weight`), or by `named<"proj", L>`.
///   No parameters of its own; `reset_parameters` resets every stage in order.
/// The stages live in one `std::tuple` (never nested); forward runs them left to right,
/// backward right to left (a fold over the index pack each way). Static widths are checked
/// at compile time between neighbours (`link_check`, see compose/widths.hpp); dynamic
/// mismatches throw `shape_error` from the stage that receives the wrong width, naming its
/// path ("text.1"). A `seq` is itself a layer, and a differentiable one when every stage is.
template <nn::layer... Ls>
class seq {
    static_assert(sizeof...(Ls) >= 1, "mmfuse::seq: a seq needs at least one stage");
    static_assert(
        (std::is_same_v<typename Ls::value_type,
                        typename std::tuple_element_t<0, std::tuple<Ls...>>::value_type> &&
         ...),
        "mmfuse::seq: every stage must have the same compute type (float or double)");
    static_assert(detail::unique_child_names<Ls...>(),
                  "mmfuse::seq: two stages are named<> with the same name");
    using chain = detail::chain<Ls...>;
    static_assert(chain::links_ok);

public:
    using value_type = typename std::tuple_element_t<0, std::tuple<Ls...>>::value_type;
    using T = value_type;
    static constexpr std::size_t size = sizeof...(Ls);
    /// Static width accepted by the chain (`dyn` when stage 0 does not fix it).
    static constexpr index_t in_features = chain::in_width();
    /// Static width produced by the chain (`dyn` when unknown at compile time).
    static constexpr index_t out_features = chain::out_width;
    /// True when every stage preserves the width.
    static constexpr bool preserves_width = chain::preserves;

    seq() = default;
    /// Takes the stages (e.g. dynamic-width layers built from a config).
    explicit seq(Ls... stages) : stages_(std::move(stages)...) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (detail::visit_child(v, I, std::get<I>(stages_)), ...);
        }
        (std::make_index_sequence<size>{});
    }

    void reset_parameters(philox_generator& g) {
        std::apply([&](auto&... s) { (s.reset_parameters(g), ...); }, stages_);
    }

    /// x -> y through every stage, left to right.
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        std::apply([&](auto&... s) { ((x = s.forward(cx, x)), ...); }, stages_);
        return x;
    }

    /// dy -> dx through every stage, right to left; adds every stage's parameter gradients.
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) requires(
        nn::differentiable_layer<Ls>&&...) {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((dy = std::get<size - 1 - I>(stages_).backward(cx, dy)), ...);
        }
        (std::make_index_sequence<size>{});
        return dy;
    }

    /// Stage `I`.
    template <std::size_t I>
    auto& get() noexcept {
        return std::get<I>(stages_);
    }
    template <std::size_t I>
    const auto& get() const noexcept {
        return std::get<I>(stages_);
    }
    const std::string& path() const noexcept { return path_; }

private:
    std::tuple<Ls...> stages_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::compose
