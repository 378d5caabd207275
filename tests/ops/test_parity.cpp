// Parity of every op in op_desc.hpp: each case runs on every compiled-in host backend
// against the Eigen reference, and — meaningful even with eigen alone — on eigen with its
// operands in gapped and axis-reversed (transposed-copy) layouts and on a second eigen
// stream, which must all agree with the contiguous run (a layout-invariance test).

#include <catch2/catch.hpp>

#include <cstdint>
#include <set>
#include <variant>
#include <vector>

#include "mmfuse/backend/eigen/device.hpp"
#if defined(MMFUSE_HAS_ONEDNN)
#include "mmfuse/backend/onednn/device.hpp"
#endif
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/ops/attention.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/gather.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/norm.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/ops/softmax.hpp"
#include "support/parity.hpp"

namespace ops = mmfuse::ops;
using mmfuse::extents;
using mmfuse::index_t;
using mmfuse_test::parity::case_run;
using mmfuse_test::parity::make_case;
using mmfuse_test::parity::op_case;

namespace {

constexpr double f32_tol = 1e-5, f64_tol = 1e-12;

/// The parity table: at least one case per alternative of `ops::op_desc`.
std::vector<op_case> all_cases() {
    std::vector<op_case> cs;
    const auto add = [&](std::string name, ops::op_desc d, auto body) {
        cs.push_back(make_case(std::move(name), d, f32_tol, f64_tol, body));
    };

    // ---- matmul ----
    add("matmul (5x13)(13x7)", ops::matmul_desc{}, []<class T>(case_run& r) {
        auto& a = r.input<T>({5, 13});
        auto& b = r.input<T>({13, 7});
        auto& c = r.output<T>({5, 7});
        ops::matmul(r.stream, a.cref(), b.cref(), c.ref());
    });
    const ops::matmul_desc mt{true, true, 1.3, 0.5};
    add("matmul batched, transposed, alpha/beta", mt, [mt]<class T>(case_run& r) {
        auto& a = r.input<T>({3, 6, 4});  // (B, K, M)
        auto& b = r.input<T>({5, 6});     // (N, K), shared over the batch
        auto& c = r.inout<T>({3, 4, 5});
        ops::matmul(r.stream, a.cref(), b.cref(), c.ref(), mt);
    });

    // ---- point-wise ----
    add("bias_add", ops::bias_add_desc{}, []<class T>(case_run& r) {
        auto& x = r.input<T>({2, 3, 8});
        auto& b = r.input<T>({8});
        auto& y = r.output<T>({2, 3, 8});
        ops::bias_add(r.stream, x.cref(), b.cref(), y.ref());
    });
    for (ops::binary_kind k :
         {ops::binary_kind::add, ops::binary_kind::sub, ops::binary_kind::mul}) {
        add("binary " + std::to_string(int(k)), ops::binary_desc{k}, [k]<class T>(case_run& r) {
            auto& a = r.input<T>({2, 3, 8});
            auto& b = r.input<T>({3, 8});  // broadcast over the leading axis
            auto& y = r.output<T>({2, 3, 8});
            ops::binary(r.stream, k, a.cref(), b.cref(), y.ref());
        });
    }
    for (ops::unary_kind k :
         {ops::unary_kind::relu, ops::unary_kind::gelu_erf, ops::unary_kind::gelu_tanh,
          ops::unary_kind::silu, ops::unary_kind::sigmoid, ops::unary_kind::tanh}) {
        const std::string kn(ops::unary_name(k));
        add("unary " + kn, ops::unary_desc{k}, [k]<class T>(case_run& r) {
            auto& x = r.input<T>({4, 3, 5}, -3.0, 3.0);
            auto& y = r.output<T>({4, 3, 5});
            ops::unary(r.stream, k, x.cref(), y.ref());
        });
        add("unary_backward " + kn, ops::unary_backward_desc{k}, [k]<class T>(case_run& r) {
            auto& x = r.input<T>({4, 3, 5}, -3.0, 3.0);
            auto& dy = r.input<T>({4, 3, 5});
            auto& dx = r.output<T>({4, 3, 5});
            ops::unary_backward(r.stream, k, x.cref(), dy.cref(), dx.ref());
        });
    }

    // ---- softmax ----
    add("softmax scaled", ops::softmax_desc{0.3, 0}, []<class T>(case_run& r) {
        auto& x = r.input<T>({2, 4, 9}, -5.0, 5.0);
        auto& y = r.output<T>({2, 4, 9});
        ops::softmax(r.stream, x.cref(), y.ref(), 0.3);
    });
    add("softmax with a broadcast key-padding mask", ops::softmax_desc{0.5, 1},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({3, 4, 9}, -5.0, 5.0);
            auto& m = r.mask({3, 1, 9}, 0.5);
            auto& y = r.output<T>({3, 4, 9});
            ops::softmax(r.stream, x.cref(), m.cref(), y.ref(), 0.5);
        });
    add("softmax with two masks (key padding, attention mask)", ops::softmax_desc{0.5, 2},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({2, 3, 4, 9}, -5.0, 5.0);
            auto& kp = r.mask({2, 1, 1, 9}, 0.7);
            auto& am = r.mask({4, 9}, 0.6);
            auto& y = r.output<T>({2, 3, 4, 9});
            ops::softmax(r.stream, x.cref(), kp.cref(), am.cref(), y.ref(), {.scale = 0.5});
        });
    add("softmax causal, offset -1, Lq != N", ops::softmax_desc{0.4, 0, true, -1},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({2, 6, 5}, -5.0, 5.0);
            auto& y = r.output<T>({2, 6, 5});
            ops::softmax(r.stream, x.cref(), y.ref(),
                         {.scale = 0.4, .causal = true, .causal_offset = -1});
        });
    add("softmax causal, offset 2, with two masks", ops::softmax_desc{1.1, 2, true, 2},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({2, 2, 5, 8}, -5.0, 5.0);
            auto& kp = r.mask({2, 1, 1, 8}, 0.7);
            auto& am = r.mask({2, 2, 5, 8}, 0.7);
            auto& y = r.output<T>({2, 2, 5, 8});
            ops::softmax(r.stream, x.cref(), kp.cref(), am.cref(), y.ref(),
                         {.scale = 1.1, .causal = true, .causal_offset = 2});
        });
    add("softmax_backward", ops::softmax_backward_desc{0.7}, []<class T>(case_run& r) {
        auto& y = r.input<T>({3, 11}, 0.0, 0.2);
        auto& dy = r.input<T>({3, 11});
        auto& dx = r.output<T>({3, 11});
        ops::softmax_backward(r.stream, y.cref(), dy.cref(), dx.ref(), 0.7);
    });

    // ---- normalisation ----
    add("layer_norm affine", ops::layer_norm_desc{1e-5, true, true}, []<class T>(case_run& r) {
        auto& x = r.input<T>({2, 3, 10}, -2.0, 3.0);
        auto& g = r.input<T>({10});
        auto& b = r.input<T>({10});
        auto& y = r.output<T>({2, 3, 10});
        auto& mean = r.output<T>({6});
        auto& rstd = r.output<T>({6});
        ops::layer_norm(r.stream, x.cref(), g.cref(), b.cref(), y.ref(), mean.ref(), rstd.ref());
    });
    add("layer_norm without parameters", ops::layer_norm_desc{1e-3, false, false},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({5, 7});
            auto& y = r.output<T>({5, 7});
            auto& mean = r.output<T>({5});
            auto& rstd = r.output<T>({5});
            ops::layer_norm<T>(r.stream, x.cref(), {}, {}, y.ref(), mean.ref(), rstd.ref(), 1e-3);
        });
    add("layer_norm_backward, accumulating", ops::layer_norm_backward_desc{true, true, true},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({4, 2, 12});
            auto& dy = r.input<T>({4, 2, 12});
            auto& mean = r.input<T>({8}, -0.2, 0.2);
            auto& rstd = r.input<T>({8}, 0.5, 2.0);
            auto& g = r.input<T>({12});
            auto& dx = r.output<T>({4, 2, 12});
            auto& dg = r.inout<T>({12});
            auto& db = r.inout<T>({12});
            ops::layer_norm_backward(r.stream, x.cref(), dy.cref(), mean.cref(), rstd.cref(),
                                     g.cref(), dx.ref(), dg.ref(), db.ref(), true);
        });
    add("rms_norm", ops::rms_norm_desc{1e-6, true}, []<class T>(case_run& r) {
        auto& x = r.input<T>({3, 2, 16});
        auto& g = r.input<T>({16});
        auto& y = r.output<T>({3, 2, 16});
        auto& rstd = r.output<T>({6});
        ops::rms_norm(r.stream, x.cref(), g.cref(), y.ref(), rstd.ref());
    });
    add("rms_norm_backward", ops::rms_norm_backward_desc{true, false}, []<class T>(case_run& r) {
        auto& x = r.input<T>({6, 16});
        auto& dy = r.input<T>({6, 16});
        auto& rstd = r.input<T>({6}, 0.5, 2.0);
        auto& g = r.input<T>({16});
        auto& dx = r.output<T>({6, 16});
        auto& dg = r.output<T>({16});
        ops::rms_norm_backward(r.stream, x.cref(), dy.cref(), rstd.cref(), g.cref(), dx.ref(),
                               dg.ref());
    });

    // ---- reduce ----
    add("reduce sum over axis 1", ops::reduce_desc{ops::reduce_kind::sum, 1},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({3, 7, 5});
            auto& y = r.output<T>({3, 5});
            ops::reduce(r.stream, ops::reduce_kind::sum, 1, x.cref(), y.ref());
        });
    add("reduce mean over the last axis, keepdim", ops::reduce_desc{ops::reduce_kind::mean, 2},
        []<class T>(case_run& r) {
            auto& x = r.input<T>({3, 4, 9});
            auto& y = r.output<T>({3, 4, 1});
            ops::reduce(r.stream, ops::reduce_kind::mean, -1, x.cref(), y.ref());
        });

    // ---- layout ----
    add("concat of 3 along axis 1", ops::concat_desc{1}, []<class T>(case_run& r) {
        auto& a = r.input<T>({2, 3, 4});
        auto& b = r.input<T>({2, 1, 4});
        auto& c = r.input<T>({2, 5, 4});
        auto& y = r.output<T>({2, 9, 4});
        ops::concat(r.stream, 1, {a.cref(), b.cref(), c.cref()}, y.ref());
    });
    add("split in 2 along the last axis", ops::split_desc{1}, []<class T>(case_run& r) {
        auto& x = r.input<T>({4, 10});
        auto& a = r.output<T>({4, 3});
        auto& b = r.output<T>({4, 7});
        ops::split(r.stream, -1, x.cref(), {a.ref(), b.ref()});
    });
    add("copy", ops::copy_desc{}, []<class T>(case_run& r) {
        auto& x = r.input<T>({3, 4, 5});
        auto& y = r.output<T>({3, 4, 5});
        ops::copy(r.stream, x.cref(), y.ref());
    });
    add("copy converting f32 <-> f64", ops::copy_desc{}, []<class T>(case_run& r) {
        using U = std::conditional_t<std::is_same_v<T, float>, double, float>;
        auto& x = r.input<T>({6, 5});
        auto& y = r.output<U>({6, 5});
        ops::copy(r.stream, x.cref(), y.ref());
    });

    // ---- gather / scatter-add (indices drawn in [0, N): R > N forces repeats) ----
    add("gather_rows (7 rows of a 5x6 table)", ops::gather_rows_desc{}, []<class T>(case_run& r) {
        auto& table = r.input<T>({5, 6});
        auto& idx = r.input<std::int64_t>({7}, 0.0, 5.0);
        auto& y = r.output<T>({7, 6});
        ops::gather_rows(r.stream, table.cref(), idx.cref(), y.ref());
    });
    add("scatter_add_rows (9 rows into a 4x5 gradient)", ops::scatter_add_rows_desc{},
        []<class T>(case_run& r) {
            auto& dy = r.input<T>({9, 5});
            auto& idx = r.input<std::int64_t>({9}, 0.0, 4.0);
            auto& grad = r.inout<T>({4, 5});
            ops::scatter_add_rows(r.stream, dy.cref(), idx.cref(), grad.ref());
        });

    // ---- fused ops: matmul epilogue, attention, Philox fill, combine ----
    const ops::matmul_desc epi{false, true, 1.0, 0.0, ops::matmul_epilogue::bias_gelu_tanh};
    add("matmul with a bias + gelu_tanh epilogue", epi, [epi]<class T>(case_run& r) {
        auto& a = r.input<T>({2, 5, 6});
        auto& b = r.input<T>({7, 6});  // (N, K): nn.Linear's weight
        auto& bias = r.input<T>({7});
        auto& c = r.output<T>({2, 5, 7});
        ops::matmul(r.stream, a.cref(), b.cref(), bias.cref(), c.ref(), epi);
    });
    const ops::attention_desc att{0.4, true, 2, true};
    add("attention, key padding and causal offset 2", att, [att]<class T>(case_run& r) {
        auto& q = r.input<T>({2, 2, 4, 5});
        auto& k = r.input<T>({2, 2, 6, 5});
        auto& v = r.input<T>({2, 2, 6, 3});
        auto& kp = r.mask({2, 1, 1, 6}, 0.7);
        auto& o = r.output<T>({2, 2, 4, 3});
        auto& lse = r.output<T>({2, 2, 4});
        ops::attention(r.stream, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), att, kp.cref());
    });
    add("attention_backward, masked and causal", ops::attention_backward_desc{att},
        [att]<class T>(case_run& r) {
            auto& q = r.input<T>({1, 3, 5, 4});
            auto& k = r.input<T>({1, 3, 6, 4});
            auto& v = r.input<T>({1, 3, 6, 2});
            auto& keep = r.mask({1, 3, 5, 6}, 0.7);
            auto& dout = r.input<T>({1, 3, 5, 2});
            auto& o = r.output<T>({1, 3, 5, 2});
            auto& lse = r.output<T>({1, 3, 5});
            auto& dq = r.output<T>({1, 3, 5, 4});
            auto& dk = r.output<T>({1, 3, 6, 4});
            auto& dv = r.output<T>({1, 3, 6, 2});
            ops::attention(r.stream, q.cref(), k.cref(), v.cref(), o.ref(), lse.ref(), att,
                           keep.cref());
            ops::attention_backward(r.stream, q.cref(), k.cref(), v.cref(), o.cref(), dout.cref(),
                                    lse.cref(), dq.ref(), dk.ref(), dv.ref(), att, keep.cref());
        });
    for (ops::random_kind k : {ops::random_kind::uniform, ops::random_kind::normal}) {
        const ops::fill_random_desc fd{k, -0.5, 2.0, {20240917, 3, 1001}};
        add(k == ops::random_kind::uniform ? "fill_random uniform" : "fill_random normal", fd,
            [fd]<class T>(case_run& r) {
                auto& y = r.output<T>({3, 4, 5});
                ops::fill_random(r.stream, y.ref(), fd);
            });
    }
    add("combine of 3 inputs (one broadcast) with noise", ops::combine_desc{},
        []<class T>(case_run& r) {
            auto& x0 = r.input<T>({4, 6});
            auto& x1 = r.input<T>({4, 6});
            auto& x2 = r.input<T>({6});
            auto& y = r.output<T>({4, 6});
            ops::combine(r.stream, y.ref(), {x0.cref(), x1.cref(), x2.cref()}, {0.9, -0.4, 1.5},
                         0.3, {7, 1, 64});
        });

    // ---- contrastive: L2 normalisation and the fused logit loss ----
    add("l2_normalize", ops::l2_normalize_desc{}, []<class T>(case_run& r) {
        auto& x = r.input<T>({3, 4, 5});
        auto& y = r.output<T>({3, 4, 5});
        auto& norm = r.output<T>({12});
        ops::l2_normalize(r.stream, x.cref(), y.ref(), norm.ref());
    });
    add("l2_normalize_backward", ops::l2_normalize_backward_desc{}, []<class T>(case_run& r) {
        auto& x = r.input<T>({4, 6});
        auto& dy = r.input<T>({4, 6});
        auto& y = r.output<T>({4, 6});
        auto& norm = r.output<T>({4});
        auto& dx = r.output<T>({4, 6});
        ops::l2_normalize(r.stream, x.cref(), y.ref(), norm.ref());
        ops::l2_normalize_backward(r.stream, y.cref(), dy.cref(), norm.cref(), dx.ref());
    });
    ops::logit_loss_desc ll;
    ll.scale = 3.0;
    ll.grad_scale = 0.25;
    add("logit_loss, both directions of a CLIP step", ll, [ll]<class T>(case_run& r) {
        auto& x = r.input<T>({5, 5});
        auto& row_loss = r.output<T>({5});
        auto& col_loss = r.output<T>({5});
        auto& dx = r.output<T>({5, 5});
        auto& row_stats = r.output<T>({5, 2});
        auto& col_stats = r.output<T>({5, 2});
        ops::logit_loss<T>(r.stream, ll, x.cref(), {}, row_loss.ref(), dx.ref(), row_stats.ref());
        ops::logit_loss_desc cols = ll;
        cols.accumulate = true;
        ops::logit_loss<T>(r.stream, cols, x.cref().transpose(0, 1), {}, col_loss.ref(),
                           dx.ref().transpose(0, 1), col_stats.ref());
    });
    return cs;
}

