#pragma once
/// \file
/// Matmul on the CUDA backend: host code around cuBLASLt (no kernel of ours).
///
/// mmfuse's matmul is row-major, cuBLASLt's column-major. A row-major C (M, N) with row
/// stride ldc is the column-major matrix C^T (N x M, leading dimension ldc), so the engine
/// asks cuBLASLt for C^T = op(B)^T op(A)^T: the operands swap places and every mmfuse view
/// is described to cuBLASLt as it lies in memory — a matrix with a unit column stride is a
/// transposed column-major matrix (CUBLAS_OP_T), one with a unit row stride a plain one
/// (CUBLAS_OP_N), so transposed and narrowed views are read in place. A column-major C (unit
/// row stride) is computed directly as C = op(A) op(B) instead. Batches are cuBLASLt
/// strided batches; a rank-2 operand of a batched product has batch stride 0.
///
/// What the engine refuses (`backend_error`, naming the operand, its extents and strides):
/// * a matrix with no unit stride on its last two axes (e.g. every other column), or whose
///   leading stride is smaller than the other extent (e.g. a stride-0 broadcast matrix) —
///   cuBLASLt cannot read it; copy it into a contiguous tensor first (`ops::copy`);
/// * an epilogue when C has no unit column stride (cuBLASLt adds its bias along the rows
///   of its D = C^T only); a bias with stride 0.
/// The bias is read in place when packed and 16-byte aligned; otherwise (a strided or
/// misaligned view) it is first copied into the stream's scratch (one stream-ordered
/// `cudaMemcpy2DAsync`), since cuBLASLt needs a packed bias and some of its kernels assume an
/// aligned one whatever the heuristic was told.
///
/// Semantics (those of the Eigen reference, `backend/eigen/matmul.hpp`): beta == 0 makes C
/// write-only (beta is passed as exactly 0, and cuBLASLt then never reads C, so NaNs in C do
/// not leak); alpha == 0 or K == 0 leaves A and B unread: the engine then multiplies a zero
/// column by a zero row from its scratch (K = 1), which gives C = act(beta C + bias) through
/// the same cuBLASLt call. An empty C (M, N or batch 0) returns without any call.
///
/// Precision: f32 in f32 (CUBLAS_COMPUTE_32F) or, when the stream allows TF32,
/// CUBLAS_COMPUTE_32F_FAST_TF32; bf16 and f16 accumulate in f32 with f32 alpha/beta and a
/// bias in the input dtype (cuBLASLt's rule: the bias has D's type).
///
/// Steady state: each problem's cuBLASLt descriptors, layouts and heuristic algorithm are a
/// `plan`, kept in a fixed table of `plan_capacity` entries (least recently used one
/// evicted) that lives inside the engine. The second call with the same problem — dtype,
/// operations, extents, leading dimensions, batch and batch strides, epilogue, TF32 and the
/// pointers' alignment classes — creates no descriptor and allocates nothing: it looks the
/// plan up, sets the bias pointer and enqueues `cublasLtMatmul`. The 32 MiB workspace comes
/// from the stream's scratch (stream-ordered), so a step can be captured into a CUDA graph
/// once its plans exist.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::cuda {

