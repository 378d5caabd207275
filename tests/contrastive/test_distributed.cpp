// Data-parallel contrastive heads (contrastive/distributed.hpp): the collectives of
// local_group against index arithmetic, and distributed_clip_loss / distributed_siglip_loss on
// W emulated ranks against the single-process clip_loss / siglip_loss on the global batch,
// under DDP's averaging (contrastive.md sections 1.3 and 1.4).

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "contrastive/contrastive_support.hpp"
#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/distributed.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/model.hpp"
#include "support/test_util.hpp"

namespace {

using namespace mmfuse;
using contrastive::clip_distribution;
using mmfuse_test::make_rng;
using mmfuse_test::named_head;

constexpr double nan = std::numeric_limits<double>::quiet_NaN();

template <class T>
using endpoint = typename contrastive::local_group<T>::endpoint;

static_assert(contrastive::communicator<endpoint<float>, float>);
static_assert(contrastive::communicator<endpoint<double>, double>);
static_assert(!contrastive::communicator<endpoint<float>, double>);

/// One rank's (or the single process's) step: its own stream and a workspace whose bytes
/// are all 0xFF (NaN in float and double), so an output element never written shows as NaN.
template <class T>
struct step {
    static constexpr std::size_t bytes = std::size_t(1) << 20;
    std::unique_ptr<backend::stream> stream =
        backend::registry::global().get("eigen").create_stream();
    growing_arena ws{bytes};
    nn::step_context<T> cx{stream.get(), &ws, true};

    step() {
        const auto all = ws.allocate<float>(extents{index_t(bytes / sizeof(float))});
        std::memset(all.data(), 0xFF, bytes);
        ws.reset();
    }
};

/// (rows, D) unit rows, random directions.
std::vector<double> unit_rows(std::mt19937_64& rng, index_t rows, index_t d) {
    std::normal_distribution<double> n;
    std::vector<double> v(std::size_t(rows * d));
    for (index_t i = 0; i < rows; ++i) {
        double norm = 0.0;
        for (index_t j = 0; j < d; ++j) {
            const double x = n(rng);
            v[std::size_t(i * d + j)] = x;
            norm += x * x;
        }
        for (index_t j = 0; j < d; ++j)
            v[std::size_t(i * d + j)] /= std::sqrt(norm);
    }
    return v;
}

template <class T>
tensor<T> to_tensor(const std::vector<double>& v, index_t rows, index_t d) {
    tensor<T> t(extents{rows, d});
    for (index_t i = 0; i < t.numel(); ++i)
        t[i] = T(v[std::size_t(i)]);
    return t;
}

/// Values of a rank-2 view in logical row-major order.
template <class T>
std::vector<double> values(tensor_ref<const T> x) {
    std::vector<double> v;
    for (index_t i = 0; i < x.extent(0); ++i)
        for (index_t j = 0; j < x.extent(1); ++j)
            v.push_back(double(x(i, j)));
    return v;
}

/// max |a - ref| / max(max |ref|, floor) (inf on a NaN or a length mismatch). `floor` is the
/// natural magnitude of the quantity, so that a result that is tiny through cancellation
/// (a nearly one-hot softmax, p - y ~ 1e-20) is not compared digit by digit.
double scaled_error(const std::vector<double>& a, const std::vector<double>& ref, double floor) {
    if (a.size() != ref.size()) return std::numeric_limits<double>::infinity();
    double worst = 0.0, scale = floor;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) || std::isnan(ref[i])) return std::numeric_limits<double>::infinity();
        worst = std::max(worst, std::abs(a[i] - ref[i]));
        scale = std::max(scale, std::abs(ref[i]));
    }
    return worst / scale;
}

/// Scalars (losses, parameter gradients): relative error above 1, absolute below.
double scaled_error(double a, double ref) {
    return scaled_error(std::vector<double>{a}, std::vector<double>{ref}, 1.0);
}

template <class T>
constexpr double tolerance() {
    return std::is_same_v<T, float> ? 2e-6 : 1e-12;
}

/// What a head returns for one step: loss, embedding gradients, parameter gradients.
struct step_result {
    double loss = nan;
    std::vector<double> d_image, d_text;
    double d_log_scale = nan, d_bias = nan;
};

