// [cuda] tests: norm (placeholder).
#include "support/cuda_util.hpp"

TEST_CASE("cuda norm placeholder", "[cuda]") {
    CHECK(mmfuse::backend::cuda::device_count() > 0);
}
