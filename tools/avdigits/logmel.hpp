#pragma once
/// \file
/// Log-mel spectrogram of an 8 kHz mono recording, as used by make_avdigits (and by its check
/// program, which recomputes one recording). A tool, not part of the library.
///
/// Settings (struct logmel_settings, defaults are what examples/data/avdigits was made with):
///
///   sample rate   sr  = 8000 Hz (FSDD's rate; other rates are refused by the tool)
///   window        W   = 200 samples (25 ms), periodic Hann  w[n] = 0.5 - 0.5 cos(2 pi n / W)
///   hop           H   = samples between frame starts (default 160 = 20 ms)
///   FFT size      N   = 256 (the windowed frame is zero-padded from W to N); Eigen's
///                       unsupported FFT module (kissfft backend), half spectrum, K = N/2+1 bins
///   power         P[k] = |X[k]|^2, no normalisation, samples as libsndfile floats in [-1, 1)
///   mel scale     HTK: mel(f) = 2595 log10(1 + f / 700),  f(mel) = 700 (10^(mel / 2595) - 1)
///   mel filters   M triangular filters (default 32) between 0 Hz and sr/2 = 4000 Hz: the
///                 edges f_0 < f_1 < ... < f_{M+1} are equally spaced in mel from mel(0) to
///                 mel(4000); filter m = 1..M has weight at bin frequency f_k = k sr / N
///                   (f_k - f_{m-1}) / (f_m - f_{m-1})   for f_{m-1} <= f_k <= f_m
///                   (f_{m+1} - f_k) / (f_{m+1} - f_m)   for f_m <= f_k <= f_{m+1}
///                   0 elsewhere
///                 (unit peak, no area normalisation: librosa's mel(htk=True, norm=None))
///   log           L[t][m] = ln(sum_k weight_m[k] P_t[k] + 1e-6)
///   frames        a recording of n >= W samples gives 1 + floor((n - W) / H) frames (no edge
///                 padding; n < W is zero-padded to one frame)
///   fixed length  T frames (default 48): a longer recording keeps its centred T frames
///                 (dropping floor(excess / 2) at the start), a shorter one is placed centred
///                 (floor(missing / 2) pad frames before it) and padded with ln(1e-6), the
///                 value of a silent (all-zero) frame
///
/// No pre-emphasis, no dither, no DC removal, no per-recording normalisation.

#include <unsupported/Eigen/FFT>

#include <cmath>
#include <complex>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace avdigits_tool {

struct logmel_settings {
    int sample_rate = 8000;
    int window = 200;  // 25 ms
    int hop = 160;     // 20 ms
    int n_fft = 256;
    int mels = 32;
    int frames = 48;   // T
    double fmin = 0.0;
    double fmax = 4000.0;
    double epsilon = 1e-6;
};

inline double hz_to_mel(double f) { return 2595.0 * std::log10(1.0 + f / 700.0); }
inline double mel_to_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

/// Row-major (M, K) filter weights, K = n_fft / 2 + 1. Throws if a filter holds no FFT bin.
inline std::vector<double> mel_filterbank(const logmel_settings& s) {
    const int K = s.n_fft / 2 + 1;
    const int M = s.mels;
    std::vector<double> edges(std::size_t(M) + 2);
    const double lo = hz_to_mel(s.fmin), hi = hz_to_mel(s.fmax);
    for (int i = 0; i < M + 2; ++i)
        edges[std::size_t(i)] = mel_to_hz(lo + (hi - lo) * double(i) / double(M + 1));
    std::vector<double> w(std::size_t(M) * std::size_t(K), 0.0);
    for (int m = 1; m <= M; ++m) {
        const double a = edges[std::size_t(m - 1)], b = edges[std::size_t(m)],
                     c = edges[std::size_t(m + 1)];
        double sum = 0.0;
        for (int k = 0; k < K; ++k) {
            const double f = double(k) * double(s.sample_rate) / double(s.n_fft);
            double v = 0.0;
            if (f >= a && f <= b) v = (f - a) / (b - a);
            else if (f > b && f <= c) v = (c - f) / (c - b);
            w[std::size_t(m - 1) * std::size_t(K) + std::size_t(k)] = v;
            sum += v;
        }
        if (!(sum > 0.0))
            throw std::runtime_error("mel filter " + std::to_string(m) +
                                     " covers no FFT bin; use fewer mel bands or a larger FFT");
    }
    return w;
}

/// Fixed-length log-mel features of `samples`: row-major (T, M), frame-major.
inline std::vector<float> logmel(const std::vector<float>& samples, const logmel_settings& s,
                                 const std::vector<double>& filters) {
    const int K = s.n_fft / 2 + 1;
    const int W = s.window, H = s.hop, M = s.mels, T = s.frames;
    const std::size_t n = samples.size();
    const int natural = n < std::size_t(W) ? 1 : 1 + int((n - std::size_t(W)) / std::size_t(H));

    std::vector<double> hann(static_cast<std::size_t>(W));
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < W; ++i) hann[std::size_t(i)] = 0.5 - 0.5 * std::cos(2.0 * pi * i / W);

    // Which natural frames land in the T output slots (centred crop or centred pad).
    const int first = natural > T ? (natural - T) / 2 : 0;           // first kept frame
    const int offset = natural < T ? (T - natural) / 2 : 0;          // first filled slot
    const int kept = natural < T ? natural : T;

    const float floor_value = float(std::log(s.epsilon));
    std::vector<float> out(std::size_t(T) * std::size_t(M), floor_value);

    Eigen::FFT<double> fft;
    fft.SetFlag(Eigen::FFT<double>::HalfSpectrum);
    std::vector<double> frame(static_cast<std::size_t>(s.n_fft));
    std::vector<std::complex<double>> spectrum;
    std::vector<double> power(static_cast<std::size_t>(K));
    for (int j = 0; j < kept; ++j) {
        const std::size_t start = std::size_t(first + j) * std::size_t(H);
        for (int i = 0; i < s.n_fft; ++i) {
            const std::size_t at = start + std::size_t(i);
            frame[std::size_t(i)] =
                (i < W && at < n) ? double(samples[at]) * hann[std::size_t(i)] : 0.0;
        }
        fft.fwd(spectrum, frame);
        if (spectrum.size() != std::size_t(K))
            throw std::runtime_error("FFT returned " + std::to_string(spectrum.size()) +
                                     " bins, expected " + std::to_string(K));
        for (int k = 0; k < K; ++k) power[std::size_t(k)] = std::norm(spectrum[std::size_t(k)]);
        for (int m = 0; m < M; ++m) {
            double e = 0.0;
            const double* wm = filters.data() + std::size_t(m) * std::size_t(K);
            for (int k = 0; k < K; ++k) e += wm[k] * power[std::size_t(k)];
            out[std::size_t(offset + j) * std::size_t(M) + std::size_t(m)] =
                float(std::log(e + s.epsilon));
        }
    }
    return out;
}

}  // namespace avdigits_tool
