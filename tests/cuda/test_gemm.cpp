// [cuda] tests: gemm (placeholder).
#include "support/cuda_util.hpp"

TEST_CASE("cuda gemm placeholder", "[cuda]") {
    CHECK(mmfuse::backend::cuda::device_count() > 0);
}
