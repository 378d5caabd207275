// [cuda] tests: softmax (forward, backward) and layer / RMS norm (forward, backward) on the
// CUDA backend against the Eigen reference backend on the same host values.
//
// Every case draws fresh inputs, rounds them to the dtype under test (f32, bf16, f16) so that
// both backends see the same numbers, runs the Eigen backend in f32 on contiguous host
// tensors, and the CUDA backend (`stream::execute`, every dtype) on device operands laid out
// densely or strided: rows padded (aligned: the vector path; misaligned: the scalar one),
// the last two axes transposed, or every other element with padded outer axes. Outputs are
// NaN inside their view and a sentinel around it, so an unwritten element shows up as an
// infinite error and a stray write as a changed sentinel. Row lengths N cover every row
// configuration of the kernels: one warp per row (registers, scalar or vector), one block
// per row (registers), and streamed rows longer than 16384.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/norm.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "support/cuda_util.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

namespace {

namespace mc = mmfuse::backend::cuda;
namespace ops = mmfuse::ops;
namespace gpu = mmfuse_test::gpu;
using mmfuse::any_tensor_ref;
using mmfuse::extents;
using mmfuse::index_t;
using mmfuse::tensor;
using mmfuse::tensor_ref;
using mmfuse_test::from_double;

// ---- device operands in several layouts ------------------------------------------------

/// How a device operand's elements lie in its buffer.
enum class place {
    dense,       ///< contiguous row-major (16-byte vectors when N allows)
    row_padded,  ///< rows of N + 8 elements: unit stride, aligned rows (vectors), outer gaps
    misaligned,  ///< rows of N + 1 starting one element in: unit stride, scalar loads
    transposed,  ///< the last two axes swapped in memory: row stride = the other extent
    gapped,      ///< every other element along a row, every outer axis one entry longer
};

const char* place_name(place p) {
    switch (p) {
        case place::dense:
            return "dense";
        case place::row_padded:
            return "row_padded";
        case place::misaligned:
            return "misaligned";
        case place::transposed:
            return "transposed";
        case place::gapped:
            return "gapped";
    }
    return "?";
}

/// Strides of a view of extents `e` (rank >= 1) in place `p`.
mmfuse::stride_array place_strides(const extents& e, place p) {
    const int r = e.rank();
    mmfuse::stride_array s{};
    switch (p) {
        case place::dense:
            return mmfuse::contiguous_strides(e);
        case place::row_padded:
            return mmfuse::contiguous_strides(e.with_axis(-1, e[-1] + 8));
        case place::misaligned:
            return mmfuse::contiguous_strides(e.with_axis(-1, e[-1] + 1));
        case place::transposed:
            if (r >= 2) {
                extents stored = e.with_axis(-1, e[-2]).with_axis(-2, e[-1]);
                s = mmfuse::contiguous_strides(stored);
                std::swap(s[std::size_t(r - 1)], s[std::size_t(r - 2)]);
                return s;
            }
            [[fallthrough]];  // rank 1: no second axis to swap with; gapped instead
        case place::gapped:
            s[std::size_t(r - 1)] = 2;
            for (int k = r - 2; k >= 0; --k)
                s[std::size_t(k)] = s[std::size_t(k + 1)] * (e[k + 1] + 1);
            return s;
    }
    return s;
}

/// Value around every device view (exact in bf16 and f16); it must survive the op.
constexpr double sentinel = -768.0;

/// A device operand of extents `e` in place `p`, inside a buffer with 16 guard elements on
/// either side. Logical values go in and come out in row-major order.
template <class T>
class device_operand {
public:
    static constexpr index_t guard = 16;

    device_operand(const extents& e, place p)
        : extents_(e),
          strides_(place_strides(e, p)),
          base_(guard + (p == place::misaligned ? 1 : 0)) {
        index_t span = 1;
        for (int k = 0; k < e.rank(); ++k)
            span += (e[k] - 1) * strides_[std::size_t(k)];
        size_ = base_ + span + guard;
        host_ = std::make_unique<T[]>(std::size_t(size_));
        buffer_ = mc::device_buffer(std::size_t(size_) * sizeof(T));
    }

