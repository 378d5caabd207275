#pragma once
/// \file
/// The oneDNN CPU backend: `onednn_device` ("onednn", cpu, host memory, priority 10) and
/// `onednn_stream`, a synchronous queue on a `dnnl::stream`. Including this header registers
/// the device (normally through the `mmfuse::onednn` CMake component).
///
///     auto& dev = mmfuse::backend::registry::global().get("onednn");
///     mmfuse::ops::matmul(dev.default_stream(), a, b, c);
///
/// * **Plans and cache.** The first execution of an op with a given signature (descriptor,
///   extents, strides, dtypes, precision) builds a plan — the oneDNN primitive descriptors,
///   primitives and argument memories — and keeps it in the stream's cache (oneDNN's own
///   primitive cache keeps primitives only, and only behind a descriptor rebuilt on every
///   call). Later executions look the plan up, swap data handles and run: no descriptor work.
/// * **Scratch.** Primitives run with user-mode scratchpads taken, like the plans' own
///   intermediates, from the stream's `growing_arena`: the first step sizes it, later steps
///   allocate nothing on the mmfuse side. (oneDNN 2.6 itself allocates a small argument map
///   inside every `dnnl_primitive_execute`; docs/backends.md gives the count.)
/// * **Native ops and the fallback.** `supports(op, dtype)` is true exactly for the ops this
///   backend runs as oneDNN primitives (f32; bf16 on CPUs with bf16 kernels). Every other op
///   (RMS norm, masked softmax, gather, Philox fills, the contrastive loss, f64, ...) goes to
///   the stream's *fallback stream*, by default the Eigen reference stream — an explicit,
///   documented route, counted in `stats()`; `set_fallback(nullptr)` turns it into a
///   `backend_error` instead. A native op whose layout oneDNN serves only with its scalar
///   reference implementation (e.g. a matmul operand with no unit stride) takes the same route.
/// * **Precision.** f32 is the default; `set_precision(precision::bf16)` makes `matmul` ops
///   round their f32 operands to bf16 and accumulate in f32 (per stream, so per model) on
///   CPUs with bf16 kernels; on others the products stay f32.
///
/// Threads: oneDNN here runs on OpenMP; set the count with `omp_set_num_threads` or
/// `OMP_NUM_THREADS` before the first step — a plan is built for the thread count of its
/// first execution (its scratchpad is sized for it), so call `clear_cache()` after changing
/// the count. Small ops (under 2^18 multiply-adds or 2^15 elements per thread) are built
/// for and run on fewer threads, as PyTorch's grain size does, when the including program
/// is compiled with OpenMP (`stats().thread_capped_ops` counts them). The cache is not
/// bounded: a model with many distinct shapes (varying sequence lengths) keeps one plan per
/// shape until `clear_cache()`.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <variant>

#include <oneapi/dnnl/dnnl.hpp>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/onednn/attention.hpp"
#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/backend/onednn/layout.hpp"
#include "mmfuse/backend/onednn/matmul.hpp"
#include "mmfuse/backend/onednn/norm.hpp"
#include "mmfuse/backend/onednn/pointwise.hpp"
#include "mmfuse/backend/onednn/softmax.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/arena.hpp"

