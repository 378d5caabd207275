#pragma once
/// \file
/// Data-parallel contrastive heads: each of W ranks holds a local batch of b pairs, the
/// global batch is B = W b, and the heads reproduce the single-process `clip_loss` /
/// `siglip_loss` on the global batch under DDP's averaging (reference
/// ../shared/reference/contrastive.md sections 1.3 and 1.4).
///
/// * `communicator<C, T>`: the two collectives the heads need (all-gather and its backward,
///   a reduce-scatter sum). Any transport plugs in by satisfying the concept: an MPI
///   implementation maps them onto `MPI_Allgather` and `MPI_Reduce_scatter_block` (MPI_SUM),
///   an NCCL one onto `ncclAllGather` and `ncclReduceScatter` (ncclSum) on the step's stream;
///   both lay the gathered rows out rank-major, as below.
/// * `local_group<T>`: an in-process emulation of W ranks on W `std::thread`s (host memory),
///   deterministic, for tests and for single-machine experiments.
/// * `distributed_clip_loss<T, Comm>`: open_clip `ClipLoss` with `local_loss` and
///   `gather_with_grad` (default: both true, the setting of every released open_clip run).
/// * `distributed_siglip_loss<T, Comm>`: open_clip `SigLipLoss` across ranks (images stay,
///   text blocks travel, negative-only blocks).
///
/// Equivalence (what the tests check): with DDP, a rank's parameter gradient is the mean over
/// ranks, so if every rank back-propagates its head's embedding gradients through its own
/// encoders, the effective gradient is (1/W) sum_r (that rank's gradient). For the default
/// settings: mean_r loss_r = global loss; the embedding gradient rank r returns, divided by
/// W, equals rows [r b, (r + 1) b) of the global gradient; mean_r dl_r/dtheta (and dl_r/dbias)
/// equals the global one.

#include <algorithm>
#include <atomic>
#include <barrier>
#include <concepts>
#include <cstddef>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/nn/module.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/loss.hpp"

namespace mmfuse::inline v0::contrastive {

/// The collectives of one rank in a group of `world_size()` ranks, for element type T.
///   rank()        this rank's index r in [0, W)
///   world_size()  W >= 1
///   all_gather(who, local, global)
///       local (b, D) -> global (W b, D): rows [k b, (k + 1) b) of `global` are rank k's
///       `local` (rank-major), on every rank; every rank passes the same b and D.
///   reduce_scatter_sum(who, global, local)
///       global (W b, D) -> local (b, D) = sum over ranks k of rows [r b, (r + 1) b) of rank
///       k's `global`: the backward of `all_gather` (torch.distributed.nn.all_gather).
/// `who` is the calling module's path; a shape mismatch (also across ranks, where the
/// transport can see it) throws `shape_error` naming it. Collectives are called by every rank
/// in the same order. Implementations may require a memory space (local_group: host).
template <class C, class T>
concept communicator = compute_type<T> &&
    requires(C& c, std::string_view who, tensor_ref<const T> in, tensor_ref<T> out) {
    { c.rank() } -> std::convertible_to<index_t>;
    { c.world_size() } -> std::convertible_to<index_t>;
    c.all_gather(who, in, out);
    c.reduce_scatter_sum(who, in, out);
};

/// W ranks emulated in one process: `run(fn)` calls fn(endpoint&) for every rank on its own
/// std::thread; the endpoints meet at a `std::barrier` inside each collective and read one
/// another's host memory directly. Deterministic: `reduce_scatter_sum` adds the ranks' blocks
/// in rank order 0, 1, ..., W - 1, accumulating in double, so a rank's result does not depend
/// on thread timing.
/// Failure handling: a rank whose fn throws leaves the group; the ranks still inside a
/// collective then throw `backend_error` ("another rank left the group") instead of waiting
/// forever, and `run` rethrows the exception of the lowest rank that failed on its own (a
/// cross-rank shape mismatch is detected identically by every rank, so all throw the same
/// `shape_error`). A rank returning while others still call collectives is reported the same
/// way. Host memory only.
template <compute_type T>
class local_group {
public:
    /// One rank's communicator; satisfies `communicator<endpoint, T>`. Valid during `run`.
    class endpoint {
    public:
        index_t rank() const noexcept { return rank_; }
        index_t world_size() const noexcept { return group_->world_size_; }

