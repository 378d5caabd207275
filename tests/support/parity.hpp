#pragma once
// Parity scaffolding: run one op case on every compiled-in backend and in several memory
// layouts, and compare with the Eigen reference.
//
// * `strided_operand<T>`  — (support/strided.hpp) an operand stored in a chosen `layout`
//   (here contiguous, gapped, or axis-reversed = column-major / "transposed copy"), with
//   guard zones; reports whether anything outside the view was written.
// * `case_run`            — one execution of a case: the stream, a seeded engine, the layout,
//   and the operands the case made (outputs gathered in creation order).
// * `op_case`             — a name, the descriptor asked of `device::supports`, tolerances,
//   and a body `[]<class T>(case_run&)` that makes fresh random operands (the same logical
//   values for the same seed whatever the layout) and runs the op through its front-end.
// * `check_parity`        — runs a case on eigen (contiguous) as the reference, then on eigen
//   in the other layouts and on a second eigen stream, then on every other host device
//   that supports it; returns the list of disagreements (empty = pass). Unsupported ops and
//   device-memory backends are reported as notes (for WARN), not failures.

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/device.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

namespace mmfuse_test {

using mmfuse::index_t;

namespace parity {

/// Type-erased owner of a `strided_operand`, so a `case_run` can own operands of several
/// element types.
class operand_base {
public:
    virtual ~operand_base() = default;
    /// Logical values in row-major order.
    virtual std::vector<double> values() const = 0;
    /// True when no element outside the view (gaps and guard zones) was written.
    virtual bool outside_intact() const = 0;
};

template <class T>
class owned_operand final : public operand_base {
public:
    owned_operand(const mmfuse::extents& e, layout l) : op(e, l) {}
    std::vector<double> values() const override { return op.values(); }
    bool outside_intact() const override { return op.outside_intact(); }
    strided_operand<T> op;
};

/// One execution of an op case: where it runs, its seeded engine, the layout of its
/// operands, and the operands it made. Outputs (and in-outs) are gathered in creation order.
class case_run {
public:
    case_run(mmfuse::backend::stream& s, std::uint64_t seed, layout l)
        : stream(s), rng(seed), lay(l) {}

    mmfuse::backend::stream& stream;
    std::mt19937_64 rng;
    layout lay;

    /// A read-only input with entries uniform in [lo, hi) (drawn in logical order).
    template <class T>
    strided_operand<T>& input(const mmfuse::extents& e, double lo = -1.0, double hi = 1.0) {
        return make<T>(e, role::input, uniform_values(rng, e.numel(), lo, hi));
    }
    /// A boolean input, true with probability `keep`.
    strided_operand<bool>& mask(const mmfuse::extents& e, double keep = 0.7) {
        return make<bool>(e, role::input, bernoulli_values(rng, e.numel(), keep));
    }
    /// A write-only output, left poisoned (NaN) for the op to fill.
    template <class T>
    strided_operand<T>& output(const mmfuse::extents& e) {
        return make<T>(e, role::output, {});
    }
    /// An output that the op also reads (beta != 0, accumulate): random initial values.
    template <class T>
    strided_operand<T>& inout(const mmfuse::extents& e, double lo = -1.0, double hi = 1.0) {
        return make<T>(e, role::output, uniform_values(rng, e.numel(), lo, hi));
    }

    /// Logical values of every output, in creation order.
    std::vector<std::vector<double>> results() const {
        std::vector<std::vector<double>> r;
        for (const slot& s : slots_)
            if (s.kind == role::output) r.push_back(s.op->values());
        return r;
    }

    /// Empty when inputs are unchanged and nothing outside any view was written; else a
    /// description of the first violation.
    std::string memory_violation() const {
        for (std::size_t i = 0; i < slots_.size(); ++i) {
            const slot& s = slots_[i];
            if (!s.op->outside_intact())
                return "operand " + std::to_string(i) + " was written outside its view";
            if (s.kind == role::input && s.op->values() != s.initial)
                return "input operand " + std::to_string(i) + " was modified";
        }
        return {};
    }

private:
    enum class role { input, output };
    struct slot {
        std::unique_ptr<operand_base> op;
        role kind;
        std::vector<double> initial;
    };

    template <class T>
    strided_operand<T>& make(const mmfuse::extents& e, role k, std::vector<double> init) {
        auto op = std::make_unique<owned_operand<T>>(e, lay);
        if (!init.empty()) op->op.assign(init);
        strided_operand<T>& ref = op->op;
        // Store what the op should leave unchanged, rounded to T like the operand itself.
        slots_.push_back(
            {std::move(op), k, k == role::input ? ref.values() : std::vector<double>{}});
        return ref;
    }

    std::vector<slot> slots_;
};

/// One entry of the parity table.
struct op_case {
    std::string name;
    /// Descriptor passed to `device::supports` (the one the body submits).
    mmfuse::ops::op_desc desc;
    /// Max relative error (max_rel_error) allowed against the eigen contiguous result.
    double tol_f32 = 1e-5;
    double tol_f64 = 1e-12;
    /// Makes fresh operands in `run` and runs the op on `run.stream` for the dtype.
    std::function<void(case_run&, mmfuse::dtype)> body;

