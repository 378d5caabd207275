// [cuda] tests of the CUDA backend's memory-bound ops (src/pointwise.cu): bias_add, unary,
// unary_backward, binary, copy, concat, split, reduce, gather_rows, scatter_add_rows,
// fill_random and combine, each against the Eigen reference backend run on the same values
// (bf16 / f16 operands: Eigen computes on their exact f32 values), or against core Philox
// for the random fills. Every case runs f32 and bf16 (f16 for most), contiguous operands
// (the vectorised path, with a ragged tail) and strided ones (transposed, padded, doubled
// strides, stride-0 broadcasts), on device outputs poisoned with NaN inside the view and a
// sentinel around it, so an unwritten element and a write outside the view both fail.
#include "support/cuda_util.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/ops/binary.hpp"
#include "support/strided.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse_test;
namespace mc = mmfuse::backend::cuda;
// (`half` alone is ambiguous next to CUDA's ::half from cuda_fp16.h: always mmfuse::half.)

namespace {

/// Largest error (`max_rel_error`) allowed for a result stored as T, against an f32
/// reference computed from the same inputs: a few f32 ulps (the device's transcendentals
/// and fused multiply-adds), else one rounding of the storage type.
template <class T>
constexpr double tolerance_for() {
    if constexpr (std::is_same_v<T, float>)
        return 1e-6;
    else if constexpr (std::is_same_v<T, bf16>)
        return 1e-2;
    else
        return 2e-3;
}

template <class T>
const char* type_name() {
    if constexpr (std::is_same_v<T, float>)
        return "f32";
    else if constexpr (std::is_same_v<T, double>)
        return "f64";
    else if constexpr (std::is_same_v<T, bf16>)
        return "bf16";
    else
        return "f16";
}

/// `s.execute(op, in, out)` with braced operand lists.
void execute(backend::stream& s, const ops::op_desc& op, std::initializer_list<any_tensor_ref> in,
             std::initializer_list<any_tensor_ref> out) {
    s.execute(op, std::span<const any_tensor_ref>(in.begin(), in.size()),
              std::span<const any_tensor_ref>(out.begin(), out.size()));
}

/// A `strided_operand` (support/strided.hpp: host buffer, guard zones, fills, checks) whose
/// whole buffer is mirrored in device memory: `ref()` / `cref()` are the device view, `host()`
/// the same view on the host, `f32()` an f32 copy of its values for the Eigen reference.
/// `download()` brings the device buffer back so that `values()` and `outside_intact()` see
/// what the GPU wrote.
template <class T>
class device_operand {
public:
    device_operand(const extents& e, layout l)
        : host_(e, l), extents_(e), layout_(l), strides_(layout_strides(e, l)) {
        index_t span = 0;
        if (e.numel() > 0) {
            span = 1;
            for (int k = 0; k < e.rank(); ++k)
                span += (e[k] - 1) * strides_[std::size_t(k)];
        }
        lead_ = strided_operand<T>::guard + layout_offset(e, l);
        size_ = lead_ + span + strided_operand<T>::guard;
        device_ = mc::device_buffer(std::size_t(size_) * sizeof(T));
        upload();
    }

    void fill_random(std::mt19937_64& rng, double lo = -1.0, double hi = 1.0) {
        host_.fill_random(rng, lo, hi);
        upload();
    }
    template <class Gen>
    void fill_each(Gen&& gen) {
        host_.fill_each(gen);
        upload();
    }
    void poison() {
        host_.poison();
        upload();
    }
    void sentinel_then_random(std::mt19937_64& rng) {
        host_.sentinel_then_random(rng);
        upload();
    }
    /// Sets the view's logical values (row-major order).
    void assign(std::span<const double> v) {
        host_.assign(v);
        upload();
    }

    tensor_ref<T> ref() const { return {dev() + lead_, extents_, strides(), memory_space::device}; }
    tensor_ref<const T> cref() const { return ref(); }
    tensor_ref<const T> host() const { return host_.cref(); }
    const extents& shape() const { return extents_; }
    const char* layout_label() const { return layout_name(layout_); }

    /// An f32 host operand with the same layout and (exactly converted) values.
    strided_operand<float> f32() const {
        strided_operand<float> t(extents_, layout_);
        const std::vector<double> v = host_.values();
        t.assign(v);
        return t;
    }

    /// Copies the device buffer back to the host mirror and returns the view's values.
    std::vector<double> download() {
        mc::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
        mc::check(cudaMemcpy(raw(), dev(), std::size_t(size_) * sizeof(T), cudaMemcpyDeviceToHost),
                  "cudaMemcpy D2H");
        return host_.values();
    }
    std::vector<double> values() const { return host_.values(); }
    bool outside_intact() const { return host_.outside_intact(); }

private:
    std::span<const index_t> strides() const {
        return {strides_.data(), std::size_t(extents_.rank())};
    }
    T* dev() const { return static_cast<T*>(device_.data()); }
    T* raw() { return host_.ref().data() - lead_; }
    void upload() {
        mc::check(cudaMemcpy(dev(), raw(), std::size_t(size_) * sizeof(T), cudaMemcpyHostToDevice),
                  "cudaMemcpy H2D");
    }

