// compile_fail.seq_width_through_activation: the 16 features of linear<8, 16> reach
// linear<32, 4> through a width-preserving activation.
#include "mmfuse/compose/seq.hpp"
#include "mmfuse/nn/activation.hpp"
#include "mmfuse/nn/linear.hpp"

using namespace mmfuse;

#ifdef MMFUSE_COMPILE_OK
constexpr index_t second_in = 16;
#else
constexpr index_t second_in = 32;
#endif

using encoder = compose::seq<nn::linear<8, 16>, nn::relu<>, nn::linear<second_in, 4>>;
encoder instance;  // the user's alias in use: the diagnostic points here