        /// See `communicator`. local (b, D), global (W b, D), host memory.
        void all_gather(std::string_view who, tensor_ref<const T> local, tensor_ref<T> global) {
            exchange(who, "all_gather", local, global, [&] {
                const index_t b = local.extent(0);
                for (index_t k = 0; k < world_size(); ++k) {
                    const tensor_ref<const T> src = group_->slots_[std::size_t(k)].in;
                    for (index_t i = 0; i < b; ++i)
                        for (index_t j = 0; j < local.extent(1); ++j)
                            global(k * b + i, j) = src(i, j);
                }
            });
        }

        /// See `communicator`. global (W b, D), local (b, D), host memory.
        void reduce_scatter_sum(std::string_view who, tensor_ref<const T> global,
                                tensor_ref<T> local) {
            exchange(who, "reduce_scatter_sum", global, local, [&] {
                const index_t b = local.extent(0);
                for (index_t i = 0; i < b; ++i)
                    for (index_t j = 0; j < local.extent(1); ++j) {
                        double sum = 0.0;
                        for (index_t k = 0; k < world_size(); ++k)
                            sum += double(group_->slots_[std::size_t(k)].in(rank_ * b + i, j));
                        local(i, j) = T(sum);
                    }
            });
        }

    private:
        friend class local_group;
        endpoint(local_group* g, index_t r) : group_(g), rank_(r) {}

        /// The protocol of both collectives: post this rank's operands, meet, validate every
        /// rank's operands identically (so that all ranks throw or none does), `move` the
        /// data, meet again (so that no rank reuses an input another is still reading).
        template <class Move>
        void exchange(std::string_view who, const char* op, tensor_ref<const T> in,
                      tensor_ref<T> out, Move&& move) {
            if (in.space() != memory_space::host || out.space() != memory_space::host)
                throw backend_error(
                    who, std::string("local_group ") + op + ": operands must be in host memory");
            group_->slots_[std::size_t(rank_)] = {in, out.extents()};
            group_->meet(who, true);
            group_->validate(who, op);
            move();
            group_->meet(who, false);
        }

        local_group* group_;
        index_t rank_;
    };

    /// A group of `world_size` >= 1 ranks (throws `value_error` otherwise).
    explicit local_group(index_t world_size) : world_size_(world_size) {
        if (world_size < 1)
            throw value_error("local_group",
                              "world_size must be >= 1, got " + std::to_string(world_size));
    }
    local_group(const local_group&) = delete;
    local_group& operator=(const local_group&) = delete;

    index_t world_size() const noexcept { return world_size_; }

    /// Runs fn(endpoint&) once per rank, rank r on its own thread with the endpoint of rank r,
    /// and returns when all have finished; rethrows a rank's exception (see the class).
    template <class Fn>
    void run(Fn&& fn) {
        const std::size_t w = std::size_t(world_size_);
        barrier_ = std::make_unique<std::barrier<>>(std::ptrdiff_t(world_size_));
        broken_.store(false);
        slots_.assign(w, {});
        std::vector<std::exception_ptr> own(w), peer(w);
        {
            std::vector<std::jthread> threads;
            threads.reserve(w);
            for (std::size_t r = 0; r < w; ++r)
                threads.emplace_back([&, r] {
                    endpoint e(this, index_t(r));
                    try {
                        fn(e);
                    } catch (const left_group&) {
                        peer[r] = std::current_exception();
                    } catch (...) {
                        own[r] = std::current_exception();
                    }
                    // Leaving: later phases no longer wait for this rank; a rank still in a
                    // collective sees `broken_` when its phase completes.
                    broken_.store(true);
                    barrier_->arrive_and_drop();
                });
        }
        for (const auto* list : {&own, &peer})
            for (const std::exception_ptr& p : *list)
                if (p) std::rethrow_exception(p);
    }

private:
    /// Thrown in a rank whose peer left the group mid-collective.
    struct left_group : backend_error {
        using backend_error::backend_error;
    };

