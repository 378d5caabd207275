// .npy load/save: round trips for every dtype and rank 0..4 (zero-size included), the exact
// bytes NumPy expects, files written by NumPy (tests/data/npy, made by
// tools/golden/make_npy_fixtures.py) and by xt::dump_npy, dtype conversion rules, and hostile
// files (truncated, lying or malformed headers, random corruption) that must all give
// io_error without reading out of bounds (run this under -DMMFUSE_SANITIZE=address,undefined).

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/interop/xtensor.hpp"
#include "mmfuse/io/npy.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;
namespace fs = std::filesystem;

namespace {

const fs::path fixture_dir = MMFUSE_NPY_FIXTURE_DIR;

/// A unique file name in the temp directory, removed on destruction.
struct temp_file {
    fs::path path;
    temp_file() {
        static std::random_device rd;
        path = fs::temp_directory_path() /
               ("mmfuse_test_npy_" + std::to_string(rd()) + "_" + std::to_string(rd()) + ".npy");
    }
    ~temp_file() {
        std::error_code ec;
        fs::remove(path, ec);
    }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
};

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE(in);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

/// `bytes` with non-printable characters escaped, for failure messages.
std::string printable(const std::string& bytes) {
    std::string r;
    for (const char c : bytes) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f) {
            r += c;
        } else {
            static const char* hex = "0123456789abcdef";
            r += "\\x";
            r += hex[u >> 4];
            r += hex[u & 15];
        }
    }
    return r;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    REQUIRE(out);
}

/// A raw .npy file: magic, version `major`.0, little-endian header length, header, data.
std::string make_npy(const std::string& header, const std::string& data, int major = 1) {
    std::string s = "\x93NUMPY";
    s += char(major);
    s += '\0';
    const std::size_t n = major == 1 ? 2 : 4;
    for (std::size_t i = 0; i < n; ++i)
        s += char((header.size() >> (8 * i)) & 0xff);
    return s + header + data;
}

std::string dict(const std::string& descr, const std::string& shape, bool fortran = false) {
    return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
           ", 'shape': " + shape + ", }";
}

/// Loading `p` as float throws io_error whose module() is the path.
void require_io_error(const fs::path& p) {
    bool threw = false;
    try {
        (void)io::npy_load<float>(p);
    } catch (const io_error& e) {
        threw = true;
        REQUIRE(e.module() == p.string());
    }
    REQUIRE(threw);
}

template <class T>
T random_value(std::mt19937_64& rng) {
    if constexpr (std::is_same_v<T, bool>) {
        return std::bernoulli_distribution(0.5)(rng);
    } else if constexpr (std::is_same_v<T, half>) {
        return half(float(std::uniform_real_distribution<double>(-100, 100)(rng)));
    } else if constexpr (std::is_floating_point_v<T>) {
        return T(std::uniform_real_distribution<double>(-1e3, 1e3)(rng));
    } else {
        return T(std::uniform_int_distribution<std::int64_t>(std::numeric_limits<T>::min(),
                                                             std::numeric_limits<T>::max())(rng));
    }
}

template <class T>
tensor<T> random_any(const extents& e, std::mt19937_64& rng) {
    tensor<T> t(e);
    for (index_t i = 0; i < t.numel(); ++i)
        t[i] = random_value<T>(rng);
    return t;
}

/// Bitwise equality of two elements (NaN-safe, bool-safe).
template <class T>
bool same_bits(const T& a, const T& b) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("npy_save then npy_load round-trips every dtype, rank 0..4, zero-size", "[io]",
                   float, double, std::int32_t, std::int64_t, std::uint8_t, bool, half) {
    auto rng = mmfuse_test::make_rng(21);
    std::uniform_int_distribution<int> rank_d(0, 4);
    std::uniform_int_distribution<index_t> ext_d(0, 5);
    temp_file f;
    for (int iter = 0; iter < 25; ++iter) {
        const int rank = iter < 5 ? iter : rank_d(rng);
        std::vector<index_t> ext(static_cast<std::size_t>(rank));
        for (auto& x : ext)
            x = ext_d(rng);
        const extents e = extents::from(ext);
        const tensor<TestType> t = random_any<TestType>(e, rng);
        io::npy_save(f.path, t);
        const tensor<TestType> r = io::npy_load<TestType>(f.path);
        REQUIRE(r.extents() == e);
        for (index_t i = 0; i < e.numel(); ++i)
            REQUIRE(same_bits(r[i], t[i]));
        // Header padded to 64 bytes as NumPy does, data follows immediately.
        const auto size = fs::file_size(f.path);
        REQUIRE((size - std::uintmax_t(e.numel()) * sizeof(TestType)) % 64 == 0);
        const io::npy_header h = io::npy_read_header(f.path);
        REQUIRE(h.shape == e);
        REQUIRE(h.type == dtype_of<TestType>);
        REQUIRE(!h.fortran_order);
    }
}

