#pragma once
/// \file
/// `tensor<T>`: an owning, contiguous, row-major, 64-byte-aligned host tensor.
///
/// Move-only (copies are explicit through `clone()`), zero-initialised on construction.
/// Use it for parameters, test data and example I/O; inside a training or sampling step
/// activations and scratch come from an `arena` instead, so the step does not allocate.

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0 {

namespace detail {
/// Frees memory from `aligned_host_alloc`.
struct aligned_free {
    void operator()(void* p) const noexcept {
        ::operator delete(p, std::align_val_t(host_alignment));
    }
};

/// `bytes` of uninitialised host memory aligned to `host_alignment` (never null; throws
/// `std::bad_alloc`). Zero bytes yields a valid one-line allocation.
inline void* aligned_host_alloc(std::size_t bytes) {
    const std::size_t rounded = std::max<std::size_t>(
        host_alignment, (bytes + host_alignment - 1) / host_alignment * host_alignment);
    return ::operator new(rounded, std::align_val_t(host_alignment));
}
}  // namespace detail

/// Owning contiguous tensor of `T` on the host.
///
///     tensor<float> w({256, 512});     // zeros, 64-byte aligned
///     tensor_ref<float> v = w;         // view (also w.ref())
///     auto w2 = w.clone();             // deep copy
template <element_type T>
class tensor {
    static_assert(!std::is_const_v<T>, "mmfuse::tensor: the element type must not be const");
    static_assert(std::is_trivially_copyable_v<T>,
                  "mmfuse::tensor: elements must be trivially copyable");

public:
    using value_type = T;

    /// Empty tensor (rank 0, no storage).
    tensor() = default;

    /// Zero-initialised tensor of extents `e`. Throws `shape_error` if the element count
    /// overflows.
    explicit tensor(const mmfuse::extents& e) : extents_(e) {
        if (e.numel_overflows())
            throw shape_error("", "mmfuse::tensor", "an element count that fits in index_t",
                              "extents " + e.to_string());
        data_.reset(static_cast<T*>(detail::aligned_host_alloc(size_t(e.numel()) * sizeof(T))));
        std::memset(static_cast<void*>(data_.get()), 0, size_t(e.numel()) * sizeof(T));
    }

    tensor(tensor&&) noexcept = default;
    tensor& operator=(tensor&&) noexcept = default;
    tensor(const tensor&) = delete;
    tensor& operator=(const tensor&) = delete;

    /// Deep copy.
    tensor clone() const {
        tensor r(extents_);
        if (numel() > 0) std::memcpy(r.data(), data(), size_t(numel()) * sizeof(T));
        return r;
    }

    T* data() noexcept { return data_.get(); }
    const T* data() const noexcept { return data_.get(); }
    const mmfuse::extents& extents() const noexcept { return extents_; }
    int rank() const noexcept { return extents_.rank(); }
    index_t extent(int axis) const { return extents_[axis]; }
    index_t numel() const noexcept { return data_ ? extents_.numel() : 0; }

    /// Mutable and read-only views of the whole tensor.
    tensor_ref<T> ref() noexcept { return {data(), extents_}; }
    tensor_ref<const T> ref() const noexcept { return {data(), extents_}; }
    tensor_ref<const T> cref() const noexcept { return {data(), extents_}; }
    operator tensor_ref<T>() noexcept { return ref(); }               // NOLINT
    operator tensor_ref<const T>() const noexcept { return cref(); }  // NOLINT

    /// Flat element access (row-major order), unchecked.
    T& operator[](index_t i) noexcept { return data_.get()[i]; }
    const T& operator[](index_t i) const noexcept { return data_.get()[i]; }

    /// Multi-index element access, unchecked (asserted in debug builds).
    template <std::integral... I>
    T& operator()(I... idx) noexcept {
        return ref()(idx...);
    }
    template <std::integral... I>
    const T& operator()(I... idx) const noexcept {
        return cref()(idx...);
    }

    /// Sets every element to `value`.
    void fill(T value) noexcept { std::fill_n(data(), numel(), value); }

private:
    std::unique_ptr<T, detail::aligned_free> data_{};
    mmfuse::extents extents_{};
};

}  // namespace mmfuse::inline v0
