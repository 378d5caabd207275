#pragma once
/// \file
/// Random-number op front-ends: Philox fills of any strided view (`fill_random_desc`) and the
/// fused linear combination y = sum_i c_i x_i [+ noise_scale z] (`combine_desc`), the one-pass
/// update of a diffusion sampler step.
///
///     philox_generator gen(seed);
///     ops::fill_random(cx, x.ref(), {.kind = random_kind::normal, .a = 0.0, .b = 1.0,
///                                    .draw = ops::take_draw(gen, ops::random_words<float>(
///                                                random_kind::normal, x.numel()))});
///     ops::combine(cx, x.ref(), {x.cref(), eps.cref()}, {c_x, c_eps});        // DDIM step
///     ops::combine(cx, x.ref(), {x.cref(), d.cref()}, {1.0, dt}, sigma,        // + noise
///                  ops::take_draw(gen, ops::random_words<float>(random_kind::normal,
///                                                               x.numel())));
///
/// The numbers are those of core/philox.hpp: element i of the output in row-major logical
/// order gets `uniform_in(uniform_at<T>(stream, offset, i), a, b)` or
/// `a + b * normal_at<T>(stream, offset, i)` with stream = (seed, subsequence), whatever the
/// backend (uniforms bit-identical; normals up to the device's log/sin/cos ulps).

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <type_traits>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/check.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/op_desc.hpp"

namespace mmfuse::inline v0::ops {

/// Philox words a `fill_random` of `n` elements of type T with distribution `kind` uses
/// (`uniform_words<T>(n)` or `normal_words<T>(n)`); combine's noise uses the normal count.
template <compute_type T>
constexpr std::uint64_t random_words(random_kind kind, std::uint64_t n) noexcept {
    return kind == random_kind::uniform ? uniform_words<T>(n) : normal_words<T>(n);
}

/// The draw at `gen`'s current (seed, subsequence, offset); advances `gen` past `words`
/// words, so that successive ops take disjoint parts of the stream (as the core fills do).
inline philox_draw take_draw(philox_generator& gen, std::uint64_t words) noexcept {
    const philox_draw d{gen.seed(), gen.subsequence(), gen.offset()};
    gen.skip(words);
    return d;
}

/// Fills y (float or double, any strides, not a broadcast view) with Philox numbers:
/// U[a, b) for `random_kind::uniform` (a <= b, both finite), N(mean a, std b) for
/// `random_kind::normal` (a finite, b finite and >= 0), from `d.draw` (see the file comment;
/// the op uses `random_words<T>(d.kind, y.numel())` words from `d.draw.offset` on).
/// Throws `value_error` for bad parameters, `shape_error` for a null view.
template <compute_type T>
void fill_random(const op_context& cx, tensor_ref<T> y, const fill_random_desc& d) {
    check_parameters(d, cx.module);
    detail::expect_data(cx, "fill_random output y", y);
    detail::submit<0, 1>(cx, d, {}, {y});
}

/// y = coeffs[0] x_0 + ... + coeffs[n-1] x_{n-1} [+ noise_scale z], evaluated left to right in
/// T, with z ~ N(0, 1) drawn from `noise` exactly as `fill_random` with {normal, 0, 1, noise}
/// would draw it into y (no noise, and no words used, when noise_scale == 0).
///   xs: 1 to `max_combine_inputs` views, each of y's extents or broadcastable to them (NumPy
///       rules: leading axes added, extent-1 axes stretched — e.g. a (C) row over (B, C));
///   coeffs: one finite coefficient per input; noise_scale finite.
/// Any strides; y may be exactly the memory of an input (in place, e.g. x = a x + b eps) but
/// must not partially overlap one. Throws `shape_error` naming `cx.module` for a wrong input
/// or coefficient count or an input that does not broadcast to y, `value_error` for a
/// non-finite coefficient or noise_scale.
template <compute_type T>
void combine(const op_context& cx, tensor_ref<T> y,
             std::span<const tensor_ref<const std::type_identity_t<T>>> xs,
             std::span<const double> coeffs, double noise_scale = 0.0, philox_draw noise = {}) {
    constexpr auto max_in = std::size_t(max_combine_inputs);
    if (xs.empty() || xs.size() > max_in) {
        std::string want = "1 to ";
        want += std::to_string(max_in);
        want += " inputs";
        throw shape_error(cx.module, "combine input list", want,
                          std::to_string(xs.size()) + " inputs");
    }
    if (coeffs.size() != xs.size()) {
        std::string want = std::to_string(xs.size());
        want += " coefficients (one per input)";
        throw shape_error(cx.module, "combine coefficient list", want,
                          std::to_string(coeffs.size()) + " coefficients");
    }
    detail::expect_data(cx, "combine output y", y);
    if (!std::isfinite(noise_scale))
        throw value_error(cx.module, "combine: noise_scale must be finite, got " +
                                         std::to_string(noise_scale));
    combine_desc d{};
    d.noise_scale = noise_scale;
    d.noise = noise;
    std::array<any_tensor_ref, max_combine_inputs> in{};
    for (std::size_t i = 0; i < xs.size(); ++i) {
        const auto input_name = [i] {
            std::string s = "combine input ";
            s += std::to_string(i);
            return s;
        };
        if (!std::isfinite(coeffs[i])) {
            std::string msg = input_name();
            msg += ": coefficient must be finite, got ";
            msg += std::to_string(coeffs[i]);
            throw value_error(cx.module, msg);
        }
        const tensor_ref<const T>& x = xs[i];
        if (x.data() == nullptr && x.numel() > 0)
            throw shape_error(cx.module, input_name(), "a view with memory",
                              "a null view " + x.extents().to_string());
        try {
            in[i] = x.expand(y.extents());
        } catch (const shape_error&) {
            std::string want = "a shape broadcastable to y ";
            want += y.extents().to_string();
            throw shape_error(cx.module, input_name(), want, "shape " + x.extents().to_string());
        }
        d.coeff[i] = coeffs[i];
    }
    const std::array<any_tensor_ref, 1> out{y};
    detail::submit(cx, d, std::span<const any_tensor_ref>(in.data(), xs.size()), out);
}

/// `combine` with braced lists: `ops::combine(cx, y, {x0, x1}, {0.5, -1.0})`.
template <compute_type T>
void combine(const op_context& cx, tensor_ref<T> y,
             std::initializer_list<tensor_ref<const std::type_identity_t<T>>> xs,
             std::initializer_list<double> coeffs, double noise_scale = 0.0,
             philox_draw noise = {}) {
    combine<T>(cx, y, std::span(xs.begin(), xs.size()), std::span(coeffs.begin(), coeffs.size()),
               noise_scale, noise);
}

}  // namespace mmfuse::inline v0::ops