    strided_operand<T> host_;
    extents extents_;
    layout layout_;
    stride_array strides_;
    index_t lead_ = 0, size_ = 0;
    mc::device_buffer device_;
};

/// Shapes of the element-wise cases: dense with a ragged tail (105 = 26 packs of 4 + 1),
/// repeated rows whose period is a multiple of every vector width, a long vector, rank 6.
const std::array<extents, 4> pointwise_shapes{extents{3, 5, 7}, extents{2, 4, 16}, extents{1027},
                                              extents{2, 3, 1, 2, 2, 8}};

constexpr std::array<ops::unary_kind, 6> all_unary{
    ops::unary_kind::relu, ops::unary_kind::gelu_erf, ops::unary_kind::gelu_tanh,
    ops::unary_kind::silu, ops::unary_kind::sigmoid,  ops::unary_kind::tanh};

/// The CUDA stream under test and the Eigen reference stream.
mc::cuda_stream& gpu_stream() {
    return gpu::stream();
}
backend::stream& eigen_stream() {
    return backend::default_stream();
}

}  // namespace

// ---- element-wise ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda unary matches eigen for every activation and layout", "[cuda]", float,
                   bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1101);
    int combo = 0;
    for (const extents& e : pointwise_shapes)
        for (const ops::unary_kind kind : all_unary) {
            const layout lx = pick(input_layouts, combo), ly = pick(output_layouts, combo / 2);
            ++combo;
            device_operand<T> x(e, lx), y(e, ly);
            x.fill_random(rng, -4.0, 4.0);
            y.poison();
            execute(gpu_stream(), ops::unary_desc{kind}, {x.cref()}, {y.ref()});
            auto xf = x.f32();
            strided_operand<float> ref(e, layout::contiguous);
            ref.poison();
            execute(eigen_stream(), ops::unary_desc{kind}, {xf.cref()}, {ref.ref()});
            const auto got = y.download();
            INFO(type_name<T>() << " " << ops::unary_name(kind) << " x " << e.to_string() << " "
                                << x.layout_label() << ", y " << y.layout_label());
            CAPTURE(max_rel_error(got, ref.values()));
            CHECK(max_rel_error(got, ref.values()) <= tolerance_for<T>());
            CHECK(y.outside_intact());
        }
}

TEMPLATE_TEST_CASE("cuda unary in place and on empty tensors", "[cuda]", float, bf16) {
    using T = TestType;
    auto rng = make_rng(1102);
    device_operand<T> x(extents{4, 33}, layout::contiguous);
    x.fill_random(rng, -3.0, 3.0);
    auto xf = x.f32();
    strided_operand<float> ref(x.shape(), layout::contiguous);
    ref.poison();
    execute(eigen_stream(), ops::unary_desc{ops::unary_kind::silu}, {xf.cref()}, {ref.ref()});
    execute(gpu_stream(), ops::unary_desc{ops::unary_kind::silu}, {x.cref()}, {x.ref()});
    CHECK(max_rel_error(x.download(), ref.values()) <= tolerance_for<T>());

    device_operand<T> ex(extents{2, 0, 3}, layout::contiguous),
        ey(extents{2, 0, 3}, layout::padded);
    ey.poison();
    execute(gpu_stream(), ops::unary_desc{ops::unary_kind::relu}, {ex.cref()}, {ey.ref()});
    CHECK(ey.download().empty());
    CHECK(ey.outside_intact());
}

TEMPLATE_TEST_CASE("cuda unary_backward matches eigen for every activation and layout", "[cuda]",
                   float, bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1103);
    int combo = 0;
    for (const extents& e : pointwise_shapes)
        for (const ops::unary_kind kind : all_unary) {
            const layout lx = pick(input_layouts, combo), ld = pick(input_layouts, combo + 2),
                         ly = pick(output_layouts, combo / 3);
            ++combo;
            device_operand<T> x(e, lx), dy(e, ld), dx(e, ly);
            x.fill_random(rng, -4.0, 4.0);
            dy.fill_random(rng);
            dx.poison();
            execute(gpu_stream(), ops::unary_backward_desc{kind}, {x.cref(), dy.cref()},
                    {dx.ref()});
            auto xf = x.f32(), dyf = dy.f32();
            strided_operand<float> ref(e, layout::contiguous);
            ref.poison();
            execute(eigen_stream(), ops::unary_backward_desc{kind}, {xf.cref(), dyf.cref()},
                    {ref.ref()});
            const auto got = dx.download();
            INFO(type_name<T>() << " " << ops::unary_name(kind) << " x " << e.to_string() << " "
                                << x.layout_label() << ", dy " << layout_name(ld) << ", dx "
                                << dx.layout_label());
            CAPTURE(max_rel_error(got, ref.values()));
            CHECK(max_rel_error(got, ref.values()) <= tolerance_for<T>());
            CHECK(dx.outside_intact());
        }
}

