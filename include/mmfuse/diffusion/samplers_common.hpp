#pragma once
/// \file
/// What every diffusion sampler shares: noise sources (Philox draws,
/// or noise supplied by the caller so that a trajectory replays exactly), the sampler's
/// state buffers (allocated once per sample shape, never per step), and `lincomb`, the
/// one update primitive: y = sum_i c_i x_i [+ s z] through `ops::combine`, so that every
/// sampler runs on any backend that implements that op.

#include <array>
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/random.hpp"

namespace mmfuse::inline v0::diffusion {

/// The noise a sampler adds at one draw: either explicit values (a view of the sample's
/// extents, from the caller) or a Philox draw evaluated inside `ops::combine`.
template <compute_type T>
struct noise_term {
    tensor_ref<const T> values{};  ///< explicit standard-normal values, or a null view
    ops::philox_draw draw{};       ///< used when `values` is null
    /// True when the draw is a view of values (`values`), false when it is a Philox stream.
    bool explicit_values() const noexcept { return values.data() != nullptr; }
};

/// A source of standard-normal noise: `n.next(e)` returns the next draw for a sample of
/// extents e. Samplers call `next` exactly where the reference implementation draws (this is
/// documented per sampler), so replaying a recorded sequence reproduces its trajectory.
template <class N, class T>
concept noise_source = compute_type<T> && requires(N& n, const extents& e) {
    { n.next(e) } -> std::same_as<noise_term<T>>;
};

/// Noise from a Philox generator: each draw is `ops::take_draw(gen, normal_words<T>(numel))`,
/// i.e. the numbers `fill_random` would write, computed inside the update op on any backend.
/// Two runs from equal generator states give bit-identical trajectories.
template <compute_type T>
class philox_noise {
public:
    explicit philox_noise(philox_generator& gen) noexcept : gen_(&gen) {}
    /// The next draw of e.numel() standard normals: reserves their Philox words in `gen`
    /// (advancing it) and returns them as a draw the update op generates.
    noise_term<T> next(const extents& e) {
        return {{}, ops::take_draw(*gen_, normal_words<T>(std::uint64_t(e.numel())))};
    }

private:
    philox_generator* gen_;
};

/// Noise replayed from a caller's sequence of views (draw k returns `seq[k]`). Throws
/// `value_error` when the sequence runs out and `shape_error` for a view of the wrong extents.
template <compute_type T>
class sequence_noise {
public:
    explicit sequence_noise(std::span<const tensor_ref<const T>> seq) noexcept : seq_(seq) {}
    noise_term<T> next(const extents& e) {
        if (used_ >= seq_.size())
            throw value_error("diffusion::sequence_noise",
                              "the sampler asked for noise draw " + std::to_string(used_) +
                                  " but only " + std::to_string(seq_.size()) + " were supplied");
        const tensor_ref<const T>& v = seq_[used_];
        if (v.extents() != e)
            throw shape_error("diffusion::sequence_noise", "noise draw " + std::to_string(used_),
                              "shape " + e.to_string(), "shape " + v.extents().to_string());
        ++used_;
        return {v, {}};
    }
    /// Number of draws taken so far.
    std::size_t used() const noexcept { return used_; }

private:
    std::span<const tensor_ref<const T>> seq_;
    std::size_t used_ = 0;
};

/// Noise written by a callable: `fill(k, out)` writes draw k (k = 0, 1, ...) into `out`, a
/// buffer of the sample's extents owned by this source (allocated at the first draw).
template <compute_type T, class Fill>
    requires std::invocable<Fill&, std::size_t, tensor_ref<T>>
class callback_noise {
public:
    explicit callback_noise(Fill fill) : fill_(std::move(fill)) {}
    /// Draw k (k = 0, 1, ...): `fill(k, buffer)` on this source's host buffer of extents `e`
    /// (reallocated when `e` changes); the returned term views that buffer until the next draw.
    noise_term<T> next(const extents& e);

private:
    Fill fill_;
    std::size_t used_ = 0;
    std::optional<arena> memory_;
    tensor_ref<T> buffer_{};
};

/// The source of deterministic samplers: any draw throws `value_error` (a stochastic setting
/// such as eta > 0 or s_churn > 0 needs a real source).
template <compute_type T>
struct no_noise {
    noise_term<T> next(const extents&) const {
        throw value_error("diffusion sampler",
                          "this sampler configuration draws noise: pass a noise source "
                          "(philox_noise, sequence_noise or callback_noise)");
    }
};

/// `count` buffers of one sample's extents, holding a sampler's state (history, the
/// denoised estimate, scratch). `ensure(e, count)` allocates them once, from an arena this
/// object owns (host memory), and does nothing while (e, count) stay the same; or
/// `allocate_from(a, e, count)` takes them from a caller's `workspace_allocator` (e.g. a
/// device arena). No allocation happens in a step once the buffers exist.
template <compute_type T>
class state_buffers {
public:
    static constexpr int max_buffers = 12;

