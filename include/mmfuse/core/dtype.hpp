#pragma once
/// \file
/// Element types. Compute types are `float` and `double`; `bf16` and `half` are storage
/// types (conversions to and from float, round-to-nearest-even, as PyTorch and CUDA do).
/// `dtype` names an element type at run time (op descriptors, checkpoints, .npy headers).

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/config.hpp"

namespace mmfuse::inline v0 {

/// bfloat16 storage type: the upper 16 bits of an IEEE float32.
/// Conversion from float rounds to nearest even; NaN stays NaN (quiet).
struct bf16 {
    std::uint16_t bits = 0;

    constexpr bf16() = default;
    explicit constexpr bf16(float f) : bits(from_float(f)) {}
    constexpr operator float() const noexcept {  // NOLINT(google-explicit-constructor)
        return std::bit_cast<float>(std::uint32_t(bits) << 16);
    }
    static constexpr bf16 from_bits(std::uint16_t b) noexcept {
        bf16 r;
        r.bits = b;
        return r;
    }

private:
    static constexpr std::uint16_t from_float(float f) noexcept {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);  // NaN
        const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
        return std::uint16_t((u + rounding) >> 16);
    }
};

/// IEEE binary16 storage type. Conversion from float rounds to nearest even, handles
/// subnormals, overflows to infinity and keeps NaN.
struct half {
    std::uint16_t bits = 0;

    constexpr half() = default;
    explicit constexpr half(float f) : bits(from_float(f)) {}
    constexpr operator float() const noexcept { return to_float(bits); }  // NOLINT
    static constexpr half from_bits(std::uint16_t b) noexcept {
        half r;
        r.bits = b;
        return r;
    }

private:
    static constexpr float to_float(std::uint16_t h) noexcept {
        const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
        const std::uint32_t exp = (h >> 10) & 0x1fu;
        std::uint32_t mant = h & 0x3ffu;
        if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
        if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
        if (mant == 0) return std::bit_cast<float>(sign);
        // Subnormal half: value = mant * 2^-24, exactly representable in float.
        const float v = float(mant) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    static constexpr std::uint16_t from_float(float f) noexcept {
        const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
        const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
        const std::uint32_t a = u & 0x7fffffffu;
        if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);   // NaN
        if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // >= 65520: rounds to inf
        if (a >= 0x38800000u) {                                      // normal half range
            const std::uint32_t rounding = 0xfffu + ((a >> 13) & 1u);
            return std::uint16_t(sign | ((a - 0x38000000u + rounding) >> 13));
        }
        if (a < 0x33000000u) return sign;  // below half the smallest subnormal: +-0
        // Subnormal half: shift the full mantissa (with implicit bit) into place, RNE.
        const std::uint32_t exp = a >> 23;
        const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        const std::uint32_t shift = 126u - exp;  // in [14, 24]
        const std::uint32_t halfway = 1u << (shift - 1);
        const std::uint32_t rem = mant & ((1u << shift) - 1u);
        std::uint32_t r = mant >> shift;
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
        return std::uint16_t(sign | r);
    }
};

/// Run-time element type tag.
enum class dtype : std::uint8_t { f32, f64, bf16, f16, i32, i64, u8, boolean };

/// Size in bytes of one element of `t`.
constexpr std::size_t dtype_size(dtype t) noexcept {
    switch (t) {
        case dtype::f32:
            return 4;
        case dtype::f64:
            return 8;
        case dtype::bf16:
            return 2;
        case dtype::f16:
            return 2;
        case dtype::i32:
            return 4;
        case dtype::i64:
            return 8;
        case dtype::u8:
            return 1;
        case dtype::boolean:
            return 1;
    }
    return 0;
}

/// Short name: "f32", "f64", "bf16", "f16", "i32", "i64", "u8", "bool".
constexpr std::string_view dtype_name(dtype t) noexcept {
    switch (t) {
        case dtype::f32:
            return "f32";
        case dtype::f64:
            return "f64";
        case dtype::bf16:
            return "bf16";
        case dtype::f16:
            return "f16";
        case dtype::i32:
            return "i32";
        case dtype::i64:
            return "i64";
        case dtype::u8:
            return "u8";
        case dtype::boolean:
            return "bool";
    }
    return "?";
}

namespace detail {
template <class T>
struct dtype_of_impl;
template <>
struct dtype_of_impl<float> {
    static constexpr dtype value = dtype::f32;
};
template <>
struct dtype_of_impl<double> {
    static constexpr dtype value = dtype::f64;
};
template <>
struct dtype_of_impl<bf16> {
    static constexpr dtype value = dtype::bf16;
};
template <>
struct dtype_of_impl<half> {
    static constexpr dtype value = dtype::f16;
};
template <>
struct dtype_of_impl<std::int32_t> {
    static constexpr dtype value = dtype::i32;
};
template <>
struct dtype_of_impl<std::int64_t> {
    static constexpr dtype value = dtype::i64;
};
template <>
struct dtype_of_impl<std::uint8_t> {
    static constexpr dtype value = dtype::u8;
};
template <>
struct dtype_of_impl<bool> {
    static constexpr dtype value = dtype::boolean;
};
}  // namespace detail

/// Element types mmfuse can store in a tensor.
template <class T>
concept element_type = requires {
    detail::dtype_of_impl<std::remove_const_t<T>>::value;
};

/// Element types mmfuse computes in (the Eigen reference backend supports both).
template <class T>
concept compute_type = std::is_same_v < std::remove_const_t<T>,
float > || std::is_same_v<std::remove_const_t<T>, double>;

/// The `dtype` tag of a C++ element type (const ignored).
template <element_type T>
inline constexpr dtype dtype_of = detail::dtype_of_impl<std::remove_const_t<T>>::value;

}  // namespace mmfuse::inline v0
