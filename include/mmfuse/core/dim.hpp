#pragma once
/// \file
/// `dim<N>`: one extent that is either fixed at compile time (`dim<512>`, no storage) or
/// known only at run time (`dim<dyn>`, stores an `index_t`). This is Eigen's
/// `Dynamic`/fixed-size distinction and CuTe's `Int<N>`/`int`, in one template, so every
/// layer can be spelled both ways: `linear<512, 256>` and `linear<dyn, dyn>{512, 256}`.
///
/// Compatibility rule (Eigen's): two dims are compatible when either is dynamic or both
/// values are equal. Static mismatches are rejected at compile time by `compatible_dims`;
/// dynamic ones by `check_dim` at run time.

#include <concepts>
#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0 {

/// Extent fixed at compile time: an empty type whose value is `N`.
/// Constructing it from a run-time value checks that value (throws `shape_error`).
template <index_t N>
struct dim {
    static_assert(N >= 0 || N == dyn, "mmfuse::dim: an extent must be >= 0 or mmfuse::dyn");
    static constexpr index_t static_value = N;
    static constexpr bool is_static = true;

    constexpr dim() = default;
    /// Accepts a run-time value for generic code; it must equal `N`.
    explicit constexpr dim(index_t v) {
        if (v != N)
            throw shape_error("", "mmfuse::dim", "extent " + std::to_string(N),
                              "extent " + std::to_string(v));
    }
    constexpr index_t value() const noexcept { return N; }
    constexpr operator index_t() const noexcept { return N; }
};

/// Extent known only at run time.
template <>
struct dim<dyn> {
    static constexpr index_t static_value = dyn;
    static constexpr bool is_static = false;

    constexpr dim() = default;
    /// Implicit so that `linear<dyn, dyn>{512, 256}` reads naturally.
    constexpr dim(index_t v) : value_(v) {  // NOLINT(google-explicit-constructor)
        if (v < 0)
            throw shape_error("", "mmfuse::dim", "a non-negative extent",
                              "extent " + std::to_string(v));
    }
    /// Any static dim converts to a dynamic one.
    template <index_t N>
    constexpr dim(dim<N> d) : value_(d.value()) {}  // NOLINT(google-explicit-constructor)

    constexpr index_t value() const noexcept { return value_; }
    constexpr operator index_t() const noexcept { return value_; }

private:
    index_t value_ = 0;
};

/// Shorthand for a run-time extent.
using dyn_dim = dim<dyn>;

namespace detail {
template <class T>
struct is_dim : std::false_type {};
template <index_t N>
struct is_dim<dim<N>> : std::true_type {};
}  // namespace detail

/// Satisfied by every `dim<N>` (static or dynamic).
template <class T>
concept dim_type = detail::is_dim<std::remove_cvref_t<T>>::value;

/// True when the two compile-time extents may describe the same axis: either is dynamic or
/// they are equal (Eigen's rule).
template <index_t A, index_t B>
inline constexpr bool compatible_extents = (A == dyn || B == dyn || A == B);

/// Concept form of `compatible_extents` for two dim types.
template <class A, class B>
concept compatible_dims =
    dim_type<A> && dim_type<B> && compatible_extents<A::static_value, B::static_value>;

/// Run-time half of the rule: throws `shape_error` naming `module` and `what` unless
/// `actual` matches the dim (always true for static == static, checked for dynamic).
template <index_t N>
constexpr void check_dim(dim<N> expected, index_t actual, std::string_view module,
                         std::string_view what) {
    if (expected.value() != actual)
        throw shape_error(module, what, "extent " + std::to_string(expected.value()),
                          "extent " + std::to_string(actual));
}

}  // namespace mmfuse::inline v0
