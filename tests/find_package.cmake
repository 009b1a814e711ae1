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
  # sluice_fp_consumer(NAME PREFIX FIXTURE -D...): the test find_package.NAME, which
  # configures, builds and runs tests/find_package against the sluice installed in PREFIX
  # (by the test that sets up FIXTURE), with the -D options that follow.
  function(sluice_fp_consumer name prefix fixture)
    add_test(NAME find_package.${name}
      COMMAND ${CMAKE_CTEST_COMMAND}
        --build-and-test ${CMAKE_CURRENT_LIST_DIR}/find_package
                         ${CMAKE_CURRENT_BINARY_DIR}/find_package_${name}
        --build-generator ${CMAKE_GENERATOR}
        --build-makeprogram ${CMAKE_MAKE_PROGRAM}
        --build-options
          -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
          -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
          -DCMAKE_BUILD_TYPE=${sluice_fp_build_type}
          "-DCMAKE_CXX_FLAGS=${CMAKE_CXX_FLAGS}"
          "-DCMAKE_EXE_LINKER_FLAGS=${CMAKE_EXE_LINKER_FLAGS}"
          -DCMAKE_PREFIX_PATH=${prefix}
          ${ARGN}
        --test-command ${CMAKE_CTEST_COMMAND} --output-on-failure)
    set_tests_properties(find_package.${name} PROPERTIES
      FIXTURES_REQUIRED ${fixture}
      TIMEOUT 300)
  endfunction()

  # One consumer asks for core alone (and builds the README's library example), one for
  # core, redis and server: each component gives its targets and no more.
  sluice_fp_consumer(core ${sluice_fp_prefix} sluice_installed
    -DSLUICE_COMPONENTS=core -DSLUICE_README=${PROJECT_SOURCE_DIR}/README.md)
  sluice_fp_consumer(redis ${sluice_fp_prefix} sluice_installed
    -DSLUICE_COMPONENTS=core,redis,server)

  # sluice built with SLUICE_WITH_REDIS=OFF (no hiredis, Boost or OpenSSL) installs
  # sluice::core alone, and the core consumer builds against it. Release build only: it
  # compiles sluice::core once more.
  if(sluice_fp_build_type STREQUAL "Release")
    set(sluice_nr_prefix ${CMAKE_BINARY_DIR}/find_package_without_redis_prefix)
    add_test(NAME find_package.without_redis.install
      COMMAND ${CMAKE_CTEST_COMMAND}
        --build-and-test ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/without_redis
        --build-generator ${CMAKE_GENERATOR}
        --build-makeprogram ${CMAKE_MAKE_PROGRAM}
        --build-target install
        --build-options
          -DSLUICE_WITH_REDIS=OFF
          -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
          -DCMAKE_INSTALL_PREFIX=${sluice_nr_prefix})
    set_tests_properties(find_package.without_redis.install PROPERTIES
      FIXTURES_SETUP sluice_without_redis TIMEOUT 600)
    sluice_fp_consumer(without_redis ${sluice_nr_prefix} sluice_without_redis
      -DSLUICE_COMPONENTS=core)
  endif()
endif()
