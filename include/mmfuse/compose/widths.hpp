#pragma once
/// \file
/// Compile-time feature-width checks between composed layers (DESIGN decisions 2 and 3).
///
/// A layer declares its static widths as `static constexpr index_t in_features` /
/// `out_features` (`dyn` or absent: unknown until run time), and a layer whose output
/// width always equals its input width (activations, dropout, norms, residual blocks)
/// declares
///
///     static constexpr bool preserves_width = true;
///
/// so that the width flowing out of the previous stage passes through it:
/// `seq<linear<8, 16>, relu, linear<32, 4>>` is rejected because 16 reaches the second
/// linear through the activation. A mismatch fails to compile in `link_check`, whose
/// template arguments (shown in the compiler's "In instantiation of" note) name both
/// layers and `widths<out, in>`, and whose message is a sentence.

#include <array>
#include <cstddef>
#include <tuple>
#include <utility>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::compose {

/// A layer that declares `static constexpr bool preserves_width = true`.
template <class L>
concept width_preserving = requires {
    requires bool(L::preserves_width);
};

/// The two widths of a link, as they appear in diagnostics: `widths<16, 32>` = the
/// previous stage gives 16 features, the next one expects 32.
template <index_t Out, index_t In>
struct widths {};

/// Checks the link from stage `From` (layer `FromLayer`) to stage `To` (`ToLayer`) of a
/// `seq`; `W` is `widths<out, in>`. Instantiated for every link; fails when both widths are
/// static and differ.
template <std::size_t From, std::size_t To, class FromLayer, class ToLayer, class W>
struct link_check;
template <std::size_t From, std::size_t To, class FromLayer, class ToLayer, index_t Out, index_t In>
struct link_check<From, To, FromLayer, ToLayer, widths<Out, In>> {
    static_assert(compatible_extents<Out, In>,
                  "mmfuse::seq: the output width of stage From does not match the input width "
                  "of stage To (From, To, both layer types and widths<output width, input "
                  "width> are the arguments of this link_check; width-preserving stages "
                  "between them, such as activations, pass the width through)");
    static constexpr bool value = true;
};

/// Checks that branches `I` and `J` of a `parallel` accept the same input width; `W` is
/// `widths<width of I, width of J>`.
template <std::size_t I, std::size_t J, class BranchI, class BranchJ, class W>
struct branch_input_check;
template <std::size_t I, std::size_t J, class BranchI, class BranchJ, index_t A, index_t B>
struct branch_input_check<I, J, BranchI, BranchJ, widths<A, B>> {
    static_assert(compatible_extents<A, B>,
                  "mmfuse::parallel: branch I and branch J expect different input widths, but "
                  "every branch gets the same input (both branch types and widths<width of I, "
                  "width of J> are the arguments of this branch_input_check)");
    static constexpr bool value = true;
};

/// Checks that branches `I` and `J` of a summing or averaging `parallel` produce the same
/// output width; `W` is `widths<width of I, width of J>`.
template <std::size_t I, std::size_t J, class BranchI, class BranchJ, class W>
struct branch_output_check;
template <std::size_t I, std::size_t J, class BranchI, class BranchJ, index_t A, index_t B>
struct branch_output_check<I, J, BranchI, BranchJ, widths<A, B>> {
    static_assert(compatible_extents<A, B>,
                  "mmfuse::parallel: branch I and branch J produce different output widths, "
                  "which reduce::sum and reduce::mean cannot combine (use reduce::concat; both "
                  "branch types and widths<width of I, width of J> are the arguments of this "
                  "branch_output_check)");
    static constexpr bool value = true;
};

/// Checks that the wrapped layer of a `residual` maps width `In` to the same width `Out`.
template <class Layer, class W>
struct residual_check;
template <class Layer, index_t In, index_t Out>
struct residual_check<Layer, widths<In, Out>> {
    static_assert(compatible_extents<In, Out>,
                  "mmfuse::residual: the wrapped layer changes the feature width, so x + f(x) "
                  "is undefined (the layer type and widths<input width, output width> are the "
                  "arguments of this residual_check)");
    static constexpr bool value = true;
};

namespace detail {

/// Static width analysis of a chain of layers `Ls...` (see the file comment).
template <class... Ls>
struct chain {
    static constexpr std::size_t size = sizeof...(Ls);
    static constexpr std::array<index_t, size> in = {nn::static_in_features<Ls>()...};
    static constexpr std::array<index_t, size> out = {nn::static_out_features<Ls>()...};
    static constexpr std::array<bool, size> keeps = {width_preserving<Ls>...};

    struct flow {
        /// carried[k]: static width entering stage k (carried[size]: leaving the chain).
        std::array<index_t, size + 1> carried{};
        /// source[k]: the stage that fixed carried[k] (0 when none did).
        std::array<std::size_t, size + 1> source{};
    };
    static constexpr flow analyse() {
        flow f;
        index_t w = dyn;
        std::size_t s = 0;
        for (std::size_t k = 0; k < size; ++k) {
            f.carried[k] = w;
            f.source[k] = s;
            if (out[k] != dyn) {
                w = out[k];
                s = k;
            } else if (keeps[k]) {
                if (in[k] != dyn) {
                    w = in[k];
                    s = k;
                }
            } else {
                w = dyn;
                s = k;
            }
        }
        f.carried[size] = w;
        f.source[size] = s;
        return f;
    }
    static constexpr flow flows = analyse();

    /// Static width the chain accepts: the first declared input width reached through
    /// width-preserving stages only, else dyn.
    static constexpr index_t in_width() {
        for (std::size_t k = 0; k < size; ++k) {
            if (in[k] != dyn) return in[k];
            if (!keeps[k]) return dyn;
        }
        return dyn;
    }
    static constexpr index_t out_width = flows.carried[size];
    static constexpr bool preserves = (width_preserving<Ls> && ...);

    template <std::size_t I>
    using stage = std::tuple_element_t<I, std::tuple<Ls...>>;

    template <std::size_t K>
    static constexpr bool link_ok() {
        constexpr std::size_t s = flows.source[K];
        return link_check<s, K, stage<s>, stage<K>, widths<flows.carried[K], in[K]>>::value;
    }
    /// Instantiates `link_check` for every link (a fold, no recursion).
    static constexpr bool links_ok = []<std::size_t... K>(std::index_sequence<K...>) {
        return (link_ok<K>() && ...);
    }
    (std::make_index_sequence<size>{});
};

}  // namespace detail
}  // namespace mmfuse::inline v0::compose
