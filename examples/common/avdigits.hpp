#pragma once
/// \file
/// Example-side loader for the audio-visual digits (examples/data/avdigits): spoken digits
/// from the Free Spoken Digit Dataset as log-mel spectrograms, each paired with an 8x8
/// handwritten digit of the same label (like MultiBench's AV-MNIST). Made by
/// tools/avdigits/make_avdigits; the format, settings and licences (the audio features are
/// CC BY-SA 4.0) are in examples/data/avdigits/README.md. Read with zlib (`gzopen` also reads
/// an uncompressed file). Not part of the library.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace examples {

/// FSDD's speakers, in the order of `avdigits_split::speakers` ids 0..5.
inline constexpr std::array<std::string_view, 6> avdigits_speaker_names = {
    "george", "jackson", "lucas", "nicolas", "theo", "yweweler"};

/// One split of the audio-visual digits; example i has
///   images  [64 i, 64 i + 64)            the 8x8 image, row-major, pixel / 16 in [0, 1]
///   logmel  [T M i, T M (i + 1))         (T, M) frame-major: ln(mel energy + 1e-6),
///                                        dequantised from u8 (step (hi - lo) / 255)
///   labels[i]                            the digit 0..9 (spoken and written)
///   speakers[i]                          0..5, see avdigits_speaker_names
///   recordings[i]                        FSDD recording index 0..49 (test: 0..4)
///   image_rows[i]                        the image's row in digits.csv (0-based)
struct avdigits_split {
    static constexpr int image_side = 8;
    static constexpr int pixels_per_image = image_side * image_side;
    static constexpr int classes = 10;
    std::size_t frames = 0;  // T
    std::size_t mels = 0;    // M
    int sample_rate = 0, window = 0, hop = 0, n_fft = 0;  // feature settings, in samples
    float logmel_lo = 0, logmel_hi = 0;  // the quantisation range (shared by both splits)
    std::vector<float> images;
    std::vector<float> logmel;
    std::vector<std::int64_t> labels;
    std::vector<int> speakers;
    std::vector<int> recordings;
    std::vector<int> image_rows;
    std::size_t size() const noexcept { return labels.size(); }
    std::size_t features_per_example() const noexcept { return frames * mels; }
};

namespace detail {
inline std::uint32_t avdigits_u32(const unsigned char* p) {
    return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
           (std::uint32_t(p[3]) << 24);
}
inline float avdigits_f32(const unsigned char* p) {
    const std::uint32_t u = avdigits_u32(p);
    float f = 0;
    static_assert(sizeof f == sizeof u);
    std::memcpy(&f, &u, sizeof f);
    return f;
}
}  // namespace detail

