// compile_fail.seq_width_mismatch: linear<8, 16> gives 16 features, linear<32, 4> expects 32.
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/nn/linear.hpp"

using namespace mmfuse;

#ifdef MMFUSE_COMPILE_OK
constexpr index_t second_in = 16;
#else
constexpr index_t second_in = 32;
#endif

using encoder = compose::seq<nn::linear<8, 16>, nn::linear<second_in, 4>>;
encoder instance;  // the user's alias in use: the diagnostic points here
