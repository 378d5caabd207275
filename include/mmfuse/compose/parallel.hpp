#pragma once
/// \file
/// `compose::parallel<Reducer, Ls...>`: branches applied to the same input, their outputs
/// combined by `reduce::concat`, `reduce::sum` or `reduce::mean`.

#include <array>
#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mmfuse/compose/named.hpp"
#include "mmfuse/compose/widths.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"

namespace mmfuse::inline v0::compose {

/// How `parallel` combines its branch outputs.
namespace reduce {
/// y = cat([y_0, ..., y_{n-1}], -1): widths add up (`torch.cat(..., dim=-1)`).
struct concat {};
/// y = y_0 + ... + y_{n-1}: equal shapes required.
struct sum {};
/// y = (y_0 + ... + y_{n-1}) / n, as `torch.stack(ys).mean(0)`: equal shapes required.
struct mean {};
}  // namespace reduce

/// One of `reduce::concat`, `reduce::sum`, `reduce::mean`.
template <class R>
concept reducer = std::is_same_v<R, reduce::concat> || std::is_same_v<R, reduce::sum> ||
    std::is_same_v<R, reduce::mean>;

/// Branches on a shared input: y = R(L_0(x), ..., L_{n-1}(x)).
///   x (..., F) goes to every branch unchanged; every branch must accept the same width
///   (checked at compile time when static: `branch_input_check`). concat: branch outputs
///   (..., F_i) equal except on the last axis -> (..., sum F_i); sum / mean: equal shapes
///   (`branch_output_check` when static; `shape_error` naming the path at run time).
///   Children are named "0", "1", ... or by `named<>`; no parameters of its own.
/// Backward: each branch gets its part of dy (its slice for concat, dy for sum, dy / n for
/// mean); dx is the sum of the branch input gradients. At most `ops::max_parts` branches.
template <reducer Reducer, nn::layer... Ls>
class parallel {
    static constexpr std::size_t n = sizeof...(Ls);
    static_assert(n >= 1 && n <= ops::max_parts,
                  "mmfuse::parallel: a parallel needs 1 to ops::max_parts (16) branches");
    using first = std::tuple_element_t<0, std::tuple<Ls...>>;
    static_assert((std::is_same_v<typename Ls::value_type, typename first::value_type> && ...),
                  "mmfuse::parallel: every branch must have the same compute type");
    static_assert(detail::unique_child_names<Ls...>(),
                  "mmfuse::parallel: two branches are named<> with the same name");

    template <std::size_t I>
    using branch = std::tuple_element_t<I, std::tuple<Ls...>>;
    static constexpr std::array<index_t, n> ins = {nn::static_in_features<Ls>()...};
    static constexpr std::size_t first_static(const std::array<index_t, n>& w) {
        for (std::size_t i = 0; i < n; ++i)
            if (w[i] != dyn) return i;
        return 0;
    }
    static constexpr std::size_t in_ref = first_static(ins);
    static constexpr index_t common_in = ins[in_ref];
    /// Static output width of each branch; a width-preserving branch gives its input width.
    static constexpr std::array<index_t, n> outs = {(nn::static_out_features<Ls>() != dyn
                                                         ? nn::static_out_features<Ls>()
                                                     : width_preserving<Ls> ? common_in
                                                                            : dyn)...};
    static constexpr std::size_t out_ref = first_static(outs);
    static constexpr bool checks_ok = []<std::size_t... I>(std::index_sequence<I...>) {
        constexpr bool inputs = (branch_input_check<in_ref, I, branch<in_ref>, branch<I>,
                                                    widths<ins[in_ref], ins[I]>>::value &&
                                 ...);
        if constexpr (std::is_same_v<Reducer, reduce::concat>)
            return inputs;
        else
            return inputs && (branch_output_check<out_ref, I, branch<out_ref>, branch<I>,
                                                  widths<outs[out_ref], outs[I]>>::value &&
                              ...);
    }
    (std::make_index_sequence<n>{});
    static_assert(checks_ok);

    static constexpr index_t concat_width() {
        index_t s = 0;
        for (index_t w : outs) {
            if (w == dyn) return dyn;
            s += w;
        }
        return s;
    }

public:
    using value_type = typename first::value_type;
    using T = value_type;
    static constexpr std::size_t size = n;
    /// Static input width shared by the branches (`dyn` if none declares one).
    static constexpr index_t in_features = common_in;
    /// Static output width (`dyn` when a branch's is unknown, for concat).
    static constexpr index_t out_features =
        std::is_same_v<Reducer, reduce::concat> ? concat_width() : outs[out_ref];
    /// sum / mean of width-preserving branches preserves the width.
    static constexpr bool preserves_width =
        !std::is_same_v<Reducer, reduce::concat> && (width_preserving<Ls> && ...);

