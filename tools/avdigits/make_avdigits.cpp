/// \file
/// make_avdigits: builds examples/data/avdigits, an audio-visual digits data set (spoken digit
/// + handwritten digit of the same label, like MultiBench's AV-MNIST) small enough to ship
/// with the project, from the Free Spoken Digit Dataset and scikit-learn's 8x8 digits.
///
///   make_avdigits --data /work/shared/data --out examples/data/avdigits
///
/// reads DATA/fsdd/recordings/{digit}_{speaker}_{index}.wav (libsndfile; 8 kHz mono) and
/// DATA/digits/digits.csv.gz (zlib), and writes OUT/train.bin.gz and OUT/test.bin.gz.
/// The output is byte-for-byte deterministic. The feature settings are in logmel.hpp, the
/// pairing and the file format in examples/data/avdigits/README.md.
///
/// Split: recording indices 0-4 of every (speaker, digit) are the test set (300), 5-49 the
/// training set (2,700). Images: per label, the digits.csv rows are shuffled and
/// round(0.2 n) go to the test pool, the rest to the training pool, so no image appears in
/// both splits. Pairing: per split and label, the recordings (in speaker, index order) are
/// given pool[perm[i] mod pool_size] for a random permutation perm, so every image of the
/// pool is used floor or ceil(recordings / pool_size) times. All randomness comes from one
/// std::mt19937_64 seeded with 2026, consumed in that order, with a hand-written
/// Fisher-Yates shuffle and rejection sampling (std::shuffle and the std distributions are
/// implementation-defined, so they would not give the same data on every standard library).
///
/// Build (standalone): g++ -std=c++20 -O2 -I/usr/include/eigen3 make_avdigits.cpp
///                     -lsndfile -lz -o make_avdigits   (or tools/avdigits/CMakeLists.txt)

#include <sndfile.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../examples/common/digits.hpp"
#include "logmel.hpp"

namespace fs = std::filesystem;
using namespace avdigits_tool;

namespace {

constexpr std::array<const char*, 6> speakers = {"george", "jackson", "lucas",
                                                 "nicolas", "theo", "yweweler"};
constexpr int recordings_per_cell = 50;  // indices 0..49 per (speaker, digit)
constexpr int test_indices = 5;          // indices 0..4 are the test set
constexpr std::uint64_t seed = 2026;
constexpr double image_test_fraction = 0.2;
constexpr std::uint32_t format_version = 1;
constexpr std::size_t header_size = 64;

// Uniform integer in [0, bound) from the raw 64-bit stream, by rejection (portable).
std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t bound) {
    const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % bound + 1) % bound;
    // limit + 1 is the largest multiple of bound that fits in 2^64 (or 2^64 itself).
    for (;;) {
        const std::uint64_t x = rng();
        if (x <= limit) return x % bound;
    }
}

template <class T>
void fisher_yates(std::vector<T>& v, std::mt19937_64& rng) {
    for (std::size_t i = v.size(); i > 1; --i) {
        const std::size_t j = std::size_t(uniform_below(rng, i));
        std::swap(v[i - 1], v[j]);
    }
}

struct recording {
    int digit = 0, speaker = 0, index = 0;
    fs::path path;
    std::vector<float> features;  // (T, M)
    std::size_t natural_frames = 0;
    std::size_t image_row = 0;
};

std::vector<float> read_wav(const fs::path& path, int expected_rate) {
    SF_INFO info{};
    SNDFILE* f = sf_open(path.string().c_str(), SFM_READ, &info);
    if (f == nullptr)
        throw std::runtime_error("cannot open " + path.string() + ": " + sf_strerror(nullptr));
    if (info.samplerate != expected_rate || info.channels != 1) {
        sf_close(f);
        throw std::runtime_error(path.string() + ": expected mono " +
                                 std::to_string(expected_rate) + " Hz, got " +
                                 std::to_string(info.channels) + " channel(s) at " +
                                 std::to_string(info.samplerate) + " Hz");
    }
    std::vector<float> s(std::size_t(info.frames));
    const sf_count_t got = sf_readf_float(f, s.data(), info.frames);
    sf_close(f);
    if (got != info.frames)
        throw std::runtime_error(path.string() + ": read " + std::to_string(got) + " of " +
                                 std::to_string(info.frames) + " samples");
    return s;
}

