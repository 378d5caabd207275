#pragma once
/// \file
/// The safetensors checkpoint format (Hugging Face, github.com/huggingface/safetensors,
/// format spec in its README / docs): a hardened reader and a writer.
///
/// Layout: 8 bytes N (little-endian u64), N bytes of UTF-8 JSON, then the byte buffer.
/// The JSON header is an object mapping each tensor name to
/// `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}` (offsets relative to the
/// start of the byte buffer, data little-endian, C order), plus an optional
/// `"__metadata__": {"key": "value", ...}` of strings. Writers pad the header with spaces to a
/// multiple of 8 bytes.
///
/// The reader trusts nothing (DESIGN decision 10). It refuses, with `mmfuse::io_error` whose
/// `module()` is the file path (or the name given to `parse`):
///   * a header length above `safetensors_max_header_bytes` (100 MB, the reference
///     implementation's limit) or past the end of the file;
///   * a header that is not valid UTF-8, does not start with '{', is not JSON of exactly the
///     grammar above (unknown keys in a tensor entry, non-integer or negative numbers, a
///     missing field, a second occurrence of a name or a field, text after the object);
///   * an unknown dtype, a rank above `max_rank`, a shape whose element or byte count
///     overflows;
///   * `begin > end`, `end - begin != numel * itemsize`, and any layout in which the ranges,
///     sorted by offset, do not tile the byte buffer exactly (overlaps, holes, a tensor past
///     the end, trailing bytes) — the reference implementation's rules.
/// The header is parsed by a small dependency-free parser for exactly this grammar (no
/// recursion beyond the two fixed levels, every access bounds-checked), so the library needs
/// no JSON dependency. Reads are bounded (no mmap); nothing is allocated before its size has
/// been checked against the file size.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "mmfuse/core/config.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/io/npy.hpp"

namespace mmfuse::inline v0::io {

/// Element types of the safetensors format ("BOOL", "U8", ..., "F64"), in the reference
/// implementation's order. Only some have an mmfuse `dtype` (see `to_dtype`); the others are
/// parsed and validated but cannot be read into a tensor.
enum class safetensors_dtype : std::uint8_t {
    boolean,
    u8,
    i8,
    f8_e5m2,
    f8_e4m3,
    i16,
    u16,
    f16,
    bf16,
    i32,
    u32,
    f32,
    f64,
    i64,
    u64
};

namespace detail {
struct st_dtype_info {
    std::string_view name;
    std::size_t size;
    std::optional<dtype> type;
};
inline constexpr std::array<st_dtype_info, 15> st_dtypes{{{"BOOL", 1, dtype::boolean},
                                                          {"U8", 1, dtype::u8},
                                                          {"I8", 1, std::nullopt},
                                                          {"F8_E5M2", 1, std::nullopt},
                                                          {"F8_E4M3", 1, std::nullopt},
                                                          {"I16", 2, std::nullopt},
                                                          {"U16", 2, std::nullopt},
                                                          {"F16", 2, dtype::f16},
                                                          {"BF16", 2, dtype::bf16},
                                                          {"I32", 4, dtype::i32},
                                                          {"U32", 4, std::nullopt},
                                                          {"F32", 4, dtype::f32},
                                                          {"F64", 8, dtype::f64},
                                                          {"I64", 8, dtype::i64},
                                                          {"U64", 8, std::nullopt}}};
}  // namespace detail

/// The format's name of `t`: "F32", "BF16", "I64", ...
constexpr std::string_view safetensors_dtype_name(safetensors_dtype t) noexcept {
    return detail::st_dtypes[std::size_t(t)].name;
}
/// Bytes per element of `t`.
constexpr std::size_t safetensors_dtype_size(safetensors_dtype t) noexcept {
    return detail::st_dtypes[std::size_t(t)].size;
}
/// The mmfuse `dtype` of `t`, or nullopt for I8, I16, U16, U32, U64 and the F8 types.
constexpr std::optional<dtype> to_dtype(safetensors_dtype t) noexcept {
    return detail::st_dtypes[std::size_t(t)].type;
}
/// The safetensors dtype of an mmfuse `dtype` (every mmfuse dtype has one).
constexpr safetensors_dtype to_safetensors_dtype(dtype t) noexcept {
    for (std::size_t i = 0; i < detail::st_dtypes.size(); ++i)
        if (detail::st_dtypes[i].type == t) return safetensors_dtype(i);
    return safetensors_dtype::u8;  // unreachable: the table covers every dtype
}
/// True for F16, BF16, F32 and F64: the dtypes `safetensors_file::read` converts between.
constexpr bool is_floating(safetensors_dtype t) noexcept {
    return t == safetensors_dtype::f16 || t == safetensors_dtype::bf16 ||
           t == safetensors_dtype::f32 || t == safetensors_dtype::f64;
}

/// One tensor of a safetensors header. `begin`/`end` are byte offsets relative to the start
/// of the byte buffer (`safetensors_file::data_offset()`); `end - begin = numel * itemsize`.
struct safetensors_entry {
    std::string name;
    safetensors_dtype type{};
    extents shape{};
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
};

/// The `__metadata__` map: string keys to string values.
using safetensors_metadata = std::map<std::string, std::string, std::less<>>;

/// Largest header accepted, in bytes (the reference implementation's MAX_HEADER_SIZE).
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;

namespace detail {

/// Position of the first byte of `s` that is not part of well-formed UTF-8 (RFC 3629: no
/// overlong forms, no surrogates, nothing above U+10FFFF), or `npos` if all of it is.
inline std::size_t utf8_invalid_at(std::string_view s) noexcept {
    std::size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;  // overlong
            if (c == 0xed) hi = 0x9f;  // surrogates
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;  // overlong
            if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
        } else {
            return i;
        }
        if (s.size() - i < len) return i;
        for (std::size_t k = 1; k < len; ++k) {
            const unsigned char b = static_cast<unsigned char>(s[i + k]);
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) return i;
        }
        i += len;
    }
    return std::string_view::npos;
}

