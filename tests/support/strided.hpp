#pragma once
// Strided test operands, shared by the op tests and the parity driver: a tensor of given
// extents laid out in one of several ways (dense, axis-reversed, padded rows, doubled
// strides, gaps everywhere, stride-0 broadcast) inside a buffer of its own with guard zones
// before and after, plus row-major access to any view. A test fills an operand (random
// everywhere, logical values into the view only, or NaN in the view and a sentinel around
// it), runs an op, reads the view back in row-major order and checks that nothing outside
// the view changed.

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "support/test_util.hpp"

namespace mmfuse_test {

using mmfuse::index_t;

/// Calls `f(idx)` for every multi-index of `e` in row-major order (`idx` holds `e.rank()`
/// meaningful entries). Nothing is called when an extent is 0; rank 0 calls once.
template <class F>
void for_each_index(const mmfuse::extents& e, F&& f) {
    if (e.numel() == 0) return;
    std::array<index_t, mmfuse::max_rank> idx{};
    while (true) {
        f(std::as_const(idx));
        int a = e.rank() - 1;
        for (; a >= 0; --a) {
            if (++idx[std::size_t(a)] < e[a]) break;
            idx[std::size_t(a)] = 0;
        }
        if (a < 0) return;
    }
}

/// Element offset of multi-index `idx` in a view with `strides`.
inline index_t offset_of(const std::array<index_t, mmfuse::max_rank>& idx,
                         std::span<const index_t> strides) {
    index_t off = 0;
    for (std::size_t a = 0; a < strides.size(); ++a)
        off += idx[a] * strides[a];
    return off;
}

/// The logical (row-major) values of any strided view, as doubles.
template <class T>
std::vector<double> to_vector(const mmfuse::tensor_ref<T>& t) {
    std::vector<double> v;
    v.reserve(std::size_t(t.numel()));
    for_each_index(t.extents(), [&](const auto& idx) {
        v.push_back(double(t.data()[offset_of(idx, t.strides())]));
    });
    return v;
}

/// How a test operand is laid out in its buffer. Rank 0 is always stored as contiguous; for
/// rank 1, `reversed` is contiguous too.
enum class layout {
    contiguous,  ///< dense row-major
    reversed,    ///< axes stored in reverse order: column-major, a transposed copy for rank 2
    padded,      ///< unit last-axis stride, each row padded with 3 elements, 1 element before
    strided,     ///< every row-major stride doubled: no axis has unit stride
    gapped,      ///< last-axis stride 2 and every outer axis one entry longer: gaps everywhere
    broadcast,   ///< axis 0 read with stride 0 from an extent-1 storage (inputs only)
};

/// The layouts the point-wise, matmul and reduce tests cycle their inputs through.
inline constexpr std::array<layout, 5> input_layouts{
    layout::contiguous, layout::reversed, layout::padded, layout::strided, layout::broadcast};
/// The same without broadcast: layouts an output may have.
inline constexpr std::array<layout, 4> output_layouts{layout::contiguous, layout::reversed,
                                                      layout::padded, layout::strided};
/// The layouts in which every operand of a case is laid out alike (norm and softmax tests,
/// parity driver): the contiguous reference, gaps everywhere, and axes reversed.
inline constexpr std::array<layout, 3> uniform_layouts{layout::contiguous, layout::gapped,
                                                       layout::reversed};

/// Entry `i % N` of `set` (i >= 0): a test's running counter walks through combinations.
template <std::size_t N>
constexpr layout pick(const std::array<layout, N>& set, int i) {
    return set[std::size_t(i) % N];
}

inline const char* layout_name(layout l) {
    switch (l) {
        case layout::contiguous:
            return "contiguous";
        case layout::reversed:
            return "reversed";
        case layout::padded:
            return "padded";
        case layout::strided:
            return "strided";
        case layout::gapped:
            return "gapped";
        case layout::broadcast:
            return "broadcast";
    }
    return "?";
}

/// Strides of `e` in layout `l`.
inline mmfuse::stride_array layout_strides(const mmfuse::extents& e, layout l) {
    mmfuse::stride_array s{};
    const int r = e.rank();
    if (r == 0) return s;
    switch (l) {
        case layout::contiguous:
            return mmfuse::contiguous_strides(e);
        case layout::reversed:
            s[0] = 1;
            for (int k = 1; k < r; ++k)
                s[std::size_t(k)] = s[std::size_t(k - 1)] * std::max<index_t>(e[k - 1], 1);
            return s;
        case layout::padded:
            return mmfuse::contiguous_strides(e.with_axis(-1, e[-1] + 3));
        case layout::strided:
            s = mmfuse::contiguous_strides(e);
            for (int k = 0; k < r; ++k)
                s[std::size_t(k)] *= 2;
            return s;
        case layout::gapped:
            s[std::size_t(r - 1)] = 2;
            for (int k = r - 2; k >= 0; --k)
                s[std::size_t(k)] = s[std::size_t(k + 1)] * (e[k + 1] + 1);
            return s;
        case layout::broadcast:
            s = mmfuse::contiguous_strides(e.with_axis(0, 1));
            if (e[0] != 1) s[0] = 0;  // as `tensor_ref::expand` does
            return s;
    }
    return s;
}

/// Offset of the first view element from the start of the layout's storage.
inline index_t layout_offset(const mmfuse::extents& e, layout l) {
    return l == layout::padded && e.rank() > 0 ? 1 : 0;
}

/// Value written around an output view by `poison` and `sentinel_then_random`; it must
/// survive the op. Exact in bf16 and f16 too, and distinct from the NaN inside the view.
inline constexpr double sentinel = -768.0;

/// An operand of logical extents `e` stored in layout `l`, with `guard` elements before and
/// after its storage. The whole buffer starts poisoned (NaN; `true` for bool). Every fill
/// remembers what it left outside the view; `outside_intact` checks that this is still there.
template <class T>
class strided_operand {
public:
    static constexpr index_t guard = 16;

