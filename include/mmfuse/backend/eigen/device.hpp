#pragma once
/// \file
/// The Eigen reference backend: portable, always compiled in, and the oracle every other
/// backend is parity-tested against. Synchronous host execution; f32 and f64 compute
/// (`copy` also converts to and from bf16 and f16). GEMMs go through Eigen's
/// matrix product on `Eigen::Map`s of the caller's memory; everything else is written as
/// plain loops over strided rows. Never allocates in `execute` except where a kernel
/// documents it.

#include <memory>
#include <span>
#include <variant>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/eigen/attention.hpp"
#include "mmfuse/backend/eigen/gather.hpp"
#include "mmfuse/backend/eigen/layout.hpp"
#include "mmfuse/backend/eigen/loss.hpp"
#include "mmfuse/backend/eigen/matmul.hpp"
#include "mmfuse/backend/eigen/norm.hpp"
#include "mmfuse/backend/eigen/pointwise.hpp"
#include "mmfuse/backend/eigen/random.hpp"
#include "mmfuse/backend/eigen/reduce.hpp"
#include "mmfuse/backend/eigen/softmax.hpp"

namespace mmfuse::inline v0::backend::eigen {

class eigen_device;

/// Synchronous stream of the Eigen device: `execute` runs the op before returning.
class eigen_stream final : public stream {
public:
    explicit eigen_stream(eigen_device& d) noexcept : device_(&d) {}
    backend::device& device() noexcept override;
    void execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                 std::span<const any_tensor_ref> outputs) override {
        check_operand_count("eigen", op, inputs, outputs);
        for (const any_tensor_ref& t : inputs)
            check_host(op, t);
        for (const any_tensor_ref& t : outputs)
            check_host(op, t);
        std::visit([&](const auto& d) { run(d, inputs, outputs); }, op);
    }
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
               (type == dtype::bf16 || type == dtype::f16);
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