namespace detail {

/// A logical rows x cols matrix: element (i, j) at i * row_stride + j * col_stride.
struct strided_2d {
    index_t rows = 0, cols = 0, row_stride = 0, col_stride = 0;
    strided_2d transposed() const noexcept { return {cols, rows, col_stride, row_stride}; }
};

/// The last two axes of `v`, transposed when asked (op(X) of a matmul operand).
inline strided_2d last_two_axes(const kernels::view& v, bool transpose) noexcept {
    const strided_2d m{v.extents[v.rank - 2], v.extents[v.rank - 1], v.strides[v.rank - 2],
                       v.strides[v.rank - 1]};
    return transpose ? m.transposed() : m;
}

/// One matrix as cuBLASLt reads it: a column-major `rows` x `cols` matrix with leading
/// dimension `ld`, used as is (CUBLAS_OP_N) or transposed (CUBLAS_OP_T).
struct lt_matrix {
    cublasOperation_t op = CUBLAS_OP_N;
    std::uint64_t rows = 0, cols = 0;
    std::int64_t ld = 0;
    friend bool operator==(const lt_matrix&, const lt_matrix&) = default;
};

/// Describes logical matrix `q` to cuBLASLt without copying: as a column-major matrix when
/// its row stride is 1, else (if `allow_transpose`) as the transpose of a column-major
/// matrix when its column stride is 1. An axis of extent 1 never needs its stride. Returns
/// false when neither works (no unit stride, or a leading stride smaller than the other
/// extent, as in a stride-0 broadcast).
inline bool describe(const strided_2d& q, bool allow_transpose, lt_matrix& out) noexcept {
    const auto col_major = [](index_t rows, index_t cols, index_t row_stride,
                              index_t col_stride, lt_matrix& m) {
        if (row_stride != 1 && rows > 1) return false;
        const index_t ld = cols > 1 ? col_stride : std::max<index_t>(rows, 1);
        if (ld < std::max<index_t>(rows, 1)) return false;
        m.rows = std::uint64_t(rows);
        m.cols = std::uint64_t(cols);
        m.ld = ld;
        return true;
    };
    if (col_major(q.rows, q.cols, q.row_stride, q.col_stride, out)) {
        out.op = CUBLAS_OP_N;
        return true;
    }
    if (allow_transpose && col_major(q.cols, q.rows, q.col_stride, q.row_stride, out)) {
        out.op = CUBLAS_OP_T;
        return true;
    }
    return false;
}

/// "(2, 3) strides (3, 1)" for error messages.
inline std::string view_layout(const kernels::view& v) {
    std::string e = "(", s = "(";
    for (int i = 0; i < v.rank; ++i) {
        if (i) {
            e += ", ";
            s += ", ";
        }
        e += std::to_string(v.extents[i]);
        s += std::to_string(v.strides[i]);
    }
    std::string out = "extents ";
    out += e;
    out += ") strides ";
    out += s;
    out += ")";
    return out;
}

/// The largest power of two (at most 256) dividing the address `p`: the alignment class
/// cuBLASLt's heuristic is told about.
inline std::uint16_t alignment_of(const void* p) noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    if (a == 0) return 256;
    return std::uint16_t(std::min<std::uintptr_t>(a & (~a + 1), 256));
}

inline cudaDataType_t cuda_data_type(dtype t) {
    switch (t) {
        case dtype::f32:
            return CUDA_R_32F;
        case dtype::bf16:
            return CUDA_R_16BF;
        case dtype::f16:
            return CUDA_R_16F;
        default:
            break;
    }
    kernels::unsupported_dtype("matmul", t, "f32, bf16 and f16");
}

inline cublasLtEpilogue_t lt_epilogue(ops::matmul_epilogue e) noexcept {
    switch (e) {
        case ops::matmul_epilogue::bias:
            return CUBLASLT_EPILOGUE_BIAS;
        case ops::matmul_epilogue::bias_relu:
            return CUBLASLT_EPILOGUE_RELU_BIAS;
        case ops::matmul_epilogue::bias_gelu_tanh:
            return CUBLASLT_EPILOGUE_GELU_BIAS;
        case ops::matmul_epilogue::none:
            break;
    }
    return CUBLASLT_EPILOGUE_DEFAULT;
}

/// Everything a cuBLASLt plan depends on: the problem exactly as cuBLASLt sees it (after
/// the row-major to column-major mapping), so two mmfuse calls that map to the same
/// cuBLASLt problem share a plan.
struct gemm_key {
    dtype type = dtype::f32;
    bool tf32 = false;
    ops::matmul_epilogue epilogue = ops::matmul_epilogue::none;
    lt_matrix a, b, d;  ///< cuBLASLt's A, B and C = D
    std::int32_t batch = 1;
    std::int64_t stride_a = 0, stride_b = 0, stride_d = 0;  ///< batch strides (elements)
    std::array<std::uint16_t, 4> alignment{};                ///< bytes: A, B, D, bias
    friend bool operator==(const gemm_key&, const gemm_key&) = default;
};

}  // namespace detail

