#pragma once
/// \file
/// oneDNN plans of `attention_desc` and `attention_backward_desc` (f32): the score matrix is
/// materialised, the products run as batched `dnnl::matmul` primitives over (B, H) and the
/// row-wise parts (mask, softmax, lse, dS) are short host loops over contiguous scratch rows.
///
/// Forward, per chunk of the batch axis (S: scratch (b, H, Lq, Lk), rows contiguous):
///     S = Q K^T                          (matmul; K^T is a stride swap)
///     per row: S_ij = scale S_ij, -inf where masked;  m = max_j S_ij;  e_ij = exp(S_ij - m);
///              l = sum_j e_ij;  lse_i = m + log l;  P_ij = e_ij / l    (in place in S)
///              (nothing kept: P row = 0, lse = -inf — never NaN)
///     O = P V                            (matmul, written straight into o with its strides)
/// Backward (FlashAttention-2 algebra, materialised; dP: a second scratch of S's shape):
///     S = Q K^T;  P_ij = exp(scale S_ij - lse_i) (0 where masked or lse_i = -inf)
///     dV = P^T dO;  dP = dO V^T                                   (matmuls)
///     dS_ij = scale P_ij (dP_ij - D_i),  D_i = dO_i . O_i          (host loop, in place in dP)
///     dQ = dS K;  dK = dS^T Q                                     (matmuls; scale folded in dS)
/// Q, K, V, O, dO and the outputs may have any strides (heads split out of a (B, L, H*D)
/// projection without a copy) and stride-0 batch axes (oneDNN broadcasts them); the keep-mask
/// is read through its strides (usually a stride-0 broadcast view).
///
/// The batch axis is processed in chunks of `b` entries (the largest divisor of B whose score
/// scratch stays under `attention_chunk_bytes`), so S stays cache-sized and scratch does not
/// grow with B. Declined (the op falls back to Eigen): dtypes other than f32, empty extents,
/// operands that do not fit together, written outputs with stride-0 axes, a single batch
/// entry whose score scratch exceeds `attention_scratch_limit` (256 MiB: very long
/// sequences), or a layout for which oneDNN offers only its reference matmul.
/// Host loops use a branch-free exp (`exp_f32`) so g++ -O3 vectorises them. Implementation
/// detail of the oneDNN backend.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/backend/onednn/matmul.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

/// Most bytes of score scratch (S, and dP for the backward) one batch entry may need; larger
/// problems decline to the fallback.
inline constexpr std::size_t attention_scratch_limit = std::size_t(256) << 20;
/// Target bytes of score scratch per batch chunk (cache-sized: S is written by one matmul,
/// swept by the host loop and read by the next matmul while it is still cached).
inline constexpr std::size_t attention_chunk_bytes = std::size_t(2) << 20;

constexpr float neg_inf_f = -std::numeric_limits<float>::infinity();

/// The host loops below select and compare through bit patterns, not float comparisons: g++
/// does not if-convert float compares under its default -ftrapping-math, which would leave
/// the loops scalar.

/// `a` where `mask` is all ones, `b` where it is zero.
inline float select_f32(std::uint32_t mask, float a, float b) noexcept {
    return std::bit_cast<float>((std::bit_cast<std::uint32_t>(a) & mask) |
                                (std::bit_cast<std::uint32_t>(b) & ~mask));
}

/// All ones when `c`, else zero.
constexpr std::uint32_t mask_of(bool c) noexcept {
    return std::uint32_t(0) - std::uint32_t(c);
}

/// An integer whose signed order is the order of the (non-NaN) float `x`, and its inverse.
inline std::int32_t order_key(float x) noexcept {
    const std::int32_t i = std::bit_cast<std::int32_t>(x);
    return i ^ ((i >> 31) & 0x7fffffff);
}
inline float from_order_key(std::int32_t k) noexcept {
    return std::bit_cast<float>(k ^ ((k >> 31) & 0x7fffffff));
}

