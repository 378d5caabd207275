#pragma once
/// \file
/// `nn::model<Net>`: owns a module tree and its parameters in ONE flat buffer, with the
/// gradients in a second buffer of the same layout (DESIGN decision 7; tiny-cuda-nn's
/// trainer layout, mlpack's flat parameter matrix). Every parameter gets its hierarchical
/// PyTorch-style name from the `visit` tree ("text.proj.weight"), which is what checkpoints
/// use (decision 8). Optimisers work on the flat buffers directly.
///
///     nn::model<my_net<float>> m(my_net<float>{...}, /*seed=*/42);
///     m.zero_grad();  auto y = m.net().forward(cx, x);  ...;  m.net().backward(cx, dy);
///     adamw.step(m.parameters(), m.gradients());

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfuse/core/error.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/nn/module.hpp"

namespace mmfuse::inline v0::nn {

/// One entry of a model's parameter index: hierarchical name, shape and element offset of
/// the parameter inside the flat buffers.
struct parameter_info {
    std::string name;
    extents shape;
    index_t offset = 0;
};

namespace detail {
/// Walks a module tree, recording every parameter with its full path and assigning every
/// module its path.
template <compute_type T>
class collect_visitor {
public:
    collect_visitor(std::string prefix, std::vector<std::pair<std::string, parameter<T>*>>& out)
        : prefix_(std::move(prefix)), out_(&out) {}
    void parameter(std::string_view name, nn::parameter<T>& p) {
        out_->emplace_back(join_path(prefix_, name), &p);
    }
    template <class C>
    void child(std::string_view name, C& c) {
        collect_visitor sub(join_path(prefix_, name), *out_);
        c.visit(sub);
    }
    void path(std::string& slot) const { slot = prefix_; }

private:
    std::string prefix_;
    std::vector<std::pair<std::string, nn::parameter<T>*>>* out_;
};
}  // namespace detail

/// A module tree plus its flat parameter and gradient buffers. Not copyable or movable
/// (the modules hold views into the buffers); construct it in place.
template <module Net>
class model {
public:
    using value_type = typename Net::value_type;
    using T = value_type;

    /// Takes ownership of `net`, lays its parameters out in one buffer (each parameter
    /// starting on a 64-byte boundary), binds every module's views, names every module and
    /// initialises the parameters with `net.reset_parameters` from Philox `seed`.
    /// Throws `shape_error` if two parameters share a name.
    explicit model(Net net, std::uint64_t seed = 0) : net_(std::move(net)) {
        std::vector<std::pair<std::string, parameter<T>*>> found;
        detail::collect_visitor<T> v("", found);
        net_.visit(v);
        constexpr index_t align = index_t(host_alignment / sizeof(T));
        index_t total = 0;
        for (auto& [name, p] : found) {
            for (const auto& e : index_)
                if (e.name == name)
                    throw shape_error(name, "nn::model parameter names", "unique names",
                                      "a second parameter called '" + name + "'");
            index_.push_back({name, p->shape, total});
            total += (p->shape.numel() + align - 1) / align * align;
        }
        params_ = tensor<T>(extents{total});
        grads_ = tensor<T>(extents{total});
        for (std::size_t i = 0; i < found.size(); ++i) {
            parameter<T>& p = *found[i].second;
            p.value = tensor_ref<T>(params_.data() + index_[i].offset, p.shape);
            p.grad = tensor_ref<T>(grads_.data() + index_[i].offset, p.shape);
            slots_.push_back(&p);
        }
        philox_generator gen(seed);
        net_.reset_parameters(gen);
    }
    model(const model&) = delete;
    model& operator=(const model&) = delete;

    Net& net() noexcept { return net_; }
    const Net& net() const noexcept { return net_; }

    /// The flat parameter buffer (padding between parameters stays zero).
    tensor_ref<T> parameters() noexcept { return params_.ref(); }
    /// Read-only view of the flat parameter buffer (checkpoint writers).
    tensor_ref<const T> parameters() const noexcept { return params_.cref(); }
    /// The flat gradient buffer, same layout as `parameters()`.
    tensor_ref<T> gradients() noexcept { return grads_.ref(); }
    /// Name, shape and offset of every parameter, in visit order.
    std::span<const parameter_info> parameter_index() const noexcept { return index_; }
    /// Number of scalar parameters (padding excluded), as `sum(p.numel())` in PyTorch.
    index_t parameter_count() const noexcept {
        index_t n = 0;
        for (const auto& e : index_)
            n += e.shape.numel();
        return n;
    }

    /// The parameter called `name` ("text.proj.weight"), or nullptr.
    parameter<T>* find(std::string_view name) noexcept {
        for (std::size_t i = 0; i < index_.size(); ++i)
            if (index_[i].name == name) return slots_[i];
        return nullptr;
    }

    /// Sets every gradient to zero (one memset over the flat buffer).
    void zero_grad() noexcept {
        if (grads_.numel() > 0)
            std::memset(grads_.data(), 0, std::size_t(grads_.numel()) * sizeof(T));
    }

private:
    Net net_;
    tensor<T> params_;
    tensor<T> grads_;
    std::vector<parameter_info> index_;
    std::vector<parameter<T>*> slots_;
};

}  // namespace mmfuse::inline v0::nn