    /// The view, in device memory.
    tensor_ref<T> ref() const {
        return {static_cast<T*>(buffer_.data()) + base_, extents_,
                std::span<const index_t>(strides_.data(), std::size_t(extents_.rank())),
                mmfuse::memory_space::device};
    }
    tensor_ref<const T> cref() const { return ref(); }

    /// View = `values` (row-major), everything around it = sentinel; uploaded.
    void set(std::span<const double> values) {
        REQUIRE(values.size() == std::size_t(extents_.numel()));
        std::fill_n(host_.get(), size_, from_double<T>(sentinel));
        std::size_t i = 0;
        mmfuse_test::for_each_index(
            extents_, [&](const auto& idx) { at(idx) = from_double<T>(values[i++]); });
        upload();
    }

    /// View = NaN, everything around it = sentinel (an output); uploaded.
    void poison() {
        const std::vector<double> nan(std::size_t(extents_.numel()),
                                      std::numeric_limits<double>::quiet_NaN());
        set(nan);
    }

    /// Downloads the buffer (after synchronising) and returns the view's values; records
    /// whether everything around the view still holds the sentinel (`outside_intact`).
    std::vector<double> values() {
        gpu::stream().synchronize();
        mc::check(cudaMemcpy(host_.get(), buffer_.data(), std::size_t(size_) * sizeof(T),
                             cudaMemcpyDeviceToHost),
                  "cudaMemcpy D2H");
        std::vector<char> inside(std::size_t(size_), 0);
        std::vector<double> v;
        mmfuse_test::for_each_index(extents_, [&](const auto& idx) {
            inside[std::size_t(base_ + mmfuse_test::offset_of(idx, strides()))] = 1;
            v.push_back(double(at(idx)));
        });
        const T s = from_double<T>(sentinel);
        intact_ = true;
        for (index_t i = 0; i < size_; ++i)
            if (!inside[std::size_t(i)] && std::memcmp(&host_[std::size_t(i)], &s, sizeof(T)) != 0)
                intact_ = false;
        return v;
    }

    /// Whether the last `values()` found the sentinel around the view untouched.
    bool outside_intact() const { return intact_; }

private:
    std::span<const index_t> strides() const {
        return {strides_.data(), std::size_t(extents_.rank())};
    }
    T& at(const std::array<index_t, mmfuse::max_rank>& idx) {
        return host_[std::size_t(base_ + mmfuse_test::offset_of(idx, strides()))];
    }
    void upload() {
        mc::check(cudaMemcpy(buffer_.data(), host_.get(), std::size_t(size_) * sizeof(T),
                             cudaMemcpyHostToDevice),
                  "cudaMemcpy H2D");
    }