void put_u32(std::string& b, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(char((v >> (8 * i)) & 0xffu));
}
void put_f32(std::string& b, float v) {
    std::uint32_t u = 0;
    static_assert(sizeof u == sizeof v);
    std::memcpy(&u, &v, 4);
    put_u32(b, u);
}

std::string usage() {
    return "usage: make_avdigits --data DIR --out DIR [--frames T] [--mels M] [--hop H]\n"
           "  DIR/fsdd/recordings/*.wav and DIR/digits/digits.csv.gz are read;\n"
           "  OUT/train.bin.gz and OUT/test.bin.gz are written.\n";
}

}  // namespace

int main(int argc, char** argv) try {
    fs::path data, out;
    logmel_settings s;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value\n" + usage());
            return argv[++i];
        };
        if (a == "--data") data = value();
        else if (a == "--out") out = value();
        else if (a == "--frames") s.frames = std::stoi(value());
        else if (a == "--mels") s.mels = std::stoi(value());
        else if (a == "--hop") s.hop = std::stoi(value());
        else if (a == "--help" || a == "-h") { std::cout << usage(); return 0; }
        else throw std::invalid_argument("unknown argument '" + a + "'\n" + usage());
    }
    if (data.empty() || out.empty()) throw std::invalid_argument(usage());
    if (s.frames < 1 || s.frames > 1024 || s.mels < 1 || s.mels > 128 || s.hop < 1)
        throw std::invalid_argument("--frames must be 1..1024, --mels 1..128, --hop >= 1");

    // ---- images ------------------------------------------------------------------------
    const examples::digits_dataset digits = examples::load_digits(data / "digits" / "digits.csv.gz");
    std::mt19937_64 rng(seed);
    std::array<std::vector<std::size_t>, 10> train_pool, test_pool;
    for (int c = 0; c < 10; ++c) {
        std::vector<std::size_t> members;
        for (std::size_t i = 0; i < digits.size(); ++i)
            if (digits.labels[i] == c) members.push_back(i);
        fisher_yates(members, rng);
        const auto n_test = std::size_t(std::floor(image_test_fraction * double(members.size()) + 0.5));
        test_pool[std::size_t(c)].assign(members.begin(), members.begin() + std::ptrdiff_t(n_test));
        train_pool[std::size_t(c)].assign(members.begin() + std::ptrdiff_t(n_test), members.end());
    }

    // ---- recordings ----------------------------------------------------------------------
    const std::vector<double> filters = mel_filterbank(s);
    std::vector<recording> recs;  // canonical order: digit, speaker, index
    const fs::path dir = data / "fsdd" / "recordings";
    std::size_t cropped = 0, shortest = SIZE_MAX, longest = 0;
    for (int d = 0; d < 10; ++d)
        for (int sp = 0; sp < int(speakers.size()); ++sp)
            for (int idx = 0; idx < recordings_per_cell; ++idx) {
                recording r;
                r.digit = d;
                r.speaker = sp;
                r.index = idx;
                r.path = dir / (std::to_string(d) + "_" + speakers[std::size_t(sp)] + "_" +
                                std::to_string(idx) + ".wav");
                const std::vector<float> samples = read_wav(r.path, s.sample_rate);
                r.natural_frames = samples.size() < std::size_t(s.window)
                                       ? 1
                                       : 1 + (samples.size() - std::size_t(s.window)) / std::size_t(s.hop);
                cropped += r.natural_frames > std::size_t(s.frames);
                shortest = std::min(shortest, samples.size());
                longest = std::max(longest, samples.size());
                r.features = logmel(samples, s, filters);
                recs.push_back(std::move(r));
            }
    std::size_t wav_count = 0;
    for (const auto& e : fs::directory_iterator(dir)) wav_count += e.path().extension() == ".wav";
    if (wav_count != recs.size())
        std::cerr << "make_avdigits: note: " << dir.string() << " holds " << wav_count
                  << " .wav files, " << recs.size() << " were used\n";

    // ---- pairing -------------------------------------------------------------------------
    for (int split = 0; split < 2; ++split)  // 0 train, 1 test
        for (int c = 0; c < 10; ++c) {
            std::vector<recording*> members;
            for (auto& r : recs)
                if (r.digit == c && ((r.index < test_indices) == (split == 1))) members.push_back(&r);
            std::vector<std::size_t> perm(members.size());
            for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = i;
            fisher_yates(perm, rng);
            const auto& pool = split == 0 ? train_pool[std::size_t(c)] : test_pool[std::size_t(c)];
            for (std::size_t i = 0; i < members.size(); ++i)
                members[i]->image_row = pool[perm[i] % pool.size()];
        }

    // ---- quantisation (one affine map for the whole data set) ------------------------------
    float lo = INFINITY, hi = -INFINITY;
    for (const auto& r : recs)
        for (float v : r.features) {
            if (!std::isfinite(v)) throw std::runtime_error("non-finite feature in " + r.path.string());
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    const double step = (double(hi) - double(lo)) / 255.0;

    // ---- write ---------------------------------------------------------------------------
    fs::create_directories(out);
    const std::size_t frame_bytes = std::size_t(s.frames) * std::size_t(s.mels);
    const std::size_t record_size = 5 + 64 + frame_bytes;
    double max_quant_error = 0.0;
    for (int split = 0; split < 2; ++split) {
        std::string body;
        std::size_t count = 0;
        std::array<int, 10> per_label{};
        for (const auto& r : recs) {
            if ((r.index < test_indices) != (split == 1)) continue;
            ++count;
            ++per_label[std::size_t(r.digit)];
            body.push_back(char(r.digit));
            body.push_back(char(r.speaker));
            body.push_back(char(r.index));
            body.push_back(char(r.image_row & 0xffu));
            body.push_back(char((r.image_row >> 8) & 0xffu));
            for (int p = 0; p < 64; ++p)
                body.push_back(char(int(digits.pixels[r.image_row * 64 + std::size_t(p)])));
            for (float v : r.features) {
                const double q = std::floor((double(v) - double(lo)) / step + 0.5);
                const int qi = int(std::clamp(q, 0.0, 255.0));
                max_quant_error = std::max(max_quant_error, std::abs(double(lo) + qi * step - double(v)));
                body.push_back(char(std::uint8_t(qi)));
            }
        }
        if (body.size() != count * record_size) throw std::logic_error("record size mismatch");
        const auto crc = std::uint32_t(
            crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(body.data()), uInt(body.size())));
        std::string file = "AVDG";
        put_u32(file, format_version);
        put_u32(file, std::uint32_t(count));
        put_u32(file, std::uint32_t(s.frames));
        put_u32(file, std::uint32_t(s.mels));
        put_u32(file, 8);  // image side
        put_u32(file, std::uint32_t(s.sample_rate));
        put_u32(file, std::uint32_t(s.window));
        put_u32(file, std::uint32_t(s.hop));
        put_u32(file, std::uint32_t(s.n_fft));
        put_f32(file, lo);
        put_f32(file, hi);
        put_u32(file, std::uint32_t(split));
        put_u32(file, std::uint32_t(seed));
        put_u32(file, std::uint32_t(record_size));
        put_u32(file, crc);
        if (file.size() != header_size) throw std::logic_error("header size mismatch");
        file += body;

        const fs::path target = out / (split == 0 ? "train.bin.gz" : "test.bin.gz");
        gzFile g = gzopen(target.string().c_str(), "wb9");
        if (g == nullptr) throw std::runtime_error("cannot write " + target.string());
        if (gzwrite(g, file.data(), unsigned(file.size())) != int(file.size())) {
            gzclose(g);
            throw std::runtime_error("write failed: " + target.string());
        }
        if (gzclose(g) != Z_OK) throw std::runtime_error("close failed: " + target.string());
        std::cout << target.string() << ": " << count << " examples, " << file.size()
                  << " bytes uncompressed, " << fs::file_size(target) << " bytes gzip, crc32 "
                  << std::hex << crc << std::dec << "; per label";
        for (int n : per_label) std::cout << ' ' << n;
        std::cout << '\n';
    }
    std::cout << "log-mel: T=" << s.frames << " frames x M=" << s.mels << " bands, window "
              << s.window << ", hop " << s.hop << ", FFT " << s.n_fft << "; range [" << lo << ", "
              << hi << "], u8 step " << step << ", max quantisation error " << max_quant_error
              << "\nrecordings: " << recs.size() << ", " << shortest << ".." << longest
              << " samples; " << cropped << " longer than T frames (centre-cropped)\n";
    return 0;
} catch (const std::exception& e) {
    std::cerr << "make_avdigits: " << e.what() << '\n';
    return 1;
}
