# Build settings for mmfuse's own tests, examples and benchmarks (never exported).

# mmfuse_internal_warnings: warnings (and -Werror), optional sanitizers.
add_library(mmfuse_internal_warnings INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(mmfuse_internal_warnings INTERFACE
                         $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
                         $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MMFUSE_WERROR}>>:-Werror>)
  if(MMFUSE_SANITIZE)
    target_compile_options(mmfuse_internal_warnings INTERFACE
                           -fsanitize=${MMFUSE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(mmfuse_internal_warnings INTERFACE -fsanitize=${MMFUSE_SANITIZE})
  endif()
endif()

# mmfuse_eigen_kernels: the Eigen backend's dispatch (eigen_stream::execute, every kernel for
# every dtype) compiled once, instead of in each of the ~100 translation units of the tests,
# examples and benchmarks (it is ~20 s of compile time per unit; docs/design.md, "Compile
# time"). Consumers get MMFUSE_EIGEN_EXTERN_KERNELS; the installed package stays header-only
# and the install-and-consume test checks that default.
add_library(mmfuse_eigen_kernels STATIC ${CMAKE_CURRENT_LIST_DIR}/eigen_kernels.cpp)
target_link_libraries(mmfuse_eigen_kernels PRIVATE mmfuse::mmfuse mmfuse_internal_warnings)
target_compile_definitions(mmfuse_eigen_kernels PUBLIC MMFUSE_EIGEN_EXTERN_KERNELS=1)

# mmfuse_internal_flags: what every test, example and benchmark of the project links.
add_library(mmfuse_internal_flags INTERFACE)
target_link_libraries(mmfuse_internal_flags INTERFACE mmfuse_internal_warnings mmfuse_eigen_kernels)
