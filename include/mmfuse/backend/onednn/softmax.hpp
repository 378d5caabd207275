#pragma once
/// \file
/// oneDNN plans of the softmax ops (being written). Implementation detail of the oneDNN backend.

#include "mmfuse/backend/onednn/common.hpp"
