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

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <memory>
#include <vector>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0 {

/// Position in an arena, returned by `mark()` and consumed by `release()`.
struct arena_marker {
    std::size_t offset = 0;
    std::size_t block = 0;  ///< growing_arena only: index of the block
    std::size_t total = 0;  ///< growing_arena only: bytes in use across blocks
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

/// Memory resource of `basic_arena` for ordinary host memory (64-byte aligned). A resource
/// provides `allocate(bytes)` (never null; throws on failure), `deallocate(p)` and the
/// `memory_space` its views live in; the CUDA backend adds one for device memory.
struct host_memory {
    static constexpr memory_space space = memory_space::host;
    static void* allocate(std::size_t bytes) { return detail::aligned_host_alloc(bytes); }
    static void deallocate(void* p) noexcept { detail::aligned_free{}(p); }
};

/// Fixed-capacity bump allocator over one owned buffer from `Memory` (64-byte-aligned
/// offsets). `arena` is the host instance; `backend::cuda::device_arena` the device one.
template <class Memory>
class basic_arena {
public:
    /// An arena of `capacity_bytes` (allocated once, here).
    explicit basic_arena(std::size_t capacity_bytes)
        : buffer_(static_cast<std::byte*>(Memory::allocate(capacity_bytes))),
          capacity_(capacity_bytes) {}

    /// Contiguous, 64-byte-aligned, *uninitialised* view of extents `e`. Throws
    /// `backend_error` if the arena is exhausted.
    template <element_type T>
    tensor_ref<T> allocate(const extents& e) {
        const std::size_t bytes = detail::checked_bytes(e, sizeof(T), "arena");
        const std::size_t at = offsets_.reserve(bytes, capacity_, "arena");
        return tensor_ref<T>(reinterpret_cast<T*>(buffer_.get() + at), e, Memory::space);
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
    struct free_buffer {
        void operator()(std::byte* p) const noexcept { Memory::deallocate(p); }
    };
    std::unique_ptr<std::byte, free_buffer> buffer_;
    std::size_t capacity_;
    detail::bump_offsets offsets_;
};

/// Fixed-capacity bump allocator over one owned 64-byte-aligned host buffer.
using arena = basic_arena<host_memory>;

/// Arena that grows instead of throwing: when the current block is full it chains a new
/// block (heap), and the next `reset()` replaces a chain of blocks by one block as large as
/// the step's high-water mark. So the first step of a training or sampling loop sizes the
/// workspace and every later step with the same shapes allocates nothing
/// (tiny-cuda-nn's growing GPU arena, on the host). Views stay valid until `reset()` or a
/// `release()` past them.
class growing_arena {
public:
    /// Starts with one block of `initial_bytes` (may be 0: the first step sizes it).
    explicit growing_arena(std::size_t initial_bytes = 0) {
        if (initial_bytes > 0) blocks_.push_back(block(initial_bytes));
    }

    /// Contiguous, 64-byte-aligned, uninitialised view of extents `e`.
    template <element_type T>
    tensor_ref<T> allocate(const extents& e) {
        const std::size_t bytes = detail::checked_bytes(e, sizeof(T), "growing_arena");
        if (blocks_.empty() || !fits(blocks_[current_], bytes)) {
            // Move on to the next block if it fits, otherwise chain a new one.
            if (current_ + 1 < blocks_.size() && fits_empty(blocks_[current_ + 1], bytes)) {
                ++current_;
            } else {
                const std::size_t last = blocks_.empty() ? 0 : blocks_.back().capacity;
                blocks_.insert(blocks_.begin() + std::ptrdiff_t(blocks_.empty() ? 0 : current_ + 1),
                               block(std::max(bytes + host_alignment, 2 * last)));
                current_ = blocks_.size() == 1 ? 0 : current_ + 1;
            }
            blocks_[current_].offsets.reset();
        }
        block& b = blocks_[current_];
        const std::size_t at = b.offsets.reserve(bytes, b.capacity, "growing_arena");
        total_ += bytes + host_alignment;
        high_water_ = std::max(high_water_, total_);
        return tensor_ref<T>(reinterpret_cast<T*>(b.memory.get() + at), e);
    }

    /// Position to rewind to with `release()` (LIFO).
    arena_marker mark() const noexcept {
        return {blocks_.empty() ? 0 : blocks_[current_].offsets.used(), current_, total_};
    }
    void release(arena_marker m) {
        if (blocks_.empty()) return;
        if (m.block > current_)
            throw backend_error("growing_arena", "release: marker is past the current position");
        for (std::size_t b = m.block + 1; b <= current_; ++b)
            blocks_[b].offsets.reset();
        current_ = m.block;
        blocks_[current_].offsets.release(arena_marker{m.offset}, "growing_arena");
        total_ = m.total;
    }

    /// Rewinds to empty; if the last step needed more than one block, replaces them by a
    /// single block of the high-water size (the only place that frees or allocates).
    void reset() {
        if (blocks_.size() > 1) {
            blocks_.clear();
            blocks_.push_back(block(high_water_));
        }
        for (block& b : blocks_)
            b.offsets.reset();
        current_ = 0;
        total_ = 0;
    }

    /// Bytes the largest step so far needed (alignment padding included).
    std::size_t high_water_bytes() const noexcept { return high_water_; }
    /// Number of heap blocks held right now (1 in a steady state).
    std::size_t block_count() const noexcept { return blocks_.size(); }

private:
    struct block {
        explicit block(std::size_t bytes)
            : memory(static_cast<std::byte*>(detail::aligned_host_alloc(bytes))), capacity(bytes) {}
        std::unique_ptr<std::byte, detail::aligned_free> memory;
        std::size_t capacity;
        detail::bump_offsets offsets;
    };
    static bool fits(const block& b, std::size_t bytes) noexcept {
        const std::size_t start =
            (b.offsets.used() + host_alignment - 1) / host_alignment * host_alignment;
        return bytes <= b.capacity && start <= b.capacity - bytes;
    }
    static bool fits_empty(const block& b, std::size_t bytes) noexcept {
        return bytes <= b.capacity;
    }

    std::vector<block> blocks_;
    std::size_t current_ = 0;
    std::size_t total_ = 0;
    std::size_t high_water_ = 0;
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
