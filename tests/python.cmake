# tests/python/: the Python module `sluice`, with Debian's pytest. Each test_<name>.py is
# one ctest test, python.<name>, run by /usr/bin/python3 against the package built into
# <build>/python. Included from tests/CMakeLists.txt; only when SLUICE_BUILD_PYTHON is on.
if(SLUICE_BUILD_PYTHON)
  file(GLOB sluice_python_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/python/test_*.py)
  foreach(test_file IN LISTS sluice_python_tests)
    get_filename_component(stem ${test_file} NAME_WE)
    string(REGEX REPLACE "^test_" "" name ${stem})
    add_test(NAME python.${name}
      COMMAND ${Python3_EXECUTABLE} -m pytest -q -p no:cacheprovider ${test_file}
      WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/python)
    set_tests_properties(python.${name} PROPERTIES TIMEOUT 120
      ENVIRONMENT "PYTHONPATH=${PROJECT_BINARY_DIR}/python;PYTHONDONTWRITEBYTECODE=1;SLUICE_REFERENCE_DIR=${sluice_reference_dir}")
    if(name MATCHES "redis|compat")
      set_tests_properties(python.${name} PROPERTIES LABELS redis)
    endif()
  endforeach()
endif()
