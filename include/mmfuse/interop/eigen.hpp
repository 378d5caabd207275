#pragma once
/// \file
/// Zero-copy interop with Eigen 3.4: Eigen objects as `tensor_ref`s and `tensor_ref`s as
/// `Eigen::Map`s. Nothing here copies or allocates element data.
///
///     Eigen::MatrixXf m(3, 4);                  // column-major
///     tensor_ref<float> v = interop::view(m);   // (3, 4), strides (1, 3)
///     auto map = interop::as_eigen(v);          // RowMajor Map, strides honoured
///     auto fixed = interop::as_eigen<3, 4>(v);  // fixed-size Map, extents checked
///
/// Conventions: an Eigen matrix is rank 2 (rows, cols) whatever its storage order (the
/// order lives in the strides); a compile-time vector (`VectorXf`, `RowVector3d`, a
/// `.col(j)` or `.row(i)` block) is rank 1. mmfuse's `dyn` equals `Eigen::Dynamic` (-1).

#include <Eigen/Core>

#include <array>
#include <string>
#include <type_traits>
#include <utility>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::interop {

static_assert(dyn == index_t(Eigen::Dynamic), "mmfuse::dyn must equal Eigen::Dynamic");

/// Satisfied by Eigen dense expressions whose coefficients live in memory with a stride
/// (Matrix, Array, Map, Ref, Block of those): the types `view` accepts.
template <class E>
concept eigen_direct_access =
    std::is_base_of_v<Eigen::DenseBase<std::remove_cvref_t<E>>, std::remove_cvref_t<E>> &&
    bool(std::remove_cvref_t<E>::Flags& Eigen::DirectAccessBit);

namespace detail {
/// True for an Eigen object that owns its storage (Matrix, Array) passed as an rvalue: a
/// view of it would dangle, so `view` refuses it.
template <class E>
inline constexpr bool eigen_would_dangle =
    !std::is_lvalue_reference_v<E> &&
    std::is_base_of_v<Eigen::PlainObjectBase<std::remove_cvref_t<E>>, std::remove_cvref_t<E>>;

/// What `view` accepts, and what its deleted overload catches.
template <class E>
concept eigen_viewable = eigen_direct_access<E> && !eigen_would_dangle<E>;
template <class E>
concept eigen_dangling = eigen_direct_access<E> && eigen_would_dangle<E>;

/// Element type of the view of `E`: const when `E`'s coefficients are read-only.
template <class E>
using eigen_view_element = std::remove_reference_t<decltype(*std::declval<E&>().data())>;

/// `dim<N>` for an Eigen compile-time size (`Eigen::Dynamic` -> `dim<dyn>`).
template <int N>
using eigen_dim = dim<N == Eigen::Dynamic ? dyn : index_t(N)>;

/// The Eigen storage-order option valid for a Rows x Cols matrix that mmfuse maps row-major
/// (Eigen requires column vectors to be ColMajor and row vectors to be RowMajor).
template <int Rows, int Cols>
inline constexpr int eigen_map_options = (Cols == 1 && Rows != 1) ? Eigen::ColMajor
                                                                  : Eigen::RowMajor;
}  // namespace detail

/// Compile-time shape of the view of Eigen type `E` (cv/ref ignored): rank 1
/// `shape<dim<Size>>` for compile-time vectors, otherwise `shape<dim<Rows>, dim<Cols>>`,
/// with `Eigen::Dynamic` mapped to `dyn`. Example:
/// `static_shape_of<Eigen::Matrix<float, Eigen::Dynamic, 768, Eigen::RowMajor>>` is
/// `shape<dim<dyn>, dim<768>>`.
template <eigen_direct_access E>
using static_shape_of =
    std::conditional_t<std::remove_cvref_t<E>::IsVectorAtCompileTime,
                       shape<detail::eigen_dim<std::remove_cvref_t<E>::SizeAtCompileTime>>,
                       shape<detail::eigen_dim<std::remove_cvref_t<E>::RowsAtCompileTime>,
                             detail::eigen_dim<std::remove_cvref_t<E>::ColsAtCompileTime>>>;

/// The shape value of `e`: `static_shape_of<E>` holding `e`'s run-time extents (static
/// axes carry no storage).
template <eigen_direct_access E>
static_shape_of<E> shape_of(const E& e) {
    using S = static_shape_of<E>;
    if constexpr (S::rank == 1)
        return S(typename S::template dim_at<0>(index_t(e.size())));
    else
        return S(typename S::template dim_at<0>(index_t(e.rows())),
                 typename S::template dim_at<1>(index_t(e.cols())));
}

