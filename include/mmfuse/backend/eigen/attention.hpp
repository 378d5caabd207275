#pragma once
/// \file
/// Eigen reference kernels: fused scaled-dot-product attention, forward and backward
/// (`ops::attention_desc`, `ops::attention_backward_desc`). Plain loops, one query row at a
/// time, every sum accumulated in double for f32 and f64 alike (this is the oracle other
/// backends are tested against: accuracy first, speed second).
///
/// Forward, per (batch, head) and query row i (S_ij = scale q_i . k_j over the kept j):
///     m = max_j S_ij,  l = sum_j exp(S_ij - m),  o_i = sum_j exp(S_ij - m) v_j / l,
///     lse_i = m + log l                      (nothing kept: o_i = 0, lse_i = -inf)
/// Backward (Dao 2023, Algorithm 2, without the tiling), with P_ij = exp(S_ij - lse_i):
///     D_i = dO_i . O_i,  dS_ij = P_ij (dO_i . v_j - D_i),
///     dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i.
///
/// Operands may have any non-negative strides; the keep-mask is usually a broadcast view.
/// Scratch: a per-thread buffer of doubles (Lk + Dv forward, Lk (2 + D + Dv) + D backward)
/// that grows only when a call needs more than any earlier call on the thread, so repeated
/// calls with the same shapes do no heap traffic. Implementation detail of the Eigen backend.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// `n` doubles of this thread's scratch (contents unspecified). Valid until the next call on
/// the same thread; allocates only when `n` exceeds every earlier request.
inline std::span<double> attention_scratch(std::size_t n) {
    thread_local std::vector<double> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return {buffer.data(), n};
}

/// The (Lq, Lk, D, Dv) problem of one op and the per-(batch, head) views of its operands.
template <class T>
struct attention_operands {
    tensor_ref<const T> q, k, v;
    tensor_ref<const bool> keep;  ///< (B, H, Lq, Lk) when masked, else empty
    bool masked = false;

    index_t batch() const { return q.extent(0); }
    index_t heads() const { return q.extent(1); }
    index_t lq() const { return q.extent(2); }
    index_t lk() const { return k.extent(2); }
    index_t d() const { return q.extent(3); }
    index_t dv() const { return v.extent(3); }
};

/// The (L, W) matrix of head (b, h) of a (B, H, L, W) view.
template <class T>
tensor_ref<T> head(const tensor_ref<T>& t, index_t b, index_t h) {
    return t.select(0, b).select(0, h);
}

/// Number of leading keys query row i may see: Lk, or under `causal` the columns
/// j <= i + causal_offset (clamped to [0, Lk]; compared before adding, so nothing overflows).
inline index_t visible_keys(const ops::attention_desc& d, index_t i, index_t lk) {
    if (!d.causal || d.causal_offset >= lk - i) return lk;
    return d.causal_offset < -i ? 0 : i + d.causal_offset + 1;
}

/// sum_c a(i, c) b(j, c) over the last axis of two matrices, in double.
template <class T>
double row_dot(const tensor_ref<const T>& a, index_t i, const tensor_ref<const T>& b, index_t j) {
    double acc = 0.0;
    for (index_t c = 0; c < a.extent(1); ++c)
        acc += double(a(i, c)) * double(b(j, c));
    return acc;
}

constexpr double neg_inf = -std::numeric_limits<double>::infinity();

/// Fills `s[j]` (j < Lk) with the scaled score of query row i against key j of head (qh,
/// kh), or -inf where (i, j) is masked; returns the largest entry (-inf: nothing kept).
template <class T>
double row_scores(const ops::attention_desc& d, const tensor_ref<const T>& qh,
                  const tensor_ref<const T>& kh, const tensor_ref<const bool>& keep_h, bool masked,
                  index_t i, std::span<double> s) {
    const index_t lk = kh.extent(0);
    const index_t end = visible_keys(d, i, lk);
    double mx = neg_inf;
    for (index_t j = 0; j < lk; ++j) {
        const bool kept = j < end && (!masked || keep_h(i, j));
        s[std::size_t(j)] = kept ? d.scale * row_dot(qh, i, kh, j) : neg_inf;
        mx = std::max(mx, s[std::size_t(j)]);
    }
    return mx;
}

