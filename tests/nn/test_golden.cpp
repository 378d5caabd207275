// Golden tests against PyTorch: every layer's forward output, input gradients and parameter
// gradients against its PyTorch twin, in float and double. Fixtures: tests/data/golden,
// made by tools/golden/make_layer_fixtures.py (which documents the layout and each case).
//
// Per case and precision: the parameters are set by state_dict name through
// `nn::model::find` (the model's names must equal the twin's `params.txt`, in order), a
// training-mode forward is compared with y, a backward with the fixture's dy with every
// input gradient and every parameter gradient (grads zeroed first; backward adds).
// Error measure: max_i |got_i - ref_i| / max(1, |ref_i|) per tensor (per-element relative
// with floor 1); bound 1e-5 for float, 1e-10 for double. Set MMFUSE_GOLDEN_VERBOSE=1 to print
// the worst error of every case.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/cross_attention.hpp"
#include "mmfuse/nn/layer_norm.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/mlp.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"
#include "mmfuse/nn/rms_norm.hpp"
#include "mmfuse/nn/transformer.hpp"

using namespace mmfuse;

namespace {

namespace fs = std::filesystem;

template <class T>
constexpr double golden_tolerance() {
    return std::is_same_v<T, float> ? 1e-5 : 1e-10;
}

/// One case's fixture folder for precision T, and the comparisons made against it.
template <compute_type T>
class golden {
public:
    explicit golden(std::string name)
        : name_(std::move(name)),
          case_dir_(fs::path(MMFUSE_TEST_DATA_DIR) / "golden" / name_),
          dir_(case_dir_ / (std::is_same_v<T, float> ? "f32" : "f64")) {
        REQUIRE(fs::is_directory(dir_));
    }
    ~golden() {
        if (const char* v = std::getenv("MMFUSE_GOLDEN_VERBOSE"); v != nullptr && *v == '1')
            std::printf("golden %-36s %s  worst %.3g (%s)\n", name_.c_str(),
                        std::is_same_v<T, float> ? "f32" : "f64", worst_, worst_what_.c_str());
    }
    golden(const golden&) = delete;
    golden& operator=(const golden&) = delete;

    bool has(const std::string& file) const { return fs::exists(dir_ / (file + ".npy")); }
    tensor<T> load(const std::string& file) const { return io::npy_load<T>(path(file)); }
    tensor<bool> load_mask(const std::string& file) const { return io::npy_load<bool>(path(file)); }

    /// Masks of the fixture (true = KEEP; absent files stay empty views); `causal` as given.
    /// The tensors are owned by this object.
    nn::attention_masks<T> masks(bool causal) {
        nn::attention_masks<T> m;
        if (has("key_padding")) m.key_padding = keep(load_mask("key_padding"));
        if (has("attn")) m.attn = keep(load_mask("attn"));
        if (has("attn_bias")) m.attn_bias = keep(load("attn_bias"));
        m.causal = causal;
        return m;
    }

    /// Sets every parameter of `m` from `<name>.npy`; the model's names must be exactly the
    /// twin's state_dict names, in the same order.
    template <class Model>
    void load_parameters(Model& m) const {
        std::vector<std::string> names;
        std::ifstream in(case_dir_ / "params.txt");
        REQUIRE(in.good());
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) names.push_back(line);
        std::vector<std::string> ours;
        for (const auto& e : m.parameter_index())
            ours.push_back(e.name);
        INFO("case " << name_);
        REQUIRE(ours == names);
        for (const auto& n : names) {
            auto* p = m.find(n);
            REQUIRE(p != nullptr);
            const tensor<T> v = load(n);
            INFO("parameter " << n);
            REQUIRE(p->value.extents() == v.extents());
            REQUIRE(p->value.is_contiguous());
            std::copy(v.data(), v.data() + v.numel(), p->value.data());
        }
    }

    /// Compares `got` with `<file>.npy`: same extents, error within the bound.
    void compare(const std::string& file, tensor_ref<const T> got) {
        const tensor<T> ref = load(file);
        INFO("case " << name_ << ", " << file);
        REQUIRE(got.extents() == ref.extents());
        REQUIRE(got.is_contiguous());
        double err = 0.0, ref_max = 0.0;
        for (index_t i = 0; i < ref.numel(); ++i) {
            const double a = double(got.data()[i]), b = double(ref[i]);
            ref_max = std::max(ref_max, std::abs(b));
            err = std::isfinite(a) ? std::max(err, std::abs(a - b) / std::max(1.0, std::abs(b)))
                                   : std::numeric_limits<double>::infinity();
        }
        REQUIRE(ref_max > 0.0);  // a trivial (all-zero) reference would test nothing
        if (err > worst_ || worst_what_.empty()) {
            worst_ = err;
            worst_what_ = file;
        }
        CHECK(err <= golden_tolerance<T>());
    }

