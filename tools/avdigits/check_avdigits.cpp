/// \file
/// check_avdigits: checks examples/data/avdigits against its sources and the loader's error
/// handling. Not a ctest test (it needs ../shared/data); built and run by hand:
///
///   g++ -std=c++20 -O2 -isystem /usr/include/eigen3 -I examples
///       tools/avdigits/check_avdigits.cpp -lsndfile -lz -o /tmp/check_avdigits
///   /tmp/check_avdigits examples/data/avdigits /work/shared/data
///
/// Checks: counts (2,700 / 300), label, speaker and (speaker, digit) balance, every FSDD
/// recording present once in the right split, images of the right label, equal to their
/// digits.csv row, and disjoint between the splits; features finite, inside the header's
/// range and equal (within half a quantisation step) to a recomputation from the wav files
/// for every recording; and that truncated, corrupt or mislabelled files throw a
/// std::runtime_error that names the file.

#include <sndfile.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "common/avdigits.hpp"
#include "common/digits.hpp"
#include "logmel.hpp"

namespace fs = std::filesystem;

static int failures = 0;
#define CHECK(cond, what)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            ++failures;                                                        \
            std::cerr << "FAIL " << __LINE__ << ": " << what << '\n';          \
        }                                                                      \
    } while (0)

static std::vector<float> read_wav(const fs::path& p) {
    SF_INFO info{};
    SNDFILE* f = sf_open(p.string().c_str(), SFM_READ, &info);
    if (!f) throw std::runtime_error("cannot open " + p.string());
    std::vector<float> s(static_cast<std::size_t>(info.frames));
    sf_readf_float(f, s.data(), info.frames);
    sf_close(f);
    return s;
}

static std::string gunzip(const fs::path& p) {
    gzFile f = gzopen(p.string().c_str(), "rb");
    std::string s;
    char b[1 << 16];
    int n;
    while ((n = gzread(f, b, sizeof b)) > 0) s.append(b, std::size_t(n));
    gzclose(f);
    return s;
}
static void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

// Expects load_avdigits(dir, split) to throw std::runtime_error mentioning the file.
static void expect_throw(const fs::path& dir, const char* split, const char* what) {
    try {
        (void)examples::load_avdigits(dir, split);
        ++failures;
        std::cerr << "FAIL: " << what << " did not throw\n";
    } catch (const std::runtime_error& e) {
        const std::string m = e.what();
        const bool names = m.find((dir / (std::string(split) + ".bin.gz")).string()) != std::string::npos;
        CHECK(names, what << ": message does not name the file: " << m);
        std::cout << "  " << what << " -> " << m << '\n';
    }
}