TEMPLATE_TEST_CASE("cuda bias_add matches eigen", "[cuda]", float, bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1104);
    const std::array<extents, 4> shapes{extents{6, 16}, extents{3, 5, 7}, extents{4, 2, 24},
                                        extents{9}};
    int combo = 0;
    for (const extents& e : shapes)
        for (int variant = 0; variant < 4; ++variant) {
            const layout lx = pick(input_layouts, combo), ly = pick(output_layouts, combo);
            const layout lb = variant % 2 ? layout::strided : layout::contiguous;
            ++combo;
            device_operand<T> x(e, lx), bias(extents{e[-1]}, lb), y(e, ly);
            x.fill_random(rng);
            bias.fill_random(rng);
            y.poison();
            execute(gpu_stream(), ops::bias_add_desc{}, {x.cref(), bias.cref()}, {y.ref()});
            auto xf = x.f32(), bf = bias.f32();
            strided_operand<float> ref(e, layout::contiguous);
            ref.poison();
            execute(eigen_stream(), ops::bias_add_desc{}, {xf.cref(), bf.cref()}, {ref.ref()});
            const auto got = y.download();
            INFO(type_name<T>() << " x " << e.to_string() << " " << x.layout_label() << ", bias "
                                << bias.layout_label() << ", y " << y.layout_label());
            CHECK(max_rel_error(got, ref.values()) <= tolerance_for<T>());
            CHECK(y.outside_intact());
        }
}

TEMPLATE_TEST_CASE("cuda binary broadcasts like eigen", "[cuda]", float, bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1105);
    const extents ye{3, 4, 8};
    // (a, b) before broadcasting to ye: equal, a (L, F) table, a row, a (B, 1, F) gate,
    // a scalar, a rank-0 scalar.
    const std::array<std::pair<extents, extents>, 6> cases{
        std::pair{ye, ye},         std::pair{ye, extents{4, 8}},
        std::pair{extents{8}, ye}, std::pair{extents{3, 1, 8}, ye},
        std::pair{ye, extents{1}}, std::pair{extents{}, ye}};
    int combo = 0;
    for (const auto& [ae, be] : cases)
        for (const ops::binary_kind k :
             {ops::binary_kind::add, ops::binary_kind::sub, ops::binary_kind::mul}) {
            const layout la = pick(uniform_layouts, combo), lb = pick(uniform_layouts, combo + 1),
                         ly = pick(output_layouts, combo);
            ++combo;
            device_operand<T> a(ae, la), b(be, lb), y(ye, ly);
            a.fill_random(rng);
            b.fill_random(rng);
            y.poison();
            execute(gpu_stream(), ops::binary_desc{k}, {a.cref().expand(ye), b.cref().expand(ye)},
                    {y.ref()});
            auto af = a.f32(), bf = b.f32();
            strided_operand<float> ref(ye, layout::contiguous);
            ref.poison();
            execute(eigen_stream(), ops::binary_desc{k},
                    {af.cref().expand(ye), bf.cref().expand(ye)}, {ref.ref()});
            const auto got = y.download();
            INFO(type_name<T>() << " kind " << int(k) << ": a " << ae.to_string() << " "
                                << a.layout_label() << ", b " << be.to_string() << " "
                                << b.layout_label() << ", y " << y.layout_label());
            CHECK(max_rel_error(got, ref.values()) <= tolerance_for<T>());
            CHECK(y.outside_intact());
        }
}

TEST_CASE("cuda binary on transposed and narrowed device views, and in place", "[cuda]") {
    auto rng = make_rng(1106);
    auto& s = gpu_stream();
    tensor<float> ah = random_tensor<float>(extents{6, 10}, rng);
    tensor<float> bh = random_tensor<float>(extents{10, 6}, rng);
    const auto a = gpu::upload(ah), b = gpu::upload(bh);
    // y (4, 6) = a[1:5, 2:8] * b^T[1:5, 2:8], through the typed front-end.
    const auto an = a.cref().narrow(0, 1, 4).narrow(1, 2, 6);
    const auto bt = b.cref().transpose(0, 1).narrow(0, 1, 4).narrow(1, 2, 6);
    auto y = gpu::poisoned<float>(extents{4, 6});
    ops::binary<float>(s, ops::binary_kind::mul, an, bt, y.ref());
    const auto got = gpu::download(y);
    std::vector<double> ref;
    for (index_t i = 0; i < 4; ++i)
        for (index_t j = 0; j < 6; ++j)
            ref.push_back(double(ah(i + 1, j + 2)) * double(bh(j + 2, i + 1)));
    CHECK(max_rel_error(std::span<const float>(got.data(), 24), std::span<const double>(ref)) <=
          1e-7);

    // In place: a <- a + a (every element read before it is written, by the same thread).
    ops::binary<float>(s, ops::binary_kind::add, a.cref(), a.cref(), a.ref());
    const auto doubled = gpu::download(a);
    for (index_t i = 0; i < ah.numel(); ++i)
        REQUIRE(doubled[i] == 2.0f * ah[i]);
}