    extents extents_;
    mmfuse::stride_array strides_;
    index_t base_ = 0, size_ = 0;
    std::unique_ptr<T[]> host_;
    mc::device_buffer buffer_;
    bool intact_ = false;
};

// ---- values, references, comparisons -----------------------------------------------------

/// `v` rounded to what a T holds (the inputs both backends see).
template <class T>
std::vector<double> representable(std::vector<double> v) {
    for (double& x : v)
        x = double(from_double<T>(x));
    return v;
}

/// A contiguous host f32 tensor of extents `e` holding `v` (the Eigen reference's operands).
tensor<float> host_tensor(const extents& e, const std::vector<double>& v) {
    tensor<float> t(e);
    REQUIRE(v.size() == std::size_t(t.numel()));
    for (index_t i = 0; i < t.numel(); ++i)
        t[i] = float(v[std::size_t(i)]);
    return t;
}

/// A host bool tensor of extents `e` from 0/1 values.
tensor<bool> host_mask(const extents& e, const std::vector<double>& v) {
    tensor<bool> t(e);
    for (index_t i = 0; i < t.numel(); ++i)
        t[i] = v[std::size_t(i)] != 0.0;
    return t;
}

/// Elements of a host tensor as doubles.
template <class T>
std::vector<double> values_of(const tensor<T>& t) {
    return std::vector<double>(t.data(), t.data() + t.numel());
}

std::string dtype_label(mmfuse::dtype t) {
    return std::string(mmfuse::dtype_name(t));
}

/// Tolerance (relative L2) for dtype T; `long_rows` for N >= 16384 in f32.
template <class T>
double tolerance(bool long_rows) {
    if constexpr (std::is_same_v<T, float>)
        return long_rows ? 1e-5 : 2e-6;
    else if constexpr (std::is_same_v<T, mmfuse::bf16>)
        return 1e-2;
    else
        return 2e-3;
}

/// Compares an output of the CUDA backend with the reference: L2 error relative to
/// max(||ref||, `floor`) within `tol`, the sentinel around the view untouched. Prints the
/// case, the errors and the worst element on failure.
template <class T>
void expect_close(const std::string& what, device_operand<T>& out, const std::vector<double>& ref,
                  double tol, double floor = 0.0) {
    const std::vector<double> got = out.values();
    double err = gpu::rel_l2_error(std::span<const double>(got), std::span<const double>(ref));
    double ref_norm = 0.0;
    for (const double v : ref)
        ref_norm += v * v;
    ref_norm = std::sqrt(ref_norm);
    if (floor > ref_norm && std::isfinite(err)) err *= (ref_norm > 0.0 ? ref_norm : 1.0) / floor;
    double worst = 0.0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double d = std::isnan(got[i]) ? INFINITY : std::abs(got[i] - ref[i]);
        if (d > worst || (std::isinf(d) && !std::isinf(worst))) {
            worst = d;
            at = i;
        }
    }
    INFO(what);
    INFO("relative L2 error " << err << " (tolerance " << tol
                              << (floor > 0.0 ? ", scale floor " : "")
                              << (floor > 0.0 ? std::to_string(floor) : std::string())
                              << "), max |error| " << worst << " at element " << at << " (got "
                              << (got.empty() ? 0.0 : got[at]) << ", want "
                              << (ref.empty() ? 0.0 : ref[at]) << ")");
    CHECK(err <= tol);
    CHECK(out.outside_intact());
}

/// Runs `op` on the CUDA stream under test.
void run_gpu(const ops::op_desc& op, std::vector<any_tensor_ref> in,
             std::vector<any_tensor_ref> out) {
    gpu::stream().execute(op, in, out);
}

/// The shape of a test tensor with rows of `n`: (2, 5, n) for short rows, fewer rows for
/// long ones (10 rows: not a multiple of the 4 rows a warp-per-row block handles).
extents rows_shape(index_t n) {
    if (n <= 1024) return {2, 5, n};
    if (n <= 4096) return {3, 2, n};
    return {2, 2, n};
}

/// Row lengths every op is tested at (f32 adds a 16384-long row and a streamed 20000-long
/// one): one warp per row (scalar and vector, short and long), one block per row.
template <class T>
std::vector<index_t> row_lengths() {
    if constexpr (std::is_same_v<T, float>)
        return {1, 7, 64, 1000, 4096, 16384, 20000};
    else if constexpr (std::is_same_v<T, mmfuse::bf16>)
        return {1, 7, 64, 1000, 4096, 20000};
    else
        return {7, 64, 4096};
}

/// (input place, output place) pairs each row length is tested with.
constexpr std::array<std::array<place, 2>, 4> place_pairs{{{place::dense, place::dense},
                                                           {place::row_padded, place::transposed},
                                                           {place::gapped, place::misaligned},
                                                           {place::transposed, place::row_padded}}};

// ---- softmax -------------------------------------------------------------------------------

/// One softmax case: x of `shape` (rank >= 2, axis -2 = queries), masks, causal rule.
struct softmax_case {
    extents shape;
    place x_place = place::dense, y_place = place::dense;
    double scale = 1.0;
    int masks = 0;  ///< 0, 1 (key padding (B.., 1, N)) or 2 (plus a random (Lq, N) mask)
    bool causal = false;
    index_t causal_offset = 0;
    bool in_place = false;  ///< y is x's memory

    std::string describe(mmfuse::dtype t) const {
        std::ostringstream s;
        s << "softmax " << dtype_label(t) << " shape " << shape.to_string() << " x "
          << place_name(x_place) << " y " << (in_place ? "in place" : place_name(y_place))
          << " scale " << scale << " masks " << masks << " causal " << causal << " offset "
          << causal_offset;
        return s.str();
    }
};

