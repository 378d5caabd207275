// compile_fail.const_tensor: an owning tensor of const elements is rejected.
#include <cstddef>

#include "mmfuse/core/tensor.hpp"

#ifdef MMFUSE_COMPILE_OK
using element = float;
#else
using element = const float;
#endif

std::size_t probe_const_tensor() {
    return sizeof(mmfuse::tensor<element>);
}