TEMPLATE_TEST_CASE("npy_save writes strided views in C order", "[io]", float, std::int64_t, bool) {
    auto rng = mmfuse_test::make_rng(22);
    std::uniform_int_distribution<index_t> ext_d(1, 5);
    const index_t a = ext_d(rng), b = ext_d(rng), c = ext_d(rng);
    const tensor<TestType> t = random_any<TestType>({a, b, c}, rng);
    const auto v = t.cref().transpose(0, 2).narrow(1, 0, b > 1 ? b - 1 : 1);  // (c, b', a)
    temp_file f;
    io::npy_save(f.path, v);
    const tensor<TestType> r = io::npy_load<TestType>(f.path);
    REQUIRE(r.extents() == v.extents());
    for (index_t i = 0; i < v.extent(0); ++i)
        for (index_t j = 0; j < v.extent(1); ++j)
            for (index_t k = 0; k < v.extent(2); ++k)
                REQUIRE(same_bits(r(i, j, k), t(k, j, i)));
}

TEST_CASE("npy_save writes the exact header NumPy writes", "[io]") {
    auto rng = mmfuse_test::make_rng(23);
    temp_file f;
    auto check = [&](const tensor<float>& t, const std::string& shape_text) {
        io::npy_save(f.path, t);
        const std::string bytes = read_bytes(f.path);
        const std::string text = dict("<f4", shape_text);
        // numpy.lib.format._wrap_header: 1..64 spaces, then '\n', total a multiple of 64.
        const std::string header = text + std::string(64 - (10 + text.size() + 1) % 64, ' ') + "\n";
        std::string expected = make_npy(header, "");
        expected.append(reinterpret_cast<const char*>(t.data()), std::size_t(t.numel()) * 4);
        REQUIRE(bytes == expected);
    };
    check(mmfuse_test::random_tensor<float>({2, 3}, rng), "(2, 3)");
    check(mmfuse_test::random_tensor<float>({5}, rng), "(5,)");
    check(mmfuse_test::random_tensor<float>({}, rng), "()");
    check(mmfuse_test::random_tensor<float>({4, 0, 2}, rng), "(4, 0, 2)");
    // (A dict of 53 or 117 characters would fill the 64-byte block exactly and get 64
    // spaces; no shape NumPy accepts yields one for these 3-character dtypes.)
}

TEST_CASE("npy_save output is byte-identical to numpy.save for the NumPy fixtures",
          "[io][golden]") {
    temp_file f;
    auto resave = [&]<class T>(const char* name) {
        const fs::path p = fixture_dir / name;
        io::npy_save(f.path, io::npy_load<T>(p));
        INFO(name);
        REQUIRE(printable(read_bytes(f.path)) == printable(read_bytes(p)));
    };
    resave.operator()<float>("f4_c.npy");
    resave.operator()<double>("f8.npy");
    resave.operator()<half>("f2.npy");
    resave.operator()<std::int64_t>("i8.npy");
    resave.operator()<std::int32_t>("i4.npy");
    resave.operator()<std::uint8_t>("u1.npy");
    resave.operator()<bool>("b1.npy");
    resave.operator()<double>("scalar_f8.npy");
    resave.operator()<float>("empty_f4.npy");
}