/// e^x in f32 for |x| < 88 (Cephes expf polynomial: relative error about 2 ulp); 0 for
/// x <= -88 and for -inf; x >= 88 is clamped to e^88 (finite: the callers' arguments are
/// <= 0 up to rounding, so the clamp only guards against garbage exponents). No branch or
/// library call, so loops over it vectorise.
inline float exp_f32(float x) noexcept {
    constexpr float round_magic = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
    constexpr std::uint32_t minus_88 = 0xC2B00000u;  // bits of -88.0f; larger bits: x < -88
    constexpr std::int32_t plus_88 = 0x42B00000;     // bits of 88.0f; larger (signed): x > 88
    const float xl = select_f32(mask_of(std::bit_cast<std::uint32_t>(x) > minus_88),
                                std::bit_cast<float>(minus_88), x);
    const float xc = select_f32(mask_of(std::bit_cast<std::int32_t>(xl) > plus_88),
                                std::bit_cast<float>(plus_88), xl);
    const float t = xc * 1.44269504088896341f + round_magic;
    const float n = t - round_magic;  // round(x / ln 2), >= -127
    const std::int32_t ni =
        std::bit_cast<std::int32_t>(t) - std::bit_cast<std::int32_t>(round_magic);
    const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2, two-part ln 2
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * std::bit_cast<float>((ni + 127) << 23);  // 2^n; n = -127 gives 0
}

/// Lanes of the partial sums of `row_exp_sum` (one AVX register of f32).
inline constexpr int row_lanes = 8;

/// max_j s[j] over n entries (-inf when n = 0; entries not NaN).
inline float row_max(const float* s, index_t n) noexcept {
    std::int32_t m = order_key(neg_inf_f);
    for (index_t j = 0; j < n; ++j) {
        const std::int32_t k = order_key(s[j]);
        m = k > m ? k : m;
    }
    return from_order_key(m);
}

/// s[j] = exp(s[j] - shift) over n entries; returns their sum (f32, lane-wise partial sums).
inline float row_exp_sum(float* s, index_t n, float shift) noexcept {
    float acc[row_lanes] = {};
    index_t j = 0;
    for (; j + row_lanes <= n; j += row_lanes)
        for (int l = 0; l < row_lanes; ++l) {
            s[j + l] = exp_f32(s[j + l] - shift);
            acc[l] += s[j + l];
        }
    float sum = 0.0f;
    for (int l = 0; l < row_lanes; ++l)
        sum += acc[l];
    for (; j < n; ++j) {
        s[j] = exp_f32(s[j] - shift);
        sum += s[j];
    }
    return sum;
}

/// Scales one score row by `scale` and sets masked entries to -inf: columns j >= `end`
/// (causal) and, when `keep` is set, those whose keep[j * keep_step] is false.
inline void mask_row(float* s, index_t lk, index_t end, float scale, const bool* keep,
                     index_t keep_step) noexcept {
    const auto* kept = reinterpret_cast<const unsigned char*>(keep);  // bytes vectorise
    if (!keep)
        for (index_t j = 0; j < end; ++j)
            s[j] *= scale;
    else if (keep_step == 1)
        for (index_t j = 0; j < end; ++j)
            s[j] = select_f32(mask_of(kept[j] != 0), scale * s[j], neg_inf_f);
    else
        for (index_t j = 0; j < end; ++j)
            s[j] = select_f32(mask_of(kept[j * keep_step] != 0), scale * s[j], neg_inf_f);
    for (index_t j = end; j < lk; ++j)
        s[j] = neg_inf_f;
}

/// Number of leading keys query row i may see (as `eigen::detail::visible_keys`): Lk, or
/// under `causal` the columns j <= i + causal_offset, clamped to [0, Lk].
inline index_t attention_visible_keys(const ops::attention_desc& d, index_t i, index_t lk) {
    if (!d.causal || d.causal_offset >= lk - i) return lk;
    return d.causal_offset < -i ? 0 : i + d.causal_offset + 1;
}

/// The problem size of attention operands q, k, v [, keep] and the checks shared by both
/// directions.
struct attention_shape {
    index_t batch, heads, lq, lk, d, dv;

