#pragma once
/// \file
/// Which backends are compiled into this program, and how to pick one.
///
/// The Eigen reference backend is always present. Other backends register themselves when
/// their header is included (`mmfuse/backend/onednn/device.hpp`, `.../cuda/device.hpp`,
/// normally through the `mmfuse::onednn` / `mmfuse::cuda` CMake components), so the
/// registry lists exactly what was compiled in, with no configuration macro.
///
///     auto& dev = mmfuse::backend::registry::global().get("eigen");
///     auto& s   = dev.default_stream();
///     mmfuse::ops::matmul(s, a, b, c);

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/eigen/device.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0::backend {

/// Process-wide list of available devices. Registration happens during static
/// initialisation and is not thread-safe; lookups are (the list no longer changes).
class registry {
public:
    /// The process-wide registry (created on first use with the Eigen device in it).
    static registry& global() {
        static registry r;
        return r;
    }

    /// Adds `d` (idempotent). Throws `backend_error` if `d` was written against another
    /// `api_version` or another device already uses its name.
    void add(device& d) {
        if (d.interface_version() != api_version)
            throw backend_error(
                d.name(), "backend interface version " + std::to_string(d.interface_version()) +
                              ", this mmfuse expects " + std::to_string(api_version));
        for (device* e : devices_) {
            if (e == &d) return;
            if (e->name() == d.name())
                throw backend_error(d.name(),
                                    "a different device with this name is already registered");
        }
        devices_.push_back(&d);
    }

    /// Every registered device, in registration order (eigen first).
    std::span<device* const> devices() const noexcept { return devices_; }

    /// The device called `name`, or nullptr.
    device* find(std::string_view name) const noexcept {
        for (device* d : devices_)
            if (d->name() == name) return d;
        return nullptr;
    }

    /// The device called `name`; throws `backend_error` listing the available names.
    device& get(std::string_view name) const {
        if (device* d = find(name)) return *d;
        throw backend_error(
            "registry", "no backend named '" + std::string(name) + "'; compiled in: " + names());
    }

    /// The registered device with the highest `priority()` (cuda > onednn > eigen).
    device& best() const {
        return **std::max_element(devices_.begin(), devices_.end(), [](device* a, device* b) {
            return a->priority() < b->priority();
        });
    }

    /// Comma-separated names of the registered devices ("eigen, onednn").
    std::string names() const {
        std::string s;
        for (device* d : devices_) {
            if (!s.empty()) s += ", ";
            s += d->name();
        }
        return s;
    }

private:
    registry() { add(eigen::eigen_device::instance()); }
    std::vector<device*> devices_;
};

/// Default stream of the Eigen reference device: what ops use in tests and examples when
/// no backend is named.
inline stream& default_stream() {
    return registry::global().get("eigen").default_stream();
}

}  // namespace mmfuse::inline v0::backend
