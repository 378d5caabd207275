// contrastive/evaluation.hpp: retrieval ranks and metrics, zero-shot classifier, logits and
// top-k accuracy. Hand-built cases with ties and several captions per image (the numbers
// worked out by hand in the comments), random cases against a sort-based brute force written
// here (std::stable_sort: a different algorithm from the counting rule of the header), strided
// views, NaN-poisoned outputs, and every error path.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "mmfuse/contrastive/evaluation.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
using namespace mmfuse::contrastive;

namespace {

/// A (rows, cols) tensor holding `v` row-major.
template <class T>
tensor<T> matrix(index_t rows, index_t cols, const std::vector<double>& v) {
    REQUIRE(v.size() == std::size_t(rows * cols));
    tensor<T> t({rows, cols});
    for (index_t i = 0; i < t.numel(); ++i)
        t[i] = T(v[std::size_t(i)]);
    return t;
}

/// Position of `pos` in a stable descending sort of `line` (brute force: sort and search).
std::vector<index_t> stable_order(const std::vector<double>& line) {
    std::vector<index_t> idx(line.size());
    std::iota(idx.begin(), idx.end(), index_t(0));
    std::stable_sort(idx.begin(), idx.end(),
                     [&](index_t a, index_t b) { return line[std::size_t(a)] > line[std::size_t(b)]; });
    return idx;
}
index_t sorted_position(const std::vector<double>& line, index_t pos) {
    const std::vector<index_t> order = stable_order(line);
    return index_t(std::find(order.begin(), order.end(), pos) - order.begin());
}

/// Brute-force ranks: image i -> min over its captions of their sorted position in row i;
/// text t -> sorted position of its image in column t.
struct brute_ranks {
    std::vector<index_t> image, text;
};
brute_ranks brute_force(const std::vector<double>& s, index_t n_img, index_t n_txt,
                        const std::vector<index_t>& owner) {
    brute_ranks r;
    for (index_t i = 0; i < n_img; ++i) {
        std::vector<double> row(s.begin() + i * n_txt, s.begin() + (i + 1) * n_txt);
        index_t best = std::numeric_limits<index_t>::max();
        for (index_t t = 0; t < n_txt; ++t)
            if (owner[std::size_t(t)] == i) best = std::min(best, sorted_position(row, t));
        r.image.push_back(best);
    }
    for (index_t t = 0; t < n_txt; ++t) {
        std::vector<double> col;
        for (index_t i = 0; i < n_img; ++i)
            col.push_back(s[std::size_t(i * n_txt + t)]);
        r.text.push_back(sorted_position(col, owner[std::size_t(t)]));
    }
    return r;
}

/// Metrics of 0-based ranks, computed the long way (sorted copy, explicit median rule).
rank_metrics brute_summary(std::vector<index_t> r) {
    std::sort(r.begin(), r.end());
    const double n = double(r.size());
    rank_metrics m;
    double sum = 0;
    for (index_t x : r) {
        sum += double(x);
        m.recall_at_1 += x < 1 ? 1.0 / n : 0.0;
    }
    m.recall_at_5 = double(std::count_if(r.begin(), r.end(), [](index_t x) { return x < 5; })) / n;
    m.recall_at_10 = double(std::count_if(r.begin(), r.end(), [](index_t x) { return x < 10; })) / n;
    m.mean_rank = sum / n + 1.0;
    const std::size_t h = r.size() / 2;
    const double med = r.size() % 2 ? double(r[h]) : 0.5 * double(r[h - 1] + r[h]);
    m.median_rank = std::floor(med) + 1.0;
    return m;
}

void require_metrics(const rank_metrics& got, const rank_metrics& want) {
    CHECK(got.recall_at_1 == Approx(want.recall_at_1).margin(1e-15));
    CHECK(got.recall_at_5 == Approx(want.recall_at_5).margin(1e-15));
    CHECK(got.recall_at_10 == Approx(want.recall_at_10).margin(1e-15));
    CHECK(got.mean_rank == Approx(want.mean_rank).margin(1e-12));
    CHECK(got.median_rank == want.median_rank);
}

template <class F>
void require_value_error(F&& f, const std::string& fragment) {
    try {
        f();
        FAIL("expected value_error containing '" << fragment << "'");
    } catch (const value_error& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
}
template <class F>
void require_shape_error(F&& f, const std::string& fragment) {
    try {
        f();
        FAIL("expected shape_error containing '" << fragment << "'");
    } catch (const shape_error& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
}

}  // namespace

TEST_CASE("stable_rank puts ties at the lower index first", "[contrastive][evaluation]") {
    const tensor<double> v = matrix<double>(1, 6, {0.5, 0.9, 0.5, 0.5, 0.1, 0.9});
    const tensor_ref<const double> line = v.cref().select(0, 0);
    // Stable descending order: 1, 5, 0, 2, 3, 4.
    const std::vector<index_t> want = {2, 0, 3, 4, 5, 1};
    for (index_t p = 0; p < 6; ++p)
        CHECK(stable_rank(line, p) == want[std::size_t(p)]);
}

TEST_CASE("summarize_ranks follows numpy's mean and median", "[contrastive][evaluation]") {
    // Even count: median of {0, 1, 4, 12} = (1 + 4) / 2 = 2.5 -> floor 2 -> rank 3.
    const std::vector<index_t> even = {4, 0, 12, 1};
    const rank_metrics m = summarize_ranks(even);
    CHECK(m.recall_at_1 == 0.25);
    CHECK(m.recall_at_5 == 0.75);
    CHECK(m.recall_at_10 == 0.75);
    CHECK(m.mean_rank == 17.0 / 4.0 + 1.0);
    CHECK(m.median_rank == 3.0);
    // Odd count: median of {0, 3, 9} = 3 -> rank 4.
    const std::vector<index_t> odd = {9, 0, 3};
    const rank_metrics o = summarize_ranks(odd);
    CHECK(o.median_rank == 4.0);
    CHECK(o.mean_rank == 5.0);
    CHECK(o.recall_at_10 == 1.0);
    CHECK(recall_at(odd, 4) == Approx(2.0 / 3.0));
    require_value_error([] { (void)summarize_ranks({}); }, "no ranks");
    const std::vector<index_t> negative = {0, -1};
    require_value_error([&] { (void)summarize_ranks(negative); }, "0-based");
    require_value_error([&] { (void)recall_at(odd, 0); }, "k must be >= 1");
}

TEMPLATE_TEST_CASE("retrieval_metrics one caption per image with ties", "[contrastive][evaluation]",
                   float, double) {
    // Row i = image i, column t = text t, pairs on the diagonal.
    //   image 0: [0.5, 0.5, 0.2]   its text 0 ties with text 1, lower index -> rank 0
    //   image 1: [0.5, 0.5, 0.9]   text 1 ties with text 0 (lower index first) -> rank 2
    //   image 2: [0.1, 0.3, 0.3]   text 2 ties with text 1 -> rank 1
    // Columns (text -> image):
    //   text 0: [0.5, 0.5, 0.1]   image 0 -> rank 0
    //   text 1: [0.5, 0.5, 0.3]   image 1 ties with image 0 -> rank 1
    //   text 2: [0.2, 0.9, 0.3]   image 2 -> rank 1
    const tensor<TestType> s = matrix<TestType>(3, 3, {0.5, 0.5, 0.2, 0.5, 0.5, 0.9, 0.1, 0.3, 0.3});
    const retrieval_result r = retrieval_metrics(s.cref());
    CHECK(r.image_ranks == std::vector<index_t>{0, 2, 1});
    CHECK(r.text_ranks == std::vector<index_t>{0, 1, 1});
    CHECK(r.image_to_text.recall_at_1 == Approx(1.0 / 3.0));
    CHECK(r.image_to_text.mean_rank == Approx(2.0));
    CHECK(r.image_to_text.median_rank == 2.0);
    CHECK(r.text_to_image.recall_at_1 == Approx(1.0 / 3.0));
    CHECK(r.text_to_image.mean_rank == Approx(5.0 / 3.0));
    CHECK(r.text_to_image.median_rank == 2.0);
    CHECK(r.image_to_text.recall_at_5 == 1.0);
    CHECK(r.text_to_image.recall_at_10 == 1.0);
}

TEMPLATE_TEST_CASE("retrieval_metrics several captions per image is any-hit",
                   "[contrastive][evaluation]", float, double) {
    // 2 images, 5 texts; owners: text 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 0, 4 -> 1.
    //   image 0 row: [0.9, 0.1, 0.8, 0.7, 0.2]  its captions 1 (rank 4), 3 (rank 2) -> 2
    //   image 1 row: [0.3, 0.4, 0.3, 0.4, 0.6]  captions 0 (rank 2, tie with 2), 2 (rank 3),
    //                                           4 (rank 0) -> 0
    // Columns: text 0 [0.9, 0.3] image 1 -> 1; text 1 [0.1, 0.4] image 0 -> 1;
    //          text 2 [0.8, 0.3] image 1 -> 1; text 3 [0.7, 0.4] image 0 -> 0;
    //          text 4 [0.2, 0.6] image 1 -> 0.
    const tensor<TestType> s =
        matrix<TestType>(2, 5, {0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.4, 0.3, 0.4, 0.6});
    const std::vector<index_t> owner = {1, 0, 1, 0, 1};
    const retrieval_result r = retrieval_metrics(s.cref(), owner);
    CHECK(r.image_ranks == std::vector<index_t>{2, 0});
    CHECK(r.text_ranks == std::vector<index_t>{1, 1, 1, 0, 0});
    CHECK(r.image_to_text.recall_at_1 == 0.5);
    CHECK(r.image_to_text.mean_rank == 2.0);
    CHECK(r.image_to_text.median_rank == 2.0);  // median (0 + 2) / 2 = 1 -> 2
    CHECK(r.text_to_image.recall_at_1 == Approx(0.4));
    CHECK(r.text_to_image.mean_rank == Approx(1.6));
    CHECK(r.text_to_image.median_rank == 2.0);
}

TEMPLATE_TEST_CASE("retrieval_metrics matches a sort-based brute force on random scores",
                   "[contrastive][evaluation]", float, double) {
    auto rng = mmfuse_test::make_rng(11);
    std::uniform_int_distribution<index_t> size(1, 9);
    for (int trial = 0; trial < 30; ++trial) {
        const index_t n_img = size(rng), per = size(rng) % 4 + 1;
        // Every image owns `per` captions plus a few extra at random; shuffled.
        std::vector<index_t> owner;
        for (index_t i = 0; i < n_img; ++i)
            for (index_t k = 0; k < per; ++k)
                owner.push_back(i);
        std::uniform_int_distribution<index_t> pick(0, n_img - 1);
        for (int extra = 0; extra < trial % 4; ++extra)
            owner.push_back(pick(rng));
        std::shuffle(owner.begin(), owner.end(), rng);
        const index_t n_txt = index_t(owner.size());
        // Scores on a coarse grid (many ties, exact in float), half the time strided: the
        // matrix is built transposed and passed as a transposed view.
        std::uniform_int_distribution<int> grid(0, 4);
        std::vector<double> s(std::size_t(n_img * n_txt));
        for (double& x : s)
            x = 0.25 * grid(rng);
        const bool strided = trial % 2 == 1;
        tensor<TestType> st({n_txt, n_img}), sr({n_img, n_txt});
        for (index_t i = 0; i < n_img; ++i)
            for (index_t t = 0; t < n_txt; ++t) {
                st(t, i) = TestType(s[std::size_t(i * n_txt + t)]);
                sr(i, t) = TestType(s[std::size_t(i * n_txt + t)]);
            }
        const tensor_ref<const TestType> view = strided ? st.cref().transpose(0, 1) : sr.cref();
        const retrieval_result r = retrieval_metrics(view, owner);
        const brute_ranks b = brute_force(s, n_img, n_txt, owner);
        INFO("trial " << trial << ", " << n_img << " images, " << n_txt << " texts");
        REQUIRE(r.image_ranks == b.image);
        REQUIRE(r.text_ranks == b.text);
        require_metrics(r.image_to_text, brute_summary(b.image));
        require_metrics(r.text_to_image, brute_summary(b.text));
    }
}

TEST_CASE("retrieval_metrics refuses bad input", "[contrastive][evaluation]") {
    const tensor<float> s = matrix<float>(2, 3, {0.1, 0.2, 0.3, 0.4, 0.5, 0.6});
    const std::vector<index_t> ok = {0, 1, 1};
    require_shape_error([&] { (void)retrieval_metrics(s.cref()); }, "square");
    const std::vector<index_t> short_owner = {0, 1};
    require_shape_error([&] { (void)retrieval_metrics(s.cref(), short_owner); }, "text_owner");
    const std::vector<index_t> out_of_range = {0, 2, 1};
    require_value_error([&] { (void)retrieval_metrics(s.cref(), out_of_range); },
                        "text_owner[1] = 2");
    const std::vector<index_t> negative = {0, -1, 1};
    require_value_error([&] { (void)retrieval_metrics(s.cref(), negative); }, "text_owner[1] = -1");
    const std::vector<index_t> orphan = {1, 1, 1};
    require_value_error([&] { (void)retrieval_metrics(s.cref(), orphan); }, "image 0 owns no text");
    const tensor<float> v({3});
    require_shape_error([&] { (void)retrieval_metrics(v.cref(), ok); }, "retrieval_metrics");
    const tensor<float> empty({0, 3});
    require_shape_error([&] { (void)retrieval_metrics(empty.cref(), ok); }, "at least one image");
    tensor<float> nan = s.clone();
    nan(1, 2) = std::numeric_limits<float>::quiet_NaN();
    require_value_error([&] { (void)retrieval_metrics(nan.cref(), ok); }, "NaN at (1, 2)");
    const tensor_ref<const float> device(s.data(), s.extents(), memory_space::device);
    require_value_error([&] { (void)retrieval_metrics(device, ok); }, "host memory");
    (void)retrieval_metrics(s.cref(), ok);  // the valid call passes
}

TEMPLATE_TEST_CASE("zero_shot_classifier averages unit prompts and renormalises",
                   "[contrastive][evaluation]", float, double) {
    const double tol = mmfuse_test::tolerance<TestType>();
    SECTION("hand-built: two orthogonal prompts of different norms") {
        // normalize([3, 0]) = [1, 0], normalize([0, 4]) = [0, 1]: mean [0.5, 0.5] -> 1/sqrt 2.
        // Class 1: the prompt [0, -2] twice -> [0, -1].
        const tensor<TestType> p =
            matrix<TestType>(2, 4, {3, 0, 0, 4, 0, -2, 0, -2});  // viewed as (2, 2, 2)
        const tensor<TestType> w = zero_shot_classifier(p.cref().reshape({2, 2, 2}));
        REQUIRE(w.extents() == extents{2, 2});
        CHECK(double(w(0, 0)) == Approx(std::sqrt(0.5)).margin(tol));
        CHECK(double(w(0, 1)) == Approx(std::sqrt(0.5)).margin(tol));
        CHECK(double(w(1, 0)) == Approx(0.0).margin(tol));
        CHECK(double(w(1, 1)) == Approx(-1.0).margin(tol));
    }
    SECTION("random classes with different template counts, strided prompts") {
        auto rng = mmfuse_test::make_rng(21);
        const index_t d = 6;
        const std::vector<index_t> counts = {1, 3, 5, 2};
        std::vector<tensor<TestType>> stores;  // transposed storage (D, K): strided views
        std::vector<tensor_ref<const TestType>> views;
        for (index_t k : counts) {
            stores.push_back(mmfuse_test::random_tensor<TestType>({d, k}, rng, -2.0, 2.0));
            views.push_back(stores.back().cref().transpose(0, 1));
        }
        tensor<TestType> w({index_t(counts.size()), d});
        mmfuse_test::poison(w);
        zero_shot_classifier(std::span<const tensor_ref<const TestType>>(views), w.ref());
        std::vector<double> ref;
        for (std::size_t c = 0; c < counts.size(); ++c) {
            std::vector<double> m(std::size_t(d), 0.0);
            for (index_t t = 0; t < counts[c]; ++t) {
                double n = 0;
                for (index_t j = 0; j < d; ++j)
                    n += double(stores[c](j, t)) * double(stores[c](j, t));
                for (index_t j = 0; j < d; ++j)
                    m[std::size_t(j)] += double(stores[c](j, t)) / std::sqrt(n) / double(counts[c]);
            }
            double n = 0;
            for (double x : m)
                n += x * x;
            for (double x : m)
                ref.push_back(x / std::sqrt(n));
        }
        CHECK(mmfuse_test::max_rel_error(w, ref) <= tol);
    }
}

TEST_CASE("zero_shot_classifier refuses bad input", "[contrastive][evaluation]") {
    const tensor<double> a = matrix<double>(2, 3, {1, 0, 0, 0, 1, 0});
    const tensor<double> b = matrix<double>(1, 4, {1, 0, 0, 0});
    tensor<double> w({2, 3});
    std::vector<tensor_ref<const double>> mixed = {a.cref(), b.cref()};
    require_shape_error(
        [&] { zero_shot_classifier(std::span<const tensor_ref<const double>>(mixed), w.ref()); },
        "prompts of class 1");
    std::vector<tensor_ref<const double>> one = {a.cref()};
    require_shape_error(
        [&] { zero_shot_classifier(std::span<const tensor_ref<const double>>(one), w.ref()); },
        "classifier");
    require_shape_error([&] { zero_shot_classifier(std::span<const tensor_ref<const double>>(), w.ref()); },
                        "at least one class");
    // Opposite prompts average to zero: no direction.
    const tensor<double> opposite = matrix<double>(2, 3, {1, 2, 0, -2, -4, 0});
    std::vector<tensor_ref<const double>> zero = {a.cref(), opposite.cref()};
    require_value_error(
        [&] { zero_shot_classifier(std::span<const tensor_ref<const double>>(zero), w.ref()); },
        "class 1: the averaged prompt direction is zero");
    const tensor<double> empty_k({0, 3});
    std::vector<tensor_ref<const double>> none = {a.cref(), empty_k.cref()};
    require_shape_error(
        [&] { zero_shot_classifier(std::span<const tensor_ref<const double>>(none), w.ref()); },
        "K >= 1");
    require_shape_error([&] { (void)zero_shot_classifier(a.cref()); }, "(C, K, D)");
}

TEMPLATE_TEST_CASE("zero_shot_logits is 100 times the cosine", "[contrastive][evaluation]", float,
                   double) {
    auto rng = mmfuse_test::make_rng(31);
    const index_t n = 5, c = 4, d = 7;
    // Raw (unnormalised) images: the logits must not depend on their norms.
    const tensor<TestType> x = mmfuse_test::random_tensor<TestType>({n, d}, rng, -3.0, 3.0);
    const tensor<TestType> w = mmfuse_test::random_tensor<TestType>({c, d}, rng);
    tensor<TestType> logits({n, c});
    mmfuse_test::poison(logits);
    zero_shot_logits(x.cref(), w.cref(), logits.ref());
    std::vector<double> ref;
    for (index_t i = 0; i < n; ++i) {
        double nx = 0;
        for (index_t j = 0; j < d; ++j)
            nx += double(x(i, j)) * double(x(i, j));
        for (index_t k = 0; k < c; ++k) {
            double dot = 0;
            for (index_t j = 0; j < d; ++j)
                dot += double(x(i, j)) * double(w(k, j));
            ref.push_back(100.0 * dot / std::sqrt(nx));
        }
    }
    // Relative to the logits' scale (100): the per-element floor of max_rel_error is 1.
    CHECK(mmfuse_test::max_rel_error(logits, ref) <= 100.0 * mmfuse_test::tolerance<TestType>());
    const tensor<TestType> again = zero_shot_logits(x.cref(), w.cref());
    CHECK(mmfuse_test::max_rel_error(again, ref) <= 100.0 * mmfuse_test::tolerance<TestType>());

    tensor<TestType> wrong({n, c + 1});
    require_shape_error([&] { zero_shot_logits(x.cref(), w.cref(), wrong.ref()); }, "logits");
    const tensor<TestType> narrow({c, d - 1});
    require_shape_error([&] { (void)zero_shot_logits(x.cref(), narrow.cref()); }, "classifier");
}

TEMPLATE_TEST_CASE("top_k accuracy with ties and top-5", "[contrastive][evaluation]", float, double) {
    // 4 samples, 7 classes.
    //   row 0: target 2 is the unique max                         -> rank 0
    //   row 1: target 3 ties with class 1 for the max (1 first)   -> rank 1
    //   row 2: target 0 ties with class 6 below five larger ones;
    //          target index is lower, so it goes first            -> rank 5
    //   row 3: target 6 ties with 0 and 4 at the top              -> rank 2
    const tensor<TestType> logits = matrix<TestType>(
        4, 7, {0, 1, 5, 2, 0, 0, 0,  //
               1, 9, 0, 9, 0, 0, 0,  //
               1, 2, 3, 4, 5, 6, 1,  //
               8, 0, 0, 0, 8, 0, 8});
    const std::vector<index_t> targets = {2, 3, 0, 6};
    CHECK(top_k_correct(logits.cref(), targets, 1) == 1);
    CHECK(top_k_correct(logits.cref(), targets, 2) == 2);
    CHECK(top_k_correct(logits.cref(), targets, 3) == 3);
    CHECK(top_k_correct(logits.cref(), targets, 5) == 3);
    CHECK(top_k_correct(logits.cref(), targets, 6) == 4);
    CHECK(top_k_accuracy(logits.cref(), targets, 1) == 0.25);
    CHECK(top_k_accuracy(logits.cref(), targets, 5) == 0.75);
    // Strided: the same logits through a transposed copy.
    tensor<TestType> t({7, 4});
    for (index_t i = 0; i < 4; ++i)
        for (index_t k = 0; k < 7; ++k)
            t(k, i) = logits(i, k);
    CHECK(top_k_correct(t.cref().transpose(0, 1), targets, 3) == 3);
}

TEST_CASE("top_k accuracy refuses bad input", "[contrastive][evaluation]") {
    const tensor<float> logits = matrix<float>(2, 3, {0, 1, 2, 3, 4, 5});
    const std::vector<index_t> targets = {0, 2};
    require_value_error([&] { (void)top_k_correct(logits.cref(), targets, 0); }, "k must be in [1, C = 3]");
    require_value_error([&] { (void)top_k_correct(logits.cref(), targets, 4); }, "got 4");
    const std::vector<index_t> bad = {0, 3};
    require_value_error([&] { (void)top_k_correct(logits.cref(), bad, 1); }, "targets[1] = 3");
    const std::vector<index_t> one = {0};
    require_shape_error([&] { (void)top_k_correct(logits.cref(), one, 1); }, "targets");
    const tensor<float> empty({0, 3});
    require_shape_error([&] { (void)top_k_accuracy(empty.cref(), std::vector<index_t>{}, 1); },
                        "at least one row");
    tensor<float> nan = logits.clone();
    nan(0, 1) = std::numeric_limits<float>::quiet_NaN();
    require_value_error([&] { (void)top_k_correct(nan.cref(), targets, 1); }, "NaN at (0, 1)");
    CHECK(top_k_correct(logits.cref(), targets, 1) == 1);
}
