// Zero-copy interop with Eigen: views share memory, strides follow storage order, blocks,
// maps with inner/outer strides, const propagation, static shapes, as_eigen maps.

#include <catch2/catch.hpp>

#include <Eigen/Core>

#include <random>
#include <type_traits>

#include "mmfuse/interop/eigen.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

/// A callable check that `interop::view(E)` is well formed (rvalues of owning types are not).
template <class E>
concept viewable = requires(E&& e) {
    interop::view(std::forward<E>(e));
};

template <class M>
void fill_random(M& m, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (Eigen::Index i = 0; i < m.rows(); ++i)
        for (Eigen::Index j = 0; j < m.cols(); ++j)
            m(i, j) = typename M::Scalar(u(rng));
}

/// Every element of rank-2 view `v` equals `m(i, j)` (same memory address, too).
template <class T, class M>
void require_same_elements(const tensor_ref<T>& v, const M& m) {
    REQUIRE(v.rank() == 2);
    REQUIRE(v.extent(0) == m.rows());
    REQUIRE(v.extent(1) == m.cols());
    for (Eigen::Index i = 0; i < m.rows(); ++i)
        for (Eigen::Index j = 0; j < m.cols(); ++j)
            REQUIRE(&v(i, j) == &m.coeffRef(i, j));
}

}  // namespace

TEST_CASE("interop::view of row- and column-major Eigen matrices shares memory", "[interop]") {
    auto rng = mmfuse_test::make_rng(1);
    std::uniform_int_distribution<int> ext(1, 9);
    const Eigen::Index rows = ext(rng), cols = ext(rng);

    SECTION("row-major") {
        Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(rows, cols);
        fill_random(m, rng);
        tensor_ref<float> v = interop::view(m);
        REQUIRE(v.data() == m.data());
        REQUIRE(v.stride(0) == cols);
        REQUIRE(v.stride(1) == 1);
        REQUIRE(v.is_contiguous());
        require_same_elements(v, m);
        v(rows - 1, cols - 1) = 42.0f;  // write through the view, read through Eigen
        REQUIRE(m(rows - 1, cols - 1) == 42.0f);
        m(0, 0) = -7.0f;  // and the other way round
        REQUIRE(v(0, 0) == -7.0f);
    }
    SECTION("column-major") {
        Eigen::MatrixXd m(rows, cols);
        fill_random(m, rng);
        tensor_ref<double> v = interop::view(m);
        REQUIRE(v.data() == m.data());
        REQUIRE(v.stride(0) == 1);
        REQUIRE(v.stride(1) == rows);
        require_same_elements(v, m);
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index j = 0; j < cols; ++j)
                REQUIRE(v(i, j) == m(i, j));
        v(rows - 1, 0) = 3.5;
        REQUIRE(m(rows - 1, 0) == 3.5);
    }
    SECTION("Array is viewed like Matrix") {
        Eigen::ArrayXXf a(rows, cols);
        fill_random(a, rng);
        const tensor_ref<float> v = interop::view(a);
        REQUIRE(v.stride(1) == rows);
        require_same_elements(v, a);
    }
}