// ---- copy, concat, split --------------------------------------------------------------

namespace {
/// Values whose conversions are delicate: magnitudes 2^-30 .. 2^17 (f16 subnormals and
/// overflow to infinity, bf16 rounding ties), either sign.
double delicate_value(std::mt19937_64& rng) {
    std::uniform_real_distribution<double> exponent(-30.0, 17.0);
    std::bernoulli_distribution negative(0.5);
    const double v = std::exp2(exponent(rng));
    return negative(rng) ? -v : v;
}

template <class From, class To>
void check_copy(std::mt19937_64& rng, int combo) {
    for (const extents& e : {extents{3, 5, 7}, extents{2, 4, 16}}) {
        const layout lx = pick(input_layouts, combo), ly = pick(output_layouts, combo + 1);
        device_operand<From> x(e, lx);
        device_operand<To> y(e, ly);
        x.fill_each([&] { return delicate_value(rng); });
        y.poison();
        execute(gpu_stream(), ops::copy_desc{}, {x.cref()}, {y.ref()});
        strided_operand<To> ref(e, layout::contiguous);
        ref.poison();
        execute(eigen_stream(), ops::copy_desc{}, {x.host()}, {ref.ref()});
        const auto got = y.download();
        const auto want = ref.values();
        INFO("copy " << type_name<From>() << " -> " << type_name<To>() << " " << e.to_string()
                     << ", x " << x.layout_label() << ", y " << y.layout_label());
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < got.size(); ++i)
            if (!(got[i] == want[i])) ++mismatches;  // bit-exact (infinities compare equal)
        CHECK(mismatches == 0);
        CHECK(y.outside_intact());
    }
}

template <class From>
void check_copy_from(std::mt19937_64& rng, int& combo) {
    check_copy<From, float>(rng, combo++);
    check_copy<From, double>(rng, combo++);
    check_copy<From, bf16>(rng, combo++);
    check_copy<From, mmfuse::half>(rng, combo++);
}
}  // namespace

TEST_CASE("cuda copy converts between f32, f64, bf16 and f16 exactly as eigen", "[cuda]") {
    auto rng = make_rng(1201);
    int combo = 0;
    check_copy_from<float>(rng, combo);
    check_copy_from<double>(rng, combo);
    check_copy_from<bf16>(rng, combo);
    check_copy_from<mmfuse::half>(rng, combo);
}

TEMPLATE_TEST_CASE("cuda concat and split match eigen on every axis", "[cuda]", float, bf16) {
    using T = TestType;
    auto rng = make_rng(1202);
    const extents whole{4, 6, 10};
    int combo = 0;
    for (int axis = 0; axis < whole.rank(); ++axis) {
        const index_t n = whole[axis];
        const std::array<index_t, 3> lengths{1, n / 2 - 1, n - n / 2};
        std::vector<device_operand<T>> parts;
        for (const index_t len : lengths) {
            parts.emplace_back(whole.with_axis(axis, len), pick(input_layouts, combo++));
            parts.back().fill_random(rng);
        }
        device_operand<T> y(whole, pick(output_layouts, combo));
        y.poison();
        const int ax = combo % 2 ? axis - whole.rank() : axis;  // negative half the time
        execute(gpu_stream(), ops::concat_desc{ax},
                {parts[0].cref(), parts[1].cref(), parts[2].cref()}, {y.ref()});
        std::vector<strided_operand<float>> pf;
        for (const auto& p : parts)
            pf.push_back(p.f32());
        strided_operand<float> ref(whole, layout::contiguous);
        ref.poison();
        execute(eigen_stream(), ops::concat_desc{axis}, {pf[0].cref(), pf[1].cref(), pf[2].cref()},
                {ref.ref()});
        const auto got = y.download();
        INFO(type_name<T>() << " axis " << ax << ", y " << y.layout_label());
        CHECK(got == ref.values());
        CHECK(y.outside_intact());

        // Split y back into freshly poisoned parts of other layouts.
        std::vector<device_operand<T>> back;
        for (std::size_t k = 0; k < 3; ++k) {
            back.emplace_back(parts[k].shape(), pick(output_layouts, combo + int(k) + 1));
            back.back().poison();
        }
        execute(gpu_stream(), ops::split_desc{ax}, {y.cref()},
                {back[0].ref(), back[1].ref(), back[2].ref()});
        for (std::size_t k = 0; k < 3; ++k) {
            INFO("split part " << k << " " << back[k].layout_label());
            CHECK(back[k].download() == parts[k].values());
            CHECK(back[k].outside_intact());
        }
        ++combo;
    }
}

