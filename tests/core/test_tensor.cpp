// tensor_ref views (strides, select, narrow, transpose, reshape, expand), any_tensor_ref,
// and the owning aligned tensor. Every view is checked element by element against index
// arithmetic done independently here.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>

#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {
// A (a, b, c) tensor whose element (i, j, k) holds i*10000 + j*100 + k.
tensor<double> coded(index_t a, index_t b, index_t c) {
    tensor<double> t({a, b, c});
    for (index_t i = 0; i < a; ++i)
        for (index_t j = 0; j < b; ++j)
            for (index_t k = 0; k < c; ++k)
                t[(i * b + j) * c + k] = double(i * 10000 + j * 100 + k);
    return t;
}
double code(index_t i, index_t j, index_t k) {
    return double(i * 10000 + j * 100 + k);
}
}  // namespace

TEST_CASE("tensor: zero-initialised, 64-byte aligned, move-only, deep clone", "[core][tensor]") {
    auto rng = mmfuse_test::make_rng();
    const index_t n = 1 + index_t(rng() % 100), m = 1 + index_t(rng() % 100);
    tensor<float> t({n, m});
    REQUIRE(t.numel() == n * m);
    REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % host_alignment == 0);
    for (index_t i = 0; i < t.numel(); ++i)
        REQUIRE(t[i] == 0.0f);
    t(n - 1, m - 1) = 3.5f;
    REQUIRE(t[n * m - 1] == 3.5f);
    tensor<float> c = t.clone();
    c[0] = 1.0f;
    REQUIRE(t[0] == 0.0f);
    REQUIRE(c(n - 1, m - 1) == 3.5f);
    const float* p = t.data();
    tensor<float> moved = std::move(t);
    REQUIRE(moved.data() == p);
    static_assert(!std::is_copy_constructible_v<tensor<float>>);
    tensor<float> empty_extent({0, 5});
    REQUIRE(empty_extent.numel() == 0);
    REQUIRE_THROWS_AS(tensor<float>({index_t(1) << 40, index_t(1) << 40}), shape_error);
}

TEST_CASE("tensor_ref: contiguous view and element access", "[core][tensor]") {
    auto t = coded(3, 4, 5);
    tensor_ref<double> v = t;
    REQUIRE(v.is_contiguous());
    REQUIRE(v.stride(0) == 20);
    REQUIRE(v.stride(-1) == 1);
    REQUIRE(v(2, 3, 4) == code(2, 3, 4));
    const std::array<index_t, 3> idx{1, 2, 3};
    REQUIRE(v.at(idx) == code(1, 2, 3));
    const std::array<index_t, 3> bad{1, 4, 3};
    REQUIRE_THROWS_WITH(v.at(bad), Catch::Contains("index 4 at axis 1"));
    const std::array<index_t, 2> few{1, 2};
    REQUIRE_THROWS_AS(v.at(few), shape_error);
    tensor_ref<const double> cv = v;  // adds const
    REQUIRE(cv.data() == v.data());
    REQUIRE(cv.extents() == v.extents());
    REQUIRE(v.describe() == "f64 (3, 4, 5) strides (20, 5, 1)");
}

TEST_CASE("tensor_ref: select, narrow, transpose are views with the right strides",
          "[core][tensor]") {
    auto rng = mmfuse_test::make_rng(3);
    const index_t a = 2 + index_t(rng() % 4), b = 2 + index_t(rng() % 4),
                  c = 2 + index_t(rng() % 4);
    auto t = coded(a, b, c);
    tensor_ref<double> v = t;

    const index_t j0 = index_t(rng() % b);
    auto s = v.select(1, j0);  // (a, c)
    REQUIRE(s.extents() == extents{a, c});
    for (index_t i = 0; i < a; ++i)
        for (index_t k = 0; k < c; ++k)
            REQUIRE(s(i, k) == code(i, j0, k));

    auto n = v.narrow(2, 1, c - 1);  // (a, b, c-1)
    REQUIRE_FALSE(n.is_contiguous());
    for (index_t i = 0; i < a; ++i)
        for (index_t j = 0; j < b; ++j)
            for (index_t k = 0; k < c - 1; ++k)
                REQUIRE(n(i, j, k) == code(i, j, k + 1));

    auto tr = v.transpose(0, 2);  // (c, b, a)
    REQUIRE(tr.extents() == extents{c, b, a});
    for (index_t i = 0; i < a; ++i)
        for (index_t j = 0; j < b; ++j)
            for (index_t k = 0; k < c; ++k)
                REQUIRE(tr(k, j, i) == code(i, j, k));

    s(0, 0) = -1.0;  // writes go through to the owner
    REQUIRE(t(0, j0, 0) == -1.0);

    REQUIRE_THROWS_AS(v.select(0, a), shape_error);
    REQUIRE_THROWS_AS(v.narrow(1, 1, b), shape_error);
    REQUIRE_THROWS_AS(v.transpose(0, 3), shape_error);
}

