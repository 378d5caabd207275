#pragma once
/// \file
/// Example-side data for 01_quickstart and fusion_hybrid: a two-modality task that neither
/// modality solves alone. Modality A is 4 tokens x 8 features, modality B 5 tokens x 6
/// features; each is N(0, 0.5^2) noise with one random token carrying a one-hot digit in 0..3
/// (+2 on that feature); the label is (a + b) mod 4, so either modality alone is at chance
/// (25 %). Not part of the library.

#include <cstdint>
#include <random>
#include <vector>

#include "mmfuse/core/tensor.hpp"

namespace examples {

/// One batch: a (n, 4, 8), b (n, 5, 6), labels (n).
struct digit_sum_batch {
    mmfuse::tensor<float> a{mmfuse::extents{0}}, b{mmfuse::extents{0}};
    std::vector<int> label;
};

/// Row `row` of one modality: noise, then one-hot(digit) * 2 added to a random token.
inline void fill_digit_tokens(mmfuse::tensor<float>& t, mmfuse::index_t row, int digit,
                              std::mt19937& rng) {
    const mmfuse::index_t tokens = t.extent(1), features = t.extent(2);
    std::normal_distribution<float> noise(0.0f, 0.5f);
    for (mmfuse::index_t k = 0; k < tokens * features; ++k)
        t[row * tokens * features + k] = noise(rng);
    const mmfuse::index_t at = mmfuse::index_t(rng() % std::uint32_t(tokens));
    t(row, at, mmfuse::index_t(digit)) += 2.0f;
}

/// `n` fresh samples drawn from `rng`.
inline digit_sum_batch make_digit_sum_batch(mmfuse::index_t n, std::mt19937& rng) {
    digit_sum_batch bt{mmfuse::tensor<float>({n, 4, 8}), mmfuse::tensor<float>({n, 5, 6}),
                       std::vector<int>(std::size_t(n))};
    for (mmfuse::index_t i = 0; i < n; ++i) {
        const int a = int(rng() % 4), b = int(rng() % 4);
        fill_digit_tokens(bt.a, i, a, rng);
        fill_digit_tokens(bt.b, i, b, rng);
        bt.label[std::size_t(i)] = (a + b) % 4;
    }
    return bt;
}

}  // namespace examples