/// Strict parser of a safetensors header (see the file comment for the grammar). Every
/// method either advances within `text_` or throws `io_error(path, ...)`.
class st_header_parser {
public:
    st_header_parser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

    void parse(std::vector<safetensors_entry>& entries, safetensors_metadata& metadata) {
        if (const std::size_t bad = utf8_invalid_at(text_); bad != std::string_view::npos) {
            pos_ = bad;
            fail("the header is not valid UTF-8");
        }
        if (text_.empty() || text_[0] != '{') fail("the header must start with '{'");
        ++pos_;
        bool seen_metadata = false;
        skip_ws();
        if (peek() == '}') {
            ++pos_;
        } else {
            while (true) {
                skip_ws();
                std::string key = parse_string();
                skip_ws();
                expect(':');
                skip_ws();
                if (key == "__metadata__") {
                    if (seen_metadata) fail("duplicate key '__metadata__'");
                    seen_metadata = true;
                    parse_metadata(metadata);
                } else {
                    entries.push_back(parse_entry(std::move(key)));
                }
                skip_ws();
                if (peek() == ',') {
                    ++pos_;
                    continue;
                }
                expect('}');
                break;
            }
        }
        skip_ws();
        if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    }

private:
    [[noreturn]] void fail(const std::string& why) const {
        const std::size_t from = pos_ > 30 ? pos_ - 30 : 0;
        throw io_error(path_, "malformed safetensors header: " + why + " at byte " +
                                  std::to_string(pos_) + " near " +
                                  excerpt(text_.substr(std::min(from, text_.size()), 60)));
    }
    char peek() const noexcept { return pos_ < text_.size() ? text_[pos_] : '\0'; }
    bool at_end() const noexcept { return pos_ >= text_.size(); }
    void skip_ws() noexcept {
        while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                       text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }
    void expect(char c) {
        if (at_end() || text_[pos_] != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    static void append_utf8(std::string& s, std::uint32_t cp) {
        if (cp < 0x80) {
            s += char(cp);
        } else if (cp < 0x800) {
            s += char(0xc0 | (cp >> 6));
            s += char(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            s += char(0xe0 | (cp >> 12));
            s += char(0x80 | ((cp >> 6) & 0x3f));
            s += char(0x80 | (cp & 0x3f));
        } else {
            s += char(0xf0 | (cp >> 18));
            s += char(0x80 | ((cp >> 12) & 0x3f));
            s += char(0x80 | ((cp >> 6) & 0x3f));
            s += char(0x80 | (cp & 0x3f));
        }
    }
    std::uint32_t parse_hex4() {
        if (text_.size() - pos_ < 4) fail("truncated \\u escape");
        std::uint32_t v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = text_[pos_++];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= std::uint32_t(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= std::uint32_t(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                v |= std::uint32_t(c - 'A' + 10);
            else
                fail("bad hex digit in \\u escape");
        }
        return v;
    }
    /// A JSON string (RFC 8259: escapes, \uXXXX with surrogate pairs, no raw control
    /// characters), decoded to UTF-8. The text was checked to be valid UTF-8 already.
    std::string parse_string() {
        expect('"');
        std::string s;
        while (true) {
            if (at_end()) fail("unterminated string");
            const char c = text_[pos_++];
            if (c == '"') return s;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                s += c;
                continue;
            }
            if (at_end()) fail("unterminated escape");
            switch (text_[pos_++]) {
                case '"':
                    s += '"';
                    break;
                case '\\':
                    s += '\\';
                    break;
                case '/':
                    s += '/';
                    break;
                case 'b':
                    s += '\b';
                    break;
                case 'f':
                    s += '\f';
                    break;
                case 'n':
                    s += '\n';
                    break;
                case 'r':
                    s += '\r';
                    break;
                case 't':
                    s += '\t';
                    break;
                case 'u': {
                    std::uint32_t cp = parse_hex4();
                    if (cp >= 0xdc00 && cp <= 0xdfff) fail("lone low surrogate in \\u escape");
                    if (cp >= 0xd800 && cp <= 0xdbff) {
                        if (text_.substr(pos_, 2) != "\\u") fail("lone high surrogate");
                        pos_ += 2;
                        const std::uint32_t lo = parse_hex4();
                        if (lo < 0xdc00 || lo > 0xdfff) fail("bad low surrogate in \\u escape");
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    }
                    append_utf8(s, cp);
                    break;
                }
                default:
                    --pos_;
                    fail("unknown escape in a string");
            }
        }
    }
    /// A non-negative JSON integer (no sign, fraction, exponent or leading zero) <= max.
    std::uint64_t parse_uint(std::uint64_t max) {
        if (peek() == '-') fail("negative number");
        if (peek() < '0' || peek() > '9') fail("expected a non-negative integer");
        if (peek() == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' &&
            text_[pos_ + 1] <= '9')
            fail("leading zero in a number");
        std::uint64_t v = 0;
        while (peek() >= '0' && peek() <= '9') {
            if (__builtin_mul_overflow(v, std::uint64_t(10), &v) ||
                __builtin_add_overflow(v, std::uint64_t(text_[pos_] - '0'), &v) || v > max)
                fail("number too large");
            ++pos_;
        }
        if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("expected an integer");
        return v;
    }
    /// '[' [uint (',' uint)*] ']' with at most `max_count` elements; returns the count.
    std::size_t parse_uint_array(std::uint64_t* out, std::size_t max_count, std::uint64_t max,
                                 std::string_view what) {
        expect('[');
        skip_ws();
        std::size_t n = 0;
        if (peek() == ']') {
            ++pos_;
            return 0;
        }
        while (true) {
            skip_ws();
            if (n == max_count)
                fail("more than " + std::to_string(max_count) + " values in " + std::string(what));
            out[n++] = parse_uint(max);
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            expect(']');
            return n;
        }
    }
    void parse_metadata(safetensors_metadata& metadata) {
        expect('{');
        skip_ws();
        if (peek() == '}') {
            ++pos_;
            return;
        }
        while (true) {
            skip_ws();
            std::string key = parse_string();
            skip_ws();
            expect(':');
            skip_ws();
            if (peek() != '"') fail("__metadata__ values must be strings");
            std::string value = parse_string();
            if (!metadata.emplace(std::move(key), std::move(value)).second)
                fail("duplicate key in __metadata__");
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            expect('}');
            return;
        }
    }
    safetensors_entry parse_entry(std::string name) {
        safetensors_entry e;
        e.name = std::move(name);
        bool seen_dtype = false, seen_shape = false, seen_offsets = false;
        if (peek() != '{') fail("expected '{' for tensor '" + printable(e.name) + "'");
        ++pos_;
        skip_ws();
        if (peek() != '}') {
            while (true) {
                skip_ws();
                const std::string key = parse_string();
                skip_ws();
                expect(':');
                skip_ws();
                if (key == "dtype") {
                    once(seen_dtype, key);
                    const std::string d = parse_string();
                    const auto it =
                        std::find_if(st_dtypes.begin(), st_dtypes.end(),
                                     [&](const st_dtype_info& i) { return i.name == d; });
                    if (it == st_dtypes.end()) fail("unsupported dtype " + excerpt(d));
                    e.type = safetensors_dtype(it - st_dtypes.begin());
                } else if (key == "shape") {
                    once(seen_shape, key);
                    std::array<std::uint64_t, max_rank> dims{};
                    const std::size_t rank = parse_uint_array(
                        dims.data(), std::size_t(max_rank),
                        std::uint64_t(std::numeric_limits<index_t>::max()), "a shape");
                    std::array<index_t, max_rank> d{};
                    for (std::size_t i = 0; i < rank; ++i)
                        d[i] = index_t(dims[i]);
                    e.shape = extents::from({d.data(), rank});
                } else if (key == "data_offsets") {
                    once(seen_offsets, key);
                    std::array<std::uint64_t, 2> off{};
                    if (parse_uint_array(off.data(), 2, std::numeric_limits<std::uint64_t>::max(),
                                         "data_offsets") != 2)
                        fail("data_offsets must have two values");
                    e.begin = off[0];
                    e.end = off[1];
                } else {
                    fail("unexpected key " + excerpt(key) + " in tensor '" + printable(e.name) +
                         "' (expected dtype, shape, data_offsets)");
                }
                skip_ws();
                if (peek() == ',') {
                    ++pos_;
                    continue;
                }
                expect('}');
                break;
            }
        } else {
            ++pos_;
        }
        if (!seen_dtype || !seen_shape || !seen_offsets)
            fail(std::string("tensor '") + printable(e.name) + "' has no '" +
                 (!seen_dtype   ? "dtype"
                  : !seen_shape ? "shape"
                                : "data_offsets") +
                 "'");
        return e;
    }
    void once(bool& seen, std::string_view key) {
        if (seen) fail("duplicate key '" + std::string(key) + "'");
        seen = true;
    }
    static std::string printable(std::string_view s) {
        const std::string q = excerpt(s);
        return q.substr(1, q.size() - 2);
    }

    std::string_view text_;
    const std::string& path_;
    std::size_t pos_ = 0;
};

/// Quoted printable form of a tensor name for messages (control bytes shown as '?').
inline std::string quote_name(std::string_view name) {
    std::string q = excerpt(name);
    q.front() = '\'';
    q.back() = '\'';
    return q;
}

/// Checks every entry's byte count and that the ranges tile `[0, buffer_bytes)` exactly;
/// fills `by_name` with the entry indices sorted by name (no duplicates).
inline void validate_layout(const std::vector<safetensors_entry>& entries,
                            std::uint64_t buffer_bytes, const std::string& path,
                            std::vector<std::size_t>& by_name) {
    auto bad = [&](const std::string& why) {
        throw io_error(path, "corrupt safetensors file: " + why);
    };
    for (const auto& e : entries) {
        std::uint64_t nonzero = 1;
        bool empty = false;
        for (const index_t d : e.shape) {
            empty = empty || d == 0;
            if (__builtin_mul_overflow(nonzero, std::uint64_t(d == 0 ? 1 : d), &nonzero) ||
                nonzero > std::uint64_t(std::numeric_limits<index_t>::max()))
                bad("tensor " + quote_name(e.name) + " has shape " + e.shape.to_string() +
                    " whose element count overflows");
        }
        std::uint64_t nbytes = 0;
        if (__builtin_mul_overflow(empty ? 0 : nonzero,
                                   std::uint64_t(safetensors_dtype_size(e.type)), &nbytes))
            bad("tensor " + quote_name(e.name) + " has shape " + e.shape.to_string() +
                " whose byte count overflows");
        if (e.begin > e.end)
            bad("tensor " + quote_name(e.name) + " has data_offsets [" + std::to_string(e.begin) +
                ", " + std::to_string(e.end) + "] with begin > end");
        if (e.end - e.begin != nbytes)
            bad("tensor " + quote_name(e.name) + " of shape " + e.shape.to_string() +
                " and dtype " + std::string(safetensors_dtype_name(e.type)) + " needs " +
                std::to_string(nbytes) + " bytes, its data_offsets [" + std::to_string(e.begin) +
                ", " + std::to_string(e.end) + "] span " + std::to_string(e.end - e.begin));
    }
    std::vector<std::size_t> order(entries.size());
    for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return std::pair(entries[a].begin, entries[a].end) <
               std::pair(entries[b].begin, entries[b].end);
    });
    std::uint64_t expected = 0;
    const safetensors_entry* prev = nullptr;
    for (const std::size_t i : order) {
        const auto& e = entries[i];
        if (e.begin < expected)
            bad("tensors " + quote_name(prev->name) + " and " + quote_name(e.name) +
                " overlap in the byte buffer");
        if (e.begin > expected)
            bad("hole of " + std::to_string(e.begin - expected) + " bytes in the byte buffer " +
                (prev ? "after tensor " + quote_name(prev->name) : std::string("at its start")) +
                " (before " + quote_name(e.name) + ")");
        expected = e.end;
        prev = &e;
    }
    if (expected > buffer_bytes)
        bad("tensor " + quote_name(prev->name) + " ends at byte " + std::to_string(expected) +
            " of the byte buffer, past its end (" + std::to_string(buffer_bytes) + " bytes)");
    if (expected < buffer_bytes)
        bad("the tensors cover " + std::to_string(expected) + " bytes but the byte buffer has " +
            std::to_string(buffer_bytes) + " (trailing bytes)");
    by_name = std::move(order);
    std::sort(by_name.begin(), by_name.end(),
              [&](std::size_t a, std::size_t b) { return entries[a].name < entries[b].name; });
    for (std::size_t k = 1; k < by_name.size(); ++k)
        if (entries[by_name[k]].name == entries[by_name[k - 1]].name)
            bad("duplicate tensor name " + quote_name(entries[by_name[k]].name));
}

/// True when `read<T>` accepts stored dtype `From`: the same type, or both floating
/// (f64, f32, f16, bf16).
template <class From, class To>
inline constexpr bool st_convertible =
    std::is_same_v<From, To> ||
    ((std::is_floating_point_v<From> || std::is_same_v<From, half> ||
      std::is_same_v<From, bf16>)&&(std::is_floating_point_v<To> || std::is_same_v<To, half> ||
                                    std::is_same_v<To, bf16>));

}  // namespace detail

