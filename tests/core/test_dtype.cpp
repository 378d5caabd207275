// bf16 and half storage types: conversions checked against independent arithmetic
// (ldexp decoding, nearest-neighbour search with ties to even).
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "mmfuse/core/dtype.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {
// IEEE binary16 decoded with ldexp, independently of mmfuse::half.
double decode_half(std::uint16_t h) {
    const int sign = (h >> 15) ? -1 : 1;
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    if (exp == 0x1f) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
    if (exp == 0) return sign * std::ldexp(double(mant), -24);
    return sign * std::ldexp(double(1024 + mant), exp - 25);
}

// True when `r` is a nearest representable value to x among its neighbours (ties to even).
template <class Decode>
bool is_nearest_even(double x, std::uint16_t r, Decode decode) {
    const double d = std::abs(x - decode(r));
    for (int delta : {-1, 1}) {
        const std::uint16_t n = std::uint16_t(r + delta);
        const double v = decode(n);
        if (std::isnan(v) || ((n ^ r) & 0x8000)) continue;  // crossed sign or into NaN
        const double dn = std::abs(x - v);
        if (dn < d) return false;
        if (dn == d && (r & 1)) return false;  // tie must go to the even pattern
    }
    return true;
}
}  // namespace

TEST_CASE("dtype tags and sizes", "[core][dtype]") {
    STATIC_REQUIRE(dtype_of<float> == dtype::f32);
    STATIC_REQUIRE(dtype_of<const double> == dtype::f64);
    STATIC_REQUIRE(dtype_of<bf16> == dtype::bf16);
    STATIC_REQUIRE(dtype_size(dtype::f16) == 2);
    STATIC_REQUIRE(sizeof(bf16) == 2 && sizeof(half) == 2);
    REQUIRE(dtype_name(dtype::bf16) == "bf16");
    REQUIRE(dtype_name(dtype::boolean) == "bool");
}

TEST_CASE("half: every bit pattern decodes like ldexp and re-encodes to itself", "[core][dtype]") {
    for (std::uint32_t b = 0; b < 65536; ++b) {
        const auto h = half::from_bits(std::uint16_t(b));
        const double ref = decode_half(std::uint16_t(b));
        if (std::isnan(ref)) {
            REQUIRE(std::isnan(float(h)));
            REQUIRE(std::isnan(float(half(float(h)))));
            continue;
        }
        REQUIRE(double(float(h)) == ref);
        REQUIRE(half(float(h)).bits == b);
    }
}

TEST_CASE("half: float to half rounds to nearest even", "[core][dtype]") {
    auto rng = mmfuse_test::make_rng();
    std::uniform_int_distribution<std::uint32_t> bits;
    int checked = 0;
    for (int i = 0; i < 200000; ++i) {
        // Random floats concentrated on the half range (normal and subnormal).
        const float x =
            std::ldexp(float(bits(rng) & 0xffffff) / float(1 << 24), int(bits(rng) % 42) - 26) *
            ((bits(rng) & 1) ? -1.0f : 1.0f);
        const half h(x);
        REQUIRE(is_nearest_even(double(x), h.bits, decode_half));
        ++checked;
    }
    REQUIRE(checked == 200000);
    REQUIRE(std::isinf(float(half(70000.0f))));
    REQUIRE(float(half(65504.0f)) == 65504.0f);
    REQUIRE(std::isinf(float(half(65520.0f))));  // the rounding boundary to infinity
    REQUIRE(float(half(65519.0f)) == 65504.0f);
    REQUIRE(std::isnan(float(half(std::numeric_limits<float>::quiet_NaN()))));
    REQUIRE(half(-0.0f).bits == 0x8000);
    REQUIRE(half(std::ldexp(1.0f, -25)).bits == 0);  // exactly half the smallest subnormal: even
    REQUIRE(half(std::ldexp(1.5f, -25)).bits == 1);
}

TEST_CASE("bf16: upper half of float32 with round to nearest even", "[core][dtype]") {
    auto rng = mmfuse_test::make_rng(1);
    std::uniform_int_distribution<std::uint32_t> bits;
    const auto decode = [](std::uint16_t b) {
        return double(std::bit_cast<float>(std::uint32_t(b) << 16));
    };
    for (int i = 0; i < 200000; ++i) {
        const float x = std::bit_cast<float>(bits(rng));
        if (!std::isfinite(x)) continue;
        const bf16 b(x);
        if (std::abs(x) > 3.3e38f) continue;  // may round to infinity legitimately
        REQUIRE(is_nearest_even(double(x), b.bits, decode));
    }
    REQUIRE(std::isnan(float(bf16(std::numeric_limits<float>::quiet_NaN()))));
    REQUIRE(float(bf16(1.0f)) == 1.0f);
    REQUIRE(bf16(1.0f + std::ldexp(1.0f, -8)).bits == bf16(1.0f).bits);  // tie to even (down)
    REQUIRE(float(bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));  // tie up
}