    /// What a rank posts for a collective: its input view and its output's extents.
    struct slot {
        tensor_ref<const T> in{};
        extents out{};
    };

    /// Waits for every rank. With `check` (the first meeting of a collective), throws if a
    /// rank has left; the second meeting cannot check: a rank that finished its last
    /// collective may already have left, legitimately.
    void meet(std::string_view who, bool check) {
        barrier_->arrive_and_wait();
        if (check && broken_.load())
            throw left_group(who,
                             "local_group: another rank left the group during a "
                             "collective (it failed, or called fewer collectives)");
    }

    /// Every rank's input has rank 2 and the same extents as rank 0's; every rank's output
    /// has the extents the collective implies. Identical on every rank; formats a message
    /// only on a mismatch.
    void validate(std::string_view who, const char* op) const {
        const bool gather = std::string_view(op) == "all_gather";
        const extents& first = slots_[0].in.extents();
        for (index_t k = 0; k < world_size_; ++k) {
            const slot& s = slots_[std::size_t(k)];
            if (s.in.rank() != 2 || s.in.extents() != first) mismatch(who, op, k, false);
            const index_t rows = gather ? first[0] * world_size_ : first[0] / world_size_;
            if ((!gather && first[0] % world_size_ != 0) || s.out != extents{rows, first[1]})
                mismatch(who, op, k, true);
        }
    }

    /// The `shape_error` of `validate` for rank k's input or output.
    [[noreturn, gnu::cold, gnu::noinline]] void mismatch(std::string_view who, const char* op,
                                                         index_t k, bool output) const {
        const extents& first = slots_[0].in.extents();
        const slot& s = slots_[std::size_t(k)];
        std::string what = op;
        what += output ? " output" : " input";
        what += " on rank ";
        what += std::to_string(k);
        if (!output)
            throw shape_error(who, what,
                              "a (rows, D) batch of shape " + first.to_string() + " as on rank 0",
                              "shape " + s.in.extents().to_string());
        const bool gather = std::string_view(op) == "all_gather";
        const extents want{gather ? first[0] * world_size_ : first[0] / world_size_, first[1]};
        throw shape_error(
            who, what, "shape " + want.to_string() + " for world size " + std::to_string(world_size_),
            "shape " + s.out.to_string());
    }