    /// Makes sure `count` buffers of extents `e` exist (owned host arena).
    void ensure(const extents& e, int count) {
        if (count_ == count && shape_ == e && count > 0) return;
        check_count(count);
        const std::size_t one =
            (std::size_t(e.numel()) * sizeof(T) + host_alignment - 1) / host_alignment *
            host_alignment;
        own_.emplace(one * std::size_t(count) + host_alignment);
        take(*own_, e, count);
    }

    /// Takes `count` buffers of extents `e` from `a` (they live as long as `a`'s memory).
    template <workspace_allocator A>
    void allocate_from(A& a, const extents& e, int count) {
        check_count(count);
        own_.reset();
        take(a, e, count);
    }

    /// Buffer i, 0 <= i < count() (unchecked).
    tensor_ref<T> operator[](int i) const noexcept { return bufs_[std::size_t(i)]; }
    /// Exchanges buffers i and j (a history rotation without copying).
    void swap(int i, int j) noexcept { std::swap(bufs_[std::size_t(i)], bufs_[std::size_t(j)]); }
    /// Number of buffers held (0 before the first allocation).
    int count() const noexcept { return count_; }
    /// The extents of every buffer.
    const extents& shape() const noexcept { return shape_; }

private:
    static void check_count(int count) {
        if (count < 1 || count > max_buffers)
            throw value_error("diffusion::state_buffers",
                              "buffer count must be in [1, 12], got " + std::to_string(count));
    }
    template <class A>
    void take(A& a, const extents& e, int count) {
        for (int i = 0; i < count; ++i)
            bufs_[std::size_t(i)] = a.template allocate<T>(e);
        shape_ = e;
        count_ = count;
    }