/// A parsed and validated safetensors file (or in-memory image of one).
///
///     auto f = io::safetensors_file::open("model.safetensors");
///     for (const auto& e : f.entries()) ...;           // name, dtype, shape, offsets
///     tensor<float> w = f.read<float>("0.weight");     // converts F64/F16/BF16 to f32
///
/// `open` keeps the file open and reads tensors on demand with bounded reads; `parse` views
/// caller-owned bytes (which must outlive the object). Reading is not thread-safe.
class safetensors_file {
public:
    /// Opens, reads the header of and validates `path` (the byte buffer is not read).
    /// Throws `io_error` (module() = path) for a missing, truncated or malformed file.
    static safetensors_file open(const std::filesystem::path& path) {
        safetensors_file f;
        f.path_ = path.string();
        const std::uint64_t size = detail::open_for_reading(f.in_, f.path_);
        f.init(size, [&](std::uint64_t off, std::uint64_t n, char* dst) {
            f.in_.seekg(std::streamoff(off));
            detail::read_exact(f.in_, dst, n, f.path_, "safetensors header");
        });
        return f;
    }

    /// Parses and validates the complete file image `bytes` (header and byte buffer);
    /// `name` is used as `module()` in errors. `bytes` must outlive the returned object.
    static safetensors_file parse(std::span<const std::byte> bytes, std::string name = "<memory>") {
        safetensors_file f;
        f.path_ = std::move(name);
        f.mem_ = bytes;
        f.in_memory_ = true;
        f.init(bytes.size(), [&](std::uint64_t off, std::uint64_t n, char* dst) {
            if (n) std::memcpy(dst, bytes.data() + off, n);
        });
        return f;
    }

