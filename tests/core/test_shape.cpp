// dim, extents and shape<Dims...>: static/dynamic extents, compatibility, errors.
#include <catch2/catch.hpp>

#include <sstream>

#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/shape.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

// Compile-time facts: static dims take no storage, compatibility follows Eigen's rule.
static_assert(sizeof(shape<dim<3>, dim<4>>) == 1);
static_assert(std::is_empty_v<dim<512>>);
static_assert(compatible_dims<dim<dyn>, dim<512>>);
static_assert(compatible_dims<dim<512>, dim<512>>);
static_assert(!compatible_dims<dim<256>, dim<512>>);
static_assert(compatible_shapes<shape<dim<dyn>, dim<512>>, shape<dim<7>, dim<dyn>>>);
static_assert(!compatible_shapes<shape<dim<dyn>, dim<512>>, shape<dim<dyn>, dim<256>>>);
static_assert(!compatible_shapes<shape<dim<dyn>>, shape<dim<dyn>, dim<dyn>>>);
static_assert(shape<dim<dyn>, dim<3>>::static_extent<1> == 3);
static_assert(shape<dim<2>, dim<3>>::fully_static && !shape<dim<dyn>, dim<3>>::fully_static);
static_assert(shape<dim<2>, dim<3>>{}.to_extents().numel() == 6);

TEST_CASE("dim: static and dynamic values", "[core][shape]") {
    auto rng = mmfuse_test::make_rng();
    const index_t n = index_t(rng() % 1000);
    dim<dyn> d = n;
    REQUIRE(d.value() == n);
    dim<dyn> from_static = dim<768>{};
    REQUIRE(from_static.value() == 768);
    REQUIRE(dim<768>{}.value() == 768);
    REQUIRE_NOTHROW(dim<5>{5});
    REQUIRE_THROWS_AS(dim<5>{n + 6}, shape_error);
    REQUIRE_THROWS_AS(dim<dyn>{-1 - n}, shape_error);
    REQUIRE_NOTHROW(check_dim(dim<dyn>{n}, n, "m", "x"));
    REQUIRE_THROWS_WITH(check_dim(dim<4>{}, 7, "text.proj", "input features"),
                        Catch::Contains("text.proj") && Catch::Contains("expected extent 4") &&
                            Catch::Contains("got extent 7"));
}

TEST_CASE("extents: rank, numel, negative axes, edits", "[core][shape]") {
    auto rng = mmfuse_test::make_rng(1);
    const index_t a = 1 + index_t(rng() % 9), b = 1 + index_t(rng() % 9),
                  c = 1 + index_t(rng() % 9);
    extents e{a, b, c};
    REQUIRE(e.rank() == 3);
    REQUIRE(e.numel() == a * b * c);
    REQUIRE(e[-1] == c);
    REQUIRE(e[0] == a);
    REQUIRE(e.without_axis(1) == extents{a, c});
    REQUIRE(e.with_axis(-1, 7) == extents{a, b, 7});
    REQUIRE(extents{}.numel() == 1);
    REQUIRE(extents{}.rank() == 0);
    REQUIRE(extents{3, 0, 2}.numel() == 0);
    std::ostringstream expected;
    expected << '(' << a << ", " << b << ", " << c << ')';
    REQUIRE(e.to_string() == expected.str());
    REQUIRE(extents{}.to_string() == "()");
    REQUIRE_THROWS_AS(e[3], shape_error);
    REQUIRE_THROWS_AS(e[-4], shape_error);
    REQUIRE_THROWS_AS((extents{1, -2}), shape_error);
    REQUIRE_THROWS_AS((extents{1, 1, 1, 1, 1, 1, 1}), shape_error);  // rank 7 > max_rank
    REQUIRE_THROWS_WITH(e.set(0, -3), Catch::Contains("non-negative"));
}

TEST_CASE("extents: overflow detection for untrusted sizes", "[core][shape]") {
    REQUIRE_FALSE((extents{1 << 20, 1 << 20}).numel_overflows());
    REQUIRE((extents{index_t(1) << 32, index_t(1) << 32}).numel_overflows());
    REQUIRE_FALSE((extents{index_t(1) << 62, 0, index_t(1) << 62}).numel_overflows());
}

TEST_CASE("shape: values, patterns and checks", "[core][shape]") {
    using seq_shape = shape<dim<dyn>, dim<dyn>, dim<512>>;
    auto rng = mmfuse_test::make_rng(2);
    const index_t batch = 1 + index_t(rng() % 64), tokens = 1 + index_t(rng() % 77);
    seq_shape s{batch, tokens, {}};
    REQUIRE(s.extent<0>() == batch);
    REQUIRE(s.extent<2>() == 512);
    REQUIRE(s.to_extents() == extents{batch, tokens, 512});
    REQUIRE(seq_shape::pattern() == "(?, ?, 512)");
    REQUIRE(seq_shape::matches_pattern(extents{batch, tokens, 512}));
    REQUIRE_FALSE(seq_shape::matches_pattern(extents{batch, tokens, 511}));
    REQUIRE_FALSE(seq_shape::matches_pattern(extents{batch, 512}));
    REQUIRE_THROWS_WITH(seq_shape::check_pattern(extents{batch, tokens, 768}, "image.0", "input"),
                        Catch::Contains("image.0") && Catch::Contains("(?, ?, 512)") &&
                            Catch::Contains(extents{batch, tokens, 768}.to_string()));
}