    index_t world_size_;
    std::unique_ptr<std::barrier<>> barrier_;
    std::atomic<bool> broken_{false};
    std::vector<slot> slots_;
};

namespace detail {

/// (b, D) -> (W b, D) in the workspace through `comm.all_gather`.
template <compute_type T, communicator<T> Comm>
tensor_ref<const T> gather_rows(nn::step_context<T>& cx, Comm& comm, std::string_view path,
                                tensor_ref<const T> local) {
    const tensor_ref<T> global =
        cx.allocate({local.extent(0) * index_t(comm.world_size()), local.extent(1)});
    comm.all_gather(path, local, global);
    return global;
}

/// (W b, D) -> (b, D) in the workspace through `comm.reduce_scatter_sum`.
template <compute_type T, communicator<T> Comm>
tensor_ref<const T> scatter_rows(nn::step_context<T>& cx, Comm& comm, std::string_view path,
                                 tensor_ref<const T> global) {
    const tensor_ref<T> local =
        cx.allocate({global.extent(0) / index_t(comm.world_size()), global.extent(1)});
    comm.reduce_scatter_sum(path, global, local);
    return local;
}

/// a + b in the workspace; either may be empty (null data), then the other is returned.
template <compute_type T>
tensor_ref<const T> sum(nn::step_context<T>& cx, std::string_view path, tensor_ref<const T> a,
                        tensor_ref<const T> b) {
    if (a.data() == nullptr) return b;
    if (b.data() == nullptr) return a;
    const tensor_ref<T> y = cx.allocate(a.extents());
    ops::add(cx.op(path), a, b, y);
    return y;
}

}  // namespace detail

/// How `distributed_clip_loss` distributes CLIP (open_clip `ClipLoss` flags). Effective
/// gradient under DDP compared with single-process `clip_loss` on the global batch
/// (contrastive.md 1.3; each row is tested):
///
///   local_loss  gather_with_grad  effective gradient
///   true        true   (default)  identical to global
///   false       true              identical to global
///   false       false             embedding gradients = global / W, dl/dtheta = global
///                                 (harmless under Adam-type optimisers)
///   true        false             not equivalent: rank r's loss gives no gradient to the
///                                 gathered features (its own included)
struct clip_distribution {
    /// true: rank r's queries are its b local rows against the B gathered ones (b x B
    /// logits, targets r b + i); false: every rank computes the full B x B global loss.
    bool local_loss = true;
    /// true: the gathered features carry gradient back to their ranks (reduce-scatter sum);
    /// false: a plain all_gather (under `local_loss = false` the local rows keep their
    /// gradient through their own slot, as open_clip re-inserts them).
    bool gather_with_grad = true;
};

/// CLIP's symmetric InfoNCE on one rank of a data-parallel group (open_clip `ClipLoss` with
/// its `local_loss` / `gather_with_grad` flags; Radford et al. 2021). With the default
/// `local_loss`, rank r forms s I_r T_all^T and s T_r I_all^T (b x B each) with targets
/// arange(b) + r b and returns l_r = (mean over its b image rows + mean over its b text rows)
/// / 2; mean_r l_r is the global `clip_loss`.
///   forward:  image, text (b, D) local unit rows -> l_r (the same b and D on every rank)
///   backward: -> {d image (b, D), d text (b, D)}: with `gather_with_grad` (default), the
///             gradient of sum_k l_k with respect to this rank's embeddings (reduce-
///             scattered), so that DDP's mean over ranks gives the global gradient; without
///             it, the gradient of l_r through the local rows only (effective gradient: the
///             table of `clip_distribution`); adds dl_r/dtheta into "logit_scale".grad
/// Parameter: "logit_scale" as `clip_loss`. The communicator must outlive the head; every
/// rank calls forward and backward the same number of times (they run collectives).
/// Cost: b x B logits twice per rank (B x B twice with `local_loss = false`).
template <compute_type T, communicator<T> Comm>
class distributed_clip_loss {
public:
    using value_type = T;

    explicit distributed_clip_loss(Comm& comm, clip_distribution how = {},
                                   logit_scale_options scale = {})
        : comm_(&comm), how_(how), scale_(scale) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        scale_.visit(v);
    }
    void reset_parameters(philox_generator& g) { scale_.reset_parameters(g); }

