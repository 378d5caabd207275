#pragma once
/// \file
/// The three generic fusion architectures (docs/fusion.md, "Templates"), each a module whose
/// children are named as in a PyTorch model ("encoders.text.weight", "fusion.…", "head.…"):
///
///     early<Stems, Fuser, Encoder>          y = Encoder(Fuser(Stems(x), p))
///         fuse raw or token features first, then ONE shared encoder (ConcatEarly,
///         single-stream transformers).
///     late<Encoders, Fuser, Head>           y = Head(Fuser(Encoders(x), p))
///         one branch per modality, combined once at the end (concat, logit averaging,
///         gates, tensor/bilinear pooling, product of experts).
///     hybrid<Encoders, Interaction, Fuser, Head>
///                                           y = Head(Fuser(Interaction(Encoders(x), p), p))
///         cross-modal exchange at intermediate depths (`stages<...>` chains several), then
///         a late combination.
///
/// `Stems` / `Encoders` are `compose::modalities<named<"text", L>, ...>`: the modality names
/// and order, one layer per modality (`fusion::identity<T>` for none). Inputs are
/// `views<T, M>` in that order; `presence` is the per-sample (B, M) mask (fuser.hpp).
/// A whole-batch-absent modality can be passed as an empty view: its encoder is skipped.
/// `early` is itself a fuser, so `late<modalities<...>, early<...>, Head>` nests.

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mmfuse/compose/modalities.hpp"
#include "mmfuse/compose/named.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/fusion/fuser.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::fusion {

namespace detail {
template <class C>
struct is_modalities : std::false_type {};
template <class... Ms>
struct is_modalities<compose::modalities<Ms...>> : std::true_type {};
}  // namespace detail

/// `compose::modalities<...>` of any named layers.
template <class C>
concept modality_encoders = detail::is_modalities<C>::value;

/// Interactions applied in order: {x_m} -> I_0 -> I_1 -> ... (children "0", "1", ...).
/// Every stage has the same arity and compute type.
template <interaction... Is>
class stages {
    static_assert(sizeof...(Is) >= 1, "mmfuse::fusion::stages: at least one stage is needed");
    using first = std::tuple_element_t<0, std::tuple<Is...>>;
    static_assert(((Is::arity == first::arity) && ...),
                  "mmfuse::fusion::stages: every stage must take the same number of modalities");
    static_assert((std::is_same_v<typename Is::value_type, typename first::value_type> && ...),
                  "mmfuse::fusion::stages: every stage must have the same compute type");

public:
    using value_type = typename first::value_type;
    using T = value_type;
    static constexpr std::size_t arity = first::arity;

    stages() = default;
    explicit stages(Is... s) : stages_(std::move(s)...) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (compose::detail::visit_child(v, I, std::get<I>(stages_)), ...);
        }
        (std::make_index_sequence<sizeof...(Is)>{});
    }
    void reset_parameters(philox_generator& g) {
        std::apply([&](auto&... s) { (s.reset_parameters(g), ...); }, stages_);
    }

    views<T, arity> forward(nn::step_context<T>& cx, const views<T, arity>& xs, presence p = {}) {
        views<T, arity> ys = xs;
        std::apply([&](auto&... s) { ((ys = s.forward(cx, ys, p)), ...); }, stages_);
        return ys;
    }

    views<T, arity> backward(nn::step_context<T>& cx, const views<T, arity>& dys) requires(
        differentiable_interaction<Is>&&...) {
        views<T, arity> d = dys;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            constexpr std::size_t n = sizeof...(Is);
            ((d = std::get<n - 1 - I>(stages_).backward(cx, d)), ...);
        }
        (std::make_index_sequence<sizeof...(Is)>{});
        return d;
    }

    template <std::size_t I>
    auto& get() noexcept {
        return std::get<I>(stages_);
    }
    const std::string& path() const noexcept { return path_; }

private:
    std::tuple<Is...> stages_;
    std::string path_;
};

namespace detail {

/// The "no interaction stage" of `fusion_chain` (early and late fusion).
struct no_interaction {};

/// The one implementation of early, late and hybrid fusion:
///   y = Back(Fuser(Inter(Front({x_m}), p), p))  with children FrontName, ["interaction"],
///   "fusion", BackName; Inter = `no_interaction` leaves the stage (and its child) out.
template <compose::fixed_string FrontName, compose::fixed_string BackName, class Front, class Inter,
          class Fuser, class Back>
class fusion_chain {
    static constexpr bool has_interaction = !std::is_same_v<Inter, no_interaction>;

public:
    using value_type = typename Fuser::value_type;
    using T = value_type;
    static constexpr std::size_t arity = Fuser::arity;

    fusion_chain() = default;
    fusion_chain(Front front, Fuser fusion, Back back) requires(!has_interaction)
        : front_(std::move(front)), fusion_(std::move(fusion)), back_(std::move(back)) {}
    fusion_chain(Front front, Inter inter, Fuser fusion, Back back) requires has_interaction
        : front_(std::move(front)),
          inter_(std::move(inter)),
          fusion_(std::move(fusion)),
          back_(std::move(back)) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child(FrontName.view(), front_);
        if constexpr (has_interaction) v.child("interaction", inter_);
        v.child("fusion", fusion_);
        v.child(BackName.view(), back_);
    }
    void reset_parameters(philox_generator& g) {
        front_.reset_parameters(g);
        if constexpr (has_interaction) inter_.reset_parameters(g);
        fusion_.reset_parameters(g);
        back_.reset_parameters(g);
    }