TEST_CASE("npy_load reads files written by NumPy", "[io][golden]") {
    SECTION("f4, C order: k/2 - 2.75") {
        const auto t = io::npy_load<float>(fixture_dir / "f4_c.npy");
        REQUIRE(t.extents() == extents{3, 4});
        for (index_t k = 0; k < 12; ++k)
            REQUIRE(t[k] == float(double(k) / 2 - 2.75));
    }
    SECTION("f8: k/8 - 1.5") {
        const auto t = io::npy_load<double>(fixture_dir / "f8.npy");
        REQUIRE(t.extents() == extents{2, 3, 4});
        for (index_t k = 0; k < 24; ++k)
            REQUIRE(t[k] == double(k) / 8 - 1.5);
    }
    SECTION("f2: k/2 - 1") {
        const auto t = io::npy_load<half>(fixture_dir / "f2.npy");
        REQUIRE(t.extents() == extents{2, 3});
        for (index_t k = 0; k < 6; ++k)
            REQUIRE(float(t[k]) == float(k) / 2 - 1);
    }
    SECTION("i8, i4, u1") {
        const auto a = io::npy_load<std::int64_t>(fixture_dir / "i8.npy");
        const std::int64_t ea[] = {-(std::int64_t(1) << 40), -1, 0, 7, (std::int64_t(1) << 50) + 3};
        REQUIRE(a.extents() == extents{5});
        for (index_t k = 0; k < 5; ++k)
            REQUIRE(a[k] == ea[k]);
        const auto b = io::npy_load<std::int32_t>(fixture_dir / "i4.npy");
        REQUIRE(b.extents() == extents{2, 2});
        REQUIRE(b(0, 0) == -7);
        REQUIRE(b(0, 1) == 2147483647);
        REQUIRE(b(1, 0) == -2147483647 - 1);
        REQUIRE(b(1, 1) == 5);
        const auto c = io::npy_load<std::uint8_t>(fixture_dir / "u1.npy");
        REQUIRE(c.extents() == extents{4});
        REQUIRE((c[0] == 0 && c[1] == 1 && c[2] == 128 && c[3] == 255));
    }
    SECTION("bool: (i + j) even") {
        const auto t = io::npy_load<bool>(fixture_dir / "b1.npy");
        REQUIRE(t.extents() == extents{3, 3});
        for (index_t i = 0; i < 3; ++i)
            for (index_t j = 0; j < 3; ++j)
                REQUIRE(t(i, j) == ((i + j) % 2 == 0));
    }
    SECTION("rank 0 and zero-size") {
        const auto s = io::npy_load<double>(fixture_dir / "scalar_f8.npy");
        REQUIRE(s.rank() == 0);
        REQUIRE(s[0] == 3.5);
        const auto z = io::npy_load<float>(fixture_dir / "empty_f4.npy");
        REQUIRE(z.extents() == extents{0, 3});
    }
    SECTION("format versions 2.0 and 3.0") {
        REQUIRE(read_bytes(fixture_dir / "v2_f4.npy")[6] == 2);
        const auto a = io::npy_load<float>(fixture_dir / "v2_f4.npy");
        REQUIRE(a.extents() == extents{2, 3});
        for (index_t k = 0; k < 6; ++k)
            REQUIRE(a[k] == float(k) + 0.25f);
        REQUIRE(read_bytes(fixture_dir / "v3_i4.npy")[6] == 3);
        const auto b = io::npy_load<std::int32_t>(fixture_dir / "v3_i4.npy");
        REQUIRE(b.extents() == extents{3});
        REQUIRE((b[0] == 1 && b[1] == 2 && b[2] == 3));
    }
    SECTION("Fortran order is transposed into row-major") {
        REQUIRE(io::npy_read_header(fixture_dir / "fortran_f4.npy").fortran_order);
        const auto t = io::npy_load<float>(fixture_dir / "fortran_f4.npy");
        REQUIRE(t.extents() == extents{2, 3, 2});
        for (index_t i = 0; i < 2; ++i)
            for (index_t j = 0; j < 3; ++j)
                for (index_t k = 0; k < 2; ++k)
                    REQUIRE(t(i, j, k) == float(i * 6 + j * 2 + k));
    }
    SECTION("big-endian data is byte-swapped") {
        REQUIRE(io::npy_read_header(fixture_dir / "big_f4.npy").descr == ">f4");
        const auto t = io::npy_load<float>(fixture_dir / "big_f4.npy");
        REQUIRE(t.extents() == extents{2, 3});
        for (index_t k = 0; k < 6; ++k)
            REQUIRE(t[k] == float(1.5 * double(k) - 2.0));
        const auto b = io::npy_load<std::int64_t>(fixture_dir / "big_i8.npy");
        REQUIRE((b[0] == 1 && b[1] == -2 && b[2] == (std::int64_t(1) << 40)));
    }
    SECTION("npy_load_xtensor") {
        const xt::xarray<float> a = io::npy_load_xtensor<float>(fixture_dir / "fortran_f4.npy");
        REQUIRE(a.dimension() == 3);
        for (std::size_t i = 0; i < 2; ++i)
            for (std::size_t j = 0; j < 3; ++j)
                for (std::size_t k = 0; k < 2; ++k)
                    REQUIRE(a(i, j, k) == float(i * 6 + j * 2 + k));
        REQUIRE_THROWS_AS(io::npy_load_xtensor<double>(fixture_dir / "f4_c.npy"), io_error);
    }
}

