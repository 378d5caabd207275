// [cuda] tests of the CUDA runtime pieces: device tensors and their host round trip, the device
// arena, the per-stream op scratch (grows once, then never allocates), and CUDA graph capture
// of a small diffusion-style sampling loop replayed bit for bit, without allocating.
#include "support/cuda_util.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/graph.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;
namespace mc = mmfuse::backend::cuda;

namespace {

/// True when two host tensors hold the same bytes.
template <class T>
bool same_bits(const tensor<T>& a, const tensor<T>& b) {
    return a.numel() == b.numel() &&
           std::memcmp(a.data(), b.data(), std::size_t(a.numel()) * sizeof(T)) == 0;
}

/// A new stream of GPU 0 (its own, empty op scratch).
std::unique_ptr<backend::stream> fresh_stream() {
    return mc::cuda_device::instance(0).create_stream();
}

}  // namespace

TEST_CASE("cuda device_tensor round trips through device memory", "[cuda]") {
    auto rng = make_rng(2001);
    const tensor<float> h = random_tensor<float>(extents{3, 7, 5}, rng);
    const auto d = gpu::upload(h);
    CHECK(d.extents() == h.extents());
    CHECK(d.ref().space() == memory_space::device);
    CHECK(d.bytes() == std::size_t(h.numel()) * sizeof(float));
    CHECK(same_bits(gpu::download(d), h));

    tensor<bf16> hb(extents{17});
    for (index_t i = 0; i < hb.numel(); ++i)
        hb[i] = bf16(float(i) * 0.37f - 2.0f);
    CHECK(same_bits(gpu::download(gpu::upload(hb)), hb));

    // Wrong extents or a strided host view are refused before any copy.
    tensor<float> wrong(extents{3, 5, 7});
    CHECK_THROWS_AS(mc::to_device<float>(wrong.cref(), d), shape_error);
    tensor<float> wide(extents{7, 3, 5});
    CHECK_THROWS_AS(mc::to_host<float>(d, wide.ref().transpose(0, 1)), shape_error);
}

TEST_CASE("cuda device_arena hands out device views and rewinds on reset", "[cuda]") {
    const auto before = mc::allocation_count();
    mc::device_arena arena(std::size_t(1) << 16);
    CHECK(mc::allocation_count() == before + 1);  // one block, allocated once

    const auto a = arena.allocate<float>(extents{100});
    const auto b = arena.allocate<bf16>(extents{3, 5});
    CHECK(a.space() == memory_space::device);
    CHECK(b.space() == memory_space::device);
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
    CHECK(static_cast<const void*>(b.data()) != static_cast<const void*>(a.data()));
    CHECK(arena.used_bytes() >= 100 * sizeof(float) + 15 * sizeof(bf16));

    // The views are real device memory the stream accepts: fill one, copy it, read back.
    auto& s = gpu::stream();
    const ops::fill_random_desc fill{ops::random_kind::uniform, -1.0, 1.0, {9, 0, 0}};
    s.execute(fill, {}, std::array<any_tensor_ref, 1>{a});
    const auto c = arena.allocate<float>(extents{100});
    s.execute(ops::copy_desc{}, std::array<any_tensor_ref, 1>{tensor_ref<const float>(a)},
              std::array<any_tensor_ref, 1>{c});
    s.synchronize();
    std::vector<float> back(100);
    mc::check(cudaMemcpy(back.data(), c.data(), 100 * sizeof(float), cudaMemcpyDeviceToHost),
              "cudaMemcpy D2H");
    tensor<float> want(extents{100});
    philox_generator gen(9);
    fill_uniform(gen, want.ref(), -1.0, 1.0);
    for (index_t i = 0; i < 100; ++i)
        REQUIRE(back[std::size_t(i)] == want[i]);

    arena.reset();
    CHECK(arena.used_bytes() == 0);
    const auto again = arena.allocate<float>(extents{100});
    CHECK(again.data() == a.data());  // the same bytes, reused
    CHECK_THROWS_AS(arena.allocate<float>(extents{1 << 20}), backend_error);
    CHECK(mc::allocation_count() == before + 1);
}

