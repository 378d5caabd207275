#pragma once
/// \file
/// Positional encodings added to a sequence (B, L, F): the fixed sinusoidal table of
/// Vaswani et al. 2017 (section 3.5) and a learned table (BERT, GPT-2, ViT).

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/reduce.hpp"

namespace mmfuse::inline v0::nn {

namespace detail {

/// Checks a positional-encoding input x (..., L, F): rank >= 2, last extent `f`,
/// L <= `max_len`. Throws `shape_error` naming `path` and both shapes.
template <class T>
void check_position_input(std::string_view path, std::string_view what, const tensor_ref<T>& x,
                          index_t max_len, index_t f) {
    if (x.rank() < 2 || x.extent(-1) != f)
        throw shape_error(path, what, "shape (..., L, " + std::to_string(f) + ")",
                          "shape " + x.extents().to_string());
    if (x.extent(-2) > max_len)
        throw shape_error(path, what,
                          "a sequence length L <= max_len = " + std::to_string(max_len) +
                              " in (..., L, " + std::to_string(f) + ")",
                          "shape " + x.extents().to_string());
}

/// (R, L*F) view of a contiguous (..., L, F) tensor, R = product of the leading extents
/// (well defined when L*F = 0).
template <class T>
tensor_ref<T> as_sequence_rows(tensor_ref<T> x) {
    index_t rows = 1;
    for (int a = 0; a < x.rank() - 2; ++a)
        rows *= x.extent(a);
    return x.reshape({rows, x.extent(-2) * x.extent(-1)});
}

/// y = x + table[:L] broadcast over every leading axis of x (..., L, F); `table` is a
/// (max_len, F) view. One `ops::add` with NumPy broadcasting; x may have any strides.
template <compute_type T>
tensor_ref<const T> add_position_table(step_context<T>& cx, std::string_view path,
                                       tensor_ref<const std::type_identity_t<T>> x,
                                       tensor_ref<const std::type_identity_t<T>> table) {
    const tensor_ref<T> y = cx.allocate(x.extents());
    ops::add(cx.op(path), x, table.narrow(0, 0, x.extent(-2)), y);
    return y;
}

/// Throws unless backward follows a training forward and dy has the input's extents.
inline void check_position_gradient(std::string_view path, std::string_view what, bool saved,
                                    const extents& x, const extents& dy) {
    if (!saved)
        throw shape_error(path, std::string(what) + " backward", "a training-mode forward first",
                          "no saved input shape");
    if (dy != x)
        throw shape_error(path, std::string(what) + " output gradient", "shape " + x.to_string(),
                          "shape " + dy.to_string());
}

}  // namespace detail

/// Fixed sinusoidal positional encoding (Vaswani et al. 2017, section 3.5), added to x:
///   x (..., L, F) with L <= max_len -> y = x + PE[:L] (broadcast over the leading axes),
///   PE[pos, 2i] = sin(pos / 10000^(2i/F)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/F)),
///   computed in double and rounded to T once (for odd F the last column is a sine).
/// No parameters: the (max_len, F) table is built once at construction (heap, at setup) and
/// is registered nowhere, so it is in no checkpoint (a PyTorch twin computes it or keeps it
/// as a non-persistent buffer). Backward: dx = dy (dy itself is returned).
template <index_t F = dyn, compute_type T = float>
class sinusoidal_positional_encoding {
public:
    using value_type = T;
    static constexpr index_t in_features = F;
    static constexpr index_t out_features = F;

    /// Table for positions 0 .. max_len - 1; throws `value_error` for max_len < 0.
    explicit sinusoidal_positional_encoding(index_t max_len, dim<F> features = {})
        : max_len_(max_len), features_(features) {
        if (max_len < 0)
            throw value_error("nn::sinusoidal_positional_encoding",
                              "expected max_len >= 0, got " + std::to_string(max_len));
        const index_t f = features_.value();
        table_.resize(size_t(max_len * f));
        for (index_t pos = 0; pos < max_len; ++pos)
            for (index_t c = 0; c < f; ++c) {
                const index_t two_i = c - c % 2;
                const double angle = double(pos) / std::pow(10000.0, double(two_i) / double(f));
                table_[size_t(pos * f + c)] = T(c % 2 == 0 ? std::sin(angle) : std::cos(angle));
            }
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }

