#pragma once
/// \file
/// `nn::embedding`: a lookup table of learned vectors (PyTorch `nn.Embedding`).

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/gather.hpp"

namespace mmfuse::inline v0::nn {

/// `torch.nn.Embedding(Num, F)`: y[..., :] = weight[indices[...], :].
///   indices: `tensor_ref<const std::int64_t>` of any shape S (rank < max_rank, any strides)
///   -> y of shape (*S, F) from the workspace. Runs as `ops::gather_rows` (forward) and
///   `ops::scatter_add_rows` (backward): one call for contiguous indices, else one per
///   row of the last axis of S.
///   weight (Num, F) ~ N(0, 1) (PyTorch name and default init).
/// Every index must lie in [0, Num): all are checked before anything is read, and an
/// out-of-range one throws `shape_error` naming the layer path, the position and the weight
/// shape (PyTorch raises IndexError). No `padding_idx` / `max_norm`.
///
/// Not a `differentiable_layer`: its input is integer, so `backward(cx, dy)` returns nothing
/// (there is no gradient for indices); it adds dy's rows into weight.grad (scatter-add,
/// repeated indices accumulate, as PyTorch's dense embedding gradient).
template <index_t Num = dyn, index_t F = dyn, compute_type T = float>
class embedding {
public:
    using value_type = T;
    static constexpr index_t num_embeddings = Num;
    static constexpr index_t out_features = F;

    explicit embedding(dim<Num> num_embeddings = {}, dim<F> features = {})
        : num_(num_embeddings), features_(features) {
        weight_.shape = extents{num_.value(), features_.value()};
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.parameter("weight", weight_);
    }

    /// PyTorch's `reset_parameters`: weight ~ N(0, 1).
    void reset_parameters(philox_generator& g) { init::normal{}(g, weight_.value); }

    /// indices (*S) -> y (*S, F), allocated from the workspace. Training mode keeps a view
    /// of `indices` for backward: the caller keeps that memory alive until then.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const std::int64_t> indices) {
        if (indices.rank() >= max_rank)
            throw shape_error(path_, "embedding indices",
                              "rank < " + std::to_string(max_rank) + " (one axis is appended)",
                              "shape " + indices.extents().to_string());
        check_indices(indices);
        const tensor_ref<T> y = cx.allocate(output_extents(indices.extents()));
        const tensor_ref<T> rows = as_rows(y);
        for_each_index_run(indices, [&](tensor_ref<const std::int64_t> run, index_t first) {
            ops::gather_rows(cx.op(path_), tensor_ref<const T>(weight_.value), run,
                             rows.narrow(0, first, run.extent(0)));
        });
        saved_ = cx.training;
        if (saved_) saved_indices_ = indices;
        return y;
    }

    /// dy (*S, F) -> nothing; adds dy's rows into weight.grad at the saved indices.
    void backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (!saved_)
            throw shape_error(path_, "embedding backward", "a training-mode forward first",
                              "no saved indices");
        const extents expected = output_extents(saved_indices_.extents());
        if (dy.extents() != expected)
            throw shape_error(path_, "embedding output gradient", "shape " + expected.to_string(),
                              "shape " + dy.extents().to_string());
        const tensor_ref<const T> rows = as_rows(contiguous(cx, path_, dy));
        for_each_index_run(saved_indices_, [&](tensor_ref<const std::int64_t> run, index_t first) {
            ops::scatter_add_rows(cx.op(path_), rows.narrow(0, first, run.extent(0)), run,
                                  weight_.grad);
        });
    }

    parameter<T>& weight() noexcept { return weight_; }
    const std::string& path() const noexcept { return path_; }

private:
    /// (*s, F) for indices of extents s (rank < max_rank, checked by forward).
    extents output_extents(const extents& s) const {
        std::array<index_t, max_rank> e{};
        for (int a = 0; a < s.rank(); ++a)
            e[size_t(a)] = s[a];
        e[size_t(s.rank())] = features_.value();
        return extents::from(std::span<const index_t>(e.data(), size_t(s.rank() + 1)));
    }

    /// Calls `f(run, first)` for rank-1 views `run` of `indices` that cover it in row-major
    /// order, `first` being the flat position of run's first entry: the whole of it when it
    /// is contiguous, else each row of its last axis (as a strided view).
    template <class Fn>
    static void for_each_index_run(tensor_ref<const std::int64_t> indices, Fn&& f) {
        if (indices.is_contiguous()) {
            f(indices.reshape(extents{indices.numel()}), index_t(0));
            return;
        }
        const index_t inner = indices.extent(-1);
        const std::array<index_t, 1> step{indices.stride(-1)};
        for_each_row<1>(indices.extents(), {indices.strides()},
                        [&](index_t row, const std::array<index_t, 1>& off) {
                            f(tensor_ref<const std::int64_t>(indices.data() + off[0],
                                                             extents{inner}, step, indices.space()),
                              row * inner);
                        });
    }

    /// Checks every index against [0, Num) before anything is read, naming its flat
    /// position in the whole of `indices` (the op's own check only sees one run of it).
    /// Indices in device memory cannot be read here and are left to the op.
    void check_indices(tensor_ref<const std::int64_t> indices) const {
        if (indices.numel() > 0 && indices.data() == nullptr)
            throw shape_error(path_, "embedding indices", "a view with data",
                              "a null view " + indices.describe());
        if (indices.space() != memory_space::host) return;
        const index_t num = num_.value();
        const ops::detail::bad_index b = ops::detail::find_bad_index(indices, num);
        if (b.position >= 0)
            throw shape_error(path_, "embedding index",
                              "indices in [0, " + std::to_string(num) + ") for weight " +
                                  weight_.shape.to_string(),
                              "index " + std::to_string(b.value) + " at flat position " +
                                  std::to_string(b.position) + " of indices " +
                                  indices.extents().to_string());
    }

    [[no_unique_address]] dim<Num> num_;
    [[no_unique_address]] dim<F> features_;
    parameter<T> weight_;
    std::string path_;
    tensor_ref<const std::int64_t> saved_indices_{};
    bool saved_ = false;
};

}  // namespace mmfuse::inline v0::nn
