#pragma once
/// \file
/// `tensor_ref<T>`: a non-owning, strided, row-major-by-default view of memory — the one
/// type that crosses the op boundary between layers and backends — and `any_tensor_ref`,
/// its dtype-erased form used inside the backend interface.
///
/// A view is (pointer, extents, strides in elements, memory space). Strides are
/// non-negative; a stride of 0 broadcasts (see `expand`). Views never allocate and never
/// own; the caller keeps the memory alive.

#include <array>
#include <cassert>
#include <span>
#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"

namespace mmfuse::inline v0 {

/// Where the memory of a view lives. Host memory is directly addressable by the CPU.
enum class memory_space : std::uint8_t { host, device };

/// Per-axis strides in elements (not bytes), rank <= max_rank, inline storage.
using stride_array = std::array<index_t, max_rank>;

/// Row-major (C-order) strides of `e`: the last axis has stride 1. For a zero-size `e`
/// (whose element count is 0 however large the other extents) the strides are computed
/// with wrap-around instead of overflowing; they are never used to address memory.
constexpr stride_array contiguous_strides(const extents& e) noexcept {
    stride_array s{};
    std::uint64_t step = 1;
    for (int i = e.rank() - 1; i >= 0; --i) {
        s[size_t(i)] = index_t(step);
        step *= std::uint64_t(e[i]);
    }
    return s;
}

/// Non-owning strided view of `T` elements (`T` may be const).
///
///     tensor_ref<float> x(ptr, {64, 77, 768});        // contiguous row-major
///     tensor_ref<const float> xc = x;                 // adds const
///     auto row = x.select(0, 3);                      // (77, 768), no copy
///     auto xt  = x.transpose(1, 2);                   // (64, 768, 77), strided
///
/// Element access through `operator()` is unchecked (asserted in debug builds); `at` checks
/// and throws `shape_error`.
template <element_type T>
class tensor_ref {
public:
    using value_type = std::remove_const_t<T>;
    using element_type = T;
    static constexpr mmfuse::dtype element_dtype = dtype_of<T>;

    /// Empty view (null data, rank 0, numel 1 — check `data()` before use).
    constexpr tensor_ref() = default;

    /// Contiguous row-major view of `e` over `data`.
    constexpr tensor_ref(T* data, const mmfuse::extents& e, memory_space space = memory_space::host)
        : data_(data), extents_(e), strides_(contiguous_strides(e)), space_(space) {}

    /// Strided view. `strides` holds one non-negative stride (in elements) per axis.
    constexpr tensor_ref(T* data, const mmfuse::extents& e, std::span<const index_t> strides,
                         memory_space space = memory_space::host)
        : data_(data), extents_(e), space_(space) {
        if (strides.size() != size_t(e.rank()))
            throw shape_error("", "tensor_ref strides", std::to_string(e.rank()) + " strides",
                              std::to_string(strides.size()) + " strides");
        for (int i = 0; i < e.rank(); ++i) {
            if (strides[size_t(i)] < 0)
                throw shape_error("", "tensor_ref strides", "non-negative strides",
                                  "stride " + std::to_string(strides[size_t(i)]));
            strides_[size_t(i)] = strides[size_t(i)];
        }
    }

    /// `tensor_ref<float>` converts to `tensor_ref<const float>`.
    template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr tensor_ref(
        const tensor_ref<U>& other)  // NOLINT(google-explicit-constructor)
        : data_(other.data()), extents_(other.extents()), space_(other.space()) {
        for (int i = 0; i < extents_.rank(); ++i)
            strides_[size_t(i)] = other.stride(i);
    }

    constexpr T* data() const noexcept { return data_; }
    constexpr const mmfuse::extents& extents() const noexcept { return extents_; }
    constexpr int rank() const noexcept { return extents_.rank(); }
    /// Extent of `axis` (negative counts from the end).
    constexpr index_t extent(int axis) const { return extents_[axis]; }
    /// Stride of `axis` in elements (negative counts from the end).
    constexpr index_t stride(int axis) const {
        return strides_[size_t(extents_.normalize_axis(axis))];
    }
    constexpr std::span<const index_t> strides() const noexcept {
        return {strides_.data(), size_t(extents_.rank())};
    }
    constexpr index_t numel() const noexcept { return extents_.numel(); }
    constexpr memory_space space() const noexcept { return space_; }

    /// True when the view is dense row-major (axes of extent 1 may have any stride).
    constexpr bool is_contiguous() const noexcept {
        index_t step = 1;
        for (int i = rank() - 1; i >= 0; --i) {
            if (extents_[i] != 1 && strides_[size_t(i)] != step) return false;
            step *= extents_[i];
        }
        return true;
    }

