#pragma once
/// \file
/// Learning-rate schedules: `optim::cosine_with_warmup`.

#include <cmath>
#include <numbers>
#include <string>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0::optim {

/// Linear warm-up from 0, then a half cosine from `base_lr` down to `min_lr`
/// (Loshchilov & Hutter's SGDR without restarts; HuggingFace's
/// `get_cosine_schedule_with_warmup` when min_lr = 0). For step s = 0, 1, 2, ...:
///
///     s <  W:       lr(s) = base_lr * s / W
///     W <= s < S:   lr(s) = min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2
///     s >= S:       lr(s) = min_lr
///
/// with W = warmup_steps, S = total_steps. Use `opt.set_lr(sched(s))` before the s-th
/// optimiser step (so the very first step has lr 0 when W > 0, as with PyTorch's LambdaLR).
/// Throws `value_error` unless 0 <= warmup_steps <= total_steps, 0 <= min_lr <= base_lr.
struct cosine_with_warmup {
    double base_lr;
    index_t warmup_steps;
    index_t total_steps;
    double min_lr = 0.0;

    cosine_with_warmup(double base, index_t warmup, index_t total, double min = 0.0)
        : base_lr(base), warmup_steps(warmup), total_steps(total), min_lr(min) {
        if (warmup < 0 || total < warmup)
            throw value_error("optim::cosine_with_warmup",
                              "expected 0 <= warmup_steps <= total_steps, got warmup_steps " +
                                  std::to_string(warmup) + " and total_steps " +
                                  std::to_string(total));
        if (!(min >= 0.0 && min <= base))
            throw value_error("optim::cosine_with_warmup",
                              "expected 0 <= min_lr <= base_lr, got min_lr " + std::to_string(min) +
                                  " and base_lr " + std::to_string(base));
    }

    /// The learning rate of step `s` (s < 0 is treated as 0).
    double operator()(index_t s) const noexcept {
        if (s < 0) s = 0;
        if (s < warmup_steps) return base_lr * double(s) / double(warmup_steps);
        if (s >= total_steps) return min_lr;
        const double progress = double(s - warmup_steps) / double(total_steps - warmup_steps);
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
};

}  // namespace mmfuse::inline v0::optim