// ---- reduce -----------------------------------------------------------------------------

namespace {
/// One reduce case on the GPU and on Eigen; returns the GPU's values (for determinism checks).
template <class T>
std::vector<double> check_reduce(std::mt19937_64& rng, const extents& e, int axis,
                                 ops::reduce_kind kind, bool keepdim, bool accumulate, layout lx,
                                 layout ly) {
    const int ax = axis < 0 ? axis + e.rank() : axis;
    const extents ye = keepdim ? e.with_axis(ax, 1) : e.without_axis(ax);
    device_operand<T> x(e, lx), y(ye, ly);
    x.fill_random(rng);
    if (accumulate)
        y.sentinel_then_random(rng);
    else
        y.poison();
    auto xf = x.f32(), yf = y.f32();
    const ops::reduce_desc d{kind, axis, accumulate};
    execute(gpu_stream(), d, {x.cref()}, {y.ref()});
    execute(eigen_stream(), d, {xf.cref()}, {yf.ref()});
    const auto got = y.download();
    const auto want = yf.values();
    INFO(type_name<T>() << (kind == ops::reduce_kind::mean ? " mean" : " sum") << " of x "
                        << e.to_string() << " " << layout_name(lx) << " over axis " << axis
                        << (keepdim ? " keepdim" : "") << (accumulate ? " accumulate" : "")
                        << ", y " << layout_name(ly));
    if (kind == ops::reduce_kind::mean && e[ax] == 0) {  // the mean of nothing is NaN
        for (const double v : got)
            CHECK(std::isnan(v));
    } else {
        CAPTURE(max_rel_error(got, want));
        CHECK(max_rel_error(got, want) <= tolerance_for<T>());
    }
    CHECK(y.outside_intact());
    return got;
}
}  // namespace

TEMPLATE_TEST_CASE("cuda reduce matches eigen on every axis, layout and flag", "[cuda]", float,
                   bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1301);
    const std::array<extents, 5> shapes{extents{3, 5, 7}, extents{2, 3, 1, 5}, extents{37},
                                        extents{2, 0, 3}, extents{0, 4}};
    int combo = 0;
    for (const extents& e : shapes)
        for (int ax = 0; ax < e.rank(); ++ax)
            for (const ops::reduce_kind kind : {ops::reduce_kind::sum, ops::reduce_kind::mean}) {
                const int c = combo++;
                check_reduce<T>(rng, e, c % 2 ? ax - e.rank() : ax, kind, c % 3 == 0, c % 4 == 1,
                                pick(input_layouts, c), pick(output_layouts, c / 2));
            }
}

TEMPLATE_TEST_CASE("cuda reduce of long axes uses every strategy and is deterministic", "[cuda]",
                   float, bf16) {
    using T = TestType;
    struct reduce_case {
        extents e;
        int axis;
        const char* strategy;
    };
    // The strategy each case takes with x contiguous on an H100 (132 multiprocessors);
    // reversed (column-major) x swaps the roles of rows and columns.
    const std::array<reduce_case, 7> cases{
        reduce_case{extents{3000, 100}, 1, "a warp per output"},
        reduce_case{extents{64, 1000}, 1, "a warp per output, axis in chunks (scratch)"},
        reduce_case{extents{16, 20000}, 0, "a thread per output (columns)"},
        reduce_case{extents{8192, 64}, 0, "a thread per output, axis in chunks (scratch)"},
        reduce_case{extents{600, 5000}, 1, "a block per output"},
        reduce_case{extents{4, 1 << 18}, 1, "a block per output, axis in chunks (scratch)"},
        reduce_case{extents{3000, 12}, 1, "a thread per short row"}};
    int combo = 0;
    for (const reduce_case& rc : cases)
        for (const layout lx : {layout::contiguous, layout::reversed}) {
            INFO(rc.strategy);
            const auto kind = combo % 2 ? ops::reduce_kind::mean : ops::reduce_kind::sum;
            const bool accumulate = combo % 3 == 2;
            // Same inputs twice (equal seeds): the results must agree bit for bit.
            auto rng1 = make_rng(1310 + std::uint64_t(combo)), rng2 = rng1;
            const auto first = check_reduce<T>(rng1, rc.e, rc.axis, kind, false, accumulate, lx,
                                               layout::contiguous);
            const auto second = check_reduce<T>(rng2, rc.e, rc.axis, kind, false, accumulate, lx,
                                                layout::contiguous);
            CHECK(first == second);
            ++combo;
        }
}

// ---- gather_rows / scatter_add_rows -----------------------------------------------------

