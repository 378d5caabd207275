// Zero-copy interop with xtensor: views of containers, adaptors and strided views, and
// tensor_refs as non-owning xtensor adaptors (dynamic and static rank).

#include <catch2/catch.hpp>

#include <random>
#include <type_traits>
#include <vector>

#include "mmfuse/interop/xtensor.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

template <class E>
concept viewable = requires(E&& e) {
    interop::view(std::forward<E>(e));
};

template <class E>
void fill_random(E& e, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (auto& x : e)
        x = typename std::remove_cvref_t<E>::value_type(u(rng));
}

/// Row-major strides of `shape`, computed by hand.
std::vector<index_t> c_strides(const std::vector<index_t>& shape) {
    std::vector<index_t> s(shape.size());
    index_t step = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        s[i] = step;
        step *= shape[i];
    }
    return s;
}

}  // namespace

TEST_CASE("interop::view of xt::xtensor shares memory and strides", "[interop]") {
    auto rng = mmfuse_test::make_rng(11);
    std::uniform_int_distribution<std::size_t> ext(2, 6);
    const std::size_t d0 = ext(rng), d1 = ext(rng), d2 = ext(rng);
    xt::xtensor<float, 3> a = xt::zeros<float>({d0, d1, d2});
    fill_random(a, rng);
    tensor_ref<float> v = interop::view(a);
    REQUIRE(v.data() == a.data());
    REQUIRE(v.extents() == extents{index_t(d0), index_t(d1), index_t(d2)});
    const auto expect = c_strides({index_t(d0), index_t(d1), index_t(d2)});
    for (int i = 0; i < 3; ++i)
        REQUIRE(v.stride(i) == expect[std::size_t(i)]);
    for (std::size_t i = 0; i < d0; ++i)
        for (std::size_t j = 0; j < d1; ++j)
            for (std::size_t k = 0; k < d2; ++k)
                REQUIRE(&v(i, j, k) == &a(i, j, k));
    v(d0 - 1, 0, d2 - 1) = 8.5f;
    REQUIRE(a(d0 - 1, 0, d2 - 1) == 8.5f);
    a(0, d1 - 1, 0) = -3.0f;
    REQUIRE(v(0, d1 - 1, 0) == -3.0f);
}

TEST_CASE("interop::view of xarray, xtensor_fixed, adaptors and column-major", "[interop]") {
    auto rng = mmfuse_test::make_rng(12);
    SECTION("xarray of dynamic rank") {
        xt::xarray<double> a = xt::zeros<double>({2, 1, 3, 2});
        fill_random(a, rng);
        auto v = interop::view(a);
        static_assert(std::is_same_v<decltype(v), tensor_ref<double>>);
        REQUIRE(v.rank() == 4);
        REQUIRE(v.is_contiguous());  // xtensor gives the extent-1 axis stride 0: still dense
        for (std::size_t i = 0; i < 2; ++i)
            for (std::size_t k = 0; k < 3; ++k)
                for (std::size_t l = 0; l < 2; ++l)
                    REQUIRE(&v(i, 0, k, l) == &a(i, 0, k, l));
    }
    SECTION("xtensor_fixed") {
        xt::xtensor_fixed<float, xt::xshape<2, 3, 4>> f;
        fill_random(f, rng);
        auto v = interop::view(f);
        REQUIRE(v.extents() == extents{2, 3, 4});
        REQUIRE(v.stride(0) == 12);
        REQUIRE(v.stride(1) == 4);
        REQUIRE(v.stride(2) == 1);
        for (std::size_t i = 0; i < 2; ++i)
            for (std::size_t j = 0; j < 3; ++j)
                for (std::size_t k = 0; k < 4; ++k)
                    REQUIRE(v(i, j, k) == f(i, j, k));
    }
    SECTION("column-major container: its strides are honoured") {
        xt::xarray<float, xt::layout_type::column_major> a = xt::zeros<float>({3, 4, 2});
        fill_random(a, rng);
        auto v = interop::view(a);
        REQUIRE(v.stride(0) == 1);
        REQUIRE(v.stride(1) == 3);
        REQUIRE(v.stride(2) == 12);
        REQUIRE(!v.is_contiguous());
        for (std::size_t i = 0; i < 3; ++i)
            for (std::size_t j = 0; j < 4; ++j)
                for (std::size_t k = 0; k < 2; ++k)
                    REQUIRE(&v(i, j, k) == &a(i, j, k));
    }
    SECTION("adaptor of a std::vector") {
        std::vector<std::int32_t> buf(24);
        std::uniform_int_distribution<std::int32_t> u(-1000, 1000);
        for (auto& x : buf)
            x = u(rng);
        auto ad = xt::adapt(buf, std::vector<std::size_t>{4, 6});
        auto v = interop::view(ad);
        REQUIRE(v.data() == buf.data());
        REQUIRE(v.extents() == extents{4, 6});
        for (std::size_t i = 0; i < 4; ++i)
            for (std::size_t j = 0; j < 6; ++j)
                REQUIRE(v(i, j) == buf[i * 6 + j]);
    }
    SECTION("strided view with an offset") {
        xt::xtensor<double, 2> a = xt::zeros<double>({5, 6});
        fill_random(a, rng);
        auto sv = xt::strided_view(a, {xt::range(1, 4), xt::range(0, 6, 2)});
        auto v = interop::view(sv);
        REQUIRE(v.extents() == extents{3, 3});
        REQUIRE(v.stride(0) == 6);
        REQUIRE(v.stride(1) == 2);
        for (std::size_t i = 0; i < 3; ++i)
            for (std::size_t j = 0; j < 3; ++j)
                REQUIRE(&v(i, j) == &a(1 + i, 2 * j));
    }
    SECTION("const containers give read-only views") {
        xt::xtensor<float, 2> a = xt::ones<float>({2, 2});
        const auto& ca = a;
        static_assert(std::is_same_v<decltype(interop::view(ca)), tensor_ref<const float>>);
        REQUIRE(interop::view(ca).data() == a.data());
        static_assert(!viewable<xt::xarray<float>>);  // temporary owning container
        static_assert(!viewable<xt::xtensor<float, 2>>);
        static_assert(viewable<xt::xarray<float>&>);
    }
}