/// The parameters and the global batch of one comparison.
struct problem {
    index_t world = 1, b = 1, d = 1;
    double log_scale = 0.0, bias = 0.0;
    std::vector<double> image, text;  // (W b, D)

    index_t global_rows() const { return world * b; }
    std::vector<double> rows_of(const std::vector<double>& all, index_t rank) const {
        return {all.begin() + rank * b * d, all.begin() + (rank + 1) * b * d};
    }
};

problem make_problem(std::mt19937_64& rng, index_t world, index_t b) {
    problem p;
    p.world = world;
    p.b = b;
    p.d = std::uniform_int_distribution<index_t>(3, 9)(rng);
    p.log_scale = std::uniform_real_distribution<double>(std::log(5.0), std::log(50.0))(rng);
    p.bias = std::uniform_real_distribution<double>(-5.0, 0.0)(rng);
    p.image = unit_rows(rng, p.global_rows(), p.d);
    p.text = unit_rows(rng, p.global_rows(), p.d);
    return p;
}

/// Sets theta (and the bias, where the head has one) to the problem's values.
template <class Head>
void set_parameters(Head& h, const problem& p) {
    using T = typename Head::value_type;
    h.logit_scale().parameter().value.data()[0] = T(p.log_scale);
    if constexpr (requires { h.logit_bias(); })
        h.logit_bias().parameter().value.data()[0] = T(p.bias);
}

/// One step of a head on (image, text): its loss, gradients and parameter gradients.
template <class Head>
step_result one_step(Head& h, nn::step_context<typename Head::value_type>& cx,
                     tensor_ref<const typename Head::value_type> image,
                     tensor_ref<const typename Head::value_type> text) {
    step_result r;
    r.loss = h.forward(cx, image, text);
    const auto g = h.backward(cx);
    r.d_image = values(g.da);
    r.d_text = values(g.db);
    r.d_log_scale = double(h.logit_scale().parameter().grad.data()[0]);
    if constexpr (requires { h.logit_bias(); })
        r.d_bias = double(h.logit_bias().parameter().grad.data()[0]);
    return r;
}

/// The single-process head on the global batch.
template <class Head>
step_result global_step(const problem& p) {
    using T = typename Head::value_type;
    nn::model<named_head<Head>> m(named_head<Head>{});
    set_parameters(m.net().inner, p);
    step<T> s;
    const tensor<T> image = to_tensor<T>(p.image, p.global_rows(), p.d);
    const tensor<T> text = to_tensor<T>(p.text, p.global_rows(), p.d);
    return one_step(m.net().inner, s.cx, image.cref(), text.cref());
}

/// The distributed head, made by `make(endpoint&)`, on W threads; rank r gets rows
/// [r b, (r + 1) b) of the global batch. Returns every rank's result.
template <class T, class Make>
std::vector<step_result> distributed_steps(const problem& p, Make make) {
    std::vector<step_result> results(std::size_t(p.world));
    contrastive::local_group<T> group(p.world);
    group.run([&](endpoint<T>& comm) {
        const index_t r = comm.rank();
        using Head = decltype(make(comm));
        nn::model<named_head<Head>> m(named_head<Head>(make(comm)));
        set_parameters(m.net().inner, p);
        step<T> s;
        const tensor<T> image = to_tensor<T>(p.rows_of(p.image, r), p.b, p.d);
        const tensor<T> text = to_tensor<T>(p.rows_of(p.text, r), p.b, p.d);
        results[std::size_t(r)] = one_step(m.net().inner, s.cx, image.cref(), text.cref());
    });
    return results;
}

