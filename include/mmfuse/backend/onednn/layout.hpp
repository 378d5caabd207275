#pragma once
/// \file
/// oneDNN plans of the layout ops, and the pieces every plan made of a fixed list of
/// primitives shares (pointwise.hpp builds on them):
///   * copy_desc   -> one `reorder` (any strides on either side, stride-0 input axes
///                    included; a change of element type only where oneDNN has a JIT
///                    conversion: none on AVX2, whose generic one is 30-50x slower than Eigen);
///   * concat_desc -> one `concat` primitive;
///   * split_desc  -> one `reorder` per output, from its slice of x (x's descriptor narrowed
///                    on the axis, the data pointer moved to the slice's start).
/// Declined (the op falls back): f64, f16 and bool operands (bf16 on CPUs without bf16
/// kernels), conversions without a JIT reorder, empty operands, and layouts oneDNN serves only with its reference implementation (a concat
/// whose operands are not dense in one common axis order, e.g. gapped views).
/// Implementation detail of the oneDNN backend.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include "mmfuse/backend/onednn/common.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::backend::onednn {

namespace detail {

// ---- memory descriptors in the form oneDNN's optimised kernels recognise -----------------

/// Extents and strides of one operand as oneDNN takes them (rank >= 1).
struct strided_dims {
    memory::dims dims, strides;
};

/// `t`'s extents and strides (rank 0 becomes one element of rank 1); with
/// `broadcast_to_one`, every stride-0 axis becomes an axis of extent 1 (oneDNN's
/// broadcasting form: binary's src1).
inline strided_dims strided_dims_of(const any_tensor_ref& t, bool broadcast_to_one = false) {
    if (t.extents().rank() == 0) return {{1}, {1}};
    strided_dims s{memory::dims(size_t(t.extents().rank())),
                   memory::dims(size_t(t.extents().rank()))};
    for (int i = 0; i < t.extents().rank(); ++i) {
        const index_t stride = t.strides()[size_t(i)];
        s.dims[size_t(i)] = broadcast_to_one && stride == 0 ? 1 : t.extents()[i];
        s.strides[size_t(i)] = stride;
    }
    return s;
}

/// Axes of `s` from outermost to innermost in memory: by decreasing stride; an axis of
/// extent 1 (whose stride addresses nothing) sits just outside the nearest longer axis to
/// its right, so ties resolve to row-major order.
inline std::vector<int> axis_order(const strided_dims& s) {
    const int r = int(s.dims.size());
    std::vector<memory::dim> key(size_t(r), -1);
    memory::dim right = -1;  // no longer axis to the right: innermost
    for (int i = r - 1; i >= 0; --i) {
        if (s.dims[size_t(i)] != 1) right = s.strides[size_t(i)];
        key[size_t(i)] = right;
    }
    std::vector<int> order(static_cast<size_t>(r));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return key[size_t(a)] > key[size_t(b)]; });
    return order;
}

/// Memory descriptor of `s` in which every axis of extent 1 has the stride a dense layout
/// in axis order `order` would give it. oneDNN matches strides of extent-1 axes too when it
/// picks an optimised kernel (a stride 0 there sends it to its reference implementation),
/// though they address nothing; this makes operands dense in `order` match exactly.
inline memory::desc canonical_desc(strided_dims s, memory::data_type type,
                                   std::span<const int> order) {
    memory::dim dense = 1;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        const size_t a = size_t(*it);
        if (s.dims[a] == 1) s.strides[a] = dense;
        dense *= s.dims[a];
    }
    return memory::desc(s.dims, type, s.strides);
}

/// `canonical_desc` of operand `t` (see `strided_dims_of` for `broadcast_to_one`).
inline memory::desc canonical_desc_of(const any_tensor_ref& t, std::span<const int> order,
                                      bool broadcast_to_one = false) {
    return canonical_desc(strided_dims_of(t, broadcast_to_one), *data_type_of(t.type()), order);
}

/// Axis order of operand `t` (see `axis_order`).
inline std::vector<int> axis_order_of(const any_tensor_ref& t) {
    return axis_order(strided_dims_of(t));
}

/// Attributes of the data-movement primitives (reorder, concat): user scratchpad only
/// (the precision's fpmath mode concerns arithmetic, and reorders refuse it).
inline dnnl::primitive_attr movement_attr() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
}

// ---- plans made of primitives whose arguments are the op's operands ----------------------

