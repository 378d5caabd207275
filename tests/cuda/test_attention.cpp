// [cuda] tests: fused attention (ops::attention_desc / attention_backward_desc) on the CUDA
// backend against an independent double-precision reference written here (plain loops:
// S = scale q k^T, mask, softmax, O = P v, lse; backward by the standard formulas
// dV = P^T dO, dP = dO V^T, dS = P o (dP - rowsum(dO o O)), dQ = scale dS K, dK = scale dS^T Q),
// computed from the same rounded inputs the GPU sees. Device outputs are poisoned first;
// errors are relative L2 over each tensor, lse is compared absolutely, and rows with nothing
// kept must give O = 0 and lse = -inf exactly.
#include "support/cuda_util.hpp"
#include "support/test_util.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mmfuse/ops/op_desc.hpp"

namespace {

using namespace mmfuse;
namespace gpu = mmfuse_test::gpu;
namespace mc = mmfuse::backend::cuda;
using mmfuse::index_t;

/// Which positions take part besides the problem bounds.
enum class masking {
    none,
    padding,      ///< (B, 1, Lq, Lk) keep mask broadcast over heads: key padding per batch
                  ///< plus fully masked query rows
    causal_top,   ///< causal, offset 0 (SDPA's is_causal)
    causal_bottom ///< causal, offset Lk - Lq (aligned at the bottom right)
};

const char* masking_name(masking m) {
    switch (m) {
        case masking::none:
            return "none";
        case masking::padding:
            return "padding";
        case masking::causal_top:
            return "causal offset 0";
        default:
            return "causal offset Lk-Lq";
    }
}

/// How a (B, H, L, X) operand lies in device memory.
enum class layout {
    contiguous,         ///< (B, H, L, X) row-major
    interleaved_heads,  ///< heads split out of a (B, L, H X) projection: view (B, L, H, X)
                        ///< transposed to (B, H, L, X)
    padded_rows         ///< (B, H, L, X + 3) narrowed to X: row stride not a multiple of 8
};

const char* layout_name(layout l) {
    switch (l) {
        case layout::contiguous:
            return "contiguous";
        case layout::interleaved_heads:
            return "interleaved heads";
        default:
            return "padded rows";
    }
}

/// The extents and strides of one operand (B, H, L, X) in a given layout.
struct operand_layout {
    index_t b, h, l, x;
    layout kind;

    index_t pitch() const { return kind == layout::padded_rows ? x + 3 : x; }
    std::array<index_t, 4> strides() const {
        if (kind == layout::interleaved_heads) return {l * h * x, x, h * x, 1};
        return {h * l * pitch(), l * pitch(), pitch(), 1};
    }
    index_t buffer_size() const { return b * h * l * pitch(); }
    index_t offset(index_t bi, index_t hi, index_t li, index_t xi) const {
        const auto s = strides();
        return bi * s[0] + hi * s[1] + li * s[2] + xi * s[3];
    }
    index_t index(index_t bi, index_t hi, index_t li, index_t xi) const {
        return ((bi * h + hi) * l + li) * x + xi;
    }
};

/// A device operand: its buffer and the (B, H, L, X) view of it.
template <class T>
struct device_operand {
    operand_layout shape;
    mc::device_tensor<T> buffer;

    /// Uploads `values` (logical (B, H, L, X) order); unused buffer bytes are poisoned.
    static device_operand upload(const operand_layout& s, const std::vector<double>& values) {
        tensor<T> host({s.buffer_size()});
        host.fill(T(std::numeric_limits<float>::quiet_NaN()));
        for (index_t bi = 0; bi < s.b; ++bi)
            for (index_t hi = 0; hi < s.h; ++hi)
                for (index_t li = 0; li < s.l; ++li)
                    for (index_t xi = 0; xi < s.x; ++xi)
                        host[s.offset(bi, hi, li, xi)] = mmfuse_test::from_double<T>(values[std::size_t(s.index(bi, hi, li, xi))]);
        return {s, gpu::upload(host)};
    }
    /// A poisoned (all bits set: NaN) output.
    static device_operand poisoned(const operand_layout& s) {
        return {s, gpu::poisoned<T>({s.buffer_size()})};
    }
    tensor_ref<T> ref() const {
        const auto st = shape.strides();
        return tensor_ref<T>(buffer.data(), {shape.b, shape.h, shape.l, shape.x}, st, memory_space::device);
    }
    /// The logical (B, H, L, X) values (synchronises).
    std::vector<double> download() const {
        const tensor<T> host = gpu::download(buffer);
        std::vector<double> out(std::size_t(shape.b * shape.h * shape.l * shape.x));
        for (index_t bi = 0; bi < shape.b; ++bi)
            for (index_t hi = 0; hi < shape.h; ++hi)
                for (index_t li = 0; li < shape.l; ++li)
                    for (index_t xi = 0; xi < shape.x; ++xi)
                        out[std::size_t(shape.index(bi, hi, li, xi))] = double(host[shape.offset(bi, hi, li, xi)]);
        return out;
    }
};

/// One attention problem.
struct problem {
    index_t batch, heads, lq, lk, d, dv;
    masking mask;
    layout kind;
    double custom_scale = 0.0;  ///< 0: the usual 1 / sqrt(D)

