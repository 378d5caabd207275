#pragma once
/// \file
/// Eigen reference kernel: sum or mean over one axis. Accumulates in double for every
/// compute type (the reference backend is the oracle). The mean over an axis of extent 0 is
/// NaN, as in PyTorch. Implementation detail of the Eigen backend; never allocates.

#include <span>

#include "mmfuse/backend/eigen/common.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::eigen {

namespace detail {

/// y = sum or mean of x over `axis` (added to y when `accumulate`); y has x's extents with
/// `axis` removed or set to 1.
template <class T>
void reduce_kernel(ops::reduce_kind kind, int axis, bool accumulate, const tensor_ref<const T>& x,
                   const tensor_ref<T>& y) {
    const int ax = x.extents().normalize_axis(axis);
    // y's strides laid out on x's axes, stride 0 on the reduced axis.
    stride_array ys{};
    for (int k = 0, j = 0; k < x.rank(); ++k) {
        if (k == ax) {
            if (y.rank() == x.rank()) ++j;
            continue;
        }
        ys[size_t(k)] = y.stride(j++);
    }
    // Move the reduced axis last: each "row" of the permuted views is one reduction.
    const tensor_ref<const T> xt = x.transpose(ax, -1);
    const tensor_ref<T> yt =
        tensor_ref<T>(y.data(), x.extents(), std::span<const index_t>(ys.data(), size_t(x.rank())))
            .transpose(ax, -1);
    const index_t n = x.extent(ax);
    const index_t step = x.stride(ax);
    const bool mean = kind == ops::reduce_kind::mean;
    for_each_row<2>(xt.extents(), {xt.strides(), yt.strides()},
                    [&](index_t, const std::array<index_t, 2>& off) {
                        const T* p = x.data() + off[0];
                        double acc = 0.0;
                        for (index_t j = 0; j < n; ++j)
                            acc += double(p[j * step]);
                        T& out = y.data()[off[1]];
                        out = T((accumulate ? double(out) : 0.0) + (mean ? acc / double(n) : acc));
                    });
}

}  // namespace detail

/// reduce_desc: in x; out y (`axis` removed or kept with extent 1).
inline void run(const ops::reduce_desc& d, std::span<const any_tensor_ref> in,
                std::span<const any_tensor_ref> out) {
    dispatch_compute(in[0].type(), "reduce", [&]<class T>() {
        detail::reduce_kernel<T>(d.kind, d.axis, d.accumulate, in[0].as<const T>(), out[0].as<T>());
    });
}

}  // namespace mmfuse::inline v0::backend::eigen
