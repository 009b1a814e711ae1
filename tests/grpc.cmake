# tests/grpc/: the .proto files of proto/ as another client sees them: the Python stubs
# generated into <build>/python_grpc import (with Debian's python3-grpcio), carry Envoy's own
# field names and numbers, and agree byte for byte with the generated C++ code (rls_wire
# prints what it serializes). pytest files, each one ctest test, grpc.<name>, run by
# /usr/bin/python3. The gRPC server's own tests are in tests/server (grpc_server_test).
# Included from tests/CMakeLists.txt; only with SLUICE_WITH_GRPC.
if(TARGET sluice_grpc_python)
  add_executable(rls_wire ${CMAKE_CURRENT_LIST_DIR}/grpc/rls_wire.cc)
  target_link_libraries(rls_wire PRIVATE sluice_grpc sluice_warnings)
  add_dependencies(rls_wire sluice_grpc_python sluice_cli)  # what the tests import and run
  if(EXISTS /usr/bin/python3)
    set(sluice_grpc_python3 /usr/bin/python3)
  else()
    find_program(sluice_grpc_python3 python3 REQUIRED)
  endif()
  file(GLOB sluice_grpc_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/grpc/test_*.py)
  foreach(test_file IN LISTS sluice_grpc_tests)
    get_filename_component(stem ${test_file} NAME_WE)
    string(REGEX REPLACE "^test_" "" name ${stem})
    add_test(NAME grpc.${name}
      COMMAND ${sluice_grpc_python3} -m pytest -q -p no:cacheprovider ${test_file}
      WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/grpc)
    set_tests_properties(grpc.${name} PROPERTIES TIMEOUT 120
      ENVIRONMENT "PYTHONPATH=${PROJECT_BINARY_DIR}/python_grpc;PYTHONDONTWRITEBYTECODE=1;SLUICE_RLS_WIRE=$<TARGET_FILE:rls_wire>;SLUICE_CLI=$<TARGET_FILE:sluice_cli>")
    if(name MATCHES "serve")
      set_tests_properties(grpc.${name} PROPERTIES LABELS redis)
    endif()
  endforeach()
endif()
