#pragma once
// Test support for the diffusion samplers: the closed-form Gaussian denoiser of
// reference/diffusion.md section 10 (data x0 ~ N(mu_i, s_i^2) per coordinate), in sigma
// (VE) form and as a VP network with epsilon / v / sample output, written as plain host
// loops in double, independent of the samplers under test.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/diffusion/schedule.hpp"
#include "mmfuse/io/safetensors.hpp"

namespace mmfuse_test {

/// Per-coordinate Gaussian data: x0_i ~ N(mu[i], s[i]^2) (coordinate i of a flattened sample,
/// repeated when the sample has more elements than mu).
struct gaussian_data {
    std::vector<double> mu, s;

    double mean(std::size_t i) const { return mu[i % mu.size()]; }
    double std(std::size_t i) const { return s[i % s.size()]; }

    /// E[x0 | x] for x = x0 + sigma n: mu + s^2 (x - mu) / (s^2 + sigma^2).
    template <class T>
    void ve_denoise(mmfuse::tensor_ref<const T> x, double sigma, mmfuse::tensor_ref<T> out) const {
        for (mmfuse::index_t i = 0; i < x.numel(); ++i) {
            const double m = mean(std::size_t(i)), v = std(std::size_t(i)) * std(std::size_t(i));
            out.data()[i] = T(m + v * (double(x.data()[i]) - m) / (v + sigma * sigma));
        }
    }

    /// The exact network output for a VP sample x_t = sqrt(abar) x0 + sqrt(1-abar) eps at
    /// level abar, in prediction space p: E[eps|x_t], E[v|x_t] or E[x0|x_t].
    template <class T>
    void vp_predict(mmfuse::tensor_ref<const T> x, double abar,
                    mmfuse::v0::diffusion::prediction_type p, mmfuse::tensor_ref<T> out) const {
        using mmfuse::v0::diffusion::prediction_type;
        const double a = std::sqrt(abar), r = std::sqrt(1.0 - abar);
        for (mmfuse::index_t i = 0; i < x.numel(); ++i) {
            const double m = mean(std::size_t(i)), v = std(std::size_t(i)) * std(std::size_t(i));
            const double var = abar * v + 1.0 - abar;
            const double centred = double(x.data()[i]) - a * m;
            const double eps = r * centred / var;
            const double x0 = m + a * v * centred / var;
            double o = x0;
            if (p == prediction_type::epsilon) o = eps;
            if (p == prediction_type::v_prediction) o = a * eps - r * x0;
            out.data()[i] = T(o);
        }
    }

    /// Endpoint of the exact probability-flow ODE started from the VE sample x at sigma:
    /// mu + s (x - mu) / sqrt(s^2 + sigma^2).
    double ode_endpoint(std::size_t i, double x, double sigma) const {
        const double m = mean(i), sd = std(i);
        return m + sd * (x - m) / std::sqrt(sd * sd + sigma * sigma);
    }
};

/// One golden file of tools/golden/make_diffusion_fixtures.py (format in its docstring).
class sampler_fixture {
public:
    explicit sampler_fixture(const std::string& file)
        : file_(mmfuse::io::safetensors_file::open(std::string(MMFUSE_TEST_DATA_DIR) +
                                                   "/golden/diffusion/" + file)) {}

    /// The case names ("cases" metadata, comma-separated).
    std::vector<std::string> cases() const {
        std::vector<std::string> out;
        std::stringstream ss(meta_string("cases"));
        for (std::string c; std::getline(ss, c, ',');)
            out.push_back(c);
        return out;
    }
    bool has_meta(const std::string& key) const { return file_.metadata().count(key) > 0; }
    std::string meta_string(const std::string& key) const {
        const auto it = file_.metadata().find(key);
        REQUIRE(it != file_.metadata().end());
        return it->second;
    }
    /// Numeric metadata ("True"/"False" read as 1/0).
    double meta(const std::string& key) const {
        const std::string v = meta_string(key);
        if (v == "True") return 1.0;
        if (v == "False") return 0.0;
        return std::stod(v);
    }
    double meta_or(const std::string& key, double fallback) const {
        return has_meta(key) ? meta(key) : fallback;
    }
    std::string meta_or(const std::string& key, const std::string& fallback) const {
        return has_meta(key) ? meta_string(key) : fallback;
    }
    bool has(const std::string& name) const { return file_.find(name) != nullptr; }
    mmfuse::tensor<double> read(const std::string& name) const { return file_.read<double>(name); }
    std::vector<double> values(const std::string& name) const {
        const auto t = read(name);
        return std::vector<double>(t.data(), t.data() + t.numel());
    }

private:
    mmfuse::io::safetensors_file file_;
};

/// The k-th slice (along axis 0) of a stacked fixture tensor, as a view.
inline mmfuse::tensor_ref<const double> slice(const mmfuse::tensor<double>& stacked, mmfuse::index_t k) {
    return stacked.cref().select(0, k);
}

/// Views of every slice of a stacked fixture tensor (for `sequence_noise`).
inline std::vector<mmfuse::tensor_ref<const double>> slices(const mmfuse::tensor<double>& stacked) {
    std::vector<mmfuse::tensor_ref<const double>> v;
    for (mmfuse::index_t k = 0; k < (stacked.numel() ? stacked.extent(0) : 0); ++k)
        v.push_back(slice(stacked, k));
    return v;
}

/// max_i |a_i - b_i| / max(1, |b_i|) over two views of equal extents (inf on NaN).
inline double rel_gap(mmfuse::tensor_ref<const double> a, mmfuse::tensor_ref<const double> b) {
    REQUIRE(a.extents() == b.extents());
    double worst = 0.0;
    for (mmfuse::index_t i = 0; i < a.numel(); ++i) {
        // select() views are contiguous row slices of a contiguous tensor
        const double x = a.data()[i], y = b.data()[i];
        if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
        worst = std::max(worst, std::abs(x - y) / std::max(1.0, std::abs(y)));
    }
    return worst;
}

}  // namespace mmfuse_test
