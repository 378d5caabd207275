#pragma once
/// \file
/// Element types as the CUDA kernels see them (nvcc only; included by `src/*.cu`).
///
/// Storage types are mmfuse's own: `float`, `double`, `mmfuse::bf16` and `mmfuse::half`
/// (16-bit structs holding the raw bits), so a kernel template is instantiated per dtype
/// exactly as `dtype` names it. Kernels compute in `compute_t<T>`: float for f32, bf16 and
/// f16 (bf16/f16 accumulate in f32), double for f64 (which only `copy` handles).
///
/// * `to_compute(v)` widens a stored element (exact);
/// * `from_compute<T>(c)` rounds a compute value to storage: round to nearest even, as
///   core/dtype.hpp does on the host (`__float2bfloat16_rn`, `__float2half_rn`; a double
///   headed for bf16/f16 goes through float first, as PyTorch and the Eigen backend do);
/// * `pack<T, W>` is W elements aligned to their total size, for 16-byte vector loads;
/// * `dispatch_float(type, op, f)` / `dispatch_float_or_f64(...)` map a run-time `dtype` onto
///   these types on the host, throwing `backend_error` for any other dtype.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {

/// The type a kernel computes in for storage type `T`.
template <class T>
struct compute_of {
    using type = float;
};
template <>
struct compute_of<double> {
    using type = double;
};
template <class T>
using compute_t = typename compute_of<T>::type;

/// A stored element widened to its compute type (exact).
__device__ __forceinline__ float to_compute(float v) {
    return v;
}
__device__ __forceinline__ double to_compute(double v) {
    return v;
}
__device__ __forceinline__ float to_compute(bf16 v) {
    return __uint_as_float(std::uint32_t(v.bits) << 16);
}
__device__ __forceinline__ float to_compute(half v) {
    return __half2float(__ushort_as_half(v.bits));
}

/// A compute value (float or double) rounded to storage type `T` (nearest even).
template <class T, class C>
__device__ __forceinline__ T from_compute(C c) {
    if constexpr (std::is_same_v<T, bf16>) {
        return bf16::from_bits(__bfloat16_as_ushort(__float2bfloat16_rn(float(c))));
    } else if constexpr (std::is_same_v<T, half>) {
        return half::from_bits(__half_as_ushort(__float2half_rn(float(c))));
    } else {
        return T(c);
    }
}

/// W consecutive elements, aligned to their size (one vector load or store of up to 16
/// bytes when the address is aligned).
template <class T, int W>
struct alignas(sizeof(T) * W) pack {
    T v[W];
};

/// Elements of the widest type among `Ts` that fit in 16 bytes: the vector width of a
/// kernel over operands of types `Ts`.
template <class... Ts>
inline constexpr int vector_width = int(16 / std::max({sizeof(Ts)...}));

/// Calls `f.template operator()<T>()` with T = float, bf16 or half for f32, bf16, f16;
/// throws `backend_error` naming `op` for any other dtype.
template <class F>
void dispatch_float(dtype type, std::string_view op, F&& f) {
    switch (type) {
        case dtype::f32:
            return f.template operator()<float>();
        case dtype::bf16:
            return f.template operator()<bf16>();
        case dtype::f16:
            return f.template operator()<half>();
        default:
            unsupported_dtype(op, type, "f32, bf16 and f16");
    }
}

/// `dispatch_float` plus f64 (T = double): the dtypes `copy` converts between.
template <class F>
void dispatch_float_or_f64(dtype type, std::string_view op, F&& f) {
    if (type == dtype::f64) return f.template operator()<double>();
    if (type != dtype::f32 && type != dtype::bf16 && type != dtype::f16)
        unsupported_dtype(op, type, "f32, f64, bf16 and f16");
    dispatch_float(type, op, f);
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
