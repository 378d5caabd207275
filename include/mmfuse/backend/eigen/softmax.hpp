#pragma once
/// \file
/// Eigen reference kernels: masked, scaled softmax over the last axis and its backward.
///
/// Every operand may have arbitrary (non-negative) strides; the mask may be a broadcast view
/// (stride 0), e.g. a key-padding mask (B, 1, Lk) expanded to (B, Lq, Lk). Sums are
/// accumulated in double for both f32 and f64 (this is the reference backend: accuracy
/// first). No heap allocation.

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

/// y = softmax(scale * x) over the last axis of every row; `mask` (same extents as x, any
/// strides) excludes entries where it is false when `masked`. A row with no kept entry, or
/// whose kept entries are all -inf after scaling, is written as zeros. Max-subtraction keeps
/// exp() in range. y may be the same memory (same strides) as x.
template <class T>
void softmax_forward(const tensor_ref<const T>& x, const tensor_ref<const bool>& mask, bool masked,
                     const tensor_ref<T>& y, double scale) {
    const index_t n = x.extent(-1);
    const index_t sx = x.stride(-1), sy = y.stride(-1);
    const index_t sm = masked ? mask.stride(-1) : 0;
    // Unmasked: x's strides stand in for the absent mask (never dereferenced).
    const std::span<const index_t> mask_strides = masked ? mask.strides() : x.strides();
    for_each_row<3>(x.extents(), {x.strides(), y.strides(), mask_strides},
                    [&](index_t, const std::array<index_t, 3>& off) {
                        const T* xr = x.data() + off[0];
                        T* yr = y.data() + off[1];
                        const bool* mr = masked ? mask.data() + off[2] : nullptr;
                        const auto keep = [&](index_t j) { return mr == nullptr || mr[j * sm]; };
                        double mx = -std::numeric_limits<double>::infinity();
                        for (index_t j = 0; j < n; ++j)
                            if (keep(j)) mx = std::max(mx, scale * double(xr[j * sx]));
                        if (mx == -std::numeric_limits<double>::infinity()) {
                            for (index_t j = 0; j < n; ++j)
                                yr[j * sy] = T(0);
                            return;
                        }
                        double sum = 0.0;
                        for (index_t j = 0; j < n; ++j) {
                            const double e =
                                keep(j) ? std::exp(scale * double(xr[j * sx]) - mx) : 0.0;
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

/// softmax: in x [, mask (bool)], out y. See `ops::softmax_desc`.
inline void run(const ops::softmax_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "softmax", [&]<class T>() {
        const tensor_ref<const bool> mask =
            d.masked ? in[1].as<const bool>() : tensor_ref<const bool>{};
        detail::softmax_forward<T>(in[0].as<const T>(), mask, d.masked, out[0].as<T>(), d.scale);
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
