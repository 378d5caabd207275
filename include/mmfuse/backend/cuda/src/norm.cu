// Kernel launchers of the CUDA backend: placeholder (to be written).
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {
void launch(const ops::softmax_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "softmax: not implemented yet");
}
void launch(const ops::softmax_backward_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "softmax_backward: not implemented yet");
}
void launch(const ops::layer_norm_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "layer_norm: not implemented yet");
}
void launch(const ops::layer_norm_backward_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "layer_norm_backward: not implemented yet");
}
void launch(const ops::rms_norm_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "rms_norm: not implemented yet");
}
void launch(const ops::rms_norm_backward_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "rms_norm_backward: not implemented yet");
}
}  // namespace mmfuse::inline v0::backend::cuda::kernels