TEMPLATE_TEST_CASE("npy files interoperate with xtensor's dump_npy / load_npy", "[io][interop]",
                   float, double, std::int32_t, std::int64_t, std::uint8_t) {
    auto rng = mmfuse_test::make_rng(24);
    std::uniform_int_distribution<std::size_t> ext_d(1, 5);
    const std::vector<std::size_t> shape{ext_d(rng), ext_d(rng), ext_d(rng)};
    xt::xarray<TestType> a(shape);
    for (auto& x : a)
        x = random_value<TestType>(rng);
    temp_file f;
    xt::dump_npy(f.path.string(), a);
    const tensor<TestType> t = io::npy_load<TestType>(f.path);
    REQUIRE(t.extents() == extents{index_t(shape[0]), index_t(shape[1]), index_t(shape[2])});
    for (index_t i = 0; i < t.numel(); ++i)
        REQUIRE(t[i] == a.data()[i]);

    // And the other way: our writer read back by xtensor's reader.
    const tensor<TestType> u = random_any<TestType>({3, 2}, rng);
    io::npy_save(f.path, u);
    const auto b = xt::load_npy<TestType>(f.path.string());
    REQUIRE(b.dimension() == 2);
    REQUIRE((b.shape()[0] == 3 && b.shape()[1] == 2));
    for (index_t i = 0; i < 6; ++i)
        REQUIRE(b.data()[i] == u[i]);
}

TEST_CASE("npy_load demands the exact dtype and npy_load_as converts documented pairs", "[io]") {
    const fs::path f8 = fixture_dir / "f8.npy";
    REQUIRE_THROWS_AS(io::npy_load<float>(f8), io_error);
    REQUIRE_THROWS_WITH(io::npy_load<float>(f8), Catch::Contains(f8.string()) &&
                                                     Catch::Contains("expected dtype f32") &&
                                                     Catch::Contains("found '<f8'"));
    try {
        (void)io::npy_load<std::int32_t>(f8);
        FAIL("no exception");
    } catch (const io_error& e) {
        REQUIRE(e.module() == f8.string());
    }

    const auto a = io::npy_load_as<float>(f8);
    REQUIRE(a.extents() == extents{2, 3, 4});
    for (index_t k = 0; k < 24; ++k)
        REQUIRE(a[k] == float(double(k) / 8 - 1.5));
    const auto b = io::npy_load_as<double>(fixture_dir / "i8.npy");
    REQUIRE(b[0] == -1099511627776.0);
    const auto c = io::npy_load_as<std::int64_t>(fixture_dir / "i4.npy");  // widening
    REQUIRE(c(1, 0) == -2147483648LL);
    const auto d = io::npy_load_as<std::int32_t>(fixture_dir / "b1.npy");
    REQUIRE((d(0, 0) == 1 && d(0, 1) == 0));
    const auto e = io::npy_load_as<bf16>(fixture_dir / "f4_c.npy");
    for (index_t k = 0; k < 12; ++k)
        REQUIRE(float(e[k]) == float(double(k) / 2 - 2.75));
    const auto h = io::npy_load_as<float>(fixture_dir / "f2.npy");
    for (index_t k = 0; k < 6; ++k)
        REQUIRE(h[k] == float(k) / 2 - 1);
    const auto same = io::npy_load_as<float>(fixture_dir / "fortran_f4.npy");
    REQUIRE(same(1, 2, 1) == 11.0f);

    REQUIRE_THROWS_WITH(io::npy_load_as<std::int32_t>(fixture_dir / "i8.npy"),
                        Catch::Contains("'<i8'") && Catch::Contains("i32"));
    REQUIRE_THROWS_AS(io::npy_load_as<std::int64_t>(fixture_dir / "f4_c.npy"), io_error);
    REQUIRE_THROWS_AS(io::npy_load_as<bool>(fixture_dir / "u1.npy"), io_error);
}

