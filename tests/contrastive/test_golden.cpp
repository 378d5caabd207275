// Golden tests against open_clip: the contrastive heads (clip_loss, siglip_loss,
// distill_clip_loss) and the evaluation functions (retrieval metrics, zero-shot classifier,
// logits and top-k counts). Fixtures: tests/data/golden/contrastive, made by
// tools/golden/make_contrastive_fixtures.py (which documents the layout, each case and the
// open_clip version; VERSIONS.txt records it).
//
// Losses, per case and precision (float64 fixtures for double, float32 fixtures computed by
// open_clip in float32 for float): theta (and the SigLIP bias) are set through the model's
// parameters "logit_scale" / "logit_bias", a training forward is compared with the loss (and
// distill's two terms), a backward with d loss / d image, d text, and the gradients that the
// head added into "logit_scale".grad (d loss / d theta) and "logit_bias".grad (zeroed before
// the step: backward adds).
// Error measure per tensor: max_i |got_i - ref_i| / max_i |ref_i| (normwise relative; for an
// all-zero reference, e.g. B = 1 CLIP whose loss and gradients are exactly 0, the absolute
// max |got_i|). Bounds: the 1e-6 for double and 5e-6 for float, and for double also
// 1e-12 (the worst measured error is 2.4e-15).
// Retrieval ranks and metrics and zero-shot top-1/top-5 counts must be exact; the zero-shot
// classifier and logits are compared with the same bounds.
// Set MMFUSE_GOLDEN_VERBOSE=1 to print the worst error of every case.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/evaluation.hpp"
#include "mmfuse/contrastive/objectives.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/nn/model.hpp"

using namespace mmfuse;

namespace {

namespace fs = std::filesystem;

/// The ceilings: 5e-6 for float, 1e-6 for double.
template <class T>
constexpr double golden_tolerance() {
    return std::is_same_v<T, float> ? 5e-6 : 1e-6;
}

/// What the implementation achieves, checked as well so that a float64 regression far below
/// the ceiling still fails: 1e-12 for double (worst measured 2.4e-15); float keeps
/// its ceiling (its fixtures are open_clip's own float32 results).
template <class T>
constexpr double achieved_tolerance() {
    return std::is_same_v<T, float> ? 5e-6 : 1e-12;
}

fs::path golden_root() { return fs::path(MMFUSE_TEST_DATA_DIR) / "golden" / "contrastive"; }

/// Lines of `<part>/cases.txt`, each split into words.
std::vector<std::vector<std::string>> manifest(const std::string& part) {
    std::ifstream in(golden_root() / part / "cases.txt");
    REQUIRE(in.good());
    std::vector<std::vector<std::string>> lines;
    for (std::string line; std::getline(in, line);) {
        std::istringstream words(line);
        std::vector<std::string> w;
        for (std::string x; words >> x;)
            w.push_back(x);
        if (!w.empty()) lines.push_back(w);
    }
    return lines;
}

/// Normwise relative error of `got` against `ref` (see the file comment).
double normwise_error(const std::vector<double>& got, const std::vector<double>& ref) {
    REQUIRE(got.size() == ref.size());
    double diff = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
        diff = std::max(diff, std::abs(got[i] - ref[i]));
        scale = std::max(scale, std::abs(ref[i]));
    }
    return scale > 0.0 ? diff / scale : diff;
}

/// Elements of a rank-2 (or lower) view in row-major order, as doubles.
template <class T>
std::vector<double> values(tensor_ref<const T> t) {
    std::vector<double> v;
    if (t.rank() == 0) {
        v.push_back(double(*t.data()));
    } else if (t.rank() == 1) {
        for (index_t i = 0; i < t.extent(0); ++i)
            v.push_back(double(t(i)));
    } else {
        REQUIRE(t.rank() == 2);
        for (index_t i = 0; i < t.extent(0); ++i)
            for (index_t j = 0; j < t.extent(1); ++j)
                v.push_back(double(t(i, j)));
    }
    return v;
}

/// One fixture folder and the comparisons made against it (worst error kept for the log).
template <class T>
class fixture {
public:
    fixture(std::string label, fs::path dir) : label_(std::move(label)), dir_(std::move(dir)) {
        REQUIRE(fs::is_directory(dir_));
    }
    ~fixture() {
        if (const char* v = std::getenv("MMFUSE_GOLDEN_VERBOSE"); v != nullptr && *v == '1')
            std::printf("golden contrastive %-44s %s  worst %.3g (%s)\n", label_.c_str(),
                        std::is_same_v<T, float> ? "f32" : "f64", worst_, worst_what_.c_str());
    }
    fixture(const fixture&) = delete;
    fixture& operator=(const fixture&) = delete;

