#pragma once
// Parity scaffolding: run one op case on every compiled-in backend and in several memory
// layouts, and compare with the Eigen reference.
//
// * `strided_operand<T>`  — an operand stored in a chosen `layout` (contiguous, padded with
//   gaps, or axis-reversed = column-major / "transposed copy"), with guard zones; reports
//   whether anything outside the view was written.
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
#include "support/test_util.hpp"

namespace mmfuse_test {

using mmfuse::index_t;

/// Calls `f(idx)` for every multi-index of `e` in row-major order (`idx` holds `e.rank()`
/// meaningful entries). Nothing is called when an extent is 0; rank 0 calls once.
template <class F>
void for_each_index(const mmfuse::extents& e, F&& f) {
    if (e.numel() == 0) return;
    std::array<index_t, mmfuse::max_rank> idx{};
    while (true) {
        f(std::as_const(idx));
        int a = e.rank() - 1;
        for (; a >= 0; --a) {
            if (++idx[size_t(a)] < e[a]) break;
            idx[size_t(a)] = 0;
        }
        if (a < 0) return;
    }
}

/// Element offset of multi-index `idx` in a view with `strides`.
inline index_t offset_of(const std::array<index_t, mmfuse::max_rank>& idx,
                         std::span<const index_t> strides) {
    index_t off = 0;
    for (std::size_t a = 0; a < strides.size(); ++a)
        off += idx[a] * strides[a];
    return off;
}

/// The logical (row-major) values of any strided view, as doubles.
template <class T>
std::vector<double> to_vector(const mmfuse::tensor_ref<T>& t) {
    std::vector<double> v;
    v.reserve(std::size_t(t.numel()));
    for_each_index(t.extents(), [&](const auto& idx) {
        v.push_back(double(t.data()[offset_of(idx, t.strides())]));
    });
    return v;
}

/// `n` values uniform in [lo, hi), drawn from `rng` in order.
inline std::vector<double> uniform_values(std::mt19937_64& rng, index_t n, double lo, double hi) {
    std::uniform_real_distribution<double> u(lo, hi);
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v)
        x = u(rng);
    return v;
}

/// `n` values in {0, 1}, 1 with probability `p` (boolean masks).
inline std::vector<double> bernoulli_values(std::mt19937_64& rng, index_t n, double p) {
    std::bernoulli_distribution b(p);
    std::vector<double> v(static_cast<std::size_t>(n));
    for (double& x : v)
        x = b(rng) ? 1.0 : 0.0;
    return v;
}

/// How an operand is laid out in memory.
enum class layout {
    contiguous,  ///< dense row-major
    padded,      ///< last-axis stride 2, every outer axis one entry longer: gaps everywhere
    reversed,    ///< column-major (axis order reversed in memory): a transposed copy
};

inline const char* layout_name(layout l) {
    switch (l) {
        case layout::contiguous:
            return "contiguous";
        case layout::padded:
            return "padded";
        case layout::reversed:
            return "reversed";
    }
    return "?";
}

/// Strides of `e` in layout `l`.
inline mmfuse::stride_array layout_strides(const mmfuse::extents& e, layout l) {
    mmfuse::stride_array s{};
    const int r = e.rank();
    if (r == 0) return s;
    switch (l) {
        case layout::contiguous:
            return mmfuse::contiguous_strides(e);
        case layout::padded:
            s[size_t(r - 1)] = 2;
            for (int k = r - 2; k >= 0; --k)
                s[size_t(k)] = s[size_t(k + 1)] * (e[k + 1] + 1);
            return s;
        case layout::reversed:
            s[0] = 1;
            for (int k = 1; k < r; ++k)
                s[size_t(k)] = s[size_t(k - 1)] * std::max<index_t>(e[k - 1], 1);
            return s;
    }
    return s;
}