    /// Compares every parameter gradient of `m` with `grad_<name>.npy`.
    template <class Model>
    void compare_parameter_grads(Model& m) {
        for (const auto& e : m.parameter_index())
            compare("grad_" + e.name, tensor_ref<const T>(m.find(e.name)->grad));
    }

private:
    fs::path path(const std::string& file) const { return dir_ / (file + ".npy"); }
    template <class U>
    tensor_ref<const U> keep(tensor<U> t) {
        if constexpr (std::is_same_v<U, bool>) {
            bools_.push_back(std::move(t));
            return bools_.back().cref();
        } else {
            values_.push_back(std::move(t));
            return values_.back().cref();
        }
    }

    std::string name_;
    fs::path case_dir_;
    fs::path dir_;
    std::deque<tensor<bool>> bools_;  // deques: the views handed out stay valid
    std::deque<tensor<T>> values_;
    double worst_ = 0.0;
    std::string worst_what_;
};

/// A step context on the default stream, training mode.
template <compute_type T>
struct stepper {
    growing_arena ws;
    nn::step_context<T> cx{&backend::default_stream(), &ws, true};
};

/// Single-input layer `net` against case `name`: x -> y, dy -> grad_x and every parameter
/// gradient; its public `masks`, if it has them, come from the fixture (plus `causal`).
template <class Net>
void check_layer(const std::string& name, Net net, bool causal = false) {
    using T = typename Net::value_type;
    golden<T> g(name);
    nn::model<Net> m(std::move(net), 1);
    g.load_parameters(m);
    if constexpr (requires { m.net().masks; }) m.net().masks = g.masks(causal);
    const tensor<T> x = g.load("x");
    const tensor<T> dy = g.load("dy");
    stepper<T> s;
    m.zero_grad();
    g.compare("y", m.net().forward(s.cx, x.cref()));
    g.compare("grad_x", m.net().backward(s.cx, dy.cref()));
    g.compare_parameter_grads(m);
}

/// `multi_head_attention` called as cross attention (query, key, value) against case `name`.
template <class T>
void check_cross_attention(const std::string& name, index_t kdim, index_t vdim,
                           bool causal = false) {
    golden<T> g(name);
    using net_t = nn::multi_head_attention<dyn, dyn, T>;
    nn::model<net_t> m(net_t{8, 2, kdim, vdim}, 1);
    g.load_parameters(m);
    const nn::attention_masks<T> masks = g.masks(causal);
    const tensor<T> q = g.load("query"), k = g.load("key"), v = g.load("value");
    const tensor<T> dy = g.load("dy");
    stepper<T> s;
    m.zero_grad();
    g.compare("y", m.net().forward(s.cx, q.cref(), k.cref(), v.cref(), masks));
    const nn::attention_grads<T> d = m.net().backward(s.cx, dy.cref());
    g.compare("grad_query", d.dquery);
    g.compare("grad_key", d.dkey);
    g.compare("grad_value", d.dvalue);
    g.compare_parameter_grads(m);
}

/// `cross_attention_block` (x attends to context) against case `name`.
template <class T>
void check_cross_block(const std::string& name, index_t context_dim, nn::transformer_options opt) {
    golden<T> g(name);
    using net_t = nn::cross_attention_block<dyn, dyn, dyn, T>;
    nn::model<net_t> m(net_t{8, 2, 16, context_dim, opt}, 1);
    g.load_parameters(m);
    const nn::attention_masks<T> masks = g.masks(false);
    const tensor<T> x = g.load("x"), ctx = g.load("context"), dy = g.load("dy");
    stepper<T> s;
    m.zero_grad();
    g.compare("y", m.net().forward(s.cx, x.cref(), ctx.cref(), masks));
    const nn::cross_attention_grads<T> d = m.net().backward(s.cx, dy.cref());
    g.compare("grad_x", d.dx);
    g.compare("grad_context", d.dcontext);
    g.compare_parameter_grads(m);
}

}  // namespace