    double scale() const { return custom_scale != 0.0 ? custom_scale : 1.0 / std::sqrt(double(d)); }
    ops::attention_desc desc() const {
        ops::attention_desc a;
        a.scale = scale();
        a.causal = mask == masking::causal_top || mask == masking::causal_bottom;
        a.causal_offset = mask == masking::causal_bottom ? lk - lq : 0;
        a.masked = mask == masking::padding;
        return a;
    }
    std::string name() const {
        std::string s = "B " + std::to_string(batch);
        s += " H " + std::to_string(heads);
        s += " Lq " + std::to_string(lq);
        s += " Lk " + std::to_string(lk);
        s += " D " + std::to_string(d);
        s += " Dv " + std::to_string(dv);
        s += ", mask: ";
        s += masking_name(mask);
        s += ", layout: ";
        s += layout_name(kind);
        s += ", scale " + std::to_string(scale());
        return s;
    }
};

/// The padding mask, (B, Lq, Lk): batch b keeps keys j < valid(b); rows i % 5 == 2 keep
/// nothing (for Lq > 2).
std::vector<char> padding_mask(const problem& pr) {
    std::vector<char> keep(std::size_t(pr.batch * pr.lq * pr.lk));
    for (index_t b = 0; b < pr.batch; ++b) {
        const index_t valid = b % 2 == 0 ? pr.lk : std::max<index_t>(1, pr.lk * 2 / 3);
        for (index_t i = 0; i < pr.lq; ++i)
            for (index_t j = 0; j < pr.lk; ++j)
                keep[std::size_t((b * pr.lq + i) * pr.lk + j)] = j < valid && !(pr.lq > 2 && i % 5 == 2);
    }
    return keep;
}

/// Inputs in logical order, already rounded to the element type T.
struct inputs {
    std::vector<double> q, k, v, dout;
    std::vector<char> keep;  // (B, Lq, Lk) when masked
};

template <class T>
std::vector<double> rounded_uniform(std::mt19937_64& rng, index_t n, double lo, double hi) {
    std::vector<double> x = mmfuse_test::uniform_values(rng, n, lo, hi);
    for (double& e : x)
        e = double(mmfuse_test::from_double<T>(e));
    return x;
}

template <class T>
inputs make_inputs(const problem& pr, std::uint64_t salt) {
    auto rng = mmfuse_test::make_rng(salt);
    inputs x;
    const index_t bh = pr.batch * pr.heads;
    x.q = rounded_uniform<T>(rng, bh * pr.lq * pr.d, -2.0, 2.0);
    x.k = rounded_uniform<T>(rng, bh * pr.lk * pr.d, -2.0, 2.0);
    x.v = rounded_uniform<T>(rng, bh * pr.lk * pr.dv, -1.0, 1.0);
    x.dout = rounded_uniform<T>(rng, bh * pr.lq * pr.dv, -1.0, 1.0);
    if (pr.mask == masking::padding) x.keep = padding_mask(pr);
    return x;
}

/// The double-precision reference.
struct reference {
    std::vector<double> o, lse, dq, dk, dv;
};

reference compute_reference(const problem& pr, const inputs& x) {
    const auto desc = pr.desc();
    const index_t bh = pr.batch * pr.heads;
    reference r;
    r.o.assign(std::size_t(bh * pr.lq * pr.dv), 0.0);
    r.lse.assign(std::size_t(bh * pr.lq), 0.0);
    r.dq.assign(std::size_t(bh * pr.lq * pr.d), 0.0);
    r.dk.assign(std::size_t(bh * pr.lk * pr.d), 0.0);
    r.dv.assign(std::size_t(bh * pr.lk * pr.dv), 0.0);
    std::vector<double> s(std::size_t(pr.lk)), prob(std::size_t(pr.lk)), dp(std::size_t(pr.lk));
    std::vector<char> kept(std::size_t(pr.lk));
    for (index_t b = 0; b < pr.batch; ++b)
        for (index_t h = 0; h < pr.heads; ++h) {
            const index_t g = b * pr.heads + h;
            const double* q = &x.q[std::size_t(g * pr.lq * pr.d)];
            const double* k = &x.k[std::size_t(g * pr.lk * pr.d)];
            const double* v = &x.v[std::size_t(g * pr.lk * pr.dv)];
            const double* dout = &x.dout[std::size_t(g * pr.lq * pr.dv)];
            double* o = &r.o[std::size_t(g * pr.lq * pr.dv)];
            double* dq = &r.dq[std::size_t(g * pr.lq * pr.d)];
            double* dk = &r.dk[std::size_t(g * pr.lk * pr.d)];
            double* dv = &r.dv[std::size_t(g * pr.lk * pr.dv)];
            for (index_t i = 0; i < pr.lq; ++i) {
                double mx = -INFINITY;
                for (index_t j = 0; j < pr.lk; ++j) {
                    bool keep = !desc.causal || j <= i + desc.causal_offset;
                    if (desc.masked) keep = keep && x.keep[std::size_t((b * pr.lq + i) * pr.lk + j)];
                    kept[std::size_t(j)] = keep;
                    double dot = 0.0;
                    for (index_t c = 0; c < pr.d; ++c)
                        dot += q[i * pr.d + c] * k[j * pr.d + c];
                    s[std::size_t(j)] = pr.scale() * dot;
                    if (keep) mx = std::max(mx, s[std::size_t(j)]);
                }
                if (mx == -INFINITY) {  // nothing kept: O = 0, lse = -inf, no gradient
                    r.lse[std::size_t(g * pr.lq + i)] = -INFINITY;
                    continue;
                }
                double sum = 0.0;
                for (index_t j = 0; j < pr.lk; ++j) {
                    prob[std::size_t(j)] = kept[std::size_t(j)] ? std::exp(s[std::size_t(j)] - mx) : 0.0;
                    sum += prob[std::size_t(j)];
                }
                r.lse[std::size_t(g * pr.lq + i)] = mx + std::log(sum);
                for (index_t j = 0; j < pr.lk; ++j)
                    prob[std::size_t(j)] /= sum;
                for (index_t c = 0; c < pr.dv; ++c) {
                    double acc = 0.0;
                    for (index_t j = 0; j < pr.lk; ++j)
                        acc += prob[std::size_t(j)] * v[j * pr.dv + c];
                    o[i * pr.dv + c] = acc;
                }
                // Backward of this row.
                double delta = 0.0;
                for (index_t c = 0; c < pr.dv; ++c)
                    delta += dout[i * pr.dv + c] * o[i * pr.dv + c];
                for (index_t j = 0; j < pr.lk; ++j) {
                    const double pj = prob[std::size_t(j)];
                    if (pj == 0.0) continue;
                    double dpj = 0.0;
                    for (index_t c = 0; c < pr.dv; ++c) {
                        dpj += dout[i * pr.dv + c] * v[j * pr.dv + c];
                        dv[j * pr.dv + c] += pj * dout[i * pr.dv + c];
                    }
                    const double ds = pj * (dpj - delta) * pr.scale();
                    for (index_t c = 0; c < pr.d; ++c) {
                        dq[i * pr.d + c] += ds * k[j * pr.d + c];
                        dk[j * pr.d + c] += ds * q[i * pr.d + c];
                    }
                }
            }
        }
    return r;
}

/// Relative L2 error of `got` against `ref`.
double rel_l2(const std::vector<double>& got, const std::vector<double>& ref) {
    return gpu::rel_l2_error(std::span<const double>(got), std::span<const double>(ref));
}

/// Tolerances per element type (relative L2; lse absolute).
template <class T>
struct tolerance {
    static constexpr double o = 1e-5, grad = 1e-5, lse = 1e-5;
};
template <>
struct tolerance<mmfuse::bf16> {
    static constexpr double o = 2e-2, grad = 3e-2, lse = 1e-3;
};
template <>
struct tolerance<mmfuse::half> {
    static constexpr double o = 5e-3, grad = 1e-2, lse = 1e-3;
};

/// The device operands of one problem.
template <class T>
struct device_problem {
    device_operand<T> q, k, v, o, dout, dq, dk, dv;
    mc::device_tensor<float> lse;
    mc::device_tensor<bool> keep;  // (B, 1, Lq, Lk), broadcast over heads