    /// The shape, or nothing when the operands do not fit together (rank 4, k (B, H, Lk, D),
    /// v (B, H, Lk, Dv), keep bool (B, H, Lq, Lk)), are not all f32 or have an empty extent.
    static std::optional<attention_shape> of(const ops::attention_desc& desc,
                                             std::span<const any_tensor_ref> in,
                                             std::span<const any_tensor_ref> out) {
        const extents &q = in[0].extents(), &k = in[1].extents(), &v = in[2].extents();
        if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4) return std::nullopt;
        if (k != extents{q[0], q[1], k[2], q[3]} || v != extents{q[0], q[1], k[2], v[3]})
            return std::nullopt;
        if (desc.masked) {
            const any_tensor_ref& keep = in[in.size() - 1];
            if (keep.type() != dtype::boolean || keep.extents() != extents{q[0], q[1], q[2], k[2]})
                return std::nullopt;
        }
        const std::size_t floats = in.size() - std::size_t(desc.masked);
        for (std::size_t i = 0; i < floats; ++i)
            if (in[i].type() != dtype::f32) return std::nullopt;
        for (const any_tensor_ref& t : out)
            if (t.type() != dtype::f32 || has_broadcast(t)) return std::nullopt;
        const attention_shape s{q[0], q[1], q[2], k[2], q[3], v[3]};
        if (s.batch == 0 || s.heads == 0 || s.lq == 0 || s.lk == 0 || s.d == 0 || s.dv == 0)
            return std::nullopt;
        // The other operands: forward o, lse; backward o, do, lse in and dq, dk, dv out.
        const extents o{s.batch, s.heads, s.lq, s.dv}, lse{s.batch, s.heads, s.lq};
        const bool fit = out.size() == 2 ? out[0].extents() == o && out[1].extents() == lse
                                         : in[3].extents() == o && in[4].extents() == o &&
                                               in[5].extents() == lse && out[0].extents() == q &&
                                               out[1].extents() == k && out[2].extents() == v;
        if (!fit) return std::nullopt;
        return s;
    }

    /// Entries of one batch entry's (H, Lq, Lk) score matrix.
    std::size_t scores_per_batch() const { return std::size_t(heads * lq * lk); }

    /// Batch entries per chunk for `buffers` score-sized scratch buffers: the largest divisor
    /// of B under `attention_chunk_bytes` (at least 1); 0 when one entry exceeds
    /// `attention_scratch_limit`.
    index_t chunk(std::size_t buffers) const {
        const std::size_t per_batch = buffers * scores_per_batch() * sizeof(float);
        if (per_batch > attention_scratch_limit) return 0;
        index_t best = 1;
        for (index_t c = 1; c <= batch; ++c)
            if (batch % c == 0 && std::size_t(c) * per_batch <= attention_chunk_bytes) best = c;
        return best;
    }
};

/// `t` (rank 4, f32) restricted to its first `n` batch entries (read-only view).
inline any_tensor_ref batch_chunk(const any_tensor_ref& t, index_t n) {
    return t.as<const float>().narrow(0, 0, n);
}

/// Descriptor-only view (no data) of a contiguous (n, H, rows, cols) scratch matrix.
inline any_tensor_ref scratch_view(index_t n, index_t heads, index_t rows, index_t cols) {
    return tensor_ref<const float>(nullptr, extents{n, heads, rows, cols});
}

/// One batched product C = op(A) op(B) of an attention plan over one batch chunk, bound once:
/// A, B read through `matmul_operand_desc` (strides kept, transposes as stride swaps), C
/// written with its own strides. Its oneDNN scratchpad lives at the `pad` pointer given to
/// each call (shared by the plan's matmuls, which run one after another).
class chunk_matmul {
public:
    /// Builds the primitive; false when oneDNN offers only its reference implementation.
    bool build(const any_tensor_ref& a, bool transpose_a, const any_tensor_ref& b, bool transpose_b,
               const any_tensor_ref& c, const build_context& bx) {
        const memory::desc a_md = matmul_operand_desc(a, 4, transpose_a);
        const memory::desc b_md = matmul_operand_desc(b, 4, transpose_b);
        const memory::desc c_md = desc_of(c);
        const auto pd = compat::matmul_pd(*bx.engine, a_md, b_md, c_md, base_attr(bx));
        if (is_reference_impl(pd)) return false;
        scratchpad = scratchpad_bytes(pd);
        prim_ = bound_primitive(dnnl::matmul(pd));
        prim_.bind(DNNL_ARG_SRC, a_md, *bx.engine);
        prim_.bind(DNNL_ARG_WEIGHTS, b_md, *bx.engine);
        prim_.bind(DNNL_ARG_DST, c_md, *bx.engine);
        prim_.bind(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), *bx.engine);
        return true;
    }

    void operator()(const run_context& cx, std::byte* pad, const float* a, const float* b,
                    float* c) {
        prim_(*cx.stream, a, b, c, pad);
    }

    /// Bytes of oneDNN scratchpad the primitive needs.
    std::size_t scratchpad = 0;

