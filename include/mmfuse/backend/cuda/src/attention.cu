// Kernel launchers of the CUDA backend: fused scaled-dot-product attention, forward and
// backward (`ops::attention_desc`, `ops::attention_backward_desc`; FlashAttention-2).
//
// Forward: bf16/f16 with D = Dv in {64, 128}, unit-stride rows and 16-byte aligned rows run
// on tensor cores (`forward_tc`); everything else (f32, other head sizes up to 256, other
// layouts) runs on the general kernel. Backward: Delta = rowsum(dO o O) into scratch, dQ
// accumulated in f32 scratch (zeroed here) by one block per key tile, then converted to
// dq's dtype; the key-tile kernel is the tensor-core one under the forward's conditions
// (all of q, k, v, o, dO, dq, dk, dv laid out for it), else the general one.
#include <cstdint>
#include <string>
#include <type_traits>

#include "mmfuse/backend/cuda/arena.hpp"
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/kernels/attention_backward.cuh"
#include "mmfuse/backend/cuda/kernels/attention_forward.cuh"
#include "mmfuse/backend/cuda/kernels/attention_general.cuh"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {
namespace {

namespace at = attention;

at::strides4 strides_of(const view& v) {
    return {v.strides[0], v.strides[1], v.strides[2], v.strides[3]};
}

/// Validates the forward operands (q, k, v[, keep]; o, lse) and fills the forward part of
/// the kernel parameters.
at::attention_params forward_params(const ops::attention_desc& d, const char* op, const view& q,
                                    const view& k, const view& v, const view* keep, const view& o,
                                    const view& lse) {
    if (q.rank != 4) expect_operand(op, "q", q, q.type, {0, 0, 0, 0});
    const index_t batch = q.extents[0], heads = q.extents[1], lq = q.extents[2], dim = q.extents[3];
    if (k.rank != 4) expect_operand(op, "k", k, q.type, {batch, heads, 0, dim});
    const index_t lk = k.extents[2];
    if (v.rank != 4) expect_operand(op, "v", v, q.type, {batch, heads, lk, 0});
    const index_t dv = v.extents[3];
    expect_operand(op, "k", k, q.type, {batch, heads, lk, dim});
    expect_operand(op, "v", v, q.type, {batch, heads, lk, dv});
    expect_operand(op, "o", o, q.type, {batch, heads, lq, dv});
    expect_operand(op, "lse", lse, dtype::f32, {batch, heads, lq});
    if (d.masked) expect_operand(op, "keep", *keep, dtype::boolean, {batch, heads, lq, lk});
    if (q.type != dtype::f32 && q.type != dtype::bf16 && q.type != dtype::f16)
        unsupported_dtype(op, q.type, "f32, bf16 and f16");
    if (dim > at::general_max_dim || dv > at::general_max_dim)
        throw value_error("cuda", std::string(op) + ": head sizes D = " + std::to_string(dim) +
                                      ", Dv = " + std::to_string(dv) + " exceed the supported " +
                                      std::to_string(at::general_max_dim));
    if (heads > 65535 || batch > 65535 || lq > (index_t(1) << 30) || lk > (index_t(1) << 30))
        throw value_error("cuda", std::string(op) + ": problem too large for the grid (B, H <= "
                                                    "65535, Lq, Lk <= 2^30)");
    at::attention_params p;
    p.q = q.data;
    p.k = k.data;
    p.v = v.data;
    p.keep = d.masked ? static_cast<const bool*>(keep->data) : nullptr;
    p.o = o.data;
    p.lse = static_cast<float*>(lse.data);
    p.q_st = strides_of(q);
    p.k_st = strides_of(k);
    p.v_st = strides_of(v);
    p.o_st = strides_of(o);
    if (d.masked) p.keep_st = strides_of(*keep);
    p.lse_b = lse.strides[0];
    p.lse_h = lse.strides[1];
    p.lse_l = lse.strides[2];
    p.batch = int(batch);
    p.heads = int(heads);
    p.lq = int(lq);
    p.lk = int(lk);
    p.d = int(dim);
    p.dv_dim = int(dv);
    p.scale = float(d.scale);
    p.scale_log2 = float(d.scale * 1.4426950408889634);  // log2(e)
    p.causal = d.causal;
    p.causal_offset = d.causal_offset;
    p.masked = d.masked;
    return p;
}

/// True when `t` can feed the tensor-core kernels: unit-stride rows, 16-byte aligned base,
/// and row / head / batch strides that keep every row 16-byte aligned.
bool tensor_core_layout(const view& t) {
    if (t.strides[3] != 1 || reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) return false;
    for (int a = 0; a < 3; ++a)
        if (t.extents[a] > 1 && t.strides[a] % 8 != 0) return false;
    return true;
}

/// The tensor-core kernels' condition on the problem: 16-bit types, D = Dv in {64, 128},
/// scale > 0 (the forward folds the scale into the exponent after the row max).
bool tensor_core_shape(const at::attention_params& p, dtype type) {
    return (type == dtype::bf16 || type == dtype::f16) && p.d == p.dv_dim &&
           (p.d == 64 || p.d == 128) && p.scale > 0.f;
}

/// Raises the kernel's dynamic shared-memory limit when it needs more than the default.
template <class Kernel>
void allow_smem(Kernel* kernel, int bytes, const char* name) {
    if (bytes > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
              std::string("cudaFuncSetAttribute(") + name + ")");
}

dim3 grid_of(index_t blocks, const at::attention_params& p) {
    return dim3(unsigned(blocks), unsigned(p.heads), unsigned(p.batch));
}

/// Calls f with a value of the device element type of `type` (float, bf16 or f16).
template <class F>
void with_element_type(dtype type, F&& f) {
    switch (type) {
        case dtype::bf16:
            return f(__nv_bfloat16{});
        case dtype::f16:
            return f(__half{});
        default:
            return f(float{});
    }
}

template <class T>
void forward(const at::attention_params& p, bool tensor_cores, cudaStream_t stream) {
    if constexpr (!std::is_same_v<T, float>) {
        if (tensor_cores) {
            const auto run = [&](auto kernel, int rows, int smem) {
                allow_smem(kernel, smem, "attention forward_tc");
                kernel<<<grid_of(ceil_div(p.lq, rows), p), at::forward_tc_threads, smem, stream>>>(p);
            };
            if (p.d == 64)
                run(at::forward_tc<T, 64>, at::forward_tc_shape<64>::rows, at::forward_tc_shape<64>::smem);
            else
                run(at::forward_tc<T, 128>, at::forward_tc_shape<128>::rows, at::forward_tc_shape<128>::smem);
            check_launch("attention forward_tc");
            return;
        }
    }
    const int smem = at::forward_general_smem(p.d, p.dv_dim);
    allow_smem(at::forward_general<T>, smem, "attention forward_general");
    at::forward_general<T><<<grid_of(ceil_div(p.lq, at::general_rows), p), at::general_warps * 32,
                             smem, stream>>>(p);
    check_launch("attention forward_general");
}

template <class T>
void backward(at::attention_params p, bool tensor_cores, const launch_context& cx) {
    const index_t rows = index_t(p.batch) * p.heads * p.lq;
    const std::size_t dq_bytes = std::size_t(rows * p.d) * sizeof(float);
    const std::size_t delta_offset = (dq_bytes + 255) / 256 * 256;
    auto* scratch = static_cast<unsigned char*>(
        cx.scratch->acquire(delta_offset + std::size_t(rows) * sizeof(float), cx.stream));
    p.dq_accum = reinterpret_cast<float*>(scratch);
    p.delta = reinterpret_cast<float*>(scratch + delta_offset);
    if (dq_bytes) check(cudaMemsetAsync(p.dq_accum, 0, dq_bytes, cx.stream), "cudaMemsetAsync (attention dQ)");

    if (p.lq > 0) {
        at::backward_delta<T><<<grid_of(ceil_div(p.lq, 4), p), 128, 0, cx.stream>>>(p);
        check_launch("attention backward_delta");
    }
    if (p.lk > 0) {
        bool done = false;
        if constexpr (!std::is_same_v<T, float>) {
            // The tensor-core backward needs up to ~110 KB of shared memory per block: more
            // than some GPUs allow (sm_86/sm_89 opt in to 99 KB); those take the general path.
            if (tensor_cores && at::backward_tc_smem(p.d) <= cx.max_shared_per_block) {
                const auto run = [&](auto kernel, int smem) {
                    allow_smem(kernel, smem, "attention backward_tc");
                    kernel<<<grid_of(ceil_div(p.lk, at::backward_tc_keys), p), at::backward_tc_threads,
                             smem, cx.stream>>>(p);
                };
                if (p.d == 64)
                    run(at::backward_tc<T, 64>, at::backward_tc_smem(64));
                else
                    run(at::backward_tc<T, 128>, at::backward_tc_smem(128));
                check_launch("attention backward_tc");
                done = true;
            }
        }
        if (!done) {
            const int tile = at::backward_general_smem(p.d, p.dv_dim, 32) <= 96 * 1024 ? 32 : 16;
            const int smem = at::backward_general_smem(p.d, p.dv_dim, tile);
            allow_smem(at::backward_general<T>, smem, "attention backward_general");
            at::backward_general<T><<<grid_of(ceil_div(p.lk, tile), p),
                                      at::backward_general_threads, smem, cx.stream>>>(p, tile);
            check_launch("attention backward_general");
        }
    }
    if (p.lq > 0 && p.d > 0) {
        at::backward_store_dq<T><<<grid_of(ceil_div(index_t(p.lq) * p.d, 256), p), 256, 0, cx.stream>>>(p);
        check_launch("attention backward_store_dq");
    }
}

}  // namespace