/// Reads `dir`/`split`.bin.gz, `split` being "train" (2,700 examples) or "test" (300).
/// Never reads past what the file holds: a missing, truncated, oversized or corrupt file (bad
/// magic, version, header field, gzip stream, CRC-32 of the records, or a field out of range)
/// throws std::runtime_error naming the file and, for a size mismatch, the expected and the
/// actual number of (decompressed) bytes. An unknown `split` throws std::invalid_argument.
inline avdigits_split load_avdigits(const std::filesystem::path& dir, std::string_view split) {
    std::uint32_t split_id = 0;
    if (split == "train") split_id = 0;
    else if (split == "test") split_id = 1;
    else
        throw std::invalid_argument("avdigits: split must be \"train\" or \"test\", got \"" +
                                    std::string(split) + "\"");
    const std::filesystem::path path = dir / (std::string(split) + ".bin.gz");
    const std::string name = path.string();
    const auto fail = [&](const std::string& what) {
        return std::runtime_error("avdigits: " + name + ": " + what);
    };

    gzFile f = gzopen(name.c_str(), "rb");
    if (f == nullptr)
        throw std::runtime_error("avdigits: cannot open " + name +
                                 " (pass --data DIR with avdigits/" + std::string(split) +
                                 ".bin.gz)");
    // Reads up to `n` bytes into `out`; returns how many; throws on a zlib error.
    const auto read = [&](unsigned char* out, std::size_t n) {
        std::size_t got = 0;
        while (got < n) {
            const unsigned chunk = unsigned(std::min<std::size_t>(n - got, 1u << 24));
            const int r = gzread(f, out + got, chunk);
            if (r < 0) {
                int code = 0;
                const std::string why = gzerror(f, &code);
                gzclose(f);
                throw fail("cannot decompress (" + why + ")");
            }
            if (r == 0) break;
            got += std::size_t(r);
        }
        return got;
    };

    constexpr std::size_t header_size = 64;
    unsigned char h[header_size];
    const std::size_t header_got = read(h, header_size);
    if (header_got < header_size) {
        gzclose(f);
        throw fail("truncated header: expected " + std::to_string(header_size) +
                   " bytes, got " + std::to_string(header_got));
    }
    if (std::memcmp(h, "AVDG", 4) != 0) {
        gzclose(f);
        throw fail("not an avdigits file (magic is not \"AVDG\")");
    }
    const std::uint32_t version = detail::avdigits_u32(h + 4), count = detail::avdigits_u32(h + 8),
                        frames = detail::avdigits_u32(h + 12), mels = detail::avdigits_u32(h + 16),
                        side = detail::avdigits_u32(h + 20), file_split = detail::avdigits_u32(h + 48),
                        record_size = detail::avdigits_u32(h + 56), crc = detail::avdigits_u32(h + 60);
    avdigits_split d;
    d.sample_rate = int(detail::avdigits_u32(h + 24) & 0x7fffffffu);
    d.window = int(detail::avdigits_u32(h + 28) & 0x7fffffffu);
    d.hop = int(detail::avdigits_u32(h + 32) & 0x7fffffffu);
    d.n_fft = int(detail::avdigits_u32(h + 36) & 0x7fffffffu);
    d.logmel_lo = detail::avdigits_f32(h + 40);
    d.logmel_hi = detail::avdigits_f32(h + 44);
    const auto header_fail = [&](const std::string& what) {
        gzclose(f);
        return fail("bad header: " + what);
    };
    if (version != 1) throw header_fail("version " + std::to_string(version) + ", expected 1");
    if (side != 8) throw header_fail("image side " + std::to_string(side) + ", expected 8");
    if (count == 0 || count > 1000000) throw header_fail("count " + std::to_string(count));
    if (frames == 0 || frames > 4096 || mels == 0 || mels > 1024)
        throw header_fail("frames x mels " + std::to_string(frames) + " x " + std::to_string(mels));
    if (file_split != split_id)
        throw header_fail("it holds split " + std::to_string(file_split) + ", expected " +
                          std::to_string(split_id) + " (" + std::string(split) + ")");
    const std::size_t feature_bytes = std::size_t(frames) * std::size_t(mels);
    if (record_size != 5 + 64 + feature_bytes)
        throw header_fail("record size " + std::to_string(record_size) + ", expected " +
                          std::to_string(5 + 64 + feature_bytes));
    if (!std::isfinite(d.logmel_lo) || !std::isfinite(d.logmel_hi) || !(d.logmel_lo < d.logmel_hi))
        throw header_fail("log-mel range [" + std::to_string(d.logmel_lo) + ", " +
                          std::to_string(d.logmel_hi) + "]");

    // Grown as bytes arrive, so a corrupt count cannot make it allocate more than the file holds.
    const std::size_t body_size = std::size_t(count) * std::size_t(record_size);  // < 2^43
    std::vector<unsigned char> body;
    std::size_t got = 0;
    while (got < body_size) {
        const std::size_t want = std::min<std::size_t>(body_size - got, std::size_t(1) << 22);
        body.resize(got + want);
        const std::size_t r = read(body.data() + got, want);
        got += r;
        if (r < want) break;
    }
    unsigned char extra = 0;
    const std::size_t trailing = got == body_size ? read(&extra, 1) : 0;  // also checks gzip CRC
    int zcode = Z_OK;
    const std::string zwhy = gzerror(f, &zcode);  // Z_BUF_ERROR: the gzip stream was cut short
    const bool gzipped = gzdirect(f) == 0;
    gzclose(f);
    if (got != body_size || trailing != 0) {
        std::string m = "size mismatch: expected ";
        m += std::to_string(header_size + body_size);
        m += " bytes (64-byte header + ";
        m += std::to_string(count);
        m += " records of ";
        m += std::to_string(record_size);
        m += " bytes), got ";
        m += got == body_size ? "more" : std::to_string(header_size + got);
        m += got == body_size ? "" : " (truncated)";
        if (zcode != Z_OK) m += "; zlib: " + zwhy;
        throw fail(m);
    }
    if (zcode != Z_OK) throw fail("gzip stream cut short or corrupt after the records (" + zwhy + ")");
    std::uint32_t actual_crc = std::uint32_t(crc32(0L, Z_NULL, 0));
    for (std::size_t at = 0; at < body_size; at += 1u << 24) {
        const std::size_t n = std::min<std::size_t>(body_size - at, 1u << 24);
        actual_crc = std::uint32_t(crc32(actual_crc, body.data() + at, uInt(n)));
    }
    if (actual_crc != crc) throw fail("corrupt records: CRC-32 mismatch");
    if (gzipped) {
        // zlib does not always report a gzip trailer that was cut off once all the data has
        // been read, so the trailer (CRC-32 and length of the decompressed bytes) is checked
        // here; this also refuses anything appended after the one gzip member.
        std::uint32_t whole_crc = std::uint32_t(crc32(0L, Z_NULL, 0));
        whole_crc = std::uint32_t(crc32(whole_crc, h, uInt(header_size)));
        for (std::size_t at = 0; at < body_size; at += 1u << 24)
            whole_crc = std::uint32_t(crc32(whole_crc, body.data() + at,
                                            uInt(std::min<std::size_t>(body_size - at, 1u << 24))));
        unsigned char trailer[8] = {};
        std::FILE* raw = std::fopen(name.c_str(), "rb");
        const bool have = raw != nullptr && std::fseek(raw, -8, SEEK_END) == 0 &&
                          std::fread(trailer, 1, 8, raw) == 8;
        if (raw != nullptr) std::fclose(raw);
        if (!have || detail::avdigits_u32(trailer) != whole_crc ||
            detail::avdigits_u32(trailer + 4) != std::uint32_t((header_size + body_size) & 0xffffffffu))
            throw fail("gzip trailer missing or wrong (file cut short or extended)");
    }

    d.frames = frames;
    d.mels = mels;
    const std::size_t n = count;
    d.images.resize(n * 64);
    d.logmel.resize(n * feature_bytes);
    d.labels.resize(n);
    d.speakers.resize(n);
    d.recordings.resize(n);
    d.image_rows.resize(n);
    const double lo = d.logmel_lo, step = (double(d.logmel_hi) - double(d.logmel_lo)) / 255.0;
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned char* r = body.data() + i * record_size;
        if (r[0] > 9 || r[1] >= avdigits_speaker_names.size() || r[2] > 49)
            throw fail("record " + std::to_string(i) + ": label " + std::to_string(r[0]) +
                       ", speaker " + std::to_string(r[1]) + ", recording " +
                       std::to_string(r[2]) + " (expected 0..9, 0..5, 0..49)");
        d.labels[i] = r[0];
        d.speakers[i] = r[1];
        d.recordings[i] = r[2];
        d.image_rows[i] = int(r[3]) | (int(r[4]) << 8);
        for (std::size_t p = 0; p < 64; ++p) {
            if (r[5 + p] > 16)
                throw fail("record " + std::to_string(i) + ": pixel " + std::to_string(p) +
                           " = " + std::to_string(r[5 + p]) + " (expected 0..16)");
            d.images[i * 64 + p] = float(r[5 + p]) / 16.0f;
        }
        const unsigned char* q = r + 5 + 64;
        float* out = d.logmel.data() + i * feature_bytes;
        for (std::size_t k = 0; k < feature_bytes; ++k) out[k] = float(lo + double(q[k]) * step);
    }
    return d;
}