    /// Nothing to initialise.
    void reset_parameters(philox_generator&) noexcept {}

    /// x (..., L, F) -> x + PE[:L], allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        detail::check_position_input(path_, "sinusoidal_positional_encoding input", x, max_len_,
                                     features_.value());
        const tensor_ref<const T> y = detail::add_position_table(cx, path_, x, table());
        saved_ = cx.training;
        x_extents_ = x.extents();
        return y;
    }

    /// dy (..., L, F) -> dx = dy.
    tensor_ref<const T> backward(step_context<T>&, tensor_ref<const T> dy) {
        detail::check_position_gradient(path_, "sinusoidal_positional_encoding", saved_, x_extents_,
                                        dy.extents());
        return dy;
    }

    /// The (max_len, F) table.
    tensor_ref<const T> table() const noexcept {
        return tensor_ref<const T>(table_.data(), extents{max_len_, features_.value()});
    }
    index_t max_len() const noexcept { return max_len_; }
    const std::string& path() const noexcept { return path_; }

private:
    index_t max_len_;
    [[no_unique_address]] dim<F> features_;
    std::vector<T> table_;
    std::string path_;
    extents x_extents_{};
    bool saved_ = false;
};

/// Learned absolute positional embedding (BERT, GPT-2 `wpe`, ViT `pos_embed`), added to x:
///   x (..., L, F) with L <= MaxLen -> y = x + weight[:L] (broadcast over the leading axes).
///   weight (MaxLen, F) ~ N(0, 1): `nn.Embedding`'s default, so the PyTorch twin is
///   `self.pos = nn.Embedding(MaxLen, F)` used as `x + self.pos.weight[:L]` (key
///   "pos.weight" under that name; ViT instead draws trunc_normal(std 0.02) — use
///   `init::trunc_normal{.std = 0.02}` on `weight().value` for that).
/// Backward: dx = dy (dy itself is returned); weight.grad[:L] += dy summed over the leading
/// axes (rows L .. MaxLen - 1 get nothing).
template <index_t MaxLen = dyn, index_t F = dyn, compute_type T = float>
class learned_positional_embedding {
public:
    using value_type = T;
    static constexpr index_t in_features = F;
    static constexpr index_t out_features = F;

    explicit learned_positional_embedding(dim<MaxLen> max_len = {}, dim<F> features = {})
        : max_len_(max_len), features_(features) {
        weight_.shape = extents{max_len_.value(), features_.value()};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("weight", weight_);
    }

    /// weight ~ N(0, 1) (`nn.Embedding`'s default).
    void reset_parameters(philox_generator& g) { init::normal{}(g, weight_.value); }

    /// x (..., L, F) -> x + weight[:L], allocated from the workspace.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        detail::check_position_input(path_, "learned_positional_embedding input", x,
                                     max_len_.value(), features_.value());
        const tensor_ref<const T> y = detail::add_position_table(cx, path_, x, weight_.value);
        saved_ = cx.training;
        x_extents_ = x.extents();
        return y;
    }

    /// dy (..., L, F) -> dx = dy; weight.grad[:L] += sum of dy over the leading axes.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        detail::check_position_gradient(path_, "learned_positional_embedding", saved_, x_extents_,
                                        dy.extents());
        const tensor_ref<T> g = weight_.grad.narrow(0, 0, dy.extent(-2));
        ops::reduce(cx.op(path_), ops::reduce_kind::sum, 0,
                    detail::as_sequence_rows(contiguous(cx, path_, dy)), g.reshape({g.numel()}),
                    true);
        return dy;
    }

    parameter<T>& weight() noexcept { return weight_; }
    index_t max_len() const noexcept { return max_len_.value(); }
    const std::string& path() const noexcept { return path_; }

private:
    [[no_unique_address]] dim<MaxLen> max_len_;
    [[no_unique_address]] dim<F> features_;
    parameter<T> weight_;
    std::string path_;
    extents x_extents_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::nn
