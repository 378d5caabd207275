#pragma once
/// \file
/// Child names for containers: `compose::named<"text", L>` gives a child of `seq`,
/// `parallel` or `modalities` a name instead of its index, so its parameters are called
/// "text.proj.weight" rather than "0.proj.weight" (PyTorch's `nn.ModuleDict` / attribute
/// names; an unnamed child is named by its index, as in `nn.Sequential`).

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace mmfuse::inline v0::compose {

/// A string usable as a template argument: `named<"text", L>` (C++20 class-type NTTP).
/// `N` counts the terminating '\0'.
template <std::size_t N>
struct fixed_string {
    char chars[N]{};

    constexpr fixed_string(const char (&s)[N]) {  // NOLINT(google-explicit-constructor)
        std::copy_n(s, N, chars);
    }
    /// The characters without the terminating '\0'.
    constexpr std::string_view view() const noexcept { return {chars, N - 1}; }

    template <std::size_t M>
    constexpr bool operator==(const fixed_string<M>& o) const noexcept {
        return view() == o.view();
    }
};

/// Layer `L` under the name `Name`: behaves exactly as `L` (it *is* an `L`: same members,
/// widths, forward and backward); only the container that holds it uses the name for the
/// child's path. `Name` must be non-empty and contain no '.'.
template <fixed_string Name, class L>
struct named : L {
    static_assert(!Name.view().empty() && Name.view().find('.') == std::string_view::npos,
                  "mmfuse::named: a child name must be non-empty and contain no '.'");
    static constexpr fixed_string name = Name;

    named() = default;
    /// Wraps an already-built layer: `named<"text", linear<dyn, dyn>>{linear<dyn, dyn>{8, 4}}`.
    explicit named(L layer) : L(std::move(layer)) {}
    /// Builds the layer in place from its constructor arguments.
    template <class... Args>
    requires(sizeof...(Args) > 1 ||
             (sizeof...(Args) == 1 && !(std::is_same_v<std::remove_cvref_t<Args>, L> || ...) &&
              !(std::is_same_v<std::remove_cvref_t<Args>, named> ||
                ...))) explicit named(Args&&... args)
        : L(std::forward<Args>(args)...) {}
};

namespace detail {
template <class C>
struct is_named : std::false_type {};
template <fixed_string Name, class L>
struct is_named<named<Name, L>> : std::true_type {};
}  // namespace detail

/// True for `named<Name, L>`.
template <class C>
inline constexpr bool is_named_v = detail::is_named<C>::value;

namespace detail {
/// Visits child `c` of a container as `v.child(name, c)`: its `named` name, else its index
/// ("0", "1", ... like `nn.Sequential`). Strings are built only here (model construction).
template <class V, class C>
void visit_child(V& v, std::size_t index, C& c) {
    if constexpr (is_named_v<C>)
        v.child(C::name.view(), c);
    else
        v.child(std::string_view(std::to_string(index)), c);
}

/// True when no two of the `named` children among `Cs` share a name.
template <class... Cs>
constexpr bool unique_child_names() {
    constexpr std::size_t n = sizeof...(Cs);
    if constexpr (n < 2) {
        return true;
    } else {
        const std::string_view names[n] = {[] {
            if constexpr (is_named_v<Cs>)
                return Cs::name.view();
            else
                return std::string_view{};
        }()...};
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = i + 1; j < n; ++j)
                if (!names[i].empty() && names[i] == names[j]) return false;
        return true;
    }
}
}  // namespace detail

}  // namespace mmfuse::inline v0::compose
