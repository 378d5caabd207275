// compile_fail.matmul_int: ops compute in float or double; int views fail `compute_type`.
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/ops/context.hpp"
#include "mmfuse/ops/matmul.hpp"

#ifdef MMFUSE_COMPILE_OK
using element = float;
#else
using element = int;
#endif

void probe_matmul_int(const mmfuse::ops::op_context& cx, mmfuse::tensor_ref<const element> a,
                      mmfuse::tensor_ref<const element> b, mmfuse::tensor_ref<element> c) {
    mmfuse::ops::matmul(cx, a, b, c);
}
