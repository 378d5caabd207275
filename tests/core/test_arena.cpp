// arena and arena_planner: alignment, no overlap, LIFO release, exhaustion, planned sizing.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "mmfuse/core/arena.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {
// A fixed allocation sequence, run against any workspace allocator.
template <workspace_allocator A>
std::vector<std::pair<std::uintptr_t, std::size_t>> run_sequence(A& a, index_t n) {
    std::vector<std::pair<std::uintptr_t, std::size_t>> spans;
    auto x = a.template allocate<float>({n, 3});
    spans.emplace_back(std::uintptr_t(x.data()), std::size_t(x.numel()) * 4);
    const auto m = a.mark();
    auto y = a.template allocate<double>({n});
    spans.emplace_back(std::uintptr_t(y.data()), std::size_t(y.numel()) * 8);
    a.release(m);
    auto z = a.template allocate<std::uint8_t>({n, 5});
    spans.emplace_back(std::uintptr_t(z.data()), std::size_t(z.numel()));
    return spans;
}
}  // namespace

TEST_CASE("arena: aligned, non-overlapping, reusable after release", "[core][arena]") {
    auto rng = mmfuse_test::make_rng();
    const index_t n = 1 + index_t(rng() % 1000);
    arena_planner plan;
    run_sequence(plan, n);
    arena a(plan.peak_bytes());
    const auto spans = run_sequence(a, n);  // exactly fits the planned capacity
    REQUIRE(a.peak_bytes() == plan.peak_bytes());
    for (const auto& [p, bytes] : spans)
        REQUIRE(p % host_alignment == 0);
    // x is live throughout: y and z must not overlap it; z reuses y's released space.
    const auto [px, bx] = spans[0];
    for (int k = 1; k < 3; ++k)
        REQUIRE((spans[size_t(k)].first >= px + bx));
    REQUIRE(spans[2].first == spans[1].first);
    // Writing every byte of every live view is legal (ASan checks the bounds).
    auto w = a.allocate<float>({0});
    REQUIRE(w.numel() == 0);
    a.reset();
    REQUIRE(a.used_bytes() == 0);
    run_sequence(a, n);  // a second step with the same sizes fits again, no growth
    REQUIRE(a.peak_bytes() == plan.peak_bytes());
}

TEST_CASE("arena: exhaustion and bad releases throw backend_error", "[core][arena]") {
    arena a(256);
    REQUIRE_NOTHROW(a.allocate<float>({64}));
    REQUIRE_THROWS_WITH(a.allocate<float>({1}),
                        Catch::Contains("arena exhausted") && Catch::Contains("capacity 256"));
    REQUIRE_THROWS_AS(a.allocate<double>({index_t(1) << 62}), shape_error);  // bytes overflow
    arena b(1024);
    const auto m0 = b.mark();
    b.allocate<float>({10});
    const auto m1 = b.mark();
    b.release(m0);
    REQUIRE_THROWS_AS(b.release(m1), backend_error);  // marker past the current offset
}

TEST_CASE("growing_arena: first step sizes it, later steps reuse one block", "[core][arena]") {
    auto rng = mmfuse_test::make_rng(5);
    const index_t n = 1 + index_t(rng() % 5000);
    growing_arena g;  // starts empty
    std::vector<std::pair<std::uintptr_t, std::size_t>> first;
    for (int step = 0; step < 4; ++step) {
        g.reset();
        const auto spans = run_sequence(g, n);
        auto big = g.allocate<double>({4 * n});  // forces a second block on the first step
        for (index_t i = 0; i < big.numel(); ++i)
            big.data()[i] = double(i);  // ASan: in bounds
        for (const auto& [p, bytes] : spans)
            REQUIRE(p % host_alignment == 0);
        REQUIRE(std::uintptr_t(big.data()) % host_alignment == 0);
        // Live views never overlap: x (spans[0]) vs z (spans[2]) vs big.
        const auto [px, bx] = spans[0];
        const auto [pz, bz] = spans[2];
        REQUIRE((pz >= px + bx || pz + bz <= px));
        const auto pb = std::uintptr_t(big.data());
        REQUIRE((pb >= pz + bz || pb + std::size_t(big.numel()) * 8 <= pz));
        REQUIRE((pb >= px + bx || pb + std::size_t(big.numel()) * 8 <= px));
        if (step >= 1) REQUIRE(g.block_count() == 1);  // folded into one block by reset()
        if (step >= 2) REQUIRE(spans == first);        // steady state: same memory reused
        first = spans;
    }
    REQUIRE(g.high_water_bytes() >= std::size_t(4 * n) * 8);
}