    /// This rank's loss l_r (see the class). Runs two all-gathers.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text) {
        expect_matched_batch(path_, "distributed_clip_loss", image, text);
        image_all_ = detail::gather_rows(cx, *comm_, path_, image);
        text_all_ = detail::gather_rows(cx, *comm_, path_, text);
        const tensor_ref<const T> image_q = how_.local_loss ? image : image_all_;
        const tensor_ref<const T> text_q = how_.local_loss ? text : text_all_;
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::softmax_cross_entropy;
        d.targets = ops::loss_targets::diagonal;
        d.target_offset = how_.local_loss ? index_t(comm_->rank()) * image.extent(0) : 0;
        d.scale = scale_.scale();
        d.grad_scale = 0.5 / double(image_q.extent(0));
        image_to_text_.similarities(cx, path_, image_q, text_all_);
        text_to_image_.similarities(cx, path_, text_q, image_all_);
        return image_to_text_.pass(cx, path_, d, direction::rows, {}, cx.training) +
               text_to_image_.pass(cx, path_, d, direction::rows, {}, cx.training);
    }

    /// Embedding gradients of the last training-mode forward (runs two reduce-scatters when
    /// `gather_with_grad`).
    pair_gradients<T> backward(nn::step_context<T>& cx) {
        const pair_gradients<T> i2t = image_to_text_.backward(cx, path_);  // d image_q, d text_all
        const pair_gradients<T> t2i = text_to_image_.backward(cx, path_);  // d text_q, d image_all
        const double d_scale = i2t.d_scale + t2i.d_scale;
        scale_.add_gradient(d_scale);
        return {local_gradient(cx, i2t.da, t2i.db), local_gradient(cx, t2i.da, i2t.db), d_scale,
                0.0};
    }

    /// open_clip's post-step clamp of theta (call after every optimiser step, on every rank).
    void clamp() { scale_.clamp(); }
    /// The temperature: theta = log s ("logit_scale").
    contrastive::logit_scale<T>& logit_scale() noexcept { return scale_; }
    /// The `local_loss` / `gather_with_grad` settings given at construction.
    const clip_distribution& distribution() const noexcept { return how_; }

private:
    /// Gradient of this rank's embeddings of one modality from d_query (the gradient of the
    /// query side: the local rows, or the gathered rows without `local_loss`) and d_gathered
    /// (the gradient of the gathered rows used as keys), per the table above.
    tensor_ref<const T> local_gradient(nn::step_context<T>& cx, tensor_ref<const T> d_query,
                                       tensor_ref<const T> d_gathered) {
        tensor_ref<const T> direct{};
        if (how_.local_loss)
            direct = d_query;
        else
            d_gathered = detail::sum(cx, path_, d_query, d_gathered);
        tensor_ref<const T> through_gather{};
        if (how_.gather_with_grad)
            through_gather = detail::scatter_rows(cx, *comm_, path_, d_gathered);
        else if (!how_.local_loss) {
            const index_t b = d_gathered.extent(0) / index_t(comm_->world_size());
            through_gather = d_gathered.narrow(0, index_t(comm_->rank()) * b, b);
        }
        return detail::sum(cx, path_, direct, through_gather);
    }

    Comm* comm_;
    clip_distribution how_;
    contrastive::logit_scale<T> scale_;
    pairwise_logits<T> image_to_text_, text_to_image_;
    tensor_ref<const T> image_all_{}, text_all_{};
    std::string path_;
};

/// SigLIP's pairwise sigmoid loss on one rank of a data-parallel group (open_clip
/// `SigLipLoss` with `dist_impl="gather"`; Zhai et al. 2023). Images stay, text blocks
/// travel: rank r computes the b x b loss of its images against its own texts (positives on
/// the diagonal) plus, for every other rank k, the negative-only loss (all targets 0,
/// `ops::loss_targets::none`) of its images against rank k's text block, each divided by the local
/// b:  l_r = (1/b) sum_k sum_ij softplus(-z_ij (s I_r T_k^T + bias)_ij).  mean_r l_r is the
/// global `siglip_loss`.
/// The text blocks are obtained with one all-gather; open_clip's other schedules ("bidir",
/// "shift", "reduce") exchange the same blocks by neighbour sends or all-reduces and give
/// identical results, but need a point-to-point primitive the `communicator` does not have
/// (they bound the memory to two blocks instead of W). The gradient of the text blocks goes
/// back to their ranks by a reduce-scatter sum (rank r's own block included).
///   forward:  image, text (b, D) local unit rows -> l_r (the same b and D on every rank)
///   backward: -> {d image (b, D), d text (b, D)} (gradients of sum_k l_k, as for
///             `distributed_clip_loss`); adds into "logit_scale".grad and "logit_bias".grad
/// Parameters: "logit_scale", "logit_bias" as `siglip_loss`.
template <compute_type T, communicator<T> Comm>
class distributed_siglip_loss {
public:
    using value_type = T;

