#pragma once
// Golden fixtures made by the PyTorch twins under tools/golden/: one case folder
// tests/data/golden/<case>/ with params.txt (state_dict names in order) and f32/ and f64/
// subfolders of .npy files (inputs, parameters by state_dict name, y, dy, grad_<input>,
// grad_<parameter>, masks in mmfuse polarity: true = KEEP). `golden<T>` loads them, sets a
// model's parameters by name and compares outputs and gradients.
// Error measure: max_i |got_i - ref_i| / max(1, |ref_i|) per tensor. Set
// MMFUSE_GOLDEN_VERBOSE=1 to print the worst error of every case.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfuse/core/tensor.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/nn/multi_head_attention.hpp"

namespace mmfuse_test {

using namespace mmfuse;

namespace fs = std::filesystem;

/// Default bound of `golden::compare`: 1e-5 for float, 1e-10 for double.
template <class T>
constexpr double golden_tolerance() {
    return std::is_same_v<T, float> ? 1e-5 : 1e-10;
}

/// One case's fixture folder for precision T, and the comparisons made against it.
template <compute_type T>
class golden {
public:
    /// The fixture `tests/data/golden/<name>/{f32,f64}`; `tolerance` bounds every compare
    /// (default `golden_tolerance<T>()`).
    explicit golden(std::string name, double tolerance = golden_tolerance<T>())
        : tolerance_(tolerance),
          name_(std::move(name)),
          case_dir_(fs::path(MMFUSE_TEST_DATA_DIR) / "golden" / name_),
          dir_(case_dir_ / (std::is_same_v<T, float> ? "f32" : "f64")) {
        REQUIRE(fs::is_directory(dir_));
    }
    ~golden() {
        if (const char* v = std::getenv("MMFUSE_GOLDEN_VERBOSE"); v != nullptr && *v == '1')
            std::printf("golden %-36s %s  worst %.3g (%s)\n", name_.c_str(),
                        std::is_same_v<T, float> ? "f32" : "f64", worst_, worst_what_.c_str());
    }
    golden(const golden&) = delete;
    golden& operator=(const golden&) = delete;

    bool has(const std::string& file) const { return fs::exists(dir_ / (file + ".npy")); }
    tensor<T> load(const std::string& file) const { return io::npy_load<T>(path(file)); }
    tensor<bool> load_mask(const std::string& file) const { return io::npy_load<bool>(path(file)); }

    /// Masks of the fixture (true = KEEP; absent files stay empty views); `causal` as given.
    /// The tensors are owned by this object.
    nn::attention_masks<T> masks(bool causal) {
        nn::attention_masks<T> m;
        if (has("key_padding")) m.key_padding = keep(load_mask("key_padding"));
        if (has("attn")) m.attn = keep(load_mask("attn"));
        if (has("attn_bias")) m.attn_bias = keep(load("attn_bias"));
        m.causal = causal;
        return m;
    }

    /// Sets every parameter of `m` from `<name>.npy`; the model's names must be exactly the
    /// twin's state_dict names, in the same order.
    template <class Model>
    void load_parameters(Model& m) const {
        std::vector<std::string> names;
        std::ifstream in(case_dir_ / "params.txt");
        REQUIRE(in.good());
        for (std::string line; std::getline(in, line);)
            if (!line.empty()) names.push_back(line);
        std::vector<std::string> ours;
        for (const auto& e : m.parameter_index())
            ours.push_back(e.name);
        INFO("case " << name_);
        REQUIRE(ours == names);
        for (const auto& n : names) {
            auto* p = m.find(n);
            REQUIRE(p != nullptr);
            const tensor<T> v = load(n);
            INFO("parameter " << n);
            REQUIRE(p->value.extents() == v.extents());
            REQUIRE(p->value.is_contiguous());
            std::copy(v.data(), v.data() + v.numel(), p->value.data());
        }
    }

    /// Compares `got` with `<file>.npy`: same extents, error within the bound.
    void compare(const std::string& file, tensor_ref<const T> got) {
        const tensor<T> ref = load(file);
        INFO("case " << name_ << ", " << file);
        REQUIRE(got.extents() == ref.extents());
        REQUIRE(got.is_contiguous());
        double err = 0.0, ref_max = 0.0;
        for (index_t i = 0; i < ref.numel(); ++i) {
            const double a = double(got.data()[i]), b = double(ref[i]);
            ref_max = std::max(ref_max, std::abs(b));
            err = std::isfinite(a) ? std::max(err, std::abs(a - b) / std::max(1.0, std::abs(b)))
                                   : std::numeric_limits<double>::infinity();
        }
        REQUIRE(ref_max > 0.0);  // a trivial (all-zero) reference would test nothing
        if (err > worst_ || worst_what_.empty()) {
            worst_ = err;
            worst_what_ = file;
        }
        CHECK(err <= tolerance_);
    }

    /// Compares every parameter gradient of `m` with `grad_<name>.npy`.
    template <class Model>
    void compare_parameter_grads(Model& m) {
        for (const auto& e : m.parameter_index())
            compare("grad_" + e.name, tensor_ref<const T>(m.find(e.name)->grad));
    }

private:
    fs::path path(const std::string& file) const { return dir_ / (file + ".npy"); }
    template <class U>
    tensor_ref<const U> keep(tensor<U> t) {
        if constexpr (std::is_same_v<U, bool>) {
            bools_.push_back(std::move(t));
            return bools_.back().cref();
        } else {
            values_.push_back(std::move(t));
            return values_.back().cref();
        }
    }

    double tolerance_;
    std::string name_;
    fs::path case_dir_;
    fs::path dir_;
    std::deque<tensor<bool>> bools_;  // deques: the views handed out stay valid
    std::deque<tensor<T>> values_;
    double worst_ = 0.0;
    std::string worst_what_;
};

}  // namespace mmfuse_test
