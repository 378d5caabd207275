#pragma once
/// \file
/// `nn::dropout`: inverted dropout (Srivastava et al. 2014; PyTorch `nn.Dropout`) with a
/// counter-based, replayable Philox mask (DESIGN decision 9).

#include <cstdint>
#include <string>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::nn {

/// `torch.nn.Dropout(p)`: in training, y = x * m with m_i = 1 / (1 - p) where element i is
/// kept and 0 where it is dropped (probability p); in evaluation y = x (the input view is
/// returned as is). p = 1 gives zeros, p = 0 the identity (as in PyTorch). No parameters.
///   x any shape -> y the same shape. Width-preserving (no in/out features declared).
///
/// The mask of training step k is a pure function of (seed, subsequence, k, i), identical
/// on every device: with `s = philox_stream::from_seed(seed, subsequence)` and
/// `base = k * words_per_step` (= k << 32),
///
///     u_i  = uniform_at<T>(s, base, i)           // i = row-major logical index in x
///     keep = double(u_i) >= p
///
/// i.e. element i gets the i-th uniform `fill_uniform` would draw from
/// `philox_generator(seed, subsequence, k << 32)` — what `generator(k)` returns. A step
/// owns 2^32 words, so x may have at most 2^32 (float) or 2^31 (double) elements; steps
/// wrap after 2^32. Every training forward uses step `step()` and then, unless
/// `set_auto_advance(false)`, advances it by one (a held step replays the same mask, as a
/// gradient check needs). Replay a run with `set_seed(seed, subsequence)` + `set_step(k)`.
///
/// `reset_parameters(g)` draws the layer's 64-bit seed from the model's generator (two
/// words) and sets step 0, so every dropout of a model gets its own stream, reproducible
/// from the model seed; `set_seed` afterwards overrides it.
/// Training forward keeps the scaled mask in the workspace; backward: dx = dy * m.
template <compute_type T = float>
class dropout {
public:
    using value_type = T;
    /// Philox words reserved per training step (the mask of step k starts at word k << 32).
    static constexpr std::uint64_t words_per_step = std::uint64_t(1) << 32;

    /// Dropout with drop probability `p`; throws `value_error` unless 0 <= p <= 1
    /// (PyTorch raises ValueError).
    explicit dropout(double p = 0.5) : p_(p) {
        if (!(p >= 0.0 && p <= 1.0))
            throw value_error("nn::dropout",
                              "expected a drop probability p in [0, 1], got " + std::to_string(p));
    }

    template <class V>
    void visit(V& v) {
        v.path(path_);
    }

    /// Draws the mask seed from `g` (two words: low word first) and rewinds to step 0.
    void reset_parameters(philox_generator& g) {
        const std::uint64_t lo = g.next_u32();
        const std::uint64_t hi = g.next_u32();
        seed_ = lo | (hi << 32);
        subsequence_ = 0;
        step_ = 0;
    }

    /// x (any shape) -> y: x * m in training (workspace), x itself in evaluation.
    tensor_ref<const T> forward(step_context<T>& cx, tensor_ref<const T> x) {
        if (!cx.training) {
            saved_ = saved::none;
            return x;
        }
        x_extents_ = x.extents();
        const std::uint64_t k = step_;
        if (auto_advance_) ++step_;
        if (p_ == 0.0) {
            saved_ = saved::identity;
            return x;
        }
        if (uniform_words<T>(std::uint64_t(x.numel())) > words_per_step)
            throw shape_error(path_, "dropout input",
                              "at most " + std::to_string(words_per_step / words_per_uniform<T>) +
                                  " elements (one Philox step)",
                              "shape " + x.extents().to_string());
        const tensor_ref<T> mask = cx.allocate(x.extents());
        philox_generator g = generator(k);
        const double p = p_;
        const T keep = p_ < 1.0 ? T(1.0 / (1.0 - p_)) : T(0);
        mmfuse::detail::fill_with_uniforms(g, mask, path_,
                                           [p, keep](T u) { return double(u) >= p ? keep : T(0); });
        const tensor_ref<T> y = cx.allocate(x.extents());
        ops::binary(cx.op(path_), ops::binary_kind::mul, x, mask, y);
        mask_ = mask;
        saved_ = saved::mask;
        return y;
    }

    /// dy (x's shape) -> dx = dy * m (dy itself when p = 0). Throws `shape_error` without a
    /// training-mode forward or when dy's shape is not x's.
    tensor_ref<const T> backward(step_context<T>& cx, tensor_ref<const T> dy) {
        if (saved_ == saved::none)
            throw shape_error(path_, "dropout backward", "a training-mode forward first",
                              "no saved mask");
        if (dy.extents() != x_extents_)
            throw shape_error(path_, "dropout output gradient", "shape " + x_extents_.to_string(),
                              "shape " + dy.extents().to_string());
        if (saved_ == saved::identity) return dy;
        const tensor_ref<T> dx = cx.allocate(x_extents_);
        ops::binary(cx.op(path_), ops::binary_kind::mul, dy, mask_, dx);
        return dx;
    }

    /// Drop probability.
    double p() const noexcept { return p_; }
    std::uint64_t seed() const noexcept { return seed_; }
    std::uint64_t subsequence() const noexcept { return subsequence_; }
    /// The step the next training forward uses.
    std::uint64_t step() const noexcept { return step_; }
    bool auto_advance() const noexcept { return auto_advance_; }

    /// Selects the mask stream (replay, or distinct streams chosen by the caller).
    void set_seed(std::uint64_t seed, std::uint64_t subsequence = 0) noexcept {
        seed_ = seed;
        subsequence_ = subsequence;
    }
    /// The next training forward uses step `k`.
    void set_step(std::uint64_t k) noexcept { step_ = k; }
    /// Whether a training forward advances the step (default true).
    void set_auto_advance(bool on) noexcept { auto_advance_ = on; }
    /// The generator whose `fill_uniform` draws step k's uniforms: (seed, subsequence,
    /// offset k << 32).
    philox_generator generator(std::uint64_t k) const noexcept {
        return philox_generator(seed_, subsequence_, k * words_per_step);
    }
    const std::string& path() const noexcept { return path_; }

private:
    enum class saved : unsigned char { none, identity, mask };

    double p_;
    std::uint64_t seed_ = 0;
    std::uint64_t subsequence_ = 0;
    std::uint64_t step_ = 0;
    bool auto_advance_ = true;
    std::string path_;
    saved saved_ = saved::none;
    extents x_extents_{};
    tensor_ref<const T> mask_{};
};

}  // namespace mmfuse::inline v0::nn