private:
    bound_primitive prim_;
};

/// Pointer to batch entry `b0` of a rank-4 f32 operand.
inline float* batch_at(const any_tensor_ref& t, index_t b0) {
    return static_cast<float*>(t.data()) + b0 * t.strides()[0];
}

/// Row-loop addressing of one plan (strides only: data pointers change between runs): row r
/// of a chunk starting at batch b0 is query i of head h of batch b, with its keep-mask row and
/// its lse element.
struct attention_rows {
    index_t heads, lq;
    bool masked;
    std::array<index_t, 4> keep_stride{};
    std::array<index_t, 3> lse_stride{};

    attention_rows(const attention_shape& s, const ops::attention_desc& d,
                   std::span<const any_tensor_ref> in, const any_tensor_ref& lse)
        : heads(s.heads), lq(s.lq), masked(d.masked) {
        for (std::size_t a = 0; a < 3; ++a)
            lse_stride[a] = lse.strides()[a];
        if (masked)
            for (std::size_t a = 0; a < 4; ++a)
                keep_stride[a] = in[in.size() - 1].strides()[a];
    }

    /// (b, h, i) of chunk row r for a chunk starting at batch b0.
    std::array<index_t, 3> index(index_t b0, index_t r) const {
        return {b0 + r / (heads * lq), (r / lq) % heads, r % lq};
    }
    /// Start of the keep-mask row of (b, h, i) (nullptr when unmasked); `in` as at build.
    const bool* keep_row(std::span<const any_tensor_ref> in,
                         const std::array<index_t, 3>& x) const {
        if (!masked) return nullptr;
        return static_cast<const bool*>(in[in.size() - 1].data()) + x[0] * keep_stride[0] +
               x[1] * keep_stride[1] + x[2] * keep_stride[2];
    }
    /// The lse element of (b, h, i) in `lse`.
    float& lse_of(const any_tensor_ref& lse, const std::array<index_t, 3>& x) const {
        return static_cast<float*>(
            lse.data())[x[0] * lse_stride[0] + x[1] * lse_stride[1] + x[2] * lse_stride[2]];
    }
};

/// Runs `row(r)` for r in [0, rows): on OpenMP threads when compiled with OpenMP and the
/// chunk is large enough to pay for the fork, else serially.
template <class Row>
void for_each_row(index_t rows, index_t row_work, Row&& row) {
#ifdef _OPENMP
    if (rows > 1 && rows * row_work >= (index_t(1) << 15)) {
        _Pragma("omp parallel for schedule(static)") for (index_t r = 0; r < rows; ++r) row(r);
        return;
    }
#else
    (void)row_work;
#endif
    for (index_t r = 0; r < rows; ++r)
        row(r);
}

/// Forward plan: in q, k, v [, keep]; out o, lse.
class attention_plan final : public plan {
public:
    attention_plan(const ops::attention_desc& d, const attention_shape& s,
                   std::span<const any_tensor_ref> in, std::span<const any_tensor_ref> out,
                   const build_context& bx)
        : desc_(d), shape_(s), chunk_(s.chunk(1)), rows_(s, d, in, out[1]) {
        if (chunk_ == 0) return;
        const any_tensor_ref scores = scratch_view(chunk_, s.heads, s.lq, s.lk);
        if (!scores_.build(batch_chunk(in[0], chunk_), false, batch_chunk(in[1], chunk_), true,
                           scores, bx) ||
            !output_.build(scores, false, batch_chunk(in[2], chunk_), false,
                           batch_chunk(out[0], chunk_), bx))
            return;
        pad_offset_ = align64(std::size_t(chunk_) * s.scores_per_batch() * sizeof(float));
        scratch_bytes = pad_offset_ + std::max(scores_.scratchpad, output_.scratchpad);
        usable_ = true;
    }