/// Type-erased operand, so a `case_run` can own operands of several element types.
class operand_base {
public:
    virtual ~operand_base() = default;
    /// Logical values in row-major order.
    virtual std::vector<double> values() const = 0;
    /// True when no element outside the view (gaps and guard zones) was written.
    virtual bool outside_intact() const = 0;
};

/// An operand of logical extents `e` stored in layout `l`, with `guard` poisoned elements
/// before and after. The whole buffer starts poisoned (NaN; `true` for bool).
template <class T>
class strided_operand final : public operand_base {
public:
    static constexpr index_t guard = 16;

    strided_operand(const mmfuse::extents& e, layout l)
        : extents_(e), strides_(layout_strides(e, l)) {
        index_t span = 0;
        if (e.numel() > 0) {
            span = 1;
            for (int k = 0; k < e.rank(); ++k)
                span += (e[k] - 1) * strides_[size_t(k)];
        }
        size_ = span + 2 * guard;
        buf_ = std::make_unique<T[]>(std::size_t(size_));
        for (index_t i = 0; i < size_; ++i)
            buf_[std::size_t(i)] = poison_value();
    }

    mmfuse::tensor_ref<T> ref() {
        return {buf_.get() + guard, extents_,
                std::span<const index_t>(strides_.data(), size_t(extents_.rank()))};
    }
    mmfuse::tensor_ref<const T> cref() const {
        return {buf_.get() + guard, extents_,
                std::span<const index_t>(strides_.data(), size_t(extents_.rank()))};
    }
    operator mmfuse::tensor_ref<T>() { return ref(); }               // NOLINT
    operator mmfuse::tensor_ref<const T>() const { return cref(); }  // NOLINT

    /// Sets the logical values (row-major order) from `v` (numel entries).
    void assign(std::span<const double> v) {
        REQUIRE(v.size() == std::size_t(extents_.numel()));
        std::size_t i = 0;
        const auto view = ref();
        for_each_index(extents_, [&](const auto& idx) {
            view.data()[offset_of(idx, view.strides())] = static_cast<T>(v[i++]);
        });
    }

    std::vector<double> values() const override { return to_vector(cref()); }

    bool outside_intact() const override {
        std::vector<char> inside(std::size_t(size_), 0);
        for_each_index(extents_, [&](const auto& idx) {
            inside[std::size_t(guard + offset_of(idx, cref().strides()))] = 1;
        });
        for (index_t i = 0; i < size_; ++i)
            if (!inside[std::size_t(i)] && !is_poison(buf_[std::size_t(i)])) return false;
        return true;
    }

private:
    static T poison_value() {
        if constexpr (std::is_floating_point_v<T>)
            return std::numeric_limits<T>::quiet_NaN();
        else
            return T(1);
    }
    static bool is_poison(const T& v) {
        if constexpr (std::is_floating_point_v<T>)
            return std::isnan(v);
        else
            return v == T(1);
    }

    mmfuse::extents extents_;
    mmfuse::stride_array strides_;
    index_t size_ = 0;
    std::unique_ptr<T[]> buf_;
};

namespace parity {

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
        std::bernoulli_distribution b(keep);
        std::vector<double> v(std::size_t(e.numel()));
        for (double& x : v)
            x = b(rng) ? 1.0 : 0.0;
        return make<bool>(e, role::input, std::move(v));
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
        auto op = std::make_unique<strided_operand<T>>(e, lay);
        if (!init.empty()) op->assign(init);
        strided_operand<T>& ref = *op;
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
/// (within `c.tolerance(t)`) eigen in the padded and reversed layouts, a second eigen stream
/// from `create_stream()`, and every device of `devices` other than eigen that is a host
/// device and `supports()` the op (contiguous and padded).
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
    for (layout l : {layout::padded, layout::reversed})
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
        for (layout l : {layout::contiguous, layout::padded}) {
            ++rep.other_devices;
            compare(dn + ", " + layout_name(l) + " layout",
                    execute(c, d->default_stream(), t, seed, l));
        }
    }
    return rep;
}

}  // namespace parity
}  // namespace mmfuse_test
