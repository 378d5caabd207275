// compile_fail.incompatible_shapes: a (?, 512) output cannot feed a (?, 256) input.
#include "mmfuse/core/shape.hpp"

using mmfuse::dim;
using mmfuse::dyn;
using mmfuse::shape;

#ifdef MMFUSE_COMPILE_OK
constexpr mmfuse::index_t in_width = 512;
#else
constexpr mmfuse::index_t in_width = 256;
#endif

struct projection_block;  // the composing type, named in the diagnostic
using out_shape = shape<dim<dyn>, dim<512>>;
using in_shape = shape<dim<dyn>, dim<in_width>>;

static_assert(mmfuse::require_compatible_shapes<out_shape, in_shape, projection_block>::value);
