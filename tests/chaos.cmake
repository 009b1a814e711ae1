# benchmarks/chaos/: the chaos soak's short rounds (`chaos.py --short`: about 18 s of load on a
# 3+3 Redis Cluster, a master killed, one paused, `sluice serve` restarted; it fails when the
# tool exits non-zero) and the checker's own tests on hand-made records (chaos.checker). The
# full soak is `make chaos`. Release preset only: the round measures answer times against a
# bound that a sanitized build would not keep, and it checks sluice, not the sanitizers.
# Included from tests/CMakeLists.txt.
if(TARGET sluice_cli AND CMAKE_BUILD_TYPE STREQUAL "Release"
   AND NOT CMAKE_CXX_FLAGS MATCHES "sanitize")
  if(EXISTS /usr/bin/python3)
    set(sluice_chaos_python3 /usr/bin/python3)
  else()
    find_program(sluice_chaos_python3 python3 REQUIRED)
  endif()
  set(sluice_chaos_dir ${PROJECT_SOURCE_DIR}/benchmarks/chaos)
  # With gRPC built, 2 of the 8 workers ask the rate limit service over gRPC, with the stubs
  # the build generates (the flag makes missing stubs or python3-grpcio an error).
  set(sluice_chaos_grpc)
  if(TARGET sluice_grpc_python)
    set(sluice_chaos_grpc --grpc-stubs ${PROJECT_BINARY_DIR}/python_grpc)
  endif()
  add_test(NAME chaos.checker
    COMMAND ${sluice_chaos_python3} -m unittest -q test_checker
    WORKING_DIRECTORY ${sluice_chaos_dir})
  set_tests_properties(chaos.checker PROPERTIES TIMEOUT 60
    ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
  add_test(NAME chaos.short_round
    COMMAND ${sluice_chaos_python3} ${sluice_chaos_dir}/chaos.py --short --seed 1
            --sluice $<TARGET_FILE:sluice_cli> --out ${CMAKE_CURRENT_BINARY_DIR}/chaos-short
            ${sluice_chaos_grpc})
  set_tests_properties(chaos.short_round PROPERTIES RESOURCE_LOCK redis_cluster TIMEOUT 120
    LABELS redis)
  # The same on one Redis behind Sentinel (a master, its replica, three sentinels; the master
  # paused past its down-after time, then killed).
  add_test(NAME chaos.short_round_sentinel
    COMMAND ${sluice_chaos_python3} ${sluice_chaos_dir}/chaos.py --short --seed 1 --round sentinel
            --sluice $<TARGET_FILE:sluice_cli> --out ${CMAKE_CURRENT_BINARY_DIR}/chaos-short-sentinel
            ${sluice_chaos_grpc})
  set_tests_properties(chaos.short_round_sentinel PROPERTIES TIMEOUT 120 LABELS redis)
endif()