    bool has(const std::string& file) const { return fs::exists(path(file)); }
    /// `<file>.npy` converted to T.
    tensor<T> load(const std::string& file) const { return io::npy_load_as<T>(path(file)); }
    /// The 0-d `<file>.npy` as a double (read in the fixture's own precision).
    double scalar(const std::string& file) const {
        const tensor<double> t = io::npy_load_as<double>(path(file));
        REQUIRE(t.numel() == 1);
        return t[0];
    }
    std::vector<index_t> indices(const std::string& file) const {
        const tensor<std::int64_t> t = io::npy_load<std::int64_t>(path(file));
        REQUIRE(t.rank() == 1);
        return std::vector<index_t>(t.data(), t.data() + t.numel());
    }

    /// Compares `got` with `<file>.npy` (same extents) under the normwise bound.
    void compare(const std::string& file, tensor_ref<const T> got) {
        const tensor<double> ref = io::npy_load_as<double>(path(file));
        INFO(label_ << ": " << file);
        REQUIRE(got.extents() == ref.extents());
        record(file, normwise_error(values(got), values(ref.cref())));
    }
    /// Compares a scalar with the 0-d `<file>.npy`.
    void compare(const std::string& file, double got) {
        INFO(label_ << ": " << file);
        record(file, normwise_error({got}, {scalar(file)}));
    }

private:
    fs::path path(const std::string& file) const { return dir_ / (file + ".npy"); }
    void record(const std::string& file, double err) {
        if (err > worst_ || worst_what_.empty()) {
            worst_ = err;
            worst_what_ = file;
        }
        CHECK(err <= golden_tolerance<T>());
        CHECK(err <= achieved_tolerance<T>());
    }

    std::string label_;
    fs::path dir_;
    double worst_ = 0.0;
    std::string worst_what_;
};

/// A step context on the default stream, training mode.
template <compute_type T>
struct stepper {
    growing_arena ws;
    nn::step_context<T> cx{&backend::default_stream(), &ws, true};
};

/// Sets the 0-d parameter `name` of model `m` to `v` and checks that it exists.
template <class Model>
void set_parameter(Model& m, const std::string& name, double v) {
    auto* p = m.find(name);
    INFO("parameter " << name);
    REQUIRE(p != nullptr);
    REQUIRE(p->value.numel() == 1);
    p->value.data()[0] = typename Model::value_type(v);
}

/// The gradient that backward added into the 0-d parameter `name`.
template <class Model>
double parameter_grad(Model& m, const std::string& name) {
    auto* p = m.find(name);
    REQUIRE(p != nullptr);
    return double(p->grad.data()[0]);
}

/// One loss case of `kind` ("clip", "siglip", "distill") in precision T.
template <compute_type T>
void check_loss_case(const std::string& kind, const std::string& name) {
    fixture<T> f(name, golden_root() / "losses" / name / (std::is_same_v<T, float> ? "f32" : "f64"));
    const tensor<T> image = f.load("image"), text = f.load("text");
    stepper<T> s;
    const auto run = [&](auto head, auto&& forward) {
        using head_t = decltype(head);
        nn::model<head_t> m(std::move(head), 1);
        set_parameter(m, "logit_scale", f.scalar("theta"));
        if (f.has("bias")) set_parameter(m, "logit_bias", f.scalar("bias"));
        m.zero_grad();
        forward(m.net());
        const contrastive::pair_gradients<T> g = m.net().backward(s.cx);
        f.compare("grad_image", g.da);
        f.compare("grad_text", g.db);
        f.compare("grad_theta", parameter_grad(m, "logit_scale"));
        if (f.has("bias")) f.compare("grad_bias", parameter_grad(m, "logit_bias"));
    };
    if (kind == "clip") {
        run(contrastive::clip_loss<T>{}, [&](auto& head) {
            f.compare("loss", head.forward(s.cx, image.cref(), text.cref()));
        });
    } else if (kind == "siglip") {
        run(contrastive::siglip_loss<T>{}, [&](auto& head) {
            f.compare("loss", head.forward(s.cx, image.cref(), text.cref()));
        });
    } else {
        REQUIRE(kind == "distill");
        const tensor<T> ti = f.load("teacher_image"), tt = f.load("teacher_text");
        run(contrastive::distill_clip_loss<T>{}, [&](auto& head) {
            const contrastive::distill_losses l = head.forward(
                s.cx, image.cref(), text.cref(), ti.cref(), tt.cref(), f.scalar("teacher_scale"));
            f.compare("contrastive", l.contrastive);
            f.compare("distill", l.distill);
            f.compare("loss", l.total());
        });
    }
}