    /// Unchecked element access by `rank()` indices (debug builds assert the bounds).
    template <std::integral... I>
    constexpr T& operator()(I... idx) const noexcept {
        assert(int(sizeof...(I)) == rank());
        const std::array<index_t, sizeof...(I)> ix{index_t(idx)...};
        index_t off = 0;
        for (size_t a = 0; a < sizeof...(I); ++a) {
            assert(ix[a] >= 0 && ix[a] < extents_[int(a)]);
            off += ix[a] * strides_[a];
        }
        return data_[off];
    }

    /// Checked element access; throws `shape_error` on a wrong index count or range.
    T& at(std::span<const index_t> idx) const {
        if (idx.size() != size_t(rank()))
            throw shape_error("", "tensor_ref::at", std::to_string(rank()) + " indices",
                              std::to_string(idx.size()) + " indices");
        index_t off = 0;
        for (int a = 0; a < rank(); ++a) {
            if (idx[size_t(a)] < 0 || idx[size_t(a)] >= extents_[a])
                throw shape_error(
                    "", "tensor_ref::at", "an index below " + extents_.to_string(),
                    "index " + std::to_string(idx[size_t(a)]) + " at axis " + std::to_string(a));
            off += idx[size_t(a)] * strides_[size_t(a)];
        }
        return data_[off];
    }

    /// View of index `i` along `axis`; the axis is removed (rank - 1).
    constexpr tensor_ref select(int axis, index_t i) const {
        const int a = extents_.normalize_axis(axis);
        check_range(a, i, 1, "select");
        tensor_ref r;
        r.data_ = data_ + i * strides_[size_t(a)];
        r.extents_ = extents_.without_axis(a);
        r.space_ = space_;
        for (int k = 0, j = 0; k < rank(); ++k)
            if (k != a) r.strides_[size_t(j++)] = strides_[size_t(k)];
        return r;
    }

    /// View of `length` entries starting at `start` along `axis` (rank unchanged).
    constexpr tensor_ref narrow(int axis, index_t start, index_t length) const {
        const int a = extents_.normalize_axis(axis);
        check_range(a, start, length, "narrow");
        tensor_ref r = *this;
        r.data_ = data_ + start * strides_[size_t(a)];
        r.extents_.set(a, length);
        return r;
    }

    /// View with axes `a` and `b` swapped (no copy).
    constexpr tensor_ref transpose(int a, int b) const {
        const int x = extents_.normalize_axis(a), y = extents_.normalize_axis(b);
        tensor_ref r = *this;
        r.extents_.set(x, extents_[y]);
        r.extents_.set(y, extents_[x]);
        std::swap(r.strides_[size_t(x)], r.strides_[size_t(y)]);
        return r;
    }

    /// Contiguous view with new extents of the same element count. Throws `shape_error` if
    /// this view is not contiguous or the counts differ.
    constexpr tensor_ref reshape(const mmfuse::extents& e) const {
        if (!is_contiguous())
            throw shape_error("", "tensor_ref::reshape", "a contiguous view",
                              "strides " + strides_string());
        if (e.numel() != numel())
            throw shape_error("", "tensor_ref::reshape",
                              "extents with " + std::to_string(numel()) + " elements like " +
                                  extents_.to_string(),
                              e.to_string());
        return tensor_ref(data_, e, space_);
    }

    /// View with a new axis of extent 1 inserted at `axis` (in [-rank-1, rank]).
    constexpr tensor_ref unsqueeze(int axis) const {
        const int a = axis < 0 ? axis + rank() + 1 : axis;
        if (a < 0 || a > rank() || rank() == max_rank)
            throw shape_error("", "tensor_ref::unsqueeze",
                              "an axis in [0, " + std::to_string(rank()) + "] and rank < max_rank",
                              "axis " + std::to_string(axis));
        std::array<index_t, max_rank> e{};
        tensor_ref r;
        for (int k = 0, j = 0; k <= rank(); ++k) {
            if (k == a) {
                e[size_t(k)] = 1;
                r.strides_[size_t(k)] = 0;
            } else {
                e[size_t(k)] = extents_[j];
                r.strides_[size_t(k)] = strides_[size_t(j)];
                ++j;
            }
        }
        r.data_ = data_;
        r.extents_ = mmfuse::extents::from({e.data(), size_t(rank() + 1)});
        r.space_ = space_;
        return r;
    }