/// The DDP comparison: mean_r loss_r == global loss; rank r's embedding gradient / W ==
/// `embedding_factor` * the global rows of rank r; mean_r parameter gradients ==
/// global ones.
void check_ddp_equivalence(const problem& p, const std::vector<step_result>& ranks,
                           const step_result& global, double embedding_factor, double tol) {
    const double w = double(p.world);
    double loss = 0.0, d_log_scale = 0.0, d_bias = 0.0;
    for (const step_result& r : ranks) {
        loss += r.loss / w;
        d_log_scale += r.d_log_scale / w;
        d_bias += r.d_bias / w;
    }
    CHECK(scaled_error(loss, global.loss) < tol);
    CHECK(scaled_error(d_log_scale, global.d_log_scale) < tol);
    if (!std::isnan(global.d_bias)) CHECK(scaled_error(d_bias, global.d_bias) < tol);
    for (index_t r = 0; r < p.world; ++r) {
        CAPTURE(r);
        for (const auto& [got, want] : {std::pair{&ranks[std::size_t(r)].d_image, &global.d_image},
                                        std::pair{&ranks[std::size_t(r)].d_text, &global.d_text}}) {
            std::vector<double> effective = *got, expected = p.rows_of(*want, r);
            for (double& x : effective)
                x /= w;
            for (double& x : expected)
                x *= embedding_factor;
            // an embedding gradient is a sum of terms (1/B) s (p - y) k with |k| = 1
            CHECK(scaled_error(effective, expected,
                               std::exp(p.log_scale) / double(p.global_rows())) < tol);
        }
    }
}

}  // namespace

TEMPLATE_TEST_CASE("local_group all_gather is rank-major and reduce_scatter_sum sums blocks", "",
                   float, double) {
    using T = TestType;
    auto rng = make_rng(1);
    for (index_t world : {1, 2, 3, 4}) {
        const index_t b = std::uniform_int_distribution<index_t>(1, 5)(rng);
        const index_t d = std::uniform_int_distribution<index_t>(1, 6)(rng);
        CAPTURE(world, b, d);
        // rank k's local rows and full (W b, D) contributions, in double
        std::vector<std::vector<double>> local, global;
        for (index_t k = 0; k < world; ++k) {
            local.push_back(mmfuse_test::uniform_values(rng, b * d, -1, 1));
            global.push_back(mmfuse_test::uniform_values(rng, world * b * d, -1, 1));
        }
        std::vector<std::vector<double>> gathered(static_cast<std::size_t>(world)),
            scattered(static_cast<std::size_t>(world));
        contrastive::local_group<T> group(world);
        REQUIRE(group.world_size() == world);
        group.run([&](endpoint<T>& comm) {
            const std::size_t r = std::size_t(comm.rank());
            const tensor<T> in = to_tensor<T>(local[r], b, d);
            const tensor<T> contribution = to_tensor<T>(global[r], world * b, d);
            tensor<T> all(extents{world * b, d}), mine(extents{b, d});
            mmfuse_test::poison(all);
            mmfuse_test::poison(mine);
            comm.all_gather("test", in.cref(), all.ref());
            comm.reduce_scatter_sum("test", contribution.cref(), mine.ref());
            gathered[r] = values(all.cref());
            scattered[r] = values(mine.cref());
        });
        for (index_t r = 0; r < world; ++r) {
            CAPTURE(r);
            std::vector<double> want_gathered, want_scattered(std::size_t(b * d), 0.0);
            for (index_t k = 0; k < world; ++k)
                for (index_t e = 0; e < b * d; ++e) {
                    want_gathered.push_back(double(T(local[std::size_t(k)][std::size_t(e)])));
                    want_scattered[std::size_t(e)] +=
                        double(T(global[std::size_t(k)][std::size_t(r * b * d + e)]));
                }
            for (double& x : want_scattered)
                x = double(T(x));
            CHECK(gathered[std::size_t(r)] == want_gathered);
            CHECK(scattered[std::size_t(r)] == want_scattered);
        }
    }
}

TEMPLATE_TEST_CASE("distributed_clip_loss matches clip_loss on the global batch under DDP", "",
                   float, double) {
    using T = TestType;
    auto rng = make_rng(2);
    for (index_t world : {1, 2, 3, 4})
        for (index_t b : {1, 3, 8}) {
            const problem p = make_problem(rng, world, b);
            CAPTURE(world, b, p.d, p.log_scale);
            const step_result global = global_step<contrastive::clip_loss<T>>(p);
            // local_loss x gather_with_grad with their effective embedding-gradient factor
            // (contrastive.md 1.3); (true, false) is not equivalent and tested below.
            for (const auto& [how, factor] :
                 {std::pair{clip_distribution{true, true}, 1.0},
                  std::pair{clip_distribution{false, true}, 1.0},
                  std::pair{clip_distribution{false, false}, 1.0 / double(world)}}) {
                CAPTURE(how.local_loss, how.gather_with_grad);
                const auto ranks = distributed_steps<T>(p, [how = how](endpoint<T>& comm) {
                    return contrastive::distributed_clip_loss<T, endpoint<T>>(comm, how);
                });
                check_ddp_equivalence(p, ranks, global, factor, tolerance<T>());
                if (!how.local_loss)  // every rank computes the global loss itself
                    for (const step_result& r : ranks)
                        CHECK(scaled_error(r.loss, global.loss) < tolerance<T>());
            }
        }
}