TEMPLATE_TEST_CASE("cuda gather_rows and scatter_add_rows match eigen", "[cuda]", float, bf16,
                   mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1401);
    const index_t n_rows = 10;
    // Repeated indices (at most three times each), so that scatter-add really accumulates.
    const std::vector<double> index_values{3, 0, 9, 3, 5, 5, 1, 8, 3, 2, 7, 0, 4};
    const index_t r = index_t(index_values.size());
    int combo = 0;
    // F = 16 and 64 take the vectorised gather with unit column strides; 5 never does.
    for (const index_t f : {index_t(16), index_t(5), index_t(64)})
        for (const layout lt : {layout::contiguous, layout::reversed, layout::padded}) {
            const layout ly = pick(output_layouts, combo);
            const layout li = combo % 2 ? layout::strided : layout::contiguous;
            ++combo;
            device_operand<std::int64_t> indices(extents{r}, li);
            indices.assign(index_values);

            // gather: y (R, F) = table (N, F)[indices]
            device_operand<T> table(extents{n_rows, f}, lt), y(extents{r, f}, ly);
            table.fill_random(rng);
            y.poison();
            execute(gpu_stream(), ops::gather_rows_desc{}, {table.cref(), indices.cref()},
                    {y.ref()});
            auto tf = table.f32();
            strided_operand<float> yref(extents{r, f}, layout::contiguous);
            yref.poison();
            execute(eigen_stream(), ops::gather_rows_desc{}, {tf.cref(), indices.host()},
                    {yref.ref()});
            INFO(type_name<T>() << " F = " << f << ", table " << table.layout_label() << ", y "
                                << y.layout_label() << ", indices " << layout_name(li));
            CHECK(y.download() == yref.values());
            CHECK(y.outside_intact());

            // scatter-add: grad (N, F) += dy (R, F) at the indices (atomics: any order)
            device_operand<T> dy(extents{r, f}, pick(input_layouts, combo)),
                grad(extents{n_rows, f}, lt);
            dy.fill_random(rng);
            grad.sentinel_then_random(rng);
            auto dyf = dy.f32(), gf = grad.f32();
            execute(gpu_stream(), ops::scatter_add_rows_desc{}, {dy.cref(), indices.cref()},
                    {grad.ref()});
            execute(eigen_stream(), ops::scatter_add_rows_desc{}, {dyf.cref(), indices.host()},
                    {gf.ref()});
            const auto got = grad.download();
            INFO("scatter_add_rows, dy " << layout_name(pick(input_layouts, combo)));
            // bf16 / f16 round after each of up to three additions: three roundings.
            CAPTURE(max_rel_error(got, gf.values()));
            CHECK(max_rel_error(got, gf.values()) <= 3 * tolerance_for<T>());
            CHECK(grad.outside_intact());
        }
}

TEST_CASE("cuda gather_rows gives NaN rows and scatter_add_rows skips rows for bad indices",
          "[cuda]") {
    // Device-memory indices cannot be checked by the front-end; the kernels stay in bounds.
    auto rng = make_rng(1402);
    device_operand<std::int64_t> indices(extents{4}, layout::contiguous);
    indices.assign(std::vector<double>{2, 10, -1, 0});
    device_operand<float> table(extents{10, 8}, layout::contiguous),
        y(extents{4, 8}, layout::contiguous);
    table.fill_random(rng);
    y.poison();
    execute(gpu_stream(), ops::gather_rows_desc{}, {table.cref(), indices.cref()}, {y.ref()});
    const auto got = y.download();
    const auto t = table.values();
    for (index_t c = 0; c < 8; ++c) {
        CHECK(got[std::size_t(c)] == t[std::size_t(2 * 8 + c)]);
        CHECK(std::isnan(got[std::size_t(8 + c)]));
        CHECK(std::isnan(got[std::size_t(16 + c)]));
        CHECK(got[std::size_t(24 + c)] == t[std::size_t(c)]);
    }

    device_operand<float> dy(extents{4, 8}, layout::contiguous),
        grad(extents{10, 8}, layout::contiguous);
    dy.fill_random(rng);
    grad.sentinel_then_random(rng);
    const auto before = grad.values();
    execute(gpu_stream(), ops::scatter_add_rows_desc{}, {dy.cref(), indices.cref()}, {grad.ref()});
    const auto after = grad.download();
    const auto d = dy.values();
    for (index_t row = 0; row < 10; ++row)
        for (index_t c = 0; c < 8; ++c) {
            const std::size_t i = std::size_t(row * 8 + c);
            const double add = row == 2   ? d[std::size_t(c)]
                               : row == 0 ? d[std::size_t(24 + c)]
                                          : 0.0;
            CHECK(after[i] == double(float(before[i] + add)));
        }
}

// ---- fill_random ------------------------------------------------------------------------------

