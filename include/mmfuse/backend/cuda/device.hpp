#pragma once
/// \file
/// The CUDA backend: `cuda_device` ("cuda:N") and `cuda_stream`, an asynchronous queue on a
/// CUDA stream. Including this header registers every present GPU with the backend registry
/// (none when there is no GPU or driver: the program still runs, on the other backends).
///
///     auto& gpu = mmfuse::backend::registry::global().get("cuda:0");
///     auto& s = static_cast<mmfuse::backend::cuda::cuda_stream&>(gpu.default_stream());
///     mmfuse::ops::matmul(s, a.cref(), b.cref(), c.ref());   // device_tensor views
///     s.synchronize();
///
/// Operands must live in device memory (`memory_space::device`, e.g. `device_tensor` or a
/// `device_arena`). Compute dtypes: f32, bf16 and f16 (bf16/f16 accumulate in f32); `copy`
/// also converts to and from f64. Every CUDA status is checked and becomes `backend_error`.
/// `execute` never allocates device memory once the stream's scratch has grown to the
/// largest op (the first step of a loop), and never synchronises: a step can be captured
/// into a CUDA graph (`graph.hpp`).
///
/// Kernels live in the closed set of `.cu` files that `mmfuse_add_cuda_kernels()` compiles
/// (kernels.hpp); this header is plain C++.

#include <array>
#include <memory>
#include <span>
#include <string>
#include <variant>

#include <cuda_runtime_api.h>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/gemm.hpp"
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"
#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/registry.hpp"

namespace mmfuse::inline v0::backend::cuda {

class cuda_device;

/// The most operands one `execute` accepts (the front-ends' variadic limit).
inline constexpr std::size_t max_operands = 16;

/// An ordered queue of ops on one GPU, backed by a non-blocking `cudaStream_t` with its own
/// op scratch and cuBLASLt state.
class cuda_stream final : public stream {
public:
    explicit cuda_stream(cuda_device& d);
    ~cuda_stream() override {
        if (stream_) {
            (void)cudaStreamSynchronize(stream_);
            (void)cudaStreamDestroy(stream_);
        }
    }
    cuda_stream(const cuda_stream&) = delete;
    cuda_stream& operator=(const cuda_stream&) = delete;

    backend::device& device() noexcept override;

    void execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                 std::span<const any_tensor_ref> outputs) override;

    void synchronize() override { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

    /// The underlying CUDA stream (for interop, events and graph capture).
    cudaStream_t native() const noexcept { return stream_; }

    /// Lets f32 matmuls use TF32 tensor cores (like `torch.backends.cuda.matmul.allow_tf32`);
    /// off by default.
    void allow_tf32(bool on) noexcept { allow_tf32_ = on; }
    bool tf32_allowed() const noexcept { return allow_tf32_; }

    /// Grows the op scratch now, so that no later op on this stream allocates (optional:
    /// the first step of a loop does the same).
    void reserve_scratch(std::size_t bytes) { scratch_.reserve(bytes, stream_); }
    std::size_t scratch_bytes() const noexcept { return scratch_.capacity_bytes(); }

private:
    cuda_device* device_;
    cudaStream_t stream_ = nullptr;
    scratch_space scratch_;
    gemm_engine gemm_;
    bool allow_tf32_ = false;
};

/// One GPU. `instance(n)` is created on first use; registration happens on include.
class cuda_device final : public backend::device {
public:
    /// The device for GPU `ordinal` (0 <= ordinal < device_count()).
    static cuda_device& instance(int ordinal = 0) {
        static std::array<std::unique_ptr<cuda_device>, 16> devices;
        if (ordinal < 0 || ordinal >= device_count() || ordinal >= int(devices.size()))
            throw backend_error("cuda", "no CUDA device " + std::to_string(ordinal) + " (" +
                                            std::to_string(device_count()) + " present)");
        auto& d = devices[size_t(ordinal)];
        if (!d) d.reset(new cuda_device(ordinal));
        return *d;
    }

    std::string_view name() const noexcept override { return name_; }
    device_kind kind() const noexcept override { return device_kind::gpu; }
    memory_space memory() const noexcept override { return memory_space::device; }
    int priority() const noexcept override { return 20; }