    /// File path or the name given to `parse`.
    const std::string& path() const noexcept { return path_; }
    /// Every tensor, in header order.
    std::span<const safetensors_entry> entries() const noexcept { return entries_; }
    /// The `__metadata__` map (empty when absent).
    const safetensors_metadata& metadata() const noexcept { return metadata_; }
    /// Byte offset of the byte buffer in the file (8 + header length).
    std::uint64_t data_offset() const noexcept { return data_offset_; }

    /// The entry called `name`, or nullptr.
    const safetensors_entry* find(std::string_view name) const noexcept {
        const auto it = std::lower_bound(
            by_name_.begin(), by_name_.end(), name,
            [&](std::size_t i, std::string_view n) { return entries_[i].name < n; });
        return it != by_name_.end() && entries_[*it].name == name ? &entries_[*it] : nullptr;
    }

    /// Reads tensor `name` into a new tensor with its shape. `T` must be the stored dtype, or
    /// both must be floating (F64, F32, F16, BF16): values are then converted, rounding to
    /// nearest even (F64 -> F16/BF16 goes through f32). Throws `io_error` for an unknown name,
    /// an unconvertible dtype, BOOL bytes other than 0/1 or a read failure.
    template <element_type T>
    tensor<T> read(std::string_view name) const {
        const safetensors_entry* e = find(name);
        if (!e) throw io_error(path_, "no tensor called " + detail::quote_name(name));
        tensor<T> t(e->shape);
        read_into(*e, t.ref());
        return t;
    }

