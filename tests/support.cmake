# tests/support/: the test fixtures. A real redis-server per test, a real Redis Cluster
# (scripts/redis-cluster.sh), a fake RESP server, a bounded subprocess runner, and the
# reference limiter as a live peer (sluice_test_support); tests that need Redis link it and
# #include "support/redis_server.h" or "support/redis_cluster.h". Header-only helpers for
# every test: support/test_util.h (must, make, deferred_calls, eventually) and
# support/fake_store.h (the one fake store). Included from tests/CMakeLists.txt.
find_package(PkgConfig REQUIRED)
pkg_check_modules(sluice_test_hiredis REQUIRED IMPORTED_TARGET hiredis)
find_package(OpenSSL REQUIRED)
find_package(Threads REQUIRED)

set(SLUICE_REFERENCE_DIR "${PROJECT_SOURCE_DIR}/../shared/reference" CACHE PATH
  "Directory holding the reference limiter, rate_limiter.py (compatibility tests skip without it)")
cmake_path(NORMAL_PATH SLUICE_REFERENCE_DIR OUTPUT_VARIABLE sluice_reference_dir)

add_library(sluice_test_support STATIC ${CMAKE_CURRENT_LIST_DIR}/support/redis_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/support/redis_sentinel.cc
  ${CMAKE_CURRENT_LIST_DIR}/support/redis_cluster.cc)
target_compile_features(sluice_test_support PUBLIC cxx_std_20)
target_include_directories(sluice_test_support PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_definitions(sluice_test_support PRIVATE
  SLUICE_TEST_REFERENCE_DIR="${sluice_reference_dir}"
  SLUICE_TEST_REFERENCE_PEER="${CMAKE_CURRENT_LIST_DIR}/support/reference_peer.py"
  SLUICE_TEST_CLUSTER_SCRIPT="${PROJECT_SOURCE_DIR}/scripts/redis-cluster.sh")
target_link_libraries(sluice_test_support
  PUBLIC Threads::Threads
  PRIVATE PkgConfig::sluice_test_hiredis OpenSSL::SSL OpenSSL::Crypto sluice_warnings)

# The fixture's own tests, named support.<Suite>.<Test> so `ctest -R support` finds them.
add_executable(support_test ${CMAKE_CURRENT_LIST_DIR}/support/redis_server_test.cc)
target_link_libraries(support_test PRIVATE sluice_test_support GTest::gtest GTest::gtest_main
  sluice_warnings)
gtest_discover_tests(support_test TEST_PREFIX "support." DISCOVERY_MODE PRE_TEST
  DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60 LABELS redis)

# The cluster fixture's tests. Every test that starts a redis_cluster takes the
# redis_cluster lock, so that `ctest -j` never runs two clusters (6 servers each) at once.
add_executable(support_cluster_test ${CMAKE_CURRENT_LIST_DIR}/support/redis_cluster_test.cc)
target_link_libraries(support_cluster_test PRIVATE sluice_test_support GTest::gtest
  GTest::gtest_main sluice_warnings)
gtest_discover_tests(support_cluster_test TEST_PREFIX "support.cluster." DISCOVERY_MODE PRE_TEST
  DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 180 LABELS redis RESOURCE_LOCK redis_cluster)