    parallel() = default;
    explicit parallel(Ls... branches) : branches_(std::move(branches)...) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (detail::visit_child(v, I, std::get<I>(branches_)), ...);
        }
        (std::make_index_sequence<n>{});
    }

    void reset_parameters(philox_generator& g) {
        std::apply([&](auto&... b) { (b.reset_parameters(g), ...); }, branches_);
    }

    /// x -> R(branch outputs), allocated from the workspace (a single branch's output is
    /// returned as is for sum and mean).
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        std::array<tensor_ref<const T>, n> ys{};
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((ys[I] = std::get<I>(branches_).forward(cx, x)), ...);
        }
        (std::make_index_sequence<n>{});
        const ops::op_context op = cx.op(path_);
        tensor_ref<const T> y;
        if constexpr (std::is_same_v<Reducer, reduce::concat>) {
            for (std::size_t i = 0; i < n; ++i) {
                if (ys[i].rank() != ys[0].rank() || ys[i].rank() < 1)
                    throw shape_error(path_, "parallel branch " + std::to_string(i) + " output",
                                      "rank " + std::to_string(ys[0].rank()) +
                                          " >= 1 like branch 0 " + ys[0].extents().to_string(),
                                      "shape " + ys[i].extents().to_string());
                widths_[i] = ys[i].extent(-1);
            }
            index_t total = 0;
            for (index_t w : widths_)
                total += w;
            const tensor_ref<T> out = cx.allocate(ys[0].extents().with_axis(-1, total));
            ops::concat<T>(op, -1, std::span<const tensor_ref<const T>>(ys), out);
            y = out;
        } else {
            for (std::size_t i = 1; i < n; ++i)
                if (ys[i].extents() != ys[0].extents())
                    throw shape_error(path_, "parallel branch " + std::to_string(i) + " output",
                                      "shape " + ys[0].extents().to_string() +
                                          " (that of branch 0: sum and mean need equal shapes)",
                                      "shape " + ys[i].extents().to_string());
            if constexpr (n == 1) {
                y = ys[0];
            } else {
                const tensor_ref<T> out = cx.allocate(ys[0].extents());
                ops::add<T>(op, ys[0], ys[1], out);
                for (std::size_t i = 2; i < n; ++i)
                    ops::add<T>(op, out, ys[i], out);
                if constexpr (std::is_same_v<Reducer, reduce::mean>)
                    ops::binary<T>(op, ops::binary_kind::mul, out, inverse_count(), out);
                y = out;
            }
        }
        if (cx.training) {
            x_extents_ = x.extents();
            y_extents_ = y.extents();
            saved_ = true;
        }
        return y;
    }

    /// dy (y's shape) -> dx (x's shape) = sum of the branch input gradients.
    tensor_ref<const T> backward(nn::step_context<T>& cx, tensor_ref<const T> dy) requires(
        nn::differentiable_layer<Ls>&&...) {
        if (!saved_)
            throw shape_error(path_, "parallel backward", "a training-mode forward first",
                              "no saved forward");
        if (dy.extents() != y_extents_)
            throw shape_error(path_, "parallel output gradient", "shape " + y_extents_.to_string(),
                              "shape " + dy.extents().to_string());
        const ops::op_context op = cx.op(path_);
        std::array<tensor_ref<const T>, n> dys{};
        if constexpr (std::is_same_v<Reducer, reduce::concat>) {
            index_t at = 0;
            for (std::size_t i = 0; i < n; ++i) {
                dys[i] = dy.narrow(-1, at, widths_[i]);
                at += widths_[i];
            }
        } else if constexpr (std::is_same_v<Reducer, reduce::mean> && n > 1) {
            const tensor_ref<T> g = cx.allocate(dy.extents());
            ops::binary<T>(op, ops::binary_kind::mul, dy, inverse_count(), g);
            dys.fill(g);
        } else {
            dys.fill(dy);
        }
        std::array<tensor_ref<const T>, n> dxs{};
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            ((dxs[I] = std::get<I>(branches_).backward(cx, dys[I])), ...);
        }
        (std::make_index_sequence<n>{});
        if constexpr (n == 1) {
            return dxs[0];
        } else {
            const tensor_ref<T> dx = cx.allocate(x_extents_);
            ops::add<T>(op, dxs[0], dxs[1], dx);
            for (std::size_t i = 2; i < n; ++i)
                ops::add<T>(op, dx, dxs[i], dx);
            return dx;
        }
    }

    /// Branch `I`.
    template <std::size_t I>
    auto& get() noexcept {
        return std::get<I>(branches_);
    }
    const std::string& path() const noexcept { return path_; }

private:
    /// 1/n as a one-element view for `binary` (a constant in host memory; a scalar-scale op
    /// in the op vocabulary would replace it).
    static tensor_ref<const T> inverse_count() noexcept {
        return tensor_ref<const T>(&inv_n_, extents{1});
    }
    static constexpr T inv_n_ = T(1) / T(n);

    std::tuple<Ls...> branches_;
    std::string path_;
    std::array<index_t, n> widths_{};
    extents x_extents_{};
    extents y_extents_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::compose