    /// Reads entry `e` (of this file) into `dst`, which must be a contiguous host view of
    /// extents `e.shape` (else `shape_error`); dtype rules as `read`.
    template <element_type T>
    void read_into(const safetensors_entry& e, tensor_ref<T> dst) const {
        static_assert(!std::is_const_v<T>, "read_into needs a writable view");
        if (dst.extents() != e.shape)
            throw shape_error(path_, "safetensors tensor " + detail::quote_name(e.name),
                              "shape " + e.shape.to_string(), "shape " + dst.extents().to_string());
        if (!dst.is_contiguous() || dst.space() != memory_space::host ||
            (dst.numel() > 0 && dst.data() == nullptr))
            throw shape_error(path_, "safetensors read_into destination", "a contiguous host view",
                              dst.describe());
        const std::optional<dtype> stored = to_dtype(e.type);
        auto mismatch = [&] {
            return io_error(path_, "dtype mismatch: tensor " + detail::quote_name(e.name) + " is " +
                                       std::string(safetensors_dtype_name(e.type)) +
                                       ", cannot be read as " +
                                       std::string(dtype_name(dtype_of<T>)));
        };
        if (!stored) throw mismatch();
        detail::visit_dtype(*stored, [&]<class U>() {
            if constexpr (!detail::st_convertible<U, T>) {
                throw mismatch();
            } else if constexpr (std::is_same_v<U, T>) {
                read_raw(e, dst.data());
            } else {
                tensor<U> tmp(e.shape);
                read_raw(e, tmp.data());
                for (index_t i = 0; i < tmp.numel(); ++i)
                    dst.data()[i] = detail::convert_element<T>(tmp[i]);
            }
        });
    }

private:
    safetensors_file() = default;

