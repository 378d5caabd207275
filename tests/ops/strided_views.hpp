#pragma once
// Test helpers for the op tests: views of a given extents laid out in several ways over
// their own storage (dense, axes reversed, padded rows, doubled strides, stride-0
// broadcast), element access by flat row-major index, and a sentinel check that an op
// wrote nothing outside its output view.

#include <array>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace ops_test {

using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor;
using mmfuse::tensor_ref;

/// How a test view is laid out in its storage.
enum class layout {
    contiguous,  ///< dense row-major
    reversed,    ///< axes stored in reverse order (a transposed matrix for rank 2)
    padded,      ///< last axis padded with 3 extra elements, view starting at offset 1
    strided,     ///< every stride doubled: no axis has unit stride
    broadcast,   ///< axis 0 read with stride 0 from an extent-1 storage (inputs only)
};
inline constexpr std::array<layout, 5> all_layouts{layout::contiguous, layout::reversed,
                                                    layout::padded, layout::strided,
                                                    layout::broadcast};
/// Layouts an output may have (no broadcast).
inline constexpr std::array<layout, 4> output_layouts{layout::contiguous, layout::reversed,
                                                       layout::padded, layout::strided};

inline const char* layout_name(layout l) {
    switch (l) {
        case layout::contiguous: return "contiguous";
        case layout::reversed: return "reversed";
        case layout::padded: return "padded";
        case layout::strided: return "strided";
        case layout::broadcast: return "broadcast";
    }
    return "?";
}

/// Converts a double to any element type (bf16 and half through float).
template <class T>
T from_double(double v) {
    if constexpr (std::is_same_v<T, mmfuse::bf16> || std::is_same_v<T, mmfuse::half>)
        return T(float(v));
    else
        return T(v);
}

/// Element at flat row-major index `flat` of `v` (v must have elements).
template <class T>
T& elem(const tensor_ref<T>& v, index_t flat) {
    index_t off = 0;
    for (int a = v.rank() - 1; a >= 0; --a) {
        off += (flat % v.extent(a)) * v.stride(a);
        flat /= v.extent(a);
    }
    return v.data()[off];
}

/// All elements of `v` as doubles, in row-major order.
template <class T>
std::vector<double> values(const tensor_ref<T>& v) {
    std::vector<double> r(std::size_t(v.numel()));
    for (index_t i = 0; i < v.numel(); ++i) r[std::size_t(i)] = double(elem(v, i));
    return r;
}

/// Value written around an output view; must survive the op.
inline constexpr double sentinel = -768.0;  // exact in bf16 and f16 too

/// A view of some extents over its own storage.
template <class T>
struct strided_view {
    tensor<T> storage;
    tensor_ref<T> view;
    layout how;

    tensor_ref<const T> cview() const { return view; }

    /// Fills the storage with uniform values in [lo, hi).
    void fill_random(std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
        std::uniform_real_distribution<double> u(lo, hi);
        for (index_t i = 0; i < storage.numel(); ++i) storage[i] = from_double<T>(u(rng));
    }
    /// Storage = sentinel, view elements = NaN (an unwritten output element stays NaN).
    void poison() {
        storage.fill(from_double<T>(sentinel));
        for (index_t i = 0; i < view.numel(); ++i)
            elem(view, i) = from_double<T>(std::numeric_limits<double>::quiet_NaN());
    }
    /// Storage = sentinel, then the view elements random (an output read with beta != 0).
    void sentinel_then_random(std::mt19937_64& rng) {
        storage.fill(from_double<T>(sentinel));
        std::uniform_real_distribution<double> u(-1.0, 1.0);
        for (index_t i = 0; i < view.numel(); ++i) elem(view, i) = from_double<T>(u(rng));
    }
    /// True when every storage element outside the view still holds the sentinel.
    bool outside_untouched() const {
        index_t count = 0;
        for (index_t i = 0; i < storage.numel(); ++i)
            count += double(storage[i]) == sentinel ? 1 : 0;
        return count == storage.numel() - view.numel();
    }
};

/// A view of extents `e` laid out as `how` (rank 0 and 1 fall back to simpler layouts
/// where the requested one means nothing).
template <class T>
strided_view<T> make_view(const extents& e, layout how) {
    const int r = e.rank();
    strided_view<T> s{tensor<T>(), tensor_ref<T>(), how};
    if (r == 0 || how == layout::contiguous) {
        s.storage = tensor<T>(e);
        s.view = s.storage.ref();
    } else if (how == layout::reversed) {
        std::array<index_t, mmfuse::max_rank> rev{};
        for (int a = 0; a < r; ++a) rev[std::size_t(a)] = e[r - 1 - a];
        s.storage = tensor<T>(extents::from({rev.data(), std::size_t(r)}));
        s.view = s.storage.ref();
        for (int a = 0; a < r / 2; ++a) s.view = s.view.transpose(a, r - 1 - a);
    } else if (how == layout::padded) {
        s.storage = tensor<T>(e.with_axis(-1, e[-1] + 3));
        s.view = s.storage.ref().narrow(-1, 1, e[-1]);
    } else if (how == layout::strided) {
        s.storage = tensor<T>(extents{2 * e.numel() + 1});
        auto st = mmfuse::contiguous_strides(e);
        for (auto& v : st) v *= 2;
        s.view = tensor_ref<T>(s.storage.data(), e, std::span<const index_t>(st.data(), std::size_t(r)));
    } else {
        s.storage = tensor<T>(e.with_axis(0, 1));
        s.view = s.storage.ref().expand(e);
    }
    return s;
}

}  // namespace ops_test