    /// f32, bf16 and f16 for every op with a kernel (not yet: `l2_normalize`,
    /// `l2_normalize_backward`, `logit_loss`); `copy` also converts to and from f64. (Layouts the
    /// op cannot read, e.g. a matmul operand without a unit stride, are refused by
    /// `execute` with a `backend_error` that says so.)
    bool supports(const ops::op_desc& op, dtype type) const noexcept override {
        if (!kernels::has_kernel(op)) return false;
        if (std::holds_alternative<ops::copy_desc>(op))
            return type == dtype::f32 || type == dtype::f64 || type == dtype::bf16 ||
                   type == dtype::f16;
        return type == dtype::f32 || type == dtype::bf16 || type == dtype::f16;
    }

    stream& default_stream() override {
        if (!default_stream_) default_stream_ = std::make_unique<cuda_stream>(*this);
        return *default_stream_;
    }
    std::unique_ptr<stream> create_stream() override { return std::make_unique<cuda_stream>(*this); }

    int ordinal() const noexcept { return ordinal_; }
    /// Number of streaming multiprocessors.
    int multiprocessors() const noexcept { return multiprocessors_; }
    /// Largest dynamic shared memory one block may opt in to, in bytes.
    int max_shared_per_block() const noexcept { return max_shared_per_block_; }
    /// The GPU's marketing name ("NVIDIA H100 80GB HBM3").
    const std::string& gpu_name() const noexcept { return gpu_name_; }

private:
    explicit cuda_device(int ordinal) : ordinal_(ordinal), name_("cuda:" + std::to_string(ordinal)) {
        cudaDeviceProp prop{};
        check(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
        multiprocessors_ = prop.multiProcessorCount;
        max_shared_per_block_ = int(prop.sharedMemPerBlockOptin);
        gpu_name_ = prop.name;
    }
    int ordinal_;
    std::string name_;
    std::string gpu_name_;
    int multiprocessors_ = 0;
    int max_shared_per_block_ = 0;
    std::unique_ptr<cuda_stream> default_stream_;
};

inline cuda_stream::cuda_stream(cuda_device& d) : device_(&d) {
    const device_guard on(d.ordinal());
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
}

inline backend::device& cuda_stream::device() noexcept {
    return *device_;
}

inline void cuda_stream::execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                                 std::span<const any_tensor_ref> outputs) {
    check_operand_count(device_->name(), op, inputs, outputs);
    if (inputs.size() > max_operands || outputs.size() > max_operands)
        throw backend_error(device_->name(), std::string(ops::op_name(op)) + ": at most " +
                                                 std::to_string(max_operands) + " operands");
    const dtype type = inputs.empty() ? outputs[0].type() : inputs[0].type();
    if (!kernels::has_kernel(op)) kernels::no_kernel(ops::op_name(op));
    if (!device_->supports(op, type))
        kernels::unsupported_dtype(ops::op_name(op), type, "f32, bf16 and f16");
    std::array<kernels::view, max_operands> in{}, out{};
    const auto flatten = [&](std::span<const any_tensor_ref> from, auto& to) {
        for (std::size_t i = 0; i < from.size(); ++i) {
            if (from[i].space() != memory_space::device && from[i].extents().numel() != 0)
                throw backend_error(device_->name(),
                                    std::string(ops::op_name(op)) + ": operand " +
                                        std::to_string(i) + " of shape " +
                                        from[i].extents().to_string() +
                                        " is in host memory; the CUDA backend reads device "
                                        "memory only (device_tensor, device_arena)");
            to[i] = kernels::make_view(from[i]);
        }
    };
    flatten(inputs, in);
    flatten(outputs, out);
    const device_guard on(device_->ordinal());
    const kernels::launch_context cx{stream_, &scratch_, &gemm_, allow_tf32_,
                                     device_->multiprocessors(), device_->max_shared_per_block()};
    std::visit(
        [&](const auto& d) {
            kernels::launch(d, kernels::inputs(in.data(), inputs.size()),
                            kernels::outputs(out.data(), outputs.size()), cx);
        },
        op);
}

namespace detail {
/// Registers every present GPU when this header is included (once per program).
inline const bool cuda_devices_registered = [] {
    for (int i = 0; i < device_count() && i < 16; ++i)
        registry::global().add(cuda_device::instance(i));
    return true;
}();
}  // namespace detail

}  // namespace mmfuse::inline v0::backend::cuda