    template <class ReadAt>
    void init(std::uint64_t size, ReadAt&& read_at) {
        if (size < 8)
            throw io_error(path_, "truncated safetensors file: " + std::to_string(size) +
                                      " bytes, shorter than the 8-byte header length");
        std::array<char, 8> len{};
        read_at(0, 8, len.data());
        std::uint64_t n = 0;
        for (std::size_t i = 0; i < 8; ++i)
            n |= std::uint64_t(static_cast<unsigned char>(len[i])) << (8 * i);
        if (n > safetensors_max_header_bytes)
            throw io_error(path_, "malformed safetensors file: header length " + std::to_string(n) +
                                      " exceeds the limit of " +
                                      std::to_string(safetensors_max_header_bytes) + " bytes");
        if (n > size - 8)
            throw io_error(path_, "truncated safetensors file: the header claims " +
                                      std::to_string(n) + " bytes but the file has " +
                                      std::to_string(size) + " bytes");
        std::string text(std::size_t(n), '\0');
        read_at(8, n, text.data());
        detail::st_header_parser(text, path_).parse(entries_, metadata_);
        data_offset_ = 8 + n;
        detail::validate_layout(entries_, size - data_offset_, path_, by_name_);
    }

    /// Copies the stored bytes of `e` to `dst` (sized for them), little-endian to native,
    /// checking BOOL bytes.
    template <class U>
    void read_raw(const safetensors_entry& e, U* dst) const {
        const std::uint64_t n = e.end - e.begin;
        if (n == 0) return;
        if (in_memory_) {
            if (e.end > mem_.size() - data_offset_)
                throw io_error(path_, "tensor " + detail::quote_name(e.name) + " is out of bounds");
            std::memcpy(static_cast<void*>(dst), mem_.data() + data_offset_ + e.begin, n);
        } else {
            in_.clear();
            in_.seekg(std::streamoff(data_offset_ + e.begin));
            detail::read_exact(in_, reinterpret_cast<char*>(dst), n, path_, "tensor data");
        }
        auto* bytes = reinterpret_cast<unsigned char*>(dst);
        if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1)
            detail::byte_swap(bytes, n / sizeof(U), sizeof(U));
        if constexpr (std::is_same_v<U, bool>) {
            for (std::uint64_t i = 0; i < n; ++i)
                if (bytes[i] > 1)
                    throw io_error(path_, "corrupt BOOL tensor " + detail::quote_name(e.name) +
                                              ": byte " + std::to_string(bytes[i]) +
                                              " at element " + std::to_string(i));
        }
    }

    std::string path_;
    mutable std::ifstream in_;
    std::span<const std::byte> mem_{};
    bool in_memory_ = false;
    std::uint64_t data_offset_ = 0;
    std::vector<safetensors_entry> entries_;
    std::vector<std::size_t> by_name_;
    safetensors_metadata metadata_;
};