    /// {x_m} (each front layer's input shape), presence (B, M) -> the back layer's output.
    tensor_ref<const T> forward(nn::step_context<T>& cx, const views<T, arity>& xs,
                                presence p = {}) {
        views<T, arity> zs = front_.forward(cx, xs);
        if constexpr (has_interaction) zs = inter_.forward(cx, zs, p);
        return back_.forward(cx, fusion_.forward(cx, zs, p));
    }
    /// dy -> {dx_m}; adds into every parameter gradient.
    views<T, arity> backward(nn::step_context<T>& cx,
                             tensor_ref<const T> dy) requires nn::differentiable_layer<Back> &&
        differentiable_fuser<Fuser> &&(!has_interaction || differentiable_interaction<Inter>) {
        views<T, arity> dzs = fusion_.backward(cx, back_.backward(cx, dy));
        if constexpr (has_interaction) dzs = inter_.backward(cx, dzs);
        return front_.backward(cx, dzs);
    }

    Fuser& fusion() noexcept { return fusion_; }
    const std::string& path() const noexcept { return path_; }

protected:
    Front front_;
    [[no_unique_address]] Inter inter_;
    Fuser fusion_;
    Back back_;
    std::string path_;
};

}  // namespace detail

/// Early fusion: y = Encoder(Fuser(Stems({x_m}), p)). Children "stems", "fusion", "encoder".
///   Stems: `compose::modalities<...>` (identity stems for raw features); Fuser: arity M;
///   Encoder: one `nn::layer` on the fused tensor. Itself a fuser of arity M:
///   forward(cx, {x_m}, presence = {}) -> y, backward(cx, dy) -> {dx_m}.
template <modality_encoders Stems, fuser Fuser, nn::layer Encoder>
class early : public detail::fusion_chain<"stems", "encoder", Stems, detail::no_interaction, Fuser,
                                          Encoder> {
    static_assert(Stems::size == Fuser::arity,
                  "mmfuse::fusion::early: the fuser's arity must equal the number of modalities");
    static_assert(std::is_same_v<typename Stems::value_type, typename Fuser::value_type> &&
                      std::is_same_v<typename Encoder::value_type, typename Fuser::value_type>,
                  "mmfuse::fusion::early: stems, fuser and encoder need one compute type");
    using chain =
        detail::fusion_chain<"stems", "encoder", Stems, detail::no_interaction, Fuser, Encoder>;

public:
    using chain::chain;
    Stems& stems() noexcept { return this->front_; }
    Encoder& encoder() noexcept { return this->back_; }
};

/// Late fusion: y = Head(Fuser(Encoders({x_m}), p)). Children "encoders", "fusion", "head".
///   Encoders: `compose::modalities<...>`, one branch per modality; Fuser: arity M; Head: an
///   `nn::layer` on the fused tensor (`fusion::identity<T>` by default).
///   forward(cx, {x_m}, presence = {}) -> y, backward(cx, dy) -> {dx_m}.
template <modality_encoders Encoders, fuser Fuser,
          nn::layer Head = identity<typename Fuser::value_type>>
class late : public detail::fusion_chain<"encoders", "head", Encoders, detail::no_interaction,
                                         Fuser, Head> {
    static_assert(Encoders::size == Fuser::arity,
                  "mmfuse::fusion::late: the fuser's arity must equal the number of modalities");
    static_assert(std::is_same_v<typename Encoders::value_type, typename Fuser::value_type> &&
                      std::is_same_v<typename Head::value_type, typename Fuser::value_type>,
                  "mmfuse::fusion::late: encoders, fuser and head need one compute type");
    using chain =
        detail::fusion_chain<"encoders", "head", Encoders, detail::no_interaction, Fuser, Head>;

public:
    using chain::chain;
    late() = default;
    late(Encoders encoders, Fuser fusion) : chain(std::move(encoders), std::move(fusion), Head{}) {}
    Encoders& encoders() noexcept { return this->front_; }
    Head& head() noexcept { return this->back_; }
};

/// Hybrid fusion: y = Head(Fuser(Interaction(Encoders({x_m}), p), p)). Children "encoders",
/// "interaction", "fusion", "head". The interaction (often `stages<...>`) exchanges
/// information between the modality streams at intermediate depths; the fuser combines the
/// streams once at the end. forward(cx, {x_m}, presence = {}) -> y, backward(cx, dy) -> {dx_m}.
template <modality_encoders Encoders, interaction Interaction, fuser Fuser,
          nn::layer Head = identity<typename Fuser::value_type>>
class hybrid : public detail::fusion_chain<"encoders", "head", Encoders, Interaction, Fuser, Head> {
    static_assert(Encoders::size == Interaction::arity && Interaction::arity == Fuser::arity,
                  "mmfuse::fusion::hybrid: encoders, interaction and fuser must agree on the "
                  "number of modalities");
    static_assert(
        std::is_same_v<typename Encoders::value_type, typename Fuser::value_type> &&
            std::is_same_v<typename Interaction::value_type, typename Fuser::value_type> &&
            std::is_same_v<typename Head::value_type, typename Fuser::value_type>,
        "mmfuse::fusion::hybrid: every part needs one compute type");
    using chain = detail::fusion_chain<"encoders", "head", Encoders, Interaction, Fuser, Head>;

public:
    using chain::chain;
    hybrid() = default;
    hybrid(Encoders encoders, Interaction interaction, Fuser fusion)
        : chain(std::move(encoders), std::move(interaction), std::move(fusion), Head{}) {}
    Encoders& encoders() noexcept { return this->front_; }
    Interaction& interaction() noexcept { return this->inter_; }
    Head& head() noexcept { return this->back_; }
};

}  // namespace mmfuse::inline v0::fusion