template <class T>
void attention_forward(const ops::attention_desc& d, const attention_operands<T>& in,
                       const tensor_ref<T>& o, const tensor_ref<T>& lse) {
    const index_t lk = in.lk(), dv = in.dv();
    const std::span<double> scratch = attention_scratch(std::size_t(lk + dv));
    const std::span<double> s = scratch.first(std::size_t(lk));
    const std::span<double> acc = scratch.subspan(std::size_t(lk));
    for (index_t b = 0; b < in.batch(); ++b)
        for (index_t h = 0; h < in.heads(); ++h) {
            const auto qh = head(in.q, b, h), kh = head(in.k, b, h), vh = head(in.v, b, h);
            const auto keep_h = in.masked ? head(in.keep, b, h) : tensor_ref<const bool>{};
            const auto oh = head(o, b, h);
            const auto lse_h = head(lse, b, h);
            for (index_t i = 0; i < in.lq(); ++i) {
                const double mx = row_scores(d, qh, kh, keep_h, in.masked, i, s);
                std::fill(acc.begin(), acc.end(), 0.0);
                double sum = 0.0;
                if (mx != neg_inf)
                    for (index_t j = 0; j < lk; ++j) {
                        if (s[std::size_t(j)] == neg_inf) continue;
                        const double p = std::exp(s[std::size_t(j)] - mx);
                        sum += p;
                        for (index_t c = 0; c < dv; ++c)
                            acc[std::size_t(c)] += p * double(vh(j, c));
                    }
                const double inv = sum > 0.0 ? 1.0 / sum : 0.0;
                for (index_t c = 0; c < dv; ++c)
                    oh(i, c) = T(acc[std::size_t(c)] * inv);
                lse_h(i) = T(sum > 0.0 ? mx + std::log(sum) : neg_inf);
            }
        }
}

template <class T>
void attention_backward(const ops::attention_desc& d, const attention_operands<T>& in,
                        const tensor_ref<const T>& o, const tensor_ref<const T>& dout,
                        const tensor_ref<const T>& lse, const tensor_ref<T>& dq,
                        const tensor_ref<T>& dk, const tensor_ref<T>& dv) {
    const index_t lk = in.lk(), width = in.d(), vwidth = in.dv();
    const auto n = [](index_t x) { return std::size_t(x); };
    const std::span<double> scratch =
        attention_scratch(n(2 * lk + width + lk * width + lk * vwidth));
    const std::span<double> p = scratch.first(n(lk));                // P_ij of row i
    const std::span<double> ds = scratch.subspan(n(lk), n(lk));      // dS_ij of row i
    const std::span<double> dq_acc = scratch.subspan(n(2 * lk), n(width));
    const std::span<double> dk_acc = scratch.subspan(n(2 * lk + width), n(lk * width));
    const std::span<double> dv_acc = scratch.subspan(n(2 * lk + width + lk * width));
    for (index_t b = 0; b < in.batch(); ++b)
        for (index_t h = 0; h < in.heads(); ++h) {
            const auto qh = head(in.q, b, h), kh = head(in.k, b, h), vh = head(in.v, b, h);
            const auto keep_h = in.masked ? head(in.keep, b, h) : tensor_ref<const bool>{};
            const auto oh = head(o, b, h), doh = head(dout, b, h);
            const auto lse_h = head(lse, b, h);
            const auto dqh = head(dq, b, h), dkh = head(dk, b, h), dvh = head(dv, b, h);
            std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
            std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
            for (index_t i = 0; i < in.lq(); ++i) {
                std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
                const double row_lse = double(lse_h(i));
                // A fully masked row (lse = -inf) has P = 0: no contribution.
                if (row_lse != neg_inf) {
                    row_scores(d, qh, kh, keep_h, in.masked, i, p);
                    const double di = row_dot(doh, i, oh, i);
                    for (index_t j = 0; j < lk; ++j) {
                        const std::size_t jj = n(j);
                        p[jj] = p[jj] == neg_inf ? 0.0 : std::exp(p[jj] - row_lse);
                        ds[jj] = p[jj] == 0.0 ? 0.0 : p[jj] * (row_dot(doh, i, vh, j) - di);
                    }
                    for (index_t j = 0; j < lk; ++j) {
                        const std::size_t jj = n(j);
                        if (p[jj] == 0.0) continue;
                        for (index_t c = 0; c < width; ++c) {
                            dq_acc[n(c)] += ds[jj] * double(kh(j, c));
                            dk_acc[n(j * width + c)] += ds[jj] * double(qh(i, c));
                        }
                        for (index_t c = 0; c < vwidth; ++c)
                            dv_acc[n(j * vwidth + c)] += p[jj] * double(doh(i, c));
                    }
                }
                for (index_t c = 0; c < width; ++c)
                    dqh(i, c) = T(d.scale * dq_acc[n(c)]);
            }
            for (index_t j = 0; j < lk; ++j) {
                for (index_t c = 0; c < width; ++c)
                    dkh(j, c) = T(d.scale * dk_acc[n(j * width + c)]);
                for (index_t c = 0; c < vwidth; ++c)
                    dvh(j, c) = T(dv_acc[n(j * vwidth + c)]);
            }
        }
}