/// One tensor to save: its name and a host view of any element type and strides.
struct named_tensor {
    std::string name;
    any_tensor_ref tensor;
};

namespace detail {

/// `s` as a JSON string literal (quotes, backslash and control characters escaped).
inline std::string json_string(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string r = "\"";
    for (const char c : s) {
        const unsigned char u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            r += '\\';
            r += c;
        } else if (u < 0x20) {
            r += "\\u00";
            r += hex[u >> 4];
            r += hex[u & 15];
        } else {
            r += c;
        }
    }
    return r + "\"";
}

/// Writes a safetensors image of `tensors` and `metadata` through `sink(const char*, size)`.
/// Tensors are laid out in order of decreasing item size (stable, so the caller's order is
/// kept within a size), which keeps every tensor aligned to its item size given the header
/// padding to 8 bytes, as the reference writer does.
template <class Sink>
void write_safetensors(Sink&& sink, std::span<const named_tensor> tensors,
                       const safetensors_metadata& metadata, const std::string& path) {
    std::vector<std::size_t> order(tensors.size());
    for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return dtype_size(tensors[a].tensor.type()) > dtype_size(tensors[b].tensor.type());
    });
    std::vector<std::string_view> names;
    for (const auto& t : tensors) {
        if (utf8_invalid_at(t.name) != std::string_view::npos)
            throw io_error(
                path, "cannot save tensor " + quote_name(t.name) + ": its name is not valid UTF-8");
        if (t.name == "__metadata__")
            throw io_error(path, "cannot save a tensor called '__metadata__' (reserved)");
        if (t.tensor.space() != memory_space::host)
            throw io_error(path, "cannot save tensor " + quote_name(t.name) +
                                     ": it is a device view; copy it to host memory first");
        if (t.tensor.extents().numel() > 0 && t.tensor.data() == nullptr)
            throw io_error(path, "cannot save tensor " + quote_name(t.name) + ": null data");
        names.push_back(t.name);
    }
    std::sort(names.begin(), names.end());
    if (const auto d = std::adjacent_find(names.begin(), names.end()); d != names.end())
        throw io_error(path, "cannot save two tensors called " + quote_name(*d));
    for (const auto& [k, v] : metadata)
        if (utf8_invalid_at(k) != std::string_view::npos ||
            utf8_invalid_at(v) != std::string_view::npos)
            throw io_error(path,
                           "cannot save __metadata__ entry " + quote_name(k) + ": not valid UTF-8");

    std::string h = "{";
    if (!metadata.empty()) {
        h += "\"__metadata__\":{";
        for (const auto& [k, v] : metadata)
            h += json_string(k) + ":" + json_string(v) + ",";
        h.back() = '}';
        h += ',';
    }
    std::uint64_t offset = 0;
    for (const std::size_t i : order) {
        const any_tensor_ref& t = tensors[i].tensor;
        const std::uint64_t nbytes = std::uint64_t(t.extents().numel()) * dtype_size(t.type());
        h += json_string(tensors[i].name) + ":{\"dtype\":\"" +
             std::string(safetensors_dtype_name(to_safetensors_dtype(t.type()))) + "\",\"shape\":[";
        for (int a = 0; a < t.extents().rank(); ++a) {
            if (a) h += ',';
            h += std::to_string(t.extents()[a]);  // appended separately: GCC 12 -Wrestrict bug
        }
        h += "],\"data_offsets\":[" + std::to_string(offset) + "," +
             std::to_string(offset + nbytes) + "]},";
        offset += nbytes;
    }
    if (h.size() > 1)
        h.back() = '}';
    else
        h += '}';
    h.append((8 - h.size() % 8) % 8, ' ');
    std::array<char, 8> len{};
    for (std::size_t i = 0; i < 8; ++i)
        len[i] = char((std::uint64_t(h.size()) >> (8 * i)) & 0xffu);
    sink(len.data(), len.size());
    sink(h.data(), h.size());
    for (const std::size_t i : order) {
        const any_tensor_ref& t = tensors[i].tensor;
        visit_dtype(t.type(), [&]<class U>() {
            const tensor_ref<const U> v = t.as<U>();
            const std::size_t nbytes = std::size_t(v.numel()) * sizeof(U);
            if (nbytes == 0) return;
            if (v.is_contiguous() && std::endian::native == std::endian::little) {
                sink(reinterpret_cast<const char*>(v.data()), nbytes);
                return;
            }
            tensor<U> c(v.extents());
            copy_row_major(v, c.data());
            if constexpr (std::endian::native == std::endian::big && sizeof(U) > 1)
                byte_swap(reinterpret_cast<unsigned char*>(c.data()), std::uint64_t(c.numel()),
                          sizeof(U));
            sink(reinterpret_cast<const char*>(c.data()), nbytes);
        });
    }
}

}  // namespace detail

