#pragma once
/// \file
/// Pieces shared by the oneDNN backend's op plans: memory descriptors of mmfuse views, a
/// primitive bound once to its argument memories (so an execution only swaps data
/// handles), the `plan` interface every op family implements, and the context a plan runs
/// in (oneDNN stream, the stream's scratch, precision). Implementation detail of the oneDNN
/// backend (no stability promise).

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <oneapi/dnnl/dnnl.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "mmfuse/backend/onednn/compat.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

// Plans read primitive outputs in host loops right after `execute` returns: that needs a CPU
// runtime whose primitives finish before returning (OpenMP, TBB, sequential), not the
// asynchronous threadpool runtime.
static_assert(DNNL_CPU_THREADING_RUNTIME != DNNL_RUNTIME_THREADPOOL,
              "mmfuse's oneDNN backend needs a synchronous oneDNN CPU runtime");

using dnnl::memory;

/// What an f32 op may compute in (per stream, so per model: DESIGN decision 6).
enum class precision : std::uint8_t {
    f32,   ///< IEEE f32 throughout (default; what parity tests hold to 1e-5)
    bf16,  ///< `matmul` ops round their f32 operands to bf16 and accumulate in f32 (f32
           ///< bias and output) on CPUs with bf16 kernels (`cpu_has_bf16()`); elsewhere, and
           ///< for the products inside `attention`, they compute in f32
};

/// oneDNN's element type for `t`, or nothing for dtypes oneDNN does not compute in (f64).
inline std::optional<memory::data_type> data_type_of(dtype t) noexcept {
    switch (t) {
        case dtype::f32:
            return memory::data_type::f32;
        case dtype::bf16:
            return memory::data_type::bf16;
        case dtype::f16:
            return memory::data_type::f16;
        case dtype::i32:
            return memory::data_type::s32;
        case dtype::u8:
        case dtype::boolean:
            return memory::data_type::u8;
        default:
            return std::nullopt;
    }
}

/// True when oneDNN on this CPU has bf16 kernels (AVX512 core or newer: native AVX512-BF16
/// and AMX, emulated on plain AVX512), probed once with a small bf16 matmul. False on
/// AVX2-only CPUs.
inline bool cpu_has_bf16() noexcept {
    static const bool has = [] {
        try {  // a bf16 matmul oneDNN serves with a non-reference implementation
            const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
            const memory::desc md({16, 16}, memory::data_type::bf16, memory::format_tag::ab);
            const memory::desc out({16, 16}, memory::data_type::f32, memory::format_tag::ab);
            const auto pd = compat::matmul_pd(eng, md, md, out, dnnl::primitive_attr());
            return std::string_view(pd.impl_info_str()).find("ref") == std::string_view::npos;
        } catch (...) {
            return false;
        }
    }();
    return has;
}

/// True when oneDNN serves f32 matmuls here with its BLAS-like `gemm:jit` kernels (AVX2 CPUs;
/// AVX512 ones get `brg:` kernels), probed once.
inline bool f32_matmul_is_gemm_jit() noexcept {
    static const bool is = [] {
        try {
            const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
            const memory::desc md({256, 256}, memory::data_type::f32, memory::format_tag::ab);
            const auto pd = compat::matmul_pd(eng, md, md, md, dnnl::primitive_attr());
            return std::string_view(pd.impl_info_str()) == "gemm:jit";
        } catch (...) {
            return false;
        }
    }();
    return is;
}

/// True when a tensor of dtype `t` can be an operand of a native oneDNN op here: f32
/// always, bf16 where the CPU has bf16 kernels.
inline bool native_float(dtype t) noexcept {
    return t == dtype::f32 || (t == dtype::bf16 && cpu_has_bf16());
}

/// Memory descriptor of `t` with its own extents and strides (rank 0 becomes a 1-element
/// rank-1 tensor). Stride-0 axes are kept (valid for reading only).
inline memory::desc desc_of(const any_tensor_ref& t) {
    const auto type = data_type_of(t.type());
    if (!type)
        throw backend_error("onednn", "dtype " + std::string(dtype_name(t.type())) +
                                          " has no oneDNN equivalent");
    if (t.extents().rank() == 0) return memory::desc({1}, *type, memory::dims{1});
    memory::dims dims(size_t(t.extents().rank())), strides(dims.size());
    for (int i = 0; i < t.extents().rank(); ++i) {
        dims[size_t(i)] = t.extents()[i];
        strides[size_t(i)] = t.strides()[size_t(i)];
    }
    return memory::desc(dims, *type, strides);
}

