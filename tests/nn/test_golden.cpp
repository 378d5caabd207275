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
#include "support/golden.hpp"

using namespace mmfuse;

namespace {

using mmfuse_test::golden;

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