    device_problem(const problem& pr, const inputs& x)
        : q(device_operand<T>::upload({pr.batch, pr.heads, pr.lq, pr.d, pr.kind}, x.q)),
          k(device_operand<T>::upload({pr.batch, pr.heads, pr.lk, pr.d, pr.kind}, x.k)),
          v(device_operand<T>::upload({pr.batch, pr.heads, pr.lk, pr.dv, pr.kind}, x.v)),
          o(device_operand<T>::poisoned({pr.batch, pr.heads, pr.lq, pr.dv, pr.kind})),
          dout(device_operand<T>::upload({pr.batch, pr.heads, pr.lq, pr.dv, pr.kind}, x.dout)),
          dq(device_operand<T>::poisoned({pr.batch, pr.heads, pr.lq, pr.d, pr.kind})),
          dk(device_operand<T>::poisoned({pr.batch, pr.heads, pr.lk, pr.d, pr.kind})),
          dv(device_operand<T>::poisoned({pr.batch, pr.heads, pr.lk, pr.dv, pr.kind})),
          lse(gpu::poisoned<float>({pr.batch, pr.heads, pr.lq})) {
        if (pr.mask == masking::padding) {
            tensor<bool> host({pr.batch, 1, pr.lq, pr.lk});
            for (index_t e = 0; e < host.numel(); ++e)
                host[e] = x.keep[std::size_t(e)] != 0;
            keep = gpu::upload(host);
        }
    }
    tensor_ref<const bool> keep_ref(const problem& pr) const {
        return tensor_ref<const bool>(keep.data(), {pr.batch, 1, pr.lq, pr.lk}, memory_space::device)
            .expand({pr.batch, pr.heads, pr.lq, pr.lk});
    }
    void forward(const problem& pr) {
        const auto desc = pr.desc();
        std::vector<any_tensor_ref> in = {q.ref(), k.ref(), v.ref()};
        if (desc.masked) in.push_back(keep_ref(pr));
        const std::array<any_tensor_ref, 2> out = {o.ref(), lse.ref()};
        gpu::stream().execute(ops::op_desc{desc}, in, out);
    }
    void backward(const problem& pr) {
        const ops::attention_backward_desc desc{pr.desc()};
        std::vector<any_tensor_ref> in = {q.ref(), k.ref(), v.ref(), o.ref(), dout.ref(), lse.ref()};
        if (desc.forward.masked) in.push_back(keep_ref(pr));
        const std::array<any_tensor_ref, 3> out = {dq.ref(), dk.ref(), dv.ref()};
        gpu::stream().execute(ops::op_desc{desc}, in, out);
    }
};

/// Runs forward and backward of `pr` on the GPU and checks both against the reference.
template <class T>
void check_problem(const problem& pr, std::uint64_t salt) {
    INFO("problem: " << pr.name() << ", dtype " << dtype_name(dtype_of<T>));
    const inputs x = make_inputs<T>(pr, salt);
    const reference ref = compute_reference(pr, x);
    device_problem<T> dev(pr, x);
    dev.forward(pr);
    const std::vector<double> o = dev.o.download();
    const tensor<float> lse = gpu::download(dev.lse);

    const double o_err = rel_l2(o, ref.o);
    double lse_err = 0.0;
    index_t masked_rows = 0, lse_mismatch = 0, nonzero_masked_o = 0;
    for (std::size_t r = 0; r < ref.lse.size(); ++r) {
        const double got = double(lse[index_t(r)]);
        if (std::isinf(ref.lse[r])) {
            ++masked_rows;
            if (!(std::isinf(got) && got < 0)) ++lse_mismatch;
            for (index_t c = 0; c < pr.dv; ++c)
                if (o[r * std::size_t(pr.dv) + std::size_t(c)] != 0.0) ++nonzero_masked_o;
        } else {
            lse_err = std::isfinite(got) ? std::max(lse_err, std::abs(got - ref.lse[r])) : INFINITY;
        }
    }
    CAPTURE(o_err, lse_err, masked_rows, lse_mismatch, nonzero_masked_o);
    CHECK(o_err <= tolerance<T>::o);
    CHECK(lse_err <= tolerance<T>::lse);
    CHECK(lse_mismatch == 0);
    CHECK(nonzero_masked_o == 0);

    dev.backward(pr);
    const double dq_err = rel_l2(dev.dq.download(), ref.dq);
    const double dk_err = rel_l2(dev.dk.download(), ref.dk);
    const double dv_err = rel_l2(dev.dv.download(), ref.dv);
    CAPTURE(dq_err, dk_err, dv_err);
    CHECK(dq_err <= tolerance<T>::grad);
    CHECK(dk_err <= tolerance<T>::grad);
    CHECK(dv_err <= tolerance<T>::grad);
}

/// Every (Lq, Lk) pair and masking for head size d; the layout alternates between
/// contiguous and heads interleaved in a (B, L, H D) projection.
template <class T>
void check_head_size(index_t d) {
    struct lengths {
        index_t lq, lk;
    };
    const lengths shapes[] = {{1, 1}, {64, 64}, {100, 300}, {257, 129}, {1024, 1024}};
    const masking maskings[] = {masking::none, masking::padding, masking::causal_top,
                                masking::causal_bottom};
    std::uint64_t salt = 1;
    for (const lengths& s : shapes)
        for (const masking m : maskings) {
            const bool large = s.lq * s.lk > 100000;
            const problem pr{large ? 1 : 2, large ? 2 : 3, s.lq, s.lk, d, d, m,
                             salt % 2 ? layout::interleaved_heads : layout::contiguous};
            check_problem<T>(pr, salt++);
        }
}

}  // namespace