TEMPLATE_TEST_CASE("golden: linear on a 3-D input", "[golden][nn]", float, double) {
    check_layer("linear", nn::linear<dyn, dyn, TestType>{8, 6});
}

TEMPLATE_TEST_CASE("golden: layer_norm", "[golden][nn]", float, double) {
    check_layer("layer_norm", nn::layer_norm<dyn, TestType>{8});
}

TEMPLATE_TEST_CASE("golden: rms_norm with the default eps (finfo eps)", "[golden][nn]", float,
                   double) {
    check_layer("rms_norm", nn::rms_norm<dyn, TestType>{8});
}

TEMPLATE_TEST_CASE("golden: activations", "[golden][nn]", float, double) {
    using T = TestType;
    using K = ops::unary_kind;
    check_layer("activation_relu", nn::activation<K::relu, T>{});
    check_layer("activation_gelu", nn::activation<K::gelu_erf, T>{});
    check_layer("activation_gelu_tanh", nn::activation<K::gelu_tanh, T>{});
    check_layer("activation_silu", nn::activation<K::silu, T>{});
    check_layer("activation_sigmoid", nn::activation<K::sigmoid, T>{});
    check_layer("activation_tanh", nn::activation<K::tanh, T>{});
}

TEMPLATE_TEST_CASE("golden: mlp with gelu", "[golden][nn]", float, double) {
    check_layer("mlp_gelu", nn::mlp<dyn, dyn, dyn, ops::unary_kind::gelu_erf, TestType>{8, 16, 6});
}

TEMPLATE_TEST_CASE("golden: multi-head self attention", "[golden][nn][attention]", float, double) {
    using net_t = nn::self_attention<dyn, dyn, TestType>;
    SECTION("no mask") {
        check_layer("mha_self", net_t{8, 2});
    }
    SECTION("key padding") {
        check_layer("mha_key_padding", net_t{8, 2});
    }
    SECTION("boolean (B*H, Lq, Lk) mask and key padding") {
        check_layer("mha_bool_mask", net_t{8, 2});
    }
    SECTION("additive float mask with -inf entries") {
        check_layer("mha_float_mask", net_t{8, 2});
    }
    SECTION("causal") {
        check_layer("mha_causal", net_t{8, 2}, true);
    }
}

TEMPLATE_TEST_CASE("golden: multi-head cross attention", "[golden][nn][attention]", float, double) {
    SECTION("Lq != Lk, kdim != vdim != E") {
        check_cross_attention<TestType>("mha_cross", 6, 4);
    }
    SECTION("key padding") {
        check_cross_attention<TestType>("mha_cross_key_padding", 6, 6);
    }
    SECTION("causal, Lq < Lk (top-left aligned)") {
        check_cross_attention<TestType>("mha_cross_causal", 6, 6, true);
    }
}

TEMPLATE_TEST_CASE("golden: transformer encoder layer", "[golden][nn][transformer]", float,
                   double) {
    using net_t = nn::transformer_encoder_layer<dyn, dyn, dyn, TestType>;
    using K = ops::unary_kind;
    SECTION("post-LN, relu") {
        check_layer("encoder_post_relu", net_t{8, 2, 16, {.activation = K::relu}});
    }
    SECTION("post-LN, gelu, key padding") {
        check_layer("encoder_post_gelu_key_padding", net_t{8, 2, 16, {.activation = K::gelu_erf}});
    }
    SECTION("pre-LN, relu, causal") {
        check_layer("encoder_pre_relu_causal",
                    net_t{8, 2, 16, {.activation = K::relu, .norm_first = true}}, true);
    }
    SECTION("pre-LN, gelu") {
        check_layer("encoder_pre_gelu",
                    net_t{8, 2, 16, {.activation = K::gelu_erf, .norm_first = true}});
    }
}

TEMPLATE_TEST_CASE("golden: cross-attention block", "[golden][nn][transformer]", float, double) {
    using K = ops::unary_kind;
    SECTION("pre-LN, gelu, context width 6") {
        check_cross_block<TestType>("cross_block_pre_gelu", 6,
                                    {.activation = K::gelu_erf, .norm_first = true});
    }
    SECTION("post-LN, relu, context width E (packed), key padding") {
        check_cross_block<TestType>("cross_block_post_relu_key_padding", 8,
                                    {.activation = K::relu, .norm_first = false});
    }
}
