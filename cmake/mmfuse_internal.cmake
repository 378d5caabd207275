# Build settings for mmfuse's own tests, examples and benchmarks (never exported).

# mmfuse_internal_flags: warnings (and -Werror), optional sanitizers.
add_library(mmfuse_internal_flags INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(mmfuse_internal_flags INTERFACE
                         $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
                         $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MMFUSE_WERROR}>>:-Werror>)
  if(MMFUSE_SANITIZE)
    target_compile_options(mmfuse_internal_flags INTERFACE
                           -fsanitize=${MMFUSE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(mmfuse_internal_flags INTERFACE -fsanitize=${MMFUSE_SANITIZE})
  endif()
endif()