    double tolerance(mmfuse::dtype t) const { return t == mmfuse::dtype::f32 ? tol_f32 : tol_f64; }
};

/// Builds an `op_case` from a generic body `[]<class T>(case_run&) { ... }` run for f32 and
/// f64.
template <class F>
op_case make_case(std::string name, mmfuse::ops::op_desc desc, double tol_f32, double tol_f64,
                  F body) {
    return op_case{std::move(name), desc, tol_f32, tol_f64, [body](case_run& r, mmfuse::dtype t) {
                       if (t == mmfuse::dtype::f32)
                           body.template operator()<float>(r);
                       else
                           body.template operator()<double>(r);
                   }};
}

/// Outputs of one run, or the description of what went wrong.
struct run_result {
    std::vector<std::vector<double>> outputs;
    std::string error;  ///< non-empty: exception text or memory violation
};

/// Runs `c` once on `s` with operands in layout `l`.
inline run_result execute(const op_case& c, mmfuse::backend::stream& s, mmfuse::dtype t,
                          std::uint64_t seed, layout l) {
    case_run run(s, seed, l);
    try {
        c.body(run, t);
        s.synchronize();
    } catch (const std::exception& e) {
        return {{}, std::string("threw: ") + e.what()};
    }
    return {run.results(), run.memory_violation()};
}

/// max_rel_error over every output (inf on NaN or on a structural mismatch).
inline double max_error(const std::vector<std::vector<double>>& got,
                        const std::vector<std::vector<double>>& ref) {
    if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
    double worst = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (got[i].size() != ref[i].size()) return std::numeric_limits<double>::infinity();
        worst = std::max(
            worst, max_rel_error(std::span<const double>(got[i]), std::span<const double>(ref[i])));
    }
    return worst;
}

/// What `check_parity` found: failures must be empty; notes are for WARN (unsupported ops,
/// device-memory backends skipped); `compared` counts the runs compared with the reference.
struct parity_report {
    std::vector<std::string> failures;
    std::vector<std::string> notes;
    int compared = 0;
    int other_devices = 0;  ///< runs on devices other than eigen
};

/// Runs `c` for dtype `t` and `seed` on eigen, contiguous, as the reference; then compares
/// (within `c.tolerance(t)`) eigen in the gapped and reversed layouts, a second eigen stream
/// from `create_stream()`, and every device of `devices` other than eigen that is a host
/// device and `supports()` the op (contiguous and gapped).
inline parity_report check_parity(const op_case& c, mmfuse::dtype t, std::uint64_t seed,
                                  std::span<mmfuse::backend::device* const> devices =
                                      mmfuse::backend::registry::global().devices()) {
    parity_report rep;
    const std::string what =
        c.name + " [" + std::string(mmfuse::dtype_name(t)) + ", seed " + std::to_string(seed) + "]";
    auto& eigen = mmfuse::backend::registry::global().get("eigen");
    const run_result ref = execute(c, eigen.default_stream(), t, seed, layout::contiguous);
    if (!ref.error.empty()) {
        rep.failures.push_back(what + " on eigen (reference): " + ref.error);
        return rep;
    }
    const auto compare = [&](const std::string& where, const run_result& got) {
        ++rep.compared;
        if (!got.error.empty()) {
            rep.failures.push_back(what + " on " + where + ": " + got.error);
            return;
        }
        const double err = max_error(got.outputs, ref.outputs);
        if (!(err <= c.tolerance(t)))
            rep.failures.push_back(what + " on " + where + ": max relative error " +
                                   std::to_string(err) + " > tolerance " +
                                   std::to_string(c.tolerance(t)));
    };
    // The reference must have written every output (no NaN left from the poison).
    compare("eigen (reference, self-check)", ref);
    for (layout l : {layout::gapped, layout::reversed})
        compare(std::string("eigen, ") + layout_name(l) + " layout",
                execute(c, eigen.default_stream(), t, seed, l));
    const auto second = eigen.create_stream();
    compare("a second eigen stream", execute(c, *second, t, seed, layout::contiguous));

    for (mmfuse::backend::device* d : devices) {
        if (d == &eigen) continue;
        const std::string dn(d->name());
        if (d->memory() != mmfuse::memory_space::host) {
            rep.notes.push_back(what + ": device " + dn +
                                " uses device memory; parity for it needs input transfer "
                                "(not implemented yet), skipped");
            continue;
        }
        if (!d->supports(c.desc, t)) {
            rep.notes.push_back(what + ": device " + dn + " does not support this op");
            continue;
        }
        for (layout l : {layout::contiguous, layout::gapped}) {
            ++rep.other_devices;
            compare(dn + ", " + layout_name(l) + " layout",
                    execute(c, d->default_stream(), t, seed, l));
        }
    }
    return rep;
}

}  // namespace parity
}  // namespace mmfuse_test