/// Host values of a key-padding mask (B.., 1, N): row b keeps its first len_b columns, with
/// len of the first batch row 0 (every query row of it fully masked) when `empty_first`.
std::vector<double> key_padding(const extents& e, std::mt19937_64& rng, bool empty_first) {
    const index_t n = e[-1], batches = e.numel() / n;
    std::vector<double> v(std::size_t(e.numel()), 0.0);
    std::uniform_int_distribution<index_t> len(1, n);
    for (index_t b = 0; b < batches; ++b) {
        const index_t keep = (b == 0 && empty_first) ? 0 : len(rng);
        for (index_t j = 0; j < keep; ++j)
            v[std::size_t(b * n + j)] = 1.0;
    }
    return v;
}

/// Runs one softmax case on both backends and compares y.
template <class T>
void check_softmax(const softmax_case& c, std::mt19937_64& rng) {
    const extents& e = c.shape;
    REQUIRE(e.rank() >= 2);
    const std::vector<double> x =
        representable<T>(mmfuse_test::uniform_values(rng, e.numel(), -3.0, 3.0));
    // Masks: (B.., 1, N) key padding, and (Lq, N) random (stored transposed on the device).
    const extents pad_e = e.with_axis(-2, 1);
    const extents att_e{e[-2], e[-1]};
    const std::vector<double> pad = key_padding(pad_e, rng, true);
    const std::vector<double> att = mmfuse_test::bernoulli_values(rng, att_e.numel(), 0.7);

    // Reference (Eigen, f32).
    const tensor<float> hx = host_tensor(e, x);
    tensor<float> hy(e);
    const tensor<bool> hpad = host_mask(pad_e, pad), hatt = host_mask(att_e, att);
    const ops::softmax_options o{c.scale, c.causal, c.causal_offset};
    auto& host = mmfuse::backend::default_stream();
    ops::softmax<float>(host, hx.cref(), c.masks > 0 ? hpad.cref() : tensor_ref<const bool>{},
                        c.masks > 1 ? hatt.cref() : tensor_ref<const bool>{}, hy.ref(), o);

    // CUDA.
    device_operand<T> dx(e, c.x_place);
    dx.set(x);
    device_operand<T> dy(e, c.y_place);
    dy.poison();
    device_operand<bool> dpad(pad_e, place::dense), datt(att_e, place::transposed);
    dpad.set(pad);
    datt.set(att);
    std::vector<any_tensor_ref> in{dx.cref()};
    if (c.masks > 0) in.emplace_back(dpad.cref().expand(e));
    if (c.masks > 1) in.emplace_back(datt.cref().expand(e));
    device_operand<T>& out = c.in_place ? dx : dy;
    const ops::softmax_desc d{c.scale, std::uint8_t(c.masks), c.causal, c.causal_offset};
    run_gpu(d, in, {out.ref()});
    expect_close<T>(c.describe(mmfuse::dtype_of<T>), out, values_of(hy),
                    tolerance<T>(e[-1] >= 16384));
}

template <class T>
void softmax_layouts(std::mt19937_64& rng) {
    for (const index_t n : row_lengths<T>())
        for (const auto& pp : place_pairs)
            check_softmax<T>(
                {.shape = rows_shape(n), .x_place = pp[0], .y_place = pp[1], .scale = 0.7}, rng);
}

/// Masks (0, 1, 2), causal offsets (top-left, shifted either way, everything or nothing
/// kept), fully masked rows, higher rank and in-place operation.
template <class T>
void softmax_masks(std::mt19937_64& rng) {
    for (const index_t n : {index_t(7), index_t(64), index_t(1000), index_t(4096)}) {
        const extents e = n <= 1024 ? extents{2, 5, n} : extents{2, 3, n};
        for (int masks = 0; masks <= 2; ++masks)
            for (const index_t offset : {index_t(0), index_t(-2), index_t(3), index_t(-100), n - 5})
                for (const bool causal : {false, true}) {
                    if (!causal && offset != 0) continue;
                    const place xp = (masks + int(causal)) % 2 ? place::row_padded : place::gapped;
                    check_softmax<T>({.shape = e,
                                      .x_place = xp,
                                      .y_place = place::dense,
                                      .scale = 1.3,
                                      .masks = masks,
                                      .causal = causal,
                                      .causal_offset = offset},
                                     rng);
                }
    }
    // Rank 5 with broadcast masks and the causal rule on axis -2; in place.
    check_softmax<T>({.shape = {2, 1, 3, 4, 33},
                      .x_place = place::dense,
                      .scale = 0.5,
                      .masks = 2,
                      .causal = true,
                      .causal_offset = 1},
                     rng);
    check_softmax<T>({.shape = {2, 5, 64}, .x_place = place::dense, .masks = 1, .in_place = true},
                     rng);
    check_softmax<T>({.shape = {2, 2, 5000},
                      .x_place = place::gapped,
                      .masks = 2,
                      .causal = true,
                      .in_place = true},
                     rng);
}

