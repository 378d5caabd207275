# cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> -DCONSUMER_BUILD=<dir> -DCONFIG=<cfg> -P ...
# Removes the previous prefix and consumer build, then installs BUILD_DIR into PREFIX.
file(REMOVE_RECURSE "${PREFIX}" "${CONSUMER_BUILD}")
execute_process(COMMAND ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${PREFIX}"
                        --config "${CONFIG}"
                RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${result})")
endif()
foreach(f include/mmfuse/core/tensor.hpp include/mmfuse/ops/matmul.hpp
          share/cmake/mmfuse/mmfuseConfig.cmake share/cmake/mmfuse/mmfuseConfigVersion.cmake
          share/cmake/mmfuse/mmfuseTargets.cmake)
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "cmake --install did not produce ${PREFIX}/${f}")
  endif()
endforeach()