    strided_operand(const mmfuse::extents& e, layout l)
        : extents_(e), strides_(layout_strides(e, l)), base_(guard + layout_offset(e, l)) {
        index_t span = 0;
        if (e.numel() > 0) {
            span = 1;
            for (int k = 0; k < e.rank(); ++k)
                span += (e[k] - 1) * strides_[std::size_t(k)];
        }
        size_ = base_ + span + guard;
        buf_ = std::make_unique<T[]>(std::size_t(size_));
        saved_ = std::make_unique<T[]>(std::size_t(size_));
        std::fill_n(buf_.get(), size_, poison_value());
        save();
    }

    mmfuse::tensor_ref<T> ref() { return {buf_.get() + base_, extents_, strides()}; }
    mmfuse::tensor_ref<const T> cref() const { return {buf_.get() + base_, extents_, strides()}; }

    /// Sets the view's logical values (row-major order) from `v` (numel entries); the rest of
    /// the buffer is left as it is.
    void assign(std::span<const double> v) {
        REQUIRE(v.size() == std::size_t(extents_.numel()));
        std::size_t i = 0;
        for_each_index(extents_, [&](const auto& idx) { at(idx) = from_double<T>(v[i++]); });
    }

    /// Sets every buffer element (view, gaps and guard zones), in memory order, to
    /// `gen()` converted to T.
    template <class Gen>
    void fill_each(Gen&& gen) {
        for (index_t i = 0; i < size_; ++i)
            buf_[std::size_t(i)] = from_double<T>(gen());
        save();
    }

    /// Every buffer element uniform in [lo, hi) (an input; reading a gap gives a wrong value).
    void fill_random(std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
        std::uniform_real_distribution<double> u(lo, hi);
        fill_each([&] { return u(rng); });
    }

    /// Buffer = sentinel, view elements = NaN (an output: an unwritten element stays NaN).
    void poison() {
        fill_view_around_sentinel([] { return std::numeric_limits<double>::quiet_NaN(); });
    }

    /// Buffer = sentinel, view elements uniform in [-1, 1) (an output the op also reads).
    void sentinel_then_random(std::mt19937_64& rng) {
        std::uniform_real_distribution<double> u(-1.0, 1.0);
        fill_view_around_sentinel([&] { return u(rng); });
    }

    /// Logical values of the view in row-major order.
    std::vector<double> values() const { return to_vector(cref()); }

    /// True when every buffer element outside the view (gaps and guard zones) holds, bit for
    /// bit, what the last fill left there.
    bool outside_intact() const {
        std::vector<char> inside(std::size_t(size_), 0);
        for_each_index(extents_, [&](const auto& idx) {
            inside[std::size_t(base_ + offset_of(idx, strides()))] = 1;
        });
        for (index_t i = 0; i < size_; ++i)
            if (!inside[std::size_t(i)] &&
                std::memcmp(&buf_[std::size_t(i)], &saved_[std::size_t(i)], sizeof(T)) != 0)
                return false;
        return true;
    }

private:
    static T poison_value() {
        if constexpr (std::is_integral_v<T>)
            return T(1);
        else
            return from_double<T>(std::numeric_limits<double>::quiet_NaN());
    }

    std::span<const index_t> strides() const {
        return {strides_.data(), std::size_t(extents_.rank())};
    }

    /// The buffer element at multi-index `idx` of the view.
    T& at(const std::array<index_t, mmfuse::max_rank>& idx) {
        return buf_[std::size_t(base_ + offset_of(idx, strides()))];
    }

    template <class Gen>
    void fill_view_around_sentinel(Gen&& gen) {
        std::fill_n(buf_.get(), size_, from_double<T>(sentinel));
        save();
        for_each_index(extents_, [&](const auto& idx) { at(idx) = from_double<T>(gen()); });
    }

    void save() { std::copy_n(buf_.get(), size_, saved_.get()); }

    mmfuse::extents extents_;
    mmfuse::stride_array strides_;
    index_t base_ = 0;
    index_t size_ = 0;
    std::unique_ptr<T[]> buf_, saved_;
};

}  // namespace mmfuse_test
