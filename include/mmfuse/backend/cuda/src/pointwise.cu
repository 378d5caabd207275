// Kernel launchers of the CUDA backend: placeholder (to be written).
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {
void launch(const ops::bias_add_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "bias_add: not implemented yet");
}
void launch(const ops::unary_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "unary: not implemented yet");
}
void launch(const ops::unary_backward_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "unary_backward: not implemented yet");
}
void launch(const ops::binary_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "binary: not implemented yet");
}
void launch(const ops::copy_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "copy: not implemented yet");
}
void launch(const ops::concat_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "concat: not implemented yet");
}
void launch(const ops::split_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "split: not implemented yet");
}
void launch(const ops::reduce_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "reduce: not implemented yet");
}
void launch(const ops::gather_rows_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "gather_rows: not implemented yet");
}
void launch(const ops::scatter_add_rows_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "scatter_add_rows: not implemented yet");
}
void launch(const ops::fill_random_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "fill_random: not implemented yet");
}
void launch(const ops::combine_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "combine: not implemented yet");
}
}  // namespace mmfuse::inline v0::backend::cuda::kernels
