#pragma once
/// \file
/// NumPy `.npy` files: a hardened loader and a writer.
///
/// Format (NumPy NEP 1, "A Simple File Format for NumPy Arrays", and numpy.lib.format):
/// the magic `\x93NUMPY`, a major and a minor version byte (1.0, 2.0 or 3.0), the header
/// length as a little-endian uint16 (1.0) or uint32 (2.0, 3.0), then a Python dict literal
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
/// final newline, then the raw elements.
///
/// The loader trusts nothing in the file: the header is read with bounded reads and parsed
/// by a strict parser of exactly that dict (three keys, each once; string, True/False and a
/// tuple of non-negative integers), the element count is computed with overflow checks and
/// must account for *exactly* the bytes left in the file, and bool bytes must be 0 or 1.
/// Every violation throws `mmfuse::io_error` whose `module()` is the file path; nothing is
/// ever read out of bounds and nothing is allocated before the sizes have been checked
/// against the file size.
///
/// Supported dtypes: '<f2' (half), '<f4', '<f8', '<i4', '<i8', '|u1', '|b1'. Big-endian
/// data ('>f4', ...) is byte-swapped on load. Fortran-order arrays are transposed into
/// row-major on load (the extents stay those in the header). bf16 has no NumPy dtype: it
/// cannot be saved, and loads only through `npy_load_as<bf16>` from another dtype.
/// The xtensor convenience `io::npy_load_xtensor` lives in `mmfuse/interop/xtensor.hpp`.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"

namespace mmfuse::inline v0::io {

/// The parsed header of a `.npy` file.
struct npy_header {
    std::string descr;              ///< dtype string as written in the file, e.g. "<f8"
    mmfuse::dtype type{};           ///< element type it denotes
    bool byte_swap = false;         ///< stored in the other byte order than this machine's
    bool fortran_order = false;     ///< stored column-major (loaders return row-major)
    mmfuse::extents shape{};        ///< extents, as in the header
    std::uint64_t data_offset = 0;  ///< byte offset of the first element
    std::uint64_t data_bytes = 0;   ///< size of the element data (= numel * itemsize)
};

/// Largest header `npy_read_header` accepts, in bytes. NumPy writes headers of 64 to a few
/// hundred bytes (and itself refuses headers above 10000 bytes by default).
inline constexpr std::uint32_t npy_max_header_bytes = 1u << 16;

/// True when `T` has a NumPy dtype and can be saved with `npy_save` / loaded with `npy_load`.
template <class T>
inline constexpr bool has_npy_dtype =
    element_type<T> && !std::is_same_v<std::remove_const_t<T>, bf16>;

namespace detail {

/// NumPy dtype string of `t` in this machine's byte order ('<f4' on little-endian hosts).
inline std::string npy_descr(dtype t) {
    const char order = std::endian::native == std::endian::little ? '<' : '>';
    switch (t) {
        case dtype::f16:
            return std::string(1, order) + "f2";
        case dtype::f32:
            return std::string(1, order) + "f4";
        case dtype::f64:
            return std::string(1, order) + "f8";
        case dtype::i32:
            return std::string(1, order) + "i4";
        case dtype::i64:
            return std::string(1, order) + "i8";
        case dtype::u8:
            return "|u1";
        case dtype::boolean:
            return "|b1";
        case dtype::bf16:
            break;
    }
    return "";  // bf16: no NumPy dtype
}

/// Quoted, printable excerpt of untrusted header text for error messages (at most 80
/// characters; control and non-ASCII bytes shown as '?').
inline std::string excerpt(std::string_view s) {
    std::string r = "\"";
    for (std::size_t i = 0; i < s.size() && i < 80; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        r += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
    }
    if (s.size() > 80) r += "...";
    return r + "\"";
}

/// Strict parser of the header dict. Every method either advances within `text_` or throws
/// `io_error(path, ...)`; no access goes past `text_.size()`.
class npy_dict_parser {
public:
    npy_dict_parser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