    bool usable() const noexcept { return usable_; }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        float* const sc = reinterpret_cast<float*>(cx.scratch);
        std::byte* const pad = cx.scratch + pad_offset_;
        const index_t lk = shape_.lk;
        const float scale = float(desc_.scale);
        const index_t keep_step = rows_.keep_stride[3];
        for (index_t b0 = 0; b0 < shape_.batch; b0 += chunk_) {
            scores_(cx, pad, batch_at(in[0], b0), batch_at(in[1], b0), sc);
            for_each_row(chunk_ * shape_.heads * shape_.lq, lk, [&](index_t r) {
                const auto x = rows_.index(b0, r);
                float* s = sc + r * lk;
                mask_row(s, lk, attention_visible_keys(desc_, x[2], lk), scale,
                         rows_.keep_row(in, x), keep_step);
                const float m = row_max(s, lk);
                if (m == neg_inf_f) {  // nothing kept: P = 0 (so O = 0), lse = -inf
                    for (index_t j = 0; j < lk; ++j)
                        s[j] = 0.0f;
                    rows_.lse_of(out[1], x) = neg_inf_f;
                    return;
                }
                const float sum = row_exp_sum(s, lk, m);
                rows_.lse_of(out[1], x) = m + std::log(sum);
                const float inv = 1.0f / sum;
                for (index_t j = 0; j < lk; ++j)
                    s[j] *= inv;
            });
            output_(cx, pad, sc, batch_at(in[2], b0), batch_at(out[0], b0));
        }
    }

private:
    ops::attention_desc desc_;
    attention_shape shape_;
    index_t chunk_;
    attention_rows rows_;
    chunk_matmul scores_, output_;
    std::size_t pad_offset_ = 0;
    bool usable_ = false;
};

/// Backward plan: in q, k, v, o, do, lse [, keep]; out dq, dk, dv.
class attention_backward_plan final : public plan {
public:
    attention_backward_plan(const ops::attention_desc& d, const attention_shape& s,
                            std::span<const any_tensor_ref> in, std::span<const any_tensor_ref> out,
                            const build_context& bx)
        : desc_(d), shape_(s), chunk_(s.chunk(2)), rows_(s, d, in, in[5]) {
        if (chunk_ == 0) return;
        const auto part = [&](const any_tensor_ref& t) { return batch_chunk(t, chunk_); };
        const any_tensor_ref scores = scratch_view(chunk_, s.heads, s.lq, s.lk);
        const any_tensor_ref q = part(in[0]), k = part(in[1]), v = part(in[2]), dout = part(in[4]);
        if (!scores_.build(q, false, k, true, scores, bx) ||            // S = Q K^T
            !dv_.build(scores, true, dout, false, part(out[2]), bx) ||  // dV = P^T dO
            !dp_.build(dout, false, v, true, scores, bx) ||             // dP = dO V^T
            !dq_.build(scores, false, k, false, part(out[0]), bx) ||    // dQ = dS K
            !dk_.build(scores, true, q, false, part(out[1]), bx))       // dK = dS^T Q
            return;
        const std::size_t buffer =
            align64(std::size_t(chunk_) * s.scores_per_batch() * sizeof(float));
        dp_offset_ = buffer;
        pad_offset_ = 2 * buffer;
        scratch_bytes = pad_offset_ + std::max({scores_.scratchpad, dv_.scratchpad, dp_.scratchpad,
                                                dq_.scratchpad, dk_.scratchpad});
        usable_ = true;
    }