TEST_CASE("distributed_clip_loss without gather_with_grad keeps only the local paths") {
    // local_loss = true, gather_with_grad = false (open_clip's non-equivalent setting): rank r's
    // image gradient is that of its image-to-text rows with the gathered texts held constant,
    // and its text gradient that of its text-to-image rows; the loss and dl/dtheta are still
    // the global ones. Reference: softmax cross-entropy rows written out in double.
    using T = double;
    auto rng = make_rng(3);
    for (index_t world : {2, 3})
        for (index_t b : {1, 3, 8}) {
            const problem p = make_problem(rng, world, b);
            CAPTURE(world, b, p.d);
            const index_t n = p.global_rows();
            const double s = std::exp(p.log_scale);
            const auto ranks = distributed_steps<T>(p, [](endpoint<T>& comm) {
                return contrastive::distributed_clip_loss<T, endpoint<T>>(comm, {true, false});
            });
            const step_result global = global_step<contrastive::clip_loss<T>>(p);
            double loss = 0.0;
            for (index_t r = 0; r < world; ++r) {
                CAPTURE(r);
                loss += ranks[std::size_t(r)].loss / double(world);
                // d query_i = (0.5 / b) s sum_j (softmax_j(s q_i . k_j) - [j == r b + i]) k_j
                const auto direct = [&](const std::vector<double>& q,
                                        const std::vector<double>& k) {
                    std::vector<double> g(std::size_t(b * p.d), 0.0);
                    for (index_t i = 0; i < b; ++i) {
                        const index_t row = r * b + i;
                        std::vector<double> z(static_cast<std::size_t>(n));
                        double top = -1e300, total = 0.0;
                        for (index_t j = 0; j < n; ++j) {
                            double dot = 0.0;
                            for (index_t e = 0; e < p.d; ++e)
                                dot += q[std::size_t(row * p.d + e)] * k[std::size_t(j * p.d + e)];
                            z[std::size_t(j)] = s * dot;
                            top = std::max(top, s * dot);
                        }
                        for (double zj : z)
                            total += std::exp(zj - top);
                        for (index_t j = 0; j < n; ++j) {
                            const double coeff = (std::exp(z[std::size_t(j)] - top) / total -
                                                  (j == row ? 1.0 : 0.0)) *
                                                 0.5 * s / double(b);
                            for (index_t e = 0; e < p.d; ++e)
                                g[std::size_t(i * p.d + e)] += coeff * k[std::size_t(j * p.d + e)];
                        }
                    }
                    return g;
                };
                CHECK(scaled_error(ranks[std::size_t(r)].d_image, direct(p.image, p.text),
                                   s / double(b)) < 1e-12);
                CHECK(scaled_error(ranks[std::size_t(r)].d_text, direct(p.text, p.image),
                                   s / double(b)) < 1e-12);
            }
            CHECK(scaled_error(loss, global.loss) < 1e-12);
            double d_log_scale = 0.0;
            for (const step_result& r : ranks)
                d_log_scale += r.d_log_scale / double(world);
            CHECK(scaled_error(d_log_scale, global.d_log_scale) < 1e-12);
        }
}

TEMPLATE_TEST_CASE("distributed_siglip_loss matches siglip_loss on the global batch under DDP", "",
                   float, double) {
    using T = TestType;
    auto rng = make_rng(4);
    for (index_t world : {1, 2, 3, 4})
        for (index_t b : {1, 3, 8}) {
            const problem p = make_problem(rng, world, b);
            CAPTURE(world, b, p.d, p.log_scale, p.bias);
            const step_result global = global_step<contrastive::siglip_loss<T>>(p);
            const auto ranks = distributed_steps<T>(p, [](endpoint<T>& comm) {
                return contrastive::distributed_siglip_loss<T, endpoint<T>>(comm);
            });
            check_ddp_equivalence(p, ranks, global, 1.0, tolerance<T>());
        }
}