TEST_CASE("interop::view of Eigen blocks, Maps and Refs keeps their strides", "[interop]") {
    auto rng = mmfuse_test::make_rng(2);
    SECTION("block of a column-major matrix") {
        Eigen::MatrixXf m(7, 9);
        fill_random(m, rng);
        const Eigen::MatrixXf before = m;
        auto v = interop::view(m.block(2, 3, 4, 5));
        static_assert(std::is_same_v<decltype(v), tensor_ref<float>>);
        REQUIRE(v.extents() == extents{4, 5});
        REQUIRE(v.stride(0) == 1);
        REQUIRE(v.stride(1) == 7);
        REQUIRE(!v.is_contiguous());
        for (index_t i = 0; i < 4; ++i)
            for (index_t j = 0; j < 5; ++j)
                REQUIRE(v(i, j) == m(2 + i, 3 + j));
        for (index_t i = 0; i < 4; ++i)
            for (index_t j = 0; j < 5; ++j)
                v(i, j) = float(100 + 10 * i + j);
        // Exactly the block changed, nothing around it.
        for (Eigen::Index i = 0; i < 7; ++i)
            for (Eigen::Index j = 0; j < 9; ++j) {
                const bool inside = i >= 2 && i < 6 && j >= 3 && j < 8;
                REQUIRE(m(i, j) == (inside ? float(100 + 10 * (i - 2) + (j - 3)) : before(i, j)));
            }
    }
    SECTION("block of a row-major matrix") {
        Eigen::Matrix<double, 6, 8, Eigen::RowMajor> m;
        fill_random(m, rng);
        auto v = interop::view(m.block<3, 4>(1, 2));
        REQUIRE(v.stride(0) == 8);
        REQUIRE(v.stride(1) == 1);
        REQUIRE(v.data() == &m(1, 2));
        for (index_t i = 0; i < 3; ++i)
            for (index_t j = 0; j < 4; ++j)
                REQUIRE(&v(i, j) == &m(1 + i, 2 + j));
    }
    SECTION("Map with inner and outer strides") {
        std::vector<float> buf(64);
        for (auto& x : buf)
            x = float(std::uniform_real_distribution<double>(-1, 1)(rng));
        // 3 x 4 row-major, every other column of rows 10 apart.
        Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                   Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>
            map(buf.data() + 1, 3, 4, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(10, 2));
        auto v = interop::view(map);
        REQUIRE(v.stride(0) == 10);
        REQUIRE(v.stride(1) == 2);
        for (index_t i = 0; i < 3; ++i)
            for (index_t j = 0; j < 4; ++j)
                REQUIRE(v(i, j) == buf[std::size_t(1 + 10 * i + 2 * j)]);
    }
    SECTION("Ref with an outer stride") {
        Eigen::MatrixXd m(5, 6);
        fill_random(m, rng);
        Eigen::Ref<Eigen::MatrixXd, 0, Eigen::OuterStride<>> r = m.middleCols(1, 3);
        auto v = interop::view(r);
        REQUIRE(v.extents() == extents{5, 3});
        REQUIRE(v.stride(0) == 1);
        REQUIRE(v.stride(1) == 5);
        require_same_elements(v, r);
    }
}

TEST_CASE("interop::view of const Eigen objects is read-only", "[interop]") {
    auto rng = mmfuse_test::make_rng(3);
    Eigen::MatrixXf m(3, 2);
    fill_random(m, rng);
    const Eigen::MatrixXf& cm = m;
    auto v = interop::view(cm);
    static_assert(std::is_same_v<decltype(v), tensor_ref<const float>>);
    static_assert(
        std::is_same_v<decltype(interop::view(cm.block(0, 0, 2, 2))), tensor_ref<const float>>);
    Eigen::Map<const Eigen::MatrixXf> cmap(m.data(), 3, 2);
    static_assert(std::is_same_v<decltype(interop::view(cmap)), tensor_ref<const float>>);
    Eigen::Ref<const Eigen::MatrixXf> cref = m;
    static_assert(std::is_same_v<decltype(interop::view(cref)), tensor_ref<const float>>);
    require_same_elements(v, m);
    // Views of temporaries that own their storage would dangle: refused at compile time.
    static_assert(!viewable<Eigen::MatrixXf>);
    static_assert(!viewable<Eigen::Vector3d>);
    static_assert(viewable<Eigen::MatrixXf&>);
    static_assert(viewable<const Eigen::MatrixXf&>);
    static_assert(viewable<decltype(m.block(0, 0, 1, 1))>);  // a temporary block is fine
}

