# tests/find_package/: an installed-package consumer. Install this build into a scratch
# prefix (fixture), then configure, build and run tests/find_package against it. The
# consumer is built with the same compiler and flags, so it also links in the sanitizer
# builds. Included from tests/CMakeLists.txt; the root project's targets are visible here.
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
