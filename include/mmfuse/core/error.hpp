#pragma once
/// \file
/// The exception hierarchy. Library code never aborts on bad input; it throws one of these.
///
///   mmfuse::error              base; carries the module path ("text.proj") where it happened
///   ├── mmfuse::shape_error    shape, rank, stride or dtype mismatch; names expected and actual
///   ├── mmfuse::value_error    a scalar argument out of its domain (lo > hi, std < 0, ...)
///   ├── mmfuse::backend_error  a backend cannot run an op, or a device call failed
///   └── mmfuse::io_error       a file is missing, truncated, corrupt or of the wrong type

#include <stdexcept>
#include <string>
#include <string_view>

#include "mmfuse/core/config.hpp"

namespace mmfuse::inline v0 {

/// Base of every exception mmfuse throws. `module()` is the hierarchical path of the module
/// or op that raised it (may be empty for free functions); `what()` is a full sentence that
/// starts with that path.
class error : public std::runtime_error {
public:
    error(std::string_view module, std::string_view message)
        : std::runtime_error(compose(module, message)), module_(module) {}

    /// Hierarchical path of the module or op that raised the error, e.g. "text.proj".
    const std::string& module() const noexcept { return module_; }

private:
    static std::string compose(std::string_view module, std::string_view message) {
        std::string s = "mmfuse: ";
        if (!module.empty()) {
            s += "in '";
            s += module;
            s += "': ";
        }
        s += message;
        return s;
    }
    std::string module_;
};

/// A shape, rank, stride or dtype mismatch. The message names both the expected and the
/// actual description, e.g.
/// `mmfuse: in 'text.proj': matmul operand b: expected shape (512, ?), got (768, 256)`.
class shape_error : public error {
public:
    shape_error(std::string_view module, std::string_view what, std::string expected,
                std::string actual)
        : error(module, std::string(what) + ": expected " + expected + ", got " + actual),
          expected_(std::move(expected)),
          actual_(std::move(actual)) {}

    /// Description of what was expected ("shape (512, ?)", "dtype f32").
    const std::string& expected() const noexcept { return expected_; }
    /// Description of what was found.
    const std::string& actual() const noexcept { return actual_; }

private:
    std::string expected_;
    std::string actual_;
};

/// A scalar argument outside its domain (PyTorch raises ValueError/RuntimeError for these):
/// the message names the parameter, the allowed range and the value.
class value_error : public error {
public:
    using error::error;
};

/// A backend cannot execute an op (unsupported, out of memory, device failure).
class backend_error : public error {
public:
    using error::error;
};

/// A file could not be read or written, or its content is malformed. `module()` holds the
/// file path.
class io_error : public error {
public:
    using error::error;
};

}  // namespace mmfuse::inline v0
