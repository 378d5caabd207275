#pragma once
/// \file
/// Shapes at two levels.
///
/// * `extents` — the run-time list of extents of a tensor (rank <= `max_rank`), stored
///   inline so that building or slicing a view never allocates. Printed as `(64, 77, 768)`.
/// * `shape<Dims...>` — a compile-time shape *type* whose rank is static and whose every
///   axis is a `dim<N>` (static) or `dim<dyn>` (run-time). Layers declare their input and
///   output shapes with it; two shape types are `compatible_shapes` when their ranks agree
///   and every pair of axes is compatible (Eigen's rule). This is the single template that
///   covers xtensor's `xarray` / `xtensor<T, N>` / `xtensor_fixed` spectrum.

#include <algorithm>
#include <array>
#include <initializer_list>
#include <span>
#include <string>
#include <tuple>
#include <utility>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0 {

/// Run-time extents of a tensor: rank in [0, max_rank], every extent >= 0.
/// Axis arguments may be negative and count from the end, as in PyTorch.
class extents {
public:
    /// Rank-0 (scalar) extents.
    constexpr extents() = default;

    /// `extents{64, 77, 768}`. Throws `shape_error` if the rank exceeds `max_rank` or an
    /// extent is negative.
    constexpr extents(std::initializer_list<index_t> list) {
        assign(std::span<const index_t>(list.begin(), list.size()));
    }

    /// Extents copied from any contiguous list of values (same checks as above).
    static constexpr extents from(std::span<const index_t> values) {
        extents e;
        e.assign(values);
        return e;
    }

    constexpr int rank() const noexcept { return rank_; }

    /// Extent of `axis`; negative axes count from the end. Throws on an invalid axis.
    constexpr index_t operator[](int axis) const { return e_[normalize_axis(axis)]; }

    /// Sets the extent of `axis` (negative axes allowed). Throws on an invalid axis or a
    /// negative extent.
    constexpr void set(int axis, index_t value) {
        if (value < 0)
            throw shape_error("", "mmfuse::extents", "a non-negative extent",
                              std::to_string(value));
        e_[normalize_axis(axis)] = value;
    }

    /// Number of elements (1 for rank 0). Use `numel_overflows()` first on untrusted input.
    constexpr index_t numel() const noexcept {
        for (int i = 0; i < rank_; ++i)
            if (e_[i] == 0) return 0;  // before multiplying: the other extents may overflow
        index_t n = 1;
        for (int i = 0; i < rank_; ++i)
            n *= e_[i];
        return n;
    }

    /// True when the product of the extents does not fit in `index_t` (untrusted headers).
    constexpr bool numel_overflows() const noexcept {
        index_t n = 1;
        for (int i = 0; i < rank_; ++i) {
            if (e_[i] == 0) return false;
        }
        for (int i = 0; i < rank_; ++i) {
            if (__builtin_mul_overflow(n, e_[i], &n)) return true;
        }
        return false;
    }

    /// Maps a possibly negative axis onto [0, rank). Throws `shape_error` when out of range.
    constexpr int normalize_axis(int axis) const {
        const int a = axis < 0 ? axis + rank_ : axis;
        if (a < 0 || a >= rank_)
            throw shape_error(
                "", "axis",
                "an axis in [" + std::to_string(-rank_) + ", " + std::to_string(rank_) + ")",
                "axis " + std::to_string(axis) + " of extents " + to_string());
        return a;
    }

    /// Copy with `axis` removed (rank - 1).
    constexpr extents without_axis(int axis) const {
        const int a = normalize_axis(axis);
        extents r;
        for (int i = 0; i < rank_; ++i)
            if (i != a) r.e_[r.rank_++] = e_[i];
        return r;
    }

    /// Copy with `axis` set to `value`.
    constexpr extents with_axis(int axis, index_t value) const {
        extents r = *this;
        r.set(axis, value);
        return r;
    }

    constexpr const index_t* begin() const noexcept { return e_.data(); }
    constexpr const index_t* end() const noexcept { return e_.data() + rank_; }
    constexpr std::span<const index_t> values() const noexcept {
        return {e_.data(), size_t(rank_)};
    }

    friend constexpr bool operator==(const extents& a, const extents& b) noexcept {
        return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
    }

    /// "(64, 77, 768)"; rank 0 prints "()".
    std::string to_string() const {
        std::string s = "(";
        for (int i = 0; i < rank_; ++i) {
            if (i) s += ", ";
            s += std::to_string(e_[i]);
        }
        s += ")";
        return s;
    }

private:
    constexpr void assign(std::span<const index_t> values) {
        if (values.size() > size_t(max_rank))
            throw shape_error("", "mmfuse::extents", "rank <= " + std::to_string(max_rank),
                              "rank " + std::to_string(values.size()));
        rank_ = int(values.size());
        for (int i = 0; i < rank_; ++i) {
            if (values[size_t(i)] < 0)
                throw shape_error("", "mmfuse::extents", "non-negative extents",
                                  "extent " + std::to_string(values[size_t(i)]) + " at axis " +
                                      std::to_string(i));
            e_[i] = values[size_t(i)];
        }
    }