/// cuBLASLt state of one stream: the handle (created on first use) and a fixed table of
/// plans (see the file comment). Not thread-safe; owned by a `cuda_stream`, which calls
/// `run` from `execute`.
class gemm_engine {
public:
    /// Workspace offered to cuBLASLt on every call (from the stream's scratch).
    static constexpr std::size_t workspace_bytes = std::size_t(32) << 20;
    /// Plans kept at once; the least recently used one is replaced when the table is full.
    static constexpr std::size_t plan_capacity = 64;

    gemm_engine() = default;
    gemm_engine(const gemm_engine&) = delete;
    gemm_engine& operator=(const gemm_engine&) = delete;
    ~gemm_engine() {
        for (plan& p : plans_)
            release(p);
        if (preference_) (void)cublasLtMatmulPreferenceDestroy(preference_);
        if (handle_) (void)cublasLtDestroy(handle_);
    }

    /// Throws `backend_error` unless op(A) (M, K), op(B) (K, N), C (M, N), the batch and the
    /// bias (N) agree: the guard for direct `stream::execute` calls that skip the front-end.
    static void expect_consistent(const kernels::view& a, const kernels::view& b,
                                  const kernels::view& c, const detail::strided_2d& am,
                                  const detail::strided_2d& bm, const detail::strided_2d& cm,
                                  const kernels::view* bias) {
        const bool ranks_ok = a.rank >= 2 && a.rank <= 3 && b.rank >= 2 && b.rank <= 3 &&
                              c.rank == std::max(a.rank, b.rank);
        const index_t batch = c.rank == 3 ? c.extents[0] : 1;
        const bool ok = ranks_ok && am.rows == cm.rows && bm.cols == cm.cols && am.cols == bm.rows &&
                        (a.rank == 2 || a.extents[0] == batch) &&
                        (b.rank == 2 || b.extents[0] == batch) &&
                        (!bias || (bias->rank == 1 && bias->extents[0] == cm.cols));
        if (ok) return;
        std::string msg = "matmul: operands do not fit together: a ";
        msg += kernels::extents_string(a);
        msg += ", b ";
        msg += kernels::extents_string(b);
        msg += ", c ";
        msg += kernels::extents_string(c);
        if (bias) {
            msg += ", bias ";
            msg += kernels::extents_string(*bias);
        }
        throw backend_error("cuda", msg);
    }

