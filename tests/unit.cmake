# unit tests: one binary per part, mirroring src/
sluice_gtest(core_test
  ${CMAKE_CURRENT_SOURCE_DIR}/core/limit_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/core/algorithms_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/core/clock_test.cc)
sluice_gtest(memory_store_test ${CMAKE_CURRENT_SOURCE_DIR}/store/memory/memory_store_test.cc)
sluice_gtest(limiter_test
  ${CMAKE_CURRENT_SOURCE_DIR}/limiter/limiter_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/limiter/failure_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/limiter/failure_domain_test.cc)
sluice_gtest(breaker_test ${CMAKE_CURRENT_SOURCE_DIR}/limiter/breaker_test.cc)
if(TARGET sluice_cli_lib)
  sluice_gtest(cli_test ${CMAKE_CURRENT_SOURCE_DIR}/cli/eval_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/cli/bench_test.cc)
  target_link_libraries(cli_test PRIVATE sluice_cli_lib)
endif()
sluice_gtest(redis_unit_test
  ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/cluster_unit_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/pipeline_test.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/uri_test.cc)
