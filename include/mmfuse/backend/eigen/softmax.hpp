#pragma once
/// \file
/// Eigen reference kernels: masked, scaled softmax over the last axis and its backward.
///
/// Every operand may have arbitrary (non-negative) strides; each of the (up to two) boolean
/// keep-masks may be a broadcast view (stride 0), e.g. a key-padding mask (B, 1, 1, Lk)
/// expanded to (B, H, Lq, Lk); the causal rule needs no mask memory. Sums are
/// accumulated in double for both f32 and f64 (this is the reference backend: accuracy
/// first). No heap allocation.

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// y = softmax(scale * x) over the last axis of every row, keeping only the entries where
/// every given mask (`masks[k]`, k < `n_masks` <= 2; x's extents, any strides, stride-0
/// broadcast allowed) is true and, when `causal`, the columns j <= i + `causal_offset` of
/// the row whose index along axis -2 is i (no mask memory). A row with no kept entry, or
/// whose kept entries are all -inf after scaling, is written as zeros. Max-subtraction keeps
/// exp() in range. y may be the same memory (same strides) as x.
template <class T>
void softmax_forward(const tensor_ref<const T>& x,
                     const std::array<tensor_ref<const bool>, 2>& masks, int n_masks,
                     const tensor_ref<T>& y, const ops::softmax_desc& d) {
    const index_t n = x.extent(-1);
    const double scale = d.scale;
    const index_t lq = d.causal ? x.extent(-2) : 1;
    const index_t sx = x.stride(-1), sy = y.stride(-1);
    const bool has0 = n_masks > 0, has1 = n_masks > 1;
    const index_t s0 = has0 ? masks[0].stride(-1) : 0, s1 = has1 ? masks[1].stride(-1) : 0;
    // An absent mask borrows x's strides for the walk (its pointer is never dereferenced).
    const std::span<const index_t> st0 = has0 ? masks[0].strides() : x.strides();
    const std::span<const index_t> st1 = has1 ? masks[1].strides() : x.strides();
    constexpr double neg_inf = -std::numeric_limits<double>::infinity();
    for_each_row<4>(x.extents(), {x.strides(), y.strides(), st0, st1},
                    [&](index_t row, const std::array<index_t, 4>& off) {
                        const T* xr = x.data() + off[0];
                        T* yr = y.data() + off[1];
                        const bool* m0 = has0 ? masks[0].data() + off[2] : nullptr;
                        const bool* m1 = has1 ? masks[1].data() + off[3] : nullptr;
                        // Columns [0, end) may be kept: all of them, or j <= i + offset under
                        // `causal` (compared before adding, so no offset overflows).
                        index_t end = n;
                        if (d.causal) {
                            const index_t i = row % lq;
                            end = d.causal_offset >= n - i
                                      ? n
                                      : (d.causal_offset < -i ? 0 : i + d.causal_offset + 1);
                        }
                        const auto keep = [&](index_t j) {
                            return (m0 == nullptr || m0[j * s0]) && (m1 == nullptr || m1[j * s1]);
                        };
                        double mx = neg_inf;
                        for (index_t j = 0; j < end; ++j)
                            if (keep(j)) mx = std::max(mx, scale * double(xr[j * sx]));
                        if (mx == neg_inf) {
                            for (index_t j = 0; j < n; ++j)
                                yr[j * sy] = T(0);
                            return;
                        }
                        double sum = 0.0;
                        for (index_t j = 0; j < n; ++j) {
                            const double e = j < end && keep(j)
                                                 ? std::exp(scale * double(xr[j * sx]) - mx)
                                                 : 0.0;
                            yr[j * sy] = T(e);
                            sum += e;
                        }
                        const double inv = 1.0 / sum;
                        for (index_t j = 0; j < n; ++j)
                            yr[j * sy] = T(double(yr[j * sy]) * inv);
                    });
}

/// dx = scale * y * (dy - sum(dy * y)) over the last axis. dx may be the same memory (same
/// strides) as dy.
template <class T>
void softmax_backward(const tensor_ref<const T>& y, const tensor_ref<const T>& dy,
                      const tensor_ref<T>& dx, double scale) {
    const index_t n = y.extent(-1);
    const index_t sy = y.stride(-1), sdy = dy.stride(-1), sdx = dx.stride(-1);
    for_each_row<3>(y.extents(), {y.strides(), dy.strides(), dx.strides()},
                    [&](index_t, const std::array<index_t, 3>& off) {
                        const T* yr = y.data() + off[0];
                        const T* dyr = dy.data() + off[1];
                        T* dxr = dx.data() + off[2];
                        double dot = 0.0;
                        for (index_t j = 0; j < n; ++j)
                            dot += double(dyr[j * sdy]) * double(yr[j * sy]);
                        for (index_t j = 0; j < n; ++j)
                            dxr[j * sdx] =
                                T(scale * double(yr[j * sy]) * (double(dyr[j * sdy]) - dot));
                    });
}

}  // namespace detail

/// softmax: in x [, mask1 [, mask2]] (bool, x's extents), out y (x's extents). See
/// `ops::softmax_desc`. Operands a direct `stream::execute` call could get wrong (more than
/// two masks, mismatched extents, causal on rank < 2) are refused with `backend_error`
/// before anything is read.
inline void run(const ops::softmax_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    const auto refuse = [](const std::string& what) {
        throw backend_error("eigen", "softmax: " + what);
    };
    if (d.masks > 2) refuse(std::to_string(int(d.masks)) + " masks (at most 2 are supported)");
    const extents& e = in[0].extents();
    if (e.rank() < 1 || (d.causal && e.rank() < 2))
        refuse("input of shape " + e.to_string() + " (rank >= " + (d.causal ? "2" : "1") +
               " expected)");
    if (out[0].extents() != e)
        refuse("output shape " + out[0].extents().to_string() + " differs from input " +
               e.to_string());
    std::array<tensor_ref<const bool>, 2> masks{};
    for (int k = 0; k < d.masks; ++k) {
        if (in[std::size_t(1 + k)].extents() != e)
            refuse("mask shape " + in[std::size_t(1 + k)].extents().to_string() +
                   " differs from input " + e.to_string() + " (broadcast it with expand)");
        masks[std::size_t(k)] = in[std::size_t(1 + k)].as<const bool>();
    }
    dispatch_compute(in[0].type(), "softmax", [&]<class T>() {
        detail::softmax_forward<T>(in[0].as<const T>(), masks, d.masks, out[0].as<T>(), d);
    });
}

/// softmax_backward: in y, dy; out dx. See `ops::softmax_backward_desc`.
inline void run(const ops::softmax_backward_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "softmax_backward", [&]<class T>() {
        detail::softmax_backward<T>(in[0].as<const T>(), in[1].as<const T>(), out[0].as<T>(),
                                    d.scale);
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