    /// C = act(alpha op(A) op(B) + beta C + bias), enqueued on `cx.stream`.
    /// in: a, b [, bias (N) with an epilogue]; out: c — shapes as on `ops::matmul_desc`,
    /// already validated by the front-end; all in device memory, one dtype (f32, bf16, f16).
    /// Throws `backend_error` for a layout cuBLASLt cannot read (see the file comment) or a
    /// problem cuBLASLt has no algorithm for.
    void run(const ops::matmul_desc& d, kernels::inputs in, kernels::outputs out,
             const kernels::launch_context& cx) {
        const kernels::view& a = in[0];
        const kernels::view& b = in[1];
        const kernels::view& c = out[0];
        const bool has_bias = d.epilogue != ops::matmul_epilogue::none;
        const index_t batch = c.rank == 3 ? c.extents[0] : 1;
        if (a.rank < 2 || b.rank < 2 || c.rank < 2)
            expect_consistent(a, b, c, {}, {}, {}, nullptr);  // throws: ranks must be 2 or 3
        const detail::strided_2d am = detail::last_two_axes(a, d.transpose_a);
        const detail::strided_2d bm = detail::last_two_axes(b, d.transpose_b);
        const detail::strided_2d cm = detail::last_two_axes(c, false);
        expect_consistent(a, b, c, am, bm, cm, has_bias ? &in[2] : nullptr);
        if (cm.rows == 0 || cm.cols == 0 || batch == 0) return;
        if (batch > INT32_MAX) {
            std::string msg = "matmul: batch ";
            msg += std::to_string(batch);
            msg += " exceeds cuBLASLt's int32 batch count";
            throw backend_error("cuda", msg);
        }
        const std::size_t elem = dtype_size(c.type);

        detail::gemm_key key;
        key.type = c.type;
        key.tf32 = c.type == dtype::f32 && cx.allow_tf32;
        key.epilogue = d.epilogue;
        key.batch = std::int32_t(batch);

        // The output decides the orientation: D = C^T (swap the operands) or D = C.
        const bool swap = detail::describe(cm.transposed(), false, key.d);
        if (!swap && !detail::describe(cm, false, key.d))
            throw layout_error("output c", c);
        if (!swap && has_bias) {
            std::string msg = "matmul with a bias epilogue needs an output c with unit stride "
                              "on its last axis (cuBLASLt adds the bias along that axis only); "
                              "got ";
            msg += detail::view_layout(c);
            throw backend_error("cuda", msg);
        }
        key.stride_d = batch > 1 ? c.strides[0] : 0;

        // alpha == 0 or K == 0: A and B are not read; a zero column times a zero row (K = 1)
        // gives the product 0 and leaves the rest (beta C, bias, activation) to cuBLASLt.
        const bool zero_product = am.cols == 0 || d.alpha == 0.0;
        const void* a_ptr = a.data;
        const void* b_ptr = b.data;
        std::size_t zero_bytes = 0;
        if (zero_product) {
            key.a = {CUBLAS_OP_N, key.d.rows, 1, std::int64_t(key.d.rows)};
            key.b = {CUBLAS_OP_N, 1, key.d.cols, 1};
            zero_bytes = round_up(std::max(key.d.rows, key.d.cols) * elem);
        } else {
            const detail::strided_2d first = swap ? bm.transposed() : am;
            const detail::strided_2d second = swap ? am.transposed() : bm;
            if (!detail::describe(first, true, key.a))
                throw layout_error(swap ? "operand b" : "operand a", swap ? b : a);
            if (!detail::describe(second, true, key.b))
                throw layout_error(swap ? "operand a" : "operand b", swap ? a : b);
            if (swap) std::swap(a_ptr, b_ptr);
            if (batch > 1) {
                const index_t a_step = a.rank == 3 ? a.strides[0] : 0;
                const index_t b_step = b.rank == 3 ? b.strides[0] : 0;
                key.stride_a = swap ? b_step : a_step;
                key.stride_b = swap ? a_step : b_step;
            }
        }

        // The bias, if any: read in place when packed and 16-byte aligned, else staged into
        // the scratch (cuBLASLt needs a packed bias; some of its kernels assume alignment).
        const kernels::view* bias = has_bias ? &in[2] : nullptr;
        const index_t bias_stride = bias && bias->extents[0] > 1 ? bias->strides[0] : 1;
        if (bias && bias_stride == 0) {
            std::string msg = "matmul bias: a broadcast (stride 0) bias is not supported; got ";
            msg += detail::view_layout(*bias);
            throw backend_error("cuda", msg);
        }
        const bool stage_bias = bias && (bias_stride != 1 || detail::alignment_of(bias->data) < 16);
        const std::size_t bias_bytes = stage_bias ? round_up(std::size_t(bias->extents[0]) * elem) : 0;

        auto* scratch = static_cast<std::byte*>(
            cx.scratch->acquire(workspace_bytes + zero_bytes + bias_bytes, cx.stream));
        void* workspace = scratch;
        if (zero_product) {
            void* zeros = scratch + workspace_bytes;
            check(cudaMemsetAsync(zeros, 0, zero_bytes, cx.stream), "cudaMemsetAsync (matmul zeros)");
            a_ptr = b_ptr = zeros;
        }
        const void* bias_ptr = bias ? bias->data : nullptr;
        if (stage_bias) {
            void* staged = scratch + workspace_bytes + zero_bytes;
            check(cudaMemcpy2DAsync(staged, elem, bias->data, std::size_t(bias_stride) * elem, elem,
                                    std::size_t(bias->extents[0]), cudaMemcpyDeviceToDevice,
                                    cx.stream),
                  "cudaMemcpy2DAsync (matmul bias)");
            bias_ptr = staged;
        }
        key.alignment = {detail::alignment_of(a_ptr), detail::alignment_of(b_ptr),
                         detail::alignment_of(c.data), bias ? detail::alignment_of(bias_ptr)
                                                            : std::uint16_t(0)};

        plan& p = find_or_build(key, bias_ptr);
        if (bias)
            check(cublasLtMatmulDescSetAttribute(p.operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                 &bias_ptr, sizeof(bias_ptr)),
                  "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        const float alpha = zero_product ? 1.0f : float(d.alpha);
        const float beta = d.beta == 0.0 ? 0.0f : float(d.beta);
        check(cublasLtMatmul(handle_, p.operation, &alpha, a_ptr, p.a, b_ptr, p.b, &beta, c.data,
                             p.d, c.data, p.d, &p.algo, workspace, workspace_bytes, cx.stream),
              "cublasLtMatmul");
    }

    /// Plans built (descriptor sets created) since construction: a steady-state loop stops
    /// increasing it after its first step.
    std::uint64_t plans_built() const noexcept { return plans_built_; }
    /// Plans currently cached (at most `plan_capacity`).
    std::size_t cached_plans() const noexcept {
        return std::size_t(std::count_if(plans_.begin(), plans_.end(),
                                         [](const plan& p) { return p.operation != nullptr; }));
    }

private:
    /// One cached cuBLASLt problem. `operation == nullptr` marks a free slot.
    struct plan {
        detail::gemm_key key;
        std::uint64_t last_used = 0;
        cublasLtMatmulDesc_t operation = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
        cublasLtMatmulAlgo_t algo{};
    };

    static std::size_t round_up(std::size_t bytes) noexcept { return (bytes + 255) / 256 * 256; }

    static backend_error layout_error(const char* operand, const kernels::view& v) {
        std::string msg = "matmul ";
        msg += operand;
        msg += ": cuBLASLt needs a unit stride on one of the last two axes and a leading "
               "stride no smaller than the other extent; got ";
        msg += detail::view_layout(v);
        msg += " (copy it into a contiguous tensor first)";
        return backend_error("cuda", msg);
    }

    static void release(plan& p) noexcept {
        if (p.a) (void)cublasLtMatrixLayoutDestroy(p.a);
        if (p.b) (void)cublasLtMatrixLayoutDestroy(p.b);
        if (p.d) (void)cublasLtMatrixLayoutDestroy(p.d);
        if (p.operation) (void)cublasLtMatmulDescDestroy(p.operation);
        p = plan{};
    }

    /// The plan of `key`: the cached one, or a new one in a free or the least recently used
    /// slot. `bias` is the bias pointer the heuristic sees (its alignment matters).
    plan& find_or_build(const detail::gemm_key& key, const void* bias) {
        plan* victim = &plans_[0];
        for (plan& p : plans_) {
            if (p.operation && p.key == key) {
                p.last_used = ++tick_;
                return p;
            }
            if (victim->operation && (!p.operation || p.last_used < victim->last_used)) victim = &p;
        }
        release(*victim);
        try {
            build(*victim, key, bias);
        } catch (...) {
            release(*victim);
            throw;
        }
        victim->last_used = ++tick_;
        ++plans_built_;
        return *victim;
    }

    template <class V>
    static void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& v,
                    const char* what) {
        check(cublasLtMatmulDescSetAttribute(desc, attr, &v, sizeof(v)), what);
    }

