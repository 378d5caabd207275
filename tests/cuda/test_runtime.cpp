// [cuda] tests: runtime (placeholder).
#include "support/cuda_util.hpp"

TEST_CASE("cuda runtime placeholder", "[cuda]") {
    CHECK(mmfuse::backend::cuda::device_count() > 0);
}