TEST_CASE("cuda attention f32 D 64", "[cuda][attention]") {
    check_head_size<float>(64);
}
TEST_CASE("cuda attention f32 D 128", "[cuda][attention]") {
    check_head_size<float>(128);
}
TEST_CASE("cuda attention f32 D 40", "[cuda][attention]") {
    check_head_size<float>(40);
}
TEST_CASE("cuda attention bf16 D 64", "[cuda][attention]") {
    check_head_size<bf16>(64);
}
TEST_CASE("cuda attention bf16 D 128", "[cuda][attention]") {
    check_head_size<bf16>(128);
}
TEST_CASE("cuda attention bf16 D 40", "[cuda][attention]") {
    check_head_size<bf16>(40);
}
TEST_CASE("cuda attention f16 D 64", "[cuda][attention]") {
    check_head_size<mmfuse::half>(64);
}
TEST_CASE("cuda attention f16 D 128", "[cuda][attention]") {
    check_head_size<mmfuse::half>(128);
}
TEST_CASE("cuda attention f16 D 40", "[cuda][attention]") {
    check_head_size<mmfuse::half>(40);
}

TEST_CASE("cuda attention general path layouts and head sizes", "[cuda][attention]") {
    // Rows whose stride is not a multiple of 8 elements, and D != Dv, leave the tensor-core
    // kernels for the general ones; the results must not change.
    check_problem<bf16>({2, 3, 100, 130, 64, 64, masking::padding, layout::padded_rows}, 101);
    check_problem<mmfuse::half>({2, 2, 70, 90, 128, 128, masking::causal_bottom, layout::padded_rows}, 102);
    check_problem<bf16>({2, 3, 65, 200, 64, 32, masking::causal_top, layout::contiguous}, 103);
    check_problem<float>({1, 2, 33, 47, 256, 256, masking::padding, layout::interleaved_heads}, 104);
    check_problem<float>({2, 2, 50, 20, 24, 72, masking::causal_bottom, layout::padded_rows}, 105);
    // A negative scale (the tensor-core forward needs scale > 0 and hands it over).
    check_problem<bf16>({2, 2, 130, 70, 64, 64, masking::padding, layout::contiguous, -0.2}, 106);
}