TEST_CASE("cuda op scratch grows once and repeated ops then allocate nothing", "[cuda]") {
    auto rng = make_rng(2003);
    auto owner = fresh_stream();
    auto& s = static_cast<mc::cuda_stream&>(*owner);
    // A column sum of a tall matrix: few outputs, so the reduction is split into chunks
    // whose sums live in the stream's scratch.
    const tensor<float> xh = random_tensor<float>(extents{8192, 64}, rng);
    const auto x = gpu::upload(xh);
    auto y = gpu::poisoned<float>(extents{64});
    auto small = gpu::poisoned<float>(extents{32});
    auto elementwise = gpu::poisoned<float>(extents{8192, 64});
    CHECK(s.scratch_bytes() == 0);

    const auto before = mc::allocation_count();
    ops::reduce<float>(s, ops::reduce_kind::sum, 0, x.cref(), y.ref());
    CHECK(mc::allocation_count() == before + 1);  // the scratch grew, once
    CHECK(s.scratch_bytes() > 0);
    const auto grown = mc::allocation_count();
    for (int i = 0; i < 100; ++i) {
        ops::reduce<float>(s, ops::reduce_kind::mean, 0, x.cref(), y.ref());
        // A smaller split reduction fits in the same scratch.
        ops::reduce<float>(s, ops::reduce_kind::sum, 0, x.cref().narrow(1, 0, 32), small.ref());
        ops::binary<float>(s, ops::binary_kind::mul, x.cref(), x.cref(), elementwise.ref());
    }
    s.synchronize();
    CHECK(mc::allocation_count() == grown);

    // And the result is right: the column means against a double loop.
    const auto got = gpu::download(y);
    std::vector<double> want(64, 0.0);
    for (index_t r = 0; r < 8192; ++r)
        for (index_t c = 0; c < 64; ++c)
            want[std::size_t(c)] += double(xh(r, c)) / 8192.0;
    CHECK(max_rel_error(std::span<const float>(got.data(), 64), std::span<const double>(want)) <=
          1e-6);
}

namespace {

/// A 20-step "sampling loop" of a diffusion model with a closed-form denoiser:
///     eps_hat = x * k                                   (binary mul, k a broadcast scalar)
///     x <- a_t x + b_t eps_hat + c_t z_t                (combine, z_t from Philox offset t)
/// run on `s` with the operands given (device views for the GPU, host views for Eigen).
struct sampling_loop {
    static constexpr int steps = 20;
    std::uint64_t seed = 0;

    template <class Stream>
    void operator()(Stream& s, const tensor_ref<float>& x, const tensor_ref<const float>& k,
                    const tensor_ref<float>& eps) const {
        const std::uint64_t words = normal_words<float>(std::uint64_t(x.numel()));
        for (int t = 0; t < steps; ++t) {
            ops::binary<float>(s, ops::binary_kind::mul, x, k, eps);
            ops::combine_desc d;
            d.coeff = {0.96 - 0.01 * t, -0.2 + 0.005 * t, 0.0, 0.0};
            d.noise_scale = 0.05 * (steps - t) / steps;
            d.noise = {seed, 0, std::uint64_t(t) * words};
            s.execute(d,
                      std::array<any_tensor_ref, 2>{tensor_ref<const float>(x),
                                                    tensor_ref<const float>(eps)},
                      std::array<any_tensor_ref, 1>{x});
        }
    }
};

}  // namespace

TEST_CASE("cuda graph replays a sampling loop bit for bit without allocating", "[cuda]") {
    auto rng = make_rng(2004);
    auto& s = gpu::stream();
    const extents e{2, 16, 37};  // 1184 elements: vector packs and a ragged tail
    const tensor<float> x0 = random_tensor<float>(e, rng);
    tensor<float> kh(extents{1});
    kh[0] = 0.7f;
    const sampling_loop loop{std::uniform_int_distribution<std::uint64_t>()(rng)};

    const auto x = gpu::upload(x0);
    const auto k = gpu::upload(kh);
    auto eps = gpu::poisoned<float>(e);

    // Eagerly.
    loop(s, x.ref(), k.cref(), eps.ref());
    const tensor<float> eager = gpu::download(x);

    // Captured once, replayed twice from the same start.
    mc::to_device<float>(x0.cref(), x);
    const auto before = mc::allocation_count();
    mc::graph g = mc::graph::capture(s, [&] { loop(s, x.ref(), k.cref(), eps.ref()); });
    CHECK(mc::allocation_count() == before);
    const tensor<float> untouched = gpu::download(x);
    CHECK(same_bits(untouched, x0));  // capturing records, it does not run
    g.launch(s);
    s.synchronize();
    const tensor<float> replayed = gpu::download(x);
    CHECK(same_bits(replayed, eager));
    mc::to_device<float>(x0.cref(), x);
    g.launch(s);
    s.synchronize();
    CHECK(same_bits(gpu::download(x), eager));
    CHECK(mc::allocation_count() == before);

    // The same loop on the Eigen reference backend.
    tensor<float> xr = x0.clone();
    tensor<float> epsr(e);
    loop(backend::default_stream(), xr.ref(), kh.cref(), epsr.ref());
    const double err = max_rel_error(std::span<const float>(eager.data(), std::size_t(e.numel())),
                                     std::span<const float>(xr.data(), std::size_t(e.numel())));
    CAPTURE(err);
    CHECK(err <= 1e-5);
    // (the loop really moved x: not a vacuous comparison)
    CHECK(max_rel_error(std::span<const float>(eager.data(), std::size_t(e.numel())),
                        std::span<const float>(x0.data(), std::size_t(e.numel()))) > 1e-2);
}