/// True when any axis of `t` with extent > 1 has stride 0.
inline bool has_broadcast(const any_tensor_ref& t) noexcept {
    for (int i = 0; i < t.extents().rank(); ++i)
        if (t.strides()[size_t(i)] == 0 && t.extents()[i] > 1) return true;
    return false;
}

/// True when `pd` runs one of oneDNN's reference (scalar C++) implementations: slower than the Eigen
/// kernels, so plans decline it and the op falls back.
inline bool is_reference_impl(const dnnl::primitive_desc_base& pd) {
    // "ref:any", "lnorm_ref:any", "ref_int8:any", ...
    return std::string_view(pd.impl_info_str()).find("ref") != std::string_view::npos;
}

/// What an executing plan may use: the oneDNN stream, scratch memory from the mmfuse stream's
/// arena (valid for this execution only) and the stream's precision.
struct run_context {
    dnnl::stream* stream;
    std::byte* scratch;
    std::size_t scratch_bytes;
    precision math;
};

/// Primitive executions on this thread so far and the execution arguments they were given
/// (read by the stream for its statistics).
struct execution_counters {
    std::uint64_t executions = 0;
    std::uint64_t arguments = 0;
};

/// Number of `dnnl_primitive_execute` calls running right now in this process (any thread):
/// lets a test attribute heap allocations, including those of oneDNN's worker threads, to
/// oneDNN's own per-execution bookkeeping.
inline std::atomic<int>& primitives_running() noexcept {
    static std::atomic<int> running{0};
    return running;
}
inline execution_counters& thread_executions() noexcept {
    thread_local execution_counters counters;
    return counters;
}

/// A primitive with its argument memories created once; `execute` only swaps data handles
/// and calls the C API with a fixed argument array (no mmfuse-side allocation).
class bound_primitive {
public:
    static constexpr int max_args = 12;

    bound_primitive() = default;
    explicit bound_primitive(dnnl::primitive p) : primitive_(std::move(p)) {}

    /// Adds argument `arg` described by `md`; returns its position for `execute`.
    int bind(int arg, const memory::desc& md, const dnnl::engine& eng) {
        if (count_ == max_args) throw backend_error("onednn", "too many primitive arguments");
        memory_[size_t(count_)] = memory(md, eng, DNNL_MEMORY_NONE);
        args_[size_t(count_)] = {arg, memory_[size_t(count_)].get()};
        return count_++;
    }

    /// Points the arguments at `handles` (in `bind` order; nullptr leaves one as it is) and
    /// runs the primitive on `s`.
    void execute(dnnl::stream& s, std::span<void* const> handles) {
        for (std::size_t i = 0; i < handles.size() && i < std::size_t(count_); ++i)
            if (handles[i]) memory_[i].set_data_handle(handles[i]);
        primitives_running().fetch_add(1, std::memory_order_relaxed);
        const dnnl_status_t status =
            dnnl_primitive_execute(primitive_.get(), s.get(), count_, args_.data());
        primitives_running().fetch_sub(1, std::memory_order_relaxed);
        if (status != dnnl_success)
            throw backend_error("onednn", "primitive execution failed with status " +
                                              std::to_string(int(status)));
        ++thread_executions().executions;
        thread_executions().arguments += std::uint64_t(count_);
    }
    template <class... P>
    void operator()(dnnl::stream& s, P*... handles) {
        const std::array<void*, sizeof...(P)> h{const_cast<void*>(static_cast<const void*>(handles))...};
        execute(s, h);
    }

    explicit operator bool() const noexcept { return bool(primitive_); }

private:
    dnnl::primitive primitive_;
    std::array<memory, max_args> memory_{};
    std::array<dnnl_exec_arg_t, max_args> args_{};
    int count_ = 0;
};

