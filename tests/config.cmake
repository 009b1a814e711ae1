# The server's configuration loader (tests/server/config_test.cc), and real nginx in front of
# `sluice serve` (tests/server/nginx_e2e_test.sh). Included from tests/CMakeLists.txt.
if(TARGET sluice_server)
  sluice_gtest(config_test ${CMAKE_CURRENT_LIST_DIR}/server/config_test.cc)
  target_link_libraries(config_test PRIVATE sluice_server)
  target_compile_definitions(config_test PRIVATE
    SLUICE_EXAMPLES_DIR="${PROJECT_SOURCE_DIR}/examples")
endif()

# The shipped examples/nginx/nginx.conf with Debian's nginx-light (it has auth_request);
# skipped (77) where nginx is not installed.
if(TARGET sluice_cli)
  add_test(NAME server.nginx_e2e
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/server/nginx_e2e_test.sh $<TARGET_FILE:sluice_cli>
            ${PROJECT_SOURCE_DIR}/examples/nginx/nginx.conf)
  set_tests_properties(server.nginx_e2e PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 90 LABELS nginx)
endif()
