#pragma once
/// \file
/// Library-wide constants and the version-tagged namespace.
///
/// Everything in mmfuse lives in `mmfuse::v0` (an inline namespace), so that two
/// incompatible versions can never be mixed silently in one program. No macro defined here
/// or elsewhere changes the layout of a public type.

#include <cstddef>
#include <cstdint>

#define MMFUSE_VERSION_MAJOR 0
#define MMFUSE_VERSION_MINOR 1
#define MMFUSE_VERSION_PATCH 0

/// Marks functions that must also compile as CUDA device code (the Philox block function,
/// activation math). Empty outside nvcc; the only macro that touches declarations, and it
/// changes no layout.
#ifndef MMFUSE_HOST_DEVICE
#ifdef __CUDACC__
#define MMFUSE_HOST_DEVICE __host__ __device__
#else
#define MMFUSE_HOST_DEVICE
#endif
#endif

namespace mmfuse::inline v0 {

/// Signed index type for extents, strides and offsets (PyTorch and oneDNN use int64 too).
using index_t = std::int64_t;

/// Marker for an extent that is only known at run time (Eigen's `Dynamic`, CuTe's `int`).
inline constexpr index_t dyn = -1;

/// Alignment, in bytes, of every buffer mmfuse allocates on the host (one cache line, and
/// the AVX-512 vector width). Independent of compile flags on purpose (see docs/design.md).
inline constexpr std::size_t host_alignment = 64;

/// Largest tensor rank a `tensor_ref` can describe. Fixed so that views never allocate.
inline constexpr int max_rank = 6;

}  // namespace mmfuse::inline v0