    bool usable() const noexcept { return usable_; }

    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        float* const p = reinterpret_cast<float*>(cx.scratch);
        float* const dp = reinterpret_cast<float*>(cx.scratch + dp_offset_);
        std::byte* const pad = cx.scratch + pad_offset_;
        const index_t lk = shape_.lk, dv = shape_.dv;
        const float scale = float(desc_.scale);
        const index_t keep_step = rows_.keep_stride[3];
        const any_tensor_ref &o = in[3], &dout = in[4];
        const index_t rows = chunk_ * shape_.heads * shape_.lq;
        for (index_t b0 = 0; b0 < shape_.batch; b0 += chunk_) {
            const float *q = batch_at(in[0], b0), *k = batch_at(in[1], b0),
                        *v = batch_at(in[2], b0), *dop = batch_at(dout, b0);
            scores_(cx, pad, q, k, p);
            for_each_row(rows, lk, [&](index_t r) {  // P_ij = exp(scale S_ij - lse_i)
                const auto x = rows_.index(b0, r);
                float* s = p + r * lk;
                const float lse = rows_.lse_of(in[5], x);
                if (lse == neg_inf_f) {  // fully masked row: P = 0
                    for (index_t j = 0; j < lk; ++j)
                        s[j] = 0.0f;
                    return;
                }
                mask_row(s, lk, attention_visible_keys(desc_, x[2], lk), scale,
                         rows_.keep_row(in, x), keep_step);
                row_exp_sum(s, lk, lse);
            });
            dv_(cx, pad, p, dop, batch_at(out[2], b0));
            dp_(cx, pad, dop, v, dp);
            for_each_row(rows, lk + dv, [&](index_t r) {  // dS = scale P (dP - dO_i . O_i)
                const auto x = rows_.index(b0, r);
                const float* orow = static_cast<const float*>(o.data()) + x[0] * o.strides()[0] +
                                    x[1] * o.strides()[1] + x[2] * o.strides()[2];
                const float* drow = static_cast<const float*>(dout.data()) +
                                    x[0] * dout.strides()[0] + x[1] * dout.strides()[1] +
                                    x[2] * dout.strides()[2];
                const index_t so = o.strides()[3], sd = dout.strides()[3];
                double di = 0.0;
                for (index_t c = 0; c < dv; ++c)
                    di += double(orow[c * so]) * double(drow[c * sd]);
                const float dif = float(di);
                const float* prow = p + r * lk;
                float* ds = dp + r * lk;
                for (index_t j = 0; j < lk; ++j)
                    ds[j] = scale * prow[j] * (ds[j] - dif);
            });
            dq_(cx, pad, dp, k, batch_at(out[0], b0));
            dk_(cx, pad, dp, q, batch_at(out[1], b0));
        }
    }

private:
    ops::attention_desc desc_;
    attention_shape shape_;
    index_t chunk_;
    attention_rows rows_;
    chunk_matmul scores_, dv_, dp_, dq_, dk_;
    std::size_t dp_offset_ = 0, pad_offset_ = 0;
    bool usable_ = false;
};

/// Builds plan `P` when the operands fit and oneDNN serves every product; else nullptr.
template <class P>
std::unique_ptr<plan> make_attention_plan(const ops::attention_desc& d,
                                          std::span<const any_tensor_ref> in,
                                          std::span<const any_tensor_ref> out,
                                          const build_context& bx) {
    const auto shape = attention_shape::of(d, in, out);
    if (!shape) return nullptr;
    return usable_or_null<P>(d, *shape, in, out, bx);
}

}  // namespace detail

/// attention runs on oneDNN (matmuls + host row loops) for f32.
inline bool is_native(const ops::attention_desc&, dtype t) noexcept {
    return t == dtype::f32;
}
/// attention_backward runs on oneDNN (matmuls + host row loops) for f32.
inline bool is_native(const ops::attention_backward_desc&, dtype t) noexcept {
    return t == dtype::f32;
}

/// in q, k, v [, keep]; out o, lse. nullptr (fallback) as listed in the file comment.
inline std::unique_ptr<plan> make_plan(const ops::attention_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    return detail::make_attention_plan<detail::attention_plan>(d, in, out, bx);
}

/// in q, k, v, o, do, lse [, keep]; out dq, dk, dv. nullptr (fallback) as listed in the file
/// comment.
inline std::unique_ptr<plan> make_plan(const ops::attention_backward_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    return detail::make_attention_plan<detail::attention_backward_plan>(d.forward, in, out, bx);
}

}  // namespace mmfuse::inline v0::backend::onednn