/// One primitive with each argument tied to an operand of the op (input or output `index`,
/// at `byte_offset` from its data pointer) or to the stream's scratch.
class primitive_step {
public:
    /// `p` built from `pd`; binds `pd`'s user scratchpad to the scratch.
    primitive_step(dnnl::primitive p, const dnnl::primitive_desc_base& pd,
                   const dnnl::engine& eng)
        : prim_(std::move(p)), scratchpad_bytes_(scratchpad_bytes(pd)) {
        add(DNNL_ARG_SCRATCHPAD, pd.scratchpad_desc(), eng, {source::scratch, 0, 0});
    }
    /// Argument `arg` (described by `md`) is input `index`, `byte_offset` bytes in.
    primitive_step& input(int arg, const memory::desc& md, int index, const dnnl::engine& eng,
                          std::ptrdiff_t byte_offset = 0) {
        return add(arg, md, eng, {source::input, std::uint8_t(index), byte_offset});
    }
    /// Argument `arg` (described by `md`) is output `index`, `byte_offset` bytes in.
    primitive_step& output(int arg, const memory::desc& md, int index, const dnnl::engine& eng,
                           std::ptrdiff_t byte_offset = 0) {
        return add(arg, md, eng, {source::output, std::uint8_t(index), byte_offset});
    }
    /// Bytes of scratch the primitive needs.
    std::size_t scratch_bytes() const noexcept { return scratchpad_bytes_; }

    /// Runs the primitive on these operands.
    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) {
        std::array<void*, bound_primitive::max_args> handles{};
        for (int i = 0; i < count_; ++i) {
            const slot& s = slots_[size_t(i)];
            std::byte* base = s.from == source::scratch
                                  ? cx.scratch
                                  : static_cast<std::byte*>(
                                        (s.from == source::input ? in : out)[s.index].data());
            handles[size_t(i)] = base == nullptr ? nullptr : base + s.byte_offset;
        }
        prim_.execute(*cx.stream, std::span<void* const>(handles.data(), size_t(count_)));
    }

private:
    enum class source : std::uint8_t { input, output, scratch };
    struct slot {
        source from;
        std::uint8_t index;
        std::ptrdiff_t byte_offset;
    };
    primitive_step& add(int arg, const memory::desc& md, const dnnl::engine& eng, slot s) {
        slots_[size_t(prim_.bind(arg, md, eng))] = s;
        ++count_;
        return *this;
    }

    bound_primitive prim_;
    std::array<slot, bound_primitive::max_args> slots_{};
    int count_ = 0;
    std::size_t scratchpad_bytes_ = 0;
};

/// A plan that runs its primitive steps in order (one for most ops, one per output for
/// split); they share the scratch, which is as large as the largest step's need.
class steps_plan final : public plan {
public:
    primitive_step& add(primitive_step s) {
        scratch_bytes = std::max(scratch_bytes, s.scratch_bytes());
        steps_.push_back(std::move(s));
        return steps_.back();
    }
    void run(const run_context& cx, std::span<const any_tensor_ref> in,
             std::span<const any_tensor_ref> out) override {
        for (primitive_step& s : steps_)
            s.run(cx, in, out);
    }

private:
    std::vector<primitive_step> steps_;
};

/// A one-step plan running primitive `Prim` built from `pd`, or nullptr (declined) when
/// `pd` is oneDNN's reference implementation. `bind(step)` binds the arguments.
template <class Prim, class PD, class Bind>
std::unique_ptr<plan> single_step_plan(const PD& pd, const dnnl::engine& eng, Bind&& bind) {
    if (is_reference_impl(pd)) return nullptr;
    auto p = std::make_unique<steps_plan>();
    bind(p->add(primitive_step(Prim(pd), pd, eng)));
    return p;
}

/// True for the dtypes oneDNN's reorders take on every CPU: f32, bf16 and f16.
constexpr bool reorder_type(dtype t) noexcept {
    return t == dtype::f32 || t == dtype::bf16 || t == dtype::f16;
}

/// True when `pd` is one of oneDNN's JIT-generated implementations.
inline bool is_jit_impl(const dnnl::primitive_desc_base& pd) {
    return std::string_view(pd.impl_info_str()).substr(0, 4) == "jit:";
}

/// Adds a reorder step copying input `in_index` (described by `src`, at `in_offset` bytes)
/// to output `out_index` (described by `dst`). Returns false (nothing added) when oneDNN
/// has only its reference reorder or, for a change of element type, no JIT one: its generic
/// "simple:any" conversion goes element by element through a scalar path (on AVX2, 30-50x
/// slower than the Eigen copy). Throws `dnnl::error` when it has no reorder at all.
inline bool add_reorder(steps_plan& p, const memory::desc& src, int in_index,
                        std::ptrdiff_t in_offset, const memory::desc& dst, int out_index,
                        bool converting, const dnnl::engine& eng) {
    const auto pd = compat::reorder_pd(eng, src, dst, movement_attr());
    if (is_reference_impl(pd) || (converting && !is_jit_impl(pd))) return false;
    p.add(primitive_step(dnnl::reorder(pd), pd, eng))
        .input(DNNL_ARG_SRC, src, in_index, eng, in_offset)
        .output(DNNL_ARG_DST, dst, out_index, eng);
    return true;
}

}  // namespace detail

