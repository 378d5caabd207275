#pragma once
/// \file
/// Zero-copy interop with xtensor: xtensor containers, adaptors and strided views as
/// `tensor_ref`s, and `tensor_ref`s as non-owning xtensor adaptors. Nothing here copies
/// element data (except `io::npy_load_xtensor`, which returns an owning `xt::xarray`).
///
///     xt::xtensor<float, 3> a({2, 3, 4});
///     tensor_ref<float> v = interop::view(a);       // (2, 3, 4), a's strides
///     auto ad = interop::as_xtensor(v);             // xarray_adaptor, dynamic rank
///     auto a3 = interop::as_xtensor<3>(v);          // xtensor_adaptor, static rank 3
///
/// xtensor headers come from `mmfuse/interop/xtensor_includes.hpp` only.

#include <algorithm>
#include <array>
#include <cstddef>
#include <filesystem>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/interop/xtensor_includes.hpp"
#include "mmfuse/io/npy.hpp"

namespace mmfuse::inline v0::interop {

/// Satisfied by xtensor expressions with strided memory access: `xarray`, `xtensor`,
/// `xtensor_fixed`, their adaptors (`xt::adapt`) and strided views (`xt::strided_view`,
/// `xt::view` with ranges). These are the types `view` accepts.
template <class E>
concept xtensor_strided = xt::is_xexpression<std::remove_cvref_t<E>>::value && requires(E& e) {
    e.data();
    e.data_offset();
    e.shape();
    e.strides();
    e.dimension();
};

namespace detail {
/// True for an rvalue xtensor expression that owns its storage (its own temporary type,
/// like `xarray` or `xtensor_fixed`): a view of it would dangle, so `view` refuses it.
template <class E>
inline constexpr bool xtensor_would_dangle =
    !std::is_lvalue_reference_v<E> &&
    std::is_same_v<typename std::remove_cvref_t<E>::temporary_type, std::remove_cvref_t<E>>;

/// What `view` accepts, and what its deleted overload catches.
template <class E>
concept xtensor_viewable = xtensor_strided<E> && !xtensor_would_dangle<E>;
template <class E>
concept xtensor_dangling = xtensor_strided<E> && xtensor_would_dangle<E>;

/// Element type of the view of `E`: const when `E`'s elements are read-only.
template <class E>
using xtensor_view_element = std::remove_reference_t<decltype(*std::declval<E&>().data())>;
}  // namespace detail

/// Non-owning view of xtensor expression `e` (no copy): same extents, the expression's own
/// strides (so row-major, column-major and dynamic-layout containers are all described
/// exactly; xtensor's stride 0 on extent-1 axes is kept) and `data() + data_offset()` as
/// origin. The element type is `const T` for read-only expressions. Throws `shape_error`
/// when the rank exceeds `max_rank` or a stride is negative (reversed views). The caller
/// keeps the storage alive; an owning rvalue container is rejected (deleted overload).
template <class E>
requires detail::xtensor_viewable<E>
auto view(E&& e) {
    using T = detail::xtensor_view_element<std::remove_reference_t<E>>;
    static_assert(element_type<T>,
                  "mmfuse::interop::view: xtensor value type is not an mmfuse element type");
    constexpr const char* who = "interop::view(xtensor)";
    const auto& sh = e.shape();
    const auto& st = e.strides();
    const std::size_t rank = std::size_t(e.dimension());
    std::array<index_t, max_rank> ext{};
    std::array<index_t, max_rank> str{};
    auto describe = [&] {
        std::string s = "(";
        for (std::size_t i = 0; i < rank; ++i)
            s += (i ? ", " : "") + std::to_string(sh[i]);
        return s + ")";
    };
    if (rank > std::size_t(max_rank))
        throw shape_error(who, "rank", "rank <= " + std::to_string(max_rank),
                          "rank " + std::to_string(rank) + " " + describe());
    for (std::size_t i = 0; i < rank; ++i) {
        ext[i] = index_t(sh[i]);
        str[i] = index_t(st[i]);
        if (str[i] < 0)
            throw shape_error(who, "strides", "non-negative strides",
                              "stride " + std::to_string(str[i]) + " on axis " + std::to_string(i));
    }
    return tensor_ref<T>(e.data() + e.data_offset(), extents::from({ext.data(), rank}),
                         std::span<const index_t>(str.data(), rank));
}

/// Deleted: a view of a temporary owning container would dangle. Bind it to a name first.
template <class E>
requires detail::xtensor_dangling<E>
void view(E&& e) = delete;

namespace detail {
/// Number of elements spanned by `r` in memory: 1 + sum (extent - 1) * stride, or 0 when
/// `r` is empty. This is the buffer size handed to `xt::adapt`.
template <class T>
std::size_t spanned_size(const tensor_ref<T>& r) {
    if (r.numel() == 0) return 0;
    index_t last = 0;
    for (int i = 0; i < r.rank(); ++i)
        last += (r.extent(i) - 1) * r.stride(i);
    return std::size_t(last + 1);
}

template <class T>
void check_xtensor_host(const tensor_ref<T>& r) {
    if (r.space() != memory_space::host)
        throw shape_error("interop::as_xtensor", "memory space", "a host view", "a device view");
}
}  // namespace detail

/// `r` as a non-owning `xt::xarray_adaptor` (dynamic rank, dynamic layout, `r`'s extents
/// and strides); never takes ownership. Writes through the adaptor land in `r`'s memory
/// (unless `T` is const). Throws `shape_error` for a device view.
template <element_type T>
auto as_xtensor(tensor_ref<T> r) {
    detail::check_xtensor_host(r);
    std::vector<std::size_t> shape(std::size_t(r.rank()));
    std::vector<std::ptrdiff_t> strides(std::size_t(r.rank()));
    for (int i = 0; i < r.rank(); ++i) {
        shape[std::size_t(i)] = std::size_t(r.extent(i));
        strides[std::size_t(i)] = std::ptrdiff_t(r.stride(i));
    }
    return xt::adapt(r.data(), detail::spanned_size(r), xt::no_ownership(), std::move(shape),
                     std::move(strides));
}

/// `r` as a non-owning `xt::xtensor_adaptor` of static rank `N` (otherwise as above).
/// Throws `shape_error` naming both ranks unless `r.rank() == N`.
template <std::size_t N, element_type T>
auto as_xtensor(tensor_ref<T> r) {
    detail::check_xtensor_host(r);
    if (r.rank() != int(N))
        throw shape_error("interop::as_xtensor", "tensor rank", "rank " + std::to_string(N),
                          "rank " + std::to_string(r.rank()) + " " + r.extents().to_string());
    std::array<std::size_t, N> shape{};
    std::array<std::ptrdiff_t, N> strides{};
    for (std::size_t i = 0; i < N; ++i) {
        shape[i] = std::size_t(r.extent(int(i)));
        strides[i] = std::ptrdiff_t(r.stride(int(i)));
    }
    return xt::adapt(r.data(), detail::spanned_size(r), xt::no_ownership(), shape, strides);
}

}  // namespace mmfuse::inline v0::interop

namespace mmfuse::inline v0::io {

/// Loads a `.npy` file through mmfuse's hardened parser (see `mmfuse/io/npy.hpp`: exact
/// dtype `T`, C or Fortran order, either byte order) into an owning row-major
/// `xt::xarray<T>` (one copy from the loaded tensor). Throws `io_error` (module() = path).
template <element_type T>
xt::xarray<T> npy_load_xtensor(const std::filesystem::path& path) {
    const tensor<T> t = npy_load<T>(path);
    std::vector<std::size_t> shape(std::size_t(t.rank()));
    for (int i = 0; i < t.rank(); ++i)
        shape[std::size_t(i)] = std::size_t(t.extent(i));
    xt::xarray<T> out(shape);
    std::copy(t.data(), t.data() + t.extents().numel(), out.data());
    return out;
}

}  // namespace mmfuse::inline v0::io
