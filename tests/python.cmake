# tests/python/: the Python module `sluice`, with Debian's pytest. Each test_<name>.py is
# one ctest test, python.<name>, run by /usr/bin/python3 against the package built into
# <build>/python. Included from tests/CMakeLists.txt; only when SLUICE_BUILD_PYTHON is on.
#
# In a build with -fsanitize=address the tests run the sanitized module inside Debian's
# python3, which is not: the ASan runtime must be loaded first (LD_PRELOAD), and libstdc++
# with it (python3 does not link it, and ASan's __cxa_throw interceptor needs it there at
# start-up). Leak checking is off: CPython leaves its own objects to the OS at exit. The pip
# package test is skipped there (it would build and import an ordinary module).
if(SLUICE_BUILD_PYTHON)
  set(sluice_python_env "PYTHONPATH=${PROJECT_BINARY_DIR}/python" "PYTHONDONTWRITEBYTECODE=1"
    "SLUICE_REFERENCE_DIR=${sluice_reference_dir}")
  set(sluice_python_sanitized OFF)
  if(CMAKE_CXX_FLAGS MATCHES "-fsanitize=[^ ]*address")
    set(sluice_python_sanitized ON)
    execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libasan.so
      OUTPUT_VARIABLE sluice_libasan OUTPUT_STRIP_TRAILING_WHITESPACE)
    execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so
      OUTPUT_VARIABLE sluice_libstdcxx OUTPUT_STRIP_TRAILING_WHITESPACE)
    list(APPEND sluice_python_env "LD_PRELOAD=${sluice_libasan} ${sluice_libstdcxx}"
      "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1")
  endif()
  file(GLOB sluice_python_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/python/test_*.py)
  foreach(test_file IN LISTS sluice_python_tests)
    get_filename_component(stem ${test_file} NAME_WE)
    string(REGEX REPLACE "^test_" "" name ${stem})
    if(name STREQUAL "package" AND sluice_python_sanitized)
      continue()
    endif()
    add_test(NAME python.${name}
      COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider ${test_file}
      WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/python)
    set_tests_properties(python.${name} PROPERTIES TIMEOUT 120
      ENVIRONMENT "${sluice_python_env}")
    if(name STREQUAL "package")
      set_tests_properties(python.${name} PROPERTIES TIMEOUT 600
        ENVIRONMENT "SLUICE_CMAKE_BUILD_DIR=${PROJECT_BINARY_DIR};PYTHONDONTWRITEBYTECODE=1")
    endif()
    if(name MATCHES "redis|compat")
      set_tests_properties(python.${name} PROPERTIES LABELS redis)
    endif()
  endforeach()
endif()