    std::array<index_t, max_rank> e_{};
    int rank_ = 0;
};

/// Compile-time shape: a static rank whose axes are each `dim<N>` or `dim<dyn>`.
///
///     shape<dim<dyn>, dim<dyn>, dim<512>>       // (batch, tokens, 512)
///     shape<dim<dyn>, dim<dyn>, dim<512>> s{64, 77, {}};   // a value: (64, 77, 512)
///
/// Static axes cost no storage. `pattern()` prints `(?, ?, 512)`.
template <class... Dims>
requires(dim_type<Dims>&&...) class shape {
public:
    static constexpr int rank = int(sizeof...(Dims));
    static_assert(rank <= max_rank, "mmfuse::shape: rank exceeds mmfuse::max_rank");

    /// Type of axis `I`.
    template <int I>
    using dim_at = std::tuple_element_t<size_t(I), std::tuple<Dims...>>;

    /// True when every axis is static.
    static constexpr bool fully_static = (Dims::is_static && ...);

    /// Compile-time extent of axis `I` (`dyn` if run-time).
    template <int I>
    static constexpr index_t static_extent = dim_at<I>::static_value;

    constexpr shape() = default;
    constexpr shape(Dims... d) : dims_(d...) {}

    /// Extent of axis `I` in this shape value.
    template <int I>
    constexpr index_t extent() const noexcept {
        return std::get<size_t(I)>(dims_).value();
    }

    /// The run-time extents of this value.
    constexpr extents to_extents() const {
        return std::apply(
            [](auto... d) {
                const std::array<index_t, sizeof...(Dims)> v{d.value()...};
                return extents::from(v);
            },
            dims_);
    }

    /// True when `e` has this rank and matches every *static* axis (dynamic axes match any
    /// extent). This is the check a layer makes on an incoming tensor.
    static constexpr bool matches_pattern(const extents& e) noexcept {
        if (e.rank() != rank) return false;
        constexpr std::array<index_t, sizeof...(Dims)> s{Dims::static_value...};
        for (int i = 0; i < rank; ++i)
            if (s[size_t(i)] != dyn && s[size_t(i)] != e[i]) return false;
        return true;
    }

    /// Throws `shape_error` naming `module` and `what` unless `matches_pattern(e)`.
    static void check_pattern(const extents& e, std::string_view module, std::string_view what) {
        if (!matches_pattern(e))
            throw shape_error(module, what, "shape " + pattern(), "shape " + e.to_string());
    }

    /// "(?, ?, 512)": static axes as numbers, dynamic ones as '?'.
    static std::string pattern() {
        std::string s = "(";
        int i = 0;
        ((s += (i++ ? ", " : ""),
          s += (Dims::static_value == dyn ? std::string("?") : std::to_string(Dims::static_value))),
         ...);
        return s + ")";
    }

private:
    [[no_unique_address]] std::tuple<Dims...> dims_{};
};

namespace detail {
template <class A, class B>
struct shapes_compatible : std::false_type {};
template <class... As, class... Bs>
requires(sizeof...(As) == sizeof...(Bs)) struct shapes_compatible<shape<As...>, shape<Bs...>>
    : std::bool_constant<(compatible_dims<As, Bs> && ...)> {
};
}  // namespace detail

/// Two shape types can describe the same tensor: equal rank and every axis pair compatible.
template <class A, class B>
concept compatible_shapes = detail::shapes_compatible<A, B>::value;

/// Compile-time assertion that shape types `A` and `B` are `compatible_shapes`, for use at
/// composition points (a layer's output feeding another's input). On a mismatch the build
/// stops with "mmfuse: incompatible shapes ..." and the compiler names both shape types
/// (and `Context`, typically the composing type, e.g. the user's block) in the
/// instantiation note next to it. `value` is always true, so the check can sit in a
/// `static_assert` or a `requires` clause:
///
///     static_assert(require_compatible_shapes<out_shape, in_shape, my_block>::value);
template <class A, class B, class Context = void>
struct require_compatible_shapes {
    static_assert(compatible_shapes<A, B>,
                  "mmfuse: incompatible shapes: A and B of this "
                  "require_compatible_shapes<A, B, Context> differ in rank or in a static extent "
                  "(two dims are compatible when either is dyn or both are equal)");
    static constexpr bool value = true;
};

}  // namespace mmfuse::inline v0