TEST_CASE("npy_load rejects truncated files at every length", "[io]") {
    auto rng = mmfuse_test::make_rng(25);
    temp_file src, f;
    io::npy_save(src.path, mmfuse_test::random_tensor<float>({3, 4}, rng));
    const std::string good = read_bytes(src.path);
    REQUIRE(good.size() == 128 + 48);
    for (std::size_t n = 0; n < good.size(); ++n) {
        write_bytes(f.path, good.substr(0, n));
        INFO("truncated to " << n << " bytes");
        require_io_error(f.path);
    }
    // Trailing garbage is a size mismatch too.
    write_bytes(f.path, good + "x");
    require_io_error(f.path);
    write_bytes(f.path, good);
    REQUIRE(io::npy_load<float>(f.path).extents() == extents{3, 4});
}

TEST_CASE("npy_load rejects lying, huge and malformed headers", "[io]") {
    const std::string data(48, '\0');  // what a (3, 4) '<f4' array needs
    temp_file f;
    auto load = [&](const std::string& bytes) {
        write_bytes(f.path, bytes);
        return io::npy_load<float>(f.path);
    };
    auto bad = [&](const std::string& bytes, const std::string& message) {
        INFO("file: " << printable(bytes));
        write_bytes(f.path, bytes);
        require_io_error(f.path);
        REQUIRE_THROWS_WITH(io::npy_load<float>(f.path), Catch::Contains(message));
    };

    SECTION("positive controls: the harness builds valid files") {
        REQUIRE(load(make_npy(dict("<f4", "(3, 4)"), data)).extents() == extents{3, 4});
        REQUIRE(load(make_npy(dict("<f4", "(3, 4)"), data, 2)).extents() == extents{3, 4});
        REQUIRE(load(make_npy(dict("<f4", "(3L, 4L)"), data)).extents() == extents{3, 4});
        REQUIRE(load(make_npy(dict("<f4", "(12,)"), data)).extents() == extents{12});
        REQUIRE(load(make_npy(dict("<f4", "(3, 4, 1)"), data)).extents() == extents{3, 4, 1});
        REQUIRE(load(make_npy(dict("<f4", "(0, 1000000000000)"), "")).extents() ==
                extents{0, 1000000000000});
        REQUIRE(
            load(make_npy("{\"shape\":(3,4),\"descr\":\"<f4\",\"fortran_order\":False}   \n", data))
                .extents() == extents{3, 4});
    }
    SECTION("shape product does not match the data") {
        bad(make_npy(dict("<f4", "(4, 4)"), data), "needs 64 data bytes, the file has 48");
        bad(make_npy(dict("<f4", "(2, 4)"), data), "size mismatch");
        bad(make_npy(dict("<f4", "()"), data), "size mismatch");
        bad(make_npy(dict("<f4", "(12, 0)"), data), "size mismatch");
        bad(make_npy(dict("<f8", "(3, 4)"), data), "size mismatch");
        bad(make_npy(dict("<f4", "(2305843009213693952,)"), data), "size mismatch");
    }
    SECTION("huge shapes overflow") {
        bad(make_npy(dict("<f4", "(4611686018427387904, 4611686018427387904)"), data), "overflows");
        bad(make_npy(dict("<f4", "(3037000500, 3037000500)"), data), "overflows");
        bad(make_npy(dict("<f4", "(9223372036854775807,)"), data), "overflows");
        // Zero-size, but the other extents' product overflows: rejected like NumPy does.
        bad(make_npy(dict("<f4", "(0, 4611686018427387904, 4611686018427387904)"), ""),
            "overflows");
        bad(make_npy(dict("<f4", "(4611686018427387904, 4611686018427387904, 0)"), ""),
            "overflows");
        bad(make_npy(dict("<f4", "(99999999999999999999,)"), data), "64 bits");
        bad(make_npy(dict("<f4", "(1, 1, 1, 1, 1, 1, 12)"), data), "more than 6 dimensions");
    }
    SECTION("negative dimensions") {
        bad(make_npy(dict("<f4", "(-3, -4)"), data), "negative dimension");
        bad(make_npy(dict("<f4", "(3, -4)"), data), "negative dimension");
    }
    SECTION("malformed dicts") {
        const std::string ok = dict("<f4", "(3, 4)");
        bad(make_npy(ok.substr(0, ok.size() - 1), data), "expected a quoted string");
        bad(make_npy("{'descr': '<f4' 'fortran_order': False, 'shape': (3, 4)}", data),
            "expected ',' or '}'");
        bad(make_npy("", data), "expected '{'");
        bad(make_npy("{", data), "expected a quoted string");
        bad(make_npy("{}", data), "missing key 'descr'");
        bad(make_npy("{'descr': '<f4', 'fortran_order': False}", data), "missing key 'shape'");
        bad(make_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)}",
                     data),
            "duplicate key 'descr'");
        bad(make_npy("{'descr': '<f4', 'foo': 1, 'fortran_order': False, 'shape': (3, 4)}", data),
            "unexpected key 'foo'");
        bad(make_npy(dict("<f4", "[3, 4]"), data), "expected '('");
        bad(make_npy(dict("<f4", "(3 4)"), data), "expected ',' or ')'");
        bad(make_npy(dict("<f4", "(,)"), data), "expected a dimension");
        bad(make_npy(dict("<f4", "(3,,4)"), data), "expected a dimension");
        bad(make_npy(dict("<f4", "((3, 4),)"), data), "expected a dimension");
        bad(make_npy(dict("<f4", "(12)"), data), "not a tuple");
        bad(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4", data),
            "expected ',' or ')'");
        bad(make_npy(dict("<f4", "(3, 4"), data), "expected a dimension");
        bad(make_npy("{'descr': '<f4, 'fortran_order': False, 'shape': (3, 4)}", data),
            "unsupported .npy dtype");
        bad(make_npy("{'descr' '<f4', 'fortran_order': False, 'shape': (3, 4)}", data),
            "expected ':'");
        bad(make_npy("{'descr': '<f4", data), "unterminated string");
        bad(make_npy("{'descr': 3, 'fortran_order': False, 'shape': (3, 4)}", data),
            "expected a quoted string");
        bad(make_npy("{'descr': '<f4', 'fortran_order': 1, 'shape': (3, 4)}", data),
            "expected True or False");
        bad(make_npy("{'descr': '<f4', 'fortran_order': Ture, 'shape': (3, 4)}", data),
            "expected True or False");
        bad(make_npy(ok + " x", data), "after the closing '}'");
        bad(make_npy(ok + std::string(1, '\0'), data), "after the closing '}'");
        bad(make_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,)}", data),
            "expected a quoted string");
    }
    SECTION("unsupported dtypes") {
        for (const char* d : {"<c8", "<U3", "O", "|f4", "<f4x", "", "<i2", "=q8", "*f4"})
            bad(make_npy(dict(d, "(3, 4)"), data), "unsupported .npy dtype");
        bad(make_npy(dict("<i4", "(3, 4)"), data), "expected dtype f32");  // valid, wrong T
    }
    SECTION("preamble: magic, version, header length") {
        const std::string ok = make_npy(dict("<f4", "(3, 4)"), data);
        std::string s = ok;
        s[1] = 'M';
        bad(s, "magic");
        const std::pair<int, int> versions[] = {{4, 0}, {1, 1}, {0, 0}, {255, 255}};
        for (const auto& [major, minor] : versions) {
            s = ok;
            s[6] = char(major);
            s[7] = char(minor);
            bad(s, "unsupported .npy format version");
        }
        s = ok;
        s[8] = '\xff';
        s[9] = '\xff';  // header length 65535, past the end of the file
        bad(s, "truncated");
        const std::string h = dict("<f4", "(3, 4)");
        std::string past = make_npy(h, data, 2);  // v2 length field: header + data + 1 bytes
        const std::size_t claimed = h.size() + data.size() + 1;
        for (std::size_t i = 0; i < 4; ++i)
            past[8 + i] = char((claimed >> (8 * i)) & 0xff);
        bad(past, "truncated");
        std::string v2 = make_npy(dict("<f4", "(3, 4)"), data, 2);
        v2[8] = v2[9] = v2[10] = v2[11] = '\xff';  // 4 GiB header claimed
        bad(v2, "exceeds the limit");
        bad(make_npy(std::string(70000, ' '), data, 2), "exceeds the limit");
        bad(std::string("\x93NUMPY\x01\x00\x00\x00", 10) + data, "expected '{'");  // length 0
    }
    SECTION("bool bytes must be 0 or 1") {
        std::string bytes(12, '\1');
        bytes[7] = '\2';
        write_bytes(f.path, make_npy(dict("|b1", "(3, 4)"), bytes));
        REQUIRE_THROWS_AS(io::npy_load<bool>(f.path), io_error);
        REQUIRE_THROWS_WITH(io::npy_load<bool>(f.path), Catch::Contains("bool byte 2"));
        bytes[7] = '\0';
        write_bytes(f.path, make_npy(dict("|b1", "(3, 4)"), bytes));
        REQUIRE(io::npy_load<bool>(f.path)(1, 3) == false);
    }
    SECTION("missing file and unwritable path") {
        const fs::path missing = fs::temp_directory_path() / "mmfuse_no_such_dir" / "x.npy";
        require_io_error(missing);
        REQUIRE_THROWS_WITH(io::npy_load<float>(missing), Catch::Contains("cannot open"));
        require_io_error(fs::temp_directory_path());
        REQUIRE_THROWS_WITH(io::npy_load<float>(fs::temp_directory_path()),
                            Catch::Contains("directory"));
        const tensor<float> t({2});
        REQUIRE_THROWS_AS(io::npy_save(missing, t), io_error);
        try {
            io::npy_save(missing, t);
        } catch (const io_error& e) {
            REQUIRE(e.module() == missing.string());
        }
    }
}