/// Work one more thread must get before it pays for the parallel region it joins (oneDNN
/// opens one per primitive; with many threads, and OMP_WAIT_POLICY=PASSIVE, waking them
/// costs tens of microseconds): multiply-adds of a matrix product, and elements read or
/// written by any other op (PyTorch's `at::internal::GRAIN_SIZE` is also 32768 elements).
inline constexpr double matmul_macs_per_thread = double(1 << 18);
inline constexpr double elements_per_thread = double(1 << 15);

/// Threads for `work` units at `grain` units per thread, out of `available`: one when the
/// work could keep at most a quarter of them busy, else all. Intermediate team sizes were
/// measured to cost more than they save (16-thread Xeon: resizing the OpenMP team between
/// consecutive primitives slowed linear and attention blocks 1.1-2.7x), while running the
/// smallest ops serially sped the pooled fusion models 2-3x.
inline int threads_for(double work, double grain, int available) noexcept {
    const double useful = std::max(1.0, std::ceil(work / grain));
    return useful * 4.0 <= double(available) ? 1 : available;
}

/// Caps the OpenMP thread count of the calling thread at `threads` for its lifetime (0 or a
/// count at or above the current one: no change). Needs the including program to be
/// compiled with OpenMP (oneDNN's OpenMP runtime reads the count at each primitive); without
/// it this does nothing.
class thread_cap {
public:
    explicit thread_cap(int threads) noexcept {
#ifdef _OPENMP
        const int current = omp_get_max_threads();
        if (threads > 0 && threads < current) {
            saved_ = current;
            omp_set_num_threads(threads);
        }
#else
        (void)threads;
#endif
    }
    ~thread_cap() {
#ifdef _OPENMP
        if (saved_ > 0) omp_set_num_threads(saved_);
#endif
    }
    thread_cap(const thread_cap&) = delete;
    thread_cap& operator=(const thread_cap&) = delete;

    /// The thread count available before any cap (1 without OpenMP).
    static int available() noexcept {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    }

private:
    int saved_ = 0;
};

/// The oneDNN form of one op for one operand signature (extents, strides, dtypes): built once
/// on the first execution of that signature, kept in the stream's cache, run on every later
/// one. Implementations hold their primitives and argument memories.
class plan {
public:
    virtual ~plan() = default;
    /// Runs the op on these operands (same signature as the ones the plan was built for).
    virtual void run(const run_context& cx, std::span<const any_tensor_ref> in,
                     std::span<const any_tensor_ref> out) = 0;
    /// Scratch bytes `run` needs in `cx.scratch` (oneDNN's user scratchpads and the plan's
    /// own intermediates).
    std::size_t scratch_bytes = 0;
    /// OpenMP threads the plan was built for and runs on (0: all available).
    int threads = 0;
};

/// What building a plan may use.
struct build_context {
    const dnnl::engine* engine;
    precision math;
};

/// Attributes every plan starts from: user-mode scratchpad (oneDNN takes its scratch from
/// the mmfuse stream's arena instead of allocating) and the precision's fpmath mode.
inline dnnl::primitive_attr base_attr(const build_context& bx) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (bx.math == precision::bf16) attr.set_fpmath_mode(dnnl::fpmath_mode::bf16);
    return attr;
}

/// Bytes of the user scratchpad `pd` asks for.
inline std::size_t scratchpad_bytes(const dnnl::primitive_desc_base& pd) {
    return pd.scratchpad_desc().get_size();
}

/// True when any operand in `ts` has no elements (nothing for oneDNN to do: plans decline
/// and the fallback's rules for empty operands apply).
inline bool any_empty(std::span<const any_tensor_ref> ts) noexcept {
    return std::any_of(ts.begin(), ts.end(),
                       [](const any_tensor_ref& t) { return t.extents().numel() == 0; });
}

/// A plan `P` built from the arguments, or nullptr when it declined (`P::usable()` false).
template <class P, class... A>
std::unique_ptr<plan> usable_or_null(A&&... args) {
    auto p = std::make_unique<P>(std::forward<A>(args)...);
    if (!p->usable()) return nullptr;
    return p;
}

/// Rounds `bytes` up to a multiple of 64 (scratch sub-buffers stay aligned).
constexpr std::size_t align64(std::size_t bytes) noexcept {
    return (bytes + 63) / 64 * 64;
}

}  // namespace mmfuse::inline v0::backend::onednn