TEST_CASE("interop::view of Eigen vectors is rank 1 with the element stride", "[interop]") {
    auto rng = mmfuse_test::make_rng(4);
    Eigen::MatrixXd m(4, 5);  // column-major
    fill_random(m, rng);

    Eigen::VectorXd vec = m.col(0);
    auto a = interop::view(vec);
    REQUIRE(a.rank() == 1);
    REQUIRE(a.extent(0) == 4);
    REQUIRE(a.stride(0) == 1);

    auto col = interop::view(m.col(3));  // contiguous in column-major storage
    REQUIRE(col.rank() == 1);
    REQUIRE(col.stride(0) == 1);
    auto row = interop::view(m.row(2));  // stride = rows in column-major storage
    REQUIRE(row.rank() == 1);
    REQUIRE(row.extent(0) == 5);
    REQUIRE(row.stride(0) == 4);
    for (index_t j = 0; j < 5; ++j)
        REQUIRE(&row(j) == &m(2, j));
    for (index_t i = 0; i < 4; ++i)
        REQUIRE(&col(i) == &m(i, 3));

    Eigen::RowVector3f rv(1.0f, 2.0f, 3.0f);
    auto r3 = interop::view(rv);
    REQUIRE(r3.rank() == 1);
    r3(2) = -1.0f;
    REQUIRE(rv(2) == -1.0f);

    std::vector<double> buf(12, 0.0);
    Eigen::Map<Eigen::VectorXd, 0, Eigen::InnerStride<3>> strided(buf.data(), 4);
    auto s = interop::view(strided);
    REQUIRE(s.stride(0) == 3);
    s(3) = 9.0;
    REQUIRE(buf[9] == 9.0);
}

TEST_CASE("interop::static_shape_of keeps Eigen's compile-time sizes", "[interop]") {
    using dyn768 = Eigen::Matrix<float, Eigen::Dynamic, 768, Eigen::RowMajor>;
    static_assert(std::is_same_v<interop::static_shape_of<dyn768>, shape<dim<dyn>, dim<768>>>);
    static_assert(std::is_same_v<interop::static_shape_of<Eigen::Matrix3d>, shape<dim<3>, dim<3>>>);
    static_assert(
        std::is_same_v<interop::static_shape_of<Eigen::MatrixXf>, shape<dim<dyn>, dim<dyn>>>);
    static_assert(std::is_same_v<interop::static_shape_of<Eigen::Vector4f>, shape<dim<4>>>);
    static_assert(std::is_same_v<interop::static_shape_of<Eigen::RowVectorXd>, shape<dim<dyn>>>);
    static_assert(std::is_same_v<interop::static_shape_of<const Eigen::Matrix<double, 2, 5>&>,
                                 shape<dim<2>, dim<5>>>);
    static_assert(compatible_shapes<interop::static_shape_of<dyn768>, shape<dim<64>, dim<768>>>);
    static_assert(!compatible_shapes<interop::static_shape_of<dyn768>, shape<dim<64>, dim<512>>>);

    auto rng = mmfuse_test::make_rng(5);
    const index_t rows = std::uniform_int_distribution<index_t>(1, 20)(rng);
    dyn768 m(rows, 768);
    const auto s = interop::shape_of(m);
    REQUIRE(s.to_extents() == extents{rows, 768});
    REQUIRE(s.to_extents() == interop::view(m).extents());
    REQUIRE(decltype(s)::pattern() == "(?, 768)");
    REQUIRE(decltype(s)::matches_pattern(interop::view(m).extents()));
}