TEST_CASE("tensor_ref: reshape, unsqueeze, expand", "[core][tensor]") {
    auto t = coded(2, 3, 4);
    tensor_ref<double> v = t;
    auto r = v.reshape({6, 4});
    REQUIRE(r(4, 3) == code(1, 1, 3));
    REQUIRE_THROWS_WITH(v.reshape({5, 5}),
                        Catch::Contains("24 elements") && Catch::Contains("(5, 5)"));
    REQUIRE_THROWS_WITH(v.transpose(0, 1).reshape({24}), Catch::Contains("contiguous"));

    auto u = v.select(0, 1).unsqueeze(1);  // (3, 1, 4)
    REQUIRE(u.extents() == extents{3, 1, 4});
    REQUIRE(u(2, 0, 3) == code(1, 2, 3));

    auto row = v.select(0, 0).select(0, 2);  // (4,) = code(0, 2, k)
    auto e = row.expand({5, 3, 4});          // broadcast over two new leading axes
    REQUIRE(e.stride(0) == 0);
    REQUIRE(e.stride(1) == 0);
    for (index_t i = 0; i < 5; ++i)
        for (index_t j = 0; j < 3; ++j)
            for (index_t k = 0; k < 4; ++k)
                REQUIRE(e(i, j, k) == code(0, 2, k));
    auto e2 = u.expand({3, 7, 4});  // stretch the extent-1 axis
    REQUIRE(e2(1, 6, 2) == code(1, 1, 2));
    REQUIRE_THROWS_AS(u.expand({3, 7, 5}), shape_error);
    REQUIRE_THROWS_AS(u.expand({4}), shape_error);
}

TEST_CASE("tensor_ref: explicit strides are validated", "[core][tensor]") {
    std::array<float, 12> buf{};
    const std::array<index_t, 2> st{1, 3};  // column-major 3x4
    tensor_ref<float> cm(buf.data(), {3, 4}, st);
    cm(2, 1) = 7.0f;
    REQUIRE(buf[2 + 3 * 1] == 7.0f);
    const std::array<index_t, 1> one{1};
    REQUIRE_THROWS_WITH((tensor_ref<float>(buf.data(), {3, 4}, one)),
                        Catch::Contains("expected 2 strides") && Catch::Contains("got 1 strides"));
    const std::array<index_t, 2> neg{-1, 1};
    REQUIRE_THROWS_AS((tensor_ref<float>(buf.data(), {3, 4}, neg)), shape_error);
}

TEST_CASE("any_tensor_ref: erases and restores dtype, shape and strides", "[core][tensor]") {
    auto t = coded(2, 3, 4);
    auto tr = tensor_ref<double>(t).transpose(1, 2);
    any_tensor_ref any = tr;
    REQUIRE(any.type() == dtype::f64);
    REQUIRE(any.extents() == tr.extents());
    auto back = any.as<double>();
    REQUIRE(back.data() == tr.data());
    REQUIRE(back(1, 3, 2) == code(1, 2, 3));
    REQUIRE_THROWS_WITH(any.as<float>(),
                        Catch::Contains("expected dtype f32") && Catch::Contains("got dtype f64"));
}

TEST_CASE("check_extents names module, expected and actual", "[core][tensor]") {
    tensor<float> t({2, 3});
    REQUIRE_NOTHROW(check_extents(t.cref(), extents{2, 3}, "m", "x"));
    REQUIRE_THROWS_WITH(check_extents(t.cref(), extents{2, 4}, "audio.enc", "input"),
                        Catch::Contains("audio.enc") && Catch::Contains("expected shape (2, 4)") &&
                            Catch::Contains("got shape (2, 3)"));
}