/// Non-owning view of the coefficients of Eigen object `e` (no copy).
///
/// Rank 1 (extent `size()`, stride `innerStride()`) for compile-time vectors; rank 2
/// (`rows()`, `cols()`) with strides (`rowStride()`, `colStride()`) otherwise, so row- and
/// column-major storage, blocks and `Map`/`Ref` with inner and outer strides are all
/// described exactly. The element type is `const T` when `e` is read-only (a const object,
/// `Map<const ...>`, `Ref<const ...>`). The caller keeps `e`'s storage alive; an rvalue
/// Matrix/Array is rejected (the overload below is deleted) because its view would dangle
/// (so would a view of a temporary `Ref<const ...>` that had to copy its argument: bind
/// such a Ref to a name first).
template <class E>
requires detail::eigen_viewable<E>
auto view(E&& e) {
    using T = detail::eigen_view_element<std::remove_reference_t<E>>;
    static_assert(element_type<T>,
                  "mmfuse::interop::view: Eigen scalar is not an mmfuse element type");
    using D = std::remove_cvref_t<E>;
    if constexpr (D::IsVectorAtCompileTime) {
        const std::array<index_t, 1> strides{index_t(e.innerStride())};
        return tensor_ref<T>(e.data(), extents{index_t(e.size())}, strides);
    } else {
        const std::array<index_t, 2> strides{index_t(e.rowStride()), index_t(e.colStride())};
        return tensor_ref<T>(e.data(), extents{index_t(e.rows()), index_t(e.cols())}, strides);
    }
}

/// Deleted: a view of a temporary Matrix/Array would dangle. Bind the object to a name first.
template <class E>
requires detail::eigen_dangling<E>
void view(E&& e) = delete;

/// The `Eigen::Map` type `as_eigen` returns for element type `T` (const allowed) and
/// compile-time extents `Rows` x `Cols` (`dyn` allowed): an unaligned map with run-time
/// inner and outer strides, storage order RowMajor (ColMajor only for a column vector,
/// as Eigen requires).
template <element_type T, index_t Rows = dyn, index_t Cols = dyn>
using eigen_map = Eigen::Map<
    std::conditional_t<std::is_const_v<T>,
                       const Eigen::Matrix<std::remove_const_t<T>, int(Rows), int(Cols),
                                           detail::eigen_map_options<int(Rows), int(Cols)>>,
                       Eigen::Matrix<std::remove_const_t<T>, int(Rows), int(Cols),
                                     detail::eigen_map_options<int(Rows), int(Cols)>>>,
    Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// The `Eigen::Map` type `as_eigen_vector` returns: a column vector with a run-time stride.
template <element_type T>
using eigen_vector_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>,
                                  const Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>,
                                  Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>>,
               Eigen::Unaligned, Eigen::InnerStride<Eigen::Dynamic>>;

namespace detail {
inline void check_host(memory_space space, const char* who) {
    if (space != memory_space::host)
        throw shape_error(who, "memory space", "a host view", "a device view");
}
}  // namespace detail

/// `Eigen::Map` over the memory of `r` (no copy): rank 2 (rows, cols) maps element (i, j)
/// to `r(i, j)` through `r`'s strides; rank 1 (n) maps as an (n, 1) column. `Rows` and
/// `Cols` fix the map's compile-time extents (`dyn` by default); they must equal `r`'s
/// run-time extents. Throws `shape_error` for any other rank, an extent mismatch, or a
/// device view. A stride-0 (broadcast) axis maps to a stride-0 Eigen axis: read it only.
template <index_t Rows = dyn, index_t Cols = dyn, element_type T>
eigen_map<T, Rows, Cols> as_eigen(tensor_ref<T> r) {
    constexpr const char* who = "interop::as_eigen";
    detail::check_host(r.space(), who);
    if (r.rank() != 1 && r.rank() != 2)
        throw shape_error(who, "tensor rank", "rank 2 (or 1)",
                          "rank " + std::to_string(r.rank()) + " " + r.extents().to_string());
    const index_t rows = r.extent(0);
    const index_t cols = r.rank() == 2 ? r.extent(1) : 1;
    const index_t row_stride = r.stride(0);
    const index_t col_stride = r.rank() == 2 ? r.stride(1) : 1;
    if ((Rows != dyn && Rows != rows) || (Cols != dyn && Cols != cols))
        throw shape_error(who, "Map extents", "shape " + shape<dim<Rows>, dim<Cols>>::pattern(),
                          "shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
    using map_t = eigen_map<T, Rows, Cols>;
    // Eigen: outer stride steps between rows of a RowMajor matrix, between columns of a
    // ColMajor one; inner stride steps along them.
    constexpr bool row_major = bool(map_t::PlainObject::IsRowMajor);
    const Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic> stride(row_major ? row_stride : col_stride,
                                                               row_major ? col_stride : row_stride);
    return map_t(r.data(), Eigen::Index(rows), Eigen::Index(cols), stride);
}

/// Rank-1 `r` as an Eigen column-vector map with `r`'s stride (no copy). Throws
/// `shape_error` for another rank or a device view.
template <element_type T>
eigen_vector_map<T> as_eigen_vector(tensor_ref<T> r) {
    constexpr const char* who = "interop::as_eigen_vector";
    detail::check_host(r.space(), who);
    if (r.rank() != 1)
        throw shape_error(who, "tensor rank", "rank 1",
                          "rank " + std::to_string(r.rank()) + " " + r.extents().to_string());
    return eigen_vector_map<T>(r.data(), Eigen::Index(r.extent(0)),
                               Eigen::InnerStride<Eigen::Dynamic>(r.stride(0)));
}

}  // namespace mmfuse::inline v0::interop
