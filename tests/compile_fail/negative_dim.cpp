// compile_fail.negative_dim: a static extent must be >= 0 (or mmfuse::dyn).
#include "mmfuse/core/dim.hpp"

#ifdef MMFUSE_COMPILE_OK
constexpr mmfuse::index_t extent = 5;
#else
constexpr mmfuse::index_t extent = -5;
#endif

mmfuse::index_t probe_negative_dim() {
    return mmfuse::dim<extent>{}.value();
}