TEST_CASE("cuda attention no keys kept anywhere", "[cuda][attention]") {
    // Causal with an offset below -Lq: every row is fully masked (O = 0, lse = -inf, zero
    // gradients), in both kernels.
    for (const index_t d : {64, 40}) {
        const problem pr{2, 2, 70, 50, d, d, masking::causal_bottom, layout::contiguous};
        const inputs x = make_inputs<bf16>(pr, 200 + std::uint64_t(d));
        device_problem<bf16> dev(pr, x);
        ops::attention_desc desc = pr.desc();
        desc.causal_offset = -100;
        const std::array<any_tensor_ref, 3> in = {dev.q.ref(), dev.k.ref(), dev.v.ref()};
        const std::array<any_tensor_ref, 2> out = {dev.o.ref(), dev.lse.ref()};
        gpu::stream().execute(ops::op_desc{desc}, in, out);
        const std::vector<double> o = dev.o.download();
        const tensor<float> lse = gpu::download(dev.lse);
        CAPTURE(d);
        CHECK(std::all_of(o.begin(), o.end(), [](double e) { return e == 0.0; }));
        for (index_t r = 0; r < lse.numel(); ++r)
            CHECK((std::isinf(lse[r]) && lse[r] < 0));
        const std::array<any_tensor_ref, 6> bin = {dev.q.ref(), dev.k.ref(),    dev.v.ref(),
                                                   dev.o.ref(), dev.dout.ref(), dev.lse.ref()};
        const std::array<any_tensor_ref, 3> bout = {dev.dq.ref(), dev.dk.ref(), dev.dv.ref()};
        gpu::stream().execute(ops::op_desc{ops::attention_backward_desc{desc}}, bin, bout);
        for (const auto* t : {&dev.dq, &dev.dk, &dev.dv}) {
            const std::vector<double> g = t->download();
            CHECK(std::all_of(g.begin(), g.end(), [](double e) { return e == 0.0; }));
        }
    }
}