TEST_CASE("cuda graph capture refuses to grow op scratch, then works after one eager step",
          "[cuda]") {
    auto rng = make_rng(2005);
    auto owner = fresh_stream();
    auto& s = static_cast<mc::cuda_stream&>(*owner);
    const auto x = gpu::upload(random_tensor<float>(extents{8192, 64}, rng));
    auto y = gpu::poisoned<float>(extents{64});
    const auto step = [&] { ops::reduce<float>(s, ops::reduce_kind::sum, 0, x.cref(), y.ref()); };

    const auto before = mc::allocation_count();
    CHECK_THROWS_AS(mc::graph::capture(s, step), backend_error);
    CHECK_THROWS_WITH(mc::graph::capture(s, step), Catch::Contains("before capturing"));
    CHECK(mc::allocation_count() == before);
    CHECK(s.scratch_bytes() == 0);

    // One eager step sizes the scratch; the capture then succeeds and replays the same sums.
    step();
    const tensor<float> eager = gpu::download(y);
    mc::check(cudaMemset(y.data(), 0xFF, y.bytes()), "cudaMemset");
    const auto grown = mc::allocation_count();
    mc::graph g = mc::graph::capture(s, step);
    g.launch(s);
    s.synchronize();
    CHECK(same_bits(gpu::download(y), eager));
    CHECK(mc::allocation_count() == grown);
}

TEST_CASE("cuda graph replays only on its stream and survives later scratch growth", "[cuda]") {
    auto rng = make_rng(2006);
    auto owner = fresh_stream();
    auto& s = static_cast<mc::cuda_stream&>(*owner);
    const auto x = gpu::upload(random_tensor<float>(extents{8192, 64}, rng));
    auto y = gpu::poisoned<float>(extents{64});
    const auto step = [&] { ops::reduce<float>(s, ops::reduce_kind::sum, 0, x.cref(), y.ref()); };
    step();  // sizes the scratch
    const tensor<float> eager = gpu::download(y);
    mc::graph g = mc::graph::capture(s, step);

    // Another stream would race the capturing stream's eager ops over the same scratch.
    auto other = fresh_stream();
    CHECK_THROWS_AS(g.launch(static_cast<mc::cuda_stream&>(*other)), backend_error);

    // A larger op grows the scratch; the graph still points into the outgrown block, which is
    // retired, not freed, so its replay still computes the same sums.
    const std::size_t small = s.scratch_bytes();
    s.reserve_scratch(small + (std::size_t(64) << 20));
    CHECK(s.scratch_bytes() > small);
    mc::check(cudaMemset(y.data(), 0xFF, y.bytes()), "cudaMemset");
    mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    g.launch(s);
    s.synchronize();
    CHECK(same_bits(gpu::download(y), eager));
}

TEST_CASE("cuda launchers refuse direct execute calls whose operands do not fit", "[cuda]") {
    auto& s = gpu::stream();
    const auto a = gpu::poisoned<float>(extents{4, 8});
    const auto b = gpu::poisoned<float>(extents{4, 9});
    auto y = gpu::poisoned<float>(extents{4, 8});
    using arefs = std::array<any_tensor_ref, 2>;
    const std::array<any_tensor_ref, 1> out{y.ref()};
    // binary: b is not y's shape (the front-end would have refused it; the kernel must too).
    CHECK_THROWS_AS(s.execute(ops::binary_desc{ops::binary_kind::add}, arefs{a.cref(), b.cref()}, out),
                    backend_error);
    // concat: parts of widths 8 and 9 do not tile an output of width 8.
    CHECK_THROWS_WITH(s.execute(ops::concat_desc{-1}, arefs{a.cref(), b.cref()}, out),
                      Catch::Contains("do not tile"));
    // matmul: (4, 8) x (4, 9) has mismatched inner dimensions.
    CHECK_THROWS_WITH(s.execute(ops::matmul_desc{}, arefs{a.cref(), b.cref()}, out),
                      Catch::Contains("do not fit"));
    s.synchronize();
}
