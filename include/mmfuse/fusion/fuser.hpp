#pragma once
/// \file
/// The fusion protocols (docs/fusion.md): what a fusion operator and a cross-modal
/// interaction provide, the per-sample modality-presence mask they all take, and the helpers
/// they share to apply it.
///
/// Three kinds of module meet in a fusion model (DESIGN decision 1: plain templates, no
/// virtual calls):
///
///     layer        x -> y                        (nn::layer: encoders, heads)
///     fuser        {x_0, ..., x_{M-1}}, p -> y   (combines M modalities into one tensor)
///     interaction  {x_0, ..., x_{M-1}}, p -> {y_0, ..., y_{M-1}}
///                                               (exchanges information between streams and
///                                                keeps them apart: MulT, MBT, co-attention)
///
/// with backward passes  dy -> {dx_m}  and  {dy_m} -> {dx_m}. A fuser or interaction is a
/// module (visit, reset_parameters) with `static constexpr std::size_t arity = M` and
/// `value_type`; inputs are `views<T, M>` in the modality order of the model.
///
/// Presence: `presence` is a bool (B, M) view in host memory, true = modality m is present in
/// sample b; an empty view means every modality is present. Each method applies its own
/// documented rule to an absent modality (concat: zeros; mean: renormalised over the present
/// ones; tensor fusion: the modality's block is [1; 0]; attention: its tokens are masked
/// keys, ...), so callers never feed placeholder values. A modality missing from the whole
/// batch may also be passed as an empty view (`compose::is_absent`) to fusers that say so.

#include <array>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/random.hpp"

