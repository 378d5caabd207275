#pragma once
/// \file
/// The boundary between the CUDA backend's host code and its kernels.
///
/// Every op but matmul (which is host code around cuBLASLt, `gemm.hpp`) is launched through
/// one overload of `kernels::launch(desc, inputs, outputs, context)`, declared here in plain
/// C++ and defined in the closed set of `.cu` files under `src/` (see
/// `cmake/mmfuseCuda.cmake`: `mmfuse_add_cuda_kernels(<target>)` compiles them in the
/// consumer's build). So a model's translation units include only this header and are
/// compiled by the host compiler; nvcc sees the kernels alone.
///
/// Operands arrive in the order documented on each descriptor (ops/op_desc.hpp), already
/// validated by the ops front-end and by `cuda_stream::execute` (device memory, supported
/// dtypes, operand counts). Launchers enqueue on `context.stream`, never synchronise, never
/// allocate (scratch comes from `context.scratch`), and check their launches
/// (`check_launch`), so a launch error surfaces as `backend_error` at the op that caused it.

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <cuda_runtime_api.h>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::cuda {

class scratch_space;
class gemm_engine;

namespace kernels {

/// One operand as a kernel sees it: a flattened `any_tensor_ref` (trivially copyable, so it
/// can be passed to a kernel by value).
struct view {
    void* data = nullptr;
    dtype type = dtype::f32;
    int rank = 0;
    index_t extents[max_rank] = {};
    index_t strides[max_rank] = {};

    /// Element count (1 for rank 0).
    constexpr index_t numel() const noexcept {
        index_t n = 1;
        for (int i = 0; i < rank; ++i)
            n *= extents[i];
        return n;
    }
    /// True when the elements are dense in row-major order.
    constexpr bool contiguous() const noexcept {
        index_t step = 1;
        for (int i = rank - 1; i >= 0; --i) {
            if (extents[i] != 1 && strides[i] != step) return false;
            step *= extents[i];
        }
        return true;
    }
};

/// Flattens `t` into a `view`.
inline view make_view(const any_tensor_ref& t) noexcept {
    view v;
    v.data = t.data();
    v.type = t.type();
    v.rank = t.extents().rank();
    for (int i = 0; i < v.rank; ++i) {
        v.extents[i] = t.extents()[i];
        v.strides[i] = t.strides()[size_t(i)];
    }
    return v;
}

/// Throws the CUDA backend's "dtype not supported" `backend_error` for `op`, naming the
/// dtypes that are (`supported`, e.g. "f32, bf16 and f16").
[[noreturn]] inline void unsupported_dtype(std::string_view op, dtype type, const char* supported) {
    std::string msg(op);
    msg += ": dtype ";
    msg += dtype_name(type);
    msg += " is not supported (";
    msg += supported;
    msg += " are)";
    throw backend_error("cuda", msg);
}

/// ceil(a / b) for a >= 0, b > 0: blocks needed to cover `a` items, `b` per block.
constexpr index_t ceil_div(index_t a, index_t b) noexcept {
    return (a + b - 1) / b;
}

/// "(2, 3, 4)": a view's extents, for error messages.
inline std::string extents_string(const view& v) {
    std::string s = "(";
    for (int i = 0; i < v.rank; ++i) {
        if (i) s += ", ";
        s += std::to_string(v.extents[i]);
    }
    s += ")";
    return s;
}

/// "f32 (2, 3, 4)": a view's dtype and extents, for error messages.
inline std::string describe(const view& v) {
    std::string s(dtype_name(v.type));
    s += " ";
    s += extents_string(v);
    return s;
}

// The launchers' own guards for direct `stream::execute` calls that bypass the ops
// front-ends (the only way to reach bf16/f16 today): an operand that does not fit is a
// `backend_error("cuda", "<op>: <operand>: expected ..., got ...")`, never an out-of-bounds
// access.

/// Throws unless `v` (operand `name` of `op`) has dtype `type` and the `rank` extents at
/// `extents`.
inline void expect_operand(std::string_view op, std::string_view name, const view& v, dtype type,
                           int rank, const index_t* extents) {
    bool ok = v.type == type && v.rank == rank;
    for (int i = 0; ok && i < rank; ++i)
        ok = v.extents[i] == extents[i];
    if (ok) return;
    view want;
    want.type = type;
    want.rank = rank;
    std::copy_n(extents, rank, want.extents);
    std::string msg(op);
    msg += ": operand ";
    msg += name;
    msg += ": expected ";
    msg += describe(want);
    msg += ", got ";
    msg += describe(v);
    throw backend_error("cuda", msg);
}

/// `expect_operand` with the extents written out: `expect_operand(op, "o", o, t, {b, h, l, d})`.
inline void expect_operand(std::string_view op, std::string_view name, const view& v, dtype type,
                           std::initializer_list<index_t> extents) {
    expect_operand(op, name, v, type, int(extents.size()), extents.begin());
}

/// Throws unless `v` has the extents of `like` (its dtype is not checked).
inline void expect_same_extents(std::string_view op, std::string_view name, const view& v,
                                const view& like) {
    expect_operand(op, name, v, v.type, like.rank, like.extents);
}

/// Where and with what a launcher runs.
struct launch_context {
    cudaStream_t stream = nullptr;
    scratch_space* scratch = nullptr;  ///< the stream's op scratch
    gemm_engine* gemm = nullptr;       ///< the stream's cuBLASLt state
    bool allow_tf32 = false;           ///< f32 GEMMs may use TF32 tensor cores
    int multiprocessors = 0;           ///< SM count of the device (grid sizing)
    int max_shared_per_block = 0;      ///< opt-in dynamic shared memory limit of one block, bytes
};

/// A launcher's input operands, in the descriptor's documented order.
using inputs = std::span<const view>;
/// A launcher's output operands, in the descriptor's documented order.
using outputs = std::span<const view>;

// ---- src/pointwise.cu ---------------------------------------------------------------
void launch(const ops::bias_add_desc&, inputs, outputs, const launch_context&);
void launch(const ops::unary_desc&, inputs, outputs, const launch_context&);
void launch(const ops::unary_backward_desc&, inputs, outputs, const launch_context&);
void launch(const ops::binary_desc&, inputs, outputs, const launch_context&);
void launch(const ops::copy_desc&, inputs, outputs, const launch_context&);
void launch(const ops::concat_desc&, inputs, outputs, const launch_context&);
void launch(const ops::split_desc&, inputs, outputs, const launch_context&);
void launch(const ops::reduce_desc&, inputs, outputs, const launch_context&);
void launch(const ops::gather_rows_desc&, inputs, outputs, const launch_context&);
void launch(const ops::scatter_add_rows_desc&, inputs, outputs, const launch_context&);
void launch(const ops::fill_random_desc&, inputs, outputs, const launch_context&);
void launch(const ops::combine_desc&, inputs, outputs, const launch_context&);

// ---- src/norm.cu ----------------------------------------------------------------------
void launch(const ops::softmax_desc&, inputs, outputs, const launch_context&);
void launch(const ops::softmax_backward_desc&, inputs, outputs, const launch_context&);
void launch(const ops::layer_norm_desc&, inputs, outputs, const launch_context&);
void launch(const ops::layer_norm_backward_desc&, inputs, outputs, const launch_context&);
void launch(const ops::rms_norm_desc&, inputs, outputs, const launch_context&);
void launch(const ops::rms_norm_backward_desc&, inputs, outputs, const launch_context&);

// ---- src/attention.cu -----------------------------------------------------------------
void launch(const ops::attention_desc&, inputs, outputs, const launch_context&);
void launch(const ops::attention_backward_desc&, inputs, outputs, const launch_context&);

// ---- no CUDA kernel yet ------------------------------------------------------------------
/// Throws the `backend_error` for an op of the vocabulary the CUDA backend has no kernel for
/// (the contrastive head's `l2_normalize`, `l2_normalize_backward` and `logit_loss`):
/// `cuda_device::supports` answers false for them and `execute` refuses them with this error
/// before any operand is read, so a caller falls back explicitly (e.g. to the Eigen backend).
[[noreturn]] inline void no_kernel(std::string_view op) {
    throw backend_error("cuda", std::string(op) +
                                    ": no CUDA kernel yet; run it on a host backend (supports() "
                                    "answers false)");
}

/// The dispatch entry of those ops (so that `execute`'s visit covers the whole vocabulary).
template <class Desc>
    requires(std::same_as<Desc, ops::l2_normalize_desc> ||
             std::same_as<Desc, ops::l2_normalize_backward_desc> ||
             std::same_as<Desc, ops::logit_loss_desc>)
[[noreturn]] void launch(const Desc& d, inputs, outputs, const launch_context&) {
    no_kernel(ops::op_name(ops::op_desc(d)));
}

/// True for the ops `launch` refuses above.
inline bool has_kernel(const ops::op_desc& op) noexcept {
    return !std::holds_alternative<ops::l2_normalize_desc>(op) &&
           !std::holds_alternative<ops::l2_normalize_backward_desc>(op) &&
           !std::holds_alternative<ops::logit_loss_desc>(op);
}

}  // namespace kernels
}  // namespace mmfuse::inline v0::backend::cuda
