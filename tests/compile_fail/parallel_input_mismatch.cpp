// compile_fail.parallel_input_mismatch: every branch of a parallel gets the same input, so
// linear<8, 4> and linear<9, 4> cannot be branches of one.
#include "mmfuse/compose/parallel.hpp"
#include "mmfuse/nn/linear.hpp"

using namespace mmfuse;

#ifdef MMFUSE_COMPILE_OK
constexpr index_t second_in = 8;
#else
constexpr index_t second_in = 9;
#endif

using heads =
    compose::parallel<compose::reduce::concat, nn::linear<8, 4>, nn::linear<second_in, 4>>;
heads instance;  // the user's alias in use: the diagnostic points here