int main(int argc, char** argv) try {
    if (argc != 3) {
        std::cerr << "usage: check_avdigits AVDIGITS_DIR SHARED_DATA_DIR\n";
        return 2;
    }
    const fs::path dir = argv[1], data = argv[2];
    const auto digits = examples::load_digits(data / "digits" / "digits.csv.gz");
    const auto train = examples::load_avdigits(dir, "train");
    const auto test = examples::load_avdigits(dir, "test");
    CHECK(train.size() == 2700, "train count " << train.size());
    CHECK(test.size() == 300, "test count " << test.size());

    avdigits_tool::logmel_settings s;
    s.sample_rate = train.sample_rate;
    s.window = train.window;
    s.hop = train.hop;
    s.n_fft = train.n_fft;
    s.mels = int(train.mels);
    s.frames = int(train.frames);
    const auto filters = avdigits_tool::mel_filterbank(s);
    const double step = (double(train.logmel_hi) - double(train.logmel_lo)) / 255.0;
    CHECK(train.logmel_lo == test.logmel_lo && train.logmel_hi == test.logmel_hi,
          "the splits' quantisation ranges differ");

    std::set<std::tuple<int, int, int>> seen;
    std::set<int> train_rows, test_rows;
    double worst = 0;
    for (int which = 0; which < 2; ++which) {
        const auto& d = which == 0 ? train : test;
        int per_label[10] = {}, per_speaker[6] = {}, per_cell[6][10] = {};
        for (std::size_t i = 0; i < d.size(); ++i) {
            const int y = int(d.labels[i]), sp = d.speakers[i], idx = d.recordings[i];
            ++per_label[y];
            ++per_speaker[sp];
            ++per_cell[sp][y];
            CHECK((idx < 5) == (which == 1), "recording index " << idx << " in the wrong split");
            CHECK(seen.insert({y, sp, idx}).second, "duplicate recording");
            const int row = d.image_rows[i];
            CHECK(row >= 0 && std::size_t(row) < digits.size(), "image row " << row);
            CHECK(digits.labels[std::size_t(row)] == y, "image label mismatch at " << i);
            for (int p = 0; p < 64; ++p)
                CHECK(std::abs(d.images[i * 64 + std::size_t(p)] -
                               digits.pixels[std::size_t(row) * 64 + std::size_t(p)] / 16.0f) < 1e-7f,
                      "pixel mismatch at " << i);
            (which == 0 ? train_rows : test_rows).insert(row);
            // Recompute this recording's features.
            const fs::path wav = data / "fsdd" / "recordings" /
                                 (std::to_string(y) + "_" +
                                  std::string(examples::avdigits_speaker_names[std::size_t(sp)]) +
                                  "_" + std::to_string(idx) + ".wav");
            const auto ref = avdigits_tool::logmel(read_wav(wav), s, filters);
            const float* got = d.logmel.data() + i * d.features_per_example();
            for (std::size_t k = 0; k < ref.size(); ++k) {
                CHECK(std::isfinite(got[k]) && got[k] >= d.logmel_lo - 1e-4f &&
                          got[k] <= d.logmel_hi + 1e-4f,
                      "feature out of range");
                worst = std::max(worst, std::abs(double(got[k]) - double(ref[k])));
            }
        }
        const int n_label = which == 0 ? 270 : 30, n_speaker = which == 0 ? 450 : 50;
        for (int y = 0; y < 10; ++y) CHECK(per_label[y] == n_label, "label " << y << ": " << per_label[y]);
        for (int sp = 0; sp < 6; ++sp) {
            CHECK(per_speaker[sp] == n_speaker, "speaker " << sp << ": " << per_speaker[sp]);
            for (int y = 0; y < 10; ++y)
                CHECK(per_cell[sp][y] == n_speaker / 10, "cell " << sp << "," << y);
        }
    }
    CHECK(seen.size() == 3000, "distinct recordings " << seen.size());
    std::size_t shared = 0;
    for (int r : test_rows) shared += train_rows.count(r);
    CHECK(shared == 0, shared << " images in both splits");
    CHECK(worst <= step / 2 + 1e-4, "max |stored - recomputed| " << worst << " > step/2 " << step / 2);
    std::cout << "counts 2700/300 ok; distinct images train " << train_rows.size() << ", test "
              << test_rows.size() << ", shared " << shared << "; T=" << train.frames
              << " M=" << train.mels << " range [" << train.logmel_lo << ", " << train.logmel_hi
              << "]; max |stored - recomputed| = " << worst << " (half step " << step / 2 << ")\n";

    // ---- error handling ----------------------------------------------------------------
    const fs::path bad = fs::temp_directory_path() / "check_avdigits_bad";
    fs::create_directories(bad);
    const std::string raw = gunzip(dir / "test.bin.gz");
    const std::string gz = [&] {
        std::ifstream in(dir / "test.bin.gz", std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }();
    const fs::path target = bad / "test.bin.gz";
    write_file(target, raw);  // plain (gzopen reads it too)
    {
        const auto plain = examples::load_avdigits(bad, "test");
        CHECK(plain.size() == 300 && plain.logmel == test.logmel, "plain copy differs");
    }
    write_file(target, raw.substr(0, raw.size() - 1000));
    expect_throw(bad, "test", "plain, truncated body");
    write_file(target, raw.substr(0, 40));
    expect_throw(bad, "test", "plain, truncated header");
    write_file(target, raw + "x");
    expect_throw(bad, "test", "plain, trailing byte");
    {
        std::string c = raw;
        c[64 + 1605 * 7 + 100] ^= 0x10;
        write_file(target, c);
        expect_throw(bad, "test", "plain, flipped feature byte");
        c = raw;
        c[0] = 'X';
        write_file(target, c);
        expect_throw(bad, "test", "bad magic");
        c = raw;
        c[8] = char(0xff);  // count 300 -> 511 records (more than present)
        write_file(target, c);
        expect_throw(bad, "test", "count too large");
        c = raw;
        c[11] = char(0x0f);  // count ~ 2.5e8: refused before any allocation
        write_file(target, c);
        expect_throw(bad, "test", "count absurd");
        c = raw;
        c[64] = char(12);  // label 12, with the CRC fixed up so the range check is reached
        const auto crc = std::uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(c.data() + 64),
                                             uInt(c.size() - 64)));
        for (int b = 0; b < 4; ++b) c[60 + std::size_t(b)] = char((crc >> (8 * b)) & 0xffu);
        write_file(target, c);
        expect_throw(bad, "test", "label out of range");
    }
    write_file(target, gz.substr(0, gz.size() / 2));
    expect_throw(bad, "test", "gzip, truncated");
    write_file(target, gz.substr(0, gz.size() - 4));
    expect_throw(bad, "test", "gzip, trailer cut");
    write_file(target, gz + "junk");
    expect_throw(bad, "test", "gzip, bytes appended");
    {
        std::string c = gz;
        c[c.size() / 2] ^= 0x55;
        write_file(target, c);
        expect_throw(bad, "test", "gzip, flipped byte");
    }
    fs::copy_file(dir / "train.bin.gz", target, fs::copy_options::overwrite_existing);
    expect_throw(bad, "test", "train file named test");
    fs::remove(target);
    expect_throw(bad, "test", "missing file");
    fs::remove_all(bad);

    std::cout << (failures == 0 ? "all checks passed\n" : "FAILED\n");
    return failures == 0 ? 0 : 1;
} catch (const std::exception& e) {
    std::cerr << "check_avdigits: " << e.what() << '\n';
    return 1;
}
