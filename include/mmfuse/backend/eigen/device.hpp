#pragma once
/// \file
/// The Eigen reference backend: portable, always compiled in, and the oracle every other
/// backend is parity-tested against. Synchronous host execution; f32 and f64 compute
/// (`copy` also converts to and from bf16 and f16, and from bool). GEMMs go through Eigen's
/// matrix product on `Eigen::Map`s of the caller's memory; everything else is written as
/// plain loops over strided rows. Never allocates in `execute` except where a kernel
/// documents it.
///
/// Header-only by default: `eigen_stream::execute`, which instantiates every kernel for
/// every dtype, is defined inline in `eigen/execute.hpp` and included from here. That costs
/// ~20 s of compile time in every translation unit that includes the registry. A program
/// can compile it once instead: define `MMFUSE_EIGEN_EXTERN_KERNELS` for every translation
/// unit and include `mmfuse/backend/eigen/execute.hpp` in exactly one of them (mmfuse's own
/// tests, examples and benchmarks do this; see docs/design.md, "Compile time").

#include <memory>
#include <span>
#include <variant>

#include <string>

#include "mmfuse/backend/device.hpp"

namespace mmfuse::inline v0::backend::eigen {

class eigen_device;

/// Synchronous stream of the Eigen device: `execute` runs the op before returning.
class eigen_stream final : public stream {
public:
    explicit eigen_stream(eigen_device& d) noexcept : device_(&d) {}
    backend::device& device() noexcept override;
    /// Validates operand counts and memory spaces, then runs the op's kernel
    /// (defined in eigen/execute.hpp).
    void execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                 std::span<const any_tensor_ref> outputs) override;
    void synchronize() override {}

private:
    static void check_host(const ops::op_desc& op, const any_tensor_ref& t) {
        if (t.space() != memory_space::host)
            throw backend_error("eigen", std::string(ops::op_name(op)) +
                                             ": operand is in device memory; the eigen backend "
                                             "reads host memory only");
    }
    eigen_device* device_;
};

/// The single Eigen device ("eigen", cpu, host memory, priority 0).
class eigen_device final : public backend::device {
public:
    /// The process-wide instance.
    static eigen_device& instance() {
        static eigen_device d;
        return d;
    }
    std::string_view name() const noexcept override { return "eigen"; }
    device_kind kind() const noexcept override { return device_kind::cpu; }
    memory_space memory() const noexcept override { return memory_space::host; }
    bool supports(const ops::op_desc& op, dtype type) const noexcept override {
        if (type == dtype::f32 || type == dtype::f64) return true;
        return std::holds_alternative<ops::copy_desc>(op) &&
               (type == dtype::bf16 || type == dtype::f16 || type == dtype::boolean);
    }
    stream& default_stream() override { return stream_; }
    std::unique_ptr<stream> create_stream() override {
        return std::make_unique<eigen_stream>(*this);
    }

private:
    eigen_device() : stream_(*this) {}
    eigen_stream stream_;
};

inline backend::device& eigen_stream::device() noexcept {
    return *device_;
}

}  // namespace mmfuse::inline v0::backend::eigen

#if !defined(MMFUSE_EIGEN_EXTERN_KERNELS)
#include "mmfuse/backend/eigen/execute.hpp"
#endif
