#pragma once
// Heap-allocation counting for the "steady state allocates nothing" tests (DESIGN decision 7).
// Global operator new/delete are replaced to count calls; on glibc the C allocation functions
// (malloc, calloc, realloc, aligned_alloc, posix_memalign, memalign) are also interposed, so
// allocations made by Eigen (which uses malloc) are counted too. Counting is switched on only
// around the steps under test. Under AddressSanitizer, whose runtime owns these functions,
// MMFUSE_TEST_ASAN is defined and nothing is replaced (the test then reports itself skipped).
//
// Include from exactly ONE source file of a test executable: it defines the replacements.

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define MMFUSE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MMFUSE_TEST_ASAN 1
#endif
#endif

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
/// Optional attribution: when set and it returns true for an allocation, that allocation is
/// counted in `excluded_allocations` instead (e.g. allocations made inside a third-party
/// library call, so that a test can hold mmfuse's own side to zero).
bool (*exclude_allocation)() noexcept = nullptr;
std::atomic<long> excluded_allocations{0};
inline void note_allocation() noexcept {
    if (!counting.load(std::memory_order_relaxed)) return;
    if (exclude_allocation && exclude_allocation())
        excluded_allocations.fetch_add(1, std::memory_order_relaxed);
    else
        allocations.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

#ifndef MMFUSE_TEST_ASAN

// ---- replaced global allocation functions (count, then allocate with malloc) ----------
// Frees what the replaced operator new returned (out of line, so that the compiler does not
// mistake an inlined new/free pair for a mismatched allocation).
[[gnu::noinline]] void release(void* p) noexcept {
    std::free(p);
}

void* operator new(std::size_t n) {
    note_allocation();
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    return ::operator new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    note_allocation();
    return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept {
    return ::operator new(n, t);
}
void* operator new(std::size_t n, std::align_val_t a) {
    note_allocation();
    const std::size_t al = std::size_t(a);
    if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al + (n == 0 ? al : 0))) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
    return ::operator new(n, a);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return ::operator new(n, a);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
    return ::operator new(n, a, t);
}
void operator delete(void* p) noexcept {
    release(p);
}
void operator delete[](void* p) noexcept {
    release(p);
}
void operator delete(void* p, std::size_t) noexcept {
    release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    release(p);
}

#if defined(__GLIBC__)
// ---- glibc: interpose the C allocation functions (Eigen allocates with malloc) ---------
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) noexcept {
    note_allocation();
    return __libc_malloc(n);
}
void* calloc(std::size_t k, std::size_t n) noexcept {
    note_allocation();
    return __libc_calloc(k, n);
}
void* realloc(void* p, std::size_t n) noexcept {
    note_allocation();
    return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) noexcept {
    note_allocation();
    return __libc_memalign(a, n);
}
void* memalign(std::size_t a, std::size_t n) noexcept {
    note_allocation();
    return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
    note_allocation();
    void* p = __libc_memalign(a, n);
    if (!p) return 12;  // ENOMEM
    *out = p;
    return 0;
}
}
#define MMFUSE_TEST_COUNTS_MALLOC 1
#endif

#endif  // MMFUSE_TEST_ASAN