namespace mmfuse::inline v0::backend::onednn {

/// Ops with no oneDNN primitive in this backend: never native, no plan.
template <class Desc>
bool is_native(const Desc&, dtype) noexcept {
    return false;
}
template <class Desc>
std::unique_ptr<plan> make_plan(const Desc&, std::span<const any_tensor_ref>,
                                std::span<const any_tensor_ref>, const build_context&) {
    return nullptr;
}

namespace detail {

/// The most operands one cached signature records (attention_backward with a mask has 10);
/// ops with more (a concat of 10+ inputs)
/// run uncached through the fallback.
inline constexpr std::size_t max_key_operands = 10;

/// Extents, strides and dtype of one operand.
struct operand_signature {
    dtype type = dtype::f32;
    std::int8_t rank = 0;
    std::array<index_t, max_rank> extent{};
    std::array<index_t, max_rank> stride{};
    friend bool operator==(const operand_signature&, const operand_signature&) = default;
};

/// Cache key: the op descriptor, the operand signatures and the precision.
struct plan_key {
    ops::op_desc op;
    precision math = precision::f32;
    std::uint8_t inputs = 0, outputs = 0;
    std::array<operand_signature, max_key_operands> operand{};
    friend bool operator==(const plan_key&, const plan_key&) = default;
};

struct plan_key_hash {
    std::size_t operator()(const plan_key& k) const noexcept {
        std::uint64_t h = 1469598103934665603ull;
        const auto mix = [&](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
        mix(k.op.index());
        mix(std::uint64_t(k.math) | std::uint64_t(k.inputs) << 8 | std::uint64_t(k.outputs) << 16);
        for (std::size_t i = 0; i < std::size_t(k.inputs + k.outputs); ++i) {
            const operand_signature& s = k.operand[i];
            mix(std::uint64_t(s.type) | std::uint64_t(s.rank) << 8);
            for (int a = 0; a < s.rank; ++a) {
                mix(std::uint64_t(s.extent[size_t(a)]));
                mix(std::uint64_t(s.stride[size_t(a)]));
            }
        }
        return std::size_t(h);
    }
};

inline operand_signature signature_of(const any_tensor_ref& t) noexcept {
    operand_signature s;
    s.type = t.type();
    s.rank = std::int8_t(t.extents().rank());
    for (int a = 0; a < t.extents().rank(); ++a) {
        s.extent[size_t(a)] = t.extents()[a];
        s.stride[size_t(a)] = t.strides()[size_t(a)];
    }
    return s;
}

}  // namespace detail

class onednn_device;

namespace detail {

/// OpenMP threads worth giving `op` on these operands, out of `available`: a matrix product
/// by its multiply-adds, attention always all (its cost is not in its operand sizes), any
/// other op by the elements of its operands.
inline int op_threads(const ops::op_desc& op, std::span<const any_tensor_ref> in,
                      std::span<const any_tensor_ref> out, int available) noexcept {
    if (available <= 1) return available;
    if (const auto* mm = std::get_if<ops::matmul_desc>(&op))
        return threads_for(double(out[0].extents().numel()) * double(inner_dimension(*mm, in[0])),
                           matmul_macs_per_thread, available);
    if (std::holds_alternative<ops::attention_desc>(op) ||
        std::holds_alternative<ops::attention_backward_desc>(op))
        return available;
    double elements = 0;
    for (const auto* side : {&in, &out})
        for (const any_tensor_ref& t : *side)
            elements += double(t.extents().numel());
    return threads_for(elements, elements_per_thread, available);
}

}  // namespace detail

/// Counters of one stream since construction (or `reset_stats()`).
struct stream_stats {
    std::uint64_t native_ops = 0;    ///< ops run as oneDNN primitives
    std::uint64_t fallback_ops = 0;  ///< ops handed to the fallback stream
    std::uint64_t plans_built = 0;   ///< cache misses (each built or declined a plan once)
    std::uint64_t primitive_executions = 0;  ///< oneDNN primitives run by the native ops
    std::uint64_t primitive_arguments = 0;   ///< execution arguments passed to them
    std::uint64_t thread_capped_ops = 0;  ///< native ops run on fewer OpenMP threads than
                                          ///< available because they are small
};

/// Synchronous stream of the oneDNN device. Not thread-safe (one stream per thread).
class onednn_stream final : public stream {
public:
    explicit onednn_stream(onednn_device& d);

    backend::device& device() noexcept override;

    /// Runs `op`: as a cached oneDNN plan when the device supports it and oneDNN has a
    /// non-reference implementation for these operands, else on the fallback stream.
    void execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                 std::span<const any_tensor_ref> outputs) override;
    void synchronize() override { stream_.wait(); }

    /// Where ops without a oneDNN primitive go (default: the Eigen reference stream);
    /// nullptr makes them throw `backend_error`.
    void set_fallback(backend::stream* s) noexcept { fallback_ = s; }
    backend::stream* fallback() const noexcept { return fallback_; }

    /// Compute precision of f32 matmuls on this stream (default `precision::f32`).
    void set_precision(precision p) noexcept { math_ = p; }
    precision get_precision() const noexcept { return math_; }

    const stream_stats& stats() const noexcept { return stats_; }
    void reset_stats() noexcept { stats_ = {}; }
    /// Number of cached plans (declined signatures included).
    std::size_t cached_plans() const noexcept { return cache_.size(); }
    /// Drops every cached plan (they are rebuilt on next use).
    void clear_cache() { cache_.clear(); }
    /// Bytes of scratch the largest op so far needed.
    std::size_t scratch_high_water() const noexcept { return scratch_.high_water_bytes(); }

    /// The underlying oneDNN stream (for interop).
    dnnl::stream& native() noexcept { return stream_; }

private:
    void run_fallback(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                      std::span<const any_tensor_ref> outputs, const char* why);

    onednn_device* device_;
    dnnl::stream stream_;
    backend::stream* fallback_;
    precision math_ = precision::f32;
    growing_arena scratch_;
    std::unordered_map<detail::plan_key, std::unique_ptr<plan>, detail::plan_key_hash> cache_;
    detail::plan_key probe_{};  // reused lookup key (no per-call construction)
    stream_stats stats_;
};

/// The single oneDNN CPU device ("onednn", priority 10: preferred over eigen, below cuda).
class onednn_device final : public backend::device {
public:
    /// The process-wide instance.
    static onednn_device& instance() {
        static onednn_device d;
        return d;
    }
    std::string_view name() const noexcept override { return "onednn"; }
    device_kind kind() const noexcept override { return device_kind::cpu; }
    memory_space memory() const noexcept override { return memory_space::host; }
    int priority() const noexcept override { return 10; }

