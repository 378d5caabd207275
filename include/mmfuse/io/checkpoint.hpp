#pragma once
/// \file
/// Model checkpoints: `io::save(model, path)` / `io::load(model, path)` in the safetensors
/// format with PyTorch state_dict names (DESIGN decision 8).
///
/// Every parameter is stored under its hierarchical name from `nn::model::parameter_index()`
/// ("0.weight", "text.proj.bias"), which is the key PyTorch's `model.state_dict()` uses for the
/// twin module, so `safetensors.torch.save_file(model.state_dict(), path)` loads here directly
/// and `safetensors.torch.load_file(path)` + `model.load_state_dict(...)` loads a file saved
/// here. See docs/checkpoints.md.

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/io/safetensors.hpp"
#include "mmfuse/nn/model.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::io {

/// Options of `io::load`.
///   strict         true (PyTorch's default): a tensor in the file that the model lacks is an
///                  error, and so is a parameter missing from the file. false: such tensors
///                  are ignored and missing parameters keep their values (PyTorch's
///                  `strict=False`); shape and dtype mismatches are errors either way.
///   convert_dtype  false: every tensor must have exactly the model's dtype (F32 for a float
///                  model, F64 for double). true: any floating dtype (F16, BF16, F32, F64) is
///                  converted, rounding to nearest even.
struct load_options {
    bool strict = true;
    bool convert_dtype = false;
};

/// Saves every parameter of `m` under its PyTorch name to `path` (safetensors, the model's
/// dtype, parameters in `parameter_index()` order, written atomically, see
/// `save_safetensors`). `metadata` goes to `__metadata__`; the default {"format": "pt"} is
/// what Hugging Face tools expect of a PyTorch checkpoint. Throws `io_error` (module() = path).
template <nn::module Net>
void save(const nn::model<Net>& m, const std::filesystem::path& path,
          const safetensors_metadata& metadata = {{"format", "pt"}}) {
    using T = typename Net::value_type;
    const T* base = m.parameters().data();
    std::vector<named_tensor> list;
    for (const nn::parameter_info& p : m.parameter_index())
        list.push_back({p.name, tensor_ref<const T>(base + p.offset, p.shape)});
    save_safetensors(path, list, metadata);
}

/// Loads the parameters of `m` from the parsed file `f` (see the `path` overload).
template <nn::module Net>
void load(nn::model<Net>& m, const safetensors_file& f, const load_options& opt = {}) {
    using T = typename Net::value_type;
    constexpr safetensors_dtype want = to_safetensors_dtype(dtype_of<T>);
    const std::string want_name(safetensors_dtype_name(want));
    std::vector<std::string> missing, mismatched, unexpected;
    std::vector<const safetensors_entry*> found;
    for (const nn::parameter_info& p : m.parameter_index()) {
        const safetensors_entry* e = f.find(p.name);
        found.push_back(e);
        if (!e) {
            if (opt.strict)
                missing.push_back("missing tensor " + detail::quote_name(p.name) + " (shape " +
                                  p.shape.to_string() + ", " + want_name + ")");
            continue;
        }
        const bool shape_ok = e->shape == p.shape;
        const bool type_ok = e->type == want || (opt.convert_dtype && is_floating(e->type));
        if (shape_ok && type_ok) continue;
        std::string s = "tensor " + detail::quote_name(p.name) + ":";
        if (!shape_ok)
            s += " expected shape " + p.shape.to_string() + ", got " + e->shape.to_string();
        if (!shape_ok && !type_ok) s += ";";
        if (!type_ok)
            s += " expected dtype " + want_name +
                 (opt.convert_dtype ? " (or another floating dtype)" : "") + ", got " +
                 std::string(safetensors_dtype_name(e->type));
        mismatched.push_back(std::move(s));
    }
    if (opt.strict) {
        for (const safetensors_entry& e : f.entries()) {
            bool known = false;
            for (const nn::parameter_info& p : m.parameter_index())
                if (p.name == e.name) {
                    known = true;
                    break;
                }
            if (!known)
                unexpected.push_back("unexpected tensor " + detail::quote_name(e.name) +
                                     " (shape " + e.shape.to_string() + ", " +
                                     std::string(safetensors_dtype_name(e.type)) +
                                     ") is not a parameter of the model");
        }
    }
    const std::size_t problems = missing.size() + mismatched.size() + unexpected.size();
    if (problems > 0) {
        std::string msg = "checkpoint does not match the model (" + std::to_string(problems) +
                          (problems == 1 ? " problem" : " problems") + "; nothing was loaded):";
        for (const auto* list : {&missing, &mismatched, &unexpected})
            for (const std::string& s : *list)
                msg += "\n  - " + s;
        throw io_error(f.path(), msg);
    }
    // Everything matches: read into a staging copy first, so that a read error (I/O, a file
    // changed underneath) leaves the model untouched, then copy in one go.
    tensor_ref<T> params = m.parameters();
    tensor<T> staging(params.extents());
    if (params.numel() > 0)
        std::memcpy(staging.data(), params.data(), std::size_t(params.numel()) * sizeof(T));
    const auto index = m.parameter_index();
    for (std::size_t i = 0; i < index.size(); ++i)
        if (found[i])
            f.read_into(*found[i], tensor_ref<T>(staging.data() + index[i].offset, index[i].shape));
    if (params.numel() > 0)
        std::memcpy(params.data(), staging.data(), std::size_t(params.numel()) * sizeof(T));
}

/// Loads the parameters of `m` from safetensors file `path`, matching tensors to parameters
/// by name (PyTorch state_dict keys). Every tensor is checked before anything is copied:
/// all missing, unexpected, mis-shaped and mis-typed tensors are listed in ONE `io_error`
/// (module() = path) and the model is left unchanged; a malformed file throws `io_error`
/// from `safetensors_file::open`. See `load_options` for `strict` and `convert_dtype`.
template <nn::module Net>
void load(nn::model<Net>& m, const std::filesystem::path& path, const load_options& opt = {}) {
    load(m, safetensors_file::open(path), opt);
}

}  // namespace mmfuse::inline v0::io