TEST_CASE("distributed heads name themselves when the ranks' batches disagree") {
    using T = double;
    auto rng = make_rng(5);
    const index_t d = 4;
    const auto run_with_rows = [&](auto make) {
        // rank 2 has one row more than ranks 0 and 1
        const std::vector<index_t> rows{2, 2, 3};
        std::vector<std::vector<double>> embeddings;
        for (index_t b : rows)
            embeddings.push_back(unit_rows(rng, b, d));
        contrastive::local_group<T> group(3);
        group.run([&](endpoint<T>& comm) {
            using Head = decltype(make(comm));
            nn::model<named_head<Head>> m(named_head<Head>(make(comm)));
            step<T> s;
            const std::size_t r = std::size_t(comm.rank());
            const tensor<T> image = to_tensor<T>(embeddings[r], rows[r], d);
            const tensor<T> text = image.clone();
            m.net().inner.forward(s.cx, image.cref(), text.cref());
        });
    };
    const auto expect_named = [&](auto make) {
        try {
            run_with_rows(make);
            FAIL("no shape_error");
        } catch (const shape_error& e) {
            CHECK(e.module() == "head");
            CHECK_THAT(e.what(), Catch::Contains("all_gather input on rank 2") &&
                                     Catch::Contains("(2, 4)") && Catch::Contains("(3, 4)"));
        }
    };
    expect_named(
        [](endpoint<T>& comm) { return contrastive::distributed_clip_loss<T, endpoint<T>>(comm); });
    expect_named([](endpoint<T>& comm) {
        return contrastive::distributed_siglip_loss<T, endpoint<T>>(comm);
    });
}

TEST_CASE("distributed heads refuse an empty local batch") {
    using T = double;
    contrastive::local_group<T> group(1);
    group.run([&](endpoint<T>& comm) {
        using Head = contrastive::distributed_siglip_loss<T, endpoint<T>>;
        nn::model<named_head<Head>> m{named_head<Head>(comm)};
        step<T> s;
        const tensor<T> empty(extents{0, 4});
        try {
            m.net().inner.forward(s.cx, empty.cref(), empty.cref());
            FAIL("no shape_error");
        } catch (const shape_error& e) {
            CHECK(e.module() == "head");
            CHECK_THAT(e.what(), Catch::Contains("at least one row"));
        }
    });
}

TEST_CASE("local_group checks output shapes and survives a rank that fails") {
    using T = double;
    contrastive::local_group<T> group(2);
    // a (W b, D) output of the wrong height, on one rank only: both ranks see it
    try {
        group.run([&](endpoint<T>& comm) {
            tensor<T> local(extents{3, 2}), all(extents{comm.rank() == 1 ? 5 : 6, 2});
            comm.all_gather("some.head", local.cref(), all.ref());
        });
        FAIL("no shape_error");
    } catch (const shape_error& e) {
        CHECK(e.module() == "some.head");
        CHECK_THAT(e.what(), Catch::Contains("all_gather output on rank 1") &&
                                 Catch::Contains("(6, 2)") && Catch::Contains("(5, 2)"));
    }
    // a rank that throws before its collective: the other rank does not wait forever, and
    // run rethrows the failing rank's own exception; the group can run again afterwards
    CHECK_THROWS_AS(group.run([&](endpoint<T>& comm) {
        if (comm.rank() == 0) throw value_error("rank0", "deliberate");
        tensor<T> local(extents{1, 2}), all(extents{2, 2});
        comm.all_gather("x", local.cref(), all.ref());
    }),
                    value_error);
    // a rank that calls one collective more than the other
    CHECK_THROWS_AS(group.run([&](endpoint<T>& comm) {
        tensor<T> local(extents{1, 2}), all(extents{2, 2});
        comm.all_gather("x", local.cref(), all.ref());
        if (comm.rank() == 1) comm.all_gather("x", local.cref(), all.ref());
    }),
                    backend_error);
    group.run([&](endpoint<T>& comm) {
        tensor<T> local(extents{1, 2}), all(extents{2, 2});
        comm.all_gather("x", local.cref(), all.ref());
    });
    CHECK_THROWS_AS(contrastive::local_group<T>(0), value_error);
}