/// Two seeds per run, fresh for every Catch seed.
std::vector<std::uint64_t> seeds() {
    auto rng = mmfuse_test::make_rng(99);
    return {rng(), rng()};
}

/// Tells the user, once per run, what the parity test compared.
void explain_backends() {
    const auto& reg = mmfuse::backend::registry::global();
    if (reg.devices().size() == 1)
        WARN(
            "[parity] only the eigen backend is compiled in: cross-backend parity is vacuous; "
            "checking eigen layout invariance (gapped, reversed layouts, second stream) only");
    else
        INFO("[parity] backends compiled in: " << reg.names());
}

}  // namespace

TEST_CASE("the parity table covers every op of op_desc", "[parity]") {
    std::set<std::size_t> seen;
    for (const op_case& c : all_cases())
        seen.insert(c.desc.index());
    for (std::size_t i = 0; i < std::variant_size_v<ops::op_desc>; ++i) {
        CAPTURE(i);
        CHECK(seen.count(i) == 1);
    }
}

TEST_CASE("every op agrees across layouts, streams and backends", "[parity]") {
    explain_backends();
    int compared = 0, other = 0;
    for (const op_case& c : all_cases())
        for (mmfuse::dtype t : {mmfuse::dtype::f32, mmfuse::dtype::f64})
            for (std::uint64_t seed : seeds()) {
                const auto rep = mmfuse_test::parity::check_parity(c, t, seed);
                for (const std::string& f : rep.failures)
                    FAIL_CHECK(f);
                for (const std::string& n : rep.notes)
                    WARN(n);
                compared += rep.compared;
                other += rep.other_devices;
            }
    INFO("runs compared with the eigen reference: " << compared
                                                    << ", on other backends: " << other);
    CHECK(compared > 0);
}