    /// Parses the whole dict into `h` (descr, type, byte_swap, fortran_order, shape).
    void parse(npy_header& h) {
        bool seen_descr = false, seen_order = false, seen_shape = false;
        skip_ws();
        expect('{');
        while (true) {
            skip_ws();
            if (peek() == '}') break;
            const std::string_view key = parse_string();
            skip_ws();
            expect(':');
            skip_ws();
            if (key == "descr") {
                once(seen_descr, key);
                parse_descr(parse_string(), h);
            } else if (key == "fortran_order") {
                once(seen_order, key);
                h.fortran_order = parse_bool();
            } else if (key == "shape") {
                once(seen_shape, key);
                parse_shape(h.shape);
            } else {
                fail("unexpected key '" + std::string(key) + "'");
            }
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() != '}') fail("expected ',' or '}'");
        }
        ++pos_;  // '}'
        skip_ws();
        if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
        if (!seen_descr || !seen_order || !seen_shape)
            fail(std::string("missing key '") +
                 (!seen_descr   ? "descr"
                  : !seen_order ? "fortran_order"
                                : "shape") +
                 "'");
    }

private:
    [[noreturn]] void fail(const std::string& why) const {
        throw io_error(path_, "malformed .npy header: " + why + " at byte " + std::to_string(pos_) +
                                  " of " + excerpt(text_));
    }
    /// Current character, or '\0' at the end (a NUL inside the text is rejected anyway).
    char peek() const noexcept { return pos_ < text_.size() ? text_[pos_] : '\0'; }
    void skip_ws() noexcept {
        while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                       text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }
    void expect(char c) {
        if (pos_ >= text_.size() || text_[pos_] != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    void once(bool& seen, std::string_view key) {
        if (seen) fail("duplicate key '" + std::string(key) + "'");
        seen = true;
    }
    /// A '...' or "..." literal without escapes; returns its content.
    std::string_view parse_string() {
        const char q = peek();
        if (q != '\'' && q != '"') fail("expected a quoted string");
        const std::size_t start = ++pos_;
        while (pos_ < text_.size() && text_[pos_] != q) {
            if (text_[pos_] == '\\' || text_[pos_] == '\n') fail("unsupported character in string");
            ++pos_;
        }
        if (pos_ >= text_.size()) fail("unterminated string");
        return text_.substr(start, pos_++ - start);
    }
    bool parse_bool() {
        if (text_.substr(pos_, 4) == "True") {
            pos_ += 4;
            return true;
        }
        if (text_.substr(pos_, 5) == "False") {
            pos_ += 5;
            return false;
        }
        fail("expected True or False");
    }
    /// '(' [int (',' int)* [',']] ')' with Python's tuple rule: one element needs a comma.
    void parse_shape(mmfuse::extents& shape) {
        expect('(');
        std::array<index_t, max_rank> dims{};
        std::size_t rank = 0;
        bool trailing_comma = false;
        skip_ws();
        while (peek() != ')') {
            if (rank == std::size_t(max_rank))
                fail("more than " + std::to_string(max_rank) + " dimensions");
            dims[rank++] = parse_dim();
            skip_ws();
            trailing_comma = false;
            if (peek() == ',') {
                ++pos_;
                trailing_comma = true;
                skip_ws();
            } else if (peek() != ')') {
                fail("expected ',' or ')' in shape");
            }
        }
        if (rank == 1 && !trailing_comma) fail("shape '(n)' is not a tuple; expected '(n,)'");
        ++pos_;  // ')'
        shape = mmfuse::extents::from({dims.data(), rank});
    }
    /// A non-negative decimal integer that fits in index_t (Python 2's 'L' suffix allowed).
    index_t parse_dim() {
        if (peek() == '-') fail("negative dimension");
        if (peek() < '0' || peek() > '9') fail("expected a dimension");
        index_t v = 0;
        while (peek() >= '0' && peek() <= '9') {
            if (__builtin_mul_overflow(v, index_t(10), &v) ||
                __builtin_add_overflow(v, index_t(text_[pos_] - '0'), &v))
                fail("dimension does not fit in 64 bits");
            ++pos_;
        }
        if (peek() == 'L') ++pos_;
        return v;
    }
    void parse_descr(std::string_view d, npy_header& h) {
        h.descr = std::string(d);
        auto unsupported = [&] {
            throw io_error(path_, "unsupported .npy dtype " + excerpt(d) +
                                      " (supported: <f2, <f4, <f8, <i4, <i8, |u1, |b1 and their "
                                      "big-endian forms)");
        };
        if (d.size() < 3) unsupported();
        const char order = d[0];
        const std::string_view code = d.substr(1);
        struct entry {
            std::string_view code;
            dtype type;
        };
        static constexpr std::array<entry, 7> table{{{"f2", dtype::f16},
                                                     {"f4", dtype::f32},
                                                     {"f8", dtype::f64},
                                                     {"i4", dtype::i32},
                                                     {"i8", dtype::i64},
                                                     {"u1", dtype::u8},
                                                     {"b1", dtype::boolean}}};
        const auto it = std::find_if(table.begin(), table.end(),
                                     [&](const entry& e) { return e.code == code; });
        if (it == table.end()) unsupported();
        h.type = it->type;
        const bool one_byte = dtype_size(h.type) == 1;
        const bool native_little = std::endian::native == std::endian::little;
        if (order == '|') {
            if (!one_byte) unsupported();  // '|' means "no byte order": only for 1-byte types
            h.byte_swap = false;
        } else if (order == '<' || order == '>') {
            h.byte_swap = !one_byte && ((order == '<') != native_little);
        } else if (order == '=') {
            h.byte_swap = false;
        } else {
            unsupported();
        }
    }

    std::string_view text_;
    const std::string& path_;
    std::size_t pos_ = 0;
};

/// Opens `path` for reading and returns its size in bytes; throws `io_error` on failure.
inline std::uint64_t open_for_reading(std::ifstream& in, const std::string& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw io_error(path, "is a directory, not a file");
    in.open(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open file for reading");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    if (size < 0 || !in) throw io_error(path, "cannot determine the file size");
    return std::uint64_t(size);
}

/// Reads exactly `n` bytes or throws `io_error` ("truncated").
inline void read_exact(std::ifstream& in, char* dst, std::uint64_t n, const std::string& path,
                       const char* what) {
    if (n == 0) return;
    in.read(dst, std::streamsize(n));
    if (!in || std::uint64_t(in.gcount()) != n)
        throw io_error(path, std::string("truncated .npy file: cannot read the ") + what);
}

/// Reads and validates the preamble and header of an open `.npy` stream of `file_size`
/// bytes, leaving the stream at the first data byte.
inline npy_header read_header(std::ifstream& in, std::uint64_t file_size, const std::string& path) {
    static constexpr char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
    std::array<char, 12> pre{};
    if (file_size < 10)
        throw io_error(path, "truncated .npy file: " + std::to_string(file_size) +
                                 " bytes, shorter than the 10-byte preamble");
    read_exact(in, pre.data(), 8, path, "preamble");
    if (std::memcmp(pre.data(), magic, 6) != 0)
        throw io_error(path, "not a .npy file: the magic string \\x93NUMPY is missing");
    const unsigned major = static_cast<unsigned char>(pre[6]);
    const unsigned minor = static_cast<unsigned char>(pre[7]);
    if (minor != 0 || major < 1 || major > 3)
        throw io_error(path, "unsupported .npy format version " + std::to_string(major) + "." +
                                 std::to_string(minor) + " (1.0, 2.0 and 3.0 are supported)");
    const std::uint64_t len_bytes = major == 1 ? 2 : 4;
    if (file_size < 8 + len_bytes)
        throw io_error(path, "truncated .npy file: the header length is missing");
    read_exact(in, pre.data() + 8, len_bytes, path, "header length");
    std::uint64_t header_len = 0;
    for (std::uint64_t i = 0; i < len_bytes; ++i)
        header_len |= std::uint64_t(static_cast<unsigned char>(pre[8 + i])) << (8 * i);
    npy_header h;
    h.data_offset = 8 + len_bytes + header_len;
    if (header_len > npy_max_header_bytes)
        throw io_error(path, "malformed .npy header: header length " + std::to_string(header_len) +
                                 " exceeds the limit of " + std::to_string(npy_max_header_bytes));
    if (h.data_offset > file_size)
        throw io_error(path, "truncated .npy file: the header claims " +
                                 std::to_string(header_len) + " bytes but the file has " +
                                 std::to_string(file_size) + " bytes");
    std::string text(std::size_t(header_len), '\0');
    read_exact(in, text.data(), header_len, path, "header");
    npy_dict_parser(text, path).parse(h);

    // The product of the non-zero extents must fit in index_t even when another extent is 0
    // (NumPy refuses such arrays too): every partial product of the extents (element
    // counts, row-major strides) is then representable.
    std::uint64_t nonzero = 1;
    bool empty = false;
    for (const index_t d : h.shape) {
        empty = empty || d == 0;
        if (__builtin_mul_overflow(nonzero, std::uint64_t(d == 0 ? 1 : d), &nonzero) ||
            nonzero > std::uint64_t(std::numeric_limits<index_t>::max()))
            throw io_error(path, "malformed .npy header: shape " + h.shape.to_string() +
                                     " overflows the element count");
    }
    const std::uint64_t count = empty ? 0 : nonzero;
    if (__builtin_mul_overflow(count, std::uint64_t(dtype_size(h.type)), &h.data_bytes))
        throw io_error(path, "malformed .npy header: shape " + h.shape.to_string() +
                                 " overflows the byte count");
    if (h.data_bytes != file_size - h.data_offset)
        throw io_error(path, "size mismatch: shape " + h.shape.to_string() + " of '" + h.descr +
                                 "' needs " + std::to_string(h.data_bytes) +
                                 " data bytes, the file has " +
                                 std::to_string(file_size - h.data_offset));
    return h;
}

/// Copies the elements of strided view `src` into `dst` in row-major order.
template <class T>
void copy_row_major(tensor_ref<const T> src, T* dst) {
    if (src.numel() == 0) return;
    const index_t n = src.rank() > 0 ? src.extent(-1) : 1;
    const index_t s = src.rank() > 0 ? src.stride(-1) : 1;
    for_each_row<1>(src.extents(), {src.strides()},
                    [&](index_t row, const std::array<index_t, 1>& off) {
                        const T* p = src.data() + off[0];
                        T* q = dst + row * n;
                        for (index_t j = 0; j < n; ++j)
                            q[j] = p[j * s];
                    });
}

/// Reverses the bytes of each of `count` elements of `size` bytes at `p`.
inline void byte_swap(unsigned char* p, std::uint64_t count, std::size_t size) {
    for (std::uint64_t i = 0; i < count; ++i, p += size)
        std::reverse(p, p + size);
}

/// Reads the data of `h` from `in` into a new row-major `tensor<T>`; `T` must be the
/// element type of `h.type`. Swaps bytes, checks bools and transposes Fortran order.
template <element_type T>
tensor<T> read_data(std::ifstream& in, const npy_header& h, const std::string& path) {
    tensor<T> t(h.shape);
    read_exact(in, reinterpret_cast<char*>(t.data()), h.data_bytes, path, "array data");
    auto* bytes = reinterpret_cast<unsigned char*>(t.data());
    if (h.byte_swap) byte_swap(bytes, h.data_bytes / sizeof(T), sizeof(T));
    if constexpr (std::is_same_v<T, bool>) {
        for (std::uint64_t i = 0; i < h.data_bytes; ++i)
            if (bytes[i] > 1)
                throw io_error(path, "corrupt .npy data: bool byte " + std::to_string(bytes[i]) +
                                         " at element " + std::to_string(i) + " (must be 0 or 1)");
    }
    if (!h.fortran_order || h.shape.rank() < 2) return t;
    // Column-major data: view it with Fortran strides and copy into row-major order.
    stride_array fs{};
    index_t step = 1;
    for (int i = 0; i < h.shape.rank(); ++i) {
        fs[std::size_t(i)] = step;
        step *= h.shape[i];
    }
    tensor<T> r(h.shape);
    copy_row_major(
        tensor_ref<const T>(t.data(), h.shape,
                            std::span<const index_t>(fs.data(), std::size_t(h.shape.rank()))),
        r.data());
    return r;
}

/// Calls `f.template operator()<U>()` with `U` the C++ element type of `t`.
template <class F>
decltype(auto) visit_dtype(dtype t, F&& f) {
    switch (t) {
        case dtype::f16:
            return f.template operator()<half>();
        case dtype::f32:
            return f.template operator()<float>();
        case dtype::f64:
            return f.template operator()<double>();
        case dtype::i32:
            return f.template operator()<std::int32_t>();
        case dtype::i64:
            return f.template operator()<std::int64_t>();
        case dtype::u8:
            return f.template operator()<std::uint8_t>();
        case dtype::boolean:
            return f.template operator()<bool>();
        case dtype::bf16:
            break;
    }
    return f.template operator()<bf16>();  // unreachable from a parsed header
}

/// True when `npy_load_as<To>` converts `From` values: any dtype to a floating `To`
/// (f64, f32, f16, bf16; rounded to nearest), and value-preserving widening among
/// bool/integer types (b1 -> any integer, u1 -> i4/i8, i4 -> i8).
template <class From, class To>
inline constexpr bool npy_convertible = std::is_same_v<From, To> || std::is_floating_point_v<To> ||
                                        std::is_same_v<To, half> || std::is_same_v<To, bf16> ||
                                        (std::is_integral_v<To> && !std::is_same_v<To, bool> &&
                                         (std::is_same_v<From, bool> ||
                                          (std::is_integral_v<From> && sizeof(From) < sizeof(To) &&
                                           (std::is_signed_v<To> || !std::is_signed_v<From>))));

/// One element converted from `From` to `To` (through float for half and bf16).
template <class To, class From>
To convert_element(From v) {
    if constexpr (std::is_same_v<From, half> || std::is_same_v<From, bf16>) {
        return convert_element<To>(float(v));
    } else if constexpr (std::is_same_v<To, half> || std::is_same_v<To, bf16>) {
        return To(float(v));
    } else {
        return static_cast<To>(v);
    }
}

}  // namespace detail

/// Reads and validates the header of `.npy` file `path` (without reading the data).
/// Throws `io_error` (module() = path) for a missing, truncated or malformed file.
inline npy_header npy_read_header(const std::filesystem::path& path) {
    const std::string p = path.string();
    std::ifstream in;
    const std::uint64_t size = detail::open_for_reading(in, p);
    return detail::read_header(in, size, p);
}

/// Loads `.npy` file `path` into a new row-major tensor with the header's extents (rank
/// 0..max_rank; Fortran order transposed, big-endian swapped). The file's dtype must be
/// exactly `T`'s; otherwise `io_error` names the file, the expected and the found dtype
/// (use `npy_load_as` to convert). Throws `io_error` (module() = path) for any malformed,
/// truncated or inconsistent file.
template <element_type T>
tensor<T> npy_load(const std::filesystem::path& path) {
    static_assert(has_npy_dtype<T>,
                  "mmfuse::io::npy_load: bf16 has no NumPy dtype (use npy_load_as<bf16>)");
    const std::string p = path.string();
    std::ifstream in;
    const std::uint64_t size = detail::open_for_reading(in, p);
    const npy_header h = detail::read_header(in, size, p);
    if (h.type != dtype_of<T>)
        throw io_error(p, "dtype mismatch: expected dtype " + std::string(dtype_name(dtype_of<T>)) +
                              " ('" + detail::npy_descr(dtype_of<T>) + "'), found '" + h.descr +
                              "' (" + std::string(dtype_name(h.type)) + ")");
    return detail::read_data<T>(in, h, p);
}

/// Loads `.npy` file `path` like `npy_load`, converting the elements to `T`: any dtype
/// converts to a floating `T` (f64, f32, f16, bf16; `static_cast` rounding to nearest,
/// half/bf16 through float), and bool/integer dtypes widen to a wider integer `T`
/// (b1 -> any, u1 -> i4/i8, i4 -> i8). Any other pair (narrowing integers, float -> int)
/// throws `io_error` naming both dtypes. Same validation as `npy_load`.
template <element_type T>
tensor<T> npy_load_as(const std::filesystem::path& path) {
    const std::string p = path.string();
    std::ifstream in;
    const std::uint64_t size = detail::open_for_reading(in, p);
    const npy_header h = detail::read_header(in, size, p);
    return detail::visit_dtype(h.type, [&]<class U>() -> tensor<T> {
        if constexpr (std::is_same_v<U, T>) {
            return detail::read_data<T>(in, h, p);
        } else if constexpr (!detail::npy_convertible<U, T> || std::is_same_v<U, bf16>) {
            throw io_error(p, "dtype mismatch: cannot convert '" + h.descr + "' (" +
                                  std::string(dtype_name(h.type)) + ") to dtype " +
                                  std::string(dtype_name(dtype_of<T>)) + " without loss");
        } else {
            const tensor<U> src = detail::read_data<U>(in, h, p);
            tensor<T> r(h.shape);
            for (index_t i = 0; i < r.numel(); ++i)
                r[i] = detail::convert_element<T>(src[i]);
            return r;
        }
    });
}

/// Writes `t` (any strides, host memory) to `path` as a C-order `.npy` file, format
/// version 1.0 (2.0 if the header would not fit), dtype `detail::npy_descr(dtype_of<T>)`,
/// header padded with 1 to 64 spaces to a multiple of 64 bytes, as NumPy does (the
/// output is byte-identical to `numpy.save` of the same C-order array). Overwrites an existing
/// file. Throws `io_error` (module() = path) if the file cannot be written or `t` is a device view.
template <element_type T>
void npy_save(const std::filesystem::path& path, tensor_ref<T> t) {
    using V = std::remove_const_t<T>;
    static_assert(has_npy_dtype<V>, "mmfuse::io::npy_save: bf16 has no NumPy dtype");
    const std::string p = path.string();
    if (t.space() != memory_space::host)
        throw io_error(p, "cannot save a device view; copy it to host memory first");
    if (t.numel() > 0 && t.data() == nullptr)
        throw io_error(p, "cannot save a view with null data");

    std::string dict =
        "{'descr': '" + detail::npy_descr(dtype_of<V>) + "', 'fortran_order': False, 'shape': (";
    for (int i = 0; i < t.rank(); ++i)
        dict += std::to_string(t.extent(i)) + ", ";
    if (t.rank() > 1)
        dict.resize(dict.size() - 2);  // "(2, 3)"
    else if (t.rank() == 1)
        dict.resize(dict.size() - 1);  // "(5,)"
    dict += "), }";
    // NumPy's rule (numpy.lib.format._wrap_header): 1 to 64 spaces, then '\n', so that
    // magic + version + length field + header is a multiple of 64 bytes.
    std::size_t len_bytes = 2;
    char major = 1;
    std::size_t unpadded = 8 + len_bytes + dict.size() + 1;
    if (unpadded + 64 - unpadded % 64 - 10 > 65535) {
        len_bytes = 4;
        major = 2;
        unpadded = 8 + len_bytes + dict.size() + 1;
    }
    dict.append(64 - unpadded % 64, ' ');
    dict += '\n';
    const std::uint64_t header_len = dict.size();

    std::string pre = "\x93NUMPY";
    pre += major;
    pre += '\0';
    for (std::size_t i = 0; i < len_bytes; ++i)
        pre += char((header_len >> (8 * i)) & 0xffu);

    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    if (!out) throw io_error(p, "cannot open file for writing");
    out.write(pre.data(), std::streamsize(pre.size()));
    out.write(dict.data(), std::streamsize(dict.size()));
    const tensor_ref<const V> src = t;
    if (src.is_contiguous()) {
        out.write(reinterpret_cast<const char*>(src.data()),
                  std::streamsize(std::uint64_t(src.numel()) * sizeof(V)));
    } else {
        tensor<V> c(src.extents());
        detail::copy_row_major(src, c.data());
        out.write(reinterpret_cast<const char*>(c.data()),
                  std::streamsize(std::uint64_t(c.numel()) * sizeof(V)));
    }
    out.close();
    if (!out) throw io_error(p, "write failed");
}

/// Saves an owning tensor (see the `tensor_ref` overload).
template <element_type T>
void npy_save(const std::filesystem::path& path, const tensor<T>& t) {
    npy_save(path, t.cref());
}

}  // namespace mmfuse::inline v0::io
