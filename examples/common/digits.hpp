#pragma once
/// \file
/// Example-side loader for the 8x8 handwritten digits (examples/data/digits, UCI "Optical
/// Recognition of Handwritten Digits" as shipped by scikit-learn): a gzip-compressed CSV,
/// one row per image, 64 pixel values 0..16 (row-major) then the label 0..9. Read with
/// zlib (`gzopen` also reads an uncompressed file). Not part of the library.

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

/// The digits: `pixels` holds `size()` images of 64 values in 0..16 (row-major 8x8, image
/// i at [64 i, 64 i + 64)), `labels` their classes 0..9.
struct digits_dataset {
    static constexpr int side = 8;
    static constexpr int pixels_per_image = side * side;
    static constexpr int classes = 10;
    std::vector<float> pixels;
    std::vector<int> labels;
    std::size_t size() const noexcept { return labels.size(); }
};

/// Reads `path` (gzip or plain CSV). Throws std::runtime_error naming the file, the line and
/// what was wrong: a missing file, a row without 65 integer fields, a pixel outside 0..16
/// or a label outside 0..9.
inline digits_dataset load_digits(const std::filesystem::path& path) {
    gzFile f = gzopen(path.string().c_str(), "rb");
    if (f == nullptr)
        throw std::runtime_error("digits: cannot open " + path.string() +
                                 " (pass --data DIR with digits.csv.gz)");
    std::string text;
    char buffer[1 << 16];
    for (;;) {
        const int n = gzread(f, buffer, sizeof buffer);
        if (n < 0) {
            int code = 0;
            std::string why = gzerror(f, &code);
            gzclose(f);
            throw std::runtime_error("digits: cannot decompress " + path.string() + ": " + why);
        }
        if (n == 0) break;
        text.append(buffer, std::size_t(n));
    }
    gzclose(f);

    digits_dataset d;
    std::size_t line = 0, pos = 0;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::string row = text.substr(pos, end - pos);
        pos = end + 1;
        ++line;
        if (!row.empty() && row.back() == '\r') row.pop_back();
        if (row.empty()) continue;
        const auto fail = [&](const std::string& what) {
            std::string m = "digits: ";
            m += path.string();
            m += " line ";
            m += std::to_string(line);
            m += ": expected 64 pixels in 0..16 and a label in 0..9, got ";
            m += what;
            return std::runtime_error(m);
        };
        std::vector<int> fields;
        std::size_t at = 0;
        while (at <= row.size()) {
            std::size_t comma = row.find(',', at);
            if (comma == std::string::npos) comma = row.size();
            const std::string field = row.substr(at, comma - at);
            std::size_t used = 0;
            int v = 0;
            try {
                v = std::stoi(field, &used);
            } catch (const std::exception&) {
                throw fail("the field '" + field + "'");
            }
            if (used != field.size()) throw fail("the field '" + field + "'");
            fields.push_back(v);
            at = comma + 1;
        }
        if (fields.size() != std::size_t(digits_dataset::pixels_per_image + 1))
            throw fail(std::to_string(fields.size()) + " fields");
        for (int k = 0; k < digits_dataset::pixels_per_image; ++k) {
            if (fields[std::size_t(k)] < 0 || fields[std::size_t(k)] > 16)
                throw fail("pixel " + std::to_string(k) + " = " +
                           std::to_string(fields[std::size_t(k)]));
            d.pixels.push_back(float(fields[std::size_t(k)]));
        }
        const int label = fields.back();
        if (label < 0 || label >= digits_dataset::classes)
            throw fail("label " + std::to_string(label));
        d.labels.push_back(label);
    }
    if (d.size() == 0) throw std::runtime_error("digits: " + path.string() + " holds no rows");
    return d;
}

/// A stratified split of image indices: from every class, round(test_fraction * count) of
/// its images (chosen by a std::mt19937 seeded with `seed`) go to `test`, the rest to
/// `train`. Both lists are in ascending index order.
struct digits_split {
    std::vector<std::size_t> train, test;
};
inline digits_split split_digits(const digits_dataset& d, double test_fraction,
                                 std::uint32_t seed) {
    std::mt19937 rng(seed);
    digits_split s;
    for (int c = 0; c < digits_dataset::classes; ++c) {
        std::vector<std::size_t> members;
        for (std::size_t i = 0; i < d.size(); ++i)
            if (d.labels[i] == c) members.push_back(i);
        std::shuffle(members.begin(), members.end(), rng);
        const auto n_test = std::size_t(test_fraction * double(members.size()) + 0.5);
        s.test.insert(s.test.end(), members.begin(), members.begin() + std::ptrdiff_t(n_test));
        s.train.insert(s.train.end(), members.begin() + std::ptrdiff_t(n_test), members.end());
    }
    std::sort(s.train.begin(), s.train.end());
    std::sort(s.test.begin(), s.test.end());
    return s;
}

}  // namespace examples
