#pragma once
/// \file
/// The thin, non-template backend boundary (DESIGN decision 1 and 6, ggml-shaped).
///
/// * `device`  — one compute resource ("eigen", "onednn", "cuda:0"): says what it is,
///               which ops it `supports()`, and makes streams.
/// * `stream`  — an ordered queue on a device; `execute(op, inputs, outputs)` runs one op
///               descriptor on dtype-erased views. Host backends execute synchronously.
///
/// Layers never see these classes directly: they call the typed front-ends in
/// `mmfuse/ops/`, which validate shapes and then hand the op to a stream. A backend that
/// cannot run an op throws `backend_error`; fallback to another backend is always an
/// explicit decision of the caller (`supports()` first), never silent.

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend {

/// Version of this interface; a backend compiled against another version is refused by
/// the registry.
inline constexpr int api_version = 1;

/// What kind of processor a device drives.
enum class device_kind : std::uint8_t { cpu, gpu };

class stream;

/// One compute resource. Implementations are owned by their backend (usually a
/// function-local static) and outlive every stream they create.
class device {
public:
    virtual ~device() = default;

    /// Registry name: "eigen", "onednn", "cuda:0".
    virtual std::string_view name() const noexcept = 0;
    virtual device_kind kind() const noexcept = 0;
    /// Where tensors passed to this device's streams must live.
    virtual memory_space memory() const noexcept = 0;
    /// Interface version the backend was written against (must equal `api_version`).
    virtual int interface_version() const noexcept { return api_version; }
    /// Preference when choosing the "best" device (higher wins); eigen is 0.
    virtual int priority() const noexcept { return 0; }

    /// True when `execute` can run `op` with operands of element type `type` (the dtype of
    /// the op's first input). Mandatory and tested for every op case.
    virtual bool supports(const ops::op_desc& op, dtype type) const noexcept = 0;

    /// The device's default stream (lives as long as the device).
    virtual stream& default_stream() = 0;
    /// A new independent stream.
    virtual std::unique_ptr<stream> create_stream() = 0;
};

/// Throws `backend_error` naming `backend` and the op unless `inputs`/`outputs` have the
/// counts `ops::operand_count(op)` requires. Every backend's `execute` calls it first.
inline void check_operand_count(std::string_view backend, const ops::op_desc& op,
                                std::span<const any_tensor_ref> inputs,
                                std::span<const any_tensor_ref> outputs) {
    const ops::operand_counts want = ops::operand_count(op);
    const auto fits = [](int want_n, std::size_t n) {
        return want_n == ops::operand_counts::variadic ? n >= 1 : n == std::size_t(want_n);
    };
    if (fits(want.inputs, inputs.size()) && fits(want.outputs, outputs.size())) return;
    const auto str = [](int n) {
        return n == ops::operand_counts::variadic ? std::string("one or more") : std::to_string(n);
    };
    throw backend_error(backend, std::string(ops::op_name(op)) + ": expected " + str(want.inputs) +
                                     " inputs and " + str(want.outputs) + " outputs, got " +
                                     std::to_string(inputs.size()) + " and " +
                                     std::to_string(outputs.size()));
}

/// An ordered queue of ops on one device.
class stream {
public:
    virtual ~stream() = default;

    virtual backend::device& device() noexcept = 0;

    /// Runs `op` on `inputs` and writes `outputs` (order documented on each descriptor in
    /// op_desc.hpp). Inputs are validated by the ops front-end; a backend throws
    /// `backend_error` for an op it does not support. Must not allocate on the heap in a
    /// steady state.
    virtual void execute(const ops::op_desc& op, std::span<const any_tensor_ref> inputs,
                         std::span<const any_tensor_ref> outputs) = 0;

    /// Blocks until every op queued so far has finished (a no-op on synchronous backends).
    virtual void synchronize() = 0;
};

}  // namespace mmfuse::inline v0::backend