TEST_CASE("cuda attention forward is deterministic", "[cuda][attention]") {
    // Same inputs twice: bit-identical O and lse (the forward has no atomics).
    for (const index_t d : {64, 128, 40}) {
        const problem pr{2, 4, 300, 500, d, d, masking::padding, layout::interleaved_heads};
        const inputs x = make_inputs<bf16>(pr, 300 + std::uint64_t(d));
        device_problem<bf16> first(pr, x), second(pr, x);
        first.forward(pr);
        second.forward(pr);
        const tensor<bf16> a = gpu::download(first.o.buffer), b = gpu::download(second.o.buffer);
        const tensor<float> la = gpu::download(first.lse), lb = gpu::download(second.lse);
        CAPTURE(d);
        CHECK(std::memcmp(a.data(), b.data(), std::size_t(a.numel()) * sizeof(bf16)) == 0);
        CHECK(std::memcmp(la.data(), lb.data(), std::size_t(la.numel()) * sizeof(float)) == 0);
        // ... and the output is actually written (not two identical poisons).
        CHECK(std::isfinite(double(a[0])));
    }
}

TEST_CASE("cuda attention rejects mismatched operands", "[cuda][attention]") {
    mc::device_tensor<float> q({1, 2, 8, 16}), k({1, 2, 9, 16}), v({1, 2, 9, 8}),
        bad_v({1, 2, 10, 8}), o({1, 2, 8, 8}), lse({1, 2, 8});
    const std::array<any_tensor_ref, 2> out = {o.ref(), lse.ref()};
    const std::array<any_tensor_ref, 3> good = {q.cref(), k.cref(), v.cref()};
    CHECK_NOTHROW(gpu::stream().execute(ops::op_desc{ops::attention_desc{}}, good, out));
    const std::array<any_tensor_ref, 3> bad = {q.cref(), k.cref(), bad_v.cref()};
    CHECK_THROWS_AS(gpu::stream().execute(ops::op_desc{ops::attention_desc{}}, bad, out),
                    mmfuse::backend_error);
    mc::device_tensor<float> big_q({1, 1, 4, 300}), big_k({1, 1, 4, 300}), big_v({1, 1, 4, 8}),
        big_o({1, 1, 4, 8}), big_lse({1, 1, 4});
    const std::array<any_tensor_ref, 3> big = {big_q.cref(), big_k.cref(), big_v.cref()};
    const std::array<any_tensor_ref, 2> big_out = {big_o.ref(), big_lse.ref()};
    CHECK_THROWS_AS(gpu::stream().execute(ops::op_desc{ops::attention_desc{}}, big, big_out),
                    mmfuse::value_error);
    gpu::stream().synchronize();
}
