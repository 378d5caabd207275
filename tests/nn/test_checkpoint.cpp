// Checkpoints: the safetensors reader/writer (every dtype, hostile files) and model-level
// io::save / io::load with PyTorch names (golden fixtures from
// tools/golden/make_checkpoint_fixtures.py).
#include <catch2/catch.hpp>

#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/io/checkpoint.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/io/safetensors.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "support/test_util.hpp"

using namespace mmfuse;

namespace {

const std::filesystem::path data_dir = std::filesystem::path(MMFUSE_TEST_DATA_DIR) / "checkpoints";

/// A fresh temporary directory, removed at the end of the test.
struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        // Unique across parallel ctest processes (which may share Catch's --rng-seed).
        std::random_device rd;
        const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
        path = std::filesystem::temp_directory_path() /
               ("mmfuse_ckpt_" + std::to_string(rd()) + "_" + std::to_string(t));
        std::filesystem::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

/// The mmfuse twin of PyTorch's nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)):
/// the children are named "0" and "2" as in the Sequential (the ReLU "1" has no parameters).
template <compute_type T>
struct seq_mlp {
    using value_type = T;
    nn::linear<4, 8, T> l0{};
    nn::linear<8, 3, T> l2{};
    std::string path_;

    template <class V>
    void visit(V& v) {
        v.path(path_);
        v.child("0", l0);
        v.child("2", l2);
    }
    void reset_parameters(philox_generator& g) {
        l0.reset_parameters(g);
        l2.reset_parameters(g);
    }
    tensor_ref<const T> forward(nn::step_context<T>& cx, tensor_ref<const T> x) {
        const tensor_ref<const T> h = l0.forward(cx, x);
        const tensor_ref<T> a = cx.allocate(h.extents());
        ops::unary<T>(cx.op(path_), ops::unary_kind::relu, h, a);
        return l2.forward(cx, a);
    }
};

/// Forward of `m` on `x` copied into an owning tensor (inference mode).
template <class Net>
tensor<typename Net::value_type> run(nn::model<Net>& m, const tensor<typename Net::value_type>& x) {
    using T = typename Net::value_type;
    growing_arena ws;
    nn::step_context<T> cx{&backend::default_stream(), &ws, false};
    const tensor_ref<const T> y = m.net().forward(cx, x.cref());
    tensor<T> out(y.extents());
    std::memcpy(out.data(), y.data(), std::size_t(y.numel()) * sizeof(T));
    return out;
}

/// y = relu(x W0^T + b0) W2^T + b2 in double, straight loops over the model's parameters.
template <class T>
std::vector<double> reference_mlp(nn::model<seq_mlp<T>>& m, const tensor<T>& x) {
    const auto w0 = m.find("0.weight")->value, b0 = m.find("0.bias")->value;
    const auto w2 = m.find("2.weight")->value, b2 = m.find("2.bias")->value;
    std::vector<double> y;
    for (index_t r = 0; r < x.extents()[0]; ++r) {
        double h[8];
        for (index_t o = 0; o < 8; ++o) {
            double acc = double(b0(o));
            for (index_t i = 0; i < 4; ++i)
                acc += double(x(r, i)) * double(w0(o, i));
            h[o] = acc > 0 ? acc : 0.0;
        }
        for (index_t o = 0; o < 3; ++o) {
            double acc = double(b2(o));
            for (index_t i = 0; i < 8; ++i)
                acc += h[i] * double(w2(o, i));
            y.push_back(acc);
        }
    }
    return y;
}

template <class T>
std::vector<T> values_of(tensor_ref<const T> t) {
    std::vector<T> v;
    for (index_t i = 0; i < t.numel(); ++i)
        v.push_back(t.data()[i]);
    return v;
}

template <class T>
bool same_bits(tensor_ref<const T> a, tensor_ref<const T> b) {
    return a.extents() == b.extents() &&
           std::memcmp(a.data(), b.data(), std::size_t(a.numel()) * sizeof(T)) == 0;
}

/// A file image: 8-byte length `n` (default: the header's size), the header, `data_bytes`
/// bytes of data.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes,
                             std::optional<std::uint64_t> n = std::nullopt) {
    std::vector<std::byte> b;
    const std::uint64_t len = n.value_or(header.size());
    for (int i = 0; i < 8; ++i)
        b.push_back(std::byte((len >> (8 * i)) & 0xff));
    for (const char c : header)
        b.push_back(std::byte(c));
    for (std::size_t i = 0; i < data_bytes; ++i)
        b.push_back(std::byte(i * 37 + 1));
    return b;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  std::uint64_t b, std::uint64_t e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}

