#pragma once
/// \file
/// The op vocabulary: one plain descriptor struct per op, gathered in the `op_desc` variant.
///
/// A descriptor holds only the op's parameters (flags, axis, eps, ...); the tensors travel
/// next to it as spans of `any_tensor_ref` in a fixed order documented on each struct
/// ("in:" and "out:"). Descriptors are cheap values: backends may key caches on them
/// (oneDNN keeps primitive descriptors per op key) and `supports()` answers per
/// descriptor. Front-end functions in `mmfuse/ops/*.hpp` validate every shape before a
/// backend sees the op, so backends may assume valid input.

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/error.hpp"

namespace mmfuse::inline v0::ops {

/// Point-wise activations (PyTorch semantics).
enum class unary_kind : std::uint8_t {
    relu,       ///< max(x, 0); derivative 0 at x = 0 (PyTorch)
    gelu_erf,   ///< x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); `nn.GELU()`
    gelu_tanh,  ///< 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); `nn.GELU('tanh')`
    silu,       ///< x * sigmoid(x); `nn.SiLU`
    sigmoid,    ///< 1 / (1 + exp(-x))
    tanh,       ///< tanh(x)
};

/// Element-wise binary operations.
enum class binary_kind : std::uint8_t {
    add,  ///< a + b
    sub,  ///< a - b
    mul,  ///< a * b
};

/// Reductions over one axis.
enum class reduce_kind : std::uint8_t { sum, mean };

/// What a matmul applies to alpha * op(A) op(B) + beta * C before writing C: nothing, a bias
/// row added (bias (N), broadcast over rows and batch), or the bias then an activation — the
/// fused epilogues of cuBLASLt (`CUBLASLT_EPILOGUE_BIAS`, `_RELU_BIAS`, `_GELU_BIAS`, whose
/// GELU is the tanh approximation) and oneDNN post-ops.
enum class matmul_epilogue : std::uint8_t {
    none,            ///< C = alpha op(A) op(B) + beta C
    bias,            ///< ... + bias
    bias_relu,       ///< relu(... + bias)
    bias_gelu_tanh,  ///< gelu_tanh(... + bias)  (`nn.GELU(approximate='tanh')`)
};

/// Distributions of `fill_random_desc`.
enum class random_kind : std::uint8_t {
    uniform,  ///< U[a, b)
    normal,   ///< N(mean a, std b)
};

/// Where Philox draws come from (core/philox.hpp): the word stream (seed, subsequence),
/// starting at word `offset`. Element i of an output in row-major logical order gets
/// `uniform_at<T>(stream, offset, i)` or `normal_at<T>(stream, offset, i)` (T = double for
/// f64 outputs, float otherwise), so every backend draws the same numbers for the same
/// element — bit-identical uniforms, normals up to the device's log/sin/cos ulps.
struct philox_draw {
    std::uint64_t seed = 0;
    std::uint64_t subsequence = 0;
    std::uint64_t offset = 0;
    friend bool operator==(const philox_draw&, const philox_draw&) = default;
};

/// C = alpha * op(A) op(B) + beta * C, batched.
/// in:  a (M, K) or (B, M, K) [(K, M) / (B, K, M) if transpose_a],
///      b (K, N) or (B, K, N) [(N, K) / (B, N, K) if transpose_b];
///      a rank-2 operand broadcasts over the batch of the other.
/// out: c (M, N) or (B, M, N); read as well when beta != 0.
/// With an epilogue other than `none`, a third input bias (N) follows b, and
/// C = act(alpha * op(A) op(B) + beta * C + bias).
struct matmul_desc {
    bool transpose_a = false;
    bool transpose_b = false;
    double alpha = 1.0;
    double beta = 0.0;
    matmul_epilogue epilogue = matmul_epilogue::none;
    friend bool operator==(const matmul_desc&, const matmul_desc&) = default;
};

/// y = x + bias, bias broadcast over every axis but the last.
/// in: x (..., N), bias (N).  out: y (..., N) (may be the same memory as x).
struct bias_add_desc {
    friend bool operator==(const bias_add_desc&, const bias_add_desc&) = default;
};

/// y = softmax(scale * x) over the last axis, positions excluded where a mask is false or
/// (with `causal`) above the shifted diagonal.
/// in: x (..., Lq, N) [, mask1 (..., N) bool [, mask2 (..., N) bool]] — `masks` (0, 1 or 2)
///     keep-masks (true = keep), ANDed, each possibly a broadcast view of x's extents.
/// out: y (..., N). With `causal`, row i of the last-but-one axis keeps only the columns
/// j <= i + causal_offset (offset 0: PyTorch's `is_causal` / SDPA top-left alignment), with
/// no mask memory. A row with nothing kept yields zeros (never NaN).
struct softmax_desc {
    double scale = 1.0;
    std::uint8_t masks = 0;
    bool causal = false;
    index_t causal_offset = 0;
    friend bool operator==(const softmax_desc&, const softmax_desc&) = default;
};

/// dx = scale * y * (dy - sum(dy * y)) over the last axis (masked entries of y are 0, so
/// their gradient is 0).  in: y (..., N), dy (..., N).  out: dx (..., N).
struct softmax_backward_desc {
    double scale = 1.0;
    friend bool operator==(const softmax_backward_desc&, const softmax_backward_desc&) = default;
};

/// Layer normalisation over the last axis (`nn.LayerNorm(N, eps)`, biased variance).
/// in: x (..., N) [, gamma (N) if affine [, beta (N) if bias]].
/// out: y (..., N), mean (R), rstd (R) where R = numel / N (saved for backward).
struct layer_norm_desc {
    double eps = 1e-5;
    bool affine = true;
    bool bias = true;
    friend bool operator==(const layer_norm_desc&, const layer_norm_desc&) = default;
};

/// Backward of `layer_norm_desc`.
/// in: x (..., N), dy (..., N), mean (R), rstd (R) [, gamma (N) if affine].
/// out: dx (..., N) [, dgamma (N) if affine [, dbeta (N) if bias]].
/// Parameter gradients are added to the outputs when `accumulate`, else overwritten.
struct layer_norm_backward_desc {
    bool affine = true;
    bool bias = true;
    bool accumulate = false;
    friend bool operator==(const layer_norm_backward_desc&,
                           const layer_norm_backward_desc&) = default;
};

/// RMS normalisation over the last axis: y = x / sqrt(mean(x^2) + eps) * gamma
/// (`nn.RMSNorm(N, eps)`). in: x (..., N) [, gamma (N) if affine]. out: y (..., N), rstd (R).
struct rms_norm_desc {
    double eps = 1e-6;
    bool affine = true;
    friend bool operator==(const rms_norm_desc&, const rms_norm_desc&) = default;
};

/// Backward of `rms_norm_desc`.
/// in: x (..., N), dy (..., N), rstd (R) [, gamma (N)].  out: dx (..., N) [, dgamma (N)].
struct rms_norm_backward_desc {
    bool affine = true;
    bool accumulate = false;
    friend bool operator==(const rms_norm_backward_desc&, const rms_norm_backward_desc&) = default;
};

/// y = f(x) element-wise.  in: x.  out: y (same extents; may be the same memory as x).
struct unary_desc {
    unary_kind kind = unary_kind::relu;
    friend bool operator==(const unary_desc&, const unary_desc&) = default;
};

/// dx = f'(x) * dy element-wise.  in: x, dy.  out: dx (same extents).
struct unary_backward_desc {
    unary_kind kind = unary_kind::relu;
    friend bool operator==(const unary_backward_desc&, const unary_backward_desc&) = default;
};

/// y = a (op) b element-wise; a and b are views broadcast (NumPy rules, stride 0) to y's
/// extents by the front-end.  in: a, b (y's extents).  out: y (may be the memory of a or b).
struct binary_desc {
    binary_kind kind = binary_kind::add;
    friend bool operator==(const binary_desc&, const binary_desc&) = default;
};

/// y[r, :] = table[indices[r], :] (embedding lookup).
/// in: table (N, F), indices (R) of int64 (validated in [0, N) by the front-end).
/// out: y (R, F).
struct gather_rows_desc {
    friend bool operator==(const gather_rows_desc&, const gather_rows_desc&) = default;
};

/// grad[indices[r], :] += dy[r, :] (embedding backward; repeated indices add up).
/// in: dy (R, F), indices (R) of int64.  out: grad (N, F), accumulated into.
struct scatter_add_rows_desc {
    friend bool operator==(const scatter_add_rows_desc&, const scatter_add_rows_desc&) = default;
};

/// Sum or mean over `axis`.  in: x.  out: y with `axis` removed or kept with extent 1.
/// With `accumulate`, the result is added to y (y += reduce(x)), as bias gradients need.
struct reduce_desc {
    reduce_kind kind = reduce_kind::sum;
    int axis = -1;
    bool accumulate = false;
    friend bool operator==(const reduce_desc&, const reduce_desc&) = default;
};

/// Concatenation along `axis`.  in: x0 ... xn-1 (equal extents except on axis).  out: y.
struct concat_desc {
    int axis = -1;
    friend bool operator==(const concat_desc&, const concat_desc&) = default;
};

/// Split along `axis` (the inverse of concat).  in: x.  out: y0 ... yn-1.
struct split_desc {
    int axis = -1;
    friend bool operator==(const split_desc&, const split_desc&) = default;
};

/// y = x with any strides on either side; converts between f32, f64, bf16 and f16.
/// in: x.  out: y (same extents).
struct copy_desc {
    friend bool operator==(const copy_desc&, const copy_desc&) = default;
};

/// Fused scaled-dot-product attention with FlashAttention semantics (Dao et al., NeurIPS
/// 2022; Dao, "FlashAttention-2", 2023), the math of `torch.nn.functional.
/// scaled_dot_product_attention`:
///   S = scale * Q K^T, with S_ij = -inf where masked;  P = softmax_j(S);  O = P V;
///   lse_i = log sum_j exp(S_ij)  (natural log, saved for the backward pass).
/// Position (i, j) is masked where `keep` is false (when `masked`) or, with `causal`, where
/// j > i + causal_offset (offset 0: SDPA's `is_causal`, top-left aligned; Lk - Lq: aligned at
/// the bottom right, as for decoding with a cache). A row with nothing kept gets O = 0 and
/// lse = -inf (never NaN).
/// in:  q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv)
///      [, keep (B, H, Lq, Lk) bool when `masked` — usually a broadcast view, e.g. a key-padding
///      mask (B, 1, 1, Lk) expanded with stride 0].
/// out: o (B, H, Lq, Dv), lse (B, H, Lq) — lse is f32 for bf16/f16 inputs, else q's dtype.
/// Any strides (e.g. heads split out of a (B, L, H*D) projection without a copy).
struct attention_desc {
    double scale = 1.0;
    bool causal = false;
    index_t causal_offset = 0;
    bool masked = false;
    friend bool operator==(const attention_desc&, const attention_desc&) = default;
};

/// Backward of `attention_desc` (FlashAttention-2 recomputation from lse).
/// in:  q, k, v, o, do (B, H, Lq, Dv), lse [, keep when forward.masked].
/// out: dq, dk, dv (extents of q, k, v; overwritten).
struct attention_backward_desc {
    attention_desc forward;
    friend bool operator==(const attention_backward_desc&,
                           const attention_backward_desc&) = default;
};

/// Fills y with Philox random numbers (see `philox_draw`): U[a, b) for `uniform`
/// (`uniform_in`), a + b * z for `normal`. in: none.  out: y (any strides).
/// The draw uses `uniform_words<T>(numel)` / `normal_words<T>(numel)` words from
/// `draw.offset` on; the caller advances its offset by that much.
struct fill_random_desc {
    random_kind kind = random_kind::normal;
    double a = 0.0;
    double b = 1.0;
    philox_draw draw{};
    friend bool operator==(const fill_random_desc&, const fill_random_desc&) = default;
};

/// Throws `value_error` naming `module` unless `d`'s parameters are valid: finite a <= b for
/// `uniform`, finite mean a and finite std b >= 0 for `normal`. The one statement of the rule,
/// checked by the `ops::fill_random` front-end and by backends on direct `execute` calls.
inline void check_parameters(const fill_random_desc& d, std::string_view module) {
    const bool uniform = d.kind == random_kind::uniform;
    const bool ok = uniform ? std::isfinite(d.a) && std::isfinite(d.b) && d.a <= d.b
                            : std::isfinite(d.a) && std::isfinite(d.b) && d.b >= 0.0;
    if (ok) return;
    std::string msg = uniform ? "fill_random uniform: expected finite a <= b, got a = "
                              : "fill_random normal: expected a finite mean a and a finite "
                                "std b >= 0, got a = ";
    msg += std::to_string(d.a);
    msg += ", b = ";
    msg += std::to_string(d.b);
    throw value_error(module, msg);
}

/// Maximum number of inputs of `combine_desc`.
inline constexpr int max_combine_inputs = 4;

/// y = coeff[0] x_0 + ... + coeff[n-1] x_{n-1}  [+ noise_scale * z], evaluated left to right in
/// the compute type, z ~ N(0, 1) drawn as by `fill_random_desc{normal, 0, 1, noise}` (skipped
/// entirely when noise_scale == 0). One pass over memory: the fused update of a diffusion
/// sampler step (DDIM, Euler, DPM-Solver++ multistep, ancestral noise).
/// in: x_0 ... x_{n-1}, 1 <= n <= max_combine_inputs (y's extents; may be broadcast views).
/// out: y (may be the same memory as an input).
struct combine_desc {
    std::array<double, max_combine_inputs> coeff{};
    double noise_scale = 0.0;
    philox_draw noise{};
    friend bool operator==(const combine_desc&, const combine_desc&) = default;
};

/// y = x / max(||x||_2, eps) over the last axis (`F.normalize(x, dim=-1, eps=eps)`).
/// in: x (..., N).  out: y (..., N), norm (R) = ||x||_2 per row, R = numel / N (saved for
/// backward). y may be the same memory as x.
struct l2_normalize_desc {
    double eps = 1e-12;
    friend bool operator==(const l2_normalize_desc&, const l2_normalize_desc&) = default;
};

/// Backward of `l2_normalize_desc` from its output: dx = (dy - (dy . y) y) / norm where
/// norm > eps, else dy / eps (the denominator is the constant eps there, as in PyTorch).
/// in: y (..., N), dy (..., N), norm (R).  out: dx (..., N) (may be the memory of dy).
struct l2_normalize_backward_desc {
    double eps = 1e-12;
    friend bool operator==(const l2_normalize_backward_desc&,
                           const l2_normalize_backward_desc&) = default;
};

/// The per-row loss `logit_loss_desc` evaluates on the logits z = scale * x + bias.
enum class logit_loss_kind : std::uint8_t {
    /// l_r = (sum_j y_rj) LSE_j(z_rj) - sum_j y_rj z_rj  (cross-entropy with soft targets;
    /// `F.cross_entropy` for one-hot rows);  dl/dz = (sum_j y_rj) softmax(z_r) - y_r.
    softmax_cross_entropy,
    /// l_r = sum_j softplus(z_rj) - y_rj z_rj  (`F.binary_cross_entropy_with_logits`, summed
    /// over the row);  dl/dz = sigmoid(z) - y.
    sigmoid_binary,
};

/// Where the targets y of `logit_loss_desc` come from.
enum class loss_targets : std::uint8_t {
    diagonal,  ///< y_rj = 1 if j == r + target_offset else 0 (a row whose target column is
               ///< outside [0, C) has none); no target memory
    dense,     ///< a second input y (R, C)
    none,      ///< y = 0 (SigLIP's negative-only blocks)
};

/// Fused loss and gradient over a logits matrix: the B x B (or b x N) core of every
/// contrastive objective (CLIP, SigLIP, multi-positive, NegCLIP, HN-NCE, distillation).
/// Logits z = scale * x + bias; targets y as `targets` says.
/// With `kind = softmax_cross_entropy` and diagonal targets, `hn_alpha` / `hn_beta` turn the
/// row into HN-NCE (Radenovic et al. 2023, arXiv 2301.02280), t = r + target_offset:
///   l_r = log(alpha e^{z_t} + sum_{j!=t} w_j e^{z_j}) - z_t,
///   w_j = (C - 1) e^{beta z_j} / sum_{k!=t} e^{beta z_k};
/// alpha = 1, beta = 0 is plain cross-entropy, alpha = 0, beta = 0 is DCL / InfoLOOB. With
/// `hn_weights_in_graph` the gradient flows through w, else w is treated as a constant
/// (detached). Everything is evaluated in log-sum-exp form (stable for |z| up to ~1e3).
/// in: x (R, C) [, y (R, C) if targets == dense]; any strides (a transposed view gives the
///     column direction).
/// out: row_loss (R) = l_r;  and, when `gradient`:
///      dx (R, C) = grad_scale * scale * dl/dz  (added to dx when `accumulate`),
///      row_stats (R, 2) = { sum_j g_rj x_rj, sum_j g_rj } with g = grad_scale * dl/dz,
///      so dl/dscale = sum_r row_stats[r][0] and dl/dbias = sum_r row_stats[r][1].
struct logit_loss_desc {
    logit_loss_kind kind = logit_loss_kind::softmax_cross_entropy;
    loss_targets targets = loss_targets::diagonal;
    index_t target_offset = 0;
    double scale = 1.0;
    double bias = 0.0;
    double grad_scale = 1.0;
    bool gradient = true;
    bool accumulate = false;
    double hn_alpha = 1.0;
    double hn_beta = 0.0;
    bool hn_weights_in_graph = false;
    friend bool operator==(const logit_loss_desc&, const logit_loss_desc&) = default;
};

/// Whether `d` asks for HN-NCE weighting (anything but alpha = 1, beta = 0, detached): the
/// one predicate front-ends, backends and heads use.
constexpr bool uses_hn_nce(const logit_loss_desc& d) noexcept {
    return d.hn_alpha != 1.0 || d.hn_beta != 0.0 || d.hn_weights_in_graph;
}

/// Throws `value_error` naming `module` unless the HN-NCE settings of `d` are usable on rows
/// of `cols` logits: softmax_cross_entropy with diagonal targets, finite alpha >= 0, finite
/// beta, cols >= 2 (one negative). Does nothing when `!uses_hn_nce(d)`.
inline void check_hn_nce(std::string_view module, const logit_loss_desc& d, index_t cols) {
    if (!uses_hn_nce(d)) return;
    const auto refuse = [&](const std::string& why) {
        std::string message = "HN-NCE: ";
        message += why;
        throw value_error(module, message);
    };
    if (d.kind != logit_loss_kind::softmax_cross_entropy)
        refuse("hn_alpha / hn_beta apply to softmax_cross_entropy only");
    if (d.targets != loss_targets::diagonal) refuse("needs diagonal targets");
    if (!(d.hn_alpha >= 0.0) || !std::isfinite(d.hn_alpha))
        refuse("alpha (hn_alpha) must be finite and >= 0, got " + std::to_string(d.hn_alpha));
    if (!std::isfinite(d.hn_beta))
        refuse("beta (hn_beta) must be finite, got " + std::to_string(d.hn_beta));
    if (cols < 2)
        refuse("needs at least 2 columns (one negative), got " + std::to_string(cols));
}

/// Every op a backend may be asked to execute.
using op_desc =
    std::variant<matmul_desc, bias_add_desc, softmax_desc, softmax_backward_desc, layer_norm_desc,
                 layer_norm_backward_desc, rms_norm_desc, rms_norm_backward_desc, unary_desc,
                 unary_backward_desc, binary_desc, reduce_desc, concat_desc, split_desc, copy_desc,
                 gather_rows_desc, scatter_add_rows_desc, attention_desc,
                 attention_backward_desc, fill_random_desc, combine_desc, l2_normalize_desc,
                 l2_normalize_backward_desc, logit_loss_desc>;

/// Human-readable op name for errors and benchmark labels ("matmul", "softmax_backward").
constexpr std::string_view op_name(const op_desc& op) noexcept {
    constexpr std::string_view names[] = {"matmul",
                                          "bias_add",
                                          "softmax",
                                          "softmax_backward",
                                          "layer_norm",
                                          "layer_norm_backward",
                                          "rms_norm",
                                          "rms_norm_backward",
                                          "unary",
                                          "unary_backward",
                                          "binary",
                                          "reduce",
                                          "concat",
                                          "split",
                                          "copy",
                                          "gather_rows",
                                          "scatter_add_rows",
                                          "attention",
                                          "attention_backward",
                                          "fill_random",
                                          "combine",
                                          "l2_normalize",
                                          "l2_normalize_backward",
                                          "logit_loss"};
    static_assert(std::size(names) == std::variant_size_v<op_desc>);
    return names[op.index()];
}

/// How many tensors an op takes and writes; `variadic` means "one or more" (concat inputs,
/// split outputs, at most 16 through the front-ends).
struct operand_counts {
    static constexpr int variadic = -1;
    int inputs;
    int outputs;
};

/// The operand counts `op` implies — the single source of truth backends check against,
/// so that a direct `stream::execute` call with a wrong count is refused before any kernel
/// indexes past the end of a span.
constexpr operand_counts operand_count(const op_desc& op) noexcept {
    struct visitor {
        constexpr operand_counts operator()(const matmul_desc& d) const {
            return {2 + int(d.epilogue != matmul_epilogue::none), 1};
        }
        constexpr operand_counts operator()(const bias_add_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const softmax_desc& d) const {
            return {1 + int(d.masks), 1};
        }
        constexpr operand_counts operator()(const softmax_backward_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const layer_norm_desc& d) const {
            return {1 + d.affine + (d.affine && d.bias), 3};
        }
        constexpr operand_counts operator()(const layer_norm_backward_desc& d) const {
            return {4 + d.affine, 1 + d.affine + (d.affine && d.bias)};
        }
        constexpr operand_counts operator()(const rms_norm_desc& d) const {
            return {1 + d.affine, 2};
        }
        constexpr operand_counts operator()(const rms_norm_backward_desc& d) const {
            return {3 + d.affine, 1 + d.affine};
        }
        constexpr operand_counts operator()(const unary_desc&) const { return {1, 1}; }
        constexpr operand_counts operator()(const unary_backward_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const binary_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const reduce_desc&) const { return {1, 1}; }
        constexpr operand_counts operator()(const concat_desc&) const {
            return {operand_counts::variadic, 1};
        }
        constexpr operand_counts operator()(const split_desc&) const {
            return {1, operand_counts::variadic};
        }
        constexpr operand_counts operator()(const copy_desc&) const { return {1, 1}; }
        constexpr operand_counts operator()(const gather_rows_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const scatter_add_rows_desc&) const { return {2, 1}; }
        constexpr operand_counts operator()(const attention_desc& d) const {
            return {3 + int(d.masked), 2};
        }
        constexpr operand_counts operator()(const attention_backward_desc& d) const {
            return {6 + int(d.forward.masked), 3};
        }
        constexpr operand_counts operator()(const fill_random_desc&) const { return {0, 1}; }
        constexpr operand_counts operator()(const combine_desc&) const {
            return {operand_counts::variadic, 1};
        }
        constexpr operand_counts operator()(const l2_normalize_desc&) const { return {1, 2}; }
        constexpr operand_counts operator()(const l2_normalize_backward_desc&) const {
            return {3, 1};
        }
        constexpr operand_counts operator()(const logit_loss_desc& d) const {
            return {1 + int(d.targets == loss_targets::dense), d.gradient ? 3 : 1};
        }
    };
    return std::visit(visitor{}, op);
}

/// Name of an activation ("relu", "gelu_erf", ...).
constexpr std::string_view unary_name(unary_kind k) noexcept {
    switch (k) {
        case unary_kind::relu:
            return "relu";
        case unary_kind::gelu_erf:
            return "gelu_erf";
        case unary_kind::gelu_tanh:
            return "gelu_tanh";
        case unary_kind::silu:
            return "silu";
        case unary_kind::sigmoid:
            return "sigmoid";
        case unary_kind::tanh:
            return "tanh";
    }
    return "?";
}

}  // namespace mmfuse::inline v0::ops
