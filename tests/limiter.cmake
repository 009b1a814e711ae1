# tests/limiter/: the limiter (policies, scoping, async forms, decision sources, shadow
# policies, async_reset), its failure policy and
# failure domains over the fake store (tests/support/fake_store.h), and the circuit breaker.
# Included from tests/CMakeLists.txt.
sluice_gtest(limiter_test
  ${CMAKE_CURRENT_LIST_DIR}/limiter/limiter_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/limiter/failure_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/limiter/failure_domain_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/limiter/source_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/limiter/multi_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/limiter/deny_cache_test.cc)
sluice_gtest(breaker_test ${CMAKE_CURRENT_LIST_DIR}/limiter/breaker_test.cc)

# The deny cache over a real Redis (redis-server started by tests/support).
sluice_gtest(deny_cache_redis_test ${CMAKE_CURRENT_LIST_DIR}/limiter/deny_cache_redis_test.cc)
target_link_libraries(deny_cache_redis_test PRIVATE sluice_test_support)