namespace mmfuse::inline v0::fusion {

/// The M per-modality tensors a fuser or interaction takes (model order).
template <class T, std::size_t M>
using views = std::array<tensor_ref<const T>, M>;

/// Per-sample modality presence: bool (B, M), true = present; empty = all present.
using presence = tensor_ref<const bool>;

/// M modalities in, one tensor out: y = F({x_m}, presence).
template <class F>
concept fuser = nn::module<F> && requires {
    { F::arity } -> std::convertible_to<std::size_t>;
} && requires(F& f, nn::step_context<typename F::value_type>& cx,
              const views<typename F::value_type, F::arity>& xs, presence p) {
    { f.forward(cx, xs, p) } -> std::same_as<tensor_ref<const typename F::value_type>>;
};

/// A fuser with an analytic backward: dy -> {dx_m} (an input the forward got as an empty view
/// gets an empty gradient).
template <class F>
concept differentiable_fuser = fuser<F> &&
    requires(F& f, nn::step_context<typename F::value_type>& cx,
             tensor_ref<const typename F::value_type> dy) {
    { f.backward(cx, dy) } -> std::same_as<views<typename F::value_type, F::arity>>;
};

/// M streams in, M streams out: {y_m} = I({x_m}, presence).
template <class I>
concept interaction = nn::module<I> && requires {
    { I::arity } -> std::convertible_to<std::size_t>;
} && requires(I& i, nn::step_context<typename I::value_type>& cx,
              const views<typename I::value_type, I::arity>& xs, presence p) {
    { i.forward(cx, xs, p) } -> std::same_as<views<typename I::value_type, I::arity>>;
};

/// An interaction with an analytic backward: {dy_m} -> {dx_m}.
template <class I>
concept differentiable_interaction = interaction<I> &&
    requires(I& i, nn::step_context<typename I::value_type>& cx,
             const views<typename I::value_type, I::arity>& dys) {
    { i.backward(cx, dys) } -> std::same_as<views<typename I::value_type, I::arity>>;
};

/// True when `p` says every modality of every sample is present (or is empty).
inline bool all_present(const presence& p) noexcept {
    if (p.data() == nullptr) return true;
    for (index_t b = 0; b < p.extent(0); ++b)
        for (index_t m = 0; m < p.extent(1); ++m)
            if (!p.data()[b * p.stride(0) + m * p.stride(1)]) return false;
    return true;
}

/// Throws `shape_error` naming `path` unless `p` is empty or bool (batch, m) in host memory.
inline void check_presence(std::string_view path, const presence& p, index_t batch, std::size_t m) {
    if (p.data() == nullptr) return;
    if (p.rank() != 2 || p.extent(0) != batch || p.extent(1) != index_t(m))
        throw shape_error(path, "presence mask",
                          "bool (" + std::to_string(batch) + ", " + std::to_string(m) +
                              ") (batch, modalities) or an empty view",
                          "shape " + p.extents().to_string());
    if (p.space() != memory_space::host)
        throw shape_error(path, "presence mask", "a view of host memory", "device memory");
}

/// Batch size of the first input that is not an empty view; throws `shape_error` naming
/// `path` when every input is empty or an input has rank 0.
template <class T, std::size_t M>
index_t batch_of(std::string_view path, const views<T, M>& xs) {
    for (const auto& x : xs) {
        if (x.data() == nullptr && x.rank() == 0) continue;
        if (x.rank() < 1)
            throw shape_error(path, "fusion input", "rank >= 1 (batch first)",
                              "shape " + x.extents().to_string());
        return x.extent(0);
    }
    throw shape_error(path, "fusion inputs", "at least one modality", "every input empty");
}

namespace detail {

/// y = value everywhere: a uniform fill on [value, value], which `uniform_in` returns as
/// exactly `value` on every backend (so the op vocabulary needs no constant fill).
template <compute_type T>
void fill_constant(const ops::op_context& op, tensor_ref<T> y, double value) {
    ops::fill_random(
        op, y, ops::fill_random_desc{.kind = ops::random_kind::uniform, .a = value, .b = value});
}

/// The (B, 1, ..., 1) 0/1 weights of modality `m` from `p` (rank `rank`, so they broadcast
/// against a (B, ...) tensor of that rank), allocated from the workspace.
template <compute_type T>
tensor_ref<const T> presence_weights(const nn::step_context<T>& cx, std::string_view path,
                                     const presence& p, std::size_t m, int rank) {
    const tensor_ref<T> w = cx.allocate(extents{p.extent(0), 1});
    ops::copy(cx.op(path), p.narrow(1, index_t(m), 1), w);
    std::array<index_t, max_rank> e{};
    e.fill(1);
    e[0] = p.extent(0);
    return tensor_ref<const T>(w).reshape(
        extents::from(std::span<const index_t>(e.data(), std::size_t(rank < 1 ? 1 : rank))));
}

/// x with the samples where modality `m` is absent set to zero (x itself when `p` is empty).
template <compute_type T>
tensor_ref<const T> zero_absent(const nn::step_context<T>& cx, std::string_view path,
                                const presence& p, std::size_t m, tensor_ref<const T> x) {
    if (p.data() == nullptr) return x;
    const tensor_ref<const T> w = presence_weights(cx, path, p, m, x.rank());
    const tensor_ref<T> y = cx.allocate(x.extents());
    ops::binary<T>(cx.op(path), ops::binary_kind::mul, x, w, y);
    return y;
}

/// "<prefix> <index>" (or just the prefix when index < 0): the name of an input or mask in
/// an error message, built only when the error is thrown, so that a forward whose checks
/// pass touches no heap (a std::string built up front would allocate in every step).
struct indexed_name {
    constexpr indexed_name(const char* p, int i = -1) noexcept : prefix(p), index(i) {}
    constexpr indexed_name(std::string_view p, int i = -1) noexcept : prefix(p), index(i) {}
    std::string_view prefix;
    int index = -1;
    std::string str() const {
        std::string s(prefix);
        if (index >= 0) s += " " + std::to_string(index);
        return s;
    }
};

/// Throws `shape_error` naming `path` unless x is (batch, width) (any width when width < 0).
template <class T>
void expect_rows(std::string_view path, indexed_name what, const tensor_ref<const T>& x,
                 index_t batch, index_t width) {
    if (x.data() == nullptr && x.rank() == 0)
        throw shape_error(path, what.str(),
                          "a (batch, features) tensor (a missing modality is marked in the "
                          "presence mask)",
                          "an empty view");
    if (x.rank() != 2 || x.extent(0) != batch || (width >= 0 && x.extent(1) != width))
        throw shape_error(path, what.str(),
                          "shape (" + std::to_string(batch) + ", " +
                              (width >= 0 ? std::to_string(width) : std::string("d")) + ")",
                          "shape " + x.extents().to_string());
}

/// Throws `shape_error` naming `path` unless a training-mode forward saved what backward
/// needs (`saved`) and `dy` has the output extents `expected` it recorded.
template <class T>
void expect_saved_grad(std::string_view path, std::string_view module, bool saved,
                       const extents& expected, const tensor_ref<const T>& dy) {
    if (!saved)
        throw shape_error(path, std::string(module) + " backward", "a training-mode forward first",
                          "no saved forward");
    if (dy.extents() != expected)
        throw shape_error(path, std::string(module) + " output gradient",
                          "shape " + expected.to_string(), "shape " + dy.extents().to_string());
}

/// Throws `shape_error` naming `path` and `what` unless `keep` is empty or a bool
/// (batch, length) view of host memory (a key-padding mask, true = keep).
inline void check_key_padding(std::string_view path, indexed_name what,
                              const tensor_ref<const bool>& keep, index_t batch, index_t length) {
    if (keep.data() == nullptr && keep.rank() == 0) return;
    if (keep.rank() != 2 || keep.extent(0) != batch || keep.extent(1) != length)
        throw shape_error(path, what.str(),
                          "bool (" + std::to_string(batch) + ", " + std::to_string(length) +
                              ") (batch, tokens; true = keep) or an empty view",
                          "shape " + keep.extents().to_string());
    if (keep.space() != memory_space::host)
        throw shape_error(path, what.str(), "a view of host memory", "device memory");
}

/// The (B, L + extra) keep-mask of the keys [tokens of modality m; `extra` always-kept
/// tokens]: token j of sample b is kept when keep[b, j] (an empty `keep` keeps every token)
/// and modality m is present in sample b (an empty `p`: always). Written on the host into the
/// workspace (host tables, like `presence`); returned as is (possibly empty: nothing masked)
/// when there is nothing to add. Used for cross-modal key-padding: MulT sources, MBT's
/// [x_m; bottleneck], the Perceiver's [media; latents], `cross_exchange`.
template <compute_type T>
tensor_ref<const bool> key_keep(const nn::step_context<T>& cx, const tensor_ref<const bool>& keep,
                                const presence& p, std::size_t m, index_t batch, index_t length,
                                index_t extra = 0) {
    if (p.data() == nullptr && (keep.data() == nullptr || extra == 0)) return keep;
    const index_t n = length + extra;
    const tensor_ref<bool> out = cx.workspace->template allocate<bool>(extents{batch, n});
    for (index_t b = 0; b < batch; ++b) {
        const bool present =
            p.data() == nullptr || p.data()[b * p.stride(0) + index_t(m) * p.stride(1)];
        for (index_t j = 0; j < n; ++j)
            out.data()[b * n + j] =
                j >= length || (present && (keep.data() == nullptr ||
                                            keep.data()[b * keep.stride(0) + j * keep.stride(1)]));
    }
    return out;
}

}  // namespace detail

/// The identity layer (`nn.Identity`): the default head of `late` and `hybrid`, and a stem
/// for modalities that enter a fusion model unchanged.
template <compute_type T = float>
class identity {
public:
    using value_type = T;
    static constexpr bool preserves_width = true;

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }
    void reset_parameters(philox_generator&) {}
    tensor_ref<const T> forward(nn::step_context<T>&, tensor_ref<const T> x) { return x; }
    tensor_ref<const T> backward(nn::step_context<T>&, tensor_ref<const T> dy) { return dy; }

private:
    std::string path_;
};

}  // namespace mmfuse::inline v0::fusion
