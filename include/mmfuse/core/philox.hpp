#pragma once
/// \file
/// Counter-based random numbers: Philox 4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel
/// random numbers: as easy as 1, 2, 3", SC'11; the Random123 library).
///
/// Three layers, each usable on its own:
///
/// 1. `philox4x32<R>(counter, key)` — the pure block function: 128-bit counter and 64-bit key
///    in, 128 random bits out. `constexpr`, no state, no containers; marked
///    `MMFUSE_HOST_DEVICE` so CUDA kernels can call it.
/// 2. `philox_stream` — the infinite sequence of 32-bit *words* defined by (seed,
///    subsequence), and the element-wise transforms `uniform_at` / `normal_at` that turn word
///    positions into floats. Everything a GPU kernel needs to reproduce a fill element by
///    element without sequential state.
/// 3. `philox_generator` — (seed, subsequence, offset) with sequential draws, and the bulk
///    fills `fill_uniform` / `fill_normal` over strided `tensor_ref`s.
///
/// The stream:
///
///     key     = { lo32(seed), hi32(seed) }
///     word(p) = philox4x32_10({ lo32(p/4), hi32(p/4), lo32(subsequence), hi32(subsequence) },
///                             key)[p % 4]
///
/// The generator's `offset` is a word position p (in 32-bit words). This is the raw word
/// sequence of cuRAND's device API: `curand_init(seed, subsequence, offset, &s)` on a
/// `curandStatePhilox4_32_10_t` followed by `curand(&s)` calls returns word(offset),
/// word(offset + 1), ... (cuRAND's own float transforms, e.g. `curand_uniform`, differ from
/// the ones below; its host-API generator orders words differently). PyTorch's
/// `at::Philox4_32` uses the same key and counter layout with its offset counted in 4-word
/// blocks. Same (seed, subsequence, offset) gives the same words on every device.
///
/// Bits to floating point (`uniform_at<T>(src, base, k)`, the k-th uniform after word `base`):
///
///     float : w = word(base + k);                         u = (w >> 8) * 2^-24
///     double: h = word(base + 2k), l = word(base + 2k+1); u = ((h << 32 | l) >> 11) * 2^-53
///
/// so u is in [0, 1), on a grid of 2^-24 (float) or 2^-53 (double), and exact in `T`.
///
/// Normals (`normal_at<T>(src, base, i)`, Box–Muller, Box & Muller 1958): element i belongs to
/// pair j = i / 2, which uses uniforms u1 = uniform_at<T>(base, 2j), u2 = uniform_at<T>(base,
/// 2j + 1):
///
///     r = sqrt(-2 ln(1 - u1)),  θ = 2π u2;   element 2j = r cos θ,  element 2j+1 = r sin θ
///
/// (1 - u1 is in (0, 1], so the log is finite: |z| <= 5.77 for float, 8.57 for double.) The
/// uniforms are bit-identical on all devices; normals agree up to the ulp differences of the
/// device's log/sqrt/cos/sin.
///
/// Fills: element i of a tensor in row-major *logical* order (whatever its strides) gets
/// `uniform_in<T>(uniform_at<T>(base, i), lo, hi)` (= lo + (hi - lo) u, kept inside [lo, hi))
/// or `T(mean + std * normal_at<T>(base, i))`, where base is the generator's offset at the
/// call. The call then advances the offset past every word it used: `uniform_words<T>(n)` or
/// `normal_words<T>(n)` (n = numel). A GPU kernel reproduces a fill with thread i computing
/// exactly that expression.

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0 {

/// Four 32-bit words: a Philox counter or a Philox output block.
struct philox_u32x4 {
    std::uint32_t v[4];
    friend constexpr bool operator==(const philox_u32x4&, const philox_u32x4&) = default;
};

/// A Philox 4x32 key: two 32-bit words.
struct philox_key {
    std::uint32_t v[2];
    friend constexpr bool operator==(const philox_key&, const philox_key&) = default;
};

/// The Philox 4x32 constants (Salmon et al. 2011, Table 2; Random123 `philox.h`).
namespace philox_constants {
inline constexpr std::uint32_t m0 = 0xD2511F53u;  ///< multiplier of words 0 -> (1, 3)
inline constexpr std::uint32_t m1 = 0xCD9E8D57u;  ///< multiplier of words 2 -> (3, 1)
inline constexpr std::uint32_t w0 = 0x9E3779B9u;  ///< key bump of key word 0 (golden ratio)
inline constexpr std::uint32_t w1 = 0xBB67AE85u;  ///< key bump of key word 1 (sqrt(3) - 1)
}  // namespace philox_constants

/// The Philox 4x32 block function with `Rounds` rounds (10 is the standard, "Philox4x32-10").
///
/// One round, with (hi, lo) the 64-bit product split in halves:
///     (h0, l0) = m0 * c0,  (h1, l1) = m1 * c2
///     c' = { h1 ^ c1 ^ k0,  l1,  h0 ^ c3 ^ k1,  l0 }
/// and the key is bumped by (w0, w1) between rounds. Matches Random123 `philox4x32_R`, checked
/// against its published known-answer vectors.
template <int Rounds = 10>
MMFUSE_HOST_DEVICE constexpr philox_u32x4 philox4x32(philox_u32x4 ctr, philox_key key) noexcept {
    static_assert(Rounds >= 1 && Rounds <= 16, "mmfuse::philox4x32: Rounds must be in [1, 16]");
    using philox_constants::m0, philox_constants::m1;
    for (int r = 0; r < Rounds; ++r) {
        if (r > 0) {
            key.v[0] += philox_constants::w0;
            key.v[1] += philox_constants::w1;
        }
        const std::uint64_t p0 = std::uint64_t(m0) * ctr.v[0];
        const std::uint64_t p1 = std::uint64_t(m1) * ctr.v[2];
        const philox_u32x4 next{{std::uint32_t(p1 >> 32) ^ ctr.v[1] ^ key.v[0], std::uint32_t(p1),
                                 std::uint32_t(p0 >> 32) ^ ctr.v[3] ^ key.v[1], std::uint32_t(p0)}};
        ctr = next;
    }
    return ctr;
}

/// The word sequence of one (seed, subsequence) pair (see the file comment for the mapping).
/// Stateless and trivially copyable: pass it by value to a kernel.
struct philox_stream {
    philox_key key{};
    std::uint64_t subsequence = 0;

    /// Stream of `seed` (key = {lo32, hi32}) and `subsequence`.
    MMFUSE_HOST_DEVICE static constexpr philox_stream from_seed(
        std::uint64_t seed, std::uint64_t subsequence) noexcept {
        return {{{std::uint32_t(seed), std::uint32_t(seed >> 32)}}, subsequence};
    }

    /// Output block number `block` (= words 4*block .. 4*block + 3).
    MMFUSE_HOST_DEVICE constexpr philox_u32x4 block(std::uint64_t block) const noexcept {
        return philox4x32<10>({{std::uint32_t(block), std::uint32_t(block >> 32),
                                std::uint32_t(subsequence), std::uint32_t(subsequence >> 32)}},
                              key);
    }

    /// Word at position `p`.
    MMFUSE_HOST_DEVICE constexpr std::uint32_t word(std::uint64_t p) const noexcept {
        return block(p >> 2).v[p & 3u];
    }
};

/// Words one uniform of type `T` consumes: 1 for float, 2 for double.
template <compute_type T>
inline constexpr std::uint64_t words_per_uniform = std::is_same_v<T, float> ? 1 : 2;

/// Words used by `n` uniforms of type `T` (`fill_uniform` of n elements advances by this).
template <compute_type T>
MMFUSE_HOST_DEVICE constexpr std::uint64_t uniform_words(std::uint64_t n) noexcept {
    return n * words_per_uniform<T>;
}

/// Words used by `n` normals of type `T`: whole Box–Muller pairs, (n rounded up to even)
/// uniforms. `fill_normal` of n elements advances by this.
template <compute_type T>
MMFUSE_HOST_DEVICE constexpr std::uint64_t normal_words(std::uint64_t n) noexcept {
    return (n + (n & 1u)) * words_per_uniform<T>;
}

/// The uniform in [0, 1) made of word `w` (float): its top 24 bits times 2^-24.
MMFUSE_HOST_DEVICE constexpr float u32_to_uniform_float(std::uint32_t w) noexcept {
    return float(w >> 8) * 0x1p-24f;
}

/// The uniform in [0, 1) made of words `hi`, `lo` (double): the top 53 of their 64 bits
/// (hi first) times 2^-53.
MMFUSE_HOST_DEVICE constexpr double u32x2_to_uniform_double(std::uint32_t hi,
                                                            std::uint32_t lo) noexcept {
    return double(((std::uint64_t(hi) << 32) | lo) >> 11) * 0x1p-53;
}

/// The k-th uniform of type `T` in [0, 1) after word position `base` of `src` (anything with
/// `word(p)`: a `philox_stream`, or a caching cursor over one).
template <compute_type T, class Src>
MMFUSE_HOST_DEVICE constexpr T uniform_at(Src&& src, std::uint64_t base, std::uint64_t k) {
    if constexpr (std::is_same_v<T, float>) {
        return u32_to_uniform_float(src.word(base + k));
    } else {
        return u32x2_to_uniform_double(src.word(base + 2 * k), src.word(base + 2 * k + 1));
    }
}

/// Standard-normal element `i` after word position `base` (Box–Muller; element 2j is the
/// cosine and element 2j+1 the sine branch of pair j, see the file comment).
template <compute_type T, class Src>
MMFUSE_HOST_DEVICE T normal_at(Src&& src, std::uint64_t base, std::uint64_t i) {
    const std::uint64_t j = i >> 1;
    const T u1 = uniform_at<T>(src, base, 2 * j);
    const T u2 = uniform_at<T>(src, base, 2 * j + 1);
    const T r = std::sqrt(T(-2) * std::log(T(1) - u1));
    const T theta = T(2) * std::numbers::pi_v<T> * u2;
    return r * ((i & 1u) ? std::sin(theta) : std::cos(theta));
}

/// Maps u in [0, 1) onto [lo, hi): lo + (hi - lo) * u, computed in double and rounded to `T`;
/// when that rounding leaves [lo, hi) (it can at either end in float) the result is moved
/// to the nearest `T` inside. When no `T` lies in [lo, hi) (e.g. lo == hi) the result is
/// T(lo).
template <compute_type T>
MMFUSE_HOST_DEVICE T uniform_in(T u, double lo, double hi) {
    if (!(lo < hi)) return T(lo);
    // Largest finite T, as a literal (numeric_limits is host-only under nvcc).
    constexpr T largest = std::is_same_v<T, float> ? T(0x1.fffffep127f) : T(0x1.fffffffffffffp1023);
    T x = T(lo + (hi - lo) * double(u));
    if (double(x) < lo) x = std::nextafter(x, largest);
    if (double(x) >= hi) {
        x = T(hi);
        while (double(x) >= hi)
            x = std::nextafter(x, -largest);
    }
    return double(x) >= lo ? x : T(lo);
}

/// A `philox_stream` word source that caches the last block, for walking positions in order.
struct philox_cursor {
    philox_stream stream{};
    std::uint64_t cached = ~std::uint64_t(0);
    philox_u32x4 words{};

    MMFUSE_HOST_DEVICE constexpr std::uint32_t word(std::uint64_t p) noexcept {
        const std::uint64_t b = p >> 2;
        if (b != cached) {
            words = stream.block(b);
            cached = b;
        }
        return words.v[p & 3u];
    }
};

/// Two standard normals from one Box–Muller pair (cosine branch first).
template <compute_type T>
struct normal_pair {
    T first, second;
};

/// A Philox 4x32-10 generator: (seed, subsequence, offset), offset in 32-bit words.
///
///     philox_generator gen(42);            // seed 42, subsequence 0, offset 0
///     float u = gen.next_uniform<float>();  // word 0 -> [0, 1); offset becomes 1
///     fill_normal(gen, w.ref(), 0.0, 0.02); // consumes normal_words<float>(w.numel())
///
/// Two generators with equal (seed, subsequence, offset) produce equal numbers, on the CPU
/// and (with the same transforms) on a GPU. Distinct subsequences are independent streams
/// (2^64 of them, each 2^66 words long). Holds no heap memory; copying forks the state.
class philox_generator {
public:
    /// Generator at word `offset` of stream (`seed`, `subsequence`).
    constexpr explicit philox_generator(std::uint64_t seed, std::uint64_t subsequence = 0,
                                        std::uint64_t offset = 0) noexcept
        : seed_(seed), stream_(philox_stream::from_seed(seed, subsequence)), offset_(offset) {}

    constexpr std::uint64_t seed() const noexcept { return seed_; }
    constexpr std::uint64_t subsequence() const noexcept { return stream_.subsequence; }
    /// Position of the next word to be used.
    constexpr std::uint64_t offset() const noexcept { return offset_; }
    /// The (key, subsequence) word sequence this generator walks.
    constexpr const philox_stream& stream() const noexcept { return stream_; }

    /// Jumps to word position `offset` (O(1): no words are generated).
    constexpr void set_offset(std::uint64_t offset) noexcept { offset_ = offset; }
    /// Skips `n` words (O(1)).
    constexpr void skip(std::uint64_t n) noexcept { offset_ += n; }
    /// Switches to `subsequence`, keeping the seed and offset.
    constexpr void set_subsequence(std::uint64_t subsequence) noexcept {
        stream_.subsequence = subsequence;
    }

    /// Next word.
    constexpr std::uint32_t next_u32() noexcept { return stream_.word(offset_++); }

    /// Next four words (words offset .. offset+3; one Philox block when offset % 4 == 0).
    constexpr philox_u32x4 next_u32x4() noexcept {
        philox_u32x4 r{};
        philox_cursor c{stream_};
        for (unsigned k = 0; k < 4; ++k)
            r.v[k] = c.word(offset_ + k);
        offset_ += 4;
        return r;
    }

    /// Next uniform in [0, 1) (`uniform_at<T>(stream, offset, 0)`); advances by
    /// `words_per_uniform<T>`.
    template <compute_type T>
    constexpr T next_uniform() noexcept {
        const T u = uniform_at<T>(stream_, offset_, 0);
        offset_ += words_per_uniform<T>;
        return u;
    }

    /// Next Box–Muller pair of standard normals (elements 0 and 1 of `normal_at<T>` at the
    /// current offset); advances by `normal_words<T>(2)`.
    template <compute_type T>
    normal_pair<T> next_normal_pair() {
        philox_cursor c{stream_};
        const normal_pair<T> r{normal_at<T>(c, offset_, 0), normal_at<T>(c, offset_, 1)};
        offset_ += normal_words<T>(2);
        return r;
    }

    /// Next standard normal: the first (cosine) element of a fresh pair; the sine element is
    /// discarded so the state stays (seed, subsequence, offset) only. Advances by
    /// `normal_words<T>(1)`.
    template <compute_type T>
    T next_normal() {
        return next_normal_pair<T>().first;
    }

private:
    std::uint64_t seed_;
    philox_stream stream_;
    std::uint64_t offset_;
};

namespace detail {

/// Throws unless `t` is a host view whose elements can be written one by one: non-null data
/// when non-empty, and no stride-0 axis of extent > 1 (a broadcast view would make several
/// logical elements share one memory location, which PyTorch also rejects).
template <class T>
void expect_writable_host(const tensor_ref<T>& t, std::string_view what) {
    if (t.space() != memory_space::host)
        throw backend_error(what,
                            "expected a host tensor, got a device tensor (use the "
                            "device backend's fill)");
    if (t.numel() > 0 && t.data() == nullptr)
        throw shape_error(what, "output tensor", "a view with data", "a null view " + t.describe());
    if (t.numel() > 0 && has_broadcast_axis(t.extents(), t.strides()))
        throw shape_error(what, "output tensor", "a view without stride-0 (broadcast) axes",
                          "strides of " + t.describe());
}

/// Calls `f(element, i)` for every element of `t` with i its row-major logical index
/// (0 .. numel-1), whatever the strides.
template <class T, class F>
void for_each_logical(const tensor_ref<T>& t, F&& f) {
    if (t.numel() == 0) return;
    const index_t inner = t.rank() == 0 ? 1 : t.extent(-1);
    const index_t inner_stride = t.rank() == 0 ? 0 : t.stride(-1);
    T* const base = t.data();
    for_each_row<1>(t.extents(), {t.strides()},
                    [&](index_t row, const std::array<index_t, 1>& off) {
                        T* const p = base + off[0];
                        for (index_t k = 0; k < inner; ++k)
                            f(p[k * inner_stride], row * inner + k);
                    });
}

}  // namespace detail

namespace detail {
/// Shared body of the uniform-based fills: element i (row-major logical order) of `t` gets
/// `f(uniform_at<T>(stream, offset, i))`; then the offset advances by
/// `uniform_words<T>(numel)`. `what` names the caller in errors.
template <compute_type T, class F>
void fill_with_uniforms(philox_generator& gen, tensor_ref<T> t, std::string_view what, F&& f) {
    static_assert(!std::is_const_v<T>, "mmfuse: cannot fill a view of const elements");
    expect_writable_host(t, what);
    philox_cursor src{gen.stream()};
    const std::uint64_t base = gen.offset();
    for_each_logical(t,
                     [&](T& x, index_t i) { x = f(uniform_at<T>(src, base, std::uint64_t(i))); });
    gen.skip(uniform_words<T>(std::uint64_t(t.numel())));
}
}  // namespace detail

/// Fills `t` (float or double, any strides; host memory) with independent draws from
/// U[lo, hi). Element i (row-major logical order) gets `uniform_in<T>(uniform_at<T>(stream,
/// offset, i), lo, hi)` with `offset` the generator's offset at the call; afterwards the offset
/// has advanced by `uniform_words<T>(t.numel())`. Throws `value_error` unless lo <= hi (both
/// finite), `shape_error` for null or broadcast (stride-0) views, `backend_error` for device
/// views. No heap allocation.
template <compute_type T>
void fill_uniform(philox_generator& gen, tensor_ref<T> t, double lo, double hi) {
    if (!(std::isfinite(lo) && std::isfinite(hi) && lo <= hi))
        throw value_error("fill_uniform", "expected finite lo <= hi, got lo = " +
                                              std::to_string(lo) + ", hi = " + std::to_string(hi));
    detail::fill_with_uniforms(gen, t, "fill_uniform",
                               [&](T u) { return uniform_in<T>(u, lo, hi); });
}

/// Fills `t` (float or double, any strides; host memory) with draws from N(mean, std^2).
/// Element i (row-major logical order) gets `T(mean + std * normal_at<T>(stream, offset, i))`
/// (the Box–Muller normal computed in `T`); afterwards the offset has advanced by
/// `normal_words<T>(t.numel())`. Throws `value_error` unless mean is finite and std is finite
/// and >= 0, plus the view errors of `fill_uniform`. No heap allocation.
template <compute_type T>
void fill_normal(philox_generator& gen, tensor_ref<T> t, double mean, double std) {
    static_assert(!std::is_const_v<T>, "mmfuse::fill_normal: cannot fill a view of const elements");
    if (!(std::isfinite(mean) && std::isfinite(std) && std >= 0))
        throw value_error("fill_normal", "expected finite mean and finite std >= 0, got mean = " +
                                             std::to_string(mean) +
                                             ", std = " + std::to_string(std));
    detail::expect_writable_host(t, "fill_normal");
    philox_cursor src{gen.stream()};
    const std::uint64_t base = gen.offset();
    detail::for_each_logical(t, [&](T& x, index_t i) {
        x = T(mean + std * double(normal_at<T>(src, base, std::uint64_t(i))));
    });
    gen.skip(normal_words<T>(std::uint64_t(t.numel())));
}

}  // namespace mmfuse::inline v0