TEST_CASE("interop::view rejects xtensor ranks above max_rank and negative strides", "[interop]") {
    xt::xarray<float> a = xt::zeros<float>({1, 2, 1, 2, 1, 2, 1});
    REQUIRE_THROWS_AS(interop::view(a), shape_error);
    REQUIRE_THROWS_WITH(interop::view(a), Catch::Contains("rank <= 6") &&
                                              Catch::Contains("rank 7 (1, 2, 1, 2, 1, 2, 1)"));
    xt::xtensor<float, 1> b = xt::zeros<float>({4});
    auto rev = xt::strided_view(b, {xt::range(3, xt::placeholders::_, -1)});
    REQUIRE_THROWS_WITH(interop::view(rev),
                        Catch::Contains("non-negative strides") && Catch::Contains("stride -1"));
}

TEST_CASE("interop::as_xtensor adapts tensor_refs without ownership", "[interop]") {
    auto rng = mmfuse_test::make_rng(13);
    std::uniform_int_distribution<index_t> ext(1, 5);
    const index_t d0 = ext(rng), d1 = ext(rng), d2 = ext(rng);
    auto t = mmfuse_test::random_tensor<float>({d0, d1, d2}, rng);

    SECTION("dynamic rank") {
        auto a = interop::as_xtensor(t.ref());
        REQUIRE(a.dimension() == 3);
        REQUIRE(a.data() == t.data());
        REQUIRE(a.size() == std::size_t(t.numel()));
        for (index_t i = 0; i < d0; ++i)
            for (index_t j = 0; j < d1; ++j)
                for (index_t k = 0; k < d2; ++k)
                    REQUIRE(&a(i, j, k) == &t(i, j, k));
        a(d0 - 1, d1 - 1, d2 - 1) = 1.25f;
        REQUIRE(t(d0 - 1, d1 - 1, d2 - 1) == 1.25f);
        // An xtensor reduction over the adaptor equals a double loop over the tensor.
        const double s = xt::sum(a)();
        double ref = 0.0;
        for (index_t i = 0; i < t.numel(); ++i)
            ref += t[i];
        REQUIRE(s == Approx(ref).epsilon(1e-5));
    }
    SECTION("static rank, strided source") {
        auto tr = t.ref().transpose(0, 2);  // (d2, d1, d0)
        auto a = interop::as_xtensor<3>(tr);
        static_assert(decltype(a)::rank == 3);
        REQUIRE(a.shape()[0] == std::size_t(d2));
        for (index_t i = 0; i < d2; ++i)
            for (index_t j = 0; j < d1; ++j)
                for (index_t k = 0; k < d0; ++k)
                    REQUIRE(a(i, j, k) == t(k, j, i));
        a(0, 0, d0 - 1) = -9.0f;
        REQUIRE(t(d0 - 1, 0, 0) == -9.0f);
        // Back to a view: same memory, same strides.
        auto v = interop::view(a);
        REQUIRE(v.data() == tr.data());
        for (int i = 0; i < 3; ++i)
            if (v.extent(i) != 1) REQUIRE(v.stride(i) == tr.stride(i));
    }
    SECTION("const source, rank 0 and zero-size") {
        auto a = interop::as_xtensor(t.cref().select(0, 0));
        REQUIRE(a(0, 0) == t(0, 0, 0));
        float x = 4.0f;
        auto s = interop::as_xtensor<0>(tensor_ref<float>(&x, extents{}));
        REQUIRE(s() == 4.0f);
        auto z = interop::as_xtensor(t.ref().narrow(1, 0, 0));
        REQUIRE(z.size() == 0);
    }
    SECTION("wrong static rank and device views throw") {
        REQUIRE_THROWS_AS(interop::as_xtensor<2>(t.ref()), shape_error);
        REQUIRE_THROWS_WITH(interop::as_xtensor<2>(t.ref()),
                            Catch::Contains("rank 2") && Catch::Contains("rank 3"));
        tensor_ref<float> dev(t.data(), t.extents(), memory_space::device);
        REQUIRE_THROWS_WITH(interop::as_xtensor(dev), Catch::Contains("host"));
    }
}
