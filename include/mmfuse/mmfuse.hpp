#pragma once
/// \file
/// Umbrella header for users and examples: the whole header-only core, the op front-ends,
/// the backend registry with the Eigen reference backend, the contrastive heads (not their
/// threaded distributed emulation), Eigen/xtensor interop and .npy I/O. mmfuse's own
/// headers never include it (each includes exactly what it uses), and the test build does
/// not use it, so that a missing include cannot hide behind it.

#include "mmfuse/backend/registry.hpp"
#include "mmfuse/contrastive/binding.hpp"
#include "mmfuse/contrastive/clip.hpp"
#include "mmfuse/contrastive/evaluation.hpp"
#include "mmfuse/contrastive/logit_scale.hpp"
#include "mmfuse/contrastive/objectives.hpp"
#include "mmfuse/contrastive/pairwise.hpp"
#include "mmfuse/contrastive/projection.hpp"
#include "mmfuse/core/arena.hpp"
#include "mmfuse/core/dim.hpp"
#include "mmfuse/core/dtype.hpp"
#include "mmfuse/core/error.hpp"
#include "mmfuse/core/init.hpp"
#include "mmfuse/core/philox.hpp"
#include "mmfuse/core/shape.hpp"
#include "mmfuse/core/strided.hpp"
#include "mmfuse/core/tensor.hpp"
#include "mmfuse/core/tensor_ref.hpp"
#include "mmfuse/interop/eigen.hpp"
#include "mmfuse/interop/xtensor.hpp"
#include "mmfuse/io/npy.hpp"
#include "mmfuse/ops/attention.hpp"
#include "mmfuse/ops/binary.hpp"
#include "mmfuse/ops/gather.hpp"
#include "mmfuse/ops/loss.hpp"
#include "mmfuse/ops/layout.hpp"
#include "mmfuse/ops/matmul.hpp"
#include "mmfuse/ops/norm.hpp"
#include "mmfuse/ops/pointwise.hpp"
#include "mmfuse/ops/random.hpp"
#include "mmfuse/ops/reduce.hpp"
#include "mmfuse/ops/softmax.hpp"