TEST_CASE("npy_load survives random corruption: a tensor or io_error, nothing else", "[io]") {
    auto rng = mmfuse_test::make_rng(26);
    temp_file src, f;
    io::npy_save(src.path, mmfuse_test::random_tensor<float>({3, 4}, rng));
    const std::string good = read_bytes(src.path);
    std::uniform_int_distribution<std::size_t> header_pos(0, 127), any_pos(0, good.size() - 1);
    std::uniform_int_distribution<int> byte(0, 255), count(1, 4);
    std::uniform_int_distribution<std::size_t> cut(0, good.size() + 8);
    int loaded = 0, rejected = 0;
    for (int iter = 0; iter < 400; ++iter) {
        std::string s = good;
        const int n = count(rng);
        for (int k = 0; k < n; ++k) {
            // Mostly the header (where the parser lives), sometimes anywhere.
            const std::size_t p = iter % 4 == 0 ? any_pos(rng) : header_pos(rng);
            s[p] = char(byte(rng));
        }
        if (iter % 5 == 0) s.resize(cut(rng), ' ');
        write_bytes(f.path, s);
        try {
            const tensor<float> t = io::npy_load<float>(f.path);
            // Whatever loaded must be exactly accounted for by the file.
            REQUIRE(std::uint64_t(t.extents().numel()) * 4 <= s.size());
            ++loaded;
        } catch (const io_error& e) {
            REQUIRE(e.module() == f.path.string());
            ++rejected;
        }
    }
    INFO("loaded " << loaded << ", rejected " << rejected);
    REQUIRE(rejected > 0);
}
