# Integration tests: an installed-package consumer, the README's worked example, the demo.
# Included from tests/CMakeLists.txt; the root project's targets are visible here.

# find_package: install this build into a scratch prefix (fixture), then configure, build
# and run tests/find_package against it. The consumer is built with the same compiler and
# flags, so it also links in the sanitizer builds.
if(SLUICE_INSTALL)
  set(sluice_fp_prefix ${CMAKE_BINARY_DIR}/find_package_prefix)
  add_test(NAME find_package.install
    COMMAND ${CMAKE_COMMAND} --install ${CMAKE_BINARY_DIR} --prefix ${sluice_fp_prefix}
            --config $<CONFIG>)
  set_tests_properties(find_package.install PROPERTIES FIXTURES_SETUP sluice_installed)

  set(sluice_fp_build_type ${CMAKE_BUILD_TYPE})
  if(NOT sluice_fp_build_type)
    set(sluice_fp_build_type Release)
  endif()
  add_test(NAME find_package.consumer
    COMMAND ${CMAKE_CTEST_COMMAND}
      --build-and-test ${CMAKE_CURRENT_LIST_DIR}/find_package
                       ${CMAKE_CURRENT_BINARY_DIR}/find_package_consumer
      --build-generator ${CMAKE_GENERATOR}
      --build-makeprogram ${CMAKE_MAKE_PROGRAM}
      --build-options
        -DCMAKE_PREFIX_PATH=${sluice_fp_prefix}
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
        -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
        -DCMAKE_BUILD_TYPE=${sluice_fp_build_type}
        "-DCMAKE_CXX_FLAGS=${CMAKE_CXX_FLAGS}"
        "-DCMAKE_EXE_LINKER_FLAGS=${CMAKE_EXE_LINKER_FLAGS}"
      --test-command find_package_consumer)
  set_tests_properties(find_package.consumer PROPERTIES
    FIXTURES_REQUIRED sluice_installed
    TIMEOUT 300)
endif()

if(TARGET sluice_cli)
  # README.md's worked example must be exactly what `sluice eval --now 0s` prints.
  add_test(NAME cli.readme_example
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli/readme_example_test.sh
            $<TARGET_FILE:sluice_cli> ${PROJECT_SOURCE_DIR}/README.md
            ${PROJECT_SOURCE_DIR}/examples/demo.eval)

endif()

# The Redis store against real redis-server processes (tests/support starts and stops them).
if(TARGET sluice_cli)
  sluice_gtest(redis_store_test ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/redis_store_test.cc)
  target_link_libraries(redis_store_test PRIVATE sluice_test_support sluice_cli_lib)
  target_compile_definitions(redis_store_test PRIVATE
    SLUICE_CLI_PATH="$<TARGET_FILE:sluice_cli>")
  add_dependencies(redis_store_test sluice_cli)
endif()
sluice_gtest(redis_failure_test ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/redis_failure_test.cc)
target_link_libraries(redis_failure_test PRIVATE sluice_test_support)
sluice_gtest(reference_compat_test ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/reference_compat_test.cc)
target_link_libraries(reference_compat_test PRIVATE sluice_test_support
  nlohmann_json::nlohmann_json)

# The Redis Cluster store against real 3-master / 3-replica clusters (scripts/redis-cluster.sh).
# One cluster at a time: six servers each, and failover timing wants the CPU.
add_executable(cluster_test ${CMAKE_CURRENT_SOURCE_DIR}/store/redis/cluster_test.cc)
target_include_directories(cluster_test PRIVATE ${PROJECT_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(cluster_test PRIVATE sluice::redis sluice_test_support GTest::gtest
  GTest::gtest_main sluice_warnings)
gtest_discover_tests(cluster_test DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
  PROPERTIES RESOURCE_LOCK redis_cluster TIMEOUT 240 LABELS redis)
