# cmake -DBUILD_DIR=<dir> -DTARGET=<t> -DCONFIG=<cfg> -DEXPECT=fail|ok -DREGEXES=<r1;r2> -P ...
# Builds one compile-fail target. EXPECT=ok: the build must succeed. EXPECT=fail: the build
# must fail AND its output must match every regex in REGEXES.
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env LC_ALL=C ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET} --config ${CONFIG}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)

if(EXPECT STREQUAL "ok")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${TARGET} must compile but did not:\n${out}")
  endif()
  message(STATUS "${TARGET} compiled, as it must")
  return()
endif()

if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled but must be rejected:\n${out}")
endif()
foreach(re IN LISTS REGEXES)
  if(NOT out MATCHES "${re}")
    message(FATAL_ERROR "${TARGET} failed to compile, but its output does not match\n"
                        "  ${re}\n--- compiler output ---\n${out}")
  endif()
endforeach()
message(STATUS "${TARGET} was rejected with the expected diagnostic")
