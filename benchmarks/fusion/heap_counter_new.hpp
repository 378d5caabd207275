#pragma once
// Defines `mmfuse_bench::heap()` and replaces the global operator new / delete so that they
// count calls while `heap().counting` is set (the heap_allocs_per_iter counter of the CPU
// suites). Include from exactly ONE translation unit of a benchmark executable.

#include <atomic>
#include <cstdlib>
#include <new>

#include "fusion_bench.hpp"

namespace {
constinit mmfuse_bench::heap_counter g_heap;
// Out of line, so that GCC does not see free() of an operator-new pointer after inlining
// (-Wmismatched-new-delete); the pair below is malloc/free throughout.
[[gnu::noinline]] void release(void* p) noexcept { std::free(p); }
}  // namespace
mmfuse_bench::heap_counter& mmfuse_bench::heap() { return g_heap; }

void* operator new(std::size_t n) {
    if (g_heap.counting.load(std::memory_order_relaxed))
        g_heap.calls.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