// ---- the driver itself must be able to fail ------------------------------------------------

namespace {

/// A host device that runs ops through the eigen kernels but supports only softmax, and
/// optionally corrupts one output element (to prove the driver notices).
class mock_device;

class mock_stream final : public mmfuse::backend::stream {
public:
    explicit mock_stream(mock_device& d) : device_(&d) {}
    mmfuse::backend::device& device() noexcept override;
    void execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                 std::span<const mmfuse::any_tensor_ref> out) override;
    void synchronize() override {}

private:
    mock_device* device_;
};

class mock_device final : public mmfuse::backend::device {
public:
    mock_device(std::string_view name, bool faulty)
        : name_(name), faulty_(faulty), stream_(*this) {}
    std::string_view name() const noexcept override { return name_; }
    mmfuse::backend::device_kind kind() const noexcept override {
        return mmfuse::backend::device_kind::cpu;
    }
    mmfuse::memory_space memory() const noexcept override { return mmfuse::memory_space::host; }
    bool supports(const ops::op_desc& op, mmfuse::dtype) const noexcept override {
        return std::holds_alternative<ops::softmax_desc>(op);
    }
    mmfuse::backend::stream& default_stream() override { return stream_; }
    std::unique_ptr<mmfuse::backend::stream> create_stream() override {
        return std::make_unique<mock_stream>(*this);
    }
    bool faulty() const { return faulty_; }

private:
    std::string_view name_;
    bool faulty_;
    mock_stream stream_;
};