    /// Broadcast view with extents `target` (NumPy rules: leading axes may be added; an
    /// axis of extent 1 stretches with stride 0). Throws `shape_error` if not broadcastable.
    constexpr tensor_ref expand(const mmfuse::extents& target) const {
        const int lead = target.rank() - rank();
        if (lead < 0)
            throw shape_error("", "tensor_ref::expand", "rank >= " + std::to_string(rank()),
                              target.to_string());
        tensor_ref r;
        r.data_ = data_;
        r.extents_ = target;
        r.space_ = space_;
        for (int k = 0; k < target.rank(); ++k) {
            if (k < lead) {
                r.strides_[size_t(k)] = 0;
                continue;
            }
            const index_t src = extents_[k - lead];
            if (src == target[k]) {
                r.strides_[size_t(k)] = strides_[size_t(k - lead)];
            } else if (src == 1) {
                r.strides_[size_t(k)] = 0;
            } else {
                throw shape_error("", "tensor_ref::expand",
                                  "a shape broadcastable from " + extents_.to_string(),
                                  target.to_string());
            }
        }
        return r;
    }

    /// "f32 (2, 3) strides (3, 1)".
    std::string describe() const {
        return std::string(dtype_name(element_dtype)) + " " + extents_.to_string() + " strides " +
               strides_string();
    }

private:
    constexpr void check_range(int axis, index_t start, index_t length, const char* what) const {
        if (start < 0 || length < 0 || start + length > extents_[axis])
            throw shape_error(
                "", std::string("tensor_ref::") + what,
                "a range inside [0, " + std::to_string(extents_[axis]) + ") on axis " +
                    std::to_string(axis),
                "[" + std::to_string(start) + ", " + std::to_string(start + length) + ")");
    }
    std::string strides_string() const {
        return mmfuse::extents::from({strides_.data(), size_t(rank())}).to_string();
    }

    T* data_ = nullptr;
    mmfuse::extents extents_{};
    stride_array strides_{};
    memory_space space_ = memory_space::host;
};

/// True when some axis of extent > 1 has stride 0, i.e. several logical elements share one
/// memory location (a broadcast view from `expand`). Such a view can be read but must never
/// be written.
/// A view without elements never aliases anything.
constexpr bool has_broadcast_axis(const extents& e, std::span<const index_t> strides) noexcept {
    if (e.numel() == 0) return false;
    for (int a = 0; a < e.rank(); ++a)
        if (e[a] > 1 && strides[size_t(a)] == 0) return true;
    return false;
}

/// Throws `shape_error` naming `module` and `what` unless `t` has exactly extents `expected`.
template <class T>
void check_extents(const tensor_ref<T>& t, const extents& expected, std::string_view module,
                   std::string_view what) {
    if (t.extents() != expected)
        throw shape_error(module, what, "shape " + expected.to_string(),
                          "shape " + t.extents().to_string());
}

/// A dtype-erased view: what the backend interface passes around. Obtained from a typed
/// view with `any_tensor_ref(view)`, turned back with `as<T>()` (dtype checked).
class any_tensor_ref {
public:
    constexpr any_tensor_ref() = default;

    template <element_type T>
    constexpr any_tensor_ref(const tensor_ref<T>& t)  // NOLINT(google-explicit-constructor)
        : data_(const_cast<std::remove_const_t<T>*>(t.data())),
          extents_(t.extents()),
          type_(dtype_of<T>),
          space_(t.space()) {
        for (int i = 0; i < t.rank(); ++i)
            strides_[size_t(i)] = t.stride(i);
    }

    constexpr void* data() const noexcept { return data_; }
    constexpr mmfuse::dtype type() const noexcept { return type_; }
    constexpr const mmfuse::extents& extents() const noexcept { return extents_; }
    constexpr std::span<const index_t> strides() const noexcept {
        return {strides_.data(), size_t(extents_.rank())};
    }
    constexpr memory_space space() const noexcept { return space_; }

    /// Typed view; throws `shape_error` if the stored dtype is not `T`'s.
    template <element_type T>
    tensor_ref<T> as() const {
        if (type_ != dtype_of<T>)
            throw shape_error("", "any_tensor_ref::as",
                              "dtype " + std::string(dtype_name(dtype_of<T>)),
                              "dtype " + std::string(dtype_name(type_)));
        return tensor_ref<T>(static_cast<T*>(data_), extents_, strides(), space_);
    }

private:
    void* data_ = nullptr;
    mmfuse::extents extents_{};
    stride_array strides_{};
    mmfuse::dtype type_ = mmfuse::dtype::f32;
    memory_space space_ = memory_space::host;
};

}  // namespace mmfuse::inline v0
