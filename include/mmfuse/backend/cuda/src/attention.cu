// Kernel launchers of the CUDA backend: placeholder (to be written).
#include "mmfuse/backend/cuda/kernels.hpp"
#include "mmfuse/backend/cuda/runtime.hpp"

namespace mmfuse::inline v0::backend::cuda::kernels {
void launch(const ops::attention_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "attention: not implemented yet");
}
void launch(const ops::attention_backward_desc&, inputs, outputs, const launch_context&) {
    throw backend_error("cuda", "attention_backward: not implemented yet");
}
}  // namespace mmfuse::inline v0::backend::cuda::kernels