/// A float64 fixture matrix as a T tensor (retrieval scores are exactly floats).
template <class T>
tensor<T> as_type(const tensor<double>& d) {
    tensor<T> t(d.extents());
    for (index_t i = 0; i < d.numel(); ++i) {
        t[i] = T(d[i]);
        REQUIRE(double(t[i]) == d[i]);  // no rounding: both precisions rank the same values
    }
    return t;
}

/// The five numbers of a fixture's summary file.
std::vector<double> summary_values(const contrastive::rank_metrics& m) {
    return {m.recall_at_1, m.recall_at_5, m.recall_at_10, m.mean_rank, m.median_rank};
}

template <class T>
void check_retrieval_case(const std::string& name) {
    fixture<double> f(name, golden_root() / "retrieval" / name);
    const tensor<T> scores = as_type<T>(f.load("scores"));
    const std::vector<index_t> owner = f.indices("text_owner");
    const contrastive::retrieval_result r = contrastive::retrieval_metrics(scores.cref(), owner);
    INFO("retrieval case " << name);
    CHECK(r.image_ranks == f.indices("image_ranks"));
    CHECK(r.text_ranks == f.indices("text_ranks"));
    // Exact: the metrics are counts and sums divided by N, computed as open_clip does.
    CHECK(summary_values(r.image_to_text) == values(f.load("image_to_text").cref()));
    CHECK(summary_values(r.text_to_image) == values(f.load("text_to_image").cref()));
    bool one_to_one = scores.extent(0) == scores.extent(1);
    for (std::size_t t = 0; t < owner.size(); ++t)
        one_to_one = one_to_one && owner[t] == index_t(t);
    if (one_to_one) {
        const contrastive::retrieval_result p = contrastive::retrieval_metrics(scores.cref());
        CHECK(p.image_ranks == r.image_ranks);
        CHECK(p.text_ranks == r.text_ranks);
    }
}

template <class T>
void check_zero_shot_case(const std::string& name) {
    const fs::path dir = golden_root() / "zero_shot" / name;
    fixture<T> f(name, dir);
    const tensor<T> prompts = f.load("prompts"), images = f.load("images");
    const std::vector<index_t> targets = f.indices("targets");
    const tensor<T> w = contrastive::zero_shot_classifier(prompts.cref());
    f.compare("classifier", w.cref());
    const tensor<T> logits = contrastive::zero_shot_logits(images.cref(), w.cref());
    f.compare("logits", logits.cref());
    const tensor<double> correct = io::npy_load<double>(dir / "correct.npy");
    REQUIRE(correct.numel() == 2);
    INFO("zero-shot case " << name);
    CHECK(double(contrastive::top_k_correct(logits.cref(), targets, 1)) == correct[0]);
    CHECK(double(contrastive::top_k_correct(logits.cref(), targets, 5)) == correct[1]);
    const double n = double(targets.size());
    CHECK(contrastive::top_k_accuracy(logits.cref(), targets, 1) == correct[0] / n);
    CHECK(contrastive::top_k_accuracy(logits.cref(), targets, 5) == correct[1] / n);
}

}  // namespace

TEMPLATE_TEST_CASE("contrastive losses match open_clip", "[contrastive][golden]", float, double) {
    const auto cases = manifest("losses");
    int per_kind[3] = {0, 0, 0};
    for (const auto& c : cases) {
        REQUIRE(c.size() == 2);
        per_kind[c[0] == "clip" ? 0 : c[0] == "siglip" ? 1 : 2]++;
        DYNAMIC_SECTION(c[1]) { check_loss_case<TestType>(c[0], c[1]); }
    }
    CHECK(per_kind[0] >= 1);  // every head has cases (an emptied manifest must fail)
    CHECK(per_kind[1] >= 1);
    CHECK(per_kind[2] >= 1);
}

TEMPLATE_TEST_CASE("retrieval metrics match open_clip and the any-hit rule", "[contrastive][golden]",
                   float, double) {
    const auto cases = manifest("retrieval");
    REQUIRE(cases.size() >= 4);
    for (const auto& c : cases)
        DYNAMIC_SECTION(c[0]) { check_retrieval_case<TestType>(c[0]); }
}

TEMPLATE_TEST_CASE("zero-shot classifier and accuracy match open_clip", "[contrastive][golden]",
                   float, double) {
    const auto cases = manifest("zero_shot");
    REQUIRE(cases.size() >= 1);
    for (const auto& c : cases)
        DYNAMIC_SECTION(c[0]) { check_zero_shot_case<TestType>(c[0]); }
}