namespace {
/// What core's fill gives a host f32 tensor of extents `e` (row-major logical order).
std::vector<double> core_fill(const ops::fill_random_desc& d, const extents& e) {
    tensor<float> t(e);
    philox_generator gen(d.draw.seed, d.draw.subsequence, d.draw.offset);
    if (d.kind == ops::random_kind::uniform)
        fill_uniform(gen, t.ref(), d.a, d.b);
    else
        fill_normal(gen, t.ref(), d.a, d.b);
    return to_vector(t.cref());
}
}  // namespace

TEMPLATE_TEST_CASE("cuda fill_random reproduces core philox element by element", "[cuda]", float,
                   bf16, mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1501);
    std::uniform_int_distribution<std::uint64_t> any;
    const std::array<extents, 3> shapes{extents{1001}, extents{3, 5, 7}, extents{2, 64, 33}};
    int combo = 0;
    for (const extents& e : shapes)
        for (const ops::random_kind kind : {ops::random_kind::uniform, ops::random_kind::normal}) {
            const layout ly = pick(output_layouts, combo++);
            ops::fill_random_desc d;
            d.kind = kind;
            d.a = kind == ops::random_kind::uniform ? -2.0 : 0.5;
            d.b = kind == ops::random_kind::uniform ? 3.0 : 1.5;
            // An odd offset: element 0 does not start a Philox block.
            d.draw = {any(rng), any(rng) % 8, 2 * (any(rng) % 1000) + 1};
            device_operand<T> y(e, ly);
            y.poison();
            execute(gpu_stream(), d, {}, {y.ref()});
            const auto got = y.download();
            auto want = core_fill(d, e);
            for (double& v : want)
                v = double(from_double<T>(v));  // the f32 value rounded to storage
            INFO(type_name<T>() << (kind == ops::random_kind::uniform ? " uniform " : " normal ")
                                << e.to_string() << ", y " << y.layout_label() << ", seed "
                                << d.draw.seed << ", subsequence " << d.draw.subsequence
                                << ", offset " << d.draw.offset);
            CHECK(y.outside_intact());
            if (kind == ops::random_kind::uniform) {
                // Bit-identical uniforms: the same integer-to-float arithmetic on both sides.
                std::size_t mismatches = 0;
                for (std::size_t i = 0; i < got.size(); ++i)
                    if (got[i] != want[i]) ++mismatches;
                CHECK(mismatches == 0);
            } else {
                // Normals: the device's log / sqrt / sin / cos are within a few ulps of glibc's.
                CAPTURE(max_rel_error(got, want));
                CHECK(max_rel_error(got, want) <= tolerance_for<T>());
            }
        }
}

TEST_CASE("cuda fill_random of a large tensor and its parameter checks", "[cuda]") {
    ops::fill_random_desc d{ops::random_kind::uniform, 0.0, 1.0, {12345, 3, 4096}};
    const extents e{1 << 20};
    auto y = gpu::poisoned<float>(e);
    execute(gpu_stream(), d, {}, {y.ref()});
    const auto got = gpu::download(y);
    const auto want = core_fill(d, e);
    std::size_t mismatches = 0;
    for (index_t i = 0; i < e.numel(); ++i)
        if (double(got[i]) != want[std::size_t(i)]) ++mismatches;
    CHECK(mismatches == 0);

    auto& s = gpu_stream();
    CHECK_THROWS_AS(
        execute(s, ops::fill_random_desc{ops::random_kind::uniform, 1.0, 0.0}, {}, {y.ref()}),
        value_error);
    CHECK_THROWS_AS(
        execute(s, ops::fill_random_desc{ops::random_kind::normal, 0.0, -1.0}, {}, {y.ref()}),
        value_error);
    CHECK_THROWS_AS(
        execute(s, ops::fill_random_desc{ops::random_kind::normal, INFINITY, 1.0}, {}, {y.ref()}),
        value_error);
}