TEST_CASE("interop::as_eigen maps tensor_refs without copying", "[interop]") {
    auto rng = mmfuse_test::make_rng(6);
    std::uniform_int_distribution<index_t> ext(1, 8);
    const index_t r = ext(rng), c = ext(rng);
    auto t = mmfuse_test::random_tensor<double>({r, c}, rng);

    SECTION("contiguous rank 2") {
        auto m = interop::as_eigen(t.ref());
        REQUIRE(m.data() == t.data());
        REQUIRE(m.rows() == r);
        REQUIRE(m.cols() == c);
        for (index_t i = 0; i < r; ++i)
            for (index_t j = 0; j < c; ++j)
                REQUIRE(&m(i, j) == &t(i, j));
        m(r - 1, c - 1) = 5.25;  // writes land in the tensor
        REQUIRE(t(r - 1, c - 1) == 5.25);
        // An Eigen computation through the map equals a double loop over the tensor.
        const double sum = m.sum();
        double ref = 0.0;
        for (index_t i = 0; i < t.numel(); ++i)
            ref += t[i];
        REQUIRE(sum == Approx(ref).epsilon(1e-12));
    }
    SECTION("strided (transposed) rank 2") {
        auto tr = t.ref().transpose(0, 1);
        auto m = interop::as_eigen(tr);
        REQUIRE(m.rows() == c);
        REQUIRE(m.cols() == r);
        for (index_t i = 0; i < c; ++i)
            for (index_t j = 0; j < r; ++j)
                REQUIRE(&m(i, j) == &t(j, i));
    }
    SECTION("column-major Eigen round trip keeps the memory and strides") {
        Eigen::MatrixXf e(r, c);
        fill_random(e, rng);
        auto m = interop::as_eigen(interop::view(e));
        REQUIRE(m.data() == e.data());
        REQUIRE(m.innerStride() == r);  // RowMajor map: inner = column step
        REQUIRE(m.outerStride() == 1);
        REQUIRE(m == e);
    }
    SECTION("const view gives a read-only map") {
        auto m = interop::as_eigen(t.cref());
        static_assert(std::is_same_v<decltype(m), interop::eigen_map<const double>>);
        static_assert(!bool(decltype(m)::Flags & Eigen::LvalueBit));
        REQUIRE(m(0, 0) == t(0, 0));
    }
    SECTION("rank 1 maps as a column, or as a vector") {
        auto row = t.ref().select(0, r - 1);  // (c), stride 1
        auto col = t.ref().select(1, c - 1);  // (r), stride c
        auto m = interop::as_eigen(col);
        REQUIRE(m.rows() == r);
        REQUIRE(m.cols() == 1);
        for (index_t i = 0; i < r; ++i)
            REQUIRE(&m(i, 0) == &t(i, c - 1));
        auto v = interop::as_eigen_vector(col);
        REQUIRE(v.innerStride() == c);
        for (index_t i = 0; i < r; ++i)
            REQUIRE(&v(i) == &t(i, c - 1));
        auto w = interop::as_eigen_vector(row);
        for (index_t j = 0; j < c; ++j)
            REQUIRE(&w(j) == &t(r - 1, j));
    }
    SECTION("fixed-size maps check the run-time extents") {
        auto f = mmfuse_test::random_tensor<float>({3, 4}, rng);
        auto m = interop::as_eigen<3, 4>(f.ref());
        static_assert(decltype(m)::RowsAtCompileTime == 3 && decltype(m)::ColsAtCompileTime == 4);
        for (index_t i = 0; i < 3; ++i)
            for (index_t j = 0; j < 4; ++j)
                REQUIRE(&m(i, j) == &f(i, j));
        auto half = interop::as_eigen<dyn, 4>(f.ref());
        static_assert(decltype(half)::RowsAtCompileTime == Eigen::Dynamic);
        REQUIRE(half.rows() == 3);
        auto colv = interop::as_eigen<3, 1>(f.ref().select(1, 2));  // fixed column vector
        for (index_t i = 0; i < 3; ++i)
            REQUIRE(&colv(i) == &f(i, 2));
        REQUIRE_THROWS_AS((interop::as_eigen<4, 4>(f.ref())), shape_error);
        REQUIRE_THROWS_WITH((interop::as_eigen<4, 4>(f.ref())),
                            Catch::Contains("(4, 4)") && Catch::Contains("(3, 4)"));
        REQUIRE_THROWS_WITH((interop::as_eigen<dyn, 5>(f.ref())),
                            Catch::Contains("(?, 5)") && Catch::Contains("(3, 4)"));
    }
}

TEST_CASE("interop::as_eigen rejects other ranks and device views", "[interop]") {
    auto rng = mmfuse_test::make_rng(7);
    auto t = mmfuse_test::random_tensor<float>({2, 3, 4}, rng);
    REQUIRE_THROWS_AS(interop::as_eigen(t.ref()), shape_error);
    REQUIRE_THROWS_WITH(interop::as_eigen(t.ref()),
                        Catch::Contains("rank 2") && Catch::Contains("rank 3 (2, 3, 4)"));
    REQUIRE_THROWS_WITH(interop::as_eigen_vector(t.ref().select(0, 1)),
                        Catch::Contains("rank 1") && Catch::Contains("rank 2 (3, 4)"));
    float x = 1.0f;
    REQUIRE_THROWS_WITH(interop::as_eigen(tensor_ref<float>(&x, extents{})),
                        Catch::Contains("rank 0"));
    tensor_ref<float> dev(t.data(), extents{2, 12}, memory_space::device);
    REQUIRE_THROWS_AS(interop::as_eigen(dev), shape_error);
    REQUIRE_THROWS_WITH(interop::as_eigen(dev), Catch::Contains("host"));
}
