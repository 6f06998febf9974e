# strata_add_test(NAME src... LIBS lib...): one GoogleTest program per unit under test.
function(strata_add_test name)
  cmake_parse_arguments(ARG "" "" "LIBS" ${ARGN})
  add_executable(${name} ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    STRATA_FIXTURES_DIR="${STRATA_FIXTURES_DIR}"
    STRATA_STRATA_BINARY="$<TARGET_FILE:strata>")
  # PRE_TEST: discovery runs at ctest time, so the build never executes test binaries.
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
                       PROPERTIES TIMEOUT 300)
endfunction()
