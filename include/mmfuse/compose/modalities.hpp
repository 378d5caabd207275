#pragma once
/// \file
/// `compose::modalities<named<"text", A>, named<"image", B>, ...>`: one encoder per named
/// modality, mapping a tuple of inputs to a tuple of outputs (the front of every fusion
/// model, in the spirit of MultiBench's per-modality encoders).

#include <array>
#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mmfuse/compose/named.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::compose {

/// True for the "absent modality" view, `tensor_ref<const T>{}` (no data, rank 0).
template <class T>
constexpr bool is_absent(const tensor_ref<T>& x) noexcept {
    return x.data() == nullptr && x.rank() == 0;
}

/// Per-modality encoders: outputs[i] = M_i(inputs[i]).
///   Every `Ms` is `named<"name", Layer>` (names unique); the parameters of modality
///   "text" are called "text.<...>", as in a PyTorch `nn.ModuleDict`.
///   inputs / outputs: `std::array<tensor_ref<const T>, n>` in declaration order; each
///   encoder has its own shapes. A modality missing from the whole batch is passed as
///   `tensor_ref<const T>{}` (see `is_absent`): its encoder is skipped, its output and its
///   input gradient are absent too. (Per-sample presence masks are the fusion operators'
///   business.)
template <class... Ms>
class modalities {
    static constexpr std::size_t n = sizeof...(Ms);
    static_assert(n >= 1, "mmfuse::modalities: at least one modality is needed");
    static_assert((is_named_v<Ms> && ...),
                  "mmfuse::modalities: every modality must be compose::named<\"name\", Layer>");
    static_assert((nn::layer<Ms> && ...),
                  "mmfuse::modalities: every modality encoder must be an nn::layer");
    static_assert(detail::unique_child_names<Ms...>(),
                  "mmfuse::modalities: two modalities have the same name");
    using first = std::tuple_element_t<0, std::tuple<Ms...>>;
    static_assert((std::is_same_v<typename Ms::value_type, typename first::value_type> && ...),
                  "mmfuse::modalities: every encoder must have the same compute type");

public:
    using value_type = typename first::value_type;
    using T = value_type;
    using views = std::array<tensor_ref<const T>, n>;
    static constexpr std::size_t size = n;
    /// As a fusion interaction (fusion/fuser.hpp): per-modality layers inside `stages<...>`.
    static constexpr std::size_t arity = n;

    /// Position of the modality called `Name` (compile error if there is none).
    template <fixed_string Name>
    static constexpr std::size_t index_of() {
        constexpr std::array<bool, n> hit = {(Ms::name == Name)...};
        for (std::size_t i = 0; i < n; ++i)
            if (hit[i]) return i;
        throw "mmfuse::modalities: no modality has this name";  // not a constant expression
    }
    /// The modality names, in order.
    static constexpr std::array<std::string_view, n> names() { return {Ms::name.view()...}; }

    modalities() = default;
    explicit modalities(Ms... encoders) : encoders_(std::move(encoders)...) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        std::apply(
            [&](auto&... m) { (v.child(std::remove_cvref_t<decltype(m)>::name.view(), m), ...); },
            encoders_);
    }

    void reset_parameters(philox_generator& g) {
        std::apply([&](auto&... m) { (m.reset_parameters(g), ...); }, encoders_);
    }

    /// outputs[i] = encoder i (inputs[i]); absent inputs give absent outputs.
    views forward(nn::step_context<T>& cx, const views& xs) {
        views ys{};
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((ys[I] = is_absent(xs[I]) ? tensor_ref<const T>{}
                                       : std::get<I>(encoders_).forward(cx, xs[I])),
             ...);
        }
        (std::make_index_sequence<n>{});
        return ys;
    }

    /// The interaction form (fusion/fuser.hpp): the same per-modality map; the per-sample
    /// presence mask is not needed here (the fusers downstream apply it).
    views forward(nn::step_context<T>& cx, const views& xs, tensor_ref<const bool> /*presence*/) {
        return forward(cx, xs);
    }

    /// dxs[i] = encoder i's backward (dys[i]); absent gradients are skipped (the encoder
    /// then receives no gradient) and give absent dxs.
    views backward(nn::step_context<T>& cx,
                   const views& dys) requires(nn::differentiable_layer<Ms>&&...) {
        views dxs{};
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((dxs[I] = is_absent(dys[I]) ? tensor_ref<const T>{}
                                         : std::get<I>(encoders_).backward(cx, dys[I])),
             ...);
        }
        (std::make_index_sequence<n>{});
        return dxs;
    }

    /// The encoder called `Name`: `m.get<"text">()`.
    template <fixed_string Name>
    auto& get() noexcept {
        return std::get<index_of<Name>()>(encoders_);
    }
    /// Encoder `I`.
    template <std::size_t I>
    auto& get() noexcept {
        return std::get<I>(encoders_);
    }
    const std::string& path() const noexcept { return path_; }

private:
    std::tuple<Ms...> encoders_;
    std::string path_;
};

}  // namespace mmfuse::inline v0::compose