TEST_CASE("cuda softmax matches the eigen backend in every row layout", "[cuda][softmax]") {
    auto rng = mmfuse_test::make_rng(1);
    softmax_layouts<float>(rng);
    softmax_layouts<mmfuse::bf16>(rng);
    softmax_layouts<mmfuse::half>(rng);
}

TEST_CASE("cuda softmax masks causal offsets and fully masked rows", "[cuda][softmax]") {
    auto rng = mmfuse_test::make_rng(2);
    softmax_masks<float>(rng);
    softmax_masks<mmfuse::bf16>(rng);
}

/// dx = softmax_backward(y, dy) for y a (masked, causal) softmax output in T.
template <class T>
void check_softmax_backward(const extents& e, place in_place, place out_place, bool alias_dy,
                            std::mt19937_64& rng) {
    const index_t n = e[-1];
    // y: a softmax output with some rows and entries masked (zeros), rounded to T.
    const tensor<float> hx = host_tensor(e, mmfuse_test::uniform_values(rng, e.numel(), -2.0, 2.0));
    const extents pad_e = e.with_axis(-2, 1);
    const tensor<bool> hpad = host_mask(pad_e, key_padding(pad_e, rng, true));
    tensor<float> hy0(e);
    auto& host = mmfuse::backend::default_stream();
    ops::softmax<float>(host, hx.cref(), hpad.cref(), hy0.ref(), {.causal = true});
    const std::vector<double> y = representable<T>(values_of(hy0));
    const std::vector<double> g =
        representable<T>(mmfuse_test::uniform_values(rng, e.numel(), -1.0, 1.0));
    const double scale = 0.8;
    const tensor<float> hy = host_tensor(e, y), hg = host_tensor(e, g);
    tensor<float> hdx(e);
    ops::softmax_backward<float>(host, hy.cref(), hg.cref(), hdx.ref(), scale);

    device_operand<T> dy_(e, in_place), dg(e, out_place), ddx(e, out_place);
    dy_.set(y);
    dg.set(g);
    ddx.poison();
    device_operand<T>& out = alias_dy ? dg : ddx;
    run_gpu(ops::softmax_backward_desc{scale}, {dy_.cref(), dg.cref()}, {out.ref()});
    std::ostringstream what;
    what << "softmax_backward " << dtype_label(mmfuse::dtype_of<T>) << " shape " << e.to_string()
         << " y/dy " << place_name(in_place) << "/" << place_name(out_place) << " dx "
         << (alias_dy ? "aliasing dy" : place_name(out_place));
    expect_close<T>(what.str(), out, values_of(hdx), tolerance<T>(n >= 16384));
}

template <class T>
void softmax_backward_cases(std::mt19937_64& rng) {
    for (const index_t n : row_lengths<T>())
        for (const auto& pp : place_pairs)
            check_softmax_backward<T>(rows_shape(n), pp[0], pp[1], false, rng);
    check_softmax_backward<T>({2, 5, 64}, place::dense, place::dense, true, rng);
    check_softmax_backward<T>({2, 2, 5000}, place::dense, place::gapped, true, rng);
}

TEST_CASE("cuda softmax backward matches the eigen backend", "[cuda][softmax]") {
    auto rng = mmfuse_test::make_rng(3);
    softmax_backward_cases<float>(rng);
    softmax_backward_cases<mmfuse::bf16>(rng);
    softmax_backward_cases<mmfuse::half>(rng);
}

// ---- layer norm and RMS norm ---------------------------------------------------------------

enum class norm_kind { layer, rms };