void write_file(const std::filesystem::path& p, std::span<const std::byte> bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

/// Random tensor of any element type (bool: 0/1, integers: small values, floating: [-4, 4)).
template <class T>
tensor<T> random_any(const extents& e, std::mt19937_64& rng) {
    tensor<T> t(e);
    std::uniform_real_distribution<double> u(-4.0, 4.0);
    for (index_t i = 0; i < t.numel(); ++i) {
        if constexpr (std::is_same_v<T, bool>)
            t[i] = (rng() & 1) != 0;
        else if constexpr (std::is_integral_v<T>)
            t[i] = T(rng() % 251);
        else
            t[i] = mmfuse_test::from_double<T>(u(rng));
    }
    return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Low level: every dtype round trips bit for bit, header fields, metadata, strided views.

TEMPLATE_TEST_CASE("safetensors round trips every dtype bit for bit", "[io]", float, double, bf16,
                   half, std::int32_t, std::int64_t, std::uint8_t, bool) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(1);
    const tensor<T> a = random_any<T>({2 + index_t(rng() % 4), 3 + index_t(rng() % 3)}, rng);
    const tensor<T> scalar = random_any<T>({}, rng);
    const tensor<T> empty({0, 5});
    const tensor<T> big = random_any<T>({2, 3, 4}, rng);
    // A transposed (non-contiguous) view is written in C order of its own extents.
    const tensor_ref<const T> at = a.cref().transpose(0, 1);
    const std::vector<io::named_tensor> list{{"layer.a", a.cref()},
                                             {"scalar", scalar.cref()},
                                             {"empty", empty.cref()},
                                             {"x/ü \"q\" \\", big.cref()},
                                             {"a_t", at}};
    const io::safetensors_metadata meta{{"format", "pt"}, {"note", "line\nbreak \"quoted\" é"}};
    const std::vector<std::byte> bytes = io::serialize_safetensors(list, meta);
    REQUIRE(io::safetensors_file::parse(bytes).data_offset() % 8 == 0);  // header padded to 8

    temp_dir dir;
    io::save_safetensors(dir.path / "t.safetensors", list, meta);
    REQUIRE(std::filesystem::file_size(dir.path / "t.safetensors") == bytes.size());
    REQUIRE_FALSE(std::filesystem::exists(dir.path / "t.safetensors.tmp"));

    for (int source = 0; source < 2; ++source) {
        const io::safetensors_file f = source == 0
                                           ? io::safetensors_file::parse(bytes, "mem")
                                           : io::safetensors_file::open(dir.path / "t.safetensors");
        REQUIRE(f.entries().size() == 5);
        REQUIRE(f.metadata() == meta);
        const auto check = [&](const std::string& name, tensor_ref<const T> expect) {
            const io::safetensors_entry* e = f.find(name);
            REQUIRE(e != nullptr);
            REQUIRE(e->type == io::to_safetensors_dtype(dtype_of<T>));
            REQUIRE(e->shape == expect.extents());
            REQUIRE(e->end - e->begin == std::uint64_t(expect.numel()) * sizeof(T));
            REQUIRE(e->begin % sizeof(T) == 0);  // aligned to the item size
            const tensor<T> back = f.read<T>(name);
            REQUIRE(back.extents() == expect.extents());
            for (index_t i = 0; i < back.numel(); ++i) {
                // Element i of `expect` in C order, read through its strides.
                index_t off = 0, rest = i;
                for (int ax = expect.rank() - 1; ax >= 0; --ax) {
                    off += (rest % expect.extent(ax)) * expect.stride(ax);
                    rest /= expect.extent(ax);
                }
                REQUIRE(std::memcmp(&back[i], expect.data() + off, sizeof(T)) == 0);
            }
        };
        check("layer.a", a.cref());
        check("scalar", scalar.cref());
        check("empty", empty.cref());
        check("x/ü \"q\" \\", big.cref());
        check("a_t", at);
        REQUIRE(f.find("nope") == nullptr);
        REQUIRE_THROWS_AS(f.read<T>("nope"), io_error);
    }
}

TEST_CASE("safetensors lays mixed dtypes out aligned, largest item size first", "[io]") {
    auto rng = mmfuse_test::make_rng(2);
    const tensor<std::uint8_t> u = random_any<std::uint8_t>({3}, rng);
    const tensor<double> d = random_any<double>({5}, rng);
    const tensor<half> h = random_any<half>({3}, rng);
    const tensor<float> f = random_any<float>({1}, rng);
    const std::vector<io::named_tensor> list{
        {"u", u.cref()}, {"d", d.cref()}, {"h", h.cref()}, {"f", f.cref()}};
    const auto bytes = io::serialize_safetensors(list);
    const auto file = io::safetensors_file::parse(bytes);
    REQUIRE(file.data_offset() % 8 == 0);
    REQUIRE(file.entries()[0].name == "d");
    REQUIRE(file.entries()[1].name == "f");
    REQUIRE(file.entries()[2].name == "h");
    REQUIRE(file.entries()[3].name == "u");
    for (const auto& e : file.entries())
        REQUIRE(e.begin % io::safetensors_dtype_size(e.type) == 0);
    REQUIRE(file.metadata().empty());
}

TEST_CASE("safetensors read converts between floating dtypes and refuses others", "[io]") {
    auto rng = mmfuse_test::make_rng(3);
    const tensor<double> d = random_any<double>({4, 3}, rng);
    const tensor<float> f = random_any<float>({7}, rng);
    const tensor<std::int64_t> i = random_any<std::int64_t>({2}, rng);
    const std::vector<io::named_tensor> list{{"d", d.cref()}, {"f", f.cref()}, {"i", i.cref()}};
    const auto bytes = io::serialize_safetensors(list);
    const auto file = io::safetensors_file::parse(bytes, "conv");
    const tensor<float> df = file.read<float>("d");  // F64 -> f32: static_cast, nearest
    for (index_t k = 0; k < d.numel(); ++k)
        REQUIRE(df[k] == static_cast<float>(d[k]));
    const tensor<double> fd = file.read<double>("f");  // exact widening
    for (index_t k = 0; k < f.numel(); ++k)
        REQUIRE(fd[k] == double(f[k]));
    const tensor<bf16> fb = file.read<bf16>("f");  // f32 -> bf16: RNE as bf16(float)
    for (index_t k = 0; k < f.numel(); ++k)
        REQUIRE(fb[k].bits == bf16(f[k]).bits);
    const tensor<half> fh = file.read<half>("f");
    for (index_t k = 0; k < f.numel(); ++k)
        REQUIRE(fh[k].bits == half(f[k]).bits);
    REQUIRE_THROWS_AS(file.read<float>("i"), io_error);
    REQUIRE_THROWS_WITH(file.read<float>("i"), Catch::Contains("'i' is I64") &&
                                                   Catch::Contains("f32") &&
                                                   Catch::Contains("conv"));
    REQUIRE_THROWS_AS(file.read<std::int32_t>("f"), io_error);
    // read_into checks the destination's shape.
    tensor<float> wrong({3, 4});
    REQUIRE_THROWS_AS(file.read_into(*file.find("d"), wrong.ref()), shape_error);
    REQUIRE_THROWS_WITH(file.read_into(*file.find("d"), wrong.ref()),
                        Catch::Contains("(4, 3)") && Catch::Contains("(3, 4)"));
}

TEST_CASE("safetensors writer refuses bad names and views", "[io]") {
    const tensor<float> a({2});
    const auto save = [&](std::vector<io::named_tensor> list) {
        return io::serialize_safetensors(list, {}, "w.safetensors");
    };
    REQUIRE_THROWS_WITH(save({{"a", a.cref()}, {"a", a.cref()}}),
                        Catch::Contains("two tensors called 'a'"));
    REQUIRE_THROWS_WITH(save({{"__metadata__", a.cref()}}), Catch::Contains("reserved"));
    REQUIRE_THROWS_WITH(save({{std::string("bad\xff"), a.cref()}}), Catch::Contains("UTF-8"));
    REQUIRE_THROWS_AS(save({{"n", tensor_ref<const float>(nullptr, extents{3})}}), io_error);
    temp_dir dir;
    const std::vector<io::named_tensor> ok{{"a", a.cref()}};
    REQUIRE_THROWS_AS(io::save_safetensors(dir.path / "no" / "such" / "dir.st", ok), io_error);
    REQUIRE_THROWS_AS(io::safetensors_file::open(dir.path / "missing.safetensors"), io_error);
    REQUIRE_THROWS_AS(io::safetensors_file::open(dir.path), io_error);
}

// ---------------------------------------------------------------------------------------------
// Hostile files: every one throws io_error naming the file, never reads out of bounds.

TEST_CASE("safetensors rejects hostile files with io_error", "[io]") {
    const std::string ok1 = entry("a", "F32", "[2]", 0, 8);
    struct hostile {
        const char* what;
        std::vector<std::byte> bytes;
        const char* message;
    };
    std::string bad_utf8 = "{" + entry("a\xff", "F32", "[2]", 0, 8) + "}";
    std::string overlong = "{" + entry("a\xc0\xaf", "F32", "[2]", 0, 8) + "}";
    std::string surrogate_raw = "{" + entry("a\xed\xa0\x80", "F32", "[2]", 0, 8) + "}";
    std::vector<hostile> cases{
        {"empty file", {}, "shorter than the 8-byte"},
        {"7 bytes", std::vector<std::byte>(7, std::byte{0}), "shorter than the 8-byte"},
        {"header length past the end", image("{" + ok1 + "}", 8, 1000), "claims 1000 bytes"},
        {"header length 2^64-1", image("{}", 0, ~0ull), "exceeds the limit"},
        {"header length above the 100 MB cap", image("{}", 0, 100'000'001), "exceeds the limit"},
        {"header not starting with '{'", image("[]", 0), "must start with '{'"},
        {"leading whitespace", image(" {}", 0), "must start with '{'"},
        {"truncated JSON", image("{\"a\":{\"dtype\":\"F32\"", 0), "expected"},
        {"dtype is a number", image("{\"a\":{\"dtype\":3,\"shape\":[],\"data_offsets\":[0,4]}}", 4),
         "expected '\"'"},
        {"negative dimension", image("{" + entry("a", "F32", "[-2]", 0, 8) + "}", 8), "negative"},
        {"fractional dimension", image("{" + entry("a", "F32", "[2.0]", 0, 8) + "}", 8),
         "expected an integer"},
        {"exponent offset",
         image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8e0]}}", 8),
         "expected an integer"},
        {"leading zero",
         image("{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8),
         "leading zero"},
        {"three data_offsets",
         image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8),
         "more than 2 values"},
        {"one data_offset",
         image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8), "two values"},
        {"begin > end", image("{" + entry("a", "F32", "[0]", 8, 0) + "}", 8), "begin > end"},
        {"offsets past the end", image("{" + entry("a", "F32", "[4]", 0, 16) + "}", 8),
         "past its end"},
        {"size != numel * itemsize", image("{" + entry("a", "F32", "[3]", 0, 8) + "}", 8),
         "needs 12 bytes"},
        {"overlapping ranges",
         image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}",
               12),
         "overlap"},
        {"hole between tensors",
         image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 12, 16) + "}",
               16),
         "hole of 4 bytes"},
        {"hole at the start", image("{" + entry("a", "F32", "[1]", 4, 8) + "}", 8), "at its start"},
        {"trailing bytes", image("{" + ok1 + "}", 12), "trailing bytes"},
        {"duplicate tensor names",
         image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}",
               8),
         "duplicate tensor name 'a'"},
        {"duplicate field",
         image("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8),
         "duplicate key 'dtype'"},
        {"unknown dtype", image("{" + entry("a", "F128", "[2]", 0, 8) + "}", 8),
         "unsupported dtype"},
        {"invalid UTF-8 byte", image(bad_utf8, 8), "not valid UTF-8"},
        {"overlong UTF-8", image(overlong, 8), "not valid UTF-8"},
        {"raw surrogate in UTF-8", image(surrogate_raw, 8), "not valid UTF-8"},
        {"lone surrogate escape", image("{" + entry("a\\ud800", "F32", "[2]", 0, 8) + "}", 8),
         "surrogate"},
        {"unknown key in an entry",
         image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8),
         "unexpected key"},
        {"missing data_offsets", image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8),
         "has no 'data_offsets'"},
        {"entry not an object", image("{\"a\":[1,2]}", 0), "expected '{'"},
        {"metadata value not a string", image("{\"__metadata__\":{\"k\":1}}", 0),
         "must be strings"},
        {"duplicate __metadata__", image("{\"__metadata__\":{},\"__metadata__\":{}}", 0),
         "duplicate key '__metadata__'"},
        {"text after the closing brace", image("{}x", 0), "after the closing"},
        {"NUL padding", image(std::string("{}\0\0", 4), 0), "after the closing"},
        {"rank 7", image("{" + entry("a", "U8", "[1,1,1,1,1,1,1]", 0, 1) + "}", 1),
         "more than 6 values"},
        {"element count overflow",
         image("{" + entry("a", "F32", "[4611686018427387904,4]", 0, 8) + "}", 8), "overflows"},
        {"byte count overflow",
         image("{" + entry("a", "F64", "[4611686018427387904]", 0, 8) + "}", 8), "overflows"},
        {"offset above 2^64",
         image(
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[18446744073709551616,8]}}",
             8),
         "too large"},
        {"control character in a name", image("{" + entry("a\n", "F32", "[2]", 0, 8) + "}", 8),
         "control character"},
        {"unterminated string", image("{\"abc", 0), "unterminated"},
        {"bad escape", image("{" + entry("a\\q", "F32", "[2]", 0, 8) + "}", 8), "unknown escape"},
        {"header shorter than its JSON", image("{" + ok1 + "}", 8, 20), "expected"},
    };
    REQUIRE(cases.size() >= 20);
    temp_dir dir;
    int index = 0;
    for (const hostile& h : cases) {
        INFO(h.what);
        try {
            (void)io::safetensors_file::parse(h.bytes, "hostile.safetensors");
            FAIL("no exception for: " << h.what);
        } catch (const io_error& e) {
            REQUIRE(e.module() == "hostile.safetensors");
            REQUIRE_THAT(e.what(), Catch::Contains(h.message));
        }
        // The same bytes as a file: same error, module() is the path.
        const auto p = dir.path / ("h" + std::to_string(index++) + ".safetensors");
        write_file(p, h.bytes);
        try {
            (void)io::safetensors_file::open(p);
            FAIL("no exception for file: " << h.what);
        } catch (const io_error& e) {
            REQUIRE(e.module() == p.string());
            REQUIRE_THAT(e.what(), Catch::Contains(h.message));
        }
    }
    // Controls: a well-formed file with escapes, whitespace, padding and an empty tensor parses.
    const auto good = image("{ \"__metadata__\" : { \"k\" : \"v\\u00e9\\ud83d\\ude00\" } , " +
                                entry("a\\u0041\\n", "F32", "[2]", 0, 8) + ",\n\t" +
                                entry("z", "F16", "[0, 3]", 8, 8) + " }    ",
                            8);
    const auto f = io::safetensors_file::parse(good, "good");
    REQUIRE(f.metadata().at("k") == "v\xc3\xa9\xf0\x9f\x98\x80");
    REQUIRE(f.find("aA\n") != nullptr);
    REQUIRE(f.find("z")->shape == extents{0, 3});
    // A BOOL tensor whose bytes are not 0/1 parses but cannot be read.
    auto b = image("{" + entry("m", "BOOL", "[3]", 0, 3) + "}", 3);
    b.back() = std::byte{2};
    const auto fb = io::safetensors_file::parse(b, "bool");
    REQUIRE_THROWS_WITH(fb.read<bool>("m"), Catch::Contains("corrupt BOOL"));
}

