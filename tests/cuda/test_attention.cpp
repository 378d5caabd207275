// [cuda] tests: attention (placeholder).
#include "support/cuda_util.hpp"

TEST_CASE("cuda attention placeholder", "[cuda]") {
    CHECK(mmfuse::backend::cuda::device_count() > 0);
}