/// Refuses, with `backend_error`, operands a direct `stream::execute` call could get wrong
/// (the front-end never submits them): ranks other than 4, q/k/v/keep extents that do not
/// fit together, or a keep-mask that is not bool.
inline void check_attention_operands(std::string_view op, const ops::attention_desc& d,
                                     std::span<const any_tensor_ref> in) {
    const auto refuse = [&](const std::string& what) {
        std::string msg(op);
        msg += ": ";
        msg += what;
        throw backend_error("eigen", msg);
    };
    const extents &q = in[0].extents(), &k = in[1].extents(), &v = in[2].extents();
    if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4)
        refuse("q, k, v must have rank 4, got " + q.to_string() + ", " + k.to_string() + ", " +
               v.to_string());
    if (k != extents{q[0], q[1], k[2], q[3]} || v != extents{q[0], q[1], k[2], v[3]})
        refuse("q " + q.to_string() + ", k " + k.to_string() + ", v " + v.to_string() +
               " do not fit together");
    if (d.masked) {
        const any_tensor_ref& keep = in[in.size() - 1];
        if (keep.type() != dtype::boolean || keep.extents() != extents{q[0], q[1], q[2], k[2]})
            refuse("keep-mask must be bool (B, H, Lq, Lk) (broadcast it with expand), got " +
                   std::string(dtype_name(keep.type())) + " " + keep.extents().to_string());
    }
}

}  // namespace detail

/// attention_desc: in q, k, v [, keep]; out o, lse (shapes on `ops::attention_desc`).
inline void run(const ops::attention_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    detail::check_attention_operands("attention", d, in);
    dispatch_compute(in[0].type(), "attention", [&]<class T>() {
        const detail::attention_operands<T> ops_in{
            in[0].as<const T>(), in[1].as<const T>(), in[2].as<const T>(),
            d.masked ? in[3].as<const bool>() : tensor_ref<const bool>{}, d.masked};
        detail::attention_forward<T>(d, ops_in, out[0].as<T>(), out[1].as<T>());
    });
}

/// attention_backward_desc: in q, k, v, o, do, lse [, keep]; out dq, dk, dv.
inline void run(const ops::attention_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    detail::check_attention_operands("attention_backward", d.forward, in);
    dispatch_compute(in[0].type(), "attention_backward", [&]<class T>() {
        const detail::attention_operands<T> ops_in{
            in[0].as<const T>(), in[1].as<const T>(), in[2].as<const T>(),
            d.forward.masked ? in[6].as<const bool>() : tensor_ref<const bool>{},
            d.forward.masked};
        detail::attention_backward<T>(d.forward, ops_in, in[3].as<const T>(), in[4].as<const T>(),
                                      in[5].as<const T>(), out[0].as<T>(), out[1].as<T>(),
                                      out[2].as<T>());
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