// ---------------------------------------------------------------------------------------------
// Golden fixtures from PyTorch.

TEST_CASE("safetensors reads PyTorch's dtypes exactly as PyTorch converts them", "[io][golden]") {
    const auto f = io::safetensors_file::open(data_dir / "dtypes.safetensors");
    const tensor<double> values = io::npy_load<double>(data_dir / "dtypes_values.npy");
    REQUIRE(values.extents() == extents{8, 2, 3});
    const auto check = [&]<class T>(const std::string& name, int row, io::safetensors_dtype st) {
        INFO(name);
        REQUIRE(f.find(name)->type == st);
        const tensor<T> t = f.read<T>(name);
        REQUIRE(t.extents() == extents{2, 3});
        for (index_t k = 0; k < 6; ++k)
            REQUIRE(double(t[k]) == values[row * 6 + k]);
    };
    check.operator()<float>("f32", 0, io::safetensors_dtype::f32);
    check.operator()<double>("f64", 1, io::safetensors_dtype::f64);
    check.operator()<half>("f16", 2, io::safetensors_dtype::f16);
    check.operator()<bf16>("bf16", 3, io::safetensors_dtype::bf16);
    check.operator()<std::int32_t>("i32", 4, io::safetensors_dtype::i32);
    check.operator()<std::int64_t>("i64", 5, io::safetensors_dtype::i64);
    check.operator()<std::uint8_t>("u8", 6, io::safetensors_dtype::u8);
    check.operator()<bool>("bool", 7, io::safetensors_dtype::boolean);
    // F16 and BF16 widen to double exactly as PyTorch's .double() does.
    const tensor<double> h = f.read<double>("f16");
    const tensor<double> bb = f.read<double>("bf16");
    for (index_t k = 0; k < 6; ++k) {
        REQUIRE(h[k] == values[2 * 6 + k]);
        REQUIRE(bb[k] == values[3 * 6 + k]);
    }
}

