// The one translation unit of mmfuse's own builds that compiles the Eigen backend's
// dispatch (cmake/mmfuse_internal.cmake, target mmfuse_eigen_kernels).
#include "mmfuse/backend/eigen/execute.hpp"
