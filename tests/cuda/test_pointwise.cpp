// [cuda] tests: pointwise (placeholder).
#include "support/cuda_util.hpp"

TEST_CASE("cuda pointwise placeholder", "[cuda]") {
    CHECK(mmfuse::backend::cuda::device_count() > 0);
}