mmfuse::backend::device& mock_stream::device() noexcept {
    return *device_;
}

void mock_stream::execute(const ops::op_desc& op, std::span<const mmfuse::any_tensor_ref> in,
                          std::span<const mmfuse::any_tensor_ref> out) {
    if (!device_->supports(op, in[0].type()))
        throw mmfuse::backend_error(device_->name(), "unsupported op");
    mmfuse::backend::eigen::eigen_device::instance().default_stream().execute(op, in, out);
    if (device_->faulty()) {
        if (out[0].type() == mmfuse::dtype::f32)
            out[0].as<float>().data()[0] += 1e-3f;
        else
            out[0].as<double>().data()[0] += 1e-3;
    }
}

}  // namespace

TEST_CASE("the parity driver catches layout-dependent kernels and faulty backends", "[parity]") {
    auto& eigen = mmfuse::backend::registry::global().get("eigen");
    const auto seed = seeds()[0];

    // A "kernel" that walks raw memory (y[i] = x[i] + i): fine contiguous, wrong otherwise.
    const op_case broken = make_case("contiguous-only copy", ops::copy_desc{}, f32_tol, f64_tol,
                                     []<class T>(case_run& r) {
                                         auto& x = r.input<T>({4, 6});
                                         auto& y = r.output<T>({4, 6});
                                         for (index_t i = 0; i < 24; ++i)
                                             y.ref().data()[i] = x.cref().data()[i] + T(i);
                                     });
    const auto rb = mmfuse_test::parity::check_parity(broken, mmfuse::dtype::f64, seed);
    CHECK(rb.failures.size() >= 2);  // gapped and reversed layouts

    mock_device good("mock-good", false), bad("mock-faulty", true);
    const std::vector<mmfuse::backend::device*> devices{&eigen, &good, &bad};
    const auto cases = all_cases();
    for (const op_case& c : cases) {
        const auto rep = mmfuse_test::parity::check_parity(c, mmfuse::dtype::f32, seed, devices);
        CAPTURE(c.name);
        if (std::holds_alternative<ops::softmax_desc>(c.desc)) {
            CHECK(rep.other_devices == 4);    // 2 devices x 2 layouts
            CHECK(rep.failures.size() == 2);  // mock-faulty in both layouts, nothing else
            for (const std::string& f : rep.failures)
                CHECK_THAT(f, Catch::Contains("mock-faulty"));
        } else {
            CHECK(rep.failures.empty());
            CHECK(rep.notes.size() == 2);  // both mocks: "does not support this op"
        }
    }
}
