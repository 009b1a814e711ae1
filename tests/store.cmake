# tests/store/: the memory store (tests/store/memory/); the Redis stores (tests/store/redis/):
# their protocol logic without a socket, and the stores against real redis-server processes
# and real Redis Clusters (tests/support starts and stops them). Included from
# tests/CMakeLists.txt.
sluice_gtest(memory_store_test ${CMAKE_CURRENT_LIST_DIR}/store/memory/memory_store_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/store/memory/memory_store_concurrency_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/store/memory/snapshot_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/store/open_store_test.cc)
target_link_libraries(memory_store_test PRIVATE PkgConfig::XXHASH)  # the snapshot's checksum

# RESP, the pipeline, cluster slots and redirections, URIs: bytes in, no I/O.
sluice_gtest(redis_unit_test
  ${CMAKE_CURRENT_LIST_DIR}/store/redis/cluster_unit_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/store/redis/pipeline_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/store/redis/uri_test.cc)

# The Redis store against real redis-server processes.
if(TARGET sluice_cli)
  sluice_gtest(redis_store_test ${CMAKE_CURRENT_LIST_DIR}/store/redis/redis_store_test.cc)
  target_link_libraries(redis_store_test PRIVATE sluice_test_support sluice_cli_lib)
  target_compile_definitions(redis_store_test PRIVATE
    SLUICE_CLI_PATH="$<TARGET_FILE:sluice_cli>")
  add_dependencies(redis_store_test sluice_cli)
endif()
sluice_gtest(redis_failure_test ${CMAKE_CURRENT_LIST_DIR}/store/redis/redis_failure_test.cc)
target_link_libraries(redis_failure_test PRIVATE sluice_test_support)
sluice_gtest(reference_compat_test ${CMAKE_CURRENT_LIST_DIR}/store/redis/reference_compat_test.cc)
target_link_libraries(reference_compat_test PRIVATE sluice_test_support
  nlohmann_json::nlohmann_json)

# The Redis Cluster store against real 3-master / 3-replica clusters (scripts/redis-cluster.sh).
# One cluster at a time: six servers each, and failover timing wants the CPU.
add_executable(cluster_test ${CMAKE_CURRENT_LIST_DIR}/store/redis/cluster_test.cc)
target_include_directories(cluster_test PRIVATE ${PROJECT_SOURCE_DIR}/src ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(cluster_test PRIVATE sluice::redis sluice_test_support GTest::gtest
  GTest::gtest_main sluice_warnings)
gtest_discover_tests(cluster_test DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
  PROPERTIES RESOURCE_LOCK redis_cluster TIMEOUT 240 LABELS redis)

# The Redis Sentinel store against a real master, replica and three sentinels
# (tests/support/redis_sentinel.h), failed over for real.
sluice_gtest(sentinel_test ${CMAKE_CURRENT_LIST_DIR}/store/redis/sentinel_test.cc)
target_link_libraries(sentinel_test PRIVATE sluice_test_support)