/// One norm case (forward, then backward from the forward's saved statistics).
struct norm_case {
    norm_kind kind = norm_kind::layer;
    extents shape;
    bool gamma = true, beta = true;  ///< beta only for layer norm
    bool accumulate = false;
    place x_place = place::dense, out_place = place::dense;
    place param_place = place::dense;  ///< gamma, beta, dgamma, dbeta
    place stat_place = place::dense;   ///< mean, rstd
    bool alias_dy = false;             ///< backward writes dx over dy

    std::string describe(const char* pass, mmfuse::dtype t) const {
        std::ostringstream s;
        s << (kind == norm_kind::layer ? "layer_norm" : "rms_norm") << pass << " " << dtype_label(t)
          << " shape " << shape.to_string() << " gamma " << gamma << " beta " << beta
          << " accumulate " << accumulate << " x " << place_name(x_place) << " out "
          << place_name(out_place) << " params " << place_name(param_place) << " stats "
          << place_name(stat_place) << " dx aliases dy " << alias_dy;
        return s.str();
    }
};

template <class T>
void check_norm(const norm_case& c, std::mt19937_64& rng) {
    const extents& e = c.shape;
    const index_t n = e[-1], rows = e.numel() / n;
    const bool layer = c.kind == norm_kind::layer;
    const bool beta = layer && c.gamma && c.beta;
    const double eps = layer ? 1e-5 : 1e-6;
    const extents pe{n}, se{rows};
    const double tol = tolerance<T>(n >= 16384);
    auto& host = mmfuse::backend::default_stream();

    // Inputs, rounded to T: x off-centre (a mean far from 0), gamma around 1.
    const std::vector<double> x =
        representable<T>(mmfuse_test::uniform_values(rng, e.numel(), -0.5, 1.5));
    const std::vector<double> gm = representable<T>(mmfuse_test::uniform_values(rng, n, 0.5, 1.5));
    const std::vector<double> bt = representable<T>(mmfuse_test::uniform_values(rng, n, -0.5, 0.5));
    const tensor<float> hx = host_tensor(e, x), hg = host_tensor(pe, gm), hb = host_tensor(pe, bt);
    const tensor_ref<const float> rg = c.gamma ? hg.cref() : tensor_ref<const float>{};
    const tensor_ref<const float> rb = beta ? hb.cref() : tensor_ref<const float>{};

    // ---- forward
    tensor<float> hy(e), hmean(se), hrstd(se);
    if (layer)
        ops::layer_norm<float>(host, hx.cref(), rg, rb, hy.ref(), hmean.ref(), hrstd.ref(), eps);
    else
        ops::rms_norm<float>(host, hx.cref(), rg, hy.ref(), hrstd.ref(), eps);

    device_operand<T> dx_in(e, c.x_place), dgam(pe, c.param_place), dbet(pe, c.param_place);
    dx_in.set(x);
    dgam.set(gm);
    dbet.set(bt);
    device_operand<T> dy_out(e, c.out_place), dmean(se, c.stat_place), drstd(se, c.stat_place);
    dy_out.poison();
    dmean.poison();
    drstd.poison();
    std::vector<any_tensor_ref> in{dx_in.cref()};
    if (c.gamma) in.emplace_back(dgam.cref());
    if (beta) in.emplace_back(dbet.cref());
    if (layer)
        run_gpu(ops::layer_norm_desc{eps, c.gamma, beta}, in,
                {dy_out.ref(), dmean.ref(), drstd.ref()});
    else
        run_gpu(ops::rms_norm_desc{eps, c.gamma}, in, {dy_out.ref(), drstd.ref()});
    const mmfuse::dtype t = mmfuse::dtype_of<T>;
    expect_close<T>(c.describe(" forward y", t), dy_out, values_of(hy), tol);
    if (layer) expect_close<T>(c.describe(" forward mean", t), dmean, values_of(hmean), tol);
    expect_close<T>(c.describe(" forward rstd", t), drstd, values_of(hrstd), tol);

    // ---- backward, from the saved statistics as T holds them
    const std::vector<double> mean = representable<T>(values_of(hmean));
    const std::vector<double> rstd = representable<T>(values_of(hrstd));
    const std::vector<double> g =
        representable<T>(mmfuse_test::uniform_values(rng, e.numel(), -1.0, 1.0));
    const std::vector<double> dgamma0 =
        representable<T>(mmfuse_test::uniform_values(rng, n, -1.0, 1.0));
    const std::vector<double> dbeta0 =
        representable<T>(mmfuse_test::uniform_values(rng, n, -1.0, 1.0));
    const tensor<float> hmean_t = host_tensor(se, mean), hrstd_t = host_tensor(se, rstd),
                        hgrad = host_tensor(e, g);
    tensor<float> hdx(e);
    tensor<float> hdg = host_tensor(pe, dgamma0), hdb = host_tensor(pe, dbeta0);
    const tensor_ref<float> rdg = c.gamma ? hdg.ref() : tensor_ref<float>{};
    const tensor_ref<float> rdb = beta ? hdb.ref() : tensor_ref<float>{};
    if (layer)
        ops::layer_norm_backward<float>(host, hx.cref(), hgrad.cref(), hmean_t.cref(),
                                        hrstd_t.cref(), rg, hdx.ref(), rdg, rdb, c.accumulate);
    else
        ops::rms_norm_backward<float>(host, hx.cref(), hgrad.cref(), hrstd_t.cref(), rg, hdx.ref(),
                                      rdg, c.accumulate);

    device_operand<T> dgrad(e, c.out_place), ddx(e, c.out_place), dstat_m(se, c.stat_place),
        dstat_r(se, c.stat_place), ddg(pe, c.param_place), ddb(pe, c.param_place);
    dgrad.set(g);
    ddx.poison();
    dstat_m.set(mean);
    dstat_r.set(rstd);
    if (c.accumulate) {
        ddg.set(dgamma0);
        ddb.set(dbeta0);
    } else {
        ddg.poison();
        ddb.poison();
    }
    device_operand<T>& out = c.alias_dy ? dgrad : ddx;
    std::vector<any_tensor_ref> bin{dx_in.cref(), dgrad.cref()};
    if (layer) bin.emplace_back(dstat_m.cref());
    bin.emplace_back(dstat_r.cref());
    if (c.gamma) bin.emplace_back(dgam.cref());
    std::vector<any_tensor_ref> bout{out.ref()};
    if (c.gamma) bout.emplace_back(ddg.ref());
    if (beta) bout.emplace_back(ddb.ref());
    if (layer)
        run_gpu(ops::layer_norm_backward_desc{c.gamma, beta, c.accumulate}, bin, bout);
    else
        run_gpu(ops::rms_norm_backward_desc{c.gamma, c.accumulate}, bin, bout);
    // RMS norm of one element has dx = rstd g eps / (x^2 + eps): a cancellation of 1 -
    // xhat^2 that float cannot resolve relative to the (tiny) result, so that case is
    // measured against the scale of its terms, ||rstd * g||.
    double dx_floor = 0.0;
    if (!layer && n == 1) {
        for (index_t i = 0; i < e.numel(); ++i) {
            const double term = rstd[std::size_t(i)] * g[std::size_t(i)] * (c.gamma ? gm[0] : 1.0);
            dx_floor += term * term;
        }
        dx_floor = std::sqrt(dx_floor);
    }
    expect_close<T>(c.describe(" backward dx", t), out, values_of(hdx), tol, dx_floor);
    if (c.gamma) expect_close<T>(c.describe(" backward dgamma", t), ddg, values_of(hdg), tol);
    if (beta) expect_close<T>(c.describe(" backward dbeta", t), ddb, values_of(hdb), tol);
}