    std::array<tensor_ref<T>, max_buffers> bufs_{};
    extents shape_{};
    int count_ = 0;
    std::optional<arena> own_;
};

template <compute_type T, class Fill>
    requires std::invocable<Fill&, std::size_t, tensor_ref<T>>
noise_term<T> callback_noise<T, Fill>::next(const extents& e) {
    if (buffer_.data() == nullptr || buffer_.extents() != e) {
        const std::size_t bytes = std::size_t(e.numel()) * sizeof(T) + host_alignment;
        memory_.reset();
        memory_.emplace(bytes);
        buffer_ = memory_->template allocate<T>(e);
    }
    fill_(used_++, buffer_);
    return {buffer_, {}};
}

/// k-diffusion's `get_ancestral_step`: the split of a step sigma -> sigma' into a
/// deterministic part down to sigma_down and fresh noise of std sigma_up:
/// sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
/// sigma_down = sqrt(sigma'^2 - sigma_up^2); eta = 0 gives (sigma', 0).
struct ancestral_split {
    double sigma_down;  ///< the level the deterministic (ODE) part steps to, <= sigma'
    double sigma_up;    ///< the std of the fresh noise added after it, >= 0
};
/// The split of the step sigma -> sigma_next (sigma > sigma_next >= 0) for noise amount
/// eta >= 0 (diffusers' Euler-ancestral uses eta = 1).
inline ancestral_split ancestral_step(double sigma, double sigma_next, double eta) {
    if (eta == 0.0) return {sigma_next, 0.0};
    const double up =
        std::min(sigma_next, eta * std::sqrt(sigma_next * sigma_next *
                                             (sigma * sigma - sigma_next * sigma_next) /
                                             (sigma * sigma)));
    return {std::sqrt(sigma_next * sigma_next - up * up), up};
}

namespace detail {

/// Rotates the ring of `count` history buffers starting at `first` by one, so that the
/// oldest becomes buffer `first` (to be overwritten by the newest); buffer first + k then
/// holds the entry written k steps ago.
template <compute_type T>
void rotate_history(state_buffers<T>& bufs, int first, int count) {
    for (int j = count - 1; j > 0; --j)
        bufs.swap(first + j, first + j - 1);
}

}  // namespace detail

/// Largest number of terms (inputs plus explicit noise) one `lincomb` accepts.
inline constexpr int max_lincomb_terms = 10;

/// y = sum_i c[i] x[i] + noise_scale z, with z from `noise` (explicit values or a Philox draw;
/// no noise when noise_scale == 0 or `noise` is null). Terms with a zero coefficient are
/// skipped (so an infinite or NaN input with weight 0 does not poison y). More terms than one
/// `ops::combine` takes are chained (y = y + ...); y may alias one of the first four inputs
/// exactly, never a later one. Throws `value_error` for too many terms or a bad alias.
template <compute_type T>
void lincomb(const ops::op_context& cx, tensor_ref<T> y, std::span<const tensor_ref<const T>> xs,
             std::span<const double> c, double noise_scale = 0.0,
             const noise_term<T>* noise = nullptr) {
    if (xs.size() != c.size())
        throw value_error(cx.module, "lincomb: " + std::to_string(xs.size()) + " inputs but " +
                                         std::to_string(c.size()) + " coefficients");
    std::array<tensor_ref<const T>, max_lincomb_terms> in{};
    std::array<double, max_lincomb_terms> w{};
    std::size_t n = 0;
    const auto push = [&](tensor_ref<const T> x, double k) {
        if (n == in.size())
            throw value_error(cx.module, "lincomb: more than " +
                                             std::to_string(max_lincomb_terms) + " terms");
        in[n] = x;
        w[n] = k;
        ++n;
    };
    for (std::size_t i = 0; i < xs.size(); ++i)
        if (c[i] != 0.0) push(xs[i], c[i]);
    const bool noisy = noise != nullptr && noise_scale != 0.0;
    if (noisy && noise->explicit_values()) push(noise->values, noise_scale);
    const bool draw = noisy && !noise->explicit_values();
    if (n == 0) {  // y = 0 (all weights zero): 0 * x_0 keeps the op shape rules
        if (xs.empty()) throw value_error(cx.module, "lincomb: no inputs");
        push(xs[0], 0.0);
    }
    constexpr std::size_t width = std::size_t(ops::max_combine_inputs);
    for (std::size_t k = width; k < n; ++k)
        if (in[k].data() == y.data())
            throw value_error(cx.module,
                              "lincomb: the output may alias only one of the first four terms");
    std::size_t first = std::min(n, width);
    const bool last_first = first == n;
    ops::combine<T>(cx, y, std::span(in.data(), first), std::span(w.data(), first),
                    draw && last_first ? noise_scale : 0.0,
                    draw && last_first ? noise->draw : ops::philox_draw{});
    while (first < n) {
        std::array<tensor_ref<const T>, width> more{};
        std::array<double, width> mw{};
        more[0] = y;
        mw[0] = 1.0;
        std::size_t m = 1;
        for (; m < width && first < n; ++m, ++first) {
            more[m] = in[first];
            mw[m] = w[first];
        }
        const bool last = first == n;
        ops::combine<T>(cx, y, std::span(more.data(), m), std::span(mw.data(), m),
                        draw && last ? noise_scale : 0.0, draw && last ? noise->draw : ops::philox_draw{});
    }
}

/// `lincomb` with braced lists: `lincomb(cx, x, {x, d}, {1.0, dt})`.
template <compute_type T>
void lincomb(const ops::op_context& cx, tensor_ref<T> y,
             std::initializer_list<tensor_ref<const std::type_identity_t<T>>> xs,
             std::initializer_list<double> c, double noise_scale = 0.0,
             const noise_term<T>* noise = nullptr) {
    lincomb<T>(cx, y, std::span(xs.begin(), xs.size()), std::span(c.begin(), c.size()),
               noise_scale, noise);
}

}  // namespace mmfuse::inline v0::diffusion