// ---- combine -----------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cuda combine matches eigen with and without noise", "[cuda]", float, bf16,
                   mmfuse::half) {
    using T = TestType;
    auto rng = make_rng(1601);
    std::uniform_real_distribution<double> coeff(-2.0, 2.0);
    std::uniform_int_distribution<std::uint64_t> any;
    int combo = 0;
    for (const extents& e : {extents{4, 33}, extents{2, 4, 16}})
        for (int n = 1; n <= ops::max_combine_inputs; ++n)
            for (const bool noisy : {false, true}) {
                ops::combine_desc d;
                for (int k = 0; k < n; ++k)
                    d.coeff[std::size_t(k)] = coeff(rng);
                d.noise_scale = noisy ? 0.3 : 0.0;
                d.noise = {any(rng), any(rng) % 4, any(rng) % 100};
                std::vector<device_operand<T>> x;
                std::vector<strided_operand<float>> xf;
                std::vector<any_tensor_ref> xd, xh;
                for (int k = 0; k < n; ++k) {
                    x.emplace_back(e, pick(input_layouts, combo + k));
                    x.back().fill_random(rng);
                }
                for (const auto& op : x) {
                    xf.push_back(op.f32());
                    xd.push_back(op.cref());
                }
                for (const auto& op : xf)
                    xh.push_back(op.cref());
                device_operand<T> y(e, pick(output_layouts, combo));
                ++combo;
                y.poison();
                const any_tensor_ref yd = y.ref();
                gpu_stream().execute(d, xd, std::span<const any_tensor_ref>(&yd, 1));
                strided_operand<float> ref(e, layout::contiguous);
                ref.poison();
                const any_tensor_ref yh = ref.ref();
                eigen_stream().execute(d, xh, std::span<const any_tensor_ref>(&yh, 1));
                const auto got = y.download();
                std::string layouts;
                for (const auto& op : x) {
                    layouts += op.layout_label();
                    layouts += " ";
                }
                INFO(type_name<T>()
                     << " combine of " << n << " inputs " << e.to_string() << " (" << layouts
                     << "), noise " << noisy << ", y " << y.layout_label());
                CAPTURE(max_rel_error(got, ref.values()));
                CHECK(max_rel_error(got, ref.values()) <= tolerance_for<T>());
                CHECK(y.outside_intact());
            }
}

TEST_CASE("cuda combine in place with a broadcast input", "[cuda]") {
    auto rng = make_rng(1602);
    const extents e{8, 40};
    device_operand<float> x(e, layout::contiguous), row(extents{40}, layout::contiguous);
    x.fill_random(rng);
    row.fill_random(rng);
    const ops::combine_desc d{{0.9, -0.25, 0.0, 0.0}, 0.1, {77, 1, 5}};
    auto xf = x.f32(), rf = row.f32();
    eigen_stream().execute(d, std::array<any_tensor_ref, 2>{xf.cref(), rf.cref().expand(e)},
                           std::array<any_tensor_ref, 1>{xf.ref()});
    gpu_stream().execute(d, std::array<any_tensor_ref, 2>{x.cref(), row.cref().expand(e)},
                         std::array<any_tensor_ref, 1>{x.ref()});
    CHECK(max_rel_error(x.download(), xf.values()) <= 1e-6);
}

// ---- what the stream refuses ---------------------------------------------------------------

TEST_CASE("cuda stream refuses host memory, unsupported dtypes and malformed operands", "[cuda]") {
    auto& s = gpu_stream();
    auto dx = gpu::poisoned<float>(extents{4, 8});
    auto dy = gpu::poisoned<float>(extents{4, 8});
    tensor<float> hx(extents{4, 8});
    // A host tensor on the CUDA stream.
    CHECK_THROWS_AS(execute(s, ops::unary_desc{}, {hx.cref()}, {dy.ref()}), backend_error);
    CHECK_THROWS_AS(execute(s, ops::unary_desc{}, {dx.cref()}, {hx.ref()}), backend_error);
    // f64 is a copy-only dtype; i32 is no float at all.
    mc::device_tensor<double> d64(extents{4, 8});
    CHECK_THROWS_AS(execute(s, ops::unary_desc{}, {d64.cref()}, {d64.ref()}), backend_error);
    mc::device_tensor<std::int32_t> i32(extents{4, 8});
    CHECK_THROWS_AS(execute(s, ops::copy_desc{}, {i32.cref()}, {dy.ref()}), backend_error);
    CHECK_THROWS_AS(execute(s, ops::copy_desc{}, {dx.cref()}, {i32.ref()}), backend_error);
    // Mixed dtypes, which the typed front-ends cannot produce.
    mc::device_tensor<bf16> b16(extents{4, 8});
    CHECK_THROWS_AS(execute(s, ops::binary_desc{}, {dx.cref(), b16.cref()}, {dy.ref()}),
                    backend_error);
    // Indices that are not i64.
    mc::device_tensor<std::int32_t> idx32(extents{4});
    auto table = gpu::poisoned<float>(extents{6, 8});
    CHECK_THROWS_AS(execute(s, ops::gather_rows_desc{}, {table.cref(), idx32.cref()}, {dy.ref()}),
                    backend_error);
    // More than max_combine_inputs inputs, and a combine input of other extents.
    std::vector<any_tensor_ref> five(5, dx.cref());
    const any_tensor_ref out = dy.ref();
    CHECK_THROWS_AS(s.execute(ops::combine_desc{}, five, std::span<const any_tensor_ref>(&out, 1)),
                    backend_error);
    auto other = gpu::poisoned<float>(extents{8, 4});
    CHECK_THROWS_AS(execute(s, ops::combine_desc{}, {other.cref()}, {dy.ref()}), backend_error);
    // The stream still works afterwards.
    execute(s, ops::fill_random_desc{ops::random_kind::uniform, 0.0, 1.0, {1, 0, 0}}, {},
            {dy.ref()});
    s.synchronize();
}
