# tests/server/: `sluice serve`. Its configuration loaders (its own and envoyproxy/ratelimit's);
# the header fields, metrics, request handler, body parser and bearer tokens without a socket;
# end-to-end tests over
# loopback, in-process and as `sluice serve` child processes (one against a real
# redis-server, one on a real Redis Cluster); the gRPC listener with real gRPC clients; and
# real nginx in front of it. Included from
# tests/CMakeLists.txt.
if(TARGET sluice_server)
  sluice_gtest(config_test ${CMAKE_CURRENT_LIST_DIR}/server/config_test.cc)
  target_link_libraries(config_test PRIVATE sluice_server)
  target_compile_definitions(config_test PRIVATE
    SLUICE_EXAMPLES_DIR="${PROJECT_SOURCE_DIR}/examples")

  # envoyproxy/ratelimit's configuration; the README's examples, rewritten, are its fixtures.
  sluice_gtest(envoy_config_test ${CMAKE_CURRENT_LIST_DIR}/server/envoy_config_test.cc)
  target_link_libraries(envoy_config_test PRIVATE sluice_server)
  target_compile_definitions(envoy_config_test PRIVATE
    SLUICE_ENVOY_CONFIG_DIR="${CMAKE_CURRENT_LIST_DIR}/server/envoy_config")

  sluice_gtest(server_unit_test
    ${CMAKE_CURRENT_LIST_DIR}/server/headers_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/server/metrics_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/server/rls_metrics_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/server/handlers_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/server/body_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/server/auth_test.cc)
  target_link_libraries(server_unit_test PRIVATE sluice_server)

  sluice_gtest(server_e2e_test ${CMAKE_CURRENT_LIST_DIR}/server/server_e2e_test.cc)
  target_link_libraries(server_e2e_test PRIVATE sluice_server sluice_test_support)
  target_compile_definitions(server_e2e_test PRIVATE SLUICE_CLI_PATH="$<TARGET_FILE:sluice_cli>"
    SLUICE_TEST_VERSION="${PROJECT_VERSION}")
  add_dependencies(server_e2e_test sluice_cli)

  # The gRPC listener (SLUICE_WITH_GRPC): real gRPC clients against grpc_server, and
  # `sluice serve` with a gRPC listener.
  if(TARGET sluice_grpc)
    sluice_gtest(grpc_server_test ${CMAKE_CURRENT_LIST_DIR}/server/grpc_server_test.cc)
    target_link_libraries(grpc_server_test PRIVATE sluice_server absl::synchronization)
    target_compile_definitions(grpc_server_test PRIVATE
      SLUICE_CLI_PATH="$<TARGET_FILE:sluice_cli>")
    add_dependencies(grpc_server_test sluice_cli)

    # Envoy's rate limit service decided: the handler, and sluice serve behind a gRPC client
    # on memory, a real Redis and a real cluster (so under the cluster lock; the rest is
    # quick).
    add_executable(rls_test ${CMAKE_CURRENT_LIST_DIR}/server/rls_test.cc)
    target_include_directories(rls_test PRIVATE ${PROJECT_SOURCE_DIR}/src
      ${CMAKE_CURRENT_LIST_DIR})
    target_link_libraries(rls_test PRIVATE sluice_server sluice_test_support GTest::gtest
      GTest::gtest_main sluice_warnings)
    target_compile_definitions(rls_test PRIVATE SLUICE_EXAMPLES_DIR="${PROJECT_SOURCE_DIR}/examples")
    gtest_discover_tests(rls_test DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
      PROPERTIES RESOURCE_LOCK redis_cluster TIMEOUT 240)
  endif()

  # sluice serve on a real Redis Cluster; under the cluster lock like every cluster test.
  add_executable(server_cluster_test ${CMAKE_CURRENT_LIST_DIR}/server/server_cluster_test.cc)
  target_include_directories(server_cluster_test PRIVATE ${PROJECT_SOURCE_DIR}/src
    ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(server_cluster_test PRIVATE sluice_server sluice_test_support
    GTest::gtest GTest::gtest_main sluice_warnings)
  gtest_discover_tests(server_cluster_test DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
    PROPERTIES RESOURCE_LOCK redis_cluster TIMEOUT 240 LABELS redis)
endif()

# The shipped examples/nginx/nginx.conf with Debian's nginx-light (it has auth_request);
# skipped (77) where nginx is not installed.
if(TARGET sluice_cli)
  add_test(NAME server.nginx_e2e
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/server/nginx_e2e_test.sh $<TARGET_FILE:sluice_cli>
            ${PROJECT_SOURCE_DIR}/examples/nginx/nginx.conf)
  set_tests_properties(server.nginx_e2e PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 90 LABELS nginx)
endif()