    static cublasLtMatrixLayout_t make_layout(cudaDataType_t type, const detail::lt_matrix& m,
                                              std::int32_t batch, std::int64_t stride) {
        cublasLtMatrixLayout_t layout = nullptr;
        check(cublasLtMatrixLayoutCreate(&layout, type, m.rows, m.cols, m.ld),
              "cublasLtMatrixLayoutCreate");
        if (batch > 1) {
            const cublasStatus_t s1 = cublasLtMatrixLayoutSetAttribute(
                layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch));
            const cublasStatus_t s2 = cublasLtMatrixLayoutSetAttribute(
                layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride));
            if (s1 != CUBLAS_STATUS_SUCCESS || s2 != CUBLAS_STATUS_SUCCESS) {
                (void)cublasLtMatrixLayoutDestroy(layout);
                check(s1 != CUBLAS_STATUS_SUCCESS ? s1 : s2, "cublasLtMatrixLayoutSetAttribute");
            }
        }
        return layout;
    }

    void build(plan& p, const detail::gemm_key& key, const void* bias) {
        if (!handle_) check(cublasLtCreate(&handle_), "cublasLtCreate");
        if (!preference_) {
            check(cublasLtMatmulPreferenceCreate(&preference_), "cublasLtMatmulPreferenceCreate");
            const std::uint64_t max_workspace = workspace_bytes;
            check(cublasLtMatmulPreferenceSetAttribute(preference_,
                                                       CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &max_workspace, sizeof(max_workspace)),
                  "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
        }
        const cudaDataType_t type = detail::cuda_data_type(key.type);
        const cublasComputeType_t compute =
            key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        check(cublasLtMatmulDescCreate(&p.operation, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
        set(p.operation, CUBLASLT_MATMUL_DESC_TRANSA, std::int32_t(key.a.op),
            "cublasLtMatmulDescSetAttribute(TRANSA)");
        set(p.operation, CUBLASLT_MATMUL_DESC_TRANSB, std::int32_t(key.b.op),
            "cublasLtMatmulDescSetAttribute(TRANSB)");
        if (key.epilogue != ops::matmul_epilogue::none) {
            set(p.operation, CUBLASLT_MATMUL_DESC_EPILOGUE,
                std::uint32_t(detail::lt_epilogue(key.epilogue)),
                "cublasLtMatmulDescSetAttribute(EPILOGUE)");
            set(p.operation, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, std::int32_t(type),
                "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
            set(p.operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias,
                "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        }
        p.a = make_layout(type, key.a, key.batch, key.stride_a);
        p.b = make_layout(type, key.b, key.batch, key.stride_b);
        p.d = make_layout(type, key.d, key.batch, key.stride_d);

        const cublasLtMatmulPreferenceAttributes_t alignment_attr[3] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES};
        for (int i = 0; i < 3; ++i) {
            const std::uint32_t bytes = key.alignment[std::size_t(i)];
            check(cublasLtMatmulPreferenceSetAttribute(preference_, alignment_attr[i], &bytes,
                                                       sizeof(bytes)),
                  "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
        }
        const std::uint32_t d_bytes = key.alignment[2];
        check(cublasLtMatmulPreferenceSetAttribute(preference_,
                                                   CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                   &d_bytes, sizeof(d_bytes)),
              "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT_D)");

        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
            handle_, p.operation, p.a, p.b, p.d, p.d, preference_, 1, &result, &found);
        if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
            std::string msg = "matmul: cuBLASLt has no algorithm for ";
            msg += dtype_name(key.type);
            msg += key.tf32 ? " (TF32)" : "";
            msg += " D (";
            msg += std::to_string(key.d.rows);
            msg += " x ";
            msg += std::to_string(key.d.cols);
            msg += ", ld ";
            msg += std::to_string(key.d.ld);
            msg += ") = op(A) op(B), K = ";
            msg += std::to_string(key.a.op == CUBLAS_OP_N ? key.a.cols : key.a.rows);
            msg += ", batch ";
            msg += std::to_string(key.batch);
            msg += ", epilogue ";
            msg += std::to_string(int(key.epilogue));
            msg += " (cuBLAS status ";
            msg += std::to_string(int(status));
            msg += ")";
            throw backend_error("cuda", msg);
        }
        p.algo = result.algo;
        p.key = key;
    }

    cublasLtHandle_t handle_ = nullptr;
    cublasLtMatmulPreference_t preference_ = nullptr;
    std::array<plan, plan_capacity> plans_{};
    std::uint64_t tick_ = 0;
    std::uint64_t plans_built_ = 0;
};

namespace kernels {
/// Matmul goes to the stream's `gemm_engine` (host code, no kernel of ours).
inline void launch(const ops::matmul_desc& d, inputs in, outputs out, const launch_context& cx) {
    cx.gemm->run(d, in, out, cx);
}
}  // namespace kernels

}  // namespace mmfuse::inline v0::backend::cuda
