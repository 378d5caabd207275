# mmfuse_add_cuda_kernels(<target> [ARCHITECTURES <sm...>])
#
# Creates the static library <target> holding the CUDA backend's kernels: the closed set of
# .cu files shipped with the headers (mmfuse/backend/cuda/src/), compiled here, in the
# consumer's build, by nvcc. Link it next to mmfuse::cuda into anything that includes
# mmfuse/backend/cuda/device.hpp:
#
#     find_package(mmfuse CONFIG REQUIRED COMPONENTS cuda)
#     mmfuse_add_cuda_kernels(my_mmfuse_kernels ARCHITECTURES 80 90)
#     target_link_libraries(app PRIVATE mmfuse::cuda my_mmfuse_kernels)
#
# The application's own sources stay plain C++ (the host compiler, no CUDA language needed
# on its target); only this library passes through nvcc. ARCHITECTURES defaults to the cache
# variable MMFUSE_CUDA_ARCHITECTURES, "80;90" (A100 and H100/H200) unless set; the kernels
# need sm_80 or newer (cp.async, ldmatrix, bf16 mma), so older architectures are refused.
# (CMAKE_CUDA_ARCHITECTURES is not used: enable_language(CUDA) sets it to nvcc's own
# default, sm_75 for nvcc 13, which these kernels cannot target.)
#
# Including this file enables the CUDA language when nvcc is found (enable_language must run
# at file scope, so it happens here, in the scope that called find_package(mmfuse)).
include_guard(DIRECTORY)
include(CheckLanguage)
get_property(_mmfuse_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
if(NOT "CUDA" IN_LIST _mmfuse_languages)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
  endif()
endif()
unset(_mmfuse_languages)
set(MMFUSE_CUDA_ARCHITECTURES "80;90" CACHE STRING
    "GPU architectures mmfuse_add_cuda_kernels() compiles for (sm_80 or newer)")

set(MMFUSE_CUDA_KERNEL_SOURCES pointwise.cu norm.cu attention.cu)

function(mmfuse_add_cuda_kernels target)
  cmake_parse_arguments(ARG "" "" "ARCHITECTURES" ${ARGN})
  if(NOT MMFUSE_CUDA_KERNEL_DIR)
    message(FATAL_ERROR "mmfuse_add_cuda_kernels: MMFUSE_CUDA_KERNEL_DIR is not set "
                        "(find_package(mmfuse COMPONENTS cuda) sets it)")
  endif()
  get_property(_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT "CUDA" IN_LIST _languages)
    message(FATAL_ERROR "mmfuse_add_cuda_kernels: the CUDA language is not enabled (no nvcc "
                        "found: put it on PATH or set CUDACXX)")
  endif()
  set(_archs ${ARG_ARCHITECTURES})
  if(NOT _archs)
    set(_archs ${MMFUSE_CUDA_ARCHITECTURES})
  endif()
  foreach(_arch IN LISTS _archs)
    string(REGEX MATCH "^[0-9]+" _number "${_arch}")
    if(NOT _number OR _number LESS 80)
      message(FATAL_ERROR "mmfuse_add_cuda_kernels: architecture '${_arch}' is not supported; "
                          "the kernels need sm_80 or newer (e.g. 80, 86, 89, 90)")
    endif()
  endforeach()
  set(_sources "")
  foreach(_s IN LISTS MMFUSE_CUDA_KERNEL_SOURCES)
    list(APPEND _sources ${MMFUSE_CUDA_KERNEL_DIR}/${_s})
  endforeach()
  add_library(${target} STATIC ${_sources})
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES "${_archs}"
    POSITION_INDEPENDENT_CODE ON
    CUDA_RUNTIME_LIBRARY Shared)  # the same libcudart.so that mmfuse::cuda links
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -lineinfo>)
  # (-std=c++20 by hand: CMake 3.25 does not know nvcc 13's C++20 flag for CUDA_STANDARD.)
  target_link_libraries(${target} PUBLIC mmfuse::cuda)
endfunction()