// Loads the PyTorch fixture into `m`, runs it on the fixture's input and requires PyTorch's
// output within 1e-5 relative; returns the input and mmfuse's output.
template <class Net>
std::pair<tensor<float>, tensor<float>> expect_pytorch_output(nn::model<Net>& m) {
    io::load(m, data_dir / "seq_mlp.safetensors");
    tensor<float> x = io::npy_load<float>(data_dir / "seq_mlp_input.npy");
    const tensor<float> expect = io::npy_load<float>(data_dir / "seq_mlp_output.npy");
    tensor<float> y = run(m, x);
    REQUIRE(y.extents() == expect.extents());
    REQUIRE(mmfuse_test::max_rel_error(
                std::span<const float>(y.data(), std::size_t(y.numel())),
                std::span<const float>(expect.data(), std::size_t(expect.numel()))) <= 1e-5);
    return {std::move(x), std::move(y)};
}

TEST_CASE("a PyTorch nn.Sequential checkpoint loads and reproduces PyTorch's output",
          "[io][golden]") {
    nn::model<seq_mlp<float>> m(seq_mlp<float>{}, 7);
    REQUIRE(m.parameter_index().size() == 4);
    REQUIRE(m.parameter_index()[0].name == "0.weight");
    REQUIRE(m.parameter_index()[3].name == "2.bias");
    const auto [x, y] = expect_pytorch_output(m);
    // The double-loop reference over the loaded parameters agrees too (the test can fail).
    const std::vector<double> ref = reference_mlp(m, x);
    REQUIRE(mmfuse_test::max_rel_error(std::span<const float>(y.data(), std::size_t(y.numel())),
                                       std::span<const double>(ref)) <= 1e-5);

    // Saving from mmfuse gives PyTorch's names, dtype and byte-identical tensors.
    temp_dir dir;
    io::save(m, dir.path / "mm.safetensors");
    const auto ours = io::safetensors_file::open(dir.path / "mm.safetensors");
    const auto theirs = io::safetensors_file::open(data_dir / "seq_mlp.safetensors");
    REQUIRE(ours.metadata().at("format") == "pt");
    REQUIRE(ours.entries().size() == theirs.entries().size());
    for (const auto& e : theirs.entries()) {
        const io::safetensors_entry* o = ours.find(e.name);
        REQUIRE(o != nullptr);
        REQUIRE(o->type == io::safetensors_dtype::f32);
        REQUIRE(o->shape == e.shape);
        REQUIRE(
            same_bits<float>(ours.read<float>(e.name).cref(), theirs.read<float>(e.name).cref()));
    }

    // With MMFUSE_CHECKPOINT_EXPORT_DIR set, export an mmfuse-initialised model, an input and
    // its mmfuse output for `make_checkpoint_fixtures.py --verify` (checked by hand).
    if (const char* out = std::getenv("MMFUSE_CHECKPOINT_EXPORT_DIR")) {
        const std::filesystem::path o(out);
        nn::model<seq_mlp<float>> fresh(seq_mlp<float>{}, 12345);
        auto rng = mmfuse_test::make_rng(4);
        const tensor<float> xi = mmfuse_test::random_tensor<float>({6, 4}, rng, -2.0, 2.0);
        const tensor<float> yo = run(fresh, xi);
        io::save(fresh, o / "mmfuse_seq_mlp.safetensors");
        io::npy_save(o / "mmfuse_seq_mlp_input.npy", xi);
        io::npy_save(o / "mmfuse_seq_mlp_output.npy", yo);
    }
}