    /// True when `op` runs as oneDNN primitives for operands of dtype `type` (see the
    /// file comment; docs/backends.md lists them). Streams accept other ops through their
    /// fallback.
    bool supports(const ops::op_desc& op, dtype type) const noexcept override {
        return std::visit([type](const auto& d) { return is_native(d, type); }, op);
    }

    stream& default_stream() override { return stream_; }
    std::unique_ptr<stream> create_stream() override {
        return std::make_unique<onednn_stream>(*this);
    }

    /// The oneDNN CPU engine every stream of this device uses.
    const dnnl::engine& engine() const noexcept { return engine_; }

private:
    onednn_device() : engine_(dnnl::engine::kind::cpu, 0), stream_(*this) {}
    dnnl::engine engine_;
    onednn_stream stream_;
};

inline onednn_stream::onednn_stream(onednn_device& d)
    : device_(&d),
      stream_(d.engine()),
      fallback_(&registry::global().get("eigen").default_stream()) {}

inline backend::device& onednn_stream::device() noexcept {
    return *device_;
}

inline void onednn_stream::run_fallback(const ops::op_desc& op,
                                        std::span<const any_tensor_ref> inputs,
                                        std::span<const any_tensor_ref> outputs, const char* why) {
    if (!fallback_)
        throw backend_error("onednn", std::string(ops::op_name(op)) + ": " + why +
                                          ", and this stream has no fallback (set_fallback)");
    ++stats_.fallback_ops;
    fallback_->execute(op, inputs, outputs);
}

inline void onednn_stream::execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                                   std::span<const any_tensor_ref> outputs) {
    check_operand_count("onednn", op, inputs, outputs);
    for (const auto* side : {&inputs, &outputs})
        for (const any_tensor_ref& t : *side)
            if (t.space() != memory_space::host)
                throw backend_error("onednn", std::string(ops::op_name(op)) +
                                                  ": operand is in device memory; the onednn "
                                                  "backend reads host memory only");
    const dtype type = inputs.empty() ? outputs[0].type() : inputs[0].type();
    if (!device_->supports(op, type))
        return run_fallback(op, inputs, outputs, "no oneDNN primitive for this op and dtype");
    if (inputs.size() + outputs.size() > detail::max_key_operands)
        return run_fallback(op, inputs, outputs, "too many operands to cache a plan");

    probe_.op = op;
    probe_.math = math_;
    probe_.inputs = std::uint8_t(inputs.size());
    probe_.outputs = std::uint8_t(outputs.size());
    std::size_t n = 0;
    for (const auto* side : {&inputs, &outputs})
        for (const any_tensor_ref& t : *side)
            probe_.operand[n++] = detail::signature_of(t);
    for (; n < detail::max_key_operands; ++n)
        probe_.operand[n] = {};

    auto it = cache_.find(probe_);
    if (it == cache_.end()) {
        ++stats_.plans_built;
        std::unique_ptr<plan> built;
        // A small op is built for, and runs on, fewer threads (thread_cap): the thread count
        // is part of what oneDNN sizes at build time.
        const int available = thread_cap::available();
        const int threads = detail::op_threads(op, inputs, outputs, available);
        try {
            const thread_cap cap(threads);
            const build_context bx{&device_->engine(), math_};
            built = std::visit(
                [&](const auto& d) { return make_plan(d, inputs, outputs, bx); }, op);
        } catch (const dnnl::error&) {
            built = nullptr;  // oneDNN has no implementation for this signature
        }
        if (built && threads < available) built->threads = threads;
        it = cache_.emplace(probe_, std::move(built)).first;
    }
    if (!it->second)
        return run_fallback(op, inputs, outputs,
                            "oneDNN has no fast implementation for these operands");
    plan& p = *it->second;
    scratch_.reset();
    std::byte* scratch = nullptr;
    if (p.scratch_bytes > 0)
        scratch = reinterpret_cast<std::byte*>(
            scratch_.allocate<float>(extents{index_t((p.scratch_bytes + 3) / 4)}).data());
    const execution_counters before = thread_executions();
    try {
        const thread_cap cap(p.threads);
        p.run({&stream_, scratch, p.scratch_bytes, math_}, inputs, outputs);
    } catch (const dnnl::error& e) {
        throw backend_error("onednn", std::string(ops::op_name(op)) + ": " + e.what());
    } catch (const backend_error& e) {
        throw backend_error("onednn", std::string(ops::op_name(op)) + ": " + e.what());
    }
    ++stats_.native_ops;
    if (p.threads > 0) ++stats_.thread_capped_ops;
    stats_.primitive_executions += thread_executions().executions - before.executions;
    stats_.primitive_arguments += thread_executions().arguments - before.arguments;
}

namespace detail {
/// Registers the oneDNN device when this header is included (once per program).
inline const bool onednn_device_registered = [] {
    registry::global().add(onednn_device::instance());
    return true;
}();
}  // namespace detail

}  // namespace mmfuse::inline v0::backend::onednn