    explicit distributed_siglip_loss(Comm& comm,
                                     logit_scale_options scale = {.init = siglip_init_log_scale},
                                     double init_bias = siglip_init_bias)
        : comm_(&comm), scale_(scale), bias_(init_bias) {}

    template <class V>
    void visit(V& v) {
        v.path(path_);
        scale_.visit(v);
        bias_.visit(v);
    }
    void reset_parameters(philox_generator& g) {
        scale_.reset_parameters(g);
        bias_.reset_parameters(g);
    }

    /// This rank's loss l_r (see the class). Runs one all-gather.
    double forward(nn::step_context<T>& cx, tensor_ref<const T> image, tensor_ref<const T> text) {
        expect_matched_batch(path_, "distributed_siglip_loss", image, text);
        const index_t b = image.extent(0);
        const index_t rank = index_t(comm_->rank());
        const tensor_ref<const T> text_all = detail::gather_rows(cx, *comm_, path_, text);
        blocks_.resize(std::size_t(comm_->world_size()));
        ops::logit_loss_desc d;
        d.kind = ops::logit_loss_kind::sigmoid_binary;
        d.scale = scale_.scale();
        d.bias = bias_.value();
        d.grad_scale = 1.0 / double(b);
        double loss = 0.0;
        for (index_t k = 0; k < index_t(blocks_.size()); ++k) {
            d.targets = k == rank ? ops::loss_targets::diagonal : ops::loss_targets::none;
            blocks_[std::size_t(k)].similarities(cx, path_, image, text_all.narrow(0, k * b, b));
            loss += blocks_[std::size_t(k)].pass(cx, path_, d, direction::rows, {}, cx.training);
        }
        return loss;
    }

    /// Embedding gradients of the last training-mode forward (runs one reduce-scatter).
    pair_gradients<T> backward(nn::step_context<T>& cx) {
        if (blocks_.empty())
            throw shape_error(path_, "contrastive backward", "a forward pass with gradient first",
                              "none");
        pair_gradients<T> out;
        tensor_ref<T> d_text_all{};
        tensor_ref<T> d_image{};
        for (std::size_t k = 0; k < blocks_.size(); ++k) {
            const pair_gradients<T> g = blocks_[k].backward(cx, path_);
            const index_t b = g.db.extent(0);
            if (k == 0) {
                d_text_all = cx.allocate({b * index_t(blocks_.size()), g.db.extent(1)});
                d_image = cx.allocate(g.da.extents());
                ops::copy(cx.op(path_), g.da, d_image);
            } else {
                ops::add(cx.op(path_), tensor_ref<const T>(d_image), g.da, d_image);
            }
            ops::copy(cx.op(path_), g.db, d_text_all.narrow(0, index_t(k) * b, b));
            out.d_scale += g.d_scale;
            out.d_bias += g.d_bias;
        }
        out.da = d_image;
        out.db = detail::scatter_rows(cx, *comm_, path_, tensor_ref<const T>(d_text_all));
        scale_.add_gradient(out.d_scale);
        bias_.add_gradient(out.d_bias);
        return out;
    }

    /// open_clip's post-step clamp of theta (call after every optimiser step, on every rank).
    void clamp() { scale_.clamp(); }
    /// The temperature: theta = log s ("logit_scale").
    contrastive::logit_scale<T>& logit_scale() noexcept { return scale_; }
    /// The additive bias b ("logit_bias").
    contrastive::logit_bias<T>& logit_bias() noexcept { return bias_; }

private:
    Comm* comm_;
    contrastive::logit_scale<T> scale_;
    contrastive::logit_bias<T> bias_;
    std::vector<pairwise_logits<T>> blocks_;  // block k: local images x rank k's texts
    std::string path_;
};

}  // namespace mmfuse::inline v0::contrastive