TEST_CASE("the compose::seq twin of nn.Sequential loads the PyTorch checkpoint", "[io][golden]") {
    using twin = compose::seq<nn::linear<4, 8>, nn::relu<>, nn::linear<8, 3>>;
    nn::model<twin> m(twin{}, 99);
    REQUIRE(m.parameter_index().size() == 4);
    REQUIRE(m.parameter_index()[2].name == "2.weight");
    expect_pytorch_output(m);
}

// ---------------------------------------------------------------------------------------------
// Model-level round trips and the one-error-lists-everything rule.

TEMPLATE_TEST_CASE("save then load into a differently seeded model is bit-exact", "[io]", float,
                   double) {
    using T = TestType;
    auto rng = mmfuse_test::make_rng(5);
    temp_dir dir;
    nn::model<seq_mlp<T>> a(seq_mlp<T>{}, rng());
    nn::model<seq_mlp<T>> b(seq_mlp<T>{}, rng() | 1);
    const tensor<T> x = mmfuse_test::random_tensor<T>({3, 4}, rng);
    const tensor<T> ya = run(a, x);
    REQUIRE_FALSE(same_bits<T>(run(b, x).cref(), ya.cref()));
    io::save(a, dir.path / "a.safetensors");
    io::load(b, dir.path / "a.safetensors");
    for (const auto& p : a.parameter_index())
        REQUIRE(same_bits<T>(a.find(p.name)->value, b.find(p.name)->value));
    REQUIRE(same_bits<T>(run(b, x).cref(), ya.cref()));
    // A float model refuses a double checkpoint unless asked to convert.
    if constexpr (std::is_same_v<T, double>) {
        nn::model<seq_mlp<float>> c(seq_mlp<float>{}, 3);
        REQUIRE_THROWS_WITH(io::load(c, dir.path / "a.safetensors"),
                            Catch::Contains("expected dtype F32, got F64"));
        io::load(c, dir.path / "a.safetensors", {.convert_dtype = true});
        const auto w = a.find("0.weight")->value;
        const auto wc = c.find("0.weight")->value;
        for (index_t k = 0; k < w.numel(); ++k)
            REQUIRE(wc.data()[k] == float(w.data()[k]));
    }
}

