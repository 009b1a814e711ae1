# tests/cli/: `sluice eval` and `sluice bench` apart from main() (sluice_cli_lib), `sluice bench
# --grpc` against a `sluice serve` it starts, and
# README.md's worked example, which must be exactly what `sluice eval --now 0s` prints.
# Included from tests/CMakeLists.txt.
if(TARGET sluice_cli_lib)
  sluice_gtest(cli_test ${CMAKE_CURRENT_LIST_DIR}/cli/eval_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/cli/bench_test.cc)
  target_link_libraries(cli_test PRIVATE sluice_cli_lib)
endif()

if(TARGET sluice_cli)
  add_test(NAME cli.readme_example
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli/readme_example_test.sh
            $<TARGET_FILE:sluice_cli> ${PROJECT_SOURCE_DIR}/README.md
            ${PROJECT_SOURCE_DIR}/examples/demo.eval)
endif()

# `sluice bench --grpc` against a `sluice serve` it starts (only built with gRPC).
if(TARGET sluice_cli AND TARGET sluice_grpc)
  add_test(NAME cli.grpc_bench
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli/grpc_bench_test.sh $<TARGET_FILE:sluice_cli>)
  set_tests_properties(cli.grpc_bench PROPERTIES TIMEOUT 120)
endif()