/// The complete safetensors image of `tensors` (see `save_safetensors`), in memory.
inline std::vector<std::byte> serialize_safetensors(std::span<const named_tensor> tensors,
                                                    const safetensors_metadata& metadata = {},
                                                    const std::string& name = "<memory>") {
    std::vector<std::byte> out;
    detail::write_safetensors(
        [&](const char* p, std::size_t n) {
            const auto* b = reinterpret_cast<const std::byte*>(p);
            out.insert(out.end(), b, b + n);
        },
        tensors, metadata, name);
    return out;
}

/// Writes `tensors` (host views of any dtype and strides; names unique, valid UTF-8, not
/// "__metadata__") and the string map `metadata` to `path` as a safetensors file that
/// `safetensors.torch.load_file` reads: header padded with spaces to a multiple of 8 bytes,
/// tensors in C order, little-endian, laid out by decreasing item size. The file is written
/// to `path` + ".tmp" and renamed over `path` once complete, so a failed save leaves an
/// existing file intact. Throws `io_error` (module() = path).
inline void save_safetensors(const std::filesystem::path& path,
                             std::span<const named_tensor> tensors,
                             const safetensors_metadata& metadata = {}) {
    const std::string p = path.string();
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw io_error(p, "cannot open file for writing");
        try {
            detail::write_safetensors(
                [&](const char* d, std::size_t n) { out.write(d, std::streamsize(n)); }, tensors,
                metadata, p);
        } catch (...) {
            out.close();
            std::error_code ec;
            std::filesystem::remove(tmp, ec);
            throw;
        }
        out.close();
        if (!out) {
            std::error_code ec;
            std::filesystem::remove(tmp, ec);
            throw io_error(p, "write failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        throw io_error(p, "cannot replace the file: " + ec.message());
    }
}

}  // namespace mmfuse::inline v0::io
