#pragma once
/// \file
/// Planned memory for activations and scratch (DESIGN decision 7).
///
/// An `arena` owns one 64-byte-aligned host buffer of fixed capacity and hands out
/// aligned views by bumping an offset; `mark()`/`release()` rewind it LIFO-style (scratch
/// of an op), `reset()` rewinds it entirely (start of a step). An `arena_planner` runs the
/// same allocation sequence without memory and reports the peak, so a model can size its
/// arena once per shape and then never allocate in a steady-state step:
///
///     arena_planner plan;  model.forward(plan, ...);         // sizes only
///     arena ws(plan.peak_bytes());                           // one allocation
///     for (...) { ws.reset(); model.forward(ws, ...); }      // no heap traffic
///
/// Both satisfy the `workspace_allocator` concept. Exhausting an arena throws
/// `backend_error` (never returns a short or overlapping buffer).

#include <concepts>
#include <cstddef>
#include <memory>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0 {

/// Position in an arena, returned by `mark()` and consumed by `release()`.
struct arena_marker {
    std::size_t offset = 0;
};

namespace detail {
/// The bump-offset bookkeeping shared by `arena` and `arena_planner`.
class bump_offsets {
public:
    /// Reserves `bytes` aligned to `host_alignment`; returns the start offset. Throws
    /// `backend_error` when `capacity` would be exceeded (capacity == SIZE_MAX: unbounded).
    std::size_t reserve(std::size_t bytes, std::size_t capacity, std::string_view who) {
        const std::size_t start = (offset_ + host_alignment - 1) / host_alignment * host_alignment;
        if (bytes > capacity || start > capacity - bytes)
            throw backend_error(who, "arena exhausted: requested " + std::to_string(bytes) +
                                         " bytes at offset " + std::to_string(start) +
                                         ", capacity " + std::to_string(capacity) +
                                         " bytes (size the arena with an arena_planner)");
        offset_ = start + bytes;
        peak_ = std::max(peak_, offset_);
        return start;
    }
    std::size_t used() const noexcept { return offset_; }
    std::size_t peak() const noexcept { return peak_; }
    arena_marker mark() const noexcept { return {offset_}; }
    void release(arena_marker m, std::string_view who) {
        if (m.offset > offset_)
            throw backend_error(who, "arena release: marker " + std::to_string(m.offset) +
                                         " is past the current offset " + std::to_string(offset_));
        offset_ = m.offset;
    }
    void reset() noexcept { offset_ = 0; }

private:
    std::size_t offset_ = 0;
    std::size_t peak_ = 0;
};

inline std::size_t checked_bytes(const extents& e, std::size_t elem, std::string_view who) {
    if (e.numel_overflows() || std::size_t(e.numel()) > SIZE_MAX / elem)
        throw shape_error(who, "arena allocation", "a size that fits in memory",
                          "extents " + e.to_string());
    return std::size_t(e.numel()) * elem;
}
}  // namespace detail

/// Something that hands out contiguous views of given extents: `arena` (real memory) or
/// `arena_planner` (sizes only).
template <class A>
concept workspace_allocator = requires(A& a, const extents& e) {
    { a.template allocate<float>(e) } -> std::same_as<tensor_ref<float>>;
    { a.mark() } -> std::same_as<arena_marker>;
    a.release(arena_marker{});
    a.reset();
};

/// Fixed-capacity bump allocator over one owned 64-byte-aligned host buffer.
class arena {
public:
    /// An arena of `capacity_bytes` (allocated once, here).
    explicit arena(std::size_t capacity_bytes)
        : buffer_(static_cast<std::byte*>(detail::aligned_host_alloc(capacity_bytes))),
          capacity_(capacity_bytes) {}

    /// Contiguous, 64-byte-aligned, *uninitialised* view of extents `e`. Throws
    /// `backend_error` if the arena is exhausted.
    template <element_type T>
    tensor_ref<T> allocate(const extents& e) {
        const std::size_t bytes = detail::checked_bytes(e, sizeof(T), "arena");
        const std::size_t at = offsets_.reserve(bytes, capacity_, "arena");
        return tensor_ref<T>(reinterpret_cast<T*>(buffer_.get() + at), e);
    }

    arena_marker mark() const noexcept { return offsets_.mark(); }
    /// Rewinds to `m` (everything allocated after `m` becomes invalid).
    void release(arena_marker m) { offsets_.release(m, "arena"); }
    /// Rewinds to empty; the peak is kept.
    void reset() noexcept { offsets_.reset(); }

    std::size_t capacity_bytes() const noexcept { return capacity_; }
    std::size_t used_bytes() const noexcept { return offsets_.used(); }
    std::size_t peak_bytes() const noexcept { return offsets_.peak(); }

private:
    std::unique_ptr<std::byte, detail::aligned_free> buffer_;
    std::size_t capacity_;
    detail::bump_offsets offsets_;
};

/// Dry-run twin of `arena`: records the offsets an allocation sequence would use and its
/// peak; the views it returns have null data and must not be dereferenced.
class arena_planner {
public:
    template <element_type T>
    tensor_ref<T> allocate(const extents& e) {
        offsets_.reserve(detail::checked_bytes(e, sizeof(T), "arena_planner"), SIZE_MAX,
                         "arena_planner");
        return tensor_ref<T>(nullptr, e);
    }
    arena_marker mark() const noexcept { return offsets_.mark(); }
    void release(arena_marker m) { offsets_.release(m, "arena_planner"); }
    void reset() noexcept { offsets_.reset(); }

    /// Capacity an `arena` needs to run the recorded sequence.
    std::size_t peak_bytes() const noexcept { return offsets_.peak(); }

private:
    detail::bump_offsets offsets_;
};

}  // namespace mmfuse::inline v0
