# tests/core/: limits and durations, errors and results, clocks, the three algorithms as pure
# functions. Included from tests/CMakeLists.txt.
sluice_gtest(core_test
  ${CMAKE_CURRENT_LIST_DIR}/core/limit_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core/algorithms_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core/clock_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core/result_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core/striped_test.cc)