TEST_CASE("load lists every missing, unexpected, mis-shaped and mis-typed tensor at once", "[io]") {
    auto rng = mmfuse_test::make_rng(6);
    nn::model<seq_mlp<float>> m(seq_mlp<float>{}, rng());
    std::vector<float> before = values_of<float>(m.parameters());
    // 0.weight mis-shaped (4, 8); 0.bias mis-typed (I64); 2.weight fine; 2.bias missing;
    // "extra.weight" unexpected.
    const tensor<float> w0 = random_any<float>({4, 8}, rng);
    const tensor<std::int64_t> b0 = random_any<std::int64_t>({8}, rng);
    const tensor<float> w2 = random_any<float>({3, 8}, rng);
    const tensor<float> extra = random_any<float>({2, 2}, rng);
    const std::vector<io::named_tensor> list{{"0.weight", w0.cref()},
                                             {"0.bias", b0.cref()},
                                             {"2.weight", w2.cref()},
                                             {"extra.weight", extra.cref()}};
    temp_dir dir;
    const auto path = dir.path / "bad.safetensors";
    io::save_safetensors(path, list);
    try {
        io::load(m, path);
        FAIL("load accepted a mismatching checkpoint");
    } catch (const io_error& e) {
        const std::string msg = e.what();
        REQUIRE(e.module() == path.string());
        REQUIRE_THAT(msg, Catch::Contains("4 problems"));
        REQUIRE_THAT(msg, Catch::Contains("missing tensor '2.bias'") && Catch::Contains("(3)"));
        REQUIRE_THAT(msg, Catch::Contains("unexpected tensor 'extra.weight'"));
        REQUIRE_THAT(msg, Catch::Contains("'0.weight': expected shape (8, 4), got (4, 8)"));
        REQUIRE_THAT(msg, Catch::Contains("'0.bias': expected dtype F32, got I64"));
        REQUIRE_THAT(msg, !Catch::Contains("'2.weight'"));
    }
    REQUIRE(values_of<float>(m.parameters()) == before);  // nothing was loaded
    // convert_dtype does not make an integer tensor acceptable.
    REQUIRE_THROWS_WITH(io::load(m, path, {.convert_dtype = true}), Catch::Contains("got I64"));
    REQUIRE(values_of<float>(m.parameters()) == before);

    // strict = false: unexpected and missing tensors are ignored, the matching ones load.
    const tensor<float> w0ok = random_any<float>({8, 4}, rng);
    const std::vector<io::named_tensor> partial{{"0.weight", w0ok.cref()},
                                                {"extra.weight", extra.cref()}};
    const auto bytes = io::serialize_safetensors(partial);
    const auto f = io::safetensors_file::parse(bytes, "partial");
    REQUIRE_THROWS_WITH(io::load(m, f), Catch::Contains("4 problems"));
    REQUIRE(values_of<float>(m.parameters()) == before);
    io::load(m, f, {.strict = false});
    REQUIRE(same_bits<float>(m.find("0.weight")->value, w0ok.cref()));
    const auto b2 = m.find("2.bias")->value;
    const std::size_t off = std::size_t(m.parameter_index()[3].offset);
    REQUIRE(std::memcmp(b2.data(), before.data() + off, 3 * sizeof(float)) == 0);
    // A malformed file is an io_error naming the path, before anything is compared.
    const auto junk = dir.path / "junk.safetensors";
    write_file(junk, image("{\"0.weight\":", 0));
    REQUIRE_THROWS_AS(io::load(m, junk), io_error);
}