/// Every row length and layout pair, cycling through the affine configurations, parameter
/// and statistics layouts and accumulate.
template <class T>
void norm_cases(norm_kind kind, std::mt19937_64& rng) {
    int i = 0;
    for (const index_t n : row_lengths<T>())
        for (const auto& pp : place_pairs) {
            norm_case c;
            c.kind = kind;
            c.shape = rows_shape(n);
            c.x_place = pp[0];
            c.out_place = pp[1];
            c.gamma = i % 3 != 2;
            c.beta = i % 3 == 0;
            c.accumulate = i % 2 == 1;
            c.param_place =
                i % 4 == 1 ? place::gapped : (i % 4 == 3 ? place::misaligned : place::dense);
            c.stat_place = i % 2 ? place::gapped : place::dense;
            check_norm<T>(c, rng);
            ++i;
        }
    // Rank 1 (one row), rank 5, many rows (several chunks of parameter-gradient partials),
    // and dx written over dy.
    check_norm<T>({.kind = kind, .shape = {300}}, rng);
    check_norm<T>(
        {.kind = kind, .shape = {2, 1, 3, 2, 40}, .accumulate = true, .x_place = place::transposed},
        rng);
    check_norm<T>({.kind = kind, .shape = {64, 33, 96}, .out_place = place::row_padded}, rng);
    check_norm<T>({.kind = kind, .shape = {2, 5, 64}, .alias_dy = true}, rng);
    check_norm<T>(
        {.kind = kind, .shape = {2, 2, 5000}, .out_place = place::gapped, .alias_dy = true}, rng);
}