// ---- copy ---------------------------------------------------------------------------------

/// copy runs on oneDNN for an f32 x (and bf16 where the CPU has bf16 kernels); the plan
/// declines f64 / f16 / bool outputs where oneDNN has no JIT conversion (all of them on
/// AVX2), and f16 <-> bf16.
inline bool is_native(const ops::copy_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = x through one reorder (in: x; out: y, same extents, any strides).
inline std::unique_ptr<plan> make_plan(const ops::copy_desc&, std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    const dtype from = in[0].type(), to = out[0].type();
    if (!detail::reorder_type(from) || !detail::reorder_type(to) ||
        (from != to && from != dtype::f32 && to != dtype::f32) ||
        any_empty(in) || any_empty(out))
        return nullptr;
    const std::vector<int> order = detail::axis_order_of(out[0]);
    auto p = std::make_unique<detail::steps_plan>();
    if (!detail::add_reorder(*p, detail::canonical_desc_of(in[0], order), 0, 0,
                             detail::canonical_desc_of(out[0], order), 0, from != to,
                             *bx.engine))
        return nullptr;
    return p;
}

// ---- concat -------------------------------------------------------------------------------

/// concat runs on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::concat_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y = the inputs laid end to end along `axis` (in: x0 ... xn-1; out: y), one concat
/// primitive. Declined when oneDNN offers only its reference concat (operands not dense in
/// one common axis order, e.g. gapped views).
inline std::unique_ptr<plan> make_plan(const ops::concat_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in) || any_empty(out)) return nullptr;
    const any_tensor_ref& y = out[0];
    const int ax = y.extents().normalize_axis(d.axis);
    const std::vector<int> order = detail::axis_order_of(y);
    std::vector<memory::desc> srcs;
    srcs.reserve(in.size());
    for (const any_tensor_ref& x : in)
        srcs.push_back(detail::canonical_desc_of(x, order));
    const memory::desc y_md = detail::canonical_desc_of(y, order);
    const auto pd = compat::concat_pd(*bx.engine, y_md, ax, srcs, detail::movement_attr());
    return detail::single_step_plan<dnnl::concat>(pd, *bx.engine, [&](detail::primitive_step& s) {
        for (std::size_t i = 0; i < srcs.size(); ++i)
            s.input(DNNL_ARG_MULTIPLE_SRC + int(i), srcs[i], int(i), *bx.engine);
        s.output(DNNL_ARG_DST, y_md, 0, *bx.engine);
    });
}

// ---- split --------------------------------------------------------------------------------

/// split runs on oneDNN for f32 (and bf16 where the CPU has bf16 kernels).
inline bool is_native(const ops::split_desc&, dtype t) noexcept {
    return native_float(t);
}

/// y_i = the i-th consecutive slice of x along `axis` (in: x; out: y0 ... yn-1), one
/// reorder per output reading x's descriptor narrowed to the slice at the slice's address.
inline std::unique_ptr<plan> make_plan(const ops::split_desc& d,
                                       std::span<const any_tensor_ref> in,
                                       std::span<const any_tensor_ref> out,
                                       const build_context& bx) {
    if (any_empty(in) || any_empty(out)) return nullptr;
    const any_tensor_ref& x = in[0];
    const int ax = x.extents().normalize_axis(d.axis);
    const std::ptrdiff_t step =
        std::ptrdiff_t(x.strides()[size_t(ax)]) * std::ptrdiff_t(dtype_size(x.type()));
    auto p = std::make_unique<detail::steps_plan>();
    index_t start = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const std::vector<int> order = detail::axis_order_of(out[i]);
        detail::strided_dims slice = detail::strided_dims_of(x);
        slice.dims[size_t(ax)] = out[i].extents()[ax];
        if (!detail::add_reorder(*p, detail::canonical_desc(slice, *data_type_of(x.type()), order),
                                 0, std::ptrdiff_t(start) * step,
                                 detail::canonical_desc_of(out[i], order), int(i), false,
                                 *bx.engine))
            return nullptr;
        start += out[i].extents()[ax];
    }
    return p;
}

}  // namespace mmfuse::inline v0::backend::onednn