/// Per-mel-band statistics of a split's log-mel over every frame of every example: the
/// normalisation the examples fit on the training split and apply to both.
struct logmel_band_stats {
    std::vector<double> mean, variance;  // (M) each, biased variance
};

inline logmel_band_stats band_stats(const avdigits_split& s) {
    const std::size_t M = s.mels, rows = s.size() * s.frames;
    logmel_band_stats st{std::vector<double>(M, 0.0), std::vector<double>(M, 0.0)};
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t m = 0; m < M; ++m) st.mean[m] += s.logmel[r * M + m];
    for (auto& v : st.mean) v /= double(rows);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t m = 0; m < M; ++m) {
            const double d = s.logmel[r * M + m] - st.mean[m];
            st.variance[m] += d * d;
        }
    for (auto& v : st.variance) v /= double(rows);
    return st;
}

/// s.logmel standardised per band with `st`: (x - mean_m) / sqrt(variance_m + 1e-8), (N, T, M).
/// Throws std::runtime_error when `st` has another number of bands than `s`.
inline std::vector<float> standardised_logmel(const avdigits_split& s, const logmel_band_stats& st) {
    const std::size_t M = s.mels;
    if (st.mean.size() != M || st.variance.size() != M)
        throw std::runtime_error("avdigits: band statistics for " + std::to_string(st.mean.size()) +
                                 " mel bands applied to a split with " + std::to_string(M));
    std::vector<float> out(s.logmel.size());
    for (std::size_t k = 0; k < s.logmel.size(); ++k) {
        const std::size_t m = k % M;
        out[k] = float((s.logmel[k] - st.mean[m]) / std::sqrt(st.variance[m] + 1e-8));
    }
    return out;
}

/// Both splits of `dir` (load_avdigits) with each log-mel standardised per band by the
/// training split's statistics, the normalisation every example applies:
///   train_audio, test_audio   (N, frames, mels) floats, standardised_logmel of each split.
/// Throws std::runtime_error when a split's log-mel is not `frames` x `mels` (the size the
/// examples' models are built for), and whatever load_avdigits throws.
struct standardised_avdigits {
    avdigits_split train, test;
    std::vector<float> train_audio, test_audio;
};

inline standardised_avdigits load_standardised_avdigits(const std::filesystem::path& dir,
                                                        std::size_t frames = 48,
                                                        std::size_t mels = 32) {
    standardised_avdigits d{load_avdigits(dir, "train"), load_avdigits(dir, "test"), {}, {}};
    for (const avdigits_split* s : {&d.train, &d.test})
        if (s->frames != frames || s->mels != mels)
            throw std::runtime_error("avdigits: expected " + std::to_string(frames) +
                                     " frames x " + std::to_string(mels) + " mel bands, got " +
                                     std::to_string(s->frames) + " x " +
                                     std::to_string(s->mels));
    const logmel_band_stats stats = band_stats(d.train);
    d.train_audio = standardised_logmel(d.train, stats);
    d.test_audio = standardised_logmel(d.test, stats);
    return d;
}

}  // namespace examples