TEST_CASE("cuda layer norm forward and backward match the eigen backend", "[cuda][norm]") {
    auto rng = mmfuse_test::make_rng(4);
    norm_cases<float>(norm_kind::layer, rng);
    norm_cases<mmfuse::bf16>(norm_kind::layer, rng);
    norm_cases<mmfuse::half>(norm_kind::layer, rng);
}

TEST_CASE("cuda rms norm forward and backward match the eigen backend", "[cuda][norm]") {
    auto rng = mmfuse_test::make_rng(5);
    norm_cases<float>(norm_kind::rms, rng);
    norm_cases<mmfuse::bf16>(norm_kind::rms, rng);
    norm_cases<mmfuse::half>(norm_kind::rms, rng);
}

// ---- what the launchers refuse, and steady-state allocation -------------------------------

TEST_CASE("cuda row ops refuse operands of the wrong dtype or shape", "[cuda][norm]") {
    const extents e{4, 8};
    device_operand<float> x(e, place::dense), y(e, place::dense), rstd({4}, place::dense),
        wrong({3}, place::dense);
    device_operand<mmfuse::bf16> yb(e, place::dense);
    x.set(std::vector<double>(32, 1.0));
    CHECK_THROWS_AS(run_gpu(ops::softmax_desc{}, {x.cref()}, {yb.ref()}), mmfuse::backend_error);
    CHECK_THROWS_AS(run_gpu(ops::softmax_desc{.masks = 1}, {x.cref(), y.cref()}, {y.ref()}),
                    mmfuse::backend_error);  // a float "mask"
    CHECK_THROWS_AS(
        run_gpu(ops::rms_norm_desc{.affine = false}, {x.cref()}, {y.ref(), wrong.ref()}),
        mmfuse::backend_error);  // rstd of 3 rows, x has 4
    CHECK_NOTHROW(run_gpu(ops::rms_norm_desc{.affine = false}, {x.cref()}, {y.ref(), rstd.ref()}));
    gpu::stream().synchronize();
}

TEST_CASE("cuda norm backward allocates nothing once the scratch has grown", "[cuda][norm]") {
    auto rng = mmfuse_test::make_rng(6);
    const extents e{8, 16, 256}, pe{256}, se{128};
    device_operand<float> x(e, place::dense), dy(e, place::dense), dx(e, place::dense),
        mean(se, place::dense), rstd(se, place::dense), gamma(pe, place::dense),
        dgamma(pe, place::dense), dbeta(pe, place::dense);
    x.set(mmfuse_test::uniform_values(rng, e.numel(), -1, 1));
    dy.set(mmfuse_test::uniform_values(rng, e.numel(), -1, 1));
    mean.set(mmfuse_test::uniform_values(rng, 128, -0.1, 0.1));
    rstd.set(mmfuse_test::uniform_values(rng, 128, 0.5, 2.0));
    gamma.set(mmfuse_test::uniform_values(rng, 256, 0.5, 1.5));
    const auto step = [&] {
        run_gpu(ops::layer_norm_backward_desc{},
                {x.cref(), dy.cref(), mean.cref(), rstd.cref(), gamma.cref()},
                {dx.ref(), dgamma.ref(), dbeta.ref()});
    };
    step();
    gpu::stream().synchronize();
    const auto before = mc::allocation_count();
    step();
    step();
    gpu::stream().synchronize();
    CHECK(mc::allocation_count() == before);
}

}  // namespace