void launch(const ops::attention_desc& d, inputs in, outputs out, const launch_context& cx) {
    const view* keep = d.masked ? &in[3] : nullptr;
    const at::attention_params p =
        forward_params(d, "attention", in[0], in[1], in[2], keep, out[0], out[1]);
    if (p.batch == 0 || p.heads == 0 || p.lq == 0) return;
    const bool tensor_cores = tensor_core_shape(p, in[0].type) && tensor_core_layout(in[0]) &&
                              tensor_core_layout(in[1]) && tensor_core_layout(in[2]) &&
                              tensor_core_layout(out[0]);
    with_element_type(in[0].type, [&](auto tag) { forward<decltype(tag)>(p, tensor_cores, cx.stream); });
}

void launch(const ops::attention_backward_desc& d, inputs in, outputs out, const launch_context& cx) {
    // in: q, k, v, o, do, lse [, keep]; out: dq, dk, dv.
    const view* keep = d.forward.masked ? &in[6] : nullptr;
    at::attention_params p =
        forward_params(d.forward, "attention_backward", in[0], in[1], in[2], keep, in[3], in[5]);
    const dtype type = in[0].type;
    expect_operand("attention_backward", "do", in[4], type, {p.batch, p.heads, p.lq, p.dv_dim});
    expect_operand("attention_backward", "dq", out[0], type, {p.batch, p.heads, p.lq, p.d});
    expect_operand("attention_backward", "dk", out[1], type, {p.batch, p.heads, p.lk, p.d});
    expect_operand("attention_backward", "dv", out[2], type, {p.batch, p.heads, p.lk, p.dv_dim});
    p.dout = in[4].data;
    p.dq = out[0].data;
    p.dk = out[1].data;
    p.dv = out[2].data;
    p.do_st = strides_of(in[4]);
    p.dq_st = strides_of(out[0]);
    p.dk_st = strides_of(out[1]);
    p.dv_st = strides_of(out[2]);
    if (p.batch == 0 || p.heads == 0) return;
    bool tensor_cores = tensor_core_shape(p, type);
    for (int i = 0; i < 5; ++i)
        tensor_cores = tensor_cores && tensor_core_layout(in[i]);
    for (int i = 0; i < 3; ++i)
        tensor_cores = tensor_cores && tensor_core_layout(out[i]);
    with_element_type(type, [&](auto tag) { backward<decltype(tag)>(p, tensor_cores, cx); });
}

}  // namespace mmfuse::inline v0::backend::cuda::kernels
